//! Every `ListDeliveries` page reads an index range, never a scan: the statements [`list_statement`] builds are
//! `EXPLAIN`ed on a log of a million deliveries over five days, each filter alone and with a cursor.

use std::time::Instant;

use hookrelay_common::ids::{DeliveryId, EndpointId};
use hookrelay_common::proto::v1 as pb;

use super::tests::{DAY, test_pool};
use super::*;

/// 2026-01-01T00:00:00Z: the first of the five days generated.
const FIRST_DAY_MS: u64 = 1_767_225_600_000;
const ROWS: u64 = 1_000_000;
/// Milliseconds between two generated deliveries: a million over five days.
const STEP_MS: u64 = 5 * DAY / ROWS;

/// The SQL that generates the log server-side: owners, endpoints, types and agents in rotation; 2% failed, 1%
/// cancelled, 0.1% pending, the rest succeeded; every record is `$1`, a typical delivery.
fn generate_sql() -> String {
    format!(
        "INSERT INTO deliveries (id, created_ms, owner_id, endpoint_id, event_type, status, agent, updated_ms, record) \
         SELECT 'dlv_' || lpad(to_hex(t), 12, '0') || substr(md5(g::text), 1, 20), t, 'owner-' || (g % 50), \
         'ep_' || md5((g % 2000)::text), 'type.' || (g % 20), \
         CASE WHEN g % 1000 = 0 THEN 1 WHEN g % 50 = 1 THEN 4 WHEN g % 100 = 2 THEN 5 ELSE 3 END, \
         'node-' || (g % 30), t + 5000, $1::bytea \
         FROM (SELECT g, {FIRST_DAY_MS}::int8 + g * {STEP_MS} AS t FROM generate_series(0, {}) g) s",
        ROWS - 1
    )
}

/// A delivery as agents report it, encoded.
fn typical_record() -> Vec<u8> {
    use prost::Message;
    let id = DeliveryId::generate();
    pb::Delivery {
        id: id.to_string(),
        event_id: "evt_0190b1d2c3e47a6b8c9d0e1f2a3b4c5d".into(),
        owner_id: "owner-17".into(),
        endpoint_id: EndpointId::generate().to_string(),
        event_type: "payment.settled".into(),
        status: pb::DeliveryStatus::Succeeded as i32,
        attempts: 1,
        last_status_code: 200,
        created_at: Some(hookrelay_common::time::to_timestamp(id.created_at_ms())),
        updated_at: Some(hookrelay_common::time::to_timestamp(id.created_at_ms() + 180)),
        delivered_at: Some(hookrelay_common::time::to_timestamp(id.created_at_ms() + 180)),
        agent: "ip-10-0-12-34.eu-west-1.compute.internal".into(),
        payload_ref: 123_456_789,
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listing_reads_an_index_range_on_a_million_deliveries() {
    let Some(pool) = test_pool().await else { return };
    let mut client = pool.get().await.unwrap();
    create_partitions(&mut client, (0..5).map(|day| ms(FIRST_DAY_MS + day * DAY))).await.unwrap();
    let started = Instant::now();
    let record = typical_record();
    client.execute(&generate_sql(), &[&record]).await.unwrap();
    let generated = started.elapsed();
    client.batch_execute("ANALYZE deliveries").await.unwrap();
    let bytes: i64 = client
        .query_one(
            "SELECT sum(pg_total_relation_size(inhrelid))::int8 FROM pg_inherits \
             WHERE inhparent = 'deliveries'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "generated {ROWS} deliveries in {generated:.1?} (ANALYZE after {:.1?}); {} bytes per delivery with indexes, \
         its record {} bytes",
        started.elapsed(),
        bytes / ROWS as i64,
        record.len()
    );

    let endpoint: String = client.query_one("SELECT 'ep_' || md5('77')", &[]).await.unwrap().get(0);
    let endpoint = EndpointId::parse(&endpoint).unwrap();
    // A cursor in the middle of the third day, and a window of a few hours around it.
    let cursor =
        DeliveryId::parse(&format!("dlv_{:012x}{}", FIRST_DAY_MS + 2 * DAY + DAY / 2, "0".repeat(20))).unwrap();
    // Each filter, and the index its pages read (alternatives split by `|`).
    let filters: Vec<(&str, DeliveryQuery, &str)> = vec![
        ("all", DeliveryQuery::default(), "_pkey"),
        ("owner", DeliveryQuery { owner_id: Some("owner-7".into()), ..Default::default() }, "owner_id_id_idx"),
        ("endpoint", DeliveryQuery { endpoint_id: Some(endpoint), ..Default::default() }, "endpoint_id_id_idx"),
        (
            "pending",
            DeliveryQuery { status: Some(pb::DeliveryStatus::Pending as i32), ..Default::default() },
            "status_id_idx",
        ),
        (
            "failed",
            DeliveryQuery { status: Some(pb::DeliveryStatus::Failed as i32), ..Default::default() },
            "status_id_idx",
        ),
        // Nearly every delivery: the primary key's range, filtered, reads as few entries as the status index's.
        (
            "succeeded",
            DeliveryQuery { status: Some(pb::DeliveryStatus::Succeeded as i32), ..Default::default() },
            "status_id_idx|_pkey",
        ),
        ("type", DeliveryQuery { event_type: Some("type.3".into()), ..Default::default() }, "event_type_id_idx"),
        (
            "window",
            DeliveryQuery {
                created_after_ms: Some(FIRST_DAY_MS + 2 * DAY + 3_600_000),
                created_before_ms: Some(FIRST_DAY_MS + 2 * DAY + 4 * 3_600_000),
                ..Default::default()
            },
            "_pkey",
        ),
    ];
    for (name, filter, index) in filters {
        for after in [None, Some(cursor.clone())] {
            let query = DeliveryQuery { page_size: 50, after: after.clone(), ..filter.clone() };
            let statement = list_statement(&query).expect("a range that holds deliveries");
            let params = statement.params();
            let explain = |options: &str| format!("EXPLAIN ({options}) {}", statement.sql);
            let plan: Vec<String> =
                client.query(&explain("COSTS OFF"), &params).await.unwrap().iter().map(|row| row.get(0)).collect();
            let plan = plan.join("\n");
            let label = format!("{name}, cursor {}", after.is_some());
            assert!(!plan.contains("Seq Scan"), "{label}: a scan\n{plan}");
            assert!(!plan.contains("Sort\n") && !plan.contains("-> Sort"), "{label}: a sort\n{plan}");
            let reads_index = plan.lines().any(|line| {
                (line.contains("Index Scan") || line.contains("Index Only Scan") || line.contains("Bitmap Index Scan"))
                    && index.split('|').any(|name| line.contains(name))
            });
            assert!(reads_index, "{label}: no read of *{index}\n{plan}");
            if name == "window" || after.is_some() {
                // Partition pruning: days past the cursor or outside the window are not read.
                assert!(!plan.contains("deliveries_20260105"), "{label}: reads the last day\n{plan}");
            }
            let analyzed: Vec<String> =
                client.query(&explain("ANALYZE"), &params).await.unwrap().iter().map(|row| row.get(0)).collect();
            let time = analyzed.iter().find(|line| line.starts_with("Execution Time")).cloned().unwrap_or_default();
            eprintln!("{label:>24}: *{index}, {time}");
            // The page itself, through the store's own call.
            let page = list_deliveries(&pool, &query).await.unwrap();
            assert_eq!(page.items.len(), 50, "{label}");
            assert!(!page.next_page_token.is_empty(), "{label}");
        }
    }
}
