//! Owners, the event-type catalog, endpoints, the config version and its change log, on PostgreSQL.
//!
//! A config mutation is one transaction that first takes the advisory lock [`CONFIG_LOCK`], so mutations run one
//! at a time across every replica on the database and check-then-write rules (the per-owner endpoint limit, no
//! deleting what is still referenced, rotation's bound) hold. Under it the mutation reads the committed state,
//! writes its rows, bumps `config_version`, appends its delta (sealed: it carries secrets) to `config_changes` and
//! sends `NOTIFY hookrelay_config, '<version>'`, all in the same transaction. After the commit the feed (`feed.rs`)
//! publishes it, with every other replica's changes, in version order. A local mutex keeps this replica's
//! mutations from each holding a pooled connection while they wait for the advisory lock.
//!
//! Snapshots read in one `REPEATABLE READ` transaction, so the version and the records match.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::{GenericClient, Object, Pool, Transaction};
use hookrelay_common::ids::EndpointId;
use hookrelay_common::model::validate_filters;
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::sealed::MasterKey;
use hookrelay_common::time::{now_ms, to_timestamp};
use prost::Message;
use tokio::sync::broadcast;
use tokio_postgres::IsolationLevel;

use super::feed::Feed;
use super::{db_error, pool_error};
use crate::error::{Error, Result};
use crate::store::secrets::StoredEndpoint;
use crate::store::{EndpointChange, Page, PageRequest, list_ids};

/// The advisory lock every config transaction takes first ("hookrelay" and 2, as text bytes).
const CONFIG_LOCK: i64 = 0x6872_6d69_6772_0002;
/// The channel notified of each committed config version.
pub(super) const CONFIG_CHANNEL: &str = "hookrelay_config";
/// Deltas kept for watchers that fall behind; a watcher further behind gets a fresh snapshot.
const CHANGE_FEED_CAPACITY: usize = 1024;
/// The key in `store_meta` of the master key's check value.
const KEY_CHECK_KEY: &str = "master_key_check";

/// The config half of [`PostgresStore`](super::PostgresStore): its methods are the
/// [`Store`](crate::store::Store) methods of the same names.
pub(super) struct ConfigStore {
    pool: Pool,
    /// Seals and opens signing secrets and the deltas of the change log.
    key: MasterKey,
    /// Serialises this replica's config mutations (across replicas, the advisory lock does).
    config_lock: tokio::sync::Mutex<()>,
    changes: broadcast::Sender<Arc<pb::ConfigDelta>>,
    /// The newest config version this replica committed or published, for [`Store::stats`](crate::store::Store).
    version: Arc<AtomicU64>,
    /// Publishes every replica's changes on `changes`.
    feed: Feed,
}

impl ConfigStore {
    /// The config half over `pool`. Fails with [`Error::WrongMasterKey`] when the data was sealed under another
    /// key; stores the key's check value on first use.
    pub(super) async fn open(pool: Pool, settings: tokio_postgres::Config, key: MasterKey) -> Result<Self> {
        let client = pool.get().await.map_err(pool_error)?;
        client
            .execute(
                "INSERT INTO store_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&KEY_CHECK_KEY, &key.check_value()],
            )
            .await
            .map_err(db_error)?;
        let row = client.query_one("SELECT value FROM store_meta WHERE key = $1", &[&KEY_CHECK_KEY]).await;
        let check: Vec<u8> = row.map_err(db_error)?.get(0);
        key.verify_check_value(&check).map_err(|_| Error::WrongMasterKey)?;
        let version = read_version(&client).await?;
        let (changes, _) = broadcast::channel(CHANGE_FEED_CAPACITY);
        let version = Arc::new(AtomicU64::new(version));
        let feed = Feed::start(
            settings,
            pool.clone(),
            key.clone(),
            version.load(Ordering::Relaxed),
            changes.clone(),
            version.clone(),
        );
        Ok(Self { pool, key, config_lock: tokio::sync::Mutex::new(()), changes, version, feed })
    }

