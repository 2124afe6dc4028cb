//! `hookrelay-bench`: how close the end-to-end path (emit → durable queue → signed delivery → outcome recorded in
//! control) comes to what a bare pooled HTTP client achieves against the same receiver on the same machine.
//!
//! ```text
//! cargo run --release -p hookrelay-tests --bin hookrelay-bench -- --events 50000 [--concurrency 64]
//!     [--payload-bytes 1024] [--batch 1] [--emit-via grpc|http] [--scenario steady|backlog|isolation|floor]
//!     [--backlog-events 1000000]
//! ```
//!
//! It first runs `cargo build` for `hookrelay-control`, `hookrelay-agent` and this package (the floor relay) in its
//! own profile (a no-op when they are fresh; `--no-build` skips it), then starts control and agent on loopback with
//! temporary data dirs, plus a hyper receiver in this process, and measures in one run:
//! (a) baseline: `events` Standard-Webhooks-signed POSTs of `payload-bytes` sent straight to the receiver by a
//!     pooled hyper client with `concurrency` workers;
//! (b) end to end: `events` emitted to the agent (over gRPC, or `POST /v1/events` with `--emit-via http`) by
//!     `concurrency` workers, until the receiver has every one and control lists every delivery as succeeded.
//! Then, per `--scenario` (`steady`, the default, stops here):
//! - `backlog`: `--backlog-events` queued while the receiver is down, then released ([`backlog`]);
//! - `isolation`: the healthy endpoint alone, then beside a dead endpoint ([`isolation`]);
//! - `floor`: the same emits through a relay that only forwards them, then one that also flushes each event to sled
//!   first, then one that also reports each delivery to control: the most `ratio` can be here ([`floor`]).
//!
//! Progress goes to stderr; the last stdout line is one JSON object (see [`Report`]). It exits 1 if any event was
//! lost or a phase did not finish within `--timeout-secs`.

mod backlog;
mod baseline;
mod e2e;
mod emitter;
mod floor;
mod isolation;
mod payload;
mod proc_stats;
mod sink;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use hookrelay_tests::api::{Fixture, emit_until_routed};
use hookrelay_tests::process::{AGENT_BIN, CONTROL_BIN, bin_dir};
use hookrelay_tests::{AgentOpts, ControlOpts, EndpointSpec, spawn_agent_with, spawn_control_with};
use serde::Serialize;

use crate::emitter::EmitVia;
use crate::proc_stats::{cpu_secs, disk_write_bytes, peak_rss_mib};
use crate::sink::{Sink, Tally};

/// Id prefixes of the phases every run has.
pub const BASELINE: &str = "bench-base-";
pub const STEADY: &str = "bench-e2e-";

/// What runs after the baseline and the steady phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    /// Nothing more.
    Steady,
    /// A large backlog queued while the receiver is down, then drained.
    Backlog,
    /// The healthy endpoint alone, then beside a dead endpoint.
    Isolation,
    /// The same emits through relays that only forward them (`hookrelay-floor-relay`): the ceiling of `ratio`.
    Floor,
}

/// Benchmark hookrelay end to end against a bare pooled HTTP client, on loopback.
#[derive(Debug, Parser)]
struct Args {
    /// Events in each phase.
    #[arg(long, default_value_t = 50_000)]
    events: usize,
    /// Concurrent senders in each phase (baseline HTTP workers, emit workers).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Payload size of each event, in bytes.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// Events per emit call: 1 uses `Emit`, more uses `EmitBatch` (gRPC only).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// How the emit workers reach the agent.
    #[arg(long, value_enum, default_value_t = EmitVia::Grpc)]
    emit_via: EmitVia,
    /// What to measure after the steady phase.
    #[arg(long, value_enum, default_value_t = Scenario::Steady)]
    scenario: Scenario,
    /// Events queued in the backlog scenario.
    #[arg(long, default_value_t = 1_000_000)]
    backlog_events: usize,
    /// Events per call while queueing the backlog.
    #[arg(long, default_value_t = 100)]
    backlog_batch: usize,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Do not run `cargo build` for the control and agent binaries first.
    #[arg(long)]
    no_build: bool,
    /// `RUST_LOG` of control and agent.
    #[arg(long, default_value = "warn")]
    log: String,
}

