//! The bytes of a consumer session ([`KIND_SESSION`] requests on a quorum
//! queue's group): how a node whose client consumes from, gets from or
//! settles a replicated queue asks the queue's leader to do it (see
//! `sessions`, the leader's end, and `consumers`, the client's node's).
//!
//! Fields use AMQP's own encodings (big-endian integers, short and long
//! strings, field tables): the consume arguments travel as the client
//! sent them.

use bytes::{Bytes, BytesMut};

use crate::broker::{AmqpError, Scope};
use crate::protocol::FieldTable;
use crate::protocol::wire::{Reader, Wire, Writer};

/// A session request's kind on the cluster port.
pub const KIND_SESSION: u8 = 8;

/// One request of a session: node `origin`'s session `session` of a
/// queue's group. A leader makes the session on its first request.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRequest {
    pub origin: u64,
    pub session: u64,
    pub op: SessionOp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SessionOp {
    /// basic.consume (after basic.qos's consumer prefetch).
    Consume {
        vhost: String,
        user: String,
        queue: String,
        tag: String,
        no_ack: bool,
        exclusive: bool,
        prefetch: u16,
        arguments: FieldTable,
    },
    Cancel {
        tag: String,
    },
    /// basic.get.
    Get {
        vhost: String,
        user: String,
        queue: String,
        no_ack: bool,
    },
    /// Deliveries settled by the client, by the leader's delivery tags.
    Settle {
        how: SettleHow,
        tags: Vec<u64>,
    },
    /// What the leader has for the session, waiting a little if nothing.
    Poll,
    /// The session ends: what it holds unsettled goes back to the queue.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleHow {
    Ack,
    Requeue,
    Discard,
}

/// A message as a session carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedMessage {
    pub exchange: String,
    pub routing_key: String,
    pub properties: Bytes,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SessionReply {
    Done,
    /// The operation was refused, as the client's channel must learn.
    Refused(AmqpError),
    /// This node does not lead the queue's group (any more).
    NotLeader,
    /// The leader has no such session (it expired or the leader restarted).
    Unknown,
    Items(Vec<SessionItem>),
    Got {
        tag: u64,
        redelivered: bool,
        message_count: u32,
        message: CarriedMessage,
    },
    Empty,
}

/// What a poll brings back.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionItem {
    Deliver {
        consumer_tag: String,
        tag: u64,
        redelivered: bool,
        message: CarriedMessage,
    },
    /// The consumer was cancelled by the leader (its queue was deleted).
    Cancelled {
        consumer_tag: String,
    },
    /// The leader closed the session's channel (a consumer timeout): the
    /// client's channel is closed with this channel error.
    Closed {
        code: u16,
        text: String,
    },
}

const OP_CONSUME: u8 = 1;
const OP_CANCEL: u8 = 2;
const OP_GET: u8 = 3;
const OP_SETTLE: u8 = 4;
const OP_POLL: u8 = 5;
const OP_CLOSE: u8 = 6;

const REPLY_DONE: u8 = 1;
const REPLY_REFUSED: u8 = 2;
const REPLY_NOT_LEADER: u8 = 3;
const REPLY_UNKNOWN: u8 = 4;
const REPLY_ITEMS: u8 = 5;
const REPLY_GOT: u8 = 6;
const REPLY_EMPTY: u8 = 7;

const ITEM_DELIVER: u8 = 1;
const ITEM_CANCELLED: u8 = 2;
const ITEM_CLOSED: u8 = 3;

/// Why bytes could not be read as a session request or reply.
fn bad(what: &str) -> String {
    format!("a consumer session {what} that cannot be read")
}

fn write_message(w: &mut Writer, m: &CarriedMessage) {
    w.short_str(&m.exchange);
    w.short_str(&m.routing_key);
    w.long_str(&m.properties);
    w.long_str(&m.body);
}

fn read_message(r: &mut Reader) -> Result<CarriedMessage, crate::protocol::DecodeError> {
    Ok(CarriedMessage {
        exchange: r.short_str()?,
        routing_key: r.short_str()?,
        properties: r.long_str()?,
        body: r.long_str()?,
    })
}

fn read_text(r: &mut Reader) -> Result<String, crate::protocol::DecodeError> {
    let raw = r.long_str()?;
    String::from_utf8(raw.to_vec()).map_err(|_| crate::protocol::DecodeError::InvalidUtf8)
}

