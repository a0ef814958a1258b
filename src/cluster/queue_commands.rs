//! The commands of a quorum queue's group, and their bytes (a command
//! entry's payload in the group's log; storage-format.md, "A quorum
//! queue's commands").
//!
//! And the bytes of a queue's whole state ([`QueueSnapshot`]), which a
//! leader sends a member that needs entries the group purged (never
//! kept in a log: the member applies it to its replica at once).
//!
//! A message's place in the queue is its *position*: the Raft index of
//! the entry that enqueued it, shifted left 16 bits, plus its place in
//! that entry (an entry carries at most [`MAX_BATCH`] messages). Every
//! member gives the message the same position, so a settle names it alike
//! on every member, and positions grow in log order.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The most messages one enqueue entry carries.
pub const MAX_BATCH: usize = 1 << 16;

const KIND_ENQUEUE: u8 = 1;
const KIND_SETTLE: u8 = 2;

/// A message as an enqueue carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnqueuedMessage {
    pub exchange: String,
    pub routing_key: String,
    pub properties: Bytes,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueCommand {
    /// Messages for the queue, in order, proposed by node `origin` as its
    /// proposal `proposal`: a proposal committed twice (proposed again
    /// after a leader change) is applied once.
    Enqueue { origin: u64, proposal: u64, messages: Vec<EnqueuedMessage> },
    /// Messages that left the queue for good (acknowledged), by position.
    Settle { positions: Vec<u64> },
}

/// How many low bits of a position number the message within its entry.
pub const POSITION_BITS: u32 = 16;

/// The position of the `nth` message of the entry at `index`.
pub fn position(index: u64, nth: usize) -> u64 {
    (index << POSITION_BITS) | nth as u64
}

impl QueueCommand {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            QueueCommand::Enqueue { origin, proposal, messages } => {
                out.put_u8(KIND_ENQUEUE);
                out.put_u64_le(*origin);
                out.put_u64_le(*proposal);
                out.put_u32_le(messages.len() as u32);
                for m in messages {
                    put_message(&mut out, m);
                }
            }
            QueueCommand::Settle { positions } => {
                out.put_u8(KIND_SETTLE);
                out.put_u32_le(positions.len() as u32);
                for p in positions {
                    out.put_u64_le(*p);
                }
            }
        }
        out.freeze()
    }

    /// Reads a command back; Err names what was wrong (the bytes come from
    /// the log or a peer). Bodies are slices of `bytes`, not copies.
    pub fn decode(bytes: &Bytes) -> Result<QueueCommand, String> {
        let mut r = bytes.clone();
        let short = |what: &str| format!("a quorum queue command whose {what} is cut short");
        if !r.has_remaining() {
            return Err("an empty quorum queue command".into());
        }
        match r.get_u8() {
            KIND_ENQUEUE => {
                if r.remaining() < 20 {
                    return Err(short("header"));
                }
                let (origin, proposal, count) = (r.get_u64_le(), r.get_u64_le(), r.get_u32_le() as usize);
                if count > MAX_BATCH {
                    return Err(format!("an enqueue of {count} messages (at most {MAX_BATCH})"));
                }
                let mut messages = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    let exchange = take_short(&mut r).ok_or_else(|| short("exchange"))?;
                    let routing_key = take_short(&mut r).ok_or_else(|| short("routing key"))?;
                    let properties = take_long(&mut r).ok_or_else(|| short("properties"))?;
                    let body = take_long(&mut r).ok_or_else(|| short("body"))?;
                    messages.push(EnqueuedMessage { exchange, routing_key, properties, body });
                }
                done(&r)?;
                Ok(QueueCommand::Enqueue { origin, proposal, messages })
            }
            KIND_SETTLE => {
                if r.remaining() < 4 {
                    return Err(short("count"));
                }
                let count = r.get_u32_le() as usize;
                if r.remaining() != count.saturating_mul(8) {
                    return Err(short("positions"));
                }
                Ok(QueueCommand::Settle { positions: (0..count).map(|_| r.get_u64_le()).collect() })
            }
            other => Err(format!("unknown quorum queue command kind {other}")),
        }
    }
}

/// A queue's whole state on a member, as a snapshot carries it: the last
/// position applied, the proposals lately applied per proposing node (the
/// resends a new leader must still drop), and the messages the replica
/// holds, in position order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueSnapshot {
    pub applied: u64,
    pub seen: Vec<(u64, Vec<u64>)>,
    pub messages: Vec<(u64, EnqueuedMessage)>,
}

const SNAPSHOT_VERSION: u8 = 1;