/// The last stdout line.
#[derive(Debug, Serialize)]
struct Report {
    events: usize,
    concurrency: usize,
    payload_bytes: usize,
    batch: usize,
    emit_via: EmitVia,
    baseline_per_sec: f64,
    /// Events per second from the first emit until every event was delivered and recorded in control.
    e2e_per_sec: f64,
    /// `e2e_per_sec / baseline_per_sec`.
    ratio: f64,
    /// Events per second until every event was delivered (control not awaited).
    e2e_delivered_per_sec: f64,
    baseline_secs: f64,
    e2e_delivered_secs: f64,
    e2e_recorded_secs: f64,
    /// Duration of the control listing pass that found every delivery: the resolution of `e2e_recorded_secs`.
    control_listing_pass_ms: f64,
    emit_p50_ms: f64,
    emit_p99_ms: f64,
    /// Emit → receipt at the receiver.
    deliver_p50_ms: f64,
    deliver_p99_ms: f64,
    deliver_max_ms: f64,
    /// Peak resident memory (VmHWM).
    agent_rss_mib: f64,
    control_rss_mib: f64,
    /// CPU time (user + system) each process spent during the end-to-end phase, in seconds: with `e2e_*_secs`
    /// it shows whether the run was bound by CPU and where the CPU went.
    agent_cpu_secs: f64,
    control_cpu_secs: f64,
    /// This process: the emitters and the receiver.
    bench_cpu_secs: f64,
    /// Bytes each server wrote to storage during the end-to-end phase, per event: sled's log rewrites pages, so this
    /// is many times the payload.
    agent_disk_write_bytes_per_event: u64,
    control_disk_write_bytes_per_event: u64,
    /// Emitted events the receiver never got.
    lost: usize,
    /// Requests beyond the first per event at the receiver.
    duplicates: usize,
    /// Succeeded deliveries in control beyond one per event.
    control_duplicates: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    scenario: Scenario,
    #[serde(skip_serializing_if = "Option::is_none")]
    backlog: Option<backlog::BacklogReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    isolation: Option<isolation::IsolationReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    floor: Option<floor::FloorReport>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.events == 0 || args.concurrency == 0 || args.batch == 0 {
        bail!("--events, --concurrency and --batch must be at least 1");
    }
    if args.batch > 1 && args.emit_via == EmitVia::Http {
        bail!("--batch {} needs --emit-via grpc: POST /v1/events takes one event per request", args.batch);
    }
    if !args.no_build {
        build_servers()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(run(&args))?;
    println!("{}", serde_json::to_string(&report)?);
    if report.lost > 0 || report.error.is_some() {
        std::process::exit(1);
    }
    Ok(())
}

/// Builds control, agent and the floor scenario's relay in this executable's profile, so the benchmark never
/// measures stale binaries.
fn build_servers() -> anyhow::Result<()> {
    let dir = bin_dir();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.arg("build").arg("--manifest-path").arg(&manifest).args([
        "-p",
        "hookrelay-control",
        "-p",
        "hookrelay-agent",
        "-p",
        "hookrelay-tests",
    ]);
    match dir.file_name().and_then(|name| name.to_str()) {
        Some("release") => {
            command.arg("--release");
        }
        Some("debug") => {}
        other => {
            eprintln!("hookrelay-bench: binaries in {} (profile {other:?}): not building them", dir.display());
            return Ok(());
        }
    }
    if let Some(target) = dir.parent() {
        command.env("CARGO_TARGET_DIR", target);
    }
    eprintln!("hookrelay-bench: {command:?}");
    let status = command.status().context("run cargo build")?;
    if !status.success() {
        bail!("cargo build of control and agent failed ({status})");
    }
    for name in [CONTROL_BIN, AGENT_BIN] {
        if !dir.join(name).is_file() {
            bail!("{} is missing after the build", dir.join(name).display());
        }
    }
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    let deadline = Duration::from_secs(args.timeout_secs);
    let envs = vec![("RUST_LOG".to_owned(), args.log.clone())];
    let control = spawn_control_with(ControlOpts { envs: envs.clone(), ..ControlOpts::default() }).await;
    let agent = spawn_agent_with(AgentOpts { envs, ..AgentOpts::new(control.url()) }).await;
    eprintln!("hookrelay-bench: control on {}, agent on {}", control.addr(), agent.addr());

    let mut tallies = vec![Tally::new(BASELINE, args.events), Tally::new(STEADY, args.events)];
    match args.scenario {
        Scenario::Steady => {}
        Scenario::Backlog => tallies.push(Tally::new(backlog::PREFIX, args.backlog_events)),
        Scenario::Isolation => {
            tallies.push(Tally::new(isolation::ALONE, args.events));
            tallies.push(Tally::new(isolation::SHARED, args.events));
        }
        Scenario::Floor => {
            tallies.push(Tally::new(floor::PREFIX, args.events));
            tallies.push(Tally::new(floor::DURABLE_PREFIX, args.events));
            tallies.push(Tally::new(floor::REPORTING_PREFIX, args.events));
        }
    }
    let sink = Arc::new(Sink::new(tallies));
    let receiver = sink::start(sink.clone()).await?;

    let mut fixture = Fixture::new(control.admin().await).await;
    let spec = EndpointSpec::new(format!("http://{receiver}/hook"))
        .max_in_flight(args.concurrency.clamp(1, 1024) as u32)
        .schedule_ms(&[100, 200, 400, 800, 1600, 3200]);
    let (endpoint, _) = fixture.create_endpoint(spec).await;
    let mut emitter = agent.emitter().await;
    emit_until_routed(&mut emitter, &fixture.owner, &fixture.event_type, 1).await;

    eprintln!("hookrelay-bench: (a) baseline, {} signed POSTs at concurrency {}", args.events, args.concurrency);
    let baseline = baseline::run(receiver, sink.clone(), args.events, args.concurrency, args.payload_bytes, deadline)
        .await
        .context("baseline")?;
    let baseline_per_sec = args.events as f64 / baseline.as_secs_f64();
    eprintln!("hookrelay-bench: baseline {baseline:?}, {baseline_per_sec:.0}/s");

    let emitters = emitter::connect(agent.addr(), args.concurrency, args.emit_via).await?;
    let plan = e2e::Plan {
        owner: fixture.owner.clone(),
        event_type: fixture.event_type.clone(),
        id_prefix: STEADY,
        events: args.events,
        concurrency: args.concurrency,
        batch: args.batch,
        payload_bytes: args.payload_bytes,
        deadline,
    };
    eprintln!("hookrelay-bench: (b) end to end, {} events at concurrency {}", args.events, args.concurrency);
    let cpu_before = [cpu_secs(agent.pid()), cpu_secs(control.pid()), cpu_secs(Some(std::process::id()))];
    let written_before = [disk_write_bytes(agent.pid()), disk_write_bytes(control.pid())];
    let outcome = e2e::run(&plan, &emitters, control.admin().await, sink.clone()).await;
    let written_after = [disk_write_bytes(agent.pid()), disk_write_bytes(control.pid())];
    let written = |i: usize| written_after[i].saturating_sub(written_before[i]) / args.events as u64;

    let cpu_after = [cpu_secs(agent.pid()), cpu_secs(control.pid()), cpu_secs(Some(std::process::id()))];
    let cpu = |i: usize| round(cpu_after[i] - cpu_before[i], 2);
    let steady = sink.tally(STEADY);
    let mut deliver_ms = steady.latencies_ms();
    let (mut emit_ms, delivered, recorded, pass, control_duplicates, error) = match outcome {
        Ok(o) => (o.emit_ms, o.delivered, o.recorded, o.listing_pass, o.control_duplicates, None),
        Err(error) => {
            eprintln!("hookrelay-bench: end to end failed: {error:#}");
            eprintln!("{}\n{}", agent.stderr_report(40), control.stderr_report(40));
            (Vec::new(), Duration::ZERO, Duration::ZERO, Duration::ZERO, 0, Some(format!("{error:#}")))
        }
    };
    let per_sec = |d: Duration| if d.is_zero() { 0.0 } else { args.events as f64 / d.as_secs_f64() };
    let e2e_per_sec = per_sec(recorded.max(delivered));
    let mut report = Report {
        events: args.events,
        concurrency: args.concurrency,
        payload_bytes: args.payload_bytes,
        batch: args.batch,
        emit_via: args.emit_via,
        baseline_per_sec: round(baseline_per_sec, 1),
        e2e_per_sec: round(e2e_per_sec, 1),
        ratio: round(e2e_per_sec / baseline_per_sec, 3),
        e2e_delivered_per_sec: round(per_sec(delivered), 1),
        baseline_secs: round(baseline.as_secs_f64(), 3),
        e2e_delivered_secs: round(delivered.as_secs_f64(), 3),
        e2e_recorded_secs: round(recorded.as_secs_f64(), 3),
        control_listing_pass_ms: round(pass.as_secs_f64() * 1000.0, 1),
        emit_p50_ms: round(percentile(&mut emit_ms, 0.50), 2),
        emit_p99_ms: round(percentile(&mut emit_ms, 0.99), 2),
        deliver_p50_ms: round(percentile(&mut deliver_ms, 0.50), 2),
        deliver_p99_ms: round(percentile(&mut deliver_ms, 0.99), 2),
        deliver_max_ms: round(percentile(&mut deliver_ms, 1.0), 2),
        agent_rss_mib: round(peak_rss_mib(agent.pid()), 1),
        control_rss_mib: round(peak_rss_mib(control.pid()), 1),
        agent_cpu_secs: cpu(0),
        control_cpu_secs: cpu(1),
        bench_cpu_secs: cpu(2),
        agent_disk_write_bytes_per_event: written(0),
        control_disk_write_bytes_per_event: written(1),
        lost: args.events - steady.distinct(),
        duplicates: steady.duplicates(),
        control_duplicates,
        error,
        scenario: args.scenario,
        backlog: None,
        isolation: None,
        floor: None,
    };
    eprintln!(
        "hookrelay-bench: baseline {:.0}/s, end to end {:.0}/s (ratio {:.3}), lost {}, duplicates {}, probes {}",
        report.baseline_per_sec,
        report.e2e_per_sec,
        report.ratio,
        report.lost,
        report.duplicates,
        sink.others.load(Ordering::Relaxed)
    );
    if report.error.is_some() {
        return Ok(report);
    }
    let scenario = match args.scenario {
        Scenario::Steady => Ok(()),
        Scenario::Backlog => {
            let setup = backlog::Setup {
                fixture: &mut fixture,
                agent_addr: agent.addr(),
                grpc: emitter.clone(),
                sink: sink.clone(),
                agent_pid: agent.pid(),
                concurrency: args.concurrency,
                payload_bytes: args.payload_bytes,
                deadline,
            };
            backlog::run(setup, args.backlog_events, args.backlog_batch, report.e2e_delivered_per_sec)
                .await
                .map(|outcome| report.backlog = Some(outcome))
        }
        Scenario::Isolation => isolation::run(&mut fixture, &emitters, emitter.clone(), sink.clone(), plan)
            .await
            .map(|outcome| report.isolation = Some(outcome)),
        Scenario::Floor => {
            let control = floor::Control {
                url: control.url(),
                pid: control.pid(),
                admin: control.admin().await,
                endpoint_id: endpoint.id,
            };
            floor::run(
                receiver,
                sink.clone(),
                plan,
                args.emit_via,
                &control,
                report.baseline_per_sec,
                report.e2e_per_sec,
            )
            .await
            .map(|outcome| report.floor = Some(outcome))
        }
    };
    if let Err(error) = scenario {
        eprintln!("hookrelay-bench: scenario {:?} failed: {error:#}", args.scenario);
        eprintln!("{}\n{}", agent.stderr_report(40), control.stderr_report(40));
        report.error = Some(format!("{error:#}"));
    }
    Ok(report)
}

/// Nearest-rank percentile (`q` in 0..=1) of `values`; 0 when empty.
fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}
