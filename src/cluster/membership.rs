//! Changing a quorum queue's members while it runs
//! (`rabbitmq-queues add_member`, `delete_member`, `grow`, `shrink`).
//!
//! A queue's members are part of its definition (`broker::replicas`): a
//! change to them is committed through the metadata group first
//! ([`MemberChange`]), so every node agrees on them and a node that was
//! down learns them from the log. The queue's group then follows:
//! its leader compares the group's Raft membership with the members
//! ([`next_step`]) and takes one step at a time ([`bring_to_members`]):
//!
//! - a new member runs its part of the group without forming it (it is
//!   marked `added`) and is taken in as a learner, which catches up from
//!   the leader's log or a snapshot, then made a voter;
//! - a leaving member is taken out of the voters (a leader that is leaving
//!   hands leadership over first), and once the group no longer has it the
//!   leader commits its removal; only then does its node stop its part and
//!   drop its copy of the queue.
//!
//! Every step is safe to take again, and the leader looks again every
//! second (`quorum::QueueGroups`), so a leader that dies half way is
//! followed by one that goes on.

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::impls::BasicNode;

use super::quorum::{QueueGroups, QueueRaft};
use super::types::NodeId;
use crate::broker::changes::{Change, detail};
use crate::broker::replicas::{Member, MemberChange};
use crate::broker::{AmqpError, Broker};

/// How long a new member has to catch up (a snapshot of a long backlog
/// included) before the leader gives up for this round and tries again.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(600);
/// How long a change of the group's voters may take.
const CHANGE_WITHIN: Duration = Duration::from_secs(30);
/// How often the waiting operator verbs look again.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// The next thing a group's leader does to make the group's membership
/// the queue's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing: the group's voters are the members that are not leaving.
    Done,
    /// The leader itself is leaving: it hands leadership to this voter,
    /// which goes on.
    HandOver(NodeId),
    /// Take this member in as a learner and wait until it has caught up.
    CatchUp(Member),
    /// Make the voters these (the members that are not leaving).
    SetVoters(BTreeSet<NodeId>),
    /// Drop these learners, which are no members.
    DropLearners(BTreeSet<NodeId>),
    /// Commit that this leaving member is gone: the group no longer has it.
    Forget(Member),
}

/// What the leader `me` of a group whose membership has `voters` (and
/// `nodes`: voters and learners) does next for `members`; `caught_up`:
/// the learners it has seen catch up this round.
pub fn next_step(
    me: NodeId,
    voters: &BTreeSet<NodeId>,
    nodes: &BTreeSet<NodeId>,
    members: &[Member],
    caught_up: &BTreeSet<NodeId>,
) -> Step {
    let wanted: BTreeSet<NodeId> = members.iter().filter(|m| !m.leaving).map(|m| m.id).collect();
    if wanted.is_empty() {
        return Step::Done;
    }
    if voters.contains(&me)
        && !wanted.contains(&me)
        && let Some(to) = wanted.intersection(voters).next()
    {
        return Step::HandOver(*to);
    }
    if let Some(new) = members.iter().find(|m| !m.leaving && !voters.contains(&m.id) && !caught_up.contains(&m.id)) {
        return Step::CatchUp(new.clone());
    }
    if *voters != wanted {
        return Step::SetVoters(wanted);
    }
    let extra: BTreeSet<NodeId> = nodes.difference(&wanted).copied().collect();
    if !extra.is_empty() {
        return Step::DropLearners(extra);
    }
    match members.iter().find(|m| m.leaving && !nodes.contains(&m.id)) {
        Some(gone) => Step::Forget(gone.clone()),
        None => Step::Done,
    }
}

/// The voters and all nodes (voters and learners) of a group's membership.
fn membership_of(m: &openraft::RaftMetrics<super::types::RaftConfig>) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
    let membership = m.membership_config.membership();
    (membership.voter_ids().collect(), membership.nodes().map(|(id, _)| *id).collect())
}

/// Whether the leader `me` of a group has anything to do for `members`
/// (its membership change, if one is on, committed).
pub fn has_work(m: &openraft::RaftMetrics<super::types::RaftConfig>, me: NodeId, members: &[Member]) -> bool {
    let settled = m.membership_config == m.committed_membership_config;
    let (voters, nodes) = membership_of(m);
    m.current_leader == Some(me) && settled && next_step(me, &voters, &nodes, members, &BTreeSet::new()) != Step::Done
}

