//! The agent's Prometheus metrics, served as OpenMetrics text on `GET /metrics` of the emit listener.
//!
//! The hot paths (emit, delivery attempts) only touch atomics: each labelled counter is taken out of its family once
//! at start, so bumping it never takes the family's lock, and latencies go to [`AtomicHistogram`]s with fixed
//! buckets (prometheus-client's own histogram takes a lock per observation). Gauges that mirror state owned
//! elsewhere (queue depth and size, applied config version, report backlog) are read from their owners when scraped.
//!
//! Series (all prefixed `hookrelay_agent_`):
//! - `queue_deliveries`, `queue_bytes`: deliveries pending, and the queue's size on disk.
//! - `deliveries_total{outcome}`: `succeeded`, `retry` (an attempt failed, another is scheduled), `failed` (gave
//!   up), `cancelled` (endpoint deleted).
//! - `attempt_duration_seconds`: histogram of HTTP attempts to endpoints.
//! - `emit_duration_seconds`: histogram of emit calls, from validation to the durable answer.
//! - `emits_accepted_total`, `emits_rejected_total{reason}` (`invalid`, `unavailable`, `exhausted`, `storage`):
//!   events, counted one by one (a rejected batch counts all its events).
//! - `config_version`: the config version in force; `report_backlog`: attempt reports spooled for control.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use crate::catalog::Catalog;
use crate::queue::Queue;

/// Content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the latency buckets: 1 ms to 30 s, roughly doubling.
const LATENCY_BUCKETS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0];

/// What became of a delivery after an attempt (or without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Succeeded,
    Retry,
    Failed,
    Cancelled,
}

/// Why an emit was refused, as a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Invalid,
    Unavailable,
    Exhausted,
    Storage,
}

/// The agent's metrics; cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    outcomes: [Counter; 4],
    rejected: [Counter; 4],
    emits_accepted: Counter,
    attempt_duration: AtomicHistogram,
    emit_duration: AtomicHistogram,
    queue_deliveries: Gauge,
    queue_bytes: Gauge,
    queue_event_bytes: Gauge,
    storage_failed: Gauge,
    config_version: Gauge,
    report_backlog: Gauge,
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
        let mut registry = Registry::with_prefix("hookrelay_agent");
        let gauge = |registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>| {
            let gauge = Gauge::default();
            match unit {
                Some(unit) => registry.register_with_unit(name, help, unit, gauge.clone()),
                None => registry.register(name, help, gauge.clone()),
            }
            gauge
        };
        let queue_deliveries = gauge(&mut registry, "queue_deliveries", "Deliveries pending in the queue", None);
        let queue_bytes = gauge(&mut registry, "queue", "Size of the queue's files on disk", Some(Unit::Bytes));
        let queue_event_bytes = gauge(
            &mut registry,
            "queue_events",
            "Bytes of the events held, pending or retained for replay: what --max-queue-mib limits",
            Some(Unit::Bytes),
        );
        let storage_failed = gauge(
            &mut registry,
            "queue_storage_failed",
            "1 while the queue's storage has failed (a full disk, say) and is being reopened; emits are refused",
            None,
        );
        let config_version = gauge(&mut registry, "config_version", "Config version in force", None);
        let report_backlog =
            gauge(&mut registry, "report_backlog", "Attempt reports spooled, not yet stored by control", None);

        let outcome_family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(
            "deliveries",
            "Delivery outcomes: succeeded, retry (another attempt scheduled), failed (gave up), cancelled",
            outcome_family.clone(),
        );
        let outcomes = ["succeeded", "retry", "failed", "cancelled"]
            .map(|outcome| outcome_family.get_or_create(&[("outcome", outcome)]).clone());
        let rejected_family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register("emits_rejected", "Events refused at emit, by reason", rejected_family.clone());
        let rejected = ["invalid", "unavailable", "exhausted", "storage"]
            .map(|reason| rejected_family.get_or_create(&[("reason", reason)]).clone());
        let emits_accepted = Counter::default();
        registry.register("emits_accepted", "Events accepted (made durable) at emit", emits_accepted.clone());

        let attempt_duration = AtomicHistogram::new(&LATENCY_BUCKETS);
        registry.register_with_unit(
            "attempt_duration",
            "Duration of delivery attempts (HTTP requests to endpoints)",
            Unit::Seconds,
            attempt_duration.clone(),
        );
        let emit_duration = AtomicHistogram::new(&LATENCY_BUCKETS);
        registry.register_with_unit(
            "emit_duration",
            "Duration of emit calls, from validation to the durable answer",
            Unit::Seconds,
            emit_duration.clone(),
        );
        Self {
            registry,
            outcomes,
            rejected,
            emits_accepted,
            attempt_duration,
            emit_duration,
            queue_deliveries,
            queue_bytes,
            queue_event_bytes,
            storage_failed,
            config_version,
            report_backlog,
        }
    }

    /// Counts a delivery outcome and, when an attempt was made, its duration.
    pub fn delivery(&self, outcome: DeliveryOutcome, attempt: Option<Duration>) {
        self.outcomes[outcome as usize].inc();
        if let Some(duration) = attempt {
            self.attempt_duration.observe(duration);
        }
    }

    /// Counts an emit call of `events` events and its duration; `rejected` says why it failed, if it did.
    pub fn emit(&self, events: usize, rejected: Option<RejectReason>, duration: Duration) {
        let counter = match rejected {
            Some(reason) => &self.rejected[reason as usize],
            None => &self.emits_accepted,
        };
        counter.inc_by(events as u64);
        self.emit_duration.observe(duration);
    }

    /// Counts an event refused before it reached the intake (an HTTP body too large or not an event).
    pub fn refused(&self, reason: RejectReason) {
        self.rejected[reason as usize].inc();
    }

    /// Reads the gauges from their owners and encodes every series.
    pub fn render(&self, queue: &Queue, catalog: &watch::Receiver<Arc<Catalog>>) -> String {
        self.queue_deliveries.set(saturating_i64(queue.depth()));
        self.queue_event_bytes.set(saturating_i64(queue.event_bytes()));
        self.storage_failed.set(i64::from(queue.storage_failure().is_some()));
        // While the storage is failed, the files' size keeps its last value.
        if let Ok(bytes) = queue.bytes_on_disk() {
            self.queue_bytes.set(saturating_i64(bytes));
        }
        self.report_backlog.set(saturating_i64(queue.report_backlog()));
        self.config_version.set(saturating_i64(catalog.borrow().version));
        let mut text = String::new();
        // Writing to a String cannot fail; an error would be a bug in a metric's encoder.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "encoding metrics failed");
        }
        text
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// What `GET /metrics` reads.
#[derive(Clone)]
pub struct Scrape {
    pub metrics: Arc<Metrics>,
    pub queue: Queue,
    pub catalog: watch::Receiver<Arc<Catalog>>,
}

