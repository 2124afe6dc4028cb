//! The end of rotation overlaps. After `RotateSecret` the previous secret stays valid until its expiry; this task
//! sleeps until the earliest expiry of any endpoint, then has the store remove every expired secret in one ordinary
//! config change, so agents receive a delta and stop signing with it.
//!
//! The task sweeps once when it starts, so overlaps that ended while control was down end at once and those still
//! running are timed again after a restart; each sweep returns the next expiry. Rotations in between
//! [`ExpiryTimer::schedule`] theirs. The wake-up time is a minimum over a `watch` channel, so a rotation that lands
//! while a sweep runs is never lost. Sleeps are capped at [`MAX_SLEEP`] and re-checked against the wall clock,
//! which expiries are measured in.

use std::sync::Arc;
use std::time::Duration;

use hookrelay_common::time::now_ms;
use tokio::sync::watch;

use crate::store::Store;

/// Longest sleep before the task looks at the wall clock again.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Wait before retrying a sweep that failed.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// A handle to the expiry task: tells it about new expiries.
#[derive(Clone)]
pub struct ExpiryTimer {
    /// The earliest expiry (unix ms) the task knows of; `None` when no secret expires.
    next: Arc<watch::Sender<Option<u64>>>,
}

impl ExpiryTimer {
    /// Starts the task over `store`; it ends once `stop` turns true.
    pub fn start(store: Arc<dyn Store>, stop: watch::Receiver<bool>) -> Self {
        // Due at once: the first sweep finds what is left from before a restart.
        let (next, wake) = watch::channel(Some(0));
        let timer = Self { next: Arc::new(next) };
        tokio::spawn(timer.clone().run(store, wake, stop));
        timer
    }

    /// Makes sure the task wakes at `at_ms` (unix ms) at the latest.
    pub fn schedule(&self, at_ms: u64) {
        self.next.send_modify(|next| *next = Some(next.map_or(at_ms, |current| current.min(at_ms))));
    }

    async fn run(self, store: Arc<dyn Store>, mut wake: watch::Receiver<Option<u64>>, mut stop: watch::Receiver<bool>) {
        loop {
            let due = *wake.borrow_and_update();
            let now = now_ms();
            match due {
                Some(at) if at <= now => {}
                Some(at) => {
                    let sleep = Duration::from_millis(at - now).min(MAX_SLEEP);
                    tokio::select! {
                        _ = stop.wait_for(|stopped| *stopped) => return,
                        changed = wake.changed() => if changed.is_err() { return },
                        () = tokio::time::sleep(sleep) => {}
                    }
                    continue;
                }
                None => {
                    tokio::select! {
                        _ = stop.wait_for(|stopped| *stopped) => return,
                        changed = wake.changed() => if changed.is_err() { return },
                    }
                    continue;
                }
            }
            // Cleared before the sweep: expiries scheduled while it runs are kept by the minimum below.
            self.next.send_replace(None);
            let now = now_ms();
            match store.expire_secrets(now).await {
                Ok(Some(next)) => self.schedule(next),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "could not remove expired signing secrets; retrying");
                    self.schedule(now + RETRY_AFTER.as_millis() as u64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hookrelay_common::ids::EndpointId;
    use hookrelay_common::proto::v1 as pb;
    use hookrelay_common::sealed::MasterKey;
    use hookrelay_common::signing::Secret;

    use super::*;
    use crate::store::SledStore;

    async fn store_with_endpoint(dir: &std::path::Path, key: &MasterKey) -> (Arc<SledStore>, EndpointId, String) {
        let store = Arc::new(SledStore::open(dir, key.clone()).unwrap());
        store.create_owner(pb::Owner { id: "acme".into(), ..Default::default() }).await.unwrap();
        let id = EndpointId::generate();
        let secret = Secret::generate().expose();
        let endpoint = pb::AgentEndpoint {
            endpoint: Some(pb::Endpoint {
                id: id.to_string(),
                owner_id: "acme".into(),
                url: "https://example.com/".into(),
                filter_types: vec!["*".into()],
                ..Default::default()
            }),
            secrets: vec![secret.clone()],
        };
        store.create_endpoint(endpoint, 10).await.unwrap();
        (store, id, secret)
    }

    async fn secrets(store: &SledStore) -> Vec<String> {
        store.config_snapshot().await.unwrap().endpoints[0].secrets.clone()
    }

    #[tokio::test]
    async fn the_old_secret_is_removed_when_its_overlap_ends() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let (store, id, old) = store_with_endpoint(dir.path(), &key).await;
        let (_stop_tx, stop) = watch::channel(false);
        let timer = ExpiryTimer::start(store.clone(), stop);
        let mut feed = store.subscribe_config();

        let new = Secret::generate().expose();
        let expires = now_ms() + 300;
        let rotated = store.rotate_secret(&id, new.clone(), expires).await.unwrap();
        assert_eq!(rotated.secrets, [new.clone(), old.clone()], "primary first, the old one still valid");
        timer.schedule(expires);
        let delta = feed.recv().await.unwrap();
        assert_eq!(delta.upsert_endpoints[0].secrets, [new.clone(), old]);

        let delta = tokio::time::timeout(Duration::from_secs(5), feed.recv()).await.expect("expired in time").unwrap();
        assert!(now_ms() >= expires);
        assert_eq!(delta.upsert_endpoints[0].secrets, [new.as_str()]);
        assert_eq!(delta.version, delta.base_version + 1, "one ordinary config change");
        assert_eq!(secrets(&store).await, [new]);
    }

    #[tokio::test]
    async fn overlaps_that_ended_while_control_was_down_end_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let new = Secret::generate().expose();
        {
            let (store, id, _old) = store_with_endpoint(dir.path(), &key).await;
            store.rotate_secret(&id, new.clone(), now_ms() + 100).await.unwrap();
            assert_eq!(secrets(&store).await.len(), 2);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let store = Arc::new(SledStore::reopen(dir.path(), key).unwrap());
        let mut feed = store.subscribe_config();
        let (_stop_tx, stop) = watch::channel(false);
        let _timer = ExpiryTimer::start(store.clone(), stop);
        let delta = tokio::time::timeout(Duration::from_secs(5), feed.recv()).await.expect("swept at start").unwrap();
        assert_eq!(delta.upsert_endpoints[0].secrets, [new]);
    }

    #[tokio::test]
    async fn overlaps_still_running_at_a_restart_are_timed_again() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let new = Secret::generate().expose();
        let expires = now_ms() + 400;
        {
            let (store, id, _old) = store_with_endpoint(dir.path(), &key).await;
            store.rotate_secret(&id, new.clone(), expires).await.unwrap();
        }
        let store = Arc::new(SledStore::reopen(dir.path(), key).unwrap());
        let mut feed = store.subscribe_config();
        let (stop_tx, stop) = watch::channel(false);
        let _timer = ExpiryTimer::start(store.clone(), stop);
        let delta = tokio::time::timeout(Duration::from_secs(5), feed.recv()).await.expect("expired in time").unwrap();
        assert!(now_ms() >= expires);
        assert_eq!(delta.upsert_endpoints[0].secrets, [new]);
        stop_tx.send(true).unwrap();
    }
}