impl QueueSnapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_u8(SNAPSHOT_VERSION);
        out.put_u64_le(self.applied);
        out.put_u32_le(self.seen.len() as u32);
        for (origin, proposals) in &self.seen {
            out.put_u64_le(*origin);
            out.put_u32_le(proposals.len() as u32);
            proposals.iter().for_each(|p| out.put_u64_le(*p));
        }
        out.put_u32_le(self.messages.len() as u32);
        for (position, m) in &self.messages {
            out.put_u64_le(*position);
            put_message(&mut out, m);
        }
        out.to_vec()
    }

    /// Reads a snapshot back (from a leader): Err names what was wrong.
    pub fn decode(bytes: Bytes) -> Result<QueueSnapshot, String> {
        let mut r = bytes;
        let short = |what: &str| format!("a quorum queue snapshot whose {what} is cut short");
        let u32_at =
            |r: &mut Bytes, what: &str| (r.remaining() >= 4).then(|| r.get_u32_le()).ok_or_else(|| short(what));
        let u64_at =
            |r: &mut Bytes, what: &str| (r.remaining() >= 8).then(|| r.get_u64_le()).ok_or_else(|| short(what));
        match r.has_remaining().then(|| r.get_u8()) {
            Some(SNAPSHOT_VERSION) => {}
            Some(other) => return Err(format!("a quorum queue snapshot of version {other}")),
            None => return Err("an empty quorum queue snapshot".into()),
        }
        let applied = u64_at(&mut r, "applied position")?;
        let origins = u32_at(&mut r, "proposals")?;
        let mut seen = Vec::new();
        for _ in 0..origins {
            let origin = u64_at(&mut r, "proposals")?;
            let count = u32_at(&mut r, "proposals")? as usize;
            if r.remaining() < count.saturating_mul(8) {
                return Err(short("proposals"));
            }
            seen.push((origin, (0..count).map(|_| r.get_u64_le()).collect()));
        }
        let count = u32_at(&mut r, "messages")?;
        let mut messages = Vec::new();
        for _ in 0..count {
            let position = u64_at(&mut r, "messages")?;
            let exchange = take_short(&mut r).ok_or_else(|| short("exchange"))?;
            let routing_key = take_short(&mut r).ok_or_else(|| short("routing key"))?;
            let properties = take_long(&mut r).ok_or_else(|| short("properties"))?;
            let body = take_long(&mut r).ok_or_else(|| short("body"))?;
            messages.push((position, EnqueuedMessage { exchange, routing_key, properties, body }));
        }
        done(&r)?;
        Ok(QueueSnapshot { applied, seen, messages })
    }
}

/// A message's fields as an enqueue and a snapshot carry them.
fn put_message(out: &mut BytesMut, m: &EnqueuedMessage) {
    put_short(out, &m.exchange);
    put_short(out, &m.routing_key);
    out.put_u32_le(m.properties.len() as u32);
    out.extend_from_slice(&m.properties);
    out.put_u32_le(m.body.len() as u32);
    out.extend_from_slice(&m.body);
}

fn done(r: &Bytes) -> Result<(), String> {
    match r.remaining() {
        0 => Ok(()),
        n => Err(format!("{n} bytes after a quorum queue command")),
    }
}

/// A short string: length u8, UTF-8 (AMQP's shortstr: exchange names and
/// routing keys are at most 255 bytes).
fn put_short(out: &mut BytesMut, s: &str) {
    let len = s.len().min(u8::MAX as usize);
    out.put_u8(len as u8);
    out.extend_from_slice(&s.as_bytes()[..len]);
}

fn take_short(r: &mut Bytes) -> Option<String> {
    let len = *r.first()? as usize;
    let text = std::str::from_utf8(r.get(1..1 + len)?).ok()?.to_string();
    r.advance(1 + len);
    Some(text)
}

fn take_long(r: &mut Bytes) -> Option<Bytes> {
    let len = u32::from_le_bytes(r.get(..4)?.try_into().ok()?) as usize;
    if r.len() < 4 + len {
        return None;
    }
    r.advance(4);
    Some(r.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_cut_bytes_are_refused() {
        let enqueue = QueueCommand::Enqueue {
            origin: 7,
            proposal: 9,
            messages: vec![
                EnqueuedMessage {
                    exchange: "amq.topic".into(),
                    routing_key: "eu.paid".into(),
                    properties: Bytes::from_static(&[0x10, 0, 2]),
                    body: Bytes::from_static(b"order 1"),
                },
                EnqueuedMessage {
                    exchange: String::new(),
                    routing_key: "orders".into(),
                    properties: Bytes::new(),
                    body: Bytes::new(),
                },
            ],
        };
        let settle = QueueCommand::Settle { positions: vec![position(3, 0), position(3, 1), position(9, 0)] };
        for command in [enqueue, settle] {
            let bytes = command.encode();
            assert_eq!(QueueCommand::decode(&bytes), Ok(command.clone()));
            for cut in 0..bytes.len() {
                assert!(QueueCommand::decode(&bytes.slice(..cut)).is_err(), "{command:?} cut at {cut}");
            }
            let mut longer = BytesMut::from(&bytes[..]);
            longer.put_u8(0);
            assert!(QueueCommand::decode(&longer.freeze()).is_err());
        }
        assert_eq!(QueueCommand::decode(&Bytes::from_static(&[5])), Err("unknown quorum queue command kind 5".into()));
    }

    #[test]
    fn snapshots_round_trip_and_cut_bytes_are_refused() {
        let message = EnqueuedMessage {
            exchange: String::new(),
            routing_key: "orders".into(),
            properties: Bytes::from_static(&[0x10, 0, 2]),
            body: Bytes::from_static(b"order 9"),
        };
        let snapshot = QueueSnapshot {
            applied: position(40, 2),
            seen: vec![(7, vec![1, 2, 5]), (9, vec![])],
            messages: vec![(position(12, 0), message.clone()), (position(40, 2), message)],
        };
        let bytes = Bytes::from(snapshot.encode());
        assert_eq!(QueueSnapshot::decode(bytes.clone()), Ok(snapshot.clone()));
        for cut in 0..bytes.len() {
            assert!(QueueSnapshot::decode(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut longer = BytesMut::from(&bytes[..]);
        longer.put_u8(0);
        assert!(QueueSnapshot::decode(longer.freeze()).is_err());
    }

    #[test]
    fn positions_follow_the_log_then_the_entry() {
        assert!(position(3, MAX_BATCH - 1) < position(4, 0));
        assert_eq!(position(1, 2) >> 16, 1);
    }
}
