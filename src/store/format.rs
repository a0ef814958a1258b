//! The on-disk format of the write-ahead log: segment headers, record
//! framing and every record type. This is the only implementation of the
//! format in the code base; the broker's recovery and `warren-dump` both
//! decode through it. `storage-format.md` documents the same bytes, and a
//! test decodes a segment built by hand from that document.
//!
//! All integers are little-endian. Two payload fields are opaque AMQP
//! encodings (and so big-endian inside): queue/exchange/binding arguments
//! (an AMQP field table) and message properties (AMQP property flags and list).
//!
//! Parts of it live in submodules: `segment` (a segment's header and file
//! name), `kinds` (the kind codes of parameter and Raft-state records),
//! `draft` (a message record laid out and checksummed before the log's
//! lock) and `crc_shift` (moving a CRC past bytes it did not cover).

mod crc_shift;
mod draft;
mod kinds;
mod segment;
pub use draft::MessageDraft;
pub use kinds::{ParameterKind, RaftStateKind};
pub use segment::{SegmentHeader, parse_segment_file_name, segment_file_name};

use bytes::{BufMut, Bytes};

pub const SEGMENT_MAGIC: &[u8; 8] = b"WARRENLG";
/// The version this build writes. Versions 1 to 5 segments are still read.
pub const FORMAT_VERSION: u32 = 6;
/// Header length of a version 2 to 6 segment (6 is written now).
pub const SEGMENT_HEADER_LEN: usize = 40;
/// Header length of a version 1 segment.
pub const SEGMENT_HEADER_LEN_V1: usize = 32;
/// Record length (4) + CRC (4).
pub const RECORD_PREFIX_LEN: usize = 8;
/// Type (1) + flags (1): the smallest valid `len`.
pub const RECORD_MIN_LEN: u32 = 2;

pub const TYPE_EXCHANGE_DECLARE: u8 = 1;
pub const TYPE_EXCHANGE_DELETE: u8 = 2;
pub const TYPE_QUEUE_DECLARE: u8 = 3;
pub const TYPE_QUEUE_DELETE: u8 = 4;
pub const TYPE_BINDING_ADD: u8 = 5;
pub const TYPE_BINDING_REMOVE: u8 = 6;
pub const TYPE_MESSAGE: u8 = 7;
pub const TYPE_ACK: u8 = 8;
pub const TYPE_DELIVERED: u8 = 9;
pub const TYPE_ID_WATERMARK: u8 = 10;
/// Opens a commit group: the records one writer pass wrote to a segment
/// (format 2). Its checksum is keyed with the segment's nonce.
pub const TYPE_GROUP: u8 = 11;
/// A runtime setting (format 3): a user, a permission, … (see [`ParameterKind`]).
pub const TYPE_PARAMETER: u8 = 12;
/// A runtime setting removed.
pub const TYPE_PARAMETER_DELETE: u8 = 13;
/// One entry of a Raft group's log (format 6): its bytes are the Raft
/// layer's, the log keeps them in index order per group.
pub const TYPE_RAFT_ENTRY: u8 = 14;
/// A change to a Raft group's durable state other than an entry (format 6):
/// its vote, commit index, a truncated or purged stretch, or its removal.
pub const TYPE_RAFT_STATE: u8 = 15;

/// The record restates a definition at the start of a segment, so that
/// definitions survive the deletion of the segments that declared them.
pub const FLAG_SNAPSHOT: u8 = 1;
/// A message record copied forward from an older segment by compaction.
pub const FLAG_RELOCATED: u8 = 2;
/// A message record whose queue count is a u32 (more than 65,535 queues).
pub const FLAG_WIDE: u8 = 4;
/// A message record carrying its publish time (format 3), so that TTLs
/// count from the publish across restarts.
pub const FLAG_TIMED: u8 = 8;
/// A definition record (exchange, queue or binding) of a virtual host other
/// than "/" (format 4): its payload starts with the vhost name (str8).
/// Without the flag a definition belongs to "/", as every one did before.
pub const FLAG_VHOST: u8 = 16;
/// A message record of a stream (format 5): its payload carries the
/// message's offset in that stream (u64) right after the publish time, and
/// it lists that one stream.
pub const FLAG_STREAM: u8 = 32;

/// The virtual host every log before format 4 had, and the default one.
pub const DEFAULT_VHOST: &str = "/";

