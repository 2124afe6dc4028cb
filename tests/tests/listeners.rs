//! Idle and trickling connections cannot exhaust a listener. With the cap at N, N+100 connections that send
//! nothing and a few that send a header byte a second are all closed within bounded time, while a call on a fresh
//! connection still answers within 100 ms; the agent's emit port and control's gRPC port alike.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hookrelay_common::proto::v1::ListOwnersRequest;
use hookrelay_common::proto::v1::admin_service_client::AdminServiceClient;
use hookrelay_common::proto::v1::emit_service_client::EmitServiceClient;
use hookrelay_tests::{AgentOpts, ControlOpts, Fixture, api, spawn_agent_with, spawn_control_with, unique};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tonic::transport::Endpoint;

const CAP: usize = 32;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// What a fresh call may take while the flood is open.
const PROMPT: Duration = Duration::from_millis(100);
/// How long after the flood every one of its connections must be closed: the header read timeout, and room for a
/// debug build on busy cores.
const CLOSED_WITHIN: Duration = HEADER_READ_TIMEOUT.saturating_add(Duration::from_secs(10));

fn limit_args() -> Vec<String> {
    let header_read_timeout = HEADER_READ_TIMEOUT.as_secs().to_string();
    [
        "--max-connections",
        &CAP.to_string(),
        "--header-read-timeout-secs",
        &header_read_timeout,
        "--idle-timeout-secs",
        "3",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Connections that send nothing, N+100 of them, and five that send a header (HTTP/1.1, or HTTP/2's preface) a
/// byte a second; each task ends, with the time it took, once the server closed its connection.
async fn flood(addr: SocketAddr) -> JoinSet<Result<Duration, String>> {
    let started = Instant::now();
    let mut connections = JoinSet::new();
    let dribbled: [&'static [u8]; 5] = [
        b"POST /v1/events HTTP/1.1\r\nhost: x\r\n",
        b"GET /metrics HTTP/1.1\r\nhost: x\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"POST /hookrelay.v1.EmitService/Emit HTTP/1.1\r\n",
        b"G",
    ];
    for text in dribbled {
        let stream = TcpStream::connect(addr).await.expect("connect");
        connections.spawn(dribble(stream, text, started));
    }
    for _ in 0..CAP + 100 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        connections.spawn(async move {
            let mut buffer = [0; 64];
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => Ok(started.elapsed()),
                Ok(n) => Err(format!("an idle connection was sent {n} bytes")),
            }
        });
    }
    connections
}

async fn dribble(stream: TcpStream, text: &'static [u8], started: Instant) -> Result<Duration, String> {
    let (mut reader, mut writer) = stream.into_split();
    let writes = async move {
        for byte in text.iter().cycle() {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let mut buffer = [0; 1024];
    tokio::select! {
        () = writes => Ok(started.elapsed()),
        // An answer (408, 400) before the close is fine; the close is what counts.
        _ = async { while let Ok(1..) = reader.read(&mut buffer).await {} } => Ok(started.elapsed()),
    }
}

/// Waits for every connection of the flood to be closed by the server, within [`CLOSED_WITHIN`].
async fn assert_all_closed(mut flood: JoinSet<Result<Duration, String>>, what: &str) -> Duration {
    let total = flood.len();
    let deadline = tokio::time::Instant::now() + CLOSED_WITHIN;
    let mut slowest = Duration::ZERO;
    let mut closed = 0;
    while closed < total {
        match tokio::time::timeout_at(deadline, flood.join_next()).await {
            Ok(Some(result)) => {
                slowest = slowest.max(result.expect("task").unwrap_or_else(|error| panic!("{what}: {error}")));
                closed += 1;
            }
            Ok(None) => break,
            Err(_) => panic!("{what}: {} of {total} connections still open after {CLOSED_WITHIN:?}", total - closed),
        }
    }
    slowest
}

fn open_descriptors(pid: Option<u32>) -> usize {
    let pid = pid.expect("running");
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emit_listener_closes_idle_and_trickling_connections_and_still_answers_emits() {
    let control = spawn_control_with(ControlOpts::default()).await;
    let agent = spawn_agent_with(AgentOpts { extra_args: limit_args(), ..AgentOpts::new(control.url()) }).await;
    let fixture = Fixture::new(control.admin().await).await;
    let mut emitter = agent.emitter().await;
    api::emit_until_routed(&mut emitter, &fixture.owner, &fixture.event_type, 0).await;
    let emit_on_a_new_connection = async || {
        let started = Instant::now();
        let channel = Endpoint::from_shared(agent.url()).unwrap().connect().await.expect("connect");
        let request = fixture.emit_request(&unique("prompt"), &serde_json::json!({"n": 1}));
        EmitServiceClient::new(channel).emit(request).await.expect("emit");
        started.elapsed()
    };
    emit_on_a_new_connection().await;
    let before = open_descriptors(agent.pid());

    let flood = flood(agent.addr()).await;
    let during = open_descriptors(agent.pid());
    let took = emit_on_a_new_connection().await;
    assert!(
        took < PROMPT,
        "an emit on a new connection took {took:?} with the flood open\n{}",
        agent.stderr_report(20)
    );

    let slowest = assert_all_closed(flood, "emit listener").await;
    let after = open_descriptors(agent.pid());
    eprintln!(
        "agent: descriptors {before} before, {during} with {} connections open against a cap of {CAP}, {after} \
         after; the last closed after {slowest:?}; a new emit took {took:?}",
        CAP + 105
    );
    assert!(during <= before + CAP + 5, "{during} descriptors with the flood open (cap {CAP}, {before} before)");
    // Still serving, on the HTTP route too.
    let answer = api::post_event(
        agent.addr(),
        &serde_json::json!({"owner": fixture.owner, "type": fixture.event_type, "id": unique("after"), "payload": {}}),
    )
    .await;
    assert!(answer.status < 300, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_listener_closes_idle_and_trickling_connections_and_still_answers_calls() {
    let control = spawn_control_with(ControlOpts { extra_args: limit_args(), ..ControlOpts::default() }).await;
    let call_on_a_new_connection = async || {
        let started = Instant::now();
        let channel = Endpoint::from_shared(control.url()).unwrap().connect().await.expect("connect");
        AdminServiceClient::new(channel).list_owners(ListOwnersRequest::default()).await.expect("ListOwners");
        started.elapsed()
    };
    call_on_a_new_connection().await;
    let before = open_descriptors(control.pid());

    let flood = flood(control.addr()).await;
    let during = open_descriptors(control.pid());
    let took = call_on_a_new_connection().await;
    assert!(
        took < PROMPT,
        "a call on a new connection took {took:?} with the flood open\n{}",
        control.stderr_report(20)
    );

    let slowest = assert_all_closed(flood, "control's listener").await;
    let after = open_descriptors(control.pid());
    eprintln!(
        "control: descriptors {before} before, {during} with {} connections open against a cap of {CAP}, {after} \
         after; the last closed after {slowest:?}; a new call took {took:?}",
        CAP + 105
    );
    assert!(during <= before + CAP + 5, "{during} descriptors with the flood open (cap {CAP}, {before} before)");
    let mut admin = AdminServiceClient::new(api::connect(control.addr()).await);
    admin.list_owners(ListOwnersRequest::default()).await.expect("ListOwners after the flood");
}
