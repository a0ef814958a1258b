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
//! The group carries the queue's messages (`queue_machine`, whose
//! bytes are `queue_commands`): a publish to the queue on any node is an
//! enqueue committed by the group (forwarded to its leader) before its
//! confirm, and every member applies it to its own replica of the queue,
//! which logs the message as its own; a message acknowledged on the
//! leader is a settle every member applies. Only the leader's replica
//! hands messages out ([`QueueGroups`] watches each group's leadership).
//! [`QueueGroups`] is the broker's `ReplicaRouter`. Consumers and gets
//! of this node's clients are made at the leader, wherever it is
//! (`consumers`, and `sessions` for the sessions this node leads).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;

use openraft::Raft;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::impls::BasicNode;
use parking_lot::Mutex;

use super::consumers::ClientSessions;
use super::failover::{next_news, replace_gone_leader};
use super::held_log::{HeldIndexes, bound_held_log};
use super::leaders::KIND_LEAD_ELSEWHERE;
use super::machine::{GroupMachine, hand_over_and_stop};
use super::member_status::{KIND_MEMBER_STATUS, MemberStatus};
use super::metadata::{METADATA_GROUP, PROPOSE_WITHIN, raft_config};
use super::node::{ClusterNode, NODE_GROUP};
use super::outside::{OutsideLeaders, commit_outside, find_leaders};
use super::propose::{commit_once, serve_forwarded};
use super::queue_commands::{EnqueuedMessage, MAX_BATCH, QueueCommand, QueueSnapshot};
use super::queue_machine::{APPLIED, QueueCommands, queue_machine};
use super::session_wire::{KIND_SESSION, SessionReply, SessionRequest};
use super::sessions::{POLL_WAIT, SessionServer};
use super::settles::SettleGathering;
use super::transport::{AddressBook, GroupNetwork, GroupServer, RaftGroup, SnapshotSource};
use super::types::*;
use super::wire::{KIND_PROPOSE, KIND_SNAPSHOT, decode_snapshot};
use crate::broker::remote::{RemoteConsume, RemoteGet, RemoteWork};
use crate::broker::replicas::{Replica, ReplicaRouter, ReplicatedQueue};
use crate::broker::{Broker, Message};
use crate::store::format::RaftStateKind;

/// How long a member other than the first waits for the group to form
/// before it initializes the group itself.
pub const FORM_FALLBACK: Duration = Duration::from_secs(3);
/// A queue group's snapshot (which costs nothing: `machine`) is taken
/// every this many entries, and the entries before the last this many
/// are purged: a member's log holds at most about twice as many.
pub(super) const SNAPSHOT_EVERY: u64 = 1024;
/// A leader not answered by a majority for this long hands nothing out
/// (the election time-out's upper end: by then the others may elect).
const QUORUM_ACK_WITHIN: Duration = Duration::from_millis(800);
/// How long one attempt to commit a queue command waits.
const ATTEMPT_WITHIN: Duration = Duration::from_secs(2);
/// How often a leader looks at how long ago a majority answered it.
const QUORUM_CHECK_EVERY: Duration = Duration::from_millis(100);
/// How often the groups are looked over without a queue change.
const LOOK_OVER_EVERY: Duration = Duration::from_secs(1);

pub(super) type QueueRaft = Raft<RaftConfig, GroupMachine<QueueCommands>>;

/// One quorum queue's group, as this node's member runs it.
#[derive(Clone)]
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
}

/// The quorum queue groups this node runs.
pub struct QueueGroups {
    node: Arc<ClusterNode>,
    broker: Weak<Broker>,
    running: Mutex<HashMap<u64, Arc<QueueGroup>>>,
    look_over: Arc<tokio::sync::Notify>,
    /// One look-over at a time (a look-over awaits groups' starts and stops).
    looking: tokio::sync::Mutex<()>,
    /// The groups whose leader here is bringing their membership to the
    /// queue's members (`membership`): one at a time per group.
    reconciling: Arc<Mutex<HashSet<u64>>>,
    /// This node's next proposal id: from the clock at start, so ids are
    /// not used again after a restart.
    next_proposal: AtomicU64,
    /// The runtime, for what is committed without being waited for (from
    /// any thread).
    runtime: tokio::runtime::Handle,
    /// The consumer sessions this node serves as a leader.
    sessions: Arc<SessionServer>,
    /// This node's clients' sessions with leaders.
    clients: ClientSessions,
    /// The leaders of the groups this node is no member of (`outside`).
    outside: OutsideLeaders,
    /// Settles waiting for the one of their group being committed.
    settles: SettleGathering,
}

