//! The delivery log: report ingestion and deduplication, delivery listings and lookups, the delivery count.

use super::*;
use crate::error::Error;
use crate::store::{DeliveryQuery, IngestOutcome, StoreStats};

/// A delivery id generated at `ms`: a fresh one with its time field replaced (`dlv_` then 12 hex digits of ms).
pub(super) fn delivery_at(ms: u64) -> DeliveryId {
    DeliveryId::parse(&format!("dlv_{ms:012x}{}", &DeliveryId::generate().as_str()[16..])).unwrap()
}

#[tokio::test]
async fn a_report_stays_a_duplicate_after_a_restart_and_a_cancellation_deduplicates_too() {
    each_backend(async |backend| {
        let endpoint = EndpointId::generate();
        let delivery = DeliveryId::generate();
        let reported = report(&delivery, &endpoint, 1, pb::DeliveryStatus::Succeeded);
        {
            let store = backend.open().await;
            let outcome = store.ingest_reports("node-1", vec![reported.clone()]).await.unwrap();
            assert_eq!(outcome, IngestOutcome { stored: 1, duplicates: 0 });
            store.flush().await.unwrap();
        }
        let store = backend.open().await;
        let outcome = store.ingest_reports("node-1", vec![reported.clone()]).await.unwrap();
        assert_eq!(outcome, IngestOutcome { stored: 0, duplicates: 1 });
        // Readers of the attempt see the attempt alone, whatever the store keeps beside it.
        let (_, attempts) = store.get_delivery(&delivery).await.unwrap();
        assert_eq!(attempts, [reported.attempt.clone().unwrap()]);

        // A cancellation carries no attempt; its report id deduplicates it all the same.
        let mut cancelled = report(&delivery, &endpoint, 1, pb::DeliveryStatus::Cancelled);
        cancelled.attempt = None;
        let outcome = store.ingest_reports("node-1", vec![cancelled.clone()]).await.unwrap();
        assert_eq!(outcome, IngestOutcome { stored: 1, duplicates: 0 });
        let outcome = store.ingest_reports("node-1", vec![cancelled]).await.unwrap();
        assert_eq!(outcome, IngestOutcome { stored: 0, duplicates: 1 });
        assert_eq!(store.get_delivery(&delivery).await.unwrap().1.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_report_whose_attempt_another_report_replaced_stays_a_duplicate() {
    each_store(async |store| {
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
    })
    .await;
}

#[tokio::test]
async fn reports_are_deduplicated_and_merged() {
    each_store(async |store| {
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
        let error = store.get_delivery(&missing).await.unwrap_err();
        assert_eq!(error.to_string(), format!("delivery {missing} not found"));
        assert!(matches!(error, Error::NotFound(_)));
    })
    .await;
}

#[tokio::test]
async fn stats_count_each_delivery_once_and_again_after_reopen() {
    each_backend(async |backend| {
        {
            let store = backend.open().await;
            store.create_owner(owner("acme")).await.unwrap();
            let endpoint = EndpointId::generate();
            let (one, two) = (DeliveryId::generate(), DeliveryId::generate());
            let reports = vec![
                report(&one, &endpoint, 1, pb::DeliveryStatus::Pending),
                report(&one, &endpoint, 2, pb::DeliveryStatus::Succeeded),
                report(&two, &endpoint, 1, pb::DeliveryStatus::Succeeded),
            ];
            store.ingest_reports("node-1", reports).await.unwrap();
            let again = report(&two, &endpoint, 2, pb::DeliveryStatus::Succeeded);
            store.ingest_reports("node-1", vec![again]).await.unwrap();
            assert_eq!(store.stats().unwrap(), StoreStats { config_version: 1, deliveries: 2 });
        }
        let store = backend.open().await;
        assert_eq!(store.stats().unwrap(), StoreStats { config_version: 1, deliveries: 2 });
    })
    .await;
}

#[tokio::test]
async fn deliveries_list_newest_first_with_filters() {
    each_store(async |store| {
        let (one, two) = (EndpointId::generate(), EndpointId::generate());
        // Ten milliseconds apart, so that time windows fall between them.
        let start = hookrelay_common::time::now_ms();
        let ids: Vec<DeliveryId> = (0..6).map(|index| delivery_at(start + index * 10)).collect();
        let reports = ids
            .iter()
            .enumerate()
            .map(|(index, id)| {
                let endpoint = if index % 2 == 0 { &one } else { &two };
                let status = if index < 3 { pb::DeliveryStatus::Failed } else { pb::DeliveryStatus::Succeeded };
                report(id, endpoint, 1, status)
            })
            .collect();
        store.ingest_reports("node-1", reports).await.unwrap();
        let list = async |query: DeliveryQuery| {
            let page = store.list_deliveries(DeliveryQuery { page_size: 20, ..query }).await.unwrap();
            (page.items.into_iter().map(|d| d.id).collect::<Vec<_>>(), page.next_page_token)
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
        let of_type = DeliveryQuery { event_type: Some("payment.settled".into()), ..Default::default() };
        assert_eq!(list(of_type).await.0.len(), 6);
        let other_type = DeliveryQuery { event_type: Some("payment.failed".into()), ..Default::default() };
        assert!(list(other_type).await.0.is_empty());
        let other_owner = DeliveryQuery { owner_id: Some("other".into()), ..Default::default() };
        assert!(list(other_owner).await.0.is_empty());
        let empty_window =
            DeliveryQuery { created_after_ms: Some(start + 100), created_before_ms: Some(start), ..Default::default() };
        assert_eq!(list(empty_window).await, (Vec::new(), String::new()));

        let first = store.list_deliveries(DeliveryQuery { page_size: 4, ..Default::default() }).await.unwrap();
        assert_eq!(first.items.len(), 4);
        assert_eq!(first.next_page_token, ids[2].to_string());
        let after = Some(DeliveryId::parse(&first.next_page_token).unwrap());
        let (rest, token) = list(DeliveryQuery { after, ..Default::default() }).await;
        assert_eq!((rest, token), (name(&[1, 0]), String::new()));
        let exact = store.list_deliveries(DeliveryQuery { page_size: 6, ..Default::default() }).await.unwrap();
        assert_eq!(exact.next_page_token, "");
    })
    .await;
}
