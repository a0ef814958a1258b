//! Primitive AMQP types on the wire: integers, bits, short and long strings.
//!
//! [`Reader`] decodes from a `Bytes` without copying long strings (they come
//! back as slices of the frame); [`Writer`] appends to a `BytesMut`. Both keep
//! the state needed to pack consecutive `bit` fields into one octet.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::DecodeError;

/// Cursor over one frame payload.
pub struct Reader {
    buf: Bytes,
    pos: usize,
    /// Octet holding the bits being read and the index of the next bit (8 = none left).
    bits: u8,
    bit_index: u8,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0, bits: 0, bit_index: 8 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        self.bit_index = 8;
        if self.remaining() < n {
            return Err(DecodeError::Truncated);
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..start + n])
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    pub fn bit(&mut self) -> Result<bool, DecodeError> {
        if self.bit_index >= 8 {
            self.bits = self.u8()?;
            self.bit_index = 0;
        }
        let value = self.bits & (1 << self.bit_index) != 0;
        self.bit_index += 1;
        Ok(value)
    }

    /// A slice of the underlying buffer, shared rather than copied.
    pub fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.bit_index = 8;
        if self.remaining() < n {
            return Err(DecodeError::Truncated);
        }
        let slice = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(slice)
    }

    pub fn short_str(&mut self) -> Result<String, DecodeError> {
        let len = self.u8()? as usize;
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
    }

    pub fn long_str(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u32()? as usize;
        self.bytes(len)
    }
}

/// Appends encoded values to a buffer, packing runs of bits.
pub struct Writer<'a> {
    buf: &'a mut BytesMut,
    /// Offset of the octet collecting bits, and how many bits it holds.
    bit_octet: Option<(usize, u8)>,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut BytesMut) -> Self {
        Writer { buf, bit_octet: None }
    }

    pub fn buf(&mut self) -> &mut BytesMut {
        self.bit_octet = None;
        self.buf
    }

    pub fn u8(&mut self, v: u8) {
        self.buf().put_u8(v);
    }

    pub fn u16(&mut self, v: u16) {
        self.buf().put_u16(v);
    }

    pub fn u32(&mut self, v: u32) {
        self.buf().put_u32(v);
    }

    pub fn u64(&mut self, v: u64) {
        self.buf().put_u64(v);
    }

    pub fn bit(&mut self, v: bool) {
        let (offset, count) = match self.bit_octet {
            Some((offset, count)) if count < 8 => (offset, count),
            _ => {
                self.buf.put_u8(0);
                (self.buf.len() - 1, 0)
            }
        };
        if v {
            self.buf[offset] |= 1 << count;
        }
        self.bit_octet = Some((offset, count + 1));
    }

    /// Short strings longer than 255 bytes are cut: the server only writes
    /// names that were validated on the way in, so this is a last guard.
    pub fn short_str(&mut self, s: &str) {
        let bytes = &s.as_bytes()[..s.len().min(255)];
        let buf = self.buf();
        buf.put_u8(bytes.len() as u8);
        buf.put_slice(bytes);
    }

    pub fn long_str(&mut self, s: &[u8]) {
        let buf = self.buf();
        buf.put_u32(s.len() as u32);
        buf.put_slice(s);
    }
}

/// A type that has one AMQP wire encoding; method fields are declared with these.
pub trait Wire: Sized {
    fn read(r: &mut Reader) -> Result<Self, DecodeError>;
    fn write(&self, w: &mut Writer);
}

impl Wire for u8 {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        r.u8()
    }
    fn write(&self, w: &mut Writer) {
        w.u8(*self)
    }
}

impl Wire for u16 {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        r.u16()
    }
    fn write(&self, w: &mut Writer) {
        w.u16(*self)
    }
}

impl Wire for u32 {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        r.u32()
    }
    fn write(&self, w: &mut Writer) {
        w.u32(*self)
    }
}

impl Wire for u64 {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        r.u64()
    }
    fn write(&self, w: &mut Writer) {
        w.u64(*self)
    }
}

impl Wire for bool {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        r.bit()
    }
    fn write(&self, w: &mut Writer) {
        w.bit(*self)
    }
}

/// `shortstr`: a length octet and up to 255 bytes of UTF-8.
impl Wire for String {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        r.short_str()
    }
    fn write(&self, w: &mut Writer) {
        w.short_str(self)
    }
}

/// `longstr`: a 32-bit length and raw bytes.
impl Wire for Bytes {
    fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        r.long_str()
    }
    fn write(&self, w: &mut Writer) {
        w.long_str(self)
    }
}
