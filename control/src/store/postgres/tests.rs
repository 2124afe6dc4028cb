//! PostgreSQL-only tests of the config half: the cross-record rules with two replicas on one database, the change
//! log, and what is stored at rest. They skip loudly without PostgreSQL (see `hookrelay_tests::postgres`).

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::StreamExt as _;
use tokio_postgres::{AsyncMessage, NoTls};

/// A pool on the database at `url`, without migrations.
pub(super) fn pool_for(url: &str) -> Pool {
    let settings: tokio_postgres::Config = url.parse().unwrap();
    let manager = Manager::from_config(settings, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager).max_size(4).build().unwrap()
}

use std::sync::Arc;

use hookrelay_common::proto::v1 as pb;
use hookrelay_common::sealed::MasterKey;
use hookrelay_common::signing::Secret;
use hookrelay_common::time::now_ms;
use hookrelay_tests::postgres::{PgCluster, postgres};

use super::PostgresStore;
use super::config::open_change;
use super::migrations::{MIGRATIONS, apply_these};
use crate::error::Error;
use crate::store::conformance::{endpoint, event_type, id_of, owner, report, seed};
use crate::store::{MAX_SECRETS_PER_ENDPOINT, PruneCutoff, PrunePass, Store};

/// Two replicas on one fresh database, sharing a master key; `None` without PostgreSQL.
async fn two_replicas() -> Option<(&'static PgCluster, String, MasterKey, [Arc<PostgresStore>; 2])> {
    let cluster = postgres()?;
    let url = cluster.fresh_database();
    let key = MasterKey::generate();
    let first = Arc::new(PostgresStore::connect(&url, None, key.clone()).await.unwrap());
    let second = Arc::new(PostgresStore::connect(&url, None, key.clone()).await.unwrap());
    Some((cluster, url, key, [first, second]))
}

#[tokio::test]
async fn the_endpoint_limit_holds_under_50_concurrent_creates_over_two_replicas() {
    let Some((_, _, _, replicas)) = two_replicas().await else { return };
    seed(&*replicas[0]).await;
    let creates = (0..50).map(|n| {
        let store = replicas[n % 2].clone();
        tokio::spawn(async move { store.create_endpoint(endpoint("acme", &["*"]), 7).await })
    });
    let results: Vec<_> = futures::future::join_all(creates).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(results.iter().filter(|result| result.is_ok()).count(), 7);
    for refused in results.into_iter().filter_map(Result::err) {
        assert_eq!(refused.to_string(), "owner \"acme\" already has 7 endpoints, the most allowed per owner (7)");
    }
    let snapshot = replicas[1].config_snapshot().await.unwrap();
    assert_eq!(snapshot.endpoints.len(), 7);
    assert_eq!(snapshot.version, 3 + 7, "one version per change, none lost or doubled across replicas");
}

#[tokio::test]
async fn deleting_what_another_replica_references_is_refused() {
    let Some((_, _, _, [first, second])) = two_replicas().await else { return };
    seed(&*first).await;
    let subscriber = second.create_endpoint(endpoint("acme", &["payment.settled"]), 10).await.unwrap();
    let error = first.delete_event_type("payment.settled").await.unwrap_err();
    assert!(matches!(error, Error::FailedPrecondition(_)), "{error}");
    assert!(error.to_string().contains(id_of(&subscriber).as_str()), "{error}");
    let error = first.delete_owner("acme").await.unwrap_err();
    assert!(matches!(error, Error::FailedPrecondition(_)), "{error}");

    // Racing: one replica deletes the type while the other subscribes an endpoint to it; one of them loses.
    first.create_event_type(event_type("card.viewed")).await.unwrap();
    let (deleted, created) = tokio::join!(
        first.delete_event_type("card.viewed"),
        second.create_endpoint(endpoint("acme", &["card.viewed"]), 10)
    );
    assert!(deleted.is_ok() != created.is_ok(), "exactly one wins: {deleted:?} {created:?}");
    let snapshot = first.config_snapshot().await.unwrap();
    let types: Vec<&str> = snapshot.event_types.iter().map(|t| t.name.as_str()).collect();
    for endpoint in &snapshot.endpoints {
        for filter in &endpoint.endpoint.as_ref().unwrap().filter_types {
            assert!(types.contains(&filter.as_str()), "{filter} is subscribed but gone");
        }
    }
}

