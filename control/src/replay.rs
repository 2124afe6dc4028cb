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
    let commands = pb::AgentCommands { replay_deliveries: vec![id.to_string()] };
    if !hub.send_commands(&delivery.agent, commands) {
        return Err(Error::Unavailable(format!(
            "agent {:?}, which holds the payload of delivery {id}, is not connected; retry when it is",
            delivery.agent
        )));
    }
    tracing::info!(%id, agent = %delivery.agent, "replay requested");
    Ok(delivery)
}

/// Asks for every failed delivery of `endpoint_id` created at or after `since_ms` to be replayed. Returns how many
/// were requested and how many were skipped because their agent is not connected.
pub async fn recover_failed(
    store: &dyn Store,
    hub: &ConfigHub,
    endpoint_id: &EndpointId,
    since_ms: u64,
) -> Result<(u32, u32)> {
    store.get_endpoint(endpoint_id).await?;
    let mut by_agent: BTreeMap<String, Vec<String>> = BTreeMap::new();
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
            by_agent.entry(delivery.agent).or_default().push(delivery.id);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        after = Some(
            DeliveryId::parse(&page.next_page_token)
                .map_err(|error| Error::Corrupt { what: "delivery page token".into(), reason: error.to_string() })?,
        );
    }
    let (mut requested, mut skipped) = (0u32, 0u32);
    for (agent, ids) in by_agent {
        for chunk in ids.chunks(COMMAND_BATCH) {
            let count = chunk.len() as u32;
            if hub.send_commands(&agent, pb::AgentCommands { replay_deliveries: chunk.to_vec() }) {
                requested += count;
            } else {
                skipped += count;
            }
        }
        tracing::info!(%endpoint_id, %agent, "recovery of failed deliveries requested");
    }
    Ok((requested, skipped))
}
