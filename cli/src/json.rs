//! Proto messages as JSON, for `--output json`. prost messages do not implement serde, so every message the CLI
//! prints has a small conversion here.
//!
//! The shape is the proto3 JSON mapping with the proto field names kept (as `protoc --preserve_proto_field_names`
//! and grpcurl's `--emit-defaults` print it), so any proto JSON parser reads it back: every field is present, enums
//! are printed by name, timestamps as RFC3339 strings in UTC (`null` when unset, as are other unset messages), maps
//! as objects. 64-bit integers are JSON numbers rather than strings, which proto JSON parsers accept and `jq` prefers.
//! Keys come out in alphabetical order (serde_json's default map), the same on every run.

use std::collections::BTreeMap;

use hookrelay_common::proto::v1 as pb;
use serde_json::{Value, json};

/// A time as RFC3339 in UTC with milliseconds, e.g. `2026-01-01T00:00:00.000Z`.
pub fn rfc3339(ts: &prost_types::Timestamp) -> String {
    match jiff::Timestamp::new(ts.seconds, ts.nanos) {
        Ok(time) => time.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        // Out of range: say what came rather than hide it.
        Err(_) => format!("{}s+{}ns since the epoch", ts.seconds, ts.nanos),
    }
}

/// A message that prints as JSON.
pub trait ToJson {
    fn to_json(&self) -> Value;
}

impl<T: ToJson> ToJson for Option<T> {
    fn to_json(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToJson::to_json)
    }
}

impl<T: ToJson> ToJson for Vec<T> {
    fn to_json(&self) -> Value {
        Value::Array(self.iter().map(ToJson::to_json).collect())
    }
}

impl ToJson for prost_types::Timestamp {
    fn to_json(&self) -> Value {
        Value::String(rfc3339(self))
    }
}

/// An enum field by its proto name, or its number when this build does not know it.
fn enum_json(value: i32, name: Option<&'static str>) -> Value {
    name.map_or_else(|| json!(value), |name| json!(name))
}

pub fn rate_limit_period_name(value: i32) -> Option<&'static str> {
    pb::RateLimitPeriod::try_from(value).ok().map(|period| period.as_str_name())
}

pub fn delivery_status_name(value: i32) -> Option<&'static str> {
    pb::DeliveryStatus::try_from(value).ok().map(|status| status.as_str_name())
}

pub fn attempt_outcome_name(value: i32) -> Option<&'static str> {
    pb::AttemptOutcome::try_from(value).ok().map(|outcome| outcome.as_str_name())
}

impl ToJson for pb::Owner {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "created_at": self.created_at.to_json(),
            "updated_at": self.updated_at.to_json(),
        })
    }
}

impl ToJson for pb::EventType {
    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "description": self.description,
            "created_at": self.created_at.to_json(),
            "updated_at": self.updated_at.to_json(),
        })
    }
}

impl ToJson for pb::RateLimit {
    fn to_json(&self) -> Value {
        json!({ "limit": self.limit, "period": enum_json(self.period, rate_limit_period_name(self.period)) })
    }
}

impl ToJson for pb::RetryPolicy {
    fn to_json(&self) -> Value {
        json!({ "schedule_ms": self.schedule_ms })
    }
}

impl ToJson for pb::Endpoint {
    fn to_json(&self) -> Value {
        // Sorted, so the output is stable from one run to the next.
        let headers: BTreeMap<&str, &str> =
            self.headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        json!({
            "id": self.id,
            "owner_id": self.owner_id,
            "url": self.url,
            "description": self.description,
            "filter_types": self.filter_types,
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
            "rate_limit": self.rate_limit.to_json(),
            "max_in_flight": self.max_in_flight,
            "timeout_ms": self.timeout_ms,
            "retry_policy": self.retry_policy.to_json(),
            "headers": headers,
            "insecure": self.insecure,
            "body_signature": self.body_signature,
            "created_at": self.created_at.to_json(),
            "updated_at": self.updated_at.to_json(),
        })
    }
}

impl ToJson for pb::Delivery {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "event_id": self.event_id,
            "owner_id": self.owner_id,
            "endpoint_id": self.endpoint_id,
            "event_type": self.event_type,
            "status": enum_json(self.status, delivery_status_name(self.status)),
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at.to_json(),
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "created_at": self.created_at.to_json(),
            "updated_at": self.updated_at.to_json(),
            "delivered_at": self.delivered_at.to_json(),
            "agent": self.agent,
        })
    }
}

impl ToJson for pb::Attempt {
    fn to_json(&self) -> Value {
        json!({
            "delivery_id": self.delivery_id,
            "number": self.number,
            "started_at": self.started_at.to_json(),
            "duration_ms": self.duration_ms,
            "status_code": self.status_code,
            "error_class": self.error_class,
            "error": self.error,
            "response_snippet": self.response_snippet,
            "outcome": enum_json(self.outcome, attempt_outcome_name(self.outcome)),
            "reason": self.reason,
            "next_attempt_at": self.next_attempt_at.to_json(),
        })
    }
}

impl ToJson for pb::Agent {
    fn to_json(&self) -> Value {
        json!({
            "node_name": self.node_name,
            "agent_version": self.agent_version,
            "last_seen": self.last_seen.to_json(),
            "applied_version": self.applied_version,
            "last_error": self.last_error,
            "connected": self.connected,
            "queue_depth": self.queue_depth,
        })
    }
}

