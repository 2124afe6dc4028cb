//! The agent's credentials, both ways: towards control (the agent token as a bearer, TLS with a custom CA, a client
//! certificate for mTLS), checked against a fake control that records what each Watch call carried; and towards
//! emitters (`--emit-token-file`) on HTTP and gRPC. Certificates are made at test time (rcgen).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookrelay_agent::Config;
use hookrelay_agent::control_client::channel::ControlCredentials;
use hookrelay_common::proto::v1 as pb;
use hookrelay_tests::api::post_events_with_headers;
use hookrelay_tests::certs::{Ca, Usage};
use hookrelay_tests::{DEADLINE, InProcess, eventually, write_file};
use pb::agent_service_server::{AgentService, AgentServiceServer};
use tokio_stream::Stream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// What one Watch call carried.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    authorization: Option<String>,
    client_cert: bool,
}

/// A control that records each Watch call and refuses it (the agent then retries with backoff).
#[derive(Clone, Default)]
struct FakeControl {
    seen: Arc<Mutex<Vec<Seen>>>,
}

#[tonic::async_trait]
impl AgentService for FakeControl {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, tonic::Status>> + Send>>;

    async fn watch(
        &self,
        request: tonic::Request<tonic::Streaming<pb::WatchRequest>>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let authorization = request.metadata().get("authorization").map(|value| value.to_str().unwrap().to_owned());
        let client_cert = request.peer_certs().is_some_and(|certs| !certs.is_empty());
        self.seen.lock().unwrap().push(Seen { authorization, client_cert });
        Err(tonic::Status::unavailable("fake control"))
    }

    async fn report_attempts(
        &self,
        _request: tonic::Request<pb::ReportAttemptsRequest>,
    ) -> Result<tonic::Response<pb::ReportAttemptsResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::ReportAttemptsResponse::default()))
    }
}

/// Starts the fake control (TLS when `tls` is given); returns it, its URL and its record of calls.
async fn fake_control(tls: Option<ServerTlsConfig>) -> (InProcess, String, Arc<Mutex<Vec<Seen>>>) {
    let fake = FakeControl::default();
    let seen = fake.seen.clone();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls).unwrap();
    }
    let control = InProcess::start(|_, listener, shutdown| async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        Ok(server.add_service(AgentServiceServer::new(fake)).serve_with_incoming_shutdown(incoming, shutdown).await?)
    })
    .await;
    let url = format!("{scheme}://127.0.0.1:{}", control.addr().port());
    (control, url, seen)
}

/// Runs an agent named `node-a` against `control_url` in-process, its data in its own directory.
async fn agent(control_url: &str, configure: impl FnOnce(&mut Config)) -> InProcess {
    InProcess::start(|dir, listener, shutdown| {
        let mut config = Config::new(control_url, dir.join("agent"), "node-a");
        configure(&mut config);
        hookrelay_agent::run(config, listener, shutdown)
    })
    .await
}

async fn first_watch(seen: &Arc<Mutex<Vec<Seen>>>) -> Seen {
    eventually("the agent calls Watch", DEADLINE, async || {
        seen.lock().unwrap().first().cloned().ok_or_else(|| "no Watch call yet".to_owned())
    })
    .await
}

#[tokio::test]
async fn the_agent_token_goes_with_every_watch() {
    let dir = tempfile::tempdir().unwrap();
    let (_control, url, seen) = fake_control(None).await;
    let token = write_file(dir.path(), "agent-token", "\nagent-token-0123456789\n");
    let _agent = agent(&url, |config| {
        config.control_credentials.token_file = Some(token);
    })
    .await;
    let first = first_watch(&seen).await;
    assert_eq!(first.authorization.as_deref(), Some("Bearer agent-token-0123456789"));
}

#[tokio::test]
async fn tls_to_control_with_a_custom_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("control CA");
    let client_ca = Ca::new("agents CA");
    let (server_cert, server_key) = server_ca.leaf("control", Usage::Server);
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(server_cert, server_key))
        .client_ca_root(Certificate::from_pem(client_ca.pem()));
    let (_control, url, seen) = fake_control(Some(tls)).await;
    let (client_cert, client_key) = client_ca.leaf("node-a", Usage::Client);
    let credentials = ControlCredentials {
        token_file: None,
        ca: Some(write_file(dir.path(), "control-ca.pem", &server_ca.pem())),
        client_cert: Some(write_file(dir.path(), "client.pem", &client_cert)),
        client_key: Some(write_file(dir.path(), "client.key", &client_key)),
    };
    let _agent = agent(&url, |config| config.control_credentials = credentials).await;
    let first = first_watch(&seen).await;
    assert_eq!(first, Seen { authorization: None, client_cert: true });
}

#[tokio::test]
async fn an_untrusted_control_certificate_gets_no_calls() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("control CA");
    let (server_cert, server_key) = server_ca.leaf("control", Usage::Server);
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(server_cert, server_key));
    let (_control, url, seen) = fake_control(Some(tls)).await;
    let token = write_file(dir.path(), "agent-token", "agent-token-0123456789\n");
    let other_ca = write_file(dir.path(), "other-ca.pem", &Ca::new("another CA").pem());
    let _agent = agent(&url, |config| {
        config.control_credentials.ca = Some(other_ca);
        config.control_credentials.token_file = Some(token);
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(seen.lock().unwrap().is_empty(), "the token never reaches a control the agent does not trust");
}

/// `POST /v1/events` to `agent` with an `authorization` header when given; the status code and body.
async fn post(agent: &InProcess, authorization: Option<&str>) -> (u16, String) {
    let body = r#"{"owner":"acme","type":"payment.settled","payload":{}}"#;
    let headers: Vec<_> = authorization.map(|value| ("authorization", value)).into_iter().collect();
    let answer = post_events_with_headers(agent.addr(), &headers, body).await;
    (answer.status, String::from_utf8_lossy(&answer.body).into_owned())
}

#[tokio::test]
async fn the_emit_token_guards_http_and_grpc_emit() {
    let dir = tempfile::tempdir().unwrap();
    let emit_token = write_file(dir.path(), "emit-token", "emit-token-0123456789\n");
    // Control is unreachable: an admitted emit answers 503 / UNAVAILABLE (no config yet), a refused one 401.
    let agent = agent("http://127.0.0.1:9", |config| {
        config.emit_token_file = Some(emit_token);
    })
    .await;

    let (status, body) = post(&agent, None).await;
    assert_eq!(status, 401, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert!(body["error"]["message"].as_str().unwrap().contains("Bearer"), "{body}");
    assert_eq!(post(&agent, Some("Bearer emit-token-wrong-wrong")).await.0, 401);
    assert_eq!(post(&agent, Some("Basic ZW1pdDplbWl0")).await.0, 401);
    assert_eq!(post(&agent, Some("Bearer emit-token-0123456789")).await.0, 503);

    let mut client = pb::emit_service_client::EmitServiceClient::connect(agent.url()).await.unwrap();
    let request = || pb::EmitRequest {
        owner: "acme".into(),
        r#type: "payment.settled".into(),
        payload: b"{}".to_vec(),
        ..Default::default()
    };
    let refused = client.emit(request()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let mut with_token = tonic::Request::new(request());
    with_token.metadata_mut().insert("authorization", "Bearer emit-token-0123456789".parse().unwrap());
    assert_eq!(client.emit(with_token).await.unwrap_err().code(), tonic::Code::Unavailable);
}
