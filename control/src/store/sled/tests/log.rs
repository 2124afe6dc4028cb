//! Report ingestion and deduplication, delivery listings and lookups, stats.

use std::collections::HashSet;

use prost::Message;

use super::*;
use crate::store::sled::log::{attempt_key, list_deliveries_scanning};
use crate::store::{DeliveryQuery, IngestOutcome, StoreStats};

#[tokio::test]
async fn a_report_id_is_kept_with_its_attempt_and_still_deduplicates_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let endpoint = EndpointId::generate();
    let delivery = DeliveryId::generate();
    let reported = report(&delivery, &endpoint, 1, pb::DeliveryStatus::Succeeded);
    {
        let store = SledStore::open(dir.path(), key.clone()).unwrap();
        let outcome = store.ingest_reports("node-1", vec![reported.clone()]).await.unwrap();
        assert_eq!(outcome, IngestOutcome { stored: 1, duplicates: 0 });
        assert_eq!(store.log.reports.len(), 0, "no marker: the id is stored with the attempt");
        store.flush().await.unwrap();
    }
    let store = SledStore::reopen(dir.path(), key).unwrap();
    let outcome = store.ingest_reports("node-1", vec![reported.clone()]).await.unwrap();
    assert_eq!(outcome, IngestOutcome { stored: 0, duplicates: 1 });
    // Readers of the attempt see the attempt alone.
    let (_, attempts) = store.get_delivery(&delivery).await.unwrap();
    assert_eq!(attempts, [reported.attempt.clone().unwrap()]);

    // A cancellation has no attempt to carry its id: it leaves a marker, which deduplicates it.
    let mut cancelled = report(&delivery, &endpoint, 1, pb::DeliveryStatus::Cancelled);
    cancelled.attempt = None;
    let outcome = store.ingest_reports("node-1", vec![cancelled.clone()]).await.unwrap();
    assert_eq!(outcome, IngestOutcome { stored: 1, duplicates: 0 });
    let outcome = store.ingest_reports("node-1", vec![cancelled]).await.unwrap();
    assert_eq!(outcome, IngestOutcome { stored: 0, duplicates: 1 });
    assert_eq!(store.log.reports.len(), 1);
}

#[tokio::test]
async fn attempts_stored_by_earlier_versions_deduplicate_by_their_markers() {
    let (_dir, store) = open();
    let endpoint = EndpointId::generate();
    let delivery = DeliveryId::generate();
    let reported = report(&delivery, &endpoint, 1, pb::DeliveryStatus::Pending);
    // What a version before this layout wrote: the attempt alone, and a marker for the report.
    let attempt = reported.attempt.clone().unwrap();
    store.log.attempts.insert(attempt_key(delivery.as_str(), 1), attempt.encode_to_vec()).unwrap();
    store.log.reports.insert(reported.report_id.as_str(), delivery.as_str()).unwrap();
    store.log.deliveries.insert(delivery.as_str(), reported.delivery.encode_to_vec()).unwrap();

    let outcome = store.ingest_reports("node-1", vec![reported.clone()]).await.unwrap();
    assert_eq!(outcome, IngestOutcome { stored: 0, duplicates: 1 });
    // Another report of the same attempt (two replays of a delivery can number their attempts alike) is new;
    // the first is still known by its marker.
    let other = Report { report_id: ReportId::generate(), ..reported.clone() };
    let outcome = store.ingest_reports("node-1", vec![other]).await.unwrap();
    assert_eq!(outcome, IngestOutcome { stored: 1, duplicates: 0 });
    assert_eq!(store.get_delivery(&delivery).await.unwrap().1, [attempt]);
    let outcome = store.ingest_reports("node-1", vec![reported]).await.unwrap();
    assert_eq!(outcome, IngestOutcome { stored: 0, duplicates: 1 });
}

