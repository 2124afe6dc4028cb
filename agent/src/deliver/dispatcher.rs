//! Leases due deliveries and runs their attempts. Each endpoint's queue is its own key range, scanned only when
//! something changed for it (new work, a finished attempt, its next due time, a config change), and never beyond
//! its free in-flight slots and rate budget: a slow or dead endpoint holds its own slots and nobody else's.
//! After `breaker_threshold` consecutive failed attempts an endpoint's circuit opens: its queue is held and probed
//! with one delivery at a time, spaced by its retry schedule, until one succeeds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use hookrelay_common::ids::ReportId;
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::time::{now_ms, to_opt_timestamp, to_timestamp};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::attempt::{self, AttemptResult};
use super::retry::{self, Decision};
use crate::catalog::{Catalog, EndpointConfig, RateLimit};
use crate::metrics::{DeliveryOutcome, Metrics};
use crate::queue::{Completion, DueDelivery, EventRecord, FailingSince, Queue, Signal, Verdict};
use hookrelay_common::outbound::HttpClient;

/// Longest the dispatcher sleeps without looking at the clock again.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// Deliveries cancelled per pass for an endpoint that was deleted.
const CANCEL_BATCH: usize = 256;

/// What attempts need, shared by every attempt task.
pub struct Deliverer {
    pub queue: Queue,
    /// The pooled client; its connector enforces the address policy.
    pub client: HttpClient,
    pub node_name: String,
    /// Lets an attempt whose outcome could not be written give its lease back.
    pub signals: mpsc::UnboundedSender<Signal>,
    /// Consecutive failed attempts that open an endpoint's circuit.
    pub breaker_threshold: u32,
    /// An endpoint failing every attempt for longer than this is disabled.
    pub auto_disable_after: Duration,
    /// When each failing endpoint's current run of failures began; saved in the queue on every change, so a restart
    /// does not start the window again.
    pub failing_since: std::sync::Mutex<FailingSince>,
    /// Counts outcomes and attempt durations.
    pub metrics: Arc<Metrics>,
    /// Bytes of each response kept for the delivery log (0: none; an admin could otherwise read what an internal
    /// service answers through an endpoint pointed at it).
    pub response_snippet_bytes: usize,
}

#[derive(Default)]
struct EndpointSlot {
    leased: HashSet<u64>,
    /// The group key of the last delivery leased, and when: scans resume at it instead of walking over leased
    /// deliveries again. New and rescheduled deliveries sort after it (their due time is now or later); it is
    /// dropped when a lease is given back without an outcome, on config changes, and after a second, so nothing is
    /// passed over for long.
    cursor: Option<(Vec<u8>, u64)>,
    /// Due deliveries read ahead of the free slots (up to [`READ_AHEAD`]), started as slots free up, so that a
    /// finished attempt does not read and decode the whole group at the cursor (up to 64 deliveries) to lease one
    /// more. Dropped with the cursor.
    ready: VecDeque<DueDelivery>,
    needs_scan: bool,
    wake_at: Option<u64>,
    budget: Option<TokenBucket>,
    breaker: Breaker,
}

/// Due deliveries one scan reads beyond the endpoint's free slots.
const READ_AHEAD: usize = 64;

impl EndpointSlot {
    /// Forgets where scans resume and what they read ahead: the next scan starts at the endpoint's first due
    /// delivery.
    fn rewind(&mut self) {
        self.cursor = None;
        self.ready.clear();
    }
}

/// Circuit breaker of one endpoint.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Breaker {
    consecutive_failures: u32,
    /// Set while open: probes that failed since it opened, and when the next probe may start.
    open: Option<Probing>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Probing {
    failed_probes: u32,
    next_probe_at: u64,
}

