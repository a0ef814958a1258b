//! The quorum queues' Raft groups on this node: one group per replicated
//! quorum queue (`broker::replicas`), run by each of its members.
//!
//! [`QueueGroups`] keeps the groups this node runs in step with the
//! queues the broker holds: it starts the group of each queue this node
//! is a member of (when the metadata group applies the queue's declare,
//! and at start for the queues the log holds) and stops and forgets the
//! group of a queue that is gone. It looks them over when a queue change
//! is applied and once a second besides.
//!
//! A group forms itself: its first member (the preferred leader)
//! initializes it with every member as a voter at once; another member
//! does the same if, after [`FORM_FALLBACK`], it still has none of the
//! group's log (the first member may be down). Every member initializes
//! with the same membership, which openraft allows: one leader is elected.
//!
//! So far a queue's group holds its leadership and membership; its
//! messages are not replicated yet (ARCHITECTURE.md, "The cluster").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::Raft;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::impls::BasicNode;
use parking_lot::Mutex;

use super::machine::{Commands, GroupMachine, hand_over_and_stop};
use super::metadata::{METADATA_GROUP, raft_config};
use super::node::{ClusterNode, NODE_GROUP};
use super::transport::{AddressBook, GroupNetwork, RaftGroup};
use super::types::*;
use crate::broker::Broker;
use crate::broker::replicas::{Replica, ReplicatedQueue};
use crate::store::format::RaftStateKind;

/// How long a member other than the first waits for the group to form
/// before it initializes the group itself.
pub const FORM_FALLBACK: Duration = Duration::from_secs(3);
/// How often the groups are looked over without a queue change.
const LOOK_OVER_EVERY: Duration = Duration::from_secs(1);

/// A queue group's commands. None are proposed yet: the group holds the
/// queue's leadership and membership (its messages come next).
pub struct QueueCommands;

impl Commands for QueueCommands {
    fn apply(&mut self, _command: &GroupCommand) -> GroupReply {
        GroupReply::default()
    }
}

type QueueRaft = Raft<RaftConfig, GroupMachine<QueueCommands>>;

/// One quorum queue's group, as this node's member runs it.
pub struct QueueGroup {
    raft: QueueRaft,
    pub vhost: Arc<str>,
    pub name: Arc<str>,
    pub replica: Arc<Replica>,
}

/// A quorum queue's group as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStatus {
    /// The leader's node name, when one is known.
    pub leader: Option<String>,
    pub members: Vec<String>,
    /// The members that are running (as this node last heard).
    pub online: Vec<String>,
    pub term: u64,
}

/// The quorum queue groups this node runs.
pub struct QueueGroups {
    node: Arc<ClusterNode>,
    broker: Weak<Broker>,
    running: Mutex<HashMap<u64, Arc<QueueGroup>>>,
    look_over: Arc<tokio::sync::Notify>,
    /// One look-over at a time (a look-over awaits groups' starts and stops).
    looking: tokio::sync::Mutex<()>,
}

impl QueueGroups {
    pub fn new(node: Arc<ClusterNode>, broker: &Arc<Broker>) -> Arc<QueueGroups> {
        Arc::new(QueueGroups {
            node,
            broker: Arc::downgrade(broker),
            running: Mutex::new(HashMap::new()),
            look_over: Arc::new(tokio::sync::Notify::new()),
            looking: tokio::sync::Mutex::new(()),
        })
    }

    /// Starts the groups of the queues the broker holds, and keeps them in
    /// step from then on.
    pub async fn start(self: &Arc<Self>) {
        self.look_over_now().await;
        let weak = Arc::downgrade(self);
        let look_over = self.look_over.clone();
        tokio::spawn(async move {
            loop {
                let Some(groups) = weak.upgrade() else { return };
                let poked = look_over.notified();
                tokio::pin!(poked);
                // Registered before it is looked over: a poke meanwhile is kept.
                poked.as_mut().enable();
                groups.look_over_now().await;
                drop(groups);
                let _ = tokio::time::timeout(LOOK_OVER_EVERY, poked).await;
            }
        });
    }

    /// Has the groups looked over without waiting (a queue was made or deleted).
    pub fn look_over_soon(&self) {
        self.look_over.notify_one();
    }

