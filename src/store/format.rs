//! The on-disk format of the write-ahead log: segment headers, record
//! framing and every record type. This is the only implementation of the
//! format in the code base; the broker's recovery and `warren-dump` both
//! decode through it. `storage-format.md` documents the same bytes, and a
//! test decodes a segment built by hand from that document.
//!
//! All integers are little-endian. Two payload fields are opaque AMQP
//! encodings (and so big-endian inside): queue/exchange/binding arguments
//! (an AMQP field table) and message properties (AMQP property flags and list).

use bytes::{BufMut, Bytes};

pub const SEGMENT_MAGIC: &[u8; 8] = b"WARRENLG";
/// The version this build writes. Versions 1 and 2 segments are still read.
pub const FORMAT_VERSION: u32 = 3;
/// Header length of a version 2 or 3 segment (3 is written now).
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

/// What a parameter record holds; its value is JSON in the shape of
/// RabbitMQ's definitions file for that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum ParameterKind {
    /// Key: the user name.
    User = 1,
    /// Key: user NUL vhost.
    Permission = 2,
    /// Key: user NUL vhost NUL exchange.
    TopicPermission = 3,
    /// Key: the vhost name.
    Vhost = 4,
    /// Key: vhost NUL policy name.
    Policy = 5,
    /// Key: vhost NUL policy name.
    OperatorPolicy = 6,
    /// Key: the vhost name.
    VhostLimits = 7,
}

impl ParameterKind {
    pub fn from_code(code: u8) -> Option<ParameterKind> {
        use ParameterKind::*;
        [User, Permission, TopicPermission, Vhost, Policy, OperatorPolicy, VhostLimits]
            .into_iter()
            .find(|k| *k as u8 == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            ParameterKind::User => "user",
            ParameterKind::Permission => "permission",
            ParameterKind::TopicPermission => "topic-permission",
            ParameterKind::Vhost => "vhost",
            ParameterKind::Policy => "policy",
            ParameterKind::OperatorPolicy => "operator-policy",
            ParameterKind::VhostLimits => "vhost-limits",
        }
    }
}

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

/// Group flag: everything before this group in the log had been made
/// durable when the group was written.
pub const GROUP_SYNCED_BEFORE: u8 = 1;
/// Bytes a framed commit-group record occupies.
pub const GROUP_RECORD_LEN: usize = RECORD_PREFIX_LEN + 2 + 8 + 4 + 1;

pub const EXCHANGE_KINDS: [&str; 4] = ["direct", "fanout", "topic", "headers"];

/// The header at the start of every segment file: 40 bytes in format 2,
/// 32 in format 1 (which has no nonce).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u32,
    /// Log position of byte 0 of this file; also the file's name.
    pub base: u64,
    /// Bytes reserved for the segment (the file's length).
    pub capacity: u32,
    /// The log's key (format 2): random, chosen when the log was created and
    /// repeated in every segment header. It keys the checksum of
    /// commit-group records, so that no bytes a client publishes can pass
    /// for one.
    pub nonce: u64,
}

impl SegmentHeader {
    /// A format 2 header.
    pub fn new(base: u64, capacity: u32, nonce: u64) -> SegmentHeader {
        SegmentHeader { version: FORMAT_VERSION, base, capacity, nonce }
    }

