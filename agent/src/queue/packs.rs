//! Event packs: the events one writer batch accepts, stored a few together under one key.
//!
//! sled keeps bookkeeping in memory for every page of the tree, evicted or not, and splits a leaf at 16 keys: a key
//! per event would cost memory for every queued event. Packs of up to [`PACK_BYTES`] hold several events per key. They
//! are written once and removed whole, not updated as their events' deliveries finish: rewriting a shared record
//! costs sled a fragment per write, which is what made idempotency buckets worse than a key per id. The one rewrite
//! is by retention: a pack past it that still holds an event with a pending delivery is rewritten with only such
//! events, so that one held delivery does not keep its neighbours' payloads.
//!
//! A pack is keyed by the last event seq it was written with (`keys::event_pack`; packs hold disjoint runs of seqs), so
//! the pack holding seq `s` is the first one at or after `keys::event_pack(s)` (a forward step, which sled does
//! cheaply), and packs sort by acceptance time like the events in them. Its value is a run of frames, `seq (8,
//! big-endian) | length (4, big-endian) | EventRecord`, seqs rising, so one event is read by skipping frames instead of
//! decoding the whole pack.
//!
//! The size bound keeps a full leaf (17 packs) under sled's blob threshold (a quarter of its 512 KiB segment), above
//! which every node write becomes a file of its own.

use super::records::EventRecord;
use super::{QueueError, decode, keys};

/// Size a pack is closed at (an event larger than this is a pack of its own).
pub(super) const PACK_BYTES: usize = 6 * 1024;

/// Events a pack holds at most, whatever their size.
const PACK_EVENTS: usize = 16;

/// Bytes of a frame's header: seq and length.
const FRAME_HEADER: usize = 12;

/// Packs the encoded events of one batch (seqs rising) into `(last seq, pack)` pairs.
pub(super) fn pack(events: Vec<(u64, Vec<u8>)>) -> Vec<(u64, Vec<u8>)> {
    let mut packs = Vec::new();
    let mut current = Vec::new();
    let mut in_current = 0;
    let mut last_seq = 0;
    for (seq, encoded) in events {
        let full = in_current == PACK_EVENTS || current.len() + FRAME_HEADER + encoded.len() > PACK_BYTES;
        if in_current > 0 && full {
            packs.push((last_seq, std::mem::take(&mut current)));
            in_current = 0;
        }
        push_frame(&mut current, seq, &encoded);
        in_current += 1;
        last_seq = seq;
    }
    if in_current > 0 {
        packs.push((last_seq, current));
    }
    packs
}

/// Appends one event's frame to a pack.
pub(super) fn push_frame(pack: &mut Vec<u8>, seq: u64, encoded: &[u8]) {
    pack.extend_from_slice(&seq.to_be_bytes());
    pack.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    pack.extend_from_slice(encoded);
}

/// The frames of a pack as `(seq, encoded event)`; an error names what is wrong with a damaged one.
pub(super) fn frames(pack: &[u8]) -> impl Iterator<Item = Result<(u64, &[u8]), &'static str>> {
    let mut rest = pack;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some((header, tail)) = rest.split_at_checked(FRAME_HEADER) else {
            rest = &[];
            return Some(Err("a frame header is cut short"));
        };
        let seq = u64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(header[8..].try_into().expect("4 bytes")) as usize;
        let Some((encoded, tail)) = tail.split_at_checked(len) else {
            rest = &[];
            return Some(Err("a frame is longer than the pack"));
        };
        rest = tail;
        Some(Ok((seq, encoded)))
    })
}

/// The pack with only the frames whose seq `keep` accepts.
pub(super) fn retain(key: &[u8], pack: &[u8], keep: impl Fn(u64) -> bool) -> Result<Vec<u8>, QueueError> {
    let mut kept = Vec::new();
    for frame in frames(pack) {
        let (seq, encoded) = frame.map_err(|reason| damaged(key, reason))?;
        if keep(seq) {
            push_frame(&mut kept, seq, encoded);
        }
    }
    Ok(kept)
}

/// The seqs of the events in a pack.
#[cfg(test)]
pub(super) fn seqs(key: &[u8], pack: &[u8]) -> Result<Vec<u64>, QueueError> {
    frames(pack).map(|frame| frame.map(|(seq, _)| seq).map_err(|reason| damaged(key, reason))).collect()
}

/// The event with this seq, if a pack in the tree holds it.
pub(super) fn read(tree: &sled::Tree, seq: u64) -> Result<Option<EventRecord>, QueueError> {
    let Some(entry) = tree.range(keys::event_pack(seq)..).next() else { return Ok(None) };
    let (key, pack) = entry?;
    if keys::parse_event_pack(&key).is_none() {
        return Ok(None);
    }
    for frame in frames(&pack) {
        let (frame_seq, encoded) = frame.map_err(|reason| damaged(&key, reason))?;
        if frame_seq == seq {
            return decode(&key, encoded).map(Some);
        }
        if frame_seq > seq {
            break;
        }
    }
    Ok(None)
}

