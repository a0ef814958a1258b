//! Failover without waiting out the leader's lease.
//!
//! A follower that stops hearing its leader waits out the lease (the
//! election time-out's upper end) and then an election time-out of its
//! own before it asks for votes, and the other followers refuse it until
//! their leases run out too: over a second in all. RabbitMQ's Ra does
//! better because Erlang tells every node at once that a node went down.
//! Here the same news comes from the cluster port: when a connection to a
//! peer ends and its port no longer serves (`node::ClusterNode::peers_gone`),
//! the peer's process is gone, and nothing it leads will send another
//! heartbeat. So every group whose leader it was:
//!
//! 1. drops its lease here at once (openraft does so for a leader that
//!    hands over; a local hand-over request *to the gone leader itself*
//!    does just that and nothing else), so this member votes at once;
//! 2. has one member call a (pre-vote first) election: the members left
//!    take turns [`TURN`] apart, in an order turned by the group's id so
//!    that the leaders of many groups spread over the nodes left. A
//!    member whose log is behind loses its pre-vote, and the next one's
//!    turn comes. Once a leader is known, the turns left do nothing.
//!
//! Safety never rests on this: a vote is still a Raft vote. What the lease
//! buys is that a cut-off leader learns it is cut off (`quorum`'s
//! majority-answer check) before others elect; a peer whose port refuses
//! connections is not cut off but dead, so there is nothing to wait for.
//! A paused process still holds its port (the kernel accepts for it), so
//! it is not "gone", and its followers wait out the lease as before.

use std::time::Duration;

use openraft::Raft;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::raft::TransferLeaderRequest;
use openraft::storage::RaftStateMachine;

use super::types::*;

/// How far apart the members left call their elections.
const TURN: Duration = Duration::from_millis(100);
/// How long the first member waits before its call: the other members
/// learn of the same loss at about the same moment, and a pre-vote that
/// reaches one still holding its lease is refused.
const FIRST_TURN_AFTER: Duration = Duration::from_millis(20);

/// The position (0 first) of `me` among the voters of a group other than
/// `leader`, turned by `group`: every member computes the same order.
fn turn_of(voters: impl Iterator<Item = NodeId>, leader: NodeId, me: NodeId, group: u64) -> Option<usize> {
    let mut left: Vec<NodeId> = voters.filter(|id| *id != leader).collect();
    left.sort_unstable();
    left.dedup();
    let mine = left.iter().position(|id| *id == me)?;
    let shift = (group % left.len() as u64) as usize;
    Some((mine + left.len() - shift) % left.len())
}

/// If the leader `raft` knows is the node named `gone`, elects another
/// without waiting for the lease (see the module's doc).
pub async fn replace_gone_leader<SM>(raft: Raft<RaftConfig, SM>, group: u64, me: NodeId, gone: String)
where
    SM: RaftStateMachine<RaftConfig>,
{
    let metrics = raft.metrics().borrow_watched().clone();
    let Some(leader) = metrics.current_leader.filter(|leader| *leader != me) else { return };
    let membership = metrics.membership_config.membership();
    if membership.get_node(&leader).is_none_or(|node| node.addr != gone) {
        return;
    }
    let Some(turn) = turn_of(membership.voter_ids(), leader, me, group) else { return };
    let handed_to_itself = TransferLeaderRequest::new(metrics.vote, leader, None);
    if raft.handle_transfer_leader(handed_to_itself).await.is_err() {
        return;
    }
    tokio::time::sleep(FIRST_TURN_AFTER + TURN * turn as u32).await;
    if raft.metrics().borrow_watched().current_leader == Some(leader) {
        tracing::info!("group {group:x}: its leader {gone} is gone; calling an election");
        let _ = raft.trigger().elect(true).await;
    }
}

/// The next news on a broadcast channel (a peer found gone, a link
/// lost), skipping what was missed while lagging; None once no more can
/// come.
pub async fn next_news<T: Clone>(news: &mut tokio::sync::broadcast::Receiver<T>) -> Option<T> {
    loop {
        match news.recv().await {
            Ok(item) => return Some(item),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_left_has_a_turn_of_its_own_and_groups_turn_the_order() {
        let voters = [30, 10, 20];
        for group in 0..4u64 {
            let turns: Vec<usize> =
                [10, 20].iter().map(|me| turn_of(voters.into_iter(), 30, *me, group).unwrap()).collect();
            assert_eq!(turns.len(), 2);
            assert_ne!(turns[0], turns[1], "group {group}: {turns:?}");
            assert!(turns.iter().all(|t| *t < 2));
        }
        // Consecutive groups put a different member first.
        assert_eq!(turn_of(voters.into_iter(), 30, 10, 0), Some(0));
        assert_eq!(turn_of(voters.into_iter(), 30, 10, 1), Some(1));
        // The gone leader and a non-voter have no turn.
        assert_eq!(turn_of(voters.into_iter(), 30, 30, 0), None);
        assert_eq!(turn_of(voters.into_iter(), 30, 40, 0), None);
    }

    #[tokio::test]
    async fn a_port_that_refuses_or_closes_before_the_handshake_is_gone_and_a_silent_one_is_not() {
        use std::sync::Arc;
        use tokio::net::TcpListener;

        use super::super::auth::Cookie;
        use super::super::transport::Transport;

        let cookie = Arc::new(Cookie::from_secret(b"failover test"));
        let local = "127.0.0.1:0".parse().unwrap();
        let here = Transport::bind(local, cookie.clone(), 1).await.unwrap();
        let peer = Transport::bind(local, cookie, 2).await.unwrap();
        let within = Duration::from_millis(300);
        assert!(!here.is_gone(&peer.local_addr().to_string(), within).await, "a serving node is there");

        // A closed port refuses.
        let closed = TcpListener::bind(local).await.unwrap();
        let closed_addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        assert!(here.is_gone(&closed_addr, within).await, "a refusing port is gone");

        // A proxy before a dead node: accepts, then closes.
        let closing = TcpListener::bind(local).await.unwrap();
        let closing_addr = closing.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((socket, _)) = closing.accept().await {
                drop(socket);
            }
        });
        assert!(here.is_gone(&closing_addr, within).await, "a port closed before the handshake is gone");

        // A paused node (or a link dropping packets): accepted, then silence.
        let silent = TcpListener::bind(local).await.unwrap();
        let silent_addr = silent.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                sockets.push(socket);
            }
        });
        assert!(!here.is_gone(&silent_addr, within).await, "a silent port is not gone");
        held.abort();
    }
}
