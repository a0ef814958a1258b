//! The write-ahead log: appends from every connection, one writer thread
//! with group commit, the message index, reads, and reclaim.
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
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::format::*;
use super::io::LogIo;
use super::recovery::{QueueSet, Recovered, SegmentState};

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
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions { segment_size: 64 << 20, fsync: FsyncPolicy::EveryBatch, skip_damaged: false }
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
const MANY_QUEUES: u32 = u32::MAX;

/// Where a live message's record is, and who holds it.
#[derive(Debug, Clone, Copy)]
pub struct Loc {
    pub segment: u32,
    pub offset: u32,
    pub len: u32,
    /// The one durable queue holding the message, or `MANY_QUEUES`.
    pub queue: u32,
}

#[derive(Debug)]
pub struct SegmentMeta {
    pub base: u64,
    pub capacity: u32,
    /// Bytes written so far (header included).
    pub used: u32,
    pub live_messages: u64,
    pub live_bytes: u64,
    pub sealed: bool,
    /// Live records were copied forward; delete once this position is durable.
    pub relocated_upto: Option<u64>,
    /// Position just past the header and definitions snapshot. The segment
    /// before this one may only be deleted once this is durable: until then
    /// the definitions it holds exist nowhere else on disk.
    pub snapshot_end: u64,
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
            relocated_upto: None,
            snapshot_end,
        }
    }
}

/// Bytes for the writer: contiguous records of one segment.
struct Chunk {
    segment: u32,
    base: u64,
    offset: u32,
    data: Vec<u8>,
    /// Create the file (with this capacity) before writing.
    create: Option<u32>,
    max_message_id: u64,
}

/// A message copied forward; the index switches to it once it is written.
struct Relocation {
    id: u64,
    from: u32,
    to: Loc,
    end: u64,
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

struct Inner {
    segment_size: u32,
    active: u32,
    segments: BTreeMap<u32, SegmentMeta>,
    pending: Vec<Chunk>,
    pending_bytes: usize,
    /// Log position just past the last record appended; shared with
    /// [`LogStore`] so connections read it without taking the lock.
    appended: Arc<AtomicU64>,
    next_message_id: u64,
    next_queue_id: u32,
    defs: Definitions,
    index: IdMap<Loc>,
    /// Queues holding messages that went to more than one durable queue.
    multi: IdMap<Vec<u32>>,
    relocations: Vec<Relocation>,
    failed: Option<String>,
    shutdown: bool,
}

pub struct LogStore {
    io: Arc<dyn LogIo>,
    inner: Mutex<Inner>,
    wake_writer: Condvar,
    durable: watch::Sender<Durability>,
    /// Highest message id whose record the writer has written (not
    /// necessarily synced): records up to it can be read back from the file.
    written_id: AtomicU64,
    options: LogOptions,
    writer: Mutex<Option<JoinHandle<()>>>,
    appended: Arc<AtomicU64>,
}

/// Counters for listings and warren-dump.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentStats {
    pub base: u64,
    pub used: u32,
    pub live_messages: u64,
    pub live_bytes: u64,
    pub sealed: bool,
}

