//! hookrelay's control plane: the source of truth for owners, the event-type catalog and endpoints; the config
//! stream that every agent watches; and the log of deliveries and attempts that agents report.
//!
//! - [`run`] serves `AdminService` and `AgentService` (gRPC, h2c) on one listener until its shutdown future
//!   completes, then drains within [`Config::shutdown_grace`].
//! - [`store`] holds the state behind the [`store::Store`] trait; [`store::SledStore`] is the embedded
//!   implementation in `--data-dir`.
//! - [`watch`] fans config versions out to agents; [`grpc`] holds the thin service handlers; [`validate`] checks
//!   requests; [`error`] maps every failure to one gRPC status.

#![forbid(unsafe_code)]

pub mod error;
pub mod grpc;
pub mod store;
pub mod validate;
pub mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hookrelay_common::proto::v1::admin_service_server::AdminServiceServer;
use hookrelay_common::proto::v1::agent_service_server::AgentServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;

use crate::grpc::{AdminApi, AgentApi};
use crate::store::{SledStore, Store};
use crate::watch::ConfigHub;

/// Env var of `--listen`.
pub const ENV_LISTEN: &str = "HOOKRELAY_CONTROL_LISTEN";
/// Env var of `--data-dir`.
pub const ENV_DATA_DIR: &str = "HOOKRELAY_CONTROL_DATA_DIR";
/// Env var of `--allow-insecure-endpoints`.
pub const ENV_ALLOW_INSECURE_ENDPOINTS: &str = "HOOKRELAY_ALLOW_INSECURE_ENDPOINTS";
/// Env var of `--max-endpoints-per-owner`.
pub const ENV_MAX_ENDPOINTS_PER_OWNER: &str = "HOOKRELAY_MAX_ENDPOINTS_PER_OWNER";
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7100";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./hookrelay-data/control";
/// Default limit of endpoints per owner.
pub const DEFAULT_MAX_ENDPOINTS_PER_OWNER: u32 = 50;
/// Default time given to open calls and streams to finish after the shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Interval of HTTP/2 pings on idle connections, and how long an answer may take.
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(20);
/// Largest request control decodes: a full `ReportAttempts` batch (1000 reports with 4 KiB snippets) fits.
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// What control runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Directory of the embedded database; created if missing.
    pub data_dir: PathBuf,
    /// Permit `http://` endpoints that are created with `insecure = true`.
    pub allow_insecure_endpoints: bool,
    /// Most endpoints one owner may have; at least 1.
    pub max_endpoints_per_owner: u32,
    /// How long open calls and streams may take to finish after the shutdown signal before control exits anyway.
    pub shutdown_grace: Duration,
}

impl Config {
    /// The defaults, with the database in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            allow_insecure_endpoints: false,
            max_endpoints_per_owner: DEFAULT_MAX_ENDPOINTS_PER_OWNER,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new(DEFAULT_DATA_DIR)
    }
}

/// Opens the store in `config.data_dir` and serves gRPC on `listener` until `shutdown` completes; then stops
/// accepting, ends open Watch streams, waits up to `config.shutdown_grace` for calls in flight, flushes and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    anyhow::ensure!(config.max_endpoints_per_owner >= 1, "max_endpoints_per_owner must be at least 1");
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    let store = SledStore::open(&config.data_dir)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    serve(config, Arc::new(store), listener, shutdown).await
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
    let max_endpoints = usize::try_from(config.max_endpoints_per_owner).unwrap_or(usize::MAX);
    let admin = AdminApi::new(store.clone(), hub.clone(), config.allow_insecure_endpoints, max_endpoints);
    let agent = AgentApi::new(store.clone(), hub);
    let incoming = TcpListenerStream::new(listener).map(|connection| {
        connection.inspect(|stream| {
            // Small gRPC answers should not wait for Nagle's algorithm.
            let _ = stream.set_nodelay(true);
        })
    });
    let mut stopped = stop_rx.clone();
    let server = tonic::transport::Server::builder()
        // Pings find agents that vanished without closing their Watch stream, so `connected` does not lie for long.
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE))
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