/// The `/metrics` route.
pub fn router(scrape: Scrape) -> axum::Router {
    axum::Router::new().route("/metrics", axum::routing::get(serve)).with_state(scrape)
}

async fn serve(State(scrape): State<Scrape>) -> impl IntoResponse {
    let text = scrape.metrics.render(&scrape.queue, &scrape.catalog);
    (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text)
}

/// A histogram with fixed buckets whose observations are a few relaxed atomic adds, no lock. A scrape may see a
/// sum and count from slightly different instants; Prometheus tolerates that. Clones share the counts.
#[derive(Debug, Clone)]
pub struct AtomicHistogram {
    inner: Arc<HistogramCounts>,
}

#[derive(Debug)]
struct HistogramCounts {
    bounds: Vec<f64>,
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: Vec<AtomicU64>,
    /// Sum of the observations in nanoseconds.
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram with these upper bounds, in seconds, ascending; `+Inf` is added.
    pub fn new(bounds: &[f64]) -> Self {
        let counts = HistogramCounts {
            bounds: bounds.to_vec(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        };
        Self { inner: Arc::new(counts) }
    }

    /// Records one observation.
    pub fn observe(&self, duration: Duration) {
        let HistogramCounts { bounds, counts, sum_nanos } = &*self.inner;
        let seconds = duration.as_secs_f64();
        counts[bounds.partition_point(|bound| *bound < seconds)].fetch_add(1, Ordering::Relaxed);
        sum_nanos.fetch_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let HistogramCounts { bounds, counts, sum_nanos } = &*self.inner;
        let buckets: Vec<(f64, u64)> = bounds
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(counts.iter().map(|count| count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, count)| count).sum();
        let sum = sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_text() {
        let histogram = AtomicHistogram::new(&[0.01, 0.1]);
        let mut registry = Registry::default();
        registry.register_with_unit("latency", "test", Unit::Seconds, histogram.clone());
        histogram.observe(Duration::from_millis(5));
        histogram.observe(Duration::from_millis(10));
        histogram.observe(Duration::from_millis(50));
        histogram.observe(Duration::from_secs(3));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("latency_seconds_count 4\n"), "{text}");
        assert!(text.contains("latency_seconds_sum 3.065\n"), "{text}");
        assert!(text.contains("latency_seconds_bucket{le=\"0.01\"} 2\n"), "{text}");
        assert!(text.contains("latency_seconds_bucket{le=\"0.1\"} 3\n"), "{text}");
        assert!(text.contains("latency_seconds_bucket{le=\"+Inf\"} 4\n"), "{text}");
    }

    #[test]
    fn every_series_is_there_from_the_start() {
        let metrics = Metrics::new();
        metrics.delivery(DeliveryOutcome::Retry, Some(Duration::from_millis(20)));
        metrics.emit(3, Some(RejectReason::Invalid), Duration::from_millis(1));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
        for series in [
            "hookrelay_agent_deliveries_total{outcome=\"retry\"} 1\n",
            "hookrelay_agent_deliveries_total{outcome=\"succeeded\"} 0\n",
            "hookrelay_agent_emits_rejected_total{reason=\"invalid\"} 3\n",
            "hookrelay_agent_emits_accepted_total 0\n",
            "hookrelay_agent_attempt_duration_seconds_count 1\n",
            "hookrelay_agent_queue_bytes 0\n",
            "hookrelay_agent_queue_events_bytes 0\n",
            "hookrelay_agent_queue_storage_failed 0\n",
            "hookrelay_agent_report_backlog 0\n",
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
    }
}
