//! Scenario 6: re-emitting an id (over gRPC or HTTP, even with another payload) answers like the first emit, marked
//! duplicate, and creates no second delivery; emitting the same content without an id twice is two events.

use std::collections::BTreeSet;

use hookrelay_common::proto::v1::EmitRequest;
use hookrelay_tests::api::{deliveries_of_owner, post_event, succeeded_event_ids};
use hookrelay_tests::{DEADLINE, EndpointSpec, Receiver, Stack, eventually, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_emitting_an_id_creates_no_second_delivery() {
    let mut stack = Stack::start().await;
    let receiver = Receiver::start().await;
    stack.fixture.create_endpoint(EndpointSpec::new(receiver.url())).await;
    let probe = stack.emit_until_routed(1).await;

    let id = unique("order-42-paid");
    let payload = serde_json::json!({"order": 42, "status": "paid"});
    let first = stack.emitter.emit(stack.fixture.emit_request(&id, &payload)).await.expect("Emit").into_inner();
    assert_eq!((first.id.as_str(), first.deliveries, first.duplicate), (id.as_str(), 1, false), "{first:?}");

    let again = stack.emitter.emit(stack.fixture.emit_request(&id, &payload)).await.expect("Emit").into_inner();
    assert_eq!((again.id.as_str(), again.deliveries, again.duplicate), (id.as_str(), 1, true), "{again:?}");

    let other_payload = stack
        .emitter
        .emit(stack.fixture.emit_request(&id, &serde_json::json!({"order": 42, "status": "changed"})))
        .await
        .expect("Emit")
        .into_inner();
    assert_eq!((other_payload.deliveries, other_payload.duplicate), (1, true), "{other_payload:?}");

    let event = serde_json::json!({
        "owner": stack.fixture.owner, "type": stack.fixture.event_type, "id": id, "payload": payload
    });
    let http = post_event(stack.agent.addr(), &event).await;
    assert_eq!(http.status, 202, "{http:?}");
    assert_eq!(http.json["id"], id.as_str(), "{http:?}");
    assert_eq!(http.json["deliveries"], 1, "{http:?}");
    assert_eq!(http.json["duplicate"], true, "{http:?}");

    // A recurrence with identical content but no id is a new event each time.
    let recurring = |stack: &Stack| EmitRequest { id: String::new(), ..stack.fixture.emit_request("", &payload) };
    let r1 = stack.emitter.emit(recurring(&stack)).await.expect("Emit").into_inner();
    let r2 = stack.emitter.emit(recurring(&stack)).await.expect("Emit").into_inner();
    assert_ne!(r1.id, r2.id, "two emits without id are two events");
    assert!(!r1.duplicate && !r2.duplicate, "{r1:?} {r2:?}");

    // A sentinel emitted after the duplicates; once everything is delivered and reported, count.
    let sentinel = unique("sentinel");
    stack.emitter.emit(stack.fixture.emit_request(&sentinel, &serde_json::json!({}))).await.expect("Emit");
    let expected: BTreeSet<String> =
        [probe.id.clone(), id.clone(), r1.id.clone(), r2.id.clone(), sentinel.clone()].into();
    let mut admin = stack.control.admin().await;
    eventually("every event is delivered and recorded in control", DEADLINE, async || {
        let delivered = receiver.succeeded_ids();
        if !delivered.is_superset(&expected) {
            return Err(format!("receiver: {}", receiver.summary()));
        }
        let succeeded = succeeded_event_ids(&mut admin, &stack.fixture.owner).await.map_err(|s| format!("{s:?}"))?;
        if succeeded.is_superset(&expected) { Ok(()) } else { Err(format!("control lists as succeeded {succeeded:?}")) }
    })
    .await;

    assert_eq!(receiver.requests_for(&id).len(), 1, "one request for {id}: {}", receiver.summary());
    let listed = deliveries_of_owner(&mut admin, &stack.fixture.owner).await.expect("ListDeliveries");
    let of_id: Vec<_> = listed.iter().filter(|d| d.event_id == id).collect();
    assert_eq!(of_id.len(), 1, "one delivery of {id} in control: {of_id:?}");
    let body = &receiver.requests_for(&id)[0].body;
    assert_eq!(serde_json::from_slice::<serde_json::Value>(body).ok(), Some(payload), "the first payload won");
}
