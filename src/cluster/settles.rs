//! A quorum queue's settles (acknowledged messages leaving it), gathered
//! per group: one settle command in flight per group, carrying every
//! position acknowledged while the one before it was being committed.
//!
//! A consumer acking each message would otherwise cost one Raft entry per
//! ack, each appended, replicated, flushed and applied on every member:
//! the group's log would carry many more settles than enqueues (which are
//! gathered per connection, `server::replicated`). Settles commute (a
//! position leaves the queue whatever order they come in, and a second
//! settle of it changes nothing), so gathering them needs no ordering.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use parking_lot::Mutex;

/// The most positions one settle command carries (8 bytes each).
pub const MAX_SETTLE: usize = 1 << 16;

/// Per group with a settle being committed, the positions gathered
/// meanwhile.
#[derive(Default)]
pub struct SettleGathering {
    pending: Mutex<HashMap<u64, Vec<u64>>>,
}

impl SettleGathering {
    /// Hands `positions` of `group` over. Some(them) when no settle of the
    /// group is being committed: the caller commits them, then asks
    /// [`SettleGathering::next`] for what gathered meanwhile. None when
    /// one is: they go with the next.
    pub fn add(&self, group: u64, positions: Vec<u64>) -> Option<Vec<u64>> {
        match self.pending.lock().entry(group) {
            Entry::Occupied(mut gathering) => {
                gathering.get_mut().extend(positions);
                None
            }
            Entry::Vacant(idle) => {
                idle.insert(Vec::new());
                Some(positions)
            }
        }
    }

    /// After a settle of `group` was committed (or given up): the
    /// positions gathered meanwhile (at most [`MAX_SETTLE`]; the rest wait
    /// for the call after), for the caller to commit next; None when
    /// nothing gathered, and the group has no settle in flight any more.
    pub fn next(&self, group: u64) -> Option<Vec<u64>> {
        let mut pending = self.pending.lock();
        let gathered = pending.get_mut(&group)?;
        if gathered.is_empty() {
            pending.remove(&group);
            return None;
        }
        if gathered.len() <= MAX_SETTLE {
            return Some(std::mem::take(gathered));
        }
        Some(gathered.drain(..MAX_SETTLE).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settles_made_while_one_is_committed_go_together_in_the_next() {
        let gathering = SettleGathering::default();
        assert_eq!(gathering.add(7, vec![1]), Some(vec![1]));
        assert_eq!(gathering.add(7, vec![2]), None);
        assert_eq!(gathering.add(7, vec![3, 4]), None);
        // Another group is not held up by this one.
        assert_eq!(gathering.add(9, vec![10]), Some(vec![10]));
        assert_eq!(gathering.next(7), Some(vec![2, 3, 4]));
        assert_eq!(gathering.next(7), None);
        // Idle again: the next settle is committed at once.
        assert_eq!(gathering.add(7, vec![5]), Some(vec![5]));
        assert_eq!(gathering.next(9), None);
    }

    #[test]
    fn a_large_gathering_is_committed_in_bounded_commands() {
        let gathering = SettleGathering::default();
        assert!(gathering.add(1, vec![0]).is_some());
        assert!(gathering.add(1, (1..=(MAX_SETTLE as u64 + 5)).collect()).is_none());
        assert_eq!(gathering.next(1).map(|p| p.len()), Some(MAX_SETTLE));
        assert_eq!(gathering.next(1), Some((MAX_SETTLE as u64 + 1..=MAX_SETTLE as u64 + 5).collect::<Vec<_>>()));
        assert_eq!(gathering.next(1), None);
    }
}
