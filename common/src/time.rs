//! Wall-clock time as unix milliseconds, and its conversion to and from protobuf timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

/// A protobuf timestamp for unix milliseconds.
pub fn to_timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// An optional protobuf timestamp: `None` for 0, which the model uses for "not set".
pub fn to_opt_timestamp(ms: u64) -> Option<prost_types::Timestamp> {
    (ms != 0).then(|| to_timestamp(ms))
}

/// Unix milliseconds of a protobuf timestamp; `None` before the epoch or out of range.
pub fn from_timestamp(ts: &prost_types::Timestamp) -> Option<u64> {
    if ts.seconds < 0 || !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    (ts.seconds as u64).checked_mul(1000)?.checked_add(ts.nanos as u64 / 1_000_000)
}

/// Unix milliseconds of an optional timestamp, 0 when unset or invalid.
pub fn opt_ms(ts: Option<&prost_types::Timestamp>) -> u64 {
    ts.and_then(from_timestamp).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_milliseconds() {
        let ms = 1_764_000_000_123;
        assert_eq!(from_timestamp(&to_timestamp(ms)), Some(ms));
        assert_eq!(to_opt_timestamp(0), None);
        assert_eq!(from_timestamp(&prost_types::Timestamp { seconds: -1, nanos: 0 }), None);
    }
}
