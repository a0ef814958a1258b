//! Content header properties of the basic class.
//!
//! The broker forwards the property bytes it received untouched (they are
//! kept as a `Bytes` slice of the header frame); [`BasicProperties`] is the
//! decoded view used where the broker must look inside (delivery mode,
//! headers for the headers exchange, expiration).

use bytes::{BufMut, Bytes, BytesMut};

use super::error::DecodeError;
use super::table::FieldTable;
use super::wire::{Reader, Wire, Writer};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct BasicProperties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Option<FieldTable>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub expiration: Option<String>,
    pub message_id: Option<String>,
    pub timestamp: Option<u64>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
    pub cluster_id: Option<String>,
}

const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
const TYPE: u16 = 1 << 5;
const USER_ID: u16 = 1 << 4;
const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;
/// Set when another 16-bit flag word follows; basic never needs one.
const CONTINUATION: u16 = 1;

impl BasicProperties {
    /// delivery_mode 2 marks a message the publisher wants persisted.
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == Some(2)
    }

    /// Decodes the flag words and property list of a content header.
    pub fn decode(raw: Bytes) -> Result<BasicProperties, DecodeError> {
        let mut r = Reader::new(raw);
        let flags = r.u16()?;
        let mut more = flags & CONTINUATION != 0;
        while more {
            more = r.u16()? & CONTINUATION != 0;
        }
        fn opt<T: Wire>(r: &mut Reader, flags: u16, bit: u16) -> Result<Option<T>, DecodeError> {
            if flags & bit != 0 { T::read(r).map(Some) } else { Ok(None) }
        }
        Ok(BasicProperties {
            content_type: opt(&mut r, flags, CONTENT_TYPE)?,
            content_encoding: opt(&mut r, flags, CONTENT_ENCODING)?,
            headers: opt(&mut r, flags, HEADERS)?,
            delivery_mode: opt(&mut r, flags, DELIVERY_MODE)?,
            priority: opt(&mut r, flags, PRIORITY)?,
            correlation_id: opt(&mut r, flags, CORRELATION_ID)?,
            reply_to: opt(&mut r, flags, REPLY_TO)?,
            expiration: opt(&mut r, flags, EXPIRATION)?,
            message_id: opt(&mut r, flags, MESSAGE_ID)?,
            timestamp: opt(&mut r, flags, TIMESTAMP)?,
            kind: opt(&mut r, flags, TYPE)?,
            user_id: opt(&mut r, flags, USER_ID)?,
            app_id: opt(&mut r, flags, APP_ID)?,
            cluster_id: opt(&mut r, flags, CLUSTER_ID)?,
        })
    }

    /// Appends the flag word and the property list.
    pub fn encode(&self, buf: &mut BytesMut) {
        let mut flags = 0u16;
        let mut set = |present: bool, bit: u16| {
            if present {
                flags |= bit
            }
        };
        set(self.content_type.is_some(), CONTENT_TYPE);
        set(self.content_encoding.is_some(), CONTENT_ENCODING);
        set(self.headers.is_some(), HEADERS);
        set(self.delivery_mode.is_some(), DELIVERY_MODE);
        set(self.priority.is_some(), PRIORITY);
        set(self.correlation_id.is_some(), CORRELATION_ID);
        set(self.reply_to.is_some(), REPLY_TO);
        set(self.expiration.is_some(), EXPIRATION);
        set(self.message_id.is_some(), MESSAGE_ID);
        set(self.timestamp.is_some(), TIMESTAMP);
        set(self.kind.is_some(), TYPE);
        set(self.user_id.is_some(), USER_ID);
        set(self.app_id.is_some(), APP_ID);
        set(self.cluster_id.is_some(), CLUSTER_ID);
        buf.put_u16(flags);
        let mut w = Writer::new(buf);
        fn put<T: Wire>(w: &mut Writer, v: &Option<T>) {
            if let Some(v) = v {
                v.write(w)
            }
        }
        put(&mut w, &self.content_type);
        put(&mut w, &self.content_encoding);
        put(&mut w, &self.headers);
        put(&mut w, &self.delivery_mode);
        put(&mut w, &self.priority);
        put(&mut w, &self.correlation_id);
        put(&mut w, &self.reply_to);
        put(&mut w, &self.expiration);
        put(&mut w, &self.message_id);
        put(&mut w, &self.timestamp);
        put(&mut w, &self.kind);
        put(&mut w, &self.user_id);
        put(&mut w, &self.app_id);
        put(&mut w, &self.cluster_id);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf.freeze()
    }
}
