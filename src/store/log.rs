//! The write-ahead log: appends from every connection, the message index,
//! reads, and the state shared with the writer ([`super::writer`]) and the
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::format::*;
use super::io::LogIo;
use super::recovery::{QueueSet, Recovered};

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

/// Hashes message ids (dense, increasing integers) with one multiplication.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x100000001b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Queue id marking a message held by several durable queues (see `Inner::multi`).
pub(super) const MANY_QUEUES: u32 = u32::MAX;

/// Where a live message's record is, and who holds it.
#[derive(Debug, Clone, Copy)]
pub struct Loc {
    pub segment: u32,
    pub offset: u32,
    pub len: u32,
    /// The one durable queue holding the message, or `MANY_QUEUES`.
    pub queue: u32,
    /// That one queue handed it to a consumer (a restart flags it redelivered).
    pub delivered: bool,
}

pub type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

#[derive(Debug)]
pub struct SegmentMeta {
    pub base: u64,
    pub capacity: u32,
    /// Bytes written so far (header included).
    pub used: u32,
    pub live_messages: u64,
    pub live_bytes: u64,
    pub sealed: bool,
    /// Compaction copied forward everything of this segment that still
    /// matters; delete it once this position is durable.
    pub compacted_upto: Option<u64>,
    /// Compaction could not read a live record of it: it stays.
    pub uncompactable: bool,
    /// Position just past the header and definitions snapshot. The segment
    /// before this one may only be deleted once this is durable: until then
    /// the definitions it holds exist nowhere else on disk.
    pub snapshot_end: u64,
    /// Message records first written here have ids in `id_floor..id_ceil`.
    pub id_floor: u64,
    pub id_ceil: u64,
    /// Ids of the message records copied forward into this segment.
    pub relocated: IdSet,
    /// Tombstones here for messages first written in an older segment:
    /// while a copy of such a message remains in an older segment, this
    /// tombstone keeps it dead, so compaction carries it forward.
    pub foreign_acks: Vec<(u32, u64)>,
    /// Delivered marks here for messages first written in an older segment.
    pub foreign_delivered: Vec<(u32, u64)>,
    /// Keys the checksum of this segment's commit groups (the log's key).
    pub nonce: u64,
}

impl SegmentMeta {
    fn new(base: u64, capacity: u32, used: u32, sealed: bool, snapshot_end: u64) -> Self {
        SegmentMeta {
            base,
            capacity,
            used,
            live_messages: 0,
            live_bytes: 0,
            sealed,
            compacted_upto: None,
            uncompactable: false,
            snapshot_end,
            id_floor: 0,
            id_ceil: 0,
            relocated: IdSet::default(),
            foreign_acks: Vec::new(),
            foreign_delivered: Vec::new(),
            nonce: 0,
        }
    }

    /// Whether a record of message `id` (first written or copied) is here.
    pub fn holds_copy_of(&self, id: u64) -> bool {
        (self.id_floor..self.id_ceil).contains(&id) || self.relocated.contains(&id)
    }
}

/// Bytes for the writer: contiguous records of one segment, opened by a
/// commit-group record the writer fills in when it writes them.
pub(super) struct Chunk {
    pub segment: u32,
    pub base: u64,
    pub offset: u32,
    pub data: Vec<u8>,
    /// Create the file (with this capacity) before writing.
    pub create: Option<u32>,
    pub max_message_id: u64,
    /// Where in `data` the group record is.
    pub group_at: usize,
    pub nonce: u64,
}

impl Chunk {
    /// Fills in the group record: everything after it in this chunk.
    pub fn seal_group(&mut self, synced_before: bool) {
        let start = self.group_at;
        let length = (self.data.len() - start - GROUP_RECORD_LEN) as u32;
        let position = self.base + self.offset as u64 + start as u64;
        let mut group = Vec::with_capacity(GROUP_RECORD_LEN);
        encode_group(&mut group, self.nonce, position, length, synced_before);
        self.data[start..start + GROUP_RECORD_LEN].copy_from_slice(&group);
    }

