//! Replays: control asks the agent that holds a delivery's payload to deliver it again, as a command on that agent's
//! config stream. The agent re-enqueues it (a new series of attempts, the same `webhook-id`) and reports the new
//! attempts as usual, so the delivery's record follows.

use std::collections::{BTreeMap, HashSet};

use hookrelay_common::ids::{DeliveryId, EndpointId};
use hookrelay_common::proto::v1 as pb;

use crate::error::{Error, Result};
use crate::store::{DeliveryQuery, Store};
use crate::watch::ConfigHub;

/// Most delivery ids sent to an agent in one command.
const COMMAND_BATCH: usize = 1000;

/// Asks for one finished delivery to be replayed; returns it as control knows it.
pub async fn replay_delivery(store: &dyn Store, hub: &ConfigHub, id: &DeliveryId) -> Result<pb::Delivery> {
    let (delivery, _) = store.get_delivery(id).await?;
    let status = delivery.status();
    if !matches!(status, pb::DeliveryStatus::Succeeded | pb::DeliveryStatus::Failed | pb::DeliveryStatus::Cancelled) {
        return Err(Error::FailedPrecondition(format!(
            "delivery {id} is {}: only finished deliveries can be replayed",
            status.as_str_name().trim_start_matches("DELIVERY_STATUS_").to_lowercase()
        )));
    }
    if delivery.payload_ref == 0 {
        return Err(Error::FailedPrecondition(format!(
            "delivery {id} was reported by an agent that did not say where it holds the payload (an older \
             version): it cannot be replayed"
        )));
    }
    let commands = pb::AgentCommands { replays: vec![delivery.clone()] };
    if !hub.send_commands(&delivery.agent, commands).await {
        return Err(Error::Unavailable(format!(
            "agent {:?}, which holds the payload of delivery {id}, is not connected or is not reading its commands; \
             retry when it is",
            delivery.agent
        )));
    }
    tracing::info!(%id, agent = %delivery.agent, "replay requested");
    Ok(delivery)
}