/// Group flag: everything before this group in the log had been made
/// durable when the group was written.
pub const GROUP_SYNCED_BEFORE: u8 = 1;
/// Bytes a framed commit-group record occupies.
pub const GROUP_RECORD_LEN: usize = RECORD_PREFIX_LEN + 2 + 8 + 4 + 1;

pub const EXCHANGE_KINDS: [&str; 4] = ["direct", "fanout", "topic", "headers"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("bad segment header: {0}")]
    BadHeader(String),
    #[error("record length {len} runs past the end of the segment ({room} bytes left)")]
    LengthPastEnd { len: u32, room: usize },
    #[error("record length {0} is below the minimum of 2")]
    LengthTooSmall(u32),
    #[error("record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown record type {0}")]
    UnknownType(u8),
    #[error("record payload ends early")]
    Truncated,
    #[error("{0} bytes left over after the record payload")]
    Trailing(usize),
    #[error("name is not valid UTF-8")]
    Utf8,
    #[error("unknown exchange kind {0}")]
    ExchangeKind(u8),
    #[error("unknown binding destination kind {0}")]
    DestinationKind(u8),
    #[error("unknown parameter kind {0}")]
    ParameterKind(u8),
    #[error("unknown Raft state kind {0}")]
    RaftStateKind(u8),
}

/// Where a binding leads, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestinationKind {
    Queue = 1,
    Exchange = 2,
}