#[tokio::test]
async fn a_report_whose_attempt_another_report_replaced_stays_a_duplicate() {
    let (_dir, store) = open();
    let endpoint = EndpointId::generate();
    let delivery = DeliveryId::generate();
    // Two replays of a finished delivery, both numbering their attempt 3: the first failed, the second
    // succeeded.
    let first = report(&delivery, &endpoint, 3, pb::DeliveryStatus::Failed);
    let second = report(&delivery, &endpoint, 3, pb::DeliveryStatus::Succeeded);
    assert_eq!(store.ingest_reports("node-1", vec![first.clone()]).await.unwrap().stored, 1);
    assert_eq!(store.ingest_reports("node-1", vec![second.clone()]).await.unwrap().stored, 1);
    // The agent sends the first again (its answer was lost): a duplicate, the delivery is not rolled back.
    let outcome = store.ingest_reports("node-1", vec![first.clone(), second.clone()]).await.unwrap();
    assert_eq!(outcome, IngestOutcome { stored: 0, duplicates: 2 });
    let (stored, attempts) = store.get_delivery(&delivery).await.unwrap();
    assert_eq!(stored.status, pb::DeliveryStatus::Succeeded as i32);
    assert_eq!(attempts.iter().map(|a| a.status_code).collect::<Vec<_>>(), [200]);

    // The same within one batch, on another delivery.
    let other = DeliveryId::generate();
    let first = report(&other, &endpoint, 3, pb::DeliveryStatus::Failed);
    let second = report(&other, &endpoint, 3, pb::DeliveryStatus::Succeeded);
    let outcome = store.ingest_reports("node-1", vec![first.clone(), second.clone()]).await.unwrap();
    assert_eq!(outcome, IngestOutcome { stored: 2, duplicates: 0 });
    let outcome = store.ingest_reports("node-1", vec![first, second]).await.unwrap();
    assert_eq!(outcome, IngestOutcome { stored: 0, duplicates: 2 });
    assert_eq!(store.get_delivery(&other).await.unwrap().0.status, pb::DeliveryStatus::Succeeded as i32);
}

#[tokio::test]
async fn reports_are_deduplicated_and_merged() {
    let (_dir, store) = open();
    let endpoint = EndpointId::generate();
    let delivery = DeliveryId::generate();
    let first = report(&delivery, &endpoint, 1, pb::DeliveryStatus::Pending);
    let second = report(&delivery, &endpoint, 2, pb::DeliveryStatus::Succeeded);

    let outcome = store.ingest_reports("node-1", vec![first.clone(), first.clone()]).await.unwrap();
    assert_eq!(outcome, IngestOutcome { stored: 1, duplicates: 1 });
    // The later attempt arrives before a replay of the earlier one: the delivery is not rolled back.
    let outcome = store.ingest_reports("node-1", vec![second.clone()]).await.unwrap();
    assert_eq!(outcome, IngestOutcome { stored: 1, duplicates: 0 });
    let replay = Report { report_id: ReportId::generate(), ..first.clone() };
    let outcome = store.ingest_reports("node-2", vec![first, replay]).await.unwrap();
    assert_eq!(outcome, IngestOutcome { stored: 1, duplicates: 1 });

    let (stored, attempts) = store.get_delivery(&delivery).await.unwrap();
    assert_eq!(stored.status, pb::DeliveryStatus::Succeeded as i32);
    assert_eq!(stored.attempts, 2);
    assert_eq!(stored.agent, "node-1");
    assert_eq!(attempts.iter().map(|a| a.number).collect::<Vec<_>>(), [1, 2]);
    let missing = DeliveryId::generate();
    assert_eq!(store.get_delivery(&missing).await.unwrap_err().to_string(), format!("delivery {missing} not found"));
}

#[tokio::test]
async fn a_page_cut_short_by_the_scan_limit_resumes_without_skipping() {
    let (_dir, store) = open();
    let endpoint = EndpointId::generate();
    let reports: Vec<Report> =
        (0..12).map(|_| report(&DeliveryId::generate(), &endpoint, 1, pb::DeliveryStatus::Succeeded)).collect();
    let expected: HashSet<String> = reports.iter().map(|r| r.delivery_id.to_string()).collect();
    store.ingest_reports("node-1", reports).await.unwrap();

    for endpoint_id in [None, Some(endpoint.clone())] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let query = DeliveryQuery { endpoint_id: endpoint_id.clone(), page_size: 100, after, ..Default::default() };
            // Five records examined per call: every page ends at the scan limit, not at the page size.
            let page = list_deliveries_scanning(&store.log, &query, 5).unwrap();
            seen.extend(page.items.into_iter().map(|delivery| delivery.id));
            if page.next_page_token.is_empty() {
                break;
            }
            after = Some(DeliveryId::parse(&page.next_page_token).unwrap());
        }
        assert_eq!(seen.len(), expected.len(), "{endpoint_id:?}: {seen:?}");
        assert_eq!(seen.into_iter().collect::<HashSet<_>>(), expected, "{endpoint_id:?}");
    }
}

