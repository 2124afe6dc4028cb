//! One suite, every backend: the store tests that use only the [`Store`] trait, each run against a fresh
//! [`SledStore`] and a fresh [`PostgresStore`] ([`each_backend`], [`each_store`]), and the fixtures they share.
//! Without PostgreSQL the PostgreSQL run is skipped loudly outside CI (see `hookrelay_tests::postgres`). Tests of
//! one backend's internals stay in its folder.

mod config;
mod log;
mod retention;

use std::sync::Arc;

use hookrelay_common::ids::{DeliveryId, EndpointId, ReportId};
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::sealed::MasterKey;
use hookrelay_common::signing::Secret;
use hookrelay_common::time::to_timestamp;

use crate::store::{PageRequest, PostgresStore, Report, SledStore, Store};

/// Where a backend keeps its data: reopening it finds what an earlier store wrote.
enum Location {
    Sled(tempfile::TempDir),
    Postgres(String),
}

/// A fresh, empty instance of one backend, which can be opened several times (a restart, or on PostgreSQL a
/// second replica).
pub(in crate::store) struct Backend {
    location: Location,
    key: MasterKey,
}

impl Backend {
    /// The backend's name, for messages.
    pub(in crate::store) fn name(&self) -> &'static str {
        match self.location {
            Location::Sled(_) => "sled",
            Location::Postgres(_) => "postgres",
        }
    }

    /// Opens the store under the master key it was created with.
    pub(in crate::store) async fn open(&self) -> Arc<dyn Store> {
        self.open_with(self.key.clone()).await.unwrap_or_else(|error| panic!("open {}: {error}", self.name()))
    }

    /// Opens the store under `key`.
    pub(in crate::store) async fn open_with(&self, key: MasterKey) -> crate::error::Result<Arc<dyn Store>> {
        Ok(match &self.location {
            Location::Sled(dir) => Arc::new(SledStore::reopen(dir.path(), key)?),
            Location::Postgres(url) => Arc::new(PostgresStore::connect(url, None, key).await?),
        })
    }
}

/// Runs `test` against a fresh instance of each backend.
pub(in crate::store) async fn each_backend(test: impl AsyncFn(&Backend)) {
    let key = MasterKey::generate();
    let mut backends = vec![Backend { location: Location::Sled(tempfile::tempdir().unwrap()), key: key.clone() }];
    if let Some(cluster) = hookrelay_tests::postgres::postgres() {
        backends.push(Backend { location: Location::Postgres(cluster.fresh_database()), key });
    }
    for backend in &backends {
        // Shown with a failure, so it is clear which backend failed.
        eprintln!("conformance: running on {}", backend.name());
        test(backend).await;
    }
}

/// Runs `test` against a fresh store of each backend.
pub(in crate::store) async fn each_store(test: impl AsyncFn(Arc<dyn Store>)) {
    each_backend(async |backend| test(backend.open().await).await).await;
}

pub(in crate::store) fn owner(id: &str) -> pb::Owner {
    pb::Owner { id: id.into(), name: format!("{id} team"), ..Default::default() }
}

pub(in crate::store) fn event_type(name: &str) -> pb::EventType {
    pb::EventType { name: name.into(), description: "d".into(), ..Default::default() }
}

pub(in crate::store) fn endpoint(owner_id: &str, filters: &[&str]) -> pb::AgentEndpoint {
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

pub(in crate::store) fn id_of(endpoint: &pb::AgentEndpoint) -> EndpointId {
    EndpointId::parse(&endpoint.endpoint.as_ref().unwrap().id).unwrap()
}

/// `store` with owner `acme` and the event types `payment.settled` and `payment.failed`.
pub(in crate::store) async fn seed(store: &dyn Store) {
    store.create_owner(owner("acme")).await.unwrap();
    store.create_event_type(event_type("payment.settled")).await.unwrap();
    store.create_event_type(event_type("payment.failed")).await.unwrap();
}

pub(in crate::store) fn page(size: usize, after: &str) -> PageRequest {
    PageRequest { size, after: (!after.is_empty()).then(|| after.to_owned()) }
}

pub(in crate::store) fn report(
    delivery_id: &DeliveryId,
    endpoint_id: &EndpointId,
    attempt: u32,
    status: pb::DeliveryStatus,
) -> Report {
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
