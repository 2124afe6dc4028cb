//! Control's Prometheus metrics, served as OpenMetrics text on `GET /metrics` of the gRPC listener (HTTP/1.1 is
//! accepted on that port for scrapers).
//!
//! Counters bumped by handlers are atomics taken out of their families once at start, so a report batch never
//! takes a family's lock. Gauges mirror state owned elsewhere (open Watch streams, the store's config version and
//! delivery count) and are read when scraped, without scans.
//!
//! Series (all prefixed `hookrelay_control_`):
//! - `agents_connected`: nodes with a Watch stream open.
//! - `config_version`: the current config version.
//! - `reports_ingested_total{result}`: attempt reports from agents, `stored` or `duplicate` (seen before).
//! - `deliveries_stored`: delivery records in the log.
//! - `deliveries_pruned_total`: deliveries removed by retention ([`crate::retention::Pruner`]): final ones, and those
//!   of lost agents.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::store::Store;
use crate::watch::ConfigHub;

/// Content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Control's metrics; share it behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    reports_stored: Counter,
    reports_duplicate: Counter,
    deliveries_pruned: Counter,
    agents_connected: Gauge,
    config_version: Gauge,
    deliveries_stored: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every series registered at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hookrelay_control");
        let mut gauge = |name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let agents_connected = gauge("agents_connected", "Agents (node names) with a config Watch stream open");
        let config_version = gauge("config_version", "The current config version");
        let deliveries_stored = gauge("deliveries_stored", "Delivery records in the delivery log");
        let reports = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "reports_ingested",
            "Attempt reports received from agents: stored, or duplicate (stored before)",
            reports.clone(),
        );
        let reports_stored = reports.get_or_create(&[("result", "stored")]).clone();
        let reports_duplicate = reports.get_or_create(&[("result", "duplicate")]).clone();
        let deliveries_pruned = Counter::default();
        registry.register(
            "deliveries_pruned",
            "Deliveries removed (with their attempts) after the retention period: final ones, and those of lost agents",
            deliveries_pruned.clone(),
        );
        Self {
            registry,
            reports_stored,
            reports_duplicate,
            deliveries_pruned,
            agents_connected,
            config_version,
            deliveries_stored,
        }
    }

    /// Counts one ingested batch.
    pub fn reports_ingested(&self, stored: u32, duplicates: u32) {
        self.reports_stored.inc_by(u64::from(stored));
        self.reports_duplicate.inc_by(u64::from(duplicates));
    }

    /// Counts deliveries removed by one retention pass.
    pub fn deliveries_pruned(&self, removed: usize) {
        self.deliveries_pruned.inc_by(removed as u64);
    }

    /// Reads the gauges from their owners and encodes every series.
    pub fn render(&self, store: &dyn Store, hub: &ConfigHub) -> String {
        self.agents_connected.set(i64::try_from(hub.connected_agents()).unwrap_or(i64::MAX));
        match store.stats() {
            Ok(stats) => {
                self.config_version.set(i64::try_from(stats.config_version).unwrap_or(i64::MAX));
                self.deliveries_stored.set(i64::try_from(stats.deliveries).unwrap_or(i64::MAX));
            }
            Err(error) => tracing::warn!(%error, "reading store figures for /metrics failed"),
        }
        let mut text = String::new();
        // Writing to a String cannot fail; an error would be a bug in a metric's encoder.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "encoding metrics failed");
        }
        text
    }
}

/// What `GET /metrics` reads.
#[derive(Clone)]
pub struct Scrape {
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn Store>,
    pub hub: ConfigHub,
}

/// The `/metrics` route.
pub fn router(scrape: Scrape) -> axum::Router {
    axum::Router::new().route("/metrics", axum::routing::get(serve)).with_state(scrape)
}

async fn serve(State(scrape): State<Scrape>) -> impl IntoResponse {
    let text = scrape.metrics.render(scrape.store.as_ref(), &scrape.hub);
    (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text)
}
