//! The bytes of Raft entries, votes and log ids in Warren's log (the
//! `entry` and `value` fields of `raft.entry` and `raft.state` records;
//! storage-format.md, "The Raft layer's bytes"). Little-endian, like the
//! rest of the log. Decoding never panics: the bytes come from the disk.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use bytes::{BufMut, Bytes};
use openraft::impls::BasicNode;

use super::types::*;

const PAYLOAD_BLANK: u8 = 0;
const PAYLOAD_NORMAL: u8 = 1;
const PAYLOAD_MEMBERSHIP: u8 = 2;

pub(super) fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("undecodable Raft {what} in the log"))
}

/// Reads fields off the front of a byte slice.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize, what: &str) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(super) fn u8(&mut self, what: &str) -> io::Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    pub(super) fn u32(&mut self, what: &str) -> io::Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn u64(&mut self, what: &str) -> io::Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(b))
    }

    pub(super) fn finish(&self, what: &str) -> io::Result<()> {
        if self.0.is_empty() { Ok(()) } else { Err(bad(what)) }
    }
}

pub(super) fn put_log_id(out: &mut Vec<u8>, id: &LogId) {
    out.put_u64_le(id.leader_id.term);
    out.put_u64_le(id.leader_id.node_id);
    out.put_u64_le(id.index);
}

pub(super) fn read_log_id(r: &mut Reader<'_>) -> io::Result<LogId> {
    let (term, node_id, index) = (r.u64("log id")?, r.u64("log id")?, r.u64("log id")?);
    Ok(LogId { leader_id: LeaderId { term, node_id }, index })
}

/// A log id: term u64, leader node u64, index u64.
pub fn encode_log_id(id: &LogId) -> Bytes {
    let mut out = Vec::with_capacity(24);
    put_log_id(&mut out, id);
    out.into()
}

pub fn decode_log_id(bytes: &[u8]) -> io::Result<LogId> {
    let mut r = Reader(bytes);
    let id = read_log_id(&mut r)?;
    r.finish("log id")?;
    Ok(id)
}

/// A vote: term u64, node u64, committed u8 (1 once a quorum granted it).
pub fn encode_vote(vote: &Vote) -> Bytes {
    let mut out = Vec::with_capacity(17);
    put_vote(&mut out, vote);
    out.into()
}

pub fn decode_vote(bytes: &[u8]) -> io::Result<Vote> {
    let mut r = Reader(bytes);
    let vote = read_vote(&mut r)?;
    r.finish("vote")?;
    Ok(vote)
}

pub(super) fn put_vote(out: &mut Vec<u8>, vote: &Vote) {
    out.put_u64_le(vote.leader_id.term);
    out.put_u64_le(vote.leader_id.node_id);
    out.put_u8(vote.committed as u8);
}

pub(super) fn read_vote(r: &mut Reader<'_>) -> io::Result<Vote> {
    let (term, node_id) = (r.u64("vote")?, r.u64("vote")?);
    let committed = read_bool(r, "vote")?;
    Ok(Vote { leader_id: LeaderId { term, node_id }, committed })
}

pub(super) fn read_bool(r: &mut Reader<'_>, what: &str) -> io::Result<bool> {
    match r.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(bad(what)),
    }
}

/// An entry: its log id, then the payload kind u8 (0 blank, 1 a command,
/// 2 a membership) and for a command its bytes (the rest), for a
/// membership its configurations (u32 count, each a u32 count of u64 node
/// ids) and its nodes (u32 count, each a u64 id and a u16-long UTF-8
/// address).
pub fn encode_entry(entry: &Entry) -> Bytes {
    let mut out = Vec::with_capacity(32);
    put_log_id(&mut out, &entry.log_id);
    match &entry.payload {
        EntryPayload::Blank => out.put_u8(PAYLOAD_BLANK),
        EntryPayload::Normal(command) => {
            out.reserve(1 + command.0.len());
            out.put_u8(PAYLOAD_NORMAL);
            out.extend_from_slice(&command.0);
        }
        EntryPayload::Membership(membership) => {
            out.put_u8(PAYLOAD_MEMBERSHIP);
            put_membership(&mut out, membership);
        }
    }
    out.into()
}

pub(super) fn put_membership(out: &mut Vec<u8>, membership: &Membership) {
    let configs = membership.get_joint_config();
    out.put_u32_le(configs.len() as u32);
    for config in configs {
        out.put_u32_le(config.len() as u32);
        for node in config {
            out.put_u64_le(*node);
        }
    }
    let nodes: Vec<_> = membership.nodes().collect();
    out.put_u32_le(nodes.len() as u32);
    for (id, node) in nodes {
        out.put_u64_le(*id);
        let addr = node.addr.as_bytes();
        let len = addr.len().min(u16::MAX as usize);
        out.put_u16_le(len as u16);
        out.extend_from_slice(&addr[..len]);
    }
}

pub(super) fn read_membership(r: &mut Reader<'_>) -> io::Result<Membership> {
    let count = r.u32("membership")? as usize;
    let mut configs = Vec::with_capacity(count.min(16));
    for _ in 0..count {
        let members = r.u32("membership")? as usize;
        let mut config = BTreeSet::new();
        for _ in 0..members {
            config.insert(r.u64("membership")?);
        }
        configs.push(config);
    }
    let count = r.u32("membership")? as usize;
    let mut nodes = BTreeMap::new();
    for _ in 0..count {
        let id = r.u64("membership")?;
        let len = u16::from_le_bytes([r.u8("membership")?, r.u8("membership")?]) as usize;
        let addr = std::str::from_utf8(r.take(len, "membership")?).map_err(|_| bad("membership"))?;
        nodes.insert(id, BasicNode { addr: addr.to_string() });
    }
    Membership::new(configs, nodes).map_err(|_| bad("membership"))
}

