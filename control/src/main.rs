//! `hookrelay-control`: parses flags, sets up logging, binds the listener and hands over to
//! [`hookrelay_control::run`].

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory, Parser};
use hookrelay_common::sealed::MasterKey;
use hookrelay_control::{
    Config, DEFAULT_DATA_DIR, DEFAULT_LISTEN, DEFAULT_MAX_ENDPOINTS_PER_OWNER, ENV_ALLOW_INSECURE_ENDPOINTS,
    ENV_ALLOWED_CIDRS, ENV_DATA_DIR, ENV_DELIVERY_RETENTION_HOURS, ENV_LISTEN, ENV_MASTER_KEY, ENV_MASTER_KEY_FILE,
    ENV_MAX_ENDPOINTS_PER_OWNER, MasterKeySource,
};
use hookrelay_control::{ENV_TLS_CERT, ENV_TLS_CLIENT_CA, ENV_TLS_KEY, ENV_TOKENS_FILE};
use ipnet::IpNet;

// Control's store rewrites sled pages on every ingested report; under glibc's malloc a fifth of control's CPU went
// to malloc and free (profile of the steady benchmark: `_int_malloc`, `unlink_chunk`, `malloc_consolidate`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// One arena, freed pages returned after a second: see `hookrelay_common::allocator`.
hookrelay_common::export_jemalloc_options!();

/// `--delivery-retention-hours` by default (30 days), from the library's default so the two cannot drift apart.
const DEFAULT_DELIVERY_RETENTION_HOURS: u64 = hookrelay_control::store::DEFAULT_DELIVERY_RETENTION.as_secs() / 3600;
/// Longest `--delivery-retention-hours`: 10 years, far past any real need and far from overflowing.
const MAX_DELIVERY_RETENTION_HOURS: u64 = 10 * 365 * 24;

/// hookrelay's control plane: owners, event types and endpoints, the config stream to agents, delivery logs.
#[derive(Debug, Parser)]
#[command(name = "hookrelay-control", version)]
struct Args {
    /// Address to serve gRPC (AdminService and AgentService) on; port 0 picks a free port.
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    listen: SocketAddr,

    /// Directory of control's database.
    #[arg(long, env = ENV_DATA_DIR, default_value = DEFAULT_DATA_DIR, value_name = "PATH")]
    data_dir: PathBuf,

    /// Permit http:// endpoints that are created with the insecure flag.
    #[arg(long, env = ENV_ALLOW_INSECURE_ENDPOINTS, value_parser = clap::builder::BoolishValueParser::new())]
    allow_insecure_endpoints: bool,

    /// Most endpoints one owner may have.
    #[arg(
        long,
        env = ENV_MAX_ENDPOINTS_PER_OWNER,
        default_value_t = DEFAULT_MAX_ENDPOINTS_PER_OWNER,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    max_endpoints_per_owner: u32,

    /// Hours a finished delivery (succeeded, failed or cancelled) and its attempts are kept after its last update;
    /// then they are pruned from control's database, a bounded batch at a time. Pending deliveries are kept unless
    /// their agent has not been heard from for as long.
    #[arg(
        long,
        env = ENV_DELIVERY_RETENTION_HOURS,
        default_value_t = DEFAULT_DELIVERY_RETENTION_HOURS,
        value_parser = clap::value_parser!(u64).range(1..=MAX_DELIVERY_RETENTION_HOURS),
        value_name = "HOURS"
    )]
    delivery_retention_hours: u64,

    /// File with the master key that seals signing secrets at rest: base64 of 32 bytes, e.g. from
    /// `head -c 32 /dev/urandom | base64`. HOOKRELAY_MASTER_KEY may hold the key itself instead. With neither,
    /// control generates DATA_DIR/master.key on first start (development only).
    #[arg(long, env = ENV_MASTER_KEY_FILE, value_name = "PATH")]
    master_key_file: Option<PathBuf>,

    /// Non-public address ranges that verification challenges may reach, comma-separated (e.g.
    /// 10.0.0.0/8,127.0.0.0/8); everything not globally routable is refused otherwise, as for the agent.
    #[arg(long, env = ENV_ALLOWED_CIDRS, value_delimiter = ',', value_name = "CIDR,...")]
    allowed_cidrs: Vec<IpNet>,

    /// TLS certificate chain (PEM, leaf first) for the gRPC listener; needs --tls-key. Re-read when the file
    /// changes. Without TLS, control listens on loopback only (plaintext development mode).
    #[arg(long, env = ENV_TLS_CERT, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert. Re-read when the file changes.
    #[arg(long, env = ENV_TLS_KEY, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that sign agents' client certificates (mTLS). An agent with a verified client
    /// certificate may call AgentService without the agent token. Needs --tls-cert.
    #[arg(long, env = ENV_TLS_CLIENT_CA, value_name = "PATH", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// Bearer tokens, one per line as `scope:token`, where scope is `admin` (every AdminService call), `read`
    /// (AdminService Get*/List* only) or `agent` (AgentService); blank lines and `#` comments are ignored, tokens
    /// are at least 16 characters without whitespace (e.g. `openssl rand -hex 32`). Clients send
    /// `authorization: Bearer <token>`. Re-read when the file changes. Without it (and without --tls-client-ca)
    /// nothing is authenticated: development only.
    #[arg(long, env = ENV_TOKENS_FILE, value_name = "PATH")]
    tokens_file: Option<PathBuf>,

    /// Log lines on stderr: pretty (human-readable) or json (one object per line).
    #[arg(long, env = hookrelay_control::ops::ENV_LOG_FORMAT, value_enum, default_value_t)]
    log_format: hookrelay_control::ops::LogFormat,

    /// Print the effective configuration (defaults, env, flags) as JSON and exit; the master key is redacted.
    #[arg(long)]
    print_config: bool,
    /// TOML file of settings, keys named like the long flags (`max_payload_bytes = 1048576`); the environment and
    /// flags override it. Every problem in it is reported at once.
    #[arg(long, env = hookrelay_common::config_file::ENV_CONFIG, value_name = "PATH")]
    config: Option<std::path::PathBuf>,

    /// Most connections the listener keeps open at once (each agent holds one). Beyond it, a new connection takes
    /// the place of the one idle for longest, or is closed at once when every connection has a call in flight.
    /// Keep it well below control's file descriptor limit (`ulimit -n`).
    #[arg(
        long,
        env = "HOOKRELAY_CONTROL_MAX_CONNECTIONS",
        default_value_t = hookrelay_common::listener::DEFAULT_MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    max_connections: u32,

    /// Seconds a new connection has to finish its TLS handshake and send its first complete request (and an
    /// HTTP/1.1 one the headers of each later request); one that sends nothing, or a byte at a time, is closed.
    #[arg(
        long,
        env = "HOOKRELAY_CONTROL_HEADER_READ_TIMEOUT_SECS",
        default_value_t = hookrelay_common::listener::DEFAULT_HEADER_READ_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        value_name = "SECS"
    )]
    header_read_timeout_secs: u64,

    /// Seconds a connection may stay open with no call in flight (an agent's open Watch stream is one).
    #[arg(
        long,
        env = "HOOKRELAY_CONTROL_IDLE_TIMEOUT_SECS",
        default_value_t = hookrelay_common::listener::DEFAULT_IDLE_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(1..=86400),
        value_name = "SECS"
    )]
    idle_timeout_secs: u64,
}

