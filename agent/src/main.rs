//! `hookrelay-agent`: parses flags, sets up logging, binds the listener and runs the agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory, Parser};
use ipnet::IpNet;
use std::io::Write as _;

// sled allocates a 512 KiB buffer per log segment; under glibc's malloc these land in the heap once its mmap
// threshold adapts, and the heap fragments until the agent's resident memory grows with the queue (measured: 150k
// queued events, 66 MiB live but 152 MiB resident and rising). jemalloc returns such memory: 80 MiB, flat.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// One arena, freed pages returned after a second: see `hookrelay_common::allocator`.
hookrelay_common::export_jemalloc_options!();

/// hookrelay's per-node agent: durable intake, signed delivery with retries, reports to control.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Log lines on stderr: pretty (human-readable) or json (one object per line).
    #[arg(long, env = hookrelay_agent::ops::ENV_LOG_FORMAT, value_enum, default_value_t)]
    log_format: hookrelay_agent::ops::LogFormat,
    /// Print the effective configuration (defaults, env, flags) as JSON and exit; secrets are files, shown by path.
    #[arg(long)]
    print_config: bool,
    /// TOML file of settings, keys named like the long flags (`max_payload_bytes = 1048576`); the environment and
    /// flags override it. Every problem in it is reported at once.
    #[arg(long, env = hookrelay_common::config_file::ENV_CONFIG, value_name = "PATH")]
    config: Option<std::path::PathBuf>,
    /// Address for emit (gRPC and POST /v1/events): loopback or this node's (pod's) own IP, never the unspecified
    /// 0.0.0.0 / [::], so emit stays node-local; port 0 picks a free one.
    #[arg(long, env = "HOOKRELAY_AGENT_LISTEN", default_value = "127.0.0.1:7200",
          value_parser = hookrelay_agent::ingest::emit_listen_address)]
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
    #[arg(long, env = "HOOKRELAY_AGENT_CACHE_MIB", default_value_t = 16)]
    cache_mib: u64,
    /// MiB of events held (pending, and retained for replay) above which emits are refused (RESOURCE_EXHAUSTED /
    /// HTTP 507).
    #[arg(long, env = "HOOKRELAY_MAX_QUEUE_MIB", default_value_t = 2048)]
    max_queue_mib: u64,
    /// Hours payloads of finished deliveries are kept for replay.
    #[arg(long, env = "HOOKRELAY_PAYLOAD_RETENTION_HOURS", default_value_t = 7 * 24)]
    payload_retention_hours: u64,
    /// Seconds an endpoint may fail every attempt before it is disabled (default 5 days).
    #[arg(long, env = "HOOKRELAY_AUTO_DISABLE_AFTER_SECS", default_value_t = 5 * 24 * 3600)]
    auto_disable_after_secs: u64,
    /// Bytes of each receiver's response kept with the attempt in the delivery log (at most 4096). 0 keeps none:
    /// with insecure endpoints or --allowed-cidrs ranges, an admin could otherwise read what an internal service
    /// answers through an endpoint pointed at it.
    #[arg(long, env = "HOOKRELAY_RESPONSE_SNIPPET_BYTES", value_name = "BYTES",
          default_value_t = hookrelay_common::model::RESPONSE_SNIPPET_BYTES,
          value_parser = snippet_bytes)]
    response_snippet_bytes: usize,
    /// Seconds attempts in flight may take to finish after SIGTERM.
    #[arg(long, env = "HOOKRELAY_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
    /// File holding the agent token (its first non-empty line; scope `agent` in control's --tokens-file), sent
    /// to control as `authorization: Bearer` on Watch and ReportAttempts. Re-read when it changes.
    #[arg(long, env = hookrelay_agent::control_client::channel::ENV_CONTROL_TOKEN_FILE, value_name = "PATH")]
    control_token_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for an https:// --control-url, instead of the public web PKI roots.
    #[arg(long, env = hookrelay_agent::control_client::channel::ENV_CONTROL_CA, value_name = "PATH")]
    control_ca: Option<PathBuf>,
    /// Client certificate (PEM chain) for mTLS to control, signed by control's --tls-client-ca; needs
    /// --control-client-key and an https:// --control-url. Replaces the agent token on AgentService.
    #[arg(long, env = hookrelay_agent::control_client::channel::ENV_CONTROL_CLIENT_CERT, value_name = "PATH",
          requires = "control_client_key")]
    control_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --control-client-cert.
    #[arg(long, env = hookrelay_agent::control_client::channel::ENV_CONTROL_CLIENT_KEY, value_name = "PATH",
          requires = "control_client_cert")]
    control_client_key: Option<PathBuf>,
    /// File holding a token (its first non-empty line) that emitters must send as `authorization: Bearer
    /// <token>` on gRPC emit and POST /v1/events (401 otherwise). Re-read when it changes. Default: no token.
    #[arg(long, env = hookrelay_agent::emit_auth::ENV_EMIT_TOKEN_FILE, value_name = "PATH")]
    emit_token_file: Option<PathBuf>,
    /// Most connections the emit listener keeps open at once. Beyond it, a new connection takes the place of the
    /// one idle for longest, or is closed at once when every connection has a request in flight. Keep it well
    /// below the agent's file descriptor limit (`ulimit -n`).
    #[arg(long, env = "HOOKRELAY_AGENT_MAX_CONNECTIONS", value_name = "N",
          default_value_t = hookrelay_common::listener::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Seconds a new emit connection has to send its first complete request (and an HTTP/1.1 one the headers of
    /// each later request); a connection that sends nothing, or a byte at a time, is closed then.
    #[arg(long, env = "HOOKRELAY_AGENT_HEADER_READ_TIMEOUT_SECS", value_name = "SECS",
          default_value_t = hookrelay_common::listener::DEFAULT_HEADER_READ_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_read_timeout_secs: u64,
    /// Seconds an emit connection may stay open with no request in flight.
    #[arg(long, env = "HOOKRELAY_AGENT_IDLE_TIMEOUT_SECS", value_name = "SECS",
          default_value_t = hookrelay_common::listener::DEFAULT_IDLE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    idle_timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = match hookrelay_common::config_file::load(&Args::command()) {
        Ok(args) => Args::parse_from(args),
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    };
    hookrelay_agent::ops::init_logging(args.log_format);
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
    config.response_snippet_bytes = args.response_snippet_bytes;
    config.payload_retention = Duration::from_secs(args.payload_retention_hours * 3600);
    config.control_credentials = hookrelay_agent::control_client::channel::ControlCredentials {
        token_file: args.control_token_file,
        ca: args.control_ca,
        client_cert: args.control_client_cert,
        client_key: args.control_client_key,
    };
    config.emit_token_file = args.emit_token_file;
    config.connection_limits = hookrelay_common::listener::Limits {
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        header_read_timeout: Duration::from_secs(args.header_read_timeout_secs),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
    };
    if args.print_config {
        let printed = hookrelay_agent::ops::effective_config(&config, args.listen, args.log_format);
        println!("{}", serde_json::to_string_pretty(&printed)?);
        return Ok(());
    }

    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    // The line comes once the queue and the cached config are open: probes and scripts wait for it.
    let ready = |address| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "hookrelay-agent listening on {address}");
        let _ = stdout.flush();
    };
    hookrelay_agent::run_reporting_ready(config, listener, shutdown_signal(), ready).await
}

fn snippet_bytes(text: &str) -> Result<usize, String> {
    let limit = hookrelay_common::model::RESPONSE_SNIPPET_BYTES;
    match text.parse::<usize>() {
        Ok(bytes) if bytes <= limit => Ok(bytes),
        _ => Err(format!("expected a number of bytes from 0 to {limit}")),
    }
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

#[cfg(test)]
mod allocator_tests {
    #[test]
    fn jemalloc_runs_with_the_exported_options() {
        hookrelay_tests::allocator::assert_jemalloc_options_in_force();
    }
}