impl Breaker {
    fn record(&mut self, verdict: Verdict, now: u64, threshold: u32, schedule: &[Duration]) -> Option<&'static str> {
        let pace = |probes: u32| {
            let step = schedule.get(probes as usize).or(schedule.last()).copied().unwrap_or(Duration::from_secs(5));
            now + step.as_millis() as u64
        };
        match verdict {
            Verdict::None => None,
            Verdict::Healthy => {
                self.consecutive_failures = 0;
                self.open.take().map(|_| "circuit closed: a probe succeeded")
            }
            Verdict::Failing => {
                self.consecutive_failures += 1;
                match &mut self.open {
                    Some(probing) => {
                        probing.failed_probes += 1;
                        probing.next_probe_at = pace(probing.failed_probes);
                        None
                    }
                    None if self.consecutive_failures >= threshold => {
                        self.open = Some(Probing { failed_probes: 0, next_probe_at: pace(0) });
                        Some("circuit opened: holding the queue and probing at the retry pace")
                    }
                    None => None,
                }
            }
        }
    }

    /// How many attempts may start now, given `free` slots; when to look again if none may.
    fn admit(&self, free: usize, leased: usize, now: u64) -> (usize, Option<u64>) {
        match &self.open {
            None => (free, None),
            Some(_) if leased > 0 => (0, None),
            Some(probing) if probing.next_probe_at > now => (0, Some(probing.next_probe_at)),
            Some(_) => (free.min(1), None),
        }
    }
}

/// Continuous-refill token bucket for an endpoint's rate limit.
struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    refreshed_ms: u64,
}

impl TokenBucket {
    fn new(limit: RateLimit, now: u64) -> Self {
        Self { limit, tokens: f64::from(limit.limit), refreshed_ms: now }
    }

    fn refill(&mut self, now: u64) {
        let per_ms = f64::from(self.limit.limit) / self.limit.period.as_millis() as f64;
        self.tokens =
            (self.tokens + (now.saturating_sub(self.refreshed_ms)) as f64 * per_ms).min(f64::from(self.limit.limit));
        self.refreshed_ms = now;
    }

    /// Whole tokens available now, and when the next one arrives if none is.
    fn available(&mut self, now: u64) -> (usize, Option<u64>) {
        self.refill(now);
        let whole = self.tokens.floor() as usize;
        if whole > 0 {
            return (whole, None);
        }
        let per_ms = f64::from(self.limit.limit) / self.limit.period.as_millis() as f64;
        (0, Some(now + ((1.0 - self.tokens) / per_ms).ceil() as u64))
    }

    fn take(&mut self, count: usize) {
        self.tokens -= count as f64;
    }
}

