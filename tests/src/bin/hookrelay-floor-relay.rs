//! `hookrelay-floor-relay`: the least any relay with hookrelay's shape can do per event, for the benchmark's `floor`
//! scenario. It answers `Emit` over gRPC only after it has sent the event, signed, to one receiver with a pooled
//! hyper client and had a 2xx back: the two network hops of the end-to-end path (emit, delivery), with no queue, no
//! disk, no retries and no control. What it reaches bounds what the real agent can reach on the same machine.
//!
//! ```text
//! hookrelay-floor-relay --target http://127.0.0.1:PORT/hook [--connections 64] [--secret whsec_…]
//! ```
//! It listens on a free loopback port and prints `listening on <addr>` as its first stdout line.

use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::proto::v1::emit_service_server::{EmitService, EmitServiceServer};
use hookrelay_common::signing::{Secret, Signer};
use hookrelay_tests::signed::webhook_post;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
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
}

struct Relay {
    client: Client<HttpConnector, Full<Bytes>>,
    signer: Signer,
    target: http::Uri,
}

impl Relay {
    async fn deliver(&self, event: pb::EmitRequest) -> Result<pb::EmitResponse, Status> {
        // The baseline's request, so that relay and baseline differ only in the emit hop.
        let request = webhook_post(&self.target, &self.signer, &event.id, Bytes::from(event.payload))
            .map_err(|error| Status::invalid_argument(format!("id: {error}")))?;
        let response = self.client.request(request).await.map_err(|error| Status::unavailable(error.to_string()))?;
        let status = response.status();
        response.into_body().collect().await.map_err(|error| Status::unavailable(error.to_string()))?;
        if !status.is_success() {
            return Err(Status::unavailable(format!("the receiver answered {status}")));
        }
        Ok(pb::EmitResponse { id: event.id, deliveries: 1, duplicate: false })
    }
}

#[tonic::async_trait]
impl EmitService for Relay {
    async fn emit(&self, request: Request<pb::EmitRequest>) -> Result<Response<pb::EmitResponse>, Status> {
        Ok(Response::new(self.deliver(request.into_inner()).await?))
    }

    async fn emit_batch(
        &self,
        request: Request<pb::EmitBatchRequest>,
    ) -> Result<Response<pb::EmitBatchResponse>, Status> {
        let sends = request.into_inner().events.into_iter().map(|event| self.deliver(event));
        let results = futures::future::try_join_all(sends).await?;
        Ok(Response::new(pb::EmitBatchResponse { results }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(args.connections).build(connector);
    let relay =
        Relay { client, signer: Signer::new(&[args.secret.unwrap_or_else(Secret::generate)]), target: args.target };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    println!("listening on {}", listener.local_addr()?);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(EmitServiceServer::new(relay))
        .serve_with_incoming(incoming)
        .await
        .context("serving emit")
}
