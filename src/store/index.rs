//! The message index: where each live message's record is, by message id.
//!
//! It is updated under the log's lock for every publish and every ack, so
//! its cost is part of the serial cost of a message. Ids are handed out in
//! log order and most messages live briefly, so the index keeps the recent
//! ids in a ring with one slot per id (no hashing, no probing: a publish
//! writes the next slot, an ack clears one and the ring's front moves past
//! the cleared ones). A message that outlives [`RING_SPAN`] newer ids moves
//! to a hash map, so one message left in a queue for days costs one map
//! entry, not a slot for every id since.

use std::collections::VecDeque;

use super::state::{IdMap, Loc};

/// Ids the ring spans at most: a slot is an `Option<Loc>` (20 bytes),
/// 1.3 MiB in all.
pub const RING_SPAN: usize = 1 << 16;

#[derive(Debug, Default)]
pub struct MessageIndex {
    /// The id of `ring[0]`.
    base: u64,
    ring: VecDeque<Option<Loc>>,
    /// Live ids below `base`.
    old: IdMap<Loc>,
}

impl MessageIndex {
    pub fn get(&self, id: u64) -> Option<&Loc> {
        match self.slot(id) {
            Some(i) => self.ring[i].as_ref(),
            None => self.old.get(&id),
        }
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Loc> {
        match self.slot(id) {
            Some(i) => self.ring[i].as_mut(),
            None => self.old.get_mut(&id),
        }
    }

    /// Sets where `id` is (a new message, or one compaction moved).
    pub fn insert(&mut self, id: u64, loc: Loc) {
        if self.ring.is_empty() {
            self.base = id;
        }
        if id < self.base {
            self.old.insert(id, loc);
            return;
        }
        let end = self.base + self.ring.len() as u64;
        if id >= end.saturating_add(RING_SPAN as u64) {
            // Far past the ring (ids skipped in bulk, as after a replay):
            // start the ring over at `id` rather than walk the gap.
            self.retire_front(self.ring.len());
            self.base = id;
        }
        let at = (id - self.base) as usize;
        if at == self.ring.len() {
            // The next id, as nearly every append is.
            self.ring.push_back(Some(loc));
        } else {
            if at > self.ring.len() {
                self.ring.resize(at, None);
                self.ring.push_back(Some(loc));
            } else {
                self.ring[at] = Some(loc);
            }
        }
        if self.ring.len() > RING_SPAN {
            self.retire_front(self.ring.len() - RING_SPAN);
        }
    }

    pub fn remove(&mut self, id: u64) -> Option<Loc> {
        let Some(i) = self.slot(id) else { return self.old.remove(&id) };
        let loc = self.ring[i].take();
        // The front moves past what is settled.
        while self.ring.front().is_some_and(Option::is_none) {
            self.ring.pop_front();
            self.base += 1;
        }
        loc
    }

    /// Live messages indexed (a scan of the ring: for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ring.iter().filter(|l| l.is_some()).count() + self.old.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, id: u64) -> Option<usize> {
        let at = id.checked_sub(self.base)?;
        (at < self.ring.len() as u64).then_some(at as usize)
    }

    /// Moves the first `count` slots of the ring to the map.
    fn retire_front(&mut self, count: usize) {
        for _ in 0..count {
            if let Some(Some(loc)) = self.ring.pop_front() {
                self.old.insert(self.base, loc);
            }
            self.base += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn loc(n: u64) -> Loc {
        Loc { segment: n as u32, offset: (n * 7) as u32, len: 100, queue: 1, delivered: false }
    }

    #[test]
    fn a_long_lived_message_moves_to_the_map_and_the_ring_stays_bounded() {
        let mut index = MessageIndex::default();
        index.insert(0, loc(0));
        for id in 1..(3 * RING_SPAN as u64) {
            index.insert(id, loc(id));
            index.remove(id);
        }
        assert!(index.ring.len() <= RING_SPAN, "ring of {} slots", index.ring.len());
        assert_eq!(index.get(0).map(|l| l.offset), Some(0));
        assert_eq!(index.len(), 1);
        assert_eq!(index.remove(0).map(|l| l.segment), Some(0));
        assert!(index.is_empty());
    }

    #[test]
    fn a_jump_far_ahead_keeps_what_was_live() {
        let mut index = MessageIndex::default();
        index.insert(5, loc(5));
        index.insert(10_000_000, loc(6));
        assert_eq!(index.get(5).map(|l| l.segment), Some(5));
        assert_eq!(index.get(10_000_000).map(|l| l.segment), Some(6));
        assert!(index.ring.len() <= 2);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// The next id (publish).
        Publish,
        /// An id at this distance behind the newest (ack).
        Remove(u64),
        /// Move a live id (compaction).
        Relocate(u64),
        /// Skip this many ids.
        Skip(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Publish),
            4 => (0u64..200).prop_map(Op::Remove),
            1 => (0u64..200).prop_map(Op::Relocate),
            1 => prop_oneof![0u64..50, 60_000u64..140_000].prop_map(Op::Skip),
        ]
    }

    proptest! {
        /// The index answers as a plain map of the same inserts and removes.
        #[test]
        fn behaves_as_a_map(ops in proptest::collection::vec(op(), 1..400)) {
            let mut index = MessageIndex::default();
            let mut model: std::collections::HashMap<u64, Loc> = Default::default();
            let mut next = 0u64;
            for op in ops {
                match op {
                    Op::Publish => {
                        index.insert(next, loc(next));
                        model.insert(next, loc(next));
                        next += 1;
                    }
                    Op::Remove(back) => {
                        let id = next.saturating_sub(back + 1);
                        prop_assert_eq!(index.remove(id).map(|l| l.offset), model.remove(&id).map(|l| l.offset));
                    }
                    Op::Relocate(back) => {
                        let id = next.saturating_sub(back + 1);
                        if model.contains_key(&id) {
                            let moved = Loc { segment: 999, ..loc(id) };
                            index.insert(id, moved);
                            model.insert(id, moved);
                        }
                    }
                    Op::Skip(n) => next += n,
                }
                prop_assert!(index.ring.len() <= RING_SPAN);
            }
            prop_assert_eq!(index.len(), model.len());
            for (id, l) in &model {
                prop_assert_eq!(index.get(*id).map(|x| (x.segment, x.offset)), Some((l.segment, l.offset)));
            }
        }
    }
}