/// Asks for every failed delivery of `endpoint_id` created at or after `since_ms` to be replayed. Deliveries go to
/// their agents as they are listed, [`COMMAND_BATCH`] at a time, so a recovery after a long outage holds at most a
/// batch per agent in memory rather than every failed delivery.
pub async fn recover_failed(
    store: &dyn Store,
    hub: &ConfigHub,
    endpoint_id: &EndpointId,
    since_ms: u64,
) -> Result<pb::RecoverFailedResponse> {
    store.get_endpoint(endpoint_id).await?;
    let mut recovery = pb::RecoverFailedResponse::default();
    let mut waiting: BTreeMap<String, Vec<pb::Delivery>> = BTreeMap::new();
    let mut unreachable = HashSet::new();
    let mut after = None;
    loop {
        let query = DeliveryQuery {
            endpoint_id: Some(endpoint_id.clone()),
            status: Some(pb::DeliveryStatus::Failed as i32),
            created_after_ms: Some(since_ms),
            page_size: 100,
            after,
            ..DeliveryQuery::default()
        };
        let page = store.list_deliveries(query).await?;
        for delivery in page.items {
            if delivery.payload_ref == 0 {
                recovery.unreplayable += 1;
                continue;
            }
            let agent = delivery.agent.clone();
            let batch = waiting.entry(agent.clone()).or_default();
            batch.push(delivery);
            if batch.len() == COMMAND_BATCH {
                send_replays(hub, &agent, std::mem::take(batch), &mut unreachable, &mut recovery).await;
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        after = Some(
            DeliveryId::parse(&page.next_page_token)
                .map_err(|error| Error::Corrupt { what: "delivery page token".into(), reason: error.to_string() })?,
        );
    }
    for (agent, deliveries) in waiting {
        send_replays(hub, &agent, deliveries, &mut unreachable, &mut recovery).await;
    }
    tracing::info!(%endpoint_id, requested = recovery.requested, skipped = recovery.skipped,
        unreplayable = recovery.unreplayable, "recovery of failed deliveries requested");
    Ok(recovery)
}

/// Sends one replay command to `agent` and counts its deliveries as requested, or as skipped when it is not connected
/// or does not read its commands; an agent found so is in `unreachable` and skipped for the rest of the recovery
/// (each send to it would wait out the command timeout).
async fn send_replays(
    hub: &ConfigHub,
    agent: &str,
    deliveries: Vec<pb::Delivery>,
    unreachable: &mut HashSet<String>,
    recovery: &mut pb::RecoverFailedResponse,
) {
    if deliveries.is_empty() {
        return;
    }
    let count = deliveries.len() as u32;
    if !unreachable.contains(agent) && hub.send_commands(agent, pb::AgentCommands { replays: deliveries }).await {
        recovery.requested += count;
    } else {
        unreachable.insert(agent.to_owned());
        recovery.skipped += count;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Duration;

    use hookrelay_common::ids::ReportId;
    use hookrelay_common::sealed::MasterKey;
    use hookrelay_common::signing::Secret;
    use hookrelay_common::time::{now_ms, to_timestamp};
    use tokio::sync::{mpsc, watch};
    use tokio_stream::StreamExt as _;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;
    use crate::store::{Report, SledStore};
    use crate::watch::WatchStream;

    const NODE: &str = "node-1";

    /// A failed delivery `node` reported, with its payload under `payload_ref` there (0: not said).
    fn failed(endpoint_id: &EndpointId, payload_ref: u64) -> Report {
        let delivery_id = DeliveryId::generate();
        let delivery = pb::Delivery {
            id: delivery_id.to_string(),
            event_id: format!("evt-{payload_ref}"),
            owner_id: "acme".into(),
            endpoint_id: endpoint_id.to_string(),
            event_type: "payment.settled".into(),
            status: pb::DeliveryStatus::Failed as i32,
            attempts: 2,
            created_at: Some(to_timestamp(now_ms())),
            payload_ref,
            ..Default::default()
        };
        Report { report_id: ReportId::generate(), delivery_id, delivery, attempt: None }
    }

    async fn next_commands(responses: &mut WatchStream) -> pb::AgentCommands {
        loop {
            let response = tokio::time::timeout(Duration::from_secs(5), responses.next())
                .await
                .expect("a response in time")
                .expect("an open stream")
                .expect("not an error");
            if let Some(pb::watch_response::Kind::Commands(commands)) = response.kind {
                return commands;
            }
        }
    }

    /// A store with owner `acme` and one endpoint of it.
    async fn store_with_endpoint(dir: &std::path::Path) -> (Arc<dyn Store>, EndpointId) {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir, MasterKey::generate()).unwrap());
        store.create_owner(pb::Owner { id: "acme".into(), name: "acme".into(), ..Default::default() }).await.unwrap();
        let endpoint_id = EndpointId::generate();
        let endpoint = pb::Endpoint {
            id: endpoint_id.to_string(),
            owner_id: "acme".into(),
            url: "https://example.com/hook".into(),
            filter_types: vec!["*".into()],
            enabled: true,
            ..Default::default()
        };
        let agent_view = pb::AgentEndpoint { endpoint: Some(endpoint), secrets: vec![Secret::generate().expose()] };
        store.create_endpoint(agent_view, 10).await.unwrap();
        (store, endpoint_id)
    }

    /// Connects agent [`NODE`] to `hub`; returns its side of the stream (keep the sender alive) and its responses.
    async fn connect(hub: &ConfigHub) -> (mpsc::Sender<Result<pb::WatchRequest, tonic::Status>>, WatchStream) {
        let (agent, inbound) = mpsc::channel(8);
        let mut responses = hub.open(ReceiverStream::new(inbound));
        let hello = pb::AgentHello { node_name: NODE.into(), agent_version: "test".into(), applied_version: 0 };
        agent.send(Ok(pb::WatchRequest { kind: Some(pb::watch_request::Kind::Hello(hello)) })).await.unwrap();
        responses.next().await.expect("a snapshot").expect("not an error");
        (agent, responses)
    }

    #[tokio::test]
    async fn replays_carry_the_delivery_with_its_payload_reference() {
        let dir = tempfile::tempdir().unwrap();
        let (store, endpoint_id) = store_with_endpoint(dir.path()).await;
        let reports = vec![failed(&endpoint_id, 41), failed(&endpoint_id, 42), failed(&endpoint_id, 0)];
        let (held, older) = (reports[0].delivery_id.clone(), reports[2].delivery_id.clone());
        store.ingest_reports(NODE, reports).await.unwrap();

        let (_stop, stopped) = watch::channel(false);
        let hub = ConfigHub::new(store.clone(), stopped);
        let not_connected = replay_delivery(store.as_ref(), &hub, &held).await.unwrap_err();
        assert!(matches!(&not_connected, Error::Unavailable(message) if message.contains("not connected")));

        let (_agent, mut responses) = connect(&hub).await;

        let refused = replay_delivery(store.as_ref(), &hub, &older).await.unwrap_err();
        assert!(
            matches!(&refused, Error::FailedPrecondition(message) if message.contains("cannot be replayed")),
            "{refused:?}"
        );
        let answered = replay_delivery(store.as_ref(), &hub, &held).await.unwrap();
        let commands = next_commands(&mut responses).await;
        assert_eq!(commands.replays, vec![answered.clone()]);
        assert_eq!((answered.payload_ref, answered.agent.as_str(), answered.attempts), (41, NODE, 2));

        let recovery = recover_failed(store.as_ref(), &hub, &endpoint_id, 0).await.unwrap();
        assert_eq!(recovery, pb::RecoverFailedResponse { requested: 2, skipped: 0, unreplayable: 1 });
        let mut refs: Vec<u64> = next_commands(&mut responses).await.replays.iter().map(|d| d.payload_ref).collect();
        refs.sort_unstable();
        assert_eq!(refs, [41, 42]);
    }

    #[tokio::test]
    async fn a_recovery_sends_full_commands_as_it_lists() {
        let dir = tempfile::tempdir().unwrap();
        let (store, endpoint_id) = store_with_endpoint(dir.path()).await;
        let reports: Vec<Report> = (1..=COMMAND_BATCH as u64 + 1).map(|n| failed(&endpoint_id, n)).collect();
        store.ingest_reports(NODE, reports).await.unwrap();
        let (_stop, stopped) = watch::channel(false);
        let hub = ConfigHub::new(store.clone(), stopped);
        let (_agent, mut responses) = connect(&hub).await;

        let recovery = recover_failed(store.as_ref(), &hub, &endpoint_id, 0).await.unwrap();
        let requested = COMMAND_BATCH as u32 + 1;
        assert_eq!(recovery, pb::RecoverFailedResponse { requested, skipped: 0, unreplayable: 0 });
        let first = next_commands(&mut responses).await.replays;
        let rest = next_commands(&mut responses).await.replays;
        assert_eq!((first.len(), rest.len()), (COMMAND_BATCH, 1));
        let refs: HashSet<u64> = first.iter().chain(&rest).map(|delivery| delivery.payload_ref).collect();
        assert_eq!(refs.len(), COMMAND_BATCH + 1, "every delivery once");
    }

    #[tokio::test]
    async fn an_agent_found_unreachable_is_skipped_for_the_rest_of_a_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_with_endpoint(dir.path()).await;
        let (_stop, stopped) = watch::channel(false);
        let hub = ConfigHub::new(store.clone(), stopped);
        let (mut unreachable, mut recovery) = (HashSet::new(), pb::RecoverFailedResponse::default());
        let delivery = || vec![pb::Delivery { id: "dlv_1".into(), payload_ref: 1, ..Default::default() }];

        send_replays(&hub, NODE, delivery(), &mut unreachable, &mut recovery).await;
        assert!(unreachable.contains(NODE));
        let (_agent, mut responses) = connect(&hub).await;
        send_replays(&hub, NODE, delivery(), &mut unreachable, &mut recovery).await;
        assert_eq!(recovery, pb::RecoverFailedResponse { requested: 0, skipped: 2, unreplayable: 0 });
        send_replays(&hub, NODE, delivery(), &mut HashSet::new(), &mut recovery).await;
        assert_eq!(recovery.requested, 1, "a new recovery tries the agent again");
        assert_eq!(next_commands(&mut responses).await.replays.len(), 1);
    }
}