impl QueueGroups {
    /// This node's quorum queue groups; the broker's replicated queues
    /// commit through them from now on. Called within the runtime.
    pub fn new(node: Arc<ClusterNode>, broker: &Arc<Broker>) -> Arc<QueueGroups> {
        let groups = Arc::new(QueueGroups {
            node,
            broker: Arc::downgrade(broker),
            running: Mutex::new(HashMap::new()),
            look_over: Arc::new(tokio::sync::Notify::new()),
            looking: tokio::sync::Mutex::new(()),
            reconciling: Arc::default(),
            next_proposal: AtomicU64::new(crate::store::wall_ms().saturating_mul(1000)),
            runtime: tokio::runtime::Handle::current(),
            sessions: SessionServer::new(Arc::downgrade(broker)),
            clients: ClientSessions::default(),
            outside: OutsideLeaders::default(),
            settles: SettleGathering::default(),
        });
        broker.set_replica_router(Arc::new(Router(Arc::downgrade(&groups))));
        groups
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
        let (weak, mut gone) = (Arc::downgrade(self), self.node.peers_gone());
        tokio::spawn(async move {
            while let Some(name) = next_news(&mut gone).await {
                let Some(groups) = weak.upgrade() else { return };
                let running: Vec<(u64, QueueRaft)> =
                    groups.running.lock().iter().map(|(group, g)| (*group, g.raft.clone())).collect();
                for (group, raft) in running {
                    tokio::spawn(replace_gone_leader(raft, group, groups.me(), name.clone()));
                }
            }
        });
    }

    /// Has the groups looked over without waiting (a queue was made or deleted).
    pub fn look_over_soon(&self) {
        self.look_over.notify_one();
    }

