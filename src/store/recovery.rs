//! Start-up replay: reads every retained segment in order and rebuilds the
//! durable definitions and the live messages of every durable queue.
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

#[derive(Debug, Clone)]
pub struct RecoveredMessage {
    pub base: u64,
    pub offset: u32,
    pub len: u32,
    pub body_len: u32,
    /// Durable queues still holding the message, and whether it had been
    /// handed to a consumer of that queue.
    pub queues: Vec<(u32, bool)>,
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
    /// Each durable queue's messages in publish (id) order, with the
    /// delivered flag.
    /// Each entry is (message id, body length, delivered).
    pub fn queue_messages(&self) -> std::collections::HashMap<u32, Vec<(u64, u32, bool)>> {
        let mut per_queue: std::collections::HashMap<u32, Vec<(u64, u32, bool)>> = Default::default();
        for (id, m) in &self.messages {
            for (queue, delivered) in &m.queues {
                per_queue.entry(*queue).or_default().push((*id, m.body_len, *delivered));
            }
        }
        for list in per_queue.values_mut() {
            list.sort_unstable_by_key(|(id, _, _)| *id);
        }
        per_queue
    }
}

/// A segment's records, collected before they are applied so that a damaged
/// segment set aside leaves no half-applied state.
struct Scan {
    records: Vec<(usize, usize, u8, Record)>,
    used: usize,
    problem: Option<(usize, String)>,
}

fn scan_segment(bytes: &Bytes) -> Scan {
    let mut offset = SEGMENT_HEADER_LEN;
    let mut records = Vec::new();
    loop {
        match read_record_at(bytes, offset) {
            Scanned::Record { offset: at, len, flags, record } => {
                records.push((at, len, flags, record));
                offset += len;
            }
            Scanned::End { offset: at } => {
                let problem =
                    (!is_zero_tail(bytes, at)).then(|| (at, "non-zero bytes after the end of the records".to_string()));
                return Scan { records, used: at, problem };
            }
            Scanned::Bad { offset: at, error } => {
                return Scan { records, used: at, problem: Some((at, error.to_string())) };
            }
        }
    }
}

/// Whether any valid record starts after `offset` (within the non-zero data).
fn valid_record_after(bytes: &Bytes, offset: usize) -> bool {
    let end = end_of_nonzero(bytes, offset);
    (offset + 1..end).any(|at| matches!(read_record_at(bytes, at), Scanned::Record { .. }))
}

pub fn recover(io: &dyn LogIo, skip_damaged: bool) -> Result<Recovered, String> {
    let started = Instant::now();
    let bases = io.list().map_err(|e| format!("cannot list the log directory: {e}"))?;
    let mut out = Recovered::default();
    let mut last_progress = Instant::now();
    for (i, base) in bases.iter().copied().enumerate() {
        let newest = i + 1 == bases.len();
        let name = io.describe(base);
        let bytes = io.bytes(base).map_err(|e| format!("cannot read {name}: {e}"))?;
        let header = match SegmentHeader::decode(&bytes) {
            Ok(h) if h.base == base => h,
            Ok(h) => {
                damaged(io, base, &mut out, skip_damaged, format!("{name}: header names base {} instead", h.base))?;
                continue;
            }
            Err(e) if newest => {
                // A segment created by a write that never became durable.
                tracing::warn!("{name}: {e}; the segment was never made durable, removing it");
                io.remove(base).map_err(|e| format!("cannot remove {name}: {e}"))?;
                continue;
            }
            Err(e) => {
                damaged(io, base, &mut out, skip_damaged, format!("{name} at offset 0: {e}"))?;
                continue;
            }
        };
        let scan = scan_segment(&bytes);
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
        for (offset, len, flags, record) in scan.records {
            apply(&mut out, base, offset as u32, len as u32, flags, record);
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
    out.messages.retain(|_, m| {
        m.queues.retain(|(q, _)| defs.queues.contains_key(q));
        !m.queues.is_empty()
    });
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

fn apply(out: &mut Recovered, base: u64, offset: u32, len: u32, flags: u8, record: Record) {
    out.records += 1;
    // Ids are never reused: the next ones must exceed every id any retained
    // record mentions, or an old ack could settle a new message.
    match &record {
        Record::Message(m) => {
            out.max_message_id = out.max_message_id.max(m.id);
            out.max_queue_id = out.max_queue_id.max(m.queues.iter().copied().max().unwrap_or(0));
        }
        Record::Ack { queue, ids } | Record::Delivered { queue, ids } => {
            out.max_message_id = out.max_message_id.max(ids.iter().copied().max().unwrap_or(0));
            out.max_queue_id = out.max_queue_id.max(*queue);
        }
        Record::QueueDeclare { queue, .. } | Record::QueueDelete { queue } => {
            out.max_queue_id = out.max_queue_id.max(*queue);
        }
        Record::IdWatermark { next_message_id, next_queue_id } => {
            out.max_message_id = out.max_message_id.max(next_message_id.saturating_sub(1));
            out.max_queue_id = out.max_queue_id.max(next_queue_id.saturating_sub(1));
        }
        _ => {}
    }
    match record {
        Record::Message(m) => {
            if flags & FLAG_RELOCATED != 0
                && let Some(existing) = out.messages.get_mut(&m.id)
            {
                existing.base = base;
                existing.offset = offset;
                existing.len = len;
                existing.body_len = m.body.len() as u32;
                existing.queues.retain(|(q, _)| m.queues.contains(q));
                return;
            }
            out.messages.insert(
                m.id,
                RecoveredMessage {
                    base,
                    offset,
                    len,
                    body_len: m.body.len() as u32,
                    queues: m.queues.iter().map(|q| (*q, false)).collect(),
                },
            );
        }
        Record::Ack { queue, ids } => {
            for id in ids {
                if let Some(m) = out.messages.get_mut(&id) {
                    m.queues.retain(|(q, _)| *q != queue);
                    if m.queues.is_empty() {
                        out.messages.remove(&id);
                    }
                }
            }
        }
        Record::Delivered { queue, ids } => {
            for id in ids {
                if let Some(m) = out.messages.get_mut(&id)
                    && let Some(entry) = m.queues.iter_mut().find(|(q, _)| *q == queue)
                {
                    entry.1 = true;
                }
            }
        }
        other => out.definitions.apply(&other),
    }
}