    pub fn end(&self) -> u64 {
        self.base + self.offset as u64 + self.data.len() as u64
    }
}

/// A message copied forward; the index switches to it once it is written.
pub(super) struct Relocation {
    pub id: u64,
    pub from: u32,
    pub to: Loc,
    pub end: u64,
}

/// Durable definitions, restated at the start of every segment.
#[derive(Debug, Default, Clone)]
pub struct Definitions {
    pub exchanges: BTreeMap<String, Record>,
    pub queues: BTreeMap<u32, Record>,
    pub bindings: Vec<BindingRecord>,
}

impl Definitions {
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::ExchangeDeclare { name, .. } => {
                self.exchanges.insert(name.clone(), record.clone());
            }
            Record::ExchangeDelete { name } => {
                self.exchanges.remove(name);
                self.bindings.retain(|b| {
                    b.source != *name && !(b.destination_kind == DestinationKind::Exchange && b.destination == *name)
                });
            }
            Record::QueueDeclare { queue, .. } => {
                self.queues.insert(*queue, record.clone());
            }
            Record::QueueDelete { queue } => {
                if let Some(Record::QueueDeclare { name, .. }) = self.queues.remove(queue) {
                    self.bindings.retain(|b| !(b.destination_kind == DestinationKind::Queue && b.destination == name));
                }
            }
            Record::BindingAdd(b) if !self.bindings.contains(b) => self.bindings.push(b.clone()),
            Record::BindingRemove(b) => self.bindings.retain(|x| x != b),
            _ => {}
        }
    }

    fn encode_snapshot(&self, out: &mut Vec<u8>) {
        for r in self.exchanges.values() {
            r.encode(FLAG_SNAPSHOT, out);
        }
        for r in self.queues.values() {
            r.encode(FLAG_SNAPSHOT, out);
        }
        for b in &self.bindings {
            Record::BindingAdd(b.clone()).encode(FLAG_SNAPSHOT, out);
        }
    }
}

pub(super) struct Inner {
    pub segment_size: u32,
    pub active: u32,
    pub segments: BTreeMap<u32, SegmentMeta>,
    pub pending: Vec<Chunk>,
    pub pending_bytes: usize,
    /// Log position just past the last record appended; shared with
    /// [`LogStore`] so connections read it without taking the lock.
    pub appended: Arc<AtomicU64>,
    pub next_message_id: u64,
    pub next_queue_id: u32,
    pub defs: Definitions,
    pub index: IdMap<Loc>,
    /// Queues holding messages that went to more than one durable queue,
    /// with whether each handed it to a consumer.
    pub multi: IdMap<Vec<(u32, bool)>>,
    pub relocations: Vec<Relocation>,
    pub failed: Option<String>,
    pub shutdown: bool,
    /// The writer could not write for lack of space and is retrying.
    pub out_of_space: bool,
    /// Keys the checksum of commit groups; chosen when the log is created
    /// and written in every segment header.
    pub key: u64,
    /// Set when a new segment would take the files past the disk bound,
    /// cleared by the compactor once it caught up.
    pub compaction_behind: Arc<AtomicBool>,
    pub compaction: bool,
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
}

/// Running totals, for listings and the write-amplification benchmark.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes of message records appended by publishes.
    pub published_bytes: AtomicU64,
    /// Bytes the writer handed to the disk.
    pub written_bytes: AtomicU64,
    /// Bytes compaction appended (copies, carried tombstones and marks).
    pub compaction_bytes: AtomicU64,
    /// Segments compaction deleted.
    pub segments_deleted: AtomicU64,
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
}

