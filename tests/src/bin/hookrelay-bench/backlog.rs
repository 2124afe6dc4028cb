//! Scenario `backlog`: a million events queued while the receiver is down (nothing listens on its address, so every
//! connection is refused and the endpoint's circuit opens), then the receiver comes up and the agent drains the
//! backlog. Measures the agent's resident memory while the backlog is queued and while it drains, and the drain rate.

use std::sync::Arc;
use std::time::Instant;

use hookrelay_common::proto::v1::emit_service_client::EmitServiceClient;
use hookrelay_tests::EndpointSpec;
use hookrelay_tests::api::{Fixture, emit_until_routed};
use serde::Serialize;
use tonic::transport::Channel;

use crate::e2e::{self, Plan};
use crate::emitter::{self, EmitVia};
use crate::proc_stats::RssSampler;
use crate::sink::{self, Sink};

/// Id prefix of the backlog's events.
pub const PREFIX: &str = "bench-backlog-";

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub struct BacklogReport {
    pub events: usize,
    /// Events per call while queueing (`EmitBatch` when above 1).
    pub emit_batch: usize,
    /// Rate at which the backlog was accepted while the receiver was down.
    pub queue_per_sec: f64,
    /// Largest agent resident set sampled while the backlog was queued, in MiB.
    pub queued_rss_mib: f64,
    /// Largest agent resident set sampled while it drained, in MiB.
    pub drain_rss_mib: f64,
    /// Receiver up → every event received.
    pub drain_secs: f64,
    pub drain_per_sec: f64,
    /// `drain_per_sec` against the steady phase's delivery rate of the same run.
    pub drain_vs_steady: f64,
}

/// The part of the benchmark's setup the scenario uses.
pub struct Setup<'a> {
    pub fixture: &'a mut Fixture,
    pub agent_addr: std::net::SocketAddr,
    /// A gRPC client of the agent, for the setup's own calls.
    pub grpc: EmitServiceClient<Channel>,
    pub sink: Arc<Sink>,
    pub agent_pid: Option<u32>,
    pub concurrency: usize,
    pub payload_bytes: usize,
    pub deadline: std::time::Duration,
}

/// Runs the scenario with `events` events emitted `batch` per call; `steady_per_sec` is the steady phase's rate.
pub async fn run(setup: Setup<'_>, events: usize, batch: usize, steady_per_sec: f64) -> anyhow::Result<BacklogReport> {
    let down = sink::reserve_address().await?;
    let event_type = setup.fixture.add_event_type("backlog").await;
    // Steps of a second, so that the breaker probes often and nothing gives up while the receiver is down.
    let spec = EndpointSpec::new(format!("http://{down}/hook"))
        .filters(&[event_type.as_str()])
        .max_in_flight(setup.concurrency.clamp(1, 1024) as u32)
        .schedule_ms(&[1000; 20]);
    setup.fixture.create_endpoint(spec).await;
    let mut emitter = setup.grpc.clone();
    emit_until_routed(&mut emitter, &setup.fixture.owner, &event_type, 1).await;

    let plan = Plan {
        owner: setup.fixture.owner.clone(),
        event_type,
        id_prefix: PREFIX,
        events,
        concurrency: setup.concurrency,
        batch,
        payload_bytes: setup.payload_bytes,
        deadline: setup.deadline,
    };
    // Queued with `EmitBatch` whatever `--emit-via` says: the scenario measures the drain.
    let emitters = emitter::connect(setup.agent_addr, setup.concurrency, EmitVia::Grpc).await?;
    let rss = RssSampler::start(setup.agent_pid);
    eprintln!("hookrelay-bench: backlog: queueing {events} events while the receiver at {down} is down");
    let queueing = Instant::now();
    e2e::emit(&plan, &emitters, queueing).await?;
    let queue_secs = queueing.elapsed().as_secs_f64();
    let queued_rss_mib = rss.take_peak_mib();
    eprintln!("hookrelay-bench: backlog queued in {queue_secs:.1}s, agent RSS peak {queued_rss_mib:.1} MiB");

    sink::start_on(down, setup.sink.clone()).await?;
    let released = Instant::now();
    let drained = e2e::wait_delivered(&plan, setup.sink.tally(PREFIX), released).await?;
    let drain_per_sec = events as f64 / drained.as_secs_f64();
    eprintln!("hookrelay-bench: backlog drained in {drained:?}, {drain_per_sec:.0}/s");
    Ok(BacklogReport {
        events,
        emit_batch: batch,
        queue_per_sec: crate::round(events as f64 / queue_secs, 1),
        queued_rss_mib: crate::round(queued_rss_mib, 1),
        drain_rss_mib: crate::round(rss.take_peak_mib(), 1),
        drain_secs: crate::round(drained.as_secs_f64(), 3),
        drain_per_sec: crate::round(drain_per_sec, 1),
        drain_vs_steady: crate::round(drain_per_sec / steady_per_sec, 3),
    })
}
