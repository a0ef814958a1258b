//! The Raft groups' logs, kept in the one write-ahead log (format 6).
//!
//! A node is a member of several Raft groups (the metadata group, one per
//! quorum queue). Each group's entries, vote, commit point and the
//! stretches it truncated or purged are records of the node's one log, so
//! one `fdatasync` per writer pass makes every group's appends durable at
//! once, as Ra's shared WAL and raft-engine do. The bytes of an entry, a
//! vote or a log id are the Raft layer's; the log knows only a group, an
//! index and a kind of change.
//!
//! Like the definitions, a group's state is kept here in memory, brought
//! up to date by every record, and restated as a snapshot at the start of
//! every segment: its vote, commit point, purge point and every entry it
//! still holds. So compaction needs to know nothing of Raft (no record of
//! an older segment is needed once a newer segment's snapshot is durable),
//! and replay takes each snapshot as the whole truth. The price is that a
//! group's unpurged entries are held in memory and rewritten once per
//! segment: the Raft layer keeps them few by purging what its snapshots
//! cover.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use bytes::Bytes;

use super::format::*;
use super::log::{LogStore, StoreError};

/// One group's durable Raft state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupLog {
    pub vote: Option<Bytes>,
    pub committed: Option<Bytes>,
    /// The last purged entry's index and log id.
    pub purged: Option<(u64, Bytes)>,
    /// How far the group's state machine applied the log (its own bytes).
    pub applied: Option<Bytes>,
    /// Index of `entries[0]`.
    first: u64,
    entries: VecDeque<Bytes>,
    /// The bytes of `entries`.
    bytes: usize,
}

impl GroupLog {
    /// Index one past the last entry held (the first index when empty).
    pub fn end(&self) -> u64 {
        self.first.saturating_add(self.entries.len() as u64)
    }

    /// The last entry held, with its index.
    pub fn last(&self) -> Option<(u64, &Bytes)> {
        self.entries.back().map(|e| (self.end() - 1, e))
    }

    /// The entries held in `range`, with their indexes.
    pub fn entries(&self, range: Range<u64>) -> impl Iterator<Item = (u64, &Bytes)> {
        let start = range.start.max(self.first);
        let end = range.end.min(self.end());
        let skip = (start - self.first) as usize;
        let take = end.saturating_sub(start) as usize;
        self.entries.iter().skip(skip).take(take).enumerate().map(move |(i, e)| (start + i as u64, e))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bytes of the entries held (each restated in every new
    /// segment's snapshot, and held in memory).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn put(&mut self, index: u64, entry: Bytes) {
        if self.entries.is_empty() || index > self.end() || index < self.first {
            // The first entry, or one after a purge past the old end (a
            // snapshot installed), or the start of a log rewritten from
            // before what is held: the log starts over there.
            self.entries.clear();
            self.bytes = 0;
            self.first = index;
        } else {
            // An index already held is overwritten, with what followed it.
            self.truncate(index);
        }
        self.bytes += entry.len();
        self.entries.push_back(entry);
    }

    /// Drops the entries at `index` and after.
    fn truncate(&mut self, index: u64) {
        let keep = index.saturating_sub(self.first).min(self.entries.len() as u64) as usize;
        self.bytes -= self.entries.range(keep..).map(Bytes::len).sum::<usize>();
        self.entries.truncate(keep);
    }

    /// Drops the entries up to and including `index`.
    fn purge(&mut self, index: u64) {
        let after = index.saturating_add(1);
        let drop = after.saturating_sub(self.first).min(self.entries.len() as u64);
        self.bytes -= self.entries.drain(..drop as usize).map(|e| e.len()).sum::<usize>();
        self.first = self.first.max(after);
    }
}

/// Every Raft group this node's log holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RaftLogs {
    groups: BTreeMap<u64, GroupLog>,
    /// The bytes of every group's entries.
    bytes: usize,
}

impl RaftLogs {
    /// Applies a Raft record (others are ignored). Applying one twice
    /// changes nothing, which the snapshot relies on: a record appended
    /// when a segment starts is in that segment's snapshot and after it.
    pub fn apply(&mut self, record: &Record) {
        let group = match record {
            Record::RaftEntry { group, .. } | Record::RaftState { group, .. } => *group,
            _ => return,
        };
        let before = self.groups.get(&group).map_or(0, GroupLog::bytes);
        self.apply_to_group(record);
        let after = self.groups.get(&group).map_or(0, GroupLog::bytes);
        self.bytes = self.bytes + after - before;
    }

