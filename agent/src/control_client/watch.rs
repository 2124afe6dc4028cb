//! Follows control's config stream: says hello with the version it runs, applies the snapshot and every delta,
//! persists the result before acknowledging it, and publishes it to the emit and delivery paths. When the stream
//! breaks it resumes on the next replica that answers, saying hello with the version it applied last.

use std::sync::Arc;
use std::time::Duration;

use super::channel::ControlLink;
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::proto::v1::agent_service_client::AgentServiceClient;
use hookrelay_common::time::from_timestamp;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::replicas::{Replica, Rotation};
use crate::catalog::{AppliedConfig, Catalog};
use crate::config_cache::ConfigCache;
use crate::queue::{Queue, ReplayOutcome, ReplayRequest};

/// How often the agent tells control its queue depth (also its heartbeat).
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// Who the agent is, for control's agent list.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node_name: String,
    pub agent_version: String,
}

/// Follows the stream until `stop` turns true, moving to another replica after every failure.
pub async fn run(
    link: ControlLink,
    identity: Identity,
    queue: Queue,
    cache: ConfigCache,
    mut applied: AppliedConfig,
    publish: watch::Sender<Arc<Catalog>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rotation = Rotation::new(link);
    loop {
        let replica = tokio::select! {
            replica = rotation.replica() => replica,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let session = follow(&replica, &identity, &queue, &cache, &mut applied, &publish, &mut rotation);
        let ended = tokio::select! {
            result = session => result,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let delay = rotation.failed();
        match ended {
            Ok(()) => tracing::info!(replica = %replica.name, retry_in = ?delay, "config stream closed by control"),
            Err(error) => tracing::warn!(replica = %replica.name, %error, retry_in = ?delay, "config stream failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

async fn follow(
    replica: &Replica,
    identity: &Identity,
    queue: &Queue,
    cache: &ConfigCache,
    applied: &mut AppliedConfig,
    publish: &watch::Sender<Arc<Catalog>>,
    rotation: &mut Rotation,
) -> Result<(), tonic::Status> {
    let (requests, outgoing) = mpsc::channel(16);
    let hello = pb::AgentHello {
        node_name: identity.node_name.clone(),
        agent_version: identity.agent_version.clone(),
        applied_version: applied.version,
    };
    send(&requests, pb::watch_request::Kind::Hello(hello)).await;
    let mut client = AgentServiceClient::new(replica.channel.clone());
    let mut responses = client.watch(ReceiverStream::new(outgoing)).await?.into_inner();
    let mut status = tokio::time::interval(STATUS_INTERVAL);
    let mut answered = false;
    loop {
        tokio::select! {
            message = responses.message() => {
                let Some(message) = message? else { return Ok(()) };
                if !answered {
                    answered = true;
                    rotation.healthy();
                    let applied_version = applied.version;
                    tracing::info!(replica = %replica.name, applied_version, "config stream connected");
                }
                let (version, next) = match message.kind {
                    Some(pb::watch_response::Kind::Snapshot(snapshot)) => {
                        (snapshot.version, Ok(AppliedConfig::from_snapshot(snapshot)))
                    }
                    Some(pb::watch_response::Kind::Delta(delta)) => (delta.version, applied.with_delta(delta)),
                    Some(pb::watch_response::Kind::Commands(commands)) => {
                        replay(queue, commands.replays).await;
                        continue;
                    }
                    None => continue,
                };
                let answer = match next.map_err(|error| error.to_string()) {
                    Ok(next) => apply(cache, applied, next, publish).await,
                    Err(error) => Err(error),
                };
                let kind = match answer {
                    Ok(()) => pb::watch_request::Kind::Ack(pb::ConfigAck { version }),
                    Err(error) => {
                        tracing::warn!(version, %error, "rejected config version");
                        pb::watch_request::Kind::Nack(pb::ConfigNack { version, error })
                    }
                };
                send(&requests, kind).await;
            }
            _ = status.tick() => {
                send(&requests, pb::watch_request::Kind::Status(pb::AgentStatus { queue_depth: queue.depth() })).await;
            }
        }
    }
}

/// Compiles, persists, then publishes a config; the previous one stays in force if any step fails.
async fn apply(
    cache: &ConfigCache,
    applied: &mut AppliedConfig,
    next: AppliedConfig,
    publish: &watch::Sender<Arc<Catalog>>,
) -> Result<(), String> {
    let catalog = next.compile().map_err(|error| error.to_string())?;
    cache.save(&next).await.map_err(|error| format!("caching the config failed: {error}"))?;
    tracing::info!(version = next.version, "applied config");
    *applied = next;
    publish.send_replace(Arc::new(catalog));
    Ok(())
}

/// Re-enqueues deliveries control asked to replay; what cannot be replayed is logged with the reason.
async fn replay(queue: &Queue, deliveries: Vec<pb::Delivery>) {
    let requests: Vec<ReplayRequest> = deliveries.into_iter().map(replay_request).collect();
    let count = requests.len();
    let delivery_ids: Vec<String> = requests.iter().map(|request| request.delivery_id.clone()).collect();
    match queue.replay(requests).await {
        Ok(outcomes) => {
            for (delivery_id, outcome) in delivery_ids.iter().zip(outcomes) {
                match outcome {
                    ReplayOutcome::Requeued => tracing::info!(%delivery_id, "replaying delivery"),
                    ReplayOutcome::NotHeld(reason) => tracing::warn!(%delivery_id, %reason, "cannot replay delivery"),
                }
            }
        }
        Err(error) => tracing::error!(%error, count, "replaying deliveries failed"),
    }
}

/// What the queue needs of a delivery control sent back to replay.
fn replay_request(delivery: pb::Delivery) -> ReplayRequest {
    ReplayRequest {
        created_at_ms: delivery.created_at.as_ref().and_then(from_timestamp).unwrap_or(0),
        delivery_id: delivery.id,
        endpoint_id: delivery.endpoint_id,
        owner: delivery.owner_id,
        event_id: delivery.event_id,
        event_seq: delivery.payload_ref,
        attempts: delivery.attempts,
    }
}

async fn send(requests: &mpsc::Sender<pb::WatchRequest>, kind: pb::watch_request::Kind) {
    // A closed channel means the stream ended; the response side notices and reconnects.
    let _ = requests.send(pb::WatchRequest { kind: Some(kind) }).await;
}
