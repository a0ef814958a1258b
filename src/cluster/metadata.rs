//! The metadata group: one Raft group, over every node of the cluster,
//! whose log holds the changes to the definitions every node shares
//! (`broker::changes`). A change made on any node is committed through
//! the group's leader and applied by every node to its own broker, in log
//! order, so every node holds the same vhosts and exchanges, and a
//! partition cannot split them: a change needs a majority.
//!
//! - [`BrokerChanges`] are the group's commands (its state machine is a
//!   `machine::GroupMachine` of them): each change is applied to this
//!   node's broker, then the group's applied marker is logged after the
//!   change's own records, so a restart re-applies only what the log may
//!   not hold the effects of (applying a change twice changes nothing).
//! - [`MetadataGroup`] proposes this node's changes: to its own Raft when
//!   it leads, else to the leader over the cluster port
//!   ([`KIND_PROPOSE`]); either way it waits until this node has applied
//!   the change, so a client's next method on this node sees it.
//! - The group forms itself: once every configured node has answered and
//!   none holds any of the group's log, the node whose name sorts first
//!   initializes it with every node as a voter. A node whose data
//!   directory was wiped comes back with a new Raft id; the leader takes
//!   it in as a learner, then makes it a voter in place of its old id.
//!
//! The group takes no snapshots yet: its log holds every change ever made
//! (definitions change rarely; bounding it is a later step).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::impls::BasicNode;
use openraft::{ChangeMembers, Config, Raft, SnapshotPolicy};
use tokio::sync::watch;

use super::failover::{next_news, replace_gone_leader};
use super::log_storage::GroupLogStorage;
use super::machine::{Commands, GroupMachine, hand_over_and_stop};
use super::node::ClusterNode;
use super::propose::{commit_once, serve_forwarded};
use super::quorum::QueueGroups;
use super::transport::{AddressBook, GroupNetwork, GroupServer, RaftGroup};
use super::types::*;
use super::wire::KIND_PROPOSE;
use crate::broker::changes::{Change, ChangeRouter, decode_outcome, encode_outcome};
use crate::broker::replicas::{Member, Replica};
use crate::broker::{AmqpError, Broker};
use crate::protocol::Method;
use crate::protocol::reply;

/// The metadata group's id.
pub const METADATA_GROUP: u64 = 0;
/// How long a change waits for the group (a leader, a majority) before it
/// fails with INTERNAL_ERROR.
pub const PROPOSE_WITHIN: Duration = Duration::from_secs(10);
/// How often an uninitialized node checks whether the group can form.
const FORM_EVERY: Duration = Duration::from_millis(500);

/// The Raft timing of every group (`name` tells them apart in openraft's
/// logs): heartbeats every 100 ms, an election after 400 to 800 ms
/// without one (well above an fdatasync), pre-vote on (a node cut off and
/// back does not depose a working leader). `snapshot_every`: a snapshot
/// after that many entries, the entries before the last that many then
/// purged (None: no snapshots; see `machine`).
pub fn raft_config(name: &str, snapshot_every: Option<u64>) -> io::Result<Arc<Config>> {
    let config = Config {
        cluster_name: name.into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        enable_pre_vote: Some(true),
        snapshot_policy: snapshot_every.map_or(SnapshotPolicy::Never, SnapshotPolicy::LogsSinceLast),
        max_in_snapshot_log_to_keep: snapshot_every.unwrap_or(1000),
        ..Default::default()
    };
    config.validate().map(Arc::new).map_err(io::Error::other)
}

/// The group's commands: changes to this node's broker. A change to a
/// replicated queue also has this node's quorum queue groups looked over
/// (a member starts or stops the queue's group).
pub struct BrokerChanges {
    broker: Arc<Broker>,
    queues: Arc<QueueGroups>,
}

impl Commands for BrokerChanges {
    fn apply(&mut self, _index: u64, command: &GroupCommand) -> GroupReply {
        let outcome = match Change::decode(&command.0) {
            Ok(change) => {
                let outcome = self.broker.apply_change(&change);
                if matches!(change, Change::Queue { .. } | Change::QueueMembers { .. }) {
                    self.queues.look_over_soon();
                }
                outcome
            }
            // Every node reads the same bytes, so every node refuses them alike.
            Err(e) => Err(AmqpError::connection(reply::INTERNAL_ERROR, format!("an unreadable change: {e}"))),
        };
        GroupReply(encode_outcome(&outcome))
    }
}

type MetadataMachine = GroupMachine<BrokerChanges>;

/// What [`MetadataGroup::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataStatus {
    /// Whether this node holds the group's membership yet.
    pub formed: bool,
    /// Node names.
    pub leader: Option<String>,
    pub members: Vec<String>,
    /// The voters' Raft ids, in the order of `members`.
    pub member_ids: Vec<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub last_applied: Option<u64>,
}

