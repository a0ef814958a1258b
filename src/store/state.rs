//! The log's in-memory state behind its one lock: the segment table, the
//! bytes waiting for the writer (chunks opened by commit-group records),
//! the message index (where each live message's record is and which
//! durable queues hold it), and appends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::definitions::Definitions;
use super::format::*;
use super::log::StoreError;

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

/// Queue id under which bodies of messages that are not persistent (or
/// not in a durable queue) are paged out to the log under memory pressure.
/// No queue definition ever has it, so replay drops these records: they
/// matter only to the process that wrote them.
pub const SPILL_QUEUE: u32 = u32::MAX - 1;

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
    pub(super) fn new(base: u64, capacity: u32, used: u32, sealed: bool, snapshot_end: u64) -> Self {
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

/// The size a new chunk's buffer starts at.
const CHUNK_BUFFER: usize = 64 * 1024;
/// Written chunks' buffers kept for reuse.
const KEPT_BUFFERS: usize = 8;
/// A written buffer larger than this (grown for a large message) is freed
/// rather than kept. A pass of S1 fills about 300 KiB: a buffer that
/// size is kept, or every pass would grow a new one from [`CHUNK_BUFFER`]
/// by doubling, copying what it held each time, under the log's lock.
const KEPT_BUFFER_MAX: usize = 1 << 20;

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

pub(super) struct Inner {
    pub segment_size: u32,
    pub active: u32,
    pub segments: BTreeMap<u32, SegmentMeta>,
    pub pending: Vec<Chunk>,
    pub pending_bytes: usize,
    /// Chunk buffers the writer wrote and gave back: new chunks take one
    /// instead of allocating. Freeing them on the writer thread made glibc
    /// lock the appending thread's arena on every pass (a futex call on
    /// each side), and allocating them again cost as much.
    pub free_buffers: Vec<Vec<u8>>,
    /// The chunk list the writer emptied, for the next pass's pending list
    /// (for the same reason).
    pub spare_chunk_list: Vec<Chunk>,
    /// Log position just past the last record appended; shared with
    /// [`LogStore`] so connections read it without taking the lock.
    pub appended: Arc<AtomicU64>,
    pub next_message_id: u64,
    pub next_queue_id: u32,
    pub defs: Definitions,
    /// The Raft groups' logs (restated, like `defs`, in every segment's snapshot).
    pub raft: super::raft::RaftLogs,
    pub index: super::index::MessageIndex,
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
    /// Live records held by [`SPILL_QUEUE`]: while there are none, acks
    /// need not look for them.
    pub spilled: usize,
}

/// Keeps only the foreign tombstones and marks that still matter: those of
/// messages with a copy in an older segment.
pub(super) fn prune_foreign(segments: &mut BTreeMap<u32, SegmentMeta>) {
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

/// The disk the log's files may take once compaction has caught up:
/// `max(2 × live, live + 4 segments)` (storage-format.md, "Compaction").
pub fn disk_bound(live: u64, segment: u64) -> u64 {
    (2 * live).max(live + 4 * segment)
}

/// Adds `id` to the ids of `queue` in `groups`: one record per queue.
pub fn group_by_queue(groups: &mut Vec<(u32, Vec<u64>)>, queue: u32, id: u64) {
    match groups.iter_mut().find(|(q, _)| *q == queue) {
        Some((_, ids)) => ids.push(id),
        None => groups.push((queue, vec![id])),
    }
}

/// Writes a record of `len` bytes at the end of `chunk`, the last chunk of
/// segment `meta`; returns the log position just past it.
fn write_record(
    meta: &mut SegmentMeta,
    chunk: &mut Chunk,
    len: usize,
    message_id: u64,
    encode: impl FnOnce(&mut Vec<u8>),
) -> u64 {
    let end = meta.base + meta.used as u64 + len as u64;
    meta.used += len as u32;
    let before = chunk.data.len();
    encode(&mut chunk.data);
    debug_assert_eq!(chunk.data.len() - before, len, "record length estimate");
    chunk.max_message_id = chunk.max_message_id.max(message_id);
    end
}

impl Inner {
    /// Bytes of live message records, and bytes the segment files take
    /// (without the spare; `with_compacted`: also segments compacted and
    /// waiting for deletion).
    pub fn live_and_files(&self, with_compacted: bool) -> (u64, u64) {
        let live = self.segments.values().map(|m| m.live_bytes).sum();
        let files = self
            .segments
            .values()
            .filter(|m| with_compacted || m.compacted_upto.is_none())
            .map(|m| m.capacity as u64)
            .sum();
        (live, files)
    }

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
    /// snapshot (definitions and Raft groups) and a first record of
    /// `first_record` bytes.
    pub fn start_segment(&mut self, seq: u32, base: u64, first_record: usize) {
        let nonce = self.key;
        let mut data = vec![0u8; SEGMENT_HEADER_LEN];
        let group_at = data.len();
        data.extend_from_slice(&[0u8; GROUP_RECORD_LEN]);
        Record::IdWatermark { next_message_id: self.next_message_id, next_queue_id: self.next_queue_id }
            .encode(FLAG_SNAPSHOT, &mut data);
        self.defs.encode_snapshot(&mut data);
        self.raft.encode_snapshot(&mut data);
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
            let (live, files) = self.live_and_files(true);
            let segment = self.segment_size as u64;
            if files + 2 * segment > disk_bound(live, segment) {
                self.compaction_behind.store(true, Ordering::Release);
            }
        }
    }

    /// An empty buffer for a new chunk of at least `len` bytes: a recycled
    /// one when it is large enough.
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        match self.free_buffers.pop() {
            Some(buffer) if buffer.capacity() >= len => buffer,
            _ => Vec::with_capacity(len.max(CHUNK_BUFFER)),
        }
    }

    /// Takes back written chunks' buffers for reuse (a few, of ordinary
    /// size: a buffer grown for a large message is freed) and the emptied
    /// list that held them.
    pub fn recycle(&mut self, spent: Vec<Vec<u8>>, emptied: Vec<Chunk>) {
        if emptied.is_empty() && emptied.capacity() > self.spare_chunk_list.capacity() {
            self.spare_chunk_list = emptied;
        }
        for mut buffer in spent {
            if self.free_buffers.len() >= KEPT_BUFFERS || buffer.capacity() > KEPT_BUFFER_MAX {
                continue;
            }
            buffer.clear();
            self.free_buffers.push(buffer);
        }
    }

    /// Appends a record of exactly `len` bytes written by `encode`; returns
    /// the log position just past it.
    pub fn append(&mut self, len: usize, message_id: u64, encode: impl FnOnce(&mut Vec<u8>)) -> u64 {
        // The common case, with one lookup of the active segment: the
        // record fits and continues the last pending chunk.
        if let Some(meta) = self.segments.get_mut(&self.active)
            && meta.used as usize + len <= meta.capacity as usize
            && let Some(chunk) = self.pending.last_mut()
            && chunk.segment == self.active
            && chunk.offset + chunk.data.len() as u32 == meta.used
        {
            let end = write_record(meta, chunk, len, message_id, encode);
            return self.appended_up_to(end, len);
        }
        self.open_chunk(len);
        let (Some(meta), Some(chunk)) = (self.segments.get_mut(&self.active), self.pending.last_mut()) else {
            return self.appended.load(Ordering::Acquire);
        };
        let end = write_record(meta, chunk, len, message_id, encode);
        self.appended_up_to(end, len)
    }

    /// Makes room for a record of `len` bytes that does not continue the
    /// last pending chunk: a new segment when the active one has no room
    /// for it, and a new chunk opened by its group record.
    fn open_chunk(&mut self, len: usize) {
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
            let mut data = self.buffer(GROUP_RECORD_LEN + len);
            let Some(meta) = self.segments.get_mut(&seq) else { return };
            let offset = meta.used;
            meta.used += GROUP_RECORD_LEN as u32;
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
    }

    /// Counts a record of `len` bytes ending at log position `end` as appended.
    fn appended_up_to(&mut self, end: u64, len: usize) -> u64 {
        self.pending_bytes += len;
        self.appended.store(end, Ordering::Release);
        end
    }

    /// Appends ack or delivered records for `ids` of `queue` (65,536 ids a
    /// record), noting those that concern messages of older segments.
    pub fn append_id_records(&mut self, kind: u8, queue: u32, ids: &[u64]) -> u64 {
        let mut end = self.appended.load(Ordering::Acquire);
        for chunk in ids.chunks(65_536) {
            let len = id_record_len(chunk.len());
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
        let Some(loc) = self.index.get(id).copied() else { return };
        // A paged-out body is released by whichever queue settles it.
        let gone = if loc.queue == SPILL_QUEUE {
            self.spilled -= 1;
            true
        } else if loc.queue == MANY_QUEUES {
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
            self.index.remove(id);
            if loc.queue == MANY_QUEUES {
                self.multi.remove(&id);
            }
            if let Some(meta) = self.segments.get_mut(&loc.segment) {
                meta.live_messages -= 1;
                meta.live_bytes -= loc.len as u64;
            }
        }
    }

    pub(super) fn mark_delivered(&mut self, id: u64, queue: u32) {
        let Some(loc) = self.index.get_mut(id) else { return };
        if loc.queue == MANY_QUEUES {
            if let Some(entry) = self.multi.get_mut(&id).and_then(|qs| qs.iter_mut().find(|q| q.0 == queue)) {
                entry.1 = true;
            }
        } else if loc.queue == queue {
            loc.delivered = true;
        }
    }

    /// Whether `id` is a body paged out under memory pressure.
    pub fn is_spilled(&self, id: u64) -> bool {
        self.spilled > 0 && self.index.get(id).is_some_and(|l| l.queue == SPILL_QUEUE)
    }

    /// The durable queues holding a live message, with their delivered marks.
    pub fn holders(&self, id: u64) -> Vec<(u32, bool)> {
        match self.index.get(id) {
            Some(loc) if loc.queue == MANY_QUEUES => self.multi.get(&id).cloned().unwrap_or_default(),
            Some(loc) => vec![(loc.queue, loc.delivered)],
            None => Vec::new(),
        }
    }
}
