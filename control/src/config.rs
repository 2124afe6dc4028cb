//! control's settings: the flags of `hookrelay-control` with their env names and defaults, and [`Config`], what
//! [`crate::run`] runs with. Each default is one constant; the flags and [`Config::new`] use the same ones, so
//! the binary and the library cannot disagree. A setting comes from its flag, else its env var, else the `--config`
//! file ([`hookrelay_common::config_file`]), else the default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use hookrelay_common::listener::{
    DEFAULT_HEADER_READ_TIMEOUT_SECS, DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_MAX_CONNECTIONS, Limits,
};
use hookrelay_common::logging::{ENV_LOG_FORMAT, LogFormat};
use hookrelay_common::net_policy::ENV_ALLOWED_CIDRS;
use hookrelay_common::sealed::MasterKey;
use ipnet::IpNet;

use crate::challenge::DEFAULT_CHALLENGE_TIMEOUT;
use crate::listener::{self, TlsFiles};
use crate::store;

/// Env var of `--listen`.
pub const ENV_LISTEN: &str = "HOOKRELAY_CONTROL_LISTEN";
/// Env var of `--data-dir`.
pub const ENV_DATA_DIR: &str = "HOOKRELAY_CONTROL_DATA_DIR";
/// Env var of `--allow-insecure-endpoints`.
pub const ENV_ALLOW_INSECURE_ENDPOINTS: &str = "HOOKRELAY_ALLOW_INSECURE_ENDPOINTS";
/// Env var of `--max-endpoints-per-owner`.
pub const ENV_MAX_ENDPOINTS_PER_OWNER: &str = "HOOKRELAY_MAX_ENDPOINTS_PER_OWNER";
/// Env var of `--database-url`.
pub const ENV_DATABASE_URL: &str = "HOOKRELAY_DATABASE_URL";
/// Env var of `--database-password-file`.
pub const ENV_DATABASE_PASSWORD_FILE: &str = "HOOKRELAY_DATABASE_PASSWORD_FILE";
/// Env var of `--master-key-file`.
pub const ENV_MASTER_KEY_FILE: &str = "HOOKRELAY_MASTER_KEY_FILE";
/// Env var holding the master key itself, base64 of 32 bytes (an alternative to the key file).
pub const ENV_MASTER_KEY: &str = "HOOKRELAY_MASTER_KEY";
/// Env var of `--tls-cert`.
pub const ENV_TLS_CERT: &str = "HOOKRELAY_TLS_CERT";
/// Env var of `--tls-key`.
pub const ENV_TLS_KEY: &str = "HOOKRELAY_TLS_KEY";
/// Env var of `--tls-client-ca`.
pub const ENV_TLS_CLIENT_CA: &str = "HOOKRELAY_TLS_CLIENT_CA";
/// Env var of `--tokens-file`.
pub const ENV_TOKENS_FILE: &str = "HOOKRELAY_TOKENS_FILE";
/// Env var of `--delivery-retention-hours`.
pub const ENV_DELIVERY_RETENTION_HOURS: &str = "HOOKRELAY_DELIVERY_RETENTION_HOURS";
/// Env var of `--max-connections`.
pub const ENV_MAX_CONNECTIONS: &str = "HOOKRELAY_CONTROL_MAX_CONNECTIONS";
/// Env var of `--header-read-timeout-secs`.
pub const ENV_HEADER_READ_TIMEOUT_SECS: &str = "HOOKRELAY_CONTROL_HEADER_READ_TIMEOUT_SECS";
/// Env var of `--idle-timeout-secs`.
pub const ENV_IDLE_TIMEOUT_SECS: &str = "HOOKRELAY_CONTROL_IDLE_TIMEOUT_SECS";
/// The key file control generates in its data directory when given no master key (development only).
pub const DEV_MASTER_KEY_FILE: &str = "master.key";
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7100";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./hookrelay-data/control";
/// Default limit of endpoints per owner.
pub const DEFAULT_MAX_ENDPOINTS_PER_OWNER: u32 = 50;
/// Default time given to open calls and streams to finish after the shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// `--delivery-retention-hours` by default (30 days), from the library's default so the two cannot drift apart.
const DEFAULT_DELIVERY_RETENTION_HOURS: u64 = store::DEFAULT_DELIVERY_RETENTION.as_secs() / 3600;
/// Longest `--delivery-retention-hours`: 10 years, far past any real need and far from overflowing.
const MAX_DELIVERY_RETENTION_HOURS: u64 = 10 * 365 * 24;

