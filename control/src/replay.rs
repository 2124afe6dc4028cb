//! Replays: control asks the agent that holds a delivery's payload to deliver it again, as a command on that agent's
//! config stream. The agent re-enqueues it (a new series of attempts, the same `webhook-id`) and reports the new
//! attempts as usual, so the delivery's record follows.

use std::collections::BTreeMap;

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
    if !hub.send_commands(&delivery.agent, commands) {
        return Err(Error::Unavailable(format!(
            "agent {:?}, which holds the payload of delivery {id}, is not connected; retry when it is",
            delivery.agent
        )));
    }
    tracing::info!(%id, agent = %delivery.agent, "replay requested");
    Ok(delivery)
}

/// What [`recover_failed`] did with the failed deliveries it found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Sent to their agents.
    pub requested: u32,
    /// Held by agents that are not connected now.
    pub skipped: u32,
    /// Reported without a payload reference, so no agent can find their payload.
    pub unreplayable: u32,
}

/// Asks for every failed delivery of `endpoint_id` created at or after `since_ms` to be replayed.
pub async fn recover_failed(
    store: &dyn Store,
    hub: &ConfigHub,
    endpoint_id: &EndpointId,
    since_ms: u64,
) -> Result<Recovery> {
    store.get_endpoint(endpoint_id).await?;
    let mut recovery = Recovery::default();
    let mut by_agent: BTreeMap<String, Vec<pb::Delivery>> = BTreeMap::new();
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
            } else {
                by_agent.entry(delivery.agent.clone()).or_default().push(delivery);
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
    for (agent, deliveries) in by_agent {
        for chunk in deliveries.chunks(COMMAND_BATCH) {
            let count = chunk.len() as u32;
            if hub.send_commands(&agent, pb::AgentCommands { replays: chunk.to_vec() }) {
                recovery.requested += count;
            } else {
                recovery.skipped += count;
            }
        }
        tracing::info!(%endpoint_id, %agent, "recovery of failed deliveries requested");
    }
    Ok(recovery)
}

#[cfg(test)]
mod tests {
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

    async fn next_commands(responses: &mut crate::watch::WatchStream) -> pb::AgentCommands {
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

    #[tokio::test]
    async fn replays_carry_the_delivery_with_its_payload_reference() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), MasterKey::generate()).unwrap());
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
        let reports = vec![failed(&endpoint_id, 41), failed(&endpoint_id, 42), failed(&endpoint_id, 0)];
        let (held, older) = (reports[0].delivery_id.clone(), reports[2].delivery_id.clone());
        store.ingest_reports(NODE, reports).await.unwrap();

        let (_stop, stopped) = watch::channel(false);
        let hub = ConfigHub::new(store.clone(), stopped);
        let not_connected = replay_delivery(store.as_ref(), &hub, &held).await.unwrap_err();
        assert!(matches!(&not_connected, Error::Unavailable(message) if message.contains("not connected")));

        let (agent, inbound) = mpsc::channel(8);
        let mut responses = hub.open(ReceiverStream::new(inbound));
        let hello = pb::AgentHello { node_name: NODE.into(), agent_version: "test".into(), applied_version: 0 };
        agent.send(Ok(pb::WatchRequest { kind: Some(pb::watch_request::Kind::Hello(hello)) })).await.unwrap();
        responses.next().await.expect("a snapshot").expect("not an error");

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
        assert_eq!(recovery, Recovery { requested: 2, skipped: 0, unreplayable: 1 });
        let mut refs: Vec<u64> = next_commands(&mut responses).await.replays.iter().map(|d| d.payload_ref).collect();
        refs.sort_unstable();
        assert_eq!(refs, [41, 42]);
    }
}
