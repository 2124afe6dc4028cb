//! The agent's durable queue: events, their deliveries, idempotency records and the spool of attempt reports, in
//! one sled tree on the node's disk.
//!
//! # Key layout (see [`keys`])
//! ```text
//! p <last event seq:8>                              -> event pack      (payloads, kept for the retention period)
//! g <endpoint id> 0x00 <due ms:8> <group seq:8>      -> DeliveryGroup   (pending deliveries due together)
//! k <owner> 0x00 <event id>                         -> DedupRecord     (first answer, for the dedup window)
//! r <report seq:8>                                  -> SpooledReports  (until control acknowledges them)
//! m config                                          -> ConfigSnapshot  (last applied config)
//! m failing                                         -> FailingSince    (auto-disable windows in progress)
//! ```
//! Event seqs are the acceptance time in ms shifted left 16 bits plus a counter (the single writer hands them out and
//! resumes above the last one on disk), so old events are a key range at the start. The events one batch accepts are
//! stored a few to a key, in packs written once and removed whole past their retention (module `packs`); agents from
//! before packs stored one `e` key per event, and opening the queue moves those into packs of one, in bounded batches.
//! Other sequence numbers come from `sled::Db::generate_id`, unique across restarts. A group's key holds its due time,
//! so one endpoint's deliveries are a key range sorted by when they are due: the dispatcher reads the head of each
//! endpoint's range and never scans other endpoints' work.
//!
//! The fresh deliveries one writer batch makes for an endpoint share one group (up to [`GROUP_SIZE`]), so a backlog
//! costs sled a key per batch rather than a key per delivery (sled keeps bookkeeping for every page in memory, evicted
//! or not, and splits a leaf at 16 keys). Each delivery keeps its own seq: its lease id. A rescheduled delivery leaves
//! its group and becomes a group of its own under its new due time, keyed by its own seq. Agents from before groups
//! stored one `d` key per delivery; opening the queue moves those into groups (in bounded batches too).
//!
//! # One writer
//! Every mutation goes through one writer thread (module `writer`) that takes the operations waiting in its channel (up
//! to a few hundred records, so that a batch's memory and each caller's wait stay bounded; a batch of attempt
//! outcomes and report acknowledgements alone waits up to a millisecond for more, as sled seals a write buffer for
//! every batch, while anything an emitter waits for is applied at once), applies them as one
//! `sled::Batch` (atomic: all or nothing after a crash), calls `flush` once if any of them must be
//! durable, and only then answers each caller. Concurrent emits thus share one fsync (group commit), and `flush` is
//! never called from two places at once (in sled 0.34.7 concurrent `flush_async` calls can hang: sled issue #1308).
//!
//! # Invariants and what survives a crash
//! - **enqueue**: the event (in a pack with the batch's other events), its deliveries (due now, in the batch's group
//!   for each endpoint) and the dedup record are written in one batch; the emitter is answered after `flush`. A crash
//!   before the flush loses the whole batch and the emitter got no answer (it retries, with the same id); after it,
//!   everything is on disk.
//! - **lease**: in memory only. The dispatcher reads due deliveries and marks them in flight; a crash forgets the
//!   lease and the record is still there, due, so it is tried again after restart (at-least-once, same
//!   `webhook-id`).
//! - **retry**: the delivery is taken out of its group (the group is rewritten, or removed once empty) and stored
//!   alone under its next due time, with the attempt report, in one batch. A crash before it reaches disk repeats
//!   the attempt.
//! - **finish** (delivered, gave up, cancelled): the delivery is taken out of its group and the report spooled, in
//!   one batch. Nothing else is kept of it here: its report carries the event seq as `payload_ref`, and control
//!   sends the delivery back with it to replay it.
//! - **replay**: a delivery control sends back becomes pending again (same delivery id, a new seq, a new series of
//!   attempts) if the event under its `payload_ref` is still retained and is its event, in one batch. The writer
//!   keeps the ids of pending replays in memory (rebuilt from the groups at open: records marked `replay`), so one
//!   replayed twice is pending once. A first series is not tracked there: control asks only for
//!   deliveries it knows finished, and knows so only from the spooled report of that finish.
//! - **retention**: packs whose events are all older than the payload retention are removed, or rewritten with only
//!   the events that still have a pending delivery, in bounded batches, each pass going on from where the last one
//!   stopped (old events still pending at the head must not hide the ones behind them) (the writer counts each
//!   event's pending deliveries in a compressed bitmap, see `pending`; counts are rebuilt from the delivery groups
//!   at open). The sweeps run between
//!   batches at a fixed interval, so they never stall a write for longer than one bounded pass.
//! - **reports**: the attempt reports of one batch are spooled together under one key (at most
//!   [`REPORTS_PER_RECORD`] per key), so a report costs a share of one write rather than a write and a removal of
//!   its own. A record is removed only after control answered that it stored all of its reports. A crash in between
//!   sends them again; control ignores report ids it has seen.
//! - **dedup**: records older than the dedup window are swept in bounded batches by the writer when it is idle.
//! - **storage failure** (a full disk): sled fails every call after its first I/O error, so the queue refuses work
//!   with that failure, the writer reopens the database until it takes a write, and rebuilds its state from disk as
//!   at open (module `storage`, `recovery`). Nothing whose flush failed was acknowledged.
//!
//! sled writes become durable at `flush` (it uses `sync_file_range`; its authors do not promise durability across
//! power loss, sled issue #1452). Nothing here is acknowledged before its flush.

