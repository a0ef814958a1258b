//! Reading the format out of a segment's bytes: framing and checksum
//! checks at an offset ([`frame_at`]), whole-record reads, and the
//! allocation-free peeks recovery uses on message and id-list records (and
//! on the message properties a queue orders and expires by). What the bytes
//! are is defined in [`super::format`].

use bytes::Bytes;

use super::format::*;

/// What the scanner found at one offset of a segment.
#[derive(Debug)]
pub enum Scanned {
    /// A record whose checksum and payload are valid.
    Record { offset: usize, len: usize, flags: u8, record: Record },
    /// A zero length field: the end of written data.
    End { offset: usize },
    /// Bytes that are not a valid record.
    Bad { offset: usize, error: FormatError },
}

/// A record whose frame and checksum are valid, not yet decoded.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub offset: usize,
    /// Bytes the record occupies, prefix included.
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
}

impl Frame {
    /// The payload (after type and flags).
    pub fn payload<'a>(&self, segment: &'a [u8]) -> &'a [u8] {
        &segment[self.offset + RECORD_PREFIX_LEN + 2..self.offset + self.len]
    }
}

/// What [`frame_at`] found.
#[derive(Debug)]
pub enum Framed {
    Record(Frame),
    End { offset: usize },
    Bad { offset: usize, error: FormatError },
}

/// The nonce of a format 2 segment, from its header; 0 when the header is
/// unreadable or of format 1 (whose segments hold no group records).
pub fn segment_nonce(segment: &[u8]) -> u64 {
    SegmentHeader::decode(segment).map_or(0, |h| h.nonce)
}

/// Checks the frame at `offset` (length bounds and CRC) without decoding the
/// payload; a group record's checksum is checked with the segment's nonce.
pub fn frame_at(segment: &[u8], offset: usize) -> Framed {
    frame_at_keyed(segment, offset, segment_nonce(segment))
}

/// [`frame_at`] with the segment's nonce already known.
pub fn frame_at_keyed(segment: &[u8], offset: usize, nonce: u64) -> Framed {
    let room = segment.len().saturating_sub(offset);
    if room < RECORD_PREFIX_LEN {
        return Framed::End { offset };
    }
    let b = &segment[offset..offset + RECORD_PREFIX_LEN];
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let stored = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if len == 0 {
        return Framed::End { offset };
    }
    if len < RECORD_MIN_LEN {
        return Framed::Bad { offset, error: FormatError::LengthTooSmall(len) };
    }
    if len as usize > room - RECORD_PREFIX_LEN {
        return Framed::Bad { offset, error: FormatError::LengthPastEnd { len, room: room - RECORD_PREFIX_LEN } };
    }
    let start = offset + RECORD_PREFIX_LEN;
    let content = &segment[start..start + len as usize];
    let computed = if content[0] == TYPE_GROUP { group_crc(nonce, content) } else { crc32fast::hash(content) };
    if computed != stored {
        return Framed::Bad { offset, error: FormatError::Checksum { stored, computed } };
    }
    Framed::Record(Frame { offset, len: RECORD_PREFIX_LEN + len as usize, kind: content[0], flags: content[1] })
}

/// The fields of a message record recovery needs, read without allocating.
#[derive(Debug, Clone, Copy)]
pub struct MessageHead<'a> {
    pub id: u64,
    queues: &'a [u8],
    pub body_len: u32,
    /// Publish time, ms since the Unix epoch (format 3 records).
    pub published_ms: Option<u64>,
    /// The message's offset in its stream (format 5 stream records).
    pub stream_offset: Option<u64>,
    /// The `priority` property (0 when absent).
    pub priority: u8,
    /// The `expiration` property, in ms, when it is a number.
    pub expiration_ms: Option<u64>,
}

impl MessageHead<'_> {
    pub fn queue_count(&self) -> usize {
        self.queues.len() / 4
    }

    pub fn queues(&self) -> impl Iterator<Item = u32> + '_ {
        self.queues.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// Reads a message record's id, queue list, body length and the
