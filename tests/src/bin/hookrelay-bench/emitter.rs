//! The emit workers' way to the agent (or the floor relay): gRPC `Emit`/`EmitBatch`, or `POST /v1/events` over
//! pooled HTTP/1.1 connections, the way a service without a gRPC client emits.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hookrelay_common::proto::v1::emit_service_client::EmitServiceClient;
use hookrelay_common::proto::v1::{EmitBatchRequest, EmitRequest};
use hookrelay_tests::signed::pooled_client;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tonic::transport::Channel;

/// How the emit workers send events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmitVia {
    /// gRPC over HTTP/2: one connection per 16 workers, as several services on a node would share.
    Grpc,
    /// `POST /v1/events` (JSON) over HTTP/1.1 keep-alive: a connection per worker, like the baseline's client.
    Http,
}

/// One worker's handle for emitting (cheap to clone: clones share connections).
#[derive(Clone)]
pub enum Emitter {
    Grpc(EmitServiceClient<Channel>),
    Http(Arc<HttpEmitter>),
}

/// A pooled HTTP/1.1 client and the agent's emit route.
pub struct HttpEmitter {
    client: Client<HttpConnector, Full<Bytes>>,
    url: http::Uri,
}

/// What the agent answered for one event.
pub struct Accepted {
    pub id: String,
    pub deliveries: u32,
}

/// Emit handles for `concurrency` workers to the agent (or relay) at `addr`; worker `n` uses `handles[n % len]`.
pub async fn connect(addr: SocketAddr, concurrency: usize, via: EmitVia) -> anyhow::Result<Vec<Emitter>> {
    match via {
        EmitVia::Grpc => {
            let mut emitters = Vec::new();
            for _ in 0..concurrency.div_ceil(16) {
                emitters.push(Emitter::Grpc(EmitServiceClient::new(hookrelay_tests::api::connect(addr).await)));
            }
            Ok(emitters)
        }
        EmitVia::Http => {
            let client = pooled_client(concurrency);
            Ok(vec![Emitter::Http(Arc::new(HttpEmitter { client, url: format!("http://{addr}/v1/events").parse()? }))])
        }
    }
}

#[derive(Serialize)]
struct HttpEvent<'a> {
    owner: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    id: &'a str,
    payload: &'a RawValue,
}

#[derive(Deserialize)]
struct HttpAccepted {
    id: String,
    deliveries: u32,
}

impl Emitter {
    /// Emits `events` (JSON payloads): in one call over gRPC (`EmitBatch` for more than one), one request per event
    /// over HTTP (the route takes one).
    pub async fn emit(&mut self, events: Vec<EmitRequest>) -> anyhow::Result<Vec<Accepted>> {
        match self {
            Emitter::Grpc(client) => {
                let answers = if events.len() == 1 {
                    let request = events.into_iter().next().expect("one event");
                    vec![client.emit(request).await.context("Emit")?.into_inner()]
                } else {
                    let request = EmitBatchRequest { events };
                    client.emit_batch(request).await.context("EmitBatch")?.into_inner().results
                };
                Ok(answers.into_iter().map(|a| Accepted { id: a.id, deliveries: a.deliveries }).collect())
            }
            Emitter::Http(http) => {
                let mut accepted = Vec::with_capacity(events.len());
                for event in &events {
                    accepted.push(post_event(&http.client, &http.url, event).await?);
                }
                Ok(accepted)
            }
        }
    }
}

async fn post_event(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &http::Uri,
    event: &EmitRequest,
) -> anyhow::Result<Accepted> {
    let payload: &RawValue = serde_json::from_slice(&event.payload).context("the payload is not JSON")?;
    let body =
        serde_json::to_vec(&HttpEvent { owner: &event.owner, event_type: &event.r#type, id: &event.id, payload })?;
    let request = http::Request::post(url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = client.request(request).await.context("POST /v1/events")?;
    let status = response.status();
    let body = response.into_body().collect().await.context("POST /v1/events: the answer")?.to_bytes();
    if !status.is_success() {
        bail!("POST /v1/events answered {status}: {}", String::from_utf8_lossy(&body));
    }
    let answer: HttpAccepted = serde_json::from_slice(&body).context("POST /v1/events: the answer is not JSON")?;
    Ok(Accepted { id: answer.id, deliveries: answer.deliveries })
}
