//! The agent's credentials, both ways: towards control (the agent token as a bearer, TLS with a custom CA, a client
//! certificate for mTLS), checked against a fake control that records what each Watch call carried; and towards
//! emitters (`--emit-token-file`) on HTTP and gRPC. Certificates are made at test time (rcgen).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookrelay_agent::Config;
use hookrelay_agent::control_client::channel::ControlCredentials;
use hookrelay_common::proto::v1 as pb;
use pb::agent_service_server::{AgentService, AgentServiceServer};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tokio::sync::oneshot;
use tokio_stream::Stream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Self { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    fn leaf(&self, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

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

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the fake control (TLS when `tls` is given) and returns its URL and its record of calls.
async fn fake_control(tls: Option<ServerTlsConfig>) -> (String, Arc<Mutex<Vec<Seen>>>, oneshot::Sender<()>) {
    let fake = FakeControl::default();
    let seen = fake.seen.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls).unwrap();
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(server.add_service(AgentServiceServer::new(fake)).serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    }));
    (format!("{scheme}://127.0.0.1:{}", addr.port()), seen, stop)
}

/// Runs an agent against `control_url` until the returned sender fires.
async fn agent(dir: &Path, control_url: &str, configure: impl FnOnce(&mut Config)) -> (String, oneshot::Sender<()>) {
    let mut config = Config::new(control_url, dir.join("agent"), "node-a");
    configure(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(hookrelay_agent::run(config, listener, async move {
        let _ = stopped.await;
    }));
    (url, stop)
}

async fn first_watch(seen: &Arc<Mutex<Vec<Seen>>>) -> Seen {
    for _ in 0..200 {
        if let Some(first) = seen.lock().unwrap().first().cloned() {
            return first;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the agent never called Watch");
}

#[tokio::test]
async fn the_agent_token_goes_with_every_watch() {
    let dir = tempfile::tempdir().unwrap();
    let (url, seen, _control) = fake_control(None).await;
    let token = write(dir.path(), "agent-token", "\nagent-token-0123456789\n");
    let (_emit, _agent) = agent(dir.path(), &url, |config| {
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
    let (server_cert, server_key) = server_ca.leaf(ExtendedKeyUsagePurpose::ServerAuth);
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(server_cert, server_key))
        .client_ca_root(Certificate::from_pem(client_ca.issuer.pem()));
    let (url, seen, _control) = fake_control(Some(tls)).await;
    let (client_cert, client_key) = client_ca.leaf(ExtendedKeyUsagePurpose::ClientAuth);
    let credentials = ControlCredentials {
        token_file: None,
        ca: Some(write(dir.path(), "control-ca.pem", &server_ca.issuer.pem())),
        client_cert: Some(write(dir.path(), "client.pem", &client_cert)),
        client_key: Some(write(dir.path(), "client.key", &client_key)),
    };
    let (_emit, _agent) = agent(dir.path(), &url, |config| config.control_credentials = credentials).await;
    let first = first_watch(&seen).await;
    assert_eq!(first, Seen { authorization: None, client_cert: true });
}

#[tokio::test]
async fn an_untrusted_control_certificate_gets_no_calls() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("control CA");
    let (server_cert, server_key) = server_ca.leaf(ExtendedKeyUsagePurpose::ServerAuth);
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(server_cert, server_key));
    let (url, seen, _control) = fake_control(Some(tls)).await;
    let token = write(dir.path(), "agent-token", "agent-token-0123456789\n");
    let other_ca = write(dir.path(), "other-ca.pem", &Ca::new("another CA").issuer.pem());
    let (_emit, _agent) = agent(dir.path(), &url, |config| {
        config.control_credentials.ca = Some(other_ca);
        config.control_credentials.token_file = Some(token);
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(seen.lock().unwrap().is_empty(), "the token never reaches a control the agent does not trust");
}

/// Sends a raw HTTP/1.1 POST and returns the status code and body.
async fn post(addr: &str, authorization: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = r#"{"owner":"acme","type":"payment.settled","payload":{}}"#;
    let auth = authorization.map(|value| format!("authorization: {value}\r\n")).unwrap_or_default();
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[tokio::test]
async fn the_emit_token_guards_http_and_grpc_emit() {
    let dir = tempfile::tempdir().unwrap();
    let emit_token = write(dir.path(), "emit-token", "emit-token-0123456789\n");
    // Control is unreachable: an admitted emit answers 503 / UNAVAILABLE (no config yet), a refused one 401.
    let (addr, _agent) = agent(dir.path(), "http://127.0.0.1:9", |config| {
        config.emit_token_file = Some(emit_token);
    })
    .await;

    let (status, body) = post(&addr, None).await;
    assert_eq!(status, 401, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert!(body["error"]["message"].as_str().unwrap().contains("Bearer"), "{body}");
    assert_eq!(post(&addr, Some("Bearer emit-token-wrong-wrong")).await.0, 401);
    assert_eq!(post(&addr, Some("Basic ZW1pdDplbWl0")).await.0, 401);
    assert_eq!(post(&addr, Some("Bearer emit-token-0123456789")).await.0, 503);

    let mut client = pb::emit_service_client::EmitServiceClient::connect(format!("http://{addr}")).await.unwrap();
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
