//! Scenario 3: events acknowledged by emit survive a `kill -9` of the agent before they were delivered, and are
//! delivered after it restarts on the same data dir, with the same `webhook-id`.
//!
//! How it is made deterministic: the endpoint allows one delivery in flight and the receiver holds every request
//! unanswered. So when the agent is killed, exactly what the test arranged is true: one delivery is in flight (the
//! receiver has it, unanswered) and every other acknowledged event was never attempted. Both kinds must arrive
//! after the restart.

use std::collections::BTreeSet;
use std::time::Instant;

use futures::future::join_all;
use hookrelay_tests::api::succeeded_event_ids;
use hookrelay_tests::{DEADLINE, EndpointSpec, Receiver, Stack, eventually, unique};

const EVENTS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_events_survive_kill_9_of_the_agent() {
    let mut stack = Stack::start().await;
    let receiver = Receiver::start().await;
    receiver.hold();
    let (_, secret) = stack
        .fixture
        .create_endpoint(
            EndpointSpec::new(receiver.url()).max_in_flight(1).timeout_ms(30_000).schedule_ms(&[50, 50, 50]),
        )
        .await;
    // The probe that shows the routing is the first delivery: the receiver holds it.
    let probe = stack.emit_until_routed(1).await;

    let emits = (0..EVENTS).map(|n| {
        let mut emitter = stack.emitter.clone();
        let request = stack.fixture.emit_request(&unique("durable"), &serde_json::json!({"n": n}));
        async move { emitter.emit(request).await.map(|answer| answer.into_inner()) }
    });
    let mut expected = BTreeSet::from([probe.id.clone()]);
    for answer in join_all(emits).await {
        let answer = answer.expect("Emit is acknowledged");
        assert_eq!(answer.deliveries, 1, "{answer:?}");
        expected.insert(answer.id);
    }

    let in_flight = eventually("a delivery is in flight at the receiver", DEADLINE, async || {
        receiver.requests().first().cloned().ok_or_else(|| "no request yet".to_owned())
    })
    .await;
    stack.agent.kill9();
    let before_kill: BTreeSet<String> = receiver.requests().iter().map(|r| r.webhook_id().to_owned()).collect();
    let never_attempted = expected.difference(&before_kill).count();
    assert!(never_attempted >= EVENTS - 1, "the receiver saw {before_kill:?} before the kill (max_in_flight is 1)");

    let restarted_at = Instant::now();
    receiver.set_status(200);
    receiver.release();
    stack.agent.restart().await;

    let delivered_after_restart = || {
        receiver
            .requests()
            .into_iter()
            .filter(|r| r.received_instant >= restarted_at && r.succeeded())
            .map(|r| r.webhook_id().to_owned())
            .collect::<BTreeSet<_>>()
    };
    eventually("every acknowledged event is delivered after the restart", DEADLINE, async || {
        let delivered = delivered_after_restart();
        let missing: Vec<_> = expected.difference(&delivered).collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("{} missing, e.g. {:?}", missing.len(), &missing[..1])) }
    })
    .await;

    // The delivery cut short by the kill went out again as the same message.
    let again = receiver
        .requests()
        .into_iter()
        .find(|r| r.received_instant >= restarted_at && r.webhook_id() == in_flight.webhook_id())
        .expect("the in-flight delivery is delivered again");
    assert_eq!(again.body, in_flight.body, "same payload");
    assert_eq!(again.header("hookrelay-event-type"), in_flight.header("hookrelay-event-type"));
    again.verify_signature(&secret).unwrap_or_else(|error| panic!("{}: {error}", again.summary()));
    let stray: Vec<_> =
        receiver.requests().iter().map(|r| r.webhook_id().to_owned()).filter(|id| !expected.contains(id)).collect();
    assert!(stray.is_empty(), "deliveries of events nobody emitted: {stray:?}");

    // And control learns every outcome.
    let mut admin = stack.control.admin().await;
    eventually("control lists every delivery as succeeded", DEADLINE, async || {
        let succeeded = succeeded_event_ids(&mut admin, &stack.fixture.owner).await.map_err(|s| format!("{s:?}"))?;
        if succeeded.is_superset(&expected) {
            Ok(())
        } else {
            Err(format!("{} of {} succeeded in control", succeeded.len(), expected.len()))
        }
    })
    .await;
}