mod flusher;
pub mod keys;
#[cfg(test)]
mod model_tests;
mod ops;
mod packs;
mod pending;
pub mod records;
mod recovery;
mod storage;
#[cfg(test)]
mod tests;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message as _;
use tokio::sync::{Notify, mpsc, oneshot};

pub use ops::Signal;
pub use records::{DedupRecord, DeliveryGroup, DeliveryRecord, EventRecord, FailingSince, SpooledReports};
pub use storage::{StorageFailure, StorageState};

use ops::Op;
use storage::{SharedStorage, Storage, StorageCell};

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// sled reported an error (I/O, corruption).
    #[error("queue storage: {0}")]
    Storage(#[from] sled::Error),
    /// A stored value could not be decoded.
    #[error("queue record {key} is corrupt: {source}")]
    Corrupt { key: String, source: prost::DecodeError },
    /// An event pack's framing is broken.
    #[error("queue event pack {key} is damaged: {reason}")]
    DamagedPack { key: String, reason: &'static str },
    /// The disk is full; nothing in the batch was applied.
    #[error("the disk is full: {0}")]
    DiskFull(String),
    /// The storage failed and is being reopened; nothing was applied.
    #[error("queue storage unavailable: {0}")]
    Unavailable(String),
    /// A batch could not be written; nothing in it was applied.
    #[error("queue write failed: {0}")]
    Write(String),
    /// The writer thread is gone (the agent is shutting down).
    #[error("queue is closed")]
    Closed,
}

/// One event to enqueue with the endpoints it fans out to.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event: EventRecord,
    /// Endpoint ids with the delivery id generated for each.
    pub deliveries: Vec<(String, String)>,
}

/// What the queue answered to one enqueued event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub event_id: String,
    pub deliveries: u32,
    /// The id was accepted before: this is the first answer and nothing new was written.
    pub duplicate: bool,
}

/// A due delivery read from the queue.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// Key of the group it is in.
    pub key: Vec<u8>,
    pub endpoint_id: String,
    pub due_ms: u64,
    /// The delivery's own seq (not its group's).
    pub seq: u64,
    pub record: DeliveryRecord,
}

/// Whether an attempt reached a verdict about the endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The receiver answered 2xx.
    Healthy,
    /// The attempt failed.
    Failing,
    /// No attempt was made (cancelled, lease given back).
    None,
}

