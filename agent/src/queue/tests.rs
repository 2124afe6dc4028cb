//! The queue against a real sled directory: enqueue, dedup, lease, retry, finish, report spool and reopen.

use std::time::Duration;

use bytes::Bytes;
use hookrelay_common::time::now_ms;
use tokio::sync::mpsc;

use super::*;

fn options() -> QueueOptions {
    QueueOptions {
        cache_capacity_bytes: 8 * 1024 * 1024,
        dedup_window: Duration::from_secs(3600),
        payload_retention: Duration::from_secs(3600),
        sweep_interval: Duration::from_secs(3600),
        sweep_batch: SWEEP_BATCH,
    }
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

/// Events `e0`, `e1`, … each going to `endpoint` alone.
fn events_to(endpoint: &str, count: usize) -> Vec<NewEvent> {
    (0..count).map(|n| event(&format!("e{n}"), &[endpoint])).collect()
}

fn open(dir: &Path) -> (Queue, Recovered, mpsc::UnboundedReceiver<Signal>) {
    let (signals, receiver) = mpsc::unbounded_channel();
    let (queue, recovered) = super::model_tests::reopen_with_retry(|| Queue::open(dir, options(), signals.clone()));
    (queue, recovered, receiver)
}

fn due_now(queue: &Queue, endpoint: &str) -> Vec<DueDelivery> {
    queue.due(endpoint, now_ms(), 100, |_| false).unwrap().0
}

/// The delivery as control learns it from the report of its finish, and sends it back to replay it.
fn as_reported(delivery: &DueDelivery, event_id: &str) -> ReplayRequest {
    ReplayRequest {
        delivery_id: delivery.record.delivery_id.clone(),
        endpoint_id: delivery.endpoint_id.clone(),
        owner: "acme".into(),
        event_id: event_id.into(),
        event_seq: delivery.record.event_seq,
        attempts: delivery.record.attempts + 1,
        created_at_ms: delivery.record.created_at_ms,
    }
}

/// A queue that keeps no payload past its last delivery and sweeps `batch` keys every `interval`.
fn open_sweeping(dir: &Path, interval: Duration, batch: usize) -> Queue {
    let (signals, _) = mpsc::unbounded_channel();
    let options =
        QueueOptions { payload_retention: Duration::ZERO, sweep_interval: interval, sweep_batch: batch, ..options() };
    Queue::open(dir, options, signals).unwrap().0
}

/// Waits until none of the events `seqs` is stored any more, failing with `why` after `within`.
async fn wait_swept(queue: &Queue, seqs: &[u64], within: Duration, why: &str) {
    let deadline = std::time::Instant::now() + within;
    while seqs.iter().any(|seq| queue.event(*seq).unwrap().is_some()) {
        assert!(std::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
async fn retry_reschedules_and_finish_keeps_the_payload_for_replay() {
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
    let other = due_now(&queue, "ep_b").remove(0);
    queue.complete(finish(other, None)).await.unwrap();
    assert!(queue.event(seq).unwrap().is_some(), "the payload is retained for replay");
    assert_eq!(queue.depth(), 0);

    let reports = queue.pending_reports(10).unwrap();
    assert_eq!(reports.iter().map(|spool| spool.reports.len()).sum::<usize>(), 3);
    assert_eq!(queue.report_backlog(), 3);
    queue.ack_reports(reports).await.unwrap();
    assert!(queue.pending_reports(10).unwrap().is_empty());
    assert_eq!(queue.report_backlog(), 0);
    queue.close().await;
}

#[tokio::test]
async fn reports_are_read_in_whole_records_up_to_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _, _signals) = open(dir.path());
    queue.enqueue(vec![event("e1", &["ep_a", "ep_b", "ep_c"])]).await.unwrap();
    for endpoint in ["ep_a", "ep_b", "ep_c"] {
        let delivery = due_now(&queue, endpoint).remove(0);
        queue.complete(finish(delivery, None)).await.unwrap();
    }
    assert_eq!(queue.report_backlog(), 3);
    let two = queue.pending_reports(2).unwrap();
    assert_eq!(two.len(), 2, "each completion above was a batch of its own");
    let at_least_one = queue.pending_reports(0).unwrap();
    assert_eq!(at_least_one.len(), 1, "a record is returned even when it alone exceeds the limit");
    queue.ack_reports(two).await.unwrap();
    assert_eq!(queue.report_backlog(), 1);
    assert_eq!(queue.pending_reports(10).unwrap().len(), 1);
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
    assert_eq!(queue.report_backlog(), 1, "the backlog counts reports spooled before the restart");
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
    queue.enqueue(events_to("ep_a", 5)).await.unwrap();
    let all = due_now(&queue, "ep_a");
    assert_eq!(all.len(), 5);
    let leased: Vec<u64> = all[..2].iter().map(|delivery| delivery.seq).collect();
    let (rest, _) = queue.due("ep_a", now_ms(), 2, |seq| leased.contains(&seq)).unwrap();
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|delivery| !leased.contains(&delivery.seq)));
    queue.close().await;
}

