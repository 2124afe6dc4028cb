//! Scenario 1: owner, event type and endpoint created through the gRPC admin API; events emitted over HTTP
//! (`POST /v1/events`), gRPC `Emit` and `EmitBatch`; the receiver gets each one with the payload verbatim and the
//! documented headers, and the signature verifies with `hookrelay_common::signing::verify` and with the Python
//! `standardwebhooks` package.

use std::time::{SystemTime, UNIX_EPOCH};

use hookrelay_common::proto::v1::{EmitBatchRequest, EmitRequest};
use hookrelay_common::signing::{Secret, SigningError};
use hookrelay_tests::api::post_events_raw;
use hookrelay_tests::python::verify_with_standardwebhooks;
use hookrelay_tests::{DEADLINE, EndpointSpec, Receiver, RecordedRequest, Stack, eventually, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_deliveries_from_http_and_grpc_verify_in_rust_and_python() {
    let mut stack = Stack::start().await;
    let receiver = Receiver::start().await;
    let (endpoint, secret) =
        stack.fixture.create_endpoint(EndpointSpec::new(receiver.url()).header("x-team", "payments")).await;
    assert_eq!(endpoint.owner_id, stack.fixture.owner);
    assert!(endpoint.enabled, "a new endpoint is enabled: {endpoint:?}");
    stack.emit_until_routed(1).await;
    let owner = stack.fixture.owner.clone();
    let event_type = stack.fixture.event_type.clone();

    // HTTP, with an id of our choosing and a payload whose spacing and key order must survive untouched.
    let http_id = unique("order-paid");
    let http_payload = r#"{"amount": 4200,  "currency":"EUR", "nested": {"z": 1, "a": [true, null]}}"#;
    let body = format!(r#"{{"owner":"{owner}","type":"{event_type}","id":"{http_id}","payload":{http_payload}}}"#);
    let answer = post_events_raw(stack.agent.addr(), body).await;
    assert_eq!(answer.status, 202, "POST /v1/events answered {answer:?}");
    assert_eq!(answer.json["id"], http_id.as_str(), "{answer:?}");
    assert_eq!(answer.json["deliveries"], 1, "{answer:?}");

    // gRPC Emit without an id: the agent assigns one.
    let grpc_payload = br#"{"via":"grpc","n":1}"#.to_vec();
    let grpc = stack
        .emitter
        .emit(EmitRequest {
            owner: owner.clone(),
            r#type: event_type.clone(),
            id: String::new(),
            payload: grpc_payload.clone(),
            ..Default::default()
        })
        .await
        .expect("Emit")
        .into_inner();
    assert!(!grpc.id.is_empty(), "the agent assigns an id: {grpc:?}");
    assert_eq!((grpc.deliveries, grpc.duplicate), (1, false), "{grpc:?}");

    // gRPC EmitBatch: answers in request order.
    let batch_ids = [unique("batch-a"), unique("batch-b")];
    let batch_payloads = [br#"{"batch":0}"#.to_vec(), br#"{"batch":1}"#.to_vec()];
    let batch = stack
        .emitter
        .emit_batch(EmitBatchRequest {
            events: batch_ids
                .iter()
                .zip(&batch_payloads)
                .map(|(id, payload)| EmitRequest {
                    owner: owner.clone(),
                    r#type: event_type.clone(),
                    id: id.clone(),
                    payload: payload.clone(),
                    ..Default::default()
                })
                .collect(),
        })
        .await
        .expect("EmitBatch")
        .into_inner();
    let answered: Vec<_> = batch.results.iter().map(|r| (r.id.as_str(), r.deliveries)).collect();
    assert_eq!(answered, vec![(batch_ids[0].as_str(), 1), (batch_ids[1].as_str(), 1)], "{batch:?}");

    let expected = [
        (http_id.clone(), http_payload.as_bytes().to_vec()),
        (grpc.id.clone(), grpc_payload),
        (batch_ids[0].clone(), batch_payloads[0].clone()),
        (batch_ids[1].clone(), batch_payloads[1].clone()),
    ];
    for (id, payload) in &expected {
        let request = eventually(&format!("{id} is delivered"), DEADLINE, async || {
            receiver.success_for(id).ok_or_else(|| receiver.summary())
        })
        .await;
        check_request(&request, id, payload, &event_type, &secret);
        check_with_python(&request, &secret).await;
    }
}

fn check_request(request: &RecordedRequest, id: &str, payload: &[u8], event_type: &str, secret: &str) {
    let context = request.summary();
    assert_eq!(request.method, "POST", "{context}");
    assert_eq!(request.path, "/hook", "{context}");
    assert_eq!(
        request.body.as_ref(),
        payload,
        "the body is the payload verbatim; got {:?}",
        String::from_utf8_lossy(&request.body)
    );
    assert_eq!(request.header("content-type"), Some("application/json"), "{:?}", request.headers);
    let agent = request.header("user-agent").unwrap_or_default();
    assert!(agent.starts_with("hookrelay/"), "user-agent is hookrelay/<version>: {agent:?}");
    assert_eq!(request.webhook_id(), id, "{:?}", request.headers);
    assert_eq!(request.header("hookrelay-event-type"), Some(event_type), "{:?}", request.headers);
    assert_eq!(request.header("hookrelay-attempt"), Some("1"), "{:?}", request.headers);
    assert_eq!(request.header("x-team"), Some("payments"), "the endpoint's custom header: {:?}", request.headers);

    let timestamp: i64 = request
        .header("webhook-timestamp")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("webhook-timestamp is unix seconds: {:?}", request.headers));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs() as i64;
    assert!((now - timestamp).abs() <= 60, "webhook-timestamp {timestamp} is now ({now})");
    let signature = request.header("webhook-signature").unwrap_or_default();
    assert!(signature.starts_with("v1,"), "webhook-signature is v1,<base64>: {signature:?}");

    request.verify_signature(secret).unwrap_or_else(|error| panic!("signature of {context}: {error}"));
    let stranger = Secret::generate().expose();
    assert_eq!(request.verify_signature(&stranger), Err(SigningError::NoMatch), "another secret must not verify");
}

async fn check_with_python(request: &RecordedRequest, secret: &str) {
    let Some(verdict) = verify_with_standardwebhooks(request, secret).await else {
        eprintln!("!!!!! python3 missing: the standardwebhooks check of {} was SKIPPED !!!!!", request.webhook_id());
        return;
    };
    verdict.unwrap_or_else(|error| panic!("standardwebhooks refused {}: {error}", request.summary()));
    // The check is not vacuous: the same request under another secret is refused.
    let stranger = Secret::generate().expose();
    let refused = verify_with_standardwebhooks(request, &stranger).await.expect("python was there a moment ago");
    assert!(refused.is_err(), "standardwebhooks accepted a signature under a random secret");
}
