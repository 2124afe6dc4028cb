//! Server reflection describes exactly the services a process serves: the agent's emit port lists EmitService (and
//! health and reflection), never control's AdminService or AgentService, and control lists those two but not
//! EmitService; `grpcurl -plaintext ADDR list` shows what answers on that port.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use hookrelay_tests::{api, spawn_agent, spawn_control};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION: &str = "grpc.reflection.v1.ServerReflection";

async fn ask(addr: SocketAddr, request: MessageRequest) -> Result<MessageResponse, tonic::Status> {
    let mut client = ServerReflectionClient::new(api::connect(addr).await);
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
    let mut answers =
        client.server_reflection_info(futures::stream::iter([request])).await.expect("reflection").into_inner();
    let answer: ServerReflectionResponse = answers.message().await?.expect("an answer");
    Ok(answer.message_response.expect("a message"))
}

async fn list_services(addr: SocketAddr) -> BTreeSet<String> {
    match ask(addr, MessageRequest::ListServices(String::new())).await.expect("ListServices") {
        MessageResponse::ListServicesResponse(list) => list.service.into_iter().map(|service| service.name).collect(),
        other => panic!("ListServices answered {other:?}"),
    }
}

/// Whether reflection finds a descriptor for `symbol`.
async fn describes(addr: SocketAddr, symbol: &str) -> bool {
    match ask(addr, MessageRequest::FileContainingSymbol(symbol.to_owned())).await {
        Ok(MessageResponse::FileDescriptorResponse(files)) => !files.file_descriptor_proto.is_empty(),
        Ok(MessageResponse::ErrorResponse(_)) => false,
        Err(status) if status.code() == tonic::Code::NotFound => false,
        other => panic!("FileContainingSymbol answered {other:?}"),
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_process_lists_only_the_services_it_serves() {
    let control = spawn_control().await;
    let agent = spawn_agent(&control).await;

    assert_eq!(list_services(agent.addr()).await, set(&["hookrelay.v1.EmitService", HEALTH, REFLECTION]));
    assert_eq!(
        list_services(control.addr()).await,
        set(&["hookrelay.v1.AdminService", "hookrelay.v1.AgentService", HEALTH, REFLECTION])
    );

    assert!(describes(agent.addr(), "hookrelay.v1.EmitService").await);
    assert!(!describes(agent.addr(), "hookrelay.v1.AdminService").await);
    assert!(!describes(agent.addr(), "hookrelay.v1.AgentService").await);
    assert!(describes(control.addr(), "hookrelay.v1.AdminService").await);
    assert!(!describes(control.addr(), "hookrelay.v1.EmitService").await);
    // Messages stay describable, since served services' files may use them.
    assert!(describes(control.addr(), "hookrelay.v1.Endpoint").await);
}