/// Runs until `stop` turns true, then waits up to `grace` for attempts in flight.
pub async fn run(
    deliverer: Arc<Deliverer>,
    mut catalog: watch::Receiver<Arc<Catalog>>,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    recovered_endpoints: Vec<String>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut slots: HashMap<String, EndpointSlot> = recovered_endpoints
        .into_iter()
        .map(|id| (id, EndpointSlot { needs_scan: true, ..EndpointSlot::default() }))
        .collect();
    let mut attempts = JoinSet::new();
    let mut windows_checked_at = None;
    loop {
        let current = catalog.borrow_and_update().clone();
        if windows_checked_at != Some(current.version) {
            deliverer.end_windows_of_inactive(&current).await;
            windows_checked_at = Some(current.version);
        }
        while let Ok(signal) = signals.try_recv() {
            on_signal(&mut slots, signal, &current, deliverer.breaker_threshold);
        }
        let now = now_ms();
        let mut next_wake = now + MAX_IDLE.as_millis() as u64;
        for (endpoint_id, slot) in &mut slots {
            let due_now = slot.needs_scan || slot.wake_at.is_some_and(|at| at <= now);
            if !due_now {
                if let Some(at) = slot.wake_at {
                    next_wake = next_wake.min(at);
                }
                continue;
            }
            slot.needs_scan = false;
            slot.wake_at = None;
            match current.endpoint(endpoint_id) {
                Some(endpoint) if endpoint.enabled => {
                    if let Some(at) = lease(&deliverer, endpoint, slot, now, &mut attempts) {
                        slot.wake_at = Some(at);
                        next_wake = next_wake.min(at);
                    }
                }
                // Held: re-enabling it is a config change, which rescans every endpoint.
                Some(_) => {}
                None if current.version > 0 => {
                    slot.needs_scan = cancel(&deliverer, endpoint_id, slot, &mut attempts);
                }
                // No config yet (first start, control unreachable): keep everything.
                None => {}
            }
        }
        // Idle slots go, but not the state that must outlive a quiet moment: a rate budget being refilled, a run of
        // failures counting towards (or holding) an open circuit. A deleted endpoint's slot goes once idle.
        slots.retain(|endpoint_id, slot| {
            slot.needs_scan
                || slot.wake_at.is_some()
                || !slot.leased.is_empty()
                || !slot.ready.is_empty()
                || ((slot.budget.is_some() || slot.breaker.consecutive_failures > 0)
                    && (current.version == 0 || current.endpoint(endpoint_id).is_some()))
        });
        let sleep = tokio::time::sleep(Duration::from_millis(next_wake.saturating_sub(now_ms())));
        tokio::select! {
            Some(signal) = signals.recv() => on_signal(&mut slots, signal, &current, deliverer.breaker_threshold),
            Ok(()) = catalog.changed() => {
                for endpoint in catalog.borrow().endpoints() {
                    slots.entry(endpoint.id.clone()).or_default();
                }
                for slot in slots.values_mut() {
                    slot.needs_scan = true;
                    slot.rewind();
                }
            }
            Some(_) = attempts.join_next(), if !attempts.is_empty() => {}
            _ = sleep => {}
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
    }
    drain(attempts, grace).await;
}

fn on_signal(slots: &mut HashMap<String, EndpointSlot>, signal: Signal, catalog: &Catalog, breaker_threshold: u32) {
    match signal {
        Signal::NewWork { endpoint_id, .. } => slots.entry(endpoint_id).or_default().needs_scan = true,
        // Scanning again at once would read the same delivery again: a storage that fails every read would be
        // asked in a busy loop.
        Signal::Released { endpoint_id, seq, retry_at } => {
            let slot = slots.entry(endpoint_id).or_default();
            slot.leased.remove(&seq);
            slot.rewind();
            slot.wake_at = Some(slot.wake_at.map_or(retry_at, |current| current.min(retry_at)));
        }
        Signal::Reopened { endpoints } => {
            for endpoint_id in endpoints {
                slots.entry(endpoint_id).or_default();
            }
            for slot in slots.values_mut() {
                slot.needs_scan = true;
                slot.rewind();
            }
        }
        Signal::Finished { endpoint_id, seq, retry_at, verdict } => {
            let schedule = catalog.endpoint(&endpoint_id).map(|endpoint| endpoint.retry_schedule.as_slice());
            let slot = slots.entry(endpoint_id.clone()).or_default();
            let change = slot.breaker.record(verdict, now_ms(), breaker_threshold, schedule.unwrap_or_default());
            if let Some(change) = change {
                tracing::warn!(%endpoint_id, consecutive_failures = slot.breaker.consecutive_failures, "{change}");
            }
            slot.leased.remove(&seq);
            slot.needs_scan = true;
            if verdict == Verdict::None {
                slot.rewind();
            }
            if let Some(at) = retry_at {
                slot.wake_at = Some(slot.wake_at.map_or(at, |current| current.min(at)));
            }
        }
    }
}

/// Starts attempts for as many due deliveries as the endpoint's slots and rate allow; returns when to look again
/// if something is due later.
fn lease(
    deliverer: &Arc<Deliverer>,
    endpoint: &Arc<EndpointConfig>,
    slot: &mut EndpointSlot,
    now: u64,
    attempts: &mut JoinSet<()>,
) -> Option<u64> {
    let (mut free, probe_wait) =
        slot.breaker.admit(endpoint.max_in_flight.saturating_sub(slot.leased.len()), slot.leased.len(), now);
    if free == 0 {
        return probe_wait;
    }
    let mut rate_wait = None;
    match (endpoint.rate_limit, &mut slot.budget) {
        (None, budget) => *budget = None,
        (Some(limit), budget) => {
            let bucket = match budget {
                Some(bucket) if bucket.limit == limit => bucket,
                _ => budget.insert(TokenBucket::new(limit, now)),
            };
            let (tokens, next_token) = bucket.available(now);
            free = free.min(tokens);
            rate_wait = next_token;
        }
    }
    if free == 0 {
        return rate_wait;
    }
    if slot.cursor.as_ref().is_some_and(|(_, set_at)| now.saturating_sub(*set_at) > MAX_IDLE.as_millis() as u64) {
        slot.rewind();
    }
    let mut later = None;
    if slot.ready.is_empty() {
        // Nothing read ahead is waiting, so everything unleased is still in the queue: read past the leased ones.
        let from = slot.cursor.as_ref().map(|(key, _)| key.as_slice());
        let found =
            deliverer.queue.due_after(&endpoint.id, from, now, free + READ_AHEAD, |seq| slot.leased.contains(&seq));
        let (due, due_later) = match found {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(endpoint_id = %endpoint.id, %error, "reading due deliveries failed");
                return Some(now + 1000);
            }
        };
        later = due_later;
        if let Some(last) = due.last() {
            let set_at = slot.cursor.as_ref().map_or(now, |(_, set_at)| *set_at);
            slot.cursor = Some((last.key.clone(), set_at));
        }
        slot.ready.extend(due);
    }
    let starting = free.min(slot.ready.len());
    if let Some(bucket) = &mut slot.budget {
        bucket.take(starting);
    }
    for delivery in slot.ready.drain(..starting) {
        slot.leased.insert(delivery.seq);
        let deliverer = deliverer.clone();
        let endpoint = endpoint.clone();
        attempts.spawn(async move { deliverer.attempt(endpoint, delivery).await });
    }
    later
}