impl LogStore {
    /// Opens the log, replays it, and starts the writer on a fresh segment.
    pub fn open(io: Arc<dyn LogIo>, options: LogOptions) -> Result<(Arc<LogStore>, Recovered), String> {
        let recovered = super::recovery::recover(&*io, options.skip_damaged)?;
        let mut segments = BTreeMap::new();
        let mut next_seq = 0u32;
        let mut next_base = 0u64;
        for seg in &recovered.segments {
            let SegmentState { base, capacity, used, .. } = *seg;
            segments.insert(
                next_seq,
                // A recovered segment's successor snapshot is long durable.
                SegmentMeta::new(base, capacity, used, true, base),
            );
            next_seq += 1;
            next_base = base + capacity as u64;
        }
        let mut index = IdMap::default();
        index.reserve(recovered.messages.len());
        let mut multi = IdMap::default();
        let seq_of: HashMap<u64, u32> =
            recovered.segments.iter().enumerate().map(|(i, s)| (s.base, i as u32)).collect();
        for (id, m) in &recovered.messages {
            let Some(&seq) = seq_of.get(&m.base) else { continue };
            let queue = match &m.queues {
                QueueSet::One(q, _) => *q,
                QueueSet::Many(queues) => {
                    multi.insert(*id, queues.iter().map(|q| q.0).collect());
                    MANY_QUEUES
                }
            };
            index.insert(*id, Loc { segment: seq, offset: m.offset, len: m.len, queue });
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
        };
        // Always continue in a new segment: the old newest one keeps what
        // recovery found and nothing is ever appended behind a torn tail.
        inner.start_segment(next_seq, next_base, 0);
        let appended = inner.appended.clone();
        let store = Arc::new(LogStore {
            appended,
            io,
            inner: Mutex::new(inner),
            wake_writer: Condvar::new(),
            durable,
            written_id: AtomicU64::new(recovered.max_message_id),
            options,
            writer: Mutex::new(None),
        });
        let writer_store = store.clone();
        let handle = std::thread::Builder::new()
            .name("warren-log-writer".into())
            .spawn(move || writer_store.writer_loop())
            .map_err(|e| format!("cannot start the log writer thread: {e}"))?;
        *store.writer.lock() = Some(handle);
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
            inner.multi.insert(id, queues.to_vec());
            MANY_QUEUES
        };
        let segment = inner.active;
        inner.index.insert(id, Loc { segment, offset, len: len as u32, queue });
        if let Some(meta) = inner.segments.get_mut(&segment) {
            meta.live_messages += 1;
            meta.live_bytes += len as u64;
        }
        drop(inner);
        self.wake_writer.notify_one();
        Ok((id, end))
    }

    /// Ack tombstones: these messages left `queue` for good.
    pub fn ack(&self, queue: u32, ids: &[u64]) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        inner.check()?;
        for chunk in ids.chunks(65_536) {
            let len = RECORD_PREFIX_LEN + 2 + 8 + chunk.len() * 8;
            inner.append(len, 0, |out| encode_id_record(out, TYPE_ACK, queue, chunk));
        }
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
        for chunk in ids.chunks(65_536) {
            let len = RECORD_PREFIX_LEN + 2 + 8 + chunk.len() * 8;
            inner.append(len, 0, |out| encode_id_record(out, TYPE_DELIVERED, queue, chunk));
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

    /// Reads a message back from its segment, checking its checksum.
    pub fn read(&self, id: u64) -> Result<MessageRecord, StoreError> {
        let (base, offset) = {
            let inner = self.inner.lock();
            let loc = *inner.index.get(&id).ok_or(StoreError::Missing(id))?;
            let meta = inner.segments.get(&loc.segment).ok_or(StoreError::Missing(id))?;
            (meta.base, loc.offset)
        };
        let corrupt = |detail: String| StoreError::Corrupt { id, segment: self.io.describe(base), offset, detail };
        let segment = self.io.bytes(base).map_err(|e| corrupt(e.to_string()))?;
        match read_record_at(&segment, offset as usize) {
            Scanned::Record { record: Record::Message(m), .. } if m.id == id => Ok(m),
            Scanned::Record { record, .. } => {
                Err(corrupt(format!("found a {} record instead", type_name(record.type_code()))))
            }
            Scanned::Bad { error, .. } => Err(corrupt(error.to_string())),
            Scanned::End { .. } => Err(corrupt("no record there".into())),
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
                live_messages: m.live_messages,
                live_bytes: m.live_bytes,
                sealed: m.sealed,
            })
            .collect()
    }

    /// Stops the writer after it has written and synced what is pending.
    pub fn shutdown(&self) {
        self.inner.lock().shutdown = true;
        self.wake_writer.notify_one();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }

    fn fail(&self, what: &str, err: std::io::Error) {
        let message = format!("{what}: {err}");
        tracing::error!(
            "write-ahead log I/O error, {message}; no further writes are accepted and unconfirmed publishes are nacked; restart Warren to recover from disk"
        );
        self.inner.lock().failed = Some(message);
        self.durable.send_modify(|d| d.failed = true);
    }

    fn writer_loop(self: Arc<Self>) {
        let mut last_sync = Instant::now();
        loop {
            let (chunks, relocations) = {
                let mut inner = self.inner.lock();
                while inner.pending.is_empty() && !inner.shutdown {
                    self.wake_writer.wait(&mut inner);
                }
                if inner.pending.is_empty() {
                    return;
                }
                inner.pending_bytes = 0;
                (std::mem::take(&mut inner.pending), std::mem::take(&mut inner.relocations))
            };
            let mut touched: Vec<u64> = Vec::new();
            let mut created = false;
            let mut end = 0u64;
            let mut max_id = 0u64;
            for chunk in &chunks {
                if let Some(capacity) = chunk.create {
                    // The sealed segment's tail is synced before its successor
                    // exists, so only the newest segment can ever hold a torn
                    // write and recovery never has to guess about older ones.
                    if self.options.fsync != FsyncPolicy::Never {
                        for base in touched.drain(..) {
                            if let Err(e) = self.io.sync(base) {
                                return self.fail(&format!("fdatasync of {}", self.io.describe(base)), e);
                            }
                        }
                    }
                    if let Err(e) = self.io.create(chunk.base, capacity) {
                        return self.fail(&format!("creating {}", self.io.describe(chunk.base)), e);
                    }
                    created = true;
                }
                if let Err(e) = self.io.write_at(chunk.base, chunk.offset as u64, &chunk.data) {
                    return self.fail(&format!("writing {}", self.io.describe(chunk.base)), e);
                }
                if !touched.contains(&chunk.base) {
                    touched.push(chunk.base);
                }
                end = end.max(chunk.base + chunk.offset as u64 + chunk.data.len() as u64);
                max_id = max_id.max(chunk.max_message_id);
            }
            if max_id > 0 {
                self.written_id.fetch_max(max_id, Ordering::Release);
            }
            self.switch_relocations(relocations, end);
            let sync = match self.options.fsync {
                FsyncPolicy::EveryBatch => true,
                FsyncPolicy::Never => false,
                FsyncPolicy::Interval(every) => {
                    let due = last_sync + every;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    true
                }
            };
            if sync {
                // Every fsync below is never retried: after a failure the
                // kernel may have dropped the dirty pages, so a later success
                // would prove nothing. The log stops instead (see `fail`).
                for base in &touched {
                    if let Err(e) = self.io.sync(*base) {
                        return self.fail(&format!("fdatasync of {}", self.io.describe(*base)), e);
                    }
                }
                // A new segment file must survive a power cut too.
                if created && let Err(e) = self.io.sync_dir() {
                    return self.fail("fsync of the log directory", e);
                }
                last_sync = Instant::now();
            }
            self.durable.send_modify(|d| d.position = d.position.max(end));
            self.reclaim(end);
        }
    }

    fn switch_relocations(&self, relocations: Vec<Relocation>, written_end: u64) {
        if relocations.is_empty() {
            return;
        }
        let mut inner = self.inner.lock();
        for r in relocations {
            debug_assert!(r.end <= written_end);
            let still_there = inner.index.get(&r.id).is_some_and(|l| l.segment == r.from);
            if !still_there {
                continue;
            }
            let len = r.to.len as u64;
            if let Some(old) = inner.index.get(&r.id).copied() {
                if let Some(meta) = inner.segments.get_mut(&old.segment) {
                    meta.live_messages -= 1;
                    meta.live_bytes -= old.len as u64;
                }
                let mut new = r.to;
                new.queue = old.queue;
                inner.index.insert(r.id, new);
            }
            if let Some(meta) = inner.segments.get_mut(&r.to.segment) {
                meta.live_messages += 1;
                meta.live_bytes += len;
            }
        }
    }

    /// Deletes the oldest sealed segments once nothing live is in them, and
    /// copies the live records of a mostly dead oldest segment forward so it
    /// can go too. Only a prefix of the log is ever deleted: a segment's ack
    /// records may refer to messages in any older segment.
    fn reclaim(&self, durable: u64) {
        let mut removable = Vec::new();
        {
            let inner = self.inner.lock();
            let mut segments = inner.segments.iter().peekable();
            while let Some((seq, meta)) = segments.next() {
                // The next segment's snapshot being durable also means every
                // record of this one was written and synced.
                let successor_durable = segments.peek().is_some_and(|(_, next)| next.snapshot_end <= durable);
                if !meta.sealed
                    || !successor_durable
                    || meta.live_messages > 0
                    || meta.relocated_upto.is_some_and(|p| p > durable)
                {
                    break;
                }
                removable.push((*seq, meta.base));
            }
        }
        if !removable.is_empty() {
            for (seq, base) in &removable {
                if let Err(e) = self.io.remove(*base) {
                    tracing::warn!("cannot remove reclaimed segment {}: {e}", self.io.describe(*base));
                    break;
                }
                self.inner.lock().segments.remove(seq);
                tracing::debug!("reclaimed segment {}", self.io.describe(*base));
            }
            if let Err(e) = self.io.sync_dir() {
                tracing::warn!("fsync of the log directory after reclaim: {e}");
            }
        }
        self.maybe_relocate();
    }

    fn maybe_relocate(&self) {
        let (seq, base) = {
            let inner = self.inner.lock();
            let Some((seq, meta)) = inner.segments.iter().next() else { return };
            let sealed_after = inner.segments.values().filter(|m| m.sealed).count();
            // Copy forward when under a quarter of the oldest segment is
            // live and it is holding back at least one other sealed segment.
            if !meta.sealed
                || meta.relocated_upto.is_some()
                || meta.live_messages == 0
                || sealed_after < 2
                || meta.live_bytes * 4 > meta.used as u64
            {
                return;
            }
            (*seq, meta.base)
        };
        let Ok(bytes) = self.io.bytes(base) else { return };
        let mut inner = self.inner.lock();
        let mut offset = SEGMENT_HEADER_LEN;
        let mut last_end = 0;
        let mut copied = 0usize;
        while let Scanned::Record { len, record, .. } = read_record_at(&bytes, offset) {
            offset += len;
            let Record::Message(m) = record else { continue };
            let Some(loc) = inner.index.get(&m.id).copied() else { continue };
            if loc.segment != seq {
                continue;
            }
            let queues = if loc.queue == MANY_QUEUES {
                inner.multi.get(&m.id).cloned().unwrap_or_default()
            } else {
                vec![loc.queue]
            };
            let rec_len = message_record_len(queues.len(), &m.exchange, &m.routing_key, &m.properties, &m.body);
            let end = inner.append(rec_len, 0, |out| {
                encode_message(out, FLAG_RELOCATED, m.id, &queues, &m.exchange, &m.routing_key, &m.properties, &m.body)
            });
            let to = Loc {
                segment: inner.active,
                offset: (end - inner.active_base()) as u32 - rec_len as u32,
                len: rec_len as u32,
                queue: loc.queue,
            };
            inner.relocations.push(Relocation { id: m.id, from: seq, to, end });
            last_end = end;
            copied += 1;
        }
        if let Some(meta) = inner.segments.get_mut(&seq) {
            meta.relocated_upto = Some(last_end);
        }
        drop(inner);
        tracing::debug!("copying {copied} live messages forward out of {}", self.io.describe(base));
        self.wake_writer.notify_one();
    }
}

