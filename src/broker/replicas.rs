//! Quorum queues of a cluster: which Raft group holds a quorum queue and
//! which nodes are its members ([`Replica`]), kept with the queue and in
//! the log (a `quorum-members` parameter), and the changes that make,
//! bind and delete such a queue on every node ([`Change::Queue`]).
//!
//! On a node of a cluster a quorum queue is declared through the metadata
//! group: the node that declares it chooses the members and a group id,
//! every node applies the declare (so every node routes to the queue and
//! knows its members), and the members run the queue's group
//! (`cluster::quorum`). The bindings to such a queue and its deletion go
//! through the metadata group too. Classic queues and streams stay on the
//! node that declared them.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use super::changes::Change;
use super::effects::carry_out;
use super::queue_type::{Command, Effects};
use super::*;
use crate::protocol::Method;

/// A replicated quorum queue's group and members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The queue's Raft group (unique in the cluster; never the metadata
    /// group's 0 or the node requests' `u64::MAX`).
    pub group: u64,
    /// The members, the preferred leader first (the declaring node under
    /// the `client-local` leader locator).
    pub members: Vec<Member>,
}

/// A member of a queue's group: a node by name and Raft id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub id: u64,
    /// Added after the queue was declared (`add_member`): the group's
    /// leader brings it in, and it never forms the group itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub added: bool,
    /// On its way out (`delete_member`): the group's leader takes it out
    /// of the group, then commits its removal ([`MemberChange::Remove`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

impl Member {
    /// A member of the queue's group as declared.
    pub fn new(name: impl Into<String>, id: u64) -> Member {
        Member { name: name.into(), id, added: false, leaving: false }
    }
}

/// A change to a replicated quorum queue's members, applied by every node
/// in the metadata group's log order (so two changes made at once on two
/// nodes both take effect, one after the other).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MemberChange {
    /// `add_member`: a new member, brought into the group by its leader
    /// (a learner until it has caught up, then a voter).
    Add { member: Member },
    /// `delete_member`: the member is leaving; the group's leader takes it
    /// out of the group's membership, then commits `Remove`. It stays a
    /// member (and runs its part of the group) until then, so a group of
    /// two never loses its majority to a member that stopped too soon.
    Leave { node: String },
    /// The group no longer has this leaving member.
    Remove { node: String, id: u64 },
    /// The member's node came back with a new Raft id (its data directory
    /// was wiped): the member is that id from now on, brought into the
    /// group as a new one, and the old id leaves the group.
    Rejoin { node: String, id: u64 },
}

/// A replicated quorum queue of this node.
#[derive(Debug, Clone)]
pub struct ReplicatedQueue {
    pub vhost: Arc<str>,
    pub name: Arc<str>,
    pub replica: Arc<Replica>,
}

/// The key of a queue's `quorum-members` parameter: `[vhost, queue]` as JSON.
fn replica_key(vhost: &str, name: &str) -> String {
    serde_json::json!([vhost, name]).to_string()
}

impl Broker {
    /// The replica of a queue of this node, if it is a replicated quorum queue.
    pub fn replica_of(&self, vhost: &str, name: &str) -> Option<Arc<Replica>> {
        self.state.read().queue(vhost, name).and_then(|q| q.lock().replica.clone())
    }

    /// Every replicated quorum queue of this node.
    pub fn replicated_queues(&self) -> Vec<ReplicatedQueue> {
        let st = self.state.read();
        let mut out = Vec::new();
        for v in st.vhosts.values() {
            for cell in v.queues.values() {
                let q = cell.lock();
                if let Some(replica) = &q.replica {
                    out.push(ReplicatedQueue {
                        vhost: q.vhost.clone(),
                        name: q.name.clone(),
                        replica: replica.clone(),
                    });
                }
            }
        }
        out
    }