#[tokio::test]
async fn stats_count_each_delivery_once_and_again_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let store = SledStore::reopen(dir.path(), key.clone()).unwrap();
    store.create_owner(owner("acme")).await.unwrap();
    let endpoint = EndpointId::generate();
    let (one, two) = (DeliveryId::generate(), DeliveryId::generate());
    let reports = vec![
        report(&one, &endpoint, 1, pb::DeliveryStatus::Pending),
        report(&one, &endpoint, 2, pb::DeliveryStatus::Succeeded),
        report(&two, &endpoint, 1, pb::DeliveryStatus::Succeeded),
    ];
    store.ingest_reports("node-1", reports).await.unwrap();
    store.ingest_reports("node-1", vec![report(&two, &endpoint, 2, pb::DeliveryStatus::Succeeded)]).await.unwrap();
    assert_eq!(store.stats().unwrap(), StoreStats { config_version: 1, deliveries: 2 });
    drop(store);
    let store = SledStore::reopen(dir.path(), key).unwrap();
    assert_eq!(store.stats().unwrap(), StoreStats { config_version: 1, deliveries: 2 });
}

#[tokio::test]
async fn deliveries_list_newest_first_with_filters() {
    let (_dir, store) = open();
    let (one, two) = (EndpointId::generate(), EndpointId::generate());
    let mut ids = Vec::new();
    let mut reports = Vec::new();
    for index in 0..6u32 {
        let id = DeliveryId::generate();
        let endpoint = if index % 2 == 0 { &one } else { &two };
        let status = if index < 3 { pb::DeliveryStatus::Failed } else { pb::DeliveryStatus::Succeeded };
        reports.push(report(&id, endpoint, 1, status));
        ids.push(id);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    store.ingest_reports("node-1", reports).await.unwrap();
    let list = |query: DeliveryQuery| {
        let store = &store;
        async move {
            let page = store.list_deliveries(DeliveryQuery { page_size: 20, ..query }).await.unwrap();
            (page.items.into_iter().map(|d| d.id).collect::<Vec<_>>(), page.next_page_token)
        }
    };
    let name = |indexes: &[usize]| indexes.iter().map(|&i| ids[i].to_string()).collect::<Vec<_>>();

    assert_eq!(list(DeliveryQuery::default()).await.0, name(&[5, 4, 3, 2, 1, 0]));
    let by_endpoint = DeliveryQuery { endpoint_id: Some(one.clone()), ..Default::default() };
    assert_eq!(list(by_endpoint).await.0, name(&[4, 2, 0]));
    let failed_on_one = DeliveryQuery {
        endpoint_id: Some(one.clone()),
        status: Some(pb::DeliveryStatus::Failed as i32),
        ..Default::default()
    };
    assert_eq!(list(failed_on_one).await.0, name(&[2, 0]));
    let window = DeliveryQuery {
        created_after_ms: Some(ids[1].created_at_ms()),
        created_before_ms: Some(ids[4].created_at_ms()),
        ..Default::default()
    };
    assert_eq!(list(window).await.0, name(&[3, 2, 1]));
    let other_owner = DeliveryQuery { owner_id: Some("other".into()), ..Default::default() };
    assert!(list(other_owner).await.0.is_empty());

    let first = store.list_deliveries(DeliveryQuery { page_size: 4, ..Default::default() }).await.unwrap();
    assert_eq!(first.items.len(), 4);
    assert_eq!(first.next_page_token, ids[2].to_string());
    let after = Some(DeliveryId::parse(&first.next_page_token).unwrap());
    let (rest, token) = list(DeliveryQuery { after, ..Default::default() }).await;
    assert_eq!((rest, token), (name(&[1, 0]), String::new()));
    let exact = store.list_deliveries(DeliveryQuery { page_size: 6, ..Default::default() }).await.unwrap();
    assert_eq!(exact.next_page_token, "");
}
