//! The queue's single writer thread: group commit of every mutation (see the module doc of [`super`]), with the
//! flush pipelined in a thread of its own.

use std::collections::{HashMap, HashSet};

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use hookrelay_common::time::now_ms;
use prost::Message;

use super::flusher::{Flusher, Reply, batch_failure, fail_storage, release_deferred_frees};
use super::ops::{Op, Shared, Signal};
use super::packs;
use super::pending::PendingEvents;
use super::records::{DedupRecord, DeliveryGroup, DeliveryRecord, SpooledReports};
use super::recovery::{Backoff, RecoveredState, reopen_storage, replay_key};
use super::storage::{SharedStorage, Storage, StorageFailure};
use super::{
    Completion, Enqueued, GROUP_SIZE, NewEvent, QueueError, QueueOptions, REPORTS_PER_RECORD, ReplayOutcome,
    ReplayRequest, decode, keys,
};

/// Records (events, completions, acknowledged report records, replays) applied in one batch, at most (one more
/// operation may tip it over). Unbounded, many emitters sending batches made batches of thousands of events whose
/// memory the queue held at once; bounded, memory stays flat and each emit waits for a smaller batch.
const MAX_BATCH_RECORDS: usize = 256;

/// How long a batch of operations that need no flush (attempt outcomes, report acknowledgements) waits for more
/// before it is applied. sled seals its write buffer twice per batch (`pin_log`), and each sealed buffer is a write
/// and a wake-up of sled's IO threads, so outcomes arriving one by one while a backlog drains would each cost writes.
/// An operation that must be durable (an emit, say) ends the wait at once.
const GATHER: Duration = Duration::from_millis(1);

pub(super) fn spawn(
    storage: SharedStorage,
    recovered: RecoveredState,
    shared: Shared,
    options: QueueOptions,
) -> (Sender<Op>, std::thread::JoinHandle<()>) {
    let (sender, receiver) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("queue-writer".into())
        .spawn(move || {
            let mut recovered = recovered;
            let mut reopen = Backoff::default();
            loop {
                let Ok(open) = storage.get() else { return };
                let writer = Writer::new(open, storage.clone(), recovered, shared.clone(), &options);
                let Ended::Failed(failure) = writer.run(&receiver) else { return };
                match reopen_storage(&storage, &receiver, &shared, &options, failure, &mut reopen) {
                    Some(state) => recovered = state,
                    None => return,
                }
            }
        })
        .expect("spawn the queue writer thread");
    (sender, handle)
}

/// How a writer's run ended.
enum Ended {
    /// Shut down, or every handle to the queue is gone.
    Stopped,
    /// The storage failed: the database must be reopened.
    Failed(StorageFailure),
}

struct Writer {
    db: sled::Db,
    tree: sled::Tree,
    storage: SharedStorage,
    flusher: Flusher,
    pending_events: PendingEvents,
    last_event_seq: u64,
    /// [`replay_key`]s of the pending deliveries a replay made pending, so that none is pending twice.
    replaying: HashSet<u64>,
    shared: Shared,
    dedup_window: Duration,
    payload_retention: Duration,
    sweep_interval: Duration,
    sweep_batch: usize,
    sweep_cursor: Vec<u8>,
    /// The event seq the next retention pass starts from.
    retention_cursor: u64,
    /// When the sweeps run next: `sweep_interval` after a pass that found little, sooner while passes find work.
    next_sweep: Instant,
}

/// `items` in owned runs of at most `size`, in order: the records that share one key.
fn in_runs<T>(items: Vec<T>, size: usize) -> impl Iterator<Item = Vec<T>> {
    let mut items = items.into_iter().peekable();
    std::iter::from_fn(move || items.peek().is_some().then(|| items.by_ref().take(size).collect()))
}

/// One batch being built, with the in-memory changes that take effect only if it applies.
#[derive(Default)]
struct Pending {
    batch: sled::Batch,
    replies: Vec<Reply>,
    signals: Vec<Signal>,
    added_per_event: HashMap<u64, u32>,
    finished_per_event: HashMap<u64, u32>,
    answers: HashMap<Vec<u8>, Enqueued>,
    /// Deliveries made due now (fresh events, replays), per endpoint: written as groups with the batch.
    fresh: HashMap<String, Vec<DeliveryRecord>>,
    /// Seqs of deliveries leaving each group (finished or rescheduled).
    leaving: HashMap<Vec<u8>, Vec<u64>>,
    /// Rescheduled deliveries, each under its own group key; written after the groups they left are rewritten,
    /// since a delivery rescheduled twice to the same millisecond leaves and enters the same key.
    rescheduled: Vec<(Vec<u8>, DeliveryRecord)>,
    /// [`replay_key`]s of the replays made pending, and of the replays finished, by the batch.
    replays_started: Vec<u64>,
    replays_finished: Vec<u64>,
    depth_added: u64,
    depth_removed: u64,
    /// Encoded events with their seqs (rising), written in packs with the batch.
    events: Vec<(u64, Vec<u8>)>,
    event_bytes_added: u64,
    /// Encoded attempt reports to spool with the batch.
    reports: Vec<Vec<u8>>,
    reports_spooled: u64,
    reports_acked: u64,
}

