//! The sled store's tests, one file per concern, with the fixtures they share.

mod config;
mod log;
mod retention;
mod secrets;

use std::path::Path;

use hookrelay_common::ids::{DeliveryId, EndpointId, ReportId};
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::sealed::MasterKey;
use hookrelay_common::signing::Secret;
use hookrelay_common::time::to_timestamp;

use super::SledStore;
use crate::store::{PageRequest, Report, Store};

fn open() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), MasterKey::generate()).unwrap();
    (dir, store)
}

/// Opens the store's sled database itself, once it is unlocked, to read or damage what the store wrote.
fn raw_db(path: &Path) -> sled::Db {
    hookrelay_tests::eventually::when_unlocked(|| sled::open(path)).unwrap()
}

fn owner(id: &str) -> pb::Owner {
    pb::Owner { id: id.into(), name: format!("{id} team"), ..Default::default() }
}

fn event_type(name: &str) -> pb::EventType {
    pb::EventType { name: name.into(), description: "d".into(), ..Default::default() }
}

fn endpoint(owner_id: &str, filters: &[&str]) -> pb::AgentEndpoint {
    pb::AgentEndpoint {
        endpoint: Some(pb::Endpoint {
            id: EndpointId::generate().to_string(),
            owner_id: owner_id.into(),
            url: "https://example.com/hook".into(),
            filter_types: filters.iter().map(|f| f.to_string()).collect(),
            enabled: true,
            ..Default::default()
        }),
        secrets: vec![Secret::generate().expose()],
    }
}

fn id_of(endpoint: &pb::AgentEndpoint) -> EndpointId {
    EndpointId::parse(&endpoint.endpoint.as_ref().unwrap().id).unwrap()
}

async fn seeded() -> (tempfile::TempDir, SledStore) {
    let (dir, store) = open();
    store.create_owner(owner("acme")).await.unwrap();
    store.create_event_type(event_type("payment.settled")).await.unwrap();
    store.create_event_type(event_type("payment.failed")).await.unwrap();
    (dir, store)
}

fn page(size: usize, after: &str) -> PageRequest {
    PageRequest { size, after: (!after.is_empty()).then(|| after.to_owned()) }
}

fn report(delivery_id: &DeliveryId, endpoint_id: &EndpointId, attempt: u32, status: pb::DeliveryStatus) -> Report {
    let delivery = pb::Delivery {
        id: delivery_id.to_string(),
        event_id: "evt_1".into(),
        owner_id: "acme".into(),
        endpoint_id: endpoint_id.to_string(),
        event_type: "payment.settled".into(),
        status: status as i32,
        attempts: attempt,
        created_at: Some(to_timestamp(delivery_id.created_at_ms())),
        ..Default::default()
    };
    let attempt = pb::Attempt {
        delivery_id: delivery_id.to_string(),
        number: attempt,
        status_code: if status == pb::DeliveryStatus::Succeeded { 200 } else { 500 },
        ..Default::default()
    };
    Report { report_id: ReportId::generate(), delivery_id: delivery_id.clone(), delivery, attempt: Some(attempt) }
}
