//! A quorum queue group's state machine: its commands applied to this
//! node's replica of the queue ([`QueueCommands`]), the proposals it
//! remembers so that a command committed twice is applied once, and the
//! queue's whole state as a snapshot for a member ([`QueueState`]).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

use super::machine::Commands;
use super::queue_commands::{EnqueuedMessage, POSITION_BITS, QueueCommand, QueueSnapshot, position};
use super::transport::SnapshotSource;
use super::types::*;
use crate::broker::replica_state::ReplicaContents;
use crate::broker::{Broker, message_from_parts};

/// A queue's state machine and its snapshot source, sharing what the
/// machine remembers of the proposals it applied.
pub(super) fn queue_machine(broker: &Arc<Broker>, vhost: &Arc<str>, name: &Arc<str>) -> (QueueCommands, QueueState) {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let commands =
        QueueCommands { broker: Arc::downgrade(broker), vhost: vhost.clone(), name: name.clone(), seen: seen.clone() };
    let state = QueueState { broker: Arc::downgrade(broker), vhost: vhost.clone(), name: name.clone(), seen };
    (commands, state)
}

/// A queue group's commands, applied to this node's replica of the queue.
pub(super) struct QueueCommands {
    broker: Weak<Broker>,
    vhost: Arc<str>,
    name: Arc<str>,
    /// Per proposing node, the proposals applied lately: an enqueue
    /// committed twice (proposed again after a leader change) is applied
    /// once. Kept in memory (and in snapshots sent to members): a resend
    /// across a restart of every member is applied twice (at least once).
    seen: Arc<Mutex<Seen>>,
}

/// Per proposing node, each proposal applied lately and the index of the
/// entry it was applied at.
type Seen = HashMap<u64, BTreeMap<u64, u64>>;

/// How many proposals of one node are remembered.
const SEEN_PER_NODE: usize = 1 << 16;

impl QueueCommands {
    /// Whether `proposal` of `origin` was applied before; remembers it as
    /// applied at `index`.
    fn seen_before(&mut self, origin: u64, proposal: u64, index: u64) -> bool {
        let mut seen = self.seen.lock();
        let seen = seen.entry(origin).or_default();
        if seen.contains_key(&proposal) {
            return true;
        }
        seen.insert(proposal, index);
        if seen.len() > SEEN_PER_NODE {
            seen.pop_first();
        }
        false
    }
}

impl Commands for QueueCommands {
    /// Every applied command's effect is a record of this node's log.
    const SNAPSHOTS: bool = true;

    fn install(&mut self, data: &[u8]) -> io::Result<()> {
        let snapshot = QueueSnapshot::decode(Bytes::copy_from_slice(data)).map_err(io::Error::other)?;
        let broker = self.broker.upgrade().ok_or_else(|| io::Error::other("the broker is gone"))?;
        // The snapshot's proposals were all applied at or before what it holds.
        let at = snapshot.applied >> POSITION_BITS;
        *self.seen.lock() = snapshot
            .seen
            .into_iter()
            .map(|(origin, proposals)| (origin, proposals.into_iter().map(|p| (p, at)).collect()))
            .collect();
        let messages = snapshot
            .messages
            .into_iter()
            .map(|(position, m)| {
                (position, Arc::new(message_from_parts(m.exchange, m.routing_key, m.properties, m.body)))
            })
            .collect();
        broker.install_replica(&self.vhost, &self.name, ReplicaContents { applied: snapshot.applied, messages });
        tracing::info!("quorum queue '{}' in vhost '{}': took the leader's snapshot", self.name, self.vhost);
        Ok(())
    }

    fn apply(&mut self, index: u64, command: &GroupCommand) -> GroupReply {
        let Some(broker) = self.broker.upgrade() else { return GroupReply::default() };
        match QueueCommand::decode(&command.0) {
            Ok(QueueCommand::Enqueue { origin, proposal, messages }) => {
                if !self.seen_before(origin, proposal, index) {
                    let placed = messages
                        .into_iter()
                        .enumerate()
                        .map(|(nth, m)| {
                            let message = message_from_parts(m.exchange, m.routing_key, m.properties, m.body);
                            (position(index, nth), Arc::new(message))
                        })
                        .collect();
                    broker.apply_replicated_enqueue(&self.vhost, &self.name, placed);
                }
                GroupReply(Bytes::from_static(APPLIED))
            }
            Ok(QueueCommand::Settle { positions }) => {
                broker.apply_replicated_settle(&self.vhost, &self.name, &positions);
                GroupReply(Bytes::from_static(APPLIED))
            }
            Err(e) => {
                // Every member reads the same bytes, so every member refuses them alike.
                tracing::error!("quorum queue '{}' in vhost '{}': {e}", self.name, self.vhost);
                GroupReply(Bytes::from_static(REFUSED))
            }
        }
    }
}

/// A queue's whole state on this node, for a snapshot sent to a member.
pub(super) struct QueueState {
    broker: Weak<Broker>,
    vhost: Arc<str>,
    name: Arc<str>,
    seen: Arc<Mutex<Seen>>,
}

impl SnapshotSource for QueueState {
    fn snapshot_bytes(&self) -> io::Result<Vec<u8>> {
        let broker = self.broker.upgrade().ok_or_else(|| io::Error::other("the broker is gone"))?;
        let contents = broker
            .replica_contents(&self.vhost, &self.name)
            .ok_or_else(|| io::Error::other(format!("no quorum queue '{}' here", self.name)))?
            .map_err(io::Error::other)?;
        // Read after the contents, so only the proposals applied at or
        // before what the contents hold: a later one must be applied again
        // by the member, not skipped as seen (its messages are not here).
        let seen = seen_upto(&self.seen.lock(), contents.applied >> POSITION_BITS);
        let messages = contents
            .messages
            .iter()
            .map(|(position, m)| {
                let m = EnqueuedMessage {
                    exchange: m.exchange.clone(),
                    routing_key: m.routing_key.clone(),
                    properties: m.properties.clone(),
                    body: m.body.clone(),
                };
                (*position, m)
            })
            .collect();
        Ok(QueueSnapshot { applied: contents.applied, seen, messages }.encode())
    }
}

/// A command's reply: applied, or refused (bytes no member can read).
pub(super) const APPLIED: &[u8] = &[0];
const REFUSED: &[u8] = &[1];

/// The proposals of `seen` applied at or before entry `upto`, per
/// proposing node: those a snapshot holding what was applied up to
/// `upto` may name as seen (a later one's messages are not in it).
fn seen_upto(seen: &Seen, upto: u64) -> Vec<(u64, Vec<u64>)> {
    seen.iter()
        .map(|(origin, proposals)| {
            (*origin, proposals.iter().filter(|(_, at)| **at <= upto).map(|(proposal, _)| *proposal).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_names_only_the_proposals_applied_at_or_before_what_it_holds() {
        let mut seen = Seen::new();
        seen.insert(7, BTreeMap::from([(100, 10), (101, 12), (102, 15)]));
        seen.insert(9, BTreeMap::from([(5, 16)]));
        let mut named = seen_upto(&seen, 12);
        named.sort();
        assert_eq!(named, [(7, vec![100, 101]), (9, vec![])]);
        let mut all = seen_upto(&seen, 16);
        all.sort();
        assert_eq!(all, [(7, vec![100, 101, 102]), (9, vec![5])]);
    }
}
