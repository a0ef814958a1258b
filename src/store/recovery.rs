//! Start-up replay: reads every retained segment in order and rebuilds the
//! durable definitions and the live messages of every durable queue.
//!
//! Each segment is read twice from its mapping: a first pass checks every
//! frame (lengths and CRC) and payload structure, and a second applies the
//! records. A damaged segment set aside thus leaves nothing half-applied.
//! Message, ack and delivered records (nearly all of a log) are read in
//! place without allocating; only definitions are fully decoded.
//!
//! A record that fails its checksum (or does not parse) at the end of the
//! newest segment, with no valid record after it, is a torn tail left by a
//! crash in the middle of a write: it is zeroed and start-up goes on. Damage
//! anywhere else stops start-up with the segment and offset named, unless
//! the operator asked to skip damaged segments (they are renamed
//! `*.damaged` and their records are not replayed).

use std::time::Instant;

use bytes::Bytes;

use super::format::*;
use super::io::LogIo;
use super::log::{Definitions, IdMap};

#[derive(Debug, Clone, Copy)]
pub struct SegmentState {
    pub base: u64,
    pub capacity: u32,
    /// Offset just past the last good record.
    pub used: u32,
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
}

#[derive(Debug, Default)]
pub struct Recovered {
    pub segments: Vec<SegmentState>,
    pub definitions: Definitions,
    pub messages: IdMap<RecoveredMessage>,
    pub max_message_id: u64,
    pub max_queue_id: u32,
    pub records: u64,
    pub bytes: u64,
    /// Where a torn tail was cut, if one was.
    pub torn_tail: Option<(String, usize)>,
    pub set_aside: Vec<String>,
}

impl Recovered {
    /// Each durable queue's messages in publish (id) order: (message id,
    /// body length, delivered).
    pub fn queue_messages(&self) -> std::collections::HashMap<u32, Vec<(u64, u32, bool)>> {
        let mut per_queue: std::collections::HashMap<u32, Vec<(u64, u32, bool)>> = Default::default();
        for (id, m) in &self.messages {
            for (queue, delivered) in m.queues.iter() {
                per_queue.entry(queue).or_default().push((*id, m.body_len, delivered));
            }
        }
        for list in per_queue.values_mut() {
            list.sort_unstable_by_key(|(id, _, _)| *id);
        }
        per_queue
    }
}

/// First pass over a segment: the valid frames, where they end, and the
/// first problem found.
struct Scan {
    frames: Vec<Frame>,
    used: usize,
    problem: Option<(usize, String)>,
}

fn check_payload(frame: &Frame, segment: &[u8]) -> Result<(), FormatError> {
    let payload = frame.payload(segment);
    match frame.kind {
        TYPE_MESSAGE => peek_message(payload).map(|_| ()),
        TYPE_ACK | TYPE_DELIVERED => peek_id_list(payload).map(|_| ()),
        kind => Record::decode(kind, Bytes::copy_from_slice(payload)).map(|_| ()),
    }
}

fn scan_segment(bytes: &[u8]) -> Scan {
    let mut offset = SEGMENT_HEADER_LEN;
    let mut frames = Vec::new();
    loop {
        match frame_at(bytes, offset) {
            Framed::Record(frame) => {
                if let Err(e) = check_payload(&frame, bytes) {
                    return Scan { frames, used: offset, problem: Some((offset, e.to_string())) };
                }
                frames.push(frame);
                offset += frame.len;
            }
            Framed::End { offset: at } => {
                let problem =
                    (!is_zero_tail(bytes, at)).then(|| (at, "non-zero bytes after the end of the records".to_string()));
                return Scan { frames, used: at, problem };
            }
            Framed::Bad { offset: at, error } => {
                return Scan { frames, used: at, problem: Some((at, error.to_string())) };
            }
        }
    }
}

/// The first pass over every segment, spread over the machine's cores:
/// checking CRCs and faulting the mappings in is most of a replay's cost,
/// and segments can be checked independently.
fn scan_all(segments: &[Bytes]) -> Vec<Scan> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4).min(segments.len().max(1));
    if workers <= 1 {
        return segments.iter().map(|s| scan_segment(s)).collect();
    }
    let mut results: Vec<Option<Scan>> = (0..segments.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || {
                    segments
                        .iter()
                        .enumerate()
                        .skip(w)
                        .step_by(workers)
                        .map(|(i, s)| (i, scan_segment(s)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            // A panicking scan thread would be a bug; its segments are then
            // scanned again below on this thread.
            if let Ok(done) = handle.join() {
                for (i, scan) in done {
                    results[i] = Some(scan);
                }
            }
        }
    });
    results.into_iter().zip(segments).map(|(r, s)| r.unwrap_or_else(|| scan_segment(s))).collect()
}

/// Whether any valid record starts after `offset` (within the non-zero data).
fn valid_record_after(bytes: &Bytes, offset: usize) -> bool {
    let end = end_of_nonzero(bytes, offset);
    (offset + 1..end).any(|at| matches!(read_record_at(bytes, at), Scanned::Record { .. }))
}

/// A segment file created by a batch that never became durable: no valid
/// header (zeros, or a torn write) and no valid record anywhere in it, so
/// there is nothing in it to recover.
fn never_written(bytes: &Bytes) -> bool {
    SegmentHeader::decode(bytes).is_err() && !valid_record_after(bytes, SEGMENT_HEADER_LEN.saturating_sub(1))
}

