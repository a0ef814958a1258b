//! Spreading quorum queues' leaders over the nodes
//! (`rabbitmq-queues rebalance`).
//!
//! Leaders pile up: a node that restarts comes back leading nothing, and a
//! queue declared under the `client-local` locator is led where its
//! client was. [`rebalance`] counts each running node's leaders among the
//! queues it is given and moves leadership (a Raft leader transfer, asked
//! of the current leader over the cluster port: [`KIND_LEAD_ELSEWHERE`])
//! from nodes above their share to the member with the fewest, so no node
//! leads more than its share rounded up where the members allow it.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use super::member_status::{MemberStatus, quorum_status};
use super::membership::Selection;
use super::quorum::QueueGroups;
use super::transport::AddressBook;
use super::types::NodeId;

/// The request kind of "hand your leadership to this member" (served by a
/// queue group; the payload is the member's Raft id, u64 little-endian).
pub const KIND_LEAD_ELSEWHERE: u8 = 10;
/// How long a leader has to answer, and the moves to be seen.
const MOVE_WITHIN: Duration = Duration::from_secs(5);

/// A node's count of quorum queue leaders after a rebalance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaderCount {
    #[serde(rename = "Node name")]
    pub node: String,
    #[serde(rename = "Number of quorum queue leaders")]
    pub leaders: usize,
}

/// A queue's members as [`rebalance`] weighs them.
struct Led {
    vhost: String,
    name: String,
    group: u64,
    /// Its leader's node name and Raft id.
    leader: Option<(String, NodeId)>,
    /// The voters that are running, by name, with their Raft ids.
    voters: Vec<(String, NodeId)>,
}

/// Which moves spread the leaders: given each queue's leader and the
/// voters it could move to, and the running nodes, the (queue index,
/// new leader) pairs. A node's share is the leaders over the running
/// nodes, rounded up; a queue moves from a node above it to its voter
/// with the fewest leaders, when that one has fewer than its share.
pub fn plan_moves(leaders: &[Option<String>], voters: &[Vec<String>], nodes: &[String]) -> Vec<(usize, String)> {
    let mut counts: BTreeMap<&str, usize> = nodes.iter().map(|n| (n.as_str(), 0)).collect();
    for leader in leaders.iter().flatten() {
        if let Some(count) = counts.get_mut(leader.as_str()) {
            *count += 1;
        }
    }
    let led = leaders.iter().flatten().count();
    let share = led.div_ceil(nodes.len().max(1));
    let mut moves = Vec::new();
    for (i, leader) in leaders.iter().enumerate() {
        let Some(leader) = leader.as_deref() else { continue };
        if counts.get(leader).is_none_or(|c| *c <= share) {
            continue;
        }
        let to = voters[i]
            .iter()
            .filter(|v| v.as_str() != leader)
            .filter_map(|v| counts.get(v.as_str()).map(|c| (*c, v)))
            .min();
        if let Some((_, to)) = to.filter(|(count, _)| *count < share) {
            *counts.entry(leader).or_default() -= 1;
            *counts.entry(to.as_str()).or_default() += 1;
            moves.push((i, to.clone()));
        }
    }
    moves
}

/// Moves the leaders of the selected quorum queues so each running node
/// leads its share; the count of leaders per node afterwards.
pub async fn rebalance(groups: &QueueGroups, selection: &Selection) -> Vec<LeaderCount> {
    let mut queues = Vec::new();
    for queue in super::membership::selected_queues(groups, selection) {
        let rows = quorum_status(groups, &queue.vhost, &queue.name).await.unwrap_or_default();
        let id_of = |name: &str| queue.replica.members.iter().find(|m| m.name == name).map(|m| m.id);
        let running = |r: &&MemberStatus| matches!(r.raft_state.as_str(), "leader" | "follower");
        let leader = rows.iter().find(|r| r.raft_state == "leader").map(|r| r.node.clone());
        queues.push(Led {
            vhost: queue.vhost.to_string(),
            name: queue.name.to_string(),
            group: queue.replica.group,
            leader: leader.and_then(|name| id_of(&name).map(|id| (name, id))),
            voters: rows
                .iter()
                .filter(running)
                .filter(|r| r.membership == "voter")
                .filter_map(|r| id_of(&r.node).map(|id| (r.node.clone(), id)))
                .collect(),
        });
    }
    let nodes = running_nodes(groups);
    let leaders: Vec<Option<String>> = queues.iter().map(|q| q.leader.as_ref().map(|(n, _)| n.clone())).collect();
    let voters: Vec<Vec<String>> = queues.iter().map(|q| q.voters.iter().map(|(n, _)| n.clone()).collect()).collect();
    let moves = plan_moves(&leaders, &voters, &nodes);
    let asks = moves.iter().map(|(i, to)| {
        let queue = &queues[*i];
        let to = queue.voters.iter().find(|(n, _)| n == to).map(|(_, id)| *id);
        async move {
            let (Some((from, from_id)), Some(to)) = (&queue.leader, to) else { return };
            if let Err(e) = lead_elsewhere(groups, queue.group, (from, *from_id), to).await {
                tracing::warn!("rebalance: quorum queue '{}' led by {from} did not move: {e}", queue.name);
            }
        }
    });
    futures_util::future::join_all(asks).await;
    // The moves take a moment: the counts are read once they show.
    let deadline = tokio::time::Instant::now() + MOVE_WITHIN;
    let mut counts = count_leaders(groups, &queues, &nodes).await;
    let expected = expected_counts(&leaders, &moves, &nodes);
    while counts != expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        counts = count_leaders(groups, &queues, &nodes).await;
    }
    counts
}

