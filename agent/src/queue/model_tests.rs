//! A model check of the queue (after vector's disk buffer model): random sequences of enqueue, lease, ack,
//! nack-with-delay and close-and-reopen, run against a real sled directory and against a plain in-memory model.
//! Every pending delivery the model holds must be in the queue, nothing finished may come back, and depth and the
//! report spool must agree with the model.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use hookrelay_common::time::now_ms;
use proptest::prelude::*;
use tokio::sync::mpsc;

use super::*;

const ENDPOINTS: [&str; 3] = ["ep_a", "ep_b", "ep_c"];
const FAR_FUTURE_MS: u64 = 1_000_000_000;

#[derive(Debug, Clone)]
enum Step {
    /// Emit events in one call (so their deliveries share groups), each with an id drawn from a small space so
    /// duplicates happen, fanning out to a subset of endpoints.
    Enqueue { events: Vec<(u8, u8)> },
    /// Lease up to `limit` due deliveries of one endpoint.
    Lease { endpoint: usize, limit: usize },
    /// Finish the n-th leased delivery.
    Ack { lease: usize },
    /// Retry the n-th leased delivery, due now or far in the future.
    Nack { lease: usize, later: bool },
    /// Finish every leased delivery at once (so that several leave one group in one batch).
    AckAll,
    /// Acknowledge every spooled report.
    AckReports,
    /// Replay the n-th finished delivery as control would send it back; when there is none, replay a pending replay
    /// again or a delivery whose payload is not here (both refused).
    Replay { finished: usize },
    /// Close the queue and open it again: leases are forgotten.
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => proptest::collection::vec((0u8..12, 1u8..8), 1..5).prop_map(|events| Step::Enqueue { events }),
        3 => (0..ENDPOINTS.len(), 1usize..4).prop_map(|(endpoint, limit)| Step::Lease { endpoint, limit }),
        2 => (0usize..8).prop_map(|lease| Step::Ack { lease }),
        2 => (0usize..8, any::<bool>()).prop_map(|(lease, later)| Step::Nack { lease, later }),
        1 => Just(Step::AckAll),
        1 => Just(Step::AckReports),
        1 => (0usize..8).prop_map(|finished| Step::Replay { finished }),
        1 => Just(Step::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    /// Pending delivery id → endpoint.
    pending: BTreeMap<String, String>,
    /// Finished deliveries as control would send them back to replay, in finishing order.
    finished: Vec<ReplayRequest>,
    /// Pending replays by delivery id.
    replaying: BTreeMap<String, ReplayRequest>,
    accepted_ids: HashSet<u8>,
    spooled_reports: usize,
    deliveries_made: usize,
}

fn open(dir: &Path) -> Queue {
    let (signals, receiver) = mpsc::unbounded_channel();
    // The receiver is dropped: signals are best-effort notifications and the queue must not depend on them.
    drop(receiver);
    let options = QueueOptions {
        cache_capacity_bytes: 4 * 1024 * 1024,
        dedup_window: Duration::from_secs(3600),
        payload_retention: Duration::from_secs(3600),
        sweep_interval: Duration::from_secs(3600),
        sweep_batch: SWEEP_BATCH,
    };
    reopen_with_retry(|| Queue::open(dir, options.clone(), signals.clone())).0
}

/// Opens a queue once its directory is unlocked (see [`hookrelay_tests::eventually::when_unlocked`]).
pub(super) fn reopen_with_retry<T>(open: impl FnMut() -> Result<T, QueueError>) -> T {
    hookrelay_tests::eventually::when_unlocked(open).unwrap_or_else(|error| panic!("reopening the queue: {error}"))
}

fn stored(queue: &Queue) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    for endpoint in ENDPOINTS {
        for delivery in queue.due(endpoint, u64::MAX, usize::MAX, |_| false).unwrap().0 {
            assert!(all.insert(delivery.record.delivery_id, endpoint.to_owned()).is_none(), "delivery stored twice");
        }
    }
    all
}

