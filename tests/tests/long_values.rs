//! Every error quotes at most a short prefix of what the caller sent: each string field of each request type, emit
//! (gRPC and HTTP) and admin, holding 100 KiB, is refused with its usual status and a message under 1 KiB. A whole
//! value quoted back would not fit a gRPC status (clients cap its header, and see RESOURCE_EXHAUSTED instead of the
//! error), nor make a sensible HTTP error body.

use std::future::Future;
use std::pin::Pin;

use hookrelay_common::ids::{DeliveryId, ReportId};
use hookrelay_common::proto::v1::agent_service_client::AgentServiceClient;
use hookrelay_common::proto::v1::*;
use hookrelay_tests::api::post_events_raw;
use hookrelay_tests::{EndpointSpec, Stack};
use tonic::Code;

/// The longest error message accepted.
const SHORT: usize = 1024;

fn long() -> String {
    "x".repeat(100 * 1024)
}

type Call<'a> = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send + 'a>>;

/// Drops the answer, keeping the refusal.
fn call<'a, T: Send + 'a>(
    future: impl Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'a,
) -> Call<'a> {
    Box::pin(async move { future.await.map(drop) })
}

/// A call of `method` on a clone of the admin client `admin`.
macro_rules! admin_call {
    ($admin:expr, $method:ident, $request:expr) => {{
        let mut client = $admin.clone();
        let request = $request;
        call(async move { client.$method(request).await })
    }};
}