    /// Starts the group of each queue this node is a member of and stops
    /// those of queues that are gone (their log state is removed).
    async fn look_over_now(self: &Arc<Self>) {
        let _one = self.looking.lock().await;
        let Some(broker) = self.broker.upgrade() else { return };
        let me = self.node.identity.id;
        let (mine, others): (Vec<ReplicatedQueue>, Vec<ReplicatedQueue>) =
            broker.replicated_queues().into_iter().partition(|q| q.replica.members.iter().any(|m| m.id == me));
        find_leaders(self, others);
        let wanted: HashMap<u64, ReplicatedQueue> = mine.into_iter().map(|q| (q.replica.group, q)).collect();
        let running: HashSet<u64> = self.running.lock().keys().copied().collect();
        for group in running.iter().filter(|g| !wanted.contains_key(g)) {
            let stopped = self.running.lock().remove(group);
            if let Some(stopped) = stopped {
                broker.set_replica_active(&stopped.vhost, &stopped.name, false);
                self.node.transport.remove_group(*group);
                let _ = stopped.raft.shutdown().await;
                // No longer a member of a queue that goes on: this node's
                // copy of its messages goes (the members have them).
                if broker.replica_of(&stopped.vhost, &stopped.name).is_some() {
                    broker.install_replica(&stopped.vhost, &stopped.name, Default::default());
                }
                tracing::info!("quorum queue '{}' in vhost '{}': its group stopped here", stopped.name, stopped.vhost);
            }
        }
        self.follow_members(&wanted);
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

    /// Gives each running group its queue's members as the metadata group
    /// last changed them, and has the groups this node leads bring their
    /// Raft membership to them (`membership`).
    fn follow_members(&self, wanted: &HashMap<u64, ReplicatedQueue>) {
        let me = self.me();
        let mut running = self.running.lock();
        for (group, queue) in wanted {
            let Some(current) = running.get_mut(group) else { continue };
            if current.replica != queue.replica {
                *current = Arc::new(QueueGroup { replica: queue.replica.clone(), ..QueueGroup::clone(current) });
            }
            let metrics = current.raft.metrics().borrow_watched().clone();
            if !super::membership::has_work(&metrics, me, &queue.replica.members)
                || !self.reconciling.lock().insert(*group)
            {
                continue;
            }
            let (raft, members, broker) = (current.raft.clone(), queue.replica.members.clone(), self.broker.clone());
            let names = (queue.vhost.to_string(), queue.name.to_string());
            let (reconciling, group) = (self.reconciling.clone(), *group);
            self.runtime.spawn(async move {
                super::membership::bring_to_members(raft, me, members, broker, names).await;
                reconciling.lock().remove(&group);
            });
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
        let (commands, state) = queue_machine(broker, &vhost, &name);
        let (machine, _applied) = GroupMachine::recover(group, commands, store.clone())?;
        let book: Arc<dyn AddressBook> = self.node.clone();
        let snapshots: Option<Arc<dyn SnapshotSource>> = Some(Arc::new(state));
        let network = GroupNetwork { transport: self.node.transport.clone(), group, book: Some(book), snapshots };
        let log = super::log_storage::GroupLogStorage::new(store, group);
        let me = self.node.identity.id;
        let raft = Raft::new(me, raft_config("warren-quorum-queue", Some(SNAPSHOT_EVERY))?, network, log, machine)
            .await
            .map_err(io::Error::other)?;
        let served = Served { raft: raft.clone(), sessions: self.sessions.clone(), me };
        self.node.transport.add_group(group, Arc::new(served));
        // Only the leader's replica hands messages out, and only while a
        // majority answers it: a leader cut off from the others stops
        // (openraft keeps it leader until it hears of a higher term), so
        // the majority's new leader is the only one handing out.
        let (watched, weak, me_too) = (raft.clone(), Arc::downgrade(broker), (vhost.clone(), name.clone()));
        tokio::spawn(async move {
            let mut metrics = watched.metrics();
            let mut bounded_at = tokio::time::Instant::now();
            loop {
                let due = bounded_at.elapsed() >= QUORUM_CHECK_EVERY;
                let (leader, leads, indexes) = {
                    let m = metrics.borrow_watched();
                    // Read only when the bound is looked at (not on every apply).
                    let indexes = due.then(|| HeldIndexes::of(&m));
                    (m.current_leader == Some(me), leads_with_quorum(&m, me), indexes)
                };
                let Some(broker) = weak.upgrade() else { return };
                broker.set_replica_active(&me_too.0, &me_too.1, leads);
                if let Some(indexes) = indexes {
                    bounded_at = tokio::time::Instant::now();
                    bound_held_log(&watched, broker.store(), group, indexes).await;
                }
                drop(broker);
                // A leader's quorum acks age without a change of metrics:
                // looked at again every so often.
                tokio::select! {
                    changed = metrics.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(QUORUM_CHECK_EVERY), if leader => {}
                }
            }
        });
        // The group forms with the members it was declared with; one added
        // since is brought in by the leader and never forms it.
        let founders = replica.members.iter().filter(|m| !m.added);
        let members: BTreeMap<NodeId, BasicNode> =
            founders.map(|m| (m.id, BasicNode { addr: m.name.clone() })).collect();
        let first = replica.members.first().is_some_and(|m| m.id == me);
        let forming = raft.clone();
        let founder = members.contains_key(&me);
        tokio::spawn(async move {
            if !founder {
                return;
            }
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
        let replica = self.replica_of(group)?;
        let name_of = |id: NodeId| replica.members.iter().find(|m| m.id == id).map(|m| m.name.clone());
        let up: HashSet<String> = self.node.peers().into_iter().filter(|p| p.running).map(|p| p.name).collect();
        let members: Vec<String> = replica.members.iter().map(|m| m.name.clone()).collect();
        let online = members.iter().filter(|m| **m == self.node.identity.name || up.contains(*m)).cloned().collect();
        Some(QueueStatus { leader: self.leader_of(group).and_then(name_of), members, online })
    }

    /// The members of `group`: as the running member here has them, else
    /// as the broker's queue record has them (a group this node is no
    /// member of). None: no such group.
    fn replica_of(&self, group: u64) -> Option<Arc<Replica>> {
        if let Some(running) = self.running.lock().get(&group) {
            return Some(running.replica.clone());
        }
        let broker = self.broker.upgrade()?;
        broker.replicated_queues().into_iter().find(|q| q.replica.group == group).map(|q| q.replica)
    }

    /// Hands leadership of every group this node leads to another member,
    /// then stops them (a graceful stop).
    pub async fn shutdown(&self) {
        let groups: Vec<Arc<QueueGroup>> = self.running.lock().drain().map(|(_, g)| g).collect();
        let me = self.node.identity.id;
        futures_util::future::join_all(groups.iter().map(|g| hand_over_and_stop(&g.raft, me))).await;
    }
}

impl QueueGroups {
    pub(super) fn me(&self) -> NodeId {
        self.node.identity.id
    }

    pub(super) fn broker(&self) -> Weak<Broker> {
        self.broker.clone()
    }

    pub(super) fn clients(&self) -> &ClientSessions {
        &self.clients
    }

    /// Runs `work` on the runtime (callable from any thread).
    pub(super) fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) -> tokio::task::AbortHandle {
        self.runtime.spawn(work).abort_handle()
    }

    pub(super) fn node(&self) -> Arc<ClusterNode> {
        self.node.clone()
    }

    /// The replicated quorum queue `name` of `vhost` (any node's member).
    pub fn replicated(&self, vhost: &str, name: &str) -> Option<ReplicatedQueue> {
        let broker = self.broker.upgrade()?;
        broker.replicated_queues().into_iter().find(|q| &*q.vhost == vhost && &*q.name == name)
    }

    /// This node's member's metrics of `group`, if it runs one.
    pub(super) fn metrics_of(&self, group: u64) -> Option<openraft::RaftMetrics<RaftConfig>> {
        let running = self.running.lock().get(&group).cloned()?;
        Some(running.raft.metrics().borrow_watched().clone())
    }

    /// The group, vhost and name of each queue this node runs a member of.
    pub(super) fn running_queues(&self) -> Vec<(u64, Arc<str>, Arc<str>)> {
        self.running.lock().iter().map(|(group, g)| (*group, g.vhost.clone(), g.name.clone())).collect()
    }

    /// Has this node's member of `group`, if it leads, hand its
    /// leadership to member `to` (`leaders::rebalance`).
    pub(super) async fn lead_elsewhere_here(&self, group: u64, to: NodeId) -> io::Result<()> {
        let running = self.running.lock().get(&group).cloned();
        let running = running.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no member of the group here"))?;
        lead_elsewhere(&running.raft, self.me(), to).await
    }

    /// Whether `group`'s queue is one this node's clients can use: this
    /// node runs a member of it, or the queue exists (`outside`).
    pub(super) fn reaches(&self, group: u64) -> bool {
        self.running.lock().contains_key(&group) || self.replica_of(group).is_some()
    }

    /// The leader of `group` as this node's member knows it, or as this
    /// node last found it when it is no member.
    pub(super) fn leader_of(&self, group: u64) -> Option<NodeId> {
        match self.running.lock().get(&group).cloned() {
            Some(running) => running.raft.metrics().borrow_watched().current_leader,
            None => self.outside.get(group),
        }
    }

    pub(super) fn outside(&self) -> &OutsideLeaders {
        &self.outside
    }

    /// Sends a consumer session's request to `leader` of `group` (served
    /// here without the network when this node is the leader).
    pub(super) async fn call_session(
        &self,
        group: u64,
        leader: NodeId,
        request: SessionRequest,
    ) -> io::Result<SessionReply> {
        if leader == self.me() {
            let running = self.running.lock().get(&group).cloned();
            let leads = running.is_some_and(|r| leads_with_quorum(&r.raft.metrics().borrow_watched(), leader));
            return Ok(self.sessions.serve(leads, request).await);
        }
        let name = self
            .replica_of(group)
            .and_then(|r| r.members.iter().find(|m| m.id == leader).map(|m| m.name.clone()))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no member {leader} of group {group:x}")))?;
        let address = self
            .node
            .address_of(&name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no address for node {name}")))?;
        let limit = POLL_WAIT + Duration::from_secs(4);
        let reply = self.node.transport.call(&address, leader, KIND_SESSION, group, &request.encode(), limit).await?;
        SessionReply::decode(reply).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Commits `command` to `group` through this node's member (forwarded
    /// to the leader when it does not lead), trying again until
    /// [`PROPOSE_WITHIN`]: whether the group's leader applied it.
    async fn commit(&self, group: u64, command: Bytes) -> bool {
        let Some(running) = self.running.lock().get(&group).cloned() else {
            // This node is no member of the group: through its members.
            let Some(replica) = self.replica_of(group) else { return false };
            return commit_outside(self, group, &replica.members, &command).await;
        };
        let deadline = tokio::time::Instant::now() + PROPOSE_WITHIN;
        loop {
            // Each attempt bounded: a leader that stopped answering (paused,
            // cut off) is asked again, and by then another may lead. A
            // command committed by two attempts is applied once (an
            // enqueue is dropped by its proposal id, a settle changes
            // nothing the second time).
            let attempt = (tokio::time::Instant::now() + ATTEMPT_WITHIN).min(deadline);
            match commit_once(&running.raft, &self.node, group, &command, attempt).await {
                Ok((_, reply)) => return reply.as_ref() == APPLIED,
                Err(again) if tokio::time::Instant::now() + again < deadline => tokio::time::sleep(again).await,
                Err(_) => return false,
            }
        }
    }

    fn enqueue_command(&self, messages: Vec<Arc<Message>>) -> Bytes {
        let messages = messages
            .iter()
            .map(|m| EnqueuedMessage {
                exchange: m.exchange.clone(),
                routing_key: m.routing_key.clone(),
                properties: m.properties.clone(),
                body: m.body.clone(),
            })
            .collect();
        let proposal = self.next_proposal.fetch_add(1, Ordering::Relaxed);
        QueueCommand::Enqueue { origin: self.node.identity.id, proposal, messages }.encode()
    }
}

/// The broker's replica router: this node's groups (weakly: the groups
/// hold the broker, not the other way round).
struct Router(Weak<QueueGroups>);

impl ReplicaRouter for Router {
    fn enqueue(&self, group: u64, messages: Vec<Arc<Message>>) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        let groups = self.0.upgrade();
        Box::pin(async move {
            let Some(groups) = groups else { return false };
            let mut committed = true;
            for batch in messages.chunks(MAX_BATCH) {
                let command = groups.enqueue_command(batch.to_vec());
                committed &= groups.commit(group, command).await;
            }
            committed
        })
    }

    fn enqueue_detached(&self, group: u64, messages: Vec<Arc<Message>>) {
        let Some(groups) = self.0.upgrade() else { return };
        let runtime = groups.runtime.clone();
        let committing = self.enqueue(group, messages);
        runtime.spawn(async move {
            if !committing.await {
                tracing::warn!("a dead-lettered message was not taken by its quorum queue's group {group:x}");
            }
        });
    }

    fn consume(&self, request: RemoteConsume) -> RemoteWork {
        let Some(groups) = self.0.upgrade() else { return Box::pin(async { Ok(()) }) };
        groups.clients.consume(&groups, groups.broker.clone(), request)
    }

    fn get(&self, request: RemoteGet) -> RemoteWork {
        let Some(groups) = self.0.upgrade() else { return Box::pin(async { Ok(()) }) };
        groups.clients.get(&groups, groups.broker.clone(), request)
    }

    fn cancel_consumer(&self, conn: u64, channel: u16, group: u64, tag: Arc<str>) {
        if let Some(groups) = self.0.upgrade() {
            groups.clients.cancel(&groups, (conn, channel, group), tag);
        }
    }

    fn channel_closed(&self, conn: u64, channel: u16) {
        if let Some(groups) = self.0.upgrade() {
            groups.clients.channel_closed(conn, channel);
        }
    }

    fn settle(&self, group: u64, positions: Vec<u64>) {
        let Some(groups) = self.0.upgrade() else { return };
        // One settle in flight per group; the rest gather meanwhile.
        let Some(mut positions) = groups.settles.add(group, positions) else { return };
        let runtime = groups.runtime.clone();
        runtime.spawn(async move {
            loop {
                let command = QueueCommand::Settle { positions }.encode();
                if !groups.commit(group, command).await {
                    tracing::warn!("settled messages were not committed by their quorum queue's group {group:x}: they will be delivered again");
                }
                match groups.settles.next(group) {
                    Some(gathered) => positions = gathered,
                    None => return,
                }
            }
        });
    }
}

/// Hands the leadership `me` holds of a group to its member `to`.
async fn lead_elsewhere(raft: &QueueRaft, me: NodeId, to: NodeId) -> io::Result<()> {
    if raft.current_leader().await != Some(me) {
        return Err(io::Error::other("this node does not lead the group"));
    }
    raft.trigger().transfer_leader(to).await.map_err(io::Error::other)
}

/// Whether `me` leads the group and a majority answered it lately.
fn leads_with_quorum(m: &openraft::RaftMetrics<RaftConfig>, me: NodeId) -> bool {
    use openraft::Instant as _;
    let alone = m.membership_config.membership().voter_ids().count() <= 1;
    let answered = || m.last_quorum_acked.as_ref().is_some_and(|at| at.elapsed() < QUORUM_ACK_WITHIN);
    m.current_leader == Some(me) && (alone || answered())
}

/// A queue's group as served to peers: the Raft RPCs, forwarded
/// commands, and consumer sessions.
struct Served {
    raft: QueueRaft,
    sessions: Arc<SessionServer>,
    me: NodeId,
}

impl GroupServer for Served {
    fn serve(&self, kind: u8, payload: Bytes) -> Pin<Box<dyn Future<Output = io::Result<Vec<u8>>> + Send>> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        match kind {
            KIND_PROPOSE => {
                let raft = self.raft.clone();
                Box::pin(async move {
                    QueueCommand::decode(&payload).map_err(invalid)?;
                    serve_forwarded(&raft, payload).await
                })
            }
            KIND_SESSION => {
                let sessions = self.sessions.clone();
                let leads = leads_with_quorum(&self.raft.metrics().borrow_watched(), self.me);
                Box::pin(async move {
                    let request = SessionRequest::decode(payload).map_err(invalid)?;
                    Ok(sessions.serve(leads, request).await.encode())
                })
            }
            KIND_LEAD_ELSEWHERE => {
                let (raft, me) = (self.raft.clone(), self.me);
                Box::pin(async move {
                    let to = payload.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
                    let to = to.ok_or_else(|| invalid("a leader transfer without a member id".into()))?;
                    lead_elsewhere(&raft, me, to).await.map(|()| Vec::new())
                })
            }
            KIND_MEMBER_STATUS => {
                let status = MemberStatus::of("", &self.raft.metrics().borrow_watched());
                Box::pin(async move { serde_json::to_vec(&status).map_err(io::Error::other) })
            }
            // A snapshot no member could install is refused before openraft
            // takes it (its failure to install one stops the group here).
            KIND_SNAPSHOT => {
                let readable = decode_snapshot(&payload)
                    .map_err(|e| e.to_string())
                    .and_then(|(_, _, data)| QueueSnapshot::decode(data).map(drop));
                match readable {
                    Ok(()) => RaftGroup(self.raft.clone()).serve(kind, payload),
                    Err(e) => Box::pin(async move { Err(invalid(e)) }),
                }
            }
            _ => RaftGroup(self.raft.clone()).serve(kind, payload),
        }
    }
}
