//! One Raft group's log storage (openraft's `RaftLogStorage`), kept in the
//! node's write-ahead log as `raft.entry` and `raft.state` records.
//!
//! An append goes into the log's pending bytes at once; openraft is told
//! it is written (its `IOFlushed` callback) when the writer pass holding
//! it is durable, so every group's appends share the pass's one
//! `fdatasync`. A vote is saved the same way but waited for before
//! returning, as Raft requires. Truncations and purges need no wait of
//! their own: a later append or vote is durable only after them (the log
//! is written in order). If the log fails (an `fdatasync` error), waiting
//! callers get the error, and nothing is reported written again.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, Range, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, entry::RaftEntry};

use super::codec::*;
use super::types::*;
use crate::store::format::RaftStateKind;
use crate::store::{LogStore, StoreError};

/// A group's log, a handle on the node's one log (cheap to clone: the
/// reader openraft asks for is another handle).
#[derive(Clone)]
pub struct GroupLogStorage {
    store: Arc<LogStore>,
    group: u64,
}

impl GroupLogStorage {
    pub fn new(store: Arc<LogStore>, group: u64) -> GroupLogStorage {
        GroupLogStorage { store, group }
    }
}

fn store_error(e: StoreError) -> io::Error {
    io::Error::other(e.to_string())
}

/// Waits until the log is durable up to `position`.
async fn durable(store: &LogStore, position: u64) -> io::Result<()> {
    let mut durability = store.durability();
    loop {
        {
            let now = durability.borrow_and_update();
            if now.failed {
                return Err(io::Error::other("the log failed to make its writes durable"));
            }
            if now.position >= position {
                return Ok(());
            }
        }
        if durability.changed().await.is_err() {
            return Err(io::Error::other("the log stopped"));
        }
    }
}

fn index_range(range: impl RangeBounds<u64>) -> Range<u64> {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    start..end
}

impl RaftLogReader<RaftConfig> for GroupLogStorage {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.store.raft_entries(self.group, index_range(range)).iter().map(|(_, bytes)| decode_entry(bytes)).collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.store.raft_state(self.group).vote.map(|v| decode_vote(&v)).transpose()
    }
}

impl RaftLogStorage<RaftConfig> for GroupLogStorage {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<RaftConfig>, io::Error> {
        let state = self.store.raft_state(self.group);
        let last_purged_log_id = state.purged.map(|(_, id)| decode_log_id(&id)).transpose()?;
        let last_log_id = match state.last {
            Some((_, bytes)) => Some(decode_entry(&bytes)?.log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let end = self.store.raft_set(self.group, RaftStateKind::Vote, 0, encode_vote(vote)).map_err(store_error)?;
        durable(&self.store, end).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        if let Some(id) = committed {
            self.store.raft_set(self.group, RaftStateKind::Committed, 0, encode_log_id(&id)).map_err(store_error)?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.store.raft_state(self.group).committed.map(|c| decode_log_id(&c)).transpose()
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<RaftConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let records = entries.into_iter().map(|e| (e.log_id.index, encode_entry(&e)));
        let end = self.store.raft_append(self.group, records).map_err(store_error)?;
        let store = self.store.clone();
        // Reported written once durable, without holding up the caller:
        // openraft goes on replicating meanwhile.
        tokio::spawn(async move { callback.io_completed(durable(&store, end).await) });
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index.saturating_add(1));
        self.store.raft_set(self.group, RaftStateKind::Truncated, from, bytes::Bytes::new()).map_err(store_error)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let value = encode_log_id(&log_id);
        self.store.raft_set(self.group, RaftStateKind::Purged, log_id.index, value).map_err(store_error)?;
        Ok(())
    }
}