impl SessionRequest {
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        let mut w = Writer::new(&mut buf);
        w.u64(self.origin);
        w.u64(self.session);
        match &self.op {
            SessionOp::Consume { vhost, user, queue, tag, no_ack, exclusive, prefetch, arguments } => {
                w.u8(OP_CONSUME);
                w.long_str(vhost.as_bytes());
                w.long_str(user.as_bytes());
                w.short_str(queue);
                w.short_str(tag);
                w.u8(u8::from(*no_ack) | u8::from(*exclusive) << 1);
                w.u16(*prefetch);
                arguments.write(&mut w);
            }
            SessionOp::Cancel { tag } => {
                w.u8(OP_CANCEL);
                w.short_str(tag);
            }
            SessionOp::Get { vhost, user, queue, no_ack } => {
                w.u8(OP_GET);
                w.long_str(vhost.as_bytes());
                w.long_str(user.as_bytes());
                w.short_str(queue);
                w.u8(u8::from(*no_ack));
            }
            SessionOp::Settle { how, tags } => {
                w.u8(OP_SETTLE);
                w.u8(match how {
                    SettleHow::Ack => 0,
                    SettleHow::Requeue => 1,
                    SettleHow::Discard => 2,
                });
                w.u32(tags.len() as u32);
                for tag in tags {
                    w.u64(*tag);
                }
            }
            SessionOp::Poll => w.u8(OP_POLL),
            SessionOp::Close => w.u8(OP_CLOSE),
        }
        buf.freeze()
    }

    /// Reads a request back (from a peer): Err says what was wrong.
    pub fn decode(bytes: Bytes) -> Result<SessionRequest, String> {
        let mut r = Reader::new(bytes);
        let read = |r: &mut Reader| -> Result<SessionRequest, crate::protocol::DecodeError> {
            let origin = r.u64()?;
            let session = r.u64()?;
            let op = match r.u8()? {
                OP_CONSUME => {
                    let (vhost, user) = (read_text(r)?, read_text(r)?);
                    let (queue, tag) = (r.short_str()?, r.short_str()?);
                    let flags = r.u8()?;
                    let prefetch = r.u16()?;
                    let arguments = FieldTable::read(r)?;
                    SessionOp::Consume {
                        vhost,
                        user,
                        queue,
                        tag,
                        no_ack: flags & 1 != 0,
                        exclusive: flags & 2 != 0,
                        prefetch,
                        arguments,
                    }
                }
                OP_CANCEL => SessionOp::Cancel { tag: r.short_str()? },
                OP_GET => SessionOp::Get {
                    vhost: read_text(r)?,
                    user: read_text(r)?,
                    queue: r.short_str()?,
                    no_ack: r.u8()? != 0,
                },
                OP_SETTLE => {
                    let how = match r.u8()? {
                        0 => SettleHow::Ack,
                        1 => SettleHow::Requeue,
                        2 => SettleHow::Discard,
                        _ => return Err(crate::protocol::DecodeError::Truncated),
                    };
                    let count = r.u32()? as usize;
                    if r.remaining() != count.saturating_mul(8) {
                        return Err(crate::protocol::DecodeError::Truncated);
                    }
                    SessionOp::Settle { how, tags: (0..count).map(|_| r.u64()).collect::<Result<_, _>>()? }
                }
                OP_POLL => SessionOp::Poll,
                OP_CLOSE => SessionOp::Close,
                _ => return Err(crate::protocol::DecodeError::Truncated),
            };
            Ok(SessionRequest { origin, session, op })
        };
        let request = read(&mut r).map_err(|_| bad("request"))?;
        match r.remaining() {
            0 => Ok(request),
            _ => Err(bad("request")),
        }
    }
}

