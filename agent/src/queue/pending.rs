//! Which events still have pending deliveries: what the retention sweep asks before it removes a payload.
//!
//! Nearly every event fans out to one endpoint, and event seqs are dense in time (`accepted ms << 16 | counter`),
//! so a compressed bitmap holds the events with at least one pending delivery and a map holds only the deliveries
//! beyond the first: a few bytes per event, where a `HashMap<u64, u32>` of every pending event costs tens of bytes.

use std::collections::HashMap;

use roaring::RoaringTreemap;

/// Pending deliveries per event seq.
#[derive(Debug, Default)]
pub(super) struct PendingEvents {
    /// Events with at least one pending delivery.
    events: RoaringTreemap,
    /// Pending deliveries beyond the first, for events that have more than one.
    extra: HashMap<u64, u32>,
}

impl PendingEvents {
    /// Counts `deliveries` more pending deliveries of `seq`.
    pub(super) fn add(&mut self, seq: u64, deliveries: u32) {
        if deliveries == 0 {
            return;
        }
        let beyond_first = if self.events.insert(seq) { deliveries - 1 } else { deliveries };
        if beyond_first > 0 {
            *self.extra.entry(seq).or_insert(0) += beyond_first;
        }
    }

    /// Counts `deliveries` of `seq` as finished; more than it has pending removes the event.
    pub(super) fn finish(&mut self, seq: u64, deliveries: u32) {
        if deliveries == 0 {
            return;
        }
        match self.extra.get_mut(&seq) {
            Some(extra) if *extra >= deliveries => {
                *extra -= deliveries;
                if *extra == 0 {
                    self.extra.remove(&seq);
                }
            }
            _ => {
                self.extra.remove(&seq);
                self.events.remove(seq);
            }
        }
    }

    /// Whether any delivery of `seq` is pending.
    pub(super) fn contains(&self, seq: u64) -> bool {
        self.events.contains(seq)
    }

    /// How many events have pending deliveries.
    #[cfg(test)]
    pub(super) fn len(&self) -> u64 {
        self.events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stays_pending_until_its_last_delivery_finishes() {
        let mut pending = PendingEvents::default();
        pending.add(7, 1);
        pending.add(9, 3);
        pending.add(9, 1);
        assert_eq!(pending.len(), 2);

        pending.finish(7, 1);
        assert!(!pending.contains(7));
        for left in (1..4).rev() {
            pending.finish(9, 1);
            assert!(pending.contains(9), "{left} deliveries of 9 still pending");
        }
        pending.finish(9, 1);
        assert!(!pending.contains(9));
        assert!(pending.extra.is_empty());
        assert_eq!(pending.len(), 0);
    }

    #[test]
    fn finishing_more_than_pending_or_nothing_is_harmless() {
        let mut pending = PendingEvents::default();
        pending.add(1, 2);
        pending.finish(1, 5);
        assert!(!pending.contains(1));
        assert!(pending.extra.is_empty());

        pending.finish(2, 1);
        pending.add(3, 0);
        pending.finish(3, 0);
        assert_eq!(pending.len(), 0);
    }

    #[test]
    fn matches_a_plain_counter_map_on_a_mixed_sequence() {
        let mut pending = PendingEvents::default();
        let mut model: HashMap<u64, u32> = HashMap::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let seq = (1_700_000_000_000u64 << 16) | (state % 64);
            let deliveries = ((state >> 8) % 3) as u32 + 1;
            if (state >> 16).is_multiple_of(2) {
                pending.add(seq, deliveries);
                *model.entry(seq).or_insert(0) += deliveries;
            } else {
                pending.finish(seq, deliveries);
                if let Some(count) = model.get_mut(&seq) {
                    *count = count.saturating_sub(deliveries);
                    if *count == 0 {
                        model.remove(&seq);
                    }
                }
            }
            assert_eq!(pending.contains(seq), model.contains_key(&seq));
        }
        assert_eq!(pending.len(), model.len() as u64);
    }
}
