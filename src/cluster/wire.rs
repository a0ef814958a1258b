//! The node-to-node protocol on the cluster port: framing, and the bytes
//! of each Raft RPC and its reply (openraft's messages, encoded here with
//! the log's encodings of entries, votes and log ids).
//!
//! A frame is `length u32` (of what follows), `kind u8`, `group u64`,
//! `request id u64`, `to u64` (the Raft id of the node it is meant for; 0
//! for any), then the payload, all little-endian. A node refuses a request
//! meant for another id: a node whose data directory was wiped answers at
//! its old address under a new id, and must never answer for the old one
//! (it lost what the old one acknowledged). A reply has the request's
//! kind with bit 7 set and the request's id; a request that could not be
//! served gets kind [`KIND_FAILED`] with a UTF-8 reason. Requests
//! of many groups share one connection per pair of nodes; replies may come
//! back in any order.

use std::io;

use bytes::{BufMut, Bytes};
use openraft::StoredMembership;
use openraft::impls::BasicNode;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderError, TransferLeaderRequest,
    VoteRequest, VoteResponse,
};
use openraft::storage::SnapshotMeta;

use super::codec::*;
use super::types::*;

pub const KIND_APPEND: u8 = 1;
pub const KIND_VOTE: u8 = 2;
pub const KIND_PRE_VOTE: u8 = 3;
pub const KIND_SNAPSHOT: u8 = 4;
pub const KIND_TRANSFER_LEADER: u8 = 5;
// 6 is the node's "who are you" (`node::KIND_HELLO`).
/// A change forwarded to the metadata group's leader (`metadata`).
pub const KIND_PROPOSE: u8 = 7;
/// Set on a reply's kind.
pub const REPLY: u8 = 0x80;
/// The request was not served (no such group here, or the group failed).
pub const KIND_FAILED: u8 = 0xFF;
/// Bytes before a frame's payload: length, kind, group, request id, to.
pub const FRAME_HEADER: usize = 4 + 1 + 8 + 8 + 8;
/// `to` of a request any node may answer (who are you).
pub const TO_ANY: NodeId = 0;
/// The largest frame accepted: a snapshot of a deep queue is sent whole.
pub const MAX_FRAME: usize = 1 << 30;

pub type SnapshotMetadata = SnapshotMeta<LeaderId, NodeId, BasicNode>;

/// A frame's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub group: u64,
    pub request: u64,
    /// The node the request is meant for ([`TO_ANY`]: any); a reply's is
    /// the request's.
    pub to: NodeId,
}

/// Frames `payload` (a request or a reply).
pub fn frame(header: Header, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.put_u32_le((FRAME_HEADER - 4 + payload.len()) as u32);
    out.put_u8(header.kind);
    out.put_u64_le(header.group);
    out.put_u64_le(header.request);
    out.put_u64_le(header.to);
    out.extend_from_slice(payload);
    out
}

/// A frame's header fields, from the bytes after the length.
pub fn parse_header(header: &[u8; FRAME_HEADER - 4]) -> Header {
    let field = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(b)
    };
    Header { kind: header[0], group: field(1), request: field(9), to: field(17) }
}

fn put_option_log_id(out: &mut Vec<u8>, id: &Option<LogId>) {
    match id {
        None => out.put_u8(0),
        Some(id) => {
            out.put_u8(1);
            put_log_id(out, id);
        }
    }
}

fn read_option_log_id(r: &mut Reader<'_>) -> io::Result<Option<LogId>> {
    Ok(if read_bool(r, "log id")? { Some(read_log_id(r)?) } else { None })
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.put_u32_le(bytes.len() as u32);
    out.extend_from_slice(bytes);
}

fn read_bytes(r: &mut Reader<'_>, what: &str) -> io::Result<Bytes> {
    let len = r.u32(what)? as usize;
    Ok(Bytes::copy_from_slice(r.take(len, what)?))
}

pub fn encode_append(rpc: &AppendEntriesRequest<RaftConfig>) -> Vec<u8> {
    let mut out = Vec::new();
    put_vote(&mut out, &rpc.vote);
    put_option_log_id(&mut out, &rpc.prev_log_id);
    put_option_log_id(&mut out, &rpc.leader_commit);
    out.put_u32_le(rpc.entries.len() as u32);
    for entry in &rpc.entries {
        put_bytes(&mut out, &encode_entry(entry));
    }
    out
}

pub fn decode_append(bytes: &[u8]) -> io::Result<AppendEntriesRequest<RaftConfig>> {
    let mut r = Reader(bytes);
    let vote = read_vote(&mut r)?;
    let prev_log_id = read_option_log_id(&mut r)?;
    let leader_commit = read_option_log_id(&mut r)?;
    let count = r.u32("append")? as usize;
    let mut entries = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        entries.push(decode_entry(&read_bytes(&mut r, "append")?)?);
    }
    r.finish("append")?;
    Ok(AppendEntriesRequest { vote, prev_log_id, entries, leader_commit })
}

pub fn encode_append_reply(reply: &AppendEntriesResponse<RaftConfig>) -> Vec<u8> {
    let mut out = Vec::new();
    match reply {
        AppendEntriesResponse::Success => out.put_u8(0),
        AppendEntriesResponse::PartialSuccess(id) => {
            out.put_u8(1);
            put_option_log_id(&mut out, id);
        }
        AppendEntriesResponse::Conflict => out.put_u8(2),
        AppendEntriesResponse::HigherVote(vote) => {
            out.put_u8(3);
            put_vote(&mut out, vote);
        }
    }
    out
}

