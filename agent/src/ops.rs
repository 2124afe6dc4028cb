//! What operators and their tools see of the agent besides emit: the gRPC health service
//! (`grpc.health.v1.Health`), server reflection (v1 and v1alpha, so `grpcurl -plaintext ADDR list` works without
//! .proto files) and the log format.
//!
//! Health: the whole server (`""`) is SERVING while the process runs (a liveness probe);
//! `hookrelay.v1.EmitService` is SERVING only once a config is in force, since emit answers UNAVAILABLE before
//! (a readiness probe).

use std::io::IsTerminal as _;
use std::sync::Arc;

use anyhow::Context as _;
use hookrelay_common::proto::v1 as pb;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tracing_subscriber::EnvFilter;

use crate::catalog::Catalog;

/// Env var of `--log-format`.
pub const ENV_LOG_FORMAT: &str = "HOOKRELAY_LOG_FORMAT";

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, fields at the top level (for log collectors).
    Json,
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), everything goes to stderr.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    match format {
        LogFormat::Pretty => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// Adds health and reflection to `routes`. Emit's health follows `catalog` until it closes.
pub fn add_health_and_reflection(routes: Routes, mut catalog: watch::Receiver<Arc<Catalog>>) -> anyhow::Result<Routes> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let emit = pb::emit_service_server::SERVICE_NAME;
    tokio::spawn(async move {
        loop {
            let ready = catalog.borrow_and_update().version > 0;
            let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status(emit, status).await;
            if catalog.changed().await.is_err() {
                break;
            }
        }
        reporter.set_service_status(emit, ServingStatus::NotServing).await;
    });
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(hookrelay_common::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection().build_v1().context("building the reflection service")?;
    let v1alpha = reflection().build_v1alpha().context("building the reflection service")?;
    Ok(routes.add_service(health).add_service(v1).add_service(v1alpha))
}
