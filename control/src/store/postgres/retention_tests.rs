//! The PostgreSQL-only retention tests: whole days dropped, a held delivery's day kept and pruned row by row.

use std::num::NonZeroUsize;

use hookrelay_common::ids::{DeliveryId, EndpointId};
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::time::{now_ms, to_timestamp};

use super::super::log::tests::{DAY, delivery_at, partitions, report, report_id_at, test_pool};
use super::super::log::{count_deliveries, get_delivery, ingest, list_deliveries, partition_name};
use super::*;
use crate::error::Error;
use crate::store::{DeliveryQuery, Report};

const LIMIT: NonZeroUsize = NonZeroUsize::new(1_000).unwrap();

/// Reports of one delivery created at `created_ms` and finished (or not) in `status` at `updated_ms`.
fn aged(endpoint: &EndpointId, created_ms: u64, updated_ms: u64, status: pb::DeliveryStatus) -> (DeliveryId, Report) {
    let id = delivery_at(created_ms);
    let mut made = report(&id, endpoint, 1, status);
    made.report_id = report_id_at(updated_ms);
    made.delivery.updated_at = Some(to_timestamp(updated_ms));
    (id, made)
}

#[tokio::test]
async fn old_days_are_dropped_whole_and_a_held_deliverys_day_is_kept() {
    use pb::DeliveryStatus::{Pending, Succeeded};
    let Some(pool) = test_pool().await else { return };
    let endpoint = EndpointId::generate();
    // Noon of the day 40 days ago, and the next two days; the cutoff is 30 days ago.
    let first = day_of(ms(now_ms() - 40 * DAY)) as u64 + DAY / 2;
    let cutoff = now_ms() - 30 * DAY;
    let mut reports = Vec::new();
    let mut finished = Vec::new();
    for day in 0..3 {
        for index in 0..5 {
            let (id, made) = aged(&endpoint, first + day * DAY + index, first + day * DAY + 1_000, Succeeded);
            finished.push(id);
            reports.push(made);
        }
    }
    // Held behind a disabled endpoint on the middle day: its agent, never recorded, is not lost.
    let (held, made) = aged(&endpoint, first + DAY + 10, first + DAY + 10, Pending);
    reports.push(made);
    let (young, made) = aged(&endpoint, now_ms() - DAY, now_ms() - DAY, Succeeded);
    reports.push(made);
    assert_eq!(ingest(&pool, "node-1", reports).await.unwrap().stored, 17);
    assert_eq!(count_deliveries(&pool).await.unwrap(), 17);
    let day = |offset: u64| day_of(ms(first + offset * DAY));

    let pass = prune(&pool, PruneCutoff::at(cutoff), None, LIMIT).await.unwrap();
    // Days one and three went whole (5 each); day two lost its finished ones row by row (6 looked at).
    assert_eq!((pass.examined, pass.removed, pass.resume_after), (16, 15, None));
    assert_eq!(pass.reports_removed, 16, "every report id of the three days");
    assert_eq!(count_deliveries(&pool).await.unwrap(), 2);
    for table in ["deliveries", "attempts"] {
        let names = partitions(&pool, table).await;
        assert!(!names.contains(&partition_name(table, day(0))), "{table}: {names:?}");
        assert!(names.contains(&partition_name(table, day(1))), "{table}: {names:?}");
        assert!(!names.contains(&partition_name(table, day(2))), "{table}: {names:?}");
    }
    let report_days = partitions(&pool, "report_ids").await;
    assert!((0..3).all(|offset| !report_days.contains(&partition_name("report_ids", day(offset)))), "{report_days:?}");
    for id in &finished {
        assert!(matches!(get_delivery(&pool, id).await.unwrap_err(), Error::NotFound(_)), "{id}");
    }
    assert_eq!(get_delivery(&pool, &held).await.unwrap().1.len(), 1);
    let listed = list_deliveries(&pool, &DeliveryQuery { page_size: 10, ..Default::default() }).await.unwrap();
    let listed: Vec<String> = listed.items.into_iter().map(|delivery| delivery.id).collect();
    assert_eq!(listed, [young.to_string(), held.to_string()]);

    // Once the held delivery finishes (long ago, as far as the cutoff goes), its day goes whole too.
    let mut done = report(&held, &endpoint, 2, Succeeded);
    done.delivery.updated_at = Some(to_timestamp(first + DAY + 20));
    ingest(&pool, "node-1", vec![done]).await.unwrap();
    let pass = prune(&pool, PruneCutoff::at(cutoff), None, LIMIT).await.unwrap();
    assert_eq!((pass.examined, pass.removed), (1, 1));
    assert!(!partitions(&pool, "deliveries").await.contains(&partition_name("deliveries", day(1))));
    assert_eq!(count_deliveries(&pool).await.unwrap(), 1);
}

