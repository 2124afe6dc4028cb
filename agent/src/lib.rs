//! hookrelay's per-node agent. Local services emit events to it ([`ingest`]); it makes them durable in its sled
//! [`queue`] before answering, fans each out to the subscribed endpoints, delivers signed requests with retries
//! ([`deliver`]), and reports every attempt to control ([`control_client`]), from whose config stream it learns
//! endpoints ([`catalog`]). It never needs control on the hot path. The emit port also serves Prometheus
//! `/metrics` ([`metrics`]), gRPC health and server reflection ([`ops`]); its connections are limited
//! ([`listener`]). [`config`] holds the flags of `hookrelay-agent`, their env names and defaults, and [`Config`].

#![forbid(unsafe_code)]

pub mod catalog;
pub mod config;
pub mod config_cache;
pub mod control_client;
pub mod deliver;
pub mod emit_auth;
pub mod ingest;
pub mod listener;
pub mod metrics;
pub mod ops;
pub mod queue;

pub use config::Config;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hookrelay_common::net_policy::AddressPolicy;
use hookrelay_common::proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use deliver::dispatcher::{self, Deliverer};
use ingest::Intake;
use queue::{Queue, QueueOptions};

/// Runs the agent on `listener` until `shutdown` completes, then stops intake, lets attempts in flight finish within
/// the grace period, flushes the queue and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_reporting_ready(config, listener, shutdown, |_| {}).await
}

/// [`run`], calling `ready` with the listening address once the agent can serve: its queue and cached config are
/// open and the next step is accepting connections. Nothing is called when it fails before.
pub async fn run_reporting_ready(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let (signals_tx, signals_rx) = mpsc::unbounded_channel();
    let metrics = Arc::new(metrics::Metrics::new());
    let options = QueueOptions {
        cache_capacity_bytes: config.cache_capacity_bytes,
        dedup_window: config.dedup_window,
        payload_retention: config.payload_retention,
        sweep_interval: Duration::from_secs(10),
        sweep_batch: queue::SWEEP_BATCH,
    };
    let (queue, recovered) = Queue::open(&config.data_dir, options, signals_tx.clone())
        .with_context(|| format!("opening the queue in {}", config.data_dir.display()))?;
    tracing::info!(deliveries = recovered.deliveries, reports = recovered.reports, "queue opened");

    let cache = config_cache::ConfigCache::open(queue.clone(), config.cache_key_file.as_deref(), &config.data_dir)?;
    let applied = cache.load()?;
    let catalog = applied.compile().unwrap_or_else(|error| {
        tracing::error!(%error, "cached config is unusable; waiting for control");
        Default::default()
    });
    tracing::info!(version = catalog.version, "starting with cached config");
    let (publish, catalog_rx) = watch::channel(Arc::new(catalog));
    let (stop_tx, stop_rx) = watch::channel(false);

    let link = control_client::channel::ControlLink::new(&config.control_url, &config.control_credentials)?;
    let emit_token = config.emit_token_file.as_deref().map(emit_auth::EmitToken::from_file).transpose()?;
    let identity = control_client::watch::Identity {
        node_name: config.node_name.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let watch_task = tokio::spawn(control_client::watch::run(
        link.clone(),
        identity,
        queue.clone(),
        cache,
        applied,
        publish,
        stop_rx.clone(),
    ));
    let reports_task =
        tokio::spawn(control_client::reports::run(link, config.node_name.clone(), queue.clone(), stop_rx.clone()));

    let policy = Arc::new(AddressPolicy::new(config.allowed_cidrs.clone()));
    let deliverer = Arc::new(Deliverer {
        queue: queue.clone(),
        client: hookrelay_common::outbound::build_client(policy).context("building the HTTP client")?,
        node_name: config.node_name.clone(),
        signals: signals_tx,
        breaker_threshold: config.breaker_threshold,
        auto_disable_after: config.auto_disable_after,
        failing_since: std::sync::Mutex::new(
            queue.load_failing_since().context("reading the auto-disable windows from the queue")?,
        ),
        metrics: metrics.clone(),
        response_snippet_bytes: config.response_snippet_bytes,
    });
    let dispatch_task = tokio::spawn(dispatcher::run(
        deliverer,
        catalog_rx.clone(),
        signals_rx,
        recovered.endpoints,
        stop_rx,
        config.shutdown_grace,
    ));

    let queue_size = ingest::QueueSize::new(queue.clone(), config.max_queue_bytes);
    let scrape = metrics::Scrape { metrics: metrics.clone(), queue: queue.clone(), catalog: catalog_rx.clone() };
    let intake = Intake::new(queue.clone(), catalog_rx.clone(), config.max_payload_bytes, queue_size, metrics);
    let grpc = tonic::service::Routes::new(pb::emit_service_server::EmitServiceServer::new(
        ingest::grpc::EmitService::new(intake.clone()),
    ));
    let grpc = ops::add_health_and_reflection(grpc, emit_ready(ops::configured(catalog_rx), queue.storage_state()))?
        .into_axum_router();
    let router = grpc
        .merge(
            axum::Router::new().route("/v1/events", axum::routing::post(ingest::http::post_event)).with_state(intake),
        )
        .merge(metrics::router(scrape));
    let router = emit_auth::guard(router, emit_token);
    ready(listener.local_addr().context("reading the listening address")?);
    listener::serve(listener, router, config.connection_limits, shutdown, config.shutdown_grace).await;

    tracing::info!("intake stopped; finishing attempts in flight");
    let _ = stop_tx.send(true);
    let _ = dispatch_task.await;
    let _ = tokio::join!(watch_task, reports_task);
    queue.close().await;
    tracing::info!("agent stopped");
    Ok(())
}

/// True while emit can succeed: a config is in force (`configured`) and the queue's storage works. Closed once
/// either source closes.
fn emit_ready(
    mut configured: watch::Receiver<bool>,
    mut storage: watch::Receiver<queue::StorageState>,
) -> watch::Receiver<bool> {
    let ready =
        |configured: bool, storage: &queue::StorageState| configured && *storage == queue::StorageState::Healthy;
    let (tx, rx) = watch::channel(ready(*configured.borrow(), &storage.borrow()));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = configured.changed() => if changed.is_err() { break },
                changed = storage.changed() => if changed.is_err() { break },
            }
            let now = ready(*configured.borrow_and_update(), &storage.borrow_and_update());
            tx.send_if_modified(|current| std::mem::replace(current, now) != now);
        }
    });
    rx
}
