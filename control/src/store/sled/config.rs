//! Owners, the event-type catalog, endpoints and the config version.
//!
//! Config mutations hold one async mutex, so check-then-write sequences (the per-owner endpoint limit, "no endpoints
//! left" before deleting an owner) are atomic. Under it, a mutation reads the committed state and builds one
//! [`ConfigChange`], a batch per tree; [`ConfigStore::commit`] writes the batches with the version bump in one
//! multi-tree transaction, flushes, and only then publishes the delta.

use std::ops::Bound;
use std::sync::Arc;

use hookrelay_common::ids::EndpointId;
use hookrelay_common::model::validate_filters;
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::sealed::MasterKey;
use hookrelay_common::time::{now_ms, to_timestamp};
use prost::Message;
use sled::transaction::{TransactionError, Transactional};
use sled::{Batch, Db, Tree};
use tokio::sync::broadcast;

use super::flusher::Flusher;
use super::secrets::{all_endpoints, check_master_key, seal_legacy_secrets};
use super::{decode, get, storage_error};
use crate::error::{Error, Result};
use crate::store::secrets::StoredEndpoint;
use crate::store::{EndpointChange, Page, PageRequest, list_ids};

/// Deltas kept for watchers that fall behind; a watcher further behind gets a fresh snapshot.
const CHANGE_FEED_CAPACITY: usize = 1024;
/// The key in `meta` of the config version.
const VERSION_KEY: &[u8] = b"config_version";

/// The config trees.
pub(super) struct ConfigTrees {
    owners: Tree,
    event_types: Tree,
    endpoints: Tree,
    owner_endpoints: Tree,
    meta: Tree,
}

impl ConfigTrees {
    /// Opens (or creates) the config trees of `db`.
    pub(super) fn open(db: &Db) -> Result<Self> {
        Ok(Self {
            owners: db.open_tree("owners")?,
            event_types: db.open_tree("event_types")?,
            endpoints: db.open_tree("endpoints")?,
            owner_endpoints: db.open_tree("owner_endpoints")?,
            meta: db.open_tree("meta")?,
        })
    }
}

/// The config half of [`SledStore`](super::SledStore): its methods are the [`Store`](crate::store::Store) methods
/// of the same names.
pub(super) struct ConfigStore {
    trees: ConfigTrees,
    /// Seals and opens signing secrets.
    key: MasterKey,
    /// Serialises config mutations and snapshots.
    config_lock: tokio::sync::Mutex<()>,
    flusher: Flusher,
    changes: broadcast::Sender<Arc<pb::ConfigDelta>>,
}

impl ConfigStore {
    /// The config half over `trees`, its secrets sealed under `key`. Fails with [`Error::WrongMasterKey`] when the
    /// data was sealed under another key; seals the plaintext secrets of older records.
    pub(super) fn open(trees: ConfigTrees, key: MasterKey, flusher: Flusher) -> Result<Self> {
        check_master_key(&trees.meta, &key)?;
        seal_legacy_secrets(&trees.endpoints, &key)?;
        let (changes, _) = broadcast::channel(CHANGE_FEED_CAPACITY);
        Ok(Self { trees, key, config_lock: tokio::sync::Mutex::new(()), flusher, changes })
    }

    /// The persisted config version; read under the config lock for a consistent answer.
    pub(super) fn config_version(&self) -> Result<u64> {
        Ok(self.trees.meta.get(VERSION_KEY)?.map_or(0, |bytes| {
            let mut be = [0u8; 8];
            be.copy_from_slice(&bytes[..8.min(bytes.len())]);
            u64::from_be_bytes(be)
        }))
    }

    /// Commits `change` with the next version, flushes, then publishes the delta. Call with the config lock held.
    async fn commit(&self, change: ConfigChange) -> Result<u64> {
        let base_version = self.config_version()?;
        let version = base_version + 1;
        let c = &self.trees;
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
        get(&self.trees.owners, id, || format!("owner {id:?}"))?.ok_or_else(|| Error::NotFound(format!("owner {id:?}")))
    }

