//! Secrets sealed at rest: XChaCha20-Poly1305 under a 32-byte master key.
//!
//! A sealed value is `nonce (24 random bytes) || ciphertext || tag (16 bytes)`. The random 192-bit nonce makes
//! reuse under one key negligible without a counter to persist. Every seal names its *context* (authenticated
//! but not encrypted, e.g. `endpoint-secret/ep_…`), so a sealed value copied onto another record does not open.
//!
//! A store sealed under one key keeps a [`MasterKey::check_value`]; [`MasterKey::verify_check_value`] at startup
//! turns a wrong key into a clear error instead of secrets that decrypt to nothing (or signatures nobody accepts).
//!
//! Key material is given as base64 of 32 bytes, in an environment variable or a file ([`MasterKey::read_file`]);
//! [`MasterKey::create_file`] writes a fresh one with mode 0600, for development setups that have none.

use std::fmt;
use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use subtle::ConstantTimeEq;

/// Bytes of a master key.
pub const MASTER_KEY_LEN: usize = 32;
/// Bytes of the random nonce that starts every sealed value.
pub const NONCE_LEN: usize = 24;
/// Bytes of the authentication tag that ends every sealed value.
pub const TAG_LEN: usize = 16;
/// The context of the key check value.
const CHECK_CONTEXT: &[u8] = b"hookrelay/master-key-check/v1";
/// The plaintext of the key check value.
const CHECK_PLAINTEXT: &[u8] = b"hookrelay master key check";

/// Why a key could not be loaded or a sealed value could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The key text is not base64 of 32 bytes.
    #[error("master key must be base64 of {MASTER_KEY_LEN} bytes: {0}")]
    MalformedKey(String),
    /// The sealed value is shorter than a nonce and a tag.
    #[error("sealed value is {0} bytes long, shorter than a nonce and a tag")]
    Truncated(usize),
    /// Authentication failed: the value was changed, belongs to another context, or was sealed under another key.
    #[error("sealed value does not open: tampered with, moved from another record, or sealed under another key")]
    Unauthentic,
    /// The key does not open the store's check value.
    #[error("the master key is not the one this data was sealed with")]
    WrongKey,
    /// Reading or writing a key file failed.
    #[error("key file {path}: {message}")]
    File {
        /// The key file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// A 32-byte master key. Its `Debug` never shows the key; equality is checked in constant time.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; MASTER_KEY_LEN],
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut key = [0u8; MASTER_KEY_LEN];
        rand::rng().fill_bytes(&mut key);
        Self { key }
    }

    /// A key from exactly [`MASTER_KEY_LEN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let key = <[u8; MASTER_KEY_LEN]>::try_from(bytes)
            .map_err(|_| SealError::MalformedKey(format!("got {} bytes", bytes.len())))?;
        Ok(Self { key })
    }

    /// A key from its base64 text (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let bytes = BASE64.decode(text.trim()).map_err(|error| SealError::MalformedKey(error.to_string()))?;
        Self::from_bytes(&bytes)
    }

    /// The key as base64 text, for writing a key file. Never log it.
    pub fn expose_base64(&self) -> String {
        BASE64.encode(self.key)
    }

    /// Reads a key file holding base64 text (or, failing that, exactly 32 raw bytes).
    pub fn read_file(path: &Path) -> Result<Self, SealError> {
        let file_error = |message: String| SealError::File { path: path.display().to_string(), message };
        let bytes = std::fs::read(path).map_err(|error| file_error(error.to_string()))?;
        match std::str::from_utf8(&bytes).map_err(|_| ()).and_then(|text| Self::from_base64(text).map_err(|_| ())) {
            Ok(key) => Ok(key),
            Err(()) if bytes.len() == MASTER_KEY_LEN => Self::from_bytes(&bytes),
            Err(()) => Err(file_error(format!(
                "expected base64 of {MASTER_KEY_LEN} bytes (e.g. `head -c 32 /dev/urandom | base64`)"
            ))),
        }
    }

    /// Writes a fresh key to a new file (mode 0600 on unix); fails if the file exists.
    pub fn create_file(path: &Path) -> Result<Self, SealError> {
        let file_error =
            |error: std::io::Error| SealError::File { path: path.display().to_string(), message: error.to_string() };
        let key = Self::generate();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(file_error)?;
        file.write_all(format!("{}\n", key.expose_base64()).as_bytes()).map_err(file_error)?;
        file.sync_all().map_err(file_error)?;
        Ok(key)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new_from_slice(&self.key).expect("the key has the cipher's length")
    }

    /// Encrypts `plaintext` bound to `context`: a fresh random nonce followed by the ciphertext and tag.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher()
            .encrypt(&XNonce::from(nonce), Payload { msg: plaintext, aad: context })
            .expect("encryption of an in-memory buffer cannot fail");
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Decrypts a value [`seal`](Self::seal)ed under this key with the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Truncated(sealed.len()));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).expect("split at the nonce length");
        self.cipher().decrypt(&nonce, Payload { msg: ciphertext, aad: context }).map_err(|_| SealError::Unauthentic)
    }

    /// A value to store beside sealed data, so that [`verify_check_value`](Self::verify_check_value) can tell later
    /// whether a key is the one the data was sealed under.
    pub fn check_value(&self) -> Vec<u8> {
        self.seal(CHECK_PLAINTEXT, CHECK_CONTEXT)
    }

    /// Whether this key made `check_value`; [`SealError::WrongKey`] if not.
    pub fn verify_check_value(&self, check_value: &[u8]) -> Result<(), SealError> {
        match self.open(check_value, CHECK_CONTEXT) {
            Ok(plaintext) if plaintext == CHECK_PLAINTEXT => Ok(()),
            _ => Err(SealError::WrongKey),
        }
    }
}

