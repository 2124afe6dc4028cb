//! The agent's settings: the flags of `hookrelay-agent` with their env names and defaults, and [`Config`], what
//! [`crate::run`] runs with. Each default is one constant; the flags and [`Config::new`] use the same ones, so
//! the binary and the library cannot disagree. A setting comes from its flag, else its env var, else the `--config`
//! file ([`hookrelay_common::config_file`]), else the default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use hookrelay_common::config_file::ENV_CONFIG;
use hookrelay_common::listener::{
    DEFAULT_HEADER_READ_TIMEOUT_SECS, DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_MAX_CONNECTIONS, Limits,
};
use hookrelay_common::logging::{ENV_LOG_FORMAT, LogFormat};
use hookrelay_common::model::{DEFAULT_MAX_PAYLOAD_BYTES, RESPONSE_SNIPPET_BYTES};
use hookrelay_common::net_policy::ENV_ALLOWED_CIDRS;
use ipnet::IpNet;

use crate::control_client::channel::{
    ControlCredentials, ENV_CONTROL_CA, ENV_CONTROL_CLIENT_CERT, ENV_CONTROL_CLIENT_KEY, ENV_CONTROL_TOKEN_FILE,
};
use crate::control_client::replicas::{UrlError, parse_urls};
use crate::emit_auth::ENV_EMIT_TOKEN_FILE;

/// Env var of `--listen`.
pub const ENV_LISTEN: &str = "HOOKRELAY_AGENT_LISTEN";
/// Env var of `--control-url`.
pub const ENV_CONTROL_URL: &str = "HOOKRELAY_CONTROL_URL";
/// Env var of `--data-dir`.
pub const ENV_DATA_DIR: &str = "HOOKRELAY_AGENT_DATA_DIR";
/// Env var of `--cache-key-file`.
pub const ENV_CACHE_KEY_FILE: &str = "HOOKRELAY_AGENT_CACHE_KEY_FILE";
/// Env var of `--node-name`.
pub const ENV_NODE_NAME: &str = "HOOKRELAY_NODE_NAME";
/// Env var of `--max-payload-bytes`.
pub const ENV_MAX_PAYLOAD_BYTES: &str = "HOOKRELAY_MAX_PAYLOAD_BYTES";
/// Env var of `--cache-mib`.
pub const ENV_CACHE_MIB: &str = "HOOKRELAY_AGENT_CACHE_MIB";
/// Env var of `--max-queue-mib`.
pub const ENV_MAX_QUEUE_MIB: &str = "HOOKRELAY_MAX_QUEUE_MIB";
/// Env var of `--payload-retention-hours`.
pub const ENV_PAYLOAD_RETENTION_HOURS: &str = "HOOKRELAY_PAYLOAD_RETENTION_HOURS";
/// Env var of `--auto-disable-after-secs`.
pub const ENV_AUTO_DISABLE_AFTER_SECS: &str = "HOOKRELAY_AUTO_DISABLE_AFTER_SECS";
/// Env var of `--response-snippet-bytes`.
pub const ENV_RESPONSE_SNIPPET_BYTES: &str = "HOOKRELAY_RESPONSE_SNIPPET_BYTES";
/// Env var of `--shutdown-grace-secs`.
pub const ENV_SHUTDOWN_GRACE_SECS: &str = "HOOKRELAY_SHUTDOWN_GRACE_SECS";
/// Env var of `--max-connections`.
pub const ENV_MAX_CONNECTIONS: &str = "HOOKRELAY_AGENT_MAX_CONNECTIONS";
/// Env var of `--header-read-timeout-secs`.
pub const ENV_HEADER_READ_TIMEOUT_SECS: &str = "HOOKRELAY_AGENT_HEADER_READ_TIMEOUT_SECS";
/// Env var of `--idle-timeout-secs`.
pub const ENV_IDLE_TIMEOUT_SECS: &str = "HOOKRELAY_AGENT_IDLE_TIMEOUT_SECS";