impl LogStore {
    /// Opens the log, replays it, and starts the writer on a fresh segment.
    pub fn open(io: Arc<dyn LogIo>, options: LogOptions) -> Result<(Arc<LogStore>, Recovered), String> {
        let mut recovered = super::recovery::recover(&*io, options.skip_damaged)?;
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
        let mut index = IdMap::default();
        index.reserve(recovered.messages.len());
        let mut multi = IdMap::default();
        let seq_of: HashMap<u64, u32> =
            recovered.segments.iter().enumerate().map(|(i, s)| (s.base, i as u32)).collect();
        for (id, m) in &recovered.messages {
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
            pending_bytes: 0,
            appended: Arc::new(AtomicU64::new(next_base)),
            next_message_id: recovered.max_message_id + 1,
            next_queue_id: recovered.max_queue_id + 1,
            defs: recovered.definitions.clone(),
            index,
            multi,
            relocations: Vec::new(),
            failed: None,
            shutdown: false,
            out_of_space: false,
            key: recovered.key.unwrap_or_else(|| fastrand::u64(..)),
            compaction_behind: Arc::new(AtomicBool::new(false)),
            compaction: options.compaction,
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
            stats: Counters::default(),
            disk_alarm: watch::channel(super::disk::DiskAlarm::default()).0,
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

    /// Position just past the last appended record: wait for it to be
    /// durable to know that everything appended so far is.
    pub fn appended_position(&self) -> u64 {
        self.appended.load(Ordering::Acquire)
    }

    pub fn is_written(&self, id: u64) -> bool {
        id <= self.written_id.load(Ordering::Acquire)
    }

    /// Bytes appended but not yet handed to the disk.
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
        let mut inner = self.inner.lock();
        inner.check()?;
        let id = inner.next_message_id;
        inner.next_message_id += 1;
        let len = message_record_len(queues.len(), exchange, routing_key, properties, body);
        let end =
            inner.append(len, id, |out| encode_message(out, 0, id, queues, exchange, routing_key, properties, body));
        let offset = (end - inner.active_base()) as u32 - len as u32;
        let queue = if queues.len() == 1 {
            queues[0]
        } else {
            inner.multi.insert(id, queues.iter().map(|q| (*q, false)).collect());
            MANY_QUEUES
        };
        let segment = inner.active;
        inner.index.insert(id, Loc { segment, offset, len: len as u32, queue, delivered: false });
        if let Some(meta) = inner.segments.get_mut(&segment) {
            meta.live_messages += 1;
            meta.live_bytes += len as u64;
            // The id was taken before `append` opened this segment, so it
            // may be just below the floor the segment started with.
            meta.id_floor = meta.id_floor.min(id);
            meta.id_ceil = meta.id_ceil.max(id + 1);
        }
        drop(inner);
        self.stats.published_bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.wake_writer.notify_one();
        Ok((id, end))
    }

    /// Ack tombstones: these messages left `queue` for good.
    pub fn ack(&self, queue: u32, ids: &[u64]) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        inner.check()?;
        inner.append_id_records(TYPE_ACK, queue, ids);
        for id in ids {
            inner.release(*id, queue);
        }
        drop(inner);
        self.wake_writer.notify_one();
        Ok(())
    }

    /// Marks messages of `queue` as handed to a consumer, so that after a
    /// restart they come back flagged redelivered.
    pub fn delivered(&self, queue: u32, ids: &[u64]) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        inner.check()?;
        inner.append_id_records(TYPE_DELIVERED, queue, ids);
        for id in ids {
            inner.mark_delivered(*id, queue);
        }
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