/// properties a queue orders and expires by, checking that the payload is
/// well formed, without decoding names or copying bytes.
pub fn peek_message(payload: &[u8], flags: u8) -> Result<MessageHead<'_>, FormatError> {
    let get = |at: usize, n: usize| payload.get(at..at + n).ok_or(FormatError::Truncated);
    let u64_at = |at: usize| -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(get(at, 8)?.try_into().map_err(|_| FormatError::Truncated)?))
    };
    let id = u64_at(0)?;
    let (published_ms, mut at) = if flags & FLAG_TIMED != 0 { (Some(u64_at(8)?), 16) } else { (None, 8) };
    let stream_offset = if flags & FLAG_STREAM != 0 {
        at += 8;
        Some(u64_at(at - 8)?)
    } else {
        None
    };
    let (count, queues_at) = if flags & FLAG_WIDE != 0 {
        (u32::from_le_bytes(get(at, 4)?.try_into().map_err(|_| FormatError::Truncated)?) as usize, at + 4)
    } else {
        (u16::from_le_bytes(get(at, 2)?.try_into().map_err(|_| FormatError::Truncated)?) as usize, at + 2)
    };
    let queues = get(queues_at, count.saturating_mul(4))?;
    at = queues_at + count * 4;
    for _ in 0..2 {
        let n = *get(at, 1)?.first().ok_or(FormatError::Truncated)? as usize;
        let name = get(at + 1, n)?;
        std::str::from_utf8(name).map_err(|_| FormatError::Utf8)?;
        at += 1 + n;
    }
    let props = u32::from_le_bytes(get(at, 4)?.try_into().map_err(|_| FormatError::Truncated)?) as usize;
    let (priority, expiration_ms) = peek_properties(get(at + 4, props)?);
    at += 4 + props;
    let body_len = u32::from_le_bytes(get(at, 4)?.try_into().map_err(|_| FormatError::Truncated)?);
    at += 4 + body_len as usize;
    match at.cmp(&payload.len()) {
        std::cmp::Ordering::Equal => {
            Ok(MessageHead { id, queues, body_len, published_ms, stream_offset, priority, expiration_ms })
        }
        std::cmp::Ordering::Less => Err(FormatError::Trailing(payload.len() - at)),
        std::cmp::Ordering::Greater => Err(FormatError::Truncated),
    }
}

/// The priority and numeric expiration of AMQP basic properties (flag
/// word, then the present fields in order), skipping the others without
/// decoding them. Properties that do not parse give (0, None): they were
/// checked when published, so this only happens to damaged bytes, which
/// the record's CRC already rules out.
pub fn peek_properties(raw: &[u8]) -> (u8, Option<u64>) {
    fn short_str(raw: &[u8], at: &mut usize) -> Option<std::ops::Range<usize>> {
        let n = *raw.get(*at)? as usize;
        let range = *at + 1..*at + 1 + n;
        raw.get(range.clone())?;
        *at += 1 + n;
        Some(range)
    }
    let parse = || -> Option<(u8, Option<u64>)> {
        let flags = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
        let mut at = 2;
        let has = |bit: u16| flags & (1 << bit) != 0;
        if has(15) {
            short_str(raw, &mut at)?; // content-type
        }
        if has(14) {
            short_str(raw, &mut at)?; // content-encoding
        }
        if has(13) {
            let n = u32::from_be_bytes(raw.get(at..at + 4)?.try_into().ok()?) as usize;
            at += 4 + n; // headers
        }
        if has(12) {
            at += 1; // delivery-mode
        }
        let priority = if has(11) {
            let p = *raw.get(at)?;
            at += 1;
            p
        } else {
            0
        };
        if !has(8) {
            return Some((priority, None));
        }
        if has(10) {
            short_str(raw, &mut at)?; // correlation-id
        }
        if has(9) {
            short_str(raw, &mut at)?; // reply-to
        }
        let expiration = short_str(raw, &mut at)?;
        let text = std::str::from_utf8(raw.get(expiration)?).ok()?;
        Some((priority, text.parse().ok()))
    };
    parse().unwrap_or((0, None))
}

