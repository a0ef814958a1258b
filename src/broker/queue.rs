//! A queue: its ready messages, its consumers, and the arguments it was
//! declared with.
//!
//! Ready messages live in one [`Level`] per message priority (one level for
//! a queue without `x-max-priority`): delivery takes the highest level that
//! has a message, and within a level publish order, with requeued messages
//! back at the place their `seq` gives them.

use std::collections::VecDeque;
use std::sync::Arc;

use super::arguments::{ConsumerArgs, Overflow, QueueArgs};
use super::deadlines::{TimerHandle, TimerKey};
use super::level::Level;
pub use super::level::Spill;
use super::message::{ConnectionHandle, Message};
use crate::protocol::FieldTable;
use crate::store::SPILL_QUEUE;

/// One message in one queue. `seq` is the queue's own publish counter: a
/// requeued message goes back to the place its `seq` gives it.
///
/// A persistent message in a durable queue has a `store_id`; its body may
/// then be dropped from memory (`message = None`) and read back from the log
/// when it is delivered.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub seq: u64,
    /// Id in the write-ahead log; 0 when the message is not stored.
    pub store_id: u64,
    pub message: Option<Arc<Message>>,
    /// Body length, kept for `x-max-length-bytes` when the body is on disk.
    pub size: u32,
    pub redelivered: bool,
    /// Broker clock ([`now_ms`]) at which the message expires, plus one; 0
    /// for never.
    pub expires_at: u64,
    /// The priority level the message waits in (0 in a plain queue).
    pub level: u8,
    /// Times the message was handed out and came back (the quorum queue's
    /// `x-delivery-count`).
    pub delivery_count: u32,
}

static CLOCK_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Milliseconds on the broker's monotonic clock, for message TTLs.
pub fn now_ms() -> u64 {
    CLOCK_START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// The instant a broker-clock time (ms) stands for, for sleeping until it.
pub fn instant_of(ms: u64) -> std::time::Instant {
    *CLOCK_START.get_or_init(std::time::Instant::now) + std::time::Duration::from_millis(ms)
}

/// How many of the newest ready messages of a durable queue's level keep
/// their body in memory; older ones are read back from the log when delivered.
pub const HOT_WINDOW: usize = 512;

#[derive(Debug)]
pub struct Consumer {
    pub tag: Arc<str>,
    pub connection: ConnectionHandle,
    pub channel: u16,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Per-consumer limit from basic.qos(global=false); 0 = none.
    pub prefetch: u16,
    pub unacked: u32,
    pub args: ConsumerArgs,
    /// Whether it receives messages: false for the waiting consumers of a
    /// single-active-consumer queue.
    pub active: bool,
    /// A stream consumer's cursor.
    pub stream: Option<Box<super::stream::StreamCursor>>,
}

#[derive(Debug)]
pub struct Queue {
    pub name: Arc<str>,
    /// The virtual host the queue lives in.
    pub vhost: Arc<str>,
    pub durable: bool,
    /// Id in the write-ahead log, for durable queues.
    pub store_id: Option<u32>,
    /// Unique per queue the broker ever created (names are reused).
    pub incarnation: u64,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    pub args: QueueArgs,
    /// Index = priority; one level without `x-max-priority`.
    levels: Vec<Level>,
    ready_len: usize,
    ready_bytes: usize,
    next_seq: u64,
    /// Ready messages whose body is on disk only (`message = None`).
    cold: usize,
    /// Ready messages with an expiry: without any, no head needs a look.
    timed: usize,
    /// Bodies are being read back from the log for this queue.
    pub loading: bool,
    /// How many messages were asked of the loader and not yet taken: while
    /// enough of them are ahead of consumers, no read-ahead scan is needed.
    pub read_ahead_upto: u64,
    pub consumers: VecDeque<Consumer>,
    /// Delivered to a consumer or basic.get and not yet settled.
    pub unacked: usize,
    /// An auto-delete queue goes away when its last consumer does, but only
    /// once it has had one.
    pub had_consumer: bool,
    /// Broker clock of the last use (declare, consume, get) for `x-expires`.
    pub last_used: u64,
    /// The policy and operator policy that apply, by name.
    pub policy: Option<String>,
    pub operator_policy: Option<String>,
    /// Message counters for the statistics (see `stats`).
    pub counters: super::stats::QueueCounters,
    /// The retained messages of a stream (`x-queue-type=stream`).
    pub stream: Option<Box<super::stream::Stream>>,
    /// The broker's deadlines, armed for message expiries and `x-expires`
    /// (none in a queue not yet attached: it arms nothing).
    timer: Option<TimerHandle>,
    /// The deadline this queue has armed (0: none).
    timer_at: u64,
}

/// The outcome of offering a message to a queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued {
    Accepted,
    /// x-overflow = reject-publish and the queue is full.
    Rejected,
}

