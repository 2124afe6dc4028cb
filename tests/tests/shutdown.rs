//! SIGTERM: the agent stops intake at once, lets the attempt in flight finish within the grace period, records its
//! outcome and exits 0; after a restart that delivery is not sent again, and the outcome reaches control.

use std::process::Command;

use hookrelay_common::proto::v1::{DeliveryStatus, ListDeliveriesRequest};
use hookrelay_tests::api::list_all_deliveries;
use hookrelay_tests::{DEADLINE, EndpointSpec, Receiver, Stack, eventually, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_attempt_in_flight_and_exits_cleanly() {
    let mut stack = Stack::start().await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = stack.fixture.create_endpoint(EndpointSpec::new(receiver.url())).await;
    let probe = stack.emit_until_routed(1).await;
    eventually("the probe is delivered", DEADLINE, async || {
        receiver.success_for(&probe.id).map(drop).ok_or_else(|| receiver.summary())
    })
    .await;

    receiver.hold();
    let id = unique("in-flight");
    stack.emitter.emit(stack.fixture.emit_request(&id, &serde_json::json!({"n": 1}))).await.expect("Emit");
    eventually("the attempt is in flight at the receiver", DEADLINE, async || {
        if receiver.requests_for(&id).is_empty() { Err(receiver.summary()) } else { Ok(()) }
    })
    .await;

    let pid = stack.agent.pid().expect("agent running");
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    let address = stack.agent.addr();
    eventually("the agent stops accepting emits", DEADLINE, async || match std::net::TcpStream::connect(address) {
        Ok(_) => Err("still accepting connections".to_owned()),
        Err(_) => Ok(()),
    })
    .await;
    receiver.release();
    // A second SIGTERM changes nothing for an agent already stopping; `terminate` also waits for the exit.
    let status = stack.agent.terminate().await;
    assert!(status.success(), "agent exit status {status}\n{}", stack.agent.stderr_report(40));
    assert!(receiver.success_for(&id).is_some(), "{}", receiver.summary());

    stack.agent.restart().await;
    stack.reconnect_emitter().await;
    let after = stack.emit_until_routed(1).await;
    eventually("a new event is delivered after the restart", DEADLINE, async || {
        receiver.success_for(&after.id).map(drop).ok_or_else(|| receiver.summary())
    })
    .await;
    let mut admin = stack.control.admin().await;
    eventually("control records the finished attempt once", DEADLINE, async || {
        let filter = ListDeliveriesRequest { endpoint_id: endpoint.id.clone(), ..Default::default() };
        let listed = list_all_deliveries(&mut admin, filter).await.map_err(|s| format!("{s:?}"))?;
        let ours: Vec<_> = listed.iter().filter(|d| d.event_id == id).collect();
        match ours.as_slice() {
            [delivery] if delivery.status == DeliveryStatus::Succeeded as i32 && delivery.attempts == 1 => Ok(()),
            _ => Err(format!("{ours:?}")),
        }
    })
    .await;
    assert_eq!(receiver.requests_for(&id).len(), 1, "delivered again after restart: {}", receiver.summary());
}
