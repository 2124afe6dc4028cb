//! Operations on the real `hookrelay-agent` binary, against a fake control in this test: `/metrics` scraped and
//! parsed while an event is emitted and delivered, gRPC health before and after config, server reflection listed
//! with a reflection client (what `grpcurl list` does), JSON logs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookrelay_common::proto::v1 as pb;
use hookrelay_common::signing::Secret;
use hookrelay_tests::metrics::{scrape, scrape_until};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1 as reflection;

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

/// Serves a fake control on loopback; returns its URL and the count of reports it received.
async fn fake_control(receiver_url: &str) -> (String, Arc<AtomicUsize>) {
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::agent_service_server::AgentServiceServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (url, reports)
}

/// A receiver that answers 200 to every delivery; returns its URL.
async fn receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A running agent with JSON logs; its stderr is collected as it comes. Killed if the test ends first.
struct Agent {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Agent {
    fn start(control_url: &str, data_dir: &std::path::Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--node-name", "node-1", "--allowed-cidrs", "127.0.0.0/8"])
            .args(["--log-format", "json", "--control-url", control_url, "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let collected = stderr.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(&mut pipe);
            let mut line = String::new();
            while lines.read_line(&mut line).is_ok_and(|read| read > 0) {
                collected.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("hookrelay-agent listening on ").expect(&line).to_owned();
        Self { child, addr, stderr }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap()
    }

    async fn terminate(mut self) -> String {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                break;
            }
            assert!(Instant::now() < deadline, "agent did not stop after SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The reader thread sees EOF once the process is gone.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// One HTTP/1.1 request; the status and body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

async fn emit_health(channel: &Channel, service: &str) -> ServingStatus {
    let mut health = HealthClient::new(channel.clone());
    let answer = health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap();
    answer.into_inner().status()
}

#[tokio::test]
async fn metrics_follow_an_emit_and_its_delivery() {
    let receiver_url = receiver().await;
    let (control_url, reports) = fake_control(&receiver_url).await;
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::start(&control_url, data.path());

    let first = scrape(&agent.addr);
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
    scrape_until(&agent.addr, "the config from control", |scraped| {
        scraped.value("hookrelay_agent_config_version") == CONFIG_VERSION as f64
    })
    .await;

    let (status, _, body) =
        http(&agent.addr, "POST", "/v1/events", r#"{"owner":"acme","type":"a.b","payload":{"n":1}}"#);
    assert_eq!(status, 202, "{body}");
    let (status, _, body) = http(&agent.addr, "POST", "/v1/events", r#"{"owner":"nobody","type":"a.b","payload":{}}"#);
    assert_eq!(status, 400, "{body}");

    let scraped = scrape_until(&agent.addr, "the delivery and its report", |scraped| {
        scraped.value(r#"hookrelay_agent_deliveries_total{outcome="succeeded"}"#) == 1.0
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

    let stderr = agent.terminate().await;
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
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::start("http://127.0.0.1:9", data.path());
    let channel = agent.channel().await;
    assert_eq!(emit_health(&channel, "").await, ServingStatus::Serving);
    assert_eq!(emit_health(&channel, "hookrelay.v1.EmitService").await, ServingStatus::NotServing);

    let mut client = reflection::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = reflection::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(reflection::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut answers = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    let Some(reflection::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|service| service.name).collect();
    for name in ["hookrelay.v1.EmitService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"] {
        assert!(names.iter().any(|listed| listed == name), "{name} not in {names:?}");
    }
    drop(agent.terminate().await);

    // With a config from control, emit turns SERVING.
    let (control_url, _) = fake_control("http://127.0.0.1:9/hook").await;
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::start(&control_url, data.path());
    let channel = agent.channel().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while emit_health(&channel, "hookrelay.v1.EmitService").await != ServingStatus::Serving {
        assert!(Instant::now() < deadline, "emit never turned SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(agent.terminate().await);
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
