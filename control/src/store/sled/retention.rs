//! Pruning the delivery log: [`Store::prune_deliveries`](crate::store::Store::prune_deliveries).
//!
//! Candidates come from the cheapest scan there is: delivery ids are UUIDv7, so the deliveries created before the
//! cutoff are one key range at the start of `deliveries`, read oldest first from the caller's resume point, without
//! the lock. The prunable ones are removed in chunks of [`PRUNE_CHUNK`], each under the ingest lock (so no report
//! batch writes to a delivery while it goes) and in one transaction over `deliveries`, `attempts` and
//! `endpoint_deliveries` (so a crash never leaves attempts or index entries whose delivery is gone, which no later
//! scan would find). Each delivery is read again inside the transaction, in case a report changed it since the scan.
//!
//! The report ids kept in attempt records go with their attempts. Report-id markers are pruned by their own id's
//! time: past the retention period an agent no longer retries a report, so the marker has nothing left to
//! deduplicate. Removals are not flushed: a crash at worst undoes some of them, and the next pass does them again.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::ops::Bound;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use hookrelay_common::ids::{DeliveryId, EndpointId, ReportId};
use hookrelay_common::proto::v1 as pb;
use prost::Message;
use sled::transaction::{ConflictableTransactionResult, TransactionError, Transactional, TransactionalTree};
use sled::{Batch, Tree};

use super::log::LogTrees;
use super::{decode, storage_error};
use crate::error::{Error, Result};
use crate::store::{PruneCutoff, PrunePass, is_prunable, lost_agents};

/// Deliveries removed under one hold of the ingest lock: a report batch waits for one chunk at most, never for a
/// whole pass.
const PRUNE_CHUNK: usize = 64;

/// One retention pass over `log` at `cutoff`, with the lost agents among those recorded in `agents`.
pub(super) fn prune_deliveries(
    log: &LogTrees,
    agents: &Tree,
    cutoff: PruneCutoff,
    after: Option<&DeliveryId>,
    limit: NonZeroUsize,
) -> Result<PrunePass> {
    let rule = PruneRule {
        cutoff_ms: cutoff.updated_before_ms,
        lost_agents: lost_agents(&readable_agents(agents), cutoff.agents_silent_before_ms),
    };
    prune(log, &rule, after, limit)
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
pub(super) struct PruneRule {
    pub(super) cutoff_ms: u64,
    pub(super) lost_agents: HashSet<String>,
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
pub(super) fn prune_candidates(
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
pub(super) fn remove_deliveries(log: &LogTrees, rule: &PruneRule, ids: &[DeliveryId]) -> Result<usize> {
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