/// A pack holding one encoded event: what an event record of the layout before packs becomes.
pub(super) fn single(seq: u64, encoded: &[u8]) -> Vec<u8> {
    let mut pack = Vec::with_capacity(FRAME_HEADER + encoded.len());
    push_frame(&mut pack, seq, encoded);
    pack
}

fn damaged(key: &[u8], reason: &'static str) -> QueueError {
    QueueError::DamagedPack { key: String::from_utf8_lossy(key).into_owned(), reason }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn encoded(id: &str, payload_len: usize) -> Vec<u8> {
        EventRecord { id: id.into(), payload: vec![b'x'; payload_len].into(), ..Default::default() }.encode_to_vec()
    }

    #[test]
    fn a_batch_is_packed_by_size_and_count_in_seq_order() {
        let small: Vec<_> = (1..=40).map(|seq| (seq, encoded(&format!("e{seq}"), 10))).collect();
        let packs = pack(small);
        assert_eq!(packs.iter().map(|(last, _)| *last).collect::<Vec<_>>(), [16, 32, 40]);
        let seqs: Vec<u64> =
            packs.iter().flat_map(|(last, pack)| seqs(&keys::event_pack(*last), pack).unwrap()).collect();
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>());

        let large: Vec<_> = (1..=7).map(|seq| (seq, encoded(&format!("e{seq}"), 1024))).collect();
        let packs = pack(large);
        assert!(packs.iter().all(|(_, pack)| pack.len() <= PACK_BYTES), "1 KiB events fill packs up to the bound");
        assert_eq!(packs.iter().map(|(last, _)| *last).collect::<Vec<_>>(), [5, 7]);

        let huge = pack(vec![(1, encoded("small", 10)), (2, encoded("huge", 3 * PACK_BYTES)), (3, encoded("s", 1))]);
        assert_eq!(huge.iter().map(|(last, _)| *last).collect::<Vec<_>>(), [1, 2, 3], "a large event packs alone");
    }

    #[test]
    fn one_event_is_read_from_its_pack_and_others_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let tree = sled::Config::new().path(dir.path()).open().unwrap().open_tree("queue").unwrap();
        for (last, pack) in pack((10..30).map(|seq| (seq * 2, encoded(&format!("e{seq}"), 900))).collect()) {
            tree.insert(keys::event_pack(last), pack).unwrap();
        }
        for seq in 10..30 {
            assert_eq!(read(&tree, seq * 2).unwrap().unwrap().id, format!("e{seq}"));
            assert!(read(&tree, seq * 2 + 1).unwrap().is_none(), "seq {} is in no pack", seq * 2 + 1);
        }
        assert!(read(&tree, 1).unwrap().is_none());
        assert!(read(&tree, 60).unwrap().is_none(), "past the last pack");
        tree.insert(keys::META_CONFIG, b"not a pack".to_vec()).unwrap();
        assert!(read(&tree, 60).unwrap().is_none(), "a key of another kind after the packs");
    }

    #[test]
    fn retaining_keeps_the_chosen_frames_in_order() {
        let (last, whole) = pack((1..=5).map(|seq| (seq, encoded(&format!("e{seq}"), 100))).collect()).remove(0);
        let key = keys::event_pack(last);
        let kept = retain(&key, &whole, |seq| seq % 2 == 1).unwrap();
        assert_eq!(seqs(&key, &kept).unwrap(), [1, 3, 5]);
        assert!(kept.len() < whole.len());
        assert_eq!(retain(&key, &whole, |_| true).unwrap(), whole);
        assert!(retain(&key, &whole[..whole.len() - 1], |_| true).is_err(), "a damaged pack is not rewritten");
    }

    #[test]
    fn a_damaged_pack_is_an_error_naming_the_damage() {
        let mut pack = single(5, &encoded("e", 3));
        pack.truncate(pack.len() - 1);
        let error = seqs(&keys::event_pack(5), &pack).unwrap_err();
        assert!(error.to_string().contains("a frame is longer than the pack"), "{error}");
        let error = seqs(&keys::event_pack(5), &pack[..5]).unwrap_err();
        assert!(error.to_string().contains("a frame header is cut short"), "{error}");
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_as_a_pack_end_the_frames_without_a_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            let frames: Vec<_> = frames(&bytes).collect();
            proptest::prop_assert!(frames.iter().filter(|frame| frame.is_err()).count() <= 1);
            proptest::prop_assert!(frames.last().is_none_or(|_| frames[..frames.len() - 1].iter().all(Result::is_ok)));
        }
    }
}
