//! Quorum queues this node runs no member of: a queue declared with fewer
//! members than there are nodes (`x-quorum-initial-group-size`), or one
//! whose member here was deleted. Every node holds the queue's record and
//! routes to it, so its clients publish, consume and get all the same,
//! through the members:
//!
//! - a publish is committed by sending the enqueue to the leader this
//!   node last found ([`commit_outside`]), else to each member in turn (a
//!   member that does not lead refuses it, and the next is tried);
//! - consumers and gets are made at the leader as from a member
//!   (`consumers`), which [`OutsideLeaders`] names: each look-over asks
//!   the members of every such queue which one leads ([`find_leaders`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use super::member_status::quorum_status;
use super::metadata::PROPOSE_WITHIN;
use super::propose::{AGAIN, decode_forwarded};
use super::queue_machine::APPLIED;
use super::quorum::QueueGroups;
use super::transport::AddressBook;
use super::types::NodeId;
use super::wire::KIND_PROPOSE;
use crate::broker::replicas::{Member, ReplicatedQueue};

/// How long one member has to take a forwarded command.
const ATTEMPT_WITHIN: Duration = Duration::from_secs(2);

/// The leader of each group this node is no member of, as last found.
#[derive(Default)]
pub struct OutsideLeaders {
    leaders: Mutex<HashMap<u64, NodeId>>,
    /// One search at a time.
    finding: AtomicBool,
}

impl OutsideLeaders {
    pub fn get(&self, group: u64) -> Option<NodeId> {
        self.leaders.lock().get(&group).copied()
    }

    fn set(&self, group: u64, leader: Option<NodeId>) {
        let mut leaders = self.leaders.lock();
        match leader {
            Some(leader) => leaders.insert(group, leader),
            None => leaders.remove(&group),
        };
    }
}

/// Asks the members of each of `queues` (queues this node is no member
/// of) which one leads, and keeps the answers; forgets other groups'.
/// Runs in the background, one search at a time.
pub fn find_leaders(groups: &std::sync::Arc<QueueGroups>, queues: Vec<ReplicatedQueue>) {
    let outside = groups.outside();
    let wanted: HashSet<u64> = queues.iter().map(|q| q.replica.group).collect();
    outside.leaders.lock().retain(|group, _| wanted.contains(group));
    if queues.is_empty() || outside.finding.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak = std::sync::Arc::downgrade(groups);
    groups.spawn(async move {
        for queue in queues {
            let Some(groups) = weak.upgrade() else { return };
            let rows = quorum_status(&groups, &queue.vhost, &queue.name).await.unwrap_or_default();
            let leader = rows.iter().find(|r| r.raft_state == "leader").map(|r| r.node.as_str());
            let id = leader.and_then(|name| queue.replica.members.iter().find(|m| m.name == name)).map(|m| m.id);
            groups.outside().set(queue.replica.group, id);
        }
        if let Some(groups) = weak.upgrade() {
            groups.outside().finding.store(false, Ordering::Release);
        }
    });
}

/// Commits `command` to `group` from a node that is no member of it:
/// whether the group's leader applied it (until [`PROPOSE_WITHIN`]).
pub async fn commit_outside(groups: &QueueGroups, group: u64, members: &[Member], command: &Bytes) -> bool {
    let deadline = tokio::time::Instant::now() + PROPOSE_WITHIN;
    let node = groups.node();
    loop {
        // The leader found last first, then the others.
        let hint = groups.outside().get(group);
        let mut order: Vec<&Member> = members.iter().filter(|m| !m.leaving).collect();
        order.sort_by_key(|m| Some(m.id) != hint);
        for member in order {
            let Some(address) = AddressBook::address_of(node.as_ref(), &member.name) else { continue };
            let limit = ATTEMPT_WITHIN.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let reply = node.transport.call(&address, member.id, KIND_PROPOSE, group, command, limit).await;
            if let Some((_, outcome)) = reply.ok().and_then(|r| decode_forwarded(&r)) {
                groups.outside().set(group, Some(member.id));
                return outcome.as_ref() == APPLIED;
            }
        }
        if tokio::time::Instant::now() + AGAIN >= deadline {
            return false;
        }
        tokio::time::sleep(AGAIN).await;
    }
}
