//! What the conformance suite cannot see of the sled log: report ids kept with their attempts or as markers (those
//! of earlier versions too), the scan limit of a listing page, and the stats after a reopen.

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