/// What control runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Directory of the embedded database; created if missing. Unused for state when `database` is set.
    pub data_dir: PathBuf,
    /// The PostgreSQL database that holds control's state instead of sled in `data_dir`; several replicas can
    /// share it.
    pub database: Option<Database>,
    /// Permit `http://` endpoints that are created with `insecure = true`.
    pub allow_insecure_endpoints: bool,
    /// Most endpoints one owner may have; at least 1.
    pub max_endpoints_per_owner: u32,
    /// How long open calls and streams may take to finish after the shutdown signal before control exits anyway.
    pub shutdown_grace: Duration,
    /// Where the master key that seals signing secrets at rest comes from.
    pub master_key: MasterKeySource,
    /// Non-public ranges that control's own outbound requests (verification challenges) may reach.
    pub allowed_cidrs: Vec<IpNet>,
    /// How long a receiver has to answer a verification challenge.
    pub challenge_timeout: Duration,
    /// TLS on the listener (and mTLS with a client CA); `None` serves plaintext, on loopback only.
    pub tls: Option<TlsFiles>,
    /// Bearer tokens with scopes ([`listener::auth`]); `None` (and no client CA) means no authentication: dev mode.
    pub tokens_file: Option<PathBuf>,
    /// How often the TLS and token files are checked for changes.
    pub reload_interval: Duration,
    /// How long final deliveries (and their attempts) are kept after their last update before they are pruned; also
    /// how long an agent must be silent before its pending deliveries are pruned the same way.
    pub delivery_retention: Duration,
    /// Pause between pruning passes once the pruner has caught up.
    pub prune_interval: Duration,
    /// Limits on the listener's connections ([`hookrelay_common::listener`]).
    pub connection_limits: Limits,
}

/// A PostgreSQL database for control's state (`--database-url`). Its `Debug` redacts the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Database {
    /// `postgres://USER@HOST:PORT/DBNAME`, possibly with a password and parameters.
    pub url: String,
    /// A file whose first line is the password; it overrides one in the URL.
    pub password_file: Option<PathBuf>,
}

impl Database {
    /// The URL with any password (in the userinfo or a `password` parameter) replaced by `[redacted]`.
    pub fn redacted_url(&self) -> String {
        let Ok(mut url) = url::Url::parse(&self.url) else {
            // Never shown as it is: only postgres:// URLs are accepted, so this is not one.
            return "[not a URL]".to_owned();
        };
        if url.password().is_some() {
            let _ = url.set_password(Some("[redacted]"));
        }
        if url.query_pairs().any(|(name, _)| name == "password") {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(name, value)| {
                    let value = if name == "password" { "[redacted]".to_owned() } else { value.into_owned() };
                    (name.into_owned(), value)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }

    /// Reads the password file's first line, when there is one.
    pub fn password(&self) -> anyhow::Result<Option<String>> {
        let Some(path) = &self.password_file else { return Ok(None) };
        let text = std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("cannot read the database password file {}: {error}", path.display()))?;
        let password = text.lines().next().unwrap_or_default().to_owned();
        anyhow::ensure!(!password.is_empty(), "the database password file {} is empty", path.display());
        Ok(Some(password))
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.redacted_url())
            .field("password_file", &self.password_file)
            .finish()
    }
}

