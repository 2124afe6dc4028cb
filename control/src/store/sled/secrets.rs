//! Signing secrets at rest. Each is sealed with XChaCha20-Poly1305 under the master key
//! ([`hookrelay_common::sealed`]) and bound to its endpoint id, so a sealed secret moved onto another endpoint does
//! not open. The endpoint's other fields stay readable, so get and list never decrypt anything. Each secret carries
//! its expiry in the clear (0 for the primary): rotation adds a new primary and gives the previous one an expiry;
//! [`Store::expire_secrets`](crate::store::Store::expire_secrets) drops secrets past it.
//!
//! Opening the store checks the key against `master_key_check` (written on first open), so a wrong key stops
//! control at startup instead of failing every snapshot. Records written before secrets were sealed hold them in
//! plaintext (field 2, as `pb::AgentEndpoint` has them); opening seals them.

use hookrelay_common::proto::v1 as pb;
use hookrelay_common::sealed::MasterKey;
use prost::Message;
use sled::{Batch, Tree};

use super::decode;
use crate::error::{Error, Result};

/// The key in `meta` of the master key's check value.
pub(super) const KEY_CHECK_KEY: &[u8] = b"master_key_check";

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

/// Every record of the `endpoints` tree; one without an endpoint is corrupt.
pub(super) fn all_endpoints(endpoints: &Tree) -> Result<Vec<StoredEndpoint>> {
    endpoints
        .iter()
        .map(|entry| {
            let (key, value) = entry?;
            let what = || format!("endpoint {}", String::from_utf8_lossy(&key));
            let stored: StoredEndpoint = decode(&value, what)?;
            if stored.endpoint.is_none() {
                return Err(Error::Corrupt { what: what(), reason: "the record has no endpoint".into() });
            }
            Ok(stored)
        })
        .collect()
}

/// Checks `key` against the check value in `meta`, or stores one on first open.
pub(super) fn check_master_key(meta: &Tree, key: &MasterKey) -> Result<()> {
    match meta.get(KEY_CHECK_KEY)? {
        Some(check) => key.verify_check_value(&check).map_err(|_| Error::WrongMasterKey),
        None => {
            meta.insert(KEY_CHECK_KEY, key.check_value())?;
            Ok(())
        }
    }
}

/// Seals, under `key`, the plaintext secrets that records from before sealing still hold. Agents see no change, so
/// the config version stays.
pub(super) fn seal_legacy_secrets(endpoints: &Tree, key: &MasterKey) -> Result<()> {
    let mut batch = Batch::default();
    let mut sealed = 0usize;
    for stored in all_endpoints(endpoints)? {
        if stored.legacy_secrets.is_empty() {
            continue;
        }
        let id = stored.fields().id.clone();
        let mut secrets: Vec<StoredSecret> = stored
            .legacy_secrets
            .iter()
            .map(|text| StoredSecret { sealed: key.seal(text.as_bytes(), &secret_context(&id)), expires_at_ms: 0 })
            .collect();
        secrets.extend(stored.secrets);
        let record = StoredEndpoint { endpoint: stored.endpoint, legacy_secrets: Vec::new(), secrets };
        batch.insert(id.as_bytes(), record.encode_to_vec());
        sealed += 1;
    }
    if sealed > 0 {
        endpoints.apply_batch(batch)?;
        tracing::info!(
            endpoints = sealed,
            "sealed the plaintext signing secrets of endpoints stored by an earlier version"
        );
    }
    Ok(())
}
