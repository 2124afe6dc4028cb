//! Intake of events from local services, over gRPC ([`grpc`]) and HTTP/JSON ([`http`]). Both validate against the
//! applied config, fan out to the subscribed endpoints and answer only once the queue made everything durable.

pub mod grpc;
pub mod http;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hookrelay_common::ids::{DeliveryId, EventId};
use hookrelay_common::model::{self, FieldError, shorten};
use hookrelay_common::time::now_ms;
use tokio::sync::watch;

use crate::catalog::Catalog;
use crate::metrics::{Metrics, RejectReason};
use crate::queue::{Enqueued, EventRecord, NewEvent, Queue, QueueError};

/// Parses the emit listener's address: loopback or one specific address of this node (or pod). The unspecified
/// address is refused because it would accept emits from every network the host reaches.
pub fn emit_listen_address(text: &str) -> Result<std::net::SocketAddr, String> {
    let address: std::net::SocketAddr = text.parse().map_err(|error| format!("{error} (expected IP:PORT)"))?;
    if address.ip().is_unspecified() {
        return Err(format!(
            "{} listens on every interface; bind loopback or this node's own IP (in Kubernetes the pod IP from the \
             downward API, as the chart does) so emit stays node-local",
            address.ip()
        ));
    }
    Ok(address)
}

/// Why an emit was refused.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The request is wrong; the field says where.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The agent cannot accept events yet.
    #[error("{0}")]
    Unavailable(String),
    /// The queue is at its size limit or the disk is full; nothing was accepted.
    #[error("{0}")]
    Exhausted(String),
    /// The queue could not make the events durable; nothing was accepted.
    #[error("events could not be stored: {0}")]
    Storage(#[from] QueueError),
}

/// One event as an emitter sent it.
#[derive(Debug, Clone)]
pub struct EmitRequest {
    pub owner: String,
    pub event_type: String,
    /// Empty: the agent assigns one.
    pub id: String,
    /// Unix seconds and nanoseconds, checked by [`model::validate_occurred_at`]; `None`: when it was accepted.
    pub occurred_at: Option<(i64, i32)>,
    /// JSON bytes, kept verbatim.
    pub payload: Bytes,
    /// Whether `payload` still needs checking with [`check_json`] (the HTTP route parsed it already).
    pub payload_unchecked: bool,
}

/// The bytes as UTF-8 text, or a refusal of `field` naming the offset of the first byte that is not UTF-8. JSON
/// text is UTF-8 (RFC 8259 §8.1) and receivers parse it as such: both emit routes check with this, the HTTP route
/// on its whole body, the gRPC route on the payload. Validation is SIMD-fast, so the hot path stays cheap.
pub fn utf8_text<'a>(field: &str, bytes: &'a [u8]) -> Result<&'a str, FieldError> {
    std::str::from_utf8(bytes).map_err(|error| {
        let offset = error.valid_up_to();
        let what = match error.error_len() {
            Some(_) => format!("byte 0x{:02x} at byte offset {offset} is not valid UTF-8", bytes[offset]),
            None => format!("the text ends inside a UTF-8 sequence that starts at byte offset {offset}"),
        };
        FieldError::new(field, format!("not valid UTF-8: {what}; JSON must be UTF-8"))
    })
}

/// Checks that `payload` is one JSON value in UTF-8: [`utf8_text`], then one JSON parse that keeps nothing.
pub fn check_json(field: &str, payload: &[u8]) -> Result<(), FieldError> {
    let text = utf8_text(field, payload)?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(drop)
        .map_err(|error| FieldError::new(field, format!("not valid JSON: {error}")))
}

/// Validates, fans out and enqueues events.
#[derive(Clone)]
pub struct Intake {
    queue: Queue,
    catalog: watch::Receiver<Arc<Catalog>>,
    max_payload_bytes: usize,
    queue_size: Arc<QueueSize>,
    metrics: Arc<Metrics>,
}

/// The queue's size limit, on the bytes of the events it holds (pending and retained for replay), which the writer
/// counts as it writes and prunes: checking it costs an atomic load.
#[derive(Clone)]
pub struct QueueSize {
    queue: Queue,
    limit_bytes: u64,
}

impl QueueSize {
    /// A limit of `limit_bytes` on `queue`.
    pub fn new(queue: Queue, limit_bytes: u64) -> Arc<Self> {
        Arc::new(Self { queue, limit_bytes })
    }

    fn check(&self) -> Result<(), IntakeError> {
        let bytes = self.queue.event_bytes();
        if bytes > self.limit_bytes {
            return Err(IntakeError::Exhausted(format!(
                "the agent's queue holds {bytes} bytes of events, over its limit of {} bytes; retry later",
                self.limit_bytes
            )));
        }
        Ok(())
    }
}

impl Intake {
    /// An intake over `queue` that reads the config from `catalog`.
    pub fn new(
        queue: Queue,
        catalog: watch::Receiver<Arc<Catalog>>,
        max_payload_bytes: usize,
        queue_size: Arc<QueueSize>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { queue, catalog, max_payload_bytes, queue_size, metrics }
    }

