//! The messages of a classic queue (and, under its rules, of a quorum
//! queue: `broker::quorum`): ready messages in
//! one [`Level`] per priority, their counts, and the page-out of their
//! bodies. Its state is private; every change goes through a method that
//! keeps the counts, and the time is always given (`now`), never read.
//!
//! Its changes come in as commands ([`ClassicQueue::apply`], the
//! interface of `broker::queue_type`); what they ask of the world goes out
//! as effects: the deadline to arm, log records, dead letters. So this
//! type knows no thread, no log and no clock.

use std::sync::Arc;

use super::arguments::{Overflow, QueueArgs};
use super::dead_letter::Reason;
use super::level::{Level, Spill};
use super::message::Message;
use super::queue::{Enqueued, QueuedMessage, RestoredMeta};
use super::queue_type::{Command, Effects, Settle};

#[derive(Debug)]
pub struct ClassicQueue {
    /// Index = priority; one level without `x-max-priority`.
    levels: Vec<Level>,
    ready_len: usize,
    ready_bytes: usize,
    next_seq: u64,
    /// Ready messages whose body is on disk only (`message = None`).
    cold: usize,
    /// Ready messages with an expiry: without any, no head needs a look.
    timed: usize,
}

/// What offering a message did: taken or refused, what left the head to
/// make room, and the deadline its expiry needs.
#[derive(Debug)]
struct Offered {
    outcome: Enqueued,
    dropped: Vec<QueuedMessage>,
    deadline: Option<u64>,
}

/// The deadline of a message's expiry (`expires_at` is the expiry plus one).
fn deadline_of(expires_at: u64) -> Option<u64> {
    (expires_at != 0).then(|| expires_at - 1)
}

impl ClassicQueue {
    /// An empty queue with one level per priority up to `max_priority`.
    pub fn new(max_priority: Option<u8>) -> ClassicQueue {
        ClassicQueue {
            levels: (0..=max_priority.unwrap_or(0) as usize).map(|_| Level::default()).collect(),
            ready_len: 0,
            ready_bytes: 0,
            next_seq: 0,
            cold: 0,
            timed: 0,
        }
    }

    /// Applies one command (see `broker::queue_type`) at time `now`.
    // Inlined always: at a call site the command is known, and its arm
    // is all that is left (a call costed S4 about 4% of its CPU).
    #[inline(always)]
    pub fn apply(&mut self, args: &QueueArgs, command: Command, now: u64, fx: &mut Effects) {
        let dead_letter = args.dead_letter_exchange.is_some();
        match command {
            Command::Enqueue { message, store_id, trim_later } => {
                let offered = self.enqueue(args, message, store_id, now, trim_later);
                fx.rejected |= offered.outcome == Enqueued::Rejected;
                fx.arm(offered.deadline);
                fx.departed(dead_letter, offered.dropped, Reason::Maxlen);
            }
            Command::Checkout { settled } => {
                let Some(entry) = self.pop_ready() else { return };
                if settled {
                    fx.settled(&entry);
                } else if entry.store_id != 0 && !entry.redelivered {
                    fx.log_delivered.push(entry.store_id);
                }
                fx.taken = Some(entry);
            }
            Command::Settle { entry, how: Settle::Ack } => fx.settled(&entry),
            Command::Settle { entry, how: Settle::Requeue } => fx.arm(self.requeue(entry)),
            Command::Settle { entry, how: Settle::Discard } => fx.departed_one(dead_letter, entry, Reason::Rejected),
            Command::Return { entry, settled } => {
                fx.unmark(entry.store_id, settled);
                fx.arm(self.put_back(entry));
            }
            Command::Expire => {
                let expired = self.expire(now);
                fx.departed(dead_letter, expired, Reason::Expired);
            }
            Command::Trim => {
                let dropped = self.trim_to_limits(args);
                fx.departed(dead_letter, dropped, Reason::Maxlen);
            }
            Command::Purge => {
                let purged = self.purge();
                fx.removed += purged.len();
                purged.iter().for_each(|e| fx.settled(e));
            }
            Command::Remove { seq, store_id } => {
                if let Some(entry) = self.remove_ready(seq, store_id) {
                    fx.removed += 1;
                    fx.settled(&entry);
                }
            }
        }
    }