    /// Whether a declare makes a new replicated quorum queue: on a node of
    /// a cluster, a declare (not passive) of a queue that does not exist
    /// here and would be a quorum queue (by its arguments or the vhost's
    /// default queue type). Such a declare goes through the metadata group.
    pub fn declares_replicated(&self, vhost: &str, m: &QueueDeclare) -> bool {
        if !self.is_clustered() || m.passive || m.queue.is_empty() {
            return false;
        }
        let st = self.state.read();
        if st.queue(vhost, &m.queue).is_some() {
            return false;
        }
        let arguments = st.with_default_queue_type(vhost, m);
        arguments.get("x-queue-type").and_then(|v| v.as_str()) == Some("quorum")
    }

    /// Whether a change to the queue `name` (a binding, a delete) must go
    /// through the metadata group: it is a replicated quorum queue.
    pub fn is_replicated(&self, vhost: &str, name: &str) -> bool {
        self.is_clustered() && self.replica_of(vhost, name).is_some()
    }

    /// The change a queue method makes when it must go through the metadata
    /// group (the declare of a new replicated quorum queue; a binding to
    /// or the delete of one), else None: the method is this node's own.
    /// A delete is proposed without `if-unused` and `if-empty`: the caller
    /// judges them here first ([`Broker::queue_delete_check`]).
    pub fn queue_change(&self, vhost: &str, method: Method) -> Option<Change> {
        let shared = match &method {
            Method::QueueDeclare(m) => self.declares_replicated(vhost, m),
            other => Change::queue_name(other).is_some_and(|name| self.is_replicated(vhost, name)),
        };
        shared.then(|| Change::for_queue(vhost, method))
    }

    /// Applies a change to a replicated queue's members: refused for a node
    /// that is already a member (add), is none (leave), or is the last
    /// member that is not leaving.
    pub(super) fn apply_member_change(&self, vhost: &str, name: &str, change: &MemberChange) -> Result<()> {
        let st = self.state.read();
        let Some(cell) = st.queue(vhost, name) else { return Err(no_queue(vhost, name)) };
        let mut q = cell.lock();
        let Some(replica) = q.replica.clone() else {
            return Err(AmqpError::precondition(format!(
                "queue '{name}' in vhost '{vhost}' is not a replicated quorum queue"
            )));
        };
        let mut members = replica.members.clone();
        match change {
            MemberChange::Add { member } => {
                if members.iter().any(|m| m.name == member.name) {
                    return Err(AmqpError::precondition(format!(
                        "node {} is already a member of quorum queue '{name}' in vhost '{vhost}'",
                        member.name
                    )));
                }
                members.push(member.clone());
            }
            MemberChange::Leave { node } => {
                let staying = members.iter().filter(|m| !m.leaving).count();
                let Some(member) = members.iter_mut().find(|m| m.name == *node) else {
                    return Err(AmqpError::precondition(format!(
                        "node {node} is not a member of quorum queue '{name}' in vhost '{vhost}'"
                    )));
                };
                if member.leaving {
                    return Ok(());
                }
                if staying <= 1 {
                    return Err(AmqpError::precondition(format!(
                        "node {node} is the last member of quorum queue '{name}' in vhost '{vhost}': delete the queue instead"
                    )));
                }
                member.leaving = true;
            }
            MemberChange::Remove { node, id } => members.retain(|m| !(m.name == *node && m.id == *id && m.leaving)),
            MemberChange::Rejoin { node, id } => {
                if let Some(member) = members.iter_mut().find(|m| m.name == *node && m.id != *id) {
                    *member = Member { added: true, leaving: member.leaving, ..Member::new(node.clone(), *id) };
                }
            }
        }
        if members == replica.members {
            return Ok(());
        }
        let replica = Replica { group: replica.group, members };
        let value = serde_json::to_vec(&replica).map_err(|e| AmqpError::connection(reply::INTERNAL_ERROR, e))?;
        let record = Record::Parameter {
            kind: ParameterKind::QuorumMembers,
            key: replica_key(vhost, name),
            value: value.into(),
        };
        self.store.define(record).map_err(store_failed)?;
        q.replica = Some(Arc::new(replica));
        Ok(())
    }

