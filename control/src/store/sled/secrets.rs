//! Signing secrets at rest in sled: the endpoints tree holds [`StoredEndpoint`] records (sealed as
//! [`crate::store::secrets`] describes).
//!
//! Opening the store checks the key against `master_key_check` (written on first open), so a wrong key stops
//! control at startup instead of failing every snapshot. Records written before secrets were sealed hold them in
//! plaintext (field 2, as `pb::AgentEndpoint` has them); opening seals them.

use hookrelay_common::sealed::MasterKey;
use prost::Message;
use sled::{Batch, Tree};

use super::decode;
use crate::error::{Error, Result};
use crate::store::secrets::{StoredEndpoint, StoredSecret, secret_context};

/// The key in `meta` of the master key's check value.
pub(super) const KEY_CHECK_KEY: &[u8] = b"master_key_check";

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
