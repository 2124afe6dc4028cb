//! `AgentService`: the config stream and attempt reports.

use std::sync::Arc;

use hookrelay_common::ids::EndpointId;
use hookrelay_common::proto::v1 as pb;
use pb::agent_service_server::AgentService;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Metrics;
use crate::store::Store;
use crate::validate;
use crate::watch::{ConfigHub, WatchStream};

/// The agent API over a store and the config hub.
pub struct AgentApi {
    store: Arc<dyn Store>,
    hub: ConfigHub,
    metrics: Arc<Metrics>,
}

impl AgentApi {
    /// The agent API; `metrics` counts the reports it ingests.
    pub fn new(store: Arc<dyn Store>, hub: ConfigHub, metrics: Arc<Metrics>) -> Self {
        Self { store, hub, metrics }
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
        let request = request.into_inner();
        let disable_requests: Vec<(String, String)> = request
            .reports
            .iter()
            .filter(|report| !report.disable_endpoint.is_empty())
            .filter_map(|report| Some((report.delivery.as_ref()?.endpoint_id.clone(), report.disable_endpoint.clone())))
            .collect();
        let (node_name, reports, rejected) = validate::reports(request)?;
        if let Some(first) = rejected.first() {
            tracing::error!(node_name, rejected = rejected.len(), first = %first.reason, "malformed attempt reports set aside");
        }
        let outcome = self.store.ingest_reports(&node_name, reports).await?;
        self.metrics.reports_ingested(outcome.stored, outcome.duplicates);
        for (endpoint_id, reason) in disable_requests {
            // The reports are stored: failing the call would only make the agent send them again, for ever if the
            // failure lasts. The agent asks again with its next report about that endpoint.
            if let Err(status) = self.disable_on_agent_request(&node_name, &endpoint_id, reason).await {
                tracing::error!(node_name, %endpoint_id, %status, "disabling an endpoint at an agent's request failed");
            }
        }
        Ok(Response::new(pb::ReportAttemptsResponse {
            stored: outcome.stored,
            duplicates: outcome.duplicates,
            rejected,
        }))
    }
}

impl AgentApi {
    /// Disables an endpoint an agent reported as gone or failing for too long; a no-op if it is disabled already or
    /// was deleted meanwhile. Repeated reports change nothing, so a replayed batch is harmless.
    async fn disable_on_agent_request(&self, node_name: &str, endpoint_id: &str, reason: String) -> Result<(), Status> {
        let Ok(id) = EndpointId::parse(endpoint_id) else { return Ok(()) };
        let change = move |endpoint: &mut pb::Endpoint| -> crate::error::Result<()> {
            if endpoint.enabled {
                endpoint.enabled = false;
                endpoint.disabled_reason = reason;
            }
            Ok(())
        };
        match self.store.update_endpoint(&id, Box::new(change)).await {
            Ok(endpoint) => {
                tracing::warn!(%id, node_name, reason = %endpoint.disabled_reason, "endpoint disabled at an agent's request");
                Ok(())
            }
            Err(crate::error::Error::NotFound(_)) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}
