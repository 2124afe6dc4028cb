//! Agents and the delivery log: report ingestion, delivery listings and lookups.
//!
//! Report batches are ingested one at a time (a std mutex, on a blocking thread), so the duplicate checks and writes
//! of two batches do not interleave. A batch drops report ids seen before, writes the endpoint index, the merged
//! deliveries and, last, what records the report ids; then it is flushed once.
//!
//! A report's id is stored with its attempt, as a field `pb::Attempt` does not have (readers of `pb::Attempt` skip
//! it, and `resources.proto` reserves its number), so a report costs no key of its own. A marker in `reports` keeps
//! the other ids: those of reports without an attempt (a cancellation, or a failure because the event was gone),
//! those of attempts whose record holds no id (older records, which have a marker for every report), and the id an
//! attempt's record held before another report of the same attempt replaced it (two replays of a delivery can
//! number their attempts alike). A report is a duplicate if its attempt is stored with its id, or if its marker
//! exists.
//!
//! Replaying a batch is harmless: index entries are overwritten with themselves and the delivery merge is
//! idempotent. So a crash before the attempts and markers are durable only means the agent's retry stores the same
//! thing again; sled recovers a prefix of its one log, so if they survive, everything written before them does too.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hookrelay_common::ids::{DeliveryId, EndpointId, ReportId};
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::time::now_ms;
use prost::Message;
use sled::{Batch, Db, Tree};

use super::{decode, get};
use crate::error::{Error, Result};
use crate::store::{AgentEvent, DeliveryQuery, IngestOutcome, Page, Report, merge_delivery};

/// Most records one `ListDeliveries` call examines; past it, the page ends early with a token to continue.
const MAX_DELIVERIES_SCANNED: usize = 100_000;

/// The delivery log's trees, cloned onto blocking threads.
#[derive(Clone)]
pub(super) struct LogTrees {
    pub(super) deliveries: Tree,
    pub(super) endpoint_deliveries: Tree,
    pub(super) attempts: Tree,
    pub(super) reports: Tree,
    /// Serialises report batches, and pruning's removals with them.
    pub(super) ingest_lock: Arc<Mutex<()>>,
    /// Records in `deliveries`, counted once at open (sled's `len` is a scan) and kept up as records are added.
    pub(super) delivery_count: Arc<AtomicU64>,
}

impl LogTrees {
    /// Opens (or creates) the delivery log's trees of `db`.
    pub(super) fn open(db: &Db) -> Result<Self> {
        let deliveries = db.open_tree("deliveries")?;
        Ok(Self {
            delivery_count: Arc::new(AtomicU64::new(deliveries.len() as u64)),
            deliveries,
            endpoint_deliveries: db.open_tree("endpoint_deliveries")?,
            attempts: db.open_tree("attempts")?,
            reports: db.open_tree("reports")?,
            ingest_lock: Arc::default(),
        })
    }
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

pub(super) fn attempt_key(delivery_id: &str, number: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(delivery_id.len() + 4);
    key.extend_from_slice(delivery_id.as_bytes());
    key.extend_from_slice(&number.to_be_bytes());
    key
}

/// Stores one batch of reports; see the module documentation for the order of writes.
pub(super) fn ingest(log: &LogTrees, node_name: &str, reports: Vec<Report>) -> Result<IngestOutcome> {
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
pub(super) fn list_deliveries(log: &LogTrees, query: &DeliveryQuery) -> Result<Page<pb::Delivery>> {
    list_deliveries_scanning(log, query, MAX_DELIVERIES_SCANNED)
}

/// [`list_deliveries`], examining at most `max_scanned` records before ending the page early.
pub(super) fn list_deliveries_scanning(
    log: &LogTrees,
    query: &DeliveryQuery,
    max_scanned: usize,
) -> Result<Page<pb::Delivery>> {
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

/// A delivery and its attempts in order, or `NOT_FOUND`.
pub(super) fn get_delivery(log: &LogTrees, id: &DeliveryId) -> Result<(pb::Delivery, Vec<pb::Attempt>)> {
    let delivery = get(&log.deliveries, id.as_str(), || format!("delivery {id}"))?
        .ok_or_else(|| Error::NotFound(format!("delivery {id}")))?;
    let attempts = log
        .attempts
        .scan_prefix(id.as_str())
        .values()
        .map(|value| decode(&value?, || format!("attempt of delivery {id}")))
        .collect::<Result<_>>()?;
    Ok((delivery, attempts))
}

/// Folds `event` into the record of agent `node_name` in `agents`.
pub(super) fn record_agent(agents: &Tree, node_name: &str, event: AgentEvent) -> Result<pb::Agent> {
    let now = now_ms();
    let updated = agents.update_and_fetch(node_name, |old| {
        let mut agent = old
            .and_then(|bytes| pb::Agent::decode(bytes).ok())
            .unwrap_or_else(|| pb::Agent { node_name: node_name.to_owned(), ..Default::default() });
        event.clone().apply(&mut agent, now);
        Some(agent.encode_to_vec())
    })?;
    let bytes = updated.expect("the update always stores a record");
    decode(&bytes, || format!("agent {node_name:?}"))
}

/// Every agent record in `agents`, by node name.
pub(super) fn list_agents(agents: &Tree) -> Result<Vec<pb::Agent>> {
    agents
        .iter()
        .map(|entry| {
            let (key, value) = entry?;
            decode(&value, || format!("agent {:?}", String::from_utf8_lossy(&key)))
        })
        .collect()
}
