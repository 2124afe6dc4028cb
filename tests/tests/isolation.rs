//! Isolation: an endpoint that never answers holds only its own in-flight slots; a healthy endpoint of the same agent
//! keeps receiving every event promptly. (Throughput against the healthy endpoint alone is the benchmark's job.)

use hookrelay_tests::{DEADLINE, EndpointSpec, Receiver, Stack, eventually, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_does_not_delay_a_healthy_one() {
    let mut stack = Stack::start().await;
    let dead = Receiver::start().await;
    dead.hold();
    let healthy = Receiver::start().await;
    // The dead endpoint's requests hang until its 30 s timeout (longer than this test), four at a time at most.
    stack.fixture.create_endpoint(EndpointSpec::new(dead.url()).max_in_flight(4).timeout_ms(30_000)).await;
    stack.fixture.create_endpoint(EndpointSpec::new(healthy.url())).await;
    stack.emit_until_routed(2).await;

    let ids: Vec<String> = (0..200).map(|_| unique("isolated")).collect();
    for id in &ids {
        let answer = stack.emitter.emit(stack.fixture.emit_request(id, &serde_json::json!({"id": id}))).await;
        assert_eq!(answer.expect("Emit").into_inner().deliveries, 2);
    }
    eventually("every event reaches the healthy endpoint while the dead one hangs", DEADLINE, async || {
        let missing = ids.iter().filter(|id| healthy.success_for(id).is_none()).count();
        if missing == 0 { Ok(()) } else { Err(format!("{missing} missing at the healthy endpoint")) }
    })
    .await;
    let hanging = dead.count();
    assert!(hanging <= 4, "the dead endpoint got {hanging} concurrent requests, more than its in-flight limit of 4");
    dead.release();
}
