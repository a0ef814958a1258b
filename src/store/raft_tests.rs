//! A group's log as records change it: appends, overwrites, truncation,
//! purges, removal, and the snapshot that restates it.

use bytes::Bytes;

use super::super::scan::{Scanned, read_record_keyed};
use super::*;

fn entry(group: u64, index: u64) -> Record {
    Record::RaftEntry { group, index, entry: Bytes::from(format!("g{group}e{index}")) }
}

fn state(group: u64, kind: RaftStateKind, index: u64, value: &str) -> Record {
    Record::RaftState { group, kind, index, value: Bytes::from(value.to_string()) }
}

fn indexes(logs: &RaftLogs, group: u64) -> Vec<u64> {
    logs.group(group).map_or_else(Vec::new, |g| g.entries(0..u64::MAX).map(|(i, _)| i).collect())
}

#[test]
fn appends_truncation_and_purges_leave_the_entries_raft_expects() {
    let mut logs = RaftLogs::default();
    for i in 1..=10 {
        logs.apply(&entry(1, i));
    }
    logs.apply(&state(1, RaftStateKind::Truncated, 8, ""));
    assert_eq!(indexes(&logs, 1), (1..=7).collect::<Vec<_>>());
    // A new leader's entry at an index held overwrites it and what follows.
    logs.apply(&Record::RaftEntry { group: 1, index: 6, entry: Bytes::from_static(b"new") });
    assert_eq!(indexes(&logs, 1), (1..=6).collect::<Vec<_>>());
    assert_eq!(logs.group(1).unwrap().last().map(|(i, e)| (i, e.clone())), Some((6, Bytes::from_static(b"new"))));
    logs.apply(&state(1, RaftStateKind::Purged, 3, "id3"));
    assert_eq!(indexes(&logs, 1), vec![4, 5, 6]);
    assert_eq!(logs.group(1).unwrap().purged, Some((3, Bytes::from_static(b"id3"))));
    // Ranges are clipped to what is held.
    let got: Vec<u64> = logs.group(1).unwrap().entries(2..6).map(|(i, _)| i).collect();
    assert_eq!(got, vec![4, 5]);
    // The bytes held follow every append, overwrite, truncation and purge.
    let held = |logs: &RaftLogs| logs.group(1).unwrap().entries(0..u64::MAX).map(|(_, e)| e.len()).sum::<usize>();
    assert_eq!(logs.group(1).unwrap().bytes(), held(&logs));
    assert_eq!(held(&logs), "g1e4".len() + "g1e5".len() + "new".len());
    logs.apply(&state(1, RaftStateKind::Purged, 50, "id50"));
    logs.apply(&entry(1, 51));
    assert_eq!(logs.group(1).unwrap().bytes(), "g1e51".len());
    logs.apply(&entry(2, 1));
    assert_eq!(logs.bytes(), "g1e51".len() + "g2e1".len(), "every group's");
    logs.apply(&state(1, RaftStateKind::Removed, 0, ""));
    assert_eq!(logs.bytes(), "g2e1".len());
}

#[test]
fn a_purge_past_the_end_starts_the_log_after_it() {
    // A follower that installed a snapshot beyond its log.
    let mut logs = RaftLogs::default();
    logs.apply(&entry(2, 1));
    logs.apply(&entry(2, 2));
    logs.apply(&state(2, RaftStateKind::Purged, 50, "id50"));
    assert!(logs.group(2).unwrap().is_empty());
    assert_eq!(logs.group(2).unwrap().end(), 51);
    logs.apply(&entry(2, 51));
    assert_eq!(indexes(&logs, 2), vec![51]);
}

#[test]
fn indexes_at_the_edge_of_u64_do_not_panic() {
    // Indexes come from the disk: none may overflow.
    let mut logs = RaftLogs::default();
    logs.apply(&entry(3, u64::MAX - 1));
    logs.apply(&state(3, RaftStateKind::Purged, u64::MAX, ""));
    logs.apply(&state(3, RaftStateKind::Truncated, 0, ""));
    logs.apply(&entry(3, 0));
    assert_eq!(indexes(&logs, 3), vec![0]);
    assert_eq!(logs.group(3).unwrap().entries(u64::MAX - 1..u64::MAX).count(), 0);
}

#[test]
fn removal_forgets_the_group() {
    let mut logs = RaftLogs::default();
    logs.apply(&entry(4, 1));
    logs.apply(&state(4, RaftStateKind::Vote, 0, "vote"));
    logs.apply(&entry(5, 1));
    logs.apply(&state(4, RaftStateKind::Removed, 0, ""));
    assert!(logs.group(4).is_none());
    assert_eq!(logs.groups().map(|(g, _)| g).collect::<Vec<_>>(), vec![5]);
}

#[test]
fn the_snapshot_restates_every_group_and_reads_back_the_same() {
    let mut logs = RaftLogs::default();
    for i in 1..=6 {
        logs.apply(&entry(7, i));
    }
    logs.apply(&state(7, RaftStateKind::Vote, 0, "term 3 for node 2"));
    logs.apply(&state(7, RaftStateKind::Committed, 0, "5"));
    logs.apply(&state(7, RaftStateKind::Purged, 2, "id2"));
    logs.apply(&state(7, RaftStateKind::Applied, 0, "applied to 4"));
    logs.apply(&state(8, RaftStateKind::Vote, 0, "term 1"));
    let mut bytes = Vec::new();
    logs.encode_snapshot(&mut bytes);
    let bytes = Bytes::from(bytes);
    let mut again = RaftLogs::default();
    let mut at = 0;
    while at < bytes.len() {
        let (record, len) = match read_record_keyed(&bytes, at, 0) {
            Scanned::Record { flags, record, len, .. } if flags == FLAG_SNAPSHOT => (record, len),
            other => panic!("not a snapshot record at {at}: {other:?}"),
        };
        again.apply(&record);
        // Applying a record twice changes nothing.
        again.apply(&record);
        at += len;
    }
    assert_eq!(again, logs);
    assert_eq!(again.group(7).and_then(|g| g.applied.clone()), Some(Bytes::from("applied to 4")));
}

#[test]
fn raft_records_round_trip_and_an_unknown_kind_is_an_error() {
    for record in [
        entry(9, 42),
        state(9, RaftStateKind::Purged, 41, "id41"),
        state(9, RaftStateKind::Removed, 0, ""),
        state(9, RaftStateKind::Applied, 0, "id40"),
    ] {
        let mut bytes = Vec::new();
        record.encode(0, &mut bytes);
        let payload = Bytes::copy_from_slice(&bytes[RECORD_PREFIX_LEN + 2..]);
        assert_eq!(Record::decode(record.type_code(), 0, payload).unwrap(), record);
    }
    let mut bytes = Vec::new();
    state(9, RaftStateKind::Vote, 0, "v").encode(0, &mut bytes);
    bytes[RECORD_PREFIX_LEN + 2 + 8] = 99;
    let payload = Bytes::copy_from_slice(&bytes[RECORD_PREFIX_LEN + 2..]);
    assert_eq!(Record::decode(TYPE_RAFT_STATE, 0, payload), Err(FormatError::RaftStateKind(99)));
}
