//! Retention of the delivery log, through control served in-process by `hookrelay_control::run` over real gRPC:
//! agents report deliveries, the pruning task removes the final ones older than the retention period, and
//! ListDeliveries, GetDelivery and `/metrics` agree. Also the `--delivery-retention-hours` setting of the binary.

mod support;

use std::process::Command;
use std::time::Duration;

use hookrelay_common::ids::{DeliveryId, ReportId};
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::time::{now_ms, to_timestamp};
use pb::admin_service_client::AdminServiceClient;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

use support::start_control;

const BIN: &str = env!("CARGO_BIN_EXE_hookrelay-control");
const HOUR_MS: u64 = 3600 * 1000;

/// A delivery id generated at `ms` (`dlv_` then the 12 hex digits of its UUIDv7 time).
fn delivery_at(ms: u64) -> String {
    format!("dlv_{ms:012x}{}", &DeliveryId::generate().as_str()[16..])
}

/// The report of attempt `number` of `delivery_id`, made at `at_ms` and leaving it in `status`.
fn report(
    endpoint_id: &str,
    delivery_id: &str,
    number: u32,
    status: pb::DeliveryStatus,
    at_ms: u64,
) -> pb::AttemptReport {
    pb::AttemptReport {
        report_id: format!("rpt_{at_ms:012x}{}", &ReportId::generate().as_str()[16..]),
        delivery: Some(pb::Delivery {
            id: delivery_id.into(),
            owner_id: "acme".into(),
            endpoint_id: endpoint_id.into(),
            event_type: "payment.settled".into(),
            status: status as i32,
            attempts: number,
            created_at: Some(to_timestamp(DeliveryId::parse(delivery_id).unwrap().created_at_ms())),
            updated_at: Some(to_timestamp(at_ms)),
            ..Default::default()
        }),
        attempt: Some(pb::Attempt { number, ..Default::default() }),
        ..Default::default()
    }
}

async fn listed(admin: &mut AdminServiceClient<Channel>, request: pb::ListDeliveriesRequest) -> Vec<String> {
    let response = admin.list_deliveries(request).await.unwrap().into_inner();
    response.deliveries.into_iter().map(|delivery| delivery.id).collect()
}

#[tokio::test]
async fn final_deliveries_past_the_retention_disappear_from_every_listing() {
    let control = start_control(|_, config| {
        config.delivery_retention = Duration::from_secs(3600);
        config.prune_interval = Duration::from_millis(20);
    })
    .await;
    let mut admin = control.admin().await;
    admin.create_owner(pb::CreateOwnerRequest { id: "acme".into(), name: "Acme".into() }).await.unwrap();
    let event_type = pb::CreateEventTypeRequest { name: "payment.settled".into(), description: String::new() };
    admin.create_event_type(event_type).await.unwrap();
    let endpoint = admin
        .create_endpoint(pb::CreateEndpointRequest {
            owner_id: "acme".into(),
            url: "https://example.com/hook".into(),
            filter_types: vec!["*".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();

    // Two hours old: one delivery that succeeded on its second attempt, one still pending. And a fresh success.
    let now = now_ms();
    let old = now - 2 * HOUR_MS;
    let (expired, pending, fresh) = (delivery_at(old), delivery_at(old + 1), delivery_at(now));
    use pb::DeliveryStatus::{Pending, Succeeded};
    let reports = vec![
        report(&endpoint.id, &expired, 1, Pending, old),
        report(&endpoint.id, &expired, 2, Succeeded, old + 1_000),
        report(&endpoint.id, &pending, 1, Pending, old + 1_000),
        report(&endpoint.id, &fresh, 1, Succeeded, now),
    ];
    let mut agent = control.agent().await;
    let stored = agent.report_attempts(pb::ReportAttemptsRequest { node_name: "node-a".into(), reports }).await;
    assert_eq!(stored.unwrap().into_inner().stored, 4);

    let by_endpoint = pb::ListDeliveriesRequest { endpoint_id: endpoint.id.clone(), ..Default::default() };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ids = listed(&mut admin, by_endpoint.clone()).await;
        if !ids.contains(&expired) {
            break;
        }
        assert!(Instant::now() < deadline, "the expired delivery is still listed: {ids:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let kept = vec![fresh.clone(), pending.clone()];
    assert_eq!(listed(&mut admin, by_endpoint).await, kept);
    let by_owner = pb::ListDeliveriesRequest { owner_id: "acme".into(), ..Default::default() };
    assert_eq!(listed(&mut admin, by_owner).await, kept);
    assert_eq!(listed(&mut admin, pb::ListDeliveriesRequest::default()).await, kept);
    let gone = admin.get_delivery(pb::GetDeliveryRequest { id: expired.clone() }).await.unwrap_err();
    assert_eq!((gone.code(), gone.message()), (Code::NotFound, format!("delivery {expired} not found").as_str()));
    let still = admin.get_delivery(pb::GetDeliveryRequest { id: pending }).await.unwrap().into_inner();
    assert_eq!(still.attempts.len(), 1);

    let metrics = control.metrics().await;
    assert!(metrics.contains("\nhookrelay_control_deliveries_pruned_total 1\n"), "{metrics}");
    assert!(metrics.contains("\nhookrelay_control_deliveries_stored 2\n"), "{metrics}");
    control.stop().await;
}

#[test]
fn the_retention_setting_is_checked_from_env_and_config_file() {
    let run = |command: &mut Command| {
        let output = command.env_remove("HOOKRELAY_CONFIG").output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (code, stderr) = run(Command::new(BIN).arg("--print-config").env("HOOKRELAY_DELIVERY_RETENTION_HOURS", "0"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("HOOKRELAY_DELIVERY_RETENTION_HOURS: "), "{stderr}");

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "delivery_retention_hours = 0\n").unwrap();
    let (code, stderr) = run(Command::new(BIN).arg("--print-config").arg("--config").arg(file.path()));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--delivery-retention-hours: "), "{stderr}");

    std::fs::write(file.path(), "delivery_retention_hours = 48\n").unwrap();
    let (code, stderr) = run(Command::new(BIN).arg("--print-config").arg("--config").arg(file.path()));
    assert_eq!(code, Some(0), "{stderr}");
}
