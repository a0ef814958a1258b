//! The spare segment: one zero-filled, synced file kept ready to become the
//! next segment, so that the writer's `fdatasync`s overwrite blocks that
//! exist (a pure data flush) instead of allocating them (a metadata change
//! the sync must journal, a third dearer on ext4).
//!
//! A background thread fills `spare.partial`, syncs it and renames it to
//! `spare.ready`; the writer renames `spare.ready` to the new segment's
//! name. Which spare exists, and how big, is known here, in memory: after
//! start-up nothing looks the spare files up by name, and the two renames
//! happen under one lock. A file system is entitled to that discipline and
//! one in use needs it: LazyFS, the file system of the power-cut runs, binds
//! a name to a file in a cache, and a lookup of a name racing a rename of it
//! leaves the name bound to the renamed file; the next `spare.partial` then
//! shares a live segment's cached pages, and its zeros reached the segment
//! at that segment's next fdatasync (storage-format.md, "The spare file",
//! tells the whole sequence).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

const SPARE_READY: &str = "spare.ready";
const SPARE_PARTIAL: &str = "spare.partial";
/// Bytes of zeros written at a time while filling.
const FILL_CHUNK: usize = 1 << 20;

#[derive(Default)]
struct SpareState {
    /// A fill is under way (its thread owns `spare.partial`).
    filling: bool,
    /// The size of `spare.ready`, when there is one.
    ready: Option<u64>,
}

/// Keeps one zero-filled, synced file ready to become the next segment.
pub(super) struct SpareMaker {
    dir: PathBuf,
    /// Held for every decision about, and rename of, the spare files.
    state: Mutex<SpareState>,
    /// Bytes `spare.partial` holds so far (0 when there is none).
    partial_bytes: AtomicU64,
}

impl SpareMaker {
    /// Looks at the directory once, at start-up, before any other thread
    /// uses it: a half-made spare from a crash is removed, a ready one kept.
    pub(super) fn open(dir: &Path) -> SpareMaker {
        let _ = std::fs::remove_file(dir.join(SPARE_PARTIAL));
        let ready = std::fs::metadata(dir.join(SPARE_READY)).ok().filter(|m| m.is_file()).map(|m| m.len());
        SpareMaker {
            dir: dir.to_path_buf(),
            state: Mutex::new(SpareState { filling: false, ready }),
            partial_bytes: AtomicU64::new(0),
        }
    }

    /// Renames the ready spare to `target` if it has `capacity` bytes.
    pub(super) fn take(&self, capacity: u32, target: &Path) -> bool {
        let mut state = self.state.lock();
        if state.ready != Some(capacity as u64) {
            return false;
        }
        match std::fs::rename(self.dir.join(SPARE_READY), target) {
            Ok(()) => {
                state.ready = None;
                true
            }
            Err(e) => {
                // Gone or unusable behind Warren's back: make a new one.
                tracing::warn!("cannot use the spare log segment: {e}");
                state.ready = None;
                false
            }
        }
    }

    /// Starts preparing a spare of `capacity` bytes unless one of that size
    /// is ready or one is being made. A ready spare of another size (left by
    /// a run with another segment size) is replaced.
    pub(super) fn prepare(self: &Arc<Self>, capacity: u32) {
        {
            let mut state = self.state.lock();
            if state.filling || state.ready == Some(capacity as u64) {
                return;
            }
            if state.ready.take().is_some() {
                let _ = std::fs::remove_file(self.dir.join(SPARE_READY));
            }
            state.filling = true;
        }
        let maker = self.clone();
        let spawned = std::thread::Builder::new().name("warren-spare-segment".into()).spawn(move || {
            let filled = maker.fill(capacity);
            let mut state = maker.state.lock();
            match filled {
                Ok(()) => match std::fs::rename(maker.dir.join(SPARE_PARTIAL), maker.dir.join(SPARE_READY)) {
                    Ok(()) => state.ready = Some(capacity as u64),
                    Err(e) => maker.abandon(&e),
                },
                Err(e) => maker.abandon(&e),
            }
            maker.partial_bytes.store(0, Ordering::Relaxed);
            state.filling = false;
        });
        if spawned.is_err() {
            self.state.lock().filling = false;
        }
    }

    /// A half-made spare only takes space the log may need.
    fn abandon(&self, e: &io::Error) {
        let _ = std::fs::remove_file(self.dir.join(SPARE_PARTIAL));
        tracing::warn!("could not prepare a spare log segment (new segments will be sparse): {e}");
    }

    fn fill(&self, capacity: u32) -> io::Result<()> {
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(self.dir.join(SPARE_PARTIAL))?;
        let zeros = vec![0u8; FILL_CHUNK];
        let mut written = 0u64;
        while written < capacity as u64 {
            let n = (capacity as u64 - written).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], written)?;
            written += n as u64;
            self.partial_bytes.store(written, Ordering::Relaxed);
        }
        file.sync_data()
    }

    /// Bytes the spare files occupy, from memory (no lookup by name).
    pub(super) fn bytes(&self) -> u64 {
        let ready = self.state.lock().ready.unwrap_or(0);
        ready + self.partial_bytes.load(Ordering::Relaxed)
    }
}
