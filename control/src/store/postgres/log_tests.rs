//! The PostgreSQL-only delivery-log tests: replicas ingesting the same batch, partitions made on demand; and the
//! fixtures the retention and `EXPLAIN` tests share. They skip loudly without PostgreSQL (see
//! `hookrelay_tests::postgres`).

use std::collections::HashSet;

use deadpool_postgres::Pool;
use hookrelay_common::ids::{DeliveryId, EndpointId, ReportId};
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::time::{now_ms, to_timestamp};

use super::super::PostgresStore;
use super::*;
use crate::store::{Report, Store};

pub(in crate::store::postgres) const DAY: u64 = DAY_MS as u64;

/// A pool on a fresh, migrated database of the test cluster; `None` without PostgreSQL.
pub(in crate::store::postgres) async fn test_pool() -> Option<Pool> {
    let cluster = hookrelay_tests::postgres::postgres()?;
    Some(pool_on(&cluster.fresh_database()).await)
}

/// A migrated pool on the database at `url`: what a replica holds.
pub(in crate::store::postgres) async fn pool_on(url: &str) -> Pool {
    let pool = super::super::tests::pool_for(url);
    super::super::migrations::apply(&pool).await.unwrap();
    pool
}

/// A delivery id generated at `ms`: a fresh one with its time field replaced.
pub(in crate::store::postgres) fn delivery_at(ms: u64) -> DeliveryId {
    DeliveryId::parse(&format!("dlv_{ms:012x}{}", &DeliveryId::generate().as_str()[16..])).unwrap()
}

pub(in crate::store::postgres) fn report_id_at(ms: u64) -> ReportId {
    ReportId::parse(&format!("rpt_{ms:012x}{}", &ReportId::generate().as_str()[16..])).unwrap()
}

/// A report of attempt `attempt` of `delivery_id`, leaving it in `status`, made when the delivery was created.
pub(in crate::store::postgres) fn report(
    delivery_id: &DeliveryId,
    endpoint_id: &EndpointId,
    attempt: u32,
    status: pb::DeliveryStatus,
) -> Report {
    let created = delivery_id.created_at_ms();
    let mut made = crate::store::conformance::report(delivery_id, endpoint_id, attempt, status);
    made.delivery.updated_at = Some(to_timestamp(created));
    made.report_id = report_id_at(created);
    made
}

/// The names of `table`'s partitions.
pub(in crate::store::postgres) async fn partitions(pool: &Pool, table: &str) -> Vec<String> {
    let client = pool.get().await.unwrap();
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = $1::text::regclass ORDER BY 1",
            &[&table],
        )
        .await
        .unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

async fn count(pool: &Pool, sql: &str) -> i64 {
    pool.get().await.unwrap().query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_batch_sent_to_two_replicas_at_once_is_stored_once() {
    let Some(cluster) = hookrelay_tests::postgres::postgres() else { return };
    let url = cluster.fresh_database();
    let key = hookrelay_common::sealed::MasterKey::generate();
    let one = PostgresStore::connect(&url, None, key.clone()).await.unwrap();
    let two = PostgresStore::connect(&url, None, key).await.unwrap();
    let endpoint = EndpointId::generate();
    let mut expected_attempts = 0;
    let mut deliveries = HashSet::new();
    for round in 0..20u32 {
        // A batch of 40 reports: 10 deliveries with 4 attempts each, in an order that changes every round.
        let mut batch = Vec::new();
        for index in 0..10u32 {
            let id = DeliveryId::generate();
            for attempt in 1..=4 {
                let status = if attempt == 4 { pb::DeliveryStatus::Succeeded } else { pb::DeliveryStatus::Pending };
                let mut made = report(&id, &endpoint, attempt, status);
                made.report_id = ReportId::generate();
                batch.push(made);
            }
            deliveries.insert(id);
            expected_attempts += 4;
            let turn = (round + index) as usize % batch.len();
            batch.rotate_left(turn);
        }
        // The other replica gets the same reports in the opposite order.
        let mut reversed = batch.clone();
        reversed.reverse();
        let (a, b) = tokio::join!(one.ingest_reports("node-1", batch), two.ingest_reports("node-1", reversed));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.stored + b.stored, 40, "round {round}: {a:?} {b:?}");
        assert_eq!(a.duplicates + b.duplicates, 40, "round {round}: {a:?} {b:?}");
    }
    let pool = super::super::tests::pool_for(&url);
    assert_eq!(count(&pool, "SELECT count(*) FROM attempts").await, expected_attempts);
    assert_eq!(count(&pool, "SELECT count(*) FROM report_ids").await, expected_attempts);
    assert_eq!(count(&pool, "SELECT count(*) FROM deliveries").await, deliveries.len() as i64);
    assert_eq!(count_deliveries(&pool).await.unwrap(), deliveries.len() as u64);
    for id in deliveries.iter().take(20) {
        let (delivery, attempts) = two.get_delivery(id).await.unwrap();
        assert_eq!(delivery.status, pb::DeliveryStatus::Succeeded as i32, "{id}: the furthest report wins");
        assert_eq!(attempts.iter().map(|attempt| attempt.number).collect::<Vec<_>>(), [1, 2, 3, 4]);
    }
}

#[tokio::test]
async fn a_batch_reaching_a_day_without_a_partition_creates_it() {
    let Some(pool) = test_pool().await else { return };
    let endpoint = EndpointId::generate();
    // Ten days ago and in three days: neither is created ahead by the migration.
    let old = delivery_at(now_ms() - 10 * DAY);
    let ahead = delivery_at(now_ms() + 3 * DAY);
    let reports = vec![
        report(&old, &endpoint, 1, pb::DeliveryStatus::Succeeded),
        report(&ahead, &endpoint, 1, pb::DeliveryStatus::Pending),
    ];
    let outcome = ingest(&pool, "node-1", reports.clone()).await.unwrap();
    assert_eq!(outcome, IngestOutcome { stored: 2, duplicates: 0 });
    for table in LOG_TABLES {
        let names = partitions(&pool, table).await;
        for id in [&old, &ahead] {
            let name = partition_name(table, day_of(ms(id.created_at_ms())));
            assert!(names.contains(&name), "{name} in {names:?}");
        }
    }
    assert_eq!(get_delivery(&pool, &old).await.unwrap().1.len(), 1);
    assert_eq!(ingest(&pool, "node-1", reports).await.unwrap(), IngestOutcome { stored: 0, duplicates: 2 });
    assert_eq!(count_deliveries(&pool).await.unwrap(), 2);
}

#[test]
fn partitions_are_named_by_their_utc_day() {
    assert_eq!(partition_name("deliveries", day_of(1_763_100_000_000)), "deliveries_20251114");
    assert_eq!(day_of(1_763_100_000_000 + DAY_MS), day_of(1_763_100_000_000) + DAY_MS);
    assert_eq!(day_of(-1), -DAY_MS);
    assert!(partition_name("attempts", i64::MAX / 2).starts_with("attempts_d"));
}