/// Cancels a batch of the deliveries of an endpoint that no longer exists, keeping at most [`CANCEL_BATCH`] in flight;
/// true if more may remain. Each cancellation that finishes rescans the endpoint, so the next batch follows; without
/// the bound, every finished one leased another batch and a deleted endpoint's whole backlog went in flight at once.
fn cancel(deliverer: &Arc<Deliverer>, endpoint_id: &str, slot: &mut EndpointSlot, attempts: &mut JoinSet<()>) -> bool {
    let free = CANCEL_BATCH.saturating_sub(slot.leased.len());
    if free == 0 {
        return false;
    }
    let Ok((pending, _)) = deliverer.queue.due(endpoint_id, u64::MAX, free, |seq| slot.leased.contains(&seq)) else {
        return false;
    };
    let more = pending.len() == free;
    for delivery in pending {
        slot.leased.insert(delivery.seq);
        let deliverer = deliverer.clone();
        attempts.spawn(async move { deliverer.cancel(delivery, "endpoint was deleted").await });
    }
    more
}

/// What one attempt's outcome does to the auto-disable windows: a failure starts its endpoint's window, a success
/// ends it, and a failure past the window ends it too, with the reason to disable the endpoint. Returns that reason
/// (empty if none) and whether `failing` changed.
fn record_outcome(
    failing: &mut FailingSince,
    endpoint_id: &str,
    succeeded: bool,
    now: u64,
    window: Duration,
) -> (String, bool) {
    match (succeeded, failing.endpoints.get(endpoint_id).copied()) {
        (true, _) => (String::new(), failing.endpoints.remove(endpoint_id).is_some()),
        (false, None) => {
            failing.endpoints.insert(endpoint_id.to_owned(), now);
            (String::new(), true)
        }
        (false, Some(since)) if now.saturating_sub(since) < window.as_millis() as u64 => (String::new(), false),
        (false, Some(since)) => {
            failing.endpoints.remove(endpoint_id);
            let reason =
                format!("every attempt failed since {} (more than {}s)", to_timestamp(since), window.as_secs());
            (reason, true)
        }
    }
}

async fn drain(mut attempts: JoinSet<()>, grace: Duration) {
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = attempts.join_next() => if next.is_none() { return },
            _ = &mut deadline => {
                tracing::warn!(left = attempts.len(), "grace period over; unfinished attempts are retried after restart");
                attempts.abort_all();
                return;
            }
        }
    }
}

/// The delivery's state that a report carries besides its record.
struct ReportState {
    status: pb::DeliveryStatus,
    retry_at: Option<u64>,
    delivered_at: Option<u64>,
    disable_endpoint: String,
}

