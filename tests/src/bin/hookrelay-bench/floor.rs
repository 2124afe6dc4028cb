//! Scenario `floor`: what the end-to-end path's two network hops alone reach on this machine, and then with the least
//! durable queue. The same emitters send the same events (the same way, `--emit-via`) to `hookrelay-floor-relay`, a
//! process that answers each emit only once it has POSTed the event, signed, to the receiver: no queue, no disk, no
//! control. Its rate against the baseline bounds the `ratio` any agent of this shape (an emit hop and an HTTP
//! delivery hop per event) can reach here. A second relay started with `--durable` also writes each event to sled
//! and flushes it (group commit) before sending it, and removes it after: the least any agent that acknowledges only
//! what is on disk does, with no dedup record, no delivery state and no report to control. A third adds `--control`:
//! it reports each delivery to the benchmark's control, and the phase ends, as the steady phase does, only once
//! control lists every delivery: the least the whole end-to-end path (durable queue, delivery, outcome recorded in
//! control) can do, measured.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hookrelay_common::proto::v1::admin_service_client::AdminServiceClient;
use hookrelay_tests::process::bin_dir;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::e2e::{self, Plan};
use crate::emitter::{self, EmitVia};
use crate::proc_stats::cpu_secs;
use crate::sink::Sink;

/// Id prefixes of the events sent through each relay.
pub const PREFIX: &str = "bench-floor-";
pub const DURABLE_PREFIX: &str = "bench-dfloor-";
pub const REPORTING_PREFIX: &str = "bench-rfloor-";
const RELAY_BIN: &str = "hookrelay-floor-relay";

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub struct FloorReport {
    pub events: usize,
    /// Events per second from the first emit until the receiver had every one.
    pub relay_per_sec: f64,
    /// `relay_per_sec / baseline_per_sec`: the most `ratio` can be with an emit hop and an HTTP delivery hop.
    pub ratio: f64,
    /// The end-to-end rate of the same run against the relay's: what the queue, the disk and control cost.
    pub e2e_of_relay: f64,
    /// CPU seconds (user + system) of the relay and of this process (emitters, receiver) during the phase.
    pub relay_cpu_secs: f64,
    pub bench_cpu_secs: f64,
    /// The same through the relay with `--durable`: each event flushed to sled before it is sent.
    pub durable_relay_per_sec: f64,
    /// `durable_relay_per_sec / baseline_per_sec`: the most `ratio` can be for an agent on sled.
    pub durable_ratio: f64,
    pub durable_relay_cpu_secs: f64,
    /// The same through the relay with `--durable` and `--control`, until control listed every delivery.
    pub reporting_relay_per_sec: f64,
    /// `reporting_relay_per_sec / baseline_per_sec`: the most `ratio` can be for an agent on sled that reports to
    /// control.
    pub reporting_ratio: f64,
    pub reporting_relay_cpu_secs: f64,
    pub reporting_control_cpu_secs: f64,
}

/// The benchmark's control, for the reporting relay.
pub struct Control {
    pub url: String,
    pub pid: Option<u32>,
    pub admin: AdminServiceClient<Channel>,
    /// The endpoint the relay's deliveries are reported for.
    pub endpoint_id: String,
}

/// One relay's phase.
struct Phase {
    per_sec: f64,
    relay_cpu_secs: f64,
    bench_cpu_secs: f64,
    control_cpu_secs: f64,
}

/// What a relay does beyond the two hops.
#[derive(Clone, Copy)]
enum Relaying<'a> {
    Bare,
    Durable(&'a std::path::Path),
    Reporting(&'a std::path::Path, &'a Control),
}

