//! What the writer knows when it starts: its state rebuilt from disk, at open and again after a storage failure
//! (see module `storage`), and the move of an older agent's records into today's layout.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use prost::Message;

use super::ops::{Op, Shared, Signal};
use super::packs;
use super::pending::PendingEvents;
use super::records::{DeliveryGroup, DeliveryRecord, SpooledReports};
use super::storage::{SharedStorage, Storage, StorageFailure};
use super::{QueueError, QueueOptions, Recovered, decode, keys};

/// What the writer needs from disk to carry on.
pub(super) struct RecoveredState {
    pub pending_events: PendingEvents,
    pub last_event_seq: u64,
    pub replaying: HashSet<u64>,
}

/// Scans the delivery groups: how many deliveries each event still has, and which endpoints have work.
pub(super) fn recover(tree: &sled::Tree) -> Result<(RecoveredState, Recovered), QueueError> {
    migrate_legacy_deliveries(tree)?;
    migrate_legacy_events(tree)?;
    let mut pending = PendingEvents::default();
    let mut replaying = HashSet::new();
    let mut endpoints = HashSet::new();
    let mut recovered = Recovered::default();
    for entry in tree.scan_prefix([keys::GROUP]) {
        let (key, value) = entry?;
        let Some(parsed) = keys::parse_group(&key) else { continue };
        let group: DeliveryGroup = decode(&key, &value)?;
        for record in group.deliveries {
            pending.add(record.event_seq, 1);
            recovered.deliveries += 1;
            if record.replay {
                replaying.insert(replay_key(&record.delivery_id));
            }
        }
        endpoints.insert(parsed.endpoint_id);
    }
    for entry in tree.scan_prefix([keys::REPORT]) {
        let (key, value) = entry?;
        recovered.reports += decode::<SpooledReports>(&key, &value)?.reports.len() as u64;
    }
    for entry in tree.scan_prefix([keys::EVENT_PACK]) {
        let (_, value) = entry?;
        recovered.event_bytes += value.len() as u64;
    }
    recovered.endpoints = endpoints.into_iter().collect();
    let last_event_seq = match tree.scan_prefix([keys::EVENT_PACK]).next_back() {
        Some(entry) => {
            let (key, _) = entry?;
            keys::parse_event_pack(&key).unwrap_or(0)
        }
        None => 0,
    };
    Ok((RecoveredState { pending_events: pending, last_event_seq, replaying }, recovered))
}

/// Moves the one-key-per-delivery records of an older agent into groups of one (keyed by the delivery's seq, as a
/// rescheduled delivery is), so that the rest of the queue knows only groups.
fn migrate_legacy_deliveries(tree: &sled::Tree) -> Result<(), QueueError> {
    let moved = migrate(tree, keys::LEGACY_DELIVERY, |key, value| {
        let Some(parsed) = keys::parse_legacy_delivery(key) else { return Ok(None) };
        let record = DeliveryRecord { seq: parsed.seq, ..decode(key, value)? };
        let group = DeliveryGroup { deliveries: vec![record] };
        Ok(Some((keys::group(&parsed.endpoint_id, parsed.due_ms, parsed.seq), group.encode_to_vec())))
    })?;
    if moved > 0 {
        tracing::info!(deliveries = moved, "moved the deliveries of an older queue layout into delivery groups");
    }
    Ok(())
}

/// Moves the one-key-per-event records of an older agent into packs of one (same seq).
fn migrate_legacy_events(tree: &sled::Tree) -> Result<(), QueueError> {
    let moved = migrate(tree, keys::LEGACY_EVENT, |key, value| {
        let Some(seq) = keys::parse_legacy_event(key) else { return Ok(None) };
        Ok(Some((keys::event_pack(seq).to_vec(), packs::single(seq, value))))
    })?;
    if moved > 0 {
        tracing::info!(events = moved, "moved the events of an older queue layout into event packs");
    }
    Ok(())
}

/// Records of an older layout moved per batch when the queue opens, at most, and their bytes: a batch's records are
/// held in memory until it is applied, and payloads may be large.
pub(super) const MIGRATION_BATCH: usize = 10_000;
const MIGRATION_BATCH_BYTES: usize = 16 << 20;

