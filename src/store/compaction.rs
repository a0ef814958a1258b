//! Compaction: keeps the log's disk use bounded by its live data.
//!
//! A thread of its own picks sealed segments by how little of them is live,
//! not by age: a long-lived slow queue must not pin the segments written
//! after its messages. Compacting a segment copies forward what it still
//! matters for, then deletes it once those copies are durable:
//!
//! - its live messages, as RELOCATED records listing the queues that still
//!   hold them, each followed by the delivered marks it had;
//! - its tombstones for messages of older segments that still hold a copy
//!   of them (without the tombstone such a copy would come back at replay);
//! - its delivered marks for live messages of older segments.
//!
//! Definitions need nothing: every segment starts with a snapshot of them,
//! and replay takes each snapshot as the whole truth.
//!
//! Policy (storage-format.md states it): a segment at most a quarter live
//! is always compacted (copying a quarter to free three quarters keeps the
//! write amplification of compaction at most 1/3 of what it frees). Above
//! that, the least live segments are compacted while the files exceed
//! `max(2 × live, live + 4 segments)` minus one segment of headroom. The log
//! lock is only held to append a few megabytes at a time; reads of the
//! records to copy happen outside it.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use super::format::*;
use super::log::{Loc, LogStore, Relocation};
use super::state::{disk_bound, group_by_queue};

/// Most bytes of live records one round copies forward.
const COPY_BUDGET: u64 = 64 << 20;
/// Bytes read (and appended under the lock) at a time.
const COPY_BATCH: u64 = 4 << 20;
/// How often the compactor looks even when nobody asked.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How often it looks while publishers wait for it.
const BEHIND_CHECK: Duration = Duration::from_millis(10);

pub(super) fn spawn(store: Arc<LogStore>) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("warren-log-compactor".into())
        .spawn(move || {
            loop {
                {
                    let mut wanted = store.compact_wanted.lock();
                    if !*wanted {
                        // Publishers wait while compaction is behind: look often then.
                        let idle =
                            if store.compaction_behind.load(Ordering::Acquire) { BEHIND_CHECK } else { IDLE_CHECK };
                        store.wake_compactor.wait_for(&mut wanted, idle);
                    }
                    *wanted = false;
                }
                if store.stopping.load(Ordering::Acquire) {
                    return;
                }
                // A bug here must not take the broker down: the log stays
                // correct without compaction, it only grows.
                if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| store.compact_round())) {
                    let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).unwrap_or_default();
                    tracing::error!("log compaction failed ({what}); retrying later");
                    std::thread::sleep(IDLE_CHECK);
                }
            }
        })
        .map_err(|e| format!("cannot start the log compactor thread: {e}"))
}

/// A live record to copy: (message id, offset, framed length).
type LiveRecord = (u64, u32, u32);

impl LogStore {
    fn compact_round(&self) {
        if self.inner.lock().failed.is_some() || !self.options.compaction {
            return;
        }
        let durable = self.durable.borrow().position;
        self.delete_compacted(durable);
        for victim in self.choose_victims(durable) {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            self.compact(victim);
        }
        self.note_disk_use();
    }

    /// Whether the log's files are at the bound (room for less than one
    /// more segment): connections that publish then wait for compaction,
    /// so disk use stays bounded however fast they publish.
    fn note_disk_use(&self) {
        let spare = self.io.spare_bytes();
        let inner = self.inner.lock();
        let segment = inner.segment_size as u64;
        let (live, files) = inner.live_and_files(true);
        let disk = files + spare;
        let bound = disk_bound(live, segment);
        let behind = disk + segment > bound;
        drop(inner);
        if self.compaction_behind.swap(behind, Ordering::AcqRel) != behind {
            tracing::debug!(
                "compaction {}: {disk} bytes on disk, bound {bound}",
                if behind { "behind" } else { "caught up" }
            );
        }
    }

