//! The writer thread: group commit of everything appended, and what happens
//! when the disk says no.
//!
//! Each pass takes all pending chunks, fills in their commit-group records,
//! writes each with one `pwrite`, makes them durable with one `fdatasync`
//! per segment touched, and publishes the durable position. A pass is only
//! written after the previous pass's sync returned: that ordering is what
//! lets recovery tell a torn write from damage (see [`super::walk`]).
//!
//! - Out of space (ENOSPC, EDQUOT) on a write or a file creation is not
//!   fatal: nothing unwritten was confirmed, so the unwritten chunks go back
//!   to the front of the queue and the pass is retried until space returns
//!   (the free-disk alarm blocks publishers meanwhile; compaction deleting
//!   dead segments gives space back).
//! - A failed fdatasync is fatal and never retried: after a failure the
//!   kernel may have dropped the dirty pages, so a later success would prove
//!   nothing. The log stops instead (`LogStore::fail`).
//! - The thread is supervised: if it panics or returns for any other reason
//!   than a shutdown, the log fails the same way instead of leaving
//!   connections waiting for a durability that never comes.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::io::is_out_of_space;
use super::log::{Chunk, FsyncPolicy, LogStore, Relocation};

/// How long the writer waits before retrying after running out of space.
const OUT_OF_SPACE_RETRY: Duration = Duration::from_millis(200);
/// The free-disk check and the compactor run after a pass that opened a
/// segment, or once this much was written, or this long after the last time.
const HOUSEKEEPING_BYTES: u64 = 1 << 20;
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(20);

pub(super) fn spawn(store: Arc<LogStore>) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("warren-log-writer".into())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| store.writer_loop()));
            let clean = {
                let inner = store.inner.lock();
                inner.shutdown || inner.failed.is_some()
            };
            let why = match outcome {
                Ok(()) if clean => return,
                Ok(()) => "the log writer thread stopped".to_string(),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    format!("the log writer thread panicked: {what}")
                }
            };
            store.fail(why);
        })
        .map_err(|e| format!("cannot start the log writer thread: {e}"))
}

/// What one pass got onto the disk.
struct Pass {
    /// Position just past the last chunk written whole.
    end: u64,
    /// Bytes written.
    written: u64,
    max_id: u64,
    created: bool,
    /// Chunks not written for lack of space, in order.
    unwritten: Vec<Chunk>,
    /// The written chunks' buffers and the emptied list that held them,
    /// handed back to the appending side for reuse (see `Inner::recycle`).
    spent: Vec<Vec<u8>>,
    chunk_list: Vec<Chunk>,
}

impl LogStore {
    fn writer_loop(self: &Arc<Self>) {
        let mut last_sync = Instant::now();
        // The compactor and the free-disk check need not run after every
        // pass: each wake-up costs a context switch on a busy machine.
        let mut last_housekeeping = Instant::now();
        let mut written_since = 0u64;
        // Segments written but not yet synced (kept across passes when a
        // pass stops early for lack of space).
        let mut unsynced: Vec<u64> = Vec::new();
        loop {
            let (chunks, relocations) = {
                let mut inner = self.inner.lock();
                while inner.pending.is_empty() && !inner.shutdown {
                    self.wake_writer.wait(&mut inner);
                }
                if inner.pending.is_empty() || inner.failed.is_some() {
                    return;
                }
                inner.pending_bytes = 0;
                // The list the last pass emptied takes the pending one's place.
                let emptied = std::mem::take(&mut inner.spare_chunk_list);
                (std::mem::replace(&mut inner.pending, emptied), std::mem::take(&mut inner.relocations))
            };
            let Some(pass) = self.write_pass(chunks, &mut unsynced) else { return };
            if pass.max_id > 0 {
                self.written_id.fetch_max(pass.max_id, Ordering::Release);
            }
            self.switch_relocations(relocations, pass.end);
            let sync = match self.options.fsync {
                FsyncPolicy::EveryBatch => true,
                FsyncPolicy::Never => false,
                FsyncPolicy::Interval(every) => {
                    let due = last_sync + every;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    true
                }
            };
            if pass.written > 0 {
                self.stats.pass_bytes.observe(pass.written as f64);
            }
            if sync {
                for base in &unsynced {
                    let started = Instant::now();
                    if let Err(e) = self.io.sync(*base) {
                        return self.fail(format!("fdatasync of {}: {e}", self.io.describe(*base)));
                    }
                    self.stats.fsync_seconds.observe(started.elapsed().as_secs_f64());
                    self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                }
                unsynced.clear();
                // A new segment file must survive a power cut too.
                if pass.created
                    && let Err(e) = self.io.sync_dir()
                {
                    return self.fail(format!("fsync of the log directory: {e}"));
                }
                last_sync = Instant::now();
            }
            if pass.end > 0 {
                self.durable.send_modify(|d| d.position = d.position.max(pass.end));
            }
            written_since += pass.written;
            if pass.created
                || written_since >= HOUSEKEEPING_BYTES
                || last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL
                || !pass.unwritten.is_empty()
            {
                self.check_disk();
                self.request_compaction();
                last_housekeeping = Instant::now();
                written_since = 0;
            }
            if !pass.unwritten.is_empty() {
                self.requeue(pass.unwritten);
                // Space comes back when consumers ack and compaction deletes
                // segments: wait a little, then try again.
                std::thread::sleep(OUT_OF_SPACE_RETRY);
                let inner = self.inner.lock();
                if inner.shutdown {
                    tracing::error!(
                        "shutting down with {} bytes of the log unwritten: the disk is full",
                        inner.pending_bytes
                    );
                    return;
                }
            } else {
                let mut inner = self.inner.lock();
                inner.recycle(pass.spent, pass.chunk_list);
                if inner.out_of_space {
                    inner.out_of_space = false;
                    tracing::info!("the log is writing again: disk space came back");
                }
            }
        }
    }

