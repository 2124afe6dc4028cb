//! The embedded [`Store`]: one sled database in control's data directory.
//!
//! # Trees and keys
//! | tree                  | key                                   | value                                  |
//! |-----------------------|---------------------------------------|----------------------------------------|
//! | `owners`              | owner id                              | `pb::Owner`                            |
//! | `event_types`         | type name                             | `pb::EventType`                        |
//! | `endpoints`           | `ep_…` id                             | `StoredEndpoint` (secrets sealed, primary first) |
//! | `owner_endpoints`     | `{owner id}/{ep_… id}`                | empty (index: an owner's endpoints)    |
//! | `meta`                | `config_version`                      | `u64` big-endian                       |
//! | `meta`                | `master_key_check`                    | [`MasterKey::check_value`]             |
//! | `deliveries`          | `dlv_…` id (UUIDv7: time-ordered)     | `pb::Delivery`                         |
//! | `endpoint_deliveries` | `{ep_… id}{dlv_… id}`                 | empty (index: an endpoint's deliveries) |
//! | `attempts`            | `{dlv_… id}` + attempt number (u32 BE) | `pb::Attempt`, then the `rpt_…` id that reported it (field 100) |
//! | `reports`             | `rpt_…` id not kept in an attempt (see below) | the `dlv_…` id it reported on   |
//! | `agents`              | node name                             | `pb::Agent`                            |
//!
//! Owner ids cannot contain `/` and endpoint ids have a fixed length, so both index layouts are unambiguous.
//!
//! # Secrets at rest
//! Signing secrets are sealed with XChaCha20-Poly1305 under the master key ([`hookrelay_common::sealed`]), each
//! bound to its endpoint id, so a sealed secret moved onto another endpoint does not open. The endpoint's other
//! fields stay readable, so get and list never decrypt anything. Each secret carries its expiry in the clear (0 for
//! the primary): rotation adds a new primary and gives the previous one an expiry; [`Store::expire_secrets`] drops
//! secrets past it. Opening the store checks the key against `master_key_check` (written on first open), so a wrong
//! key stops control at startup instead of failing every snapshot. Secrets written in plaintext by earlier versions
//! (field 2 of the record, as `pb::AgentEndpoint` had it) are sealed on open.
//!
//! # Config writes
//! Config mutations are serialised by one async mutex, which makes check-then-write sequences (the per-owner endpoint
//! limit, "no endpoints left" before deleting an owner) atomic. Under it, a mutation reads the committed state,
//! builds one batch per tree, commits all batches together with the version bump in one multi-tree sled
//! transaction, flushes, and only then publishes its delta, so deltas leave in version order and only once durable.
//!
//! # Report ingestion
//! One batch at a time (a std mutex, on a blocking thread, so duplicate checks and writes of two batches do not
//! interleave): drop report ids seen before, write the endpoint index, the merged deliveries and, last, what
//! records the report ids; then flush once. A report's id is stored with its attempt, as a field `pb::Attempt` does
//! not have (readers of `pb::Attempt` skip it, and `resources.proto` reserves its number), so a report costs no key
//! of its own. A marker in `reports` keeps the other ids: those of reports without an attempt (a cancellation, or a
//! failure because the event was gone), those of attempts stored by versions before this layout (which wrote a
//! marker for every report), and the id an attempt's record held before another report of the same attempt replaced
//! it (two replays of a delivery can number their attempts alike). A report is a duplicate if its attempt is stored
//! with its id, or if its marker exists. Replaying a batch is harmless: index entries are overwritten with themselves
//! and the delivery merge is idempotent, so a crash before the attempts and markers are durable only means the
//! agent's retry stores the same thing again (sled recovers a prefix of its one log, so if they survive, everything
//! written before them does too).
//!
//! # Retention
//! [`Store::prune_deliveries`] finds candidates with the cheapest scan there is: delivery ids are UUIDv7, so the
//! deliveries created before the cutoff are one key range at the start of `deliveries`, read oldest first from the
//! caller's resume point, without the lock. It then removes the prunable ones in chunks of [`PRUNE_CHUNK`], each
//! under the ingest lock (so no report batch writes to a delivery while it goes) and in one transaction over
//! `deliveries`, `attempts` and `endpoint_deliveries` (so a crash never leaves attempts or index entries whose
//! delivery is gone, which no later scan would find). Each delivery is read again inside the transaction, in case a
//! report changed it since the scan. The report ids kept in attempt records go with their attempts; report-id
//! markers are pruned by their own id's time: past the retention period an agent no longer retries a report, so
//! the marker has nothing left to deduplicate. Removals are not flushed: a crash at worst undoes some of them, and
//! the next pass does them again.
//!
//! # Flushing
//! sled 0.34 hangs when `flush_async` runs concurrently (sled issue #1308), so every flush goes through
//! [`Flusher`]: one flush at a time, and a caller whose writes were covered by a flush that started after them skips
//! its own (group commit). sled's flush uses `sync_file_range`; its authors do not promise durability across power
//! loss (sled issue #1452).

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use hookrelay_common::ids::{DeliveryId, EndpointId, ReportId};
use hookrelay_common::model::validate_filters;
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::sealed::MasterKey;
use hookrelay_common::time::{now_ms, to_timestamp};
use prost::Message;
use sled::transaction::{ConflictableTransactionResult, TransactionError, Transactional, TransactionalTree};
use sled::{Batch, Db, Tree};
use tokio::sync::broadcast;

use super::{
    AgentEvent, DeliveryQuery, EndpointChange, IngestOutcome, MAX_SECRETS_PER_ENDPOINT, Page, PageRequest, PruneCutoff,
    PrunePass, Report, Store, StoreStats, is_prunable, list_ids, lost_agents, merge_delivery,
};
use crate::error::{Error, Result};

/// sled's page cache; its default (1 GiB) lets the process grow far beyond what control needs.
pub const DEFAULT_CACHE_CAPACITY: u64 = 64 * 1024 * 1024;
/// Deltas kept for watchers that fall behind; a watcher further behind gets a fresh snapshot.
const CHANGE_FEED_CAPACITY: usize = 1024;
/// Most records one `ListDeliveries` call examines; past it, the page ends early with a token to continue.
const MAX_DELIVERIES_SCANNED: usize = 100_000;
/// Deliveries removed under one hold of the ingest lock: a report batch waits for one chunk at most (about 3 ms for
/// 64 deliveries of two attempts in a debug build), never for a whole pass (about 85 ms for 1,000).
const PRUNE_CHUNK: usize = 64;
const VERSION_KEY: &[u8] = b"config_version";
const KEY_CHECK_KEY: &[u8] = b"master_key_check";

/// An endpoint as stored: its fields in the clear, its secrets sealed.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredEndpoint {
    #[prost(message, optional, tag = "1")]
    endpoint: Option<pb::Endpoint>,
    /// Plaintext secrets of records written before secrets were sealed (where `pb::AgentEndpoint` has its
    /// `secrets`); sealed into `secrets` and cleared when the store opens.
    #[prost(string, repeated, tag = "2")]
    legacy_secrets: Vec<String>,
    /// Primary first, then the previous ones still in their overlap, newest first.
    #[prost(message, repeated, tag = "3")]
    secrets: Vec<StoredSecret>,
}

/// One sealed signing secret.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredSecret {
    /// The `whsec_` text sealed under the master key, bound to the endpoint id ([`secret_context`]).
    #[prost(bytes = "vec", tag = "1")]
    sealed: Vec<u8>,
    /// When the secret stops being valid (unix ms); 0 for the primary, which does not expire.
    #[prost(uint64, tag = "2")]
    expires_at_ms: u64,
}

impl StoredEndpoint {
    fn fields(&self) -> &pb::Endpoint {
        self.endpoint.as_ref().expect("records without an endpoint are refused when read")
    }
}

/// What a sealed secret is bound to: a sealed secret copied onto another endpoint does not open.
fn secret_context(endpoint_id: &str) -> Vec<u8> {
    format!("hookrelay/endpoint-secret/v1/{endpoint_id}").into_bytes()
}

/// The sled-backed store.
pub struct SledStore {
    config: ConfigTrees,
    /// Seals and opens signing secrets.
    key: MasterKey,
    log: LogTrees,
    agents: Tree,
    /// Serialises config mutations and snapshots.
    config_lock: tokio::sync::Mutex<()>,
    flusher: Flusher,
    changes: broadcast::Sender<Arc<pb::ConfigDelta>>,
}

struct ConfigTrees {
    owners: Tree,
    event_types: Tree,
    endpoints: Tree,
    owner_endpoints: Tree,
    meta: Tree,
}

/// The delivery log's trees, cloned onto blocking threads.
#[derive(Clone)]
struct LogTrees {
    deliveries: Tree,
    endpoint_deliveries: Tree,
    attempts: Tree,
    reports: Tree,
    /// Serialises report batches: see the module documentation.
    ingest_lock: Arc<Mutex<()>>,
    /// Records in `deliveries`, counted once at open (sled's `len` is a scan) and kept up as records are added.
    delivery_count: Arc<AtomicU64>,
}

/// One config mutation: a batch per tree, committed with the version bump, and the delta announcing it.
#[derive(Default)]
struct ConfigChange {
    owners: Batch,
    event_types: Batch,
    endpoints: Batch,
    owner_endpoints: Batch,
    delta: pb::ConfigDelta,
}

impl ConfigChange {
    fn put_owner(&mut self, owner: &pb::Owner) {
        self.owners.insert(owner.id.as_bytes(), owner.encode_to_vec());
        self.delta.upsert_owners.push(owner.clone());
    }

    fn put_event_type(&mut self, event_type: &pb::EventType) {
        self.event_types.insert(event_type.name.as_bytes(), event_type.encode_to_vec());
        self.delta.upsert_event_types.push(event_type.clone());
    }

    /// Writes `stored` and announces `view`, the same endpoint with its secrets in the clear.
    fn put_endpoint(&mut self, stored: &StoredEndpoint, view: pb::AgentEndpoint) {
        let fields = stored.fields();
        self.endpoints.insert(fields.id.as_bytes(), stored.encode_to_vec());
        self.owner_endpoints.insert(owner_endpoint_key(&fields.owner_id, &fields.id), &[]);
        self.delta.upsert_endpoints.push(view);
    }
}

fn owner_endpoint_key(owner_id: &str, endpoint_id: &str) -> Vec<u8> {
    format!("{owner_id}/{endpoint_id}").into_bytes()
}

/// The id of the report an attempt came in, stored after the attempt's own fields (see the module documentation).
#[derive(Clone, PartialEq, prost::Message)]
struct AttemptReportId {
    #[prost(string, tag = "100")]
    report_id: String,
}

/// An attempt's record: the attempt, then the id of the report that brought it.
fn attempt_record(attempt: &pb::Attempt, report_id: &ReportId) -> Vec<u8> {
    let mut record = attempt.encode_to_vec();
    AttemptReportId { report_id: report_id.to_string() }.encode(&mut record).expect("a Vec grows as needed");
    record
}

/// The id of the report stored with the attempt record under `key`, if there is a record that has one.
fn stored_report_id(log: &LogTrees, key: &[u8]) -> Result<Option<String>> {
    let Some(record) = log.attempts.get(key)? else { return Ok(None) };
    let stored = AttemptReportId::decode(record.as_ref()).map(|stored| stored.report_id).unwrap_or_default();
    Ok((!stored.is_empty()).then_some(stored))
}

