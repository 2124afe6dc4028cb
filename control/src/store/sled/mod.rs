//! The embedded [`Store`]: one sled database in control's data directory. Each concern has its file: [`config`]
//! (owners, event types, endpoints, the config version), [`secrets`] (signing secrets sealed at rest), [`log`]
//! (agents and the delivery log), [`retention`] (pruning the log) and [`flusher`] (making writes durable). This file
//! opens the database and routes each [`Store`] method to its file.
//!
//! # Trees and keys
//! | tree                  | key                                    | value                                          |
//! |-----------------------|----------------------------------------|------------------------------------------------|
//! | `owners`              | owner id                               | `pb::Owner`                                    |
//! | `event_types`         | type name                              | `pb::EventType`                                |
//! | `endpoints`           | `ep_…` id                              | `StoredEndpoint` (its secrets sealed)          |
//! | `owner_endpoints`     | `{owner id}/{ep_… id}`                 | empty (index: an owner's endpoints)            |
//! | `meta`                | `config_version`                       | `u64` big-endian                               |
//! | `meta`                | `master_key_check`                     | [`MasterKey::check_value`]                     |
//! | `deliveries`          | `dlv_…` id (UUIDv7: time-ordered)      | `pb::Delivery`                                 |
//! | `endpoint_deliveries` | `{ep_… id}{dlv_… id}`                  | empty (index: an endpoint's deliveries)        |
//! | `attempts`            | `{dlv_… id}` + attempt number (u32 BE) | `pb::Attempt`, then the reporting `rpt_…` id   |
//! | `reports`             | `rpt_…` id not kept in an attempt      | the `dlv_…` id it reported on                  |
//! | `agents`              | node name                              | `pb::Agent`                                    |
//!
//! Owner ids cannot contain `/` and endpoint ids have a fixed length, so both index layouts are unambiguous.
//!
//! # Invariants
//! - Each config mutation bumps the version by one in the same transaction as its change; its delta is published
//!   in version order, and only once both are durable.
//! - Config mutations run one at a time.
//! - No signing secret is stored in the clear; a sealed secret opens only under the master key and on its endpoint.
//! - The store opens only under the master key its secrets were sealed with.
//! - Report batches are ingested one at a time, are durable when `ingest_reports` returns, and are safe to replay.
//! - A stored report id is in its attempt's record or has a marker in `reports`, until retention removes it.
//! - A delivery is removed with its attempts and its index entry, in one transaction.
//! - One flush runs at a time.

mod config;
mod flusher;
mod log;
mod retention;
mod secrets;
#[cfg(test)]
mod tests;

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use hookrelay_common::ids::{DeliveryId, EndpointId};
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::sealed::MasterKey;
use prost::Message;
use sled::Tree;
use sled::transaction::TransactionError;
use tokio::sync::broadcast;

use self::config::{ConfigStore, ConfigTrees};
use self::flusher::Flusher;
use self::log::LogTrees;
use super::{
    AgentEvent, DeliveryQuery, EndpointChange, IngestOutcome, Page, PageRequest, PruneCutoff, PrunePass, Report, Store,
    StoreStats,
};
use crate::error::{Error, Result};

/// sled's page cache; its default (1 GiB) lets the process grow far beyond what control needs.
const DEFAULT_CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

/// The sled-backed store.
pub struct SledStore {
    config: ConfigStore,
    log: LogTrees,
    agents: Tree,
    flusher: Flusher,
}

impl SledStore {
    /// Opens (or creates) the store in `path` with the default cache size; secrets are sealed under `key`.
    pub fn open(path: &Path, key: MasterKey) -> Result<Self> {
        Self::open_with_cache(path, DEFAULT_CACHE_CAPACITY, key)
    }

    /// Opens (or creates) the store in `path` with a page cache of `cache_capacity` bytes. Fails with
    /// [`Error::WrongMasterKey`] when the data was sealed under another key.
    pub fn open_with_cache(path: &Path, cache_capacity: u64, key: MasterKey) -> Result<Self> {
        let db = sled::Config::new().path(path).cache_capacity(cache_capacity).open()?;
        let config_trees = ConfigTrees::open(&db)?;
        let log = LogTrees::open(&db)?;
        let agents = db.open_tree("agents")?;
        let flusher = Flusher::new(db.clone());
        let config = ConfigStore::open(config_trees, key, flusher.clone())?;
        db.flush()?;
        Ok(Self { config, log, agents, flusher })
    }

    /// Opens the store at `path` once it is unlocked (see [`hookrelay_tests::eventually::when_unlocked`]). For tests.
    #[cfg(test)]
    pub(crate) fn reopen(path: &Path, key: MasterKey) -> Result<SledStore> {
        hookrelay_tests::eventually::when_unlocked(|| SledStore::open(path, key.clone()))
    }
}

#[async_trait]
impl Store for SledStore {
    async fn create_owner(&self, owner: pb::Owner) -> Result<pb::Owner> {
        self.config.create_owner(owner).await
    }

    async fn get_owner(&self, id: &str) -> Result<pb::Owner> {
        self.config.get_owner(id).await
    }

    async fn list_owners(&self, page: PageRequest) -> Result<Page<pb::Owner>> {
        self.config.list_owners(page).await
    }