    /// Applies a change to a replicated queue (see [`Change::Queue`]).
    pub(super) fn apply_queue_change(&self, vhost: &str, method: &Method, replica: Option<&Replica>) -> Result<()> {
        match method {
            Method::QueueDeclare(m) => {
                let Some(replica) = replica else {
                    return Err(AmqpError::command_invalid("a quorum queue declared without its members"));
                };
                self.queue_declare(vhost, 0, m)?;
                self.attach_replica(vhost, &m.queue, replica)
            }
            Method::QueueDelete(m) => {
                // if-unused and if-empty were judged where the delete was made.
                self.admin_delete(vhost, &m.queue);
                Ok(())
            }
            Method::QueueBind(m) => {
                let destination = Destination::Queue(m.queue.clone());
                self.bind(vhost, 0, &m.exchange, destination, &m.routing_key, &m.arguments)
            }
            Method::QueueUnbind(m) => {
                let destination = Destination::Queue(m.queue.clone());
                self.unbind(vhost, 0, &m.exchange, destination, &m.routing_key, &m.arguments)
            }
            other => Err(AmqpError::command_invalid(format!("{} is not a definitions change", other.name()))),
        }
    }

    /// Gives a queue its replica, logged, unless it has one (a declare
    /// applied again after a restart).
    fn attach_replica(&self, vhost: &str, name: &str, replica: &Replica) -> Result<()> {
        let st = self.state.read();
        let Some(cell) = st.queue(vhost, name) else { return Err(no_queue(vhost, name)) };
        let mut q = cell.lock();
        if q.replica.is_some() {
            return Ok(());
        }
        if q.args.queue_type != QueueType::Quorum {
            return Err(AmqpError::precondition(format!(
                "queue '{name}' in vhost '{vhost}' exists and is not a quorum queue"
            )));
        }
        let value = serde_json::to_vec(replica).map_err(|e| AmqpError::connection(reply::INTERNAL_ERROR, e))?;
        let record = Record::Parameter {
            kind: ParameterKind::QuorumMembers,
            key: replica_key(vhost, name),
            value: value.into(),
        };
        self.store.define(record).map_err(store_failed)?;
        q.replica = Some(Arc::new(replica.clone()));
        Ok(())
    }

    /// The replicas the log holds, given to their queues; the replica of a
    /// queue that no longer exists is forgotten.
    pub(super) fn restore_replicas(&self, parameters: &BTreeMap<(ParameterKind, String), bytes::Bytes>) {
        let st = self.state.read();
        for ((kind, key), value) in parameters {
            if *kind != ParameterKind::QuorumMembers {
                continue;
            }
            let queue = serde_json::from_str::<[String; 2]>(key).ok().and_then(|[vhost, name]| st.queue(&vhost, &name));
            match (queue, serde_json::from_slice::<Replica>(value)) {
                (Some(cell), Ok(replica)) => cell.lock().replica = Some(Arc::new(replica)),
                (_, Err(e)) => tracing::error!("the quorum members '{key}' in the log cannot be read: {e}"),
                (None, Ok(_)) => self.forget_orphan(Record::ParameterDelete { kind: *kind, key: key.clone() }),
            }
        }
    }
}

impl State {
    /// Messages of a replicated queue that left it for good on this node
    /// (handed out with no-ack): settled through its group.
    pub(super) fn settle_replicated(&self, q: &Queue, positions: Vec<u64>) {
        if let (Some(replica), Some(router)) = (&q.replica, self.replica_router.get()) {
            router.settle(replica.group, positions);
        }
    }

