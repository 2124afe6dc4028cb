//! The queue's stored records and delivery keys on hostile bytes (a corrupted or foreign sled tree): decoding must
//! fail cleanly or give a record that encodes and decodes back to itself.
#![no_main]

use hookrelay_agent::queue::keys::{group, parse_group};
use hookrelay_agent::queue::records::{DedupRecord, DeliveryGroup, DeliveryRecord, EventRecord};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let Ok(record) = M::decode(data) else { return };
    let encoded = record.encode_to_vec();
    let again = M::decode(encoded.as_slice()).expect("a re-encoded record does not decode");
    assert_eq!(again, record, "record changed on a round trip");
    // Canonical encoding is stable.
    assert_eq!(again.encode_to_vec(), encoded, "encoding is not stable");
}

fuzz_target!(|data: &[u8]| {
    round_trip::<EventRecord>(data);
    round_trip::<DeliveryRecord>(data);
    round_trip::<DeliveryGroup>(data);
    round_trip::<DedupRecord>(data);
    if let Some(key) = parse_group(data) {
        // A key that parses is exactly the key its parts build.
        assert_eq!(group(&key.endpoint_id, key.due_ms, key.seq), data, "{key:?} does not rebuild its key");
    }
});
