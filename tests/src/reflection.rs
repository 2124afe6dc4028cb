//! gRPC server reflection as `grpcurl` uses it: one request on the v1 `ServerReflectionInfo` stream, and the list
//! of services a port serves.

use std::collections::BTreeSet;

use tonic::transport::Channel;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// Sends `request` and returns the one answer.
pub async fn ask(channel: Channel, request: MessageRequest) -> Result<MessageResponse, tonic::Status> {
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
    let mut answers =
        client.server_reflection_info(futures::stream::iter([request])).await.expect("reflection").into_inner();
    let answer: ServerReflectionResponse = answers.message().await?.expect("an answer");
    Ok(answer.message_response.expect("a message"))
}

/// The names of the services reflection lists (what `grpcurl list` prints).
pub async fn list_services(channel: Channel) -> BTreeSet<String> {
    match ask(channel, MessageRequest::ListServices(String::new())).await.expect("ListServices") {
        MessageResponse::ListServicesResponse(list) => list.service.into_iter().map(|service| service.name).collect(),
        other => panic!("ListServices answered {other:?}"),
    }
}