    /// A deleted queue's replica leaves the log with it.
    pub(super) fn forget_replica(q: &Queue, store: &LogStore) {
        if q.replica.is_none() {
            return;
        }
        let key = replica_key(&q.vhost, &q.name);
        if let Err(e) = store.define(Record::ParameterDelete { kind: ParameterKind::QuorumMembers, key }) {
            tracing::error!("quorum queue '{}' in vhost '{}': its members stay in the log: {e}", q.name, q.vhost);
        }
    }
}

impl Change {
    /// The change of a queue method on a replicated queue. A delete is
    /// proposed without `if-unused` and `if-empty`, which were judged
    /// where it was made.
    pub fn for_queue(vhost: &str, method: Method) -> Change {
        let method = match method {
            Method::QueueDelete(m) => QueueDelete { if_unused: false, if_empty: false, ..m }.into(),
            other => other,
        };
        Change::Queue { vhost: vhost.to_string(), method, replica: None }
    }

    /// The queue a queue change names.
    pub fn queue_name(method: &Method) -> Option<&str> {
        match method {
            Method::QueueDeclare(m) => Some(&m.queue),
            Method::QueueDelete(m) => Some(&m.queue),
            Method::QueueBind(m) => Some(&m.queue),
            Method::QueueUnbind(m) => Some(&m.queue),
            _ => None,
        }
    }
}

/// Where a node of a cluster sends what a replicated queue's group must
/// commit (`cluster::quorum` is it).
pub trait ReplicaRouter: Send + Sync + 'static {
    /// Commits messages for the queue of `group`, in this order; resolves
    /// true once the group's leader has applied them (a majority has them
    /// durable: they may be confirmed), false if they were not within the
    /// time-out (nack them).
    fn enqueue(&self, group: u64, messages: Vec<Arc<Message>>) -> Pin<Box<dyn Future<Output = bool> + Send>>;
    /// As [`ReplicaRouter::enqueue`], not waited for (dead-lettering, from
    /// any thread).
    fn enqueue_detached(&self, group: u64, messages: Vec<Arc<Message>>);
    /// Commits that messages left the queue for good (acknowledged), by
    /// position. Not waited for: a settle lost with its leader leaves the
    /// message to be delivered again (at least once).
    fn settle(&self, group: u64, positions: Vec<u64>);
    /// Makes a client's consumer at the queue's leader; resolves once the
    /// leader made it (consume-ok is then sent) or refused it.
    fn consume(&self, request: super::remote::RemoteConsume) -> super::remote::RemoteWork;
    /// Takes a message for a client's basic.get at the queue's leader;
    /// resolves once get-ok or get-empty is sent (or with the refusal).
    fn get(&self, request: super::remote::RemoteGet) -> super::remote::RemoteWork;
    /// A client cancelled its consumer of the queue of `group`.
    fn cancel_consumer(&self, conn: u64, channel: u16, group: u64, tag: Arc<str>);
    /// A client's channel closed: what its consumers hold at leaders goes
    /// back to their queues. Called under the broker's lock: must not
    /// call back into the broker before it returns.
    fn channel_closed(&self, conn: u64, channel: u16);
}

/// The broker's replica router, set once on a node of a cluster.
#[derive(Default)]
pub(super) struct RouterSlot(std::sync::OnceLock<Arc<dyn ReplicaRouter>>);

impl std::fmt::Debug for RouterSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "RouterSlot(set)" } else { "RouterSlot(unset)" })
    }
}

impl RouterSlot {
    pub(super) fn get(&self) -> Option<&Arc<dyn ReplicaRouter>> {
        self.0.get()
    }
}

impl Broker {
    /// Sends replicated queues' enqueues and settles through `router`.
    pub fn set_replica_router(&self, router: Arc<dyn ReplicaRouter>) {
        let _ = self.state.read().replica_router.0.set(router);
    }

    /// The replica router, on a node of a cluster.
    pub fn replica_router(&self) -> Option<Arc<dyn ReplicaRouter>> {
        self.state.read().replica_router.get().cloned()
    }

