//! What operators and their tools see of the agent besides emit: the gRPC health service
//! (`grpc.health.v1.Health`), server reflection (v1 and v1alpha, so `grpcurl -plaintext ADDR list` works without
//! .proto files; it describes only the services the agent serves), the log format and `--print-config`.
//!
//! Health: the whole server (`""`) is SERVING while the process runs (a liveness probe);
//! `hookrelay.v1.EmitService` is SERVING only while emit can succeed: from the moment a config is in force, since
//! emit answers UNAVAILABLE before (a readiness probe).

use std::sync::Arc;

use anyhow::Context as _;
use hookrelay_common::proto::v1 as pb;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::catalog::Catalog;

pub use hookrelay_common::logging::{LogFormat, init as init_logging};

/// The gRPC services of the emit port, besides health and reflection.
pub const SERVED: [&str; 1] = [pb::emit_service_server::SERVICE_NAME];

/// Adds health and reflection to `routes`. Emit's health is SERVING while `emit_ready` holds true, NOT_SERVING
/// otherwise, and for good once its sender is gone. Another condition joins by deriving `emit_ready` from both.
pub fn add_health_and_reflection(routes: Routes, mut emit_ready: watch::Receiver<bool>) -> anyhow::Result<Routes> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let emit = pb::emit_service_server::SERVICE_NAME;
    tokio::spawn(async move {
        loop {
            let status =
                if *emit_ready.borrow_and_update() { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status(emit, status).await;
            if emit_ready.changed().await.is_err() {
                break;
            }
        }
        reporter.set_service_status(emit, ServingStatus::NotServing).await;
    });
    let served =
        hookrelay_common::proto::descriptors_serving(&SERVED).context("decoding hookrelay's file descriptor set")?;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_file_descriptor_set(served.clone())
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection().build_v1().context("building the reflection service")?;
    let v1alpha = reflection().build_v1alpha().context("building the reflection service")?;
    Ok(routes.add_service(health).add_service(v1).add_service(v1alpha))
}

/// True while a config is in force (emit answers UNAVAILABLE before); closed when `catalog` closes.
pub fn configured(mut catalog: watch::Receiver<Arc<Catalog>>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(catalog.borrow().version > 0);
    tokio::spawn(async move {
        while catalog.changed().await.is_ok() {
            let ready = catalog.borrow_and_update().version > 0;
            tx.send_if_modified(|current| std::mem::replace(current, ready) != ready);
        }
    });
    rx
}

/// The effective configuration (defaults, env, flags) as JSON, for `--print-config`. Settings are listed one by
/// one, so a setting added later is never printed by accident; secret-bearing settings are files and shown by
/// path, and a password in the control URL is redacted.
pub fn effective_config(
    config: &crate::Config,
    listen: std::net::SocketAddr,
    log_format: LogFormat,
) -> serde_json::Value {
    let path = |path: &Option<std::path::PathBuf>| path.as_ref().map(|path| path.display().to_string());
    let duration = |duration: std::time::Duration| humantime::format_duration(duration).to_string();
    let credentials = &config.control_credentials;
    serde_json::json!({
        "listen": listen.to_string(),
        "log_format": log_format_name(log_format),
        "control_url": redact_url(&config.control_url),
        "control_token_file": path(&credentials.token_file),
        "control_ca": path(&credentials.ca),
        "control_client_cert": path(&credentials.client_cert),
        "control_client_key": path(&credentials.client_key),
        "emit_token_file": path(&config.emit_token_file),
        "data_dir": config.data_dir.display().to_string(),
        "cache_key_file": path(&config.cache_key_file),
        "node_name": config.node_name,
        "allowed_cidrs": config.allowed_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "max_payload_bytes": config.max_payload_bytes,
        "cache_capacity_bytes": config.cache_capacity_bytes,
        "max_queue_bytes": config.max_queue_bytes,
        "dedup_window": duration(config.dedup_window),
        "payload_retention": duration(config.payload_retention),
        "shutdown_grace": duration(config.shutdown_grace),
        "breaker_threshold": config.breaker_threshold,
        "auto_disable_after": duration(config.auto_disable_after),
        "response_snippet_bytes": config.response_snippet_bytes,
        "max_connections": config.connection_limits.max_connections,
        "header_read_timeout": duration(config.connection_limits.header_read_timeout),
        "idle_timeout": duration(config.connection_limits.idle_timeout),
    })
}

fn log_format_name(format: LogFormat) -> &'static str {
    match format {
        LogFormat::Pretty => "pretty",
        LogFormat::Json => "json",
    }
}

/// The control URLs (one, or several comma-separated) with any password replaced by `[redacted]`; unparsable
/// text is shown as it is (it holds no userinfo that `url` could find either).
fn redact_url(text: &str) -> String {
    let redact = |text: &str| match url::Url::parse(text) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("[redacted]"));
            parsed.to_string()
        }
        _ => text.to_owned(),
    };
    text.split(',').map(|url| redact(url.trim())).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_config_redacts_a_password_in_the_control_url() {
        let config = crate::Config::new("http://agent:hunter2@control:7100", "/var/lib/q", "node-1");
        let printed = effective_config(&config, "127.0.0.1:7200".parse().unwrap(), LogFormat::Json);
        let text = printed.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(printed["control_url"], "http://agent:%5Bredacted%5D@control:7100/");
        assert_eq!(printed["log_format"], "json");
        assert_eq!(printed["shutdown_grace"], "10s");

        let config = crate::Config::new("http://a:hunter2@control-0:7100, http://control-1:7100", "/q", "node-1");
        let printed = effective_config(&config, "127.0.0.1:7200".parse().unwrap(), LogFormat::Json);
        assert_eq!(printed["control_url"], "http://a:%5Bredacted%5D@control-0:7100/,http://control-1:7100");
    }
}
