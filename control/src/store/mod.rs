//! Control's persistent state behind one trait, so the gRPC layer is the same whichever database backs it. Each
//! backend is a folder with one file per concern: [`SledStore`] (in `sled/`) is the embedded default for one
//! replica, [`PostgresStore`] (in `postgres/`) lets several replicas share one PostgreSQL database. How secrets are
//! sealed at rest is shared (`secrets.rs`), and one conformance suite (`conformance/`) runs against both.
//!
//! The store owns three kinds of data:
//! - **Config**: owners, the event-type catalog and endpoints (with their signing secrets, sealed at rest under the
//!   master key; the trait deals in plaintext), plus a `u64` config version. Every config mutation bumps the version
//!   atomically with its change and publishes a [`pb::ConfigDelta`] on the change feed ([`Store::subscribe_config`])
//!   in version order, so a watcher that subscribes before it reads a [`Store::config_snapshot`] misses nothing.
//! - **Agents**: what control last heard from each agent, keyed by node name.
//! - **Delivery log**: deliveries and their attempts, as reported by agents, deduplicated by report id. Final
//!   deliveries, and those of agents not heard from for as long, are pruned after a retention period by
//!   [`Pruner`](crate::retention::Pruner), in bounded passes of [`Store::prune_deliveries`].
//!
//! The store enforces the rules that span records (an endpoint's owner exists, its filters name catalog types,
//! the per-owner endpoint limit, no deleting what is still referenced). The rules about one request's own fields
//! are checked before the store is called, in [`crate::validate`]. The rules that need no storage (merging
//! reports, what retention removes) are functions here, shared by every backend.
//!
//! Every mutation the caller is told succeeded is durable (flushed) before the method returns; agent bookkeeping
//! ([`Store::record_agent`]) is the exception, as it is refreshed on every heartbeat.

#[cfg(test)]
mod conformance;
mod postgres;
mod secrets;
mod sled;

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hookrelay_common::ids::{DeliveryId, EndpointId, ReportId};
use hookrelay_common::proto::v1 as pb;
use hookrelay_common::time::opt_ms;
use tokio::sync::broadcast;

use crate::error::Result;

pub use self::postgres::PostgresStore;
pub use self::sled::SledStore;

/// Most endpoint ids listed in an error that refuses a delete because of them.
const MAX_LISTED_IDS: usize = 20;
/// Most signing secrets one endpoint holds at once: the primary and previous ones still in their overlap. Agents
/// sign every delivery with each, so the bound keeps the `webhook-signature` header small.
pub const MAX_SECRETS_PER_ENDPOINT: usize = 5;

/// A change applied to a stored endpoint under the store's config lock. It validates what it changes and fails
/// without side effects; the store then checks the cross-record rules and writes the result.
pub type EndpointChange = Box<dyn FnOnce(&mut pb::Endpoint) -> Result<()> + Send>;

/// Which page of a list to return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Items per page, already checked against the limits.
    pub size: usize,
    /// Resume strictly after this key (the previous page's token); `None` for the first page.
    pub after: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, in list order.
    pub items: Vec<T>,
    /// The token for the next page; empty on the last page.
    pub next_page_token: String,
}

/// Filters and page of a delivery listing. Deliveries are listed newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryQuery {
    /// Only this owner's deliveries.
    pub owner_id: Option<String>,
    /// Only deliveries to this endpoint.
    pub endpoint_id: Option<EndpointId>,
    /// Only deliveries in this state (a `pb::DeliveryStatus` value).
    pub status: Option<i32>,
    /// Only deliveries of this event type.
    pub event_type: Option<String>,
    /// Only deliveries created at or after this time (unix ms).
    pub created_after_ms: Option<u64>,
    /// Only deliveries created before this time (unix ms).
    pub created_before_ms: Option<u64>,
    /// Items per page.
    pub page_size: usize,
    /// Resume with deliveries older than this one.
    pub after: Option<DeliveryId>,
}

impl DeliveryQuery {
    /// Whether a delivery passes the filters that are not answered by the key range.
    pub fn matches(&self, delivery: &pb::Delivery) -> bool {
        self.owner_id.as_ref().is_none_or(|owner| &delivery.owner_id == owner)
            && self.endpoint_id.as_ref().is_none_or(|endpoint| delivery.endpoint_id == endpoint.as_str())
            && self.status.is_none_or(|status| delivery.status == status)
            && self.event_type.as_ref().is_none_or(|event_type| &delivery.event_type == event_type)
    }
}

