//! What every group's state machine shares: how far it has applied the
//! log and the membership it holds, kept in the node's log as the group's
//! `raft.state` "applied" marker, written after the effects of the
//! entries it covers (so a log cut anywhere never claims more than it
//! holds, and a restart applies again only what may be missing: applying
//! an entry twice must change nothing). What a group's commands do is its
//! [`Commands`]'; the metadata group applies changes to the definitions,
//! a quorum queue's group its queue's commands.
//!
//! Snapshots: a group whose [`Commands::SNAPSHOTS`] says so (a quorum
//! queue's) has a state that is durable as it is applied (its effects are
//! records of the node's log, before the applied marker), so its snapshot
//! is only the applied log id and membership ([`AppliedSnapshot`]): taking
//! one costs nothing, and lets openraft purge the entries it covers. A
//! follower that needs purged entries is sent the group's whole state,
//! made when it is sent (`transport::SnapshotSource`); it is at least as
//! new as the snapshot says, which is safe because applying an entry again
//! changes nothing. The metadata group takes none yet (its log is kept).

use std::io::{self, Cursor};
use std::time::Duration;

use futures_util::StreamExt;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::impls::BasicNode;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{OptionalSend, Raft, Snapshot, StoredMembership};
use std::sync::Arc;
use tokio::sync::watch;

use super::codec::{decode_applied, encode_applied};
use super::types::*;
use crate::store::LogStore;
use crate::store::format::RaftStateKind;

pub(super) type StoredMembers = StoredMembership<LeaderId, NodeId, BasicNode>;
type Meta = openraft::SnapshotMeta<LeaderId, NodeId, BasicNode>;

/// What a kind of group does with its committed commands.
pub trait Commands: Send + Sync + 'static {
    /// Applies the command committed at `index` on this node; the reply
    /// its proposer gets.
    fn apply(&mut self, index: u64, command: &GroupCommand) -> GroupReply;

    /// Whether the group's applied state is its own snapshot (see the
    /// module's docs); false: it takes no snapshots, and keeps its log.
    const SNAPSHOTS: bool = false;

    /// Replaces the state with a snapshot's bytes (a leader's whole state).
    fn install(&mut self, _data: &[u8]) -> io::Result<()> {
        Err(io::Error::other("this group takes no snapshots"))
    }
}

/// A group's state machine: its commands, and how far they were applied.
pub struct GroupMachine<C> {
    group: u64,
    commands: C,
    store: Arc<LogStore>,
    applied: Option<LogId>,
    membership: StoredMembers,
    /// One past the index last applied (0: nothing yet).
    applied_tx: watch::Sender<u64>,
}

impl<C: Commands> GroupMachine<C> {
    /// The machine as the log left it, and a watch of one past the index
    /// it has applied.
    pub fn recover(group: u64, commands: C, store: Arc<LogStore>) -> io::Result<(Self, watch::Receiver<u64>)> {
        let (applied, membership) = match store.raft_state(group).applied {
            Some(marker) => {
                let (applied, at, membership) = decode_applied(&marker)?;
                (applied, StoredMembers::new(at, membership))
            }
            None => (None, StoredMembers::default()),
        };
        let (applied_tx, applied_rx) = watch::channel(applied.map_or(0, |id| id.index + 1));
        Ok((GroupMachine { group, commands, store, applied, membership, applied_tx }, applied_rx))
    }

    fn log_applied(&self) -> io::Result<()> {
        let marker =
            encode_applied(self.applied.as_ref(), self.membership.log_id().as_ref(), self.membership.membership());
        self.store.raft_set(self.group, RaftStateKind::Applied, 0, marker).map_err(io::Error::other)?;
        Ok(())
    }
}

impl<C: Commands> GroupMachine<C> {
    /// The snapshot the applied state is (None: nothing applied, or the
    /// group takes no snapshots). Its data is empty: the state itself is
    /// made when a follower is sent it.
    fn applied_snapshot(&self) -> Option<Snapshot<LeaderId, NodeId, BasicNode, Cursor<Vec<u8>>>> {
        let applied = self.applied.filter(|_| C::SNAPSHOTS)?;
        let meta = Meta { last_log_id: Some(applied), last_membership: self.membership.clone() };
        Some(Snapshot { meta, snapshot: Cursor::new(Vec::new()) })
    }
}

/// A snapshot of the applied state (see the module's docs); for a group
/// that takes none, asked for one, it fails.
pub struct AppliedSnapshot(Option<Snapshot<LeaderId, NodeId, BasicNode, Cursor<Vec<u8>>>>);

impl RaftSnapshotBuilder<RaftConfig> for AppliedSnapshot {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<Snapshot<LeaderId, NodeId, BasicNode, Cursor<Vec<u8>>>, io::Error> {
        self.0.take().ok_or_else(|| io::Error::other("this group takes no snapshots"))
    }
}

impl<C: Commands> RaftStateMachine<RaftConfig> for GroupMachine<C> {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = AppliedSnapshot;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembers), io::Error> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<RaftConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(next) = entries.next().await {
            let (entry, responder) = next?;
            let reply = match &entry.payload {
                EntryPayload::Blank => GroupReply::default(),
                EntryPayload::Normal(command) => self.commands.apply(entry.log_id.index, command),
                EntryPayload::Membership(members) => {
                    self.membership = StoredMembers::new(Some(entry.log_id), members.clone());
                    GroupReply::default()
                }
            };
            self.applied = Some(entry.log_id);
            self.log_applied()?;
            self.applied_tx.send_replace(entry.log_id.index + 1);
            if let Some(responder) = responder {
                responder.send(reply);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> AppliedSnapshot {
        AppliedSnapshot(self.applied_snapshot())
    }

    /// A leader's whole state (sent because this member needs entries it
    /// purged): it replaces this member's, which is then applied up to
    /// the snapshot's log id.
    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Self::SnapshotData) -> Result<(), io::Error> {
        self.commands.install(snapshot.get_ref())?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.log_applied()?;
        self.applied_tx.send_replace(meta.last_log_id.map_or(0, |id| id.index + 1));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<LeaderId, NodeId, BasicNode, Cursor<Vec<u8>>>>, io::Error> {
        Ok(self.applied_snapshot())
    }
}

/// Hands leadership to another voter if this node leads, then stops this
/// member (a graceful stop: the group elects no new leader by time-out).
pub async fn hand_over_and_stop<SM>(raft: &Raft<RaftConfig, SM>, me: NodeId)
where
    SM: RaftStateMachine<RaftConfig>,
{
    if raft.current_leader().await == Some(me) {
        let metrics = raft.metrics().borrow_watched().clone();
        let to = metrics.membership_config.membership().voter_ids().find(|id| *id != me);
        if let Some(to) = to
            && raft.trigger().transfer_leader(to).await.is_ok()
        {
            let handed = |m: &openraft::RaftMetrics<RaftConfig>| m.current_leader != Some(me);
            let _ = raft.wait(Some(Duration::from_secs(2))).metrics(handed, "leadership handed over").await;
        }
    }
    let _ = raft.shutdown().await;
}
