//! What operators see of the quorum queues' members: each member's Raft
//! figures (`rabbitmq-queues quorum_status`), and whether stopping this
//! node would leave a queue without a majority
//! (`rabbitmq-queues check_if_node_is_quorum_critical`, and the HTTP
//! API's `node-is-quorum-critical` health check).
//!
//! A member's figures are its own: the node asked for a queue's status
//! asks every member over the cluster port ([`KIND_MEMBER_STATUS`], the
//! figures as JSON), and a member it cannot ask gets a row that says why
//! (`nodedown`: its node does not answer; `noproc`: its node answers but
//! runs no member of the queue).

use std::time::Duration;

use openraft::{RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};

use super::quorum::QueueGroups;
use super::types::*;

/// The request kind of "your member's figures" (served by a queue group).
pub const KIND_MEMBER_STATUS: u8 = 9;
/// How long a member has to answer.
const ASK_WITHIN: Duration = Duration::from_secs(2);

/// The columns of a member's row, named as `rabbitmq-queues quorum_status`
/// names them (the keys of [`MemberStatus`] as JSON).
pub const COLUMNS: &[&str] = &[
    "Node Name",
    "Raft State",
    "Membership",
    "Last Log Index",
    "Last Written",
    "Last Applied",
    "Commit Index",
    "Snapshot Index",
    "Term",
];

/// One member of a quorum queue, with the columns (and their names) of
/// `rabbitmq-queues quorum_status`. Figures are log indexes and the term;
/// None where the member could not be asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    #[serde(rename = "Node Name")]
    pub node: String,
    /// leader, follower, candidate, learner or shutdown; nodedown or noproc
    /// when it could not be asked.
    #[serde(rename = "Raft State")]
    pub raft_state: String,
    /// voter, promotable (joining: a membership change under way) or
    /// non_voter (a learner being brought up to date).
    #[serde(rename = "Membership")]
    pub membership: String,
    #[serde(rename = "Last Log Index")]
    pub last_log_index: Option<u64>,
    /// The last index written durably: a member reports an entry appended
    /// only once the writer pass holding it was synced.
    #[serde(rename = "Last Written")]
    pub last_written: Option<u64>,
    #[serde(rename = "Last Applied")]
    pub last_applied: Option<u64>,
    #[serde(rename = "Commit Index")]
    pub commit_index: Option<u64>,
    #[serde(rename = "Snapshot Index")]
    pub snapshot_index: Option<u64>,
    #[serde(rename = "Term")]
    pub term: Option<u64>,
}

impl MemberStatus {
    /// The figures of the member whose metrics these are, on `node`.
    pub fn of(node: &str, m: &RaftMetrics<RaftConfig>) -> MemberStatus {
        let raft_state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        MemberStatus {
            node: node.to_string(),
            raft_state: raft_state.to_string(),
            membership: membership_of(m.membership_config.membership().get_joint_config(), m.id).to_string(),
            last_log_index: m.last_log_index,
            last_written: m.last_log_index,
            last_applied: m.last_applied.map(|id| id.index),
            commit_index: m.local_committed.map(|id| id.index),
            snapshot_index: m.snapshot.map(|id| id.index),
            term: Some(m.current_term),
        }
    }

    /// A member that could not be asked, and why.
    fn unasked(node: &str, why: &str) -> MemberStatus {
        MemberStatus {
            node: node.to_string(),
            raft_state: why.to_string(),
            membership: String::new(),
            last_log_index: None,
            last_written: None,
            last_applied: None,
            commit_index: None,
            snapshot_index: None,
            term: None,
        }
    }
}

/// What a member is in a group's membership, as Ra names it: `voter` in
/// every configuration of a joint one (or the only one), `promotable` in
/// the new configuration only (a change that adds it is not complete: it
/// does not yet count towards a majority on its own), `non_voter` in none
/// (a learner). One in the old configuration only is still a voter until
/// the change completes.
fn membership_of(configs: &[std::collections::BTreeSet<NodeId>], id: NodeId) -> &'static str {
    let in_last = configs.last().is_some_and(|c| c.contains(&id));
    if configs.iter().all(|c| c.contains(&id)) && !configs.is_empty() {
        "voter"
    } else if in_last {
        "promotable"
    } else if configs.iter().any(|c| c.contains(&id)) {
        "voter"
    } else {
        "non_voter"
    }
}

