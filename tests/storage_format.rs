//! The on-disk format as storage-format.md describes it: a segment built by
//! hand from the document, byte by byte, must decode and replay.

use std::sync::Arc;

use warren::store::format::*;
use warren::store::io::{FileIo, LogIo};
use warren::store::recovery::recover;

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Frames a record as the document says: len, crc over what follows, type, flags, payload.
fn record(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut content = vec![kind, flags];
    content.extend_from_slice(payload);
    let mut out = Vec::new();
    out.extend_from_slice(&(content.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc(&content).to_le_bytes());
    out.extend_from_slice(&content);
    out
}

fn str8(s: &str) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

fn bytes32(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

/// The log key the format 2 segments below use.
const KEY: u64 = 0x0123_4567_89AB_CDEF;

fn hand_built_segment(base: u64, capacity: u32) -> Vec<u8> {
    hand_built(1, base, capacity)
}

/// Publish time of message `id` in the format 3 segments below.
fn published(id: u64) -> u64 {
    1_700_000_000_000 + id
}

/// A segment of `version` 1 to 6 holding the same records (format 3
/// messages also carry their publish time; format 4 adds an exchange of
/// another vhost; format 5 a message of a stream, with its offset; format
/// 6 a Raft group's entries and state).
fn hand_built(version: u32, base: u64, capacity: u32) -> Vec<u8> {
    let mut seg = Vec::new();
    seg.extend_from_slice(b"WARRENLG");
    seg.extend_from_slice(&version.to_le_bytes());
    let header_len: usize = if version == 1 { 32 } else { 40 };
    seg.extend_from_slice(&(header_len as u32).to_le_bytes());
    seg.extend_from_slice(&base.to_le_bytes());
    seg.extend_from_slice(&capacity.to_le_bytes());
    if version >= 2 {
        seg.extend_from_slice(&KEY.to_le_bytes());
    }
    let header_crc = crc(&seg[0..header_len - 4]);
    seg.extend_from_slice(&header_crc.to_le_bytes());
    assert_eq!(seg.len(), header_len);
    let records = records(version);
    if version >= 2 {
        // One commit group holds them all: keyed CRC over key, type, flags, payload.
        let mut content = vec![11u8, 0];
        content.extend_from_slice(&(base + 40).to_le_bytes());
        content.extend_from_slice(&(records.len() as u32).to_le_bytes());
        content.push(1); // everything before was durable
        let mut keyed = KEY.to_le_bytes().to_vec();
        keyed.extend_from_slice(&content);
        seg.extend_from_slice(&(content.len() as u32).to_le_bytes());
        seg.extend_from_slice(&crc(&keyed).to_le_bytes());
        seg.extend_from_slice(&content);
    }
    seg.extend(records);
    seg.resize(capacity as usize, 0);
    seg
}

/// The AMQP table {x-queue-type: "stream"} (big-endian inside, as AMQP).
fn stream_arguments() -> Vec<u8> {
    let mut entry = str8("x-queue-type");
    entry.push(b'S');
    entry.extend_from_slice(&6u32.to_be_bytes());
    entry.extend_from_slice(b"stream");
    let mut table = (entry.len() as u32).to_be_bytes().to_vec();
    table.extend(entry);
    table
}

fn records(version: u32) -> Vec<u8> {
    let mut seg = Vec::new();
    // exchange.declare "logs", topic, not auto-delete, not internal, empty AMQP table (u32 0, big-endian).
    let mut p = str8("logs");
    p.extend_from_slice(&[3, 0]);
    p.extend_from_slice(&bytes32(&[0, 0, 0, 0]));
    seg.extend(record(1, 0, &p));
    // queue.declare id 7 "jobs", flags 0, empty table.
    let mut p = 7u32.to_le_bytes().to_vec();
    p.extend(str8("jobs"));
    p.push(0);
    p.extend(bytes32(&[0, 0, 0, 0]));
    seg.extend(record(3, 0, &p));
    // binding.add logs -> queue jobs, key "a.#".
    let mut p = str8("logs");
    p.push(1);
    p.extend(str8("jobs"));
    p.extend(str8("a.#"));
    p.extend(bytes32(&[0, 0, 0, 0]));
    seg.extend(record(5, 0, &p));
    if version >= 4 {
        // exchange.declare "orders", direct, in vhost "staging": flag 16
        // (VHOST), the vhost name first.
        let mut p = str8("staging");
        p.extend(str8("orders"));
        p.extend_from_slice(&[1, 0]);
        p.extend_from_slice(&bytes32(&[0, 0, 0, 0]));
        seg.extend(record(1, 16, &p));
    }
    if version >= 5 {
        // queue.declare id 9 "ticks", a stream: x-queue-type = "stream".
        let mut p = 9u32.to_le_bytes().to_vec();
        p.extend(str8("ticks"));
        p.push(0);
        p.extend(bytes32(&stream_arguments()));
        seg.extend(record(3, 0, &p));
    }
    // Three messages to queue 7; properties = AMQP flags 0x1000 (delivery-mode) + octet 2.
    for (id, body) in [(1u64, &b"first"[..]), (2, b"second"), (3, b"third")] {
        let mut p = id.to_le_bytes().to_vec();
        if version >= 3 {
            p.extend_from_slice(&published(id).to_le_bytes());
        }
        p.extend_from_slice(&1u16.to_le_bytes());
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend(str8("logs"));
        p.extend(str8("a.b"));
        p.extend(bytes32(&[0x10, 0x00, 2]));
        p.extend(bytes32(body));
        // Flag 8 (TIMED): the publish time follows the id.
        seg.extend(record(7, if version >= 3 { 8 } else { 0 }, &p));
    }
    if version >= 5 {
        // Message 4 of stream 9 at offset 41: flags 8 (TIMED) + 32 (STREAM),
        // the offset right after the publish time; no properties (flags 0).
        let mut p = 4u64.to_le_bytes().to_vec();
        p.extend_from_slice(&published(4).to_le_bytes());
        p.extend_from_slice(&41u64.to_le_bytes());
        p.extend_from_slice(&1u16.to_le_bytes());
        p.extend_from_slice(&9u32.to_le_bytes());
        p.extend(str8(""));
        p.extend(str8("ticks"));
        p.extend(bytes32(&[0, 0]));
        p.extend(bytes32(b"tick"));
        seg.extend(record(7, 8 | 32, &p));
    }
    // delivered: queue 7, message 3. ack: queue 7, message 2.
    for (kind, id) in [(9u8, 3u64), (8, 2)] {
        let mut p = 7u32.to_le_bytes().to_vec();
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&id.to_le_bytes());
        seg.extend(record(kind, 0, &p));
    }
    if version >= 6 {
        // Raft group 5: entries 1 to 3, a vote, entries 3 on truncated
        // (kind 3, index 3), then entries up to 1 purged (kind 4, index 1,
        // the last purged log id "lid1").
        for index in 1..=3u64 {
            let mut p = 5u64.to_le_bytes().to_vec();
            p.extend_from_slice(&index.to_le_bytes());
            p.extend(bytes32(format!("entry{index}").as_bytes()));
            seg.extend(record(14, 0, &p));
        }
        for (kind, index, value) in [(1u8, 0u64, &b"vote"[..]), (3, 3, b""), (4, 1, b"lid1")] {
            let mut p = 5u64.to_le_bytes().to_vec();
            p.push(kind);
            p.extend_from_slice(&index.to_le_bytes());
            p.extend(bytes32(value));
            seg.extend(record(15, 0, &p));
        }
    }
    seg
}

#[test]
fn a_segment_built_from_the_document_decodes_record_by_record() {
    for version in [1, 2, 3, 4, 5, 6] {
        decode_record_by_record(version);
    }
}

fn decode_record_by_record(version: u32) {
    let seg = bytes::Bytes::from(hand_built(version, 0, 8192));
    let header = SegmentHeader::decode(&seg).expect("header");
    let nonce = if version == 1 { 0 } else { KEY };
    assert_eq!(header, SegmentHeader { version, base: 0, capacity: 8192, nonce });
    let mut offset = header.len();
    let mut kinds = Vec::new();
    loop {
        match read_record_at(&seg, offset) {
            Scanned::Record { len, record, flags, .. } => {
                let timed = version >= 3 && matches!(record, Record::Message(_));
                let stream = matches!(&record, Record::Message(m) if m.queues == [9]);
                let other_vhost = record.vhost().is_some_and(|v| v != "/");
                assert_eq!(
                    flags,
                    if stream {
                        8 | 32
                    } else if timed {
                        8
                    } else if other_vhost {
                        16
                    } else {
                        0
                    }
                );
                if let Record::ExchangeDeclare { vhost, name, kind, .. } = &record {
                    let expected = if other_vhost { ("staging", "orders", "direct") } else { ("/", "logs", "topic") };
                    assert_eq!((vhost.as_str(), name.as_str(), kind.as_str()), expected);
                }
                if let Record::Message(m) = &record
                    && stream
                {
                    assert_eq!((m.id, m.published_ms, m.stream_offset), (4, Some(published(4)), Some(41)));
                    assert_eq!((m.routing_key.as_str(), &m.body[..]), ("ticks", &b"tick"[..]));
                } else if let Record::Message(m) = &record {
                    assert_eq!(m.stream_offset, None);
                    assert_eq!(m.published_ms, timed.then(|| published(m.id)));
                    assert_eq!(m.queues, vec![7]);
                    assert_eq!(m.exchange, "logs");
                    assert_eq!(m.routing_key, "a.b");
                    assert_eq!(&m.properties[..], &[0x10, 0x00, 2]);
                }
                kinds.push(record.type_code());
                offset += len;
            }
            Scanned::End { offset: end } => {
                assert_eq!(end, offset);
                break;
            }
            Scanned::Bad { offset, error } => panic!("bad record at {offset}: {error}"),
        }
    }
    let expected: &[u8] = match version {
        1 => &[1, 3, 5, 7, 7, 7, 9, 8],
        2 | 3 => &[11, 1, 3, 5, 7, 7, 7, 9, 8],
        4 => &[11, 1, 3, 5, 1, 7, 7, 7, 9, 8],
        5 => &[11, 1, 3, 5, 1, 3, 7, 7, 7, 7, 9, 8],
        _ => &[11, 1, 3, 5, 1, 3, 7, 7, 7, 7, 9, 8, 14, 14, 14, 15, 15, 15],
    };
    assert_eq!(kinds, expected, "format {version}");
}

#[test]
fn our_encoder_writes_exactly_the_documented_bytes() {
    let hand = hand_built(FORMAT_VERSION, 0, 8192);
    let mut ours = SegmentHeader::new(0, 8192, KEY).encode();
    let records_len = records(FORMAT_VERSION).len() as u32;
    encode_group(&mut ours, KEY, 40, records_len, true);
    Record::ExchangeDeclare {
        vhost: "/".into(),
        name: "logs".into(),
        kind: "topic".into(),
        auto_delete: false,
        internal: false,
        arguments: bytes::Bytes::from_static(&[0, 0, 0, 0]),
    }
    .encode(0, &mut ours);
    Record::QueueDeclare {
        queue: 7,
        vhost: "/".into(),
        name: "jobs".into(),
        auto_delete: false,
        arguments: bytes::Bytes::from_static(&[0, 0, 0, 0]),
    }
    .encode(0, &mut ours);
    Record::BindingAdd(BindingRecord {
        vhost: "/".into(),
        source: "logs".into(),
        destination_kind: DestinationKind::Queue,
        destination: "jobs".into(),
        routing_key: "a.#".into(),
        arguments: bytes::Bytes::from_static(&[0, 0, 0, 0]),
    })
    .encode(0, &mut ours);
    Record::ExchangeDeclare {
        vhost: "staging".into(),
        name: "orders".into(),
        kind: "direct".into(),
        auto_delete: false,
        internal: false,
        arguments: bytes::Bytes::from_static(&[0, 0, 0, 0]),
    }
    .encode(0, &mut ours);
    Record::QueueDeclare {
        queue: 9,
        vhost: "/".into(),
        name: "ticks".into(),
        auto_delete: false,
        arguments: bytes::Bytes::from(stream_arguments()),
    }
    .encode(0, &mut ours);
    for (id, body) in [(1u64, &b"first"[..]), (2, b"second"), (3, b"third")] {
        MessageDraft::new(0, Some(published(id)), None, &[7], ("logs", "a.b"), &[0x10, 0x00, 2], body)
            .encode(&mut ours, id);
    }
    MessageDraft::new(0, Some(published(4)), Some(41), &[9], ("", "ticks"), &[0, 0], b"tick").encode(&mut ours, 4);
    encode_id_record(&mut ours, TYPE_DELIVERED, 7, &[3]);
    encode_id_record(&mut ours, TYPE_ACK, 7, &[2]);
    for index in 1..=3u64 {
        let entry = bytes::Bytes::from(format!("entry{index}"));
        Record::RaftEntry { group: 5, index, entry }.encode(0, &mut ours);
    }
    for (kind, index, value) in [
        (RaftStateKind::Vote, 0, &b"vote"[..]),
        (RaftStateKind::Truncated, 3, b""),
        (RaftStateKind::Purged, 1, b"lid1"),
    ] {
        let value = bytes::Bytes::copy_from_slice(value);
        Record::RaftState { group: 5, kind, index, value }.encode(0, &mut ours);
    }
    assert_eq!(&hand[..ours.len()], &ours[..]);
}

#[test]
fn recovery_of_the_hand_built_segment_rebuilds_queue_state() {
    for version in [1, 2, 3, 4, 5, 6] {
        recover_hand_built(version);
    }
}

fn recover_hand_built(version: u32) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(segment_file_name(0)), hand_built(version, 0, 8192)).unwrap();
    let io = FileIo::new(dir.path()).unwrap();
    let recovered = recover(&io, false).expect("recover");
    assert!(recovered.definitions.exchanges.contains_key(&("/".to_string(), "logs".to_string())));
    let staging = recovered.definitions.exchanges.contains_key(&("staging".to_string(), "orders".to_string()));
    assert_eq!(staging, version >= 4, "format {version}");
    assert_eq!(recovered.definitions.bindings.len(), 1);
    let per_queue = recovered.queue_messages();
    // Message 2 was acked; message 3 was delivered before the "crash".
    let ids: Vec<(u64, bool)> = per_queue[&7].iter().map(|m| (m.id, m.delivered)).collect();
    assert_eq!(ids, vec![(1, false), (3, true)]);
    assert!(recovered.max_message_id >= 3 && recovered.max_queue_id >= 7);
    let stream: Vec<(u64, Option<u64>)> =
        per_queue.get(&9).into_iter().flatten().map(|m| (m.id, m.stream_offset)).collect();
    assert_eq!(stream, if version >= 5 { vec![(4, Some(41))] } else { vec![] }, "format {version}");
    let raft = recovered.raft.group(5);
    if version >= 6 {
        let raft = raft.expect("raft group 5");
        let entries: Vec<(u64, &[u8])> = raft.entries(0..u64::MAX).map(|(i, e)| (i, &e[..])).collect();
        assert_eq!(entries, vec![(2, &b"entry2"[..])]);
        assert_eq!(raft.vote.as_deref(), Some(&b"vote"[..]));
        assert_eq!(raft.purged.as_ref().map(|(i, id)| (*i, &id[..])), Some((1, &b"lid1"[..])));
    } else {
        assert!(raft.is_none());
    }
}