/// Replaces every record whose key starts with `kind` by what `convert` makes of it (nothing for a key it does not
/// recognise), in batches of bounded size, each atomic and flushed: an open cut short by a crash leaves each record
/// moved or not, and the next open goes on. Returns how many records went.
fn migrate(
    tree: &sled::Tree,
    kind: u8,
    convert: impl Fn(&[u8], &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>, QueueError>,
) -> Result<u64, QueueError> {
    let mut moved = 0;
    loop {
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        let mut bytes = 0;
        for entry in tree.scan_prefix([kind]) {
            let (key, value) = entry?;
            if let Some((new_key, new_value)) = convert(&key, &value)? {
                bytes += new_value.len();
                batch.insert(new_key, new_value);
            }
            batch.remove(key);
            in_batch += 1;
            if in_batch == MIGRATION_BATCH || bytes >= MIGRATION_BATCH_BYTES {
                break;
            }
        }
        if in_batch == 0 {
            return Ok(moved);
        }
        tree.apply_batch(batch)?;
        tree.flush()?;
        moved += in_batch as u64;
    }
}

/// The growing pause between attempts to reopen failed storage. It grows across failures that follow each other
/// (a reopened database on a disk that is still full fails again at once) and starts small again once the storage
/// stayed healthy for a while.
#[derive(Default)]
pub(super) struct Backoff {
    next: Duration,
    last_failure: Option<Instant>,
}

const REOPEN_FIRST: Duration = Duration::from_millis(200);
const REOPEN_MAX: Duration = Duration::from_secs(10);
/// Healthy for this long, the storage counts as recovered and the next failure is retried quickly again.
const REOPEN_RESET_AFTER: Duration = Duration::from_secs(60);

impl Backoff {
    /// The pause before the next attempt.
    fn step(&mut self) -> Duration {
        let now = Instant::now();
        if self.last_failure.is_none_or(|at| now.duration_since(at) > REOPEN_RESET_AFTER) {
            self.next = REOPEN_FIRST;
        }
        self.last_failure = Some(now);
        let pause = self.next;
        self.next = (self.next * 2).min(REOPEN_MAX);
        pause
    }
}

/// Closes the failed database and opens it again until it opens and takes a write, answering every operation that
/// arrives meanwhile with the failure. Then the writer's state is rebuilt from disk, as at start, and the dispatcher
/// is told to read its endpoints again. `None` if the queue was shut down meanwhile.
pub(super) fn reopen_storage(
    storage: &SharedStorage,
    receiver: &Receiver<Op>,
    shared: &Shared,
    options: &QueueOptions,
    mut failure: StorageFailure,
    backoff: &mut Backoff,
) -> Option<RecoveredState> {
    tracing::error!(error = %failure.message, disk_full = failure.disk_full,
        "queue storage failed; refusing work until it is reopened");
    drop(storage.take());
    loop {
        let retry_at = Instant::now() + backoff.step();
        loop {
            match receiver.recv_timeout(retry_at.saturating_duration_since(Instant::now())) {
                Ok(Op::Shutdown) | Err(RecvTimeoutError::Disconnected) => return None,
                Ok(op) => op.refuse(&failure),
                Err(RecvTimeoutError::Timeout) => break,
            }
        }
        match reopen_once(storage.dir(), options) {
            Ok((open, state, recovered)) => {
                shared.depth.store(recovered.deliveries, Ordering::Relaxed);
                shared.event_bytes.store(recovered.event_bytes, Ordering::Relaxed);
                shared.reports.store(recovered.reports, Ordering::Relaxed);
                storage.restore(open);
                let _ = shared.signals.send(Signal::Reopened { endpoints: recovered.endpoints });
                shared.reports_ready.notify_one();
                tracing::info!(
                    deliveries = recovered.deliveries,
                    reports = recovered.reports,
                    "queue storage reopened"
                );
                return Some(state);
            }
            Err(error) => {
                tracing::warn!(%error, "reopening the queue storage failed; trying again");
                // A full disk stays the answer until the storage is back: a busy lock or a read error while
                // reopening says nothing new to an emitter.
                if let QueueError::Storage(error) = &error
                    && let Some(next) = StorageFailure::of(error)
                    && next.disk_full
                {
                    failure = next;
                }
            }
        }
    }
}

/// Free space the reopened database must show, by writing it, before the queue takes work again.
const REOPEN_PROBE_BYTES: usize = 1 << 20;

/// Opens the database, checks that it takes a durable write, and reads the writer's state from it.
fn reopen_once(
    dir: &std::path::Path,
    options: &QueueOptions,
) -> Result<(Storage, RecoveredState, Recovered), QueueError> {
    let storage = Storage::open(dir, options)?;
    // A probe of some size, written and removed: a disk with a few pages free would take a tiny write, fail the
    // next batch, and be reopened again and again.
    storage.tree.insert(keys::META_PROBE, vec![0u8; REOPEN_PROBE_BYTES])?;
    storage.db.flush()?;
    storage.tree.remove(keys::META_PROBE)?;
    storage.db.flush()?;
    let (state, recovered) = recover(&storage.tree)?;
    Ok((storage, state, recovered))
}

/// What the writer remembers of a pending replay: a 64-bit hash of its delivery id rather than the id, as a recovery
/// after an outage can replay a million deliveries at once (a collision would only refuse one replay while another
/// is pending).
pub(super) fn replay_key(delivery_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    delivery_id.hash(&mut hasher);
    hasher.finish()
}
