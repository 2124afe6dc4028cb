//! The PostgreSQL store: [`PostgresStore`], for several control replicas in front of one database
//! (`--database-url`). Each replica holds a connection pool; the database is the only shared state.
//!
//! Layout (the schema is in `migrations/`, applied at start by [`migrations::apply`]):
//! - `config.rs`: owners, event types and endpoints (secrets sealed as on sled, [`crate::store::secrets`]), the
//!   config version, the version-ordered change log `config_changes`, agents and the master key's check value.
//! - `log.rs`, `retention.rs`: the delivery log, partitioned by day, and its retention by dropping partitions.
//!
//! Invariants:
//! - Config mutations run one at a time across every replica (an advisory transaction lock); each bumps the version
//!   and appends its delta to the change log in its own transaction. Every replica publishes every change of the
//!   log on its own feed, once and in version order (`feed.rs`), so agents of any replica get every change.
//! - No signing secret is stored in the clear: endpoints hold them sealed, the change log seals whole deltas.
//! - The store opens only under the master key its secrets were sealed with.
//! - Every call returns after its transaction committed, so `flush` has nothing to do.
//! - Retention (and with it the pruning of lost agents' deliveries) runs on one replica at a time: a pass takes a
//!   session-level advisory lock on a connection of its own, [`Turn`], and a replica that finds it held skips the
//!   pass. The lock ends with that session, so when the replica running it dies, the next pass of another takes
//!   over. Secret expiry needs no turn: it is a config mutation, serialised like every other.
//! - [`Store::stats`] answers from values cached by this replica: the config version of its last change, the
//!   delivery count as of its start, last ingest or last prune.

mod config;
mod feed;
mod log;
mod migrations;
mod retention;
#[cfg(test)]
mod tests;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use hookrelay_common::ids::{DeliveryId, EndpointId};
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::sealed::MasterKey;
use hookrelay_common::time::now_ms;
use tokio::sync::broadcast;
use tokio_postgres::NoTls;

use self::config::ConfigStore;
use super::{
    AgentEvent, DeliveryQuery, EndpointChange, IngestOutcome, Page, PageRequest, PruneCutoff, PrunePass, Report, Store,
    StoreStats,
};
use crate::error::{Error, Result};

/// Connections each replica keeps at most.
const POOL_SIZE: usize = 16;
/// How long opening a connection may take, unless the URL says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Days of log partitions created ahead at start, besides today's.
const PARTITION_DAYS_AHEAD: u32 = 2;

/// The PostgreSQL-backed store.
pub struct PostgresStore {
    pool: Pool,
    config: ConfigStore,
    /// Deliveries in the log, as last counted.
    deliveries: AtomicU64,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`; `password`, when given, overrides the
    /// URL's), brings its schema up to date and checks `key` against the one its secrets were sealed with
    /// ([`Error::WrongMasterKey`]).
    pub async fn connect(url: &str, password: Option<String>, key: MasterKey) -> Result<Self> {
        let mut settings: tokio_postgres::Config =
            url.parse().map_err(|error| Error::Database(format!("the database URL is not usable: {error}")))?;
        if let Some(password) = password {
            settings.password(password);
        }
        if settings.get_connect_timeout().is_none() {
            settings.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager =
            Manager::from_config(settings.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|error| Error::Database(format!("cannot build the connection pool: {error}")))?;
        migrations::apply(&pool).await?;
        retention::create_partitions_ahead(&pool, now_ms(), PARTITION_DAYS_AHEAD).await?;
        let config = ConfigStore::open(pool.clone(), settings, key).await?;
        let deliveries = AtomicU64::new(log::count_deliveries(&pool).await?);
        Ok(Self { pool, config, deliveries })
    }

    async fn recount_deliveries(&self) -> Result<()> {
        self.deliveries.store(log::count_deliveries(&self.pool).await?, Ordering::Relaxed);
        Ok(())
    }
}

/// The advisory lock of retention passes (any fixed number unique among hookrelay's locks).
const RETENTION_LOCK: i64 = 0x686f_6f6b_7265_7401;

/// One replica's turn at a background task: a session-level advisory lock on a connection taken out of the pool.
/// [`Turn::end`] unlocks it; a turn dropped without it (an error, a cancelled pass) closes its session, and the lock
/// goes with the session, as it does when the replica dies.
struct Turn {
    session: deadpool_postgres::ClientWrapper,
    lock: i64,
}

impl Turn {
    /// The turn at the task `lock`, unless another replica has it now.
    async fn take(pool: &Pool, lock: i64) -> Result<Option<Self>> {
        let client = pool.get().await.map_err(pool_error)?;
        let row = client.query_one("SELECT pg_try_advisory_lock($1)", &[&lock]).await.map_err(db_error)?;
        // Out of the pool either way: a session that holds the lock must never serve anything else.
        let session = deadpool_postgres::Object::take(client);
        Ok(row.get::<_, bool>(0).then_some(Self { session, lock }))
    }

    /// Gives the turn up now: the server lets a closed session's locks go only a moment later, and this replica's
    /// next pass would find its own last one still holding it.
    async fn end(self) {
        if let Err(error) = self.session.execute("SELECT pg_advisory_unlock($1)", &[&self.lock]).await {
            tracing::debug!(%error, "unlocking a background turn failed; its session's end releases it");
        }
    }
}

/// A failed statement or transaction; its text (with the server's message) is logged, never sent to callers.
fn db_error(error: tokio_postgres::Error) -> Error {
    Error::Database(error.to_string())
}

/// No connection could be had from the pool.
fn pool_error(error: deadpool_postgres::PoolError) -> Error {
    Error::Database(error.to_string())
}

#[async_trait]
impl Store for PostgresStore {
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
        config::record_agent(&self.pool, node_name, event).await
    }

    async fn list_agents(&self) -> Result<Vec<pb::Agent>> {
        config::list_agents(&self.pool).await
    }

    async fn ingest_reports(&self, node_name: &str, reports: Vec<Report>) -> Result<IngestOutcome> {
        let outcome = log::ingest(&self.pool, node_name, reports).await?;
        if outcome.stored > 0 {
            self.recount_deliveries().await?;
        }
        Ok(outcome)
    }

    async fn list_deliveries(&self, query: DeliveryQuery) -> Result<Page<pb::Delivery>> {
        log::list_deliveries(&self.pool, &query).await
    }

    async fn get_delivery(&self, id: &DeliveryId) -> Result<(pb::Delivery, Vec<pb::Attempt>)> {
        log::get_delivery(&self.pool, id).await
    }

    async fn prune_deliveries(
        &self,
        cutoff: PruneCutoff,
        after: Option<DeliveryId>,
        limit: NonZeroUsize,
    ) -> Result<PrunePass> {
        let Some(turn) = Turn::take(&self.pool, RETENTION_LOCK).await? else {
            tracing::debug!("another replica runs retention now; this pass is skipped");
            return Ok(PrunePass::default());
        };
        let pass = retention::prune(&self.pool, cutoff, after, limit).await;
        turn.end().await;
        let pass = pass?;
        self.recount_deliveries().await?;
        Ok(pass)
    }

    async fn flush(&self) -> Result<()> {
        // Every call returned after its commit, and a commit is durable (with PostgreSQL's default settings).
        Ok(())
    }

    fn stats(&self) -> Result<StoreStats> {
        Ok(StoreStats {
            config_version: self.config.config_version(),
            deliveries: self.deliveries.load(Ordering::Relaxed),
        })
    }
}
