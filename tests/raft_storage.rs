//! A Raft group's log kept in Warren's write-ahead log passes openraft's
//! own storage test suite (`openraft::testing::log::Suite`): log state,
//! reads, votes, truncation, purges, membership found in the log, and a
//! state machine's snapshot moved between two stores. The state machine is
//! the tests' own (`raft_support`); each test gets a fresh log on a
//! simulated disk.

mod raft_support;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use raft_support::SummingMachine;
use warren::cluster::log_storage::GroupLogStorage;
use warren::cluster::types::RaftConfig;
use warren::store::io::SimDisk;
use warren::store::{FsyncPolicy, LogOptions, LogStore};

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
