//! Streams (`x-queue-type=stream`): an append-only view of the log that
//! consumers read at their own offsets, as RabbitMQ's and LavinMQ's
//! streams over AMQP 0-9-1.
//!
//! A stream is a durable queue whose messages are never removed by
//! consumers: each consumer has a cursor (its next offset), acks only
//! return credit, and messages leave only through retention
//! (`x-max-length-bytes`, `x-max-age`) from the head. Every message of a
//! stream is a log record of its own carrying its offset, persistent or
//! not, so a restart rebuilds the stream with the same offsets; retention
//! writes ack tombstones and compaction reclaims their space like any
//! other dead record (and copies forward what retention still keeps).
//!
//! This module owns a stream's index ([`Stream`]: offset, log id, size and
//! publish time of every retained message, bodies only for the newest and
//! for those read back from the log, shared by all readers, within a
//! budget);
//! `consumer` owns consumer cursors and the consume arguments (offset
//! specs, filters, server-side offset tracking); `deliver` publishing into
//! a stream, delivery to its consumers, acks and retention.

pub mod consumer;
mod deliver;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

pub use consumer::{StartAt, StreamCursor};
pub use deliver::tracked_key;
pub(super) use deliver::{apply_retention, consumer_cursor, publish_to_stream, settled, spawn_durability_waker, track};

use super::arguments::QueueArgs;
use super::message::Message;
use super::queue_type::{Command, Effects};

/// How many of the newest messages of a stream keep their body in memory
/// once the log has them: consumers at the tail read from memory, the
/// others from the log.
pub const STREAM_HOT_WINDOW: usize = 512;

/// Retention applies at least this often to streams with an `x-max-age`.
pub const AGE_CHECK_MS: u64 = 1_000;

/// Bodies read back from the log that a stream keeps for its readers, per
/// reader: readers near each other share them, each may be a read ahead.
pub const WARM_BYTES_PER_READER: usize = 2 * super::loader::LOAD_BATCH_BYTES;

/// One retained message of a stream.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub offset: u64,
    /// Id of its log record.
    pub store_id: u64,
    /// Body length.
    pub size: u32,
    /// Bytes its log record takes.
    pub record_len: u32,
    /// Publish time, ms since the Unix epoch (0 when unknown).
    pub published_ms: u64,
    /// The body, for the newest messages only.
    pub message: Option<Arc<Message>>,
}

/// A stream's retained messages, oldest first, and its tracked offsets.
#[derive(Debug, Default)]
pub struct Stream {
    entries: VecDeque<StreamEntry>,
    /// The offset the next message gets.
    next_offset: u64,
    /// Body bytes of the retained messages (what `x-max-length-bytes` counts).
    bytes: u64,
    /// Log bytes of the retained messages' records.
    record_bytes: u64,
    /// Entries below this index hold no body, but for those read back
    /// from the log for readers (`warm`).
    cold_below: usize,
    /// Offsets (and body sizes) of bodies read back from the log, oldest
    /// read first: dropped again once no reader needs them or over budget.
    warm: VecDeque<(u64, u32)>,
    warm_bytes: usize,
    /// Offset ranges being read back by the loader.
    in_flight: Vec<std::ops::Range<u64>>,
    /// Messages appended but perhaps not durable yet: (offset, log position
    /// just past its record). Readers get only durable messages, so an
    /// offset a reader saw is never given to another message after a crash.
    not_durable: VecDeque<(u64, u64)>,
    /// Server-side tracked offsets by consumer tag: the next offset that
    /// consumer reads when it comes back (set by its acks, or the log).
    pub tracked: HashMap<Arc<str>, u64>,
    /// Tags consumed with tracking since the start: their acks move their
    /// offset even after the consumer is gone.
    pub tracking_tags: std::collections::HashSet<Arc<str>>,
    /// Broker clock of the last `x-max-age` pass.
    pub age_checked: u64,
}

impl Stream {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn record_bytes(&self) -> u64 {
        self.record_bytes
    }

