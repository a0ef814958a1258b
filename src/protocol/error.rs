//! Errors found while decoding bytes from a peer.

use super::constants::reply;

/// Why a frame or its payload could not be decoded. Every variant maps to the
/// reply code the connection is closed with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {size} bytes exceeds frame_max {max}")]
    FrameTooLarge { size: u64, max: u32 },
    #[error("frame end octet is {0:#04x}, expected 0xce")]
    BadFrameEnd(u8),
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    #[error("heartbeat frame on channel {0}")]
    HeartbeatOnChannel(u16),
    #[error("method arguments end before all fields were read")]
    Truncated,
    #[error("{0} bytes left over after the method arguments")]
    TrailingBytes(usize),
    #[error("short string is not valid UTF-8")]
    InvalidUtf8,
    #[error("unknown field value type {0:?}")]
    UnknownFieldType(char),
    #[error("field tables nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("unknown method {class}.{method}")]
    UnknownMethod { class: u16, method: u16 },
    #[error("content header for class {0}, expected basic (60)")]
    BadContentClass(u16),
}

impl DecodeError {
    pub fn reply_code(&self) -> u16 {
        match self {
            DecodeError::FrameTooLarge { .. }
            | DecodeError::BadFrameEnd(_)
            | DecodeError::UnknownFrameType(_)
            | DecodeError::HeartbeatOnChannel(_) => reply::FRAME_ERROR,
            DecodeError::UnknownMethod { .. } => reply::COMMAND_INVALID,
            DecodeError::Truncated
            | DecodeError::TrailingBytes(_)
            | DecodeError::InvalidUtf8
            | DecodeError::UnknownFieldType(_)
            | DecodeError::TooDeep(_)
            | DecodeError::BadContentClass(_) => reply::SYNTAX_ERROR,
        }
    }
}
