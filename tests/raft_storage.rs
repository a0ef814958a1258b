//! A Raft group's log kept in Warren's write-ahead log passes openraft's
//! own storage test suite (`openraft::testing::log::Suite`): log state,
//! reads, votes, truncation, purges, membership found in the log, and a
//! state machine's snapshot moved between two stores. The state machine
//! here is the suite's counterpart for the test only (it sums the bytes of
//! the commands it applies); each test gets a fresh log on a simulated disk.

use std::io::{self, Cursor};
use std::sync::Arc;

use parking_lot::Mutex;

use futures_lite::StreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{EntryPayload, OptionalSend, Snapshot, SnapshotMeta, StorageError, StoredMembership};
use warren::cluster::log_storage::GroupLogStorage;
use warren::cluster::types::*;
use warren::store::io::SimDisk;
use warren::store::{FsyncPolicy, LogOptions, LogStore};

type Membership = StoredMembership<LeaderId, NodeId, openraft::impls::BasicNode>;
type Meta = SnapshotMeta<LeaderId, NodeId, openraft::impls::BasicNode>;

#[derive(Default)]
struct Machine {
    applied: Option<LogId>,
    membership: Membership,
    sum: u64,
    snapshot: Option<(Meta, Vec<u8>)>,
}

/// The machine and the snapshot builders it hands out share one state, so
/// a snapshot built is the machine's current one.
#[derive(Clone, Default)]
struct SummingMachine(Arc<Mutex<Machine>>);

impl RaftSnapshotBuilder<RaftConfig> for SummingMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(
        &mut self,
    ) -> Result<Snapshot<LeaderId, NodeId, openraft::impls::BasicNode, Cursor<Vec<u8>>>, io::Error> {
        let mut m = self.0.lock();
        let meta = Meta { last_log_id: m.applied, last_membership: m.membership.clone() };
        let data = m.sum.to_le_bytes().to_vec();
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
                EntryPayload::Normal(command) => m.sum += command.0.len() as u64,
                EntryPayload::Membership(members) => {
                    m.membership = Membership::new(Some(entry.log_id), members.clone())
                }
            }
            if let Some(responder) = responder {
                responder.send(GroupReply(m.sum.to_le_bytes().to_vec().into()));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Self::SnapshotData) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let sum: [u8; 8] = data.as_slice().try_into().map_err(|_| io::Error::other("not a snapshot"))?;
        let mut m = self.0.lock();
        m.sum = u64::from_le_bytes(sum);
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

struct Builder;

impl StoreBuilder<RaftConfig, GroupLogStorage, SummingMachine, ()> for Builder {
    async fn build(&self) -> Result<((), GroupLogStorage, SummingMachine), StorageError<RaftConfig>> {
        let options = LogOptions { segment_size: 64 * 1024, fsync: FsyncPolicy::EveryBatch, ..Default::default() };
        let (store, _) = LogStore::open(SimDisk::new(), options).expect("a log on a fresh simulated disk");
        Ok(((), GroupLogStorage::new(store, 17), SummingMachine::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_log_in_the_write_ahead_log_passes_openrafts_storage_suite() {
    Suite::test_all(Builder).await.expect("openraft's storage suite");
}
