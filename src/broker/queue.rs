//! A queue: its ready messages in publish order, its consumers in
//! round-robin order, and the limits taken from its arguments.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::error::{AmqpError, Result};
use super::message::{ConnectionHandle, Message};
use crate::protocol::{FieldTable, FieldValue};

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
}

/// Milliseconds on the broker's monotonic clock, for message TTLs.
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// How many of the newest ready messages of a durable queue keep their body
/// in memory; older ones are read back from the log when delivered.
pub const HOT_WINDOW: u64 = 512;

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
}

/// What happens when a publish would push a queue past its max length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    DropHead,
    RejectPublish,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub max_length: Option<usize>,
    pub max_length_bytes: Option<usize>,
    pub overflow: Option<Overflow>,
    /// `x-message-ttl`, in milliseconds.
    pub message_ttl: Option<u64>,
}

impl Limits {
    /// Reads and validates `x-max-length`, `x-max-length-bytes` and `x-overflow`.
    pub fn from_arguments(args: &FieldTable) -> Result<Limits> {
        let count = |key: &str| -> Result<Option<usize>> {
            match args.get(key) {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(n) if n >= 0 => Ok(Some(n as usize)),
                    _ => Err(AmqpError::precondition(format!("invalid arg '{key}': must be a non-negative integer"))),
                },
            }
        };
        let overflow = match args.get("x-overflow") {
            None => None,
            Some(v) => match v.as_str() {
                Some("drop-head") => Some(Overflow::DropHead),
                Some("reject-publish") | Some("reject-publish-dlx") => Some(Overflow::RejectPublish),
                _ => {
                    return Err(AmqpError::precondition(
                        "invalid arg 'x-overflow': expected drop-head or reject-publish",
                    ));
                }
            },
        };
        Ok(Limits {
            max_length: count("x-max-length")?,
            max_length_bytes: count("x-max-length-bytes")?,
            overflow,
            message_ttl: count("x-message-ttl")?.map(|ms| ms as u64),
        })
    }
}

