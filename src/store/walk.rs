//! Reading a segment back: the valid records from its start, where they
//! end, and — at the first spot that is not a valid record — whether the
//! bytes there had been made durable (damage) or may be a write the disk
//! never finished (a torn write, which recovery cuts).
//!
//! Format 2 segments hold commit groups: each writer pass starts what it
//! writes to a segment with a group record giving the group's length and
//! whether everything before it was durable when it was written. The writer
//! only writes a pass after the previous pass's fdatasync returned, so a
//! readable group written after a bad spot proves the bad spot was synced:
//! that is damage. A bad spot with no such group after it lies in the last
//! pass, which the kernel may have written back in any page order before a
//! power cut, and which no client was told was durable: a torn write. Group
//! records are checksummed with the log's random key (in every segment
//! header) and name their own position, so neither a message body nor a
//! stale copy can pass for one.
//!
//! Format 1 segments have no groups: a bad spot there is damage when any
//! valid record follows it (the old rule, kept for logs written before).
//! Recovery and `warren-dump` both judge segments through this module.

use bytes::Bytes;

use super::format::*;

/// A spot of a segment that is not a valid record.
#[derive(Debug, Clone)]
pub struct BadSpot {
    pub offset: usize,
    pub problem: String,
    /// What the decoder said, when a record failed to decode.
    pub error: Option<FormatError>,
    /// Something written after this spot proves it had been made durable.
    pub synced: bool,
}

/// What reading one segment found.
#[derive(Debug, Clone)]
pub struct Walk {
    pub header: SegmentHeader,
    /// Valid records before the first bad spot (group records included).
    pub frames: Vec<Frame>,
    /// Offset just past the last complete group (format 2) or valid record
    /// (format 1): where a cut of a torn write starts.
    pub end: usize,
    pub bad: Option<BadSpot>,
    /// Format 2: whether the segment's first group says everything before
    /// the segment was durable when it was written (evidence about the end
    /// of the previous segment).
    pub first_group_synced_before: Option<bool>,
}

/// Checks that a record's payload decodes, without keeping it.
pub fn check_payload(frame: &Frame, segment: &[u8]) -> Result<(), FormatError> {
    let payload = frame.payload(segment);
    match frame.kind {
        TYPE_MESSAGE => peek_message(payload, frame.flags).map(|_| ()),
        TYPE_ACK | TYPE_DELIVERED => peek_id_list(payload).map(|_| ()),
        kind => Record::decode(kind, frame.flags, Bytes::copy_from_slice(payload)).map(|_| ()),
    }
}

/// The group record at `offset`, if a valid one for this segment is there.
fn group_at(bytes: &[u8], offset: usize, header: &SegmentHeader) -> Option<(Frame, u64, u32, bool)> {
    // Cheap filters first: the length field and the type byte.
    let prefix = bytes.get(offset..offset + RECORD_PREFIX_LEN + 1)?;
    if u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize != GROUP_RECORD_LEN - RECORD_PREFIX_LEN
        || prefix[RECORD_PREFIX_LEN] != TYPE_GROUP
    {
        return None;
    }
    let Framed::Record(frame) = frame_at_keyed(bytes, offset, header.nonce) else { return None };
    let payload = frame.payload(bytes);
    let Ok(Record::Group { position, length, synced_before }) =
        Record::decode(TYPE_GROUP, frame.flags, Bytes::copy_from_slice(payload))
    else {
        return None;
    };
    (position == header.base + offset as u64).then_some((frame, position, length, synced_before))
}

/// Whether a valid group that says everything before it was durable starts
/// anywhere after `from` (up to the last non-zero byte).
fn synced_group_after(bytes: &[u8], from: usize, header: &SegmentHeader) -> bool {
    let end = end_of_nonzero(bytes, from);
    (from + 1..end).any(|at| group_at(bytes, at, header).is_some_and(|g| g.3))
}

/// Whether any valid record starts after `from`: format 1's evidence.
fn record_after(bytes: &[u8], from: usize) -> bool {
    let end = end_of_nonzero(bytes, from);
    (from + 1..end)
        .any(|at| matches!(frame_at_keyed(bytes, at, 0), Framed::Record(f) if check_payload(&f, bytes).is_ok()))
}

/// Reads a segment's records from the start; `Err` when the header itself
/// is unreadable.
pub fn walk_segment(bytes: &[u8]) -> Result<Walk, FormatError> {
    let header = SegmentHeader::decode(bytes)?;
    let mut walk = Walk { header, frames: Vec::new(), end: header.len(), bad: None, first_group_synced_before: None };
    if header.version == 1 {
        walk_v1(bytes, &mut walk);
    } else {
        walk_v2(bytes, &mut walk);
    }
    Ok(walk)
}

