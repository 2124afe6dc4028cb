//! Every flush goes through one [`Flusher`]: sled 0.34 hangs when `flush_async` runs concurrently (sled issue #1308),
//! so flushes run one at a time, and a caller whose writes were covered by a flush that started after them skips its
//! own (group commit). sled's flush uses `sync_file_range`; its authors do not promise durability across power loss
//! (sled issue #1452).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sled::Db;

use super::blocking;
use crate::error::Result;

/// Serialises flushes and lets callers share one. Clones share the same state.
#[derive(Clone)]
pub(super) struct Flusher {
    db: Db,
    /// Tickets handed out; a caller takes one after its writes.
    requested: Arc<AtomicU64>,
    /// The highest ticket whose writes a completed flush covers. Held for the whole flush.
    completed: Arc<Mutex<u64>>,
}

impl Flusher {
    /// A flusher of `db`.
    pub(super) fn new(db: Db) -> Self {
        Self { db, requested: Arc::new(AtomicU64::new(0)), completed: Arc::new(Mutex::new(0)) }
    }

    /// Returns once every write made before the call is durable. The flush runs on a blocking thread that holds the
    /// lock until it ends, so a caller that gives up waiting can never cause two flushes at once.
    pub(super) async fn flush(&self) -> Result<()> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let (db, requested, completed) = (self.db.clone(), self.requested.clone(), self.completed.clone());
        blocking(move || {
            let mut completed = completed.lock().unwrap_or_else(PoisonError::into_inner);
            if *completed >= ticket {
                return Ok(());
            }
            // Every ticket up to `target` was taken after its writes, and the flush starts after this load.
            let target = requested.load(Ordering::SeqCst);
            db.flush()?;
            *completed = target;
            Ok(())
        })
        .await
    }
}
