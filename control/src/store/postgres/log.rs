//! The delivery log on PostgreSQL: report ingestion, listings, lookups and the day partitions they write to.
//!
//! Deliveries, attempts and report ids live in tables partitioned by day (UTC), keyed by the creation time in the
//! delivery id's (or report id's) UUIDv7, so every lookup by id names its partition. Partitions are created ahead
//! (`retention::create_partitions_ahead`, at open and by the retention task). A batch that reaches a day without
//! one gets PostgreSQL's "no partition" error, creates the partitions of its days and runs again. Nothing is cached,
//! so a day dropped by another replica is simply created again.
//!
//! A batch is one transaction of a few multi-row statements (arrays through `unnest`):
//! 1. the report ids are inserted `ON CONFLICT DO NOTHING RETURNING`: those returned are new, the rest are
//!    duplicates. A replica sending the same batch concurrently waits on the first one's uncommitted keys and
//!    then finds them taken, so a batch is stored once whichever replicas it reaches;
//! 2. the deliveries of the new reports are locked and read (`FOR UPDATE`, in id order, so two batches lock in
//!    the same order), merged in Rust with [`merge_delivery`] and written back; a delivery another batch created
//!    meanwhile comes back from `ON CONFLICT DO NOTHING` and is locked, merged and written again;
//! 3. attempts are upserted: a later report of the same attempt number replaces the record;
//! 4. the per-day delivery counters grow by the deliveries created.
//!
//! A deadlock or serialization failure runs the batch again, a few times.

use std::collections::{BTreeMap, HashMap, HashSet};

use deadpool_postgres::{Object, Pool};
use hookrelay_common::ids::DeliveryId;
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::time::opt_ms;
use prost::Message;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Transaction};

use super::{db_error, pool_error};
use crate::error::{Error, Result};
use crate::store::{DeliveryQuery, IngestOutcome, Page, Report, merge_delivery};

/// One day in milliseconds: the width of a partition.
pub(super) const DAY_MS: i64 = 24 * 3600 * 1000;
/// The partitioned tables of the log, each cut by day the same way.
pub(super) const LOG_TABLES: [&str; 3] = ["deliveries", "attempts", "report_ids"];
/// Runs of one batch when it meets a missing partition, a deadlock or a serialization failure.
const INGEST_TRIES: usize = 4;
/// Serialises partition creation across replicas (`CREATE TABLE IF NOT EXISTS` races otherwise); any constant
/// distinct from the store's other advisory locks.
const PARTITION_LOCK: i64 = 0x686f_6f6b_7061_7274;
/// Rows per day in `delivery_counts`, one picked at random per batch.
const COUNT_SLOTS: i16 = 16;

/// The start of the day (UTC) holding `ms`.
pub(super) fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// A time from the log as PostgreSQL's `bigint`; ids hold 48 bits of milliseconds, so nothing real saturates.
pub(super) fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The partition of `table` for the day starting at `day_ms`: `deliveries_20261206`.
pub(super) fn partition_name(table: &str, day_ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(day_ms) {
        Ok(day) => format!("{table}_{}", day.strftime("%Y%m%d")),
        // Past year 9999 (a broken agent clock): named by day number instead.
        Err(_) => format!("{table}_d{}", day_ms / DAY_MS),
    }
}

/// Creates the partitions of every log table for `days` (day starts) that do not exist yet.
pub(super) async fn create_partitions(client: &mut Object, days: impl IntoIterator<Item = i64>) -> Result<()> {
    let days: Vec<i64> = days.into_iter().map(day_of).collect::<HashSet<_>>().into_iter().collect();
    let mut sql = String::new();
    for day in days {
        for table in LOG_TABLES {
            sql.push_str(&format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF {table} FOR VALUES FROM ({day}) TO ({});\n",
                partition_name(table, day),
                day + DAY_MS
            ));
        }
    }
    if sql.is_empty() {
        return Ok(());
    }
    let tx = client.transaction().await.map_err(db_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK]).await.map_err(db_error)?;
    tx.batch_execute(&sql).await.map_err(db_error)?;
    tx.commit().await.map_err(db_error)
}

/// A batch of reports ready to write: report ids unique, in the order they came.
struct Batch {
    reports: Vec<Report>,
    /// Reports whose id appeared earlier in the same batch.
    repeated: u32,
}