/// This node's member of the metadata group.
pub struct MetadataGroup {
    raft: Raft<RaftConfig, MetadataMachine>,
    applied: watch::Receiver<u64>,
    node: Arc<ClusterNode>,
    broker: Weak<Broker>,
}

impl MetadataGroup {
    /// Starts this node's member (from what its log holds), serves it on
    /// the cluster port, routes the broker's changes through it, and forms
    /// the group if it is new.
    pub async fn start(
        node: Arc<ClusterNode>,
        broker: &Arc<Broker>,
        queues: Arc<QueueGroups>,
    ) -> io::Result<Arc<MetadataGroup>> {
        let store = broker.store().clone();
        let commands = BrokerChanges { broker: broker.clone(), queues };
        let (machine, applied) = GroupMachine::recover(METADATA_GROUP, commands, store.clone())?;
        let book: Arc<dyn AddressBook> = node.clone();
        let network = GroupNetwork {
            transport: node.transport.clone(),
            group: METADATA_GROUP,
            book: Some(book),
            snapshots: None,
        };
        let log = GroupLogStorage::new(store, METADATA_GROUP);
        let raft = Raft::new(node.identity.id, raft_config("warren-metadata", None)?, network, log, machine)
            .await
            .map_err(io::Error::other)?;
        let group = Arc::new(MetadataGroup { raft, applied, node: node.clone(), broker: Arc::downgrade(broker) });
        node.transport.add_group(METADATA_GROUP, Arc::new(Served(group.clone())));
        broker.set_change_router(Arc::new(Router(Arc::downgrade(&group))));
        let tended = Arc::downgrade(&group);
        let (weak, mut gone) = (Arc::downgrade(&group), node.peers_gone());
        tokio::spawn(async move {
            while let Some(name) = next_news(&mut gone).await {
                let Some(group) = weak.upgrade() else { return };
                let me = group.node.identity.id;
                tokio::spawn(replace_gone_leader(group.raft.clone(), METADATA_GROUP, me, name));
            }
        });
        tokio::spawn(async move {
            let mut formed = false;
            loop {
                let Some(group) = tended.upgrade() else { return };
                if !formed {
                    formed = group.try_to_form().await;
                } else {
                    group.replace_wiped_members().await;
                    group.rejoin_wiped_queue_members().await;
                }
                drop(group);
                tokio::time::sleep(FORM_EVERY).await;
            }
        });
        Ok(group)
    }