impl Deliverer {
    async fn attempt(&self, endpoint: Arc<EndpointConfig>, delivery: DueDelivery) {
        let event = match self.queue.event(delivery.record.event_seq) {
            Ok(Some(event)) => event,
            Ok(None) => {
                tracing::error!(delivery_id = %delivery.record.delivery_id, "event record missing; delivery failed");
                return self.cancel_with(delivery, None, pb::DeliveryStatus::Failed, "event record missing").await;
            }
            Err(error) => {
                tracing::error!(delivery_id = %delivery.record.delivery_id, %error, "reading event failed");
                return self.release(&delivery, now_ms() + RELEASE_FOR.as_millis() as u64);
            }
        };
        let number = delivery.record.attempts + 1;
        let result = attempt::send(&self.client, &endpoint, &event, number, self.response_snippet_bytes).await;
        // A replay starts a new series: the schedule counts from its first attempt, the header from the first ever.
        let decision = retry::decide(&result, number - delivery.record.series_base, &endpoint.retry_schedule);
        tracing::info!(
            endpoint_id = %endpoint.id,
            delivery_id = %delivery.record.delivery_id,
            attempt = number,
            status = result.status.unwrap_or(0),
            error = result.error.as_ref().map(|error| error.class).unwrap_or(""),
            duration_ms = result.duration.as_millis() as u64,
            "delivery attempt"
        );
        let finished_at = now_ms();
        let (status, outcome, reason, retry_at) = match &decision {
            Decision::Succeeded => {
                (pb::DeliveryStatus::Succeeded, pb::AttemptOutcome::Succeeded, "2xx response".to_owned(), None)
            }
            Decision::Retry { delay, reason } => (
                pb::DeliveryStatus::Pending,
                pb::AttemptOutcome::RetryScheduled,
                reason.clone(),
                Some(finished_at + delay.as_millis() as u64),
            ),
            Decision::GiveUp { reason } | Decision::Gone { reason } => {
                (pb::DeliveryStatus::Failed, pb::AttemptOutcome::GaveUp, reason.clone(), None)
            }
        };
        let counted = match &decision {
            Decision::Succeeded => DeliveryOutcome::Succeeded,
            Decision::Retry { .. } => DeliveryOutcome::Retry,
            Decision::GiveUp { .. } | Decision::Gone { .. } => DeliveryOutcome::Failed,
        };
        self.metrics.delivery(counted, Some(result.duration));
        let disable_endpoint = match &decision {
            Decision::Gone { reason } => reason.clone(),
            _ => self.track_failures(&endpoint.id, status == pb::DeliveryStatus::Succeeded, finished_at).await,
        };
        if !disable_endpoint.is_empty() {
            tracing::warn!(endpoint_id = %endpoint.id, reason = %disable_endpoint, "asking control to disable the endpoint");
        }
        let mut record = delivery.record.clone();
        record.attempts = number;
        record.last_status = u32::from(result.status.unwrap_or(0));
        record.last_error = result.error.as_ref().map(|error| error.message.clone()).unwrap_or_default();
        let attempt_report = pb::Attempt {
            delivery_id: record.delivery_id.clone(),
            number,
            started_at: Some(to_timestamp(result.started_at_ms)),
            duration_ms: result.duration.as_millis() as u64,
            status_code: record.last_status,
            error_class: result.error.as_ref().map(|error| error.class.to_owned()).unwrap_or_default(),
            error: record.last_error.clone(),
            response_snippet: result.snippet.clone(),
            outcome: outcome as i32,
            reason,
            next_attempt_at: retry_at.map(to_timestamp),
        };
        let delivered_at = (status == pb::DeliveryStatus::Succeeded).then_some(finished_at);
        let report = self.report(
            &event,
            &endpoint.id,
            &record,
            ReportState { status, retry_at, delivered_at, disable_endpoint },
            Some(attempt_report),
        );
        let verdict = if status == pb::DeliveryStatus::Succeeded { Verdict::Healthy } else { Verdict::Failing };
        self.finish(Completion { delivery, verdict, retry_at, record, report }, &result).await;
    }

    async fn cancel(&self, delivery: DueDelivery, reason: &str) {
        match self.queue.event(delivery.record.event_seq) {
            Ok(event) => self.cancel_with(delivery, event, pb::DeliveryStatus::Cancelled, reason).await,
            Err(error) => {
                tracing::warn!(delivery_id = %delivery.record.delivery_id, %error, "reading event failed");
                self.release(&delivery, now_ms() + RELEASE_FOR.as_millis() as u64);
            }
        }
    }

