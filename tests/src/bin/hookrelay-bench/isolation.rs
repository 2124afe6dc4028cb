//! Scenario `isolation`: the healthy endpoint's delivery rate alone, then again while a dead endpoint of the same
//! agent (it accepts connections and never answers, so every attempt waits for its timeout) gets a stream of events
//! of its own. A dead endpoint holds only its own in-flight slots, so the healthy rate should barely move.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hookrelay_common::proto::v1::EmitRequest;
use hookrelay_common::proto::v1::emit_service_client::EmitServiceClient;
use hookrelay_tests::EndpointSpec;
use hookrelay_tests::api::{Fixture, emit_until_routed};
use serde::Serialize;
use tokio::net::TcpListener;
use tonic::transport::Channel;

use crate::e2e::{self, Plan};
use crate::emitter::Emitter;
use crate::payload;
use crate::sink::Sink;

/// Id prefix of the healthy endpoint's events emitted alone.
pub const ALONE: &str = "bench-alone-";
/// Id prefix of the healthy endpoint's events emitted beside the dead endpoint's.
pub const SHARED: &str = "bench-shared-";
/// Events per second emitted for the dead endpoint during the shared phase, by this many workers.
const DEAD_EVENTS_PER_SEC: u64 = 500;
const DEAD_EMITTERS: u64 = 8;

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub struct IsolationReport {
    pub events: usize,
    /// Healthy endpoint, alone: events per second from the first emit until the receiver had every event.
    pub healthy_alone_per_sec: f64,
    /// The same while the dead endpoint has work.
    pub healthy_with_dead_per_sec: f64,
    /// `healthy_with_dead_per_sec / healthy_alone_per_sec`.
    pub ratio: f64,
    /// Events emitted for the dead endpoint during the shared phase.
    pub dead_events: u64,
    /// Connections the dead endpoint accepted (and never answered).
    pub dead_connections: usize,
}

/// Runs the scenario: `plan` describes the healthy endpoint's phase (its id prefix is replaced).
pub async fn run(
    fixture: &mut Fixture,
    emitters: &[Emitter],
    grpc: EmitServiceClient<Channel>,
    sink: Arc<Sink>,
    plan: Plan,
) -> anyhow::Result<IsolationReport> {
    let alone_plan = Plan { id_prefix: ALONE, ..plan };
    let alone = phase(&alone_plan, emitters, &sink).await?;
    eprintln!("hookrelay-bench: isolation: healthy endpoint alone {alone:.0}/s");

    let (dead_addr, dead_connections) = start_dead_receiver().await?;
    let dead_type = fixture.add_event_type("dead").await;
    fixture.create_endpoint(EndpointSpec::new(format!("http://{dead_addr}/hook")).filters(&[dead_type.as_str()])).await;
    let mut emitter = grpc;
    emit_until_routed(&mut emitter, &fixture.owner, &dead_type, 1).await;

    let stop = Arc::new(AtomicBool::new(false));
    let dead_emitters: Vec<_> = (0..DEAD_EMITTERS)
        .map(|worker| {
            let (owner, event_type) = (fixture.owner.clone(), dead_type.clone());
            tokio::spawn(emit_dead_events(emitter.clone(), owner, event_type, worker, stop.clone()))
        })
        .collect();
    let shared_plan = Plan { id_prefix: SHARED, ..alone_plan };
    let shared = phase(&shared_plan, emitters, &sink).await;
    stop.store(true, Ordering::Relaxed);
    let mut dead_events = 0;
    for worker in dead_emitters {
        dead_events += worker.await??;
    }
    let shared = shared?;
    eprintln!("hookrelay-bench: isolation: beside a dead endpoint {shared:.0}/s ({dead_events} dead events)");
    Ok(IsolationReport {
        events: shared_plan.events,
        healthy_alone_per_sec: crate::round(alone, 1),
        healthy_with_dead_per_sec: crate::round(shared, 1),
        ratio: crate::round(shared / alone, 3),
        dead_events,
        dead_connections: dead_connections.load(Ordering::Relaxed),
    })
}

/// Emits the plan and waits for every delivery; events per second.
async fn phase(plan: &Plan, emitters: &[Emitter], sink: &Sink) -> anyhow::Result<f64> {
    let started = Instant::now();
    e2e::emit(plan, emitters, started).await?;
    let delivered = e2e::wait_delivered(plan, sink.tally(plan.id_prefix), started).await?;
    Ok(plan.events as f64 / delivered.as_secs_f64())
}

/// A receiver that accepts connections and never reads or answers; returns its address and a count of connections.
async fn start_dead_receiver() -> anyhow::Result<(std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        // Held until the benchmark ends: the agent's attempts wait for their timeout.
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    Ok((addr, connections))
}

/// One of the workers emitting events for the dead endpoint at [`DEAD_EVENTS_PER_SEC`] in all, until `stop`;
/// returns how many it emitted.
async fn emit_dead_events(
    mut emitter: EmitServiceClient<Channel>,
    owner: String,
    event_type: String,
    worker: u64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<u64> {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 * DEAD_EMITTERS / DEAD_EVENTS_PER_SEC));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let request = EmitRequest {
            owner: owner.clone(),
            r#type: event_type.clone(),
            id: format!("bench-dead-{worker}-{sent}"),
            payload: payload::make(sent as usize, 1024),
            ..Default::default()
        };
        emitter.emit(request).await?;
        sent += 1;
    }
    Ok(sent)
}