fn group_keys(queue: &Queue, endpoint: &str) -> Vec<sled::IVec> {
    queue.tree().scan_prefix(keys::group_prefix(endpoint)).keys().map(Result::unwrap).collect()
}

#[tokio::test]
async fn one_batch_shares_a_group_that_deliveries_leave_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _, _signals) = open(dir.path());
    queue.enqueue(events_to("ep_a", 5)).await.unwrap();
    let group = group_keys(&queue, "ep_a");
    assert_eq!(group.len(), 1, "one batch's deliveries to an endpoint share one key");

    // A limit that ends inside the group: reading on from the last key returns the rest of it, not leased ones.
    let (first, _) = queue.due("ep_a", now_ms(), 2, |_| false).unwrap();
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|delivery| delivery.key == group[0].as_ref()));
    let leased: Vec<u64> = first.iter().map(|delivery| delivery.seq).collect();
    let (rest, _) = queue.due_after("ep_a", Some(&first[1].key), now_ms(), 100, |seq| leased.contains(&seq)).unwrap();
    assert_eq!(rest.len(), 3);
    assert!(rest.iter().all(|delivery| !leased.contains(&delivery.seq)));

    // One finishes, one is rescheduled (to a group of its own), in the same batch; three stay in the group.
    let mut first = first.into_iter();
    let (done, retried) = (first.next().unwrap(), first.next().unwrap());
    let (done_id, retried_seq) = (done.record.delivery_id.clone(), retried.seq);
    let later = now_ms() + 60_000;
    let finished = queue.complete(finish(done, None));
    let rescheduled = queue.complete(finish(retried, Some(later)));
    finished.await.unwrap();
    rescheduled.await.unwrap();
    assert_eq!(group_keys(&queue, "ep_a"), [group[0].clone(), keys::group("ep_a", later, retried_seq).into()]);
    let now_due = due_now(&queue, "ep_a");
    assert_eq!(now_due.len(), 3);
    assert!(now_due.iter().all(|delivery| delivery.record.delivery_id != done_id && delivery.seq != retried_seq));
    let moved = queue.due("ep_a", later, 100, |_| false).unwrap().0;
    assert_eq!(moved.len(), 4);
    assert_eq!(moved[3].seq, retried_seq, "a rescheduled delivery keeps its seq");
    assert_eq!(moved[3].record.attempts, 1);

    // The last deliveries leaving a group remove its key.
    for delivery in now_due {
        queue.complete(finish(delivery, None)).await.unwrap();
    }
    assert_eq!(group_keys(&queue, "ep_a").len(), 1);
    queue.close().await;
    drop(queue);
    let (queue, recovered, _signals) = open(dir.path());
    assert_eq!(recovered.deliveries, 1);
    assert_eq!(queue.depth(), 1);
    queue.close().await;
}

#[tokio::test]
async fn deliveries_of_the_older_one_key_layout_move_into_groups_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let event_seq = 7 << keys::EVENT_SEQ_COUNTER_BITS;
    {
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("queue").unwrap();
        let stored = event("e1", &["ep_a"]).event;
        tree.insert(keys::legacy_event(event_seq), stored.encode_to_vec()).unwrap();
        let legacy = DeliveryRecord {
            delivery_id: "dlv_old".into(),
            event_seq,
            attempts: 2,
            created_at_ms: 1,
            ..Default::default()
        };
        let mut key = vec![keys::LEGACY_DELIVERY];
        key.extend_from_slice(&keys::group("ep_a", 5, 42)[1..]);
        tree.insert(key, legacy.encode_to_vec()).unwrap();
        db.flush().unwrap();
    }
    let (queue, recovered, _signals) = open(dir.path());
    assert_eq!(recovered.deliveries, 1);
    assert_eq!(recovered.endpoints, ["ep_a"]);
    assert_eq!(queue.tree().scan_prefix([keys::LEGACY_DELIVERY]).count(), 0, "no record of the old layout is left");
    let moved = due_now(&queue, "ep_a").remove(0);
    assert_eq!((moved.seq, moved.due_ms, moved.record.attempts), (42, 5, 2));
    assert_eq!(moved.record.delivery_id, "dlv_old");
    assert_eq!(queue.event(moved.record.event_seq).unwrap().unwrap().id, "e1");
    queue.complete(finish(moved, None)).await.unwrap();
    assert_eq!(queue.depth(), 0);
    queue.close().await;
}