    /// Whether this node's member leads the replicated queue: only then
    /// does it hand the queue's messages out. Becoming the leader starts
    /// delivery to the queue's consumers here.
    pub fn set_replica_active(&self, vhost: &str, name: &str, active: bool) {
        let st = self.state.read();
        let Some(cell) = st.queue(vhost, name) else { return };
        let mut q = cell.lock();
        if q.replica_active == active {
            return;
        }
        q.replica_active = active;
        if active {
            st.deliver_ready(&mut q, &self.store, queue::now_ms());
        }
    }

    /// Applies a committed enqueue to this node's replica of a queue: each
    /// message at its position (see `cluster::queue_commands`), logged as a
    /// positioned message record; a position already applied is skipped
    /// (an entry applied again after a restart). The leader's replica
    /// hands them to its consumers.
    pub fn apply_replicated_enqueue(&self, vhost: &str, name: &str, messages: Vec<(u64, Arc<Message>)>) {
        let st = self.state.read();
        let Some(cell) = st.queue(vhost, name) else { return };
        let mut q = cell.lock();
        let now = queue::now_ms();
        let mut fx = Effects::default();
        let mut departed = Vec::new();
        for (position, message) in messages {
            if position <= q.replica_applied {
                continue;
            }
            q.replica_applied = position;
            let store_id = match q.store_id {
                Some(qid) => {
                    let m = &message;
                    let at = (&*m.exchange, &*m.routing_key);
                    match self.store.publish_stream(qid, position, at, &m.properties, &m.body, None) {
                        Ok((id, _, _)) => id,
                        Err(e) => {
                            // The log failed: its writer reports it; the
                            // node stops taking writes.
                            tracing::error!("quorum queue '{name}' in vhost '{vhost}': a message is not logged: {e}");
                            return;
                        }
                    }
                }
                None => 0,
            };
            q.place_next(position);
            q.replica_held.insert(position, store_id);
            q.apply(Command::Enqueue { message, store_id, trim_later: false }, now, &mut fx);
            q.counters.publish += 1;
            let _ = carry_out(&q, &mut fx, &self.store, &mut departed);
        }
        // Length limits drop alike on every member: the group no longer holds those.
        for entry in departed.iter().flat_map(|d| d.entries.iter()) {
            q.replica_held.remove(&entry.seq);
        }
        if q.replica_active {
            st.deliver_ready(&mut q, &self.store, now);
        } else if let Some(qid) = q.store_id.filter(|_| !departed.is_empty()) {
            // What length limits dropped is dead-lettered by the leader
            // only: the others' copies just leave their logs.
            let ids: Vec<u64> = departed.drain(..).flat_map(|d| d.entries).map(|e| e.store_id).collect();
            if let Err(e) = self.store.ack(qid, &ids) {
                tracing::error!("quorum queue '{name}' in vhost '{vhost}': dropped messages stay in the log: {e}");
            }
        }
        drop(q);
        for d in departed {
            let mut touched = Vec::new();
            st.dead_letter(d, &self.store, &mut touched);
            st.drain_all(vhost, touched, &self.store);
        }
    }

    /// Applies a committed settle to this node's replica of a queue: the
    /// messages at `positions` leave it (on the leader they were handed
    /// out and settled by their consumer already; a follower still holds
    /// them ready).
    pub fn apply_replicated_settle(&self, vhost: &str, name: &str, positions: &[u64]) {
        let st = self.state.read();
        let Some(cell) = st.queue(vhost, name) else { return };
        let mut q = cell.lock();
        let mut fx = Effects::default();
        for &seq in positions {
            q.replica_held.remove(&seq);
            let Some(store_id) = q.store_id_at(seq) else { continue };
            q.apply(Command::Remove { seq, store_id }, queue::now_ms(), &mut fx);
        }
        let _ = carry_out(&q, &mut fx, &self.store, &mut Vec::new());
    }
}
