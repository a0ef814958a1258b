//! What a parameter record and a Raft-state record hold: the kind codes
//! of their payloads (storage-format.md, "Record types").

/// What a Raft-state record changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum RaftStateKind {
    /// `value`: the vote (the Raft layer's bytes); `index` unused (0).
    Vote = 1,
    /// `value`: the last committed log id; `index` unused (0).
    Committed = 2,
    /// The entries at `index` and after are gone (a new leader overwrote a
    /// follower's uncommitted tail); `value` empty.
    Truncated = 3,
    /// The entries up to and including `index` are gone (they are in a
    /// snapshot); `value`: the last purged log id.
    Purged = 4,
    /// The group left this node: its entries and state are gone.
    Removed = 5,
    /// `value`: how far the group's state machine has applied the log, in
    /// the state machine's own bytes (for the metadata group: the last
    /// applied log id and membership); `index` unused (0). Written after
    /// the changes the applied entries made, so a log cut anywhere never
    /// holds a marker past what it holds of their effects.
    Applied = 6,
}

impl RaftStateKind {
    pub fn from_code(code: u8) -> Option<RaftStateKind> {
        use RaftStateKind::*;
        [Vote, Committed, Truncated, Purged, Removed, Applied].into_iter().find(|k| *k as u8 == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            RaftStateKind::Vote => "vote",
            RaftStateKind::Committed => "committed",
            RaftStateKind::Truncated => "truncated",
            RaftStateKind::Purged => "purged",
            RaftStateKind::Removed => "removed",
            RaftStateKind::Applied => "applied",
        }
    }
}

/// What a parameter record holds; its value is JSON in the shape of
/// RabbitMQ's definitions file for that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum ParameterKind {
    /// Key: the user name.
    User = 1,
    /// Key: user NUL vhost.
    Permission = 2,
    /// Key: user NUL vhost NUL exchange.
    TopicPermission = 3,
    /// Key: the vhost name.
    Vhost = 4,
    /// Key: vhost NUL policy name.
    Policy = 5,
    /// Key: vhost NUL policy name.
    OperatorPolicy = 6,
    /// Key: the vhost name.
    VhostLimits = 7,
    /// A stream consumer's tracked offset (format 5). Key: vhost NUL
    /// stream NUL consumer tag.
    StreamOffset = 8,
    /// This node's identity in a cluster (format 6). Key: `node`; value
    /// `{"name","id"}` (its node name and Raft id).
    Node = 9,
    /// A replicated quorum queue's Raft group and members (format 6, a
    /// node of a cluster). Key: `[vhost, queue]` as a JSON array; value
    /// `{"group", "members": [{"name","id"}]}`.
    QuorumMembers = 10,
}

impl ParameterKind {
    pub fn from_code(code: u8) -> Option<ParameterKind> {
        use ParameterKind::*;
        [
            User,
            Permission,
            TopicPermission,
            Vhost,
            Policy,
            OperatorPolicy,
            VhostLimits,
            StreamOffset,
            Node,
            QuorumMembers,
        ]
        .into_iter()
        .find(|k| *k as u8 == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            ParameterKind::User => "user",
            ParameterKind::Permission => "permission",
            ParameterKind::TopicPermission => "topic-permission",
            ParameterKind::Vhost => "vhost",
            ParameterKind::Policy => "policy",
            ParameterKind::OperatorPolicy => "operator-policy",
            ParameterKind::VhostLimits => "vhost-limits",
            ParameterKind::StreamOffset => "stream-offset",
            ParameterKind::Node => "node",
            ParameterKind::QuorumMembers => "quorum-members",
        }
    }
}