    /// Forms the group if it can and this node is the one to: true once
    /// it is formed (by this node or another).
    async fn try_to_form(&self) -> bool {
        match self.raft.is_initialized().await {
            Ok(true) | Err(_) => return true,
            Ok(false) => {}
        }
        let peers = self.node.peers();
        if peers.iter().any(|p| p.formed) {
            // Another node holds the group: it will bring this one in.
            return true;
        }
        let me = &self.node.identity;
        let all_known = peers.iter().all(|p| p.running && p.id.is_some());
        let first = peers.iter().all(|p| p.name > me.name);
        if !all_known || !first {
            return false;
        }
        let mut members = BTreeMap::new();
        // Members by name: each node finds their addresses itself.
        members.insert(me.id, BasicNode { addr: me.name.clone() });
        for peer in &peers {
            if let Some(id) = peer.id {
                members.insert(id, BasicNode { addr: peer.name.clone() });
            }
        }
        match self.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!("formed the cluster's metadata group with {} nodes", peers.len() + 1);
                true
            }
            Err(e) => {
                tracing::warn!("cannot form the cluster's metadata group: {e}");
                false
            }
        }
    }

    /// On the leader: a configured node that answers with a Raft id the
    /// group does not know, at the address of a member, had its data
    /// directory wiped. It is taken in as a learner (the leader's log
    /// brings it up to date), then made a voter in place of the old id,
    /// which can never come back. One change at a time.
    async fn replace_wiped_members(&self) {
        let me = self.node.identity.id;
        let metrics = self.raft.metrics().borrow_watched().clone();
        if metrics.current_leader != Some(me) || metrics.membership_config != metrics.committed_membership_config {
            return;
        }
        let membership = metrics.membership_config.membership().clone();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        for peer in self.node.peers() {
            let Some(new) = peer.id.filter(|_| peer.running) else { continue };
            let old = membership.nodes().find(|(id, node)| node.addr == peer.name && **id != new).map(|(id, _)| *id);
            let Some(old) = old.filter(|old| voters.contains(old) && !voters.contains(&new)) else { continue };
            tracing::info!("{} came back with a new Raft id: replacing it in the metadata group", peer.name);
            let node = BasicNode { addr: peer.name.clone() };
            let caught_up = tokio::time::timeout(Duration::from_secs(30), self.raft.add_learner(new, node, true)).await;
            if !matches!(caught_up, Ok(Ok(_))) {
                tracing::warn!("{} could not be brought up to date in the metadata group yet", peer.name);
                return;
            }
            let mut after = voters.clone();
            after.remove(&old);
            after.insert(new);
            let replaced = self.raft.change_membership(ChangeMembers::ReplaceAllVoters(after), false);
            match tokio::time::timeout(Duration::from_secs(30), replaced).await {
                Ok(Ok(_)) => tracing::info!("{} is a voter of the metadata group again", peer.name),
                _ => tracing::warn!("{} could not be made a voter of the metadata group yet", peer.name),
            }
            return;
        }
    }

    /// On the leader: the quorum queue members of a node the group took
    /// back under a new Raft id rejoin their queues under it
    /// (`membership::rejoin_wiped`).
    async fn rejoin_wiped_queue_members(&self) {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let Some(broker) = self.broker.upgrade() else { return };
        if metrics.current_leader != Some(self.node.identity.id) {
            return;
        }
        let membership = metrics.membership_config.membership();
        let mut voters: Vec<(String, NodeId)> =
            membership.voter_ids().filter_map(|id| membership.get_node(&id).map(|n| (n.addr.clone(), id))).collect();
        // A name under two ids is a replacement half way: not yet.
        let names: Vec<String> = voters.iter().map(|(name, _)| name.clone()).collect();
        voters.retain(|(name, _)| names.iter().filter(|n| *n == name).count() == 1);
        super::membership::rejoin_wiped(&broker, &voters).await;
    }

    /// The group as this node sees it (`rabbitmq-diagnostics
    /// metadata_store_status` shows the same of Khepri's).
    pub fn status(&self) -> MetadataStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        // A membership names its nodes; one it does not know by id is
        // shown by id.
        let name = |id: NodeId| membership.get_node(&id).map_or_else(|| id.to_string(), |n| n.addr.clone());
        MetadataStatus {
            formed: membership.voter_ids().next().is_some(),
            leader: m.current_leader.map(name),
            members: membership.voter_ids().map(name).collect(),
            member_ids: membership.voter_ids().collect(),
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed: m.local_committed.map(|id| id.index),
            last_applied: m.last_applied.map(|id| id.index),
        }
    }

    /// Commits `change` and waits until this node applied it: the outcome
    /// of applying it.
    pub async fn propose(&self, change: Change) -> Result<(), AmqpError> {
        let deadline = tokio::time::Instant::now() + PROPOSE_WITHIN;
        // Nothing commits before the group formed, and a new quorum queue's
        // members are chosen from its membership: wait for it.
        let formed =
            |m: &openraft::RaftMetrics<RaftConfig>| m.membership_config.membership().voter_ids().next().is_some();
        if self.raft.wait(Some(PROPOSE_WITHIN)).metrics(formed, "the metadata group formed").await.is_err() {
            return Err(unavailable());
        }
        let change = self.judge_locally(change)?;
        let command = change.encode();
        loop {
            match self.commit(&command, deadline).await {
                Ok((index, outcome)) => {
                    self.wait_applied(index, deadline).await?;
                    return outcome;
                }
                Err(retry) if tokio::time::Instant::now() + retry < deadline => tokio::time::sleep(retry).await,
                Err(_) => return Err(unavailable()),
            }
        }
    }

    /// What a change needs judged where it is made: an exchange delete's
    /// `if-unused` counts this node's queue bindings, which are not
    /// replicated, so it is judged here and the delete proposed without it.
    fn judge_locally(&self, change: Change) -> Result<Change, AmqpError> {
        match change {
            Change::Exchange { vhost, method: Method::ExchangeDelete(mut m) } if m.if_unused => {
                if self.broker.upgrade().is_some_and(|b| b.exchange_in_use(&vhost, &m.exchange)) {
                    return Err(AmqpError::precondition(format!(
                        "exchange '{}' in vhost '{vhost}' in use",
                        m.exchange
                    )));
                }
                m.if_unused = false;
                Ok(Change::Exchange { vhost, method: Method::ExchangeDelete(m) })
            }
            Change::Queue { vhost, method: Method::QueueDeclare(m), replica: None } => {
                let replica = self.choose_replica(&m.arguments);
                Ok(Change::Queue { vhost, method: Method::QueueDeclare(m), replica: Some(replica) })
            }
            other => Ok(other),
        }
    }

    /// A new quorum queue's group and members: `x-quorum-initial-group-size`
    /// nodes (3 by default, as RabbitMQ; at most every node), the preferred
    /// leader first: this node under `x-queue-leader-locator` =
    /// `client-local` (the default), else the node that leads (is first
    /// member of) the fewest queues. The other members are the nodes that
    /// are members of the fewest queues.
    fn choose_replica(&self, arguments: &crate::protocol::FieldTable) -> Replica {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let mut nodes: Vec<Member> = membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| Member::new(n.addr.clone(), id)))
            .collect();
        let existing = self.broker.upgrade().map(|b| b.replicated_queues()).unwrap_or_default();
        let count = |name: &str, leaders_only: bool| {
            existing
                .iter()
                .filter(|q| {
                    let members = &q.replica.members;
                    let members = if leaders_only { &members[..members.len().min(1)] } else { &members[..] };
                    members.iter().any(|m| m.name == name)
                })
                .count()
        };
        nodes.sort_by(|a, b| (count(&a.name, false), &a.name).cmp(&(count(&b.name, false), &b.name)));
        let balanced = arguments.get("x-queue-leader-locator").and_then(|v| v.as_str()) == Some("balanced");
        let first = if balanced {
            nodes.iter().enumerate().min_by_key(|(_, m)| (count(&m.name, true), m.name.clone())).map(|(i, _)| i)
        } else {
            nodes.iter().position(|m| m.id == self.node.identity.id)
        };
        if let Some(first) = first {
            let leader = nodes.remove(first);
            nodes.insert(0, leader);
        }
        let size = arguments.get("x-quorum-initial-group-size").and_then(|v| v.as_i64()).unwrap_or(3);
        nodes.truncate(size.clamp(1, nodes.len().max(1) as i64) as usize);
        let taken: std::collections::HashSet<u64> = existing.iter().map(|q| q.replica.group).collect();
        let group = loop {
            let id = fastrand::u64(1..u64::MAX - 1);
            if !taken.contains(&id) {
                break id;
            }
        };
        Replica { group, members: nodes }
    }

    /// One attempt to commit: Ok((index, outcome)); Err(how long to wait
    /// before trying again).
    async fn commit(
        &self,
        command: &Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<(u64, Result<(), AmqpError>), Duration> {
        let (index, reply) = commit_once(&self.raft, &self.node, METADATA_GROUP, command, deadline).await?;
        Ok((index, outcome_of(&reply)))
    }

    async fn wait_applied(&self, index: u64, deadline: tokio::time::Instant) -> Result<(), AmqpError> {
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout_at(deadline, applied.wait_for(|&next| next > index)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(unavailable()),
        }
    }

    /// Serves a peer's forwarded change (see `propose::serve_forwarded`).
    async fn serve_forwarded(&self, command: Bytes) -> io::Result<Vec<u8>> {
        Change::decode(&command).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        serve_forwarded(&self.raft, command).await
    }

    /// Hands leadership to another voter and stops this member (a graceful
    /// stop: the group elects no new leader by time-out).
    pub async fn shutdown(&self) {
        hand_over_and_stop(&self.raft, self.node.identity.id).await;
    }
}