/// One attempt report whose fields have been checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Deduplication key.
    pub report_id: ReportId,
    /// The delivery's id, parsed from `delivery.id`.
    pub delivery_id: DeliveryId,
    /// The delivery as it stands after the attempt.
    pub delivery: pb::Delivery,
    /// The attempt, with `delivery_id` set and `number >= 1`; `None` when the delivery changed state without one
    /// (cancelled because its endpoint was deleted).
    pub attempt: Option<pb::Attempt>,
}

/// What a batch of reports did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Reports stored by this call.
    pub stored: u32,
    /// Reports whose id had been stored before (or appeared twice in the batch); they changed nothing.
    pub duplicates: u32,
}

/// Something an agent told control on its Watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// The stream opened.
    Hello {
        /// The agent's build version.
        agent_version: String,
        /// The config version the agent runs from its cache.
        applied_version: u64,
    },
    /// The agent applied a config version.
    Ack {
        /// The version applied.
        version: u64,
    },
    /// The agent rejected a config version.
    Nack {
        /// The version rejected.
        version: u64,
        /// Why.
        error: String,
    },
    /// A periodic status report.
    Status {
        /// Deliveries waiting in the agent's queue.
        queue_depth: u64,
    },
    /// The stream closed.
    Goodbye,
}

impl AgentEvent {
    /// Folds the event into an agent record seen at `now_ms`.
    pub fn apply(self, agent: &mut pb::Agent, now_ms: u64) {
        agent.last_seen = Some(hookrelay_common::time::to_timestamp(now_ms));
        match self {
            Self::Hello { agent_version, applied_version } => {
                agent.agent_version = agent_version;
                agent.applied_version = applied_version;
            }
            Self::Ack { version } => {
                agent.applied_version = version;
                agent.last_error.clear();
            }
            Self::Nack { version, error } => agent.last_error = format!("version {version}: {error}"),
            Self::Status { queue_depth } => agent.queue_depth = queue_depth,
            Self::Goodbye => {}
        }
    }
}

/// Merges a reported delivery into the stored one: the report with at least as many attempts wins (so a late,
/// older report cannot roll a delivery back), the earliest `created_at` is kept, and `agent` is the reporter.
pub fn merge_delivery(stored: Option<pb::Delivery>, mut incoming: pb::Delivery) -> pb::Delivery {
    let Some(stored) = stored else { return incoming };
    let earliest = match (&stored.created_at, &incoming.created_at) {
        (Some(old), Some(new)) if (old.seconds, old.nanos) <= (new.seconds, new.nanos) => Some(*old),
        (Some(old), None) => Some(*old),
        (_, new) => *new,
    };
    if incoming.attempts >= stored.attempts {
        incoming.created_at = earliest;
        incoming
    } else {
        pb::Delivery { created_at: earliest, ..stored }
    }
}

/// Whether a delivery will not change again: it succeeded, failed (gave up) or was cancelled. Pending and
/// in-flight deliveries, and records of an unknown status, are pruned only once their agent is lost.
pub fn is_final(status: i32) -> bool {
    matches!(
        pb::DeliveryStatus::try_from(status),
        Ok(pb::DeliveryStatus::Succeeded | pb::DeliveryStatus::Failed | pb::DeliveryStatus::Cancelled)
    )
}

/// Whether retention removes `delivery` at `cutoff_ms`: it was last updated before the cutoff, and it is final or
/// its agent is among `lost_agents` (not heard from since before the cutoff either: nothing will ever report on
/// the delivery again, the node and its queue are gone). Its creation is before the cutoff too, as pruning only
/// looks at ids created before it. Measuring from the last update keeps a delivery that finished late (after a long
/// outage, say) for the whole period after it finished. A pending delivery of a live agent (held behind a disabled
/// endpoint, say) is kept however old.
pub fn is_prunable(delivery: &pb::Delivery, cutoff_ms: u64, lost_agents: &HashSet<String>) -> bool {
    opt_ms(delivery.updated_at.as_ref()) < cutoff_ms
        && (is_final(delivery.status) || lost_agents.contains(&delivery.agent))
}

