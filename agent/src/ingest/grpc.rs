//! `hookrelay.v1.EmitService` over the [`Intake`].

use hookrelay_common::proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{EmitRequest, Intake, IntakeError};
use crate::queue::Enqueued;

/// The gRPC emit service.
pub struct EmitService {
    intake: Intake,
}

impl EmitService {
    pub fn new(intake: Intake) -> Self {
        Self { intake }
    }
}

fn to_request(event: pb::EmitRequest) -> EmitRequest {
    EmitRequest {
        owner: event.owner,
        event_type: event.r#type,
        id: event.id,
        occurred_at: event.occurred_at.map(|at| (at.seconds, at.nanos)),
        payload: event.payload.into(),
        payload_unchecked: true,
    }
}

fn to_response(answer: Enqueued) -> pb::EmitResponse {
    pb::EmitResponse { id: answer.event_id, deliveries: answer.deliveries, duplicate: answer.duplicate }
}

impl From<IntakeError> for Status {
    fn from(error: IntakeError) -> Self {
        match &error {
            IntakeError::Invalid(_) => Status::invalid_argument(error.to_string()),
            IntakeError::Unavailable(_) => Status::unavailable(error.to_string()),
            IntakeError::Exhausted(_) => Status::resource_exhausted(error.to_string()),
            IntakeError::Storage(_) => Status::internal(error.to_string()),
        }
    }
}

#[tonic::async_trait]
impl pb::emit_service_server::EmitService for EmitService {
    async fn emit(&self, request: Request<pb::EmitRequest>) -> Result<Response<pb::EmitResponse>, Status> {
        let answers = self.intake.emit(vec![to_request(request.into_inner())], |_, name| name.to_owned()).await?;
        let answer = answers.into_iter().next().ok_or_else(|| Status::internal("queue gave no answer"))?;
        Ok(Response::new(to_response(answer)))
    }

    async fn emit_batch(
        &self,
        request: Request<pb::EmitBatchRequest>,
    ) -> Result<Response<pb::EmitBatchResponse>, Status> {
        let events: Vec<_> = request.into_inner().events.into_iter().map(to_request).collect();
        if events.is_empty() {
            return Err(Status::invalid_argument("events: at least one event is required"));
        }
        let answers = self.intake.emit(events, |index, name| format!("events[{index}].{name}")).await?;
        Ok(Response::new(pb::EmitBatchResponse { results: answers.into_iter().map(to_response).collect() }))
    }
}
