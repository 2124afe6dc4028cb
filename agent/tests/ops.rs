//! Operations on the real `hookrelay-agent` binary, against a fake control in this test: `/metrics` scraped and
//! parsed while an event is emitted and delivered, gRPC health before and after config, server reflection listed
//! with a reflection client (what `grpcurl list` does), JSON logs.

use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hookrelay_common::proto::v1 as pb;
use hookrelay_common::signing::Secret;
use hookrelay_tests::api::{connect, post_events_raw};
use hookrelay_tests::metrics::{scrape, scrape_until};
use hookrelay_tests::reflection::list_services;
use hookrelay_tests::{Agent, AgentOpts, InProcess, Receiver, spawn_agent_with};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const BIN: &str = env!("CARGO_BIN_EXE_hookrelay-agent");
const CONFIG_VERSION: u64 = 7;

/// Control as far as the agent needs it: one snapshot on Watch, and every report stored.
struct FakeControl {
    snapshot: pb::ConfigSnapshot,
    reports: Arc<AtomicUsize>,
}

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for FakeControl {
    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<Streaming<pb::WatchRequest>>) -> Result<Response<WatchStream>, Status> {
        let mut inbound = request.into_inner();
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        let snapshot = pb::WatchResponse { kind: Some(pb::watch_response::Kind::Snapshot(self.snapshot.clone())) };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(snapshot)]).chain(tokio_stream::pending()))))
    }

    async fn report_attempts(
        &self,
        request: Request<pb::ReportAttemptsRequest>,
    ) -> Result<Response<pb::ReportAttemptsResponse>, Status> {
        let count = request.into_inner().reports.len();
        self.reports.fetch_add(count, Ordering::SeqCst);
        Ok(Response::new(pb::ReportAttemptsResponse { stored: count as u32, ..Default::default() }))
    }
}

/// Serves a fake control on loopback until dropped; returns it and the count of reports it received.
async fn fake_control(receiver_url: &str) -> (InProcess, Arc<AtomicUsize>) {
    let snapshot = pb::ConfigSnapshot {
        version: CONFIG_VERSION,
        owners: vec![pb::Owner { id: "acme".into(), ..Default::default() }],
        event_types: vec![pb::EventType { name: "a.b".into(), ..Default::default() }],
        endpoints: vec![pb::AgentEndpoint {
            endpoint: Some(pb::Endpoint {
                id: "ep_1".into(),
                owner_id: "acme".into(),
                url: receiver_url.to_owned(),
                filter_types: vec!["*".into()],
                enabled: true,
                insecure: true,
                ..Default::default()
            }),
            secrets: vec![Secret::generate().expose()],
        }],
    };
    let reports = Arc::new(AtomicUsize::new(0));
    let service = FakeControl { snapshot, reports: reports.clone() };
    let control = InProcess::start(|_, listener, shutdown| async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        Ok(tonic::transport::Server::builder()
            .add_service(pb::agent_service_server::AgentServiceServer::new(service))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?)
    })
    .await;
    (control, reports)
}

/// This crate's binary as an [`Agent`] named `node-1` of the control at `control_url`, with JSON logs.
async fn start(control_url: &str) -> Agent {
    spawn_agent_with(AgentOpts {
        node_name: Some("node-1".into()),
        extra_args: vec!["--log-format".into(), "json".into()],
        program: Some(BIN.into()),
        envs: vec![("RUST_LOG".into(), "info".into())],
        ..AgentOpts::new(control_url)
    })
    .await
}

/// SIGTERM, which it must exit well on; then what it wrote on stderr.
async fn terminate(agent: &mut Agent) -> String {
    let status = agent.terminate().await;
    assert!(status.success(), "exit status {status}");
    agent.stderr_of_last_start()
}

async fn emit_health(channel: &Channel, service: &str) -> ServingStatus {
    let mut health = HealthClient::new(channel.clone());
    let answer = health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap();
    answer.into_inner().status()
}

