//! Chaos: events are emitted in batches while the agent is killed with SIGKILL at random moments and restarted, and
//! the receiver fails every fifth request. Every event whose emit was acknowledged must be delivered at least once;
//! the run prints how many were lost (must be 0) and how many were delivered more than once (allowed: the promise is
//! at-least-once, always with the same `webhook-id`).
//!
//! CI runs the short form (20,000 events, 20 kills). The long form raises both:
//! `HOOKRELAY_CHAOS_EVENTS=20000 HOOKRELAY_CHAOS_KILLS=100 cargo test -p hookrelay-tests --test chaos -- --nocapture`
//! (after `cargo build --workspace`, which builds the binaries it runs).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookrelay_common::proto::v1::EmitBatchRequest;
use hookrelay_common::proto::v1::emit_service_client::EmitServiceClient;
use hookrelay_tests::api::emit_request;
use hookrelay_tests::{EndpointSpec, Receiver, Stack, eventually, unique};
use tonic::transport::{Channel, Endpoint};

const BATCH: usize = 100;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// A small deterministic generator (seeded by the process id, printed) for the kill timings.
struct Lcg(u64);

impl Lcg {
    fn next_in(&mut self, low: u64, high: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        low + (self.0 >> 33) % (high - low)
    }
}

async fn client(addr: SocketAddr) -> EmitServiceClient<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(10));
    EmitServiceClient::new(endpoint.connect_lazy())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_repeated_kill_9() {
    let events = env_or("HOOKRELAY_CHAOS_EVENTS", 20_000);
    let kills = env_or("HOOKRELAY_CHAOS_KILLS", 20);
    let mut stack = Stack::start().await;
    let receiver = Receiver::start().await;
    let schedule = [10, 20, 50, 100, 200, 200, 200, 200, 200, 200, 200, 200];
    stack.fixture.create_endpoint(EndpointSpec::new(receiver.url()).schedule_ms(&schedule).max_in_flight(64)).await;
    stack.emit_until_routed(1).await;
    receiver.set_fail_every(Some(5));

    let (owner, event_type) = (stack.fixture.owner.clone(), stack.fixture.event_type.clone());
    let prefix = unique("chaos");
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let addr = stack.agent.addr();
    let emitter = tokio::spawn({
        let accepted = accepted.clone();
        let prefix = prefix.clone();
        async move {
            let mut emit = client(addr).await;
            let mut failures = 0usize;
            for start in (0..events).step_by(BATCH) {
                let ids: Vec<String> = (start..(start + BATCH).min(events)).map(|i| format!("{prefix}-{i}")).collect();
                let request = EmitBatchRequest {
                    events: ids
                        .iter()
                        .map(|id| emit_request(&owner, &event_type, id, &serde_json::json!({"id": id})))
                        .collect(),
                };
                // Retry the same ids until the agent answers: an answer after a crash may say "duplicate", which
                // still means accepted.
                loop {
                    match emit.emit_batch(request.clone()).await {
                        Ok(_) => break,
                        Err(_) => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            emit = client(addr).await;
                        }
                    }
                }
                accepted.lock().expect("accepted lock").extend(ids);
            }
            failures
        }
    });

    let seed = u64::from(std::process::id());
    let mut rng = Lcg(seed);
    let started = Instant::now();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.next_in(50, 400))).await;
        stack.agent.kill9();
        stack.agent.restart().await;
    }
    let emit_failures = emitter.await.expect("the emitter task");
    let accepted: BTreeSet<String> = accepted.lock().expect("accepted lock").clone();
    assert_eq!(accepted.len(), events, "every batch is eventually acknowledged");

    let deadline = Duration::from_secs(240);
    let delivered = eventually("every acknowledged event is delivered", deadline, async || {
        let delivered = receiver.succeeded_ids();
        let missing = accepted.iter().filter(|id| !delivered.contains(*id)).count();
        if missing == 0 { Ok(delivered) } else { Err(format!("{missing} of {} not delivered yet", accepted.len())) }
    })
    .await;
    let lost = accepted.iter().filter(|id| !delivered.contains(*id)).count();
    let mut successes: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for request in receiver.requests().iter().filter(|r| r.succeeded() && r.webhook_id().starts_with(&prefix)) {
        *successes.entry(request.webhook_id().to_owned()).or_default() += 1;
    }
    let duplicates = successes.values().filter(|&&count| count > 1).count();
    println!(
        "chaos: seed={seed} events={events} kills={kills} emit_retries={emit_failures} accepted={} lost={lost} \
         duplicates={duplicates} requests={} elapsed={:?}",
        accepted.len(),
        receiver.count(),
        started.elapsed()
    );
    assert_eq!(lost, 0);
}
