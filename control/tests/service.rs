//! Control served in-process through `hookrelay_control::run`, exercised over real gRPC connections: admin calls,
//! error statuses, the Watch stream, attempt reports and a shutdown with a stream still open.

mod support;

use std::time::Duration;

use hookrelay_common::ids::{DeliveryId, ReportId};
use hookrelay_common::proto::v1 as pb;
use pb::admin_service_client::AdminServiceClient;
use pb::watch_request::Kind as RequestKind;
use pb::watch_response::Kind as ResponseKind;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

use support::start_control;

async fn seed(admin: &mut AdminServiceClient<Channel>) -> pb::CreateEndpointResponse {
    admin.create_owner(pb::CreateOwnerRequest { id: "acme".into(), name: "Acme".into() }).await.unwrap();
    for name in ["payment.settled", "payment.failed"] {
        let request = pb::CreateEventTypeRequest { name: name.into(), description: String::new() };
        admin.create_event_type(request).await.unwrap();
    }
    admin.create_endpoint(endpoint_request(&["payment.*"])).await.unwrap().into_inner()
}

fn endpoint_request(filters: &[&str]) -> pb::CreateEndpointRequest {
    pb::CreateEndpointRequest {
        owner_id: "acme".into(),
        url: "https://example.com/hook".into(),
        filter_types: filters.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    }
}

fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, message: &str) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message);
}