/// One decoded record. Byte fields are slices of the segment they were read from.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    ExchangeDeclare {
        vhost: String,
        name: String,
        kind: String,
        auto_delete: bool,
        internal: bool,
        arguments: Bytes,
    },
    ExchangeDelete {
        vhost: String,
        name: String,
    },
    QueueDeclare {
        queue: u32,
        vhost: String,
        name: String,
        auto_delete: bool,
        arguments: Bytes,
    },
    QueueDelete {
        queue: u32,
    },
    BindingAdd(BindingRecord),
    BindingRemove(BindingRecord),
    Message(MessageRecord),
    Ack {
        queue: u32,
        ids: Vec<u64>,
    },
    Delivered {
        queue: u32,
        ids: Vec<u64>,
    },
    /// The next message and queue ids when the segment was opened, so ids
    /// stay unique even after every segment that used them is deleted.
    IdWatermark {
        next_message_id: u64,
        next_queue_id: u32,
    },
    /// A runtime setting: `value` is JSON.
    Parameter {
        kind: ParameterKind,
        key: String,
        value: Bytes,
    },
    ParameterDelete {
        kind: ParameterKind,
        key: String,
    },
    /// An entry of Raft group `group` at `index` (format 6).
    RaftEntry {
        group: u64,
        index: u64,
        entry: Bytes,
    },
    /// A change to Raft group `group`'s state (format 6; see [`RaftStateKind`]).
    RaftState {
        group: u64,
        kind: RaftStateKind,
        index: u64,
        value: Bytes,
    },
    /// Opens a commit group (format 2): `length` bytes of records follow.
    Group {
        /// Log position of this record, so that a copy found elsewhere is
        /// never taken for it.
        position: u64,
        length: u32,
        /// Everything before the group was durable when it was written.
        synced_before: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BindingRecord {
    pub vhost: String,
    pub source: String,
    pub destination_kind: DestinationKind,
    pub destination: String,
    pub routing_key: String,
    pub arguments: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MessageRecord {
    pub id: u64,
    /// Publish time, ms since the Unix epoch (format 3; None before).
    pub published_ms: Option<u64>,
    /// The message's offset in its stream (format 5; None for queues).
    pub stream_offset: Option<u64>,
    pub queues: Vec<u32>,
    pub exchange: String,
    pub routing_key: String,
    pub properties: Bytes,
    pub body: Bytes,
}

impl Record {
    pub fn type_code(&self) -> u8 {
        match self {
            Record::ExchangeDeclare { .. } => TYPE_EXCHANGE_DECLARE,
            Record::ExchangeDelete { .. } => TYPE_EXCHANGE_DELETE,
            Record::QueueDeclare { .. } => TYPE_QUEUE_DECLARE,
            Record::QueueDelete { .. } => TYPE_QUEUE_DELETE,
            Record::BindingAdd(_) => TYPE_BINDING_ADD,
            Record::BindingRemove(_) => TYPE_BINDING_REMOVE,
            Record::Message(_) => TYPE_MESSAGE,
            Record::Ack { .. } => TYPE_ACK,
            Record::Delivered { .. } => TYPE_DELIVERED,
            Record::IdWatermark { .. } => TYPE_ID_WATERMARK,
            Record::Group { .. } => TYPE_GROUP,
            Record::Parameter { .. } => TYPE_PARAMETER,
            Record::ParameterDelete { .. } => TYPE_PARAMETER_DELETE,
            Record::RaftEntry { .. } => TYPE_RAFT_ENTRY,
            Record::RaftState { .. } => TYPE_RAFT_STATE,
        }
    }

    /// Appends the framed record (length, CRC, type, flags, payload) to
    /// `out`. A group record is keyed with nonce 0 here; the writer frames
    /// groups with [`encode_group`] and the segment's nonce.
    pub fn encode(&self, flags: u8, out: &mut Vec<u8>) {
        if let Record::Group { position, length, synced_before } = self {
            return encode_group(out, 0, *position, *length, *synced_before);
        }
        if let Record::Message(m) = self {
            let draft = MessageDraft::new(
                flags,
                m.published_ms,
                m.stream_offset,
                &m.queues,
                (&m.exchange, &m.routing_key),
                &m.properties,
                &m.body,
            );
            return draft.encode(out, m.id);
        }
        let vhost = self.vhost().filter(|v| *v != DEFAULT_VHOST);
        let flags = match self {
            Record::Message(m) => message_flags(flags, m.queues.len(), m.published_ms, m.stream_offset),
            _ if vhost.is_some() => flags | FLAG_VHOST,
            _ => flags,
        };
        frame(out, self.type_code(), flags, |out| {
            if let Some(vhost) = vhost {
                put_str8(out, vhost);
            }
            self.encode_payload(out)
        });
    }

    /// The virtual host of a definition record (None for other records).
    pub fn vhost(&self) -> Option<&str> {
        match self {
            Record::ExchangeDeclare { vhost, .. }
            | Record::ExchangeDelete { vhost, .. }
            | Record::QueueDeclare { vhost, .. } => Some(vhost),
            Record::BindingAdd(b) | Record::BindingRemove(b) => Some(&b.vhost),
            _ => None,
        }
    }

    /// The payload after the vhost prefix.
    fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Record::ExchangeDeclare { name, kind, auto_delete, internal, arguments, .. } => {
                put_str8(out, name);
                out.put_u8(EXCHANGE_KINDS.iter().position(|k| k == kind).map_or(0, |i| i as u8 + 1));
                out.put_u8(*auto_delete as u8 | (*internal as u8) << 1);
                put_bytes32(out, arguments);
            }
            Record::ExchangeDelete { name, .. } => put_str8(out, name),
            Record::QueueDeclare { queue, name, auto_delete, arguments, .. } => {
                out.put_u32_le(*queue);
                put_str8(out, name);
                out.put_u8(*auto_delete as u8);
                put_bytes32(out, arguments);
            }
            Record::QueueDelete { queue } => out.put_u32_le(*queue),
            Record::BindingAdd(b) | Record::BindingRemove(b) => {
                put_str8(out, &b.source);
                out.put_u8(b.destination_kind as u8);
                put_str8(out, &b.destination);
                put_str8(out, &b.routing_key);
                put_bytes32(out, &b.arguments);
            }
            // Framed whole by `encode`, through a MessageDraft.
            Record::Message(_) => {}
            Record::Ack { queue, ids } | Record::Delivered { queue, ids } => encode_id_list(out, *queue, ids),
            Record::IdWatermark { next_message_id, next_queue_id } => {
                out.put_u64_le(*next_message_id);
                out.put_u32_le(*next_queue_id);
            }
            Record::Parameter { kind, key, value } => {
                out.put_u8(*kind as u8);
                put_bytes32(out, key.as_bytes());
                put_bytes32(out, value);
            }
            Record::ParameterDelete { kind, key } => {
                out.put_u8(*kind as u8);
                put_bytes32(out, key.as_bytes());
            }
            Record::RaftEntry { group, index, entry } => {
                out.put_u64_le(*group);
                out.put_u64_le(*index);
                put_bytes32(out, entry);
            }
            Record::RaftState { group, kind, index, value } => {
                out.put_u64_le(*group);
                out.put_u8(*kind as u8);
                out.put_u64_le(*index);
                put_bytes32(out, value);
            }
            Record::Group { .. } => {}
        }
    }

    /// Decodes a record payload of the given type and record flags.
    pub fn decode(kind: u8, flags: u8, payload: Bytes) -> Result<Record, FormatError> {
        let mut r = Cursor { buf: payload, pos: 0 };
        let definition = matches!(
            kind,
            TYPE_EXCHANGE_DECLARE | TYPE_EXCHANGE_DELETE | TYPE_QUEUE_DECLARE | TYPE_BINDING_ADD | TYPE_BINDING_REMOVE
        );
        let vhost = if definition && flags & FLAG_VHOST != 0 { r.str8()? } else { DEFAULT_VHOST.to_string() };
        let record = match kind {
            TYPE_EXCHANGE_DECLARE => {
                let name = r.str8()?;
                let code = r.u8()?;
                let kind = EXCHANGE_KINDS
                    .get((code as usize).wrapping_sub(1))
                    .ok_or(FormatError::ExchangeKind(code))?
                    .to_string();
                let flags = r.u8()?;
                Record::ExchangeDeclare {
                    vhost,
                    name,
                    kind,
                    auto_delete: flags & 1 != 0,
                    internal: flags & 2 != 0,
                    arguments: r.bytes32()?,
                }
            }
            TYPE_EXCHANGE_DELETE => Record::ExchangeDelete { vhost, name: r.str8()? },
            TYPE_QUEUE_DECLARE => Record::QueueDeclare {
                queue: r.u32()?,
                vhost,
                name: r.str8()?,
                auto_delete: r.u8()? & 1 != 0,
                arguments: r.bytes32()?,
            },
            TYPE_QUEUE_DELETE => Record::QueueDelete { queue: r.u32()? },
            TYPE_BINDING_ADD | TYPE_BINDING_REMOVE => {
                let source = r.str8()?;
                let destination_kind = match r.u8()? {
                    1 => DestinationKind::Queue,
                    2 => DestinationKind::Exchange,
                    other => return Err(FormatError::DestinationKind(other)),
                };
                let b = BindingRecord {
                    vhost,
                    source,
                    destination_kind,
                    destination: r.str8()?,
                    routing_key: r.str8()?,
                    arguments: r.bytes32()?,
                };
                if kind == TYPE_BINDING_ADD { Record::BindingAdd(b) } else { Record::BindingRemove(b) }
            }
            TYPE_MESSAGE => {
                let id = r.u64()?;
                let published_ms = if flags & FLAG_TIMED != 0 { Some(r.u64()?) } else { None };
                let stream_offset = if flags & FLAG_STREAM != 0 { Some(r.u64()?) } else { None };
                let count = if flags & FLAG_WIDE != 0 { r.u32()? as usize } else { r.u16()? as usize };
                let mut queues = Vec::with_capacity(count.min(r.remaining() / 4));
                for _ in 0..count {
                    queues.push(r.u32()?);
                }
                Record::Message(MessageRecord {
                    id,
                    published_ms,
                    stream_offset,
                    queues,
                    exchange: r.str8()?,
                    routing_key: r.str8()?,
                    properties: r.bytes32()?,
                    body: r.bytes32()?,
                })
            }
            TYPE_ACK | TYPE_DELIVERED => {
                let queue = r.u32()?;
                let count = r.u32()? as usize;
                if count > r.remaining() / 8 {
                    return Err(FormatError::Truncated);
                }
                let ids = (0..count).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
                if kind == TYPE_ACK { Record::Ack { queue, ids } } else { Record::Delivered { queue, ids } }
            }
            TYPE_ID_WATERMARK => Record::IdWatermark { next_message_id: r.u64()?, next_queue_id: r.u32()? },
            TYPE_GROUP => Record::Group {
                position: r.u64()?,
                length: r.u32()?,
                synced_before: r.u8()? & GROUP_SYNCED_BEFORE != 0,
            },
            TYPE_PARAMETER | TYPE_PARAMETER_DELETE => {
                let code = r.u8()?;
                let parameter = ParameterKind::from_code(code).ok_or(FormatError::ParameterKind(code))?;
                let key = String::from_utf8(r.bytes32()?.to_vec()).map_err(|_| FormatError::Utf8)?;
                if kind == TYPE_PARAMETER {
                    Record::Parameter { kind: parameter, key, value: r.bytes32()? }
                } else {
                    Record::ParameterDelete { kind: parameter, key }
                }
            }
            TYPE_RAFT_ENTRY => Record::RaftEntry { group: r.u64()?, index: r.u64()?, entry: r.bytes32()? },
            TYPE_RAFT_STATE => {
                let group = r.u64()?;
                let code = r.u8()?;
                let kind = RaftStateKind::from_code(code).ok_or(FormatError::RaftStateKind(code))?;
                Record::RaftState { group, kind, index: r.u64()?, value: r.bytes32()? }
            }
            other => return Err(FormatError::UnknownType(other)),
        };
        if r.remaining() != 0 {
            return Err(FormatError::Trailing(r.remaining()));
        }
        Ok(record)
    }
}

