//! The write-ahead log's interface: opening (replay), appends from every
//! connection, reads, statistics, shutdown; the state behind its lock is in
//! [`super::state`], shared with the writer ([`super::writer`]) and the
//! compactor ([`super::compaction`]) threads.
//!
//! Appends run with the broker's lock held, so they only encode a record
//! into the pending buffer and update the index; the writer thread takes
//! everything pending, writes it with one `pwrite` per segment touched, makes
//! it durable with one `fdatasync`, and publishes the durable position on a
//! `watch` channel that connections wait on before confirming. While one sync
//! runs, the next batch gathers by itself: no timer is involved.
//!
//! The index maps each live message id to where its record is and which
//! durable queue(s) still hold it (24 bytes a message for the common
//! single-queue case), so queues need not keep bodies in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

pub use super::definitions::Definitions;
use super::format::*;
use super::histogram::Histogram;
use super::io::LogIo;
use super::recovery::{QueueSet, Recovered};
pub(super) use super::state::{Chunk, Inner, MANY_QUEUES, Relocation, SPILL_QUEUE, SegmentMeta, prune_foreign};
pub use super::state::{IdHasher, IdMap, IdSet, Loc};
use crate::lock_stats::{HoldFigures, HoldStats};

/// When the writer makes a batch durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fdatasync after every batch; a confirm means the message is on disk.
    EveryBatch,
    /// fdatasync at most once per interval; confirms wait for that sync.
    Interval(Duration),
    /// Never fdatasync; a confirm means the message reached the OS page
    /// cache (it survives a crash of Warren, not of the machine).
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "batch" | "every-batch" => Ok(FsyncPolicy::EveryBatch),
            "never" => Ok(FsyncPolicy::Never),
            other => other
                .strip_suffix("ms")
                .and_then(|n| n.parse::<u64>().ok())
                .map(|ms| FsyncPolicy::Interval(Duration::from_millis(ms)))
                .ok_or_else(|| format!("invalid fsync policy '{other}': use batch, never or <N>ms")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogOptions {
    pub segment_size: u32,
    pub fsync: FsyncPolicy,
    /// Start even when a sealed segment is damaged, setting it aside.
    pub skip_damaged: bool,
    /// Compact segments as live data shrinks (off only to keep every
    /// record for inspection).
    pub compaction: bool,
    /// Free bytes on the log's file system below which the free-disk alarm
    /// is raised; 0 turns the alarm off.
    pub disk_free_limit: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: 64 << 20,
            fsync: FsyncPolicy::EveryBatch,
            skip_damaged: false,
            compaction: true,
            disk_free_limit: 0,
        }
    }
}

/// What connections wait on: everything below `position` is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Durability {
    pub position: u64,
    /// The log hit an I/O error; nothing more will become durable.
    pub failed: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the write-ahead log failed and accepts no more writes until restart: {0}")]
    Failed(String),
    #[error("message {0} is not in the log")]
    Missing(u64),
    #[error("message {id} in {segment} at offset {offset}: {detail}")]
    Corrupt { id: u64, segment: String, offset: u32, detail: String },
}

pub struct LogStore {
    pub(super) io: Arc<dyn LogIo>,
    pub(super) inner: Mutex<Inner>,
    pub(super) wake_writer: Condvar,
    pub(super) durable: watch::Sender<Durability>,
    /// Highest message id whose record the writer has written (not
    /// necessarily synced): records up to it can be read back from the file.
    pub(super) written_id: AtomicU64,
    pub(super) options: LogOptions,
    threads: Mutex<Vec<JoinHandle<()>>>,
    appended: Arc<AtomicU64>,
    /// Wakes the compactor (set by the writer after each pass).
    pub(super) compact_wanted: Mutex<bool>,
    pub(super) wake_compactor: Condvar,
    pub(super) stopping: AtomicBool,
    pub(super) stats: Counters,
    pub(super) disk_alarm: watch::Sender<super::disk::DiskAlarm>,
    /// The files have reached the disk bound: publishers wait for compaction.
    pub(super) compaction_behind: Arc<AtomicBool>,
    /// Holds of the log's lock by the message path (appends of messages,
    /// acks and delivery marks).
    message_holds: HoldStats,
}