    /// The offset the next published message gets.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The oldest retained offset (the next offset when empty).
    pub fn first_offset(&self) -> u64 {
        self.entries.front().map_or(self.next_offset, |e| e.offset)
    }

    /// The newest offset, if any message is retained.
    pub fn last_offset(&self) -> Option<u64> {
        self.entries.back().map(|e| e.offset)
    }

    /// Appends a message published now at [`Stream::next_offset`], durable
    /// once the log is durable up to `end`.
    pub fn publish(&mut self, entry: StreamEntry, end: u64) {
        self.not_durable.push_back((entry.offset, end));
        self.push(entry);
    }

    /// The offset below which messages are durable, the log being durable
    /// up to position `durable`.
    pub fn durable_below(&mut self, durable: u64) -> u64 {
        while self.not_durable.front().is_some_and(|(_, end)| *end <= durable) {
            self.not_durable.pop_front();
        }
        self.not_durable.front().map_or(self.next_offset, |(offset, _)| *offset)
    }

    fn push(&mut self, entry: StreamEntry) {
        self.next_offset = entry.offset + 1;
        self.bytes += entry.size as u64;
        self.record_bytes += entry.record_len as u64;
        self.entries.push_back(entry);
    }

    /// Puts back a message replay found; messages come in offset order.
    pub fn restore(&mut self, entry: StreamEntry) {
        // Offsets only grow, and the next one must exist.
        if self.entries.back().is_some_and(|last| last.offset >= entry.offset) || entry.offset == u64::MAX {
            return;
        }
        self.cold_below = self.entries.len() + 1;
        self.push(entry);
    }

    /// Index of the first entry at or after `offset`.
    fn index_from(&self, offset: u64) -> usize {
        self.entries.partition_point(|e| e.offset < offset)
    }

    /// The first retained message at or after `offset`.
    pub fn entry_from(&self, offset: u64) -> Option<&StreamEntry> {
        self.entries.get(self.index_from(offset))
    }

    /// The retained messages from `offset` on.
    pub fn entries_from(&self, offset: u64) -> impl Iterator<Item = &StreamEntry> {
        self.entries.range(self.index_from(offset)..)
    }

    /// Whether the body at `offset` is being read back.
    pub fn is_loading(&self, offset: u64) -> bool {
        self.in_flight.iter().any(|r| r.contains(&offset))
    }

    /// The messages from `offset` on whose bodies are on disk only and not
    /// being read back, as (offset, log id), up to `max` messages or
    /// `max_bytes` of bodies; the range is then marked as being read.
    pub fn start_load(&mut self, offset: u64, max: usize, max_bytes: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in self.entries.range(self.index_from(offset)..) {
            if e.message.is_some() || out.len() >= max || bytes >= max_bytes || self.is_loading(e.offset) {
                break;
            }
            out.push((e.offset, e.store_id));
            bytes += e.size as usize;
        }
        if let (Some(first), Some(last)) = (out.first(), out.last()) {
            self.in_flight.push(first.0..last.0 + 1);
        }
        out
    }

    /// A read started at `first` is over (done, or never sent).
    pub fn end_load(&mut self, first: u64) {
        self.in_flight.retain(|r| r.start != first);
    }

    /// Gives a message read back from the log its body, for every reader.
    pub fn attach(&mut self, offset: u64, message: Arc<Message>) {
        let index = self.index_from(offset);
        if let Some(entry) = self.entries.get_mut(index).filter(|e| e.offset == offset && e.message.is_none()) {
            entry.message = Some(message);
            self.warm.push_back((offset, entry.size));
            self.warm_bytes += entry.size as usize;
        }
    }

