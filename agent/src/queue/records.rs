//! The values stored in the queue tree, encoded with prost so that fields can be added without a migration.

use bytes::Bytes;

/// An accepted event: what every delivery of it sends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EventRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub owner: String,
    #[prost(string, tag = "3")]
    pub event_type: String,
    #[prost(uint64, tag = "4")]
    pub occurred_at_ms: u64,
    #[prost(uint64, tag = "5")]
    pub accepted_at_ms: u64,
    #[prost(bytes = "bytes", tag = "6")]
    pub payload: Bytes,
}

/// One event's delivery to one endpoint, stored in a [`DeliveryGroup`] under its due time.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeliveryRecord {
    #[prost(string, tag = "1")]
    pub delivery_id: String,
    /// Key of the event record.
    #[prost(uint64, tag = "2")]
    pub event_seq: u64,
    /// Attempts made so far.
    #[prost(uint32, tag = "3")]
    pub attempts: u32,
    #[prost(uint64, tag = "4")]
    pub created_at_ms: u64,
    #[prost(uint32, tag = "5")]
    pub last_status: u32,
    #[prost(string, tag = "6")]
    pub last_error: String,
    /// Attempts made before the current series began (a replay starts a new series).
    #[prost(uint32, tag = "7")]
    pub series_base: u32,
    /// The delivery's own sequence number, unique in the queue: what its lease is known by, and the key's seq of
    /// the group it is alone in once it is rescheduled.
    #[prost(uint64, tag = "8")]
    pub seq: u64,
    /// Made pending by a replay: the writer keeps the ids of these in memory so that none is pending twice.
    #[prost(bool, tag = "9")]
    pub replay: bool,
}

/// Pending deliveries of one endpoint stored under one key: those a writer batch made due together (fresh events,
/// replays), or one rescheduled delivery. One key for many deliveries keeps sled's per-page bookkeeping, which stays
/// in memory, small for a large backlog.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeliveryGroup {
    #[prost(message, repeated, tag = "1")]
    pub deliveries: Vec<DeliveryRecord>,
}

/// The answer given to the first emit of an id, returned again to re-emits within the dedup window.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DedupRecord {
    #[prost(string, tag = "1")]
    pub event_id: String,
    #[prost(uint32, tag = "2")]
    pub deliveries: u32,
    #[prost(uint64, tag = "3")]
    pub accepted_at_ms: u64,
}

/// The attempt reports of one writer batch, spooled under one key until control acknowledges them; each is an
/// encoded `AttemptReport`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SpooledReports {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub reports: Vec<Vec<u8>>,
}

/// When each endpoint that is failing every attempt began to fail (unix ms), so that the auto-disable window
/// outlives a restart.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FailingSince {
    #[prost(map = "string, uint64", tag = "1")]
    pub endpoints: std::collections::HashMap<String, u64>,
}
