//! What every group's state machine shares: how far it has applied the
//! log and the membership it holds, kept in the node's log as the group's
//! `raft.state` "applied" marker, written after the effects of the
//! entries it covers (so a log cut anywhere never claims more than it
//! holds, and a restart applies again only what may be missing: applying
//! an entry twice must change nothing). What a group's commands do is its
//! [`Commands`]'; the metadata group applies changes to the definitions,
//! a quorum queue's group its queue's commands.
//!
//! No group takes snapshots yet ([`NoSnapshots`]).

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

/// Snapshots are not taken yet: asked for one, it fails.
pub struct NoSnapshots;

impl RaftSnapshotBuilder<RaftConfig> for NoSnapshots {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<Snapshot<LeaderId, NodeId, BasicNode, Cursor<Vec<u8>>>, io::Error> {
        Err(io::Error::other("this group takes no snapshots"))
    }
}

impl<C: Commands> RaftStateMachine<RaftConfig> for GroupMachine<C> {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = NoSnapshots;

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

    async fn get_snapshot_builder(&mut self) -> NoSnapshots {
        NoSnapshots
    }

    async fn install_snapshot(&mut self, _meta: &Meta, _snapshot: Self::SnapshotData) -> Result<(), io::Error> {
        Err(io::Error::other("this group takes no snapshots"))
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<LeaderId, NodeId, BasicNode, Cursor<Vec<u8>>>>, io::Error> {
        Ok(None)
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