#[tokio::test]
async fn a_day_with_a_delivery_finished_after_the_cutoff_is_kept_and_pruned_by_rows_with_a_resume_point() {
    use pb::DeliveryStatus::{Failed, Succeeded};
    let Some(pool) = test_pool().await else { return };
    let endpoint = EndpointId::generate();
    let first = day_of(ms(now_ms() - 40 * DAY)) as u64 + DAY / 2;
    let cutoff = now_ms() - 30 * DAY;
    let mut reports = Vec::new();
    for index in 0..25 {
        reports.push(aged(&endpoint, first + index, first + 1_000, Failed).1);
    }
    // Replayed yesterday: created 40 days ago, finished within the retention period.
    let (late, made) = aged(&endpoint, first + 100, now_ms() - DAY, Succeeded);
    reports.push(made);
    ingest(&pool, "node-1", reports).await.unwrap();
    let limit = NonZeroUsize::new(10).unwrap();
    let first_pass = prune(&pool, PruneCutoff::at(cutoff), None, limit).await.unwrap();
    assert_eq!((first_pass.examined, first_pass.removed), (10, 10));
    let resume = first_pass.resume_after.clone().expect("stopped at its limit");
    assert_eq!(resume.created_at_ms(), first + 9);
    let second = prune(&pool, PruneCutoff::at(cutoff), Some(resume), limit).await.unwrap();
    assert_eq!((second.examined, second.removed), (10, 10));
    let third = prune(&pool, PruneCutoff::at(cutoff), second.resume_after, limit).await.unwrap();
    assert_eq!((third.examined, third.removed, third.resume_after), (6, 5, None));
    assert!(partitions(&pool, "deliveries").await.contains(&partition_name("deliveries", day_of(ms(first)))));
    assert_eq!(get_delivery(&pool, &late).await.unwrap().0.status, Succeeded as i32);
    assert_eq!(count_deliveries(&pool).await.unwrap(), 1);
}

#[tokio::test]
async fn a_delivery_made_young_again_between_scan_and_removal_is_kept() {
    use pb::DeliveryStatus::{Failed, Succeeded};
    let Some(pool) = test_pool().await else { return };
    let endpoint = EndpointId::generate();
    let created = now_ms() - 40 * DAY;
    let (id, made) = aged(&endpoint, created, created, Failed);
    ingest(&pool, "node-1", vec![made]).await.unwrap();
    let cutoff = ms(now_ms() - 30 * DAY);
    let rule = Rule { cutoff_ms: cutoff, lost: Vec::new(), lost_set: Default::default() };
    // A replay finishes it now, after the scan chose it and before its removal.
    let mut replay = report(&id, &endpoint, 2, Succeeded);
    replay.delivery.updated_at = Some(to_timestamp(now_ms()));
    ingest(&pool, "node-1", vec![replay]).await.unwrap();
    let mut client = pool.get().await.unwrap();
    assert_eq!(remove_rows(&mut client, &rule, day_of(ms(created)), &[id.to_string()]).await.unwrap(), 0);
    assert_eq!(get_delivery(&pool, &id).await.unwrap().1.len(), 2);
}

#[tokio::test]
async fn a_day_whose_tables_are_busy_is_left_to_a_later_pass() {
    let Some(pool) = test_pool().await else { return };
    let endpoint = EndpointId::generate();
    let created = now_ms() - 40 * DAY;
    let (_, made) = aged(&endpoint, created, created, pb::DeliveryStatus::Succeeded);
    ingest(&pool, "node-1", vec![made]).await.unwrap();
    let day = partition_name("deliveries", day_of(ms(created)));
    // A long transaction that read the log (a slow listing, a backup) holds its tables past the drop's lock
    // timeout: the pass goes on without that day instead of queueing every report batch behind it.
    let mut reader = pool.get().await.unwrap();
    let reading = reader.transaction().await.unwrap();
    reading.batch_execute("SELECT count(*) FROM deliveries").await.unwrap();
    let pass = prune(&pool, PruneCutoff::at(now_ms() - 30 * DAY), None, LIMIT).await.unwrap();
    assert_eq!((pass.examined, pass.removed), (0, 0));
    assert!(partitions(&pool, "deliveries").await.contains(&day));
    reading.rollback().await.unwrap();
    let pass = prune(&pool, PruneCutoff::at(now_ms() - 30 * DAY), None, LIMIT).await.unwrap();
    assert_eq!((pass.examined, pass.removed), (1, 1));
    assert!(!partitions(&pool, "deliveries").await.contains(&day));
}
