//! Operations on the real `hookrelay-control` binary: `/metrics` scraped over HTTP/1.1 on the gRPC port and parsed,
//! gRPC health, server reflection listed with a reflection client (what `grpcurl list` does), JSON logs.

use std::path::Path;
use std::process::Command;

use hookrelay_common::ids::{DeliveryId, ReportId};
use hookrelay_common::proto::v1 as pb;
use hookrelay_tests::api::connect;
use hookrelay_tests::metrics::{scrape, scrape_until};
use hookrelay_tests::reflection::list_services;
use hookrelay_tests::{Control, ControlOpts, spawn_control_with};
use pb::admin_service_client::AdminServiceClient;
use pb::agent_service_client::AgentServiceClient;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1alpha as reflection_alpha;

const BIN: &str = env!("CARGO_BIN_EXE_hookrelay-control");

/// This crate's binary as a [`Control`] with JSON logs (chosen by env).
async fn start() -> Control {
    let envs = [("HOOKRELAY_LOG_FORMAT", "json"), ("RUST_LOG", "info")];
    let envs = envs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
    spawn_control_with(ControlOpts { program: Some(BIN.into()), envs, ..ControlOpts::default() }).await
}

fn report(report_id: &str, delivery_id: &str) -> pb::AttemptReport {
    pb::AttemptReport {
        report_id: report_id.to_owned(),
        delivery: Some(pb::Delivery {
            id: delivery_id.to_owned(),
            event_id: "evt-1".into(),
            owner_id: "acme".into(),
            endpoint_id: String::new(),
            event_type: "a.b".into(),
            status: pb::DeliveryStatus::Succeeded as i32,
            attempts: 1,
            ..Default::default()
        }),
        attempt: Some(pb::Attempt { number: 1, status_code: 200, ..Default::default() }),
        disable_endpoint: String::new(),
    }
}

#[tokio::test]
async fn metrics_are_scraped_and_parsed_and_follow_what_happens() {
    let mut control = start().await;
    let addr = control.addr().to_string();

    let first = scrape(&addr);
    for (family, kind) in [
        ("hookrelay_control_agents_connected", "gauge"),
        ("hookrelay_control_config_version", "gauge"),
        ("hookrelay_control_deliveries_stored", "gauge"),
        ("hookrelay_control_reports_ingested", "counter"),
    ] {
        assert_eq!(first.types.get(family).map(String::as_str), Some(kind), "{family}");
    }
    assert_eq!(first.value("hookrelay_control_agents_connected"), 0.0);
    assert_eq!(first.value("hookrelay_control_config_version"), 0.0);
    assert_eq!(first.value("hookrelay_control_deliveries_stored"), 0.0);
    assert_eq!(first.value(r#"hookrelay_control_reports_ingested_total{result="stored"}"#), 0.0);

    let channel = connect(control.addr()).await;
    let mut admin = AdminServiceClient::new(channel.clone());
    admin.create_owner(pb::CreateOwnerRequest { id: "acme".into(), name: "Acme".into() }).await.unwrap();

    // An agent's Watch stream counts as connected while it is open.
    let (requests, outgoing) = tokio::sync::mpsc::channel(4);
    let hello = pb::AgentHello { node_name: "node-1".into(), agent_version: "test".into(), applied_version: 0 };
    requests.send(pb::WatchRequest { kind: Some(pb::watch_request::Kind::Hello(hello)) }).await.unwrap();
    let mut agent = AgentServiceClient::new(channel.clone());
    let mut watch = agent.watch(tokio_stream::wrappers::ReceiverStream::new(outgoing)).await.unwrap().into_inner();
    watch.message().await.unwrap().expect("a snapshot");
    let delivery_id = DeliveryId::generate().to_string();
    let report_id = ReportId::generate().to_string();
    let batch =
        || pb::ReportAttemptsRequest { node_name: "node-1".into(), reports: vec![report(&report_id, &delivery_id)] };
    agent.report_attempts(batch()).await.unwrap();
    agent.report_attempts(batch()).await.unwrap();

    let scraped = scrape_until(&addr, "the agent to count as connected", |scraped| {
        scraped.value("hookrelay_control_agents_connected") == 1.0
    })
    .await;
    assert_eq!(scraped.value("hookrelay_control_config_version"), 1.0);
    assert_eq!(scraped.value(r#"hookrelay_control_reports_ingested_total{result="stored"}"#), 1.0);
    assert_eq!(scraped.value(r#"hookrelay_control_reports_ingested_total{result="duplicate"}"#), 1.0);
    assert_eq!(scraped.value("hookrelay_control_deliveries_stored"), 1.0);

    drop(requests);
    drop(watch);
    scrape_until(&addr, "the agent to count as gone", |scraped| {
        scraped.value("hookrelay_control_agents_connected") == 0.0
    })
    .await;

    let status = control.terminate().await;
    assert!(status.success(), "{status}");
    let stderr = control.stderr_of_last_start();
    // HOOKRELAY_LOG_FORMAT=json: every line on stderr is one JSON object with a level and a message.
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.iter().any(|line| line.contains("hookrelay-control started")), "{stderr}");
    for line in lines {
        let object: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(object["level"].is_string() && object["message"].is_string(), "{line}");
    }
}

#[tokio::test]
async fn health_and_reflection_answer_real_clients() {
    let mut control = start().await;
    let channel = connect(control.addr()).await;

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "hookrelay.v1.AdminService", "hookrelay.v1.AgentService"] {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .unwrap_or_else(|status| panic!("health of {service:?}: {status}"));
        assert_eq!(answer.into_inner().status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health.check(tonic_health::pb::HealthCheckRequest { service: "no.Such".into() }).await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);

    let expected = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "hookrelay.v1.AdminService",
        "hookrelay.v1.AgentService",
    ];
    let names = list_services(channel.clone()).await;
    for name in expected {
        assert!(names.contains(name), "{name} not in {names:?}");
    }

    // Clients that only know v1alpha (older grpcurl) can look up a symbol's file too.
    let mut alpha = reflection_alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = reflection_alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(reflection_alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "hookrelay.v1.AdminService".into(),
        )),
    };
    let mut answers = alpha.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    let Some(reflection_alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        answer.message_response
    else {
        panic!("not a file descriptor answer: {answer:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());

    let status = control.terminate().await;
    assert!(status.success(), "{status}");
}

#[test]
fn print_config_shows_flags_and_env_and_redacts_the_master_key() {
    let key = hookrelay_common::sealed::MasterKey::generate().expose_base64();
    let output = Command::new(BIN)
        .args(["--print-config", "--max-endpoints-per-owner", "7", "--data-dir", "/nonexistent/data"])
        .env("HOOKRELAY_MASTER_KEY", &key)
        .env("HOOKRELAY_ALLOWED_CIDRS", "10.0.0.0/8")
        .env("HOOKRELAY_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(!text.contains(&key), "{text}");
    let printed: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(printed["max_endpoints_per_owner"], 7);
    assert_eq!(printed["data_dir"], "/nonexistent/data");
    assert_eq!(printed["allowed_cidrs"], serde_json::json!(["10.0.0.0/8"]));
    assert_eq!(printed["log_format"], "json");
    assert_eq!(printed["master_key"]["key"], "[redacted]");
    assert!(!Path::new("/nonexistent/data").exists(), "printing the config opens nothing");
}
