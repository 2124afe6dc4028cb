//! The flusher thread of the queue's group commit, and the answers owed to callers once their batch is applied or
//! on disk.

use std::sync::mpsc::Sender;

use tokio::sync::oneshot;

use super::storage::{SharedStorage, StorageFailure};
use super::{Enqueued, QueueError, ReplayOutcome};

/// Why a batch was not written, kept so every caller in it gets the same answer.
pub(super) struct WriteFailure {
    pub message: String,
    pub disk_full: bool,
}

impl WriteFailure {
    fn to_error(&self) -> QueueError {
        if self.disk_full {
            QueueError::DiskFull(self.message.clone())
        } else {
            QueueError::Write(self.message.clone())
        }
    }
}

impl From<StorageFailure> for WriteFailure {
    fn from(failure: StorageFailure) -> Self {
        Self { message: failure.message, disk_full: failure.disk_full }
    }
}

/// Answers owed once the batch is applied.
pub(super) enum Reply {
    Enqueue(oneshot::Sender<Result<Vec<Enqueued>, QueueError>>, Vec<Enqueued>),
    Replay(oneshot::Sender<Result<Vec<ReplayOutcome>, QueueError>>, Vec<ReplayOutcome>),
    /// Answered once the batch is applied: outcomes and report acks may be lost by a crash (the attempt is then
    /// repeated), so they need not wait for the disk.
    Done(oneshot::Sender<Result<(), QueueError>>),
    /// Answered once the batch is on disk.
    Durable(oneshot::Sender<Result<(), QueueError>>),
}

impl Reply {
    /// Whether the caller may be answered only after a flush.
    pub fn is_durable(&self) -> bool {
        !matches!(self, Reply::Done(_))
    }

    pub fn answer(self, failure: Option<&WriteFailure>) {
        let error = || failure.map(WriteFailure::to_error);
        match self {
            Reply::Enqueue(reply, answers) => drop(reply.send(error().map_or(Ok(answers), Err))),
            Reply::Replay(reply, outcomes) => drop(reply.send(error().map_or(Ok(outcomes), Err))),
            Reply::Done(reply) | Reply::Durable(reply) => drop(reply.send(error().map_or(Ok(()), Err))),
        }
    }
}

/// Flushes in a thread of its own and then answers the callers that waited for durability, so the writer applies
/// the next batch while the disk syncs the last one (a pipelined group commit). It is the only caller of `flush`.
pub(super) struct Flusher {
    /// `None` once the writer stopped with it.
    sender: Option<Sender<Vec<Reply>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    pub fn spawn(db: sled::Db, storage: SharedStorage) -> Self {
        let (sender, receiver) = std::sync::mpsc::channel::<Vec<Reply>>();
        let thread = std::thread::Builder::new()
            .name("queue-flusher".into())
            .spawn(move || {
                while let Ok(mut replies) = receiver.recv() {
                    while let Ok(more) = receiver.try_recv() {
                        replies.extend(more);
                    }
                    let failure = db.flush().err().map(|error| fail_storage(&storage, &error));
                    release_deferred_frees();
                    if let Some(failure) = &failure {
                        tracing::error!(error = %failure.message, "queue flush failed; its callers are told so");
                    }
                    for reply in replies {
                        reply.answer(failure.as_ref());
                    }
                }
                if storage.failure().is_none()
                    && let Err(error) = db.flush()
                {
                    tracing::error!(%error, "final queue flush failed");
                }
            })
            .expect("spawn the queue flusher thread");
        Self { sender: Some(sender), thread: Some(thread) }
    }

    /// Hands replies to the flusher; they are answered once their batch is on disk.
    pub fn send(&self, durable: Vec<Reply>) {
        let sent = match &self.sender {
            Some(sender) => sender.send(durable),
            None => Err(std::sync::mpsc::SendError(durable)),
        };
        if let Err(std::sync::mpsc::SendError(durable)) = sent {
            let failure = WriteFailure { message: "the queue flusher stopped".into(), disk_full: false };
            durable.into_iter().for_each(|reply| reply.answer(Some(&failure)));
        }
    }

    /// Lets the flusher answer what it holds, flush a last time and end, and waits for it.
    pub fn stop(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Marks the storage failed if `error` is a failure of the storage, and says how to answer the callers.
pub(super) fn fail_storage(storage: &SharedStorage, error: &sled::Error) -> WriteFailure {
    match StorageFailure::of(error) {
        Some(failure) => storage.fail(failure).into(),
        None => WriteFailure { message: error.to_string(), disk_full: false },
    }
}

/// [`fail_storage`] for any error of a batch: those of the storage fail it, the others (a corrupt record, say) fail
/// the batch alone.
pub(super) fn batch_failure(storage: &SharedStorage, error: QueueError) -> WriteFailure {
    match error {
        QueueError::Storage(error) => fail_storage(storage, &error),
        QueueError::DiskFull(message) => WriteFailure { message, disk_full: true },
        other => WriteFailure { message: other.to_string(), disk_full: false },
    }
}

/// Hands the calling thread's deferred frees to the global epoch collector and lets it collect. sled frees what it
/// replaced (its 512 KiB write buffers among them) through crossbeam-epoch's default collector, which keeps them in a
/// per-thread bag until 64 have gathered; with the writer and the flusher sealing buffers, tens of MiB waited there.
/// So both threads hand them on after every batch and every flush.
pub(super) fn release_deferred_frees() {
    crossbeam_epoch::pin().flush();
}