fn attempt_key(delivery_id: &str, number: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(delivery_id.len() + 4);
    key.extend_from_slice(delivery_id.as_bytes());
    key.extend_from_slice(&number.to_be_bytes());
    key
}

fn endpoint_of(endpoint: &pb::AgentEndpoint) -> Option<&pb::Endpoint> {
    endpoint.endpoint.as_ref()
}

fn decode<T: Message + Default>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T> {
    T::decode(bytes).map_err(|error| Error::Corrupt { what: what(), reason: error.to_string() })
}

fn get<T: Message + Default>(tree: &Tree, key: &str, what: impl FnOnce() -> String) -> Result<Option<T>> {
    tree.get(key)?.map(|bytes| decode(&bytes, what)).transpose()
}

/// Reads one page of `tree` in key order, resuming after `page.after`.
fn list_page<T: Message + Default>(tree: &Tree, page: &PageRequest, kind: &str) -> Result<Page<T>> {
    let start = match &page.after {
        Some(after) => Bound::Excluded(after.as_bytes()),
        None => Bound::Unbounded,
    };
    let mut items = Vec::with_capacity(page.size);
    let mut last_key = None;
    for entry in tree.range::<&[u8], _>((start, Bound::Unbounded)) {
        let (key, value) = entry?;
        if items.len() == page.size {
            return Ok(Page { items, next_page_token: last_key.unwrap_or_default() });
        }
        let key = String::from_utf8_lossy(&key).into_owned();
        items.push(decode(&value, || format!("{kind} {key:?}"))?);
        last_key = Some(key);
    }
    Ok(Page { items, next_page_token: String::new() })
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

/// Serialises flushes and lets callers share one (see the module documentation).
struct Flusher {
    db: Db,
    /// Tickets handed out; a caller takes one after its writes.
    requested: Arc<AtomicU64>,
    /// The highest ticket whose writes a completed flush covers. Held for the whole flush.
    completed: Arc<Mutex<u64>>,
}

impl Flusher {
    /// Returns once every write made before the call is durable. The flush runs on a blocking thread that holds the
    /// lock until it ends, so a caller that gives up waiting can never cause two flushes at once.
    async fn flush(&self) -> Result<()> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let (db, requested, completed) = (self.db.clone(), self.requested.clone(), self.completed.clone());
        blocking(move || {
            let mut completed = completed.lock().unwrap_or_else(PoisonError::into_inner);
            if *completed >= ticket {
                return Ok(());
            }
            // Every ticket up to `target` was taken after its writes, and the flush starts after this load.
            let target = requested.load(Ordering::SeqCst);
            db.flush()?;
            *completed = target;
            Ok(())
        })
        .await
    }
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
        let config = ConfigTrees {
            owners: db.open_tree("owners")?,
            event_types: db.open_tree("event_types")?,
            endpoints: db.open_tree("endpoints")?,
            owner_endpoints: db.open_tree("owner_endpoints")?,
            meta: db.open_tree("meta")?,
        };
        let deliveries = db.open_tree("deliveries")?;
        let log = LogTrees {
            delivery_count: Arc::new(AtomicU64::new(deliveries.len() as u64)),
            deliveries,
            endpoint_deliveries: db.open_tree("endpoint_deliveries")?,
            attempts: db.open_tree("attempts")?,
            reports: db.open_tree("reports")?,
            ingest_lock: Arc::default(),
        };
        let agents = db.open_tree("agents")?;
        let flusher =
            Flusher { db: db.clone(), requested: Arc::new(AtomicU64::new(0)), completed: Arc::new(Mutex::new(0)) };
        let (changes, _) = broadcast::channel(CHANGE_FEED_CAPACITY);
        let store = Self { config, key, log, agents, config_lock: tokio::sync::Mutex::new(()), flusher, changes };
        store.check_master_key()?;
        store.seal_legacy_secrets()?;
        db.flush()?;
        Ok(store)
    }

    /// Checks the key against the stored check value, or stores one on first open.
    fn check_master_key(&self) -> Result<()> {
        match self.config.meta.get(KEY_CHECK_KEY)? {
            Some(check) => self.key.verify_check_value(&check).map_err(|_| Error::WrongMasterKey),
            None => {
                self.config.meta.insert(KEY_CHECK_KEY, self.key.check_value())?;
                Ok(())
            }
        }
    }

    /// Seals the plaintext secrets that records from before sealing still hold. Agents see no change, so the
    /// config version stays.
    fn seal_legacy_secrets(&self) -> Result<()> {
        let mut batch = Batch::default();
        let mut sealed = 0usize;
        for stored in self.all_endpoints()? {
            if stored.legacy_secrets.is_empty() {
                continue;
            }
            let id = stored.fields().id.clone();
            let mut secrets: Vec<StoredSecret> = stored
                .legacy_secrets
                .iter()
                .map(|text| StoredSecret {
                    sealed: self.key.seal(text.as_bytes(), &secret_context(&id)),
                    expires_at_ms: 0,
                })
                .collect();
            secrets.extend(stored.secrets);
            let record = StoredEndpoint { endpoint: stored.endpoint, legacy_secrets: Vec::new(), secrets };
            batch.insert(id.as_bytes(), record.encode_to_vec());
            sealed += 1;
        }
        if sealed > 0 {
            self.config.endpoints.apply_batch(batch)?;
            tracing::info!(
                endpoints = sealed,
                "sealed the plaintext signing secrets of endpoints stored by an earlier version"
            );
        }
        Ok(())
    }

    /// Seals `secrets` (text and expiry) for the endpoint `fields`.
    fn seal_endpoint(&self, fields: pb::Endpoint, secrets: &[(String, u64)]) -> StoredEndpoint {
        let context = secret_context(&fields.id);
        let secrets = secrets
            .iter()
            .map(|(text, expires_at_ms)| StoredSecret {
                sealed: self.key.seal(text.as_bytes(), &context),
                expires_at_ms: *expires_at_ms,
            })
            .collect();
        StoredEndpoint { endpoint: Some(fields), legacy_secrets: Vec::new(), secrets }
    }

    /// The endpoint as agents see it: its fields and its secrets in the clear, primary first.
    fn agent_view(&self, stored: &StoredEndpoint) -> Result<pb::AgentEndpoint> {
        let fields = stored.fields();
        let context = secret_context(&fields.id);
        let secrets = stored
            .secrets
            .iter()
            .map(|secret| {
                let text = self.key.open(&secret.sealed, &context).map_err(|error| Error::Corrupt {
                    what: format!("signing secret of endpoint {}", fields.id),
                    reason: error.to_string(),
                })?;
                String::from_utf8(text).map_err(|_| Error::Corrupt {
                    what: format!("signing secret of endpoint {}", fields.id),
                    reason: "not UTF-8".into(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(pb::AgentEndpoint { endpoint: Some(fields.clone()), secrets })
    }

    /// The persisted config version; read under the config lock for a consistent answer.
    fn config_version(&self) -> Result<u64> {
        Ok(self.config.meta.get(VERSION_KEY)?.map_or(0, |bytes| {
            let mut be = [0u8; 8];
            be.copy_from_slice(&bytes[..8.min(bytes.len())]);
            u64::from_be_bytes(be)
        }))
    }

    /// Commits `change` with the next version, flushes, then publishes the delta. Call with the config lock held.
    async fn commit(&self, change: ConfigChange) -> Result<u64> {
        let base_version = self.config_version()?;
        let version = base_version + 1;
        let c = &self.config;
        let trees = [&c.owners, &c.event_types, &c.endpoints, &c.owner_endpoints, &c.meta];
        let committed: Result<(), TransactionError<()>> = trees.as_slice().transaction(|tx| {
            tx[0].apply_batch(&change.owners)?;
            tx[1].apply_batch(&change.event_types)?;
            tx[2].apply_batch(&change.endpoints)?;
            tx[3].apply_batch(&change.owner_endpoints)?;
            tx[4].insert(VERSION_KEY, &version.to_be_bytes())?;
            Ok(())
        });
        committed.map_err(storage_error)?;
        self.flusher.flush().await?;
        let delta = pb::ConfigDelta { version, base_version, ..change.delta };
        // No receivers just means no agent is connected.
        let _ = self.changes.send(Arc::new(delta));
        Ok(version)
    }

    fn owner(&self, id: &str) -> Result<pb::Owner> {
        get(&self.config.owners, id, || format!("owner {id:?}"))?
            .ok_or_else(|| Error::NotFound(format!("owner {id:?}")))
    }

    fn event_type(&self, name: &str) -> Result<pb::EventType> {
        get(&self.config.event_types, name, || format!("event type {name:?}"))?
            .ok_or_else(|| Error::NotFound(format!("event type {name:?}")))
    }

    fn stored_endpoint(&self, id: &str) -> Result<StoredEndpoint> {
        let found: Option<StoredEndpoint> = get(&self.config.endpoints, id, || format!("endpoint {id}"))?;
        match found {
            Some(endpoint) if endpoint.endpoint.is_some() => Ok(endpoint),
            Some(_) => {
                Err(Error::Corrupt { what: format!("endpoint {id}"), reason: "the record has no endpoint".into() })
            }
            None => Err(Error::NotFound(format!("endpoint {id}"))),
        }
    }

    fn owner_endpoint_ids(&self, owner_id: &str) -> Result<Vec<String>> {
        let prefix = owner_endpoint_key(owner_id, "");
        self.config
            .owner_endpoints
            .scan_prefix(&prefix)
            .keys()
            .map(|key| Ok(String::from_utf8_lossy(&key?[prefix.len()..]).into_owned()))
            .collect()
    }

    fn all_endpoints(&self) -> Result<Vec<StoredEndpoint>> {
        self.config
            .endpoints
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                let what = || format!("endpoint {}", String::from_utf8_lossy(&key));
                let stored: StoredEndpoint = decode(&value, what)?;
                if stored.endpoint.is_none() {
                    return Err(Error::Corrupt { what: what(), reason: "the record has no endpoint".into() });
                }
                Ok(stored)
            })
            .collect()
    }

    /// Checks an endpoint's filters against the catalog as it is now.
    fn check_filters(&self, filters: &[String]) -> Result<()> {
        let catalog = self
            .config
            .event_types
            .iter()
            .keys()
            .map(|key| Ok(String::from_utf8_lossy(&key?).into_owned()))
            .collect::<Result<Vec<String>>>()?;
        validate_filters(filters, |name| catalog.binary_search_by(|known| known.as_str().cmp(name)).is_ok(), {
            catalog.iter().map(String::as_str)
        })?;
        Ok(())
    }
}

#[async_trait]
impl Store for SledStore {
    async fn create_owner(&self, owner: pb::Owner) -> Result<pb::Owner> {
        let _lock = self.config_lock.lock().await;
        if self.config.owners.contains_key(&owner.id)? {
            return Err(Error::AlreadyExists(format!("owner {:?}", owner.id)));
        }
        let mut change = ConfigChange::default();
        change.put_owner(&owner);
        self.commit(change).await?;
        Ok(owner)
    }

    async fn get_owner(&self, id: &str) -> Result<pb::Owner> {
        self.owner(id)
    }

    async fn list_owners(&self, page: PageRequest) -> Result<Page<pb::Owner>> {
        list_page(&self.config.owners, &page, "owner")
    }

    async fn update_owner(&self, id: &str, name: Option<String>) -> Result<pb::Owner> {
        let _lock = self.config_lock.lock().await;
        let mut owner = self.owner(id)?;
        match name {
            Some(name) if name != owner.name => owner.name = name,
            _ => return Ok(owner),
        }
        owner.updated_at = Some(to_timestamp(now_ms()));
        let mut change = ConfigChange::default();
        change.put_owner(&owner);
        self.commit(change).await?;
        Ok(owner)
    }

    async fn delete_owner(&self, id: &str) -> Result<()> {
        let _lock = self.config_lock.lock().await;
        self.owner(id)?;
        let endpoints = self.owner_endpoint_ids(id)?;
        if !endpoints.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "owner {id:?} still has {} endpoint(s): {}; delete them first",
                endpoints.len(),
                list_ids(&endpoints)
            )));
        }
        let mut change = ConfigChange::default();
        change.owners.remove(id.as_bytes());
        change.delta.delete_owners.push(id.to_owned());
        self.commit(change).await?;
        Ok(())
    }

    async fn create_event_type(&self, event_type: pb::EventType) -> Result<pb::EventType> {
        let _lock = self.config_lock.lock().await;
        if self.config.event_types.contains_key(&event_type.name)? {
            return Err(Error::AlreadyExists(format!("event type {:?}", event_type.name)));
        }
        let mut change = ConfigChange::default();
        change.put_event_type(&event_type);
        self.commit(change).await?;
        Ok(event_type)
    }

    async fn get_event_type(&self, name: &str) -> Result<pb::EventType> {
        self.event_type(name)
    }

    async fn list_event_types(&self, page: PageRequest) -> Result<Page<pb::EventType>> {
        list_page(&self.config.event_types, &page, "event type")
    }

    async fn update_event_type(&self, name: &str, description: Option<String>) -> Result<pb::EventType> {
        let _lock = self.config_lock.lock().await;
        let mut event_type = self.event_type(name)?;
        match description {
            Some(description) if description != event_type.description => event_type.description = description,
            _ => return Ok(event_type),
        }
        event_type.updated_at = Some(to_timestamp(now_ms()));
        let mut change = ConfigChange::default();
        change.put_event_type(&event_type);
        self.commit(change).await?;
        Ok(event_type)
    }

    async fn delete_event_type(&self, name: &str) -> Result<()> {
        let _lock = self.config_lock.lock().await;
        self.event_type(name)?;
        let subscribers: Vec<String> = self
            .all_endpoints()?
            .into_iter()
            .filter_map(|stored| stored.endpoint)
            .filter(|endpoint| endpoint.filter_types.iter().any(|filter| filter == name))
            .map(|endpoint| endpoint.id)
            .collect();
        if !subscribers.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "event type {name:?} is still subscribed to by {} endpoint(s): {}; change their filters first",
                subscribers.len(),
                list_ids(&subscribers)
            )));
        }
        let mut change = ConfigChange::default();
        change.event_types.remove(name.as_bytes());
        change.delta.delete_event_types.push(name.to_owned());
        self.commit(change).await?;
        Ok(())
    }

    async fn create_endpoint(&self, endpoint: pb::AgentEndpoint, max_per_owner: usize) -> Result<pb::AgentEndpoint> {
        let Some(fields) = endpoint_of(&endpoint) else {
            return Err(Error::invalid("endpoint", "required"));
        };
        let _lock = self.config_lock.lock().await;
        self.owner(&fields.owner_id)?;
        self.check_filters(&fields.filter_types)?;
        let existing = self.config.owner_endpoints.scan_prefix(owner_endpoint_key(&fields.owner_id, "")).count();
        if existing >= max_per_owner {
            return Err(Error::FailedPrecondition(format!(
                "owner {:?} already has {existing} endpoints, the most allowed per owner ({max_per_owner})",
                fields.owner_id
            )));
        }
        if self.config.endpoints.contains_key(&fields.id)? {
            return Err(Error::AlreadyExists(format!("endpoint {}", fields.id)));
        }
        let secrets: Vec<(String, u64)> = endpoint.secrets.iter().map(|secret| (secret.clone(), 0)).collect();
        let stored = self.seal_endpoint(fields.clone(), &secrets);
        let mut change = ConfigChange::default();
        change.put_endpoint(&stored, endpoint.clone());
        self.commit(change).await?;
        Ok(endpoint)
    }

    async fn get_endpoint(&self, id: &EndpointId) -> Result<pb::Endpoint> {
        Ok(self.stored_endpoint(id.as_str())?.endpoint.unwrap_or_default())
    }

    async fn list_endpoints(&self, owner_id: Option<&str>, page: PageRequest) -> Result<Page<pb::Endpoint>> {
        let Some(owner_id) = owner_id else {
            let page: Page<StoredEndpoint> = list_page(&self.config.endpoints, &page, "endpoint")?;
            let items = page.items.into_iter().filter_map(|endpoint| endpoint.endpoint).collect();
            return Ok(Page { items, next_page_token: page.next_page_token });
        };
        self.owner(owner_id)?;
        // The owner's slice of the index, resuming after the token (an endpoint id) within it.
        let prefix = owner_endpoint_key(owner_id, "");
        let start = owner_endpoint_key(owner_id, page.after.as_deref().unwrap_or(""));
        let mut items = Vec::with_capacity(page.size);
        for key in self.config.owner_endpoints.range::<&[u8], _>((Bound::Excluded(&start[..]), Bound::Unbounded)).keys()
        {
            let key = key?;
            if !key.starts_with(&prefix) {
                break;
            }
            if items.len() == page.size {
                let last: &pb::Endpoint = items.last().expect("page size is at least 1");
                return Ok(Page { next_page_token: last.id.clone(), items });
            }
            let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            items.push(self.stored_endpoint(&id)?.endpoint.unwrap_or_default());
        }
        Ok(Page { items, next_page_token: String::new() })
    }

    async fn update_endpoint(&self, id: &EndpointId, change: EndpointChange) -> Result<pb::Endpoint> {
        let _lock = self.config_lock.lock().await;
        let mut stored = self.stored_endpoint(id.as_str())?;
        let before = stored.endpoint.clone().unwrap_or_default();
        let mut endpoint = before.clone();
        change(&mut endpoint)?;
        if endpoint == before {
            return Ok(endpoint);
        }
        // Filters are checked only when they change, so that e.g. disabling an endpoint whose family filter lost
        // its last catalog type still works.
        if endpoint.filter_types != before.filter_types {
            self.check_filters(&endpoint.filter_types)?;
        }
        endpoint.id = before.id;
        endpoint.owner_id = before.owner_id;
        endpoint.created_at = before.created_at;
        endpoint.updated_at = Some(to_timestamp(now_ms()));
        stored.endpoint = Some(endpoint.clone());
        let view = self.agent_view(&stored)?;
        let mut change = ConfigChange::default();
        change.put_endpoint(&stored, view);
        self.commit(change).await?;
        Ok(endpoint)
    }

    async fn rotate_secret(
        &self,
        id: &EndpointId,
        secret: String,
        previous_expires_at_ms: u64,
    ) -> Result<pb::AgentEndpoint> {
        let _lock = self.config_lock.lock().await;
        let mut stored = self.stored_endpoint(id.as_str())?;
        let now = now_ms();
        // Secrets already past their overlap go now rather than at the timer's next turn.
        stored.secrets.retain(|old| old.expires_at_ms == 0 || old.expires_at_ms > now);
        if stored.secrets.len() >= MAX_SECRETS_PER_ENDPOINT {
            let next = stored.secrets.iter().map(|old| old.expires_at_ms).filter(|&at| at != 0).min().unwrap_or(now);
            return Err(Error::FailedPrecondition(format!(
                "endpoint {id} already has {} valid secrets, the most allowed ({MAX_SECRETS_PER_ENDPOINT}); the \
                 oldest expires at {}",
                stored.secrets.len(),
                jiff::Timestamp::from_millisecond(i64::try_from(next).unwrap_or(i64::MAX))
                    .map_or_else(|_| format!("{next} ms"), |at| at.to_string())
            )));
        }
        for old in &mut stored.secrets {
            if old.expires_at_ms == 0 {
                old.expires_at_ms = previous_expires_at_ms;
            }
        }
        let mut fields = stored.fields().clone();
        fields.updated_at = Some(to_timestamp(now));
        let fresh = self.seal_endpoint(fields, &[(secret, 0)]);
        let secrets = fresh.secrets.into_iter().chain(stored.secrets).collect();
        let stored = StoredEndpoint { endpoint: fresh.endpoint, legacy_secrets: Vec::new(), secrets };
        let view = self.agent_view(&stored)?;
        let mut change = ConfigChange::default();
        change.put_endpoint(&stored, view.clone());
        self.commit(change).await?;
        Ok(view)
    }

    async fn expire_secrets(&self, now_ms: u64) -> Result<Option<u64>> {
        let _lock = self.config_lock.lock().await;
        let mut change = ConfigChange::default();
        let mut next: Option<u64> = None;
        let mut expired = 0usize;
        for mut stored in self.all_endpoints()? {
            let before = stored.secrets.len();
            stored.secrets.retain(|secret| secret.expires_at_ms == 0 || secret.expires_at_ms > now_ms);
            for secret in &stored.secrets {
                if secret.expires_at_ms != 0 {
                    next = Some(next.map_or(secret.expires_at_ms, |at| at.min(secret.expires_at_ms)));
                }
            }
            if stored.secrets.len() != before {
                expired += before - stored.secrets.len();
                let view = self.agent_view(&stored)?;
                change.put_endpoint(&stored, view);
            }
        }
        if expired > 0 {
            let version = self.commit(change).await?;
            tracing::info!(secrets = expired, version, "removed signing secrets whose rotation overlap ended");
        }
        Ok(next)
    }

    async fn delete_endpoint(&self, id: &EndpointId) -> Result<()> {
        let _lock = self.config_lock.lock().await;
        let stored = self.stored_endpoint(id.as_str())?;
        let owner_id = stored.endpoint.map(|endpoint| endpoint.owner_id).unwrap_or_default();
        let mut change = ConfigChange::default();
        change.endpoints.remove(id.as_str().as_bytes());
        change.owner_endpoints.remove(owner_endpoint_key(&owner_id, id.as_str()));
        change.delta.delete_endpoints.push(id.to_string());
        self.commit(change).await?;
        Ok(())
    }

    async fn config_snapshot(&self) -> Result<pb::ConfigSnapshot> {
        let _lock = self.config_lock.lock().await;
        let owners = self
            .config
            .owners
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                decode(&value, || format!("owner {:?}", String::from_utf8_lossy(&key)))
            })
            .collect::<Result<_>>()?;
        let event_types = self
            .config
            .event_types
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                decode(&value, || format!("event type {:?}", String::from_utf8_lossy(&key)))
            })
            .collect::<Result<_>>()?;
        Ok(pb::ConfigSnapshot {
            version: self.config_version()?,
            owners,
            event_types,
            endpoints: self.all_endpoints()?.iter().map(|stored| self.agent_view(stored)).collect::<Result<_>>()?,
        })
    }

    fn subscribe_config(&self) -> broadcast::Receiver<Arc<pb::ConfigDelta>> {
        self.changes.subscribe()
    }

    async fn record_agent(&self, node_name: &str, event: AgentEvent) -> Result<pb::Agent> {
        let now = now_ms();
        let updated = self.agents.update_and_fetch(node_name, |old| {
            let mut agent = old
                .and_then(|bytes| pb::Agent::decode(bytes).ok())
                .unwrap_or_else(|| pb::Agent { node_name: node_name.to_owned(), ..Default::default() });
            event.clone().apply(&mut agent, now);
            Some(agent.encode_to_vec())
        })?;
        let bytes = updated.expect("the update always stores a record");
        decode(&bytes, || format!("agent {node_name:?}"))
    }

    async fn list_agents(&self) -> Result<Vec<pb::Agent>> {
        self.agents
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                decode(&value, || format!("agent {:?}", String::from_utf8_lossy(&key)))
            })
            .collect()
    }

    async fn ingest_reports(&self, node_name: &str, reports: Vec<Report>) -> Result<IngestOutcome> {
        let log = self.log.clone();
        let node_name = node_name.to_owned();
        let outcome = blocking(move || ingest(&log, &node_name, reports)).await?;
        // Duplicates are flushed for too: the call that stored them may not have finished its flush yet.
        self.flusher.flush().await?;
        Ok(outcome)
    }

    async fn list_deliveries(&self, query: DeliveryQuery) -> Result<Page<pb::Delivery>> {
        let log = self.log.clone();
        blocking(move || list_deliveries(&log, &query)).await
    }

    async fn get_delivery(&self, id: &DeliveryId) -> Result<(pb::Delivery, Vec<pb::Attempt>)> {
        let delivery = get(&self.log.deliveries, id.as_str(), || format!("delivery {id}"))?
            .ok_or_else(|| Error::NotFound(format!("delivery {id}")))?;
        let attempts = self
            .log
            .attempts
            .scan_prefix(id.as_str())
            .values()
            .map(|value| decode(&value?, || format!("attempt of delivery {id}")))
            .collect::<Result<_>>()?;
        Ok((delivery, attempts))
    }

    async fn prune_deliveries(
        &self,
        cutoff: PruneCutoff,
        after: Option<DeliveryId>,
        limit: NonZeroUsize,
    ) -> Result<PrunePass> {
        let agents = self.agents.clone();
        let log = self.log.clone();
        blocking(move || {
            let rule = PruneRule {
                cutoff_ms: cutoff.updated_before_ms,
                lost_agents: lost_agents(&readable_agents(&agents), cutoff.agents_silent_before_ms),
            };
            prune(&log, &rule, after.as_ref(), limit)
        })
        .await
    }

    async fn flush(&self) -> Result<()> {
        self.flusher.flush().await
    }

    fn stats(&self) -> Result<StoreStats> {
        Ok(StoreStats {
            config_version: self.config_version()?,
            deliveries: self.log.delivery_count.load(Ordering::Relaxed),
        })
    }
}

