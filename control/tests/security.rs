//! The security rules of control, tried against an in-process control over real gRPC: the per-owner endpoint limit
//! under concurrent creates, secrets sealed under the master key (a wrong or missing key stops control), secret
//! rotation with its overlap, and the verification challenge with hostile receivers and the address policy.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use hookrelay_common::proto::v1 as pb;
use hookrelay_common::sealed::MasterKey;
use hookrelay_common::time::{from_timestamp, now_ms};
use hookrelay_control::{Config, DEV_MASTER_KEY_FILE, MasterKeySource};
use hookrelay_tests::InProcess;
use hookrelay_tests::challenge::{Answer, ChallengeReceiver as Receiver};
use pb::admin_service_client::AdminServiceClient;
use pb::watch_request::Kind as RequestKind;
use pb::watch_response::Kind as ResponseKind;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

use support::start_control;

/// Control on `data_dir`, which outlives it: these tests start control again on the same data.
async fn start_on(data_dir: &Path, configure: impl FnOnce(&mut Config)) -> InProcess {
    start_control(|_, config| {
        config.data_dir = data_dir.to_owned();
        configure(config);
    })
    .await
}

async fn seed(admin: &mut AdminServiceClient<Channel>) {
    admin.create_owner(pb::CreateOwnerRequest { id: "acme".into(), name: "Acme".into() }).await.unwrap();
    let request = pb::CreateEventTypeRequest { name: "payment.settled".into(), description: String::new() };
    admin.create_event_type(request).await.unwrap();
}

fn endpoint_request(url: &str) -> pb::CreateEndpointRequest {
    pb::CreateEndpointRequest {
        owner_id: "acme".into(),
        url: url.into(),
        filter_types: vec!["*".into()],
        insecure: url.starts_with("http://"),
        ..Default::default()
    }
}

/// The secrets of every endpoint in the snapshot a fresh Watch stream starts with.
async fn snapshot_secrets(control: &InProcess) -> HashMap<String, Vec<String>> {
    let (requests, inbound) = mpsc::channel(4);
    requests.send(hello("node-snapshot")).await.unwrap();
    let mut responses = control.agent().await.watch(ReceiverStream::new(inbound)).await.unwrap().into_inner();
    let ResponseKind::Snapshot(snapshot) = next(&mut responses).await else { panic!("a snapshot first") };
    snapshot.endpoints.into_iter().map(|e| (e.endpoint.unwrap().id, e.secrets)).collect()
}

fn hello(node: &str) -> pb::WatchRequest {
    let hello = pb::AgentHello { node_name: node.into(), agent_version: "test".into(), applied_version: 0 };
    pb::WatchRequest { kind: Some(RequestKind::Hello(hello)) }
}

async fn next(responses: &mut tonic::Streaming<pb::WatchResponse>) -> ResponseKind {
    let response = timeout(Duration::from_secs(10), responses.next()).await.expect("a response in time");
    response.expect("an open stream").unwrap().kind.unwrap()
}

fn assert_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, parts: &[&str]) -> String {
    let status = result.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
    for part in parts {
        assert!(status.message().contains(part), "{:?} lacks {part:?}", status.message());
    }
    status.message().to_owned()
}

#[tokio::test]
async fn sixty_concurrent_creates_leave_exactly_fifty_endpoints() {
    let data = tempfile::tempdir().unwrap();
    let control = start_on(data.path(), |_| {}).await;
    let mut admin = control.admin().await;
    seed(&mut admin).await;

    let mut creates = Vec::new();
    for index in 0..60 {
        let mut admin = admin.clone();
        creates.push(tokio::spawn(async move {
            admin.create_endpoint(endpoint_request(&format!("https://example.com/hook/{index}"))).await
        }));
    }
    let mut created = 0;
    let mut refused = 0;
    for create in creates {
        match create.await.unwrap() {
            Ok(_) => created += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert_eq!(
                    status.message(),
                    "owner \"acme\" already has 50 endpoints, the most allowed per owner (50)"
                );
                refused += 1;
            }
        }
    }
    assert_eq!((created, refused), (50, 10));
    let listed = admin
        .list_endpoints(pb::ListEndpointsRequest { owner_id: "acme".into(), page_size: 100, page_token: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.endpoints.len(), 50);
    control.stop().await;
}