impl Batch {
    fn new(reports: Vec<Report>) -> Self {
        let mut seen = HashSet::with_capacity(reports.len());
        let total = reports.len();
        let reports: Vec<Report> = reports.into_iter().filter(|report| seen.insert(report.report_id.clone())).collect();
        let repeated = u32::try_from(total - reports.len()).unwrap_or(u32::MAX);
        Self { reports, repeated }
    }

    /// Every day the batch writes to: its deliveries' and its report ids'.
    fn days(&self) -> impl Iterator<Item = i64> + '_ {
        self.reports.iter().flat_map(|report| {
            [ms(report.delivery_id.created_at_ms()), ms(report.report_id.created_at_ms())].map(day_of)
        })
    }
}

/// Stores one batch of reports from `node_name`; see the module documentation.
pub(super) async fn ingest(pool: &Pool, node_name: &str, reports: Vec<Report>) -> Result<IngestOutcome> {
    let batch = Batch::new(reports);
    if batch.reports.is_empty() {
        return Ok(IngestOutcome { stored: 0, duplicates: batch.repeated });
    }
    let mut client = pool.get().await.map_err(pool_error)?;
    let mut tries = 0;
    loop {
        tries += 1;
        let error = match ingest_once(&mut client, node_name, &batch).await {
            Ok(outcome) => return Ok(outcome),
            Err(error) => error,
        };
        match error.code() {
            // Only a missing partition breaks a partition constraint: the log's tables have no CHECK of their own.
            Some(code) if *code == SqlState::CHECK_VIOLATION && tries < INGEST_TRIES => {
                create_partitions(&mut client, batch.days()).await?;
            }
            Some(code)
                if (*code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE)
                    && tries < INGEST_TRIES =>
            {
                tracing::debug!(%error, tries, "running a report batch again");
            }
            _ => return Err(db_error(error)),
        }
    }
}

/// A delivery as the columns of its row.
struct DeliveryRow {
    id: String,
    created_ms: i64,
    delivery: pb::Delivery,
}

/// One run of [`ingest`], in one transaction.
async fn ingest_once(
    client: &mut Object,
    node_name: &str,
    batch: &Batch,
) -> Result<IngestOutcome, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let new_ids = insert_report_ids(&tx, &batch.reports).await?;
    let new_reports: Vec<&Report> =
        batch.reports.iter().filter(|report| new_ids.contains(report.report_id.as_str())).collect();
    let stored = u32::try_from(new_reports.len()).unwrap_or(u32::MAX);
    let outcome = IngestOutcome { stored, duplicates: batch.repeated + (batch.reports.len() as u32 - stored) };
    if new_reports.is_empty() {
        tx.commit().await?;
        return Ok(outcome);
    }

    // The batch's own reports of a delivery merged first, in the order they came; keyed by id for the lock order.
    let mut incoming: BTreeMap<String, DeliveryRow> = BTreeMap::new();
    for report in &new_reports {
        let delivery = pb::Delivery { agent: node_name.to_owned(), ..report.delivery.clone() };
        let id = report.delivery_id.to_string();
        let created_ms = ms(report.delivery_id.created_at_ms());
        match incoming.remove(&id) {
            Some(previous) => {
                let delivery = merge_delivery(Some(previous.delivery), delivery);
                incoming.insert(id.clone(), DeliveryRow { id, created_ms, delivery });
            }
            None => {
                incoming.insert(id.clone(), DeliveryRow { id, created_ms, delivery });
            }
        }
    }
    let mut created: BTreeMap<i64, i64> = BTreeMap::new();
    let mut pending: Vec<DeliveryRow> = incoming.into_values().collect();
    // Each round locks what exists, writes it, and inserts the rest; what another batch inserted meanwhile comes
    // back for the next round, where it exists. Rows are never deleted under our lock, so two rounds suffice
    // unless retention removes one in between.
    while !pending.is_empty() {
        let stored = lock_deliveries(&tx, &pending).await?;
        let (existing, new): (Vec<DeliveryRow>, Vec<DeliveryRow>) =
            pending.into_iter().partition(|row| stored.contains_key(&row.id));
        let mut stored = stored;
        let merged: Vec<DeliveryRow> = existing
            .into_iter()
            .map(|row| {
                let previous = stored.remove(&row.id).flatten();
                DeliveryRow { delivery: merge_delivery(previous, row.delivery), ..row }
            })
            .collect();
        write_deliveries(&tx, &merged, true).await?;
        let inserted = write_deliveries(&tx, &new, false).await?;
        for row in &new {
            if inserted.contains(&row.id) {
                *created.entry(day_of(row.created_ms)).or_default() += 1;
            }
        }
        pending = new.into_iter().filter(|row| !inserted.contains(&row.id)).collect();
    }
    upsert_attempts(&tx, &new_reports).await?;
    count_created(&tx, &created).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Inserts the batch's report ids; returns those that were new.