/// The agents among `agents` that control has not heard from since before `cutoff_ms` (a connected agent is heard
/// from at every status report).
pub fn lost_agents<'a>(agents: impl IntoIterator<Item = &'a pb::Agent>, cutoff_ms: u64) -> HashSet<String> {
    agents
        .into_iter()
        .filter(|agent| opt_ms(agent.last_seen.as_ref()) < cutoff_ms)
        .map(|agent| agent.node_name.clone())
        .collect()
}

/// `a, b, c` for an error message, cut after [`MAX_LISTED_IDS`] with the count of the rest.
fn list_ids(ids: &[String]) -> String {
    let mut text = ids.iter().take(MAX_LISTED_IDS).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > MAX_LISTED_IDS {
        text.push_str(&format!(" and {} more", ids.len() - MAX_LISTED_IDS));
    }
    text
}

/// Control's persistent state. See the module documentation for the guarantees every implementation gives.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new owner. `ALREADY_EXISTS` if the id is taken.
    async fn create_owner(&self, owner: pb::Owner) -> Result<pb::Owner>;
    /// An owner, or `NOT_FOUND`.
    async fn get_owner(&self, id: &str) -> Result<pb::Owner>;
    /// Owners by id.
    async fn list_owners(&self, page: PageRequest) -> Result<Page<pb::Owner>>;
    /// Renames an owner, when `name` is set.
    async fn update_owner(&self, id: &str, name: Option<String>) -> Result<pb::Owner>;
    /// Deletes an owner; `FAILED_PRECONDITION` while it has endpoints.
    async fn delete_owner(&self, id: &str) -> Result<()>;

    /// Adds an event type to the catalog. `ALREADY_EXISTS` if the name is taken.
    async fn create_event_type(&self, event_type: pb::EventType) -> Result<pb::EventType>;
    /// An event type, or `NOT_FOUND`.
    async fn get_event_type(&self, name: &str) -> Result<pb::EventType>;
    /// Event types by name.
    async fn list_event_types(&self, page: PageRequest) -> Result<Page<pb::EventType>>;
    /// Changes a type's description, when set.
    async fn update_event_type(&self, name: &str, description: Option<String>) -> Result<pb::EventType>;
    /// Removes a type; `FAILED_PRECONDITION` while endpoint filters name it.
    async fn delete_event_type(&self, name: &str) -> Result<()>;

    /// Stores a new endpoint with its secrets, checking that its owner exists, that its filters name catalog types
    /// and that the owner stays within `max_per_owner` endpoints, atomically with concurrent creates.
    async fn create_endpoint(&self, endpoint: pb::AgentEndpoint, max_per_owner: usize) -> Result<pb::AgentEndpoint>;
    /// An endpoint without its secrets, or `NOT_FOUND`.
    async fn get_endpoint(&self, id: &EndpointId) -> Result<pb::Endpoint>;
    /// Endpoints by id, all or one owner's, without secrets.
    async fn list_endpoints(&self, owner_id: Option<&str>, page: PageRequest) -> Result<Page<pb::Endpoint>>;
    /// Applies `change` to an endpoint; a change that leaves it as it was writes nothing and keeps the version.
    async fn update_endpoint(&self, id: &EndpointId, change: EndpointChange) -> Result<pb::Endpoint>;
    /// Deletes an endpoint.
    async fn delete_endpoint(&self, id: &EndpointId) -> Result<()>;
    /// Makes `secret` the endpoint's primary secret; the previous primary stays valid until
    /// `previous_expires_at_ms`, and earlier ones keep their own expiry. `FAILED_PRECONDITION` past
    /// [`MAX_SECRETS_PER_ENDPOINT`]. Returns the endpoint with its secrets, primary first.
    async fn rotate_secret(
        &self,
        id: &EndpointId,
        secret: String,
        previous_expires_at_ms: u64,
    ) -> Result<pb::AgentEndpoint>;
    /// Removes every secret whose expiry is at or before `now_ms`, in one config change (none if nothing expired),
    /// and returns the earliest expiry still ahead.
    async fn expire_secrets(&self, now_ms: u64) -> Result<Option<u64>>;

    /// The whole config, with secrets, at one version.
    async fn config_snapshot(&self) -> Result<pb::ConfigSnapshot>;
    /// The change feed: one delta per config version, in order, from now on.
    fn subscribe_config(&self) -> broadcast::Receiver<Arc<pb::ConfigDelta>>;

    /// Records what an agent said; not flushed (it is refreshed on every heartbeat).
    async fn record_agent(&self, node_name: &str, event: AgentEvent) -> Result<pb::Agent>;
    /// Every agent ever seen, by node name; `connected` is left false (the store does not know streams).
    async fn list_agents(&self) -> Result<Vec<pb::Agent>>;

    /// Stores a batch of attempt reports from `node_name`, skipping report ids seen before; durable on return.
    async fn ingest_reports(&self, node_name: &str, reports: Vec<Report>) -> Result<IngestOutcome>;
    /// Deliveries, newest first.
    async fn list_deliveries(&self, query: DeliveryQuery) -> Result<Page<pb::Delivery>>;
    /// A delivery and its attempts in order, or `NOT_FOUND`.
    async fn get_delivery(&self, id: &DeliveryId) -> Result<(pb::Delivery, Vec<pb::Attempt>)>;
    /// One bounded retention pass: looks at most at `limit` deliveries created before the cutoff, oldest first and
    /// after `after`, and removes those [`is_prunable`] at it (with the [`lost_agents`] at its agents' cutoff), with
    /// their attempts and index entries, so no listing or lookup finds them again; then removes at most `limit`
    /// report-id markers older than the cutoff. Report batches wait for it only briefly (it works in small chunks).
    async fn prune_deliveries(
        &self,
        cutoff: PruneCutoff,
        after: Option<DeliveryId>,
        limit: NonZeroUsize,
    ) -> Result<PrunePass>;

    /// Makes every write so far durable (used at shutdown).
    async fn flush(&self) -> Result<()>;

    /// Figures for `/metrics`; cheap enough for every scrape (no scans).
    fn stats(&self) -> Result<StoreStats>;
}

