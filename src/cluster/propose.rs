//! Committing a command to a group from any of its members: through this
//! node's own Raft when it leads, else forwarded to the leader over the
//! cluster port ([`KIND_PROPOSE`]), whose reply is the index the command
//! was committed at and its state machine's reply. Shared by the metadata
//! group and the quorum queues' groups.

use std::io;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use openraft::Raft;
use openraft::error::ClientWriteError;
use openraft::storage::RaftStateMachine;

use super::node::ClusterNode;
use super::transport::AddressBook;
use super::types::*;
use super::wire::KIND_PROPOSE;

/// How long to wait before trying again when no leader is known.
pub const AGAIN: Duration = Duration::from_millis(100);

/// One attempt to commit `command` to `group` before `deadline`:
/// Ok((index, the state machine's reply)), or Err(how long to wait
/// before trying again).
pub async fn commit_once<SM>(
    raft: &Raft<RaftConfig, SM>,
    node: &ClusterNode,
    group: u64,
    command: &Bytes,
    deadline: tokio::time::Instant,
) -> Result<(u64, Bytes), Duration>
where
    SM: RaftStateMachine<RaftConfig>,
{
    // Bounded: a leader that cannot reach a majority waits for one.
    let write = raft.client_write(GroupCommand(command.clone()));
    let Ok(written) = tokio::time::timeout_at(deadline, write).await else { return Err(AGAIN) };
    let forward = match written {
        Ok(written) => return Ok((written.log_id.index, written.data.0)),
        Err(e) => match e.into_api_error() {
            Some(ClientWriteError::ForwardToLeader(f)) | Some(ClientWriteError::LogEntryDiscarded(f)) => f,
            _ => return Err(AGAIN),
        },
    };
    let (Some(leader_id), Some(leader)) = (forward.leader_id, forward.leader_node) else {
        // No leader known yet (an election is on): ask again shortly.
        return Err(AGAIN);
    };
    let address = node.address_of(&leader.addr);
    let Some(address) = address.filter(|_| leader_id != node.identity.id) else { return Err(AGAIN) };
    let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
    let reply = node.transport.call(&address, leader_id, KIND_PROPOSE, group, command, limit).await;
    reply.ok().and_then(|r| decode_forwarded(&r)).ok_or(AGAIN)
}

/// Serves a peer's forwarded command: commits it here if this node leads
/// (a follower refuses, and the peer asks again). The reply: the index it
/// was committed at (u64), then the state machine's reply.
pub async fn serve_forwarded<SM>(raft: &Raft<RaftConfig, SM>, command: Bytes) -> io::Result<Vec<u8>>
where
    SM: RaftStateMachine<RaftConfig>,
{
    let written = raft.client_write(GroupCommand(command)).await.map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(8 + written.data.0.len());
    out.put_u64_le(written.log_id.index);
    out.extend_from_slice(&written.data.0);
    Ok(out)
}

pub(super) fn decode_forwarded(bytes: &Bytes) -> Option<(u64, Bytes)> {
    let index = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    Some((index, bytes.slice(8..)))
}
