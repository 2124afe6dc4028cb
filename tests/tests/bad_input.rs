//! Scenario 7: bad input is refused with a precise error, at emit (gRPC INVALID_ARGUMENT and HTTP 400 naming the
//! field: unknown owner or type, payload not JSON, payload over 256 KiB, id over 128 characters) and at the admin
//! API (subscription to an unknown type, malformed URLs, page size over 100, unknown ids).

use hookrelay_common::ids::{DeliveryId, EndpointId};
use hookrelay_common::proto::v1::{
    DeleteEndpointRequest, EmitRequest, GetDeliveryRequest, GetEndpointRequest, ListDeliveriesRequest,
    ListEndpointsRequest, UpdateEndpointRequest,
};
use hookrelay_tests::api::{HttpAnswer, post_event, post_events_raw};
use hookrelay_tests::{EndpointSpec, Receiver, Stack};
use tonic::Code;

const LIMIT: usize = 256 * 1024;

/// Asserts a gRPC refusal: its code, and a message that contains every one of `needles`.
fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, needles: &[&str]) {
    let status = result.expect_err("the call must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "{code:?} message {:?} does not mention {needle:?}",
            status.message()
        );
    }
}

/// Asserts an HTTP 400 `{"error":{"code":"invalid_argument","field":..,"message":..}}` naming `field`.
fn assert_http_invalid(answer: &HttpAnswer, field: &str, needles: &[&str]) {
    assert_eq!(answer.status, 400, "{answer:?}");
    let error = &answer.json["error"];
    assert_eq!(error["code"], "invalid_argument", "{answer:?}");
    assert_eq!(error["field"], field, "{answer:?}");
    let message = error["message"].as_str().unwrap_or_default();
    for needle in needles {
        assert!(message.contains(needle), "HTTP error message {message:?} does not mention {needle:?}");
    }
}

