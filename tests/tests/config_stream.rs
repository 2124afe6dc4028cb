//! Scenario 5: config changes reach a running agent without a restart (a new endpoint, a disabled endpoint, a
//! changed URL), and `ListAgents` shows the version the agent applied, growing with each change.

use hookrelay_common::proto::v1::{DisableEndpointRequest, UpdateEndpointRequest};
use hookrelay_tests::api::agent_info;
use hookrelay_tests::{DEADLINE, EndpointSpec, Receiver, Stack, eventually, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_a_running_agent_and_list_agents_shows_the_applied_version() {
    let mut stack = Stack::start().await;
    let pid = stack.agent.pid();
    let (first, second, third) = (Receiver::start().await, Receiver::start().await, Receiver::start().await);
    let (endpoint_a, _) = stack.fixture.create_endpoint(EndpointSpec::new(first.url())).await;
    stack.emit_until_routed(1).await;
    let mut admin = stack.control.admin().await;
    let node = stack.agent.node_name().to_owned();

    let agent =
        eventually("ListAgents shows the agent with an applied version", DEADLINE, async || {
            match agent_info(&mut admin, &node).await {
                Ok(Some(agent)) if agent.applied_version > 0 && agent.connected => Ok(agent),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    assert!(!agent.agent_version.is_empty(), "{agent:?}");
    assert!(agent.last_seen.is_some(), "{agent:?}");
    assert!(agent.last_error.is_empty(), "{agent:?}");
    let mut version = agent.applied_version;

    // 1. A new endpoint: events now fan out to both.
    let (endpoint_b, _) = stack.fixture.create_endpoint(EndpointSpec::new(second.url())).await;
    version = wait_applied_after(&mut stack, &node, version).await;
    let both = stack.emit_until_routed(2).await;
    for receiver in [&first, &second] {
        eventually(&format!("{} reaches {}", both.id, receiver.url()), DEADLINE, async || {
            receiver.success_for(&both.id).map(drop).ok_or_else(|| receiver.summary())
        })
        .await;
    }

    // 2. Endpoint A disabled: only B gets new events.
    stack
        .fixture
        .admin
        .disable_endpoint(DisableEndpointRequest { id: endpoint_a.id.clone(), reason: "test".to_owned() })
        .await
        .expect("DisableEndpoint");
    version = wait_applied_after(&mut stack, &node, version).await;
    let only_b = stack.emit_until_routed(1).await;
    eventually(&format!("{} reaches B", only_b.id), DEADLINE, async || {
        second.success_for(&only_b.id).map(drop).ok_or_else(|| second.summary())
    })
    .await;
    assert!(first.requests_for(&only_b.id).is_empty(), "a disabled endpoint got {}", first.summary());

    // 3. Endpoint B's URL changed to the third receiver: events go there, not to the old URL.
    stack
        .fixture
        .admin
        .update_endpoint(UpdateEndpointRequest {
            id: endpoint_b.id.clone(),
            url: Some(third.url()),
            ..Default::default()
        })
        .await
        .expect("UpdateEndpoint url");
    version = wait_applied_after(&mut stack, &node, version).await;
    let moved = unique("moved");
    let answer = stack
        .emitter
        .emit(stack.fixture.emit_request(&moved, &serde_json::json!({"moved": true})))
        .await
        .expect("Emit")
        .into_inner();
    assert_eq!(answer.deliveries, 1, "{answer:?}");
    eventually(&format!("{moved} reaches the new URL"), DEADLINE, async || {
        third.success_for(&moved).map(drop).ok_or_else(|| third.summary())
    })
    .await;
    assert!(second.requests_for(&moved).is_empty(), "the old URL got {}", second.summary());
    assert!(first.requests_for(&moved).is_empty(), "the disabled endpoint got {}", first.summary());

    assert_eq!(stack.agent.pid(), pid, "the agent was not restarted");
    let last = agent_info(&mut admin, &node).await.expect("ListAgents").expect("our agent");
    assert_eq!(last.applied_version, version, "{last:?}");
    assert!(last.connected, "{last:?}");
}

/// Waits until `ListAgents` shows the agent acknowledged a version above `previous`, and returns it.
async fn wait_applied_after(stack: &mut Stack, node: &str, previous: u64) -> u64 {
    let mut admin = stack.control.admin().await;
    eventually(&format!("the agent applies a config version above {previous}"), DEADLINE, async || {
        match agent_info(&mut admin, node).await {
            Ok(Some(agent)) if agent.applied_version > previous => Ok(agent.applied_version),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}