impl Writer {
    fn new(
        open: Storage,
        storage: SharedStorage,
        recovered: RecoveredState,
        shared: Shared,
        options: &QueueOptions,
    ) -> Self {
        Self {
            flusher: Flusher::spawn(open.db.clone(), storage.clone()),
            db: open.db,
            tree: open.tree,
            storage,
            pending_events: recovered.pending_events,
            last_event_seq: recovered.last_event_seq,
            replaying: recovered.replaying,
            shared,
            dedup_window: options.dedup_window,
            payload_retention: options.payload_retention,
            sweep_interval: options.sweep_interval,
            sweep_batch: options.sweep_batch,
            retention_cursor: 0,
            sweep_cursor: vec![keys::DEDUP],
            next_sweep: Instant::now() + options.sweep_interval,
        }
    }

    /// Applies operations until the queue stops or its storage fails; either way the flusher has ended and the
    /// writer's handles to the database are gone when this returns.
    fn run(mut self, receiver: &Receiver<Op>) -> Ended {
        let ended = self.run_until_ended(receiver);
        self.flusher.stop();
        ended
    }

    fn run_until_ended(&mut self, receiver: &Receiver<Op>) -> Ended {
        loop {
            if let Some(failure) = self.storage.failure() {
                return Ended::Failed(failure);
            }
            // The flusher may fail the storage while no operation arrives: look again within a second.
            let wait = self.next_sweep.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
            let first = match receiver.recv_timeout(wait) {
                Ok(op) => op,
                Err(RecvTimeoutError::Timeout) => {
                    if Instant::now() >= self.next_sweep {
                        self.sweep();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return Ended::Stopped,
            };
            let mut records = first.records();
            let mut durable = first.is_durable();
            let mut ops = vec![first];
            let gather_until = Instant::now() + GATHER;
            while records < MAX_BATCH_RECORDS {
                let next = match receiver.try_recv() {
                    Ok(op) => op,
                    Err(_) if durable => break,
                    Err(_) => match receiver.recv_timeout(gather_until.saturating_duration_since(Instant::now())) {
                        Ok(op) => op,
                        Err(_) => break,
                    },
                };
                records += next.records();
                durable |= next.is_durable();
                ops.push(next);
            }
            let stop = ops.iter().any(|op| matches!(op, Op::Shutdown));
            self.apply(ops);
            release_deferred_frees();
            if stop {
                return Ended::Stopped;
            }
            if Instant::now() >= self.next_sweep {
                self.sweep();
            }
        }
    }

    fn apply(&mut self, ops: Vec<Op>) {
        let now = now_ms();
        let mut pending = Pending::default();
        let mut failed: Option<QueueError> = None;
        for op in ops {
            // An operation that cannot be staged fails the batch; its caller is answered with the others.
            let result = match op {
                Op::Enqueue { events, reply } => {
                    let staged = self.stage_enqueue(&mut pending, events, now);
                    let (answers, result) = staged.map_or_else(|error| (Vec::new(), Err(error)), |ok| (ok, Ok(())));
                    pending.replies.push(Reply::Enqueue(reply, answers));
                    result
                }
                Op::Replay { requests, reply } => {
                    let staged = self.stage_replay(&mut pending, requests);
                    let (outcomes, result) = staged.map_or_else(|error| (Vec::new(), Err(error)), |ok| (ok, Ok(())));
                    pending.replies.push(Reply::Replay(reply, outcomes));
                    result
                }
                Op::Complete { completion, reply } => {
                    self.stage_completion(&mut pending, *completion);
                    pending.replies.push(Reply::Done(reply));
                    Ok(())
                }
                Op::AckReports { keys, reports, reply } => {
                    pending.reports_acked += reports;
                    for key in keys {
                        pending.batch.remove(key);
                    }
                    pending.replies.push(Reply::Done(reply));
                    Ok(())
                }
                Op::SaveMeta { key, value, reply } => {
                    pending.batch.insert(key, value);
                    pending.replies.push(Reply::Durable(reply));
                    Ok(())
                }
                Op::Shutdown => Ok(()),
            };
            if let Err(error) = result {
                failed.get_or_insert(error);
            }
        }
        let outcome = match failed {
            Some(error) => Err(error),
            None => self.write(&mut pending, now),
        };
        match outcome {
            Ok(()) => self.commit(pending),
            Err(error) => {
                let failure = batch_failure(&self.storage, error);
                tracing::error!(error = %failure.message, "queue batch failed; nothing in it was written");
                for reply in pending.replies {
                    reply.answer(Some(&failure));
                }
            }
        }
    }

    fn write(&self, pending: &mut Pending, now: u64) -> Result<(), QueueError> {
        for (key, leaving) in std::mem::take(&mut pending.leaving) {
            let Some(stored) = self.tree.get(&key)? else { continue };
            let mut group: DeliveryGroup = decode(&key, &stored)?;
            group.deliveries.retain(|record| !leaving.contains(&record.seq));
            if group.deliveries.is_empty() {
                pending.batch.remove(key);
            } else {
                pending.batch.insert(key, group.encode_to_vec());
            }
        }
        for (key, record) in std::mem::take(&mut pending.rescheduled) {
            pending.batch.insert(key, DeliveryGroup { deliveries: vec![record] }.encode_to_vec());
        }
        for (endpoint_id, records) in std::mem::take(&mut pending.fresh) {
            for deliveries in in_runs(records, GROUP_SIZE) {
                let group = DeliveryGroup { deliveries };
                pending.batch.insert(keys::group(&endpoint_id, now, self.db.generate_id()?), group.encode_to_vec());
            }
            pending.signals.push(Signal::NewWork { endpoint_id, due_ms: now });
        }
        for (last_seq, pack) in packs::pack(std::mem::take(&mut pending.events)) {
            pending.event_bytes_added += pack.len() as u64;
            pending.batch.insert(&keys::event_pack(last_seq), pack);
        }
        for reports in in_runs(std::mem::take(&mut pending.reports), REPORTS_PER_RECORD) {
            pending.reports_spooled += reports.len() as u64;
            pending.batch.insert(&keys::report(self.db.generate_id()?), SpooledReports { reports }.encode_to_vec());
        }
        Ok(self.tree.apply_batch(std::mem::take(&mut pending.batch))?)
    }

    /// A fresh event seq: the time in its high bits, unique because only this thread hands them out.
    fn next_event_seq(&mut self, now: u64) -> u64 {
        self.last_event_seq = (now << keys::EVENT_SEQ_COUNTER_BITS).max(self.last_event_seq + 1);
        self.last_event_seq
    }

    fn stage_enqueue(
        &mut self,
        pending: &mut Pending,
        events: Vec<NewEvent>,
        now: u64,
    ) -> Result<Vec<Enqueued>, QueueError> {
        let mut answers = Vec::with_capacity(events.len());
        for NewEvent { event, deliveries } in events {
            let dedup_key = keys::dedup(&event.owner, &event.id);
            if let Some(first) = pending.answers.get(&dedup_key) {
                answers.push(Enqueued { duplicate: true, ..first.clone() });
                continue;
            }
            if let Some(stored) = self.tree.get(&dedup_key)? {
                let record: DedupRecord = decode(&dedup_key, &stored)?;
                if record.accepted_at_ms + self.dedup_window.as_millis() as u64 > now {
                    answers.push(Enqueued {
                        event_id: record.event_id,
                        deliveries: record.deliveries,
                        duplicate: true,
                    });
                    continue;
                }
            }
            let count = deliveries.len() as u32;
            if count > 0 {
                let event_seq = self.next_event_seq(now);
                pending.events.push((event_seq, event.encode_to_vec()));
                for (endpoint_id, delivery_id) in deliveries {
                    let record = DeliveryRecord {
                        delivery_id,
                        event_seq,
                        attempts: 0,
                        created_at_ms: now,
                        last_status: 0,
                        last_error: String::new(),
                        series_base: 0,
                        seq: self.db.generate_id()?,
                        replay: false,
                    };
                    pending.fresh.entry(endpoint_id).or_default().push(record);
                }
                *pending.added_per_event.entry(event_seq).or_insert(0) += count;
                pending.depth_added += u64::from(count);
            }
            let record = DedupRecord { event_id: event.id.clone(), deliveries: count, accepted_at_ms: now };
            pending.batch.insert(dedup_key.clone(), record.encode_to_vec());
            let answer = Enqueued { event_id: event.id, deliveries: count, duplicate: false };
            pending.answers.insert(dedup_key, answer.clone());
            answers.push(answer);
        }
        Ok(answers)
    }

    fn stage_completion(&self, pending: &mut Pending, completion: Completion) {
        let Completion { delivery, verdict, retry_at, mut record, report } = completion;
        pending.leaving.entry(delivery.key.clone()).or_default().push(delivery.seq);
        match retry_at {
            Some(due_ms) => {
                record.seq = delivery.seq;
                pending.rescheduled.push((keys::group(&delivery.endpoint_id, due_ms, delivery.seq), record));
            }
            None => {
                pending.depth_removed += 1;
                *pending.finished_per_event.entry(record.event_seq).or_insert(0) += 1;
                if record.replay {
                    pending.replays_finished.push(replay_key(&record.delivery_id));
                }
            }
        }
        pending.reports.push(report);
        pending.signals.push(Signal::Finished {
            endpoint_id: delivery.endpoint_id,
            seq: delivery.seq,
            retry_at,
            verdict,
        });
    }

    fn stage_replay(
        &mut self,
        pending: &mut Pending,
        requests: Vec<ReplayRequest>,
    ) -> Result<Vec<ReplayOutcome>, QueueError> {
        let mut outcomes = Vec::with_capacity(requests.len());
        for request in requests {
            if let Some(reason) = self.replay_refusal(pending, &request)? {
                outcomes.push(ReplayOutcome::NotHeld(reason.into()));
                continue;
            }
            let record = DeliveryRecord {
                delivery_id: request.delivery_id.clone(),
                event_seq: request.event_seq,
                attempts: request.attempts,
                created_at_ms: request.created_at_ms,
                last_status: 0,
                last_error: String::new(),
                series_base: request.attempts,
                seq: self.db.generate_id()?,
                replay: true,
            };
            pending.replays_started.push(replay_key(&request.delivery_id));
            pending.fresh.entry(request.endpoint_id).or_default().push(record);
            *pending.added_per_event.entry(request.event_seq).or_insert(0) += 1;
            pending.depth_added += 1;
            outcomes.push(ReplayOutcome::Requeued);
        }
        Ok(outcomes)
    }

    /// Why `request` cannot be replayed here, if it cannot.
    fn replay_refusal(&self, pending: &Pending, request: &ReplayRequest) -> Result<Option<&'static str>, QueueError> {
        let replay = replay_key(&request.delivery_id);
        if self.replaying.contains(&replay) || pending.replays_started.contains(&replay) {
            return Ok(Some("a replay of it is pending here already"));
        }
        if request.event_seq == 0 {
            return Ok(Some("control sent no payload reference for it"));
        }
        let Some(event) = packs::read(&self.tree, request.event_seq)? else {
            return Ok(Some("its payload is past the retention period (or was never held here)"));
        };
        if event.owner != request.owner || event.id != request.event_id {
            return Ok(Some("the payload under its reference belongs to another event (was the queue replaced?)"));
        }
        Ok(None)
    }

    fn commit(&mut self, pending: Pending) {
        for (event_seq, count) in pending.added_per_event {
            self.pending_events.add(event_seq, count);
        }
        for (event_seq, finished) in pending.finished_per_event {
            self.pending_events.finish(event_seq, finished);
        }
        for key in &pending.replays_finished {
            self.replaying.remove(key);
        }
        self.replaying.extend(pending.replays_started);
        self.shared.depth.fetch_add(pending.depth_added, Ordering::Relaxed);
        self.shared.event_bytes.fetch_add(pending.event_bytes_added, Ordering::Relaxed);
        self.shared.depth.fetch_sub(pending.depth_removed, Ordering::Relaxed);
        self.shared.reports.fetch_add(pending.reports_spooled, Ordering::Relaxed);
        self.shared.reports.fetch_sub(pending.reports_acked, Ordering::Relaxed);
        for signal in pending.signals {
            let _ = self.shared.signals.send(signal);
        }
        if pending.reports_spooled > 0 {
            self.shared.reports_ready.notify_one();
        }
        let (durable, applied): (Vec<_>, Vec<_>) = pending.replies.into_iter().partition(Reply::is_durable);
        for reply in applied {
            reply.answer(None);
        }
        if !durable.is_empty() {
            self.flusher.send(durable);
        }
    }

    /// Runs every sweep once. While a pass fills its batch and removes something, the next one follows after nine
    /// times as long as this one took (sweeps then take a tenth of the writer's time), so removal keeps up with any
    /// intake rate rather than a batch per interval (10,000 keys every 10 s capped it at 1,000 events/s).
    fn sweep(&mut self) {
        let started = Instant::now();
        let dedup_more = self.sweep_dedup();
        let retention_more = self.sweep_retained();
        let pause = if dedup_more || retention_more {
            (started.elapsed() * 9).clamp(Duration::from_millis(1), self.sweep_interval)
        } else {
            self.sweep_interval
        };
        self.next_sweep = Instant::now() + pause;
    }

    /// Removes the packs of events past the payload retention that no pending delivery needs, and the finished records
    /// older agents kept. Packs sort by time: each pass reads on from where the last one stopped (old events that are
    /// still pending, behind a held endpoint say, must not keep the pass from the ones after them) and starts over from
    /// the oldest once it reaches a pack with a young event or the end.
    /// Returns whether the pass was full and removed something: more is likely waiting.
    fn sweep_retained(&mut self) -> bool {
        let cutoff = now_ms().saturating_sub(self.payload_retention.as_millis() as u64);
        let mut batch = sled::Batch::default();
        let mut event_bytes_removed = 0u64;
        let mut read = 0;
        let mut next = 0;
        for entry in self.tree.range(keys::event_pack(self.retention_cursor)..).take(self.sweep_batch) {
            let Ok((key, value)) = entry else { break };
            let Some(last_seq) = keys::parse_event_pack(&key) else { break };
            if keys::event_accepted_ms(last_seq) >= cutoff {
                break;
            }
            read += 1;
            next = last_seq + 1;
            // Only the payloads of pending deliveries stay: one delivery held behind a disabled endpoint must not
            // keep its neighbours' payloads past their retention (nor count them against the queue's size).
            let pending = &self.pending_events;
            match packs::retain(&key, &value, |seq| pending.contains(seq)) {
                Ok(kept) if kept.is_empty() => {
                    event_bytes_removed += value.len() as u64;
                    batch.remove(key);
                }
                Ok(kept) if kept.len() < value.len() => {
                    event_bytes_removed += (value.len() - kept.len()) as u64;
                    batch.insert(key, kept);
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "retention keeps an event pack it cannot read"),
            }
        }
        let full = read == self.sweep_batch;
        self.retention_cursor = if full { next } else { 0 };
        let mut legacy = 0;
        for entry in self.tree.scan_prefix([keys::LEGACY_FINISHED]).take(self.sweep_batch) {
            let Ok((key, _)) = entry else { break };
            batch.remove(key);
            legacy += 1;
        }
        match self.tree.apply_batch(batch) {
            Ok(()) => {
                self.shared.event_bytes.fetch_sub(event_bytes_removed, Ordering::Relaxed);
                (full && event_bytes_removed > 0) || legacy == self.sweep_batch
            }
            Err(error) => {
                tracing::warn!(%error, "retention sweep failed");
                fail_storage(&self.storage, &error);
                false
            }
        }
    }

    /// Removes dedup records older than the window, a bounded number per call, resuming where the last call ended.
    /// Returns whether the pass was full and removed something: more is likely waiting.
    fn sweep_dedup(&mut self) -> bool {
        let cutoff = now_ms().saturating_sub(self.dedup_window.as_millis() as u64);
        let mut batch = sled::Batch::default();
        let mut last = None;
        let mut seen = 0;
        let mut expired = 0;
        for entry in self.tree.range(self.sweep_cursor.clone()..).take(self.sweep_batch) {
            let Ok((key, value)) = entry else { break };
            if key.first() != Some(&keys::DEDUP) {
                break;
            }
            seen += 1;
            if DedupRecord::decode(value.as_ref()).is_ok_and(|record| record.accepted_at_ms < cutoff) {
                batch.remove(key.clone());
                expired += 1;
            }
            last = Some(key);
        }
        self.sweep_cursor = match last {
            Some(key) if seen == self.sweep_batch => {
                let mut next = key.to_vec();
                next.push(0);
                next
            }
            _ => vec![keys::DEDUP],
        };
        match self.tree.apply_batch(batch) {
            Ok(()) => seen == self.sweep_batch && expired > 0,
            Err(error) => {
                tracing::warn!(%error, "dedup sweep failed");
                fail_storage(&self.storage, &error);
                false
            }
        }
    }
}