/// A JSON string payload of exactly `len` bytes.
fn payload_of_len(len: usize) -> Vec<u8> {
    format!("\"{}\"", "x".repeat(len - 2)).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_refuses_bad_events_naming_the_field() {
    let mut stack = Stack::start().await;
    let receiver = Receiver::start().await;
    stack.fixture.create_endpoint(EndpointSpec::new(receiver.url())).await;
    stack.emit_until_routed(1).await;
    let (owner, event_type) = (stack.fixture.owner.clone(), stack.fixture.event_type.clone());
    let addr = stack.agent.addr();
    let emit = |owner: &str, event_type: &str, id: &str, payload: Vec<u8>| EmitRequest {
        owner: owner.to_owned(),
        r#type: event_type.to_owned(),
        id: id.to_owned(),
        payload,
        ..Default::default()
    };

    // Unknown owner.
    let result = stack.emitter.emit(emit("nobody-here", &event_type, "", b"{}".to_vec())).await;
    assert_status(result, Code::InvalidArgument, &["owner", "nobody-here"]);
    let answer =
        post_event(addr, &serde_json::json!({"owner": "nobody-here", "type": event_type, "payload": {}})).await;
    assert_http_invalid(&answer, "owner", &["nobody-here"]);

    // Unknown event type.
    let result = stack.emitter.emit(emit(&owner, "no.such_type", "", b"{}".to_vec())).await;
    assert_status(result, Code::InvalidArgument, &["type", "no.such_type"]);
    let answer = post_event(addr, &serde_json::json!({"owner": owner, "type": "no.such_type", "payload": {}})).await;
    assert_http_invalid(&answer, "type", &["no.such_type"]);

    // Payload that is not JSON (gRPC carries bytes; over HTTP the whole body is then not JSON).
    let result = stack.emitter.emit(emit(&owner, &event_type, "", b"{not json".to_vec())).await;
    assert_status(result, Code::InvalidArgument, &["payload", "JSON"]);
    let answer =
        post_events_raw(addr, format!(r#"{{"owner":"{owner}","type":"{event_type}","payload":{{not json}}"#)).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.json["error"]["code"], "invalid_argument", "{answer:?}");

    // Payload over the limit; exactly the limit is accepted.
    let result = stack.emitter.emit(emit(&owner, &event_type, "", payload_of_len(LIMIT + 1))).await;
    assert_status(result, Code::InvalidArgument, &["payload", &LIMIT.to_string()]);
    let big = String::from_utf8(payload_of_len(LIMIT + 1)).expect("ASCII");
    let answer = post_events_raw(addr, format!(r#"{{"owner":"{owner}","type":"{event_type}","payload":{big}}}"#)).await;
    assert_http_invalid(&answer, "payload", &[&LIMIT.to_string()]);
    let at_limit = stack.emitter.emit(emit(&owner, &event_type, "", payload_of_len(LIMIT))).await;
    assert_eq!(at_limit.expect("a payload of exactly 256 KiB is accepted").get_ref().deliveries, 1);
    let huge = String::from_utf8(payload_of_len(4 * LIMIT)).expect("ASCII");
    let answer =
        post_events_raw(addr, format!(r#"{{"owner":"{owner}","type":"{event_type}","payload":{huge}}}"#)).await;
    assert!([400, 413].contains(&answer.status), "a body far over the limit: {} {:?}", answer.status, answer.json);

    // Id over 128 characters.
    let long_id = "i".repeat(129);
    let result = stack.emitter.emit(emit(&owner, &event_type, &long_id, b"{}".to_vec())).await;
    assert_status(result, Code::InvalidArgument, &["id", "128"]);
    let answer =
        post_event(addr, &serde_json::json!({"owner": owner, "type": event_type, "id": long_id, "payload": {}})).await;
    assert_http_invalid(&answer, "id", &["128"]);

    // Nothing of the above was delivered: only the probe and the 256 KiB event reach the receiver.
    assert!(receiver.requests().iter().all(|r| r.body.len() <= LIMIT), "{}", receiver.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_bad_requests_precisely() {
    let stack = Stack::start().await;
    let mut fixture = stack.fixture;
    let receiver = Receiver::start().await;

    // Subscription to a type that is not in the catalog.
    let spec = EndpointSpec::new(receiver.url()).filters(&[&fixture.event_type.clone(), "card.viewed"]);
    let result = fixture.admin.create_endpoint(fixture.endpoint_request(&spec)).await;
    assert_status(result, Code::InvalidArgument, &["filter_types[1]", "card.viewed"]);

    // Malformed URLs.
    for (url, needles) in [
        ("not a url", &["url", "not a valid absolute URL"][..]),
        ("ftp://127.0.0.1/hook", &["url", "ftp"][..]),
        ("http://user:secret@127.0.0.1/hook", &["url", "credentials"][..]),
        ("http://127.0.0.1/hook#part", &["url", "fragment"][..]),
    ] {
        let result = fixture.admin.create_endpoint(fixture.endpoint_request(&EndpointSpec::new(url))).await;
        assert_status(result, Code::InvalidArgument, needles);
    }
    let (endpoint, _) = fixture.create_endpoint(EndpointSpec::new(receiver.url())).await;
    let result = fixture
        .admin
        .update_endpoint(UpdateEndpointRequest {
            id: endpoint.id.clone(),
            url: Some("https://".to_owned()),
            ..Default::default()
        })
        .await;
    assert_status(result, Code::InvalidArgument, &["url"]);

    // Page size over 100.
    let result = fixture.admin.list_deliveries(ListDeliveriesRequest { page_size: 101, ..Default::default() }).await;
    assert_status(result, Code::InvalidArgument, &["page_size", "100", "101"]);
    let result = fixture.admin.list_endpoints(ListEndpointsRequest { page_size: 101, ..Default::default() }).await;
    assert_status(result, Code::InvalidArgument, &["page_size", "100", "101"]);
    let at_max = fixture.admin.list_deliveries(ListDeliveriesRequest { page_size: 100, ..Default::default() }).await;
    at_max.expect("a page size of 100 is allowed");

    // Unknown (well-formed) ids.
    let unknown = EndpointId::generate().to_string();
    let result = fixture.admin.get_endpoint(GetEndpointRequest { id: unknown.clone() }).await;
    assert_status(result, Code::NotFound, &[&unknown]);
    let result = fixture
        .admin
        .update_endpoint(UpdateEndpointRequest {
            id: unknown.clone(),
            description: Some("x".into()),
            ..Default::default()
        })
        .await;
    assert_status(result, Code::NotFound, &[&unknown]);
    let result = fixture.admin.delete_endpoint(DeleteEndpointRequest { id: unknown.clone() }).await;
    assert_status(result, Code::NotFound, &[&unknown]);
    let unknown_delivery = DeliveryId::generate().to_string();
    let result = fixture.admin.get_delivery(GetDeliveryRequest { id: unknown_delivery.clone() }).await;
    assert_status(result, Code::NotFound, &[&unknown_delivery]);

    // The endpoint that was refused does not exist: only the valid one is listed.
    let listed = fixture
        .admin
        .list_endpoints(ListEndpointsRequest { owner_id: fixture.owner.clone(), ..Default::default() })
        .await
        .expect("ListEndpoints")
        .into_inner()
        .endpoints;
    let ids: Vec<_> = listed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec![endpoint.id.as_str()], "{listed:?}");
}