#[test]
fn a_zero_filled_tail_is_the_end_not_a_record() {
    let seg = bytes::Bytes::from(vec![0u8; 4096]);
    assert!(matches!(read_record_at(&seg, SEGMENT_HEADER_LEN), Scanned::End { .. }));
}

#[test]
fn torn_tail_in_the_newest_segment_is_cut_and_older_damage_is_refused() {
    // Newest segment: the last record is cut in half.
    let dir = tempfile::tempdir().unwrap();
    let mut seg = hand_built_segment(0, 8192);
    let end = seg.iter().rposition(|b| *b != 0).unwrap() + 1;
    for b in &mut seg[end - 10..] {
        *b = 0;
    }
    seg[end - 10] = 0xAB; // half-written garbage where the ack record was
    std::fs::write(dir.path().join(segment_file_name(0)), &seg).unwrap();
    let io = FileIo::new(dir.path()).unwrap();
    let recovered = recover(&io, false).expect("a torn tail is not damage");
    assert!(recovered.torn_tail.is_some());
    // The ack of message 2 was torn away: it is back.
    let ids: Vec<u64> = recovered.queue_messages()[&7].iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![1, 2, 3]);

    // The same damage in a segment followed by another is refused, naming segment and offset.
    let dir = tempfile::tempdir().unwrap();
    let mut first = hand_built_segment(0, 8192);
    first[SEGMENT_HEADER_LEN + 12] ^= 0x01; // inside the first record's payload
    std::fs::write(dir.path().join(segment_file_name(0)), &first).unwrap();
    std::fs::write(dir.path().join(segment_file_name(8192)), hand_built_segment(8192, 8192)).unwrap();
    let io = Arc::new(FileIo::new(dir.path()).unwrap());
    let err = recover(&*io, false).expect_err("mid-log damage must stop recovery");
    assert!(err.contains(&segment_file_name(0)) && err.contains("offset 32"), "{err}");
    // With the explicit option the damaged segment is set aside and the rest replays.
    let recovered = recover(&*io, true).expect("skip damaged");
    assert_eq!(recovered.set_aside.len(), 1);
    assert!(io.list().unwrap() == vec![8192]);
}

