//! Field tables and arrays with every value type RabbitMQ uses.
//!
//! The type letters follow RabbitMQ rather than the 0-9-1 spec's errata table
//! (for example `s` is a signed 16-bit integer, not a short string), because
//! that is what every RabbitMQ client sends.

use bytes::Bytes;

use super::error::DecodeError;
use super::wire::{Reader, Wire, Writer};

/// Nesting deeper than this is refused: it bounds recursion on hostile input
/// while leaving far more room than any real header needs.
pub const MAX_NESTING: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal { scale: u8, value: u32 },
    LongStr(Bytes),
    Array(Vec<FieldValue>),
    Timestamp(u64),
    Table(FieldTable),
    Void,
    ByteArray(Bytes),
}

/// An ordered table: keys keep the order the peer sent them in.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldTable(pub Vec<(String, FieldValue)>);

impl FieldTable {
    pub fn new() -> Self {
        FieldTable(Vec::new())
    }

    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn insert(&mut self, key: impl Into<String>, value: FieldValue) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    fn read_nested(r: &mut Reader, depth: usize) -> Result<Self, DecodeError> {
        if depth > MAX_NESTING {
            return Err(DecodeError::TooDeep(MAX_NESTING));
        }
        let len = r.u32()? as usize;
        let mut inner = Reader::new(r.bytes(len)?);
        let mut entries = Vec::new();
        while inner.remaining() > 0 {
            let key = inner.short_str()?;
            let value = FieldValue::read_nested(&mut inner, depth)?;
            entries.push((key, value));
        }
        Ok(FieldTable(entries))
    }

    /// Decodes the entries of a table whose 32-bit length was already consumed
    /// (the form AMQPLAIN responses take).
    pub fn decode_entries(raw: Bytes) -> Result<Self, DecodeError> {
        let mut inner = Reader::new(raw);
        let mut entries = Vec::new();
        while inner.remaining() > 0 {
            let key = inner.short_str()?;
            let value = FieldValue::read_nested(&mut inner, 1)?;
            entries.push((key, value));
        }
        Ok(FieldTable(entries))
    }
}

impl FieldValue {
    fn read_nested(r: &mut Reader, depth: usize) -> Result<Self, DecodeError> {
        let tag = r.u8()?;
        Ok(match tag {
            b't' => FieldValue::Bool(r.u8()? != 0),
            b'b' => FieldValue::I8(r.u8()? as i8),
            b'B' => FieldValue::U8(r.u8()?),
            b's' => FieldValue::I16(r.u16()? as i16),
            b'u' => FieldValue::U16(r.u16()?),
            b'I' => FieldValue::I32(r.u32()? as i32),
            b'i' => FieldValue::U32(r.u32()?),
            b'l' => FieldValue::I64(r.u64()? as i64),
            b'f' => FieldValue::F32(f32::from_bits(r.u32()?)),
            b'd' => FieldValue::F64(f64::from_bits(r.u64()?)),
            b'D' => FieldValue::Decimal { scale: r.u8()?, value: r.u32()? },
            b'S' => FieldValue::LongStr(r.long_str()?),
            b'x' => FieldValue::ByteArray(r.long_str()?),
            b'T' => FieldValue::Timestamp(r.u64()?),
            b'V' => FieldValue::Void,
            b'F' => FieldValue::Table(FieldTable::read_nested(r, depth + 1)?),
            b'A' => {
                if depth + 1 > MAX_NESTING {
                    return Err(DecodeError::TooDeep(MAX_NESTING));
                }
                let len = r.u32()? as usize;
                let mut inner = Reader::new(r.bytes(len)?);
                let mut items = Vec::new();
                while inner.remaining() > 0 {
                    items.push(FieldValue::read_nested(&mut inner, depth + 1)?);
                }
                FieldValue::Array(items)
            }
            other => return Err(DecodeError::UnknownFieldType(other as char)),
        })
    }

    fn write_value(&self, w: &mut Writer) {
        match self {
            FieldValue::Bool(v) => {
                w.u8(b't');
                w.u8(*v as u8)
            }
            FieldValue::I8(v) => {
                w.u8(b'b');
                w.u8(*v as u8)
            }
            FieldValue::U8(v) => {
                w.u8(b'B');
                w.u8(*v)
            }
            FieldValue::I16(v) => {
                w.u8(b's');
                w.u16(*v as u16)
            }
            FieldValue::U16(v) => {
                w.u8(b'u');
                w.u16(*v)
            }
            FieldValue::I32(v) => {
                w.u8(b'I');
                w.u32(*v as u32)
            }
            FieldValue::U32(v) => {
                w.u8(b'i');
                w.u32(*v)
            }
            FieldValue::I64(v) => {
                w.u8(b'l');
                w.u64(*v as u64)
            }
            FieldValue::F32(v) => {
                w.u8(b'f');
                w.u32(v.to_bits())
            }
            FieldValue::F64(v) => {
                w.u8(b'd');
                w.u64(v.to_bits())
            }
            FieldValue::Decimal { scale, value } => {
                w.u8(b'D');
                w.u8(*scale);
                w.u32(*value)
            }
            FieldValue::LongStr(v) => {
                w.u8(b'S');
                w.long_str(v)
            }
            FieldValue::ByteArray(v) => {
                w.u8(b'x');
                w.long_str(v)
            }
            FieldValue::Timestamp(v) => {
                w.u8(b'T');
                w.u64(*v)
            }
            FieldValue::Void => w.u8(b'V'),
            FieldValue::Table(t) => {
                w.u8(b'F');
                t.write(w)
            }
            FieldValue::Array(items) => {
                w.u8(b'A');
                write_length_prefixed(w, |w| {
                    for item in items {
                        item.write_value(w);
                    }
                });
            }
        }
    }

    /// The value as a string, for arguments such as `x-match` or `x-overflow`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongStr(b) | FieldValue::ByteArray(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as an integer, for arguments such as `x-max-length`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::I8(v) => Some(v.into()),
            FieldValue::U8(v) => Some(v.into()),
            FieldValue::I16(v) => Some(v.into()),
            FieldValue::U16(v) => Some(v.into()),
            FieldValue::I32(v) => Some(v.into()),
            FieldValue::U32(v) => Some(v.into()),
            FieldValue::I64(v) => Some(v),
            FieldValue::Timestamp(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn string(s: &str) -> Self {
        FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

/// Writes a 32-bit length, then whatever `body` writes, then patches the length.
fn write_length_prefixed(w: &mut Writer, body: impl FnOnce(&mut Writer)) {
    let start = w.buf().len();
    w.u32(0);
    body(w);
    let buf = w.buf();
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

impl Wire for FieldTable {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        FieldTable::read_nested(r, 1)
    }

    fn write(&self, w: &mut Writer) {
        write_length_prefixed(w, |w| {
            for (key, value) in &self.0 {
                w.short_str(key);
                value.write_value(w);
            }
        });
    }
}