    async fn update_owner(&self, id: &str, name: Option<String>) -> Result<pb::Owner> {
        self.config.update_owner(id, name).await
    }

    async fn delete_owner(&self, id: &str) -> Result<()> {
        self.config.delete_owner(id).await
    }

    async fn create_event_type(&self, event_type: pb::EventType) -> Result<pb::EventType> {
        self.config.create_event_type(event_type).await
    }

    async fn get_event_type(&self, name: &str) -> Result<pb::EventType> {
        self.config.get_event_type(name).await
    }

    async fn list_event_types(&self, page: PageRequest) -> Result<Page<pb::EventType>> {
        self.config.list_event_types(page).await
    }

    async fn update_event_type(&self, name: &str, description: Option<String>) -> Result<pb::EventType> {
        self.config.update_event_type(name, description).await
    }

    async fn delete_event_type(&self, name: &str) -> Result<()> {
        self.config.delete_event_type(name).await
    }

    async fn create_endpoint(&self, endpoint: pb::AgentEndpoint, max_per_owner: usize) -> Result<pb::AgentEndpoint> {
        self.config.create_endpoint(endpoint, max_per_owner).await
    }

    async fn get_endpoint(&self, id: &EndpointId) -> Result<pb::Endpoint> {
        self.config.get_endpoint(id).await
    }

    async fn list_endpoints(&self, owner_id: Option<&str>, page: PageRequest) -> Result<Page<pb::Endpoint>> {
        self.config.list_endpoints(owner_id, page).await
    }

    async fn update_endpoint(&self, id: &EndpointId, change: EndpointChange) -> Result<pb::Endpoint> {
        self.config.update_endpoint(id, change).await
    }

    async fn delete_endpoint(&self, id: &EndpointId) -> Result<()> {
        self.config.delete_endpoint(id).await
    }

    async fn rotate_secret(
        &self,
        id: &EndpointId,
        secret: String,
        previous_expires_at_ms: u64,
    ) -> Result<pb::AgentEndpoint> {
        self.config.rotate_secret(id, secret, previous_expires_at_ms).await
    }

    async fn expire_secrets(&self, now_ms: u64) -> Result<Option<u64>> {
        self.config.expire_secrets(now_ms).await
    }

    async fn config_snapshot(&self) -> Result<pb::ConfigSnapshot> {
        self.config.config_snapshot().await
    }

    fn subscribe_config(&self) -> broadcast::Receiver<Arc<pb::ConfigDelta>> {
        self.config.subscribe_config()
    }

    async fn record_agent(&self, node_name: &str, event: AgentEvent) -> Result<pb::Agent> {
        log::record_agent(&self.agents, node_name, event)
    }

    async fn list_agents(&self) -> Result<Vec<pb::Agent>> {
        log::list_agents(&self.agents)
    }

    async fn ingest_reports(&self, node_name: &str, reports: Vec<Report>) -> Result<IngestOutcome> {
        let log = self.log.clone();
        let node_name = node_name.to_owned();
        let outcome = blocking(move || log::ingest(&log, &node_name, reports)).await?;
        // Duplicates are flushed for too: the call that stored them may not have finished its flush yet.
        self.flusher.flush().await?;
        Ok(outcome)
    }

    async fn list_deliveries(&self, query: DeliveryQuery) -> Result<Page<pb::Delivery>> {
        let log = self.log.clone();
        blocking(move || log::list_deliveries(&log, &query)).await
    }

    async fn get_delivery(&self, id: &DeliveryId) -> Result<(pb::Delivery, Vec<pb::Attempt>)> {
        log::get_delivery(&self.log, id)
    }

    async fn prune_deliveries(
        &self,
        cutoff: PruneCutoff,
        after: Option<DeliveryId>,
        limit: NonZeroUsize,
    ) -> Result<PrunePass> {
        let agents = self.agents.clone();
        let log = self.log.clone();
        blocking(move || retention::prune_deliveries(&log, &agents, cutoff, after.as_ref(), limit)).await
    }

    async fn flush(&self) -> Result<()> {
        self.flusher.flush().await
    }

    fn stats(&self) -> Result<StoreStats> {
        Ok(StoreStats {
            config_version: self.config.config_version()?,
            deliveries: self.log.delivery_count.load(Ordering::Relaxed),
        })
    }
}

fn decode<T: Message + Default>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T> {
    T::decode(bytes).map_err(|error| Error::Corrupt { what: what(), reason: error.to_string() })
}

fn get<T: Message + Default>(tree: &Tree, key: &str, what: impl FnOnce() -> String) -> Result<Option<T>> {
    tree.get(key)?.map(|bytes| decode(&bytes, what)).transpose()
}

/// The error of a transaction that never aborts by itself, so only storage can fail it.
fn storage_error(error: TransactionError<()>) -> Error {
    match error {
        TransactionError::Storage(error) => Error::Storage(error),
        TransactionError::Abort(()) => unreachable!("these transactions never abort"),
    }
}

/// Runs a synchronous storage task on the blocking pool, so long scans and batches do not stall the runtime.
async fn blocking<T: Send + 'static>(task: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(task)
        .await
        .unwrap_or_else(|join_error| std::panic::resume_unwind(join_error.into_panic()))
}
