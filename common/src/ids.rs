//! Prefixed, time-ordered identifiers: `ep_…` for endpoints, `dlv_…` for deliveries, `rpt_…` for attempt reports and
//! `evt_…` for event ids the agent assigns. The part after the prefix is a UUIDv7 in lowercase hex, so ids sort by
//! creation time and a time range maps to a key range.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An id that does not have the expected prefix and shape.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{value:?} is not a valid {kind} id (expected {prefix}_ followed by 32 lowercase hex digits)")]
pub struct IdError {
    kind: &'static str,
    prefix: &'static str,
    value: String,
}

const HEX_LEN: usize = 32;

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The prefix before the underscore.
            pub const PREFIX: &'static str = $prefix;

            /// A new id stamped with the current time.
            pub fn generate() -> Self {
                Self(format!("{}_{}", $prefix, Uuid::now_v7().simple()))
            }

            /// Parses an id, checking its prefix and shape.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                let valid = value
                    .strip_prefix(concat!($prefix, "_"))
                    .is_some_and(|hex| {
                        hex.len() == HEX_LEN && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                    });
                if valid {
                    Ok(Self(value.to_owned()))
                } else {
                    Err(IdError { kind: $kind, prefix: $prefix, value: truncate(value) })
                }
            }

            /// The smallest id that can be generated at or after `ms` (unix milliseconds).
            pub fn lower_bound_at(ms: u64) -> String {
                format!("{}_{:012x}{}", $prefix, ms & 0xffff_ffff_ffff, "0".repeat(HEX_LEN - 12))
            }

            /// Unix milliseconds at which the id was generated.
            pub fn created_at_ms(&self) -> u64 {
                u64::from_str_radix(&self.0[$prefix.len() + 1..$prefix.len() + 13], 16).unwrap_or(0)
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }
    };
}

prefixed_id!(
    /// Identifies an endpoint.
    EndpointId, "ep", "endpoint"
);
prefixed_id!(
    /// Identifies one event's delivery to one endpoint.
    DeliveryId, "dlv", "delivery"
);
prefixed_id!(
    /// Identifies one attempt report sent from an agent to control.
    ReportId, "rpt", "report"
);
prefixed_id!(
    /// An event id assigned by the agent when the emitter gave none.
    EventId, "evt", "event"
);

fn truncate(value: &str) -> String {
    value.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_sort_by_time() {
        let first = DeliveryId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = DeliveryId::generate();
        assert!(first < second);
        assert_eq!(DeliveryId::parse(first.as_str()), Ok(first.clone()));
        let now = crate::time::now_ms();
        assert!(now.abs_diff(second.created_at_ms()) < 5_000);
        assert!(DeliveryId::lower_bound_at(first.created_at_ms()).as_str() <= first.as_str());
        assert!(DeliveryId::lower_bound_at(second.created_at_ms() + 1).as_str() > second.as_str());
    }

    #[test]
    fn rejects_wrong_prefix_and_shape() {
        let endpoint = EndpointId::generate();
        assert!(DeliveryId::parse(endpoint.as_str()).is_err());
        assert!(EndpointId::parse("ep_123").is_err());
        assert!(EndpointId::parse(&endpoint.as_str().to_uppercase()).is_err());
        let message = EndpointId::parse("nope").unwrap_err().to_string();
        assert!(message.contains("not a valid endpoint id"), "{message}");
    }
}