#[derive(Debug)]
pub struct Queue {
    pub name: Arc<str>,
    pub durable: bool,
    /// Id in the write-ahead log, for durable queues.
    pub store_id: Option<u32>,
    /// Unique per queue the broker ever created (names are reused).
    pub incarnation: u64,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    pub limits: Limits,
    ready: VecDeque<QueuedMessage>,
    /// Messages given back (nack, reject, channel close) waiting to be
    /// delivered again ahead of later publishes, ordered by `seq`.
    requeued: BTreeMap<u64, QueuedMessage>,
    ready_bytes: usize,
    next_seq: u64,
    /// Ready messages with a lower seq hold no body in memory.
    cold_below: u64,
    /// Ready messages whose body is on disk only (`message = None`).
    cold: usize,
    /// Bodies are being read back from the log for this queue.
    pub loading: bool,
    /// Seq just past the last message asked of the loader: while the head
    /// is far enough below it, no read-ahead scan is needed.
    pub read_ahead_upto: u64,
    pub consumers: VecDeque<Consumer>,
    /// Delivered to a consumer or basic.get and not yet settled.
    pub unacked: usize,
    /// An auto-delete queue goes away when its last consumer does, but only
    /// once it has had one.
    pub had_consumer: bool,
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
        name: &str,
        durable: bool,
        exclusive_owner: Option<u64>,
        auto_delete: bool,
        arguments: FieldTable,
        limits: Limits,
    ) -> Self {
        Queue {
            name: Arc::from(name),
            durable,
            store_id: None,
            incarnation: 0,
            exclusive_owner,
            auto_delete,
            arguments,
            limits,
            ready: VecDeque::new(),
            requeued: BTreeMap::new(),
            ready_bytes: 0,
            next_seq: 0,
            cold_below: 0,
            cold: 0,
            loading: false,
            read_ahead_upto: 0,
            consumers: VecDeque::new(),
            unacked: 0,
            had_consumer: false,
        }
    }

    pub fn ready_count(&self) -> usize {
        self.ready.len() + self.requeued.len()
    }

    pub fn ready_bytes(&self) -> usize {
        self.ready_bytes
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty() || !self.requeued.is_empty()
    }

    fn is_full(&self, extra_bytes: usize) -> bool {
        let len_full = self.limits.max_length.is_some_and(|max| self.ready_count() >= max);
        let bytes_full = self.limits.max_length_bytes.is_some_and(|max| self.ready_bytes + extra_bytes > max);
        len_full || bytes_full
    }

    /// Whether a message would be refused (x-overflow = reject-publish).
    pub fn would_reject(&self, size: usize) -> bool {
        self.limits.overflow == Some(Overflow::RejectPublish) && self.is_full(size)
    }

    /// Appends a newly published message, applying the length limits; the
    /// messages dropped from the head to make room are returned.
    pub fn enqueue(&mut self, message: Arc<Message>, store_id: u64, now: u64) -> (Enqueued, Vec<QueuedMessage>) {
        let size = message.body_len();
        // The shorter of the queue's TTL and the message's own expiration.
        let ttl = match (self.limits.message_ttl, message.expiration_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let expires_at = ttl.map_or(0, |ttl| now.saturating_add(ttl).saturating_add(1));
        let mut dropped = Vec::new();
        if self.is_full(size) {
            if self.limits.overflow == Some(Overflow::RejectPublish) {
                return (Enqueued::Rejected, dropped);
            }
            while self.is_full(size) {
                match self.pop_ready() {
                    Some(e) => dropped.push(e),
                    None => break,
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry =
            QueuedMessage { seq, store_id, message: Some(message), size: size as u32, redelivered: false, expires_at };
        if self.is_full(size) {
            // A message larger than x-max-length-bytes on its own, or
            // x-max-length = 0: it is dropped at once.
            dropped.push(entry);
        } else {
            self.ready_bytes += size;
            self.ready.push_back(entry);
        }
        (Enqueued::Accepted, dropped)
    }

    /// Appends a message recovered from the log (body on disk). The queue's
    /// TTL counts from the restart: publish times are not logged.
    pub fn restore(&mut self, store_id: u64, size: u32, redelivered: bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready_bytes += size as usize;
        self.cold_below = self.next_seq;
        self.cold += 1;
        let expires_at = self.limits.message_ttl.map_or(0, |ttl| now_ms().saturating_add(ttl).saturating_add(1));
        self.ready.push_back(QueuedMessage { seq, store_id, message: None, size, redelivered, expires_at });
    }

    /// Drops the expired messages at the head of the queue, as RabbitMQ
    /// does (a message behind one that lives longer waits for it); returns
    /// them so the log can forget them.
    pub fn expire(&mut self, now: u64) -> Vec<QueuedMessage> {
        let mut expired = Vec::new();
        loop {
            let head = match (self.requeued.values().next(), self.ready.front()) {
                (Some(r), Some(f)) => Some(if r.seq < f.seq { r } else { f }),
                (r, f) => r.or(f),
            };
            match head {
                Some(e) if e.expires_at != 0 && now >= e.expires_at => match self.pop_ready() {
                    Some(e) => expired.push(e),
                    None => return expired,
                },
                _ => return expired,
            }
        }
    }

    /// Drops the bodies of ready messages older than the hot window, once
    /// the log has written them (`is_written`), so that a backlog costs a
    /// small index entry per message rather than its body.
    pub fn page_out(&mut self, is_written: impl Fn(u64) -> bool) {
        let Some(front) = self.ready.front().map(|e| e.seq) else { return };
        self.cold_below = self.cold_below.max(front);
        while self.next_seq.saturating_sub(self.cold_below) > HOT_WINDOW {
            let index = (self.cold_below - front) as usize;
            let Some(entry) = self.ready.get_mut(index) else { break };
            if entry.store_id != 0 {
                if !is_written(entry.store_id) {
                    break;
                }
                if entry.message.take().is_some() {
                    self.cold += 1;
                }
            }
            self.cold_below += 1;
        }
    }

    /// Puts a message that was delivered back at its original place.
    pub fn requeue(&mut self, mut entry: QueuedMessage) {
        entry.redelivered = true;
        self.put_back(entry);
    }

    /// Puts a message taken from the queue but never delivered back at its place.
    pub fn put_back(&mut self, entry: QueuedMessage) {
        if entry.message.is_none() {
            self.cold += 1;
        }
        self.ready_bytes += entry.size as usize;
        self.requeued.insert(entry.seq, entry);
    }

    /// Store ids of every ready message.
    pub fn ready_store_ids(&self) -> Vec<u64> {
        self.ready.iter().chain(self.requeued.values()).filter(|e| e.store_id != 0).map(|e| e.store_id).collect()
    }

    /// The message [`Queue::pop_ready`] would take next.
    pub fn peek_ready(&self) -> Option<&QueuedMessage> {
        match (self.requeued.values().next(), self.ready.front()) {
            (Some(r), Some(f)) => Some(if r.seq < f.seq { r } else { f }),
            (r, f) => r.or(f),
        }
    }

    /// Ready messages in delivery order: requeued ones merged by `seq`.
    fn in_order(&self) -> impl Iterator<Item = &QueuedMessage> {
        let mut requeued = self.requeued.values().peekable();
        let mut ready = self.ready.iter().peekable();
        std::iter::from_fn(move || match (requeued.peek(), ready.peek()) {
            (Some(r), Some(f)) if r.seq < f.seq => requeued.next(),
            (_, Some(_)) => ready.next(),
            (Some(_), None) => requeued.next(),
            (None, None) => None,
        })
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
        for entry in self.in_order() {
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
        if let Some(entry) = self.requeued.get_mut(&seq) {
            return Some(entry);
        }
        let index = self.ready.binary_search_by_key(&seq, |e| e.seq).ok()?;
        self.ready.get_mut(index)
    }

    /// Gives a ready message read back from the log its body again.
    pub fn attach(&mut self, seq: u64, store_id: u64, message: Arc<Message>) {
        if let Some(entry) = self.entry_mut(seq).filter(|e| e.store_id == store_id && e.message.is_none()) {
            entry.message = Some(message);
            self.cold = self.cold.saturating_sub(1);
        }
    }

    /// Takes a ready message out of the queue wherever it is (one whose
    /// body cannot be read back).
    pub fn remove_ready(&mut self, seq: u64, store_id: u64) -> Option<QueuedMessage> {
        let entry = if self.requeued.get(&seq).is_some_and(|e| e.store_id == store_id) {
            self.requeued.remove(&seq)?
        } else {
            let index = self.ready.binary_search_by_key(&seq, |e| e.seq).ok()?;
            if self.ready[index].store_id != store_id {
                return None;
            }
            self.ready.remove(index)?
        };
        self.ready_bytes -= entry.size as usize;
        if entry.message.is_none() {
            self.cold = self.cold.saturating_sub(1);
        }
        Some(entry)
    }

    /// The oldest ready message: requeued ones come before later publishes.
    pub fn pop_ready(&mut self) -> Option<QueuedMessage> {
        let take_requeued = match (self.requeued.keys().next(), self.ready.front()) {
            (Some(r), Some(f)) => *r < f.seq,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let entry = if take_requeued { self.requeued.pop_first().map(|(_, e)| e) } else { self.ready.pop_front() }?;
        self.ready_bytes -= entry.size as usize;
        if entry.message.is_none() {
            self.cold = self.cold.saturating_sub(1);
        }
        Some(entry)
    }

    /// Drops every ready message; returns them.
    pub fn purge(&mut self) -> Vec<QueuedMessage> {
        let mut all: Vec<QueuedMessage> = self.ready.drain(..).collect();
        all.extend(std::mem::take(&mut self.requeued).into_values());
        self.ready_bytes = 0;
        self.cold = 0;
        all
    }

    pub fn consumer_mut(&mut self, tag: &str, connection: u64, channel: u16) -> Option<&mut Consumer> {
        self.consumers.iter_mut().find(|c| &*c.tag == tag && c.connection.id == connection && c.channel == channel)
    }

    pub fn has_exclusive_consumer(&self) -> bool {
        self.consumers.iter().any(|c| c.exclusive)
    }

    /// The queue declared with these properties would be the same queue.
    pub fn check_equivalent(&self, durable: bool, auto_delete: bool, arguments: &FieldTable) -> Result<()> {
        let mismatch = |what: &str, received: &dyn std::fmt::Display, current: &dyn std::fmt::Display| {
            AmqpError::precondition(format!(
                "inequivalent arg '{what}' for queue '{}' in vhost '/': received '{received}' but current is '{current}'",
                self.name
            ))
        };
        if durable != self.durable {
            return Err(mismatch("durable", &durable, &self.durable));
        }
        if auto_delete != self.auto_delete {
            return Err(mismatch("auto_delete", &auto_delete, &self.auto_delete));
        }
        for key in [
            "x-max-length",
            "x-max-length-bytes",
            "x-overflow",
            "x-message-ttl",
            "x-expires",
            "x-dead-letter-exchange",
            "x-queue-type",
        ] {
            let new = arguments.get(key);
            let old = self.arguments.get(key);
            let same = match (new, old) {
                (Some(a), Some(b)) => a.as_i64().zip(b.as_i64()).map(|(x, y)| x == y).unwrap_or(a == b),
                (None, None) => true,
                // RabbitMQ treats an absent x-queue-type as "classic".
                (Some(v), None) | (None, Some(v)) => key == "x-queue-type" && v.as_str() == Some("classic"),
            };
            if !same {
                let show = |v: Option<&FieldValue>| v.map(describe).unwrap_or_else(|| "none".to_string());
                return Err(mismatch(key, &show(new), &show(old)));
            }
        }
        Ok(())
    }
}

fn describe(v: &FieldValue) -> String {
    if let Some(s) = v.as_str() {
        s.to_string()
    } else if let Some(n) = v.as_i64() {
        n.to_string()
    } else {
        format!("{v:?}")
    }
}