    /// Finishes a delivery without an attempt (cancelled, or its event is gone).
    async fn cancel_with(
        &self,
        delivery: DueDelivery,
        event: Option<EventRecord>,
        status: pb::DeliveryStatus,
        reason: &str,
    ) {
        let counted =
            if status == pb::DeliveryStatus::Cancelled { DeliveryOutcome::Cancelled } else { DeliveryOutcome::Failed };
        self.metrics.delivery(counted, None);
        let mut record = delivery.record.clone();
        record.last_error = reason.to_owned();
        let event = event.unwrap_or_default();
        let state = ReportState { status, retry_at: None, delivered_at: None, disable_endpoint: String::new() };
        let report = self.report(&event, &delivery.endpoint_id, &record, state, None);
        let completion = Completion { delivery, verdict: Verdict::None, retry_at: None, record, report };
        self.finish(completion, &AttemptResult::default()).await;
    }

    /// Ends the auto-disable windows of endpoints that are disabled or gone, so that one enabled again starts a
    /// fresh window rather than being disabled again at its first failure.
    async fn end_windows_of_inactive(&self, catalog: &Catalog) {
        if catalog.version == 0 {
            return;
        }
        self.change_windows(|failing| {
            let before = failing.endpoints.len();
            failing.endpoints.retain(|id, _| catalog.endpoint(id).is_some_and(|endpoint| endpoint.enabled));
            ((), failing.endpoints.len() != before)
        })
        .await;
    }

    /// Records a success or failure of `endpoint_id`; returns why to disable it once it has failed every attempt for
    /// longer than the auto-disable window, or an empty string. Disabling ends the run, so an endpoint enabled again
    /// gets a whole window.
    async fn track_failures(&self, endpoint_id: &str, succeeded: bool, now: u64) -> String {
        self.change_windows(|failing| record_outcome(failing, endpoint_id, succeeded, now, self.auto_disable_after))
            .await
    }

    /// Applies `change` to the auto-disable windows and saves them if it says they changed. The save is queued while
    /// the lock is held, so saves reach the disk in the order of the changes; a failed save is logged (a restart may
    /// then start a window again).
    async fn change_windows<R>(&self, change: impl FnOnce(&mut FailingSince) -> (R, bool)) -> R {
        let (result, saved) = {
            let mut failing = self.failing_since.lock().expect("failing_since lock");
            let (result, changed) = change(&mut failing);
            (result, changed.then(|| self.queue.save_failing_since(&failing)))
        };
        if let Some(saved) = saved
            && let Err(error) = saved.await
        {
            tracing::warn!(%error, "saving the auto-disable windows failed; a restart may start them again");
        }
        result
    }

    fn report(
        &self,
        event: &EventRecord,
        endpoint_id: &str,
        record: &crate::queue::DeliveryRecord,
        state: ReportState,
        attempt: Option<pb::Attempt>,
    ) -> Vec<u8> {
        let ReportState { status, retry_at, delivered_at, disable_endpoint } = state;
        pb::AttemptReport {
            report_id: ReportId::generate().to_string(),
            delivery: Some(pb::Delivery {
                id: record.delivery_id.clone(),
                event_id: event.id.clone(),
                owner_id: event.owner.clone(),
                endpoint_id: endpoint_id.to_owned(),
                event_type: event.event_type.clone(),
                status: status as i32,
                attempts: record.attempts,
                next_attempt_at: retry_at.and_then(to_opt_timestamp),
                last_status_code: record.last_status,
                last_error: record.last_error.clone(),
                created_at: to_opt_timestamp(record.created_at_ms),
                updated_at: Some(to_timestamp(now_ms())),
                delivered_at: delivered_at.and_then(to_opt_timestamp),
                agent: self.node_name.clone(),
                payload_ref: record.event_seq,
            }),
            attempt,
            disable_endpoint,
        }
        .encode_to_vec()
    }

