//! The message record written on the publish path: laid out and
//! checksummed before the log's lock, stamped with its id under it.

use bytes::BufMut;
use smallvec::SmallVec;

use super::crc_shift::PastBytes;
use super::{RECORD_PREFIX_LEN, TYPE_MESSAGE, message_flags, str8};

/// Room for a record's fields without an allocation: a publish time, a
/// stream offset, a few queue ids and short names.
const FIELDS_INLINE: usize = 128;

/// A message record laid out before its id is known, so that the log's
/// lock only stamps the id and copies bytes: the record's length and the
/// checksum of everything after the id are computed here, from the same
/// pieces [`MessageDraft::encode`] writes (one source for the bytes and
/// the length of a message record).
///
/// The record's CRC covers type, flags, id and the rest; with the CRC of
/// the rest known, and the operator that moves a CRC past the rest, the
/// CRC of the whole is that of the first 10 bytes moved past the rest and
/// joined with it (CRC-32 is linear): one multiplication under the lock,
/// whatever the body's size (`crc_shift`).
#[derive(Debug)]
pub struct MessageDraft<'a> {
    flags: u8,
    /// Everything between the id and the properties' bytes: publish time,
    /// stream offset, queue count and ids, exchange, routing key and the
    /// properties' length.
    fields: SmallVec<[u8; FIELDS_INLINE]>,
    properties: &'a [u8],
    body_len: [u8; 4],
    body: &'a [u8],
    /// CRC-32 of everything after the id.
    after_id_crc: u32,
    /// Moves the CRC of the bytes up to the id past everything after it.
    past_after_id: PastBytes,
}

/// Length, CRC, type, flags and id: the bytes before a draft's pieces.
const MESSAGE_HEAD_LEN: usize = RECORD_PREFIX_LEN + 2 + 8;

impl<'a> MessageDraft<'a> {
    pub fn new(
        flags: u8,
        published_ms: Option<u64>,
        stream_offset: Option<u64>,
        queues: &[u32],
        (exchange, routing_key): (&str, &str),
        properties: &'a [u8],
        body: &'a [u8],
    ) -> MessageDraft<'a> {
        let flags = message_flags(flags, queues.len(), published_ms, stream_offset);
        let mut fields: SmallVec<[u8; FIELDS_INLINE]> = SmallVec::new();
        if let Some(ms) = published_ms {
            fields.extend_from_slice(&ms.to_le_bytes());
        }
        if let Some(offset) = stream_offset {
            fields.extend_from_slice(&offset.to_le_bytes());
        }
        if queues.len() > u16::MAX as usize {
            fields.extend_from_slice(&(queues.len() as u32).to_le_bytes());
        } else {
            fields.extend_from_slice(&(queues.len() as u16).to_le_bytes());
        }
        for q in queues {
            fields.extend_from_slice(&q.to_le_bytes());
        }
        for name in [exchange, routing_key] {
            let bytes = str8(name);
            fields.push(bytes.len() as u8);
            fields.extend_from_slice(bytes);
        }
        fields.extend_from_slice(&(properties.len() as u32).to_le_bytes());
        let mut draft = MessageDraft {
            flags,
            fields,
            properties,
            body_len: (body.len() as u32).to_le_bytes(),
            body,
            after_id_crc: 0,
            past_after_id: PastBytes::new(0),
        };
        let mut after_id = crc32fast::Hasher::new();
        for piece in draft.pieces() {
            after_id.update(piece);
        }
        draft.after_id_crc = after_id.finalize();
        draft.past_after_id = PastBytes::for_len((draft.len() - MESSAGE_HEAD_LEN) as u64);
        draft
    }

    fn pieces(&self) -> [&[u8]; 4] {
        [&self.fields, self.properties, &self.body_len, self.body]
    }

    /// Bytes the framed record takes (never none: no `is_empty`).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        MESSAGE_HEAD_LEN + self.pieces().iter().map(|p| p.len()).sum::<usize>()
    }

    /// Appends the framed record with its id: [`MessageDraft::len`] bytes.
    pub fn encode(&self, out: &mut Vec<u8>, id: u64) {
        let id_bytes = id.to_le_bytes();
        let mut head = [0u8; 10];
        head[0] = TYPE_MESSAGE;
        head[1] = self.flags;
        head[2..].copy_from_slice(&id_bytes);
        let crc = self.past_after_id.join(crc32fast::hash(&head), self.after_id_crc);
        out.reserve(self.len());
        out.put_u32_le((self.len() - RECORD_PREFIX_LEN) as u32);
        out.put_u32_le(crc);
        out.put_u8(TYPE_MESSAGE);
        out.put_u8(self.flags);
        out.put_slice(&id_bytes);
        for piece in self.pieces() {
            out.put_slice(piece);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::format::{MessageRecord, Record};

    #[test]
    fn the_stamped_checksum_is_the_checksum_of_the_whole_record() {
        let wide: Vec<u32> = (0..70_000).collect();
        let body = vec![7u8; 3_000];
        for (queues, stream_offset) in [(&[1u32][..], None), (&[3, 4][..], Some(99)), (&wide[..], None)] {
            let draft = MessageDraft::new(0, Some(1_234), stream_offset, queues, ("ex", "rk"), &[1, 2, 3], &body);
            let mut out = vec![0xAA; 5];
            draft.encode(&mut out, 0x0102_0304_0506_0708);
            let record = &out[5..];
            assert_eq!(record.len(), draft.len(), "the length is the encoder's");
            let len = u32::from_le_bytes(record[0..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(record[4..8].try_into().expect("4 bytes"));
            assert_eq!(len, record.len() - RECORD_PREFIX_LEN);
            assert_eq!(crc, crc32fast::hash(&record[RECORD_PREFIX_LEN..]));
        }
    }

    #[test]
    fn a_draft_decodes_to_the_message_it_was_made_from() {
        let draft = MessageDraft::new(0, Some(5), Some(6), &[9, 10], ("amq.topic", "a.b"), &[0x10, 0, 2], b"hello");
        let mut out = Vec::new();
        draft.encode(&mut out, 42);
        let payload = bytes::Bytes::copy_from_slice(&out[RECORD_PREFIX_LEN + 2..]);
        let record = Record::decode(out[RECORD_PREFIX_LEN], out[RECORD_PREFIX_LEN + 1], payload).expect("decodes");
        let Record::Message(MessageRecord {
            id, published_ms, stream_offset, queues, exchange, routing_key, body, ..
        }) = record
        else {
            panic!("not a message record");
        };
        assert_eq!((id, published_ms, stream_offset, queues), (42, Some(5), Some(6), vec![9, 10]));
        assert_eq!((exchange.as_str(), routing_key.as_str(), &body[..]), ("amq.topic", "a.b", &b"hello"[..]));
    }

    #[test]
    fn an_id_record_is_as_long_as_its_length_says() {
        for count in [0usize, 1, 3, 1000] {
            let ids: Vec<u64> = (0..count as u64).collect();
            let mut out = Vec::new();
            crate::store::format::encode_id_record(&mut out, crate::store::format::TYPE_ACK, 5, &ids);
            assert_eq!(out.len(), crate::store::format::id_record_len(count));
        }
    }
}
