//! Start-up replay: reads every retained segment in order and rebuilds the
//! durable definitions and the live messages of every durable queue.
//!
//! Each segment is read with one large read, then walked twice: a first
//! pass ([`super::walk`]) checks every frame (lengths and CRC), payload and
//! commit group, and a second applies the records. A damaged segment set
//! aside thus leaves nothing half-applied. Message, ack and delivered
//! records (nearly all of a log) are read in place without allocating; only
//! definitions are fully decoded. A few segments are read and checked at a
//! time, on all cores, so memory stays bounded by a few segments.
//!
//! A bad spot that nothing written later proves durable is a torn write
//! from a crash or power cut (no client was told it was durable): the
//! segment is cut there and start-up goes on. A bad spot in synced data is
//! damage: start-up stops with the segment and offset named, unless the
//! operator asked to skip damaged segments (they are renamed `*.damaged`
//! and their records are not replayed).
//!
//! Every segment starts with a snapshot of the definitions and the Raft
//! groups as they stood when it was opened; replay takes each snapshot as
//! the whole truth, so that compaction may delete any segment, not only
//! the oldest.

use std::time::Instant;

use bytes::Bytes;

use super::format::*;
use super::io::LogIo;
use super::log::{Definitions, IdMap};
use super::walk::{Walk, first_group_synced_before, later_synced_group, walk_segment};

#[derive(Debug, Clone, Default)]
pub struct SegmentState {
    pub base: u64,
    pub capacity: u32,
    /// Offset just past the last good record.
    pub used: u32,
    /// The next message id when the segment was opened: message records
    /// first written here have ids from this one on; lower ids are older.
    pub id_floor: u64,
    /// Ids of the message records copied forward into this segment.
    pub relocated: Vec<u64>,
    /// Tombstones here for messages first written in older segments: (queue, id).
    pub foreign_acks: Vec<(u32, u64)>,
    /// Delivered marks here for messages first written in older segments.
    pub foreign_delivered: Vec<(u32, u64)>,
    /// One past the highest id of a message record first written here.
    pub id_ceil: u64,
    pub nonce: u64,
}

/// The durable queues holding a message and whether each had handed it to a
/// consumer; one queue (the usual case) is kept inline.
#[derive(Debug, Clone)]
pub enum QueueSet {
    One(u32, bool),
    Many(Vec<(u32, bool)>),
}

impl QueueSet {
    fn from_queues(queues: impl Iterator<Item = u32>, count: usize) -> QueueSet {
        if count == 1 {
            let mut queues = queues;
            QueueSet::One(queues.next().unwrap_or(0), false)
        } else {
            QueueSet::Many(queues.map(|q| (q, false)).collect())
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, bool)> + '_ {
        let (one, many) = match self {
            QueueSet::One(q, d) => (Some((*q, *d)), &[][..]),
            QueueSet::Many(v) => (None, &v[..]),
        };
        one.into_iter().chain(many.iter().copied())
    }

