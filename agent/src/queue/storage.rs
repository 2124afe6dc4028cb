//! The sled database under the queue, and how the queue gets it back after a storage failure.
//!
//! sled keeps the first I/O error of its log (a full disk, say) and fails every later call with it, reads included,
//! until the database is opened again. So a failed write or flush does not stay the agent's state: the queue marks
//! its storage failed (readers get the failure at once, the health service says so), the writer answers every
//! operation with that failure, closes the database and opens it again at a growing interval until it opens, then
//! rebuilds its state from disk as it does at start (module `writer`). What a failed flush did not make durable was
//! never acknowledged, and after the reopen the disk is again the whole truth.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::{QueueError, QueueOptions};

/// An open database and the queue's tree in it.
#[derive(Clone)]
pub(super) struct Storage {
    pub db: sled::Db,
    pub tree: sled::Tree,
}

impl Storage {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path, options: &QueueOptions) -> Result<Self, sled::Error> {
        remove_unfinished_snapshots(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_capacity_bytes)
            .flush_every_ms(Some(500))
            .open()?;
        let tree = db.open_tree("queue")?;
        Ok(Self { db, tree })
    }
}

/// Removes the snapshot files sled did not finish. sled writes a snapshot to `snap.<lsn>.generating`, syncs it and
/// renames it to `snap.<lsn>`, but at open it reads the newest `snap.*` file, an unfinished one included: one cut
/// short by a full disk made every later open fail with "Read corrupted data", in this process and after a restart.
/// Such a file was never complete, so sled opens from the snapshot before it and its log, as it would had the
/// write not begun.
fn remove_unfinished_snapshots(dir: &Path) -> Result<(), sled::Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error.into()),
    };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(path = %path.display(), "removing a snapshot file sled did not finish");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Whether the queue's storage works, as health checks and operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageState {
    Healthy,
    /// A write or flush failed; the queue refuses work until its database is open again.
    Failed(StorageFailure),
}

/// Why the storage failed, kept so that every caller gets the same answer until it is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFailure {
    pub message: String,
    /// The filesystem had no space left: callers are told to retry later (RESOURCE_EXHAUSTED / 507).
    pub disk_full: bool,
}

impl StorageFailure {
    /// The failure of `error`, if it is one of the storage rather than of a record.
    pub fn of(error: &sled::Error) -> Option<Self> {
        match error {
            sled::Error::Io(io) => {
                Some(Self { message: error.to_string(), disk_full: io.kind() == std::io::ErrorKind::StorageFull })
            }
            sled::Error::ReportableBug(_) | sled::Error::Corruption { .. } => {
                Some(Self { message: error.to_string(), disk_full: false })
            }
            sled::Error::CollectionNotFound(_) | sled::Error::Unsupported(_) => None,
        }
    }

    /// What a caller of the queue is told while the storage is failed.
    pub fn to_error(&self) -> QueueError {
        if self.disk_full {
            QueueError::DiskFull(self.message.clone())
        } else {
            QueueError::Unavailable(format!("{}; the queue is reopening its storage", self.message))
        }
    }
}

/// The storage the queue's handles read from, swapped by the writer when it reopens the database.
pub(super) struct StorageCell {
    dir: PathBuf,
    /// `None` while the writer reopens the database.
    current: RwLock<Option<Storage>>,
    state: watch::Sender<StorageState>,
}

impl StorageCell {
    pub fn new(dir: &Path, storage: Storage) -> Self {
        Self {
            dir: dir.to_path_buf(),
            current: RwLock::new(Some(storage)),
            state: watch::Sender::new(StorageState::Healthy),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The open database, or the failure that closed it.
    pub fn get(&self) -> Result<Storage, QueueError> {
        if let StorageState::Failed(failure) = &*self.state.borrow() {
            return Err(failure.to_error());
        }
        let current = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        current.clone().ok_or_else(|| QueueError::Unavailable("the queue is reopening its storage".into()))
    }

    /// The queue's tree.
    pub fn tree(&self) -> Result<sled::Tree, QueueError> {
        Ok(self.get()?.tree)
    }

    /// Marks the storage failed (the first failure is kept) and returns the failure in force.
    pub fn fail(&self, failure: StorageFailure) -> StorageFailure {
        let mut kept = failure.clone();
        self.state.send_if_modified(|state| match state {
            StorageState::Failed(first) => {
                kept = first.clone();
                false
            }
            StorageState::Healthy => {
                *state = StorageState::Failed(failure);
                true
            }
        });
        kept
    }

    /// The failure in force, if any.
    pub fn failure(&self) -> Option<StorageFailure> {
        match &*self.state.borrow() {
            StorageState::Failed(failure) => Some(failure.clone()),
            StorageState::Healthy => None,
        }
    }

    /// Takes the database away from readers, so that the writer can close it.
    pub fn take(&self) -> Option<Storage> {
        self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// Hands readers a reopened database and marks the storage healthy again.
    pub fn restore(&self, storage: Storage) {
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(storage);
        self.state.send_replace(StorageState::Healthy);
    }

    pub fn subscribe(&self) -> watch::Receiver<StorageState> {
        self.state.subscribe()
    }
}

/// Shared by the queue's handles and its writer.
pub(super) type SharedStorage = Arc<StorageCell>;