fn running_nodes(groups: &QueueGroups) -> Vec<String> {
    let node = groups.node();
    let mut nodes = vec![node.identity.name.clone()];
    nodes.extend(node.peers().into_iter().filter(|p| p.running).map(|p| p.name));
    nodes.sort();
    nodes
}

fn expected_counts(leaders: &[Option<String>], moves: &[(usize, String)], nodes: &[String]) -> Vec<LeaderCount> {
    let mut after: Vec<Option<String>> = leaders.to_vec();
    for (i, to) in moves {
        after[*i] = Some(to.clone());
    }
    tally(&after, nodes)
}

fn tally(leaders: &[Option<String>], nodes: &[String]) -> Vec<LeaderCount> {
    nodes
        .iter()
        .map(|n| LeaderCount { node: n.clone(), leaders: leaders.iter().flatten().filter(|l| *l == n).count() })
        .collect()
}

async fn count_leaders(groups: &QueueGroups, queues: &[Led], nodes: &[String]) -> Vec<LeaderCount> {
    let mut leaders = Vec::with_capacity(queues.len());
    for queue in queues {
        let rows = quorum_status(groups, &queue.vhost, &queue.name).await.unwrap_or_default();
        leaders.push(rows.into_iter().find(|r| r.raft_state == "leader").map(|r| r.node));
    }
    tally(&leaders, nodes)
}

/// Asks the leader `from` of `group` to hand its leadership to member `to`.
async fn lead_elsewhere(
    groups: &QueueGroups,
    group: u64,
    (from, from_id): (&str, NodeId),
    to: NodeId,
) -> io::Result<()> {
    let node = groups.node();
    if from_id == node.identity.id {
        return groups.lead_elsewhere_here(group, to).await;
    }
    let address = AddressBook::address_of(node.as_ref(), from)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no address for node {from}")))?;
    node.transport.call(&address, from_id, KIND_LEAD_ELSEWHERE, group, &to.to_le_bytes(), MOVE_WITHIN).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn leaders_piled_on_one_node_spread_to_one_each() {
        let leaders = vec![Some("a".to_string()); 3];
        let voters = vec![names(&["a", "b", "c"]); 3];
        let moves = plan_moves(&leaders, &voters, &names(&["a", "b", "c"]));
        assert_eq!(moves, vec![(0, "b".to_string()), (1, "c".to_string())]);
        assert_eq!(
            expected_counts(&leaders, &moves, &names(&["a", "b", "c"])).iter().map(|c| c.leaders).collect::<Vec<_>>(),
            [1, 1, 1]
        );
    }

    #[test]
    fn balanced_leaders_stay_and_a_queue_moves_only_to_its_own_voters() {
        let nodes = names(&["a", "b", "c"]);
        let leaders = vec![Some("a".to_string()), Some("b".to_string()), Some("c".to_string())];
        assert!(plan_moves(&leaders, &vec![names(&["a", "b", "c"]); 3], &nodes).is_empty());
        // Two queues on a, both with members a and b only: one moves to b.
        let leaders = vec![Some("a".to_string()), Some("a".to_string())];
        let voters = vec![names(&["a", "b"]); 2];
        assert_eq!(plan_moves(&leaders, &voters, &nodes), vec![(0, "b".to_string())]);
        // A queue without a leader, or whose other voters are down, stays.
        assert!(
            plan_moves(&[None, Some("a".into()), Some("a".into())], &[vec![], names(&["a"]), names(&["a"])], &nodes)
                .is_empty()
        );
    }
}