#[tokio::test]
async fn rotation_across_replicas_keeps_every_secret_and_its_bound() {
    let Some((_, _, _, replicas)) = two_replicas().await else { return };
    seed(&*replicas[0]).await;
    let created = replicas[0].create_endpoint(endpoint("acme", &["*"]), 10).await.unwrap();
    let id = id_of(&created);
    let far = now_ms() + 3_600_000;
    // More rotations at once than the bound allows, from both replicas: each one sees the others' secrets.
    let rotations = (0..8).map(|n| {
        let (store, id) = (replicas[n % 2].clone(), id.clone());
        tokio::spawn(async move { store.rotate_secret(&id, Secret::generate().expose(), far).await })
    });
    let results: Vec<_> = futures::future::join_all(rotations).await.into_iter().map(Result::unwrap).collect();
    let rotated: Vec<pb::AgentEndpoint> = results.iter().filter_map(|result| result.as_ref().ok().cloned()).collect();
    assert_eq!(rotated.len(), MAX_SECRETS_PER_ENDPOINT - 1);
    let secrets = replicas[1].config_snapshot().await.unwrap().endpoints[0].secrets.clone();
    assert_eq!(secrets.len(), MAX_SECRETS_PER_ENDPOINT);
    assert_eq!(secrets.last(), created.secrets.first(), "the first secret is still valid, oldest last");
    assert!(rotated.iter().any(|view| view.secrets == secrets), "the last rotation's view is what is stored");
    // Expiry on one replica removes what rotations on the other gave an end.
    assert_eq!(replicas[1].expire_secrets(far).await.unwrap(), None);
    assert_eq!(replicas[0].config_snapshot().await.unwrap().endpoints[0].secrets, secrets[..1]);
}

#[tokio::test]
async fn each_change_is_logged_sealed_to_its_version_and_notified_in_order() {
    let Some((cluster, url, key, [first, second])) = two_replicas().await else { return };
    let (client, mut connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    let (notified, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(note) = message {
                let _ = notified.send((note.channel().to_owned(), note.payload().to_owned()));
            }
        }
    });
    client.batch_execute("LISTEN hookrelay_config").await.unwrap();
    let mut feed = first.subscribe_config();
    seed(&*first).await;
    let created = second.create_endpoint(endpoint("acme", &["*"]), 10).await.unwrap();
    for version in 1..=4 {
        let note = notifications.recv().await.unwrap();
        assert_eq!(note, ("hookrelay_config".to_owned(), version.to_string()), "notified in commit order");
    }
    let rows = client.query("SELECT version, delta FROM config_changes ORDER BY version", &[]).await.unwrap();
    let logged: Vec<pb::ConfigDelta> =
        rows.iter().map(|row| open_change(&key, row.get::<_, i64>(0) as u64, row.get(1)).unwrap()).collect();
    assert_eq!(
        logged.iter().map(|delta| (delta.base_version, delta.version)).collect::<Vec<_>>(),
        [(0, 1), (1, 2), (2, 3), (3, 4)]
    );
    // Each replica publishes every change of the log, its own and the other's, once and in version order.
    for delta in &logged {
        assert_eq!(*feed.recv().await.unwrap(), *delta, "what the replica published is what was logged");
    }
    assert_eq!(logged[3].upsert_endpoints, std::slice::from_ref(&created));
    assert_eq!((first.stats().unwrap().config_version, second.stats().unwrap().config_version), (4, 4));
    // A sealed delta opens only at its own version.
    let moved = client.query_one("SELECT delta FROM config_changes WHERE version = 4", &[]).await.unwrap();
    assert!(matches!(open_change(&key, 3, moved.get(0)), Err(Error::Corrupt { .. })));

    // Nothing in the database holds the secret in the clear (the change log included).
    let name = url.rsplit('/').next().unwrap();
    let dump = cluster.psql(
        name,
        "SELECT string_agg(encode(convert_to(t::text, 'UTF8'), 'escape'), '') FROM \
         (SELECT delta::text FROM config_changes UNION ALL SELECT record::text FROM endpoints) t",
    );
    let secret = &created.secrets[0]["whsec_".len()..];
    assert!(!dump.is_empty() && !dump.contains(secret));
    let raw: Vec<u8> = rows.iter().flat_map(|row| row.get::<_, Vec<u8>>(1)).collect();
    assert!(!raw.windows(secret.len()).any(|window| window == secret.as_bytes()));
}

