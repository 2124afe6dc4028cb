//! The config change feed of a replica: every change in the change log (`config_changes`), whichever replica made
//! it, published on this replica's feed once, in version order. Config mutations are serialised across replicas and
//! each appends its delta in its own transaction, so versions commit in order and "everything after the last
//! version published" is the whole of what is new.
//!
//! What wakes the reader: this replica's own commits ([`Feed::wake`]), a `NOTIFY` on [`CONFIG_CHANNEL`] from any
//! replica (heard on a connection of its own, reconnected when it breaks), and a periodic read, so a notification
//! lost with a broken connection only delays a change, never loses it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::StreamExt as _;
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::sealed::MasterKey;
use tokio::sync::{Notify, broadcast};
use tokio_postgres::{AsyncMessage, NoTls};

use super::config::{CONFIG_CHANNEL, open_change};
use super::{db_error, pool_error};
use crate::error::Result;

/// Longest a change made on another replica waits when its notification was lost.
const CATCH_UP: Duration = Duration::from_secs(2);
/// Most changes read per query; a replica far behind reads on at once.
const READ_BATCH: i64 = 500;
/// Pause before listening again after the listening connection failed.
const RELISTEN_PAUSE: Duration = Duration::from_secs(1);

/// The task that publishes the change log; stopped when dropped.
pub(super) struct Feed {
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Feed {
    /// Publishes every change after `from_version` on `changes`, keeping `version` at the last one published.
    pub(super) fn start(
        settings: tokio_postgres::Config,
        pool: Pool,
        key: MasterKey,
        from_version: u64,
        changes: broadcast::Sender<Arc<pb::ConfigDelta>>,
        version: Arc<AtomicU64>,
    ) -> Self {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(settings, wake.clone()));
        let reader = Reader { pool, key, published: from_version, changes, version };
        let task = tokio::spawn(reader.run(wake.clone(), listener));
        Self { wake, task }
    }

    /// Reads the change log now: this replica committed a change.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Reader {
    pool: Pool,
    key: MasterKey,
    /// The last version published.
    published: u64,
    changes: broadcast::Sender<Arc<pb::ConfigDelta>>,
    version: Arc<AtomicU64>,
}

impl Reader {
    async fn run(mut self, wake: Arc<Notify>, listener: tokio::task::JoinHandle<()>) {
        // The listener lives as long as the reader.
        let _listener = AbortOnDrop(listener);
        loop {
            match self.publish_new().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "reading the config change log failed; trying again"),
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(CATCH_UP) => {}
            }
        }
    }

    /// Publishes the changes after the last one published; true if a full batch came (more may wait).
    async fn publish_new(&mut self) -> Result<bool> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let after = i64::try_from(self.published).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "SELECT version, delta FROM config_changes WHERE version > $1 ORDER BY version LIMIT $2",
                &[&after, &READ_BATCH],
            )
            .await
            .map_err(db_error)?;
        let full = rows.len() as i64 == READ_BATCH;
        for row in rows {
            let version = u64::try_from(row.get::<_, i64>(0)).unwrap_or_default();
            let delta = open_change(&self.key, version, row.get(1))?;
            self.published = version;
            self.version.fetch_max(version, Ordering::Relaxed);
            // No receivers just means no agent is connected.
            let _ = self.changes.send(Arc::new(delta));
        }
        Ok(full)
    }
}

/// Listens on [`CONFIG_CHANNEL`] and wakes the reader at every notification, reconnecting when the connection fails.
async fn listen(settings: tokio_postgres::Config, wake: Arc<Notify>) {
    loop {
        if let Err(error) = listen_once(&settings, &wake).await {
            tracing::warn!(%error, "listening for config changes failed; changes still arrive by periodic reads");
        }
        tokio::time::sleep(RELISTEN_PAUSE).await;
    }
}

async fn listen_once(settings: &tokio_postgres::Config, wake: &Notify) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = settings.connect(NoTls).await?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    // The connection makes progress only while its messages are polled, so the LISTEN runs beside them.
    let statement = format!("LISTEN {CONFIG_CHANNEL}");
    let subscribe = client.batch_execute(&statement);
    tokio::pin!(subscribe);
    let mut subscribed = false;
    loop {
        tokio::select! {
            done = &mut subscribe, if !subscribed => {
                done?;
                subscribed = true;
                // Anything committed before the LISTEN took effect is read now.
                wake.notify_one();
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            },
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