#[test]
fn a_segment_created_by_an_interrupted_roll_is_dropped_and_its_predecessor_is_the_newest() {
    // The crash hit the batch that opened segment 8192: its file exists but
    // holds only zeros, and segment 0's last record is torn.
    let dir = tempfile::tempdir().unwrap();
    let mut seg = hand_built_segment(0, 8192);
    let end = seg.iter().rposition(|b| *b != 0).unwrap() + 1;
    for b in &mut seg[end - 10..end] {
        *b = 0xEE;
    }
    std::fs::write(dir.path().join(segment_file_name(0)), &seg).unwrap();
    std::fs::write(dir.path().join(segment_file_name(8192)), vec![0u8; 8192]).unwrap();
    let io = FileIo::new(dir.path()).unwrap();
    let recovered = recover(&io, false).expect("an interrupted roll is not damage");
    assert_eq!(io.list().unwrap(), vec![0]);
    assert!(recovered.torn_tail.is_some());
}

#[test]
fn a_damaged_header_with_records_after_it_is_damage_not_a_fresh_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut seg = hand_built_segment(0, 8192);
    seg[3] ^= 0xFF; // inside the magic
    std::fs::write(dir.path().join(segment_file_name(0)), &seg).unwrap();
    let io = FileIo::new(dir.path()).unwrap();
    let err = recover(&io, false).expect_err("records behind a bad header must not be dropped silently");
    assert!(err.contains(&segment_file_name(0)), "{err}");
    assert_eq!(io.list().unwrap(), vec![0], "nothing was removed");
}
