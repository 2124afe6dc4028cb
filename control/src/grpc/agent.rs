//! `AgentService`: the config stream and attempt reports.

use std::sync::Arc;

use hookrelay_common::proto::v1 as pb;
use pb::agent_service_server::AgentService;
use tonic::{Request, Response, Status, Streaming};

use crate::store::Store;
use crate::validate;
use crate::watch::{ConfigHub, WatchStream};

/// The agent API over a store and the config hub.
pub struct AgentApi {
    store: Arc<dyn Store>,
    hub: ConfigHub,
}

impl AgentApi {
    /// The agent API.
    pub fn new(store: Arc<dyn Store>, hub: ConfigHub) -> Self {
        Self { store, hub }
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<Streaming<pb::WatchRequest>>) -> Result<Response<WatchStream>, Status> {
        // Answer at once and read the hello in the session, so a client that waits for the response before it
        // sends its first message does not deadlock.
        Ok(Response::new(self.hub.open(request.into_inner())))
    }

    async fn report_attempts(
        &self,
        request: Request<pb::ReportAttemptsRequest>,
    ) -> Result<Response<pb::ReportAttemptsResponse>, Status> {
        let (node_name, reports) = validate::reports(request.into_inner())?;
        let outcome = self.store.ingest_reports(&node_name, reports).await?;
        Ok(Response::new(pb::ReportAttemptsResponse { stored: outcome.stored, duplicates: outcome.duplicates }))
    }
}