async fn insert_report_ids(tx: &Transaction<'_>, reports: &[Report]) -> Result<HashSet<String>, tokio_postgres::Error> {
    let mut sorted: Vec<&Report> = reports.iter().collect();
    // One insert order for every batch, so two batches sharing ids wait on each other instead of deadlocking.
    sorted.sort_by(|a, b| a.report_id.cmp(&b.report_id));
    let ids: Vec<&str> = sorted.iter().map(|report| report.report_id.as_str()).collect();
    let created: Vec<i64> = sorted.iter().map(|report| ms(report.report_id.created_at_ms())).collect();
    let deliveries: Vec<&str> = sorted.iter().map(|report| report.delivery_id.as_str()).collect();
    let rows = tx
        .query(
            "INSERT INTO report_ids (report_id, created_ms, delivery_id) \
             SELECT * FROM unnest($1::text[], $2::int8[], $3::text[]) \
             ON CONFLICT DO NOTHING RETURNING report_id",
            &[&ids, &created, &deliveries],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Locks the stored rows of `rows`' deliveries, in id order; returns their records by id (`None` for one that
/// does not decode, which the merge replaces).
async fn lock_deliveries(
    tx: &Transaction<'_>,
    rows: &[DeliveryRow],
) -> Result<HashMap<String, Option<pb::Delivery>>, tokio_postgres::Error> {
    let ids: Vec<&str> = rows.iter().map(|row| row.id.as_str()).collect();
    let days: Vec<i64> = rows.iter().map(|row| row.created_ms).collect::<HashSet<_>>().into_iter().collect();
    // `created_ms = ANY` prunes to the batch's partitions; an id's created_ms follows from the id.
    let stored = tx
        .query(
            "SELECT id, record FROM deliveries WHERE id = ANY($1) AND created_ms = ANY($2) ORDER BY id FOR UPDATE",
            &[&ids, &days],
        )
        .await?;
    Ok(stored
        .iter()
        .map(|row| {
            let id: String = row.get(0);
            let record: &[u8] = row.get(1);
            let delivery = match pb::Delivery::decode(record) {
                Ok(delivery) => Some(delivery),
                Err(error) => {
                    tracing::warn!(delivery = %id, %error, "replacing a corrupt delivery record");
                    None
                }
            };
            (id, delivery)
        })
        .collect())
}

/// Writes deliveries: over their locked rows when `existing`, else as new rows, skipping ids taken meanwhile.
/// Returns the ids written.
async fn write_deliveries(
    tx: &Transaction<'_>,
    rows: &[DeliveryRow],
    existing: bool,
) -> Result<HashSet<String>, tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let column = |get: fn(&DeliveryRow) -> String| rows.iter().map(get).collect::<Vec<String>>();
    let ids = column(|row| row.id.clone());
    let owners = column(|row| row.delivery.owner_id.clone());
    let endpoints = column(|row| row.delivery.endpoint_id.clone());
    let event_types = column(|row| row.delivery.event_type.clone());
    let agents = column(|row| row.delivery.agent.clone());
    let created: Vec<i64> = rows.iter().map(|row| row.created_ms).collect();
    let statuses: Vec<i32> = rows.iter().map(|row| row.delivery.status).collect();
    let updated: Vec<i64> = rows.iter().map(|row| ms(opt_ms(row.delivery.updated_at.as_ref()))).collect();
    let records: Vec<Vec<u8>> = rows.iter().map(|row| row.delivery.encode_to_vec()).collect();
    let conflict = if existing {
        "ON CONFLICT (id, created_ms) DO UPDATE SET owner_id = excluded.owner_id, endpoint_id = excluded.endpoint_id, \
         event_type = excluded.event_type, status = excluded.status, agent = excluded.agent, \
         updated_ms = excluded.updated_ms, record = excluded.record"
    } else {
        "ON CONFLICT DO NOTHING"
    };
    let sql = format!(
        "INSERT INTO deliveries (id, created_ms, owner_id, endpoint_id, event_type, status, agent, updated_ms, record) \
         SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::text[], \
         $8::int8[], $9::bytea[]) {conflict} RETURNING id"
    );
    let written = tx
        .query(&sql, &[&ids, &created, &owners, &endpoints, &event_types, &statuses, &agents, &updated, &records])
        .await?;
    Ok(written.iter().map(|row| row.get(0)).collect())
}

/// Upserts the attempts of the new reports; of two reports of one attempt number in the batch, the later wins.
async fn upsert_attempts(tx: &Transaction<'_>, reports: &[&Report]) -> Result<(), tokio_postgres::Error> {
    let mut latest: BTreeMap<(&str, u32), (&Report, &pb::Attempt)> = BTreeMap::new();
    for report in reports {
        if let Some(attempt) = &report.attempt {
            latest.insert((report.delivery_id.as_str(), attempt.number), (report, attempt));
        }
    }
    if latest.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = latest.keys().map(|(id, _)| *id).collect();
    let numbers: Vec<i64> = latest.keys().map(|(_, number)| i64::from(*number)).collect();
    let created: Vec<i64> = latest.values().map(|(report, _)| ms(report.delivery_id.created_at_ms())).collect();
    let report_ids: Vec<&str> = latest.values().map(|(report, _)| report.report_id.as_str()).collect();
    let records: Vec<Vec<u8>> = latest.values().map(|(_, attempt)| attempt.encode_to_vec()).collect();
    tx.execute(
        "INSERT INTO attempts (delivery_id, created_ms, number, report_id, record) \
         SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::bytea[]) \
         ON CONFLICT (delivery_id, created_ms, number) DO UPDATE SET report_id = excluded.report_id, \
         record = excluded.record",
        &[&ids, &created, &numbers, &report_ids, &records],
    )
    .await?;
    Ok(())
}

/// Adds the deliveries created per day to the counters.
async fn count_created(tx: &Transaction<'_>, created: &BTreeMap<i64, i64>) -> Result<(), tokio_postgres::Error> {
    if created.is_empty() {
        return Ok(());
    }
    let days: Vec<i64> = created.keys().copied().collect();
    let counts: Vec<i64> = created.values().copied().collect();
    let slot = rand::random_range(0..COUNT_SLOTS);
    tx.execute(
        "INSERT INTO delivery_counts (day_ms, slot, deliveries) SELECT day, $3, n FROM unnest($1::int8[], $2::int8[]) \
         AS u(day, n) ON CONFLICT (day_ms, slot) DO UPDATE SET deliveries = delivery_counts.deliveries + \
         excluded.deliveries",
        &[&days, &counts, &slot],
    )
    .await?;
    Ok(())
}

/// The statement a delivery listing runs, with its parameters.
pub(super) struct ListStatement {
    /// The SQL, `$n` parameters in order.
    pub(super) sql: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
    page_size: usize,
}

impl ListStatement {
    /// The parameters, as tokio-postgres takes them.
    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params.iter().map(|param| param.as_ref() as &(dyn ToSql + Sync)).collect()
    }

    fn push(&mut self, condition: &str, param: impl ToSql + Sync + Send + 'static) {
        self.params.push(Box::new(param));
        self.sql.push_str(&format!(" AND {condition} ${}", self.params.len()));
    }
}