/// Default of `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7200";
/// Default of `--control-url`: control's default listen address.
pub const DEFAULT_CONTROL_URL: &str = "http://127.0.0.1:7100";
/// Default of `--data-dir`.
pub const DEFAULT_DATA_DIR: &str = "./hookrelay-data/agent";
/// Default of `--cache-mib`.
pub const DEFAULT_CACHE_MIB: u64 = 16;
/// Default of `--max-queue-mib` (2 GiB).
pub const DEFAULT_MAX_QUEUE_MIB: u64 = 2048;
/// Default of `--payload-retention-hours` (7 days).
pub const DEFAULT_PAYLOAD_RETENTION_HOURS: u64 = 7 * 24;
/// Default of `--auto-disable-after-secs` (5 days).
pub const DEFAULT_AUTO_DISABLE_AFTER_SECS: u64 = 5 * 24 * 3600;
/// Default of `--shutdown-grace-secs`.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// How long an event id is remembered for idempotency by default.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Consecutive failed attempts that open an endpoint's circuit breaker by default.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
const MIB: u64 = 1024 * 1024;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Control's gRPC URL, e.g. `http://127.0.0.1:7100`, or the URLs of its replicas, comma-separated
    /// ([`crate::control_client::replicas`]).
    pub control_url: String,
    /// Agent token, CA and client certificate for the link to control.
    pub control_credentials: ControlCredentials,
    /// When set, emit (gRPC and `POST /v1/events`) needs `authorization: Bearer` with the token in this file.
    pub emit_token_file: Option<PathBuf>,
    /// Where the queue lives.
    pub data_dir: PathBuf,
    /// Key sealing the cached config; `<data_dir>/cache.key`, created on first start, when `None`.
    pub cache_key_file: Option<PathBuf>,
    /// This node's name, as control lists it.
    pub node_name: String,
    /// Ranges deliveries may reach although they are not globally routable (in-cluster receivers, tests).
    pub allowed_cidrs: Vec<IpNet>,
    /// Largest payload accepted.
    pub max_payload_bytes: usize,
    /// sled page cache.
    pub cache_capacity_bytes: u64,
    /// How long an event id is remembered for idempotency.
    pub dedup_window: Duration,
    /// How long payloads of finished deliveries are kept for replay.
    pub payload_retention: Duration,
    /// How long attempts in flight may finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Consecutive failed attempts that open an endpoint's circuit breaker.
    pub breaker_threshold: u32,
    /// Bytes of held events (pending and retained for replay) above which emits are refused with
    /// RESOURCE_EXHAUSTED / 507.
    pub max_queue_bytes: u64,
    /// An endpoint failing every attempt for longer than this is disabled (control is asked to).
    pub auto_disable_after: Duration,
    /// Bytes of each receiver's response kept in the delivery log (at most 4 KiB; 0 keeps none).
    pub response_snippet_bytes: usize,
    /// Limits on the emit listener's connections.
    pub connection_limits: Limits,
}

impl Config {
    /// Defaults for everything but where control is and where data goes.
    pub fn new(control_url: impl Into<String>, data_dir: impl Into<PathBuf>, node_name: impl Into<String>) -> Self {
        Self {
            control_url: control_url.into(),
            control_credentials: Default::default(),
            emit_token_file: None,
            data_dir: data_dir.into(),
            cache_key_file: None,
            node_name: node_name.into(),
            allowed_cidrs: Vec::new(),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            cache_capacity_bytes: DEFAULT_CACHE_MIB * MIB,
            dedup_window: DEFAULT_DEDUP_WINDOW,
            payload_retention: Duration::from_secs(DEFAULT_PAYLOAD_RETENTION_HOURS * 3600),
            shutdown_grace: Duration::from_secs(DEFAULT_SHUTDOWN_GRACE_SECS),
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            max_queue_bytes: DEFAULT_MAX_QUEUE_MIB * MIB,
            auto_disable_after: Duration::from_secs(DEFAULT_AUTO_DISABLE_AFTER_SECS),
            response_snippet_bytes: RESPONSE_SNIPPET_BYTES,
            connection_limits: Limits::default(),
        }
    }
}