/// Running totals, for listings and the write-amplification benchmark.
#[derive(Debug)]
pub struct Counters {
    /// Bytes of message records appended by publishes.
    pub published_bytes: AtomicU64,
    /// Bytes the writer handed to the disk.
    pub written_bytes: AtomicU64,
    /// Bytes compaction appended (copies, carried tombstones and marks).
    pub compaction_bytes: AtomicU64,
    /// Segments compaction deleted.
    pub segments_deleted: AtomicU64,
    /// Live records compaction could not read where the index put them
    /// (their segments are kept).
    pub unreadable_records: AtomicU64,
    /// fdatasync calls on segments.
    pub fsyncs: AtomicU64,
    /// How long each fdatasync took, in seconds.
    pub fsync_seconds: Histogram,
    /// Bytes each writer pass wrote (a group commit).
    pub pass_bytes: Histogram,
    /// Milliseconds the replay at start-up took.
    pub replay_ms: AtomicU64,
    /// Body bytes paged out to the log under memory pressure.
    pub spilled_bytes: AtomicU64,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            published_bytes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
            compaction_bytes: AtomicU64::new(0),
            segments_deleted: AtomicU64::new(0),
            unreadable_records: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            fsync_seconds: Histogram::new(super::histogram::FSYNC_SECONDS),
            pass_bytes: Histogram::new(super::histogram::PASS_BYTES),
            replay_ms: AtomicU64::new(0),
            spilled_bytes: AtomicU64::new(0),
        }
    }
}

/// Counters for listings and warren-dump.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentStats {
    pub base: u64,
    pub used: u32,
    pub capacity: u32,
    pub live_messages: u64,
    pub live_bytes: u64,
    pub sealed: bool,
}

/// The log's size and traffic so far.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LogStats {
    pub segments: usize,
    /// Bytes the segment files occupy (their capacity) plus a spare.
    pub disk_bytes: u64,
    /// Bytes of records of live messages.
    pub live_bytes: u64,
    pub published_bytes: u64,
    pub written_bytes: u64,
    pub compaction_bytes: u64,
    pub segments_deleted: u64,
    /// Live records compaction could not read where the index put them.
    pub unreadable_records: u64,
    pub fsyncs: u64,
    pub replay_ms: u64,
    /// Body bytes paged out under memory pressure so far.
    pub spilled_bytes: u64,
    /// Paged-out bodies still live.
    pub spilled_messages: usize,
}