    /// The config version as of this replica's last change (or its start).
    pub(super) fn config_version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Commits `tx` with the next version, its row in the change log and the notification; then publishes the
    /// delta. Call with the config lock held, in a transaction begun by [`begin`].
    async fn commit(&self, tx: Transaction<'_>, delta: pb::ConfigDelta) -> Result<u64> {
        let base_version = read_version(&tx).await?;
        let version = base_version + 1;
        let delta = pb::ConfigDelta { version, base_version, ..delta };
        let sealed = self.key.seal(&delta.encode_to_vec(), &change_context(version));
        let stored = i64::try_from(version).map_err(|_| Error::Database("config version overflow".into()))?;
        tx.execute("UPDATE config_version SET version = $1", &[&stored]).await.map_err(db_error)?;
        tx.execute("INSERT INTO config_changes (version, delta) VALUES ($1, $2)", &[&stored, &sealed])
            .await
            .map_err(db_error)?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CONFIG_CHANNEL, &version.to_string()]).await.map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        self.version.fetch_max(version, Ordering::Relaxed);
        // The feed publishes it, with every other replica's changes, in version order.
        self.feed.wake();
        Ok(version)
    }

    pub(super) async fn create_owner(&self, owner: pb::Owner) -> Result<pb::Owner> {
        let _lock = self.config_lock.lock().await;
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        if exists(&tx, "SELECT 1 FROM owners WHERE id = $1", &owner.id).await? {
            return Err(Error::AlreadyExists(format!("owner {:?}", owner.id)));
        }
        put_owner(&tx, &owner).await?;
        self.commit(tx, pb::ConfigDelta { upsert_owners: vec![owner.clone()], ..Default::default() }).await?;
        Ok(owner)
    }

    pub(super) async fn get_owner(&self, id: &str) -> Result<pb::Owner> {
        owner(&self.client().await?, id).await
    }

    pub(super) async fn list_owners(&self, page: PageRequest) -> Result<Page<pb::Owner>> {
        let rows = list_rows(&self.client().await?, "owners", "id", None, &page).await?;
        page_of(rows, &page, "owner")
    }

    pub(super) async fn update_owner(&self, id: &str, name: Option<String>) -> Result<pb::Owner> {
        let _lock = self.config_lock.lock().await;
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let mut owner = owner(&tx, id).await?;
        match name {
            Some(name) if name != owner.name => owner.name = name,
            _ => return Ok(owner),
        }
        owner.updated_at = Some(to_timestamp(now_ms()));
        put_owner(&tx, &owner).await?;
        self.commit(tx, pb::ConfigDelta { upsert_owners: vec![owner.clone()], ..Default::default() }).await?;
        Ok(owner)
    }

    pub(super) async fn delete_owner(&self, id: &str) -> Result<()> {
        let _lock = self.config_lock.lock().await;
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        owner(&tx, id).await?;
        let endpoints = ids(&tx, "SELECT id FROM endpoints WHERE owner_id = $1 ORDER BY id", id).await?;
        if !endpoints.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "owner {id:?} still has {} endpoint(s): {}; delete them first",
                endpoints.len(),
                list_ids(&endpoints)
            )));
        }
        tx.execute("DELETE FROM owners WHERE id = $1", &[&id]).await.map_err(db_error)?;
        self.commit(tx, pb::ConfigDelta { delete_owners: vec![id.to_owned()], ..Default::default() }).await?;
        Ok(())
    }

    pub(super) async fn create_event_type(&self, event_type: pb::EventType) -> Result<pb::EventType> {
        let _lock = self.config_lock.lock().await;
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        if exists(&tx, "SELECT 1 FROM event_types WHERE name = $1", &event_type.name).await? {
            return Err(Error::AlreadyExists(format!("event type {:?}", event_type.name)));
        }
        put_event_type(&tx, &event_type).await?;
        let delta = pb::ConfigDelta { upsert_event_types: vec![event_type.clone()], ..Default::default() };
        self.commit(tx, delta).await?;
        Ok(event_type)
    }

    pub(super) async fn get_event_type(&self, name: &str) -> Result<pb::EventType> {
        event_type(&self.client().await?, name).await
    }

    pub(super) async fn list_event_types(&self, page: PageRequest) -> Result<Page<pb::EventType>> {
        let rows = list_rows(&self.client().await?, "event_types", "name", None, &page).await?;
        page_of(rows, &page, "event type")
    }

    pub(super) async fn update_event_type(&self, name: &str, description: Option<String>) -> Result<pb::EventType> {
        let _lock = self.config_lock.lock().await;
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let mut event_type = event_type(&tx, name).await?;
        match description {
            Some(description) if description != event_type.description => event_type.description = description,
            _ => return Ok(event_type),
        }
        event_type.updated_at = Some(to_timestamp(now_ms()));
        put_event_type(&tx, &event_type).await?;
        let delta = pb::ConfigDelta { upsert_event_types: vec![event_type.clone()], ..Default::default() };
        self.commit(tx, delta).await?;
        Ok(event_type)
    }

    pub(super) async fn delete_event_type(&self, name: &str) -> Result<()> {
        let _lock = self.config_lock.lock().await;
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        event_type(&tx, name).await?;
        let subscribers = ids(&tx, "SELECT id FROM endpoints WHERE $1 = ANY (filter_types) ORDER BY id", name).await?;
        if !subscribers.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "event type {name:?} is still subscribed to by {} endpoint(s): {}; change their filters first",
                subscribers.len(),
                list_ids(&subscribers)
            )));
        }
        tx.execute("DELETE FROM event_types WHERE name = $1", &[&name]).await.map_err(db_error)?;
        self.commit(tx, pb::ConfigDelta { delete_event_types: vec![name.to_owned()], ..Default::default() }).await?;
        Ok(())
    }

    pub(super) async fn create_endpoint(
        &self,
        endpoint: pb::AgentEndpoint,
        max_per_owner: usize,
    ) -> Result<pb::AgentEndpoint> {
        let Some(fields) = endpoint.endpoint.as_ref() else {
            return Err(Error::invalid("endpoint", "required"));
        };
        let _lock = self.config_lock.lock().await;
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        owner(&tx, &fields.owner_id).await?;
        check_filters(&tx, &fields.filter_types).await?;
        let row = tx.query_one("SELECT count(*) FROM endpoints WHERE owner_id = $1", &[&fields.owner_id]).await;
        let existing = usize::try_from(row.map_err(db_error)?.get::<_, i64>(0)).unwrap_or(usize::MAX);
        if existing >= max_per_owner {
            return Err(Error::FailedPrecondition(format!(
                "owner {:?} already has {existing} endpoints, the most allowed per owner ({max_per_owner})",
                fields.owner_id
            )));
        }
        if exists(&tx, "SELECT 1 FROM endpoints WHERE id = $1", &fields.id).await? {
            return Err(Error::AlreadyExists(format!("endpoint {}", fields.id)));
        }
        let secrets: Vec<(String, u64)> = endpoint.secrets.iter().map(|secret| (secret.clone(), 0)).collect();
        put_endpoint(&tx, &StoredEndpoint::seal(&self.key, fields.clone(), &secrets)).await?;
        self.commit(tx, pb::ConfigDelta { upsert_endpoints: vec![endpoint.clone()], ..Default::default() }).await?;
        Ok(endpoint)
    }

    pub(super) async fn get_endpoint(&self, id: &EndpointId) -> Result<pb::Endpoint> {
        Ok(stored_endpoint(&self.client().await?, id.as_str()).await?.fields().clone())
    }

    pub(super) async fn list_endpoints(&self, owner_id: Option<&str>, page: PageRequest) -> Result<Page<pb::Endpoint>> {
        let client = self.client().await?;
        let rows = match owner_id {
            None => list_rows(&client, "endpoints", "id", None, &page).await?,
            Some(owner_id) => {
                owner(&client, owner_id).await?;
                list_rows(&client, "endpoints", "id", Some(owner_id), &page).await?
            }
        };
        let stored: Page<StoredEndpoint> = page_of(rows, &page, "endpoint")?;
        let items = stored.items.iter().map(|stored| checked(stored).map(|s| s.fields().clone()));
        Ok(Page { items: items.collect::<Result<_>>()?, next_page_token: stored.next_page_token })
    }

    pub(super) async fn update_endpoint(&self, id: &EndpointId, change: EndpointChange) -> Result<pb::Endpoint> {
        let _lock = self.config_lock.lock().await;
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let mut stored = stored_endpoint(&tx, id.as_str()).await?;
        let before = stored.fields().clone();
        let mut endpoint = before.clone();
        change(&mut endpoint)?;
        if endpoint == before {
            return Ok(endpoint);
        }
        // Filters are checked only when they change, as on sled: disabling an endpoint whose family filter lost its
        // last catalog type still works.
        if endpoint.filter_types != before.filter_types {
            check_filters(&tx, &endpoint.filter_types).await?;
        }
        endpoint.id = before.id;
        endpoint.owner_id = before.owner_id;
        endpoint.created_at = before.created_at;
        endpoint.updated_at = Some(to_timestamp(now_ms()));
        stored.endpoint = Some(endpoint.clone());
        let view = stored.agent_view(&self.key)?;
        put_endpoint(&tx, &stored).await?;
        self.commit(tx, pb::ConfigDelta { upsert_endpoints: vec![view], ..Default::default() }).await?;
        Ok(endpoint)
    }

    pub(super) async fn rotate_secret(
        &self,
        id: &EndpointId,
        secret: String,
        previous_expires_at_ms: u64,
    ) -> Result<pb::AgentEndpoint> {
        let _lock = self.config_lock.lock().await;
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let stored =
            stored_endpoint(&tx, id.as_str()).await?.rotated(&self.key, secret, previous_expires_at_ms, now_ms())?;
        let view = stored.agent_view(&self.key)?;
        put_endpoint(&tx, &stored).await?;
        self.commit(tx, pb::ConfigDelta { upsert_endpoints: vec![view.clone()], ..Default::default() }).await?;
        Ok(view)
    }

    pub(super) async fn expire_secrets(&self, now_ms: u64) -> Result<Option<u64>> {
        let _lock = self.config_lock.lock().await;
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let mut delta = pb::ConfigDelta::default();
        let mut next: Option<u64> = None;
        let mut expired = 0usize;
        for mut stored in all_endpoints(&tx).await? {
            let before = stored.secrets.len();
            stored.secrets.retain(|secret| secret.expires_at_ms == 0 || secret.expires_at_ms > now_ms);
            for secret in &stored.secrets {
                if secret.expires_at_ms != 0 {
                    next = Some(next.map_or(secret.expires_at_ms, |at| at.min(secret.expires_at_ms)));
                }
            }
            if stored.secrets.len() != before {
                expired += before - stored.secrets.len();
                delta.upsert_endpoints.push(stored.agent_view(&self.key)?);
                put_endpoint(&tx, &stored).await?;
            }
        }
        if expired > 0 {
            let version = self.commit(tx, delta).await?;
            tracing::info!(secrets = expired, version, "removed signing secrets whose rotation overlap ended");
        }
        Ok(next)
    }

    pub(super) async fn delete_endpoint(&self, id: &EndpointId) -> Result<()> {
        let _lock = self.config_lock.lock().await;
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        stored_endpoint(&tx, id.as_str()).await?;
        tx.execute("DELETE FROM endpoints WHERE id = $1", &[&id.as_str()]).await.map_err(db_error)?;
        self.commit(tx, pb::ConfigDelta { delete_endpoints: vec![id.to_string()], ..Default::default() }).await?;
        Ok(())
    }

    pub(super) async fn config_snapshot(&self) -> Result<pb::ConfigSnapshot> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db_error)?;
        let version = read_version(&tx).await?;
        let owners = records(&tx, "SELECT id, record FROM owners ORDER BY id", "owner").await?;
        let event_types = records(&tx, "SELECT name, record FROM event_types ORDER BY name", "event type").await?;
        let endpoints: Result<Vec<_>> =
            all_endpoints(&tx).await?.iter().map(|stored| stored.agent_view(&self.key)).collect();
        tx.commit().await.map_err(db_error)?;
        Ok(pb::ConfigSnapshot { version, owners, event_types, endpoints: endpoints? })
    }

    pub(super) fn subscribe_config(&self) -> broadcast::Receiver<Arc<pb::ConfigDelta>> {
        self.changes.subscribe()
    }
}