impl Inner {
    fn check(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(why) => Err(StoreError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    fn active_base(&self) -> u64 {
        self.segments.get(&self.active).map_or(0, |m| m.base)
    }

    /// Opens segment `seq` at `base`, big enough for its header, the
    /// definitions snapshot and a first record of `first_record` bytes.
    fn start_segment(&mut self, seq: u32, base: u64, first_record: usize) {
        let mut data = Vec::new();
        let header_at = data.len();
        data.extend_from_slice(&[0u8; SEGMENT_HEADER_LEN]);
        Record::IdWatermark { next_message_id: self.next_message_id, next_queue_id: self.next_queue_id }
            .encode(FLAG_SNAPSHOT, &mut data);
        self.defs.encode_snapshot(&mut data);
        let needed = data.len() + first_record;
        let capacity = (self.segment_size as usize).max(needed.next_multiple_of(4096)).min(u32::MAX as usize) as u32;
        let header = SegmentHeader { version: FORMAT_VERSION, base, capacity }.encode();
        data[header_at..header_at + SEGMENT_HEADER_LEN].copy_from_slice(&header);
        let used = data.len() as u32;
        self.pending_bytes += data.len();
        self.pending.push(Chunk { segment: seq, base, offset: 0, data, create: Some(capacity), max_message_id: 0 });
        self.segments.insert(seq, SegmentMeta::new(base, capacity, used, false, base + used as u64));
        self.active = seq;
        self.appended.store(base + used as u64, Ordering::Release);
    }

    /// Appends a record of exactly `len` bytes written by `encode`; returns
    /// the log position just past it.
    fn append(&mut self, len: usize, message_id: u64, encode: impl FnOnce(&mut Vec<u8>)) -> u64 {
        let (base, capacity, used) = match self.segments.get(&self.active) {
            Some(m) => (m.base, m.capacity, m.used),
            None => (0, 0, 0),
        };
        if used as usize + len > capacity as usize {
            if let Some(m) = self.segments.get_mut(&self.active) {
                m.sealed = true;
            }
            let next = self.active + 1;
            self.start_segment(next, base + capacity as u64, len);
        }
        let seq = self.active;
        let Some(meta) = self.segments.get_mut(&seq) else { return self.appended.load(Ordering::Acquire) };
        let (base, offset) = (meta.base, meta.used);
        meta.used += len as u32;
        let contiguous =
            self.pending.last().is_some_and(|c| c.segment == seq && c.offset + c.data.len() as u32 == offset);
        if !contiguous {
            self.pending.push(Chunk {
                segment: seq,
                base,
                offset,
                data: Vec::with_capacity(len.max(64 * 1024)),
                create: None,
                max_message_id: 0,
            });
        }
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

    /// `queue` no longer holds message `id`.
    fn release(&mut self, id: u64, queue: u32) {
        let Some(loc) = self.index.get(&id).copied() else { return };
        let gone = if loc.queue == MANY_QUEUES {
            match self.multi.get_mut(&id) {
                Some(queues) => {
                    queues.retain(|q| *q != queue);
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
        _ => "unknown",
    }
}