#[tokio::test]
async fn replay_requeues_a_finished_delivery_as_a_new_series() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _, _signals) = open(dir.path());
    queue.enqueue(vec![event("e1", &["ep_a"]), event("e2", &["ep_b"])]).await.unwrap();
    let first = due_now(&queue, "ep_a").remove(0);
    let reported = as_reported(&first, "e1");
    queue.complete(finish(first, None)).await.unwrap();

    let other = |n: u32| ReplayRequest { delivery_id: format!("dlv_other_{n}"), ..reported.clone() };
    let unknown_payload = ReplayRequest { event_seq: reported.event_seq - 1, ..other(1) };
    let other_event = ReplayRequest { event_id: "e2".into(), ..other(2) };
    let no_reference = ReplayRequest { event_seq: 0, ..other(3) };
    let outcomes = queue
        .replay(vec![reported.clone(), unknown_payload, other_event, no_reference, reported.clone()])
        .await
        .unwrap();
    assert_eq!(outcomes[0], ReplayOutcome::Requeued);
    let reasons: Vec<_> = outcomes[1..]
        .iter()
        .map(|outcome| match outcome {
            ReplayOutcome::NotHeld(reason) => reason.as_str(),
            ReplayOutcome::Requeued => panic!("requeued: {outcomes:?}"),
        })
        .collect();
    assert!(reasons[0].contains("past the retention period"), "{reasons:?}");
    assert!(reasons[1].contains("belongs to another event"), "{reasons:?}");
    assert!(reasons[2].contains("no payload reference"), "{reasons:?}");
    assert!(reasons[3].contains("pending here already"), "the same replay twice in one batch: {reasons:?}");

    let again = due_now(&queue, "ep_a").remove(0);
    assert_eq!(again.record.delivery_id, reported.delivery_id);
    assert_eq!((again.record.attempts, again.record.series_base), (1, 1));
    assert_eq!(queue.depth(), 2);
    let outcomes = queue.replay(vec![reported.clone()]).await.unwrap();
    assert!(matches!(&outcomes[0], ReplayOutcome::NotHeld(_)), "a pending replay is not replayed twice");

    // Pending replays are known again after a restart; once finished, the delivery can be replayed anew.
    queue.close().await;
    drop(queue);
    let (queue, _, _signals) = open(dir.path());
    let outcomes = queue.replay(vec![reported.clone()]).await.unwrap();
    assert!(matches!(&outcomes[0], ReplayOutcome::NotHeld(_)), "a pending replay is known after reopening");
    let again = due_now(&queue, "ep_a").remove(0);
    let reported_again = as_reported(&again, "e1");
    queue.complete(finish(again, None)).await.unwrap();
    assert_eq!(queue.replay(vec![reported_again]).await.unwrap()[0], ReplayOutcome::Requeued);
    queue.close().await;
}