    /// Drops bodies read back that no reader needs any more (below
    /// `needed_from`), then the oldest ones while over `budget` bytes.
    pub fn evict_warm(&mut self, needed_from: u64, budget: usize) {
        while let Some(&(offset, size)) = self.warm.front() {
            if offset >= needed_from && self.warm_bytes <= budget {
                break;
            }
            self.warm.pop_front();
            self.warm_bytes -= size as usize;
            let index = self.index_from(offset);
            if index < self.cold_below
                && let Some(entry) = self.entries.get_mut(index).filter(|e| e.offset == offset)
            {
                entry.message = None;
            }
        }
    }

    /// Bytes of bodies read back and kept for readers.
    #[cfg(test)]
    pub fn warm_bytes(&self) -> usize {
        self.warm_bytes
    }

    /// Takes a message out of the stream (one the log cannot give back);
    /// returns its log id.
    pub fn forget(&mut self, offset: u64) -> Option<u64> {
        let index = self.index_from(offset);
        if self.entries.get(index).is_none_or(|e| e.offset != offset) {
            return None;
        }
        let entry = self.entries.remove(index)?;
        self.bytes -= entry.size as u64;
        self.record_bytes -= entry.record_len as u64;
        if index < self.cold_below {
            self.cold_below -= 1;
        }
        Some(entry.store_id)
    }

    /// The first offset whose message was published at or after `ms`
    /// (Unix epoch); the next offset when none was.
    pub fn offset_at_time(&self, ms: u64) -> u64 {
        let index = self.entries.partition_point(|e| e.published_ms < ms);
        self.entries.get(index).map_or(self.next_offset, |e| e.offset)
    }

    /// Drops the bodies of all but the newest `window` messages once the
    /// log has written them (`is_written`).
    pub fn page_out(&mut self, window: usize, is_written: impl Fn(u64) -> bool) {
        let end = self.entries.len().saturating_sub(window);
        while self.cold_below < end {
            let entry = &mut self.entries[self.cold_below];
            if entry.message.is_some() && !is_written(entry.store_id) {
                break;
            }
            entry.message = None;
            self.cold_below += 1;
        }
    }

    /// Drops messages from the head while the stream is over `max_bytes`
    /// of bodies or holds messages published before `min_published_ms`;
    /// the newest message always stays, so offsets go on from it after a
    /// restart. Returns the log ids of the dropped messages.
    pub fn apply_retention(&mut self, max_bytes: Option<u64>, min_published_ms: Option<u64>) -> Vec<u64> {
        let mut dropped = Vec::new();
        while self.entries.len() > 1 {
            let Some(head) = self.entries.front() else { break };
            let over_size = max_bytes.is_some_and(|max| self.bytes > max);
            let too_old = min_published_ms.is_some_and(|min| head.published_ms < min);
            if !over_size && !too_old {
                break;
            }
            let Some(head) = self.entries.pop_front() else { break };
            self.bytes -= head.size as u64;
            self.record_bytes -= head.record_len as u64;
            self.cold_below = self.cold_below.saturating_sub(1);
            dropped.push(head.store_id);
        }
        dropped
    }

    /// Applies one command (see `broker::queue_type`). A stream keeps what
    /// it was given for every reader, so most commands change nothing: its
    /// readers read at their own offsets instead of checking messages out,
    /// an ack only gives a reader credit back, and nothing is requeued,
    /// expired or purged. `Trim` applies the size retention. Messages come
    /// in through [`Stream::publish`] with the offset their log record
    /// carries (the append needs the offset first), so an `Enqueue` is
    /// refused.
    // Inlined always: at a call site the command is known, and its arm
    // is all that is left (a call costed S4 about 4% of its CPU).
    #[inline(always)]
    pub fn apply(&mut self, args: &QueueArgs, command: Command, _now: u64, fx: &mut Effects) {
        match command {
            Command::Enqueue { .. } => fx.rejected = true,
            Command::Trim => {
                let dropped = self.apply_retention(args.max_length_bytes.map(|n| n as u64), None);
                fx.removed += dropped.len();
                fx.log_settled.extend(dropped);
            }
            Command::Checkout { .. }
            | Command::Settle { .. }
            | Command::Return { .. }
            | Command::Expire
            | Command::Purge
            | Command::Remove { .. } => {}
        }
    }