/// The statement for `query`, or `None` when its range holds nothing. Time bounds become id bounds (ids sort by
/// time), read from the filter's index, and `created_ms` bounds, which prune partitions.
pub(super) fn list_statement(query: &DeliveryQuery) -> Option<ListStatement> {
    let mut low = DeliveryId::PREFIX.to_owned() + "_";
    let mut high = DeliveryId::PREFIX.to_owned() + "`";
    let mut low_ms = None;
    let mut high_ms: Option<i64> = None;
    if let Some(after) = query.created_after_ms {
        low = low.max(DeliveryId::lower_bound_at(after));
        low_ms = Some(ms(after));
    }
    if let Some(before) = query.created_before_ms {
        high = high.min(DeliveryId::lower_bound_at(before));
        high_ms = Some(ms(before).saturating_sub(1));
    }
    if let Some(after) = &query.after {
        high = high.min(after.as_str().to_owned());
        let at = ms(after.created_at_ms());
        high_ms = Some(high_ms.map_or(at, |high| high.min(at)));
    }
    if low >= high {
        return None;
    }
    let page_size = query.page_size.max(1);
    let mut statement =
        ListStatement { sql: "SELECT record FROM deliveries WHERE true".to_owned(), params: Vec::new(), page_size };
    statement.push("id >=", low);
    statement.push("id <", high);
    if let Some(low_ms) = low_ms {
        statement.push("created_ms >=", low_ms);
    }
    if let Some(high_ms) = high_ms {
        statement.push("created_ms <=", high_ms);
    }
    if let Some(owner) = &query.owner_id {
        statement.push("owner_id =", owner.clone());
    }
    if let Some(endpoint) = &query.endpoint_id {
        statement.push("endpoint_id =", endpoint.to_string());
    }
    if let Some(status) = query.status {
        statement.push("status =", status);
    }
    if let Some(event_type) = &query.event_type {
        statement.push("event_type =", event_type.clone());
    }
    // One more than the page: whether it exists decides the token.
    statement.params.push(Box::new(i64::try_from(page_size).unwrap_or(i64::MAX).saturating_add(1)));
    statement.sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", statement.params.len()));
    Some(statement)
}