#[tokio::test]
async fn admin_calls_answer_precise_statuses() {
    let control = start_control(|_, config| config.max_endpoints_per_owner = 2).await;
    let mut admin = control.admin().await;
    let created = seed(&mut admin).await;
    assert!(created.secret.starts_with("whsec_"));
    let endpoint = created.endpoint.unwrap();

    let fetched = admin.get_endpoint(pb::GetEndpointRequest { id: endpoint.id.clone() }).await.unwrap();
    assert_eq!(fetched.into_inner(), endpoint);

    assert_status(
        admin.create_endpoint(endpoint_request(&["payment.settled", "card.viewed"])).await,
        Code::InvalidArgument,
        "filter_types[1]: event type \"card.viewed\" is not in the catalog",
    );
    assert_status(
        admin.create_owner(pb::CreateOwnerRequest { id: "acme".into(), name: String::new() }).await,
        Code::AlreadyExists,
        "owner \"acme\" already exists",
    );
    assert_status(
        admin.list_owners(pb::ListOwnersRequest { page_size: 101, page_token: String::new() }).await,
        Code::InvalidArgument,
        "page_size: at most 100, got 101",
    );
    let absent = hookrelay_common::ids::EndpointId::generate();
    assert_status(
        admin.get_endpoint(pb::GetEndpointRequest { id: absent.to_string() }).await,
        Code::NotFound,
        &format!("endpoint {absent} not found"),
    );
    let malformed = admin.get_endpoint(pb::GetEndpointRequest { id: "ep_1".into() }).await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    let insecure =
        pb::CreateEndpointRequest { url: "http://example.com/".into(), insecure: true, ..endpoint_request(&["*"]) };
    let refused = admin.create_endpoint(insecure).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().starts_with("url: insecure (http) endpoints are not permitted"), "{refused:?}");

    admin.create_endpoint(endpoint_request(&["*"])).await.unwrap();
    let limit = admin.create_endpoint(endpoint_request(&["*"])).await.unwrap_err();
    assert_eq!(limit.code(), Code::FailedPrecondition);
    let refused = admin.delete_owner(pb::DeleteOwnerRequest { id: "acme".into() }).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains(&endpoint.id), "{refused:?}");

    let disabled = admin
        .disable_endpoint(pb::DisableEndpointRequest { id: endpoint.id.clone(), reason: "maintenance".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!disabled.enabled);
    assert_eq!(disabled.disabled_reason, "maintenance");
    let updated = admin
        .update_endpoint(pb::UpdateEndpointRequest {
            id: endpoint.id.clone(),
            filter_types: Some(pb::StringList { values: vec!["payment.failed".into()] }),
            timeout_ms: Some(2_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((updated.filter_types.as_slice(), updated.timeout_ms), (&["payment.failed".to_string()][..], 2_000));
    assert_eq!(updated.description, endpoint.description);
    control.stop().await;
}

async fn next(responses: &mut tonic::Streaming<pb::WatchResponse>) -> ResponseKind {
    let response = timeout(Duration::from_secs(5), responses.next()).await.expect("a response in time");
    response.expect("an open stream").unwrap().kind.unwrap()
}

fn hello(node: &str) -> pb::WatchRequest {
    pb::WatchRequest {
        kind: Some(RequestKind::Hello(pb::AgentHello {
            node_name: node.into(),
            agent_version: "0.1.0".into(),
            applied_version: 0,
        })),
    }
}

#[tokio::test]
async fn agents_watch_config_and_report_attempts() {
    let control = start_control(|_, _| {}).await;
    let mut admin = control.admin().await;
    let created = seed(&mut admin).await;
    let endpoint = created.endpoint.unwrap();

    let mut agent = control.agent().await;
    let (requests, inbound) = mpsc::channel(8);
    requests.send(hello("node-a")).await.unwrap();
    let mut responses = agent.watch(ReceiverStream::new(inbound)).await.unwrap().into_inner();

    let ResponseKind::Snapshot(snapshot) = next(&mut responses).await else { panic!("snapshot first") };
    assert_eq!(snapshot.version, 4);
    assert_eq!(snapshot.endpoints[0].secrets, vec![created.secret.clone()]);
    requests.send(pb::WatchRequest { kind: Some(RequestKind::Ack(pb::ConfigAck { version: 4 })) }).await.unwrap();

    admin
        .disable_endpoint(pb::DisableEndpointRequest { id: endpoint.id.clone(), reason: String::new() })
        .await
        .unwrap();
    let ResponseKind::Delta(delta) = next(&mut responses).await else { panic!("then a delta") };
    assert_eq!((delta.base_version, delta.version), (4, 5));
    assert!(!delta.upsert_endpoints[0].endpoint.as_ref().unwrap().enabled);
    assert_eq!(delta.upsert_endpoints[0].secrets, vec![created.secret.clone()]);
    requests.send(pb::WatchRequest { kind: Some(RequestKind::Ack(pb::ConfigAck { version: 5 })) }).await.unwrap();

    let delivery_id = DeliveryId::generate().to_string();
    let report = |number: u32, status: pb::DeliveryStatus| pb::AttemptReport {
        report_id: ReportId::generate().to_string(),
        delivery: Some(pb::Delivery {
            id: delivery_id.clone(),
            owner_id: "acme".into(),
            endpoint_id: endpoint.id.clone(),
            event_type: "payment.settled".into(),
            status: status as i32,
            attempts: number,
            ..Default::default()
        }),
        attempt: Some(pb::Attempt { number, ..Default::default() }),
        ..Default::default()
    };
    let first = report(1, pb::DeliveryStatus::Pending);
    let batch = vec![first.clone(), report(2, pb::DeliveryStatus::Succeeded)];
    let request = pb::ReportAttemptsRequest { node_name: "node-a".into(), reports: batch };
    let answer = agent.report_attempts(request).await.unwrap().into_inner();
    assert_eq!((answer.stored, answer.duplicates), (2, 0));
    let request = pb::ReportAttemptsRequest { node_name: "node-a".into(), reports: vec![first] };
    assert_eq!(agent.report_attempts(request).await.unwrap().into_inner().duplicates, 1);
    // A malformed report is set aside with its reason; the call still stores the others.
    let malformed = pb::AttemptReport { report_id: "rpt_nope".into(), ..report(3, pb::DeliveryStatus::Succeeded) };
    let request = pb::ReportAttemptsRequest {
        node_name: "node-a".into(),
        reports: vec![malformed, report(3, pb::DeliveryStatus::Succeeded)],
    };
    let answer = agent.report_attempts(request).await.unwrap().into_inner();
    assert_eq!((answer.stored, answer.duplicates, answer.rejected.len()), (1, 0, 1), "{answer:?}");
    assert_eq!(answer.rejected[0].index, 0);
    assert!(answer.rejected[0].reason.starts_with("reports[0].report_id: "), "{answer:?}");

    let listed = admin
        .list_deliveries(pb::ListDeliveriesRequest { endpoint_id: endpoint.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.deliveries.len(), 1);
    assert_eq!(listed.deliveries[0].status, pb::DeliveryStatus::Succeeded as i32);
    assert_eq!(listed.deliveries[0].agent, "node-a");
    let got = admin.get_delivery(pb::GetDeliveryRequest { id: delivery_id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.attempts.iter().map(|a| a.number).collect::<Vec<_>>(), [1, 2, 3]);

    // Acks are recorded as the stream goes; poll until the last one is in.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let agents = admin.list_agents(pb::ListAgentsRequest {}).await.unwrap().into_inner().agents;
        let node = agents.iter().find(|a| a.node_name == "node-a").expect("node-a is listed");
        if node.applied_version == 5 {
            assert!(node.connected);
            assert_eq!(node.agent_version, "0.1.0");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "ack not recorded: {node:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Stopping ends the open stream instead of waiting for the agent to hang up.
    let stopped = control.stop();
    stopped.await;
    let end = timeout(Duration::from_secs(5), responses.next()).await.expect("the stream ends");
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
    drop(requests);
}

#[tokio::test]
async fn a_watch_must_start_with_hello() {
    let control = start_control(|_, _| {}).await;
    let mut agent = control.agent().await;
    let first = pb::WatchRequest { kind: Some(RequestKind::Status(pb::AgentStatus { queue_depth: 1 })) };
    let mut responses = agent.watch(tokio_stream::iter(vec![first])).await.unwrap().into_inner();
    let status = timeout(Duration::from_secs(5), responses.next()).await.unwrap().unwrap().unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "the first message of a Watch stream must be an AgentHello");

    let too_many = pb::ReportAttemptsRequest { node_name: "n".into(), reports: vec![Default::default(); 1001] };
    assert_status(
        agent.report_attempts(too_many).await,
        Code::InvalidArgument,
        "reports: at most 1000 reports per call, got 1001",
    );
    control.stop().await;
}
