//! Deleting an endpoint cancels every delivery still pending for it, however large its backlog (the agent cancels in
//! bounded batches, each batch leasing the next), and control records each one as cancelled.

use hookrelay_common::proto::v1::{DeleteEndpointRequest, DeliveryStatus, EmitBatchRequest, ListDeliveriesRequest};
use hookrelay_tests::api::{agent_info, list_all_deliveries};
use hookrelay_tests::{DEADLINE, EndpointSpec, Receiver, Stack, eventually, unique};

/// More than two cancel batches of the agent (256 each).
const BACKLOG: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_endpoint_cancels_its_whole_backlog() {
    let mut stack = Stack::start().await;
    let receiver = Receiver::start().await;
    receiver.set_status(503);
    // One failed try each at most, then a retry far away: the backlog stays pending (and the circuit opens).
    let spec = EndpointSpec::new(receiver.url()).schedule_ms(&[600_000]);
    let (endpoint, _) = stack.fixture.create_endpoint(spec).await;
    stack.emit_until_routed(1).await;

    let ids: Vec<String> = (0..BACKLOG).map(|_| unique("doomed")).collect();
    for chunk in ids.chunks(100) {
        let events = chunk.iter().map(|id| stack.fixture.emit_request(id, &serde_json::json!({"id": id}))).collect();
        let answers = stack.emitter.emit_batch(EmitBatchRequest { events }).await.expect("EmitBatch").into_inner();
        assert!(answers.results.iter().all(|answer| answer.deliveries == 1), "{answers:?}");
    }

    let mut admin = stack.control.admin().await;
    admin.delete_endpoint(DeleteEndpointRequest { id: endpoint.id.clone() }).await.expect("DeleteEndpoint");

    let owner = stack.fixture.owner.clone();
    let cancelled = eventually("control lists every emitted delivery as cancelled", DEADLINE, async || {
        let filter = ListDeliveriesRequest {
            owner_id: owner.clone(),
            status: DeliveryStatus::Cancelled as i32,
            ..Default::default()
        };
        let listed = list_all_deliveries(&mut admin, filter).await.map_err(|s| format!("{s:?}"))?;
        let doomed = listed.iter().filter(|d| d.event_id.starts_with("doomed")).count();
        if doomed == BACKLOG { Ok(listed) } else { Err(format!("{doomed} of {BACKLOG} cancelled")) }
    })
    .await;
    assert!(cancelled.iter().all(|d| d.endpoint_id == endpoint.id));
    let node = stack.agent.node_name().to_owned();
    eventually("the agent's queue is empty", DEADLINE, async || {
        let info = agent_info(&mut admin, &node).await.map_err(|s| format!("{s:?}"))?.ok_or("agent not listed")?;
        if info.queue_depth == 0 { Ok(()) } else { Err(format!("queue depth {}", info.queue_depth)) }
    })
    .await;
}
