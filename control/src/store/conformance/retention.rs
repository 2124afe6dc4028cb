//! Pruning the delivery log: what goes, what stays, bounded passes and their resume point, lost agents.

use std::collections::HashMap;
use std::num::NonZeroUsize;

use hookrelay_common::time::now_ms;

use super::log::delivery_at;
use super::*;
use crate::error::Error;
use crate::store::{AgentEvent, DeliveryQuery, Page, PruneCutoff};

const DAY_MS: u64 = 24 * 3600 * 1000;
/// A fixed "now" for retention tests (2025-11-14), with a 30-day period: the cutoff is injected, not waited for.
const NOW_MS: u64 = 1_763_100_000_000;
const CUTOFF_MS: u64 = NOW_MS - 30 * DAY_MS;
const LIMIT: NonZeroUsize = NonZeroUsize::new(1_000).unwrap();

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

fn ids(page: Page<pb::Delivery>) -> Vec<String> {
    page.items.into_iter().map(|delivery| delivery.id).collect()
}

#[tokio::test]
async fn retention_prunes_old_final_deliveries_with_their_attempts() {
    use pb::DeliveryStatus::{Cancelled, Delivering, Failed, Pending, Succeeded};
    each_store(async |store| {
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
        store.ingest_reports("node-1", reports).await.unwrap();
        assert_eq!(store.stats().unwrap().deliveries, 7);

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
        }
        for id in &expected_kept {
            let (_, attempts) = store.get_delivery(id).await.unwrap();
            assert!(!attempts.is_empty());
        }
        // Listings, by endpoint or not, show exactly the kept deliveries.
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
        // A report made before the cutoff no longer needs deduplicating; those made after it still do.
        assert!(pass.reports_removed > 0);

        // A second pass finds nothing more; a later cutoff prunes the late finisher and the young one.
        let again = store.prune_deliveries(PruneCutoff::at(CUTOFF_MS), None, LIMIT).await.unwrap();
        assert_eq!((again.examined, again.removed, again.reports_removed), (3, 0, 0));
        let later = store.prune_deliveries(PruneCutoff::at(young + 2_000), None, LIMIT).await.unwrap();
        assert_eq!(later.removed, 2);
        assert_eq!(store.stats().unwrap().deliveries, 2, "the pending and the delivering one");
    })
    .await;
}

#[tokio::test]
async fn a_bounded_pass_removes_at_most_its_limit_and_the_next_one_resumes() {
    each_store(async |store| {
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
        store.ingest_reports("node-1", reports).await.unwrap();
        let limit = NonZeroUsize::new(10).unwrap();

        let first = store.prune_deliveries(PruneCutoff::at(CUTOFF_MS), None, limit).await.unwrap();
        assert_eq!((first.examined, first.removed), (10, 8));
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
        assert_eq!(left.items.len(), 5);
        assert!(left.items.iter().all(|delivery| delivery.status == pb::DeliveryStatus::Pending as i32));
        for delivery in &left.items {
            let id = DeliveryId::parse(&delivery.id).unwrap();
            assert_eq!(store.get_delivery(&id).await.unwrap().1.len(), 2, "both attempts of {id} stay");
        }
    })
    .await;
}

#[tokio::test]
async fn pending_deliveries_go_once_their_agent_has_been_silent_for_the_whole_period() {
    use pb::DeliveryStatus::Pending;
    each_store(async |store| {
        let endpoint = EndpointId::generate();
        let old = CUTOFF_MS - 5 * DAY_MS;
        let mut pending = HashMap::new();
        for node in ["node-live", "node-lost", "node-unknown"] {
            let (id, reports) = aged(&endpoint, old, old + 1_000, 2, Pending);
            store.ingest_reports(node, reports).await.unwrap();
            pending.insert(node, id);
        }
        // The lost node is last heard from before the agents' line, the live one after it (record_agent stamps
        // the real time, so the line is drawn between the two calls).
        store.record_agent("node-lost", AgentEvent::Status { queue_depth: 1 }).await.unwrap();
        let heard = now_ms();
        while now_ms() <= heard {
            tokio::task::yield_now().await;
        }
        let line = now_ms();
        store.record_agent("node-live", AgentEvent::Status { queue_depth: 1 }).await.unwrap();
        let cutoff = PruneCutoff { updated_before_ms: CUTOFF_MS, agents_silent_before_ms: line };

        let pass = store.prune_deliveries(cutoff, None, LIMIT).await.unwrap();
        assert_eq!((pass.examined, pass.removed), (3, 1));
        let error = store.get_delivery(&pending["node-lost"]).await.unwrap_err();
        assert!(matches!(error, Error::NotFound(_)), "{error}");
        // A live agent may still deliver its held deliveries; of an agent control never heard from, it knows nothing.
        for node in ["node-live", "node-unknown"] {
            assert_eq!(store.get_delivery(&pending[node]).await.unwrap().1.len(), 2, "{node}");
        }
        // Until control has been up long enough for live agents to reconnect, no agent counts as lost.
        let (id, reports) = aged(&endpoint, old, old + 1_000, 1, Pending);
        store.ingest_reports("node-lost", reports).await.unwrap();
        let settling = PruneCutoff { agents_silent_before_ms: 0, ..cutoff };
        assert_eq!(store.prune_deliveries(settling, None, LIMIT).await.unwrap().removed, 0);
        assert!(store.get_delivery(&id).await.is_ok());
    })
    .await;
}
