//! `hookrelay-floor-relay`: the least any relay with hookrelay's shape can do per event, for the benchmark's `floor`
//! scenario. It answers an emit (gRPC `Emit`/`EmitBatch`, or `POST /v1/events`) only after it has sent the event,
//! signed, to one receiver with a pooled hyper client and had a 2xx back: the two network hops of the end-to-end path
//! (emit, delivery), with no queue, no retries and no control. What it reaches bounds what the real agent can reach
//! on the same machine.
//!
//! With `--durable <dir>` it also does the least a durable queue does: each event is written to a sled tree in that
//! directory and flushed before it is sent (group commit: one writer thread stores whatever arrived while it last
//! wrote in packs of a few events under one key each, as the agent does, with one flush) and a pack is removed once
//! the receiver took all its events.
//! No dedup record, no delivery state, no reports: every real agent writes more than this.
//!
//! With `--control <url>` it also reports each delivery to that control (`ReportAttempts`, one call at a time with
//! whatever reports piled up meanwhile, as the agent sends them), so control stores and lists it; the reports are
//! kept in memory only, where the agent spools them on disk.
//!
//! ```text
//! hookrelay-floor-relay --target http://127.0.0.1:PORT/hook [--connections 64] [--secret whsec_…] [--durable DIR]
//!     [--control http://127.0.0.1:PORT --endpoint-id ep_…]
//! ```
//! It listens on a free loopback port and prints `listening on <addr>` as its first stdout line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

use anyhow::Context as _;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use clap::Parser;
use hookrelay_common::ids::{DeliveryId, ReportId};
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::proto::v1::agent_service_client::AgentServiceClient;
use hookrelay_common::proto::v1::emit_service_server::{EmitService, EmitServiceServer};
use hookrelay_common::signing::{Secret, Signer};
use hookrelay_common::time::{now_ms, to_timestamp};
use hookrelay_tests::signed::{pooled_client, webhook_post};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

/// Relay each emitted event straight to one receiver (the benchmark's floor).
#[derive(Debug, Parser)]
struct Args {
    /// Where every event is POSTed.
    #[arg(long)]
    target: http::Uri,
    /// Most connections kept open to the target.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// The signing secret (`whsec_…`); a fresh one when absent.
    #[arg(long, value_parser = |text: &str| Secret::parse(text).map_err(|error| error.to_string()))]
    secret: Option<Secret>,
    /// Persist each event in a sled tree in this directory (flushed) before sending it, remove it once delivered.
    #[arg(long)]
    durable: Option<PathBuf>,
    /// Report each delivery to the control at this URL (plaintext, no credentials: a development control).
    #[arg(long, requires = "endpoint_id")]
    control: Option<String>,
    /// The endpoint the reported deliveries belong to.
    #[arg(long, requires = "control")]
    endpoint_id: Option<String>,
}

/// What an emit carries that the relay needs.
struct Event {
    owner: String,
    event_type: String,
    id: String,
    payload: Bytes,
}

struct Relay {
    client: Client<HttpConnector, Full<Bytes>>,
    signer: Signer,
    target: http::Uri,
    journal: Option<Journal>,
    reporter: Option<Reporter>,
}

impl Relay {
    async fn relay(&self, event: Event) -> Result<pb::EmitResponse, Status> {
        let Event { owner, event_type, id, payload } = event;
        // The baseline's request, so that relay and baseline differ only in the emit hop (and the journal).
        let request = webhook_post(&self.target, &self.signer, &id, payload.clone())
            .map_err(|error| Status::invalid_argument(format!("id: {error}")))?;
        let key = match &self.journal {
            Some(journal) => Some(journal.persist(payload).await?),
            None => None,
        };
        let started = now_ms();
        let response = self.client.request(request).await.map_err(|error| Status::unavailable(error.to_string()))?;
        let status = response.status();
        response.into_body().collect().await.map_err(|error| Status::unavailable(error.to_string()))?;
        if !status.is_success() {
            return Err(Status::unavailable(format!("the receiver answered {status}")));
        }
        if let (Some(journal), Some(key)) = (&self.journal, key) {
            journal.delivered(key);
        }
        if let Some(reporter) = &self.reporter {
            reporter.delivered(owner, event_type, id.clone(), started, status.as_u16());
        }
        Ok(pb::EmitResponse { id, deliveries: 1, duplicate: false })
    }
}

#[tonic::async_trait]
impl EmitService for Relay {
    async fn emit(&self, request: Request<pb::EmitRequest>) -> Result<Response<pb::EmitResponse>, Status> {
        Ok(Response::new(self.relay(Event::from(request.into_inner())).await?))
    }