fn unavailable() -> AmqpError {
    AmqpError::connection(
        reply::INTERNAL_ERROR,
        format!(
            "the cluster's metadata store did not commit the change within {} s: is a majority of the nodes running?",
            PROPOSE_WITHIN.as_secs()
        ),
    )
}

fn outcome_of(bytes: &[u8]) -> Result<(), AmqpError> {
    decode_outcome(bytes).unwrap_or_else(|e| Err(AmqpError::connection(reply::INTERNAL_ERROR, e)))
}

/// The broker's change router: the metadata group (weakly: the group owns
/// the broker's state machine, not the other way round).
struct Router(Weak<MetadataGroup>);

impl ChangeRouter for Router {
    fn propose(&self, change: Change) -> Pin<Box<dyn Future<Output = Result<(), AmqpError>> + Send>> {
        let group = self.0.upgrade();
        Box::pin(async move {
            match group {
                Some(group) => group.propose(change).await,
                None => Err(AmqpError::connection(reply::INTERNAL_ERROR, "this node is shutting down")),
            }
        })
    }
}

/// The group as served to peers: the Raft RPCs, and forwarded changes.
struct Served(Arc<MetadataGroup>);

impl GroupServer for Served {
    fn serve(&self, kind: u8, payload: Bytes) -> Pin<Box<dyn Future<Output = io::Result<Vec<u8>>> + Send>> {
        if kind == KIND_PROPOSE {
            let group = self.0.clone();
            return Box::pin(async move { group.serve_forwarded(payload).await });
        }
        RaftGroup(self.0.raft.clone()).serve(kind, payload)
    }
}