#[tokio::test]
async fn metrics_follow_an_emit_and_its_delivery() {
    let receiver = Receiver::start().await;
    let (control, reports) = fake_control(&receiver.url()).await;
    let mut agent = start(&control.url()).await;
    let addr = agent.addr().to_string();

    let first = scrape(&addr);
    for (family, kind) in [
        ("hookrelay_agent_queue_deliveries", "gauge"),
        ("hookrelay_agent_queue_bytes", "gauge"),
        ("hookrelay_agent_config_version", "gauge"),
        ("hookrelay_agent_report_backlog", "gauge"),
        ("hookrelay_agent_deliveries", "counter"),
        ("hookrelay_agent_emits_accepted", "counter"),
        ("hookrelay_agent_emits_rejected", "counter"),
        ("hookrelay_agent_attempt_duration_seconds", "histogram"),
        ("hookrelay_agent_emit_duration_seconds", "histogram"),
    ] {
        assert_eq!(first.types.get(family).map(String::as_str), Some(kind), "{family}");
    }
    scrape_until(&addr, "the config from control", |scraped| {
        scraped.value("hookrelay_agent_config_version") == CONFIG_VERSION as f64
    })
    .await;

    let answer = post_events_raw(agent.addr(), r#"{"owner":"acme","type":"a.b","payload":{"n":1}}"#).await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    let answer = post_events_raw(agent.addr(), r#"{"owner":"nobody","type":"a.b","payload":{}}"#).await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);

    // The outcome is counted when the attempt ends, before the queue records it: wait for the queue too.
    let scraped = scrape_until(&addr, "the delivery, its record and its report", |scraped| {
        scraped.value(r#"hookrelay_agent_deliveries_total{outcome="succeeded"}"#) == 1.0
            && scraped.value("hookrelay_agent_queue_deliveries") == 0.0
            && scraped.value("hookrelay_agent_report_backlog") == 0.0
    })
    .await;
    assert_eq!(scraped.value("hookrelay_agent_emits_accepted_total"), 1.0);
    assert_eq!(scraped.value(r#"hookrelay_agent_emits_rejected_total{reason="invalid"}"#), 1.0);
    assert_eq!(scraped.value(r#"hookrelay_agent_emits_rejected_total{reason="unavailable"}"#), 0.0);
    assert_eq!(scraped.value(r#"hookrelay_agent_deliveries_total{outcome="retry"}"#), 0.0);
    assert_eq!(scraped.value("hookrelay_agent_attempt_duration_seconds_count"), 1.0);
    assert_eq!(scraped.value(r#"hookrelay_agent_attempt_duration_seconds_bucket{le="+Inf"}"#), 1.0);
    assert!(scraped.value("hookrelay_agent_attempt_duration_seconds_sum") > 0.0);
    assert_eq!(scraped.value("hookrelay_agent_emit_duration_seconds_count"), 2.0);
    assert_eq!(scraped.value("hookrelay_agent_queue_deliveries"), 0.0);
    assert!(scraped.value("hookrelay_agent_queue_bytes") > 0.0);
    assert!(reports.load(Ordering::SeqCst) >= 1);

    let stderr = terminate(&mut agent).await;
    // --log-format json: every line is one JSON object; the attempt's line carries its ids, status and duration.
    let mut attempt_logged = false;
    for line in stderr.lines() {
        let object: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if object["message"] == "delivery attempt" {
            assert_eq!(object["endpoint_id"], "ep_1", "{line}");
            assert_eq!(object["status"], 200, "{line}");
            assert!(object["delivery_id"].is_string() && object["duration_ms"].is_u64(), "{line}");
            attempt_logged = true;
        }
    }
    assert!(attempt_logged, "{stderr}");
}

#[tokio::test]
async fn health_says_when_emit_is_ready_and_reflection_lists_the_services() {
    // Nothing listens on port 9 of loopback: no config arrives, so emit is not ready.
    let mut agent = start("http://127.0.0.1:9").await;
    let channel = connect(agent.addr()).await;
    assert_eq!(emit_health(&channel, "").await, ServingStatus::Serving);
    assert_eq!(emit_health(&channel, "hookrelay.v1.EmitService").await, ServingStatus::NotServing);

    let names = list_services(channel.clone()).await;
    for name in ["hookrelay.v1.EmitService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"] {
        assert!(names.contains(name), "{name} not in {names:?}");
    }
    terminate(&mut agent).await;

    // With a config from control, emit turns SERVING.
    let (control, _) = fake_control("http://127.0.0.1:9/hook").await;
    let mut agent = start(&control.url()).await;
    let channel = connect(agent.addr()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while emit_health(&channel, "hookrelay.v1.EmitService").await != ServingStatus::Serving {
        assert!(Instant::now() < deadline, "emit never turned SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    terminate(&mut agent).await;
}

#[test]
fn print_config_shows_flags_and_env() {
    let output = Command::new(BIN)
        .args(["--print-config", "--node-name", "node-7", "--max-queue-mib", "10"])
        .env("HOOKRELAY_CONTROL_URL", "http://agent:hunter2@control:7100")
        .env("HOOKRELAY_ALLOWED_CIDRS", "10.0.0.0/8,127.0.0.0/8")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(!text.contains("hunter2"), "{text}");
    let printed: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(printed["node_name"], "node-7");
    assert_eq!(printed["max_queue_bytes"], 10 * 1024 * 1024);
    assert_eq!(printed["allowed_cidrs"], serde_json::json!(["10.0.0.0/8", "127.0.0.0/8"]));
    assert_eq!(printed["log_format"], "pretty");
}