    /// The payload limit, so the HTTP route can refuse oversized bodies before reading them whole.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// Accepts a batch, all or nothing. `field` names a field of event `index` for error messages.
    pub async fn emit(
        &self,
        requests: Vec<EmitRequest>,
        field: impl Fn(usize, &str) -> String,
    ) -> Result<Vec<Enqueued>, IntakeError> {
        let started = Instant::now();
        let events = requests.len();
        let answer = self.emit_counted(requests, field).await;
        let rejected = answer.as_ref().err().map(|error| match error {
            IntakeError::Invalid(_) => RejectReason::Invalid,
            IntakeError::Unavailable(_) => RejectReason::Unavailable,
            IntakeError::Exhausted(_) => RejectReason::Exhausted,
            IntakeError::Storage(_) => RejectReason::Storage,
        });
        self.metrics.emit(events, rejected, started.elapsed());
        answer
    }

    async fn emit_counted(
        &self,
        requests: Vec<EmitRequest>,
        field: impl Fn(usize, &str) -> String,
    ) -> Result<Vec<Enqueued>, IntakeError> {
        let catalog = self.catalog.borrow().clone();
        if catalog.version == 0 {
            return Err(IntakeError::Unavailable(
                "the agent has not received its configuration from control yet; retry shortly".into(),
            ));
        }
        self.queue_size.check()?;
        let now = now_ms();
        let mut events = Vec::with_capacity(requests.len());
        for (index, request) in requests.into_iter().enumerate() {
            events.push(self.prepare(&catalog, request, now, |name| field(index, name))?);
        }
        self.queue.enqueue(events).await.map_err(|error| match error {
            QueueError::DiskFull(_) => IntakeError::Exhausted(format!("{error}; retry later")),
            QueueError::Unavailable(_) => IntakeError::Unavailable(format!("{error}; retry later")),
            other => IntakeError::Storage(other),
        })
    }

    fn prepare(
        &self,
        catalog: &Catalog,
        request: EmitRequest,
        now: u64,
        field: impl Fn(&str) -> String,
    ) -> Result<NewEvent, FieldError> {
        if request.owner.is_empty() {
            return Err(FieldError::new(field("owner"), "required"));
        }
        if !catalog.has_owner(&request.owner) {
            return Err(FieldError::new(field("owner"), format!("owner {:?} does not exist", shorten(&request.owner))));
        }
        if request.event_type.is_empty() {
            return Err(FieldError::new(field("type"), "required"));
        }
        model::validate_event_type(&field("type"), &request.event_type)?;
        if !catalog.has_event_type(&request.event_type) {
            return Err(FieldError::new(
                field("type"),
                format!("event type {:?} is not in the catalog", shorten(&request.event_type)),
            ));
        }
        let id = if request.id.is_empty() {
            EventId::generate().to_string()
        } else {
            model::validate_event_id(&field("id"), &request.id)?;
            request.id
        };
        if request.payload.len() > self.max_payload_bytes {
            return Err(FieldError::new(
                field("payload"),
                format!("{} bytes is over the limit of {} bytes", request.payload.len(), self.max_payload_bytes),
            ));
        }
        if request.payload_unchecked {
            check_json(&field("payload"), &request.payload)?;
        }
        let occurred_at_ms = match request.occurred_at {
            Some((seconds, nanos)) => model::validate_occurred_at(&field("occurred_at"), seconds, nanos)?,
            None => now,
        };
        let deliveries = catalog
            .subscribers(&request.owner, &request.event_type)
            .map(|endpoint| (endpoint.id.clone(), DeliveryId::generate().to_string()))
            .collect();
        Ok(NewEvent {
            event: EventRecord {
                id,
                owner: request.owner,
                event_type: request.event_type,
                occurred_at_ms,
                accepted_at_ms: now,
                payload: request.payload,
            },
            deliveries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{check_json, emit_listen_address, utf8_text};

    #[test]
    fn payloads_must_be_utf8_json_and_refusals_name_the_offset() {
        check_json("payload", r#"{"a":"\u00e9","b":"é"}"#.as_bytes()).unwrap();
        let refused = |bytes: &[u8]| check_json("payload", bytes).unwrap_err().to_string();
        assert_eq!(
            refused(b"{\"a\":\"\xc3\x28\"}"),
            "payload: not valid UTF-8: byte 0xc3 at byte offset 6 is not valid UTF-8; JSON must be UTF-8"
        );
        assert!(refused(b"{\"s\":\"\xff\xfe\"}").contains("byte 0xff at byte offset 6"));
        assert!(refused(b"\"\xe2\x82").contains("ends inside a UTF-8 sequence that starts at byte offset 1"));
        assert!(refused(b"{nope").starts_with("payload: not valid JSON: "));
        assert_eq!(utf8_text("body", b"ok").unwrap(), "ok");
    }

    #[test]
    fn emit_listens_on_loopback_or_a_specific_address_only() {
        assert!(emit_listen_address("127.0.0.1:7200").is_ok());
        assert!(emit_listen_address("[::1]:0").is_ok());
        assert!(emit_listen_address("10.1.2.3:7200").is_ok());
        let refused = emit_listen_address("0.0.0.0:7200").unwrap_err();
        assert!(refused.contains("every interface"), "{refused}");
        assert!(emit_listen_address("[::]:7200").is_err());
        assert!(emit_listen_address("nope").unwrap_err().contains("expected IP:PORT"));
    }
}
