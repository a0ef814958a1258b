//! A state machine for tests of Raft groups: it folds the commands it
//! applies, in order, into a digest, and counts them; its snapshot is both.
//! Two replicas with the same digest and count applied the same commands
//! in the same order.
#![allow(dead_code)]

use std::io::{self, Cursor};
use std::sync::Arc;

use futures_lite::StreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, Snapshot, SnapshotMeta, StoredMembership};
use parking_lot::Mutex;
use warren::cluster::types::*;

pub type Membership = StoredMembership<LeaderId, NodeId, openraft::impls::BasicNode>;
pub type Meta = SnapshotMeta<LeaderId, NodeId, openraft::impls::BasicNode>;

#[derive(Default)]
pub struct Machine {
    pub applied: Option<LogId>,
    pub membership: Membership,
    /// Order-sensitive: each command's CRC folded in after the others.
    pub digest: u64,
    pub count: u64,
    pub snapshot: Option<(Meta, Vec<u8>)>,
}

/// The machine and the snapshot builders it hands out share one state, so
/// a snapshot built is the machine's current one.
#[derive(Clone, Default)]
pub struct SummingMachine(pub Arc<Mutex<Machine>>);

impl RaftSnapshotBuilder<RaftConfig> for SummingMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(
        &mut self,
    ) -> Result<Snapshot<LeaderId, NodeId, openraft::impls::BasicNode, Cursor<Vec<u8>>>, io::Error> {
        let mut m = self.0.lock();
        let meta = Meta { last_log_id: m.applied, last_membership: m.membership.clone() };
        let mut data = m.digest.to_le_bytes().to_vec();
        data.extend_from_slice(&m.count.to_le_bytes());
        m.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot { meta, snapshot: Cursor::new(data) })
    }
}

impl RaftStateMachine<RaftConfig> for SummingMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), io::Error> {
        let m = self.0.lock();
        Ok((m.applied, m.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_lite::Stream<Item = Result<EntryResponder<RaftConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(next) = entries.next().await {
            let (entry, responder) = next?;
            let mut m = self.0.lock();
            m.applied = Some(entry.log_id);
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(command) => {
                    m.digest = m.digest.wrapping_mul(1_000_003).wrapping_add(crc32fast::hash(&command.0) as u64);
                    m.count += 1;
                }
                EntryPayload::Membership(members) => {
                    m.membership = Membership::new(Some(entry.log_id), members.clone())
                }
            }
            if let Some(responder) = responder {
                responder.send(GroupReply(m.count.to_le_bytes().to_vec().into()));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Self::SnapshotData) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        if data.len() != 16 {
            return Err(io::Error::other("not a snapshot of this machine"));
        }
        let field = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or_default());
        let mut m = self.0.lock();
        (m.digest, m.count) = (field(0), field(8));
        m.applied = meta.last_log_id;
        m.membership = meta.last_membership.clone();
        m.snapshot = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<LeaderId, NodeId, openraft::impls::BasicNode, Cursor<Vec<u8>>>>, io::Error> {
        Ok(self.0.lock().snapshot.clone().map(|(meta, data)| Snapshot { meta, snapshot: Cursor::new(data) }))
    }
}