/// On the group's leader: takes the steps that make the group's
/// membership the queue's `members`, until there are none or one fails
/// (the next look-over tries again).
pub(super) async fn bring_to_members(
    raft: QueueRaft,
    me: NodeId,
    members: Vec<Member>,
    broker: Weak<Broker>,
    (vhost, name): (String, String),
) {
    let mut caught_up = BTreeSet::new();
    loop {
        let m = raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(me) || m.membership_config != m.committed_membership_config {
            return;
        }
        let (voters, nodes) = membership_of(&m);
        let step = next_step(me, &voters, &nodes, &members, &caught_up);
        let queue = format!("quorum queue '{name}' in vhost '{vhost}'");
        match step {
            Step::Done => return,
            Step::HandOver(to) => {
                tracing::info!("{queue}: this node is leaving its group; handing leadership to {to}");
                let _ = raft.trigger().transfer_leader(to).await;
                return;
            }
            Step::CatchUp(member) => {
                tracing::info!("{queue}: bringing {} into its group", member.name);
                let node = BasicNode { addr: member.name.clone() };
                let added = tokio::time::timeout(CHANGE_WITHIN, raft.add_learner(member.id, node, false)).await;
                if !matches!(added, Ok(Ok(_))) || !catch_up(&raft, me, &member, &broker, (&vhost, &name)).await {
                    tracing::warn!("{queue}: {} has not caught up yet; trying again", member.name);
                    return;
                }
                caught_up.insert(member.id);
            }
            Step::SetVoters(voters) => {
                let changed = raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), false);
                if !matches!(tokio::time::timeout(CHANGE_WITHIN, changed).await, Ok(Ok(_))) {
                    tracing::warn!("{queue}: its group's voters could not be changed yet");
                    return;
                }
                tracing::info!("{queue}: its group's voters are its members");
            }
            Step::DropLearners(extra) => {
                let changed = raft.change_membership(ChangeMembers::RemoveNodes(extra), false);
                if !matches!(tokio::time::timeout(CHANGE_WITHIN, changed).await, Ok(Ok(_))) {
                    return;
                }
            }
            Step::Forget(gone) => {
                let Some(broker) = broker.upgrade() else { return };
                let change = MemberChange::Remove { node: gone.name.clone(), id: gone.id };
                let change = Change::QueueMembers { vhost: vhost.clone(), name: name.clone(), change };
                match broker.change(change).await {
                    Ok(()) => tracing::info!("{queue}: {} is no longer a member", gone.name),
                    Err(e) => tracing::warn!("{queue}: the removal of {} is not committed yet: {e}", gone.name),
                }
                // The members changed: the next look-over starts from them.
                return;
            }
        }
    }
}

