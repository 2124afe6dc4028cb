//! Scenario `floor`: what the end-to-end path's two network hops alone reach on this machine. The same emitters send
//! the same events over gRPC to `hookrelay-floor-relay`, a process that answers each emit only once it has POSTed the
//! event, signed, to the receiver: no queue, no disk, no control. Its rate against the baseline bounds the `ratio`
//! any agent of this shape (a gRPC emit hop and an HTTP delivery hop per event) can reach here.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hookrelay_tests::process::bin_dir;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::e2e::{self, Plan};
use crate::proc_stats::cpu_secs;
use crate::sink::Sink;

/// Id prefix of the events sent through the relay.
pub const PREFIX: &str = "bench-floor-";
const RELAY_BIN: &str = "hookrelay-floor-relay";

/// What the scenario measured.
#[derive(Debug, Serialize)]
pub struct FloorReport {
    pub events: usize,
    /// Events per second from the first emit until the receiver had every one.
    pub relay_per_sec: f64,
    /// `relay_per_sec / baseline_per_sec`: the most `ratio` can be with a gRPC emit hop and an HTTP delivery hop.
    pub ratio: f64,
    /// The end-to-end rate of the same run against the relay's: what the queue, the disk and control cost.
    pub e2e_of_relay: f64,
    /// CPU seconds (user + system) of the relay and of this process (emitters, receiver) during the phase.
    pub relay_cpu_secs: f64,
    pub bench_cpu_secs: f64,
}

/// Runs the scenario with `plan`'s emitters and events (its id prefix is replaced).
pub async fn run(
    receiver: SocketAddr,
    sink: Arc<Sink>,
    plan: Plan,
    concurrency: usize,
    baseline_per_sec: f64,
    e2e_per_sec: f64,
) -> anyhow::Result<FloorReport> {
    let (mut relay, addr) = start_relay(receiver, concurrency).await?;
    let emitters = e2e::connect_emitters(addr, concurrency).await;
    let plan = Plan { id_prefix: PREFIX, ..plan };
    let cpu_before = [cpu_secs(relay.id()), cpu_secs(Some(std::process::id()))];
    let started = Instant::now();
    e2e::emit(&plan, &emitters, started).await?;
    let delivered = e2e::wait_delivered(&plan, sink.tally(PREFIX), started).await?;
    let cpu_after = [cpu_secs(relay.id()), cpu_secs(Some(std::process::id()))];
    relay.kill().await.context("stop the relay")?;
    let relay_per_sec = plan.events as f64 / delivered.as_secs_f64();
    eprintln!("hookrelay-bench: floor: the bare relay {relay_per_sec:.0}/s");
    Ok(FloorReport {
        events: plan.events,
        relay_per_sec: crate::round(relay_per_sec, 1),
        ratio: crate::round(relay_per_sec / baseline_per_sec, 3),
        e2e_of_relay: crate::round(e2e_per_sec / relay_per_sec, 3),
        relay_cpu_secs: crate::round(cpu_after[0] - cpu_before[0], 2),
        bench_cpu_secs: crate::round(cpu_after[1] - cpu_before[1], 2),
    })
}

/// Starts the relay aimed at `receiver`; returns it (killed when dropped) and the address it listens on.
async fn start_relay(receiver: SocketAddr, connections: usize) -> anyhow::Result<(Child, SocketAddr)> {
    let path = bin_dir().join(RELAY_BIN);
    let mut relay = Command::new(&path)
        .arg("--target")
        .arg(format!("http://{receiver}/hook"))
        .arg("--connections")
        .arg(connections.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
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
