//! Scenario 4: with control stopped, the agent keeps accepting and delivering from its cached config, also after
//! its own restart; once control is back on the same address, every outcome appears in `ListDeliveries` exactly
//! once (one delivery per event, with exactly the attempts the receiver saw).
//!
//! Also: an agent that never had a config refuses emits (UNAVAILABLE / 503) instead of accepting events it cannot
//! route.

use std::collections::{BTreeMap, BTreeSet};

use hookrelay_common::proto::v1::DeliveryStatus;
use hookrelay_tests::api::{deliveries_of_owner, get_delivery, post_event};
use hookrelay_tests::{AgentOpts, DEADLINE, EndpointSpec, Receiver, Stack, eventually, spawn_agent_with, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_delivers_while_control_is_down_and_reports_once_it_is_back() {
    let mut stack = Stack::start().await;
    let receiver = Receiver::start().await;
    stack.fixture.create_endpoint(EndpointSpec::new(receiver.url()).schedule_ms(&[50, 50, 50])).await;
    let probe = stack.emit_until_routed(1).await;
    let mut expected = BTreeSet::from([probe.id.clone()]);
    eventually("the probe is delivered", DEADLINE, async || {
        receiver.success_for(&probe.id).map(drop).ok_or_else(|| receiver.summary())
    })
    .await;

    let status = stack.control.terminate().await;
    assert!(status.success(), "control exits 0 on SIGTERM, got {status}\n{}", stack.control.stderr_report(40));

    // Two failures while control is away, so retries (and their reports) happen during the outage too.
    receiver.set_script(&[500, 500]);
    for n in 0..3 {
        let id = unique("outage-grpc");
        let answer = stack
            .emitter
            .emit(stack.fixture.emit_request(&id, &serde_json::json!({"n": n})))
            .await
            .unwrap_or_else(|status| panic!("Emit while control is down: {status:?}"));
        assert_eq!(answer.get_ref().deliveries, 1, "{:?}", answer.get_ref());
        expected.insert(id);
    }
    for n in 0..2 {
        let id = unique("outage-http");
        let event = serde_json::json!({
            "owner": stack.fixture.owner, "type": stack.fixture.event_type, "id": id, "payload": {"n": n}
        });
        let answer = post_event(stack.agent.addr(), &event).await;
        assert_eq!((answer.status, &answer.json["deliveries"]), (202, &serde_json::json!(1)), "{answer:?}");
        expected.insert(id);
    }
    wait_delivered(&receiver, &expected).await;

    // The agent restarts while control is still down: its cached config must be enough.
    let status = stack.agent.terminate().await;
    assert!(status.success(), "agent exits 0 on SIGTERM, got {status}\n{}", stack.agent.stderr_report(40));
    stack.agent.restart().await;
    stack.reconnect_emitter().await;
    for n in 0..3 {
        let id = unique("outage-restarted");
        let answer = stack
            .emitter
            .emit(stack.fixture.emit_request(&id, &serde_json::json!({"after_restart": n})))
            .await
            .unwrap_or_else(|status| {
                panic!("Emit after an agent restart without control: {status:?}\n{}", stack.agent.stderr_report(30))
            });
        assert_eq!(answer.get_ref().deliveries, 1, "{:?}", answer.get_ref());
        expected.insert(id);
    }
    wait_delivered(&receiver, &expected).await;

    stack.control.restart().await;
    let mut admin = stack.control.admin().await;
    let requests_per_id: BTreeMap<String, Vec<u32>> = expected
        .iter()
        .map(|id| (id.clone(), receiver.requests_for(id).iter().map(|r| r.status.unwrap_or(0) as u32).collect()))
        .collect();
    eventually("control shows every outcome exactly once", DEADLINE, async || {
        let listed = deliveries_of_owner(&mut admin, &stack.fixture.owner).await.map_err(|s| format!("{s:?}"))?;
        let mut per_event: BTreeMap<&str, usize> = BTreeMap::new();
        for delivery in &listed {
            *per_event.entry(delivery.event_id.as_str()).or_default() += 1;
        }
        let doubled: Vec<_> = per_event.iter().filter(|(_, n)| **n > 1).collect();
        assert!(doubled.is_empty(), "events listed more than once: {doubled:?}");
        let unknown: Vec<_> = per_event.keys().filter(|id| !expected.contains(**id)).collect();
        assert!(unknown.is_empty(), "deliveries of events nobody emitted: {unknown:?}");
        let pending: Vec<_> = listed
            .iter()
            .filter(|d| d.status != DeliveryStatus::Succeeded as i32)
            .map(|d| (d.event_id.as_str(), d.status, d.attempts))
            .collect();
        if listed.len() < expected.len() || !pending.is_empty() {
            return Err(format!("{} of {} listed; not succeeded yet: {pending:?}", listed.len(), expected.len()));
        }
        for delivery in &listed {
            let got = get_delivery(&mut admin, &delivery.id).await.map_err(|s| format!("{s:?}"))?;
            let codes: Vec<u32> = got.attempts.iter().map(|a| a.status_code).collect();
            let seen = &requests_per_id[&delivery.event_id];
            if codes.len() < seen.len() {
                return Err(format!("{}: attempts {codes:?} so far, receiver saw {seen:?}", delivery.event_id));
            }
            assert_eq!(&codes, seen, "attempts of {} in control vs at the receiver", delivery.event_id);
            assert_eq!(delivery.attempts as usize, seen.len(), "{delivery:?}");
        }
        Ok(())
    })
    .await;
    assert!(
        requests_per_id.values().filter(|codes| codes.contains(&500)).count() >= 1,
        "some delivery was retried during the outage: {requests_per_id:?}"
    );
}

async fn wait_delivered(receiver: &Receiver, expected: &BTreeSet<String>) {
    eventually("every event emitted so far is delivered", DEADLINE, async || {
        let delivered = receiver.succeeded_ids();
        let missing: Vec<_> = expected.difference(&delivered).collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("missing {missing:?}; {}", receiver.summary())) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_without_any_config_refuses_emits() {
    // A "control" that never answers: the port stays bound (so no other process can take it) but nothing accepts
    // gRPC on it, so the agent never gets a config.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let nowhere = silent.local_addr().expect("addr");
    let agent = spawn_agent_with(AgentOpts::new(format!("http://{nowhere}"))).await;
    let mut emitter = agent.emitter().await;
    let request = hookrelay_tests::api::emit_request("acme", "payment.settled", "", &serde_json::json!({}));
    let status = emitter.emit(request).await.expect_err("an agent without config must refuse");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    let event = serde_json::json!({"owner": "acme", "type": "payment.settled", "payload": {}});
    let answer = post_event(agent.addr(), &event).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.json["error"]["code"], "unavailable", "{answer:?}");
    drop(silent);
}