    /// Records the outcome, holding the lease until the queue took it. An outcome that cannot be written (a full
    /// disk) is written again at a growing interval rather than given back: the delivery would be due again at
    /// once, and its receiver would get it again and again at the pace of a failing write. Held leases fill the
    /// endpoint's in-flight slots, so nothing more goes to it until the storage is back.
    async fn finish(&self, completion: Completion, result: &AttemptResult) {
        let mut pause = OUTCOME_RETRY_FIRST;
        let mut logged = false;
        while let Err(error) = self.queue.complete(completion.clone()).await {
            if !logged {
                tracing::error!(delivery_id = %completion.delivery.record.delivery_id, %error, status = ?result.status,
                    "recording an attempt failed; holding its outcome until the queue takes it");
                logged = true;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(OUTCOME_RETRY_MAX);
        }
    }

    /// Gives the lease back without recording anything; the delivery is tried again at `retry_at`.
    fn release(&self, delivery: &DueDelivery, retry_at: u64) {
        let _ = self.signals.send(Signal::Released {
            endpoint_id: delivery.endpoint_id.clone(),
            seq: delivery.seq,
            retry_at,
        });
    }
}

/// How long a delivery whose event could not be read waits before it is read again.
const RELEASE_FOR: Duration = Duration::from_secs(1);
/// Pauses between attempts to record an outcome the queue refused.
const OUTCOME_RETRY_FIRST: Duration = Duration::from_millis(100);
const OUTCOME_RETRY_MAX: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(1000)];

    #[test]
    fn breaker_opens_after_the_threshold_and_probes_at_the_retry_pace() {
        let mut breaker = Breaker::default();
        for _ in 0..4 {
            assert_eq!(breaker.record(Verdict::Failing, 0, 5, &SCHEDULE), None);
        }
        assert_eq!(breaker.admit(16, 3, 0), (16, None));
        assert!(breaker.record(Verdict::Failing, 0, 5, &SCHEDULE).unwrap().starts_with("circuit opened"));
        assert_eq!(breaker.admit(16, 0, 50), (0, Some(100)));
        assert_eq!(breaker.admit(16, 0, 100), (1, None));
        assert_eq!(breaker.admit(16, 1, 100), (0, None), "one probe at a time");
        assert_eq!(breaker.record(Verdict::Failing, 100, 5, &SCHEDULE), None);
        assert_eq!(breaker.admit(16, 0, 200), (0, Some(1100)), "the next probe waits the next step");
        assert!(breaker.record(Verdict::Healthy, 1100, 5, &SCHEDULE).unwrap().starts_with("circuit closed"));
        assert_eq!(breaker.admit(16, 0, 1100), (16, None));
    }

    #[test]
    fn auto_disable_window_starts_at_the_first_failure_and_ends_with_a_success_or_the_verdict() {
        let window = Duration::from_secs(10);
        let mut failing = FailingSince::default();
        assert_eq!(record_outcome(&mut failing, "ep_a", true, 0, window), (String::new(), false));
        assert_eq!(record_outcome(&mut failing, "ep_a", false, 1_000, window), (String::new(), true));
        assert_eq!(record_outcome(&mut failing, "ep_a", false, 10_999, window), (String::new(), false));
        let (reason, changed) = record_outcome(&mut failing, "ep_a", false, 11_000, window);
        assert!(changed && reason.starts_with("every attempt failed since 1970-01-01T00:00:01"), "{reason}");
        assert!(failing.endpoints.is_empty(), "disabling ends the run: enabled again, it gets a whole window");
        assert_eq!(record_outcome(&mut failing, "ep_a", false, 20_000, window), (String::new(), true));
        assert_eq!(record_outcome(&mut failing, "ep_a", true, 25_000, window), (String::new(), true));
        assert!(failing.endpoints.is_empty());
    }

    #[test]
    fn token_bucket_limits_the_rate() {
        let limit = RateLimit { limit: 10, period: Duration::from_secs(60) };
        let mut bucket = TokenBucket::new(limit, 0);
        assert_eq!(bucket.available(0), (10, None));
        bucket.take(10);
        assert_eq!(bucket.available(0), (0, Some(6000)));
        assert_eq!(bucket.available(6000).0, 1);
    }
}