    /// Bytes the header occupies; records start right after it.
    pub fn len(&self) -> usize {
        if self.version == 1 { SEGMENT_HEADER_LEN_V1 } else { SEGMENT_HEADER_LEN }
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Encodes the header in the layout of its version.
    pub fn encode(&self) -> Vec<u8> {
        let len = self.len();
        let mut out = vec![0u8; len];
        out[0..8].copy_from_slice(SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..16].copy_from_slice(&(len as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.base.to_le_bytes());
        out[24..28].copy_from_slice(&self.capacity.to_le_bytes());
        if self.version != 1 {
            out[28..36].copy_from_slice(&self.nonce.to_le_bytes());
        }
        let crc = crc32fast::hash(&out[0..len - 4]);
        out[len - 4..len].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(raw: &[u8]) -> Result<SegmentHeader, FormatError> {
        if raw.len() < SEGMENT_HEADER_LEN_V1 {
            return Err(FormatError::BadHeader("file shorter than a segment header".into()));
        }
        if &raw[0..8] != SEGMENT_MAGIC {
            return Err(FormatError::BadHeader("wrong magic: not a Warren log segment".into()));
        }
        let u32_at = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let version = u32_at(8);
        let expected_len = match version {
            1 => SEGMENT_HEADER_LEN_V1,
            2 | 3 => SEGMENT_HEADER_LEN,
            _ => {
                return Err(FormatError::BadHeader(format!(
                    "format version {version}; this build reads versions 1 to {FORMAT_VERSION}"
                )));
            }
        };
        if raw.len() < expected_len {
            return Err(FormatError::BadHeader("file shorter than a segment header".into()));
        }
        let crc = u32_at(expected_len - 4);
        if crc32fast::hash(&raw[0..expected_len - 4]) != crc {
            return Err(FormatError::BadHeader("segment header checksum mismatch".into()));
        }
        let header_len = u32_at(12);
        if header_len as usize != expected_len {
            return Err(FormatError::BadHeader(format!("header length {header_len}, expected {expected_len}")));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let nonce = if version == 1 { 0 } else { u64_at(28) };
        Ok(SegmentHeader { version, base: u64_at(16), capacity: u32_at(24), nonce })
    }
}

/// The name of the segment file whose first byte is log position `base`:
/// zero-padded so that `ls` lists segments in log order.
pub fn segment_file_name(base: u64) -> String {
    format!("{base:020}.wal")
}

/// Parses a segment file name back into its base position.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

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
        name: String,
        kind: String,
        auto_delete: bool,
        internal: bool,
        arguments: Bytes,
    },
    ExchangeDelete {
        name: String,
    },
    QueueDeclare {
        queue: u32,
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
        }
    }

    /// Appends the framed record (length, CRC, type, flags, payload) to
    /// `out`. A group record is keyed with nonce 0 here; the writer frames
    /// groups with [`encode_group`] and the segment's nonce.
    pub fn encode(&self, flags: u8, out: &mut Vec<u8>) {
        if let Record::Group { position, length, synced_before } = self {
            return encode_group(out, 0, *position, *length, *synced_before);
        }
        let flags = match self {
            Record::Message(m) => message_flags(flags, m.queues.len(), m.published_ms),
            _ => flags,
        };
        frame(out, self.type_code(), flags, |out| match self {
            Record::ExchangeDeclare { name, kind, auto_delete, internal, arguments } => {
                put_str8(out, name);
                out.put_u8(EXCHANGE_KINDS.iter().position(|k| k == kind).map_or(0, |i| i as u8 + 1));
                out.put_u8(*auto_delete as u8 | (*internal as u8) << 1);
                put_bytes32(out, arguments);
            }
            Record::ExchangeDelete { name } => put_str8(out, name),
            Record::QueueDeclare { queue, name, auto_delete, arguments } => {
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
            Record::Message(m) => encode_message_payload(
                out,
                m.id,
                m.published_ms,
                &m.queues,
                &m.exchange,
                &m.routing_key,
                &m.properties,
                &m.body,
            ),
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
            Record::Group { .. } => {}
        });
    }

    /// Decodes a record payload of the given type and record flags.
    pub fn decode(kind: u8, flags: u8, payload: Bytes) -> Result<Record, FormatError> {
        let mut r = Cursor { buf: payload, pos: 0 };
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
                    name,
                    kind,
                    auto_delete: flags & 1 != 0,
                    internal: flags & 2 != 0,
                    arguments: r.bytes32()?,
                }
            }
            TYPE_EXCHANGE_DELETE => Record::ExchangeDelete { name: r.str8()? },
            TYPE_QUEUE_DECLARE => Record::QueueDeclare {
                queue: r.u32()?,
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
                let count = if flags & FLAG_WIDE != 0 { r.u32()? as usize } else { r.u16()? as usize };
                let mut queues = Vec::with_capacity(count.min(r.remaining() / 4));
                for _ in 0..count {
                    queues.push(r.u32()?);
                }
                Record::Message(MessageRecord {
                    id,
                    published_ms,
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

fn message_flags(flags: u8, queues: usize, published_ms: Option<u64>) -> u8 {
    let flags = if queues > u16::MAX as usize { flags | FLAG_WIDE } else { flags };
    if published_ms.is_some() { flags | FLAG_TIMED } else { flags }
}

#[allow(clippy::too_many_arguments)]
fn encode_message_payload(
    out: &mut Vec<u8>,
    id: u64,
    published_ms: Option<u64>,
    queues: &[u32],
    exchange: &str,
    routing_key: &str,
    properties: &[u8],
    body: &[u8],
) {
    out.reserve(8 + 2 + queues.len() * 4 + 2 + exchange.len() + routing_key.len() + 8 + properties.len() + body.len());
    out.put_u64_le(id);
    if let Some(ms) = published_ms {
        out.put_u64_le(ms);
    }
    if queues.len() > u16::MAX as usize {
        out.put_u32_le(queues.len() as u32);
    } else {
        out.put_u16_le(queues.len() as u16);
    }
    for q in queues {
        out.put_u32_le(*q);
    }
    put_str8(out, exchange);
    put_str8(out, routing_key);
    put_bytes32(out, properties);
    put_bytes32(out, body);
}

fn encode_id_list(out: &mut Vec<u8>, queue: u32, ids: &[u64]) {
    out.reserve(8 + ids.len() * 8);
    out.put_u32_le(queue);
    out.put_u32_le(ids.len() as u32);
    for id in ids {
        out.put_u64_le(*id);
    }
}

/// Encodes a message record straight from the broker's fields, without
/// building a [`Record`] (the publish path).
#[allow(clippy::too_many_arguments)]
pub fn encode_message(
    out: &mut Vec<u8>,
    flags: u8,
    id: u64,
    published_ms: Option<u64>,
    queues: &[u32],
    exchange: &str,
    routing_key: &str,
    properties: &[u8],
    body: &[u8],
) {
    let flags = message_flags(flags, queues.len(), published_ms);
    frame(out, TYPE_MESSAGE, flags, |out| {
        encode_message_payload(out, id, published_ms, queues, exchange, routing_key, properties, body)
    });
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

/// Encodes an ack or delivered record from a borrowed id list.
pub fn encode_id_record(out: &mut Vec<u8>, kind: u8, queue: u32, ids: &[u64]) {
    frame(out, kind, 0, |out| encode_id_list(out, queue, ids));
}

/// Size of the framed record [`encode_message`] writes.
pub fn message_record_len(
    queues: usize,
    timed: bool,
    exchange: &str,
    routing_key: &str,
    properties: &[u8],
    body: &[u8],
) -> usize {
    let count_len = if queues > u16::MAX as usize { 4 } else { 2 };
    RECORD_PREFIX_LEN
        + 2
        + 8
        + if timed { 8 } else { 0 }
        + count_len
        + queues * 4
        + 1
        + exchange.len().min(255)
        + 1
        + routing_key.len().min(255)
        + 4
        + properties.len()
        + 4
        + body.len()
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    // Names are AMQP short strings, at most 255 bytes, checked on the way in.
    let bytes = &s.as_bytes()[..s.len().min(255)];
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
        std::cmp::Ordering::Equal => Ok(MessageHead { id, queues, body_len, published_ms, priority, expiration_ms }),
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