/// Stores one batch of reports; see the module documentation for the order of writes.
fn ingest(log: &LogTrees, node_name: &str, reports: Vec<Report>) -> Result<IngestOutcome> {
    let _guard = log.ingest_lock.lock().unwrap_or_else(PoisonError::into_inner);
    let mut outcome = IngestOutcome::default();
    let mut seen = HashSet::with_capacity(reports.len());
    let mut attempts = Batch::default();
    let mut markers = Batch::default();
    let mut index = Batch::default();
    // Deliveries merged within the batch first, so each is read and written once.
    let mut deliveries: Vec<pb::Delivery> = Vec::new();
    let mut positions: HashMap<DeliveryId, usize> = HashMap::new();
    // Attempt key → the report id this batch writes with it.
    let mut batch_attempt_ids: HashMap<Vec<u8>, String> = HashMap::new();
    for report in reports {
        if !seen.insert(report.report_id.clone()) {
            outcome.duplicates += 1;
            continue;
        }
        let delivery_id = report.delivery_id.as_str();
        let attempt = report.attempt.as_ref().map(|attempt| (attempt, attempt_key(delivery_id, attempt.number)));
        let held_id = match &attempt {
            Some((_, key)) => match batch_attempt_ids.get(key) {
                Some(id) => Some(id.clone()),
                None => stored_report_id(log, key)?,
            },
            None => None,
        };
        if held_id.as_deref() == Some(report.report_id.as_str())
            || log.reports.contains_key(report.report_id.as_str())?
        {
            outcome.duplicates += 1;
            continue;
        }
        outcome.stored += 1;
        match attempt {
            Some((attempt, key)) => {
                // The id this record held leaves it: a marker keeps it known.
                if let Some(displaced) = held_id {
                    markers.insert(displaced.as_bytes(), delivery_id);
                }
                batch_attempt_ids.insert(key.clone(), report.report_id.to_string());
                attempts.insert(key, attempt_record(attempt, &report.report_id));
            }
            None => markers.insert(report.report_id.as_str(), delivery_id),
        }
        if let Ok(endpoint_id) = EndpointId::parse(&report.delivery.endpoint_id) {
            index.insert(format!("{endpoint_id}{delivery_id}").as_bytes(), &[]);
        }
        let delivery = pb::Delivery { agent: node_name.to_owned(), ..report.delivery };
        match positions.get(&report.delivery_id) {
            Some(&at) => {
                let previous = std::mem::take(&mut deliveries[at]);
                deliveries[at] = merge_delivery(Some(previous), delivery);
            }
            None => {
                positions.insert(report.delivery_id, deliveries.len());
                deliveries.push(delivery);
            }
        }
    }
    log.endpoint_deliveries.apply_batch(index)?;
    for delivery in deliveries {
        let previous = log.deliveries.fetch_and_update(delivery.id.as_bytes(), |old| {
            let stored = old.and_then(|bytes| match pb::Delivery::decode(bytes) {
                Ok(stored) => Some(stored),
                Err(error) => {
                    tracing::warn!(delivery = %delivery.id, %error, "replacing a corrupt delivery record");
                    None
                }
            });
            Some(merge_delivery(stored, delivery.clone()).encode_to_vec())
        })?;
        if previous.is_none() {
            log.delivery_count.fetch_add(1, Ordering::Relaxed);
        }
    }
    log.attempts.apply_batch(attempts)?;
    log.reports.apply_batch(markers)?;
    Ok(outcome)
}

