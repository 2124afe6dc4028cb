//! What the queue's handles ask of its writer ([`Op`]), and what the writer tells the dispatcher ([`Signal`]) and
//! the handles ([`Shared`]).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::{Notify, mpsc, oneshot};

use super::storage::StorageFailure;
use super::{Completion, Enqueued, NewEvent, QueueError, ReplayOutcome, ReplayRequest, Verdict};

pub(super) enum Op {
    Enqueue { events: Vec<NewEvent>, reply: oneshot::Sender<Result<Vec<Enqueued>, QueueError>> },
    Complete { completion: Box<Completion>, reply: oneshot::Sender<Result<(), QueueError>> },
    AckReports { keys: Vec<sled::IVec>, reports: u64, reply: oneshot::Sender<Result<(), QueueError>> },
    SaveMeta { key: &'static [u8], value: Vec<u8>, reply: oneshot::Sender<Result<(), QueueError>> },
    Replay { requests: Vec<ReplayRequest>, reply: oneshot::Sender<Result<Vec<ReplayOutcome>, QueueError>> },
    Shutdown,
}

impl Op {
    /// Whether a caller waits for the batch to reach the disk: such a batch is applied without gathering more.
    pub(super) fn is_durable(&self) -> bool {
        !matches!(self, Op::Complete { .. } | Op::AckReports { .. })
    }

    /// How many records the operation writes or removes, roughly: what a batch is bounded by.
    pub(super) fn records(&self) -> usize {
        match self {
            Op::Enqueue { events, .. } => events.len(),
            Op::Replay { requests, .. } => requests.len(),
            Op::AckReports { keys, .. } => keys.len(),
            Op::Complete { .. } | Op::SaveMeta { .. } | Op::Shutdown => 1,
        }
    }

    /// Answers the operation with the storage's failure without applying it.
    pub(super) fn refuse(self, failure: &StorageFailure) {
        match self {
            Op::Enqueue { reply, .. } => drop(reply.send(Err(failure.to_error()))),
            Op::Replay { reply, .. } => drop(reply.send(Err(failure.to_error()))),
            Op::Complete { reply, .. } | Op::AckReports { reply, .. } | Op::SaveMeta { reply, .. } => {
                drop(reply.send(Err(failure.to_error())))
            }
            Op::Shutdown => {}
        }
    }
}

/// What the writer tells the dispatcher once a batch is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A delivery of this endpoint became due at `due_ms`.
    NewWork { endpoint_id: String, due_ms: u64 },
    /// An attempt's outcome is recorded: the lease on `seq` can go.
    Finished { endpoint_id: String, seq: u64, retry_at: Option<u64>, verdict: Verdict },
    /// An attempt gave its lease back without an outcome (its event could not be read): look at the endpoint again
    /// at `retry_at`, not before.
    Released { endpoint_id: String, seq: u64, retry_at: u64 },
    /// The storage was reopened after a failure: what was read from it before may be stale, and these endpoints
    /// have pending deliveries.
    Reopened { endpoints: Vec<String> },
}

#[derive(Clone)]
pub(super) struct Shared {
    pub depth: Arc<AtomicU64>,
    /// Bytes of the event records held (pending and retained), what the queue's size limit counts.
    pub event_bytes: Arc<AtomicU64>,
    /// Reports spooled and not yet acknowledged.
    pub reports: Arc<AtomicU64>,
    pub reports_ready: Arc<Notify>,
    pub signals: mpsc::UnboundedSender<Signal>,
}