    /// Starts the group of each queue this node is a member of and stops
    /// those of queues that are gone (their log state is removed).
    async fn look_over_now(&self) {
        let _one = self.looking.lock().await;
        let Some(broker) = self.broker.upgrade() else { return };
        let me = self.node.identity.id;
        let wanted: HashMap<u64, ReplicatedQueue> = broker
            .replicated_queues()
            .into_iter()
            .filter(|q| q.replica.members.iter().any(|m| m.id == me))
            .map(|q| (q.replica.group, q))
            .collect();
        let running: HashSet<u64> = self.running.lock().keys().copied().collect();
        for group in running.iter().filter(|g| !wanted.contains_key(g)) {
            let stopped = self.running.lock().remove(group);
            if let Some(stopped) = stopped {
                self.node.transport.remove_group(*group);
                let _ = stopped.raft.shutdown().await;
                tracing::info!("quorum queue '{}' in vhost '{}': its group stopped here", stopped.name, stopped.vhost);
            }
        }
        // A queue deleted while its group was down here (or a crash
        // between the delete and this): its group's log goes too.
        let store = broker.store();
        for group in store.raft_groups() {
            if group != METADATA_GROUP
                && group != NODE_GROUP
                && !wanted.contains_key(&group)
                && let Err(e) = store.raft_set(group, RaftStateKind::Removed, 0, Default::default())
            {
                tracing::error!("the log of Raft group {group} stays: {e}");
            }
        }
        for (group, ReplicatedQueue { vhost, name, replica }) in wanted {
            if running.contains(&group) {
                continue;
            }
            match self.start_group(&broker, vhost.clone(), name.clone(), replica).await {
                Ok(started) => {
                    self.running.lock().insert(group, started);
                }
                Err(e) => tracing::error!("quorum queue '{name}' in vhost '{vhost}': cannot start its group: {e}"),
            }
        }
    }

    async fn start_group(
        &self,
        broker: &Arc<Broker>,
        vhost: Arc<str>,
        name: Arc<str>,
        replica: Arc<Replica>,
    ) -> io::Result<Arc<QueueGroup>> {
        let group = replica.group;
        let store = broker.store().clone();
        let (machine, _applied) = GroupMachine::recover(group, QueueCommands, store.clone())?;
        let book: Arc<dyn AddressBook> = self.node.clone();
        let network = GroupNetwork { transport: self.node.transport.clone(), group, book: Some(book) };
        let log = super::log_storage::GroupLogStorage::new(store, group);
        let me = self.node.identity.id;
        let raft = Raft::new(me, raft_config("warren-quorum-queue")?, network, log, machine)
            .await
            .map_err(io::Error::other)?;
        self.node.transport.add_group(group, Arc::new(RaftGroup(raft.clone())));
        let members: BTreeMap<NodeId, BasicNode> =
            replica.members.iter().map(|m| (m.id, BasicNode { addr: m.name.clone() })).collect();
        let first = replica.members.first().is_some_and(|m| m.id == me);
        let forming = raft.clone();
        tokio::spawn(async move {
            if !first {
                tokio::time::sleep(FORM_FALLBACK).await;
            }
            // Refused once the group holds any log here: it has formed.
            if matches!(forming.is_initialized().await, Ok(false)) {
                let _ = forming.initialize(members).await;
            }
        });
        tracing::info!("quorum queue '{name}' in vhost '{vhost}': its group {group:x} started here");
        Ok(Arc::new(QueueGroup { raft, vhost, name, replica }))
    }

    /// The group of a replicated queue as this node sees it: None when
    /// this node runs no member of it.
    pub fn status(&self, group: u64) -> Option<QueueStatus> {
        let running = self.running.lock().get(&group).cloned()?;
        let metrics = running.raft.metrics().borrow_watched().clone();
        let name_of = |id: NodeId| running.replica.members.iter().find(|m| m.id == id).map(|m| m.name.clone());
        let up: HashSet<String> = self.node.peers().into_iter().filter(|p| p.running).map(|p| p.name).collect();
        let members: Vec<String> = running.replica.members.iter().map(|m| m.name.clone()).collect();
        let online = members.iter().filter(|m| **m == self.node.identity.name || up.contains(*m)).cloned().collect();
        Some(QueueStatus {
            leader: metrics.current_leader.and_then(name_of),
            members,
            online,
            term: metrics.current_term,
        })
    }

    /// Hands leadership of every group this node leads to another member,
    /// then stops them (a graceful stop).
    pub async fn shutdown(&self) {
        let groups: Vec<Arc<QueueGroup>> = self.running.lock().drain().map(|(_, g)| g).collect();
        let me = self.node.identity.id;
        futures_util::future::join_all(groups.iter().map(|g| hand_over_and_stop(&g.raft, me))).await;
    }
}
