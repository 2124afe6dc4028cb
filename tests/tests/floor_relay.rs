//! The benchmark's floor relay (`hookrelay-floor-relay`) does the work its measurement claims: each emit (gRPC or
//! `POST /v1/events`) is answered only after the event reached the receiver, signed and byte for byte, and a
//! receiver's failure fails the emit; with `--durable` an event the receiver refused is on disk (and one it took is
//! not); with `--control` control lists every delivery.

use std::net::SocketAddr;
use std::process::Stdio;

use hookrelay_common::proto::v1::emit_service_client::EmitServiceClient;
use hookrelay_common::proto::v1::{DeliveryStatus, EmitRequest};
use hookrelay_common::signing::Secret;
use hookrelay_tests::api::{deliveries_of_owner, get_delivery, post_events_raw};
use hookrelay_tests::process::binary;
use hookrelay_tests::{DEADLINE, EndpointSpec, Fixture, Receiver, eventually, spawn_control};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// The relay, a gRPC client of it and its address.
async fn start_relay(
    target: &str,
    secret: &str,
    extra_args: &[&str],
) -> (Child, EmitServiceClient<tonic::transport::Channel>, SocketAddr) {
    let mut relay = Command::new(binary("hookrelay-floor-relay"))
        .args(["--target", target, "--secret", secret])
        .args(extra_args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start hookrelay-floor-relay");
    let mut line = String::new();
    BufReader::new(relay.stdout.take().expect("stdout")).read_line(&mut line).await.expect("read its first line");
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("first line {line:?}"));
    let addr: SocketAddr = addr.parse().expect("an address");
    let channel = hookrelay_tests::api::connect(addr).await;
    (relay, EmitServiceClient::new(channel), addr)
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
    let (_relay, mut emitter, addr) = start_relay(&receiver.url(), &secret, &[]).await;

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

    // The same over `POST /v1/events`; the payload is relayed as written, spacing and all.
    let http_event =
        |id: &str| format!(r#"{{"owner":"bench","type":"bench.event","id":"{id}","payload":{{"n": 3,  "k":[1]}}}}"#);
    let over_http = post_events_raw(addr, http_event("floor-3")).await;
    assert_eq!(over_http.status, 503, "{:?}", over_http.json);
    assert!(over_http.json["error"]["message"].as_str().is_some_and(|m| m.contains("500")), "{:?}", over_http.json);
    receiver.set_status(200);
    let over_http = post_events_raw(addr, http_event("floor-4")).await;
    assert_eq!((over_http.status, &over_http.json["id"]), (202, &serde_json::json!("floor-4")), "{:?}", over_http.json);
    let request = receiver.success_for("floor-4").expect("the receiver got the HTTP-emitted event before the answer");
    assert_eq!(request.body.as_ref(), br#"{"n": 3,  "k":[1]}"#);
    request.verify_signature(&secret).expect("a Standard Webhooks signature under the given secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_durable_relay_keeps_undelivered_events_on_disk_and_reports_deliveries_to_control() {
    let control = spawn_control().await;
    let mut fixture = Fixture::new(control.admin().await).await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = fixture.create_endpoint(EndpointSpec::new(receiver.url())).await;
    let journal = tempfile::tempdir().expect("a journal dir");
    let secret = Secret::generate().expose();
    let journal_path = journal.path().to_str().expect("a UTF-8 path");
    let control_url = control.url();
    let extra = ["--durable", journal_path, "--control", &control_url, "--endpoint-id", &endpoint.id];
    let (mut relay, mut emitter, _) = start_relay(&receiver.url(), &secret, &extra).await;

    let delivered = fixture.emit_request("durable-ok", &serde_json::json!({"n": 1}));
    emitter.emit(delivered).await.expect("Emit");
    let mut admin = control.admin().await;
    let listed = eventually("control lists the relayed delivery", DEADLINE, async || {
        let deliveries = deliveries_of_owner(&mut admin, &fixture.owner).await.map_err(|status| status.to_string())?;
        deliveries.into_iter().find(|d| d.event_id == "durable-ok").ok_or_else(|| "not listed yet".to_owned())
    })
    .await;
    assert_eq!(listed.status, DeliveryStatus::Succeeded as i32, "{listed:?}");
    assert_eq!(listed.endpoint_id, endpoint.id);
    let attempts = get_delivery(&mut admin, &listed.id).await.expect("GetDelivery").attempts;
    assert_eq!(attempts.iter().map(|a| (a.number, a.status_code)).collect::<Vec<_>>(), [(1, 200)]);

    receiver.set_status(500);
    let kept = fixture.emit_request("durable-kept", &serde_json::json!({"n": 2, "kept": true}));
    let kept_payload = kept.payload.clone();
    let refused = emitter.emit(kept).await.expect_err("a receiver answering 500 fails the emit");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    relay.kill().await.expect("kill -9 the relay");

    // What is on disk after the kill: the undelivered event only (the delivered one's pack was removed before it).
    let db = sled::open(journal.path()).expect("open the relay's journal");
    let packs: Vec<_> =
        db.open_tree("events").expect("the events tree").iter().values().map(|v| v.expect("a readable pack")).collect();
    assert_eq!(packs.len(), 1, "one pack left: {packs:?}");
    let mut expected = (kept_payload.len() as u32).to_be_bytes().to_vec();
    expected.extend_from_slice(&kept_payload);
    assert_eq!(packs[0].as_ref(), expected.as_slice(), "the pack holds the undelivered event, length-prefixed");
}