/// What a delta in the change log is sealed to: a row moved to another version does not open.
fn change_context(version: u64) -> Vec<u8> {
    format!("hookrelay/config-change/v1/{version}").into_bytes()
}

/// Opens the delta of version `version` from the change log.
pub(super) fn open_change(key: &MasterKey, version: u64, sealed: &[u8]) -> Result<pb::ConfigDelta> {
    let what = || format!("config change {version}");
    let bytes = key
        .open(sealed, &change_context(version))
        .map_err(|error| Error::Corrupt { what: what(), reason: error.to_string() })?;
    decode(&bytes, what)
}

/// Begins a config transaction: it waits for every other replica's config transaction to end.
async fn begin(client: &mut Object) -> Result<Transaction<'_>> {
    let tx = client.transaction().await.map_err(db_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CONFIG_LOCK]).await.map_err(db_error)?;
    Ok(tx)
}

async fn read_version(client: &impl GenericClient) -> Result<u64> {
    let row = client.query_one("SELECT version FROM config_version", &[]).await.map_err(db_error)?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

async fn exists(client: &impl GenericClient, sql: &str, key: &str) -> Result<bool> {
    Ok(client.query_opt(sql, &[&key]).await.map_err(db_error)?.is_some())
}

async fn ids(client: &impl GenericClient, sql: &str, key: &str) -> Result<Vec<String>> {
    Ok(client.query(sql, &[&key]).await.map_err(db_error)?.iter().map(|row| row.get(0)).collect())
}

async fn record<T: Message + Default>(client: &impl GenericClient, sql: &str, key: &str, what: String) -> Result<T> {
    match client.query_opt(sql, &[&key]).await.map_err(db_error)? {
        Some(row) => decode(row.get(0), || what),
        None => Err(Error::NotFound(what)),
    }
}

async fn owner(client: &impl GenericClient, id: &str) -> Result<pb::Owner> {
    record(client, "SELECT record FROM owners WHERE id = $1", id, format!("owner {id:?}")).await
}

async fn event_type(client: &impl GenericClient, name: &str) -> Result<pb::EventType> {
    record(client, "SELECT record FROM event_types WHERE name = $1", name, format!("event type {name:?}")).await
}

async fn stored_endpoint(client: &impl GenericClient, id: &str) -> Result<StoredEndpoint> {
    let stored = record(client, "SELECT record FROM endpoints WHERE id = $1", id, format!("endpoint {id}")).await?;
    checked(&stored)?;
    Ok(stored)
}

/// `stored`, unless it has no endpoint (corrupt).
fn checked(stored: &StoredEndpoint) -> Result<&StoredEndpoint> {
    match &stored.endpoint {
        Some(_) => Ok(stored),
        None => Err(Error::Corrupt { what: "an endpoint record".into(), reason: "the record has no endpoint".into() }),
    }
}

/// Every endpoint, by id.
async fn all_endpoints(client: &impl GenericClient) -> Result<Vec<StoredEndpoint>> {
    let stored: Vec<StoredEndpoint> =
        records(client, "SELECT id, record FROM endpoints ORDER BY id", "endpoint").await?;
    for endpoint in &stored {
        checked(endpoint)?;
    }
    Ok(stored)
}

/// The records of `sql`'s rows (key, record).
async fn records<T: Message + Default>(client: &impl GenericClient, sql: &str, kind: &str) -> Result<Vec<T>> {
    let rows = client.query(sql, &[]).await.map_err(db_error)?;
    rows.iter().map(|row| decode(row.get(1), || format!("{kind} {:?}", row.get::<_, String>(0)))).collect()
}

/// Checks an endpoint's filters against the catalog as it is now.
async fn check_filters(client: &impl GenericClient, filters: &[String]) -> Result<()> {
    let rows = client.query("SELECT name FROM event_types ORDER BY name", &[]).await.map_err(db_error)?;
    let catalog: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    validate_filters(filters, |name| catalog.binary_search_by(|known| known.as_str().cmp(name)).is_ok(), {
        catalog.iter().map(String::as_str)
    })?;
    Ok(())
}

async fn put_owner(client: &impl GenericClient, owner: &pb::Owner) -> Result<()> {
    let sql = "INSERT INTO owners (id, record) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET record = excluded.record";
    client.execute(sql, &[&owner.id, &owner.encode_to_vec()]).await.map_err(db_error)?;
    Ok(())
}

async fn put_event_type(client: &impl GenericClient, event_type: &pb::EventType) -> Result<()> {
    let sql = "INSERT INTO event_types (name, record) VALUES ($1, $2) \
               ON CONFLICT (name) DO UPDATE SET record = excluded.record";
    client.execute(sql, &[&event_type.name, &event_type.encode_to_vec()]).await.map_err(db_error)?;
    Ok(())
}

async fn put_endpoint(client: &impl GenericClient, stored: &StoredEndpoint) -> Result<()> {
    let fields = stored.fields();
    let sql = "INSERT INTO endpoints (id, owner_id, filter_types, record) VALUES ($1, $2, $3, $4) \
               ON CONFLICT (id) DO UPDATE SET filter_types = excluded.filter_types, record = excluded.record";
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&fields.id, &fields.owner_id, &fields.filter_types, &stored.encode_to_vec()];
    client.execute(sql, &params).await.map_err(db_error)?;
    Ok(())
}