impl SessionReply {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let mut w = Writer::new(&mut buf);
        match self {
            SessionReply::Done => w.u8(REPLY_DONE),
            SessionReply::Refused(e) => {
                w.u8(REPLY_REFUSED);
                w.u16(e.code);
                w.u8(match e.scope {
                    Scope::Channel => 0,
                    Scope::Connection => 1,
                });
                w.long_str(e.text.as_bytes());
            }
            SessionReply::NotLeader => w.u8(REPLY_NOT_LEADER),
            SessionReply::Unknown => w.u8(REPLY_UNKNOWN),
            SessionReply::Items(items) => {
                w.u8(REPLY_ITEMS);
                w.u32(items.len() as u32);
                for item in items {
                    match item {
                        SessionItem::Deliver { consumer_tag, tag, redelivered, message } => {
                            w.u8(ITEM_DELIVER);
                            w.short_str(consumer_tag);
                            w.u64(*tag);
                            w.u8(u8::from(*redelivered));
                            write_message(&mut w, message);
                        }
                        SessionItem::Cancelled { consumer_tag } => {
                            w.u8(ITEM_CANCELLED);
                            w.short_str(consumer_tag);
                        }
                        SessionItem::Closed { code, text } => {
                            w.u8(ITEM_CLOSED);
                            w.u16(*code);
                            w.long_str(text.as_bytes());
                        }
                    }
                }
            }
            SessionReply::Got { tag, redelivered, message_count, message } => {
                w.u8(REPLY_GOT);
                w.u64(*tag);
                w.u8(u8::from(*redelivered));
                w.u32(*message_count);
                write_message(&mut w, message);
            }
            SessionReply::Empty => w.u8(REPLY_EMPTY),
        }
        buf.to_vec()
    }

    /// Reads a reply back (from a peer): Err says what was wrong.
    pub fn decode(bytes: Bytes) -> Result<SessionReply, String> {
        let mut r = Reader::new(bytes);
        let read = |r: &mut Reader| -> Result<SessionReply, crate::protocol::DecodeError> {
            Ok(match r.u8()? {
                REPLY_DONE => SessionReply::Done,
                REPLY_REFUSED => {
                    let code = r.u16()?;
                    let scope = if r.u8()? == 0 { Scope::Channel } else { Scope::Connection };
                    SessionReply::Refused(AmqpError { code, text: read_text(r)?, scope })
                }
                REPLY_NOT_LEADER => SessionReply::NotLeader,
                REPLY_UNKNOWN => SessionReply::Unknown,
                REPLY_ITEMS => {
                    let count = r.u32()? as usize;
                    let mut items = Vec::with_capacity(count.min(1024));
                    for _ in 0..count {
                        items.push(match r.u8()? {
                            ITEM_DELIVER => SessionItem::Deliver {
                                consumer_tag: r.short_str()?,
                                tag: r.u64()?,
                                redelivered: r.u8()? != 0,
                                message: read_message(r)?,
                            },
                            ITEM_CANCELLED => SessionItem::Cancelled { consumer_tag: r.short_str()? },
                            ITEM_CLOSED => SessionItem::Closed { code: r.u16()?, text: read_text(r)? },
                            _ => return Err(crate::protocol::DecodeError::Truncated),
                        });
                    }
                    SessionReply::Items(items)
                }
                REPLY_GOT => SessionReply::Got {
                    tag: r.u64()?,
                    redelivered: r.u8()? != 0,
                    message_count: r.u32()?,
                    message: read_message(r)?,
                },
                REPLY_EMPTY => SessionReply::Empty,
                _ => return Err(crate::protocol::DecodeError::Truncated),
            })
        };
        let reply = read(&mut r).map_err(|_| bad("reply"))?;
        match r.remaining() {
            0 => Ok(reply),
            _ => Err(bad("reply")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::table::FieldValue;

    fn message() -> CarriedMessage {
        CarriedMessage {
            exchange: "amq.direct".into(),
            routing_key: "tasks".into(),
            properties: Bytes::from_static(&[0x10, 0, 2]),
            body: Bytes::from_static(b"task 7"),
        }
    }

    #[test]
    fn requests_round_trip_and_cut_bytes_are_refused() {
        let mut arguments = FieldTable::new();
        arguments.insert("x-priority", FieldValue::I32(5));
        let ops = [
            SessionOp::Consume {
                vhost: "/".into(),
                user: "guest".into(),
                queue: "tasks".into(),
                tag: "ctag-1".into(),
                no_ack: false,
                exclusive: true,
                prefetch: 10,
                arguments,
            },
            SessionOp::Cancel { tag: "ctag-1".into() },
            SessionOp::Get { vhost: "/".into(), user: "guest".into(), queue: "tasks".into(), no_ack: true },
            SessionOp::Settle { how: SettleHow::Requeue, tags: vec![3, 4, 9] },
            SessionOp::Poll,
            SessionOp::Close,
        ];
        for op in ops {
            let request = SessionRequest { origin: 2, session: 77, op };
            let bytes = request.encode();
            assert_eq!(SessionRequest::decode(bytes.clone()), Ok(request.clone()));
            for cut in 0..bytes.len() {
                assert!(SessionRequest::decode(bytes.slice(..cut)).is_err(), "{request:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn replies_round_trip_and_cut_bytes_are_refused() {
        let replies = [
            SessionReply::Done,
            SessionReply::Refused(AmqpError::locked("queue 'tasks' in vhost '/' in exclusive use")),
            SessionReply::NotLeader,
            SessionReply::Unknown,
            SessionReply::Items(vec![
                SessionItem::Deliver { consumer_tag: "c".into(), tag: 1, redelivered: true, message: message() },
                SessionItem::Cancelled { consumer_tag: "c".into() },
                SessionItem::Closed {
                    code: 406,
                    text: "PRECONDITION_FAILED - delivery acknowledgement timed out".into(),
                },
            ]),
            SessionReply::Got { tag: 4, redelivered: false, message_count: 12, message: message() },
            SessionReply::Empty,
        ];
        for reply in replies {
            let bytes = Bytes::from(reply.encode());
            assert_eq!(SessionReply::decode(bytes.clone()), Ok(reply.clone()));
            for cut in 0..bytes.len() {
                assert!(SessionReply::decode(bytes.slice(..cut)).is_err(), "{reply:?} cut at {cut}");
            }
        }
    }
}
