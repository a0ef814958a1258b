//! Durable storage: one segmented, append-only write-ahead log for the
//! whole broker (see `storage-format.md` for the bytes).
//!
//! - [`format`]: segment headers, record framing and record types; the one
//!   decoder everything (recovery, reads, `warren-dump`) goes through.
//! - [`io`]: file I/O behind the [`io::LogIo`] trait, the real files and a
//!   simulated disk for power-cut tests.
//! - [`log`]: appends, group commit on a writer thread, the message index,
//!   reads, reclaim of dead segments.
//! - [`recovery`]: replay at start-up.
//!
//! The store knows records, positions and ids, not AMQP: the broker tells it
//! what to persist and asks it for message bodies back.

pub mod format;
pub mod inspect;
pub mod io;
pub mod log;
pub mod recovery;

pub use log::{Durability, FsyncPolicy, LogOptions, LogStore, StoreError};
pub use recovery::Recovered;