/// What became of a delivery after an attempt.
#[derive(Debug, Clone)]
pub struct Completion {
    pub delivery: DueDelivery,
    pub verdict: Verdict,
    /// `Some` to try again at that time with the updated record, `None` when the delivery is finished.
    pub retry_at: Option<u64>,
    pub record: DeliveryRecord,
    /// Encoded `AttemptReport`, spooled for control.
    pub report: Vec<u8>,
}

/// Most deliveries in one group (about 5 KiB). A leaf of 17 such groups stays under the size at which sled moves a
/// page into a file of its own (a quarter of its 512 KiB segment); larger values also make every rewrite of a leaf
/// copy more (a trial with 6 KiB event chunks used more memory, not less).
pub const GROUP_SIZE: usize = 64;

/// Most reports spooled under one key; control takes up to 1000 per call, so one call always fits a record.
pub const REPORTS_PER_RECORD: usize = 500;

/// One spooled record of attempt reports.
#[derive(Debug, Clone)]
pub struct ReportSpool {
    pub key: sled::IVec,
    /// Encoded `AttemptReport`s.
    pub reports: Vec<Vec<u8>>,
}

/// Configuration of the queue.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// sled page cache size.
    pub cache_capacity_bytes: u64,
    /// How long an event id is remembered for idempotency.
    pub dedup_window: Duration,
    /// How long payloads of finished deliveries are kept for replay.
    pub payload_retention: Duration,
    /// How often expired records are swept.
    pub sweep_interval: Duration,
    /// Most keys one sweep reads per kind of record ([`SWEEP_BATCH`] outside tests).
    pub sweep_batch: usize,
}

/// How many keys one sweep reads per kind of record: a pass takes milliseconds, between two batches of writes.
pub const SWEEP_BATCH: usize = 10_000;

/// A finished delivery to deliver again, as control knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    pub delivery_id: String,
    pub endpoint_id: String,
    /// Owner and id of its event: the record under `event_seq` must be that event.
    pub owner: String,
    pub event_id: String,
    /// Where the payload is: the `payload_ref` its reports carried.
    pub event_seq: u64,
    /// Attempts made so far; the new series counts on from them.
    pub attempts: u32,
    pub created_at_ms: u64,
}

/// What a replay request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// The delivery is pending again.
    Requeued,
    /// Nothing to replay here; the reason says why.
    NotHeld(String),
}

/// Handle to the queue; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    storage: SharedStorage,
    event_bytes: Arc<AtomicU64>,
    ops: std::sync::mpsc::Sender<Op>,
    depth: Arc<AtomicU64>,
    reports: Arc<AtomicU64>,
    reports_ready: Arc<Notify>,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// What the queue found on disk when it opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Endpoint ids that have pending deliveries.
    pub endpoints: Vec<String>,
    pub deliveries: u64,
    pub reports: u64,
    /// Bytes of the event packs on disk (each event's record plus 12 bytes of framing).
    pub event_bytes: u64,
}

impl Queue {
    /// Opens (or creates) the queue in `dir` and starts its writer thread. `signals` receives what the dispatcher
    /// must know: new work and finished attempts.
    pub fn open(
        dir: &Path,
        options: QueueOptions,
        signals: mpsc::UnboundedSender<Signal>,
    ) -> Result<(Self, Recovered), QueueError> {
        let storage = Storage::open(dir, &options)?;
        let (recovered_state, recovered) = recovery::recover(&storage.tree)?;
        let depth = Arc::new(AtomicU64::new(recovered.deliveries));
        let event_bytes = Arc::new(AtomicU64::new(recovered.event_bytes));
        let reports = Arc::new(AtomicU64::new(recovered.reports));
        let reports_ready = Arc::new(Notify::new());
        let storage = Arc::new(StorageCell::new(dir, storage));
        let (ops, writer) = writer::spawn(
            storage.clone(),
            recovered_state,
            ops::Shared {
                depth: depth.clone(),
                event_bytes: event_bytes.clone(),
                reports: reports.clone(),
                reports_ready: reports_ready.clone(),
                signals,
            },
            options,
        );
        let writer = Arc::new(std::sync::Mutex::new(Some(writer)));
        Ok((Self { storage, ops, depth, event_bytes, reports, reports_ready, writer }, recovered))
    }