    pub fn len(&self) -> usize {
        match self {
            QueueSet::One(..) => 1,
            QueueSet::Many(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the queues `keep` accepts; returns whether any is left.
    fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) -> bool {
        match self {
            QueueSet::One(q, _) => keep(*q),
            QueueSet::Many(v) => {
                v.retain(|(q, _)| keep(*q));
                !v.is_empty()
            }
        }
    }

    fn mark_delivered(&mut self, queue: u32) {
        match self {
            QueueSet::One(q, d) if *q == queue => *d = true,
            QueueSet::Many(v) => {
                if let Some(entry) = v.iter_mut().find(|(q, _)| *q == queue) {
                    entry.1 = true;
                }
            }
            _ => {}
        }
    }
}

#[derive(Debug, Clone)]
pub struct RecoveredMessage {
    pub base: u64,
    pub offset: u32,
    pub len: u32,
    pub body_len: u32,
    pub queues: QueueSet,
    /// Publish time, ms since the Unix epoch; 0 when the record predates format 3.
    pub published_ms: u64,
    /// Its offset, for a message of a stream.
    pub stream_offset: Option<u64>,
    pub priority: u8,
    /// The message's own `expiration`, in ms.
    pub expiration_ms: Option<u64>,
}

/// One message of one durable queue, as replay found it.
#[derive(Debug, Clone, Copy)]
pub struct QueueMessage {
    pub id: u64,
    pub body_len: u32,
    pub delivered: bool,
    pub published_ms: u64,
    pub stream_offset: Option<u64>,
    /// Bytes its record takes in the log.
    pub record_len: u32,
    pub priority: u8,
    pub expiration_ms: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Recovered {
    pub segments: Vec<SegmentState>,
    pub definitions: Definitions,
    /// The Raft groups' logs (format 6).
    pub raft: super::raft::RaftLogs,
    pub messages: IdMap<RecoveredMessage>,
    pub max_message_id: u64,
    pub max_queue_id: u32,
    pub records: u64,
    pub bytes: u64,
    /// Where a torn tail was cut, if one was.
    pub torn_tail: Option<(String, usize)>,
    pub set_aside: Vec<String>,
    /// The log's key (format 2 segment headers), to keep using.
    pub key: Option<u64>,
}

impl Recovered {
    /// Each durable queue's messages in publish (id) order.
    pub fn queue_messages(&self) -> std::collections::HashMap<u32, Vec<QueueMessage>> {
        let mut per_queue: std::collections::HashMap<u32, Vec<QueueMessage>> = Default::default();
        for (id, m) in &self.messages {
            for (queue, delivered) in m.queues.iter() {
                per_queue.entry(queue).or_default().push(QueueMessage {
                    id: *id,
                    body_len: m.body_len,
                    delivered,
                    published_ms: m.published_ms,
                    stream_offset: m.stream_offset,
                    record_len: m.len,
                    priority: m.priority,
                    expiration_ms: m.expiration_ms,
                });
            }
        }
        for list in per_queue.values_mut() {
            list.sort_unstable_by_key(|m| m.id);
        }
        per_queue
    }
}

/// Reads and walks a few segments at once, on the machine's cores.
/// What walking a segment found, or why it could not be read.
type SegmentRead = Result<Result<Walk, FormatError>, String>;

/// Reads and walks a few segments at once, on the machine's cores, each
/// into its buffer (reused from one window to the next).
fn read_and_walk(io: &dyn LogIo, bases: &[u64], buffers: &mut [Vec<u8>]) -> Vec<SegmentRead> {
    let one = |base: u64, buf: &mut Vec<u8>| {
        io.read_all_into(base, buf).map_err(|e| format!("{}: cannot read: {e}", io.describe(base)))?;
        Ok(walk_segment(buf))
    };
    if bases.len() <= 1 {
        return bases.iter().zip(buffers.iter_mut()).map(|(b, buf)| one(*b, buf)).collect();
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            bases.iter().zip(buffers.iter_mut()).map(|(b, buf)| scope.spawn(move || one(*b, buf))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a replay thread panicked".to_string()))).collect()
    })
}

/// Whether the first commit group of segment `base` says everything before
/// it was durable: evidence about the end of the segment before it.
fn next_says_synced(io: &dyn LogIo, base: u64) -> Option<bool> {
    let prefix = io.read_at(base, 0, 4096).or_else(|_| io.read_all(base)).ok()?;
    first_group_synced_before(&prefix)
}

/// The log's key, from the header of any readable format 2 segment.
fn log_key(io: &dyn LogIo, bases: &[u64]) -> Option<u64> {
    bases.iter().rev().find_map(|base| {
        let prefix = io.read_at(*base, 0, SEGMENT_HEADER_LEN).ok()?;
        SegmentHeader::decode(&prefix).ok().filter(|h| h.version >= 2).map(|h| h.nonce)
    })
}

/// Deals with newest segments whose header is unreadable. Zeros: a file
/// whose creation a crash interrupted; removed. Otherwise, if a later
/// writer pass in it proves the header had been synced, that is damage;
/// if not, its first pass never became durable (nothing in it was ever
/// confirmed) and it is set aside. Without another segment to take the
/// log's key from, any valid record after the header counts as proof.
fn drop_unwritten_tail(io: &dyn LogIo, bases: &mut Vec<u64>, out: &mut Recovered, skip: bool) -> Result<(), String> {
    while let Some(&last) = bases.last() {
        let bytes = match io.read_all(last) {
            Ok(bytes) => bytes,
            Err(e) => return Err(format!("{}: cannot read: {e}", io.describe(last))),
        };
        let name = io.describe(last);
        match SegmentHeader::decode(&bytes) {
            Ok(_) => return Ok(()),
            Err(_) if bytes.iter().all(|b| *b == 0) => {
                tracing::warn!("{name}: created but never written before the crash; removing it");
                io.remove(last).map_err(|e| format!("cannot remove {name}: {e}"))?;
            }
            Err(e) => {
                let synced = match log_key(io, &bases[..bases.len() - 1]) {
                    Some(key) => later_synced_group(&bytes, last, key),
                    None => {
                        let end = end_of_nonzero(&bytes, SEGMENT_HEADER_LEN_V1);
                        (SEGMENT_HEADER_LEN_V1..end)
                            .any(|at| matches!(read_record_keyed(&bytes, at, 0), Scanned::Record { .. }))
                    }
                };
                if synced {
                    damaged(io, last, out, skip, format!("{name} at offset 0: {e}"))?;
                } else {
                    let moved = io.set_aside(last).map_err(|e| format!("cannot set aside {name}: {e}"))?;
                    tracing::warn!(
                        "{name}: its header never became durable (a write cut short by a crash, never confirmed); set aside as {}",
                        moved.display()
                    );
                }
            }
        }
        bases.pop();
    }
    Ok(())
}

pub fn recover(io: &dyn LogIo, skip_damaged: bool) -> Result<Recovered, String> {
    let started = Instant::now();
    let mut bases = io.list().map_err(|e| format!("cannot list the log directory: {e}"))?;
    let mut out = Recovered::default();
    drop_unwritten_tail(io, &mut bases, &mut out, skip_damaged)?;
    let mut last_progress = Instant::now();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    let mut buffers: Vec<Vec<u8>> = (0..workers).map(|_| Vec::new()).collect();
    for (window_start, window) in bases.chunks(workers).enumerate().map(|(w, c)| (w * workers, c)) {
        let results = read_and_walk(io, window, &mut buffers);
        for (j, result) in results.into_iter().enumerate() {
            let i = window_start + j;
            let base = bases[i];
            let newest = i + 1 == bases.len();
            let name = io.describe(base);
            let bytes = &buffers[j][..];
            let walk = match result {
                Ok(r) => r,
                Err(what) => {
                    damaged(io, base, &mut out, skip_damaged, what)?;
                    continue;
                }
            };
            let walk = match walk {
                Ok(w) if w.header.base == base => w,
                Ok(w) => {
                    let what = format!("{name}: header names base {} instead", w.header.base);
                    damaged(io, base, &mut out, skip_damaged, what)?;
                    continue;
                }
                Err(e) => {
                    damaged(io, base, &mut out, skip_damaged, format!("{name} at offset 0: {e}"))?;
                    continue;
                }
            };
            if let Some(bad) = &walk.bad {
                // A sealed segment's end was synced before its successor was
                // created, unless the successor's first group says otherwise
                // (fsync = never). Format 1 sealed segments: always damage.
                let synced = bad.synced
                    || (!newest
                        && match walk.header.version {
                            1 => true,
                            _ => next_says_synced(io, bases[i + 1]).unwrap_or(true),
                        });
                if synced {
                    let what = format!("{name} at offset {}: {}", bad.offset, bad.problem);
                    damaged(io, base, &mut out, skip_damaged, what)?;
                    continue;
                }
                let end = end_of_nonzero(bytes, walk.end);
                tracing::warn!(
                    "{name}: torn write at offset {} ({}), never confirmed; cutting {} bytes from offset {}",
                    bad.offset,
                    bad.problem,
                    end - walk.end,
                    walk.end
                );
                io.write_at(base, walk.end as u64, &vec![0u8; end - walk.end])
                    .and_then(|_| io.sync(base))
                    .map_err(|e| format!("cannot cut the torn tail of {name}: {e}"))?;
                out.torn_tail = Some((name.clone(), walk.end));
            }
            if walk.header.version >= 2 {
                out.key = Some(walk.header.nonce);
            }
            let mut state = SegmentState {
                base,
                capacity: walk.header.capacity,
                used: walk.end as u32,
                id_floor: u64::MAX,
                nonce: walk.header.nonce,
                ..Default::default()
            };
            for frame in &walk.frames {
                apply(&mut out, &mut state, frame, bytes);
            }
            out.bytes += walk.end as u64;
            out.segments.push(state);
            if last_progress.elapsed().as_secs() >= 1 {
                last_progress = Instant::now();
                tracing::info!(
                    "replaying the log: segment {} of {}, {} records, {} live messages so far",
                    i + 1,
                    bases.len(),
                    out.records,
                    out.messages.len()
                );
            }
        }
    }
    // Messages of queues deleted later in the log (queue ids are never reused).
    let defs = &out.definitions;
    out.messages.retain(|_, m| m.queues.retain(|q| defs.queues.contains_key(&q)));
    let elapsed = started.elapsed();
    let secs = elapsed.as_secs_f64().max(1e-6);
    tracing::info!(
        "recovered {} messages in {} durable queues, {} exchanges, {} bindings from {} segments ({:.1} MB, {} records) in {} ms ({:.0} MB/s, {:.0} records/s)",
        out.messages.len(),
        out.definitions.queues.len(),
        out.definitions.exchanges.len(),
        out.definitions.bindings.len(),
        out.segments.len(),
        out.bytes as f64 / 1e6,
        out.records,
        elapsed.as_millis(),
        out.bytes as f64 / 1e6 / secs,
        out.records as f64 / secs
    );
    Ok(out)
}

fn damaged(io: &dyn LogIo, base: u64, out: &mut Recovered, skip: bool, what: String) -> Result<(), String> {
    if !skip {
        return Err(format!(
            "damaged log segment: {what}. Nothing was changed. Inspect it with `warren-dump --verify`; to start anyway without this segment's records, restart with --skip-damaged-segments"
        ));
    }
    let moved = io.set_aside(base).map_err(|e| format!("cannot set aside {}: {e}", io.describe(base)))?;
    tracing::error!(
        "damaged log segment: {what}; set aside as {} and skipped (its messages are lost)",
        moved.display()
    );
    out.set_aside.push(moved.display().to_string());
    Ok(())
}

/// Applies one record that the first pass already checked.
fn apply(out: &mut Recovered, seg: &mut SegmentState, frame: &Frame, segment: &[u8]) {
    let base = seg.base;
    let payload = frame.payload(segment);
    // Ids are never reused: the next ones must exceed every id any retained
    // record mentions, or an old ack could settle a new message.
    match frame.kind {
        TYPE_GROUP => {}
        TYPE_MESSAGE => {
            out.records += 1;
            let Ok(m) = peek_message(payload, frame.flags) else { return };
            out.max_message_id = out.max_message_id.max(m.id);
            out.max_queue_id = out.max_queue_id.max(m.queues().max().unwrap_or(0));
            if frame.flags & FLAG_RELOCATED == 0 {
                seg.id_floor = seg.id_floor.min(m.id);
                seg.id_ceil = seg.id_ceil.max(m.id + 1);
            } else {
                seg.relocated.push(m.id);
                if let Some(existing) = out.messages.get_mut(&m.id) {
                    existing.base = base;
                    existing.offset = frame.offset as u32;
                    existing.len = frame.len as u32;
                    // The copy lists the queues still holding the message.
                    if !existing.queues.retain(|q| m.queues().any(|x| x == q)) {
                        out.messages.remove(&m.id);
                    }
                    return;
                }
            }
            out.messages.insert(
                m.id,
                RecoveredMessage {
                    base,
                    offset: frame.offset as u32,
                    len: frame.len as u32,
                    body_len: m.body_len,
                    queues: QueueSet::from_queues(m.queues(), m.queue_count()),
                    published_ms: m.published_ms.unwrap_or(0),
                    stream_offset: m.stream_offset,
                    priority: m.priority,
                    expiration_ms: m.expiration_ms,
                },
            );
        }
        TYPE_ACK => {
            out.records += 1;
            let Ok((queue, ids)) = peek_id_list(payload) else { return };
            out.max_queue_id = out.max_queue_id.max(queue);
            for id in ids {
                out.max_message_id = out.max_message_id.max(id);
                if id < seg.id_floor {
                    seg.foreign_acks.push((queue, id));
                }
                if let Some(m) = out.messages.get_mut(&id)
                    && !m.queues.retain(|q| q != queue)
                {
                    out.messages.remove(&id);
                }
            }
        }
        TYPE_DELIVERED => {
            out.records += 1;
            let Ok((queue, ids)) = peek_id_list(payload) else { return };
            out.max_queue_id = out.max_queue_id.max(queue);
            for id in ids {
                out.max_message_id = out.max_message_id.max(id);
                if id < seg.id_floor {
                    seg.foreign_delivered.push((queue, id));
                }
                if let Some(m) = out.messages.get_mut(&id) {
                    m.queues.mark_delivered(queue);
                }
            }
        }
        kind => {
            out.records += 1;
            let Ok(record) = Record::decode(kind, frame.flags, Bytes::copy_from_slice(payload)) else { return };
            match &record {
                Record::QueueDeclare { queue, .. } | Record::QueueDelete { queue } => {
                    out.max_queue_id = out.max_queue_id.max(*queue);
                }
                Record::IdWatermark { next_message_id, next_queue_id } => {
                    out.max_message_id = out.max_message_id.max(next_message_id.saturating_sub(1));
                    out.max_queue_id = out.max_queue_id.max(next_queue_id.saturating_sub(1));
                    if frame.flags & FLAG_SNAPSHOT != 0 {
                        // The snapshot that follows is every definition as it
                        // stood when this segment was opened: it replaces
                        // what older segments said, so that a deleted segment
                        // in the middle (compaction) loses no deletion.
                        seg.id_floor = seg.id_floor.min(*next_message_id);
                        out.definitions = Definitions::default();
                        out.raft = Default::default();
                    }
                }
                _ => {}
            }
            out.definitions.apply(&record);
            out.raft.apply(&record);
        }
    }
}