    /// Reads a message back from its segment, checking its checksum. Never
    /// holds the log's lock during the read; a message that compaction moved
    /// meanwhile is looked up again.
    pub fn read(&self, id: u64) -> Result<MessageRecord, StoreError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (base, offset, len) = {
                let inner = self.inner.lock();
                let loc = *inner.index.get(&id).ok_or(StoreError::Missing(id))?;
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
        LogStats {
            segments: inner.segments.len(),
            disk_bytes: inner.segments.values().map(|m| m.capacity as u64).sum::<u64>() + spare,
            live_bytes: inner.segments.values().map(|m| m.live_bytes).sum(),
            published_bytes: self.stats.published_bytes.load(Ordering::Relaxed),
            written_bytes: self.stats.written_bytes.load(Ordering::Relaxed),
            compaction_bytes: self.stats.compaction_bytes.load(Ordering::Relaxed),
            segments_deleted: self.stats.segments_deleted.load(Ordering::Relaxed),
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

/// Keeps only the foreign tombstones and marks that still matter: those of
/// messages with a copy in an older segment.
fn prune_foreign(segments: &mut BTreeMap<u32, SegmentMeta>) {
    let seqs: Vec<u32> = segments.keys().copied().collect();
    for (i, seq) in seqs.iter().enumerate() {
        let older: Vec<&SegmentMeta> = seqs[..i].iter().filter_map(|s| segments.get(s)).collect();
        let keep = |id: u64| older.iter().any(|m| m.holds_copy_of(id));
        let acks: Vec<(u32, u64)> = segments[seq].foreign_acks.iter().copied().filter(|(_, id)| keep(*id)).collect();
        let marks: Vec<(u32, u64)> =
            segments[seq].foreign_delivered.iter().copied().filter(|(_, id)| keep(*id)).collect();
        if let Some(meta) = segments.get_mut(seq) {
            meta.foreign_acks = acks;
            meta.foreign_delivered = marks;
        }
    }
}

impl Inner {
    pub fn check(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(why) => Err(StoreError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    pub fn active_base(&self) -> u64 {
        self.segments.get(&self.active).map_or(0, |m| m.base)
    }

    /// Opens segment `seq` at `base`, big enough for its header, the
    /// definitions snapshot and a first record of `first_record` bytes.
    pub fn start_segment(&mut self, seq: u32, base: u64, first_record: usize) {
        let nonce = self.key;
        let mut data = vec![0u8; SEGMENT_HEADER_LEN];
        let group_at = data.len();
        data.extend_from_slice(&[0u8; GROUP_RECORD_LEN]);
        Record::IdWatermark { next_message_id: self.next_message_id, next_queue_id: self.next_queue_id }
            .encode(FLAG_SNAPSHOT, &mut data);
        self.defs.encode_snapshot(&mut data);
        let needed = data.len() + first_record + GROUP_RECORD_LEN;
        let capacity = (self.segment_size as usize).max(needed.next_multiple_of(4096)).min(u32::MAX as usize) as u32;
        let header = SegmentHeader::new(base, capacity, nonce).encode();
        data[..SEGMENT_HEADER_LEN].copy_from_slice(&header);
        let used = data.len() as u32;
        self.pending_bytes += data.len();
        self.pending.push(Chunk {
            segment: seq,
            base,
            offset: 0,
            data,
            create: Some(capacity),
            max_message_id: 0,
            group_at,
            nonce,
        });
        let mut meta = SegmentMeta::new(base, capacity, used, false, base + used as u64);
        meta.id_floor = self.next_message_id;
        meta.id_ceil = self.next_message_id;
        meta.nonce = nonce;
        self.segments.insert(seq, meta);
        self.active = seq;
        self.appended.store(base + used as u64, Ordering::Release);
        if self.compaction {
            // The segments, a spare, and room for the next one.
            let disk: u64 = self.segments.values().map(|m| m.capacity as u64).sum::<u64>() + self.segment_size as u64;
            let live: u64 = self.segments.values().map(|m| m.live_bytes).sum();
            let bound = (2 * live).max(live + 4 * self.segment_size as u64);
            if disk + self.segment_size as u64 > bound {
                self.compaction_behind.store(true, Ordering::Release);
            }
        }
    }

    /// Appends a record of exactly `len` bytes written by `encode`; returns
    /// the log position just past it.
    pub fn append(&mut self, len: usize, message_id: u64, encode: impl FnOnce(&mut Vec<u8>)) -> u64 {
        let (base, capacity, used) = match self.segments.get(&self.active) {
            Some(m) => (m.base, m.capacity, m.used),
            None => (0, 0, 0),
        };
        let contiguous = |inner: &Inner| {
            inner.pending.last().is_some_and(|c| {
                c.segment == inner.active
                    && inner.segments.get(&inner.active).is_some_and(|m| c.offset + c.data.len() as u32 == m.used)
            })
        };
        // A new chunk starts with a group record: room for both.
        let group = if contiguous(self) { 0 } else { GROUP_RECORD_LEN };
        if used as usize + group + len > capacity as usize {
            if let Some(m) = self.segments.get_mut(&self.active) {
                m.sealed = true;
            }
            let next = self.active + 1;
            self.start_segment(next, base + capacity as u64, len);
        }
        let seq = self.active;
        if !contiguous(self) {
            let Some(meta) = self.segments.get_mut(&seq) else { return self.appended.load(Ordering::Acquire) };
            let offset = meta.used;
            meta.used += GROUP_RECORD_LEN as u32;
            let mut data = Vec::with_capacity((GROUP_RECORD_LEN + len).max(64 * 1024));
            data.extend_from_slice(&[0u8; GROUP_RECORD_LEN]);
            self.pending.push(Chunk {
                segment: seq,
                base: meta.base,
                offset,
                data,
                create: None,
                max_message_id: 0,
                group_at: 0,
                nonce: meta.nonce,
            });
            self.pending_bytes += GROUP_RECORD_LEN;
        }
        let Some(meta) = self.segments.get_mut(&seq) else { return self.appended.load(Ordering::Acquire) };
        let (base, offset) = (meta.base, meta.used);
        meta.used += len as u32;
        if let Some(chunk) = self.pending.last_mut() {
            let before = chunk.data.len();
            encode(&mut chunk.data);
            debug_assert_eq!(chunk.data.len() - before, len, "record length estimate");
            chunk.max_message_id = chunk.max_message_id.max(message_id);
        }
        self.pending_bytes += len;
        let end = base + offset as u64 + len as u64;
        self.appended.store(end, Ordering::Release);
        end
    }

    /// Appends ack or delivered records for `ids` of `queue` (65,536 ids a
    /// record), noting those that concern messages of older segments.
    pub fn append_id_records(&mut self, kind: u8, queue: u32, ids: &[u64]) -> u64 {
        let mut end = self.appended.load(Ordering::Acquire);
        for chunk in ids.chunks(65_536) {
            let len = RECORD_PREFIX_LEN + 2 + 8 + chunk.len() * 8;
            end = self.append(len, 0, |out| encode_id_record(out, kind, queue, chunk));
            let active = self.active;
            if let Some(meta) = self.segments.get_mut(&active) {
                let floor = meta.id_floor;
                let foreign = if kind == TYPE_ACK { &mut meta.foreign_acks } else { &mut meta.foreign_delivered };
                foreign.extend(chunk.iter().filter(|id| **id < floor).map(|id| (queue, *id)));
            }
        }
        end
    }

    /// `queue` no longer holds message `id`.
    pub fn release(&mut self, id: u64, queue: u32) {
        let Some(loc) = self.index.get(&id).copied() else { return };
        let gone = if loc.queue == MANY_QUEUES {
            match self.multi.get_mut(&id) {
                Some(queues) => {
                    queues.retain(|q| q.0 != queue);
                    queues.is_empty()
                }
                None => true,
            }
        } else {
            loc.queue == queue
        };
        if gone {
            self.index.remove(&id);
            self.multi.remove(&id);
            if let Some(meta) = self.segments.get_mut(&loc.segment) {
                meta.live_messages -= 1;
                meta.live_bytes -= loc.len as u64;
            }
        }
    }

    fn mark_delivered(&mut self, id: u64, queue: u32) {
        let Some(loc) = self.index.get_mut(&id) else { return };
        if loc.queue == MANY_QUEUES {
            if let Some(entry) = self.multi.get_mut(&id).and_then(|qs| qs.iter_mut().find(|q| q.0 == queue)) {
                entry.1 = true;
            }
        } else if loc.queue == queue {
            loc.delivered = true;
        }
    }

    /// The durable queues holding a live message, with their delivered marks.
    pub fn holders(&self, id: u64) -> Vec<(u32, bool)> {
        match self.index.get(&id) {
            Some(loc) if loc.queue == MANY_QUEUES => self.multi.get(&id).cloned().unwrap_or_default(),
            Some(loc) => vec![(loc.queue, loc.delivered)],
            None => Vec::new(),
        }
    }
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
        _ => "unknown",
    }
}
