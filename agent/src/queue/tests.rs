//! The queue against a real sled directory: enqueue, dedup, lease, retry, finish, report spool and reopen.

use std::time::Duration;

use bytes::Bytes;
use hookrelay_common::time::now_ms;
use tokio::sync::mpsc;

use super::*;

fn options() -> QueueOptions {
    QueueOptions { cache_capacity_bytes: 8 * 1024 * 1024, dedup_window: Duration::from_secs(3600) }
}

fn event(id: &str, endpoints: &[&str]) -> NewEvent {
    NewEvent {
        event: EventRecord {
            id: id.into(),
            owner: "acme".into(),
            event_type: "a.b".into(),
            occurred_at_ms: 1,
            accepted_at_ms: 1,
            payload: Bytes::from_static(b"{}"),
        },
        deliveries: endpoints.iter().map(|ep| (ep.to_string(), format!("dlv_{ep}_{id}"))).collect(),
    }
}

fn open(dir: &Path) -> (Queue, Recovered, mpsc::UnboundedReceiver<Signal>) {
    let (signals, receiver) = mpsc::unbounded_channel();
    let (queue, recovered) = Queue::open(dir, options(), signals).unwrap();
    (queue, recovered, receiver)
}

fn due_now(queue: &Queue, endpoint: &str) -> Vec<DueDelivery> {
    queue.due(endpoint, now_ms(), 100, |_| false).unwrap().0
}

fn finish(delivery: DueDelivery, retry_at: Option<u64>) -> Completion {
    let mut record = delivery.record.clone();
    record.attempts += 1;
    Completion { delivery, verdict: Verdict::Failing, retry_at, record, report: b"report".to_vec() }
}

#[tokio::test]
async fn enqueue_fans_out_and_dedups() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _, mut signals) = open(dir.path());
    let answers = queue.enqueue(vec![event("e1", &["ep_a", "ep_b"]), event("e1", &["ep_a"])]).await.unwrap();
    assert_eq!(answers[0], Enqueued { event_id: "e1".into(), deliveries: 2, duplicate: false });
    assert_eq!(answers[1], Enqueued { event_id: "e1".into(), deliveries: 2, duplicate: true });
    let again = queue.enqueue(vec![event("e1", &["ep_c"])]).await.unwrap();
    assert!(again[0].duplicate);
    assert_eq!(queue.depth(), 2);
    assert_eq!(due_now(&queue, "ep_a").len(), 1);
    assert_eq!(due_now(&queue, "ep_c").len(), 0);
    assert!(matches!(signals.try_recv(), Ok(Signal::NewWork { .. })));
    let none = queue.enqueue(vec![event("e2", &[])]).await.unwrap();
    assert_eq!(none[0].deliveries, 0);
    queue.close().await;
}

#[tokio::test]
async fn retry_reschedules_and_finish_removes_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _, _signals) = open(dir.path());
    queue.enqueue(vec![event("e1", &["ep_a", "ep_b"])]).await.unwrap();
    let first = due_now(&queue, "ep_a").remove(0);
    let seq = first.record.event_seq;
    let later = now_ms() + 60_000;
    queue.complete(finish(first, Some(later))).await.unwrap();
    let (due, next) = queue.due("ep_a", now_ms(), 100, |_| false).unwrap();
    assert!(due.is_empty());
    assert_eq!(next, Some(later));
    let rescheduled = queue.due("ep_a", later, 100, |_| false).unwrap().0.remove(0);
    assert_eq!(rescheduled.record.attempts, 1);

    queue.complete(finish(rescheduled, None)).await.unwrap();
    assert!(queue.event(seq).unwrap().is_some(), "ep_b still needs the event");
    let other = due_now(&queue, "ep_b").remove(0);
    queue.complete(finish(other, None)).await.unwrap();
    assert!(queue.event(seq).unwrap().is_none());
    assert_eq!(queue.depth(), 0);

    let reports = queue.pending_reports(10).unwrap();
    assert_eq!(reports.len(), 3);
    queue.ack_reports(reports.into_iter().map(|(key, _)| key).collect()).await.unwrap();
    assert!(queue.pending_reports(10).unwrap().is_empty());
    queue.close().await;
}

#[tokio::test]
async fn everything_acknowledged_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (queue, _, _signals) = open(dir.path());
        queue.enqueue(vec![event("e1", &["ep_a"]), event("e2", &["ep_a", "ep_b"])]).await.unwrap();
        queue.save_config(b"snapshot".to_vec()).await.unwrap();
        let first = due_now(&queue, "ep_a").remove(0);
        queue.complete(finish(first, None)).await.unwrap();
        queue.close().await;
    }
    let (queue, recovered, _signals) = open(dir.path());
    assert_eq!(recovered.deliveries, 2);
    assert_eq!(recovered.reports, 1);
    let mut endpoints = recovered.endpoints.clone();
    endpoints.sort();
    assert_eq!(endpoints, ["ep_a", "ep_b"]);
    assert_eq!(queue.depth(), 2);
    assert_eq!(queue.load_config().unwrap().as_deref(), Some(&b"snapshot"[..]));
    assert!(queue.enqueue(vec![event("e2", &["ep_a"])]).await.unwrap()[0].duplicate);
    let remaining = due_now(&queue, "ep_a").remove(0);
    assert_eq!(queue.event(remaining.record.event_seq).unwrap().unwrap().id, "e2");
    queue.close().await;
}

#[tokio::test]
async fn due_skips_leased_deliveries_and_respects_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _, _signals) = open(dir.path());
    let events = (0..5).map(|index| event(&format!("e{index}"), &["ep_a"])).collect();
    queue.enqueue(events).await.unwrap();
    let all = due_now(&queue, "ep_a");
    assert_eq!(all.len(), 5);
    let leased: Vec<u64> = all[..2].iter().map(|delivery| delivery.seq).collect();
    let (rest, _) = queue.due("ep_a", now_ms(), 2, |seq| leased.contains(&seq)).unwrap();
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|delivery| !leased.contains(&delivery.seq)));
    queue.close().await;
}