pub fn recover(io: &dyn LogIo, skip_damaged: bool) -> Result<Recovered, String> {
    let started = Instant::now();
    let mut bases = io.list().map_err(|e| format!("cannot list the log directory: {e}"))?;
    // Segment files whose creation happened in the batch a crash interrupted
    // hold nothing that was ever confirmed: drop them first, so the segment
    // before them is the newest one (the only one allowed a torn tail).
    while let Some(&last) = bases.last() {
        let bytes = io.bytes(last).map_err(|e| format!("cannot read {}: {e}", io.describe(last)))?;
        if !never_written(&bytes) {
            break;
        }
        tracing::warn!("{}: created but never written before the crash; removing it", io.describe(last));
        io.remove(last).map_err(|e| format!("cannot remove {}: {e}", io.describe(last)))?;
        bases.pop();
    }
    let mut out = Recovered::default();
    let mut last_progress = Instant::now();
    let contents: Vec<Bytes> = bases
        .iter()
        .map(|base| io.bytes(*base).map_err(|e| format!("cannot read {}: {e}", io.describe(*base))))
        .collect::<Result<_, _>>()?;
    let mut scans = scan_all(&contents).into_iter();
    for (i, (base, bytes)) in bases.iter().copied().zip(contents).enumerate() {
        let newest = i + 1 == bases.len();
        let name = io.describe(base);
        let Some(scan) = scans.next() else { break };
        let header = match SegmentHeader::decode(&bytes) {
            Ok(h) if h.base == base => h,
            Ok(h) => {
                damaged(io, base, &mut out, skip_damaged, format!("{name}: header names base {} instead", h.base))?;
                continue;
            }
            Err(e) => {
                damaged(io, base, &mut out, skip_damaged, format!("{name} at offset 0: {e}"))?;
                continue;
            }
        };
        if let Some((offset, problem)) = &scan.problem {
            if newest && !valid_record_after(&bytes, *offset) {
                let end = end_of_nonzero(&bytes, *offset);
                tracing::warn!("{name}: torn tail at offset {offset} ({problem}); cutting {} bytes", end - offset);
                io.write_at(base, *offset as u64, &vec![0u8; end - offset])
                    .and_then(|_| io.sync(base))
                    .map_err(|e| format!("cannot cut the torn tail of {name}: {e}"))?;
                out.torn_tail = Some((name.clone(), *offset));
            } else {
                damaged(io, base, &mut out, skip_damaged, format!("{name} at offset {offset}: {problem}"))?;
                continue;
            }
        }
        for frame in &scan.frames {
            apply(&mut out, base, frame, &bytes);
        }
        out.bytes += scan.used as u64;
        out.segments.push(SegmentState { base, capacity: header.capacity, used: scan.used as u32 });
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
fn apply(out: &mut Recovered, base: u64, frame: &Frame, segment: &[u8]) {
    out.records += 1;
    let payload = frame.payload(segment);
    // Ids are never reused: the next ones must exceed every id any retained
    // record mentions, or an old ack could settle a new message.
    match frame.kind {
        TYPE_MESSAGE => {
            let Ok(m) = peek_message(payload) else { return };
            out.max_message_id = out.max_message_id.max(m.id);
            out.max_queue_id = out.max_queue_id.max(m.queues().max().unwrap_or(0));
            if frame.flags & FLAG_RELOCATED != 0
                && let Some(existing) = out.messages.get_mut(&m.id)
            {
                existing.base = base;
                existing.offset = frame.offset as u32;
                existing.len = frame.len as u32;
                // The copy lists the queues still holding the message.
                if !existing.queues.retain(|q| m.queues().any(|x| x == q)) {
                    out.messages.remove(&m.id);
                }
                return;
            }
            out.messages.insert(
                m.id,
                RecoveredMessage {
                    base,
                    offset: frame.offset as u32,
                    len: frame.len as u32,
                    body_len: m.body_len,
                    queues: QueueSet::from_queues(m.queues(), m.queue_count()),
                },
            );
        }
        TYPE_ACK => {
            let Ok((queue, ids)) = peek_id_list(payload) else { return };
            out.max_queue_id = out.max_queue_id.max(queue);
            for id in ids {
                out.max_message_id = out.max_message_id.max(id);
                if let Some(m) = out.messages.get_mut(&id)
                    && !m.queues.retain(|q| q != queue)
                {
                    out.messages.remove(&id);
                }
            }
        }
        TYPE_DELIVERED => {
            let Ok((queue, ids)) = peek_id_list(payload) else { return };
            out.max_queue_id = out.max_queue_id.max(queue);
            for id in ids {
                out.max_message_id = out.max_message_id.max(id);
                if let Some(m) = out.messages.get_mut(&id) {
                    m.queues.mark_delivered(queue);
                }
            }
        }
        kind => {
            let Ok(record) = Record::decode(kind, Bytes::copy_from_slice(payload)) else { return };
            match &record {
                Record::QueueDeclare { queue, .. } | Record::QueueDelete { queue } => {
                    out.max_queue_id = out.max_queue_id.max(*queue);
                }
                Record::IdWatermark { next_message_id, next_queue_id } => {
                    out.max_message_id = out.max_message_id.max(next_message_id.saturating_sub(1));
                    out.max_queue_id = out.max_queue_id.max(next_queue_id.saturating_sub(1));
                }
                _ => {}
            }
            out.definitions.apply(&record);
        }
    }
}