impl LogStore {
    /// Opens the log, replays it, and starts the writer on a fresh segment.
    pub fn open(io: Arc<dyn LogIo>, options: LogOptions) -> Result<(Arc<LogStore>, Recovered), String> {
        let replay_started = std::time::Instant::now();
        let mut recovered = super::recovery::recover(&*io, options.skip_damaged)?;
        let replay_ms = replay_started.elapsed().as_millis() as u64;
        // Whatever the last run left in the page cache is made durable before
        // anything new is written: the new segment's first group says so.
        for seg in &recovered.segments {
            io.sync(seg.base).map_err(|e| format!("cannot sync {}: {e}", io.describe(seg.base)))?;
        }
        let mut segments = BTreeMap::new();
        let mut next_seq = 0u32;
        let mut next_base = 0u64;
        for seg in &mut recovered.segments {
            // A recovered segment's successor snapshot is long durable.
            let mut meta = SegmentMeta::new(seg.base, seg.capacity, seg.used, true, seg.base);
            meta.id_floor = if seg.id_floor == u64::MAX { 0 } else { seg.id_floor };
            meta.id_ceil = seg.id_ceil;
            meta.relocated = std::mem::take(&mut seg.relocated).into_iter().collect();
            meta.foreign_acks = std::mem::take(&mut seg.foreign_acks);
            meta.foreign_delivered = std::mem::take(&mut seg.foreign_delivered);
            meta.nonce = seg.nonce;
            segments.insert(next_seq, meta);
            next_seq += 1;
            next_base = seg.base + seg.capacity as u64;
        }
        prune_foreign(&mut segments);
        let mut index = super::index::MessageIndex::default();
        let mut multi = IdMap::default();
        let seq_of: HashMap<u64, u32> =
            recovered.segments.iter().enumerate().map(|(i, s)| (s.base, i as u32)).collect();
        // In id order: the index keeps recent ids in a ring that grows at its end.
        let mut ids: Vec<u64> = recovered.messages.keys().copied().collect();
        ids.sort_unstable();
        for (id, m) in ids.iter().filter_map(|id| recovered.messages.get_key_value(id)) {
            let Some(&seq) = seq_of.get(&m.base) else { continue };
            let (queue, delivered) = match &m.queues {
                QueueSet::One(q, d) => (*q, *d),
                QueueSet::Many(queues) => {
                    multi.insert(*id, queues.clone());
                    (MANY_QUEUES, false)
                }
            };
            index.insert(*id, Loc { segment: seq, offset: m.offset, len: m.len, queue, delivered });
            if let Some(meta) = segments.get_mut(&seq) {
                meta.live_messages += 1;
                meta.live_bytes += m.len as u64;
            }
        }
        let (durable, _) = watch::channel(Durability { position: next_base, failed: false });
        let mut inner = Inner {
            segment_size: options.segment_size.max(4096),
            active: next_seq,
            segments,
            pending: Vec::new(),
            free_buffers: Vec::new(),
            spare_chunk_list: Vec::new(),
            pending_bytes: 0,
            appended: Arc::new(AtomicU64::new(next_base)),
            next_message_id: recovered.max_message_id + 1,
            next_queue_id: recovered.max_queue_id + 1,
            defs: recovered.definitions.clone(),
            raft: recovered.raft.clone(),
            index,
            multi,
            relocations: Vec::new(),
            failed: None,
            shutdown: false,
            out_of_space: false,
            key: recovered.key.unwrap_or_else(|| fastrand::u64(..)),
            compaction_behind: Arc::new(AtomicBool::new(false)),
            compaction: options.compaction,
            spilled: 0,
        };
        // Always continue in a new segment: the old newest one keeps what
        // recovery found and nothing is ever appended behind a torn tail.
        inner.start_segment(next_seq, next_base, 0);
        let appended = inner.appended.clone();
        let compaction_behind = inner.compaction_behind.clone();
        let store = Arc::new(LogStore {
            appended,
            io,
            inner: Mutex::new(inner),
            wake_writer: Condvar::new(),
            durable,
            written_id: AtomicU64::new(recovered.max_message_id),
            options,
            threads: Mutex::new(Vec::new()),
            compact_wanted: Mutex::new(false),
            wake_compactor: Condvar::new(),
            stopping: AtomicBool::new(false),
            stats: Counters { replay_ms: AtomicU64::new(replay_ms), ..Counters::default() },
            disk_alarm: watch::channel(super::disk::DiskAlarm::default()).0,
            message_holds: HoldStats::default(),
            compaction_behind,
        });
        let writer = super::writer::spawn(store.clone())?;
        let compactor = super::compaction::spawn(store.clone())?;
        store.threads.lock().extend([writer, compactor]);
        if store.options.disk_free_limit > 0 {
            let monitor = super::disk::spawn(store.clone())?;
            store.threads.lock().push(monitor);
        }
        Ok((store, recovered))
    }

    pub fn durability(&self) -> watch::Receiver<Durability> {
        self.durable.subscribe()
    }

    /// How long the message path held the log's lock (sampled).
    pub fn message_lock_figures(&self) -> HoldFigures {
        self.message_holds.figures()
    }

    /// Everything below this log position is durable.
    pub fn durable_position(&self) -> u64 {
        self.durable.borrow().position
    }