async fn run(steps: Vec<Step>) {
    let dir = tempfile::tempdir().unwrap();
    let mut queue = open(dir.path());
    let mut model = Model::default();
    let mut leases: Vec<DueDelivery> = Vec::new();
    for step in steps {
        match step {
            Step::Enqueue { events } => {
                let events: Vec<(u8, NewEvent)> = events
                    .into_iter()
                    .map(|(id, endpoints)| {
                        let deliveries = ENDPOINTS
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| endpoints & (1 << i) != 0)
                            .map(|(_, endpoint)| {
                                model.deliveries_made += 1;
                                (endpoint.to_string(), format!("dlv-{id}-{}", model.deliveries_made))
                            })
                            .collect();
                        let event = EventRecord {
                            id: format!("evt-{id}"),
                            owner: "acme".into(),
                            event_type: "a.b".into(),
                            payload: Bytes::from_static(b"{}"),
                            ..Default::default()
                        };
                        (id, NewEvent { event, deliveries })
                    })
                    .collect();
                let answers = queue.enqueue(events.iter().map(|(_, event)| event.clone()).collect()).await.unwrap();
                for ((id, event), answer) in events.into_iter().zip(answers) {
                    assert_eq!(answer.duplicate, model.accepted_ids.contains(&id), "dedup of id {id}");
                    if !answer.duplicate {
                        model.accepted_ids.insert(id);
                        for (endpoint, delivery_id) in event.deliveries {
                            model.pending.insert(delivery_id, endpoint);
                        }
                    }
                }
            }
            Step::Lease { endpoint, limit } => {
                let leased: HashSet<u64> = leases.iter().map(|lease| lease.seq).collect();
                let (due, _) = queue.due(ENDPOINTS[endpoint], now_ms(), limit, |seq| leased.contains(&seq)).unwrap();
                assert!(due.len() <= limit);
                for delivery in &due {
                    assert!(model.pending.contains_key(&delivery.record.delivery_id), "leased an unknown delivery");
                    let event = queue.event(delivery.record.event_seq).unwrap();
                    assert!(event.is_some(), "a pending delivery lost its event");
                }
                leases.extend(due);
            }
            Step::Ack { lease } | Step::Nack { lease, .. } if lease >= leases.len() => {}
            Step::Ack { lease } => {
                let delivery = leases.remove(lease);
                let finished = as_reported(&queue, &delivery);
                let record = delivery.record.clone();
                let completion =
                    Completion { delivery, verdict: Verdict::Healthy, retry_at: None, record, report: b"r".to_vec() };
                queue.complete(completion).await.unwrap();
                model.finish(finished);
            }
            Step::Nack { lease, later } => {
                let delivery = leases.remove(lease);
                let mut record = delivery.record.clone();
                record.attempts += 1;
                let retry_at = Some(if later { now_ms() + FAR_FUTURE_MS } else { now_ms() });
                queue
                    .complete(Completion {
                        delivery,
                        verdict: Verdict::Failing,
                        retry_at,
                        record,
                        report: b"r".to_vec(),
                    })
                    .await
                    .unwrap();
                model.spooled_reports += 1;
            }
            Step::AckAll => {
                // Every completion is sent before any is awaited, so the writer takes several in one batch.
                let sent: Vec<_> = leases
                    .drain(..)
                    .map(|delivery| {
                        let finished = as_reported(&queue, &delivery);
                        let record = delivery.record.clone();
                        let completion = Completion {
                            delivery,
                            verdict: Verdict::Healthy,
                            retry_at: None,
                            record,
                            report: b"r".to_vec(),
                        };
                        (finished, queue.complete(completion))
                    })
                    .collect();
                for (finished, done) in sent {
                    done.await.unwrap();
                    model.finish(finished);
                }
            }
            Step::AckReports => {
                let reports = queue.pending_reports(usize::MAX).unwrap();
                assert_eq!(spooled(&reports), model.spooled_reports);
                queue.ack_reports(reports).await.unwrap();
                model.spooled_reports = 0;
            }
            Step::Replay { finished } => {
                if finished < model.finished.len() {
                    let request = model.finished.remove(finished);
                    let outcome = queue.replay(vec![request.clone()]).await.unwrap().remove(0);
                    assert_eq!(outcome, ReplayOutcome::Requeued, "replay of finished {}", request.delivery_id);
                    model.pending.insert(request.delivery_id.clone(), request.endpoint_id.clone());
                    model.replaying.insert(request.delivery_id.clone(), request);
                } else if let Some(request) = model.replaying.values().next() {
                    let outcome = queue.replay(vec![request.clone()]).await.unwrap().remove(0);
                    assert!(matches!(outcome, ReplayOutcome::NotHeld(_)), "a pending replay was replayed again");
                } else {
                    let request = ReplayRequest {
                        delivery_id: "dlv-unknown".into(),
                        endpoint_id: ENDPOINTS[0].into(),
                        owner: "acme".into(),
                        event_id: "unknown".into(),
                        event_seq: 1,
                        attempts: 1,
                        created_at_ms: 1,
                    };
                    let outcome = queue.replay(vec![request]).await.unwrap().remove(0);
                    assert!(matches!(outcome, ReplayOutcome::NotHeld(_)));
                }
            }
            Step::Reopen => {
                queue.close().await;
                drop(queue);
                queue = open(dir.path());
                leases.clear();
            }
        }
        let stored = stored(&queue);
        assert_eq!(stored, model.pending, "queue and model disagree");
        assert!(
            model.finished.iter().all(|request| !stored.contains_key(&request.delivery_id)),
            "a finished delivery came back without a replay"
        );
        assert_eq!(queue.depth(), model.pending.len() as u64);
        assert_eq!(spooled(&queue.pending_reports(usize::MAX).unwrap()), model.spooled_reports);
        assert_eq!(queue.report_backlog(), model.spooled_reports as u64);
    }
    queue.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn queue_matches_its_model(steps in proptest::collection::vec(step(), 1..40)) {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run(steps));
    }
}

impl Model {
    /// A leased delivery finished and its report was spooled.
    fn finish(&mut self, finished: ReplayRequest) {
        assert!(self.pending.remove(&finished.delivery_id).is_some(), "a leased delivery is pending");
        self.replaying.remove(&finished.delivery_id);
        self.finished.push(finished);
        self.spooled_reports += 1;
    }
}

/// What control learns of a delivery that finishes now (from its report) and sends back to replay it.
fn as_reported(queue: &Queue, delivery: &DueDelivery) -> ReplayRequest {
    let event = queue.event(delivery.record.event_seq).unwrap().expect("a leased delivery has its event");
    ReplayRequest {
        delivery_id: delivery.record.delivery_id.clone(),
        endpoint_id: delivery.endpoint_id.clone(),
        owner: event.owner,
        event_id: event.id,
        event_seq: delivery.record.event_seq,
        attempts: delivery.record.attempts,
        created_at_ms: delivery.record.created_at_ms,
    }
}

fn spooled(records: &[crate::queue::ReportSpool]) -> usize {
    records.iter().map(|spool| spool.reports.len()).sum()
}