/// Lists deliveries newest first, from the endpoint index when the query names an endpoint.
fn list_deliveries(log: &LogTrees, query: &DeliveryQuery) -> Result<Page<pb::Delivery>> {
    list_deliveries_scanning(log, query, MAX_DELIVERIES_SCANNED)
}

/// [`list_deliveries`], examining at most `max_scanned` records before ending the page early.
fn list_deliveries_scanning(log: &LogTrees, query: &DeliveryQuery, max_scanned: usize) -> Result<Page<pb::Delivery>> {
    // Bounds in delivery-id space: ids are `dlv_` + a UUIDv7, and `dlv`` is the first key past that prefix.
    let mut low = DeliveryId::PREFIX.to_owned() + "_";
    let mut high = DeliveryId::PREFIX.to_owned() + "`";
    if let Some(ms) = query.created_after_ms {
        low = low.max(DeliveryId::lower_bound_at(ms));
    }
    if let Some(ms) = query.created_before_ms {
        high = high.min(DeliveryId::lower_bound_at(ms));
    }
    if let Some(after) = &query.after {
        high = high.min(after.as_str().to_owned());
    }
    let empty = Page { items: Vec::new(), next_page_token: String::new() };
    if low >= high {
        return Ok(empty);
    }
    let (tree, prefix) = match &query.endpoint_id {
        Some(endpoint_id) => (&log.endpoint_deliveries, endpoint_id.as_str()),
        None => (&log.deliveries, ""),
    };
    let range = (format!("{prefix}{low}").into_bytes())..(format!("{prefix}{high}").into_bytes());

    let mut items: Vec<pb::Delivery> = Vec::with_capacity(query.page_size);
    let mut last_examined = String::new();
    for (scanned, entry) in tree.range(range).rev().enumerate() {
        let (key, value) = entry?;
        let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        if scanned == max_scanned {
            // Bound the work of one call. The token is exclusive, so the caller continues below the last record
            // examined, this one included.
            return Ok(Page { items, next_page_token: last_examined });
        }
        last_examined.clone_from(&id);
        let delivery: pb::Delivery = if prefix.is_empty() {
            decode(&value, || format!("delivery {id}"))?
        } else {
            match get(&log.deliveries, &id, || format!("delivery {id}"))? {
                Some(delivery) => delivery,
                None => continue,
            }
        };
        if !query.matches(&delivery) {
            continue;
        }
        if items.len() == query.page_size {
            let next_page_token = items.last().map(|last| last.id.clone()).unwrap_or_default();
            return Ok(Page { items, next_page_token });
        }
        items.push(delivery);
    }
    Ok(Page { items, next_page_token: String::new() })
}

/// The agent records that decode; a damaged one is skipped with a warning (its deliveries are not pruned as lost),
/// so that it cannot stop retention.
fn readable_agents(agents: &Tree) -> Vec<pb::Agent> {
    let mut readable = Vec::new();
    for entry in agents.iter() {
        match entry.map_err(Error::from).and_then(|(key, value)| {
            decode::<pb::Agent>(&value, || format!("agent {:?}", String::from_utf8_lossy(&key)))
        }) {
            Ok(agent) => readable.push(agent),
            Err(error) => tracing::warn!(%error, "retention skips an agent record it cannot read"),
        }
    }
    readable
}

/// What one retention pass removes: the deliveries [`is_prunable`] at `cutoff_ms` with these lost agents.
struct PruneRule {
    cutoff_ms: u64,
    lost_agents: HashSet<String>,
}

impl PruneRule {
    fn removes(&self, delivery: &pb::Delivery) -> bool {
        is_prunable(delivery, self.cutoff_ms, &self.lost_agents)
    }
}

/// One retention pass; see the module documentation.
fn prune(log: &LogTrees, rule: &PruneRule, after: Option<&DeliveryId>, limit: NonZeroUsize) -> Result<PrunePass> {
    let (candidates, examined, resume_after) = prune_candidates(log, rule, after, limit)?;
    let mut removed = 0;
    for chunk in candidates.chunks(PRUNE_CHUNK) {
        removed += remove_deliveries(log, rule, chunk)?;
    }
    let reports_removed = prune_report_markers(log, rule.cutoff_ms, limit)?;
    Ok(PrunePass {
        examined,
        removed,
        reports_removed,
        resume_after,
        reports_remaining: reports_removed == limit.get(),
    })
}

/// The deliveries `rule` removes among the first `limit` created before its cutoff (after `after`), how many were
/// looked at, and where the next pass resumes (`None` once the range is exhausted).
fn prune_candidates(
    log: &LogTrees,
    rule: &PruneRule,
    after: Option<&DeliveryId>,
    limit: NonZeroUsize,
) -> Result<(Vec<DeliveryId>, usize, Option<DeliveryId>)> {
    let start = match after {
        Some(after) => Bound::Excluded(after.as_str().to_owned()),
        None => Bound::Included(DeliveryId::PREFIX.to_owned() + "_"),
    };
    let end = Bound::Excluded(DeliveryId::lower_bound_at(rule.cutoff_ms));
    let mut candidates = Vec::new();
    let mut examined = 0;
    let mut last = None;
    for entry in log.deliveries.range::<String, _>((start, end)).take(limit.get()) {
        let (key, value) = entry?;
        examined += 1;
        let text = String::from_utf8_lossy(&key);
        let Ok(id) = DeliveryId::parse(&text) else {
            tracing::warn!(key = %text, "skipping a delivery record whose key is not a delivery id");
            continue;
        };
        match pb::Delivery::decode(&value[..]) {
            Ok(delivery) if rule.removes(&delivery) => candidates.push(id.clone()),
            Ok(_) => {}
            // Kept, and said every sweep: a corrupt record is for an operator to look at, not to drop silently.
            Err(error) => tracing::warn!(delivery = %id, %error, "not pruning a corrupt delivery record"),
        }
        last = Some(id);
    }
    let resume_after = if examined == limit.get() { last } else { None };
    Ok((candidates, examined, resume_after))
}