/// Where the master key comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MasterKeySource {
    /// None given: [`DEV_MASTER_KEY_FILE`] in the data directory, generated (mode 0600) on first start. For
    /// development only, since the key then sits beside the data it protects; control says so loudly.
    #[default]
    DataDir,
    /// A file holding the key as base64 of 32 bytes (a mounted Kubernetes Secret, say).
    File(PathBuf),
    /// The key itself (from [`ENV_MASTER_KEY`]).
    Key(MasterKey),
}

impl Config {
    /// The defaults, with the database in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            database: None,
            allow_insecure_endpoints: false,
            max_endpoints_per_owner: DEFAULT_MAX_ENDPOINTS_PER_OWNER,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            master_key: MasterKeySource::DataDir,
            allowed_cidrs: Vec::new(),
            challenge_timeout: DEFAULT_CHALLENGE_TIMEOUT,
            tls: None,
            tokens_file: None,
            reload_interval: listener::DEFAULT_RELOAD_INTERVAL,
            delivery_retention: store::DEFAULT_DELIVERY_RETENTION,
            prune_interval: store::DEFAULT_PRUNE_INTERVAL,
            connection_limits: Default::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new(DEFAULT_DATA_DIR)
    }
}

/// hookrelay's control plane: owners, event types and endpoints, the config stream to agents, delivery logs.
#[derive(Debug, Parser)]
#[command(name = "hookrelay-control", version)]
pub struct Args {
    /// Address to serve gRPC (AdminService and AgentService) on; port 0 picks a free port.
    #[arg(long, env = ENV_LISTEN, default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Directory of control's database.
    #[arg(long, env = ENV_DATA_DIR, default_value = DEFAULT_DATA_DIR, value_name = "PATH")]
    data_dir: PathBuf,

    /// PostgreSQL database to keep control's state in, instead of sled in --data-dir:
    /// `postgres://USER@HOST:PORT/DBNAME`. Several control replicas can share one; the schema is created and
    /// migrated at start. The connection is plain TCP (no TLS).
    #[arg(long, env = ENV_DATABASE_URL, value_name = "URL")]
    database_url: Option<String>,

    /// File whose first line is the database password (a mounted Secret, say); it overrides a password in
    /// --database-url. Needs --database-url.
    #[arg(long, env = ENV_DATABASE_PASSWORD_FILE, value_name = "PATH", requires = "database_url")]
    database_password_file: Option<PathBuf>,

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
    #[arg(long, env = ENV_LOG_FORMAT, value_enum, default_value_t)]
    pub log_format: LogFormat,

    /// Print the effective configuration (defaults, env, flags) as JSON and exit; the master key is redacted.
    #[arg(long)]
    pub print_config: bool,
    /// TOML file of settings, keys named like the long flags (`max_payload_bytes = 1048576`); the environment and
    /// flags override it. Every problem in it is reported at once.
    #[arg(long, env = hookrelay_common::config_file::ENV_CONFIG, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Most connections the listener keeps open at once (each agent holds one). Beyond it, a new connection takes
    /// the place of the one idle for longest, or is closed at once when every connection has a call in flight.
    /// Keep it well below control's file descriptor limit (`ulimit -n`).
    #[arg(
        long,
        env = ENV_MAX_CONNECTIONS,
        default_value_t = DEFAULT_MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    max_connections: u32,

    /// Seconds a new connection has to finish its TLS handshake and send its first complete request (and an
    /// HTTP/1.1 one the headers of each later request); one that sends nothing, or a byte at a time, is closed.
    #[arg(
        long,
        env = ENV_HEADER_READ_TIMEOUT_SECS,
        default_value_t = DEFAULT_HEADER_READ_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        value_name = "SECS"
    )]
    header_read_timeout_secs: u64,

    /// Seconds a connection may stay open with no call in flight (an agent's open Watch stream is one).
    #[arg(
        long,
        env = ENV_IDLE_TIMEOUT_SECS,
        default_value_t = DEFAULT_IDLE_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(1..=86400),
        value_name = "SECS"
    )]
    idle_timeout_secs: u64,
}

