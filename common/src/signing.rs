//! Standard Webhooks signing: secrets (`whsec_<base64 of 32 bytes>`), the `webhook-signature` header
//! (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, space-separated when several secrets are valid), the
//! optional `x-hookrelay-signature: sha256=<hex HMAC of the body>`, and verification in constant time.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of every signing secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of key material in a generated secret.
pub const SECRET_LEN: usize = 32;
/// How far a `webhook-timestamp` may be from now for [`verify`] to accept it.
pub const DEFAULT_TOLERANCE_SECS: u64 = 5 * 60;

/// Why signing or verification failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningError {
    /// The secret does not start with `whsec_` or is not base64.
    #[error("secret must be whsec_ followed by base64 key bytes")]
    MalformedSecret,
    /// The secret decodes to too few bytes to be safe.
    #[error("secret key must be at least 24 bytes, got {0}")]
    ShortSecret(usize),
    /// `webhook-timestamp` is not a number.
    #[error("webhook-timestamp is not a unix timestamp")]
    MalformedTimestamp,
    /// `webhook-timestamp` is outside the tolerance.
    #[error("webhook-timestamp is {0}s away from now, more than the tolerance")]
    StaleTimestamp(u64),
    /// No signature in the header matched.
    #[error("no matching signature")]
    NoMatch,
}

/// A signing secret. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

impl Secret {
    /// A fresh secret of [`SECRET_LEN`] random bytes.
    pub fn generate() -> Self {
        let mut key = vec![0u8; SECRET_LEN];
        rand::rng().fill_bytes(&mut key);
        Self { key }
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, SigningError> {
        let encoded = text.strip_prefix(SECRET_PREFIX).ok_or(SigningError::MalformedSecret)?;
        let key = BASE64.decode(encoded).map_err(|_| SigningError::MalformedSecret)?;
        if key.len() < 24 {
            return Err(SigningError::ShortSecret(key.len()));
        }
        Ok(Self { key })
    }

    /// The secret in its `whsec_` text form. Only control's create/rotate answers and the config stream carry it.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(&self.key))
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Signs messages with one or more secrets, keeping each keyed HMAC state so a signature costs no key setup.
#[derive(Clone)]
pub struct Signer {
    macs: Vec<HmacSha256>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({} secrets, [redacted])", self.macs.len())
    }
}

impl Signer {
    /// A signer for these secrets, primary first.
    pub fn new(secrets: &[Secret]) -> Self {
        Self { macs: secrets.iter().map(Secret::mac).collect() }
    }

    /// The `webhook-signature` value: one `v1,<base64>` per secret, space-separated.
    pub fn webhook_signature(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut header = String::with_capacity(self.macs.len() * 48);
        for (index, mac) in self.macs.iter().enumerate() {
            if index > 0 {
                header.push(' ');
            }
            let mut mac = mac.clone();
            mac.update(msg_id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            header.push_str("v1,");
            BASE64.encode_string(mac.finalize().into_bytes(), &mut header);
        }
        header
    }

    /// The `x-hookrelay-signature` value, `sha256=<hex HMAC of the body>` under the primary secret.
    pub fn body_signature(&self, body: &[u8]) -> Option<String> {
        let mut mac = self.macs.first()?.clone();
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let mut header = String::with_capacity(7 + digest.len() * 2);
        header.push_str("sha256=");
        for byte in digest {
            header.push(char::from_digit(u32::from(byte >> 4), 16).expect("nibble"));
            header.push(char::from_digit(u32::from(byte & 0xf), 16).expect("nibble"));
        }
        Some(header)
    }
}

/// Checks a Standard Webhooks request as a receiver would: the timestamp is within `tolerance_secs` of `now_secs`,
/// and one of the header's `v1` signatures matches `secret` (compared in constant time).
pub fn verify(
    secret: &Secret,
    msg_id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: u64,
) -> Result<(), SigningError> {
    let timestamp: i64 = timestamp.trim().parse().map_err(|_| SigningError::MalformedTimestamp)?;
    let skew = now_secs.abs_diff(timestamp);
    if skew > tolerance_secs {
        return Err(SigningError::StaleTimestamp(skew));
    }
    let expected = Signer::new(std::slice::from_ref(secret)).webhook_signature(msg_id, timestamp, body);
    let expected = expected.strip_prefix("v1,").expect("signer writes v1").as_bytes();
    let matched = signature_header
        .split_whitespace()
        .filter_map(|candidate| candidate.strip_prefix("v1,"))
        .any(|candidate| bool::from(candidate.as_bytes().ct_eq(expected)));
    if matched { Ok(()) } else { Err(SigningError::NoMatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks specification.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn matches_the_specification_example() {
        let secret = Secret::parse(SPEC_SECRET).unwrap();
        let signature =
            Signer::new(std::slice::from_ref(&secret)).webhook_signature(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY);
        assert_eq!(signature, SPEC_SIGNATURE);
        verify(&secret, SPEC_ID, "1614265330", SPEC_SIGNATURE, SPEC_BODY, SPEC_TIMESTAMP, 300).unwrap();
    }

    #[test]
    fn verifies_any_of_several_signatures() {
        let old = Secret::generate();
        let new = Secret::generate();
        let header = Signer::new(&[new.clone(), old.clone()]).webhook_signature("evt_1", 1000, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        verify(&old, "evt_1", "1000", &header, b"{}", 1000, 300).unwrap();
        verify(&new, "evt_1", "1000", &header, b"{}", 1000, 300).unwrap();
        let stranger = Secret::generate();
        assert_eq!(verify(&stranger, "evt_1", "1000", &header, b"{}", 1000, 300), Err(SigningError::NoMatch));
    }

    #[test]
    fn refuses_tampering_and_stale_timestamps() {
        let secret = Secret::generate();
        let header = Signer::new(std::slice::from_ref(&secret)).webhook_signature("evt_1", 1000, b"{}");
        assert_eq!(verify(&secret, "evt_1", "1000", &header, b"{ }", 1000, 300), Err(SigningError::NoMatch));
        assert_eq!(verify(&secret, "evt_2", "1000", &header, b"{}", 1000, 300), Err(SigningError::NoMatch));
        assert_eq!(
            verify(&secret, "evt_1", "1000", &header, b"{}", 1000 + 301, 300),
            Err(SigningError::StaleTimestamp(301))
        );
        assert_eq!(verify(&secret, "evt_1", "soon", &header, b"{}", 1000, 300), Err(SigningError::MalformedTimestamp));
    }

    #[test]
    fn secrets_round_trip_and_stay_redacted() {
        let secret = Secret::generate();
        let text = secret.expose();
        assert!(text.starts_with(SECRET_PREFIX));
        assert_eq!(Secret::parse(&text).unwrap(), secret);
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert!(!format!("{:?}", Signer::new(&[secret])).contains(&text[6..]));
        assert_eq!(Secret::parse("whsec_!!"), Err(SigningError::MalformedSecret));
        assert_eq!(Secret::parse("whsec_AAAA"), Err(SigningError::ShortSecret(3)));
    }

    #[test]
    fn body_signature_is_hex_hmac() {
        let secret = Secret::parse(SPEC_SECRET).unwrap();
        let header = Signer::new(&[secret]).body_signature(b"hello").unwrap();
        assert!(header.starts_with("sha256="));
        assert_eq!(header.len(), 7 + 64);
    }
}