/// Removes the deliveries of `ids` that `rule` still removes, with their attempts and index entries, in one
/// transaction under the ingest lock; returns how many went.
fn remove_deliveries(log: &LogTrees, rule: &PruneRule, ids: &[DeliveryId]) -> Result<usize> {
    let _guard = log.ingest_lock.lock().unwrap_or_else(PoisonError::into_inner);
    // Transactions cannot scan, so the attempt keys are read first; the lock keeps them from changing meanwhile.
    let attempts: Vec<Vec<sled::IVec>> = ids
        .iter()
        .map(|id| log.attempts.scan_prefix(id.as_str()).keys().collect::<sled::Result<_>>())
        .collect::<sled::Result<_>>()?;
    let trees = [&log.deliveries, &log.attempts, &log.endpoint_deliveries];
    let removed: Result<usize, TransactionError<()>> = trees.as_slice().transaction(|tx| {
        let mut removed = 0;
        for (id, attempt_keys) in ids.iter().zip(&attempts) {
            if remove_delivery(tx, rule, id, attempt_keys)? {
                removed += 1;
            }
        }
        Ok(removed)
    });
    let removed = removed.map_err(storage_error)?;
    log.delivery_count.fetch_sub(removed as u64, Ordering::Relaxed);
    Ok(removed)
}

/// Removes one delivery (`tx`: deliveries, attempts, endpoint index) if `rule` still removes it; whether it did.
fn remove_delivery(
    tx: &[TransactionalTree],
    rule: &PruneRule,
    id: &DeliveryId,
    attempt_keys: &[sled::IVec],
) -> ConflictableTransactionResult<bool, ()> {
    let Some(bytes) = tx[0].get(id.as_str())? else { return Ok(false) };
    let Ok(delivery) = pb::Delivery::decode(&bytes[..]) else { return Ok(false) };
    if !rule.removes(&delivery) {
        return Ok(false);
    }
    for key in attempt_keys {
        tx[1].remove(key)?;
    }
    if let Ok(endpoint_id) = EndpointId::parse(&delivery.endpoint_id) {
        tx[2].remove(format!("{endpoint_id}{id}").as_bytes())?;
    }
    tx[0].remove(id.as_str())?;
    Ok(true)
}

/// Removes at most `limit` report-id markers whose ids were created before `cutoff_ms`; returns how many went.
fn prune_report_markers(log: &LogTrees, cutoff_ms: u64, limit: NonZeroUsize) -> Result<usize> {
    let start = ReportId::PREFIX.to_owned() + "_";
    let end = ReportId::lower_bound_at(cutoff_ms);
    let mut batch = Batch::default();
    let mut removed = 0;
    for key in log.reports.range(start..end).keys().take(limit.get()) {
        batch.remove(key?);
        removed += 1;
    }
    log.reports.apply_batch(batch)?;
    Ok(removed)
}

impl SledStore {
    /// Opens the store at `path` once it is unlocked (see [`hookrelay_tests::eventually::when_unlocked`]). For tests.
    #[cfg(test)]
    pub(crate) fn reopen(path: &Path, key: MasterKey) -> Result<SledStore> {
        hookrelay_tests::eventually::when_unlocked(|| SledStore::open(path, key.clone()))
    }
}

#[cfg(test)]
mod tests {
    use hookrelay_common::signing::Secret;

    use super::*;

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

    #[tokio::test]
    async fn owners_bump_the_version_and_publish_deltas() {
        let (_dir, store) = open();
        let mut feed = store.subscribe_config();
        store.create_owner(owner("acme")).await.unwrap();
        let error = store.create_owner(owner("acme")).await.unwrap_err();
        assert_eq!(error.to_string(), "owner \"acme\" already exists");

        let delta = feed.recv().await.unwrap();
        assert_eq!((delta.base_version, delta.version), (0, 1));
        assert_eq!(delta.upsert_owners[0].id, "acme");

        let renamed = store.update_owner("acme", Some("ACME".into())).await.unwrap();
        assert_eq!(renamed.name, "ACME");
        assert!(renamed.updated_at.is_some());
        // Unchanged: no new version.
        store.update_owner("acme", Some("ACME".into())).await.unwrap();
        store.update_owner("acme", None).await.unwrap();
        assert_eq!(store.config_snapshot().await.unwrap().version, 2);

        store.delete_owner("acme").await.unwrap();
        let _rename = feed.recv().await.unwrap();
        let delete = feed.recv().await.unwrap();
        assert_eq!(delete.delete_owners, vec!["acme".to_string()]);
        assert_eq!((delete.base_version, delete.version), (2, 3));
        assert_eq!(store.get_owner("acme").await.unwrap_err().to_string(), "owner \"acme\" not found");
    }

    #[tokio::test]
    async fn endpoints_need_their_owner_and_catalog_types() {
        let (_dir, store) = seeded().await;
        let error = store.create_endpoint(endpoint("ghost", &["*"]), 10).await.unwrap_err();
        assert_eq!(error.to_string(), "owner \"ghost\" not found");
        let error = store.create_endpoint(endpoint("acme", &["payment.settled", "card.viewed"]), 10).await.unwrap_err();
        assert!(matches!(error, Error::InvalidArgument { .. }));
        assert_eq!(error.to_string(), "filter_types[1]: event type \"card.viewed\" is not in the catalog");
        let error = store.create_endpoint(endpoint("acme", &["card.*"]), 10).await.unwrap_err();
        assert!(error.to_string().starts_with("filter_types[0]: no event type in the catalog matches"), "{error}");
        store.create_endpoint(endpoint("acme", &["payment.*", "payment.failed"]), 10).await.unwrap();
    }