pub fn decode_append_reply(bytes: &[u8]) -> io::Result<AppendEntriesResponse<RaftConfig>> {
    let mut r = Reader(bytes);
    let reply = match r.u8("append reply")? {
        0 => AppendEntriesResponse::Success,
        1 => AppendEntriesResponse::PartialSuccess(read_option_log_id(&mut r)?),
        2 => AppendEntriesResponse::Conflict,
        3 => AppendEntriesResponse::HigherVote(read_vote(&mut r)?),
        _ => return Err(bad("append reply")),
    };
    r.finish("append reply")?;
    Ok(reply)
}

pub fn encode_vote_request(rpc: &VoteRequest<RaftConfig>) -> Vec<u8> {
    let mut out = Vec::new();
    put_vote(&mut out, &rpc.vote);
    put_option_log_id(&mut out, &rpc.last_log_id);
    out.put_u8(rpc.leadership_transfer as u8);
    out
}

pub fn decode_vote_request(bytes: &[u8]) -> io::Result<VoteRequest<RaftConfig>> {
    let mut r = Reader(bytes);
    let vote = read_vote(&mut r)?;
    let last_log_id = read_option_log_id(&mut r)?;
    let leadership_transfer = read_bool(&mut r, "vote request")?;
    r.finish("vote request")?;
    let mut rpc = VoteRequest::new(vote, last_log_id);
    rpc.leadership_transfer = leadership_transfer;
    Ok(rpc)
}

pub fn encode_vote_reply(reply: &VoteResponse<RaftConfig>) -> Vec<u8> {
    let mut out = Vec::new();
    put_vote(&mut out, &reply.vote);
    out.put_u8(reply.vote_granted as u8);
    put_option_log_id(&mut out, &reply.last_log_id);
    out
}

pub fn decode_vote_reply(bytes: &[u8]) -> io::Result<VoteResponse<RaftConfig>> {
    let mut r = Reader(bytes);
    let vote = read_vote(&mut r)?;
    let granted = read_bool(&mut r, "vote reply")?;
    let last_log_id = read_option_log_id(&mut r)?;
    r.finish("vote reply")?;
    Ok(VoteResponse::new(vote, last_log_id, granted))
}

/// A whole snapshot: the leader's vote, the snapshot's metadata (last log
/// id, last membership with its log id) and its data.
pub fn encode_snapshot(vote: &Vote, meta: &SnapshotMetadata, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + data.len());
    put_vote(&mut out, vote);
    put_option_log_id(&mut out, &meta.last_log_id);
    put_option_log_id(&mut out, meta.last_membership.log_id());
    put_membership(&mut out, meta.last_membership.membership());
    put_bytes(&mut out, data);
    out
}

pub fn decode_snapshot(bytes: &[u8]) -> io::Result<(Vote, SnapshotMetadata, Bytes)> {
    let mut r = Reader(bytes);
    let vote = read_vote(&mut r)?;
    let last_log_id = read_option_log_id(&mut r)?;
    let membership_log_id = read_option_log_id(&mut r)?;
    let membership = read_membership(&mut r)?;
    let data = read_bytes(&mut r, "snapshot")?;
    r.finish("snapshot")?;
    let last_membership = StoredMembership::new(membership_log_id, membership);
    Ok((vote, SnapshotMetadata { last_log_id, last_membership }, data))
}

pub fn encode_snapshot_reply(reply: &SnapshotResponse<RaftConfig>) -> Vec<u8> {
    let mut out = Vec::new();
    put_vote(&mut out, &reply.vote);
    out
}

pub fn decode_snapshot_reply(bytes: &[u8]) -> io::Result<SnapshotResponse<RaftConfig>> {
    Ok(SnapshotResponse::new(decode_vote(bytes)?))
}

pub fn encode_transfer(rpc: &TransferLeaderRequest<RaftConfig>) -> Vec<u8> {
    let mut out = Vec::new();
    put_vote(&mut out, rpc.from_leader());
    out.put_u64_le(*rpc.to_node_id());
    put_option_log_id(&mut out, &rpc.last_log_id().copied());
    out
}

pub fn decode_transfer(bytes: &[u8]) -> io::Result<TransferLeaderRequest<RaftConfig>> {
    let mut r = Reader(bytes);
    let from = read_vote(&mut r)?;
    let to = r.u64("transfer")?;
    let last_log_id = read_option_log_id(&mut r)?;
    r.finish("transfer")?;
    Ok(TransferLeaderRequest::new(from, to, last_log_id))
}

pub fn encode_transfer_reply(reply: &Result<(), TransferLeaderError<RaftConfig>>) -> Vec<u8> {
    let mut out = Vec::new();
    match reply {
        Ok(()) => out.put_u8(0),
        Err(TransferLeaderError::VoteChanged { expected, actual }) => {
            out.put_u8(1);
            put_vote(&mut out, expected);
            put_vote(&mut out, actual);
        }
        Err(TransferLeaderError::LogNotFlushed { expected, actual }) => {
            out.put_u8(2);
            put_option_log_id(&mut out, expected);
            put_option_log_id(&mut out, actual);
        }
    }
    out
}

pub fn decode_transfer_reply(bytes: &[u8]) -> io::Result<Result<(), TransferLeaderError<RaftConfig>>> {
    let mut r = Reader(bytes);
    let reply = match r.u8("transfer reply")? {
        0 => Ok(()),
        1 => Err(TransferLeaderError::VoteChanged { expected: read_vote(&mut r)?, actual: read_vote(&mut r)? }),
        2 => Err(TransferLeaderError::LogNotFlushed {
            expected: read_option_log_id(&mut r)?,
            actual: read_option_log_id(&mut r)?,
        }),
        _ => return Err(bad("transfer reply")),
    };
    r.finish("transfer reply")?;
    Ok(reply)
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