/// Runs the scenario with `plan`'s events (its id prefix is replaced), `via` the way the steady phase emitted.
pub async fn run(
    receiver: SocketAddr,
    sink: Arc<Sink>,
    plan: Plan,
    via: EmitVia,
    control: &Control,
    baseline_per_sec: f64,
    e2e_per_sec: f64,
) -> anyhow::Result<FloorReport> {
    let bare = phase(receiver, &sink, Plan { id_prefix: PREFIX, ..plan.clone() }, via, Relaying::Bare).await?;
    eprintln!("hookrelay-bench: floor: the bare relay {:.0}/s", bare.per_sec);
    let journal = tempfile::tempdir().context("a directory for the durable relay's journal")?;
    let durable_plan = Plan { id_prefix: DURABLE_PREFIX, ..plan.clone() };
    let durable = phase(receiver, &sink, durable_plan, via, Relaying::Durable(journal.path())).await?;
    eprintln!("hookrelay-bench: floor: the durable relay {:.0}/s", durable.per_sec);
    let journal = tempfile::tempdir().context("a directory for the reporting relay's journal")?;
    let reporting_plan = Plan { id_prefix: REPORTING_PREFIX, ..plan.clone() };
    let reporting = phase(receiver, &sink, reporting_plan, via, Relaying::Reporting(journal.path(), control)).await?;
    eprintln!("hookrelay-bench: floor: the durable relay reporting to control {:.0}/s", reporting.per_sec);
    Ok(FloorReport {
        events: plan.events,
        relay_per_sec: crate::round(bare.per_sec, 1),
        ratio: crate::round(bare.per_sec / baseline_per_sec, 3),
        e2e_of_relay: crate::round(e2e_per_sec / bare.per_sec, 3),
        relay_cpu_secs: crate::round(bare.relay_cpu_secs, 2),
        bench_cpu_secs: crate::round(bare.bench_cpu_secs, 2),
        durable_relay_per_sec: crate::round(durable.per_sec, 1),
        durable_ratio: crate::round(durable.per_sec / baseline_per_sec, 3),
        durable_relay_cpu_secs: crate::round(durable.relay_cpu_secs, 2),
        reporting_relay_per_sec: crate::round(reporting.per_sec, 1),
        reporting_ratio: crate::round(reporting.per_sec / baseline_per_sec, 3),
        reporting_relay_cpu_secs: crate::round(reporting.relay_cpu_secs, 2),
        reporting_control_cpu_secs: crate::round(reporting.control_cpu_secs, 2),
    })
}

/// Emits `plan` through a relay started for it until the receiver has every event (and, when it reports, control
/// lists every delivery).
async fn phase(
    receiver: SocketAddr,
    sink: &Arc<Sink>,
    plan: Plan,
    via: EmitVia,
    relaying: Relaying<'_>,
) -> anyhow::Result<Phase> {
    let (mut relay, addr) = start_relay(receiver, plan.concurrency, relaying).await?;
    let emitters = emitter::connect(addr, plan.concurrency, via).await?;
    let control_pid = match relaying {
        Relaying::Reporting(_, control) => control.pid,
        _ => None,
    };
    let cpu_before = [cpu_secs(relay.id()), cpu_secs(Some(std::process::id())), cpu_secs(control_pid)];
    let started = Instant::now();
    let done = match relaying {
        Relaying::Reporting(_, control) => {
            let outcome = e2e::run(&plan, &emitters, control.admin.clone(), sink.clone()).await?;
            outcome.recorded.max(outcome.delivered)
        }
        _ => {
            e2e::emit(&plan, &emitters, started).await?;
            e2e::wait_delivered(&plan, sink.tally(plan.id_prefix), started).await?
        }
    };
    let cpu_after = [cpu_secs(relay.id()), cpu_secs(Some(std::process::id())), cpu_secs(control_pid)];
    relay.kill().await.context("stop the relay")?;
    Ok(Phase {
        per_sec: plan.events as f64 / done.as_secs_f64(),
        relay_cpu_secs: cpu_after[0] - cpu_before[0],
        bench_cpu_secs: cpu_after[1] - cpu_before[1],
        control_cpu_secs: cpu_after[2] - cpu_before[2],
    })
}

/// Starts the relay aimed at `receiver`; returns it (killed when dropped) and the address it listens on.
async fn start_relay(
    receiver: SocketAddr,
    connections: usize,
    relaying: Relaying<'_>,
) -> anyhow::Result<(Child, SocketAddr)> {
    let path = bin_dir().join(RELAY_BIN);
    let mut command = Command::new(&path);
    command.arg("--target").arg(format!("http://{receiver}/hook")).arg("--connections").arg(connections.to_string());
    match relaying {
        Relaying::Bare => {}
        Relaying::Durable(dir) => {
            command.arg("--durable").arg(dir);
        }
        Relaying::Reporting(dir, control) => {
            command.arg("--durable").arg(dir);
            command.arg("--control").arg(&control.url).arg("--endpoint-id").arg(&control.endpoint_id);
        }
    }
    let mut relay = command.stdout(Stdio::piped()).kill_on_drop(true).spawn().with_context(|| {
        format!("start {} (build it with `cargo build --release -p hookrelay-tests`)", path.display())
    })?;
    let stdout = relay.stdout.take().context("the relay's stdout")?;
    let mut first = String::new();
    tokio::time::timeout(Duration::from_secs(10), BufReader::new(stdout).read_line(&mut first))
        .await
        .context("the relay did not say where it listens within 10 s")??;
    let Some(addr) = first.trim().strip_prefix("listening on ") else {
        bail!("the relay's first line was {first:?}, expected `listening on <addr>`");
    };
    Ok((relay, addr.parse().with_context(|| format!("the relay's address {addr:?}"))?))
}