impl PartialEq for MasterKey {
    fn eq(&self, other: &Self) -> bool {
        self.key.ct_eq(&other.key).into()
    }
}

impl Eq for MasterKey {}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_with_a_fresh_nonce_each_time() {
        let key = MasterKey::generate();
        let first = key.seal(b"whsec_abc", b"endpoint-secret/ep_1");
        let second = key.seal(b"whsec_abc", b"endpoint-secret/ep_1");
        assert_ne!(first, second, "nonces are random");
        assert_eq!(first.len(), NONCE_LEN + 9 + TAG_LEN);
        assert!(!first.windows(9).any(|window| window == b"whsec_abc"), "the plaintext does not show");
        assert_eq!(key.open(&first, b"endpoint-secret/ep_1").unwrap(), b"whsec_abc");
        assert_eq!(key.open(&second, b"endpoint-secret/ep_1").unwrap(), b"whsec_abc");
    }

    #[test]
    fn every_tampered_byte_is_detected() {
        let key = MasterKey::generate();
        let sealed = key.seal(b"whsec_abc", b"ctx");
        // Nonce, ciphertext and tag alike: one flipped bit anywhere refuses the whole value.
        for index in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[index] ^= 0x01;
            assert_eq!(key.open(&tampered, b"ctx"), Err(SealError::Unauthentic), "byte {index}");
        }
        assert_eq!(key.open(&sealed[..NONCE_LEN + TAG_LEN - 1], b"ctx"), Err(SealError::Truncated(39)));
        let mut extended = sealed.clone();
        extended.push(0);
        assert_eq!(key.open(&extended, b"ctx"), Err(SealError::Unauthentic));
    }

    #[test]
    fn values_are_bound_to_their_context_and_key() {
        let key = MasterKey::generate();
        let sealed = key.seal(b"whsec_abc", b"endpoint-secret/ep_1");
        assert_eq!(key.open(&sealed, b"endpoint-secret/ep_2"), Err(SealError::Unauthentic));
        assert_eq!(MasterKey::generate().open(&sealed, b"endpoint-secret/ep_1"), Err(SealError::Unauthentic));
    }

    #[test]
    fn the_check_value_tells_the_right_key_from_a_wrong_one() {
        let key = MasterKey::generate();
        let check = key.check_value();
        key.verify_check_value(&check).unwrap();
        assert_eq!(MasterKey::generate().verify_check_value(&check), Err(SealError::WrongKey));
        assert_eq!(key.verify_check_value(b"garbage"), Err(SealError::WrongKey));
        // A value sealed for another context is not a check value even under the right key.
        assert_eq!(key.verify_check_value(&key.seal(CHECK_PLAINTEXT, b"other")), Err(SealError::WrongKey));
    }

    #[test]
    fn keys_parse_from_base64_and_stay_redacted() {
        let key = MasterKey::generate();
        let text = key.expose_base64();
        assert_eq!(MasterKey::from_base64(&format!("  {text}\n")).unwrap(), key);
        assert_eq!(format!("{key:?}"), "MasterKey([redacted])");
        assert!(!format!("{key:?}").contains(&text));
        assert!(matches!(MasterKey::from_base64("c2hvcnQ="), Err(SealError::MalformedKey(_))));
        assert!(matches!(MasterKey::from_base64("not base64!"), Err(SealError::MalformedKey(_))));
        assert_ne!(MasterKey::generate(), key);
    }

    #[test]
    fn key_files_are_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let key = MasterKey::create_file(&path).unwrap();
        assert_eq!(MasterKey::read_file(&path).unwrap(), key);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // Never overwritten.
        assert!(matches!(MasterKey::create_file(&path), Err(SealError::File { .. })));

        let raw = dir.path().join("raw.key");
        std::fs::write(&raw, [7u8; MASTER_KEY_LEN]).unwrap();
        assert_eq!(MasterKey::read_file(&raw).unwrap(), MasterKey::from_bytes(&[7u8; MASTER_KEY_LEN]).unwrap());
        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "hunter2").unwrap();
        let error = MasterKey::read_file(&bad).unwrap_err().to_string();
        assert!(error.contains("expected base64 of 32 bytes"), "{error}");
        assert!(!error.contains("hunter2"), "the file's content is never echoed: {error}");
        assert!(matches!(MasterKey::read_file(&dir.path().join("missing")), Err(SealError::File { .. })));
    }
}