fn walk_v1(bytes: &[u8], walk: &mut Walk) {
    let mut offset = walk.header.len();
    let bad = loop {
        match frame_at_keyed(bytes, offset, 0) {
            Framed::Record(frame) => {
                if let Err(e) = check_payload(&frame, bytes) {
                    break (offset, e.to_string(), Some(e));
                }
                walk.frames.push(frame);
                offset += frame.len;
            }
            Framed::End { offset: at } => {
                offset = at;
                if is_zero_tail(bytes, at) {
                    walk.end = at;
                    return;
                }
                break (at, "non-zero bytes after the end of the records".to_string(), None);
            }
            Framed::Bad { offset: at, error } => break (at, error.to_string(), Some(error)),
        }
    };
    walk.end = offset;
    let synced = record_after(bytes, bad.0);
    walk.bad = Some(BadSpot { offset: bad.0, problem: bad.1, error: bad.2, synced });
}

fn walk_v2(bytes: &[u8], walk: &mut Walk) {
    let header = walk.header;
    let mut offset = header.len();
    loop {
        match frame_at_keyed(bytes, offset, header.nonce) {
            Framed::End { offset: at } if is_zero_tail(bytes, at) => {
                walk.end = at;
                return;
            }
            Framed::End { offset: at } => {
                let synced = synced_group_after(bytes, at, &header);
                walk.end = at;
                walk.bad = Some(BadSpot {
                    offset: at,
                    problem: "non-zero bytes after the end of the records".into(),
                    error: None,
                    synced,
                });
                return;
            }
            Framed::Bad { offset: at, error } => {
                walk.end = at;
                let synced = synced_group_after(bytes, at, &header);
                walk.bad = Some(BadSpot { offset: at, problem: error.to_string(), error: Some(error), synced });
                return;
            }
            Framed::Record(_) => {}
        }
        let Some((group, _, length, synced_before)) = group_at(bytes, offset, &header) else {
            walk.end = offset;
            let synced = synced_group_after(bytes, offset, &header);
            walk.bad = Some(BadSpot {
                offset,
                problem: "a record where a commit group should start".into(),
                error: None,
                synced,
            });
            return;
        };
        if walk.first_group_synced_before.is_none() {
            walk.first_group_synced_before = Some(synced_before);
        }
        let group_end = offset + group.len + length as usize;
        if group_end > bytes.len() {
            walk.end = offset;
            walk.bad = Some(BadSpot {
                offset,
                problem: format!("a commit group of {length} bytes runs past the end of the segment"),
                error: None,
                synced: false,
            });
            return;
        }
        // A group's records count only once the whole group has been read:
        // a group cut short is dropped whole (its first records may be half
        // of a definitions snapshot).
        let mut group_frames = vec![group];
        let mut at = offset + group.len;
        while at < group_end {
            let problem = match frame_at_keyed(bytes, at, header.nonce) {
                Framed::Record(frame) if frame.kind != TYPE_GROUP && at + frame.len <= group_end => {
                    match check_payload(&frame, bytes) {
                        Ok(()) => {
                            group_frames.push(frame);
                            at += frame.len;
                            continue;
                        }
                        Err(e) => (e.to_string(), Some(e)),
                    }
                }
                Framed::Record(frame) if frame.kind == TYPE_GROUP => {
                    ("a commit group inside another one".to_string(), None)
                }
                Framed::Record(_) => ("a record that runs past the end of its commit group".to_string(), None),
                Framed::End { .. } => ("the records stop before the end of their commit group".to_string(), None),
                Framed::Bad { error, .. } => (error.to_string(), Some(error)),
            };
            // The next group's place is known: if it holds a group written
            // after this one was synced, this one had been durable.
            let synced = match group_at(bytes, group_end, &header) {
                Some(next) => next.3,
                None => synced_group_after(bytes, group_end, &header),
            };
            walk.end = offset;
            walk.bad = Some(BadSpot { offset: at, problem: problem.0, error: problem.1, synced });
            return;
        }
        walk.frames.append(&mut group_frames);
        offset = group_end;
        walk.end = offset;
    }
}

/// Whether a segment whose header is unreadable holds a valid commit group
/// after its first one that says everything before it was durable: proof
/// that its first writer pass, header included, had been synced. `key` is
/// the log's key, read from another segment's header.
pub fn later_synced_group(bytes: &[u8], base: u64, key: u64) -> bool {
    let header = SegmentHeader::new(base, bytes.len() as u32, key);
    synced_group_after(bytes, SEGMENT_HEADER_LEN, &header)
}

/// From the first bytes of a segment: whether its first commit group says
/// everything before the segment was durable when it was written (`None`
/// for format 1 or when the header or group is unreadable).
pub fn first_group_synced_before(prefix: &[u8]) -> Option<bool> {
    let header = SegmentHeader::decode(prefix).ok()?;
    if header.version == 1 {
        return None;
    }
    group_at(prefix, header.len(), &header).map(|g| g.3)
}
