//! The background task that applies the delivery log's retention period: [`Pruner`] runs bounded
//! [`Store::prune_deliveries`] passes, so pruning a large backlog never holds the store for long.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hookrelay_common::ids::DeliveryId;
use hookrelay_common::time::now_ms;
use tokio::sync::watch;

use crate::error::Result;
use crate::store::{DEFAULT_DELIVERY_RETENTION, DEFAULT_PRUNE_INTERVAL, PruneCutoff, PrunePass, Store};

/// Deliveries one pass looks at (and so removes at most); the store holds its ingest lock only per small chunk of a
/// pass.
const PRUNE_BATCH: NonZeroUsize = NonZeroUsize::new(1_000).expect("not zero");
/// How long control runs before the pruner counts any agent as lost: agents reconnect within seconds (their
/// backoff tops out at 5 s) and report their status every 5 s.
const AGENT_RECONNECT_GRACE: Duration = Duration::from_secs(600);
/// Pause between passes while a backlog is worked off, so pruning takes a bounded share of the disk and of the
/// ingest lock even when retention is first enabled on a large log.
const PRUNE_BUSY_PAUSE: Duration = Duration::from_millis(100);

/// How the delivery log is pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Final deliveries (and those of agents not heard from for as long) are removed once they were last updated
    /// longer ago than this.
    pub period: Duration,
    /// Pause between passes once the pruner has caught up.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self { period: DEFAULT_DELIVERY_RETENTION, interval: DEFAULT_PRUNE_INTERVAL }
    }
}

/// The background task that applies [`Retention`]: one bounded [`Store::prune_deliveries`] pass at a time, resuming
/// where the previous one stopped, with a pause between passes. It prunes once at start, so what expired while
/// control was down goes at once. The resume point is kept in memory only: after a restart the first pass starts
/// from the oldest delivery, and everything before the old resume point that it meets was kept for a reason.
pub struct Pruner {
    store: Arc<dyn Store>,
    retention: Retention,
    /// When this control started: agents are counted lost only once live ones have had time to reconnect.
    started: Instant,
    /// Told how many deliveries each pass removed (for `/metrics`).
    on_removed: Box<dyn Fn(usize) + Send + Sync>,
}

impl Pruner {
    /// A pruner of `store`'s delivery log; `on_removed` hears the count of deliveries each pass removed.
    pub fn new(
        store: Arc<dyn Store>,
        retention: Retention,
        on_removed: impl Fn(usize) + Send + Sync + 'static,
    ) -> Self {
        Self { store, retention, started: Instant::now(), on_removed: Box::new(on_removed) }
    }

    /// Runs the task until `stop` turns true.
    pub fn start(self, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(stop))
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut after: Option<DeliveryId> = None;
        // Totals of the current sweep (from the oldest delivery to the cutoff), logged when it completes.
        let mut swept = PrunePass::default();
        loop {
            let pause = match self.pass(after.clone()).await {
                Ok(pass) => {
                    (self.on_removed)(pass.removed);
                    swept.removed += pass.removed;
                    swept.reports_removed += pass.reports_removed;
                    after = pass.resume_after.clone();
                    if !pass.more_due() {
                        log_sweep(&std::mem::take(&mut swept), self.retention.period);
                    }
                    if pass.more_due() { PRUNE_BUSY_PAUSE } else { self.retention.interval }
                }
                Err(error) => {
                    tracing::warn!(%error, "pruning the delivery log failed; retrying");
                    self.retention.interval
                }
            };
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn pass(&self, after: Option<DeliveryId>) -> Result<PrunePass> {
        self.store.prune_deliveries(self.cutoff(now_ms()), after, PRUNE_BATCH).await
    }

    /// The cutoff of a pass at `now_ms`. Until control has been up for [`AGENT_RECONNECT_GRACE`] no agent counts as
    /// lost: after a long outage of control, or a restore from an old backup, every agent's last contact is old
    /// until it reconnects.
    fn cutoff(&self, now_ms: u64) -> PruneCutoff {
        prune_cutoff(now_ms, self.retention.period, self.started.elapsed())
    }
}

/// [`Pruner::cutoff`] for a control that has been up for `uptime`.
fn prune_cutoff(now_ms: u64, period: Duration, uptime: Duration) -> PruneCutoff {
    let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
    let updated_before_ms = now_ms.saturating_sub(period_ms);
    let agents_silent_before_ms = if uptime >= AGENT_RECONNECT_GRACE { updated_before_ms } else { 0 };
    PruneCutoff { updated_before_ms, agents_silent_before_ms }
}

fn log_sweep(swept: &PrunePass, period: Duration) {
    if swept.removed > 0 || swept.reports_removed > 0 {
        tracing::info!(
            deliveries = swept.removed,
            report_ids = swept.reports_removed,
            retention = %humantime::format_duration(period),
            "pruned deliveries older than the retention period"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_agent_counts_as_lost_until_control_has_been_up_long_enough_for_live_ones_to_reconnect() {
        let period = Duration::from_secs(1);
        let fresh = prune_cutoff(10_000, period, Duration::from_secs(5));
        assert_eq!(fresh, PruneCutoff { updated_before_ms: 9_000, agents_silent_before_ms: 0 });
        let settled = prune_cutoff(10_000, period, AGENT_RECONNECT_GRACE);
        assert_eq!(settled, PruneCutoff::at(9_000));
        assert_eq!(prune_cutoff(10, Duration::MAX, AGENT_RECONNECT_GRACE), PruneCutoff::at(0), "no overflow");
    }
}