    async fn emit_batch(
        &self,
        request: Request<pb::EmitBatchRequest>,
    ) -> Result<Response<pb::EmitBatchResponse>, Status> {
        let sends = request.into_inner().events.into_iter().map(|event| self.relay(Event::from(event)));
        let results = futures::future::try_join_all(sends).await?;
        Ok(Response::new(pb::EmitBatchResponse { results }))
    }
}

impl From<pb::EmitRequest> for Event {
    fn from(event: pb::EmitRequest) -> Self {
        Event { owner: event.owner, event_type: event.r#type, id: event.id, payload: Bytes::from(event.payload) }
    }
}

/// The fields of the agent's `POST /v1/events` body the relay uses (none is checked).
#[derive(Deserialize)]
struct HttpEvent<'a> {
    owner: String,
    #[serde(rename = "type")]
    event_type: String,
    id: String,
    #[serde(borrow)]
    payload: &'a RawValue,
}

async fn post_event(State(relay): State<Arc<Relay>>, body: Bytes) -> (StatusCode, Json<serde_json::Value>) {
    let event: HttpEvent<'_> = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(error) => {
            return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": { "message": error.to_string() } })));
        }
    };
    let payload = Bytes::copy_from_slice(event.payload.get().as_bytes());
    let event = Event { owner: event.owner, event_type: event.event_type, id: event.id, payload };
    match relay.relay(event).await {
        Ok(answer) => {
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "id": answer.id, "deliveries": answer.deliveries })))
        }
        Err(status) => {
            let code = match status.code() {
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (code, Json(serde_json::json!({ "error": { "message": status.message() } })))
        }
    }
}

/// What the journal's writer thread does next.
enum Op {
    Persist { payload: Bytes, done: oneshot::Sender<Result<u64, String>> },
    Delivered(u64),
}

/// Events on disk until delivered, written the way the agent writes them: one writer thread takes whatever arrived
/// while it last wrote (at most [`MAX_BATCH`]) and stores it in packs of at most [`PACK_EVENTS`] events or
/// [`PACK_BYTES`] (each pack one key of length-prefixed payloads), in one batch with one flush (group commit); a pack
/// is removed once all its events were delivered.
struct Journal {
    ops: mpsc::Sender<Op>,
}

/// Most operations in one batch, pack limits: the agent's (`agent/src/queue/{writer,packs}.rs`).
const MAX_BATCH: usize = 256;
const PACK_EVENTS: usize = 16;
const PACK_BYTES: usize = 6 * 1024;

impl Journal {
    fn open(dir: &std::path::Path) -> anyhow::Result<Self> {
        let db = sled::Config::new().path(dir).flush_every_ms(Some(500)).open().context("open the journal")?;
        let tree = db.open_tree("events")?;
        let (ops, received) = mpsc::channel();
        std::thread::Builder::new().name("journal".into()).spawn(move || write_packs(&db, &tree, &received))?;
        Ok(Journal { ops })
    }

    /// Returns the key of the event's pack once it is on disk.
    async fn persist(&self, payload: Bytes) -> Result<u64, Status> {
        let (done, written) = oneshot::channel();
        self.ops.send(Op::Persist { payload, done }).map_err(|_| Status::internal("the journal stopped"))?;
        written.await.map_err(|_| Status::internal("the journal stopped"))?.map_err(Status::internal)
    }

    fn delivered(&self, pack: u64) {
        let _ = self.ops.send(Op::Delivered(pack));
    }
}

/// A pack being filled: its key, its bytes and who waits for it.
struct OpenPack {
    key: u64,
    bytes: Vec<u8>,
    waiting: Vec<oneshot::Sender<Result<u64, String>>>,
}

fn write_packs(db: &sled::Db, tree: &sled::Tree, received: &mpsc::Receiver<Op>) {
    let mut last_key = 0u64;
    // Pack key → its events not yet delivered.
    let mut undelivered: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    while let Ok(first) = received.recv() {
        let mut batch = sled::Batch::default();
        let mut packs: Vec<OpenPack> = Vec::new();
        for op in std::iter::once(first).chain(received.try_iter().take(MAX_BATCH - 1)) {
            match op {
                Op::Persist { payload, done } => {
                    let full = packs.last().is_none_or(|pack| {
                        pack.waiting.len() == PACK_EVENTS || pack.bytes.len() + 4 + payload.len() > PACK_BYTES
                    });
                    if full {
                        last_key += 1;
                        packs.push(OpenPack { key: last_key, bytes: Vec::new(), waiting: Vec::new() });
                    }
                    let pack = packs.last_mut().expect("a pack is open");
                    pack.bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                    pack.bytes.extend_from_slice(&payload);
                    pack.waiting.push(done);
                }
                Op::Delivered(key) => {
                    let left = undelivered.get_mut(&key).expect("only a pack on disk has delivered events");
                    *left -= 1;
                    if *left == 0 {
                        undelivered.remove(&key);
                        batch.remove(&key.to_be_bytes());
                    }
                }
            }
        }
        for pack in &packs {
            batch.insert(&pack.key.to_be_bytes(), pack.bytes.as_slice());
        }
        let written = tree.apply_batch(batch).and_then(|()| if packs.is_empty() { Ok(0) } else { db.flush() });
        for pack in packs {
            if written.is_ok() {
                undelivered.insert(pack.key, pack.waiting.len());
            }
            for done in pack.waiting {
                let _ = done.send(written.as_ref().map(|_| pack.key).map_err(|error| error.to_string()));
            }
        }
    }
}

