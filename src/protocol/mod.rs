//! The AMQP 0-9-1 codec: frames, methods, field tables and content
//! properties, as pure functions over `bytes` buffers.
//!
//! This layer owns the wire format and nothing else: no sockets, no tokio,
//! no broker state. Decoding never panics on hostile input; every failure is
//! a [`DecodeError`] that names the reply code to close the connection with.

pub mod constants;
pub mod error;
pub mod frame;
pub mod method;
pub mod properties;
pub mod table;
pub mod wire;

pub use constants::reply;
pub use error::DecodeError;
pub use frame::{ContentHeader, Frame, decode_frame, encode_content, encode_heartbeat, encode_method};
pub use method::Method;
pub use properties::BasicProperties;
pub use table::{FieldTable, FieldValue};
