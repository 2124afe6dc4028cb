//! hookrelay's control plane: the source of truth for owners, the event-type catalog and endpoints; the config
//! stream that every agent watches; and the log of deliveries and attempts that agents report.
//!
//! - [`run`] serves `AdminService` and `AgentService` (gRPC, h2c) on one listener until its shutdown future
//!   completes, then drains within [`Config::shutdown_grace`]. [`listener`] owns that listener's TLS, bearer tokens,
//!   client certificates and connection limits.
//! - [`store`] holds the state behind the [`store::Store`] trait: [`store::SledStore`] is the embedded default in
//!   `--data-dir`, [`store::PostgresStore`] the database that several replicas share (`--database-url`); signing
//!   secrets are sealed under the master key ([`MasterKeySource`]).
//! - [`watch`] fans config versions out to agents; [`grpc`] holds the thin service handlers; [`validate`] checks
//!   requests; [`error`] maps every failure to one gRPC status.
//! - [`metrics`] (Prometheus `/metrics`) and [`ops`] (gRPC health, server reflection, log format,
//!   `--print-config`) are served on the same port.
//! - [`retention::Pruner`] removes final deliveries (and those of agents gone as long) after
//!   [`Config::delivery_retention`], in bounded passes.
//! - [`rotation`] ends the overlap of rotated secrets; [`challenge`] sends verification challenges under the
//!   outbound address policy (`--allowed-cidrs`).
//! - [`config`] holds the flags of `hookrelay-control`, their env names and defaults, and [`Config`].

#![forbid(unsafe_code)]

pub mod challenge;
pub mod config;
pub mod error;
pub mod grpc;
pub mod listener;
pub mod metrics;
pub mod ops;
pub mod replay;
pub mod retention;
pub mod rotation;
pub mod store;
pub mod validate;
pub mod watch;

pub use config::{Config, DEV_MASTER_KEY_FILE, Database, MasterKeySource};

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hookrelay_common::net_policy::AddressPolicy;
use hookrelay_common::proto::v1::admin_service_server::AdminServiceServer;
use hookrelay_common::proto::v1::agent_service_server::AgentServiceServer;
use hookrelay_common::sealed::MasterKey;
use tokio::net::TcpListener;
use tokio::sync::watch as signal;

use crate::challenge::Verifier;
use crate::config::{ENV_MASTER_KEY, ENV_MASTER_KEY_FILE};
use crate::grpc::{AdminApi, AdminParts, AgentApi};
use crate::listener::{ConnInfo, Security};
use crate::retention::{Pruner, Retention};
use crate::rotation::ExpiryTimer;
use crate::store::{PostgresStore, SledStore, Store};
use crate::watch::ConfigHub;

/// Interval of HTTP/2 pings on idle connections, and how long an answer may take.
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(20);
/// Largest request control decodes: a full `ReportAttempts` batch (1000 reports with 4 KiB snippets) fits.
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Loads the master key, opens the store (sled in `config.data_dir`, or `config.database`) and serves gRPC on `listener` until `shutdown`
/// completes; then stops accepting, ends open Watch streams, waits up to `config.shutdown_grace` for calls in
/// flight, flushes and returns. Fails before serving anything when the key does not open the store's secrets.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    serve(config, store, listener, shutdown).await
}

/// Checks `config`, loads the master key and opens the store (sled in `config.data_dir`, or PostgreSQL when
/// `config.database` is set): everything [`run`] does before serving, so a binary can fail on a wrong key or an
/// unreachable database before it says it is listening.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    anyhow::ensure!(config.max_endpoints_per_owner >= 1, "max_endpoints_per_owner must be at least 1");
    if config.database.is_none() || config.master_key == MasterKeySource::DataDir {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    }
    let (key, generated) = load_master_key(config)?;
    let (opened, location): (error::Result<Arc<dyn Store>>, String) = match &config.database {
        None => {
            let opened = SledStore::open(&config.data_dir, key).map(|store| Arc::new(store) as Arc<dyn Store>);
            (opened, config.data_dir.display().to_string())
        }
        Some(database) => {
            let password = database.password()?;
            let opened = PostgresStore::connect(&database.url, password, key).await;
            (opened.map(|store| Arc::new(store) as Arc<dyn Store>), format!("the database {}", database.redacted_url()))
        }
    };
    match opened {
        Ok(store) => Ok(store),
        Err(error::Error::WrongMasterKey) if generated.is_some() => {
            // The data was sealed under a key given at an earlier start; the one just generated is of no use.
            let path = generated.expect("checked above");
            let _ = std::fs::remove_file(&path);
            anyhow::bail!(
                "the signing secrets in {location} were sealed under a master key that was not given this time; \
                 start control with that key (--master-key-file, {ENV_MASTER_KEY_FILE} or {ENV_MASTER_KEY})"
            );
        }
        Err(error) => Err(error).with_context(|| format!("cannot open the store in {location}")),
    }
}

