//! Drains the spool of attempt reports to control in batches; a batch leaves the spool only after control answered
//! that it stored it.

use std::time::Duration;

use super::channel::ControlChannel as Channel;
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::proto::v1::agent_service_client::AgentServiceClient;
use prost::Message;
use tokio::sync::watch;

use super::Backoff;
use crate::queue::Queue;

/// Reports per call; control accepts at most 1000 (and a spooled record holds at most half of that).
const BATCH: usize = 1000;
/// Longest wait between looks at the spool when nothing wakes the sender.
const IDLE: Duration = Duration::from_secs(1);
/// Pause after a batch smaller than [`BATCH`], so that reports gather into fewer, larger calls: each call costs
/// control a durable flush and the agent a write, whatever its size. Sending as soon as a report was spooled made
/// calls of a few dozen reports at a steady 5,000 events/s. Control's view lags by this much more at most; 50 ms
/// saved control more CPU but delayed the last outcomes of a burst noticeably.
const LINGER: Duration = Duration::from_millis(10);

/// Sends reports until `stop` turns true.
pub async fn run(channel: Channel, node_name: String, queue: Queue, mut stop: watch::Receiver<bool>) {
    let mut client = AgentServiceClient::new(channel);
    let mut backoff = Backoff::new();
    loop {
        let wait = match send_batch(&mut client, &node_name, &queue).await {
            Ok(0) => IDLE,
            Ok(sent) => {
                backoff.reset();
                if sent < BATCH {
                    tokio::select! {
                        _ = tokio::time::sleep(LINGER) => {}
                        _ = stop.wait_for(|stopped| *stopped) => return,
                    }
                }
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "sending attempt reports failed; will retry");
                backoff.step()
            }
        };
        tokio::select! {
            _ = queue.reports_ready().notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

async fn send_batch(client: &mut AgentServiceClient<Channel>, node_name: &str, queue: &Queue) -> anyhow::Result<usize> {
    let spooled = queue.pending_reports(BATCH)?;
    if spooled.is_empty() {
        return Ok(0);
    }
    let mut reports = Vec::new();
    for encoded in spooled.iter().flat_map(|spool| &spool.reports) {
        match pb::AttemptReport::decode(encoded.as_slice()) {
            Ok(report) => reports.push(report),
            Err(error) => tracing::error!(%error, "dropping an undecodable spooled report"),
        }
    }
    let count = spooled.iter().map(|spool| spool.reports.len()).sum();
    if !reports.is_empty() {
        let request = pb::ReportAttemptsRequest { node_name: node_name.to_owned(), reports };
        let answer = client.report_attempts(request).await?.into_inner();
        // Sending them again cannot succeed, and keeping them would hold back every report behind them.
        if let Some(first) = answer.rejected.first() {
            tracing::error!(rejected = answer.rejected.len(), first = %first.reason,
                "control rejected malformed attempt reports; dropping them");
        }
    }
    queue.ack_reports(spooled).await?;
    Ok(count)
}
