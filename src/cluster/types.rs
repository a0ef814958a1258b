//! The Raft type configuration every group of a Warren cluster shares.
//!
//! One configuration for all groups: the metadata group and each quorum
//! queue's group differ in their state machines, not in their Raft types.
//! A command is opaque bytes to Raft; each kind of group decodes its own.

use std::fmt;

use bytes::Bytes;

/// A node's id in every group it is a member of.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Warren's Raft types: u64 node ids and terms, openraft's basic node
    /// (an address), commands and replies as bytes.
    pub RaftConfig:
        D = GroupCommand,
        R = GroupReply,
);

/// A leader's id: its term and node (openraft's default, "advanced" mode:
/// a term may have one leader, and the log id names it).
pub type LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, NodeId>;
pub type LogId = openraft::LogId<LeaderId>;
pub type Vote = openraft::impls::Vote<LeaderId>;
pub type EntryPayload = openraft::EntryPayload<GroupCommand, NodeId, openraft::impls::BasicNode>;
pub type Entry = openraft::Entry<LeaderId, EntryPayload>;
pub type Membership = openraft::Membership<NodeId, openraft::impls::BasicNode>;

/// A command to a group's state machine, encoded by the kind of group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupCommand(pub Bytes);

impl fmt::Display for GroupCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command of {} bytes", self.0.len())
    }
}

/// A state machine's reply to a command.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupReply(pub Bytes);

impl fmt::Display for GroupReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reply of {} bytes", self.0.len())
    }
}
