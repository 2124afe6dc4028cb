//! Secret rotation seen by a receiver using the Python `standardwebhooks` package: during the overlap every delivery
//! carries two signatures and a receiver holding either secret verifies it; after the overlap only the new secret
//! signs, and a receiver still holding the old one refuses.

use hookrelay_common::proto::v1::RotateEndpointSecretRequest;
use hookrelay_tests::python::verify_with_standardwebhooks;
use hookrelay_tests::{DEADLINE, EndpointSpec, Receiver, RecordedRequest, Stack, eventually, unique};

async fn deliver(stack: &mut Stack, receiver: &Receiver) -> RecordedRequest {
    let id = unique("rotated");
    stack.emitter.emit(stack.fixture.emit_request(&id, &serde_json::json!({"id": id}))).await.expect("Emit");
    eventually("the event is delivered", DEADLINE, async || receiver.success_for(&id).ok_or_else(|| receiver.summary()))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_secrets_verify_during_the_overlap_and_only_the_new_one_after() {
    let mut stack = Stack::start().await;
    let receiver = Receiver::start().await;
    let (endpoint, old_secret) = stack.fixture.create_endpoint(EndpointSpec::new(receiver.url())).await;
    stack.emit_until_routed(1).await;

    let rotated = stack
        .fixture
        .admin
        .rotate_secret(RotateEndpointSecretRequest { id: endpoint.id.clone(), overlap_seconds: 3 })
        .await
        .expect("RotateSecret")
        .into_inner();
    let new_secret = rotated.secret;
    assert_ne!(new_secret, old_secret);

    let during = eventually("a delivery carries both signatures", DEADLINE, async || {
        let request = deliver(&mut stack, &receiver).await;
        let signatures = request.header("webhook-signature").unwrap_or_default().split(' ').count();
        if signatures == 2 { Ok(request) } else { Err(format!("{signatures} signature(s)")) }
    })
    .await;
    for secret in [&old_secret, &new_secret] {
        match verify_with_standardwebhooks(&during, secret).await {
            None => return eprintln!("SKIPPED: python3 is missing; the rotation check needs standardwebhooks"),
            Some(result) => result.unwrap_or_else(|error| panic!("during the overlap: {error}")),
        }
    }

    let after = eventually("after the overlap only the new secret signs", DEADLINE, async || {
        let request = deliver(&mut stack, &receiver).await;
        let signatures = request.header("webhook-signature").unwrap_or_default().split(' ').count();
        if signatures == 1 { Ok(request) } else { Err(format!("{signatures} signatures")) }
    })
    .await;
    let with_new = verify_with_standardwebhooks(&after, &new_secret).await.expect("python checked above");
    with_new.unwrap_or_else(|error| panic!("the new secret must verify: {error}"));
    let with_old = verify_with_standardwebhooks(&after, &old_secret).await.expect("python checked above");
    assert!(with_old.is_err(), "the old secret still verifies after the overlap");
}
