//! Access to control's listener, tried the way an attacker would: missing, malformed, unknown and wrong-scope
//! tokens; TLS with a trusted and an untrusted CA; agents with and without client certificates; certificate
//! rotation by replacing the files; plaintext on a public address. Certificates are made at test time (rcgen).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hookrelay_common::proto::v1 as pb;
use hookrelay_control::Config;
use hookrelay_control::listener::TlsFiles;
use hookrelay_tests::certs::{Ca, Usage};
use hookrelay_tests::{InProcess, assert_eventually, write_file};
use pb::admin_service_client::AdminServiceClient;
use pb::agent_service_client::AgentServiceClient;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use support::start_control;

const ADMIN: &str = "admin-5c1f0e2b9a7d4c38";
const READ: &str = "read-0e9d8c7b6a594837";
const AGENT: &str = "agent-77aa66bb55cc44dd";

/// A plaintext channel to `control`.
async fn plain(control: &InProcess) -> Channel {
    Endpoint::from_shared(control.url()).unwrap().connect().await.unwrap()
}

/// A TLS channel to `control`, which it knows as `localhost`.
async fn tls(control: &InProcess, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("https://{}", control.addr()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls.domain_name("localhost"))
        .unwrap()
        .connect()
        .await
}

fn tokens_file(dir: &Path) -> PathBuf {
    write_file(dir, "tokens", &format!("# test tokens\nadmin:{ADMIN}\nread:{READ}\nagent:{AGENT}\n"))
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {token}")).unwrap());
    }
    request
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn create_owner(channel: &Channel, id: &str, token: Option<&str>) -> Result<pb::Owner, tonic::Status> {
    let request = pb::CreateOwnerRequest { id: id.into(), name: id.into() };
    AdminServiceClient::new(channel.clone()).create_owner(with_token(request, token)).await.map(|r| r.into_inner())
}

async fn list_owners(channel: &Channel, token: Option<&str>) -> Result<pb::ListOwnersResponse, tonic::Status> {
    let request = pb::ListOwnersRequest::default();
    AdminServiceClient::new(channel.clone()).list_owners(with_token(request, token)).await.map(|r| r.into_inner())
}

