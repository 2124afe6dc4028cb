//! Backpressure: once the events an agent holds exceed its size limit, emits are refused with RESOURCE_EXHAUSTED /
//! HTTP 507 and a clear message, nothing accepted before is harmed, and intake resumes by itself once retention
//! prunes what was delivered.

use hookrelay_tests::api::post_event;
use hookrelay_tests::{
    AgentOpts, DEADLINE, EndpointSpec, Fixture, Receiver, eventually, spawn_agent_with, spawn_control, unique,
};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_emits_and_recovers_after_pruning() {
    let control = spawn_control().await;
    // A limit of 0 MiB: the first event held puts the agent over it. Delivered payloads are kept for 0 hours, so
    // the next retention sweep (every 10 s) frees the space again.
    let opts = AgentOpts {
        extra_args: ["--max-queue-mib", "0", "--payload-retention-hours", "0"].map(String::from).to_vec(),
        ..AgentOpts::new(control.url())
    };
    let agent = spawn_agent_with(opts).await;
    let mut fixture = Fixture::new(control.admin().await).await;
    let receiver = Receiver::start().await;
    fixture.create_endpoint(EndpointSpec::new(receiver.url())).await;
    let mut emitter = agent.emitter().await;

    let first = eventually("the first event is accepted", DEADLINE, async || {
        let answer = emitter.emit(fixture.emit_request(&unique("first"), &serde_json::json!({"n": 1}))).await;
        match answer {
            Ok(answer) if answer.get_ref().deliveries == 1 => Ok(answer.into_inner()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let refused = emitter.emit(fixture.emit_request(&unique("refused"), &serde_json::json!({"n": 2}))).await;
    let status = refused.expect_err("the queue is over its limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("over its limit of 0 bytes"), "{status:?}");
    let event = serde_json::json!({"owner": fixture.owner, "type": fixture.event_type, "payload": {"n": 3}});
    let http = post_event(agent.addr(), &event).await;
    assert_eq!(http.status, 507, "{:?}", http.json);
    assert_eq!(http.json["error"]["code"], "resource_exhausted", "{:?}", http.json);

    eventually("the event accepted before is delivered", DEADLINE, async || {
        receiver.success_for(&first.id).map(drop).ok_or_else(|| receiver.summary())
    })
    .await;
    eventually("intake resumes once retention prunes the delivered payload", DEADLINE, async || {
        let answer = emitter.emit(fixture.emit_request(&unique("resumed"), &serde_json::json!({"n": 4}))).await;
        answer.map(drop).map_err(|status| format!("{status:?}"))
    })
    .await;
}