impl Queue {
    pub fn new(
        vhost: Arc<str>,
        name: &str,
        durable: bool,
        exclusive_owner: Option<u64>,
        auto_delete: bool,
        arguments: FieldTable,
        args: QueueArgs,
    ) -> Self {
        let levels = (0..=args.max_priority.unwrap_or(0) as usize).map(|_| Level::default()).collect();
        let stream = (args.queue_type == super::QueueType::Stream).then(Box::default);
        Queue {
            name: Arc::from(name),
            vhost,
            durable,
            store_id: None,
            incarnation: 0,
            exclusive_owner,
            auto_delete,
            arguments,
            args,
            levels,
            ready_len: 0,
            ready_bytes: 0,
            next_seq: 0,
            cold: 0,
            timed: 0,
            loading: false,
            read_ahead_upto: 0,
            consumers: VecDeque::new(),
            unacked: 0,
            had_consumer: false,
            last_used: now_ms(),
            policy: None,
            operator_policy: None,
            counters: Default::default(),
            stream,
            timer: None,
            timer_at: 0,
        }
    }

    /// Connects the queue to the broker's deadlines and arms what it
    /// already needs (messages restored before, `x-expires`).
    pub fn attach_timer(&mut self, timer: TimerHandle, now: u64) {
        self.timer = Some(timer);
        self.timer_at = 0;
        self.rearm(now);
    }

    /// The queue's key among the broker's deadlines.
    pub fn timer_key(&self) -> TimerKey {
        TimerKey::Queue { vhost: self.vhost.clone(), name: self.name.clone() }
    }

    /// Arms the queue's timer at `at` unless it is armed no later.
    fn arm_at(&mut self, at: u64) {
        if self.timer_at != 0 && self.timer_at <= at {
            return;
        }
        if let Some(timer) = &self.timer {
            let key = TimerKey::Queue { vhost: self.vhost.clone(), name: self.name.clone() };
            timer.arm(key, &mut self.timer_at, at);
        }
    }

