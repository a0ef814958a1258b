//! A queue: its ready messages in publish order, its consumers in
//! round-robin order, and the limits taken from its arguments.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::error::{AmqpError, Result};
use super::message::{ConnectionHandle, Message};
use crate::protocol::{FieldTable, FieldValue};

/// One message in one queue. `seq` is the queue's own publish counter: a
/// requeued message goes back to the place its `seq` gives it.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
}

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
        Ok(Limits { max_length: count("x-max-length")?, max_length_bytes: count("x-max-length-bytes")?, overflow })
    }
}

#[derive(Debug)]
pub struct Queue {
    pub name: Arc<str>,
    pub durable: bool,
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
            exclusive_owner,
            auto_delete,
            arguments,
            limits,
            ready: VecDeque::new(),
            requeued: BTreeMap::new(),
            ready_bytes: 0,
            next_seq: 0,
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

    /// Appends a newly published message, applying the length limits.
    pub fn enqueue(&mut self, message: Arc<Message>) -> Enqueued {
        let size = message.body_len();
        if self.is_full(size) {
            if self.limits.overflow == Some(Overflow::RejectPublish) {
                return Enqueued::Rejected;
            }
            while self.is_full(size) && self.pop_ready().is_some() {}
            if self.is_full(size) {
                // A message larger than x-max-length-bytes on its own, or x-max-length = 0.
                return Enqueued::Accepted;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready_bytes += size;
        self.ready.push_back(QueuedMessage { seq, message, redelivered: false });
        Enqueued::Accepted
    }

    /// Puts a message that was delivered back at its original place.
    pub fn requeue(&mut self, mut entry: QueuedMessage) {
        entry.redelivered = true;
        self.ready_bytes += entry.message.body_len();
        self.requeued.insert(entry.seq, entry);
    }

    /// The oldest ready message: requeued ones come before later publishes.
    pub fn pop_ready(&mut self) -> Option<QueuedMessage> {
        let take_requeued = match (self.requeued.keys().next(), self.ready.front()) {
            (Some(r), Some(f)) => *r < f.seq,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let entry = if take_requeued { self.requeued.pop_first().map(|(_, e)| e) } else { self.ready.pop_front() }?;
        self.ready_bytes -= entry.message.body_len();
        Some(entry)
    }

    /// Drops every ready message; returns how many there were.
    pub fn purge(&mut self) -> usize {
        let count = self.ready_count();
        self.ready.clear();
        self.requeued.clear();
        self.ready_bytes = 0;
        count
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
