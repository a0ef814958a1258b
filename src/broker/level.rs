//! One priority level of a queue: its ready messages in publish order,
//! the requeued ones merged back by `seq`, and the page-out of their
//! bodies to the log.

use std::collections::{BTreeMap, VecDeque};

use super::message::Message;
use super::queue::QueuedMessage;

/// The ready messages of one priority.
#[derive(Debug, Default)]
pub(super) struct Level {
    pub(super) ready: VecDeque<QueuedMessage>,
    /// Messages given back (nack, reject, channel close) waiting to be
    /// delivered again ahead of later publishes, ordered by `seq`.
    pub(super) requeued: BTreeMap<u64, QueuedMessage>,
    /// Messages of `ready` with a lower seq were looked at by page-out:
    /// they hold no body in memory, or are transient ones passed over.
    pub(super) cold_below: u64,
    /// Page-out passed over transient bodies below `cold_below`.
    pub(super) passed_transient: bool,
}

impl Level {
    pub(super) fn len(&self) -> usize {
        self.ready.len() + self.requeued.len()
    }

    pub(super) fn peek(&self) -> Option<&QueuedMessage> {
        match (self.requeued.values().next(), self.ready.front()) {
            (Some(r), Some(f)) => Some(if r.seq < f.seq { r } else { f }),
            (r, f) => r.or(f),
        }
    }

    pub(super) fn pop(&mut self) -> Option<QueuedMessage> {
        let take_requeued = match (self.requeued.keys().next(), self.ready.front()) {
            (Some(r), Some(f)) => *r < f.seq,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if take_requeued { self.requeued.pop_first().map(|(_, e)| e) } else { self.ready.pop_front() }
    }

    /// Messages in delivery order: requeued ones merged by `seq`.
    pub(super) fn in_order(&self) -> impl Iterator<Item = &QueuedMessage> {
        let mut requeued = self.requeued.values().peekable();
        let mut ready = self.ready.iter().peekable();
        std::iter::from_fn(move || match (requeued.peek(), ready.peek()) {
            (Some(r), Some(f)) if r.seq < f.seq => requeued.next(),
            (_, Some(_)) => ready.next(),
            (Some(_), None) => requeued.next(),
            (None, None) => None,
        })
    }

    pub(super) fn entry_mut(&mut self, seq: u64) -> Option<&mut QueuedMessage> {
        if self.requeued.contains_key(&seq) {
            return self.requeued.get_mut(&seq);
        }
        let index = self.ready.binary_search_by_key(&seq, |e| e.seq).ok()?;
        self.ready.get_mut(index)
    }

    pub(super) fn remove(&mut self, seq: u64, store_id: u64) -> Option<QueuedMessage> {
        if self.requeued.get(&seq).is_some_and(|e| e.store_id == store_id) {
            return self.requeued.remove(&seq);
        }
        let index = self.ready.binary_search_by_key(&seq, |e| e.seq).ok()?;
        if self.ready[index].store_id != store_id {
            return None;
        }
        self.ready.remove(index)
    }

    /// Drops bodies of `ready` older than the newest `window` once the log
    /// has them; returns how many bodies it dropped. With `spill`, bodies
    /// that are not in the log (transient messages) are first paged out to
    /// it; without, they are passed over (`passed_transient` then says a
    /// later spill must look below `cold_below` too).
    pub(super) fn page_out(
        &mut self,
        window: usize,
        is_written: &impl Fn(u64) -> bool,
        spill: Option<&mut Spill<'_>>,
    ) -> usize {
        let mut start = self.ready.partition_point(|e| e.seq < self.cold_below);
        let end = self.ready.len().saturating_sub(window);
        let spilling = spill.is_some();
        if let Some(spill) = spill {
            if std::mem::take(&mut self.passed_transient) {
                start = 0;
            }
            for entry in self.ready.range_mut(start.min(end)..end) {
                if entry.store_id == 0
                    && let Some(message) = &entry.message
                {
                    match spill(message) {
                        Some(id) => entry.store_id = id,
                        None => {
                            // Out of budget: the rest waits for the next
                            // pass, which must look below cold_below again
                            // if this one did.
                            self.passed_transient |= start == 0 && self.cold_below > 0;
                            break;
                        }
                    }
                }
            }
        }
        let mut dropped = 0;
        for index in start..end.max(start) {
            let entry = &mut self.ready[index];
            if entry.store_id != 0 {
                if !is_written(entry.store_id) {
                    break;
                }
                if entry.message.take().is_some() {
                    dropped += 1;
                }
            } else if entry.message.is_some() {
                if spilling {
                    break;
                }
                self.passed_transient = true;
            }
            self.cold_below = self.cold_below.max(entry.seq + 1);
        }
        dropped
    }
}

/// Pages one transient body out to the log; `None` when it cannot now.
pub type Spill<'a> = dyn FnMut(&Message) -> Option<u64> + 'a;