    /// When the queue next needs the timer: its earliest message expiry,
    /// and with `x-expires` the moment it has been unused that long (while
    /// it has consumers it is not unused: looked at again `x-expires` later).
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        if let Some(stream) = &self.stream {
            // A stream's age retention is looked at every AGE_CHECK_MS.
            return Some(stream.age_checked.max(now).saturating_add(super::stream::AGE_CHECK_MS));
        }
        let unused = self.args.expires.map(|ttl| {
            if self.consumers.is_empty() { self.last_used.saturating_add(ttl) } else { now.saturating_add(ttl) }
        });
        match (self.next_expiry(), unused) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Arms the timer at [`Queue::next_deadline`] (after its arguments
    /// changed, or the timer fired).
    pub fn rearm(&mut self, now: u64) {
        if let Some(at) = self.next_deadline(now) {
            self.arm_at(at);
        }
    }

    /// The timer fired for a deadline at `at`: whether it is this queue's
    /// current one (else it was stale). The queue is then not armed until
    /// [`Queue::rearm`].
    pub fn timer_fired(&mut self, at: u64) -> bool {
        if self.timer_at != 0 && self.timer_at == at {
            self.timer_at = 0;
            true
        } else {
            false
        }
    }

    /// Forgets the queue's deadline (the queue is going away).
    pub fn disarm_timer(&mut self) {
        if let Some(timer) = &self.timer {
            let key = TimerKey::Queue { vhost: self.vhost.clone(), name: self.name.clone() };
            timer.disarm(key, &mut self.timer_at);
        }
    }

    /// The queue id its messages' log records are settled under: the
    /// durable queue's own, or for any other queue [`SPILL_QUEUE`] (only
    /// bodies paged out under memory pressure are in the log; settling
    /// them writes nothing).
    pub fn settle_id(&self) -> u32 {
        self.store_id.unwrap_or(SPILL_QUEUE)
    }

    /// Messages in the queue, ready or unacknowledged (a stream's
    /// unacknowledged messages are among those it retains).
    pub fn message_count(&self) -> usize {
        if self.stream.is_some() { self.ready_count() } else { self.ready_count() + self.unacked }
    }

    /// Messages ready for delivery (a stream's: every retained message).
    pub fn ready_count(&self) -> usize {
        self.ready_len + self.stream.as_ref().map_or(0, |s| s.len())
    }

    pub fn ready_bytes(&self) -> usize {
        self.ready_bytes + self.stream.as_ref().map_or(0, |s| s.bytes() as usize)
    }

    pub fn has_ready(&self) -> bool {
        self.ready_len > 0
    }

    /// The level a message of this priority waits in: priorities above
    /// the queue's maximum count as the maximum.
    pub fn level_of(&self, priority: u8) -> u8 {
        priority.min((self.levels.len() - 1) as u8)
    }

    fn is_full(&self, extra_bytes: usize) -> bool {
        if self.stream.is_some() {
            // A stream's limits are its retention (see `stream`).
            return false;
        }
        let len_full = self.args.max_length.is_some_and(|max| self.ready_count() >= max);
        let bytes_full = self.args.max_length_bytes.is_some_and(|max| self.ready_bytes + extra_bytes > max);
        len_full || bytes_full
    }

    /// Drops ready messages from the head while the queue is over a length
    /// limit it drops for (a limit lowered by a policy); returns them.
    pub fn trim_to_limits(&mut self) -> Vec<QueuedMessage> {
        let mut dropped = Vec::new();
        if matches!(self.args.overflow, Some(Overflow::RejectPublish | Overflow::RejectPublishDlx)) {
            return dropped;
        }
        while self.is_full(0)
            && (self.args.max_length.is_some_and(|max| self.ready_count() > max)
                || self.args.max_length_bytes.is_some_and(|max| self.ready_bytes > max))
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
    pub fn would_reject(&self, size: usize) -> bool {
        matches!(self.args.overflow, Some(Overflow::RejectPublish | Overflow::RejectPublishDlx)) && self.is_full(size)
    }

    /// The broker-clock expiry of a message published `age` ms ago.
    fn expiry(&self, message_ttl: Option<u64>, now: u64, age: u64) -> u64 {
        // The shorter of the queue's TTL and the message's own expiration.
        let ttl = match (self.args.message_ttl, message_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ttl.map_or(0, |ttl| now.saturating_add(ttl.saturating_sub(age)).saturating_add(1))
    }

    /// Appends a newly published message, applying the length limits; the
    /// messages dropped from the head to make room are returned. With
    /// `trim_later` a drop-head limit is left to [`Queue::trim_to_limits`]
    /// after delivery, so that a waiting consumer still gets the message
    /// (as RabbitMQ delivers before it drops).
    pub fn enqueue(
        &mut self,
        message: Arc<Message>,
        store_id: u64,
        now: u64,
        trim_later: bool,
    ) -> (Enqueued, Vec<QueuedMessage>) {
        let size = message.body_len();
        let expires_at = self.expiry(message.expiration_ms, now, 0);
        let mut dropped = Vec::new();
        if self.would_reject(size) {
            return (Enqueued::Rejected, dropped);
        }
        if self.is_full(size) && !trim_later {
            while self.is_full(size) {
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
        if self.is_full(size) && !trim_later {
            // A message larger than x-max-length-bytes on its own, or
            // x-max-length = 0: it is dropped at once.
            dropped.push(entry);
        } else {
            self.ready_bytes += size;
            self.ready_len += 1;
            self.timed += (expires_at != 0) as usize;
            self.levels[level as usize].ready.push_back(entry);
            if expires_at != 0 {
                self.arm_at(expires_at - 1);
            }
        }
        (Enqueued::Accepted, dropped)
    }

    /// Appends a message recovered from the log (body on disk). `age` is
    /// how long ago it was published (0 when the log does not know), so
    /// TTLs count from the publish.
    pub fn restore(&mut self, store_id: u64, meta: RestoredMeta) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready_bytes += meta.size as usize;
        self.ready_len += 1;
        self.cold += 1;
        let level = self.level_of(meta.priority);
        let expires_at = self.expiry(meta.expiration_ms, now_ms(), meta.age);
        self.timed += (expires_at != 0) as usize;
        if expires_at != 0 {
            self.arm_at(expires_at - 1);
        }
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
    }

    /// Drops the expired messages at the head of each level, as RabbitMQ
    /// does (a message behind one that lives longer waits for it); returns
    /// them so the log can forget them.
    pub fn expire(&mut self, now: u64) -> Vec<QueuedMessage> {
        let mut expired = Vec::new();
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

    /// The earliest expiry among the heads (broker clock), for the expiry timer.
    pub fn next_expiry(&self) -> Option<u64> {
        if self.timed == 0 {
            return None;
        }
        self.levels.iter().filter_map(|l| l.peek()).map(|e| e.expires_at).filter(|at| *at != 0).min().map(|at| at - 1)
    }

    /// Drops the bodies of ready messages older than the newest `window`
    /// of their level, once the log has written them (`is_written`), so
    /// that a backlog costs a small index entry per message rather than its
    /// body; with `spill` (memory pressure) transient bodies are paged out
    /// to the log first. Only the level a message was just published to
    /// grows, so only it is looked at (`level`); None looks at every level.
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

    /// Puts a message that was delivered back at its original place;
    /// returns it instead when it was returned more often than the queue's
    /// delivery limit allows (it is then dead-lettered or dropped).
    pub fn requeue(&mut self, mut entry: QueuedMessage) -> Option<QueuedMessage> {
        if self.stream.is_some() {
            // A stream keeps every message: nothing goes back.
            return None;
        }
        entry.redelivered = true;
        entry.delivery_count = entry.delivery_count.saturating_add(1);
        if self.args.delivery_limit.is_some_and(|limit| entry.delivery_count as u64 > limit) {
            return Some(entry);
        }
        self.put_back(entry);
        None
    }

    /// Puts a message taken from the queue but never delivered back at its place.
    pub fn put_back(&mut self, entry: QueuedMessage) {
        if entry.message.is_none() {
            self.cold += 1;
        }
        self.ready_bytes += entry.size as usize;
        self.ready_len += 1;
        self.timed += (entry.expires_at != 0) as usize;
        if entry.expires_at != 0 {
            self.arm_at(entry.expires_at - 1);
        }
        let level = (entry.level as usize).min(self.levels.len() - 1);
        self.levels[level].requeued.insert(entry.seq, entry);
    }

    /// Store ids of every ready message (a stream's retained ones too).
    pub fn ready_store_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .levels
            .iter()
            .flat_map(|l| l.ready.iter().chain(l.requeued.values()))
            .filter(|e| e.store_id != 0)
            .map(|e| e.store_id)
            .collect();
        if let Some(stream) = &self.stream {
            ids.extend(stream.store_ids());
        }
        ids
    }

    /// The message [`Queue::pop_ready`] would take next.
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

    fn entry_mut(&mut self, seq: u64) -> Option<&mut QueuedMessage> {
        self.levels.iter_mut().rev().find_map(|l| l.entry_mut(seq))
    }

    /// Gives a ready message read back from the log its body again.
    pub fn attach(&mut self, seq: u64, store_id: u64, message: Arc<Message>) {
        if let Some(entry) = self.entry_mut(seq).filter(|e| e.store_id == store_id && e.message.is_none()) {
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

    /// Takes a ready message out of the queue wherever it is (one whose
    /// body cannot be read back).
    pub fn remove_ready(&mut self, seq: u64, store_id: u64) -> Option<QueuedMessage> {
        let entry = self.levels.iter_mut().rev().find_map(|l| l.remove(seq, store_id))?;
        self.taken(&entry);
        Some(entry)
    }

    /// The next message to deliver: the highest priority first, requeued
    /// ones before later publishes of their priority.
    pub fn pop_ready(&mut self) -> Option<QueuedMessage> {
        let entry = self.levels.iter_mut().rev().find(|l| l.len() > 0)?.pop()?;
        self.taken(&entry);
        Some(entry)
    }

    /// Drops every ready message; returns them.
    pub fn purge(&mut self) -> Vec<QueuedMessage> {
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

    pub fn consumer_mut(&mut self, tag: &str, connection: u64, channel: u16) -> Option<&mut Consumer> {
        self.consumers.iter_mut().find(|c| &*c.tag == tag && c.connection.id == connection && c.channel == channel)
    }

    /// A single-active-consumer queue whose active consumer went hands
    /// over to the consumer that waited longest.
    pub fn activate_next_consumer(&mut self) {
        if self.args.single_active_consumer
            && !self.consumers.iter().any(|c| c.active)
            && let Some(next) = self.consumers.front_mut()
        {
            next.active = true;
        }
    }

    pub fn has_exclusive_consumer(&self) -> bool {
        self.consumers.iter().any(|c| c.exclusive)
    }
}

/// What the log knows of a recovered message.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoredMeta {
    pub size: u32,
    pub redelivered: bool,
    pub priority: u8,
    /// The message's own `expiration`, in ms.
    pub expiration_ms: Option<u64>,
    /// Milliseconds since the publish (0 when the log does not know).
    pub age: u64,
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