/// The master key source from `--master-key-file` and `HOOKRELAY_MASTER_KEY`, which exclude each other. The key's
/// text never appears in an error.
fn master_key_source(file: Option<PathBuf>, env_key: Option<String>) -> anyhow::Result<MasterKeySource> {
    let env_key = env_key.filter(|text| !text.trim().is_empty());
    match (file, env_key) {
        (Some(_), Some(_)) => {
            anyhow::bail!(
                "give the master key once: either --master-key-file ({ENV_MASTER_KEY_FILE}) or {ENV_MASTER_KEY}"
            )
        }
        (Some(path), None) => Ok(MasterKeySource::File(path)),
        (None, Some(text)) => {
            let key = MasterKey::from_base64(&text)
                .map_err(|error| anyhow::anyhow!("{ENV_MASTER_KEY} is not usable: {error}"))?;
            Ok(MasterKeySource::Key(key))
        }
        (None, None) => Ok(MasterKeySource::DataDir),
    }
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
    let master_key = master_key_source(args.master_key_file, std::env::var(ENV_MASTER_KEY).ok())?;
    hookrelay_control::ops::init_logging(args.log_format);

    let config = Config {
        data_dir: args.data_dir,
        allow_insecure_endpoints: args.allow_insecure_endpoints,
        max_endpoints_per_owner: args.max_endpoints_per_owner,
        master_key,
        allowed_cidrs: args.allowed_cidrs,
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => {
                Some(hookrelay_control::listener::TlsFiles { cert, key, client_ca: args.tls_client_ca })
            }
            _ => None,
        },
        tokens_file: args.tokens_file,
        delivery_retention: Duration::from_secs(args.delivery_retention_hours * 3600),
        connection_limits: hookrelay_common::listener::Limits {
            max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
            header_read_timeout: Duration::from_secs(args.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        },
        ..Config::default()
    };
    if args.print_config {
        let printed = hookrelay_control::ops::effective_config(&config, args.listen, args.log_format);
        println!("{}", serde_json::to_string_pretty(&printed)?);
        return Ok(());
    }
    // Before anything is opened or bound: unusable TLS or token files, or plaintext on a public address, stop
    // control here with a clear error.
    hookrelay_control::listener::Security::load(config.tls.clone(), config.tokens_file.clone(), args.listen)?;
    // Before the listening line: a wrong master key or an unusable data directory stops control first.
    let store = hookrelay_control::open_store(&config)?;

    // Signal handlers are installed before the listening line, so a signal sent right after it is handled.
    let shutdown = shutdown_signal().context("cannot install signal handlers")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local_addr = listener.local_addr().context("cannot read the listening address")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "hookrelay-control listening on {local_addr}")?;
    stdout.flush()?;
    drop(stdout);
    tracing::info!(%local_addr, data_dir = %config.data_dir.display(), "hookrelay-control started");
    hookrelay_control::serve(config, store, listener, shutdown).await
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
    })
}

#[cfg(test)]
mod allocator_tests {
    #[test]
    fn jemalloc_runs_with_the_exported_options() {
        hookrelay_tests::allocator::assert_jemalloc_options_in_force();
    }
}