/// The master key, and the path of the key file when this call generated it.
fn load_master_key(config: &Config) -> anyhow::Result<(MasterKey, Option<PathBuf>)> {
    match &config.master_key {
        MasterKeySource::Key(key) => Ok((key.clone(), None)),
        MasterKeySource::File(path) => {
            warn_if_readable_by_others(path);
            Ok((MasterKey::read_file(path).context("cannot read the master key")?, None))
        }
        MasterKeySource::DataDir => {
            let path = config.data_dir.join(DEV_MASTER_KEY_FILE);
            if path.exists() {
                tracing::warn!(
                    path = %path.display(),
                    "DEVELOPMENT MODE: signing secrets are sealed under a master key kept in the data directory; \
                     in production give --master-key-file or {ENV_MASTER_KEY}"
                );
                return Ok((MasterKey::read_file(&path).context("cannot read the master key")?, None));
            }
            let key = MasterKey::create_file(&path).context("cannot create a development master key")?;
            tracing::warn!(
                path = %path.display(),
                "DEVELOPMENT MODE: no master key given, so control GENERATED ONE in its data directory, next to the \
                 secrets it seals. Fine for trying hookrelay; in production give --master-key-file or \
                 {ENV_MASTER_KEY} (keep that key: without it the stored secrets cannot be read)"
            );
            Ok((key, Some(path)))
        }
    }
}

/// Warns when a key file's mode lets anyone but its owner read it.
fn warn_if_readable_by_others(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(metadata) = std::fs::metadata(path)
            && metadata.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", metadata.permissions().mode() & 0o777),
                "the master key file can be read by others than its owner; chmod 600 it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Serves gRPC over an already opened store; see [`run`].
pub async fn serve(
    config: Config,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = signal::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("stopping: no new connections, ending watch streams");
        let _ = stop_tx.send(true);
    });

    let hub = ConfigHub::new(store.clone(), stop_rx.clone());
    let verifier = Verifier::new(AddressPolicy::new(config.allowed_cidrs.clone()), config.challenge_timeout)
        .context("cannot set up the HTTP client for verification challenges")?;
    let expiry = ExpiryTimer::start(store.clone(), stop_rx.clone());
    let admin = AdminApi::new(
        store.clone(),
        AdminParts {
            hub: hub.clone(),
            verifier,
            expiry,
            allow_insecure_endpoints: config.allow_insecure_endpoints,
            address_policy: AddressPolicy::new(config.allowed_cidrs.clone()),
            max_endpoints_per_owner: usize::try_from(config.max_endpoints_per_owner).unwrap_or(usize::MAX),
        },
    );
    let metrics = Arc::new(metrics::Metrics::new());
    let retention = Retention { period: config.delivery_retention, interval: config.prune_interval };
    let pruned = metrics.clone();
    Pruner::new(store.clone(), retention, move |removed| pruned.deliveries_pruned(removed)).start(stop_rx.clone());
    let scrape = metrics::Scrape { metrics: metrics.clone(), store: store.clone(), hub: hub.clone() };
    let ops_routes = ops::routes(metrics::router(scrape), stop_rx.clone())?;
    let agent = AgentApi::new(store.clone(), hub, metrics);
    let addr = listener.local_addr().context("cannot read the listening address")?;
    let security = Security::load(config.tls.clone(), config.tokens_file.clone(), addr)?;
    let (incoming, auth) = security.serve(listener, config.connection_limits, config.reload_interval, stop_rx.clone());
    let mut stopped = stop_rx.clone();
    let server = tonic::transport::Server::builder()
        // Pings find agents that vanished without closing their Watch stream, so `connected` does not lie for long.
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE))
        // HTTP/1.1 too, for scrapers of /metrics; gRPC clients still speak HTTP/2 on the same port.
        .accept_http1(true)
        // Outermost, so refused calls count as requests too: the connection is not idle while one is answered.
        .layer(hookrelay_common::listener::TrackLayer::new(ConnInfo::activity_of))
        .layer(auth)
        .add_routes(ops_routes)
        .add_service(AdminServiceServer::new(admin).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(AgentServiceServer::new(agent).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        });

    let mut server = pin!(server);
    let mut stopping = stop_rx;
    let deadline = async {
        let _ = stopping.wait_for(|stopped| *stopped).await;
        tokio::time::sleep(config.shutdown_grace).await;
    };
    tokio::select! {
        served = &mut server => served.context("gRPC server failed")?,
        () = deadline => tracing::warn!(grace = ?config.shutdown_grace, "calls still open after the grace period; stopping anyway"),
    }
    store.flush().await.context("final flush failed")?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_database_url_selects_postgres_without_a_data_directory() {
        let Some(cluster) = hookrelay_tests::postgres::postgres() else { return };
        let dir = tempfile::tempdir().unwrap();
        let password_file = Some(hookrelay_tests::write_file(dir.path(), "password", "anything\n"));
        let database = Database { url: cluster.fresh_database(), password_file };
        let config = Config {
            database: Some(database.clone()),
            master_key: MasterKeySource::Key(MasterKey::generate()),
            ..Config::new(dir.path().join("data"))
        };
        let store = open_store(&config).await.unwrap();
        store
            .create_owner(hookrelay_common::proto::v1::Owner { id: "acme".into(), ..Default::default() })
            .await
            .unwrap();
        assert!(!dir.path().join("data").exists(), "sled was not opened");
        drop(store);

        let reopened = open_store(&config).await.unwrap();
        assert_eq!(reopened.stats().unwrap().config_version, 1);
        let other_key = Config { master_key: MasterKeySource::Key(MasterKey::generate()), ..config.clone() };
        let error = format!("{:#}", open_store(&other_key).await.err().unwrap());
        let expected = format!("cannot open the store in the database {}: the master key does not match", database.url);
        assert!(error.starts_with(&expected), "{error}");
    }
}