impl ToJson for pb::ListOwnersResponse {
    fn to_json(&self) -> Value {
        json!({ "owners": self.owners.to_json(), "next_page_token": self.next_page_token })
    }
}

impl ToJson for pb::ListEventTypesResponse {
    fn to_json(&self) -> Value {
        json!({ "event_types": self.event_types.to_json(), "next_page_token": self.next_page_token })
    }
}

impl ToJson for pb::CreateEndpointResponse {
    fn to_json(&self) -> Value {
        json!({ "endpoint": self.endpoint.to_json(), "secret": self.secret })
    }
}

impl ToJson for pb::RotateEndpointSecretResponse {
    fn to_json(&self) -> Value {
        json!({
            "endpoint": self.endpoint.to_json(),
            "secret": self.secret,
            "previous_secret_expires_at": self.previous_secret_expires_at.to_json(),
        })
    }
}

impl ToJson for pb::VerifyEndpointResponse {
    fn to_json(&self) -> Value {
        json!({ "endpoint": self.endpoint.to_json(), "duration_ms": self.duration_ms })
    }
}

impl ToJson for pb::ListEndpointsResponse {
    fn to_json(&self) -> Value {
        json!({ "endpoints": self.endpoints.to_json(), "next_page_token": self.next_page_token })
    }
}

impl ToJson for pb::ListDeliveriesResponse {
    fn to_json(&self) -> Value {
        json!({ "deliveries": self.deliveries.to_json(), "next_page_token": self.next_page_token })
    }
}

impl ToJson for pb::GetDeliveryResponse {
    fn to_json(&self) -> Value {
        json!({ "delivery": self.delivery.to_json(), "attempts": self.attempts.to_json() })
    }
}

impl ToJson for pb::ReplayDeliveryResponse {
    fn to_json(&self) -> Value {
        json!({ "delivery": self.delivery.to_json() })
    }
}

impl ToJson for pb::RecoverFailedResponse {
    fn to_json(&self) -> Value {
        json!({ "requested": self.requested, "skipped": self.skipped, "unreplayable": self.unreplayable })
    }
}

impl ToJson for pb::ListAgentsResponse {
    fn to_json(&self) -> Value {
        json!({ "agents": self.agents.to_json(), "config_version": self.config_version })
    }
}

impl ToJson for pb::EmitResponse {
    fn to_json(&self) -> Value {
        json!({ "id": self.id, "deliveries": self.deliveries, "duplicate": self.duplicate })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn endpoint_json_has_every_field_with_enum_names_and_rfc3339_times() {
        let endpoint = pb::Endpoint {
            id: "ep_1".into(),
            owner_id: "acme".into(),
            url: "https://acme.example/hooks".into(),
            filter_types: vec!["payment.*".into()],
            enabled: true,
            rate_limit: Some(pb::RateLimit { limit: 10, period: pb::RateLimitPeriod::Minute.into() }),
            retry_policy: Some(pb::RetryPolicy { schedule_ms: vec![50, 50] }),
            headers: HashMap::from([("x-b".into(), "2".into()), ("x-a".into(), "1".into())]),
            created_at: Some(prost_types::Timestamp { seconds: 1_767_225_600, nanos: 5_000_000 }),
            ..Default::default()
        };
        let value = endpoint.to_json();
        assert_eq!(value["rate_limit"], json!({ "limit": 10, "period": "RATE_LIMIT_PERIOD_MINUTE" }));
        assert_eq!(value["retry_policy"]["schedule_ms"], json!([50, 50]));
        assert_eq!(value["headers"], json!({ "x-a": "1", "x-b": "2" }));
        assert_eq!(value["created_at"], "2026-01-01T00:00:00.005Z");
        assert_eq!(value["updated_at"], Value::Null);
        assert_eq!(value["description"], "");
        assert_eq!(value["max_in_flight"], 0);
        assert_eq!(value.as_object().unwrap().len(), 16);
    }

    #[test]
    fn unknown_enum_values_print_as_numbers() {
        let delivery = pb::Delivery { status: pb::DeliveryStatus::Failed.into(), ..Default::default() };
        assert_eq!(delivery.to_json()["status"], "DELIVERY_STATUS_FAILED");
        let delivery = pb::Delivery { status: 42, ..Default::default() };
        assert_eq!(delivery.to_json()["status"], 42);
    }

    #[test]
    fn rotation_and_verification_answers() {
        let rotated = pb::RotateEndpointSecretResponse {
            endpoint: Some(pb::Endpoint { id: "ep_1".into(), ..Default::default() }),
            secret: "whsec_new".into(),
            previous_secret_expires_at: Some(prost_types::Timestamp { seconds: 1_767_225_600, nanos: 0 }),
        };
        let value = rotated.to_json();
        assert_eq!(value["secret"], "whsec_new");
        assert_eq!(value["previous_secret_expires_at"], "2026-01-01T00:00:00.000Z");
        assert_eq!(value["endpoint"]["id"], "ep_1");
        let verified = pb::VerifyEndpointResponse { endpoint: None, duration_ms: 7 };
        assert_eq!(verified.to_json(), json!({ "endpoint": null, "duration_ms": 7 }));
    }

    #[test]
    fn lists_keep_their_page_token() {
        let response = pb::ListOwnersResponse {
            owners: vec![pb::Owner { id: "acme".into(), ..Default::default() }],
            next_page_token: "next".into(),
        };
        let value = response.to_json();
        assert_eq!(value["owners"][0]["id"], "acme");
        assert_eq!(value["next_page_token"], "next");
    }
}
