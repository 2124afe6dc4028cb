//! The optional `x-hookrelay-signature: sha256=<hex HMAC-SHA256 of the body>` header: sent only to endpoints that ask
//! for it, computed under the primary secret, and switchable by an update.

use hmac::{Hmac, Mac};
use hookrelay_common::proto::v1::UpdateEndpointRequest;
use hookrelay_common::signing::Secret;
use hookrelay_tests::{DEADLINE, EndpointSpec, Receiver, Stack, eventually, unique};
use sha2::Sha256;

/// The header a receiver of the simple scheme expects, computed here independently of hookrelay's signer.
fn expected(secret: &str, body: &[u8]) -> String {
    let key = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &secret["whsec_".len()..]).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256={hex}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_signature_is_sent_when_asked_for() {
    let mut stack = Stack::start().await;
    let receiver = Receiver::start().await;
    let spec = EndpointSpec::new(receiver.url());
    let mut request = stack.fixture.endpoint_request(&spec);
    request.body_signature = true;
    let created = stack.fixture.admin.create_endpoint(request).await.expect("CreateEndpoint").into_inner();
    let (endpoint, secret) = (created.endpoint.expect("endpoint"), created.secret);
    assert!(endpoint.body_signature);
    Secret::parse(&secret).expect("a whsec_ secret");

    let first = stack.emit_until_routed(1).await;
    let delivered = eventually("the first event arrives", DEADLINE, async || {
        receiver.success_for(&first.id).ok_or_else(|| receiver.summary())
    })
    .await;
    assert_eq!(delivered.header("x-hookrelay-signature"), Some(expected(&secret, &delivered.body).as_str()));
    delivered.verify_signature(&secret).expect("the Standard Webhooks signature is there too");

    let update = UpdateEndpointRequest { id: endpoint.id.clone(), body_signature: Some(false), ..Default::default() };
    stack.fixture.admin.update_endpoint(update).await.expect("UpdateEndpoint");
    eventually("an event after the update arrives without the header", DEADLINE, async || {
        let request = stack.fixture.emit_request(&unique("probe"), &serde_json::json!({"n": 1}));
        stack.emitter.emit(request).await.map_err(|s| format!("{s:?}"))?;
        let latest = receiver.requests().into_iter().last().ok_or("no request")?;
        if latest.header("x-hookrelay-signature").is_none() { Ok(()) } else { Err(latest.summary()) }
    })
    .await;
}