/// Lists deliveries newest first; the token is the last delivery's id when more follow.
pub(super) async fn list_deliveries(pool: &Pool, query: &DeliveryQuery) -> Result<Page<pb::Delivery>> {
    let Some(statement) = list_statement(query) else {
        return Ok(Page { items: Vec::new(), next_page_token: String::new() });
    };
    let client = pool.get().await.map_err(pool_error)?;
    let rows = client.query(&statement.sql, &statement.params()).await.map_err(db_error)?;
    let mut items = rows
        .iter()
        .map(|row| decode::<pb::Delivery>(row.get(0), || "a listed delivery".to_owned()))
        .collect::<Result<Vec<_>>>()?;
    let next_page_token = if items.len() > statement.page_size {
        items.truncate(statement.page_size);
        items.last().map(|last| last.id.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(Page { items, next_page_token })
}

/// A delivery and its attempts in order, or `NOT_FOUND`.
pub(super) async fn get_delivery(pool: &Pool, id: &DeliveryId) -> Result<(pb::Delivery, Vec<pb::Attempt>)> {
    let client = pool.get().await.map_err(pool_error)?;
    let created_ms = ms(id.created_at_ms());
    let row = client
        .query_opt("SELECT record FROM deliveries WHERE id = $1 AND created_ms = $2", &[&id.as_str(), &created_ms])
        .await
        .map_err(db_error)?
        .ok_or_else(|| Error::NotFound(format!("delivery {id}")))?;
    let delivery = decode(row.get(0), || format!("delivery {id}"))?;
    let attempts = client
        .query(
            "SELECT record FROM attempts WHERE delivery_id = $1 AND created_ms = $2 ORDER BY number",
            &[&id.as_str(), &created_ms],
        )
        .await
        .map_err(db_error)?
        .iter()
        .map(|row| decode(row.get(0), || format!("attempt of delivery {id}")))
        .collect::<Result<_>>()?;
    Ok((delivery, attempts))
}

/// Deliveries in the log, from the per-day counters (a few rows per day, no scan).
pub(super) async fn count_deliveries(pool: &Pool) -> Result<u64> {
    let client = pool.get().await.map_err(pool_error)?;
    count_deliveries_with(&**client).await
}

/// [`count_deliveries`] on a client of the caller's.
pub(super) async fn count_deliveries_with(client: &impl GenericClient) -> Result<u64> {
    let row = client
        .query_one("SELECT coalesce(sum(deliveries), 0)::int8 FROM delivery_counts", &[])
        .await
        .map_err(db_error)?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// Decodes a stored record; `what` names it in the error.
fn decode<T: Message + Default>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T> {
    T::decode(bytes).map_err(|error| Error::Corrupt { what: what(), reason: error.to_string() })
}

#[cfg(test)]
#[path = "log_tests.rs"]
pub(super) mod tests;

#[cfg(test)]
#[path = "explain_tests.rs"]
mod explain_tests;
