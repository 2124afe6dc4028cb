//! Scenario 2: the receiver answers 500, 500, then 200; the delivery succeeds on the 3rd attempt, every attempt
//! carries the same `webhook-id` and a valid signature, and `GetDelivery` shows the three attempts with their codes.

use std::time::Duration;

use hookrelay_common::proto::v1::{AttemptOutcome, DeliveryStatus, ListDeliveriesRequest};
use hookrelay_tests::api::{get_delivery, list_all_deliveries};
use hookrelay_tests::{
    AgentOpts, DEADLINE, EndpointSpec, Fixture, Receiver, Stack, eventually, spawn_agent_with, spawn_control, unique,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_failures_then_success_is_delivered_on_the_third_attempt() {
    let mut stack = Stack::start().await;
    let receiver = Receiver::start().await;
    let (endpoint, secret) =
        stack.fixture.create_endpoint(EndpointSpec::new(receiver.url()).schedule_ms(&[50, 50, 50])).await;
    // Route first, so the script below meets our event and not a probe.
    let probe = stack.emit_until_routed(1).await;
    eventually("the probe is delivered", DEADLINE, async || {
        receiver.success_for(&probe.id).map(drop).ok_or_else(|| receiver.summary())
    })
    .await;

    receiver.set_script(&[500, 500, 200]);
    let id = unique("flaky");
    let answer = stack
        .emitter
        .emit(stack.fixture.emit_request(&id, &serde_json::json!({"try": "again"})))
        .await
        .expect("Emit")
        .into_inner();
    assert_eq!(answer.deliveries, 1, "{answer:?}");

    let tries = eventually("the 3rd attempt succeeds", DEADLINE, async || {
        let tries = receiver.requests_for(&id);
        if tries.iter().any(|r| r.succeeded()) { Ok(tries) } else { Err(receiver.summary()) }
    })
    .await;
    let seen: Vec<_> = tries.iter().map(|r| (r.attempt(), r.status)).collect();
    assert_eq!(seen, vec![(1, Some(500)), (2, Some(500)), (3, Some(200))], "{}", receiver.summary());
    for pair in tries.windows(2) {
        let gap = pair[1].received_instant - pair[0].received_instant;
        // 50 ms steps with at most 20% jitter: never sooner than 40 ms after the previous try.
        assert!(gap >= Duration::from_millis(39), "retry came {gap:?} after the previous try");
    }
    for attempt in &tries {
        attempt.verify_signature(&secret).unwrap_or_else(|error| panic!("{}: {error}", attempt.summary()));
    }

    let mut admin = stack.control.admin().await;
    let (delivery, attempts) =
        eventually("control shows the delivery succeeded after 3 attempts", DEADLINE, async || {
            let filter = ListDeliveriesRequest { endpoint_id: endpoint.id.clone(), ..Default::default() };
            let listed = list_all_deliveries(&mut admin, filter).await.map_err(|s| format!("{s:?}"))?;
            let Some(delivery) = listed.into_iter().find(|d| d.event_id == id) else {
                return Err(format!("no delivery of {id} listed yet"));
            };
            let got = get_delivery(&mut admin, &delivery.id).await.map_err(|s| format!("{s:?}"))?;
            let delivery = got.delivery.ok_or("GetDelivery without delivery")?;
            if delivery.status == DeliveryStatus::Succeeded as i32 && got.attempts.len() >= 3 {
                Ok((delivery, got.attempts))
            } else {
                Err(format!("{delivery:?} with {} attempts", got.attempts.len()))
            }
        })
        .await;

    assert_eq!(delivery.attempts, 3, "{delivery:?}");
    assert_eq!(delivery.last_status_code, 200, "{delivery:?}");
    assert_eq!(delivery.endpoint_id, endpoint.id, "{delivery:?}");
    assert_eq!(delivery.owner_id, stack.fixture.owner, "{delivery:?}");
    assert_eq!(delivery.event_type, stack.fixture.event_type, "{delivery:?}");
    assert_eq!(delivery.agent, stack.agent.node_name(), "{delivery:?}");
    assert!(delivery.delivered_at.is_some(), "a succeeded delivery has delivered_at: {delivery:?}");

    let summary: Vec<_> = attempts.iter().map(|a| (a.number, a.status_code, a.outcome)).collect();
    assert_eq!(
        summary,
        vec![
            (1, 500, AttemptOutcome::RetryScheduled as i32),
            (2, 500, AttemptOutcome::RetryScheduled as i32),
            (3, 200, AttemptOutcome::Succeeded as i32),
        ],
        "{attempts:#?}"
    );
    for attempt in &attempts {
        assert_eq!(attempt.delivery_id, delivery.id, "{attempt:?}");
        assert!(attempt.started_at.is_some(), "{attempt:?}");
        assert!(!attempt.reason.is_empty(), "every attempt says why it was decided: {attempt:?}");
    }
    assert!(
        attempts[0].response_snippet.contains("test receiver says 500"),
        "the response snippet is kept: {:?}",
        attempts[0].response_snippet
    );
    assert!(attempts[0].next_attempt_at.is_some(), "a retried attempt says when the next comes: {:?}", attempts[0]);
}

/// `--response-snippet-bytes 0`: the attempt is recorded with its status and no byte of what the receiver answered,
/// so an endpoint pointed at an internal service cannot be used to read it through the delivery log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_told_to_keep_no_snippets_records_attempts_without_the_response() {
    let control = spawn_control().await;
    let extra_args = ["--response-snippet-bytes", "0"].map(String::from).to_vec();
    let agent = spawn_agent_with(AgentOpts { extra_args, ..AgentOpts::new(control.url()) }).await;
    let mut fixture = Fixture::new(control.admin().await).await;
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let (endpoint, _) = fixture.create_endpoint(EndpointSpec::new(receiver.url()).schedule_ms(&[60_000])).await;
    let answer =
        hookrelay_tests::api::emit_until_routed(&mut agent.emitter().await, &fixture.owner, &fixture.event_type, 1)
            .await;

    let mut admin = control.admin().await;
    let attempts = eventually("control has the first attempt", DEADLINE, async || {
        let filter = ListDeliveriesRequest { endpoint_id: endpoint.id.clone(), ..Default::default() };
        let listed = list_all_deliveries(&mut admin, filter).await.map_err(|s| format!("{s:?}"))?;
        let delivery = listed.into_iter().find(|d| d.event_id == answer.id).ok_or("not listed yet")?;
        let got = get_delivery(&mut admin, &delivery.id).await.map_err(|s| format!("{s:?}"))?;
        if got.attempts.is_empty() { Err("no attempt yet".to_owned()) } else { Ok(got.attempts) }
    })
    .await;
    assert_eq!(attempts[0].status_code, 500, "{attempts:?}");
    assert_eq!(attempts[0].response_snippet, "", "no snippet is kept: {attempts:?}");
    assert!(receiver.requests_for(&answer.id).iter().any(|r| r.status == Some(500)), "{}", receiver.summary());
}
