//! Warren as a cluster: Raft groups replicated over the nodes.
//!
//! Built in steps (issue 21). What is here so far:
//!
//! - [`auth`]: the cookie every node of a cluster shares, and the
//!   handshake that proves it on every connection of the cluster port.
//! - [`types`]: the one Raft type configuration every group shares
//!   (openraft, pinned exactly: see Cargo.toml), and the group command
//!   and reply, which are bytes each kind of group reads its own way.
//! - [`codec`]: the bytes of entries, votes and log ids as Warren's log
//!   keeps them (storage-format.md, "The Raft layer's bytes").
//! - [`log_storage`]: a group's Raft log and vote, kept in the node's one
//!   write-ahead log (`store::raft`): an append is reported written once
//!   the writer pass holding it is durable, so one `fdatasync` covers
//!   every group's appends.
//! - [`machine`]: what every group's state machine shares (how far it
//!   applied, its membership, the applied marker in the log).
//! - [`quorum`]: the quorum queues' groups this node is a member of;
//!   [`queue_machine`]: their state machine; [`queue_commands`]: their
//!   commands' bytes.
//! - [`consumers`], [`sessions`] and [`session_wire`]: consumers and
//!   gets of a quorum queue made at its leader from any node.
//! - [`held_log`]: a quorum queue group's Raft entries snapshotted and
//!   purged by size (they are restated in every new segment).
//! - [`settles`]: acknowledged messages leaving a quorum queue, gathered
//!   into one settle command per group at a time.
//! - [`failover`]: a group whose leader's node is gone elects another at
//!   once instead of waiting out the lease.
//! - [`member_status`]: each member's Raft figures for operators, and
//!   whether stopping this node would leave a queue without a majority.
//! - [`membership`]: a quorum queue's members changed while it runs
//!   (add, delete, grow, shrink, a wiped node rejoining), and each group's
//!   leader bringing the group's Raft membership to them; [`leaders`]:
//!   spreading the queues' leaders over the nodes (rebalance).
//! - [`outside`]: a node that is no member of a quorum queue's group
//!   reaches the queue through its members.
//! - [`operator`]: warrenctl's cluster verbs (the `rabbitmq-queues`
//!   ones) through the control socket.
//! - [`propose`]: committing a command from any member (forwarded to the
//!   leader over the cluster port).
//! - [`metadata`]: the metadata group, which replicates the definitions
//!   every node shares (`broker::changes`) and applies them to each
//!   node's broker.
//! - [`node`]: this node: its name and Raft id (kept in its log), its
//!   cluster port, and which of its configured peers are running.
//! - [`wire`]: the node-to-node protocol's frames and the bytes of each
//!   Raft RPC; [`transport`]: the cluster port, one connection per pair of
//!   nodes carrying every group's RPCs, and each group's openraft network.

pub mod auth;
pub mod codec;
pub mod consumers;
pub mod failover;
pub mod held_log;
pub mod leaders;
pub mod log_storage;
pub mod machine;
pub mod member_status;
pub mod membership;
pub mod metadata;
pub mod node;
pub mod operator;
pub mod outside;
pub mod propose;
pub mod queue_commands;
pub mod queue_machine;
pub mod quorum;
pub mod session_wire;
pub mod sessions;
pub mod settles;
pub mod transport;
pub mod types;
pub mod wire;