#[tokio::test]
async fn a_wrong_or_missing_master_key_stops_control_at_startup() {
    let data = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("master.key");
    MasterKey::create_file(&key_file).unwrap();
    let with_file = |config: &mut Config| config.master_key = MasterKeySource::File(key_file.clone());

    let control = start_on(data.path(), with_file).await;
    let mut admin = control.admin().await;
    seed(&mut admin).await;
    let created = admin.create_endpoint(endpoint_request("https://example.com/hook")).await.unwrap().into_inner();
    let id = created.endpoint.unwrap().id;
    control.stop().await;

    let wrong = start_on(data.path(), |config| config.master_key = MasterKeySource::Key(MasterKey::generate()));
    let error = wrong.await.failure().await;
    assert!(
        error.contains("the master key does not match the one this data directory's secrets were sealed with"),
        "{error}"
    );

    // No key at all: control would generate a development key, which cannot be the right one either.
    let error = start_on(data.path(), |_| {}).await.failure().await;
    assert!(error.contains("were sealed under a master key that was not given this time"), "{error}");
    assert!(!data.path().join(DEV_MASTER_KEY_FILE).exists(), "the useless generated key is removed");

    let control = start_on(data.path(), with_file).await;
    assert_eq!(snapshot_secrets(&control).await[&id], [created.secret]);
    control.stop().await;
}

