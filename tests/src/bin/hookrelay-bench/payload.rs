//! Event payloads of a given size that carry their emit time, and reading it back cheaply at the receiver.

use std::time::{SystemTime, UNIX_EPOCH};

const PREFIX: &[u8] = br#"{"emit_us":"#;

/// Unix time in microseconds.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// `{"emit_us":<now>,"seq":<seq>,"pad":"xxx…"}`, padded to `size` bytes (or minimal if `size` is smaller).
pub fn make(seq: usize, size: usize) -> Vec<u8> {
    let head = format!(r#"{{"emit_us":{},"seq":{seq},"pad":""#, now_us());
    let pad = size.saturating_sub(head.len() + 2);
    let mut body = Vec::with_capacity(head.len() + pad + 2);
    body.extend_from_slice(head.as_bytes());
    body.resize(head.len() + pad, b'x');
    body.extend_from_slice(b"\"}");
    body
}

/// The `emit_us` of a payload made by [`make`].
pub fn emit_us(body: &[u8]) -> Option<u64> {
    let digits = body.strip_prefix(PREFIX)?;
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_size_and_carry_the_time() {
        let body = make(7, 1024);
        assert_eq!(body.len(), 1024);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["seq"], 7);
        assert_eq!(emit_us(&body), value["emit_us"].as_u64());
        assert!(make(1, 10).len() > 10);
    }
}
