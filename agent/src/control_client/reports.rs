//! Drains the spool of attempt reports to control in batches; a batch leaves the spool only after control answered
//! that it stored it. Any replica will do: control stores a report once by its id, so a batch that reached a replica
//! which died before answering can be sent again to another.

use std::time::Duration;

use hookrelay_common::proto::v1 as pb;
use hookrelay_common::proto::v1::agent_service_client::AgentServiceClient;
use prost::Message;
use tokio::sync::watch;

use super::channel::{ControlChannel as Channel, ControlLink};
use super::replicas::Rotation;
use crate::queue::{Queue, QueueError};

/// Reports per call; control accepts at most 1000 (and a spooled record holds at most half of that).
const BATCH: usize = 1000;
/// Longest wait between looks at the spool when nothing wakes the sender.
const IDLE: Duration = Duration::from_secs(1);
/// Pause after a batch smaller than [`BATCH`], so that reports gather into fewer, larger calls: each call costs
/// control a durable flush and the agent a write, whatever its size. Sending as soon as a report was spooled made
/// calls of a few dozen reports at a steady 5,000 events/s. Control's view lags by this much more at most; 50 ms
/// saved control more CPU but delayed the last outcomes of a burst noticeably.
const LINGER: Duration = Duration::from_millis(10);
/// Wait after the spool could not be read or acknowledged (a local fault; no replica is to blame).
const QUEUE_RETRY: Duration = Duration::from_secs(1);

/// Why a batch was not sent.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("control answered {0}")]
    Control(#[from] tonic::Status),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Sends reports until `stop` turns true.
pub async fn run(link: ControlLink, node_name: String, queue: Queue, mut stop: watch::Receiver<bool>) {
    let mut rotation = Rotation::new(link);
    loop {
        let replica = tokio::select! {
            replica = rotation.replica() => replica,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let mut client = AgentServiceClient::new(replica.channel);
        let wait = match send_batch(&mut client, &node_name, &queue).await {
            Ok(0) => {
                // Woken by new reports, or looking again after a while.
                tokio::select! {
                    _ = queue.reports_ready().notified() => {}
                    _ = tokio::time::sleep(IDLE) => {}
                    _ = stop.wait_for(|stopped| *stopped) => return,
                }
                continue;
            }
            Ok(sent) => {
                rotation.healthy();
                if sent == BATCH {
                    continue;
                }
                LINGER
            }
            Err(SendError::Control(status)) => {
                let delay = rotation.failed();
                tracing::warn!(replica = %replica.name, %status, retry_in = ?delay, "sending attempt reports failed");
                delay
            }
            Err(error @ SendError::Queue(_)) => {
                tracing::error!(%error, "reading or acknowledging spooled reports failed; will retry");
                QUEUE_RETRY
            }
        };
        // New reports do not cut a backoff short: with steady emits they would retry a dead replica at once.
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

async fn send_batch(
    client: &mut AgentServiceClient<Channel>,
    node_name: &str,
    queue: &Queue,
) -> Result<usize, SendError> {
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