    fn event_type(&self, name: &str) -> Result<pb::EventType> {
        get(&self.trees.event_types, name, || format!("event type {name:?}"))?
            .ok_or_else(|| Error::NotFound(format!("event type {name:?}")))
    }

    fn stored_endpoint(&self, id: &str) -> Result<StoredEndpoint> {
        let found: Option<StoredEndpoint> = get(&self.trees.endpoints, id, || format!("endpoint {id}"))?;
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
        self.trees
            .owner_endpoints
            .scan_prefix(&prefix)
            .keys()
            .map(|key| Ok(String::from_utf8_lossy(&key?[prefix.len()..]).into_owned()))
            .collect()
    }

    /// Checks an endpoint's filters against the catalog as it is now.
    fn check_filters(&self, filters: &[String]) -> Result<()> {
        let catalog = self
            .trees
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

    pub(super) async fn create_owner(&self, owner: pb::Owner) -> Result<pb::Owner> {
        let _lock = self.config_lock.lock().await;
        if self.trees.owners.contains_key(&owner.id)? {
            return Err(Error::AlreadyExists(format!("owner {:?}", owner.id)));
        }
        let mut change = ConfigChange::default();
        change.put_owner(&owner);
        self.commit(change).await?;
        Ok(owner)
    }

    pub(super) async fn get_owner(&self, id: &str) -> Result<pb::Owner> {
        self.owner(id)
    }

    pub(super) async fn list_owners(&self, page: PageRequest) -> Result<Page<pb::Owner>> {
        list_page(&self.trees.owners, &page, "owner")
    }

    pub(super) async fn update_owner(&self, id: &str, name: Option<String>) -> Result<pb::Owner> {
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

    pub(super) async fn delete_owner(&self, id: &str) -> Result<()> {
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

    pub(super) async fn create_event_type(&self, event_type: pb::EventType) -> Result<pb::EventType> {
        let _lock = self.config_lock.lock().await;
        if self.trees.event_types.contains_key(&event_type.name)? {
            return Err(Error::AlreadyExists(format!("event type {:?}", event_type.name)));
        }
        let mut change = ConfigChange::default();
        change.put_event_type(&event_type);
        self.commit(change).await?;
        Ok(event_type)
    }

    pub(super) async fn get_event_type(&self, name: &str) -> Result<pb::EventType> {
        self.event_type(name)
    }

    pub(super) async fn list_event_types(&self, page: PageRequest) -> Result<Page<pb::EventType>> {
        list_page(&self.trees.event_types, &page, "event type")
    }

    pub(super) async fn update_event_type(&self, name: &str, description: Option<String>) -> Result<pb::EventType> {
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

    pub(super) async fn delete_event_type(&self, name: &str) -> Result<()> {
        let _lock = self.config_lock.lock().await;
        self.event_type(name)?;
        let subscribers: Vec<String> = all_endpoints(&self.trees.endpoints)?
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

    pub(super) async fn create_endpoint(
        &self,
        endpoint: pb::AgentEndpoint,
        max_per_owner: usize,
    ) -> Result<pb::AgentEndpoint> {
        let Some(fields) = endpoint_of(&endpoint) else {
            return Err(Error::invalid("endpoint", "required"));
        };
        let _lock = self.config_lock.lock().await;
        self.owner(&fields.owner_id)?;
        self.check_filters(&fields.filter_types)?;
        let existing = self.trees.owner_endpoints.scan_prefix(owner_endpoint_key(&fields.owner_id, "")).count();
        if existing >= max_per_owner {
            return Err(Error::FailedPrecondition(format!(
                "owner {:?} already has {existing} endpoints, the most allowed per owner ({max_per_owner})",
                fields.owner_id
            )));
        }
        if self.trees.endpoints.contains_key(&fields.id)? {
            return Err(Error::AlreadyExists(format!("endpoint {}", fields.id)));
        }
        let secrets: Vec<(String, u64)> = endpoint.secrets.iter().map(|secret| (secret.clone(), 0)).collect();
        let stored = StoredEndpoint::seal(&self.key, fields.clone(), &secrets);
        let mut change = ConfigChange::default();
        change.put_endpoint(&stored, endpoint.clone());
        self.commit(change).await?;
        Ok(endpoint)
    }

    pub(super) async fn get_endpoint(&self, id: &EndpointId) -> Result<pb::Endpoint> {
        Ok(self.stored_endpoint(id.as_str())?.endpoint.unwrap_or_default())
    }

    pub(super) async fn list_endpoints(&self, owner_id: Option<&str>, page: PageRequest) -> Result<Page<pb::Endpoint>> {
        let Some(owner_id) = owner_id else {
            let page: Page<StoredEndpoint> = list_page(&self.trees.endpoints, &page, "endpoint")?;
            let items = page.items.into_iter().filter_map(|endpoint| endpoint.endpoint).collect();
            return Ok(Page { items, next_page_token: page.next_page_token });
        };
        self.owner(owner_id)?;
        // The owner's slice of the index, resuming after the token (an endpoint id) within it.
        let prefix = owner_endpoint_key(owner_id, "");
        let start = owner_endpoint_key(owner_id, page.after.as_deref().unwrap_or(""));
        let mut items = Vec::with_capacity(page.size);
        for key in self.trees.owner_endpoints.range::<&[u8], _>((Bound::Excluded(&start[..]), Bound::Unbounded)).keys()
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

    pub(super) async fn update_endpoint(&self, id: &EndpointId, change: EndpointChange) -> Result<pb::Endpoint> {
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
        let view = stored.agent_view(&self.key)?;
        let mut change = ConfigChange::default();
        change.put_endpoint(&stored, view);
        self.commit(change).await?;
        Ok(endpoint)
    }

    pub(super) async fn rotate_secret(
        &self,
        id: &EndpointId,
        secret: String,
        previous_expires_at_ms: u64,
    ) -> Result<pb::AgentEndpoint> {
        let _lock = self.config_lock.lock().await;
        let stored = self.stored_endpoint(id.as_str())?.rotated(&self.key, secret, previous_expires_at_ms, now_ms())?;
        let view = stored.agent_view(&self.key)?;
        let mut change = ConfigChange::default();
        change.put_endpoint(&stored, view.clone());
        self.commit(change).await?;
        Ok(view)
    }

    pub(super) async fn expire_secrets(&self, now_ms: u64) -> Result<Option<u64>> {
        let _lock = self.config_lock.lock().await;
        let mut change = ConfigChange::default();
        let mut next: Option<u64> = None;
        let mut expired = 0usize;
        for mut stored in all_endpoints(&self.trees.endpoints)? {
            let before = stored.secrets.len();
            stored.secrets.retain(|secret| secret.expires_at_ms == 0 || secret.expires_at_ms > now_ms);
            for secret in &stored.secrets {
                if secret.expires_at_ms != 0 {
                    next = Some(next.map_or(secret.expires_at_ms, |at| at.min(secret.expires_at_ms)));
                }
            }
            if stored.secrets.len() != before {
                expired += before - stored.secrets.len();
                let view = stored.agent_view(&self.key)?;
                change.put_endpoint(&stored, view);
            }
        }
        if expired > 0 {
            let version = self.commit(change).await?;
            tracing::info!(secrets = expired, version, "removed signing secrets whose rotation overlap ended");
        }
        Ok(next)
    }

    pub(super) async fn delete_endpoint(&self, id: &EndpointId) -> Result<()> {
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

    pub(super) async fn config_snapshot(&self) -> Result<pb::ConfigSnapshot> {
        let _lock = self.config_lock.lock().await;
        let owners = self
            .trees
            .owners
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                decode(&value, || format!("owner {:?}", String::from_utf8_lossy(&key)))
            })
            .collect::<Result<_>>()?;
        let event_types = self
            .trees
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
            endpoints: all_endpoints(&self.trees.endpoints)?
                .iter()
                .map(|stored| stored.agent_view(&self.key))
                .collect::<Result<_>>()?,
        })
    }

    pub(super) fn subscribe_config(&self) -> broadcast::Receiver<Arc<pb::ConfigDelta>> {
        self.changes.subscribe()
    }
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

fn endpoint_of(endpoint: &pb::AgentEndpoint) -> Option<&pb::Endpoint> {
    endpoint.endpoint.as_ref()
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