/// Sends delivery reports to control from one task, the agent's way: one `ReportAttempts` call at a time with every
/// report that piled up meanwhile (at most control's limit per call), pausing [`LINGER`] after a call that was not
/// full so that reports gather into fewer calls. A failed call ends the relay: a floor measured against a failing
/// control would mean nothing.
struct Reporter {
    reports: tokio::sync::mpsc::UnboundedSender<pb::AttemptReport>,
    endpoint_id: String,
}

/// Control's most reports per call, and the agent's pause after a call that was not full
/// (`agent/src/control_client/reports.rs`).
const MAX_REPORTS_PER_CALL: usize = 1000;
const LINGER: std::time::Duration = std::time::Duration::from_millis(10);
const NODE_NAME: &str = "floor-relay";

impl Reporter {
    async fn connect(url: String, endpoint_id: String) -> anyhow::Result<Self> {
        let mut client = AgentServiceClient::connect(url).await.context("connect to control")?;
        let (reports, mut pending) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while pending.recv_many(&mut batch, MAX_REPORTS_PER_CALL).await > 0 {
                let sent = batch.len();
                let request =
                    pb::ReportAttemptsRequest { node_name: NODE_NAME.into(), reports: std::mem::take(&mut batch) };
                if let Err(status) = client.report_attempts(request).await {
                    eprintln!("floor relay: ReportAttempts failed, stopping: {status}");
                    std::process::exit(1);
                }
                if sent < MAX_REPORTS_PER_CALL {
                    tokio::time::sleep(LINGER).await;
                }
            }
        });
        Ok(Reporter { reports, endpoint_id })
    }

    /// Queues the report of a delivery that succeeded at its first attempt.
    fn delivered(&self, owner: String, event_type: String, event_id: String, started_ms: u64, status_code: u16) {
        let now = now_ms();
        let delivery_id = DeliveryId::generate().to_string();
        let report = pb::AttemptReport {
            report_id: ReportId::generate().to_string(),
            delivery: Some(pb::Delivery {
                id: delivery_id.clone(),
                event_id,
                owner_id: owner,
                endpoint_id: self.endpoint_id.clone(),
                event_type,
                status: pb::DeliveryStatus::Succeeded as i32,
                attempts: 1,
                last_status_code: u32::from(status_code),
                created_at: Some(to_timestamp(started_ms)),
                updated_at: Some(to_timestamp(now)),
                delivered_at: Some(to_timestamp(now)),
                agent: NODE_NAME.into(),
                ..Default::default()
            }),
            attempt: Some(pb::Attempt {
                delivery_id,
                number: 1,
                started_at: Some(to_timestamp(started_ms)),
                duration_ms: now.saturating_sub(started_ms),
                status_code: u32::from(status_code),
                outcome: pb::AttemptOutcome::Succeeded as i32,
                ..Default::default()
            }),
            disable_endpoint: String::new(),
        };
        let _ = self.reports.send(report);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = pooled_client(args.connections);
    let journal = args.durable.as_deref().map(Journal::open).transpose()?;
    let signer = Signer::new(&[args.secret.unwrap_or_else(Secret::generate)]);
    let reporter = match (args.control, args.endpoint_id) {
        (Some(url), Some(endpoint_id)) => Some(Reporter::connect(url, endpoint_id).await?),
        _ => None,
    };
    let relay = Arc::new(Relay { client, signer, target: args.target, journal, reporter });
    let router = tonic::service::Routes::new(EmitServiceServer::from_arc(relay.clone()))
        .into_axum_router()
        .merge(axum::Router::new().route("/v1/events", axum::routing::post(post_event)).with_state(relay));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    println!("listening on {}", listener.local_addr()?);
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, router).await.context("serving emit")
}