#[tokio::test]
async fn a_database_at_the_previous_schema_version_starts_the_store() {
    let Some(cluster) = postgres() else { return };
    let url = cluster.fresh_database();
    apply_these(&pool_for(&url), &MIGRATIONS[..MIGRATIONS.len() - 1]).await.unwrap();
    let store = PostgresStore::connect(&url, None, MasterKey::generate()).await.unwrap();
    store.create_owner(owner("acme")).await.unwrap();
    assert_eq!(store.stats().unwrap(), crate::store::StoreStats { config_version: 1, deliveries: 0 });
}

#[tokio::test]
async fn a_password_from_a_file_overrides_the_url_and_a_bad_url_is_refused() {
    let Some(cluster) = postgres() else { return };
    let url = cluster.fresh_database();
    // The cluster trusts loopback, so any password is accepted: this checks it is passed, not checked.
    PostgresStore::connect(&url, Some("from-a-file".into()), MasterKey::generate()).await.unwrap();
    let error = PostgresStore::connect("mysql://nope", None, MasterKey::generate()).await.err().unwrap();
    assert!(error.to_string().starts_with("database error: the database URL is not usable"), "{error}");
}

#[tokio::test]
async fn a_change_whose_notification_is_lost_still_reaches_every_replica() {
    let Some((_, url, _, [first, second])) = two_replicas().await else { return };
    let mut feed = first.subscribe_config();
    // Every replica's listening session goes, as with a broken connection: a NOTIFY sent now reaches no one.
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let listeners = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()";
    let ended = client.query(listeners, &[]).await.unwrap();
    assert!(!ended.is_empty(), "each replica listens on a session of its own");
    second.create_owner(owner("acme")).await.unwrap();
    let delta =
        tokio::time::timeout(hookrelay_tests::DEADLINE, feed.recv()).await.expect("the change arrives").unwrap();
    assert_eq!((delta.version, delta.upsert_owners[0].id.as_str()), (1, "acme"));
}

#[tokio::test]
async fn retention_runs_on_one_replica_at_a_time_and_moves_on_when_it_dies() {
    let Some((_, url, _, [first, _second])) = two_replicas().await else { return };
    seed(&*first).await;
    let endpoint = id_of(&first.create_endpoint(endpoint("acme", &["*"]), 10).await.unwrap());
    let delivery = hookrelay_common::ids::DeliveryId::generate();
    let done = report(&delivery, &endpoint, 1, pb::DeliveryStatus::Succeeded);
    first.ingest_reports("node-a", vec![done]).await.unwrap();
    let later = PruneCutoff::at(now_ms() + 3_600_000);
    let limit = std::num::NonZeroUsize::new(100).unwrap();

    // Another replica's pass, as a session holding the retention lock: this replica skips its own.
    let (holder, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    let holding = tokio::spawn(connection);
    holder.query_one("SELECT pg_advisory_lock($1)", &[&super::RETENTION_LOCK]).await.unwrap();
    assert_eq!(first.prune_deliveries(later, None, limit).await.unwrap(), PrunePass::default());
    assert!(first.get_delivery(&delivery).await.is_ok(), "nothing was pruned while another replica had the turn");

    // That replica dies (its session ends; the server lets the lock go a moment after the client has gone): a
    // later pass here takes over.
    drop(holder);
    holding.await.unwrap().unwrap();
    let deadline = std::time::Instant::now() + hookrelay_tests::DEADLINE;
    let pass = loop {
        let pass = first.prune_deliveries(later, None, limit).await.unwrap();
        if pass != PrunePass::default() || std::time::Instant::now() > deadline {
            break pass;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(pass.removed, 1, "{pass:?}");
    assert!(matches!(first.get_delivery(&delivery).await, Err(Error::NotFound(_))));
}