/// Waits until learner `member` has what the leader `me` had when it was
/// taken in: false if this node stops leading, the member is no longer
/// wanted (deleted meanwhile), or [`CATCH_UP_WITHIN`] passes.
async fn catch_up(
    raft: &QueueRaft,
    me: NodeId,
    member: &Member,
    broker: &Weak<Broker>,
    (vhost, name): (&str, &str),
) -> bool {
    let target = raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
    let deadline = tokio::time::Instant::now() + CATCH_UP_WITHIN;
    loop {
        let m = raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(me) {
            return false;
        }
        let matched = m.replication.as_ref().and_then(|r| r.get(&member.id).cloned().flatten()).map(|l| l.index);
        if matched.is_some_and(|index| index >= target) {
            return true;
        }
        let wanted = broker
            .upgrade()
            .and_then(|b| b.replica_of(vhost, name))
            .is_some_and(|r| r.members.iter().any(|m| m.id == member.id && !m.leaving));
        if !wanted || tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Why a member change was refused, and whether because the queue does
/// not exist (a 404 over HTTP): the same answer as a status refused.
pub use super::member_status::NoStatus as Refused;

impl Refused {
    fn new(reason: impl Into<String>) -> Refused {
        Refused { missing: false, reason: reason.into() }
    }
}

impl From<AmqpError> for Refused {
    fn from(e: AmqpError) -> Refused {
        Refused { missing: crate::broker::changes::is_not_found(&e), reason: detail(&e) }
    }
}

/// The Raft id of cluster node `node`: this node, or a peer that has
/// answered.
fn node_id(groups: &QueueGroups, node: &str) -> Result<NodeId, Refused> {
    let cluster = groups.node();
    if cluster.identity.name == node {
        return Ok(cluster.identity.id);
    }
    match cluster.peers().into_iter().find(|p| p.name == node) {
        Some(peer) => {
            peer.id.filter(|_| peer.running).ok_or_else(|| Refused::new(format!("node {node} is not running")))
        }
        None => Err(Refused::new(format!("{node} is not a node of this cluster"))),
    }
}

/// The members of replicated quorum queue `name` of `vhost`.
fn members_of(groups: &QueueGroups, vhost: &str, name: &str) -> Result<Vec<Member>, Refused> {
    let broker = groups.broker().upgrade().ok_or_else(|| Refused::new("the broker is stopping"))?;
    let Some(row) = broker.queue_row(vhost, name) else {
        return Err(Refused { missing: true, reason: format!("queue '{name}' in vhost '{vhost}' does not exist") });
    };
    if row.queue_type != "quorum" {
        return Err(Refused::new(format!("queue '{name}' in vhost '{vhost}' is not a quorum queue")));
    }
    let replica = broker.replica_of(vhost, name).ok_or_else(|| {
        Refused::new(format!("quorum queue '{name}' in vhost '{vhost}' was declared before this node was in a cluster: it has no group to change"))
    })?;
    Ok(replica.members.clone())
}

async fn change_members(groups: &QueueGroups, vhost: &str, name: &str, change: MemberChange) -> Result<(), Refused> {
    let broker = groups.broker().upgrade().ok_or_else(|| Refused::new("the broker is stopping"))?;
    let change = Change::QueueMembers { vhost: vhost.into(), name: name.into(), change };
    Ok(broker.change(change).await?)
}

/// `add_member`: makes `node` a member of the queue. With `wait`, returns
/// once it is a voter of the queue's group (it has caught up), or after
/// `within` with a refusal that says it is still catching up.
pub async fn add_member(
    groups: &QueueGroups,
    vhost: &str,
    name: &str,
    node: &str,
    wait: Option<Duration>,
) -> Result<(), Refused> {
    members_of(groups, vhost, name)?;
    let id = node_id(groups, node)?;
    let member = Member { added: true, ..Member::new(node, id) };
    change_members(groups, vhost, name, MemberChange::Add { member }).await?;
    let Some(within) = wait else { return Ok(()) };
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let rows = super::member_status::quorum_status(groups, vhost, name).await.unwrap_or_default();
        if rows.iter().any(|r| r.node == node && r.membership == "voter") {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Refused::new(format!(
                "node {node} is a member of quorum queue '{name}' in vhost '{vhost}' and still catching up after {} s: quorum_status shows when it is a voter",
                within.as_secs()
            )));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// `delete_member`: takes `node` out of the queue's members; returns once
/// the queue's group no longer has it (or after `within`, with a refusal
/// that says its removal is under way).
pub async fn delete_member(
    groups: &QueueGroups,
    vhost: &str,
    name: &str,
    node: &str,
    within: Duration,
) -> Result<(), Refused> {
    members_of(groups, vhost, name)?;
    change_members(groups, vhost, name, MemberChange::Leave { node: node.into() }).await?;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match members_of(groups, vhost, name) {
            Ok(members) if members.iter().any(|m| m.name == node) => {}
            // Gone from the members, or the queue deleted meanwhile.
            _ => return Ok(()),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Refused::new(format!(
                "node {node} is leaving quorum queue '{name}' in vhost '{vhost}': it goes once the queue's group commits it (is a majority of its members running?)"
            )));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// One queue's outcome of `grow` or `shrink`, with rabbitmq-queues'
/// columns: vhost, name, size (members after), result.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueOutcome {
    pub vhost: String,
    pub name: String,
    pub size: usize,
    pub result: String,
}

/// Which queues `grow`, `shrink` and `rebalance` take: regular
/// expressions on the vhost and queue names (unanchored, as RabbitMQ's).
pub struct Selection {
    pub vhost: regex::Regex,
    pub queue: regex::Regex,
}

impl Selection {
    pub fn new(vhost_pattern: &str, queue_pattern: &str) -> Result<Selection, Refused> {
        let compile = |p: &str| regex::Regex::new(p).map_err(|e| Refused::new(format!("invalid pattern '{p}': {e}")));
        Ok(Selection { vhost: compile(vhost_pattern)?, queue: compile(queue_pattern)? })
    }

    fn takes(&self, vhost: &str, name: &str) -> bool {
        self.vhost.is_match(vhost) && self.queue.is_match(name)
    }
}

/// `grow NODE all|even`: adds `node` to every selected quorum queue it is
/// no member of (`even`: only to those with an even number of members).
/// The new members catch up in the background.
pub async fn grow(
    groups: &QueueGroups,
    node: &str,
    even_only: bool,
    selection: &Selection,
) -> Result<Vec<QueueOutcome>, Refused> {
    node_id(groups, node)?;
    let mut outcomes = Vec::new();
    for queue in sorted_queues(groups) {
        let (vhost, name) = (queue.vhost.to_string(), queue.name.to_string());
        let members = queue.replica.members.iter().filter(|m| !m.leaving).count();
        let member = queue.replica.members.iter().any(|m| m.name == node);
        if member || !selection.takes(&vhost, &name) || (even_only && members % 2 != 0) {
            continue;
        }
        let (size, result) = match add_member(groups, &vhost, &name, node, None).await {
            Ok(()) => (members + 1, "ok".to_string()),
            Err(refused) => (members, format!("error: {}", refused.reason)),
        };
        outcomes.push(QueueOutcome { vhost, name, size, result });
    }
    Ok(outcomes)
}

/// `shrink NODE`: takes `node` out of every quorum queue it is a member
/// of, except those it is the last member of (an error row each).
pub async fn shrink(groups: &QueueGroups, node: &str, within: Duration) -> Vec<QueueOutcome> {
    let mut outcomes = Vec::new();
    for queue in sorted_queues(groups) {
        let (vhost, name) = (queue.vhost.to_string(), queue.name.to_string());
        if !queue.replica.members.iter().any(|m| m.name == node) {
            continue;
        }
        let members = queue.replica.members.iter().filter(|m| !m.leaving).count();
        let (size, result) = match delete_member(groups, &vhost, &name, node, within).await {
            Ok(()) => (members.saturating_sub(1), "ok".to_string()),
            Err(refused) => (members, format!("error: {}", refused.reason)),
        };
        outcomes.push(QueueOutcome { vhost, name, size, result });
    }
    outcomes
}

/// On the metadata group's leader: a quorum queue member whose node is a
/// voter of the metadata group under another Raft id (the node came back
/// with its data directory wiped, and the metadata group has taken it in
/// again) rejoins the queue under that id ([`MemberChange::Rejoin`]).
/// `voters`: the metadata group's voters, by node name.
pub async fn rejoin_wiped(broker: &Broker, voters: &[(String, NodeId)]) {
    for queue in broker.replicated_queues() {
        for member in &queue.replica.members {
            let Some((_, id)) = voters.iter().find(|(node, id)| *node == member.name && *id != member.id) else {
                continue;
            };
            tracing::info!(
                "quorum queue '{}' in vhost '{}': {} came back with a new Raft id; it rejoins the queue's group",
                queue.name,
                queue.vhost,
                member.name
            );
            let change = MemberChange::Rejoin { node: member.name.clone(), id: *id };
            let change = Change::QueueMembers { vhost: queue.vhost.to_string(), name: queue.name.to_string(), change };
            if let Err(e) = broker.change(change).await {
                tracing::warn!("{} cannot rejoin its quorum queues yet: {e}", member.name);
                return;
            }
        }
    }
}

/// The replicated quorum queues `selection` takes, by vhost and name.
pub fn selected_queues(groups: &QueueGroups, selection: &Selection) -> Vec<crate::broker::replicas::ReplicatedQueue> {
    let mut queues = sorted_queues(groups);
    queues.retain(|q| selection.takes(&q.vhost, &q.name));
    queues
}

fn sorted_queues(groups: &QueueGroups) -> Vec<crate::broker::replicas::ReplicatedQueue> {
    let Some(broker) = groups.broker().upgrade() else { return Vec::new() };
    let mut queues = broker.replicated_queues();
    queues.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    queues
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn member(name: &str, id: NodeId) -> Member {
        Member::new(name, id)
    }

    #[test]
    fn a_group_whose_voters_are_its_members_has_nothing_to_do() {
        let members = [member("a", 1), member("b", 2), member("c", 3)];
        assert_eq!(next_step(1, &set(&[1, 2, 3]), &set(&[1, 2, 3]), &members, &set(&[])), Step::Done);
    }

    #[test]
    fn a_new_member_catches_up_as_a_learner_before_it_votes() {
        let new = Member { added: true, ..member("d", 4) };
        let members = [member("a", 1), member("b", 2), member("c", 3), new.clone()];
        let (voters, nodes) = (set(&[1, 2, 3]), set(&[1, 2, 3]));
        assert_eq!(next_step(1, &voters, &nodes, &members, &set(&[])), Step::CatchUp(new.clone()));
        // A learner from an earlier round catches up again before it votes.
        assert_eq!(next_step(1, &voters, &set(&[1, 2, 3, 4]), &members, &set(&[])), Step::CatchUp(new));
        assert_eq!(
            next_step(1, &voters, &set(&[1, 2, 3, 4]), &members, &set(&[4])),
            Step::SetVoters(set(&[1, 2, 3, 4]))
        );
    }

    #[test]
    fn a_leaving_member_is_voted_out_then_forgotten() {
        let leaving = Member { leaving: true, ..member("c", 3) };
        let members = [member("a", 1), member("b", 2), leaving.clone()];
        let all = set(&[1, 2, 3]);
        assert_eq!(next_step(1, &all, &all, &members, &set(&[])), Step::SetVoters(set(&[1, 2])));
        // Kept as a learner by an earlier change: dropped.
        assert_eq!(next_step(1, &set(&[1, 2]), &all, &members, &set(&[])), Step::DropLearners(set(&[3])));
        assert_eq!(next_step(1, &set(&[1, 2]), &set(&[1, 2]), &members, &set(&[])), Step::Forget(leaving));
    }

    #[test]
    fn a_leaving_leader_hands_over_first() {
        let members = [Member { leaving: true, ..member("a", 1) }, member("b", 2), member("c", 3)];
        let all = set(&[1, 2, 3]);
        assert_eq!(next_step(1, &all, &all, &members, &set(&[])), Step::HandOver(2));
        // The next leader takes it from there.
        assert_eq!(next_step(2, &all, &all, &members, &set(&[])), Step::SetVoters(set(&[2, 3])));
    }

    #[test]
    fn a_leaving_leader_with_no_voter_to_hand_to_brings_the_new_member_in_first() {
        let new = Member { added: true, ..member("b", 2) };
        let members = [Member { leaving: true, ..member("a", 1) }, new.clone()];
        assert_eq!(next_step(1, &set(&[1]), &set(&[1]), &members, &set(&[])), Step::CatchUp(new));
        assert_eq!(next_step(1, &set(&[1]), &set(&[1, 2]), &members, &set(&[2])), Step::SetVoters(set(&[2])));
    }

    #[test]
    fn a_wiped_member_back_under_a_new_id_replaces_its_old_id() {
        // Node c came back with id 7 (a Rejoin): its old id 3 is no member any more.
        let members = [member("a", 1), member("b", 2), Member { added: true, ..member("c", 7) }];
        let all = set(&[1, 2, 3]);
        let caught_up = set(&[7]);
        assert_eq!(next_step(1, &all, &set(&[1, 2, 3, 7]), &members, &caught_up), Step::SetVoters(set(&[1, 2, 7])));
        assert_eq!(
            next_step(1, &set(&[1, 2, 7]), &set(&[1, 2, 3, 7]), &members, &caught_up),
            Step::DropLearners(set(&[3]))
        );
    }
}