    pub fn ready_count(&self) -> usize {
        self.ready_len
    }

    pub fn ready_bytes(&self) -> usize {
        self.ready_bytes
    }

    /// The level a message of this priority waits in: priorities above
    /// the queue's maximum count as the maximum.
    pub fn level_of(&self, priority: u8) -> u8 {
        priority.min((self.levels.len() - 1) as u8)
    }

    fn is_full(&self, args: &QueueArgs, extra_bytes: usize) -> bool {
        let len_full = args.max_length.is_some_and(|max| self.ready_len >= max);
        let bytes_full = args.max_length_bytes.is_some_and(|max| self.ready_bytes + extra_bytes > max);
        len_full || bytes_full
    }

    /// Drops ready messages from the head while the queue is over a length
    /// limit it drops for (a limit lowered by a policy); returns them.
    fn trim_to_limits(&mut self, args: &QueueArgs) -> Vec<QueuedMessage> {
        let mut dropped = Vec::new();
        if matches!(args.overflow, Some(Overflow::RejectPublish | Overflow::RejectPublishDlx)) {
            return dropped;
        }
        while self.is_full(args, 0)
            && (args.max_length.is_some_and(|max| self.ready_len > max)
                || args.max_length_bytes.is_some_and(|max| self.ready_bytes > max))
        {
            match self.pop_ready() {
                Some(e) => dropped.push(e),
                None => break,
            }
        }
        dropped
    }

    /// Whether a message would be refused (x-overflow = reject-publish or
    /// reject-publish-dlx).
    pub fn would_reject(&self, args: &QueueArgs, size: usize) -> bool {
        matches!(args.overflow, Some(Overflow::RejectPublish | Overflow::RejectPublishDlx)) && self.is_full(args, size)
    }