/// hookrelay's per-node agent: durable intake, signed delivery with retries, reports to control.
// The docs of the fields are the `--help` text, where `[::]` and `<data-dir>` are not links or HTML tags.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Log lines on stderr: pretty (human-readable) or json (one object per line).
    #[arg(long, env = ENV_LOG_FORMAT, value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Print the effective configuration (defaults, env, flags) as JSON and exit; secrets are files, shown by path.
    #[arg(long)]
    pub print_config: bool,
    /// TOML file of settings, keys named like the long flags (`max_payload_bytes = 1048576`); the environment and
    /// flags override it. Every problem in it is reported at once.
    #[arg(long, env = ENV_CONFIG, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address for emit (gRPC and POST /v1/events): loopback or this node's (pod's) own IP, never the unspecified
    /// 0.0.0.0 / [::], so emit stays node-local; port 0 picks a free one.
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN,
          value_parser = crate::ingest::emit_listen_address)]
    pub listen: SocketAddr,
    /// Control's gRPC URL; for several control replicas, their URLs comma-separated. A host name that resolves
    /// to several addresses counts as that many replicas. The agent keeps to a replica that answers and moves to
    /// the next when it stops answering.
    #[arg(long, env = ENV_CONTROL_URL, default_value = DEFAULT_CONTROL_URL,
          value_parser = control_urls)]
    control_url: String,
    /// Directory of the queue.
    #[arg(long, env = ENV_DATA_DIR, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Key file (base64 of 32 bytes) sealing the cached config and its secrets; default: <data-dir>/cache.key,
    /// created on first start.
    #[arg(long, env = ENV_CACHE_KEY_FILE)]
    cache_key_file: Option<PathBuf>,
    /// Node name reported to control (default: the hostname).
    #[arg(long, env = ENV_NODE_NAME)]
    node_name: Option<String>,
    /// Non-public ranges deliveries may reach, comma-separated (e.g. 10.0.0.0/8,127.0.0.0/8).
    #[arg(long, env = ENV_ALLOWED_CIDRS, value_delimiter = ',')]
    allowed_cidrs: Vec<IpNet>,
    /// Largest event payload accepted, in bytes.
    #[arg(long, env = ENV_MAX_PAYLOAD_BYTES, default_value_t = DEFAULT_MAX_PAYLOAD_BYTES)]
    max_payload_bytes: usize,
    /// sled page cache, in MiB.
    #[arg(long, env = ENV_CACHE_MIB, default_value_t = DEFAULT_CACHE_MIB)]
    cache_mib: u64,
    /// MiB of events held (pending, and retained for replay) above which emits are refused (RESOURCE_EXHAUSTED /
    /// HTTP 507).
    #[arg(long, env = ENV_MAX_QUEUE_MIB, default_value_t = DEFAULT_MAX_QUEUE_MIB)]
    max_queue_mib: u64,
    /// Hours payloads of finished deliveries are kept for replay.
    #[arg(long, env = ENV_PAYLOAD_RETENTION_HOURS, default_value_t = DEFAULT_PAYLOAD_RETENTION_HOURS)]
    payload_retention_hours: u64,
    /// Seconds an endpoint may fail every attempt before it is disabled (default 5 days).
    #[arg(long, env = ENV_AUTO_DISABLE_AFTER_SECS, default_value_t = DEFAULT_AUTO_DISABLE_AFTER_SECS)]
    auto_disable_after_secs: u64,
    /// Bytes of each receiver's response kept with the attempt in the delivery log (at most 4096). 0 keeps none:
    /// with insecure endpoints or --allowed-cidrs ranges, an admin could otherwise read what an internal service
    /// answers through an endpoint pointed at it.
    #[arg(long, env = ENV_RESPONSE_SNIPPET_BYTES, value_name = "BYTES",
          default_value_t = RESPONSE_SNIPPET_BYTES,
          value_parser = snippet_bytes)]
    response_snippet_bytes: usize,
    /// Seconds attempts in flight may take to finish after SIGTERM.
    #[arg(long, env = ENV_SHUTDOWN_GRACE_SECS, default_value_t = DEFAULT_SHUTDOWN_GRACE_SECS)]
    shutdown_grace_secs: u64,
    /// File holding the agent token (its first non-empty line; scope `agent` in control's --tokens-file), sent
    /// to control as `authorization: Bearer` on Watch and ReportAttempts. Re-read when it changes.
    #[arg(long, env = ENV_CONTROL_TOKEN_FILE, value_name = "PATH")]
    control_token_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for an https:// --control-url, instead of the public web PKI roots.
    #[arg(long, env = ENV_CONTROL_CA, value_name = "PATH")]
    control_ca: Option<PathBuf>,
    /// Client certificate (PEM chain) for mTLS to control, signed by control's --tls-client-ca; needs
    /// --control-client-key and an https:// --control-url. Replaces the agent token on AgentService.
    #[arg(long, env = ENV_CONTROL_CLIENT_CERT, value_name = "PATH",
          requires = "control_client_key")]
    control_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --control-client-cert.
    #[arg(long, env = ENV_CONTROL_CLIENT_KEY, value_name = "PATH",
          requires = "control_client_cert")]
    control_client_key: Option<PathBuf>,
    /// File holding a token (its first non-empty line) that emitters must send as `authorization: Bearer
    /// <token>` on gRPC emit and POST /v1/events (401 otherwise). Re-read when it changes. Default: no token.
    #[arg(long, env = ENV_EMIT_TOKEN_FILE, value_name = "PATH")]
    emit_token_file: Option<PathBuf>,
    /// Most connections the emit listener keeps open at once. Beyond it, a new connection takes the place of the
    /// one idle for longest, or is closed at once when every connection has a request in flight. Keep it well
    /// below the agent's file descriptor limit (`ulimit -n`).
    #[arg(long, env = ENV_MAX_CONNECTIONS, value_name = "N",
          default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Seconds a new emit connection has to send its first complete request (and an HTTP/1.1 one the headers of
    /// each later request); a connection that sends nothing, or a byte at a time, is closed then.
    #[arg(long, env = ENV_HEADER_READ_TIMEOUT_SECS, value_name = "SECS",
          default_value_t = DEFAULT_HEADER_READ_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_read_timeout_secs: u64,
    /// Seconds an emit connection may stay open with no request in flight.
    #[arg(long, env = ENV_IDLE_TIMEOUT_SECS, value_name = "SECS",
          default_value_t = DEFAULT_IDLE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    idle_timeout_secs: u64,
}