#[tokio::test]
async fn without_a_key_control_generates_a_private_development_key_once() {
    let data = tempfile::tempdir().unwrap();
    let control = start_on(data.path(), |_| {}).await;
    let mut admin = control.admin().await;
    seed(&mut admin).await;
    let created = admin.create_endpoint(endpoint_request("https://example.com/hook")).await.unwrap().into_inner();
    control.stop().await;

    let key_file = data.path().join(DEV_MASTER_KEY_FILE);
    let first = std::fs::read(&key_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let control = start_on(data.path(), |_| {}).await;
    assert_eq!(std::fs::read(&key_file).unwrap(), first, "the key is generated once, then reused");
    let secrets = snapshot_secrets(&control).await;
    assert_eq!(secrets[&created.endpoint.unwrap().id], [created.secret]);
    control.stop().await;
}

#[tokio::test]
async fn rotation_signs_with_both_secrets_during_the_overlap_then_drops_the_old_one() {
    let data = tempfile::tempdir().unwrap();
    let control = start_on(data.path(), |_| {}).await;
    let mut admin = control.admin().await;
    seed(&mut admin).await;
    let created = admin.create_endpoint(endpoint_request("https://example.com/hook")).await.unwrap().into_inner();
    let id = created.endpoint.unwrap().id;

    let (requests, inbound) = mpsc::channel(8);
    requests.send(hello("node-a")).await.unwrap();
    let mut responses = control.agent().await.watch(ReceiverStream::new(inbound)).await.unwrap().into_inner();
    let ResponseKind::Snapshot(snapshot) = next(&mut responses).await else { panic!("a snapshot first") };
    assert_eq!(snapshot.endpoints[0].secrets, [created.secret.as_str()]);

    let rotated = admin
        .rotate_secret(pb::RotateEndpointSecretRequest { id: id.clone(), overlap_seconds: 1 })
        .await
        .unwrap()
        .into_inner();
    assert!(rotated.secret.starts_with("whsec_") && rotated.secret != created.secret);
    assert_eq!(rotated.endpoint.as_ref().unwrap().id, id);
    let expires_at = from_timestamp(rotated.previous_secret_expires_at.as_ref().unwrap()).unwrap();
    assert!(expires_at > now_ms() && expires_at <= now_ms() + 1_000, "{expires_at}");

    let ResponseKind::Delta(delta) = next(&mut responses).await else { panic!("a delta") };
    assert_eq!(delta.upsert_endpoints[0].secrets, [rotated.secret.clone(), created.secret.clone()]);
    // The overlap ends with an ordinary config change that leaves the new secret alone.
    let ResponseKind::Delta(delta) = next(&mut responses).await else { panic!("a delta") };
    assert!(now_ms() >= expires_at);
    assert_eq!(delta.version, delta.base_version + 1);
    assert_eq!(delta.upsert_endpoints[0].secrets, [rotated.secret.as_str()]);

    let default = admin
        .rotate_secret(pb::RotateEndpointSecretRequest { id: id.clone(), overlap_seconds: 0 })
        .await
        .unwrap()
        .into_inner();
    let expires_at = from_timestamp(default.previous_secret_expires_at.as_ref().unwrap()).unwrap();
    assert!(expires_at.abs_diff(now_ms() + 86_400_000) < 60_000, "the default overlap is a day");

    assert_refused(
        admin.rotate_secret(pb::RotateEndpointSecretRequest { id: id.clone(), overlap_seconds: 31 * 86_400 }).await,
        Code::InvalidArgument,
        &["overlap_seconds: at most 2592000"],
    );
    let absent = hookrelay_common::ids::EndpointId::generate().to_string();
    assert_refused(
        admin.rotate_secret(pb::RotateEndpointSecretRequest { id: absent.clone(), overlap_seconds: 0 }).await,
        Code::NotFound,
        &[&absent],
    );
    drop(requests);
    control.stop().await;
}

async fn challenge_control(data: &Path, allowed: &[&str]) -> InProcess {
    let allowed: Vec<ipnet::IpNet> = allowed.iter().map(|net| net.parse().unwrap()).collect();
    start_on(data, move |config| {
        config.allow_insecure_endpoints = true;
        config.allowed_cidrs = allowed;
        config.challenge_timeout = Duration::from_secs(1);
    })
    .await
}

#[tokio::test]
async fn the_challenge_must_be_answered_with_the_value_sent() {
    let data = tempfile::tempdir().unwrap();
    let control = challenge_control(data.path(), &["127.0.0.0/8"]).await;
    let mut admin = control.admin().await;
    seed(&mut admin).await;
    let receiver = Receiver::start(Answer::Echo).await;

    // Created only after answering; the challenge is appended to the URL's own query, custom headers go along.
    let mut request = endpoint_request(&receiver.url("/hook?source=hookrelay"));
    request.verify = true;
    request.headers = HashMap::from([("x-team".to_owned(), "payments".to_owned())]);
    let created = admin.create_endpoint(request).await.unwrap().into_inner().endpoint.unwrap();
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1);
    let (source, challenge) = seen[0].query.split_once('&').expect("both parameters");
    assert_eq!(source, "source=hookrelay");
    let challenge = challenge.strip_prefix("challenge=").expect("the challenge parameter");
    assert!(challenge.len() == 64 && challenge.bytes().all(|b| b.is_ascii_hexdigit()), "{challenge}");
    assert_eq!(seen[0].headers["x-team"], "payments");
    assert!(seen[0].headers["user-agent"].to_str().unwrap().starts_with("hookrelay/"));

    let verified = admin.verify_endpoint(pb::VerifyEndpointRequest { id: created.id.clone() }).await.unwrap();
    assert_eq!(verified.into_inner().endpoint.unwrap().id, created.id);
    assert_ne!(receiver.seen()[1].query, seen[0].query, "every challenge is fresh");

    let shown = format!("verification challenge to {}?[redacted] failed: ", receiver.url("/hook"));
    let verify = |admin: &mut AdminServiceClient<Channel>| {
        let mut admin = admin.clone();
        let id = created.id.clone();
        async move { admin.verify_endpoint(pb::VerifyEndpointRequest { id }).await }
    };
    let cases: [(Answer, &[&str]); 5] = [
        (Answer::WrongValue, &["answered 200 with another challenge value than the one sent: body"]),
        (Answer::NotJson, &["answered 200 without {\"challenge\":\"<the value sent>\"} in its JSON body: body \"ok\""]),
        (Answer::ServerError, &["answered 500 Internal Server Error instead of 200: body \"database is down\""]),
        (
            Answer::Redirect,
            &["answered 302 Found to https://elsewhere.example/hook?[redacted]; redirects are not followed"],
        ),
        (Answer::Slow, &["no complete answer within 1s"]),
    ];
    for (answer, expected) in cases {
        receiver.set(answer);
        let message = assert_refused(verify(&mut admin).await, Code::FailedPrecondition, expected);
        assert!(message.starts_with(&shown), "{answer:?}: {message}");
        assert!(!message.contains("source=hookrelay") && !message.contains("token=abc"), "{message}");
    }

    // Nothing listening: the connection error is what came back.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let request =
        pb::CreateEndpointRequest { verify: true, ..endpoint_request(&format!("http://127.0.0.1:{closed}/")) };
    assert_refused(admin.create_endpoint(request).await, Code::FailedPrecondition, &["could not connect", "refused"]);

    // A failed challenge creates nothing and changes nothing.
    receiver.set(Answer::ServerError);
    let request = pb::CreateEndpointRequest { verify: true, ..endpoint_request(&receiver.url("/other")) };
    assert_refused(admin.create_endpoint(request).await, Code::FailedPrecondition, &["answered 500"]);
    let listed = admin.list_endpoints(pb::ListEndpointsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.endpoints.len(), 1);
    // Nothing is sent on behalf of an owner that does not exist.
    let before = receiver.seen().len();
    let ghost =
        pb::CreateEndpointRequest { owner_id: "ghost".into(), verify: true, ..endpoint_request(&receiver.url("/")) };
    assert_refused(admin.create_endpoint(ghost).await, Code::NotFound, &["owner \"ghost\" not found"]);
    assert_eq!(receiver.seen().len(), before);

    let good = Receiver::start(Answer::Echo).await;
    let update = |url: String| pb::UpdateEndpointRequest {
        id: created.id.clone(),
        url: Some(url),
        verify: true,
        ..Default::default()
    };
    assert_refused(
        admin.update_endpoint(update(receiver.url("/moved"))).await,
        Code::FailedPrecondition,
        &["answered 500"],
    );
    let unchanged = admin.get_endpoint(pb::GetEndpointRequest { id: created.id.clone() }).await.unwrap().into_inner();
    assert_eq!(unchanged.url, created.url);
    let moved = admin.update_endpoint(update(good.url("/moved"))).await.unwrap().into_inner();
    assert_eq!(moved.url, good.url("/moved"));
    assert_eq!(good.seen().len(), 1);
    control.stop().await;
}