    /// The bytes of every group's entries.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn apply_to_group(&mut self, record: &Record) {
        match record {
            Record::RaftEntry { group, index, entry } => {
                self.groups.entry(*group).or_default().put(*index, entry.clone());
            }
            Record::RaftState { group, kind: RaftStateKind::Removed, .. } => {
                self.groups.remove(group);
            }
            Record::RaftState { group, kind, index, value } => {
                let log = self.groups.entry(*group).or_default();
                match kind {
                    RaftStateKind::Vote => log.vote = Some(value.clone()),
                    RaftStateKind::Committed => log.committed = Some(value.clone()),
                    RaftStateKind::Truncated => log.truncate(*index),
                    RaftStateKind::Purged => {
                        log.purge(*index);
                        log.purged = Some((*index, value.clone()));
                    }
                    RaftStateKind::Applied => log.applied = Some(value.clone()),
                    RaftStateKind::Removed => {}
                }
            }
            _ => {}
        }
    }

    pub fn group(&self, group: u64) -> Option<&GroupLog> {
        self.groups.get(&group)
    }

    /// The groups that have any state here, in id order.
    pub fn groups(&self) -> impl Iterator<Item = (u64, &GroupLog)> {
        self.groups.iter().map(|(g, log)| (*g, log))
    }

    /// Restates every group at the start of a segment: its state first
    /// (so that the purge point comes before the entries after it), then
    /// its entries, all flagged SNAPSHOT.
    pub(super) fn encode_snapshot(&self, out: &mut Vec<u8>) {
        for (group, log) in &self.groups {
            let group = *group;
            let state = |kind, index, value: &Bytes, out: &mut Vec<u8>| {
                Record::RaftState { group, kind, index, value: value.clone() }.encode(FLAG_SNAPSHOT, out)
            };
            if let Some(vote) = &log.vote {
                state(RaftStateKind::Vote, 0, vote, out);
            }
            if let Some(committed) = &log.committed {
                state(RaftStateKind::Committed, 0, committed, out);
            }
            if let Some((index, id)) = &log.purged {
                state(RaftStateKind::Purged, *index, id, out);
            }
            if let Some(applied) = &log.applied {
                state(RaftStateKind::Applied, 0, applied, out);
            }
            for (index, entry) in log.entries(0..u64::MAX) {
                Record::RaftEntry { group, index, entry: entry.clone() }.encode(FLAG_SNAPSHOT, out);
            }
        }
    }
}

/// A group's state as the Raft layer reads it back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RaftGroupState {
    pub vote: Option<Bytes>,
    pub committed: Option<Bytes>,
    pub purged: Option<(u64, Bytes)>,
    pub applied: Option<Bytes>,
    /// The last entry held, with its index.
    pub last: Option<(u64, Bytes)>,
}

impl LogStore {
    /// Appends entries of `group`, each `(index, bytes)`, in index order;
    /// an index already held is overwritten with everything after it.
    /// Returns the log position that must be durable before the Raft
    /// layer may count them as written (see [`LogStore::durability`]).
    pub fn raft_append(&self, group: u64, entries: impl IntoIterator<Item = (u64, Bytes)>) -> Result<u64, StoreError> {
        let records = entries.into_iter().map(|(index, entry)| Record::RaftEntry { group, index, entry });
        self.raft_records(records)
    }

    /// Records a change to `group`'s state: its vote, its commit point, a
    /// truncation (entries at `index` and after are gone), a purge (entries
    /// up to `index` are gone; `value` is the last purged log id) or its
    /// removal from this node. Returns the position that must be durable.
    pub fn raft_set(&self, group: u64, kind: RaftStateKind, index: u64, value: Bytes) -> Result<u64, StoreError> {
        self.raft_records(std::iter::once(Record::RaftState { group, kind, index, value }))
    }

    fn raft_records(&self, records: impl Iterator<Item = Record>) -> Result<u64, StoreError> {
        // Encoded and checksummed before the log's lock, which only orders.
        let records: Vec<Record> = records.collect();
        let mut scratch = Vec::new();
        for record in &records {
            record.encode(0, &mut scratch);
        }
        let mut inner = self.inner.lock();
        inner.check()?;
        for record in &records {
            // Applied before the append, as definitions are: if the append
            // opens a segment, its snapshot holds the record already.
            inner.raft.apply(record);
        }
        if scratch.is_empty() {
            return Ok(inner.appended.load(std::sync::atomic::Ordering::Acquire));
        }
        let end = inner.append(scratch.len(), 0, |out| out.extend_from_slice(&scratch));
        drop(inner);
        self.wake_writer.notify_one();
        Ok(end)
    }

    /// The entries of `group` in `range` that the log holds, in order.
    pub fn raft_entries(&self, group: u64, range: Range<u64>) -> Vec<(u64, Bytes)> {
        let inner = self.inner.lock();
        inner.raft.group(group).map_or_else(Vec::new, |log| log.entries(range).map(|(i, e)| (i, e.clone())).collect())
    }

    /// The bytes of `group`'s entries the log holds, and of every group's.
    pub fn raft_bytes(&self, group: u64) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.raft.group(group).map_or(0, GroupLog::bytes), inner.raft.bytes())
    }

    /// `group`'s vote, commit point, purge point and last entry.
    pub fn raft_state(&self, group: u64) -> RaftGroupState {
        let inner = self.inner.lock();
        let Some(log) = inner.raft.group(group) else { return RaftGroupState::default() };
        RaftGroupState {
            vote: log.vote.clone(),
            committed: log.committed.clone(),
            purged: log.purged.clone(),
            applied: log.applied.clone(),
            last: log.last().map(|(i, e)| (i, e.clone())),
        }
    }

    /// The ids of the groups with any state in this node's log.
    pub fn raft_groups(&self) -> Vec<u64> {
        self.inner.lock().raft.groups().map(|(g, _)| g).collect()
    }
}

#[cfg(test)]
#[path = "raft_tests.rs"]
mod tests;
