//! Server reflection describes exactly the services a process serves: the agent's emit port lists EmitService (and
//! health and reflection), never control's AdminService or AgentService, and control lists those two but not
//! EmitService; `grpcurl -plaintext ADDR list` shows what answers on that port.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use hookrelay_tests::reflection::ask;
use hookrelay_tests::{api, spawn_agent, spawn_control};
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION: &str = "grpc.reflection.v1.ServerReflection";

async fn list_services(addr: SocketAddr) -> BTreeSet<String> {
    hookrelay_tests::reflection::list_services(api::connect(addr).await).await
}

/// Whether reflection finds a descriptor for `symbol`.
async fn describes(addr: SocketAddr, symbol: &str) -> bool {
    match ask(api::connect(addr).await, MessageRequest::FileContainingSymbol(symbol.to_owned())).await {
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