    /// Sends the operation to the writer now (so operations sent one after the other apply in that order, whenever
    /// their futures are awaited) and returns the future of its answer.
    fn call<T, F>(&self, op: F) -> impl std::future::Future<Output = Result<T, QueueError>> + use<T, F>
    where
        F: FnOnce(oneshot::Sender<Result<T, QueueError>>) -> Op,
    {
        let (reply, answer) = oneshot::channel();
        let sent = self.ops.send(op(reply)).map_err(|_| QueueError::Closed);
        async move {
            sent?;
            answer.await.map_err(|_| QueueError::Closed)?
        }
    }

    /// Makes events and their deliveries durable; answers once they are flushed to disk.
    pub async fn enqueue(&self, events: Vec<NewEvent>) -> Result<Vec<Enqueued>, QueueError> {
        self.call(|reply| Op::Enqueue { events, reply }).await
    }

    /// Records the outcome of an attempt: reschedules or finishes the delivery and spools the report. Sent to the
    /// writer before this returns, like [`Queue::save_failing_since`].
    pub fn complete(
        &self,
        completion: Completion,
    ) -> impl std::future::Future<Output = Result<(), QueueError>> + use<> {
        self.call(|reply| Op::Complete { completion: Box::new(completion), reply })
    }

    /// Makes finished deliveries pending again, from their retained payloads; one outcome per request, in order.
    pub async fn replay(&self, requests: Vec<ReplayRequest>) -> Result<Vec<ReplayOutcome>, QueueError> {
        self.call(|reply| Op::Replay { requests, reply }).await
    }

    /// Removes spooled records whose reports control acknowledged.
    pub async fn ack_reports(&self, acked: Vec<ReportSpool>) -> Result<(), QueueError> {
        let reports = acked.iter().map(|spool| spool.reports.len() as u64).sum();
        let keys = acked.into_iter().map(|spool| spool.key).collect();
        self.call(|reply| Op::AckReports { keys, reports, reply }).await
    }

    /// Persists the applied config snapshot (encoded), durably.
    pub async fn save_config(&self, snapshot: Vec<u8>) -> Result<(), QueueError> {
        self.call(|reply| Op::SaveMeta { key: keys::META_CONFIG, value: snapshot, reply }).await
    }

    /// Persists when each failing endpoint began to fail, durably. The write is queued before this returns, so
    /// records saved one after the other land in that order even if their futures are awaited later.
    pub fn save_failing_since(
        &self,
        failing: &FailingSince,
    ) -> impl std::future::Future<Output = Result<(), QueueError>> + use<> {
        let value = failing.encode_to_vec();
        self.call(|reply| Op::SaveMeta { key: keys::META_FAILING, value, reply })
    }

    /// When each failing endpoint began to fail, as last saved.
    pub fn load_failing_since(&self) -> Result<FailingSince, QueueError> {
        match self.storage.tree()?.get(keys::META_FAILING)? {
            Some(bytes) => decode(keys::META_FAILING, &bytes),
            None => Ok(FailingSince::default()),
        }
    }

    /// The last applied config snapshot, encoded, if any.
    pub fn load_config(&self) -> Result<Option<sled::IVec>, QueueError> {
        Ok(self.storage.tree()?.get(keys::META_CONFIG)?)
    }

    /// The event record behind a delivery.
    pub fn event(&self, seq: u64) -> Result<Option<EventRecord>, QueueError> {
        packs::read(&self.storage.tree()?, seq)
    }

    /// Up to `limit` deliveries of `endpoint_id` due at or before `now_ms`, skipping the sequence numbers `skip`
    /// says are leased already; also the due time of the first delivery that is not due yet, if any was seen.
    pub fn due(
        &self,
        endpoint_id: &str,
        now_ms: u64,
        limit: usize,
        skip: impl Fn(u64) -> bool,
    ) -> Result<(Vec<DueDelivery>, Option<u64>), QueueError> {
        self.due_after(endpoint_id, None, now_ms, limit, skip)
    }

