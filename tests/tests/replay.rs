//! Replay: failed deliveries are delivered again from the payload their agent retains, as a new series of attempts
//! with the same `webhook-id` (one by `ReplayDelivery`, all of an endpoint by `RecoverFailed`); deliveries still
//! pending are refused, and unknown or malformed ids get precise errors.

use hookrelay_common::proto::v1::{
    Delivery, DeliveryStatus, ListDeliveriesRequest, RecoverFailedRequest, ReplayDeliveryRequest,
};
use hookrelay_tests::api::{get_delivery, list_all_deliveries};
use hookrelay_tests::{DEADLINE, EndpointSpec, Receiver, Stack, eventually, unique};
use tonic::Code;

async fn deliveries_with_status(
    stack: &Stack,
    endpoint_id: &str,
    status: DeliveryStatus,
    expected: usize,
) -> Vec<Delivery> {
    let mut admin = stack.control.admin().await;
    eventually(&format!("{expected} deliveries of {endpoint_id} are {status:?}"), DEADLINE, async || {
        let filter =
            ListDeliveriesRequest { endpoint_id: endpoint_id.to_owned(), status: status as i32, ..Default::default() };
        let listed = list_all_deliveries(&mut admin, filter).await.map_err(|s| format!("{s:?}"))?;
        if listed.len() == expected { Ok(listed) } else { Err(format!("{} listed: {listed:?}", listed.len())) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_replayed_with_the_same_webhook_id() {
    let mut stack = Stack::start().await;
    let receiver = Receiver::start().await;
    let (endpoint, secret) = stack.fixture.create_endpoint(EndpointSpec::new(receiver.url()).schedule_ms(&[50])).await;
    let probe = stack.emit_until_routed(1).await;
    eventually("the probe is delivered", DEADLINE, async || {
        receiver.success_for(&probe.id).map(drop).ok_or_else(|| receiver.summary())
    })
    .await;

    receiver.set_status(500);
    let ids: Vec<String> = (0..3).map(|_| unique("replayed")).collect();
    for id in &ids {
        let request = stack.fixture.emit_request(id, &serde_json::json!({"order": id}));
        stack.emitter.emit(request).await.expect("Emit");
    }
    let failed = deliveries_with_status(&stack, &endpoint.id, DeliveryStatus::Failed, 3).await;
    assert!(failed.iter().all(|d| d.payload_ref != 0), "the agent reports where it holds each payload: {failed:?}");
    receiver.set_status(200);

    let mut admin = stack.control.admin().await;
    let first = failed.iter().find(|d| d.event_id == ids[0]).expect("the first event's delivery");
    let answer = admin.replay_delivery(ReplayDeliveryRequest { id: first.id.clone() }).await.expect("ReplayDelivery");
    assert_eq!(answer.into_inner().delivery.map(|d| d.id), Some(first.id.clone()));
    let replayed = eventually("the replayed delivery arrives", DEADLINE, async || {
        receiver.success_for(&ids[0]).ok_or_else(|| receiver.summary())
    })
    .await;
    assert_eq!(replayed.attempt(), 3, "attempt numbers continue after the two failed ones");
    replayed.verify_signature(&secret).expect("the replay is signed");
    eventually("control shows the replayed delivery succeeded", DEADLINE, async || {
        let got = get_delivery(&mut admin, &first.id).await.map_err(|s| format!("{s:?}"))?;
        let delivery = got.delivery.ok_or("no delivery")?;
        let codes: Vec<u32> = got.attempts.iter().map(|a| a.status_code).collect();
        if delivery.status == DeliveryStatus::Succeeded as i32 && codes == [500, 500, 200] {
            Ok(())
        } else {
            Err(format!("{delivery:?} attempts {codes:?}"))
        }
    })
    .await;

    let recovered = admin
        .recover_failed(RecoverFailedRequest { endpoint_id: endpoint.id.clone(), since: None })
        .await
        .expect("RecoverFailed")
        .into_inner();
    assert_eq!((recovered.requested, recovered.skipped, recovered.unreplayable), (2, 0, 0), "{recovered:?}");
    for id in &ids[1..] {
        eventually(&format!("{id} is recovered"), DEADLINE, async || {
            receiver.success_for(id).map(drop).ok_or_else(|| receiver.summary())
        })
        .await;
    }
    deliveries_with_status(&stack, &endpoint.id, DeliveryStatus::Failed, 0).await;
    for id in &ids {
        assert!(receiver.requests_for(id).iter().all(|r| r.webhook_id() == id.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_unknown_and_malformed_replays_are_refused() {
    let mut stack = Stack::start().await;
    let receiver = Receiver::start().await;
    receiver.set_status(503);
    // One try, then a retry a minute later: the delivery stays pending for the whole test.
    let (endpoint, _) = stack.fixture.create_endpoint(EndpointSpec::new(receiver.url()).schedule_ms(&[60_000])).await;
    let pending = stack.emit_until_routed(1).await;
    let listed = deliveries_with_status(&stack, &endpoint.id, DeliveryStatus::Pending, 1).await;
    assert_eq!(listed[0].event_id, pending.id);

    let mut admin = stack.control.admin().await;
    let refused = admin.replay_delivery(ReplayDeliveryRequest { id: listed[0].id.clone() }).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("only finished deliveries can be replayed"), "{refused:?}");

    let unknown = format!("dlv_{}", "0".repeat(32));
    let missing = admin.replay_delivery(ReplayDeliveryRequest { id: unknown }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let malformed = admin.replay_delivery(ReplayDeliveryRequest { id: "nope".into() }).await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");
    assert!(malformed.message().starts_with("id: "), "{malformed:?}");
    let no_endpoint = admin
        .recover_failed(RecoverFailedRequest { endpoint_id: format!("ep_{}", "0".repeat(32)), since: None })
        .await
        .unwrap_err();
    assert_eq!(no_endpoint.code(), Code::NotFound, "{no_endpoint:?}");
}