async fn report(channel: &Channel, token: Option<&str>) -> Result<pb::ReportAttemptsResponse, tonic::Status> {
    let request = pb::ReportAttemptsRequest { node_name: "node-a".into(), reports: Vec::new() };
    AgentServiceClient::new(channel.clone()).report_attempts(with_token(request, token)).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn tokens_and_scopes_decide_every_call() {
    let control = start_control(|dir, config| config.tokens_file = Some(tokens_file(dir))).await;
    let channel = plain(&control).await;

    // Missing, malformed and unknown credentials: UNAUTHENTICATED, saying what is expected.
    let missing = create_owner(&channel, "acme", None).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(missing.message().starts_with("missing credentials"), "{}", missing.message());
    assert!(missing.message().contains("scope admin"), "{}", missing.message());
    let wrong = create_owner(&channel, "acme", Some("admin-5c1f0e2b9a7d4c39")).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert!(wrong.message().contains("not valid"), "{}", wrong.message());
    assert!(!wrong.message().contains("5c1f"), "the presented token is not echoed: {}", wrong.message());
    let mut basic = tonic::Request::new(pb::ListOwnersRequest::default());
    basic.metadata_mut().insert("authorization", MetadataValue::from_static("Basic YWRtaW46YWRtaW4="));
    let basic = AdminServiceClient::new(channel.clone()).list_owners(basic).await.unwrap_err();
    assert_eq!(basic.code(), Code::Unauthenticated);
    assert!(basic.message().contains("`Bearer <token>`"), "{}", basic.message());
    // A prefix of a real token is no token.
    assert_eq!(code(list_owners(&channel, Some(&READ[..READ.len() - 1])).await), Code::Unauthenticated);

    // Valid tokens of the wrong scope: PERMISSION_DENIED naming the method and the scope it needs.
    let denied = create_owner(&channel, "acme", Some(READ)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(
        denied.message(),
        "the bearer token has scope read but hookrelay.v1.AdminService/CreateOwner needs scope admin"
    );
    assert_eq!(code(create_owner(&channel, "acme", Some(AGENT)).await), Code::PermissionDenied);
    assert_eq!(code(list_owners(&channel, Some(AGENT)).await), Code::PermissionDenied);
    let denied = report(&channel, Some(ADMIN)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("needs scope agent"), "{}", denied.message());
    assert_eq!(code(report(&channel, Some(READ)).await), Code::PermissionDenied);
    let missing = report(&channel, None).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(missing.message().contains("agent token"), "{}", missing.message());

    // Nothing was created by the refused calls; the right scopes go through.
    assert!(list_owners(&channel, Some(READ)).await.unwrap().owners.is_empty());
    create_owner(&channel, "acme", Some(ADMIN)).await.unwrap();
    assert_eq!(list_owners(&channel, Some(READ)).await.unwrap().owners.len(), 1);
    assert_eq!(list_owners(&channel, Some(ADMIN)).await.unwrap().owners.len(), 1);
    report(&channel, Some(AGENT)).await.unwrap();
    // The Watch stream is refused before it starts.
    let (_tx, rx) = tokio::sync::mpsc::channel::<pb::WatchRequest>(1);
    let watch = AgentServiceClient::new(channel.clone()).watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    assert_eq!(code(watch), Code::Unauthenticated);
    control.stop().await;
}

#[tokio::test]
async fn the_token_file_is_reloaded_when_it_changes() {
    let control = start_control(|dir, config| {
        config.tokens_file = Some(tokens_file(dir));
        config.reload_interval = Duration::from_millis(50);
    })
    .await;
    let channel = plain(&control).await;
    list_owners(&channel, Some(READ)).await.unwrap();
    // Revoke the read token; an invalid file later does not bring it back, nor lock everyone out.
    write_file(control.dir(), "tokens.new", &format!("admin:{ADMIN}\n"));
    std::fs::rename(control.dir().join("tokens.new"), control.dir().join("tokens")).unwrap();
    assert_eventually!(code(list_owners(&channel, Some(READ)).await) == Code::Unauthenticated, "the read token works");
    write_file(control.dir(), "tokens.new", "garbage\n");
    std::fs::rename(control.dir().join("tokens.new"), control.dir().join("tokens")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(code(list_owners(&channel, Some(READ)).await), Code::Unauthenticated);
    list_owners(&channel, Some(ADMIN)).await.unwrap();
    control.stop().await;
}

fn tls_files(dir: &Path, ca: &Ca, client_ca: Option<&Ca>) -> TlsFiles {
    let (cert, key) = ca.leaf("control", Usage::Server);
    TlsFiles {
        cert: write_file(dir, "tls.crt", &cert),
        key: write_file(dir, "tls.key", &key),
        client_ca: client_ca.map(|client_ca| write_file(dir, "client-ca.crt", &client_ca.pem())),
    }
}

#[tokio::test]
async fn tls_handshakes_with_a_trusted_ca_only() {
    let ca = Ca::new("hookrelay test CA");
    let control = start_control(|dir, config| {
        config.tls = Some(tls_files(dir, &ca, None));
        config.tokens_file = Some(tokens_file(dir));
    })
    .await;

    let trusted = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem()));
    let channel = tls(&control, trusted).await.expect("a client trusting the CA connects");
    create_owner(&channel, "acme", Some(ADMIN)).await.unwrap();
    assert_eq!(code(create_owner(&channel, "other", None).await), Code::Unauthenticated);

    let stranger = Ca::new("someone else's CA");
    let untrusted = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(stranger.pem()));
    // tonic reports some handshake failures at connect time and others on the first call.
    match tls(&control, untrusted).await {
        Err(_) => {}
        Ok(channel) => assert_eq!(code(list_owners(&channel, Some(READ)).await), Code::Unavailable),
    }
    // A plaintext client gets no gRPC answer from a TLS listener.
    let plain = Endpoint::from_shared(format!("http://{}", control.addr())).unwrap().connect().await;
    if let Ok(plain) = plain {
        assert_ne!(code(list_owners(&plain, Some(READ)).await), Code::Ok);
    }
    control.stop().await;
}

/// Control serving a certificate of `ca`, taking client certificates of `agents`, with the test tokens.
async fn mtls_control(ca: &Ca, agents: &Ca) -> InProcess {
    start_control(|dir, config| {
        config.tls = Some(tls_files(dir, ca, Some(agents)));
        config.tokens_file = Some(tokens_file(dir));
    })
    .await
}

#[tokio::test]
async fn agents_need_a_client_certificate_or_the_agent_token() {
    let ca = Ca::new("server CA");
    let agents = Ca::new("agents CA");
    let control = mtls_control(&ca, &agents).await;
    let trust = || ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem()));

    // A certificate signed by the client CA: AgentService without a token, but no admin calls.
    let (cert, key) = agents.leaf("node-a", Usage::Client);
    let with_cert = tls(&control, trust().identity(Identity::from_pem(cert, key))).await.unwrap();
    report(&with_cert, None).await.unwrap();
    let admin = list_owners(&with_cert, None).await.unwrap_err();
    assert_eq!(admin.code(), Code::Unauthenticated);

    // No certificate and no token: refused on AgentService, with a message naming both ways in.
    let without = tls(&control, trust()).await.unwrap();
    let refused = report(&without, None).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("client certificate"), "{}", refused.message());
    report(&without, Some(AGENT)).await.unwrap();
    list_owners(&without, Some(READ)).await.unwrap();

    // A certificate from another CA does not get through the handshake.
    let (cert, key) = ca.leaf("impostor", Usage::Client);
    // (With TLS 1.3 the client learns of the refusal only on its first call, as a broken connection.)
    match tls(&control, trust().identity(Identity::from_pem(cert, key))).await {
        Err(_) => {}
        Ok(channel) => {
            let broken = code(report(&channel, None).await);
            assert!(matches!(broken, Code::Unavailable | Code::Unknown), "{broken:?}");
        }
    }
    control.stop().await;
}

