//! `hookrelay-agent`: parses flags, sets up logging, binds the listener and runs the agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ipnet::IpNet;
use tokio::io::AsyncWriteExt as _;

/// hookrelay's per-node agent: durable intake, signed delivery with retries, reports to control.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address for emit (gRPC and POST /v1/events); port 0 picks a free one.
    #[arg(long, env = "HOOKRELAY_AGENT_LISTEN", default_value = "127.0.0.1:7200")]
    listen: SocketAddr,
    /// Control's gRPC URL.
    #[arg(long, env = "HOOKRELAY_CONTROL_URL", default_value = "http://127.0.0.1:7100")]
    control_url: String,
    /// Directory of the queue.
    #[arg(long, env = "HOOKRELAY_AGENT_DATA_DIR", default_value = "./hookrelay-data/agent")]
    data_dir: PathBuf,
    /// Key file (base64 of 32 bytes) sealing the cached config and its secrets; default: <data-dir>/cache.key,
    /// created on first start.
    #[arg(long, env = "HOOKRELAY_AGENT_CACHE_KEY_FILE")]
    cache_key_file: Option<PathBuf>,
    /// Node name reported to control (default: the hostname).
    #[arg(long, env = "HOOKRELAY_NODE_NAME")]
    node_name: Option<String>,
    /// Non-public ranges deliveries may reach, comma-separated (e.g. 10.0.0.0/8,127.0.0.0/8).
    #[arg(long, env = "HOOKRELAY_ALLOWED_CIDRS", value_delimiter = ',')]
    allowed_cidrs: Vec<IpNet>,
    /// Largest event payload accepted, in bytes.
    #[arg(long, env = "HOOKRELAY_MAX_PAYLOAD_BYTES", default_value_t = hookrelay_common::model::DEFAULT_MAX_PAYLOAD_BYTES)]
    max_payload_bytes: usize,
    /// sled page cache, in MiB.
    #[arg(long, env = "HOOKRELAY_AGENT_CACHE_MIB", default_value_t = 64)]
    cache_mib: u64,
    /// Queue size on disk, in MiB, above which emits are refused (RESOURCE_EXHAUSTED / HTTP 507).
    #[arg(long, env = "HOOKRELAY_MAX_QUEUE_MIB", default_value_t = 2048)]
    max_queue_mib: u64,
    /// Hours payloads of finished deliveries are kept for replay.
    #[arg(long, env = "HOOKRELAY_PAYLOAD_RETENTION_HOURS", default_value_t = 7 * 24)]
    payload_retention_hours: u64,
    /// Seconds an endpoint may fail every attempt before it is disabled (default 5 days).
    #[arg(long, env = "HOOKRELAY_AUTO_DISABLE_AFTER_SECS", default_value_t = 5 * 24 * 3600)]
    auto_disable_after_secs: u64,
    /// Seconds attempts in flight may take to finish after SIGTERM.
    #[arg(long, env = "HOOKRELAY_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let node_name = match args.node_name {
        Some(name) => name,
        None => hostname()?,
    };
    let mut config = hookrelay_agent::Config::new(args.control_url, args.data_dir, node_name);
    config.allowed_cidrs = args.allowed_cidrs;
    config.cache_key_file = args.cache_key_file;
    config.max_payload_bytes = args.max_payload_bytes;
    config.cache_capacity_bytes = args.cache_mib * 1024 * 1024;
    config.shutdown_grace = Duration::from_secs(args.shutdown_grace_secs);
    config.max_queue_bytes = args.max_queue_mib * 1024 * 1024;
    config.auto_disable_after = Duration::from_secs(args.auto_disable_after_secs);
    config.payload_retention = Duration::from_secs(args.payload_retention_hours * 3600);

    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    let mut stdout = tokio::io::stdout();
    stdout.write_all(format!("hookrelay-agent listening on {address}\n").as_bytes()).await?;
    stdout.flush().await?;
    hookrelay_agent::run(config, listener, shutdown_signal()).await
}

fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .context("no --node-name and no hostname to default to")?;
    Ok(name.trim().to_owned())
}

async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
}