#[tokio::test]
async fn challenges_obey_the_address_policy() {
    let data = tempfile::tempdir().unwrap();
    // No allowed ranges: loopback is refused, as it would be for deliveries.
    let control = challenge_control(data.path(), &[]).await;
    let mut admin = control.admin().await;
    seed(&mut admin).await;
    let receiver = Receiver::start(Answer::Echo).await;

    // An IP literal is refused at once, before any challenge.
    let request = pb::CreateEndpointRequest { verify: true, ..endpoint_request(&receiver.url("/hook")) };
    assert_refused(
        admin.create_endpoint(request).await,
        Code::InvalidArgument,
        &["url: host 127.0.0.1 is in loopback (127.0.0.0/8), which control's address policy refuses"],
    );
    // A name goes through the resolver, which checks what it resolves to.
    let by_name = format!("http://localhost:{}/hook", receiver.port);
    let request = pb::CreateEndpointRequest { verify: true, ..endpoint_request(&by_name) };
    assert_refused(
        admin.create_endpoint(request).await,
        Code::FailedPrecondition,
        &["refused by control's address policy"],
    );
    assert!(receiver.seen().is_empty(), "no request reached the receiver");

    // Unverified endpoints with a name may still be created; verifying one later obeys the same policy.
    let created = admin.create_endpoint(endpoint_request(&by_name)).await.unwrap().into_inner();
    let id = created.endpoint.unwrap().id;
    assert_refused(
        admin.verify_endpoint(pb::VerifyEndpointRequest { id }).await,
        Code::FailedPrecondition,
        &["refused by control's address policy"],
    );
    assert!(receiver.seen().is_empty());
    control.stop().await;
}
