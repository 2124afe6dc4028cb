//! Scenario 7: bad input is refused with a precise error, at emit (gRPC INVALID_ARGUMENT and HTTP 400 naming the
//! field: unknown owner or type, payload not JSON or not UTF-8, payload over 256 KiB, id over 128 characters,
//! occurred_at out of range; HTTP 415 for a body not sent as application/json) and at the admin API (subscription to
//! an unknown type, malformed URLs or none without a host, page size over 100, unknown ids), and a protobuf string
//! that is not UTF-8 is INVALID_ARGUMENT on every service of both binaries.

use hookrelay_common::ids::{DeliveryId, EndpointId};
use hookrelay_common::proto::v1::{
    DeleteEndpointRequest, EmitBatchRequest, EmitRequest, GetDeliveryRequest, GetEndpointRequest,
    ListDeliveriesRequest, ListEndpointsRequest, UpdateEndpointRequest,
};
use hookrelay_tests::api::{HttpAnswer, connect, post_event, post_events_raw};
use hookrelay_tests::{DEADLINE, EndpointSpec, Receiver, Stack};
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
    let listed = fixture.list_endpoints().await;
    let ids: Vec<_> = listed.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec![endpoint.id.as_str()], "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_refuses_payloads_that_are_not_utf8_naming_the_offset_on_both_routes() {
    let mut stack = Stack::start().await;
    let receiver = Receiver::start().await;
    stack.fixture.create_endpoint(EndpointSpec::new(receiver.url())).await;
    stack.emit_until_routed(1).await;
    let (owner, event_type) = (stack.fixture.owner.clone(), stack.fixture.event_type.clone());
    let emit = |payload: &[u8]| EmitRequest {
        owner: owner.clone(),
        r#type: event_type.clone(),
        payload: payload.to_vec(),
        ..Default::default()
    };

    for (payload, byte) in [(&b"{\"a\":\"\xc3\x28\"}"[..], "0xc3"), (&b"{\"s\":\"\xff\xfe\"}"[..], "0xff")] {
        let result = stack.emitter.emit(emit(payload)).await;
        assert_status(result, Code::InvalidArgument, &["payload: not valid UTF-8", byte, "byte offset 6"]);
        let batch = EmitBatchRequest { events: vec![emit(b"{}"), emit(payload)] };
        let result = stack.emitter.emit_batch(batch).await;
        assert_status(result, Code::InvalidArgument, &["events[1].payload: not valid UTF-8", "byte offset 6"]);

        // The same bytes over HTTP: the body is checked by the same function, so the offset is the body's.
        let mut body = format!(r#"{{"owner":"{owner}","type":"{event_type}","payload":"#).into_bytes();
        let offset = body.len() + 6;
        body.extend_from_slice(payload);
        body.push(b'}');
        let answer = post_events_raw(stack.agent.addr(), body).await;
        assert_http_invalid(&answer, "body", &["not valid UTF-8", byte, &format!("byte offset {offset}")]);
    }
    // Nothing of it was delivered: only the probe reached the receiver, and it is valid UTF-8.
    assert!(receiver.requests().iter().all(|r| std::str::from_utf8(&r.body).is_ok()), "{}", receiver.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_refuses_occurred_at_out_of_range_naming_the_field_and_the_range() {
    let mut stack = Stack::start().await;
    stack.emit_until_routed(0).await;
    let (owner, event_type) = (stack.fixture.owner.clone(), stack.fixture.event_type.clone());
    let emit = |seconds: i64, nanos: i32| EmitRequest {
        owner: owner.clone(),
        r#type: event_type.clone(),
        occurred_at: Some(prost_types::Timestamp { seconds, nanos }),
        payload: b"{}".to_vec(),
        ..Default::default()
    };
    for (seconds, nanos, field, range) in [
        (-1, 0, "occurred_at.seconds", "accepted are 0 to 253402300799 (1970-01-01T00:00:00Z to 9999-12-31T23:59:59"),
        (i64::MAX, 0, "occurred_at.seconds", "accepted are 0 to 253402300799"),
        (0, -1, "occurred_at.nanos", "accepted are 0 to 999999999"),
        (0, 2_000_000_000, "occurred_at.nanos", "accepted are 0 to 999999999"),
    ] {
        let result = stack.emitter.emit(emit(seconds, nanos)).await;
        let value = if field.ends_with("seconds") { seconds.to_string() } else { nanos.to_string() };
        assert_status(result, Code::InvalidArgument, &[field, &format!(": {value} is out of range"), range]);
        let result = stack.emitter.emit_batch(EmitBatchRequest { events: vec![emit(seconds, nanos)] }).await;
        assert_status(result, Code::InvalidArgument, &[&format!("events[0].{field}"), range]);
    }
    stack.emitter.emit(emit(1_767_323_045, 999_999_999)).await.expect("an occurred_at in range is accepted");

    // HTTP states the same range; its RFC 3339 parser reads no time before the epoch.
    let answer = post_event(
        stack.agent.addr(),
        &serde_json::json!({"owner": owner, "type": event_type, "occurred_at": "1969-12-31T23:59:59Z", "payload": {}}),
    )
    .await;
    assert_http_invalid(
        &answer,
        "occurred_at",
        &["is out of range", "accepted are 1970-01-01T00:00:00Z to 9999-12-31T"],
    );
}

/// `POST /v1/events` with `content_type` (none when `None`).
async fn post_with_content_type(agent: std::net::SocketAddr, content_type: Option<&str>, body: String) -> HttpAnswer {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut request = http::Request::post(format!("http://{agent}/v1/events"));
    if let Some(content_type) = content_type {
        request = request.header(http::header::CONTENT_TYPE, content_type);
    }
    let request = request.body(http_body_util::Full::new(bytes::Bytes::from(body))).expect("a valid request");
    let response = tokio::time::timeout(DEADLINE, client.request(request)).await.expect("an answer").expect("HTTP");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("the body").to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    HttpAnswer { status, body, json }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_emit_takes_application_json_only() {
    let mut stack = Stack::start().await;
    stack.emit_until_routed(0).await;
    let body = format!(r#"{{"owner":"{}","type":"{}","payload":{{}}}}"#, stack.fixture.owner, stack.fixture.event_type);
    let addr = stack.agent.addr();
    for accepted in ["application/json", "application/json; charset=utf-8", "Application/JSON"] {
        let answer = post_with_content_type(addr, Some(accepted), body.clone()).await;
        assert_eq!(answer.status, 202, "{accepted}: {answer:?}");
    }
    // curl -d sends application/x-www-form-urlencoded.
    for refused in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let answer = post_with_content_type(addr, refused, body.clone()).await;
        assert_eq!(answer.status, 415, "{refused:?}: {answer:?}");
        assert_eq!(answer.json["error"]["code"], "unsupported_media_type", "{answer:?}");
        let message = answer.json["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("send content-type: application/json"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_without_a_host_is_refused() {
    let stack = Stack::start().await;
    let mut fixture = stack.fixture;
    for url in ["https:///nohost", "https:/nohost", "http:///nohost/hook"] {
        let result = fixture.admin.create_endpoint(fixture.endpoint_request(&EndpointSpec::new(url))).await;
        assert_status(result, Code::InvalidArgument, &["url: host is required"]);
    }
    let (endpoint, _) = fixture.create_endpoint(EndpointSpec::new("https://example.com/hook")).await;
    let update = UpdateEndpointRequest { id: endpoint.id, url: Some("https:///nohost".into()), ..Default::default() };
    assert_status(fixture.admin.update_endpoint(update).await, Code::InvalidArgument, &["url: host is required"]);
}

/// Sends `message`, protobuf bytes as they are, to the unary method at `path` and returns the refusal.
async fn raw_call(addr: std::net::SocketAddr, path: &'static str, message: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(connect(addr).await);
    grpc.ready().await.expect("the channel is ready");
    let request = tonic::Request::new(bytes::Bytes::from(message));
    let answer = grpc.unary(request, http::uri::PathAndQuery::from_static(path), RawCodec).await;
    answer.expect_err("the call must be refused")
}

/// Protobuf field `tag` of wire type 2 (string, bytes) holding `value` (shorter than 128 bytes).
fn length_delimited(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut field = vec![(tag << 3) | 2, u8::try_from(value.len()).expect("a short value")];
    field.extend_from_slice(value);
    field
}

/// A codec that sends bytes as they are and ignores the answer's body: for messages no generated client would send.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: bytes::Bytes, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put(buf, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        let remaining = bytes::Buf::remaining(buf);
        bytes::Buf::advance(buf, remaining);
        Ok(Some(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_string_field_that_is_not_utf8_is_invalid_argument_on_every_service() {
    let stack = Stack::start().await;
    let bad = b"\xc3\x28";
    let cases = [
        (stack.agent.addr(), "/hookrelay.v1.EmitService/Emit", "EmitRequest.owner"),
        (stack.agent.addr(), "/hookrelay.v1.EmitService/EmitBatch", "EmitRequest.owner"),
        (stack.control.addr(), "/hookrelay.v1.AdminService/CreateOwner", "CreateOwnerRequest.id"),
        (stack.control.addr(), "/hookrelay.v1.AdminService/GetEndpoint", "GetEndpointRequest.id"),
        (stack.control.addr(), "/hookrelay.v1.AgentService/ReportAttempts", "ReportAttemptsRequest.node_name"),
    ];
    for (addr, path, field) in cases {
        let message = match path {
            // EmitBatchRequest.events (1) holding one EmitRequest whose owner (1) is not UTF-8.
            "/hookrelay.v1.EmitService/EmitBatch" => length_delimited(1, &length_delimited(1, bad)),
            _ => length_delimited(1, bad),
        };
        let status = raw_call(addr, path, message).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        for needle in [field, "invalid string value: data is not UTF-8 encoded"] {
            assert!(status.message().contains(needle), "{path}: {:?} lacks {needle:?}", status.message());
        }
    }
}