    #[tokio::test]
    async fn the_endpoint_limit_holds_under_concurrent_creates() {
        let (_dir, store) = seeded().await;
        let store = Arc::new(store);
        let creates = (0..8).map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.create_endpoint(endpoint("acme", &["*"]), 3).await })
        });
        let results = futures::future::join_all(creates).await;
        let created = results.iter().filter(|result| result.as_ref().unwrap().is_ok()).count();
        assert_eq!(created, 3);
        let refused = results.into_iter().find_map(|result| result.unwrap().err()).unwrap();
        assert!(matches!(refused, Error::FailedPrecondition(_)));
        assert_eq!(refused.to_string(), "owner \"acme\" already has 3 endpoints, the most allowed per owner (3)");
    }

    #[tokio::test]
    async fn deletes_are_refused_while_referenced() {
        let (_dir, store) = seeded().await;
        let exact = store.create_endpoint(endpoint("acme", &["payment.settled"]), 10).await.unwrap();
        let family = store.create_endpoint(endpoint("acme", &["payment.*"]), 10).await.unwrap();

        let error = store.delete_event_type("payment.settled").await.unwrap_err();
        assert!(matches!(error, Error::FailedPrecondition(_)));
        let text = error.to_string();
        assert!(text.contains(&id_of(&exact).to_string()) && !text.contains(&id_of(&family).to_string()), "{text}");
        store.delete_event_type("payment.failed").await.unwrap();

        let error = store.delete_owner("acme").await.unwrap_err().to_string();
        assert!(error.starts_with("owner \"acme\" still has 2 endpoint(s): "), "{error}");
        store.delete_endpoint(&id_of(&exact)).await.unwrap();
        store.delete_endpoint(&id_of(&family)).await.unwrap();
        let error = store.delete_endpoint(&id_of(&family)).await.unwrap_err();
        assert_eq!(error.to_string(), format!("endpoint {} not found", id_of(&family)));
        store.delete_owner("acme").await.unwrap();
    }

    #[tokio::test]
    async fn endpoint_updates_check_filters_and_skip_no_ops() {
        let (_dir, store) = seeded().await;
        let created = store.create_endpoint(endpoint("acme", &["payment.settled"]), 10).await.unwrap();
        let id = id_of(&created);
        let version = store.config_snapshot().await.unwrap().version;

        let same = store.update_endpoint(&id, Box::new(|_| Ok(()))).await.unwrap();
        assert_eq!(Some(&same), created.endpoint.as_ref());
        assert_eq!(store.config_snapshot().await.unwrap().version, version);

        let error = store
            .update_endpoint(
                &id,
                Box::new(|e| {
                    e.filter_types = vec!["nope".into()];
                    Ok(())
                }),
            )
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "filter_types[0]: event type \"nope\" is not in the catalog");

        let disabled = store
            .update_endpoint(
                &id,
                Box::new(|e| {
                    e.enabled = false;
                    e.id = "ep_forged".into();
                    Ok(())
                }),
            )
            .await
            .unwrap();
        assert!(!disabled.enabled);
        assert_eq!(disabled.id, id.as_str(), "ids cannot be changed");
        assert_eq!(store.config_snapshot().await.unwrap().version, version + 1);
        assert!(!store.get_endpoint(&id).await.unwrap().enabled);
    }

    #[tokio::test]
    async fn snapshots_carry_secrets_and_lists_page() {
        let (_dir, store) = seeded().await;
        for id in ["b", "c", "d", "e"] {
            store.create_owner(owner(id)).await.unwrap();
        }
        let first = store.list_owners(page(2, "")).await.unwrap();
        assert_eq!(first.items.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), ["acme", "b"]);
        assert_eq!(first.next_page_token, "b");
        let second = store.list_owners(page(2, "b")).await.unwrap();
        assert_eq!(second.next_page_token, "d");
        let last = store.list_owners(page(2, "d")).await.unwrap();
        assert_eq!((last.items.len(), last.next_page_token.as_str()), (1, ""));
        assert_eq!(store.list_owners(page(5, "")).await.unwrap().next_page_token, "");

        let mut ids = Vec::new();
        for owner_id in ["acme", "b", "acme", "acme"] {
            ids.push(id_of(&store.create_endpoint(endpoint(owner_id, &["*"]), 10).await.unwrap()));
        }
        let acme = store.list_endpoints(Some("acme"), page(2, "")).await.unwrap();
        assert_eq!(acme.items.len(), 2);
        assert!(acme.items.iter().all(|e| e.owner_id == "acme"));
        let rest = store.list_endpoints(Some("acme"), page(2, &acme.next_page_token)).await.unwrap();
        assert_eq!((rest.items.len(), rest.next_page_token.as_str()), (1, ""));
        assert_eq!(store.list_endpoints(None, page(10, "")).await.unwrap().items.len(), 4);
        let error = store.list_endpoints(Some("ghost"), page(10, "")).await.unwrap_err();
        assert_eq!(error.to_string(), "owner \"ghost\" not found");

        let snapshot = store.config_snapshot().await.unwrap();
        assert_eq!((snapshot.owners.len(), snapshot.event_types.len(), snapshot.endpoints.len()), (5, 2, 4));
        assert!(snapshot.endpoints.iter().all(|e| e.secrets.len() == 1 && e.secrets[0].starts_with("whsec_")));
    }

    #[tokio::test]
    async fn config_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        {
            let store = SledStore::reopen(dir.path(), key.clone()).unwrap();
            store.create_owner(owner("acme")).await.unwrap();
            store.create_event_type(event_type("a.b")).await.unwrap();
        }
        let store = SledStore::reopen(dir.path(), key).unwrap();
        let snapshot = store.config_snapshot().await.unwrap();
        assert_eq!(snapshot.version, 2);
        assert_eq!(snapshot.owners[0].name, "acme team");
        let mut feed = store.subscribe_config();
        store.create_owner(owner("b")).await.unwrap();
        assert_eq!(feed.recv().await.unwrap().base_version, 2);
    }

    #[tokio::test]
    async fn secrets_are_sealed_at_rest_and_open_only_under_the_right_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let created = {
            let store = SledStore::reopen(dir.path(), key.clone()).unwrap();
            store.create_owner(owner("acme")).await.unwrap();
            store.create_endpoint(endpoint("acme", &["*"]), 10).await.unwrap()
        };
        let secret = created.secrets[0].clone();
        // Nowhere in the database files does the secret appear in the clear.
        for file in walk(dir.path()) {
            let bytes = std::fs::read(&file).unwrap();
            let key_bytes = &secret.as_bytes()["whsec_".len()..];
            assert!(!bytes.windows(key_bytes.len()).any(|window| window == key_bytes), "{} has it", file.display());
        }

        let error = SledStore::reopen(dir.path(), MasterKey::generate()).err().expect("a wrong key is refused");
        assert!(matches!(error, Error::WrongMasterKey));
        assert!(error.to_string().starts_with("the master key does not match"), "{error}");

        let store = SledStore::reopen(dir.path(), key).unwrap();
        let snapshot = store.config_snapshot().await.unwrap();
        assert_eq!(snapshot.endpoints[0].secrets, [secret]);
        assert_eq!(store.get_endpoint(&id_of(&created)).await.unwrap(), created.endpoint.unwrap());
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
        }
        files
    }

    /// Rewrites the stored record of endpoint `id` with `edit`, through sled directly.
    fn tamper(dir: &Path, id: &EndpointId, edit: impl FnOnce(&mut StoredEndpoint)) {
        let db = raw_db(dir);
        let tree = db.open_tree("endpoints").unwrap();
        let mut stored = StoredEndpoint::decode(&tree.get(id.as_str()).unwrap().unwrap()[..]).unwrap();
        edit(&mut stored);
        tree.insert(id.as_str(), stored.encode_to_vec()).unwrap();
        db.flush().unwrap();
    }

    #[tokio::test]
    async fn tampered_or_moved_secrets_fail_loudly_instead_of_signing_with_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let (first, second) = {
            let store = SledStore::reopen(dir.path(), key.clone()).unwrap();
            store.create_owner(owner("acme")).await.unwrap();
            let first = store.create_endpoint(endpoint("acme", &["*"]), 10).await.unwrap();
            (first, store.create_endpoint(endpoint("acme", &["*"]), 10).await.unwrap())
        };
        tamper(dir.path(), &id_of(&first), |stored| {
            let last = stored.secrets[0].sealed.len() - 1;
            stored.secrets[0].sealed[last] ^= 0x40;
        });
        {
            let store = SledStore::reopen(dir.path(), key.clone()).unwrap();
            let error = store.config_snapshot().await.unwrap_err();
            assert!(matches!(error, Error::Corrupt { .. }));
            assert_eq!(
                error.to_string(),
                format!(
                    "stored signing secret of endpoint {} is corrupt: sealed value does not open: tampered with, moved \
                     from another record, or sealed under another key",
                    id_of(&first)
                )
            );
            assert_eq!(tonic::Status::from(error).code(), tonic::Code::Internal);
            // Reading the endpoint's fields needs no secret.
            store.get_endpoint(&id_of(&first)).await.unwrap();
        }
        // A valid sealed secret copied from another endpoint does not open either: secrets are bound to their id.
        let dir2 = dir.path().to_owned();
        let borrowed = {
            let db = raw_db(&dir2);
            let tree = db.open_tree("endpoints").unwrap();
            StoredEndpoint::decode(&tree.get(id_of(&second).as_str()).unwrap().unwrap()[..]).unwrap().secrets
        };
        tamper(dir.path(), &id_of(&first), |stored| stored.secrets = borrowed);
        let store = SledStore::reopen(dir.path(), key).unwrap();
        assert!(matches!(store.config_snapshot().await.unwrap_err(), Error::Corrupt { .. }));
    }

    #[tokio::test]
    async fn plaintext_secrets_of_earlier_versions_are_sealed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = endpoint("acme", &["*"]);
        let secret = legacy.secrets[0].clone();
        {
            let store = SledStore::reopen(dir.path(), MasterKey::generate()).unwrap();
            store.create_owner(owner("acme")).await.unwrap();
        }
        {
            // What an earlier version wrote: the agent's view, secrets in the clear, and no key check yet.
            let db = raw_db(dir.path());
            db.open_tree("meta").unwrap().remove(KEY_CHECK_KEY).unwrap();
            db.open_tree("endpoints").unwrap().insert(id_of(&legacy).as_str(), legacy.encode_to_vec()).unwrap();
            db.flush().unwrap();
        }
        let key = MasterKey::generate();
        {
            let store = SledStore::reopen(dir.path(), key.clone()).unwrap();
            assert_eq!(store.config_snapshot().await.unwrap().endpoints, std::slice::from_ref(&legacy));
        }
        let db = raw_db(dir.path());
        let raw = db.open_tree("endpoints").unwrap().get(id_of(&legacy).as_str()).unwrap().unwrap();
        let stored = StoredEndpoint::decode(&raw[..]).unwrap();
        assert!(stored.legacy_secrets.is_empty());
        assert_eq!(
            key.open(&stored.secrets[0].sealed, &secret_context(id_of(&legacy).as_str())).unwrap(),
            secret.as_bytes()
        );
    }

    #[tokio::test]
    async fn rotation_keeps_previous_secrets_until_they_expire_and_is_bounded() {
        let (_dir, store) = seeded().await;
        let created = store.create_endpoint(endpoint("acme", &["*"]), 10).await.unwrap();
        let id = id_of(&created);
        let mut expected = created.secrets.clone();
        let far = now_ms() + 3_600_000;
        for round in 1..MAX_SECRETS_PER_ENDPOINT {
            let new = Secret::generate().expose();
            let rotated = store.rotate_secret(&id, new.clone(), far + round as u64).await.unwrap();
            expected.insert(0, new);
            assert_eq!(rotated.secrets, expected, "primary first, then newest to oldest");
        }
        let error = store.rotate_secret(&id, Secret::generate().expose(), far).await.unwrap_err();
        assert!(matches!(error, Error::FailedPrecondition(_)));
        assert!(error.to_string().contains("already has 5 valid secrets, the most allowed (5)"), "{error}");

        // Expiry removes what is due and names the next one.
        assert_eq!(store.expire_secrets(now_ms()).await.unwrap(), Some(far + 1));
        assert_eq!(store.expire_secrets(far + 2).await.unwrap(), Some(far + 3));
        let secrets = store.config_snapshot().await.unwrap().endpoints[0].secrets.clone();
        assert_eq!(secrets, expected[..3]);
        let version = store.config_snapshot().await.unwrap().version;
        assert_eq!(store.expire_secrets(far + 2).await.unwrap(), Some(far + 3));
        assert_eq!(store.config_snapshot().await.unwrap().version, version, "nothing expired, no new version");
        assert_eq!(store.expire_secrets(u64::MAX).await.unwrap(), None);
        assert_eq!(store.config_snapshot().await.unwrap().endpoints[0].secrets, expected[..1]);
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

    #[tokio::test]
    async fn a_report_id_is_kept_with_its_attempt_and_still_deduplicates_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let endpoint = EndpointId::generate();
        let delivery = DeliveryId::generate();
        let reported = report(&delivery, &endpoint, 1, pb::DeliveryStatus::Succeeded);
        {
            let store = SledStore::open(dir.path(), key.clone()).unwrap();
            let outcome = store.ingest_reports("node-1", vec![reported.clone()]).await.unwrap();
            assert_eq!(outcome, IngestOutcome { stored: 1, duplicates: 0 });
            assert_eq!(store.log.reports.len(), 0, "no marker: the id is stored with the attempt");
            store.flush().await.unwrap();
        }
        let store = SledStore::reopen(dir.path(), key).unwrap();
        let outcome = store.ingest_reports("node-1", vec![reported.clone()]).await.unwrap();
        assert_eq!(outcome, IngestOutcome { stored: 0, duplicates: 1 });
        // Readers of the attempt see the attempt alone.
        let (_, attempts) = store.get_delivery(&delivery).await.unwrap();
        assert_eq!(attempts, [reported.attempt.clone().unwrap()]);

        // A cancellation has no attempt to carry its id: it leaves a marker, which deduplicates it.
        let mut cancelled = report(&delivery, &endpoint, 1, pb::DeliveryStatus::Cancelled);
        cancelled.attempt = None;
        let outcome = store.ingest_reports("node-1", vec![cancelled.clone()]).await.unwrap();
        assert_eq!(outcome, IngestOutcome { stored: 1, duplicates: 0 });
        let outcome = store.ingest_reports("node-1", vec![cancelled]).await.unwrap();
        assert_eq!(outcome, IngestOutcome { stored: 0, duplicates: 1 });
        assert_eq!(store.log.reports.len(), 1);
    }

    #[tokio::test]
    async fn attempts_stored_by_earlier_versions_deduplicate_by_their_markers() {
        let (_dir, store) = open();
        let endpoint = EndpointId::generate();
        let delivery = DeliveryId::generate();
        let reported = report(&delivery, &endpoint, 1, pb::DeliveryStatus::Pending);
        // What a version before this layout wrote: the attempt alone, and a marker for the report.
        let attempt = reported.attempt.clone().unwrap();
        store.log.attempts.insert(attempt_key(delivery.as_str(), 1), attempt.encode_to_vec()).unwrap();
        store.log.reports.insert(reported.report_id.as_str(), delivery.as_str()).unwrap();
        store.log.deliveries.insert(delivery.as_str(), reported.delivery.encode_to_vec()).unwrap();

        let outcome = store.ingest_reports("node-1", vec![reported.clone()]).await.unwrap();
        assert_eq!(outcome, IngestOutcome { stored: 0, duplicates: 1 });
        // Another report of the same attempt (two replays of a delivery can number their attempts alike) is new;
        // the first is still known by its marker.
        let other = Report { report_id: ReportId::generate(), ..reported.clone() };
        let outcome = store.ingest_reports("node-1", vec![other]).await.unwrap();
        assert_eq!(outcome, IngestOutcome { stored: 1, duplicates: 0 });
        assert_eq!(store.get_delivery(&delivery).await.unwrap().1, [attempt]);
        let outcome = store.ingest_reports("node-1", vec![reported]).await.unwrap();
        assert_eq!(outcome, IngestOutcome { stored: 0, duplicates: 1 });
    }

    #[tokio::test]
    async fn a_report_whose_attempt_another_report_replaced_stays_a_duplicate() {
        let (_dir, store) = open();
        let endpoint = EndpointId::generate();
        let delivery = DeliveryId::generate();
        // Two replays of a finished delivery, both numbering their attempt 3: the first failed, the second
        // succeeded.
        let first = report(&delivery, &endpoint, 3, pb::DeliveryStatus::Failed);
        let second = report(&delivery, &endpoint, 3, pb::DeliveryStatus::Succeeded);
        assert_eq!(store.ingest_reports("node-1", vec![first.clone()]).await.unwrap().stored, 1);
        assert_eq!(store.ingest_reports("node-1", vec![second.clone()]).await.unwrap().stored, 1);
        // The agent sends the first again (its answer was lost): a duplicate, the delivery is not rolled back.
        let outcome = store.ingest_reports("node-1", vec![first.clone(), second.clone()]).await.unwrap();
        assert_eq!(outcome, IngestOutcome { stored: 0, duplicates: 2 });
        let (stored, attempts) = store.get_delivery(&delivery).await.unwrap();
        assert_eq!(stored.status, pb::DeliveryStatus::Succeeded as i32);
        assert_eq!(attempts.iter().map(|a| a.status_code).collect::<Vec<_>>(), [200]);

        // The same within one batch, on another delivery.
        let other = DeliveryId::generate();
        let first = report(&other, &endpoint, 3, pb::DeliveryStatus::Failed);
        let second = report(&other, &endpoint, 3, pb::DeliveryStatus::Succeeded);
        let outcome = store.ingest_reports("node-1", vec![first.clone(), second.clone()]).await.unwrap();
        assert_eq!(outcome, IngestOutcome { stored: 2, duplicates: 0 });
        let outcome = store.ingest_reports("node-1", vec![first, second]).await.unwrap();
        assert_eq!(outcome, IngestOutcome { stored: 0, duplicates: 2 });
        assert_eq!(store.get_delivery(&other).await.unwrap().0.status, pb::DeliveryStatus::Succeeded as i32);
    }

    #[tokio::test]
    async fn reports_are_deduplicated_and_merged() {
        let (_dir, store) = open();
        let endpoint = EndpointId::generate();
        let delivery = DeliveryId::generate();
        let first = report(&delivery, &endpoint, 1, pb::DeliveryStatus::Pending);
        let second = report(&delivery, &endpoint, 2, pb::DeliveryStatus::Succeeded);

        let outcome = store.ingest_reports("node-1", vec![first.clone(), first.clone()]).await.unwrap();
        assert_eq!(outcome, IngestOutcome { stored: 1, duplicates: 1 });
        // The later attempt arrives before a replay of the earlier one: the delivery is not rolled back.
        let outcome = store.ingest_reports("node-1", vec![second.clone()]).await.unwrap();
        assert_eq!(outcome, IngestOutcome { stored: 1, duplicates: 0 });
        let replay = Report { report_id: ReportId::generate(), ..first.clone() };
        let outcome = store.ingest_reports("node-2", vec![first, replay]).await.unwrap();
        assert_eq!(outcome, IngestOutcome { stored: 1, duplicates: 1 });

        let (stored, attempts) = store.get_delivery(&delivery).await.unwrap();
        assert_eq!(stored.status, pb::DeliveryStatus::Succeeded as i32);
        assert_eq!(stored.attempts, 2);
        assert_eq!(stored.agent, "node-1");
        assert_eq!(attempts.iter().map(|a| a.number).collect::<Vec<_>>(), [1, 2]);
        let missing = DeliveryId::generate();
        assert_eq!(
            store.get_delivery(&missing).await.unwrap_err().to_string(),
            format!("delivery {missing} not found")
        );
    }

    #[tokio::test]
    async fn a_page_cut_short_by_the_scan_limit_resumes_without_skipping() {
        let (_dir, store) = open();
        let endpoint = EndpointId::generate();
        let reports: Vec<Report> =
            (0..12).map(|_| report(&DeliveryId::generate(), &endpoint, 1, pb::DeliveryStatus::Succeeded)).collect();
        let expected: HashSet<String> = reports.iter().map(|r| r.delivery_id.to_string()).collect();
        store.ingest_reports("node-1", reports).await.unwrap();

        for endpoint_id in [None, Some(endpoint.clone())] {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let query =
                    DeliveryQuery { endpoint_id: endpoint_id.clone(), page_size: 100, after, ..Default::default() };
                // Five records examined per call: every page ends at the scan limit, not at the page size.
                let page = list_deliveries_scanning(&store.log, &query, 5).unwrap();
                seen.extend(page.items.into_iter().map(|delivery| delivery.id));
                if page.next_page_token.is_empty() {
                    break;
                }
                after = Some(DeliveryId::parse(&page.next_page_token).unwrap());
            }
            assert_eq!(seen.len(), expected.len(), "{endpoint_id:?}: {seen:?}");
            assert_eq!(seen.into_iter().collect::<HashSet<_>>(), expected, "{endpoint_id:?}");
        }
    }

    #[tokio::test]
    async fn stats_count_each_delivery_once_and_again_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let store = SledStore::reopen(dir.path(), key.clone()).unwrap();
        store.create_owner(owner("acme")).await.unwrap();
        let endpoint = EndpointId::generate();
        let (one, two) = (DeliveryId::generate(), DeliveryId::generate());
        let reports = vec![
            report(&one, &endpoint, 1, pb::DeliveryStatus::Pending),
            report(&one, &endpoint, 2, pb::DeliveryStatus::Succeeded),
            report(&two, &endpoint, 1, pb::DeliveryStatus::Succeeded),
        ];
        store.ingest_reports("node-1", reports).await.unwrap();
        store.ingest_reports("node-1", vec![report(&two, &endpoint, 2, pb::DeliveryStatus::Succeeded)]).await.unwrap();
        assert_eq!(store.stats().unwrap(), StoreStats { config_version: 1, deliveries: 2 });
        drop(store);
        let store = SledStore::reopen(dir.path(), key).unwrap();
        assert_eq!(store.stats().unwrap(), StoreStats { config_version: 1, deliveries: 2 });
    }

    #[tokio::test]
    async fn deliveries_list_newest_first_with_filters() {
        let (_dir, store) = open();
        let (one, two) = (EndpointId::generate(), EndpointId::generate());
        let mut ids = Vec::new();
        let mut reports = Vec::new();
        for index in 0..6u32 {
            let id = DeliveryId::generate();
            let endpoint = if index % 2 == 0 { &one } else { &two };
            let status = if index < 3 { pb::DeliveryStatus::Failed } else { pb::DeliveryStatus::Succeeded };
            reports.push(report(&id, endpoint, 1, status));
            ids.push(id);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        store.ingest_reports("node-1", reports).await.unwrap();
        let list = |query: DeliveryQuery| {
            let store = &store;
            async move {
                let page = store.list_deliveries(DeliveryQuery { page_size: 20, ..query }).await.unwrap();
                (page.items.into_iter().map(|d| d.id).collect::<Vec<_>>(), page.next_page_token)
            }
        };
        let name = |indexes: &[usize]| indexes.iter().map(|&i| ids[i].to_string()).collect::<Vec<_>>();

        assert_eq!(list(DeliveryQuery::default()).await.0, name(&[5, 4, 3, 2, 1, 0]));
        let by_endpoint = DeliveryQuery { endpoint_id: Some(one.clone()), ..Default::default() };
        assert_eq!(list(by_endpoint).await.0, name(&[4, 2, 0]));
        let failed_on_one = DeliveryQuery {
            endpoint_id: Some(one.clone()),
            status: Some(pb::DeliveryStatus::Failed as i32),
            ..Default::default()
        };
        assert_eq!(list(failed_on_one).await.0, name(&[2, 0]));
        let window = DeliveryQuery {
            created_after_ms: Some(ids[1].created_at_ms()),
            created_before_ms: Some(ids[4].created_at_ms()),
            ..Default::default()
        };
        assert_eq!(list(window).await.0, name(&[3, 2, 1]));
        let other_owner = DeliveryQuery { owner_id: Some("other".into()), ..Default::default() };
        assert!(list(other_owner).await.0.is_empty());

        let first = store.list_deliveries(DeliveryQuery { page_size: 4, ..Default::default() }).await.unwrap();
        assert_eq!(first.items.len(), 4);
        assert_eq!(first.next_page_token, ids[2].to_string());
        let after = Some(DeliveryId::parse(&first.next_page_token).unwrap());
        let (rest, token) = list(DeliveryQuery { after, ..Default::default() }).await;
        assert_eq!((rest, token), (name(&[1, 0]), String::new()));
        let exact = store.list_deliveries(DeliveryQuery { page_size: 6, ..Default::default() }).await.unwrap();
        assert_eq!(exact.next_page_token, "");
    }

    const DAY_MS: u64 = 24 * 3600 * 1000;
    /// A fixed "now" for retention tests (2025-11-14), with a 30-day period: the cutoff is injected, not waited for.
    const NOW_MS: u64 = 1_763_100_000_000;
    const CUTOFF_MS: u64 = NOW_MS - 30 * DAY_MS;
    const LIMIT: NonZeroUsize = NonZeroUsize::new(1_000).unwrap();

    /// A delivery id generated at `ms`: a fresh one with its time field replaced (`dlv_` then 12 hex digits of ms).
    fn delivery_at(ms: u64) -> DeliveryId {
        DeliveryId::parse(&format!("dlv_{ms:012x}{}", &DeliveryId::generate().as_str()[16..])).unwrap()
    }

    fn report_id_at(ms: u64) -> ReportId {
        ReportId::parse(&format!("rpt_{ms:012x}{}", &ReportId::generate().as_str()[16..])).unwrap()
    }

    /// Reports of `attempts` attempts of a delivery created at `created_ms`, the last one (made, reported and
    /// updating the delivery at `updated_ms`) leaving it in `status`.
    fn aged(
        endpoint: &EndpointId,
        created_ms: u64,
        updated_ms: u64,
        attempts: u32,
        status: pb::DeliveryStatus,
    ) -> (DeliveryId, Vec<Report>) {
        let id = delivery_at(created_ms);
        let reports = (1..=attempts)
            .map(|number| {
                let status = if number == attempts { status } else { pb::DeliveryStatus::Pending };
                let mut report = report(&id, endpoint, number, status);
                let at = if number == attempts { updated_ms } else { created_ms };
                report.report_id = report_id_at(at);
                report.delivery.updated_at = Some(to_timestamp(at));
                report
            })
            .collect();
        (id, reports)
    }

    /// A marker per report, as versions before report ids were stored with attempts wrote them.
    fn legacy_markers(reports: &[Report]) -> Batch {
        let mut batch = Batch::default();
        for report in reports {
            batch.insert(report.report_id.as_str(), report.delivery_id.as_str());
        }
        batch
    }

    fn ids(page: Page<pb::Delivery>) -> Vec<String> {
        page.items.into_iter().map(|delivery| delivery.id).collect()
    }

    fn keys_with_prefix(tree: &Tree, prefix: &str) -> usize {
        tree.scan_prefix(prefix).count()
    }

    #[tokio::test]
    async fn retention_prunes_old_final_deliveries_with_their_attempts_and_index_entries() {
        use pb::DeliveryStatus::{Cancelled, Delivering, Failed, Pending, Succeeded};
        let (_dir, store) = open();
        let endpoint = EndpointId::generate();
        let old = CUTOFF_MS - 5 * DAY_MS;
        let young = CUTOFF_MS + DAY_MS;
        let cases = [
            // (created, last update, attempts, status, pruned)
            (old, old + 1_000, 2, Succeeded, true),
            (old + 1, old + 2_000, 7, Failed, true),
            (old + 2, old + 3_000, 0, Cancelled, true),
            (old + 3, old + 4_000, 3, Pending, false),
            (old + 4, old + 5_000, 1, Delivering, false),
            // Created before the cutoff but finished after it: kept for the whole period after finishing.
            (old + 5, young, 4, Succeeded, false),
            (young, young + 1_000, 1, Succeeded, false),
        ];
        let mut reports = Vec::new();
        let mut expected_kept = Vec::new();
        let mut expected_pruned = Vec::new();
        for (created, updated, attempts, status, pruned) in cases {
            let (id, mut made) = aged(&endpoint, created, updated, attempts.max(1), status);
            if attempts == 0 {
                // A cancellation without any attempt.
                made.truncate(1);
                made[0].attempt = None;
            }
            reports.extend(made);
            if pruned { expected_pruned.push(id) } else { expected_kept.push(id) }
        }
        let legacy_markers = legacy_markers(&reports);
        store.ingest_reports("node-1", reports).await.unwrap();
        assert_eq!(store.stats().unwrap().deliveries, 7);
        assert_eq!(store.log.reports.len(), 1, "a marker only for the report without an attempt");
        // Markers as earlier versions wrote them, one per report: retention removes them by age too.
        store.log.reports.apply_batch(legacy_markers).unwrap();
        assert_eq!(store.log.reports.len(), 19);

        let pass = store.prune_deliveries(PruneCutoff::at(CUTOFF_MS), None, LIMIT).await.unwrap();
        assert_eq!(pass.examined, 6, "only deliveries created before the cutoff are looked at");
        assert_eq!(pass.removed, 3);
        assert_eq!(pass.resume_after, None);
        assert!(!pass.more_due());
        assert_eq!(store.stats().unwrap().deliveries, 4);

        for id in &expected_pruned {
            let error = store.get_delivery(id).await.unwrap_err();
            assert!(matches!(error, Error::NotFound(_)), "{error}");
            assert_eq!(tonic::Status::from(error).code(), tonic::Code::NotFound);
            assert_eq!(keys_with_prefix(&store.log.attempts, id.as_str()), 0, "attempts of {id}");
            assert!(!store.log.endpoint_deliveries.contains_key(format!("{endpoint}{id}")).unwrap());
        }
        for id in &expected_kept {
            let (_, attempts) = store.get_delivery(id).await.unwrap();
            assert!(!attempts.is_empty());
            assert!(store.log.endpoint_deliveries.contains_key(format!("{endpoint}{id}")).unwrap());
        }
        // Listings, through the endpoint index or not, show exactly the kept deliveries.
        let mut kept: Vec<String> = expected_kept.iter().map(ToString::to_string).collect();
        kept.reverse();
        let queries = [
            DeliveryQuery { page_size: 50, ..Default::default() },
            DeliveryQuery { page_size: 50, endpoint_id: Some(endpoint.clone()), ..Default::default() },
            DeliveryQuery { page_size: 50, owner_id: Some("acme".into()), ..Default::default() },
        ];
        for query in queries {
            assert_eq!(ids(store.list_deliveries(query.clone()).await.unwrap()), kept, "{query:?}");
        }
        // Report-id markers go by their own age, whatever their delivery: all but the two reports made after the
        // cutoff (the late finisher's last one and the young delivery's).
        assert_eq!(pass.reports_removed, 17);
        let markers: Vec<u64> = store
            .log
            .reports
            .iter()
            .keys()
            .map(|key| ReportId::parse(std::str::from_utf8(&key.unwrap()).unwrap()).unwrap().created_at_ms())
            .collect();
        assert_eq!(markers, [young, young + 1_000]);

        // A second pass finds nothing more; a later cutoff prunes the late finisher and the young one.
        let again = store.prune_deliveries(PruneCutoff::at(CUTOFF_MS), None, LIMIT).await.unwrap();
        assert_eq!((again.examined, again.removed, again.reports_removed), (3, 0, 0));
        let later = store.prune_deliveries(PruneCutoff::at(young + 2_000), None, LIMIT).await.unwrap();
        assert_eq!(later.removed, 2);
        assert_eq!(store.stats().unwrap().deliveries, 2, "the pending and the delivering one");
    }

    #[tokio::test]
    async fn a_bounded_pass_removes_at_most_its_limit_and_the_next_one_resumes() {
        let (_dir, store) = open();
        let endpoint = EndpointId::generate();
        let old = CUTOFF_MS - DAY_MS;
        let mut reports = Vec::new();
        let mut final_ids = Vec::new();
        for index in 0..25u64 {
            // Every fifth delivery is still pending and must survive every pass.
            let status = if index % 5 == 4 { pb::DeliveryStatus::Pending } else { pb::DeliveryStatus::Succeeded };
            let (id, made) = aged(&endpoint, old + index, old + 10_000, 2, status);
            if status != pb::DeliveryStatus::Pending {
                final_ids.push(id);
            }
            reports.extend(made);
        }
        let legacy_markers = legacy_markers(&reports);
        store.ingest_reports("node-1", reports).await.unwrap();
        store.log.reports.apply_batch(legacy_markers).unwrap();
        let limit = NonZeroUsize::new(10).unwrap();

        let first = store.prune_deliveries(PruneCutoff::at(CUTOFF_MS), None, limit).await.unwrap();
        assert_eq!((first.examined, first.removed, first.reports_removed), (10, 8, 10));
        assert!(first.more_due());
        // The oldest first: the first eight final deliveries went, the rest is untouched.
        for (index, id) in final_ids.iter().enumerate() {
            assert_eq!(store.get_delivery(id).await.is_ok(), index >= 8, "{index}");
        }
        let resume = first.resume_after.clone().expect("stopped at its limit");
        assert_eq!(resume.created_at_ms(), old + 9);

        let second = store.prune_deliveries(PruneCutoff::at(CUTOFF_MS), Some(resume), limit).await.unwrap();
        assert_eq!((second.examined, second.removed), (10, 8));
        let third = store.prune_deliveries(PruneCutoff::at(CUTOFF_MS), second.resume_after, limit).await.unwrap();
        assert_eq!((third.examined, third.removed, third.resume_after), (5, 4, None));
        assert_eq!(store.stats().unwrap().deliveries, 5);
        let left = store.list_deliveries(DeliveryQuery { page_size: 50, ..Default::default() }).await.unwrap();
        assert!(left.items.iter().all(|delivery| delivery.status == pb::DeliveryStatus::Pending as i32));
        assert_eq!(store.log.attempts.len(), 10, "two attempts of each pending delivery");
        assert_eq!(store.log.endpoint_deliveries.len(), 5);
        // 50 markers, 10 per pass.
        assert_eq!(store.log.reports.len(), 20);
    }

    #[tokio::test]
    async fn a_delivery_updated_between_scan_and_removal_is_kept() {
        // The removal reads each delivery again under the ingest lock: one that a report made young again stays.
        let (_dir, store) = open();
        let endpoint = EndpointId::generate();
        let (id, reports) = aged(&endpoint, CUTOFF_MS - DAY_MS, CUTOFF_MS - DAY_MS, 1, pb::DeliveryStatus::Failed);
        store.ingest_reports("node-1", reports).await.unwrap();
        let rule = PruneRule { cutoff_ms: CUTOFF_MS, lost_agents: HashSet::new() };
        let (candidates, _, _) = prune_candidates(&store.log, &rule, None, LIMIT).unwrap();
        assert_eq!(candidates, std::slice::from_ref(&id));
        let (_, mut replay) = aged(&endpoint, CUTOFF_MS - DAY_MS, NOW_MS, 2, pb::DeliveryStatus::Succeeded);
        for report in &mut replay {
            report.delivery_id = id.clone();
            report.delivery.id = id.to_string();
            report.attempt.as_mut().unwrap().delivery_id = id.to_string();
        }
        store.ingest_reports("node-1", replay).await.unwrap();
        assert_eq!(remove_deliveries(&store.log, &rule, &candidates).unwrap(), 0);
        assert_eq!(store.get_delivery(&id).await.unwrap().1.len(), 2);
    }

    #[tokio::test]
    async fn pending_deliveries_go_once_their_agent_has_been_silent_for_the_whole_period() {
        use pb::DeliveryStatus::Pending;
        let (_dir, store) = open();
        let endpoint = EndpointId::generate();
        let old = CUTOFF_MS - 5 * DAY_MS;
        let mut pending = HashMap::new();
        for node in ["node-live", "node-lost", "node-unknown"] {
            let (id, reports) = aged(&endpoint, old, old + 1_000, 2, Pending);
            store.ingest_reports(node, reports).await.unwrap();
            pending.insert(node, id);
        }
        for node in ["node-live", "node-lost"] {
            store.record_agent(node, AgentEvent::Status { queue_depth: 1 }).await.unwrap();
        }
        // The lost node was last heard from a day before the cutoff (record_agent stamps the real time).
        let mut lost = pb::Agent::decode(&store.agents.get("node-lost").unwrap().unwrap()[..]).unwrap();
        lost.last_seen = Some(to_timestamp(CUTOFF_MS - DAY_MS));
        store.agents.insert("node-lost", lost.encode_to_vec()).unwrap();
        // A damaged agent record is skipped, not a reason to stop pruning.
        store.agents.insert("node-damaged", b"\xff\xff".as_slice()).unwrap();

        let pass = store.prune_deliveries(PruneCutoff::at(CUTOFF_MS), None, LIMIT).await.unwrap();
        assert_eq!((pass.examined, pass.removed), (3, 1));
        let error = store.get_delivery(&pending["node-lost"]).await.unwrap_err();
        assert!(matches!(error, Error::NotFound(_)), "{error}");
        assert_eq!(keys_with_prefix(&store.log.attempts, pending["node-lost"].as_str()), 0);
        // A live agent may still deliver its held deliveries; of an agent control never heard from, it knows nothing.
        for node in ["node-live", "node-unknown"] {
            assert_eq!(store.get_delivery(&pending[node]).await.unwrap().1.len(), 2, "{node}");
        }
        // Until control has been up long enough for live agents to reconnect, no agent counts as lost.
        let (id, reports) = aged(&endpoint, old, old + 1_000, 1, Pending);
        store.ingest_reports("node-lost", reports).await.unwrap();
        let settling = PruneCutoff { agents_silent_before_ms: 0, ..PruneCutoff::at(CUTOFF_MS) };
        assert_eq!(store.prune_deliveries(settling, None, LIMIT).await.unwrap().removed, 0);
        assert!(store.get_delivery(&id).await.is_ok());
    }

    #[tokio::test]
    async fn agents_are_recorded() {
        let (_dir, store) = open();
        store
            .record_agent("node-1", AgentEvent::Hello { agent_version: "1".into(), applied_version: 4 })
            .await
            .unwrap();
        store.record_agent("node-1", AgentEvent::Status { queue_depth: 3 }).await.unwrap();
        let agents = store.list_agents().await.unwrap();
        assert_eq!(agents.len(), 1);
        assert_eq!((agents[0].applied_version, agents[0].queue_depth), (4, 3));
        assert!(!agents[0].connected);
    }
}