    /// Deletes compacted segments whose copies are durable, once a later
    /// segment's definitions snapshot is durable too.
    fn delete_compacted(&self, durable: u64) {
        let removable: Vec<(u32, u64)> = {
            let mut inner = self.inner.lock();
            let seqs: Vec<u32> = inner.segments.keys().copied().collect();
            let mut out = Vec::new();
            for (i, seq) in seqs.iter().enumerate() {
                let next_snapshot = seqs.get(i + 1).and_then(|s| inner.segments.get(s)).map(|m| m.snapshot_end);
                let Some(meta) = inner.segments.get_mut(seq) else { continue };
                let Some(upto) = meta.compacted_upto else { continue };
                if upto > durable || !meta.sealed {
                    continue;
                }
                if meta.live_messages > 0 {
                    // A copy into it was still on its way when it was
                    // compacted: compact it again.
                    meta.compacted_upto = None;
                    continue;
                }
                if next_snapshot.is_some_and(|end| end <= durable) {
                    out.push((*seq, meta.base));
                }
            }
            out
        };
        if removable.is_empty() {
            return;
        }
        let mut removed = Vec::new();
        for (seq, base) in removable {
            match self.io.remove(base) {
                Ok(()) => removed.push(seq),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => removed.push(seq),
                Err(e) => tracing::warn!("cannot remove compacted segment {}: {e}", self.io.describe(base)),
            }
        }
        // Until the removal is durable the file may come back after a power
        // cut, so it still counts as holding its copies until then.
        if let Err(e) = self.io.sync_dir() {
            tracing::warn!("fsync of the log directory after compaction: {e}");
            return;
        }
        let mut inner = self.inner.lock();
        for seq in removed {
            if let Some(meta) = inner.segments.remove(&seq) {
                tracing::debug!("compaction deleted segment {}", self.io.describe(meta.base));
                self.stats.segments_deleted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The segments to compact now, least live first. Only segments
    /// written and synced whole are candidates: their records are read back
    /// from the file.
    fn choose_victims(&self, durable: u64) -> Vec<u32> {
        let spare = self.io.spare_bytes();
        let inner = self.inner.lock();
        let segment = inner.segment_size as u64;
        // Segments already compacted are as good as gone.
        let (live, files) = inner.live_and_files(false);
        let mut disk = files + spare;
        let target = disk_bound(live, segment).saturating_sub(segment);
        let mut candidates: Vec<(u64, u64, u32)> = inner
            .segments
            .iter()
            .filter(|(seq, m)| {
                **seq != inner.active
                    && m.sealed
                    && m.base + m.used as u64 <= durable
                    && m.compacted_upto.is_none()
                    && (!m.uncompactable || m.live_messages == 0)
            })
            .map(|(seq, m)| (m.live_bytes, m.capacity as u64, *seq))
            .collect();
        candidates.sort_by(|a, b| (a.0 * b.1).cmp(&(b.0 * a.1)));
        let mut victims = Vec::new();
        let mut budget = COPY_BUDGET;
        for (live_bytes, capacity, seq) in candidates {
            let cheap = live_bytes * 4 <= capacity;
            let pressure = disk > target && live_bytes * 10 < capacity * 9;
            if !cheap && !pressure {
                break;
            }
            if live_bytes > budget && !victims.is_empty() {
                break;
            }
            budget = budget.saturating_sub(live_bytes);
            disk = disk.saturating_sub(capacity - live_bytes.min(capacity));
            victims.push(seq);
        }
        victims
    }

    /// Copies forward what segment `victim` still matters for and marks it
    /// for deletion once that is durable.
    fn compact(&self, victim: u32) {
        let (base, live) = {
            let inner = self.inner.lock();
            let Some(meta) = inner.segments.get(&victim) else { return };
            let mut live: Vec<LiveRecord> = Vec::new();
            let here = |id: u64| inner.index.get(id).filter(|l| l.segment == victim).map(|l| (id, l.offset, l.len));
            live.extend((meta.id_floor..meta.id_ceil).filter_map(here));
            live.extend(meta.relocated.iter().filter_map(|id| here(*id)));
            live.sort_by_key(|r| r.1);
            (meta.base, live)
        };
        let copied_any = !live.is_empty();
        let mut start = 0;
        while start < live.len() {
            let mut end = start;
            let mut bytes = 0u64;
            while end < live.len() && (bytes < COPY_BATCH || end == start) {
                bytes += live[end].2 as u64;
                end += 1;
            }
            if !self.copy_forward(victim, base, &live[start..end]) {
                return;
            }
            start = end;
        }
        self.carry_marks(victim, copied_any);
        self.wake_writer.notify_one();
    }

    /// Reads `records` of segment `victim` (without the lock), then appends
    /// copies of those still live there. False when one could not be read:
    /// the segment is then kept.
    fn copy_forward(&self, victim: u32, base: u64, records: &[LiveRecord]) -> bool {
        let mut messages = Vec::with_capacity(records.len());
        for &(id, offset, len) in records {
            let read =
                self.io.read_at(base, offset as u64, len as usize).map_err(|e| e.to_string()).and_then(|bytes| {
                    match read_record_keyed(&bytes, 0, 0) {
                        Scanned::Record { record: Record::Message(m), .. } if m.id == id => Ok(m),
                        Scanned::Record { .. } | Scanned::End { .. } => Err("another record is there".to_string()),
                        Scanned::Bad { error, .. } => Err(error.to_string()),
                    }
                });
            match read {
                Ok(m) => messages.push(m),
                Err(e) => {
                    self.stats.unreadable_records.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        "compaction cannot read message {id} in {} at offset {offset}: {e}; the segment is kept",
                        self.io.describe(base)
                    );
                    if let Some(meta) = self.inner.lock().segments.get_mut(&victim) {
                        meta.uncompactable = true;
                    }
                    return false;
                }
            }
        }
        let mut inner = self.inner.lock();
        if inner.check().is_err() {
            return false;
        }
        let mut marks: Vec<(u32, Vec<u64>)> = Vec::new();
        let mut copied = 0u64;
        for m in messages {
            let Some(loc) = inner.index.get(m.id).copied() else { continue };
            if loc.segment != victim {
                continue;
            }
            let holders = inner.holders(m.id);
            let queues: Vec<u32> = holders.iter().map(|h| h.0).collect();
            let names = (m.exchange.as_str(), m.routing_key.as_str());
            let draft = MessageDraft::new(
                FLAG_RELOCATED,
                m.published_ms,
                m.stream_offset,
                &queues,
                names,
                &m.properties,
                &m.body,
            );
            let len = draft.len();
            let end = inner.append(len, 0, |out| draft.encode(out, m.id));
            let active = inner.active;
            let offset = (end - inner.active_base()) as u32 - len as u32;
            let to = Loc { segment: active, offset, len: len as u32, queue: loc.queue, delivered: loc.delivered };
            inner.relocations.push(Relocation { id: m.id, from: victim, to, end });
            if let Some(meta) = inner.segments.get_mut(&active) {
                meta.relocated.insert(m.id);
            }
            for (queue, delivered) in holders {
                if delivered {
                    group_by_queue(&mut marks, queue, m.id);
                }
            }
            copied += len as u64;
        }
        // A copy's delivered marks follow it, so replay flags it redelivered
        // even once the original and its marks are gone.
        for (queue, ids) in marks {
            inner.append_id_records(TYPE_DELIVERED, queue, &ids);
            copied += (RECORD_PREFIX_LEN + 10 + ids.len() * 8) as u64;
        }
        drop(inner);
        self.stats.compaction_bytes.fetch_add(copied, Ordering::Relaxed);
        self.wake_writer.notify_one();
        true
    }

    /// Carries the victim's tombstones and delivered marks that older
    /// segments still need, then marks the victim compacted.
    fn carry_marks(&self, victim: u32, copied_any: bool) {
        let mut inner = self.inner.lock();
        if inner.check().is_err() {
            return;
        }
        let Some(meta) = inner.segments.get_mut(&victim) else { return };
        let acks = std::mem::take(&mut meta.foreign_acks);
        let marks = std::mem::take(&mut meta.foreign_delivered);
        let mut carried_acks: Vec<(u32, Vec<u64>)> = Vec::new();
        for (queue, id) in acks {
            if inner.segments.range(..victim).any(|(_, m)| m.holds_copy_of(id)) {
                group_by_queue(&mut carried_acks, queue, id);
            }
        }
        let mut carried_marks: Vec<(u32, Vec<u64>)> = Vec::new();
        for (queue, id) in marks {
            let older_copy = inner.index.get(id).is_some_and(|l| l.segment < victim);
            if older_copy && inner.holders(id).iter().any(|(q, d)| *q == queue && *d) {
                group_by_queue(&mut carried_marks, queue, id);
            }
        }
        let mut carried = 0u64;
        for (queue, ids) in &carried_acks {
            inner.append_id_records(TYPE_ACK, *queue, ids);
            carried += (RECORD_PREFIX_LEN + 10 + ids.len() * 8) as u64;
        }
        for (queue, ids) in &carried_marks {
            inner.append_id_records(TYPE_DELIVERED, *queue, ids);
            carried += (RECORD_PREFIX_LEN + 10 + ids.len() * 8) as u64;
        }
        // Nothing copied: nothing to wait for. (On a full disk, that is what
        // lets dead segments go while the writer cannot write.)
        let copied = copied_any || !carried_acks.is_empty() || !carried_marks.is_empty();
        let upto = if copied { inner.appended.load(Ordering::Acquire) } else { 0 };
        if let Some(meta) = inner.segments.get_mut(&victim) {
            meta.compacted_upto = Some(upto);
        }
        drop(inner);
        self.stats.compaction_bytes.fetch_add(carried, Ordering::Relaxed);
    }
}