async fn assert_short(what: &str, call: Call<'_>, code: Code) {
    let status = call.await.err().unwrap_or_else(|| panic!("{what}: the call must be refused"));
    assert_eq!(status.code(), code, "{what}: {:?}", &status.message()[..status.message().len().min(300)]);
    assert!(status.message().len() < SHORT, "{what}: a message of {} bytes", status.message().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_errors_quote_a_short_prefix() {
    let mut stack = Stack::start().await;
    stack.emit_until_routed(0).await;
    let (owner, event_type) = (stack.fixture.owner.clone(), stack.fixture.event_type.clone());
    let event = EmitRequest { owner, r#type: event_type, payload: b"{}".to_vec(), ..Default::default() };
    let cases = [
        ("owner", EmitRequest { owner: long(), ..event.clone() }),
        ("type", EmitRequest { r#type: long(), ..event.clone() }),
        ("id", EmitRequest { id: long(), ..event.clone() }),
        ("payload", EmitRequest { payload: format!("[{}", long()).into_bytes(), ..event.clone() }),
    ];
    for (field, request) in cases {
        let mut emitter = stack.emitter.clone();
        let single = request.clone();
        assert_short(&format!("Emit {field}"), call(async move { emitter.emit(single).await }), Code::InvalidArgument)
            .await;
        let mut emitter = stack.emitter.clone();
        let batch = EmitBatchRequest { events: vec![request] };
        assert_short(
            &format!("EmitBatch {field}"),
            call(async move { emitter.emit_batch(batch).await }),
            Code::InvalidArgument,
        )
        .await;
    }

    // Over HTTP: each field of the envelope, an unknown field's name, and a value of the wrong type.
    let (owner, event_type) = (&stack.fixture.owner, &stack.fixture.event_type);
    let long = long();
    let bodies = [
        ("owner", format!(r#"{{"owner":"{long}","type":"{event_type}","payload":{{}}}}"#)),
        ("type", format!(r#"{{"owner":"{owner}","type":"{long}","payload":{{}}}}"#)),
        ("id", format!(r#"{{"owner":"{owner}","type":"{event_type}","id":"{long}","payload":{{}}}}"#)),
        ("occurred_at", format!(r#"{{"owner":"{owner}","type":"{event_type}","occurred_at":"{long}","payload":1}}"#)),
        ("payload", format!(r#"{{"owner":"{owner}","type":"{event_type}","payload":"{long}"}}"#)),
        ("an unknown field", format!(r#"{{"owner":"{owner}","type":"{event_type}","payload":1,"{long}":1}}"#)),
        ("a wrong type", format!(r#"{{"owner":"{owner}","type":["{long}"],"payload":1}}"#)),
    ];
    for (what, body) in bodies {
        let answer = post_events_raw(stack.agent.addr(), body).await;
        // A 100 KiB string payload is valid (the limit is 256 KiB): it is accepted.
        let expected = if what == "payload" { 202 } else { 400 };
        assert_eq!(answer.status, expected, "POST {what}: {:?}", &answer.body[..answer.body.len().min(300)]);
        assert!(answer.body.len() < SHORT, "POST {what}: an answer of {} bytes", answer.body.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_errors_quote_a_short_prefix() {
    let stack = Stack::start().await;
    let mut fixture = stack.fixture;
    let (endpoint, _) = fixture.create_endpoint(EndpointSpec::new("https://example.com/hook")).await;
    let (id, owner, event_type) = (endpoint.id.clone(), fixture.owner.clone(), fixture.event_type.clone());
    let create = fixture.endpoint_request(&EndpointSpec::new("https://example.com/other"));
    let admin = fixture.admin.clone();
    let headers = |name: String, value: String| std::collections::HashMap::from([(name, value)]);
    let update = UpdateEndpointRequest { id: id.clone(), ..Default::default() };
    let invalid = Code::InvalidArgument;

    let cases: Vec<(&str, Call<'_>, Code)> = {
        vec![
            (
                "CreateOwner.id",
                admin_call!(admin, create_owner, CreateOwnerRequest { id: long(), name: String::new() }),
                invalid,
            ),
            (
                "CreateOwner.name",
                admin_call!(admin, create_owner, CreateOwnerRequest { id: "n1".into(), name: long() }),
                invalid,
            ),
            ("GetOwner.id", admin_call!(admin, get_owner, GetOwnerRequest { id: long() }), invalid),
            (
                "ListOwners.page_token",
                admin_call!(admin, list_owners, ListOwnersRequest { page_size: 0, page_token: long() }),
                invalid,
            ),
            (
                "UpdateOwner.id",
                admin_call!(admin, update_owner, UpdateOwnerRequest { id: long(), name: None }),
                invalid,
            ),
            (
                "UpdateOwner.name",
                admin_call!(admin, update_owner, UpdateOwnerRequest { id: owner.clone(), name: Some(long()) }),
                invalid,
            ),
            ("DeleteOwner.id", admin_call!(admin, delete_owner, DeleteOwnerRequest { id: long() }), invalid),
            (
                "CreateEventType.name",
                admin_call!(
                    admin,
                    create_event_type,
                    CreateEventTypeRequest { name: long(), description: String::new() }
                ),
                invalid,
            ),
            (
                "CreateEventType.description",
                admin_call!(
                    admin,
                    create_event_type,
                    CreateEventTypeRequest { name: "n.one".into(), description: long() }
                ),
                invalid,
            ),
            ("GetEventType.name", admin_call!(admin, get_event_type, GetEventTypeRequest { name: long() }), invalid),
            (
                "ListEventTypes.page_token",
                admin_call!(admin, list_event_types, ListEventTypesRequest { page_size: 0, page_token: long() }),
                invalid,
            ),
            (
                "UpdateEventType.name",
                admin_call!(admin, update_event_type, UpdateEventTypeRequest { name: long(), description: None }),
                invalid,
            ),
            (
                "UpdateEventType.description",
                admin_call!(
                    admin,
                    update_event_type,
                    UpdateEventTypeRequest { name: event_type.clone(), description: Some(long()) }
                ),
                invalid,
            ),
            (
                "DeleteEventType.name",
                admin_call!(admin, delete_event_type, DeleteEventTypeRequest { name: long() }),
                invalid,
            ),
            (
                "CreateEndpoint.owner_id",
                admin_call!(admin, create_endpoint, CreateEndpointRequest { owner_id: long(), ..create.clone() }),
                invalid,
            ),
            (
                "CreateEndpoint.url",
                admin_call!(admin, create_endpoint, CreateEndpointRequest { url: long(), ..create.clone() }),
                invalid,
            ),
            (
                "CreateEndpoint.description",
                admin_call!(admin, create_endpoint, CreateEndpointRequest { description: long(), ..create.clone() }),
                invalid,
            ),
            (
                "CreateEndpoint.filter_types",
                admin_call!(
                    admin,
                    create_endpoint,
                    CreateEndpointRequest { filter_types: vec![long()], ..create.clone() }
                ),
                invalid,
            ),
            (
                "CreateEndpoint.headers name",
                admin_call!(
                    admin,
                    create_endpoint,
                    CreateEndpointRequest { headers: headers(long(), "v".into()), ..create.clone() }
                ),
                invalid,
            ),
            (
                "CreateEndpoint.headers value",
                admin_call!(
                    admin,
                    create_endpoint,
                    CreateEndpointRequest { headers: headers("x-a".into(), long()), ..create.clone() }
                ),
                invalid,
            ),
            ("GetEndpoint.id", admin_call!(admin, get_endpoint, GetEndpointRequest { id: long() }), invalid),
            (
                "ListEndpoints.owner_id",
                admin_call!(admin, list_endpoints, ListEndpointsRequest { owner_id: long(), ..Default::default() }),
                invalid,
            ),
            (
                "ListEndpoints.page_token",
                admin_call!(admin, list_endpoints, ListEndpointsRequest { page_token: long(), ..Default::default() }),
                invalid,
            ),
            (
                "UpdateEndpoint.id",
                admin_call!(admin, update_endpoint, UpdateEndpointRequest { id: long(), ..update.clone() }),
                invalid,
            ),
            (
                "UpdateEndpoint.url",
                admin_call!(admin, update_endpoint, UpdateEndpointRequest { url: Some(long()), ..update.clone() }),
                invalid,
            ),
            (
                "UpdateEndpoint.description",
                admin_call!(
                    admin,
                    update_endpoint,
                    UpdateEndpointRequest { description: Some(long()), ..update.clone() }
                ),
                invalid,
            ),
            (
                "UpdateEndpoint.filter_types",
                admin_call!(
                    admin,
                    update_endpoint,
                    UpdateEndpointRequest { filter_types: Some(StringList { values: vec![long()] }), ..update.clone() }
                ),
                invalid,
            ),
            (
                "UpdateEndpoint.headers name",
                admin_call!(
                    admin,
                    update_endpoint,
                    UpdateEndpointRequest {
                        headers: Some(HeaderMap { values: headers(long(), "v".into()) }),
                        ..update.clone()
                    }
                ),
                invalid,
            ),
            (
                "UpdateEndpoint.headers value",
                admin_call!(
                    admin,
                    update_endpoint,
                    UpdateEndpointRequest {
                        headers: Some(HeaderMap { values: headers("x-a".into(), long()) }),
                        ..update.clone()
                    }
                ),
                invalid,
            ),
            ("DeleteEndpoint.id", admin_call!(admin, delete_endpoint, DeleteEndpointRequest { id: long() }), invalid),
            ("EnableEndpoint.id", admin_call!(admin, enable_endpoint, EnableEndpointRequest { id: long() }), invalid),
            (
                "DisableEndpoint.id",
                admin_call!(admin, disable_endpoint, DisableEndpointRequest { id: long(), reason: String::new() }),
                invalid,
            ),
            (
                "DisableEndpoint.reason",
                admin_call!(admin, disable_endpoint, DisableEndpointRequest { id: id.clone(), reason: long() }),
                invalid,
            ),
            (
                "RotateSecret.id",
                admin_call!(admin, rotate_secret, RotateEndpointSecretRequest { id: long(), overlap_seconds: 0 }),
                invalid,
            ),
            ("VerifyEndpoint.id", admin_call!(admin, verify_endpoint, VerifyEndpointRequest { id: long() }), invalid),
            (
                "ListDeliveries.owner_id",
                admin_call!(admin, list_deliveries, ListDeliveriesRequest { owner_id: long(), ..Default::default() }),
                invalid,
            ),
            (
                "ListDeliveries.endpoint_id",
                admin_call!(
                    admin,
                    list_deliveries,
                    ListDeliveriesRequest { endpoint_id: long(), ..Default::default() }
                ),
                invalid,
            ),
            (
                "ListDeliveries.event_type",
                admin_call!(admin, list_deliveries, ListDeliveriesRequest { event_type: long(), ..Default::default() }),
                invalid,
            ),
            (
                "ListDeliveries.page_token",
                admin_call!(admin, list_deliveries, ListDeliveriesRequest { page_token: long(), ..Default::default() }),
                invalid,
            ),
            ("GetDelivery.id", admin_call!(admin, get_delivery, GetDeliveryRequest { id: long() }), invalid),
            ("ReplayDelivery.id", admin_call!(admin, replay_delivery, ReplayDeliveryRequest { id: long() }), invalid),
            (
                "RecoverFailed.endpoint_id",
                admin_call!(admin, recover_failed, RecoverFailedRequest { endpoint_id: long(), since: None }),
                invalid,
            ),
        ]
    };
    for (what, call, code) in cases {
        assert_short(what, call, code).await;
    }

    // AgentService: a bad node name refuses the call; a bad report is set aside with a reason, which is short too.
    let mut agent = AgentServiceClient::new(hookrelay_tests::api::connect(stack.control.addr()).await);
    let request = ReportAttemptsRequest { node_name: long(), reports: Vec::new() };
    let mut refused = agent.clone();
    assert_short("ReportAttempts.node_name", call(async move { refused.report_attempts(request).await }), invalid)
        .await;
    let delivery = |id: String| Some(Delivery { id, ..Default::default() });
    let attempt = |delivery_id: String| Some(Attempt { number: 1, delivery_id, ..Default::default() });
    let reports = vec![
        AttemptReport {
            report_id: long(),
            delivery: delivery(DeliveryId::generate().to_string()),
            ..Default::default()
        },
        AttemptReport { report_id: ReportId::generate().to_string(), delivery: delivery(long()), ..Default::default() },
        AttemptReport {
            report_id: ReportId::generate().to_string(),
            delivery: delivery(DeliveryId::generate().to_string()),
            attempt: attempt(long()),
            ..Default::default()
        },
    ];
    let answer = agent
        .report_attempts(ReportAttemptsRequest { node_name: "long-values".into(), reports })
        .await
        .expect("ReportAttempts answers")
        .into_inner();
    assert_eq!(answer.rejected.len(), 3, "{answer:?}");
    for rejected in &answer.rejected {
        assert!(
            rejected.reason.len() < SHORT,
            "report {}: a reason of {} bytes",
            rejected.index,
            rejected.reason.len()
        );
    }
}