    /// Position just past the last appended record: wait for it to be
    /// durable to know that everything appended so far is.
    pub fn appended_position(&self) -> u64 {
        self.appended.load(Ordering::Acquire)
    }

    pub fn is_written(&self, id: u64) -> bool {
        id <= self.written_id.load(Ordering::Acquire)
    }

    /// Bytes appended but not yet handed to the disk.
    /// The log is shutting down: threads that use it should end.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub fn backlog_bytes(&self) -> usize {
        self.inner.lock().pending_bytes
    }

    /// The writer is waiting for disk space.
    pub fn out_of_space(&self) -> bool {
        self.inner.lock().out_of_space
    }

    /// The log's files are at `max(2 × live, live + 4 segments)`: publishers
    /// should wait until compaction has caught up.
    pub fn compaction_behind(&self) -> bool {
        self.options.compaction && self.compaction_behind.load(Ordering::Acquire)
    }

    /// The free-disk alarm (never raised when the limit is 0).
    pub fn disk_alarm(&self) -> watch::Receiver<super::disk::DiskAlarm> {
        self.disk_alarm.subscribe()
    }

    /// Bytes free on the log's file system, when known.
    /// How long fdatasyncs took and how much each writer pass wrote.
    pub fn histograms(&self) -> (super::histogram::HistogramSnapshot, super::histogram::HistogramSnapshot) {
        (self.stats.fsync_seconds.snapshot(), self.stats.pass_bytes.snapshot())
    }

    /// The free-disk limit publishers are blocked under (0: no alarm).
    pub fn disk_free_limit(&self) -> u64 {
        self.options.disk_free_limit
    }

    pub fn free_space(&self) -> Option<u64> {
        self.io.free_space()
    }

    pub fn segment_size(&self) -> u32 {
        self.options.segment_size
    }

    pub fn allocate_queue_id(&self) -> u32 {
        let mut inner = self.inner.lock();
        let id = inner.next_queue_id;
        inner.next_queue_id += 1;
        id
    }

    /// Appends a definition change (exchange, queue, binding, or their deletion).
    pub fn define(&self, record: Record) -> Result<u64, StoreError> {
        let mut inner = self.inner.lock();
        inner.check()?;
        inner.defs.apply(&record);
        let mut scratch = Vec::new();
        record.encode(0, &mut scratch);
        let end = inner.append(scratch.len(), 0, |out| out.extend_from_slice(&scratch));
        drop(inner);
        self.wake_writer.notify_one();
        Ok(end)
    }

    /// Appends a persistent message for these durable queues; returns its id
    /// and the position that must be durable before it is confirmed.
    pub fn publish(
        &self,
        queues: &[u32],
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
        body: &[u8],
    ) -> Result<(u64, u64), StoreError> {
        self.publish_moving(queues, exchange, routing_key, properties, body, None)
    }

    /// Appends a message, stamped with its publish time, for `queues`. With
    /// `moved_from` (a queue and the message id it held) the message is
    /// being dead-lettered out of that queue: its ack goes in the same
    /// commit group, right after the new record, so that a crash leaves
    /// the message in one queue or the other, never in neither.
    pub fn publish_moving(
        &self,
        queues: &[u32],
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
        body: &[u8],
        moved_from: Option<(u32, u64)>,
    ) -> Result<(u64, u64), StoreError> {
        let (id, end, _) = self.append_message(queues, None, (exchange, routing_key), properties, body, moved_from)?;
        Ok((id, end))
    }

    /// Appends a message of a stream at `offset` (a record of that stream
    /// alone, carrying the offset); otherwise as [`LogStore::publish_moving`],
    /// with the record's length as well (the stream's retention counts it).
    pub fn publish_stream(
        &self,
        stream: u32,
        offset: u64,
        (exchange, routing_key): (&str, &str),
        properties: &[u8],
        body: &[u8],
        moved_from: Option<(u32, u64)>,
    ) -> Result<(u64, u64, u32), StoreError> {
        self.append_message(&[stream], Some(offset), (exchange, routing_key), properties, body, moved_from)
    }

    fn append_message(
        &self,
        queues: &[u32],
        stream_offset: Option<u64>,
        (exchange, routing_key): (&str, &str),
        properties: &[u8],
        body: &[u8],
        moved_from: Option<(u32, u64)>,
    ) -> Result<(u64, u64, u32), StoreError> {
        // Laid out and checksummed before the lock: under it the record
        // only gets its id (ids follow log order) and is copied.
        let published = Some(wall_ms());
        let draft = MessageDraft::new(0, published, stream_offset, queues, (exchange, routing_key), properties, body);
        let len = draft.len();
        let mut inner = self.inner.lock();
        let held = self.message_holds.start();
        inner.check()?;
        let id = inner.next_message_id;
        inner.next_message_id += 1;
        let ack_len = if moved_from.is_some() { id_record_len(1) } else { 0 };
        let mut end = inner.append(len + ack_len, id, |out| {
            draft.encode(out, id);
            if let Some((queue, from)) = moved_from {
                encode_id_record(out, TYPE_ACK, queue, &[from]);
            }
        });
        if let Some((queue, from)) = moved_from {
            end -= ack_len as u64;
            let active = inner.active;
            if let Some(meta) = inner.segments.get_mut(&active)
                && from < meta.id_floor
            {
                meta.foreign_acks.push((queue, from));
            }
            inner.release(from, queue);
        }
        let queue = if queues.len() == 1 {
            queues[0]
        } else {
            inner.multi.insert(id, queues.iter().map(|q| (*q, false)).collect());
            MANY_QUEUES
        };
        let segment = inner.active;
        let mut offset = 0;
        if let Some(meta) = inner.segments.get_mut(&segment) {
            offset = (end - meta.base) as u32 - len as u32;
            meta.live_messages += 1;
            meta.live_bytes += len as u64;
            // The id was taken before `append` opened this segment, so it
            // may be just below the floor the segment started with.
            meta.id_floor = meta.id_floor.min(id);
            meta.id_ceil = meta.id_ceil.max(id + 1);
        }
        inner.index.insert(id, Loc { segment, offset, len: len as u32, queue, delivered: false });
        held.end();
        drop(inner);
        self.stats.published_bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.wake_writer.notify_one();
        Ok((id, end + ack_len as u64, len as u32))
    }

    /// Pages a message's body out to the log under memory pressure (see
    /// [`SPILL_QUEUE`]): read it back with [`LogStore::read`] once
    /// [`LogStore::is_written`], and release it with [`LogStore::ack`] from
    /// whichever queue settles it. Nothing of it survives a restart.
    pub fn spill(&self, exchange: &str, routing_key: &str, properties: &[u8], body: &[u8]) -> Result<u64, StoreError> {
        let (id, _) = self.publish_moving(&[SPILL_QUEUE], exchange, routing_key, properties, body, None)?;
        self.inner.lock().spilled += 1;
        self.stats.spilled_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(id)
    }

    /// Whether any body paged out under memory pressure is still live.
    pub fn has_spilled(&self) -> bool {
        self.inner.lock().spilled > 0
    }

    /// Whether `id` is a body paged out under memory pressure (not a
    /// persistent message).
    pub fn is_spilled(&self, id: u64) -> bool {
        self.inner.lock().is_spilled(id)
    }

    /// Ack tombstones: these messages left `queue` for good. Paged-out
    /// bodies among them are released without one (replay drops them).
    pub fn ack(&self, queue: u32, ids: &[u64]) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let held = self.message_holds.start();
        inner.check()?;
        if inner.spilled > 0 {
            let stored: Vec<u64> = ids.iter().copied().filter(|id| !inner.is_spilled(*id)).collect();
            if !stored.is_empty() && queue != SPILL_QUEUE {
                inner.append_id_records(TYPE_ACK, queue, &stored);
            }
        } else if queue != SPILL_QUEUE {
            inner.append_id_records(TYPE_ACK, queue, ids);
        }
        for id in ids {
            inner.release(*id, queue);
        }
        held.end();
        drop(inner);
        self.wake_writer.notify_one();
        Ok(())
    }

    /// Marks messages of `queue` as handed to a consumer, so that after a
    /// restart they come back flagged redelivered.
    pub fn delivered(&self, queue: u32, ids: &[u64]) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let held = self.message_holds.start();
        inner.check()?;
        if inner.spilled > 0 {
            let stored: Vec<u64> = ids.iter().copied().filter(|id| !inner.is_spilled(*id)).collect();
            if stored.is_empty() {
                return Ok(());
            }
            inner.append_id_records(TYPE_DELIVERED, queue, &stored);
        } else {
            inner.append_id_records(TYPE_DELIVERED, queue, ids);
        }
        for id in ids {
            inner.mark_delivered(*id, queue);
        }
        held.end();
        drop(inner);
        self.wake_writer.notify_one();
        Ok(())
    }

    /// A durable queue was deleted; `ids` are the messages it still held.
    pub fn queue_deleted(&self, queue: u32, ids: &[u64]) -> Result<u64, StoreError> {
        let end = self.define(Record::QueueDelete { queue })?;
        let mut inner = self.inner.lock();
        for id in ids {
            inner.release(*id, queue);
        }
        Ok(end)
    }

    /// Reads several messages back: one `pread` per run of records that lie
    /// close together in a segment (a backlog is mostly contiguous), each
    /// message a slice of its run's buffer. Never holds the log's lock
    /// during a read; a run that fails is read again message by message
    /// (compaction may have moved them), so each result is that message's own.
    pub fn read_many(&self, ids: &[u64]) -> Vec<Result<MessageRecord, StoreError>> {
        /// Records further apart than this are read separately.
        const GAP: u64 = 16 << 10;
        /// Largest single read.
        const RUN: u64 = 4 << 20;
        let mut located: Vec<(usize, u64, u64, u32)> = {
            let inner = self.inner.lock();
            ids.iter()
                .enumerate()
                .filter_map(|(i, id)| {
                    let loc = inner.index.get(*id)?;
                    let meta = inner.segments.get(&loc.segment)?;
                    Some((i, meta.base, loc.offset as u64, loc.len))
                })
                .collect()
        };
        located.sort_by_key(|l| (l.1, l.2));
        let mut out: Vec<Option<Result<MessageRecord, StoreError>>> = ids.iter().map(|_| None).collect();
        let mut start = 0;
        while start < located.len() {
            let (_, base, first, _) = located[start];
            let mut end = start + 1;
            let mut run_end = first + located[start].3 as u64;
            while end < located.len() {
                let (_, b, offset, len) = located[end];
                if b != base || offset > run_end + GAP || offset + len as u64 - first > RUN {
                    break;
                }
                run_end = run_end.max(offset + len as u64);
                end += 1;
            }
            if let Ok(buffer) = self.io.read_at(base, first, (run_end - first) as usize) {
                for &(i, _, offset, len) in &located[start..end] {
                    let at = (offset - first) as usize;
                    let record = buffer.slice(at..at + len as usize);
                    if let Scanned::Record { record: Record::Message(m), .. } = read_record_keyed(&record, 0, 0)
                        && m.id == ids[i]
                    {
                        out[i] = Some(Ok(m));
                    }
                }
            }
            start = end;
        }
        out.into_iter().enumerate().map(|(i, r)| r.unwrap_or_else(|| self.read(ids[i]))).collect()
    }

    /// Reads a message back from its segment, checking its checksum. Never
    /// holds the log's lock during the read; a message that compaction moved
    /// meanwhile is looked up again.
    pub fn read(&self, id: u64) -> Result<MessageRecord, StoreError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (base, offset, len) = {
                let inner = self.inner.lock();
                let loc = *inner.index.get(id).ok_or(StoreError::Missing(id))?;
                let meta = inner.segments.get(&loc.segment).ok_or(StoreError::Missing(id))?;
                (meta.base, loc.offset, loc.len)
            };
            let corrupt = |detail: String| StoreError::Corrupt { id, segment: self.io.describe(base), offset, detail };
            let bytes = match self.io.read_at(base, offset as u64, len as usize) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => continue,
                Err(e) => return Err(corrupt(e.to_string())),
            };
            return match read_record_keyed(&bytes, 0, 0) {
                Scanned::Record { record: Record::Message(m), .. } if m.id == id => Ok(m),
                Scanned::Record { record, .. } => {
                    Err(corrupt(format!("found a {} record instead", type_name(record.type_code()))))
                }
                Scanned::Bad { error, .. } => Err(corrupt(error.to_string())),
                Scanned::End { .. } => Err(corrupt("no record there".into())),
            };
        }
    }

    pub fn segment_stats(&self) -> Vec<SegmentStats> {
        let inner = self.inner.lock();
        inner
            .segments
            .values()
            .map(|m| SegmentStats {
                base: m.base,
                used: m.used,
                capacity: m.capacity,
                live_messages: m.live_messages,
                live_bytes: m.live_bytes,
                sealed: m.sealed,
            })
            .collect()
    }

    pub fn stats(&self) -> LogStats {
        let spare = self.io.spare_bytes();
        let inner = self.inner.lock();
        let (live, files) = inner.live_and_files(true);
        LogStats {
            segments: inner.segments.len(),
            disk_bytes: files + spare,
            live_bytes: live,
            published_bytes: self.stats.published_bytes.load(Ordering::Relaxed),
            written_bytes: self.stats.written_bytes.load(Ordering::Relaxed),
            compaction_bytes: self.stats.compaction_bytes.load(Ordering::Relaxed),
            segments_deleted: self.stats.segments_deleted.load(Ordering::Relaxed),
            unreadable_records: self.stats.unreadable_records.load(Ordering::Relaxed),
            fsyncs: self.stats.fsyncs.load(Ordering::Relaxed),
            replay_ms: self.stats.replay_ms.load(Ordering::Relaxed),
            spilled_bytes: self.stats.spilled_bytes.load(Ordering::Relaxed),
            spilled_messages: inner.spilled,
        }
    }

    /// Stops the writer after it has written and synced what is pending,
    /// and the compactor.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.inner.lock().shutdown = true;
        self.wake_writer.notify_one();
        *self.compact_wanted.lock() = true;
        self.wake_compactor.notify_one();
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock());
        for handle in threads {
            let _ = handle.join();
        }
    }

    /// The log stops: nothing more becomes durable, outstanding confirms
    /// are nacked and later writes refused, until a restart.
    pub(super) fn fail(&self, message: String) {
        tracing::error!(
            "write-ahead log failure, {message}; no further writes are accepted and unconfirmed publishes are nacked; restart Warren to recover from disk"
        );
        {
            let mut inner = self.inner.lock();
            if inner.failed.is_none() {
                inner.failed = Some(message);
            }
        }
        self.durable.send_modify(|d| d.failed = true);
    }
}

/// Milliseconds since the Unix epoch: the publish time a message record carries.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub fn type_name(kind: u8) -> &'static str {
    match kind {
        TYPE_EXCHANGE_DECLARE => "exchange.declare",
        TYPE_EXCHANGE_DELETE => "exchange.delete",
        TYPE_QUEUE_DECLARE => "queue.declare",
        TYPE_QUEUE_DELETE => "queue.delete",
        TYPE_BINDING_ADD => "binding.add",
        TYPE_BINDING_REMOVE => "binding.remove",
        TYPE_MESSAGE => "message",
        TYPE_ACK => "ack",
        TYPE_DELIVERED => "delivered",
        TYPE_ID_WATERMARK => "id-watermark",
        TYPE_GROUP => "group",
        TYPE_PARAMETER => "parameter.set",
        TYPE_PARAMETER_DELETE => "parameter.clear",
        TYPE_RAFT_ENTRY => "raft.entry",
        TYPE_RAFT_STATE => "raft.state",
        _ => "unknown",
    }
}