/// Writes a record frame: a length placeholder, a CRC placeholder, type,
/// flags and the payload `body` writes; then patches length and CRC.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_PREFIX_LEN]);
    out.put_u8(kind);
    out.put_u8(flags);
    body(out);
    let len = (out.len() - start - RECORD_PREFIX_LEN) as u32;
    let crc = crc32fast::hash(&out[start + RECORD_PREFIX_LEN..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

pub(super) fn message_flags(flags: u8, queues: usize, published_ms: Option<u64>, stream_offset: Option<u64>) -> u8 {
    let flags = if queues > u16::MAX as usize { flags | FLAG_WIDE } else { flags };
    let flags = if stream_offset.is_some() { flags | FLAG_STREAM } else { flags };
    if published_ms.is_some() { flags | FLAG_TIMED } else { flags }
}

fn encode_id_list(out: &mut Vec<u8>, queue: u32, ids: &[u64]) {
    out.reserve(8 + ids.len() * 8);
    out.put_u32_le(queue);
    out.put_u32_le(ids.len() as u32);
    for id in ids {
        out.put_u64_le(*id);
    }
}

/// The checksum of a commit-group record: CRC-32 over the segment's nonce
/// (8 bytes, little-endian) followed by the record's type, flags and payload.
pub fn group_crc(nonce: u64, content: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&nonce.to_le_bytes());
    hasher.update(content);
    hasher.finalize()
}

/// Appends a commit-group record (always [`GROUP_RECORD_LEN`] bytes).
pub fn encode_group(out: &mut Vec<u8>, nonce: u64, position: u64, length: u32, synced_before: bool) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_PREFIX_LEN]);
    out.put_u8(TYPE_GROUP);
    out.put_u8(0);
    out.put_u64_le(position);
    out.put_u32_le(length);
    out.put_u8(if synced_before { GROUP_SYNCED_BEFORE } else { 0 });
    let len = (out.len() - start - RECORD_PREFIX_LEN) as u32;
    let crc = group_crc(nonce, &out[start + RECORD_PREFIX_LEN..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Bytes [`encode_id_record`] writes for `ids` ids.
pub const fn id_record_len(ids: usize) -> usize {
    // Queue id and count (4 bytes each), then 8 bytes per id.
    RECORD_PREFIX_LEN + 2 + 8 + ids * 8
}

/// Encodes an ack or delivered record from a borrowed id list
/// ([`id_record_len`] bytes).
pub fn encode_id_record(out: &mut Vec<u8>, kind: u8, queue: u32, ids: &[u64]) {
    frame(out, kind, 0, |out| encode_id_list(out, queue, ids));
}

/// The bytes of a name as a record keeps it: names are AMQP short
/// strings, at most 255 bytes, checked on the way in.
pub(super) fn str8(s: &str) -> &[u8] {
    &s.as_bytes()[..s.len().min(255)]
}

pub(super) fn put_str8(out: &mut Vec<u8>, s: &str) {
    let bytes = str8(s);
    out.put_u8(bytes.len() as u8);
    out.put_slice(bytes);
}

fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) {
    out.put_u32_le(b.len() as u32);
    out.put_slice(b);
}

struct Cursor {
    buf: Bytes,
    pos: usize,
}

impl Cursor {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], FormatError> {
        if self.remaining() < n {
            return Err(FormatError::Truncated);
        }
        self.pos += n;
        Ok(&self.buf[self.pos - n..self.pos])
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, FormatError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn str8(&mut self) -> Result<String, FormatError> {
        let len = self.u8()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| FormatError::Utf8)
    }

    fn bytes32(&mut self) -> Result<Bytes, FormatError> {
        let len = self.u32()? as usize;
        if self.remaining() < len {
            return Err(FormatError::Truncated);
        }
        self.pos += len;
        Ok(self.buf.slice(self.pos - len..self.pos))
    }
}

// Reading records out of a segment's bytes lives in `scan`; re-exported so
// that every caller keeps reading the format through this module.
pub use super::scan::*;
