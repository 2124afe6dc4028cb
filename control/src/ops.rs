//! What operators and their tools see of control besides its APIs: the gRPC health service
//! (`grpc.health.v1.Health`), server reflection (v1 and v1alpha, so `grpcurl -plaintext ADDR list` works without
//! .proto files; it describes only the services control serves), `/metrics` ([`crate::metrics`]) on the same
//! port, the log format and `--print-config`.
//!
//! Health: the server (`""`), `hookrelay.v1.AdminService` and `hookrelay.v1.AgentService` are SERVING while control
//! serves, and NOT_SERVING from the shutdown signal on, while open calls drain.

use anyhow::Context as _;
use hookrelay_common::proto::v1 as pb;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic_health::ServingStatus;

pub use hookrelay_common::logging::{LogFormat, init as init_logging};

/// Routes with the health and reflection services, and `extra` (the `/metrics` route) merged in. Health turns
/// NOT_SERVING once `stop` turns true.
pub fn routes(extra: axum::Router, mut stop: watch::Receiver<bool>) -> anyhow::Result<Routes> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let services = [""].into_iter().chain(SERVED);
    tokio::spawn(async move {
        for service in services.clone() {
            reporter.set_service_status(service, ServingStatus::Serving).await;
        }
        // An error means the sender is gone, which happens only as control stops: report that too.
        let _ = stop.wait_for(|stopped| *stopped).await;
        for service in services {
            reporter.set_service_status(service, ServingStatus::NotServing).await;
        }
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
    let mut routes = Routes::new(health).add_service(v1).add_service(v1alpha);
    let router = std::mem::take(routes.axum_router_mut()).merge(extra);
    *routes.axum_router_mut() = router;
    Ok(routes)
}

/// control's gRPC services, besides health and reflection.
pub const SERVED: [&str; 2] = [pb::admin_service_server::SERVICE_NAME, pb::agent_service_server::SERVICE_NAME];

/// The effective configuration (defaults, env, flags) as JSON, for `--print-config`. Settings are listed one by
/// one, so a setting added later is never printed by accident; the master key given in the environment and a
/// password in the database URL show as `[redacted]`, and the other secrets are files, shown by path.
pub fn effective_config(
    config: &crate::Config,
    listen: std::net::SocketAddr,
    log_format: LogFormat,
) -> serde_json::Value {
    let path = |path: &std::path::Path| path.display().to_string();
    let duration = |duration: std::time::Duration| humantime::format_duration(duration).to_string();
    let master_key = match &config.master_key {
        crate::MasterKeySource::DataDir => {
            serde_json::json!({ "file": path(&config.data_dir.join(crate::DEV_MASTER_KEY_FILE)), "development": true })
        }
        crate::MasterKeySource::File(file) => serde_json::json!({ "file": path(file) }),
        crate::MasterKeySource::Key(_) => {
            serde_json::json!({ "env": crate::config::ENV_MASTER_KEY, "key": "[redacted]" })
        }
    };
    let tls = config.tls.as_ref().map(|tls| {
        serde_json::json!({
            "cert": path(&tls.cert),
            "key": path(&tls.key),
            "client_ca": tls.client_ca.as_deref().map(path),
        })
    });
    serde_json::json!({
        "listen": listen.to_string(),
        "log_format": match log_format {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        },
        "data_dir": path(&config.data_dir),
        "database": config.database.as_ref().map(|database| serde_json::json!({
            "url": database.redacted_url(),
            "password_file": database.password_file.as_deref().map(path),
        })),
        "allow_insecure_endpoints": config.allow_insecure_endpoints,
        "max_endpoints_per_owner": config.max_endpoints_per_owner,
        "master_key": master_key,
        "allowed_cidrs": config.allowed_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "challenge_timeout": duration(config.challenge_timeout),
        "shutdown_grace": duration(config.shutdown_grace),
        "delivery_retention": duration(config.delivery_retention),
        "tls": tls,
        "tokens_file": config.tokens_file.as_deref().map(path),
        "reload_interval": duration(config.reload_interval),
        "max_connections": config.connection_limits.max_connections,
        "header_read_timeout": duration(config.connection_limits.header_read_timeout),
        "idle_timeout": duration(config.connection_limits.idle_timeout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_config_never_shows_the_master_key() {
        let key = hookrelay_common::sealed::MasterKey::generate();
        let encoded = key.expose_base64();
        let config = crate::Config { master_key: crate::MasterKeySource::Key(key), ..crate::Config::default() };
        let printed = effective_config(&config, "127.0.0.1:7100".parse().unwrap(), LogFormat::Pretty);
        let text = printed.to_string();
        assert!(!text.contains(&encoded), "{text}");
        assert_eq!(printed["master_key"]["key"], "[redacted]");
        assert_eq!(printed["max_endpoints_per_owner"], 50);
        assert_eq!(printed["database"], serde_json::Value::Null);
    }

    #[test]
    fn print_config_redacts_the_database_password() {
        let database = crate::Database {
            url: "postgres://hookrelay:hunter2@db:5432/hookrelay".into(),
            password_file: Some("/run/secrets/db-password".into()),
        };
        let config = crate::Config { database: Some(database), ..crate::Config::default() };
        let printed = effective_config(&config, "127.0.0.1:7100".parse().unwrap(), LogFormat::Json);
        assert!(!printed.to_string().contains("hunter2"), "{printed}");
        assert_eq!(printed["database"]["url"], "postgres://hookrelay:%5Bredacted%5D@db:5432/hookrelay");
        assert_eq!(printed["database"]["password_file"], "/run/secrets/db-password");
    }
}
