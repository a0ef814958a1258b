//! Durable storage: one segmented, append-only write-ahead log for the
//! whole broker (see `storage-format.md` for the bytes).
//!
//! - [`format`](mod@format): segment headers, record framing and record types; the one
//!   decoder everything (recovery, reads, `warren-dump`) goes through;
//!   [`scan`] reads records out of a segment's bytes.
//! - [`io`]: file I/O behind the [`io::LogIo`] trait: the real files.
//! - [`spare`]: the zero-filled spare file that becomes the next segment.
//! - [`sim_disk`]: a simulated disk for power-cut tests.
//! - [`log`]: the log's interface: open, appends, reads, statistics.
//! - [`state`]: what the log keeps in memory behind its lock: segments,
//!   pending chunks, the message index ([`index`]).
//! - [`definitions`]: durable definitions and their per-segment snapshots.
//! - [`raft`]: the Raft groups' logs (entries, votes, commit and purge
//!   points), restated in every segment's snapshot like the definitions.
//! - [`writer`]: group commit on a writer thread; a full disk; supervision.
//! - [`compaction`]: copies forward what mostly dead segments still matter
//!   for and deletes them, so disk use follows live data.
//! - [`disk`]: the free-disk alarm.
//! - [`histogram`]: lock-free fsync-latency and pass-size histograms.
//! - [`walk`]: reads a segment back and tells a torn write from damage.
//! - [`recovery`]: replay at start-up.
//! - [`inspect`]: read-only helpers behind `warren-dump`; [`verify`] judges
//!   each segment's records for it.
//!
//! The store knows records, positions and ids, not AMQP: the broker tells it
//! what to persist and asks it for message bodies back.

pub mod compaction;
pub mod definitions;
pub mod disk;
pub mod format;
pub mod histogram;
pub mod index;
pub mod inspect;
pub mod io;
pub mod log;
pub mod raft;
pub mod recovery;
pub mod scan;
pub mod sim_disk;
pub mod spare;
pub mod state;
pub mod verify;
pub mod walk;
pub mod writer;

pub use log::{Durability, FsyncPolicy, LogOptions, LogStats, LogStore, StoreError, wall_ms};
pub use recovery::Recovered;
pub use state::SPILL_QUEUE;
