//! The benchmark's floor relay (`hookrelay-floor-relay`) does the work its measurement claims: each emit is answered
//! only after the event reached the receiver, signed and byte for byte, and a receiver's failure fails the emit.

use std::process::Stdio;

use hookrelay_common::proto::v1::EmitRequest;
use hookrelay_common::proto::v1::emit_service_client::EmitServiceClient;
use hookrelay_common::signing::Secret;
use hookrelay_tests::Receiver;
use hookrelay_tests::process::binary;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

async fn start_relay(target: &str, secret: &str) -> (Child, EmitServiceClient<tonic::transport::Channel>) {
    let mut relay = Command::new(binary("hookrelay-floor-relay"))
        .args(["--target", target, "--secret", secret])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start hookrelay-floor-relay");
    let mut line = String::new();
    BufReader::new(relay.stdout.take().expect("stdout")).read_line(&mut line).await.expect("read its first line");
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("first line {line:?}"));
    let channel = hookrelay_tests::api::connect(addr.parse().expect("an address")).await;
    (relay, EmitServiceClient::new(channel))
}

fn event(id: &str) -> EmitRequest {
    EmitRequest {
        owner: "bench".into(),
        r#type: "bench.event".into(),
        id: id.into(),
        payload: br#"{"n":1,"text":"caf\u00e9"}"#.to_vec(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emit_is_answered_once_the_receiver_has_it_signed() {
    let receiver = Receiver::start().await;
    let secret = Secret::generate().expose();
    let (_relay, mut emitter) = start_relay(&receiver.url(), &secret).await;

    let answer = emitter.emit(event("floor-1")).await.expect("Emit").into_inner();
    assert_eq!((answer.id.as_str(), answer.deliveries), ("floor-1", 1));
    // Answered after delivery, so the receiver has it already: no waiting.
    let request = receiver.success_for("floor-1").expect("the receiver got the event before the emit was answered");
    assert_eq!(request.body.as_ref(), event("floor-1").payload.as_slice());
    request.verify_signature(&secret).expect("a Standard Webhooks signature under the given secret");

    receiver.set_status(500);
    let refused = emitter.emit(event("floor-2")).await.expect_err("a receiver answering 500 fails the emit");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(refused.message().contains("500"), "{}", refused.message());
}
