//! Retention on PostgreSQL: [`Store::prune_deliveries`](crate::store::Store::prune_deliveries) by dropping whole
//! day partitions, and the creation of partitions ahead of time.
//!
//! The rule, per day of the log (deliveries and attempts share the delivery's day):
//! - A day entirely before the cutoff is dropped whole when none of its deliveries is kept, that is none is
//!   updated at or after the cutoff and none is unfinished with an agent that is not lost ([`is_prunable`] holds
//!   for all). The question is answered from two index reads (a BRIN on `updated_ms`, the status index outside
//!   the final states), first without a lock and then again under an exclusive lock on the log's tables,
//!   taken for the drop, so no report lands in between. A busy lock (`lock_timeout`) leaves the day to a later pass.
//! - A day that still holds a kept delivery, and the cutoff's own day, lose their prunable deliveries row by row
//!   instead: oldest first, from the caller's resume point, at most `limit` looked at per pass, each removal
//!   checked again in its `DELETE` so a report that made a delivery young again keeps it. Once only kept
//!   deliveries are left, and they go too, a later pass drops the day whole.
//!
//! A dropped day counts all its deliveries as examined and removed, from `delivery_counts`, however many: `limit`
//! bounds the row-by-row work, a drop costs the same for any size. Report ids go by their own age: their days
//! entirely before the cutoff are dropped (counted first, without a lock), and at most `limit` of the cutoff's day
//! that are older than it are deleted.

use std::collections::HashSet;
use std::num::NonZeroUsize;

use deadpool_postgres::{Object, Pool};
use hookrelay_common::ids::{DeliveryId, ReportId};
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::time::to_timestamp;
use prost::Message;
use tokio_postgres::error::SqlState;

use super::log::{DAY_MS, create_partitions, day_of, ms, partition_name};
use super::{db_error, pool_error};
use crate::error::Result;
use crate::store::{PruneCutoff, PrunePass, is_prunable, lost_agents};

/// How long a drop waits for the log's tables before leaving the day to a later pass; report batches queue
/// behind the waiting drop meanwhile, so this bounds their stall too.
const DROP_LOCK_TIMEOUT: &str = "2s";

/// The SQL twin of [`is_prunable`] for a row of `deliveries`, with `$cutoff` and `$lost` (text[]) to be filled in:
/// the `DELETE` checks it again at the row it removes.
const PRUNABLE: &str = "updated_ms < $cutoff AND (status IN (3, 4, 5) OR agent = ANY($lost))";
/// Whether a day's partition (`{p}`) holds a delivery to keep: the negation of [`PRUNABLE`] for some row, created
/// before the cutoff as the whole day is.
const HOLDS_KEPT: &str = "SELECT EXISTS (SELECT 1 FROM {p} WHERE updated_ms >= $1) \
                          OR EXISTS (SELECT 1 FROM {p} WHERE (status < 3 OR status > 5) AND agent <> ALL($2))";

/// Creates the log's partitions of today (UTC, at `now_ms`) and of the `days_ahead` days after it.
pub(super) async fn create_partitions_ahead(pool: &Pool, now_ms: u64, days_ahead: u32) -> Result<()> {
    let today = day_of(ms(now_ms));
    let mut client = pool.get().await.map_err(pool_error)?;
    create_partitions(&mut client, (0..=i64::from(days_ahead)).map(|ahead| today + ahead * DAY_MS)).await
}

/// What one pass removes, as [`is_prunable`] decides.
struct Rule {
    cutoff_ms: i64,
    lost: Vec<String>,
    lost_set: HashSet<String>,
}

impl Rule {
    /// Whether retention removes a delivery with these columns.
    fn removes(&self, status: i32, agent: String, updated_ms: i64) -> bool {
        let delivery = pb::Delivery {
            status,
            agent,
            updated_at: (updated_ms > 0).then(|| to_timestamp(u64::try_from(updated_ms).unwrap_or(0))),
            ..Default::default()
        };
        is_prunable(&delivery, u64::try_from(self.cutoff_ms).unwrap_or(0), &self.lost_set)
    }
}