/// What [`Store::stats`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// The config version in force.
    pub config_version: u64,
    /// Delivery records in the log.
    pub deliveries: u64,
}

/// Where one [`Store::prune_deliveries`] pass draws its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneCutoff {
    /// Deliveries created and last updated before this (unix ms) go, if final or their agent is lost; so do report
    /// ids made before it.
    pub updated_before_ms: u64,
    /// Agents not heard from since before this (unix ms) are lost; 0 counts none as lost.
    pub agents_silent_before_ms: u64,
}

impl PruneCutoff {
    /// Both lines at `ms`.
    pub fn at(ms: u64) -> Self {
        Self { updated_before_ms: ms, agents_silent_before_ms: ms }
    }
}

/// What one [`Store::prune_deliveries`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrunePass {
    /// Delivery records looked at.
    pub examined: usize,
    /// Deliveries removed, each with its attempts and index entry.
    pub removed: usize,
    /// Report-id markers removed.
    pub reports_removed: usize,
    /// The last delivery looked at when the pass stopped at its limit, where the next pass resumes; `None` when it
    /// reached the cutoff, so the next pass starts again from the oldest (deliveries kept this time, pending ones
    /// say, are looked at again once they may have become prunable).
    pub resume_after: Option<DeliveryId>,
    /// Whether the pass stopped at its limit of report markers, so more may be due.
    pub reports_remaining: bool,
}

impl PrunePass {
    /// Whether more is due now rather than after the idle interval.
    pub fn more_due(&self) -> bool {
        self.resume_after.is_some() || self.reports_remaining
    }
}