pub fn decode_entry(bytes: &Bytes) -> io::Result<Entry> {
    let mut r = Reader(bytes);
    let log_id = read_log_id(&mut r)?;
    let payload = match r.u8("entry")? {
        PAYLOAD_BLANK => EntryPayload::Blank,
        PAYLOAD_NORMAL => {
            let at = bytes.len() - r.0.len();
            r.0 = &[];
            EntryPayload::Normal(GroupCommand(bytes.slice(at..)))
        }
        PAYLOAD_MEMBERSHIP => EntryPayload::Membership(read_membership(&mut r)?),
        _ => return Err(bad("entry")),
    };
    r.finish("entry")?;
    Ok(Entry { log_id, payload })
}

/// A state machine's applied marker (a `raft.state` kind 6 value): the
/// last applied log id (a u8 1 and the log id, or a u8 0), then the last
/// membership applied: its log id the same way, and the membership.
pub fn encode_applied(applied: Option<&LogId>, membership_at: Option<&LogId>, membership: &Membership) -> Bytes {
    let mut out = Vec::with_capacity(64);
    for id in [applied, membership_at] {
        match id {
            Some(id) => {
                out.put_u8(1);
                put_log_id(&mut out, id);
            }
            None => out.put_u8(0),
        }
    }
    put_membership(&mut out, membership);
    out.into()
}

/// Reads an applied marker: (last applied, membership's log id, membership).
pub fn decode_applied(bytes: &[u8]) -> io::Result<(Option<LogId>, Option<LogId>, Membership)> {
    let mut r = Reader(bytes);
    let mut ids = [None, None];
    for id in &mut ids {
        if read_bool(&mut r, "applied marker")? {
            *id = Some(read_log_id(&mut r)?);
        }
    }
    let membership = read_membership(&mut r)?;
    r.finish("applied marker")?;
    let [applied, at] = ids;
    Ok((applied, at, membership))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
        LogId { leader_id: LeaderId { term, node_id }, index }
    }

    #[test]
    fn entries_votes_and_log_ids_round_trip() {
        let members = BTreeMap::from([
            (1, BasicNode { addr: "127.0.0.1:25672".into() }),
            (2, BasicNode { addr: "127.0.0.1:25673".into() }),
            (3, BasicNode { addr: "127.0.0.1:25674".into() }),
        ]);
        let joint = vec![BTreeSet::from([1, 2]), BTreeSet::from([1, 2, 3])];
        let entries = [
            Entry { log_id: log_id(1, 1, 1), payload: EntryPayload::Blank },
            Entry {
                log_id: log_id(2, 3, 7),
                payload: EntryPayload::Normal(GroupCommand(Bytes::from_static(b"enqueue \x00\xff"))),
            },
            Entry {
                log_id: log_id(u64::MAX, 2, 9),
                payload: EntryPayload::Membership(Membership::new(joint, members).unwrap()),
            },
        ];
        for entry in entries {
            assert_eq!(decode_entry(&encode_entry(&entry)).unwrap(), entry);
        }
        for vote in [
            Vote { leader_id: LeaderId { term: 4, node_id: 2 }, committed: true },
            Vote { leader_id: LeaderId { term: 0, node_id: 0 }, committed: false },
        ] {
            assert_eq!(decode_vote(&encode_vote(&vote)).unwrap(), vote);
        }
        assert_eq!(decode_log_id(&encode_log_id(&log_id(3, 1, 42))).unwrap(), log_id(3, 1, 42));
    }

    #[test]
    fn applied_markers_round_trip_and_refuse_cut_bytes() {
        let members = Membership::new(
            vec![BTreeSet::from([1, 2])],
            BTreeMap::from([(1, BasicNode { addr: "a:1".into() }), (2, BasicNode { addr: "b:2".into() })]),
        )
        .unwrap();
        let marker = encode_applied(Some(&log_id(3, 2, 40)), Some(&log_id(1, 1, 0)), &members);
        assert_eq!(decode_applied(&marker).unwrap(), (Some(log_id(3, 2, 40)), Some(log_id(1, 1, 0)), members.clone()));
        let empty = encode_applied(None, None, &Membership::default());
        assert_eq!(decode_applied(&empty).unwrap(), (None, None, Membership::default()));
        for cut in 0..marker.len() {
            assert!(decode_applied(&marker[..cut]).is_err(), "a prefix of {cut} bytes decoded");
        }
    }

    #[test]
    fn bytes_that_are_not_an_entry_are_an_error_not_a_panic() {
        let good = encode_entry(&Entry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Membership(
                Membership::new(vec![BTreeSet::from([1])], BTreeMap::from([(1, BasicNode::default())])).unwrap(),
            ),
        });
        for cut in 0..good.len() {
            assert!(decode_entry(&good.slice(..cut)).is_err(), "a prefix of {cut} bytes decoded");
        }
        let mut unknown = good.to_vec();
        unknown[24] = 9;
        assert!(decode_entry(&Bytes::from(unknown)).is_err());
        // A membership whose nodes do not cover its configuration.
        let mut foreign = good.to_vec();
        foreign[24 + 1 + 4 + 4..24 + 1 + 4 + 4 + 8].copy_from_slice(&5u64.to_le_bytes());
        assert!(decode_entry(&Bytes::from(foreign)).is_err());
        assert!(decode_vote(&[0u8; 16]).is_err());
        assert!(decode_vote(&[2u8; 17]).is_err());
        assert!(decode_log_id(&[0u8; 25]).is_err());
    }
}