/// One retention pass; see the module documentation.
pub(super) async fn prune(
    pool: &Pool,
    cutoff: PruneCutoff,
    after: Option<DeliveryId>,
    limit: NonZeroUsize,
) -> Result<PrunePass> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let lost_set = lost_agents(&read_agents(&client).await?, cutoff.agents_silent_before_ms);
    let rule = Rule { cutoff_ms: ms(cutoff.updated_before_ms), lost: lost_set.iter().cloned().collect(), lost_set };
    let resume_day = after.as_ref().map(|id| day_of(ms(id.created_at_ms())));
    let mut pass = PrunePass::default();
    let mut budget = limit.get();
    for day in partition_days(&client, "deliveries").await? {
        if day >= rule.cutoff_ms {
            break;
        }
        if resume_day.is_some_and(|resume| day < resume) {
            continue;
        }
        if day + DAY_MS <= rule.cutoff_ms {
            match drop_day(&mut client, &rule, day).await? {
                DayDrop::Dropped(count) => {
                    pass.examined += count;
                    pass.removed += count;
                    continue;
                }
                DayDrop::Busy => continue,
                DayDrop::Kept => {}
            }
        }
        let from = after.as_ref().filter(|id| resume_day == Some(day) && day_of(ms(id.created_at_ms())) == day);
        let (examined, removed, last) = prune_rows(&mut client, &rule, day, from, budget).await?;
        pass.examined += examined;
        pass.removed += removed;
        budget -= examined;
        if budget == 0 {
            pass.resume_after = last;
            break;
        }
    }
    let (reports_removed, reports_remaining) = prune_report_ids(&mut client, rule.cutoff_ms, limit).await?;
    pass.reports_removed = reports_removed;
    pass.reports_remaining = reports_remaining;
    Ok(pass)
}

/// Every agent record; one that does not decode is skipped with a warning, so that it cannot stop retention.
async fn read_agents(client: &Object) -> Result<Vec<pb::Agent>> {
    let rows = client.query("SELECT node_name, record FROM agents", &[]).await.map_err(db_error)?;
    let mut agents = Vec::with_capacity(rows.len());
    for row in rows {
        let node: String = row.get(0);
        match pb::Agent::decode(row.get::<_, &[u8]>(1)) {
            Ok(agent) => agents.push(agent),
            Err(error) => tracing::warn!(%error, agent = node, "retention skips an agent record it cannot read"),
        }
    }
    Ok(agents)
}

/// The start of every day `table` has a partition for, oldest first.
pub(super) async fn partition_days(client: &Object, table: &str) -> Result<Vec<i64>> {
    let rows = client
        .query(
            "SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''?(-?[0-9]+)''?\\)'))[1]::int8 \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::text::regclass \
             ORDER BY 1",
            &[&table],
        )
        .await
        .map_err(db_error)?;
    Ok(rows.iter().filter_map(|row| row.get::<_, Option<i64>>(0)).collect())
}

/// What became of a day offered for dropping.
enum DayDrop {
    /// Dropped, with this many deliveries.
    Dropped(usize),
    /// It holds a delivery to keep.
    Kept,
    /// Its tables were busy past [`DROP_LOCK_TIMEOUT`]; a later pass tries again.
    Busy,
}

/// Drops the deliveries and attempts of the day starting at `day` if it holds nothing to keep.
async fn drop_day(client: &mut Object, rule: &Rule, day: i64) -> Result<DayDrop> {
    let deliveries = partition_name("deliveries", day);
    let holds_kept = HOLDS_KEPT.replace("{p}", &deliveries);
    // Asked first without a lock: a day held by a pending delivery is asked every pass, and answers no cheaply.
    let kept: bool = client.query_one(&holds_kept, &[&rule.cutoff_ms, &rule.lost]).await.map_err(db_error)?.get(0);
    if kept {
        return Ok(DayDrop::Kept);
    }
    let tx = client.transaction().await.map_err(db_error)?;
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")).await.map_err(db_error)?;
    // The parents first, in the order every writer takes them: dropping a partition locks its parent anyway.
    if let Err(error) = tx.batch_execute("LOCK TABLE deliveries, attempts IN ACCESS EXCLUSIVE MODE").await {
        if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
            tracing::debug!(day = deliveries, "retention leaves a busy day to a later pass");
            return Ok(DayDrop::Busy);
        }
        return Err(db_error(error));
    }
    let kept: bool = tx.query_one(&holds_kept, &[&rule.cutoff_ms, &rule.lost]).await.map_err(db_error)?.get(0);
    if kept {
        return Ok(DayDrop::Kept);
    }
    let counted: i64 = tx
        .query_one(
            "WITH gone AS (DELETE FROM delivery_counts WHERE day_ms = $1 RETURNING deliveries) \
             SELECT coalesce(sum(deliveries), 0)::int8 FROM gone",
            &[&day],
        )
        .await
        .map_err(db_error)?
        .get(0);
    let attempts = partition_name("attempts", day);
    tx.batch_execute(&format!("DROP TABLE {deliveries}; DROP TABLE IF EXISTS {attempts}")).await.map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    tracing::info!(day = deliveries, deliveries = counted, "retention dropped a day of the delivery log");
    Ok(DayDrop::Dropped(usize::try_from(counted).unwrap_or(0)))
}

