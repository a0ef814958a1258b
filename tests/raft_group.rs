//! One Raft group over three nodes on loopback, each with its own log (a
//! data directory of its own) and its own cluster port chosen at run time,
//! talking through `cluster::transport`: a leader is elected, a write is
//! acknowledged only once applied, every replica applies the same commands
//! in the same order, and when the leader stops the other two elect a new
//! one that holds every acknowledged write and takes new ones; a restarted
//! node catches up from its own log and the leader.

mod raft_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::impls::BasicNode;
use openraft::{Config, Raft};
use raft_support::SummingMachine;
use warren::cluster::log_storage::GroupLogStorage;
use warren::cluster::transport::{GroupNetwork, RaftGroup, Transport};
use warren::cluster::types::*;
use warren::store::io::FileIo;
use warren::store::{LogOptions, LogStore};

const GROUP: u64 = 1;

struct Node {
    raft: Raft<RaftConfig, SummingMachine>,
    machine: SummingMachine,
    transport: Arc<Transport>,
    store: Arc<LogStore>,
}

fn config() -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    Arc::new(config.validate().expect("a valid Raft config"))
}

async fn start(id: NodeId, dir: &std::path::Path, addr: SocketAddr) -> Node {
    let (store, _) = LogStore::open(Arc::new(FileIo::new(dir).unwrap()), LogOptions::default()).unwrap();
    let cookie = Arc::new(warren::cluster::auth::Cookie::from_secret(b"raft group test"));
    let transport = Transport::bind(addr, cookie, id).await.expect("the cluster port");
    let machine = SummingMachine::default();
    let network = GroupNetwork { transport: transport.clone(), group: GROUP, book: None, snapshots: None };
    let log = GroupLogStorage::new(store.clone(), GROUP);
    let raft = Raft::new(id, config(), network, log, machine.clone()).await.expect("a Raft node");
    transport.add_group(GROUP, Arc::new(RaftGroup(raft.clone())));
    Node { raft, machine, transport, store }
}

async fn stop(node: Node) {
    node.transport.shutdown();
    node.raft.shutdown().await.expect("the Raft node stops");
    node.store.shutdown();
}

/// Polls until `f` is true, for at most `limit`.
async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn leader_among(nodes: &BTreeMap<NodeId, Node>) -> NodeId {
    let mut leader = None;
    until("a leader all nodes agree on", Duration::from_secs(10), || {
        let seen: Vec<Option<NodeId>> =
            nodes.values().map(|n| n.raft.metrics().borrow_watched().current_leader).collect();
        leader = seen[0].filter(|l| nodes.contains_key(l) && seen.iter().all(|s| *s == Some(*l)));
        leader.is_some()
    })
    .await;
    leader.unwrap_or_default()
}

/// A write on the leader. Right after its election a leader may refuse
/// one until a quorum has acknowledged its lease (openraft's
/// `ForwardToLeader` with reason `LeaseExpired`): it is tried again then,
/// for at most 5 s.
async fn write(node: &Node, text: String) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match node.raft.client_write(GroupCommand(Bytes::from(text.clone()))).await {
            Ok(reply) => return u64::from_le_bytes(reply.data.0[..8].try_into().expect("a count")),
            Err(e) if e.forward_to_leader().is_some() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("a write on the leader: {e}"),
        }
    }
}

fn digest(node: &Node) -> (u64, u64) {
    let m = node.machine.0.lock();
    (m.digest, m.count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_and_fail_over_when_the_leader_stops() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = BTreeMap::new();
    for (i, dir) in dirs.iter().enumerate() {
        let id = i as NodeId + 1;
        nodes.insert(id, start(id, dir.path(), "127.0.0.1:0".parse().unwrap()).await);
    }
    let addrs: BTreeMap<NodeId, SocketAddr> = nodes.iter().map(|(id, n)| (*id, n.transport.local_addr())).collect();
    let members: BTreeMap<NodeId, BasicNode> =
        addrs.iter().map(|(id, a)| (*id, BasicNode { addr: a.to_string() })).collect();
    nodes[&1].raft.initialize(members).await.expect("the group forms");

    let first = leader_among(&nodes).await;
    for i in 0..50 {
        let count = write(&nodes[&first], format!("command {i}")).await;
        assert_eq!(count, i + 1, "the reply comes from the applied state");
    }
    let wanted = digest(&nodes[&first]);
    until("every replica to apply the 50 writes", Duration::from_secs(10), || {
        nodes.values().all(|n| digest(n) == wanted)
    })
    .await;

    // The leader stops: the other two elect one of themselves.
    let old = nodes.remove(&first).unwrap();
    let stopped_at = Instant::now();
    stop(old).await;
    let second = leader_among(&nodes).await;
    assert_ne!(second, first);
    let failover = stopped_at.elapsed();
    eprintln!("a new leader ({second}) {failover:?} after the leader ({first}) stopped");
    assert!(failover < Duration::from_secs(5), "a new leader took {failover:?}");
    for i in 50..60 {
        let count = write(&nodes[&second], format!("command {i}")).await;
        assert_eq!(count, i + 1, "the new leader holds every acknowledged write");
    }

    // The stopped node comes back on its own log and the same port, and
    // catches up with what it missed.
    let back = start(first, dirs[first as usize - 1].path(), addrs[&first]).await;
    nodes.insert(first, back);
    let wanted = digest(&nodes[&second]);
    until("the restarted node to catch up", Duration::from_secs(10), || nodes.values().all(|n| digest(n) == wanted))
        .await;
    assert_eq!(wanted.1, 60);
    for node in nodes.into_values() {
        stop(node).await;
    }
}