impl Args {
    /// The settings from flags, env vars and the `--config` file. Like clap's `parse`, it prints the problems and
    /// exits with status 2 when they do not make a valid command line.
    pub fn load() -> Self {
        hookrelay_common::config_file::parse_or_exit()
    }

    /// The library's [`Config`] from these settings and [`ENV_MASTER_KEY`].
    pub fn into_config(self) -> anyhow::Result<Config> {
        let master_key = master_key_source(self.master_key_file, std::env::var(ENV_MASTER_KEY).ok())?;
        let database = database(self.database_url, self.database_password_file)?;
        Ok(Config {
            data_dir: self.data_dir,
            database,
            allow_insecure_endpoints: self.allow_insecure_endpoints,
            max_endpoints_per_owner: self.max_endpoints_per_owner,
            master_key,
            allowed_cidrs: self.allowed_cidrs,
            tls: match (self.tls_cert, self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key, client_ca: self.tls_client_ca }),
                _ => None,
            },
            tokens_file: self.tokens_file,
            delivery_retention: Duration::from_secs(self.delivery_retention_hours * 3600),
            connection_limits: Limits {
                max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
                header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
                idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            },
            ..Config::default()
        })
    }
}

/// The database from `--database-url` and `--database-password-file`. The URL never appears in an error, as it
/// may hold a password.
fn database(url: Option<String>, password_file: Option<PathBuf>) -> anyhow::Result<Option<Database>> {
    let Some(url) = url.filter(|url| !url.trim().is_empty()) else {
        anyhow::ensure!(password_file.is_none(), "--database-password-file needs --database-url ({ENV_DATABASE_URL})");
        return Ok(None);
    };
    let scheme = url::Url::parse(&url).map(|parsed| parsed.scheme().to_owned()).unwrap_or_default();
    anyhow::ensure!(
        scheme == "postgres" || scheme == "postgresql",
        "--database-url ({ENV_DATABASE_URL}) must be a postgres:// URL, e.g. postgres://hookrelay@db:5432/hookrelay"
    );
    Ok(Some(Database { url, password_file }))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn db(url: &str) -> Database {
        Database { url: url.into(), password_file: None }
    }

    #[test]
    fn database_urls_are_checked_and_shown_without_their_password() {
        assert_eq!(database(None, None).unwrap(), None);
        let error = database(Some("host=db password=hunter2".into()), None).unwrap_err().to_string();
        assert!(error.starts_with("--database-url (HOOKRELAY_DATABASE_URL) must be a postgres:// URL"), "{error}");
        assert!(!error.contains("hunter2"));
        assert!(database(None, Some("pw".into())).is_err());
        let given = database(Some("postgresql://hr:hunter2@db:5432/hr".into()), None).unwrap().unwrap();
        assert_eq!(given.redacted_url(), "postgresql://hr:%5Bredacted%5D@db:5432/hr");
        assert!(!format!("{given:?}").contains("hunter2"));
        let in_query = db("postgres://hr@db/hr?sslmode=disable&password=hunter2").redacted_url();
        assert_eq!(in_query, "postgres://hr@db/hr?sslmode=disable&password=%5Bredacted%5D");
        assert_eq!(db("postgres://hr@db/hr").redacted_url(), "postgres://hr@db/hr");
    }

    #[test]
    fn the_password_is_the_first_line_of_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = hookrelay_tests::write_file(dir.path(), "pw", "s3cret\nignored\n");
        let given = Database { password_file: Some(file), ..db("postgres://hr@db/hr") };
        assert_eq!(given.password().unwrap().as_deref(), Some("s3cret"));
        let empty = hookrelay_tests::write_file(dir.path(), "empty", "\n");
        assert!(Database { password_file: Some(empty), ..given.clone() }.password().is_err());
        assert_eq!(db("postgres://hr@db/hr").password().unwrap(), None);
    }
}
