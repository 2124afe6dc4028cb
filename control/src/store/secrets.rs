//! Signing secrets at rest, the same for every backend. Each is sealed with XChaCha20-Poly1305 under the master key
//! ([`hookrelay_common::sealed`]) and bound to its endpoint id, so a sealed secret moved onto another endpoint does
//! not open. The endpoint's other fields stay readable, so get and list never decrypt anything. Each secret carries
//! its expiry in the clear (0 for the primary): rotation adds a new primary and gives the previous one an expiry;
//! [`Store::expire_secrets`](crate::store::Store::expire_secrets) drops secrets past it.

use hookrelay_common::proto::v1 as pb;
use hookrelay_common::sealed::MasterKey;

use super::MAX_SECRETS_PER_ENDPOINT;
use crate::error::{Error, Result};

/// An endpoint as stored: its fields in the clear, its secrets sealed.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StoredEndpoint {
    #[prost(message, optional, tag = "1")]
    pub(super) endpoint: Option<pb::Endpoint>,
    /// Plaintext secrets of records written before secrets were sealed (where `pb::AgentEndpoint` has its
    /// `secrets`); sealed into `secrets` and cleared when the store opens.
    #[prost(string, repeated, tag = "2")]
    pub(super) legacy_secrets: Vec<String>,
    /// Primary first, then the previous ones still in their overlap, newest first.
    #[prost(message, repeated, tag = "3")]
    pub(super) secrets: Vec<StoredSecret>,
}

/// One sealed signing secret.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StoredSecret {
    /// The `whsec_` text sealed under the master key, bound to the endpoint id ([`secret_context`]).
    #[prost(bytes = "vec", tag = "1")]
    pub(super) sealed: Vec<u8>,
    /// When the secret stops being valid (unix ms); 0 for the primary, which does not expire.
    #[prost(uint64, tag = "2")]
    pub(super) expires_at_ms: u64,
}

impl StoredEndpoint {
    pub(super) fn fields(&self) -> &pb::Endpoint {
        self.endpoint.as_ref().expect("records without an endpoint are refused when read")
    }

    /// Seals `secrets` (text and expiry) under `key` for the endpoint `fields`.
    pub(super) fn seal(key: &MasterKey, fields: pb::Endpoint, secrets: &[(String, u64)]) -> Self {
        let context = secret_context(&fields.id);
        let secrets = secrets
            .iter()
            .map(|(text, expires_at_ms)| StoredSecret {
                sealed: key.seal(text.as_bytes(), &context),
                expires_at_ms: *expires_at_ms,
            })
            .collect();
        StoredEndpoint { endpoint: Some(fields), legacy_secrets: Vec::new(), secrets }
    }

    /// The endpoint with `secret` as its primary at `now`: the previous primary stays valid until
    /// `previous_expires_at_ms`, earlier ones keep their expiry, and those already past it go now rather than at the
    /// expiry timer's next turn. `FAILED_PRECONDITION` when it holds [`MAX_SECRETS_PER_ENDPOINT`] valid secrets.
    pub(super) fn rotated(
        mut self,
        key: &MasterKey,
        secret: String,
        previous_expires_at_ms: u64,
        now: u64,
    ) -> Result<Self> {
        self.secrets.retain(|old| old.expires_at_ms == 0 || old.expires_at_ms > now);
        if self.secrets.len() >= MAX_SECRETS_PER_ENDPOINT {
            let next = self.secrets.iter().map(|old| old.expires_at_ms).filter(|&at| at != 0).min().unwrap_or(now);
            return Err(Error::FailedPrecondition(format!(
                "endpoint {} already has {} valid secrets, the most allowed ({MAX_SECRETS_PER_ENDPOINT}); the \
                 oldest expires at {}",
                self.fields().id,
                self.secrets.len(),
                jiff::Timestamp::from_millisecond(i64::try_from(next).unwrap_or(i64::MAX))
                    .map_or_else(|_| format!("{next} ms"), |at| at.to_string())
            )));
        }
        for old in &mut self.secrets {
            if old.expires_at_ms == 0 {
                old.expires_at_ms = previous_expires_at_ms;
            }
        }
        let mut fields = self.fields().clone();
        fields.updated_at = Some(hookrelay_common::time::to_timestamp(now));
        let fresh = Self::seal(key, fields, &[(secret, 0)]);
        let secrets = fresh.secrets.into_iter().chain(self.secrets).collect();
        Ok(Self { endpoint: fresh.endpoint, legacy_secrets: Vec::new(), secrets })
    }

    /// The endpoint as agents see it: its fields and its secrets in the clear, primary first.
    pub(super) fn agent_view(&self, key: &MasterKey) -> Result<pb::AgentEndpoint> {
        let fields = self.fields();
        let context = secret_context(&fields.id);
        let secrets = self
            .secrets
            .iter()
            .map(|secret| {
                let text = key.open(&secret.sealed, &context).map_err(|error| Error::Corrupt {
                    what: format!("signing secret of endpoint {}", fields.id),
                    reason: error.to_string(),
                })?;
                String::from_utf8(text).map_err(|_| Error::Corrupt {
                    what: format!("signing secret of endpoint {}", fields.id),
                    reason: "not UTF-8".into(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(pb::AgentEndpoint { endpoint: Some(fields.clone()), secrets })
    }
}

/// What a sealed secret is bound to: a sealed secret copied onto another endpoint does not open.
pub(super) fn secret_context(endpoint_id: &str) -> Vec<u8> {
    format!("hookrelay/endpoint-secret/v1/{endpoint_id}").into_bytes()
}