    /// Creates files and writes chunks in order; stops at the first chunk
    /// the disk has no space for. `None` when the log failed.
    fn write_pass(&self, mut list: Vec<Chunk>, unsynced: &mut Vec<u64>) -> Option<Pass> {
        let mut pass = Pass {
            end: 0,
            written: 0,
            max_id: 0,
            created: false,
            unwritten: Vec::new(),
            spent: Vec::with_capacity(list.len()),
            chunk_list: Vec::new(),
        };
        let mut chunks = list.drain(..);
        while let Some(mut chunk) = chunks.next() {
            if let Some(capacity) = chunk.create {
                // The sealed segment's tail is synced before its successor
                // exists, so a torn write is only ever in the newest segment
                // (and the successor's first group can say so).
                if self.options.fsync != FsyncPolicy::Never {
                    for base in unsynced.drain(..) {
                        if let Err(e) = self.io.sync(base) {
                            self.fail(format!("fdatasync of {}: {e}", self.io.describe(base)));
                            return None;
                        }
                    }
                }
                match self.io.create(chunk.base, capacity) {
                    Ok(()) => {
                        chunk.create = None;
                        pass.created = true;
                    }
                    Err(e) if is_out_of_space(&e) => {
                        self.note_out_of_space(&format!("creating {}: {e}", self.io.describe(chunk.base)));
                        pass.unwritten.push(chunk);
                        pass.unwritten.extend(chunks);
                        return Some(pass);
                    }
                    Err(e) => {
                        self.fail(format!("creating {}: {e}", self.io.describe(chunk.base)));
                        return None;
                    }
                }
            }
            chunk.seal_group(unsynced.is_empty());
            match self.io.write_at(chunk.base, chunk.offset as u64, &chunk.data) {
                Ok(()) => {}
                Err(e) if is_out_of_space(&e) => {
                    self.note_out_of_space(&format!("writing {}: {e}", self.io.describe(chunk.base)));
                    // Part of it may be on disk; it is rewritten whole later.
                    if !unsynced.contains(&chunk.base) {
                        unsynced.push(chunk.base);
                    }
                    pass.unwritten.push(chunk);
                    pass.unwritten.extend(chunks);
                    return Some(pass);
                }
                Err(e) => {
                    self.fail(format!("writing {}: {e}", self.io.describe(chunk.base)));
                    return None;
                }
            }
            self.stats.written_bytes.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
            pass.written += chunk.data.len() as u64;
            if !unsynced.contains(&chunk.base) {
                unsynced.push(chunk.base);
            }
            pass.end = pass.end.max(chunk.end());
            pass.max_id = pass.max_id.max(chunk.max_message_id);
            pass.spent.push(chunk.data);
        }
        drop(chunks);
        pass.chunk_list = list;
        Some(pass)
    }

    fn note_out_of_space(&self, what: &str) {
        let mut inner = self.inner.lock();
        if !inner.out_of_space {
            inner.out_of_space = true;
            tracing::error!(
                "the disk is full ({what}); the log keeps what is not written in memory and retries, nothing unwritten is confirmed"
            );
        }
    }

    /// Puts chunks the disk had no space for back in front of what was
    /// appended since, so they are written first and in order.
    fn requeue(&self, mut unwritten: Vec<Chunk>) {
        let mut inner = self.inner.lock();
        let bytes: usize = unwritten.iter().map(|c| c.data.len()).sum();
        inner.pending_bytes += bytes;
        unwritten.append(&mut inner.pending);
        inner.pending = unwritten;
    }

    fn switch_relocations(&self, relocations: Vec<Relocation>, written_end: u64) {
        if relocations.is_empty() {
            return;
        }
        let mut inner = self.inner.lock();
        let mut later = Vec::new();
        for r in relocations {
            if r.end > written_end {
                later.push(r);
                continue;
            }
            let still_there = inner.index.get(r.id).is_some_and(|l| l.segment == r.from);
            if !still_there {
                continue;
            }
            let len = r.to.len as u64;
            if let Some(old) = inner.index.get(r.id).copied() {
                if let Some(meta) = inner.segments.get_mut(&old.segment) {
                    meta.live_messages -= 1;
                    meta.live_bytes -= old.len as u64;
                }
                let mut new = r.to;
                new.queue = old.queue;
                new.delivered = old.delivered;
                inner.index.insert(r.id, new);
            }
            if let Some(meta) = inner.segments.get_mut(&r.to.segment) {
                meta.live_messages += 1;
                meta.live_bytes += len;
            }
        }
        // Copies still waiting for space are switched by a later pass.
        later.append(&mut inner.relocations);
        inner.relocations = later;
    }

    pub(super) fn request_compaction(&self) {
        *self.compact_wanted.lock() = true;
        self.wake_compactor.notify_one();
    }
}