#[tokio::test]
async fn finished_records_of_older_agents_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("queue").unwrap();
        tree.insert(b"xdlv_0190d5a1b2c3d4e5f6a7b8c9d0e1f2a3", b"\x0a\x04ep_a".as_slice()).unwrap();
        db.flush().unwrap();
    }
    let (signals, _receiver) = mpsc::unbounded_channel();
    let options = QueueOptions { sweep_interval: Duration::from_millis(20), ..options() };
    let (queue, _) =
        super::model_tests::reopen_with_retry(|| Queue::open(dir.path(), options.clone(), signals.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while queue.tree().scan_prefix([keys::LEGACY_FINISHED]).next().is_some() {
        assert!(std::time::Instant::now() < deadline, "the sweep never removed the legacy finished record");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    queue.close().await;
}

#[tokio::test]
async fn retention_sweeps_old_payloads_but_not_pending_ones() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_sweeping(dir.path(), Duration::from_millis(20), SWEEP_BATCH);
    // One emit after the other: two batches, two packs.
    queue.enqueue(vec![event("done", &["ep_a"])]).await.unwrap();
    queue.enqueue(vec![event("waiting", &["ep_b"])]).await.unwrap();
    let done = due_now(&queue, "ep_a").remove(0);
    let (done_seq, reported) = (done.record.event_seq, as_reported(&done, "done"));
    queue.complete(finish(done, None)).await.unwrap();
    let waiting_seq = due_now(&queue, "ep_b")[0].record.event_seq;

    wait_swept(&queue, &[done_seq], Duration::from_secs(10), "the retention sweep never removed the finished payload")
        .await;
    assert!(queue.event(waiting_seq).unwrap().is_some(), "a pending delivery's payload is never swept");
    assert!(matches!(&queue.replay(vec![reported]).await.unwrap()[0], ReplayOutcome::NotHeld(_)));
    queue.close().await;
}

#[tokio::test]
async fn retention_reaches_past_old_pending_events() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_sweeping(dir.path(), Duration::from_millis(20), 2);
    // Three events held for an endpoint that never takes them, each in a pack of its own, then one that is
    // delivered: a pass that always started from the oldest pack would read only held ones.
    for held in ["held-1", "held-2", "held-3"] {
        queue.enqueue(vec![event(held, &["ep_held"])]).await.unwrap();
    }
    queue.enqueue(vec![event("done", &["ep_a"])]).await.unwrap();
    let done = due_now(&queue, "ep_a").remove(0);
    let done_seq = done.record.event_seq;
    queue.complete(finish(done, None)).await.unwrap();

    wait_swept(&queue, &[done_seq], Duration::from_secs(10), "the sweep never got past the held events").await;
    for held in due_now(&queue, "ep_held") {
        assert!(queue.event(held.record.event_seq).unwrap().is_some(), "a held event's payload is never swept");
    }
    assert_eq!(due_now(&queue, "ep_held").len(), 3);
    queue.close().await;
}

/// Waits until the queue counts `expected` bytes of events (the writer updates the count after its batch).
async fn wait_event_bytes(queue: &Queue, expected: u64, why: &str) {
    hookrelay_tests::eventually::eventually(why, Duration::from_secs(10), async || match queue.event_bytes() {
        bytes if bytes == expected => Ok(()),
        bytes => Err(format!("{bytes} bytes of events, expected {expected}")),
    })
    .await;
}

#[tokio::test]
async fn a_pack_past_retention_keeps_only_its_pending_events_and_goes_after_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_sweeping(dir.path(), Duration::from_millis(20), SWEEP_BATCH);
    queue.enqueue(events_to("ep_a", 3)).await.unwrap();
    assert_eq!(queue.tree().scan_prefix([keys::EVENT_PACK]).count(), 1, "one batch of small events is one pack");
    let mut due = due_now(&queue, "ep_a");
    let seqs: Vec<u64> = due.iter().map(|delivery| delivery.record.event_seq).collect();
    // The middle one stays pending: neither the first frame nor the one the pack's key names.
    let held = due.remove(1);
    for delivery in due {
        queue.complete(finish(delivery, None)).await.unwrap();
    }
    let done = [seqs[0], seqs[2]];
    wait_swept(&queue, &done, Duration::from_secs(10), "the finished events stayed in the pack").await;
    assert_eq!(queue.event(seqs[1]).unwrap().unwrap().id, "e1", "kept for its pending delivery");
    let packs: Vec<_> = queue.tree().scan_prefix([keys::EVENT_PACK]).map(|entry| entry.unwrap()).collect();
    assert_eq!(packs.len(), 1, "rewritten in place");
    assert_eq!(packs::seqs(&packs[0].0, &packs[0].1).unwrap(), [seqs[1]]);
    wait_event_bytes(&queue, packs[0].1.len() as u64, "the queue's size counts only what the pack still holds").await;

    queue.complete(finish(held, None)).await.unwrap();
    wait_swept(&queue, &seqs[1..2], Duration::from_secs(10), "the pack stayed after its last delivery finished").await;
    assert_eq!(queue.tree().scan_prefix([keys::EVENT_PACK]).count(), 0);
    wait_event_bytes(&queue, 0, "the queue's size counts the pack's bytes off").await;
    queue.close().await;
}