    /// [`Queue::due`], reading only from the group key `from` on (the key of a delivery returned before), so a
    /// caller that remembers where it stopped does not walk again over the groups it leased. That group itself is
    /// read again: it may hold deliveries the last call left for the limit.
    pub fn due_after(
        &self,
        endpoint_id: &str,
        from: Option<&[u8]>,
        now_ms: u64,
        limit: usize,
        skip: impl Fn(u64) -> bool,
    ) -> Result<(Vec<DueDelivery>, Option<u64>), QueueError> {
        let prefix = keys::group_prefix(endpoint_id);
        let start = from.map_or_else(|| prefix.clone(), <[u8]>::to_vec);
        let mut due = Vec::new();
        for entry in self.storage.tree()?.range(start..) {
            let (key, value) = entry?;
            if !key.starts_with(&prefix) {
                break;
            }
            let Some(parsed) = keys::parse_group(&key) else { continue };
            if parsed.due_ms > now_ms {
                return Ok((due, Some(parsed.due_ms)));
            }
            let group: DeliveryGroup = decode(&key, &value)?;
            for record in group.deliveries {
                if skip(record.seq) {
                    continue;
                }
                if due.len() == limit {
                    return Ok((due, None));
                }
                due.push(DueDelivery {
                    key: key.to_vec(),
                    endpoint_id: parsed.endpoint_id.clone(),
                    due_ms: parsed.due_ms,
                    seq: record.seq,
                    record,
                });
            }
        }
        Ok((due, None))
    }

    /// The oldest spooled records holding at most `limit` reports together (at least one record, if any).
    pub fn pending_reports(&self, limit: usize) -> Result<Vec<ReportSpool>, QueueError> {
        let mut spools = Vec::new();
        let mut reports = 0;
        for entry in self.storage.tree()?.scan_prefix([keys::REPORT]) {
            let (key, value) = entry?;
            let record: SpooledReports = decode(&key, &value)?;
            if !spools.is_empty() && reports + record.reports.len() > limit {
                break;
            }
            reports += record.reports.len();
            spools.push(ReportSpool { key, reports: record.reports });
        }
        Ok(spools)
    }

    /// Woken whenever reports are spooled.
    pub fn reports_ready(&self) -> &Notify {
        &self.reports_ready
    }

    /// Bytes of the event records the queue holds, pending or retained for replay: what its size limit counts.
    /// Unlike [`Queue::bytes_on_disk`] it shrinks as events are pruned (sled reuses freed file space but never
    /// shrinks its files).
    pub fn event_bytes(&self) -> u64 {
        self.event_bytes.load(Ordering::Relaxed)
    }

    /// Bytes the queue's files take on disk.
    pub fn bytes_on_disk(&self) -> Result<u64, QueueError> {
        Ok(self.storage.get()?.db.size_on_disk()?)
    }

    /// Whether the storage works; changes when a write fails and when the database is open again.
    pub fn storage_state(&self) -> tokio::sync::watch::Receiver<StorageState> {
        self.storage.subscribe()
    }

    /// The storage failure in force, if any: emits are refused with it before they reach the writer.
    pub fn storage_failure(&self) -> Option<StorageFailure> {
        self.storage.failure()
    }

    /// Pending deliveries.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// Attempt reports spooled and not yet acknowledged by control.
    pub fn report_backlog(&self) -> u64 {
        self.reports.load(Ordering::Relaxed)
    }

    /// The tree, for tests that look at keys.
    #[cfg(test)]
    fn tree(&self) -> sled::Tree {
        self.storage.tree().expect("the storage is open")
    }

    /// Asks the writer thread to flush and stop once the operations sent before are done, and waits for it.
    pub async fn close(&self) {
        let _ = self.ops.send(Op::Shutdown);
        let writer = self.writer.lock().expect("writer handle lock").take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }
}

fn decode<T: prost::Message + Default>(key: &[u8], bytes: &[u8]) -> Result<T, QueueError> {
    T::decode(bytes).map_err(|source| QueueError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), source })
}