/// One page plus one row of `table` as (key, record), in key order after `page.after`; only `owner_id`'s when
/// given (endpoints).
async fn list_rows(
    client: &impl GenericClient,
    table: &str,
    key: &str,
    owner_id: Option<&str>,
    page: &PageRequest,
) -> Result<Vec<(String, Vec<u8>)>> {
    let limit = i64::try_from(page.size.saturating_add(1)).unwrap_or(i64::MAX);
    let select = format!("SELECT {key}, record FROM {table} WHERE ($1::text IS NULL OR {key} > $1)");
    let rows = match owner_id {
        None => client.query(&format!("{select} ORDER BY {key} LIMIT $2"), &[&page.after, &limit]).await,
        Some(owner_id) => {
            let sql = format!("{select} AND owner_id = $3 ORDER BY {key} LIMIT $2");
            client.query(&sql, &[&page.after, &limit, &owner_id]).await
        }
    };
    Ok(rows.map_err(db_error)?.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Decodes the rows of [`list_rows`] into a page; the extra row only says another page follows.
fn page_of<T: Message + Default>(mut rows: Vec<(String, Vec<u8>)>, page: &PageRequest, kind: &str) -> Result<Page<T>> {
    let more = rows.len() > page.size;
    rows.truncate(page.size);
    let next_page_token =
        if more { rows.last().map(|(key, _)| key.clone()).unwrap_or_default() } else { String::new() };
    let items = rows.iter().map(|(key, bytes)| decode(bytes, || format!("{kind} {key:?}"))).collect::<Result<_>>()?;
    Ok(Page { items, next_page_token })
}

fn decode<T: Message + Default>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T> {
    T::decode(bytes).map_err(|error| Error::Corrupt { what: what(), reason: error.to_string() })
}

/// Records what an agent said, folding the event into its record in one transaction.
pub(super) async fn record_agent(pool: &Pool, node_name: &str, event: crate::store::AgentEvent) -> Result<pb::Agent> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(db_error)?;
    let row = tx.query_opt("SELECT record FROM agents WHERE node_name = $1 FOR UPDATE", &[&node_name]).await;
    let mut agent = match row.map_err(db_error)? {
        Some(row) => decode(row.get(0), || format!("agent {node_name:?}"))?,
        None => pb::Agent { node_name: node_name.to_owned(), ..Default::default() },
    };
    event.apply(&mut agent, now_ms());
    let sql = "INSERT INTO agents (node_name, record) VALUES ($1, $2) \
               ON CONFLICT (node_name) DO UPDATE SET record = excluded.record";
    tx.execute(sql, &[&node_name, &agent.encode_to_vec()]).await.map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(agent)
}

/// Every agent record, by node name.
pub(super) async fn list_agents(pool: &Pool) -> Result<Vec<pb::Agent>> {
    let client = pool.get().await.map_err(pool_error)?;
    records(&client, "SELECT node_name, record FROM agents ORDER BY node_name", "agent").await
}