#[tokio::test]
async fn events_of_the_older_one_key_layout_move_into_packs_on_open() {
    let dir = tempfile::tempdir().unwrap();
    // More than one migration batch holds.
    let count = recovery::MIGRATION_BATCH as u64 + 2;
    let seqs: Vec<u64> = (1..=count).map(|n| (now_ms() << keys::EVENT_SEQ_COUNTER_BITS) - count + n).collect();
    {
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("queue").unwrap();
        let mut batch = sled::Batch::default();
        for (n, seq) in seqs.iter().enumerate() {
            batch.insert(&keys::legacy_event(*seq), event(&format!("old{n}"), &[]).event.encode_to_vec());
        }
        tree.apply_batch(batch).unwrap();
        db.flush().unwrap();
    }
    let (queue, _, _signals) = open(dir.path());
    assert_eq!(queue.tree().scan_prefix([keys::LEGACY_EVENT]).count(), 0, "no record of the old layout is left");
    for (n, seq) in seqs.iter().enumerate() {
        assert_eq!(queue.event(*seq).unwrap().unwrap().id, format!("old{n}"));
    }
    let packed: u64 = queue.tree().scan_prefix([keys::EVENT_PACK]).map(|entry| entry.unwrap().1.len() as u64).sum();
    assert_eq!(queue.event_bytes(), packed, "the moved events count towards the queue's size");
    queue.enqueue(vec![event("new", &["ep_a"])]).await.unwrap();
    let fresh = due_now(&queue, "ep_a").remove(0);
    assert!(fresh.record.event_seq > seqs[seqs.len() - 1], "new seqs go on above the moved events");
    assert_eq!(queue.event(fresh.record.event_seq).unwrap().unwrap().id, "new");
    queue.close().await;
}

#[tokio::test]
async fn sweeps_follow_each_other_while_they_find_work() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_sweeping(dir.path(), Duration::from_secs(2), 2);
    for event in events_to("ep_a", 10) {
        queue.enqueue(vec![event]).await.unwrap();
    }
    let due = due_now(&queue, "ep_a");
    let seqs: Vec<u64> = due.iter().map(|delivery| delivery.record.event_seq).collect();
    for delivery in due {
        queue.complete(finish(delivery, None)).await.unwrap();
    }
    // Two packs (of one event each) per pass: one pass per interval would need five intervals (10 s) for the ten.
    // Passes that fill their batch and remove something follow each other within milliseconds instead.
    wait_swept(&queue, &seqs, Duration::from_secs(6), "the sweeps removed two payloads per interval").await;
    queue.close().await;
}

proptest::proptest! {
    /// Whatever bytes sit under a key, decoding fails cleanly or round-trips.
    #[test]
    fn record_decoding_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
        use prost::Message;
        if let Ok(record) = EventRecord::decode(bytes.as_slice()) {
            proptest::prop_assert_eq!(EventRecord::decode(record.encode_to_vec().as_slice()).unwrap(), record);
        }
        if let Ok(record) = DeliveryRecord::decode(bytes.as_slice()) {
            proptest::prop_assert_eq!(DeliveryRecord::decode(record.encode_to_vec().as_slice()).unwrap(), record);
        }
        let _ = DedupRecord::decode(bytes.as_slice());
        if let Ok(group) = DeliveryGroup::decode(bytes.as_slice()) {
            proptest::prop_assert_eq!(DeliveryGroup::decode(group.encode_to_vec().as_slice()).unwrap(), group);
        }
        let _ = keys::parse_group(&bytes);
    }
}

#[tokio::test]
async fn a_snapshot_cut_short_does_not_stop_the_queue_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (queue, _, _) = open(dir.path());
        queue.enqueue(events_to("ep_a", 3)).await.unwrap();
        queue.close().await;
    }
    // What a full disk leaves of a snapshot being written: a partial file sled would read as the newest.
    std::fs::write(dir.path().join("snap.FFFFFFFFFFFFFFFF.generating"), b"cut short").unwrap();
    let (queue, recovered, _) = open(dir.path());
    assert_eq!(recovered.deliveries, 3, "everything acknowledged is still there");
    assert!(!dir.path().join("snap.FFFFFFFFFFFFFFFF.generating").exists());
    queue.close().await;
}