impl Args {
    /// The settings from flags, env vars and the `--config` file. Like clap's `parse`, it prints the problems and
    /// exits with status 2 when they do not make a valid command line.
    pub fn load() -> Self {
        hookrelay_common::config_file::parse_or_exit()
    }

    /// The library's [`Config`] from these settings; the node name defaults to the hostname.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let node_name = match self.node_name {
            Some(name) => name,
            None => hostname()?,
        };
        Ok(Config {
            control_credentials: ControlCredentials {
                token_file: self.control_token_file,
                ca: self.control_ca,
                client_cert: self.control_client_cert,
                client_key: self.control_client_key,
            },
            emit_token_file: self.emit_token_file,
            cache_key_file: self.cache_key_file,
            allowed_cidrs: self.allowed_cidrs,
            max_payload_bytes: self.max_payload_bytes,
            cache_capacity_bytes: self.cache_mib * MIB,
            payload_retention: Duration::from_secs(self.payload_retention_hours * 3600),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            max_queue_bytes: self.max_queue_mib * MIB,
            auto_disable_after: Duration::from_secs(self.auto_disable_after_secs),
            response_snippet_bytes: self.response_snippet_bytes,
            connection_limits: Limits {
                max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
                header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
                idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            },
            ..Config::new(self.control_url, self.data_dir, node_name)
        })
    }
}

/// Checks a `--control-url` list at parse time, so a bad one is a usage error naming the URL at fault.
fn control_urls(text: &str) -> Result<String, UrlError> {
    parse_urls(text).map(|_| text.to_owned())
}

fn snippet_bytes(text: &str) -> Result<usize, String> {
    let limit = RESPONSE_SNIPPET_BYTES;
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
