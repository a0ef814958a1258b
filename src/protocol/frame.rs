//! Frame splitting and encoding.
//!
//! [`decode_frame`] looks at the 7-byte frame header first: a frame larger
//! than the negotiated `frame_max` is refused before its payload is buffered,
//! and an incomplete frame is the expected `Ok(None)`, not an error. Payloads
//! are split off the read buffer as `Bytes`, so a message body travels from
//! the socket to its consumers without being copied.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::constants::*;
use super::error::DecodeError;
use super::method::Method;

/// The fixed part of a content header frame, with the property bytes kept raw.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    pub class_id: u16,
    pub body_size: u64,
    /// Property flags and list exactly as the publisher sent them.
    pub properties: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Method { channel: u16, method: Method },
    Header { channel: u16, header: ContentHeader },
    Body { channel: u16, payload: Bytes },
    Heartbeat,
}

impl Frame {
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method { channel, .. } | Frame::Header { channel, .. } | Frame::Body { channel, .. } => *channel,
            Frame::Heartbeat => 0,
        }
    }
}

/// The whole length (header, payload and end octet) of the frame whose
/// header is at the front of `buf`, once the header is there.
pub fn frame_len_at_front(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..FRAME_HEADER_SIZE)?;
    Some(u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize + FRAME_OVERHEAD)
}

/// Takes one complete frame off the front of `buf`, or returns `Ok(None)` when
/// more bytes are needed. `frame_max` counts the whole frame, header and end
/// octet included, as in connection.tune; like RabbitMQ, a frame whose
/// payload alone is up to `frame_max` is tolerated, since several clients
/// leave the 8 bytes of framing out of their count.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, DecodeError> {
    if buf.len() < FRAME_HEADER_SIZE {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let Some(total) = frame_len_at_front(buf) else { return Ok(None) };
    let size = total - FRAME_OVERHEAD;
    if frame_max != 0 && size as u64 > frame_max as u64 {
        return Err(DecodeError::FrameTooLarge { size: total as u64, max: frame_max });
    }
    if !matches!(kind, FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT) {
        return Err(DecodeError::UnknownFrameType(kind));
    }
    if buf.len() < size + FRAME_OVERHEAD {
        buf.reserve(size + FRAME_OVERHEAD - buf.len());
        return Ok(None);
    }
    let end = buf[FRAME_HEADER_SIZE + size];
    if end != FRAME_END {
        return Err(DecodeError::BadFrameEnd(end));
    }
    buf.advance(FRAME_HEADER_SIZE);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    let frame = match kind {
        FRAME_METHOD => Frame::Method { channel, method: Method::decode(payload)? },
        FRAME_HEADER => Frame::Header { channel, header: decode_content_header(payload)? },
        FRAME_BODY => Frame::Body { channel, payload },
        _ => {
            if channel != 0 {
                return Err(DecodeError::HeartbeatOnChannel(channel));
            }
            Frame::Heartbeat
        }
    };
    Ok(Some(frame))
}

fn decode_content_header(mut payload: Bytes) -> Result<ContentHeader, DecodeError> {
    if payload.len() < 14 {
        return Err(DecodeError::Truncated);
    }
    let class_id = payload.get_u16();
    let _weight = payload.get_u16();
    let body_size = payload.get_u64();
    if class_id != CLASS_BASIC {
        return Err(DecodeError::BadContentClass(class_id));
    }
    Ok(ContentHeader { class_id, body_size, properties: payload })
}

/// Writes a frame header with a placeholder size, lets `body` write the
/// payload, then patches the size and appends the frame-end octet.
fn write_frame(buf: &mut BytesMut, kind: u8, channel: u16, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(kind);
    buf.put_u16(channel);
    let size_at = buf.len();
    buf.put_u32(0);
    body(buf);
    let size = (buf.len() - size_at - 4) as u32;
    buf[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

pub fn encode_method(buf: &mut BytesMut, channel: u16, method: &Method) {
    write_frame(buf, FRAME_METHOD, channel, |b| method.encode(b));
}

/// Writes a method frame whose payload some other encoder produces (the
/// allocation-free `basic.deliver` path).
pub fn encode_method_with(buf: &mut BytesMut, channel: u16, payload: impl FnOnce(&mut BytesMut)) {
    write_frame(buf, FRAME_METHOD, channel, payload);
}

/// Writes the content header and as many body frames as `frame_max` requires.
pub fn encode_content(buf: &mut BytesMut, channel: u16, properties: &[u8], body: &[u8], frame_max: u32) {
    write_frame(buf, FRAME_HEADER, channel, |b| {
        b.put_u16(CLASS_BASIC);
        b.put_u16(0);
        b.put_u64(body.len() as u64);
        b.put_slice(properties);
    });
    let chunk =
        if frame_max == 0 { body.len().max(1) } else { (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1) };
    buf.reserve(body.len() + body.len().div_ceil(chunk) * FRAME_OVERHEAD);
    for piece in body.chunks(chunk) {
        write_frame(buf, FRAME_BODY, channel, |b| b.put_slice(piece));
    }
}

pub fn encode_heartbeat(buf: &mut BytesMut) {
    buf.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}