/// The certificate (DER) the server at `addr` presents, read with a client that trusts `ca`.
async fn served_certificate(addr: std::net::SocketAddr, ca: &Ca) -> Option<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca.der())).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.ok()?;
    let certs = tls.get_ref().1.peer_certificates()?;
    Some(certs[0].to_vec())
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

#[tokio::test]
async fn certificates_reload_when_the_files_change() {
    let ca = Ca::new("rotating CA");
    let (first_cert, first_key) = ca.leaf("control-1", Usage::Server);
    let control = start_control(|dir, config| {
        config.tls = Some(TlsFiles {
            cert: write_file(dir, "tls.crt", &first_cert),
            key: write_file(dir, "tls.key", &first_key),
            client_ca: None,
        });
        config.reload_interval = Duration::from_millis(50);
    })
    .await;
    assert_eventually!(served_certificate(control.addr(), &ca).await == Some(der_of(&first_cert)), "not served yet");

    // A half-done rotation (new certificate, old key) keeps the old certificate in service.
    let (second_cert, second_key) = ca.leaf("control-2", Usage::Server);
    write_file(control.dir(), "tls.crt", &second_cert);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served_certificate(control.addr(), &ca).await, Some(der_of(&first_cert)));

    // Once the key follows, new connections get the new certificate.
    write_file(control.dir(), "tls.key", &second_key);
    assert_eventually!(served_certificate(control.addr(), &ca).await == Some(der_of(&second_cert)), "not served yet");
    let trusted = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem()));
    list_owners(&tls(&control, trusted).await.unwrap(), None).await.unwrap();
    control.stop().await;
}

#[tokio::test]
async fn plaintext_is_refused_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let result = hookrelay_control::run(Config::new(dir.path()), listener, std::future::pending()).await;
    let error = format!("{:#}", result.unwrap_err());
    assert!(error.contains("refusing to serve plaintext gRPC"), "{error}");
    assert!(error.contains("--tls-cert"), "{error}");
}

#[test]
fn the_binary_refuses_plaintext_off_loopback_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay-control"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("HOOKRELAY_TLS_CERT")
        .env_remove("HOOKRELAY_TLS_KEY")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "nothing claims to listen");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("loopback only"), "{stderr}");
}

#[test]
fn the_binary_refuses_a_broken_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_file(dir.path(), "tokens", "admin:short\n");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookrelay-control"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--tokens-file")
        .arg(&tokens)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 1: the token is shorter than 16 characters"), "{stderr}");
}

#[tokio::test]
async fn expired_certificates_are_refused_both_ways() {
    // An agent presenting an expired client certificate gets no AgentService call through.
    let ca = Ca::new("server CA");
    let agents = Ca::new("agents CA");
    let control = mtls_control(&ca, &agents).await;
    let (cert, key) = agents.expired_leaf("node-old", Usage::Client);
    let trust = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem()));
    match tls(&control, trust.identity(Identity::from_pem(cert, key))).await {
        Err(_) => {}
        Ok(channel) => {
            let broken = code(report(&channel, None).await);
            assert!(matches!(broken, Code::Unavailable | Code::Unknown), "{broken:?}");
        }
    }
    control.stop().await;

    // A control serving an expired certificate is not trusted by clients.
    let control = start_control(|dir, config| {
        let (cert, key) = ca.expired_leaf("control-old", Usage::Server);
        config.tls = Some(TlsFiles {
            cert: write_file(dir, "tls.crt", &cert),
            key: write_file(dir, "tls.key", &key),
            client_ca: None,
        });
        config.tokens_file = Some(tokens_file(dir));
    })
    .await;
    let trust = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem()));
    match tls(&control, trust).await {
        Err(_) => {}
        Ok(channel) => assert_eq!(code(list_owners(&channel, Some(READ)).await), Code::Unavailable),
    }
    assert_eq!(served_certificate(control.addr(), &ca).await, None);
    control.stop().await;
}

#[tokio::test]
async fn health_and_metrics_stay_open_without_a_token() {
    let control = start_control(|dir, config| config.tokens_file = Some(tokens_file(dir))).await;
    let channel = plain(&control).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    let response = control.metrics().await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    control.stop().await;
}