    /// The broker-clock expiry (plus one; 0 for never) of a message
    /// published `age` ms before `now`.
    fn expiry(args: &QueueArgs, message_ttl: Option<u64>, now: u64, age: u64) -> u64 {
        // The shorter of the queue's TTL and the message's own expiration.
        let ttl = match (args.message_ttl, message_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ttl.map_or(0, |ttl| now.saturating_add(ttl.saturating_sub(age)).saturating_add(1))
    }

    /// Appends a newly published message, applying the length limits; the
    /// messages dropped from the head to make room are returned. With
    /// `trim_later` a drop-head limit is left to [`ClassicQueue::trim_to_limits`]
    /// after delivery, so that a waiting consumer still gets the message
    /// (as RabbitMQ delivers before it drops).
    fn enqueue(
        &mut self,
        args: &QueueArgs,
        message: Arc<Message>,
        store_id: u64,
        now: u64,
        trim_later: bool,
    ) -> Offered {
        let size = message.body_len();
        let expires_at = Self::expiry(args, message.expiration_ms, now, 0);
        let mut dropped = Vec::new();
        if self.would_reject(args, size) {
            return Offered { outcome: Enqueued::Rejected, dropped, deadline: None };
        }
        if self.is_full(args, size) && !trim_later {
            while self.is_full(args, size) {
                match self.pop_ready() {
                    Some(e) => dropped.push(e),
                    None => break,
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let level = self.level_of(message.priority);
        let entry = QueuedMessage {
            seq,
            store_id,
            message: Some(message),
            size: size as u32,
            redelivered: false,
            expires_at,
            level,
            delivery_count: 0,
        };
        if self.is_full(args, size) && !trim_later {
            // A message larger than x-max-length-bytes on its own, or
            // x-max-length = 0: it is dropped at once.
            dropped.push(entry);
            return Offered { outcome: Enqueued::Accepted, dropped, deadline: None };
        }
        self.ready_bytes += size;
        self.ready_len += 1;
        self.timed += (expires_at != 0) as usize;
        self.levels[level as usize].ready.push_back(entry);
        Offered { outcome: Enqueued::Accepted, dropped, deadline: deadline_of(expires_at) }
    }

    /// Appends a message recovered from the log (body on disk); TTLs count
    /// from its publish, `meta.age` ms before `now`. Returns the deadline
    /// its expiry needs.
    pub fn restore(&mut self, args: &QueueArgs, store_id: u64, meta: RestoredMeta, now: u64) -> Option<u64> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready_bytes += meta.size as usize;
        self.ready_len += 1;
        self.cold += 1;
        let level = self.level_of(meta.priority);
        let expires_at = Self::expiry(args, meta.expiration_ms, now, meta.age);
        self.timed += (expires_at != 0) as usize;
        let l = &mut self.levels[level as usize];
        l.cold_below = seq + 1;
        l.ready.push_back(QueuedMessage {
            seq,
            store_id,
            message: None,
            size: meta.size,
            redelivered: meta.redelivered,
            expires_at,
            level,
            delivery_count: meta.redelivered as u32,
        });
        deadline_of(expires_at)
    }

    /// Drops the expired messages at the head of each level, as RabbitMQ
    /// does (a message behind one that lives longer waits for it); returns
    /// them so the log can forget them.
    fn expire(&mut self, now: u64) -> Vec<QueuedMessage> {
        let mut expired = Vec::new();
        if self.timed == 0 {
            return expired;
        }
        for index in 0..self.levels.len() {
            loop {
                match self.levels[index].peek() {
                    // expires_at is the expiry plus one (0 = never).
                    Some(e) if e.expires_at != 0 && now + 1 >= e.expires_at => {}
                    _ => break,
                }
                match self.levels[index].pop() {
                    Some(e) => {
                        self.taken(&e);
                        expired.push(e);
                    }
                    None => break,
                }
            }
        }
        expired
    }

    /// The earliest expiry among the heads (broker clock).
    pub fn next_expiry(&self) -> Option<u64> {
        if self.timed == 0 {
            return None;
        }
        self.levels.iter().filter_map(|l| l.peek()).map(|e| e.expires_at).filter(|at| *at != 0).min().map(|at| at - 1)
    }

    /// Drops the bodies of ready messages older than the newest `window`
    /// of their level, once the log has written them (`is_written`); with
    /// `spill` (memory pressure) transient bodies are paged out to the log
    /// first. Only the level a message was just published to grows, so
    /// only it is looked at (`level`); None looks at every level.
    pub fn page_out(
        &mut self,
        level: Option<u8>,
        window: usize,
        is_written: impl Fn(u64) -> bool,
        mut spill: Option<&mut Spill<'_>>,
    ) {
        let levels = match level {
            Some(l) => {
                let l = (l as usize).min(self.levels.len() - 1);
                l..l + 1
            }
            None => 0..self.levels.len(),
        };
        for l in levels {
            self.cold += self.levels[l].page_out(window, &is_written, spill.as_deref_mut());
        }
    }

    /// Puts a message that was delivered back at its original place,
    /// flagged redelivered; returns the deadline its expiry needs.
    fn requeue(&mut self, mut entry: QueuedMessage) -> Option<u64> {
        entry.redelivered = true;
        self.put_back(entry)
    }

    /// Puts a message taken from the queue but never delivered back at its
    /// place; returns the deadline its expiry needs.
    fn put_back(&mut self, entry: QueuedMessage) -> Option<u64> {
        if entry.message.is_none() {
            self.cold += 1;
        }
        self.ready_bytes += entry.size as usize;
        self.ready_len += 1;
        self.timed += (entry.expires_at != 0) as usize;
        let deadline = deadline_of(entry.expires_at);
        let level = (entry.level as usize).min(self.levels.len() - 1);
        self.levels[level].requeued.insert(entry.seq, entry);
        deadline
    }

    /// Store ids of every ready message.
    pub fn store_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.levels
            .iter()
            .flat_map(|l| l.ready.iter().chain(l.requeued.values()))
            .filter(|e| e.store_id != 0)
            .map(|e| e.store_id)
    }

    /// The message [`ClassicQueue::pop_ready`] would take next.
    pub fn peek_ready(&self) -> Option<&QueuedMessage> {
        self.levels.iter().rev().find_map(Level::peek)
    }

    /// Whether some ready message holds no body in memory.
    pub fn has_cold(&self) -> bool {
        self.cold > 0
    }

    /// The next messages to read back from the log, as (seq, store id):
    /// the first ones without a body in delivery order, up to `max` or
    /// `max_bytes`; none when `warm_enough` messages with a body come first
    /// (consumers have enough to go on).
    pub fn cold_ahead(&self, warm_enough: usize, max: usize, max_bytes: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if self.cold == 0 {
            return out;
        }
        let mut warm = 0;
        let mut bytes = 0;
        for entry in self.levels.iter().rev().flat_map(Level::in_order) {
            if entry.message.is_some() {
                if out.is_empty() {
                    warm += 1;
                    if warm >= warm_enough {
                        break;
                    }
                }
                continue;
            }
            out.push((entry.seq, entry.store_id));
            bytes += entry.size as usize;
            if out.len() >= max || bytes >= max_bytes {
                break;
            }
        }
        out
    }

    /// Gives a ready message read back from the log its body again.
    pub fn attach(&mut self, seq: u64, store_id: u64, message: Arc<Message>) {
        let entry = self.levels.iter_mut().rev().find_map(|l| l.entry_mut(seq));
        if let Some(entry) = entry.filter(|e| e.store_id == store_id && e.message.is_none()) {
            entry.message = Some(message);
            self.cold = self.cold.saturating_sub(1);
        }
    }

    /// Bookkeeping for a message that left the ready list.
    fn taken(&mut self, entry: &QueuedMessage) {
        self.ready_bytes -= entry.size as usize;
        self.ready_len -= 1;
        self.timed -= (entry.expires_at != 0) as usize;
        if entry.message.is_none() {
            self.cold = self.cold.saturating_sub(1);
        }
    }

    /// Every ready message, by level (the lowest priority first).
    pub fn ready_entries(&self) -> impl Iterator<Item = &QueuedMessage> {
        self.levels.iter().flat_map(|l| l.ready.iter().chain(l.requeued.values()))
    }

    /// The next message enqueued or restored gets `seq` (a replicated
    /// quorum queue's position, which only grows).
    pub fn place_next(&mut self, seq: u64) {
        self.next_seq = seq;
    }

    /// The log record of the ready message `seq`, if the queue holds it.
    pub fn store_id_at(&mut self, seq: u64) -> Option<u64> {
        self.levels.iter_mut().rev().find_map(|l| l.entry_mut(seq)).map(|e| e.store_id)
    }

    /// Takes a ready message out of the queue wherever it is (one whose
    /// body cannot be read back).
    fn remove_ready(&mut self, seq: u64, store_id: u64) -> Option<QueuedMessage> {
        let entry = self.levels.iter_mut().rev().find_map(|l| l.remove(seq, store_id))?;
        self.taken(&entry);
        Some(entry)
    }

    /// The next message to deliver: the highest priority first, requeued
    /// ones before later publishes of their priority.
    fn pop_ready(&mut self) -> Option<QueuedMessage> {
        let entry = self.levels.iter_mut().rev().find(|l| l.len() > 0)?.pop()?;
        self.taken(&entry);
        Some(entry)
    }

    /// Drops every ready message; returns them.
    fn purge(&mut self) -> Vec<QueuedMessage> {
        let mut all = Vec::with_capacity(self.ready_len);
        for level in &mut self.levels {
            all.extend(level.ready.drain(..));
            all.extend(std::mem::take(&mut level.requeued).into_values());
        }
        self.ready_bytes = 0;
        self.ready_len = 0;
        self.cold = 0;
        self.timed = 0;
        all
    }
}