/// Every member of the replicated quorum queue `name` of `vhost`, in the
/// queue's order of members (None: no such queue).
pub async fn quorum_status(groups: &QueueGroups, vhost: &str, name: &str) -> Option<Vec<MemberStatus>> {
    let queue = groups.replicated(vhost, name)?;
    let (group, members) = (queue.replica.group, queue.replica.members.clone());
    let local = groups.metrics_of(group);
    let node = groups.node();
    let running: Vec<String> = node.peers().into_iter().filter(|p| p.running).map(|p| p.name).collect();
    let asks = members.iter().map(|member| {
        let (node, running, local) = (&node, &running, &local);
        async move {
            if member.id == node.identity.id {
                return match local {
                    Some(metrics) => MemberStatus::of(&member.name, metrics),
                    None => MemberStatus::unasked(&member.name, "noproc"),
                };
            }
            let Some(address) = super::transport::AddressBook::address_of(node.as_ref(), &member.name) else {
                return MemberStatus::unasked(&member.name, "nodedown");
            };
            let reply = node.transport.call(&address, member.id, KIND_MEMBER_STATUS, group, &[], ASK_WITHIN).await;
            match reply.ok().and_then(|bytes| serde_json::from_slice::<MemberStatus>(&bytes).ok()) {
                Some(status) => MemberStatus { node: member.name.clone(), ..status },
                None if running.contains(&member.name) => MemberStatus::unasked(&member.name, "noproc"),
                None => MemberStatus::unasked(&member.name, "nodedown"),
            }
        }
    });
    Some(futures_util::future::join_all(asks).await)
}

/// Why a queue has no member status to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoStatus {
    /// There is no such queue (a 404), rather than one without members.
    pub missing: bool,
    pub reason: String,
}

/// The members of quorum queue `name` of `vhost` as [`quorum_status`]
/// shows them, or why there are none: no such queue, not a quorum queue,
/// a single node (`groups` None), or a queue of a single member.
pub async fn queue_status(
    broker: &crate::broker::Broker,
    groups: Option<&QueueGroups>,
    vhost: &str,
    name: &str,
) -> Result<Vec<MemberStatus>, NoStatus> {
    let refuse = |missing, reason: String| Err(NoStatus { missing, reason });
    match broker.queue_row(vhost, name) {
        None => return refuse(true, format!("queue '{name}' in vhost '{vhost}' does not exist")),
        Some(row) if row.queue_type != "quorum" => {
            return refuse(false, format!("queue '{name}' in vhost '{vhost}' is not a quorum queue"));
        }
        Some(_) => {}
    }
    let Some(groups) = groups else {
        let reason =
            format!("quorum queue '{name}' in vhost '{vhost}' has no Raft group: this node is not in a cluster");
        return refuse(false, reason);
    };
    match quorum_status(groups, vhost, name).await {
        Some(members) => Ok(members),
        None => refuse(
            false,
            format!("quorum queue '{name}' in vhost '{vhost}' is not replicated (it has a single member)"),
        ),
    }
}

/// A quorum queue that stopping this node would leave without a majority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CriticalQueue {
    pub name: String,
    pub virtual_host: String,
    pub members: Vec<String>,
    pub online: Vec<String>,
}

/// The quorum queues with a member here whose online members, without
/// this node, would be fewer than a majority of their members.
pub fn quorum_critical(groups: &QueueGroups) -> Vec<CriticalQueue> {
    let me = groups.node().identity.name.clone();
    let mut critical: Vec<CriticalQueue> = groups
        .running_queues()
        .into_iter()
        .filter_map(|(group, vhost, name)| {
            let status = groups.status(group)?;
            let left = status.online.iter().filter(|n| **n != me).count();
            (left < majority(status.members.len())).then(|| CriticalQueue {
                name: name.to_string(),
                virtual_host: vhost.to_string(),
                members: status.members,
                online: status.online,
            })
        })
        .collect();
    critical.sort_by(|a, b| (&a.virtual_host, &a.name).cmp(&(&b.virtual_host, &b.name)));
    critical
}

/// How many of `members` make a majority.
pub fn majority(members: usize) -> usize {
    members / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_added_by_a_change_under_way_is_promotable_until_it_completes() {
        let set = |ids: &[NodeId]| ids.iter().copied().collect::<std::collections::BTreeSet<_>>();
        let joint = [set(&[1, 2, 3]), set(&[1, 2, 7])];
        assert_eq!([1, 3, 7, 9].map(|id| membership_of(&joint, id)), ["voter", "voter", "promotable", "non_voter"]);
        let uniform = [set(&[1, 2, 7])];
        assert_eq!([1, 7, 3].map(|id| membership_of(&uniform, id)), ["voter", "voter", "non_voter"]);
    }

    #[test]
    fn a_majority_is_more_than_half() {
        assert_eq!([1, 2, 3, 4, 5, 7].map(majority), [1, 2, 2, 3, 3, 4]);
    }

    #[test]
    fn a_status_row_has_rabbitmq_queues_column_names_and_round_trips() {
        let row = MemberStatus {
            node: "alpha@localhost".into(),
            raft_state: "leader".into(),
            membership: "voter".into(),
            last_log_index: Some(12),
            last_written: Some(12),
            last_applied: Some(11),
            commit_index: Some(11),
            snapshot_index: None,
            term: Some(3),
        };
        let json = serde_json::to_value(&row).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        let mut columns = COLUMNS.to_vec();
        columns.sort_unstable();
        assert_eq!(keys, columns, "serde_json's map is sorted");
        assert_eq!(serde_json::from_value::<MemberStatus>(json).unwrap(), row);
        let down = MemberStatus::unasked("beta@localhost", "nodedown");
        assert_eq!((down.raft_state.as_str(), down.term), ("nodedown", None));
    }
}