    /// Log ids of every retained message.
    pub fn store_ids(&self) -> Vec<u64> {
        self.entries.iter().map(|e| e.store_id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, size: u32, published_ms: u64) -> StreamEntry {
        StreamEntry { offset, store_id: offset + 100, size, record_len: size + 50, published_ms, message: None }
    }

    #[test]
    fn offsets_retention_and_time_lookup() {
        let mut s = Stream::default();
        for i in 0..10 {
            s.publish(entry(i, 100, 1_000 + i * 10), 0);
        }
        assert_eq!((s.first_offset(), s.last_offset(), s.next_offset()), (0, Some(9), 10));
        assert_eq!(s.offset_at_time(1_035), 4);
        assert_eq!(s.offset_at_time(5_000), 10);
        // Over 500 bytes: the five oldest go.
        assert_eq!(s.apply_retention(Some(500), None), vec![100, 101, 102, 103, 104]);
        assert_eq!((s.first_offset(), s.len(), s.bytes()), (5, 5, 500));
        // Older than 1,080: all but the last, which always stays.
        assert_eq!(s.apply_retention(None, Some(2_000)).len(), 4);
        assert_eq!((s.first_offset(), s.next_offset()), (9, 10));
        assert_eq!(s.entry_from(3).map(|e| e.offset), Some(9));
    }

    #[test]
    fn restore_keeps_offsets_and_skips_repeats() {
        let mut s = Stream::default();
        s.restore(entry(40, 1, 0));
        s.restore(entry(41, 1, 0));
        s.restore(entry(41, 1, 0));
        s.restore(entry(45, 1, 0));
        assert_eq!((s.first_offset(), s.len(), s.next_offset()), (40, 3, 46));
        assert_eq!(s.entry_from(42).map(|e| e.offset), Some(45));
        assert_eq!(s.start_load(41, 10, 1 << 20), vec![(41, 141), (45, 145)]);
    }

    fn body(n: usize) -> Arc<Message> {
        Arc::new(Message {
            exchange: String::new(),
            routing_key: String::new(),
            properties: bytes::Bytes::new(),
            body: bytes::Bytes::from(vec![0u8; n]),
            persistent: true,
            expiration_ms: None,
            priority: 0,
        })
    }

    #[test]
    fn reads_are_shared_marked_in_flight_and_evicted() {
        let mut s = Stream::default();
        for i in 0..10 {
            s.restore(entry(i, 100, 0));
        }
        // One read covers 0..4; another reader at 2 asks for nothing more
        // until it is back; a reader at 6 gets its own.
        assert_eq!(s.start_load(0, 4, 1 << 20).len(), 4);
        assert!(s.is_loading(2) && !s.is_loading(4));
        assert!(s.start_load(2, 4, 1 << 20).is_empty());
        assert_eq!(s.start_load(6, 10, 1 << 20), vec![(6, 106), (7, 107), (8, 108), (9, 109)]);
        for i in 0..4 {
            s.attach(i, body(100));
        }
        s.end_load(0);
        assert!(!s.is_loading(2));
        assert!(s.entry_from(3).is_some_and(|e| e.message.is_some()));
        assert_eq!(s.warm_bytes(), 400);
        // Below every reader: dropped; over budget: the oldest read goes.
        s.evict_warm(2, 1 << 20);
        assert_eq!(s.warm_bytes(), 200);
        assert!(s.entry_from(1).is_some_and(|e| e.message.is_none()));
        assert!(s.entry_from(2).is_some_and(|e| e.message.is_some()));
        s.evict_warm(0, 100);
        assert_eq!(s.warm_bytes(), 100);
        assert!(s.entry_from(2).is_some_and(|e| e.message.is_none()));
        assert_eq!(s.forget(3), Some(103));
        assert_eq!((s.len(), s.entry_from(3).map(|e| e.offset)), (9, Some(4)));
    }
}
