//! A segment file's header and name (storage-format.md, "Segment file").

use super::*;

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
            2..=FORMAT_VERSION => SEGMENT_HEADER_LEN,
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