/// Removes the prunable deliveries of the day starting at `day` created before the cutoff, looking at most at
/// `budget` of them, oldest first and after `from`; returns how many it looked at and removed, and the last one.
async fn prune_rows(
    client: &mut Object,
    rule: &Rule,
    day: i64,
    from: Option<&DeliveryId>,
    budget: usize,
) -> Result<(usize, usize, Option<DeliveryId>)> {
    let start = from.map_or_else(|| DeliveryId::PREFIX.to_owned() + "_", |id| id.to_string());
    let end = DeliveryId::lower_bound_at(u64::try_from(rule.cutoff_ms).unwrap_or(0));
    let rows = client
        .query(
            "SELECT id, status, agent, updated_ms FROM deliveries \
             WHERE created_ms >= $1 AND created_ms < $2 AND id > $3 AND id < $4 ORDER BY id LIMIT $5",
            &[&day, &(day + DAY_MS), &start, &end, &i64::try_from(budget).unwrap_or(i64::MAX)],
        )
        .await
        .map_err(db_error)?;
    let examined = rows.len();
    let last = rows.last().and_then(|row| DeliveryId::parse(row.get(0)).ok());
    let candidates: Vec<String> =
        rows.into_iter().filter(|row| rule.removes(row.get(1), row.get(2), row.get(3))).map(|row| row.get(0)).collect();
    let removed = if candidates.is_empty() { 0 } else { remove_rows(client, rule, day, &candidates).await? };
    Ok((examined, removed, if examined == budget { last } else { None }))
}

/// Deletes the deliveries `ids` of one day that are still prunable, with their attempts, in one transaction.
async fn remove_rows(client: &mut Object, rule: &Rule, day: i64, ids: &[String]) -> Result<usize> {
    let tx = client.transaction().await.map_err(db_error)?;
    let delete = format!(
        "DELETE FROM deliveries WHERE id = ANY($1) AND created_ms >= $2 AND created_ms < $3 AND {} RETURNING id",
        PRUNABLE.replace("$cutoff", "$4").replace("$lost", "$5")
    );
    let gone: Vec<String> = tx
        .query(&delete, &[&ids, &day, &(day + DAY_MS), &rule.cutoff_ms, &rule.lost])
        .await
        .map_err(db_error)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if !gone.is_empty() {
        tx.execute(
            "DELETE FROM attempts WHERE delivery_id = ANY($1) AND created_ms >= $2 AND created_ms < $3",
            &[&gone, &day, &(day + DAY_MS)],
        )
        .await
        .map_err(db_error)?;
        tx.execute(
            "INSERT INTO delivery_counts (day_ms, slot, deliveries) VALUES ($1, 0, $2) \
             ON CONFLICT (day_ms, slot) DO UPDATE SET deliveries = delivery_counts.deliveries + excluded.deliveries",
            &[&day, &-i64::try_from(gone.len()).unwrap_or(0)],
        )
        .await
        .map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)?;
    Ok(gone.len())
}

/// Drops the report-id days entirely before the cutoff and deletes at most `limit` older ids of the cutoff's day;
/// returns how many went and whether the limit stopped it.
async fn prune_report_ids(client: &mut Object, cutoff_ms: i64, limit: NonZeroUsize) -> Result<(usize, bool)> {
    let mut removed = 0;
    for day in partition_days(client, "report_ids").await? {
        let partition = partition_name("report_ids", day);
        if day + DAY_MS <= cutoff_ms {
            // Counted before the lock: no report id of a day this old is written any more.
            let count: i64 =
                client.query_one(&format!("SELECT count(*) FROM {partition}"), &[]).await.map_err(db_error)?.get(0);
            let tx = client.transaction().await.map_err(db_error)?;
            tx.batch_execute(&format!("SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")).await.map_err(db_error)?;
            match tx
                .batch_execute(&format!("LOCK TABLE report_ids IN ACCESS EXCLUSIVE MODE; DROP TABLE {partition}"))
                .await
            {
                Ok(()) => {}
                Err(error) if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => continue,
                Err(error) => return Err(db_error(error)),
            }
            tx.commit().await.map_err(db_error)?;
            removed += usize::try_from(count).unwrap_or(0);
        } else if day < cutoff_ms {
            let end = ReportId::lower_bound_at(u64::try_from(cutoff_ms).unwrap_or(0));
            let deleted = client
                .execute(
                    &format!(
                        "DELETE FROM {partition} WHERE report_id IN \
                         (SELECT report_id FROM {partition} WHERE report_id < $1 ORDER BY report_id LIMIT $2)"
                    ),
                    &[&end, &i64::try_from(limit.get()).unwrap_or(i64::MAX)],
                )
                .await
                .map_err(db_error)?;
            let deleted = usize::try_from(deleted).unwrap_or(usize::MAX);
            return Ok((removed + deleted, deleted == limit.get()));
        }
    }
    Ok((removed, false))
}

#[cfg(test)]
#[path = "retention_tests.rs"]
mod tests;
