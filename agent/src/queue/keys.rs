//! Encoding of the queue tree's keys. Every key starts with a one-byte kind so one tree (and so one atomic batch)
//! holds everything; numbers are big-endian so that byte order is numeric order.

/// `p` + the last event seq in it (8 bytes): an event pack, several [`super::records::EventRecord`]s (see
/// `super::packs`). Event seqs are `accepted ms << 16 | counter`, so packs sort by acceptance time and old ones are a
/// key range from the start.
pub const EVENT_PACK: u8 = b'p';
/// `e` + event seq (8 bytes): one [`super::records::EventRecord`], the layout of agents before event packs; the
/// queue moves such records into packs of one when it opens.
pub const LEGACY_EVENT: u8 = b'e';
/// `x` + delivery id: a finished delivery's record, kept for replay by agents before replays carried `payload_ref`;
/// the retention sweep removes what is left of them.
pub const LEGACY_FINISHED: u8 = b'x';
/// `g` + endpoint id + `0x00` + due ms (8) + group seq (8): a [`super::records::DeliveryGroup`]. A group holding one
/// rescheduled delivery has that delivery's seq as its group seq.
pub const GROUP: u8 = b'g';
/// `d` + endpoint id + `0x00` + due ms (8) + delivery seq (8): one [`super::records::DeliveryRecord`], the layout of
/// agents before delivery groups; the queue moves such records into groups when it opens.
pub const LEGACY_DELIVERY: u8 = b'd';
/// `k` + owner + `0x00` + event id: a [`super::records::DedupRecord`].
pub const DEDUP: u8 = b'k';
/// `r` + report seq (8): a [`super::records::SpooledReports`] waiting for control's acknowledgement.
pub const REPORT: u8 = b'r';
/// `m` + name: agent metadata, such as the last applied config.
pub const META: u8 = b'm';

/// Key of the cached config snapshot.
pub const META_CONFIG: &[u8] = b"mconfig";
/// Key of the [`super::records::FailingSince`] record: when each failing endpoint's run of failures began.
pub const META_FAILING: &[u8] = b"mfailing";
/// Key the writer writes and flushes after reopening failed storage, to learn that the disk takes writes again.
pub const META_PROBE: &[u8] = b"mprobe";

/// The key of the event pack whose last event has this seq.
pub fn event_pack(last_seq: u64) -> [u8; 9] {
    seq_key(EVENT_PACK, last_seq)
}

/// The last event seq of an event pack's key; `None` for any other key.
pub fn parse_event_pack(key: &[u8]) -> Option<u64> {
    parse_seq_key(EVENT_PACK, key)
}

/// The key of an event record of the layout before packs.
pub fn legacy_event(seq: u64) -> [u8; 9] {
    seq_key(LEGACY_EVENT, seq)
}

/// The seq of a legacy event record's key; `None` for any other key.
pub fn parse_legacy_event(key: &[u8]) -> Option<u64> {
    parse_seq_key(LEGACY_EVENT, key)
}

fn seq_key(kind: u8, seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = kind;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn parse_seq_key(kind: u8, key: &[u8]) -> Option<u64> {
    let seq = key.strip_prefix(&[kind])?;
    Some(u64::from_be_bytes(seq.try_into().ok()?))
}

/// Bits of an event seq below its millisecond timestamp.
pub const EVENT_SEQ_COUNTER_BITS: u32 = 16;

/// When the event with this seq was accepted, in unix ms.
pub fn event_accepted_ms(seq: u64) -> u64 {
    seq >> EVENT_SEQ_COUNTER_BITS
}

/// The key prefix of one endpoint's delivery groups.
pub fn group_prefix(endpoint_id: &str) -> Vec<u8> {
    scheduled_prefix(GROUP, endpoint_id)
}

/// The key of a delivery group due at `due_ms`.
pub fn group(endpoint_id: &str, due_ms: u64, seq: u64) -> Vec<u8> {
    let mut key = group_prefix(endpoint_id);
    key.extend_from_slice(&due_ms.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn scheduled_prefix(kind: u8, endpoint_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(endpoint_id.len() + 18);
    key.push(kind);
    key.extend_from_slice(endpoint_id.as_bytes());
    key.push(0);
    key
}

/// The parts of a group key (or of a legacy delivery key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledKey {
    pub endpoint_id: String,
    pub due_ms: u64,
    pub seq: u64,
}

/// Splits a group key; `None` if it is not one.
pub fn parse_group(key: &[u8]) -> Option<ScheduledKey> {
    parse_scheduled(GROUP, key)
}

/// Splits a legacy delivery key; `None` if it is not one.
pub fn parse_legacy_delivery(key: &[u8]) -> Option<ScheduledKey> {
    parse_scheduled(LEGACY_DELIVERY, key)
}

fn parse_scheduled(kind: u8, key: &[u8]) -> Option<ScheduledKey> {
    let rest = key.strip_prefix(&[kind])?;
    if rest.len() < 17 {
        return None;
    }
    let (endpoint, tail) = rest.split_at(rest.len() - 17);
    if tail[0] != 0 {
        return None;
    }
    Some(ScheduledKey {
        endpoint_id: String::from_utf8(endpoint.to_vec()).ok()?,
        due_ms: u64::from_be_bytes(tail[1..9].try_into().ok()?),
        seq: u64::from_be_bytes(tail[9..17].try_into().ok()?),
    })
}

/// The key of an idempotency record.
pub fn dedup(owner: &str, event_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(owner.len() + event_id.len() + 2);
    key.push(DEDUP);
    key.extend_from_slice(owner.as_bytes());
    key.push(0);
    key.extend_from_slice(event_id.as_bytes());
    key
}

/// The key of a record of spooled reports.
pub fn report(seq: u64) -> [u8; 9] {
    seq_key(REPORT, seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_keys_round_trip_and_sort_by_due_time() {
        let early = group("ep_a", 10, 99);
        let late = group("ep_a", 11, 1);
        assert!(early < late);
        assert!(early.starts_with(&group_prefix("ep_a")));
        assert_eq!(parse_group(&early), Some(ScheduledKey { endpoint_id: "ep_a".into(), due_ms: 10, seq: 99 }));
        assert_eq!(parse_group(b"g"), None);
        assert_eq!(parse_group(&event_pack(1)), None);
        assert_eq!(parse_legacy_delivery(&early), None);
    }

    #[test]
    fn pack_keys_round_trip_and_sort_by_seq() {
        assert!(event_pack(255) < event_pack(256));
        assert_eq!(parse_event_pack(&event_pack(256)), Some(256));
        assert_eq!(parse_event_pack(&legacy_event(256)), None);
        assert_eq!(parse_legacy_event(&legacy_event(7)), Some(7));
        assert_eq!(parse_event_pack(b"p123"), None);
    }
}
