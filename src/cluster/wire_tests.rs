//! Each RPC and reply reads back as it was sent; a cut or altered payload
//! is an error, never a panic (the bytes come from the network).

use std::collections::{BTreeMap, BTreeSet};

use super::*;

fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
    LogId { leader_id: LeaderId { term, node_id }, index }
}

fn vote(term: u64, node_id: u64, committed: bool) -> Vote {
    Vote { leader_id: LeaderId { term, node_id }, committed }
}

fn membership() -> Membership {
    let nodes = BTreeMap::from([(1, BasicNode { addr: "127.0.0.1:1".into() }), (2, BasicNode::default())]);
    Membership::new(vec![BTreeSet::from([1, 2])], nodes).unwrap()
}

/// Every strict prefix of `bytes` fails to decode.
fn prefixes_fail<T>(bytes: &[u8], decode: impl Fn(&[u8]) -> io::Result<T>) {
    for cut in 0..bytes.len() {
        assert!(decode(&bytes[..cut]).is_err(), "a prefix of {cut} of {} bytes decoded", bytes.len());
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(decode(&longer).is_err(), "trailing bytes were accepted");
}

#[test]
fn append_entries_and_its_replies_round_trip() {
    let rpc = AppendEntriesRequest::<RaftConfig> {
        vote: vote(3, 1, true),
        prev_log_id: Some(log_id(2, 1, 9)),
        entries: vec![
            Entry { log_id: log_id(3, 1, 10), payload: EntryPayload::Blank },
            Entry { log_id: log_id(3, 1, 11), payload: EntryPayload::Normal(GroupCommand(Bytes::from_static(b"x"))) },
            Entry { log_id: log_id(3, 1, 12), payload: EntryPayload::Membership(membership()) },
        ],
        leader_commit: None,
    };
    let bytes = encode_append(&rpc);
    let back = decode_append(&bytes).unwrap();
    assert_eq!(
        (back.vote, back.prev_log_id, back.entries, back.leader_commit),
        (rpc.vote, rpc.prev_log_id, rpc.entries.clone(), rpc.leader_commit)
    );
    prefixes_fail(&bytes, decode_append);
    for reply in [
        AppendEntriesResponse::Success,
        AppendEntriesResponse::PartialSuccess(Some(log_id(3, 1, 11))),
        AppendEntriesResponse::PartialSuccess(None),
        AppendEntriesResponse::Conflict,
        AppendEntriesResponse::HigherVote(vote(4, 2, false)),
    ] {
        let bytes = encode_append_reply(&reply);
        assert_eq!(decode_append_reply(&bytes).unwrap(), reply);
        prefixes_fail(&bytes, decode_append_reply);
    }
}

#[test]
fn votes_snapshots_and_transfers_round_trip() {
    let mut request = VoteRequest::<RaftConfig>::new(vote(5, 2, false), Some(log_id(4, 1, 30)));
    request.leadership_transfer = true;
    let bytes = encode_vote_request(&request);
    assert_eq!(decode_vote_request(&bytes).unwrap(), request);
    prefixes_fail(&bytes, decode_vote_request);

    let reply = VoteResponse::<RaftConfig>::new(vote(5, 2, false), None, true);
    let bytes = encode_vote_reply(&reply);
    assert_eq!(decode_vote_reply(&bytes).unwrap(), reply);
    prefixes_fail(&bytes, decode_vote_reply);

    let meta = SnapshotMetadata {
        last_log_id: Some(log_id(4, 1, 30)),
        last_membership: StoredMembership::new(Some(log_id(1, 1, 2)), membership()),
    };
    let bytes = encode_snapshot(&vote(5, 1, true), &meta, b"state");
    let (got_vote, got_meta, data) = decode_snapshot(&bytes).unwrap();
    assert_eq!((got_vote, got_meta, &data[..]), (vote(5, 1, true), meta, &b"state"[..]));
    prefixes_fail(&bytes, decode_snapshot);

    let transfer = TransferLeaderRequest::<RaftConfig>::new(vote(6, 1, true), 3, Some(log_id(6, 1, 40)));
    let bytes = encode_transfer(&transfer);
    assert_eq!(decode_transfer(&bytes).unwrap(), transfer);
    prefixes_fail(&bytes, decode_transfer);
    for reply in [
        Ok(()),
        Err(TransferLeaderError::VoteChanged { expected: vote(6, 1, true), actual: vote(7, 2, false) }),
        Err(TransferLeaderError::LogNotFlushed { expected: Some(log_id(6, 1, 40)), actual: None }),
    ] {
        let bytes = encode_transfer_reply(&reply);
        assert_eq!(decode_transfer_reply(&bytes).unwrap(), reply);
        prefixes_fail(&bytes, decode_transfer_reply);
    }
}

#[test]
fn a_frame_carries_its_kind_group_request_and_addressee() {
    let header = Header { kind: KIND_VOTE | REPLY, group: 42, request: 7, to: 99 };
    let bytes = frame(header, b"payload");
    assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len() - 4);
    let raw: [u8; FRAME_HEADER - 4] = bytes[4..FRAME_HEADER].try_into().unwrap();
    assert_eq!(parse_header(&raw), header);
    assert_eq!(&bytes[FRAME_HEADER..], b"payload");
}