/// Whether AMQP basic properties carry delivery-mode 2 (persistent); the
/// fields before it are skipped without decoding, as in [`peek_properties`].
pub fn peek_persistent(raw: &[u8]) -> bool {
    let parse = || -> Option<bool> {
        let flags = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
        let has = |bit: u16| flags & (1 << bit) != 0;
        if !has(12) {
            return Some(false);
        }
        let mut at = 2;
        for bit in [15, 14] {
            if has(bit) {
                at += 1 + *raw.get(at)? as usize; // content-type, content-encoding
            }
        }
        if has(13) {
            at += 4 + u32::from_be_bytes(raw.get(at..at + 4)?.try_into().ok()?) as usize; // headers
        }
        Some(*raw.get(at)? == 2)
    };
    parse().unwrap_or(false)
}

/// Reads an ack or delivered record's queue and ids without allocating.
pub fn peek_id_list(payload: &[u8]) -> Result<(u32, impl Iterator<Item = u64> + '_), FormatError> {
    if payload.len() < 8 {
        return Err(FormatError::Truncated);
    }
    let queue = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
    let count = u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]) as usize;
    let ids = &payload[8..];
    if ids.len() != count.saturating_mul(8) {
        return Err(if ids.len() < count.saturating_mul(8) {
            FormatError::Truncated
        } else {
            FormatError::Trailing(ids.len() - count * 8)
        });
    }
    Ok((queue, ids.chunks_exact(8).map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))))
}

/// Reads the record framed at `offset` of `segment` (the whole file's bytes).
pub fn read_record_at(segment: &Bytes, offset: usize) -> Scanned {
    read_record_keyed(segment, offset, segment_nonce(segment))
}

/// [`read_record_at`] with the segment's nonce already known (0 reads any
/// record but a group, which is all a single message read needs).
pub fn read_record_keyed(segment: &Bytes, offset: usize, nonce: u64) -> Scanned {
    match frame_at_keyed(segment, offset, nonce) {
        Framed::End { offset } => Scanned::End { offset },
        Framed::Bad { offset, error } => Scanned::Bad { offset, error },
        Framed::Record(frame) => {
            let payload = segment.slice(frame.offset + RECORD_PREFIX_LEN + 2..frame.offset + frame.len);
            match Record::decode(frame.kind, frame.flags, payload) {
                Ok(record) => Scanned::Record { offset, len: frame.len, flags: frame.flags, record },
                Err(error) => Scanned::Bad { offset, error },
            }
        }
    }
}

/// True when every byte from `offset` on is zero: what follows the last
/// record of a segment that was never written further.
pub fn is_zero_tail(segment: &[u8], offset: usize) -> bool {
    segment.get(offset..).is_none_or(all_zero)
}

/// Word-at-a-time zero check: a fresh segment's tail is tens of MB of zeros.
fn all_zero(bytes: &[u8]) -> bool {
    // SAFETY: every bit pattern is a valid u128; align_to only splits the
    // slice at alignment boundaries.
    let (head, words, tail) = unsafe { bytes.align_to::<u128>() };
    head.iter().all(|b| *b == 0) && tail.iter().all(|b| *b == 0) && words.iter().fold(0u128, |acc, w| acc | w) == 0
}

/// The offset just past the last non-zero byte at or after `offset`.
pub fn end_of_nonzero(segment: &[u8], offset: usize) -> usize {
    match segment.get(offset..).and_then(|rest| rest.iter().rposition(|b| *b != 0)) {
        Some(i) => offset + i + 1,
        None => offset,
    }
}