/// Default time final deliveries are kept after their last update.
pub const DEFAULT_DELIVERY_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default pause of the pruner once it has caught up.
pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(attempts: u32, created_s: i64, status: pb::DeliveryStatus) -> pb::Delivery {
        pb::Delivery {
            id: "dlv_x".into(),
            attempts,
            status: status as i32,
            created_at: Some(prost_types::Timestamp { seconds: created_s, nanos: 0 }),
            ..Default::default()
        }
    }

    #[test]
    fn merge_keeps_the_furthest_delivery_and_the_earliest_creation() {
        let first = delivery(1, 100, pb::DeliveryStatus::Delivering);
        let second = delivery(2, 105, pb::DeliveryStatus::Succeeded);
        let merged = merge_delivery(Some(first.clone()), second.clone());
        assert_eq!(merged.status, pb::DeliveryStatus::Succeeded as i32);
        assert_eq!(merged.created_at.unwrap().seconds, 100);

        // A late report of attempt 1 does not roll the delivery back.
        let merged = merge_delivery(Some(second.clone()), delivery(1, 90, pb::DeliveryStatus::Delivering));
        assert_eq!(merged.status, pb::DeliveryStatus::Succeeded as i32);
        assert_eq!(merged.attempts, 2);
        assert_eq!(merged.created_at.unwrap().seconds, 90);

        assert_eq!(merge_delivery(None, first.clone()), first);
    }

    #[test]
    fn agent_events_fold_into_the_record() {
        let mut agent = pb::Agent { node_name: "n1".into(), ..Default::default() };
        AgentEvent::Hello { agent_version: "0.1.0".into(), applied_version: 3 }.apply(&mut agent, 1_000);
        assert_eq!((agent.agent_version.as_str(), agent.applied_version), ("0.1.0", 3));
        AgentEvent::Nack { version: 4, error: "bad".into() }.apply(&mut agent, 2_000);
        assert_eq!(agent.last_error, "version 4: bad");
        assert_eq!(agent.applied_version, 3);
        AgentEvent::Ack { version: 5 }.apply(&mut agent, 3_000);
        assert_eq!((agent.applied_version, agent.last_error.as_str()), (5, ""));
        AgentEvent::Status { queue_depth: 7 }.apply(&mut agent, 4_000);
        assert_eq!(agent.queue_depth, 7);
        assert_eq!(agent.last_seen.unwrap().seconds, 4);
    }

    #[test]
    fn final_deliveries_and_those_of_lost_agents_last_updated_before_the_cutoff_are_prunable() {
        use pb::DeliveryStatus::*;
        let at = |status: pb::DeliveryStatus, updated_ms: Option<u64>| pb::Delivery {
            status: status as i32,
            updated_at: updated_ms.map(hookrelay_common::time::to_timestamp),
            agent: "node-live".into(),
            ..Default::default()
        };
        let seen = |node: &str, ms: u64| pb::Agent {
            node_name: node.into(),
            last_seen: Some(hookrelay_common::time::to_timestamp(ms)),
            ..Default::default()
        };
        let none = HashSet::new();
        for status in [Succeeded, Failed, Cancelled] {
            assert!(is_final(status as i32));
            assert!(is_prunable(&at(status, Some(999)), 1_000, &none), "{status:?}");
            assert!(!is_prunable(&at(status, Some(1_000)), 1_000, &none), "{status:?} updated at the cutoff");
            // No update time: the id's creation time, which the scan already bounds, decides.
            assert!(is_prunable(&at(status, None), 1_000, &none), "{status:?}");
        }
        let agents = [seen("node-live", 1_000), seen("node-lost", 999)];
        let lost = lost_agents(&agents, 1_000);
        assert_eq!(lost, HashSet::from(["node-lost".to_owned()]));
        for status in [Unspecified, Pending, Delivering] {
            assert!(!is_final(status as i32));
            assert!(!is_prunable(&at(status, Some(1)), 1_000, &lost), "{status:?} of a live agent");
            let of_lost = pb::Delivery { agent: "node-lost".into(), ..at(status, Some(999)) };
            assert!(is_prunable(&of_lost, 1_000, &lost), "{status:?} of a lost agent");
            let recent = pb::Delivery { agent: "node-lost".into(), ..at(status, Some(1_000)) };
            assert!(!is_prunable(&recent, 1_000, &lost), "{status:?} of a lost agent, updated at the cutoff");
        }
        assert!(!is_final(42), "an unknown status is kept");
    }

    #[test]
    fn id_lists_are_capped() {
        let ids: Vec<String> = (0..25).map(|i| format!("ep_{i}")).collect();
        let text = list_ids(&ids);
        assert!(text.ends_with("ep_19 and 5 more"), "{text}");
        assert_eq!(list_ids(&ids[..2]), "ep_0, ep_1");
    }
}
