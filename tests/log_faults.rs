//! The log under faults it must survive: a writer thread that dies, a full
//! disk, unreadable segments, reads racing compaction, a stale spare file,
//! and a message for more queues than a u16 counts.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use warren::store::format::Record;
use warren::store::io::{FileIo, LogIo, SimDisk};
use warren::store::{FsyncPolicy, LogOptions, LogStore, StoreError};

fn options(segment_size: u32) -> LogOptions {
    LogOptions { segment_size, fsync: FsyncPolicy::EveryBatch, ..Default::default() }
}

fn poll(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn declare(store: &LogStore) -> u32 {
    let queue = store.allocate_queue_id();
    let at = store
        .define(Record::QueueDeclare {
            queue,
            vhost: "/".into(),
            name: format!("q{queue}"),
            auto_delete: false,
            arguments: Bytes::new(),
        })
        .unwrap();
    poll("the declaration to be durable", || store.durability().borrow().position >= at);
    queue
}

#[test]
fn a_writer_thread_that_dies_fails_the_log_instead_of_hanging() {
    let disk = SimDisk::new();
    let (store, _) = LogStore::open(disk.clone(), options(64 * 1024)).unwrap();
    let queue = declare(&store);
    disk.panic_on_write.store(true, Ordering::Relaxed);
    let (_, end) = store.publish(&[queue], "", "k", &[], b"never written").unwrap();
    let mut durability = store.durability();
    poll("the log to report the failure", || durability.borrow_and_update().failed);
    assert!(durability.borrow().position < end, "nothing unwritten was reported durable");
    // As after a failed fsync: durable publishes and acks are refused.
    assert!(
        matches!(store.publish(&[queue], "", "k", &[], b"later"), Err(StoreError::Failed(why)) if why.contains("panicked"))
    );
    assert!(store.ack(queue, &[1]).is_err());
}

#[test]
fn a_full_disk_holds_writes_back_and_the_log_resumes_when_space_returns() {
    let disk = SimDisk::new();
    // Small segments: the next segment's creation hits the full disk too.
    let (store, _) = LogStore::open(disk.clone(), options(16 * 1024)).unwrap();
    let queue = declare(&store);
    disk.disk_full.store(true, Ordering::Relaxed);
    let body = vec![5u8; 3000];
    let published: Vec<(u64, u64)> = (0..20).map(|_| store.publish(&[queue], "", "k", &[], &body).unwrap()).collect();
    poll("the writer to notice the full disk", || store.out_of_space());
    let durable = store.durability().borrow().position;
    assert!(published.iter().all(|(_, end)| *end > durable), "nothing unwritten is confirmed");
    assert!(!store.durability().borrow().failed, "a full disk does not fail the log");
    // Acks still append (to memory) while the disk is full.
    store.ack(queue, &[published[0].0]).unwrap();
    disk.disk_full.store(false, Ordering::Relaxed);
    let last = published.last().unwrap().1;
    poll("the log to write again", || store.durability().borrow().position >= last);
    assert!(!store.out_of_space());
    store.shutdown();
    let image = disk.power_cut_image_any_order(1);
    let (_, recovered) = LogStore::open(SimDisk::from_image(&image), options(16 * 1024)).unwrap();
    let ids: Vec<u64> = recovered.queue_messages().remove(&queue).unwrap().iter().map(|m| m.id).collect();
    let expected: Vec<u64> = published[1..].iter().map(|p| p.0).collect();
    assert_eq!(ids, expected, "everything written once space returned, and the ack too");
}

#[test]
fn unreadable_segments_are_named_at_start_up_and_when_a_body_is_read() {
    let disk = SimDisk::new();
    let (store, _) = LogStore::open(disk.clone(), options(16 * 1024)).unwrap();
    let queue = declare(&store);
    let body = vec![1u8; 3000];
    let ids: Vec<u64> = (0..12).map(|_| store.publish(&[queue], "", "k", &[], &body).unwrap().0).collect();
    let end = store.appended_position();
    poll("the messages to be durable", || store.durability().borrow().position >= end);
    let first = disk.list().unwrap()[0];
    disk.unreadable.lock().insert(first);
    match store.read(ids[0]) {
        Err(StoreError::Corrupt { segment, offset, .. }) => {
            assert!(segment.contains(&format!("{first:020}.wal")), "{segment}");
            assert!(offset > 0);
        }
        other => panic!("expected a read error naming the segment, got {other:?}"),
    }
    store.shutdown();
    let err = LogStore::open(disk.clone(), options(16 * 1024)).err().expect("start-up refuses an unreadable segment");
    assert!(err.contains(&format!("{first:020}.wal")) && err.contains("cannot read"), "{err}");
}

#[test]
fn reads_racing_compaction_never_fail_and_leave_no_deleted_file_open() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FileIo::new(dir.path()).unwrap());
    let (store, _) = LogStore::open(io, options(32 * 1024)).unwrap();
    let queue = declare(&store);
    let keep: Vec<u64> = (0..20).map(|_| store.publish(&[queue], "", "k", &[], b"kept").unwrap().0).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, stop, keep) = (store.clone(), stop.clone(), keep.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            poll("the kept messages to be written", || store.is_written(*keep.last().unwrap()));
            while !stop.load(Ordering::Relaxed) {
                for id in &keep {
                    let m = store.read(*id).unwrap_or_else(|e| panic!("read of {id} failed during compaction: {e}"));
                    assert_eq!(&m.body[..], b"kept");
                    reads += 1;
                }
            }
            reads
        })
    };
    // Traffic that dies at once, so compaction keeps moving the kept ones.
    let body = vec![2u8; 2500];
    for _ in 0..300 {
        let ids: Vec<u64> = (0..10).map(|_| store.publish(&[queue], "", "k", &[], &body).unwrap().0).collect();
        store.ack(queue, &ids).unwrap();
    }
    poll("compaction to delete segments", || store.stats().segments_deleted > 20);
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("the reader saw no error");
    assert!(reads > 0);
    // No descriptor of this process points at a deleted segment file.
    let log_dir = dir.path().canonicalize().unwrap();
    let leaked: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.starts_with(&log_dir.display().to_string()) && p.ends_with("(deleted)"))
        .collect();
    assert!(leaked.is_empty(), "deleted segments still open: {leaked:?}");
}

#[test]
fn a_leftover_spare_of_another_size_is_replaced_so_segments_are_not_sparse() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spare.ready"), vec![0u8; 8192]).unwrap();
    let io = Arc::new(FileIo::new(dir.path()).unwrap());
    let (store, _) = LogStore::open(io.clone(), LogOptions { compaction: false, ..options(64 * 1024) }).unwrap();
    let queue = declare(&store);
    let body = vec![3u8; 4000];
    // Enough for several segments, published slowly enough for spares to be made.
    for _ in 0..8 {
        let before = io.list().unwrap().len();
        while io.list().unwrap().len() == before {
            store.publish(&[queue], "", "k", &[], &body).unwrap();
            let end = store.appended_position();
            poll("a write", || store.durability().borrow().position >= end);
        }
        poll("a spare of the right size", || {
            std::fs::metadata(dir.path().join("spare.ready")).is_ok_and(|m| m.len() == 64 * 1024)
        });
    }
    let segments = io.list().unwrap();
    let allocated = |base: &u64| {
        let meta = std::fs::metadata(io.path(*base)).unwrap();
        meta.blocks() * 512 >= meta.len()
    };
    // The first segments may predate the first spare; later ones are spares.
    assert!(segments[2..].iter().all(allocated), "later segments are preallocated spares");
}

#[test]
fn a_message_for_more_than_65535_durable_queues_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open = || LogStore::open(Arc::new(FileIo::new(dir.path()).unwrap()), options(64 << 20)).unwrap();
    let (store, _) = open();
    let queues: Vec<u32> = (0..70_000)
        .map(|i| {
            let queue = store.allocate_queue_id();
            let record = Record::QueueDeclare {
                queue,
                vhost: "/".into(),
                name: format!("q{i}"),
                auto_delete: false,
                arguments: Bytes::new(),
            };
            store.define(record).unwrap();
            queue
        })
        .collect();
    let (id, _) = store.publish(&queues, "fanout", "", &[], b"to everyone").unwrap();
    store.shutdown();
    let (store, recovered) = open();
    let per_queue = recovered.queue_messages();
    assert_eq!(per_queue.len(), queues.len(), "every queue holds the message");
    assert!(queues.iter().all(|q| per_queue[q].iter().map(|m| m.id).eq([id])));
    assert_eq!(store.read(id).unwrap().queues.len(), 70_000);
}

/// Message records of a segment as synced: id -> (offset, length).
fn message_records(disk: &SimDisk, base: u64) -> std::collections::BTreeMap<u64, (usize, usize)> {
    use warren::store::format::{Scanned, TYPE_MESSAGE, read_record_keyed};
    let bytes = Bytes::from(disk.durable_bytes(base).expect("segment"));
    let walk = warren::store::walk::walk_segment(&bytes).expect("segment header");
    walk.frames
        .iter()
        .filter(|f| f.kind == TYPE_MESSAGE)
        .filter_map(|f| match read_record_keyed(&bytes, f.offset, 0) {
            Scanned::Record { record: Record::Message(m), len, .. } => Some((m.id, (f.offset, len))),
            _ => None,
        })
        .collect()
}

/// The bytes where compaction's index points are no longer the message's
/// record (the file changed behind the log's back, as when a file system
/// put another file's pages there). Compaction must neither lose the
/// message nor bring back another: it copies nothing of that segment, keeps
/// it (not retried while the message is live), counts the record, and goes
/// on with other segments. `zeros`: the record is zeros (a start then
/// refuses the segment as damaged); otherwise it is another valid record of
/// the same length, that of a message acked since, which must stay dead.
fn compaction_meets_another_record(zeros: bool) {
    let disk = SimDisk::new();
    let (store, _) = LogStore::open(disk.clone(), options(16 * 1024)).unwrap();
    let queue = declare(&store);
    let body = |i: u8| vec![i; 1000];
    let ids: Vec<u64> = (0..40u8).map(|i| store.publish(&[queue], "", "k", &[], &body(i)).unwrap().0).collect();
    let end = store.appended_position();
    poll("the messages to be durable", || store.durable_position() >= end);
    let victim = disk.list().unwrap()[0];
    let records = message_records(&disk, victim);
    let here: Vec<u64> = records.keys().copied().collect();
    assert!(here.len() >= 5, "the first segment holds messages: {here:?}");
    let (keep, damaged, donor) = (here[0], here[1], here[2]);
    let (at, len) = records[&damaged];
    let replacement = if zeros {
        vec![0u8; len]
    } else {
        let (donor_at, donor_len) = records[&donor];
        assert_eq!(donor_len, len, "records of the same size");
        disk.durable_bytes(victim).unwrap()[donor_at..donor_at + len].to_vec()
    };
    disk.overwrite(victim, at, &replacement).unwrap();
    // Everything else of that segment dies: it is now worth compacting.
    let others: Vec<u64> = here.iter().copied().filter(|id| *id != keep && *id != damaged).collect();
    store.ack(queue, &others).unwrap();
    poll("compaction to meet the record", || store.stats().unreadable_records >= 1);
    match store.read(damaged) {
        Err(StoreError::Corrupt { segment, offset, .. }) => {
            assert!(segment.contains(&format!("{victim:020}.wal")), "{segment}");
            assert_eq!(offset as usize, at);
        }
        other => panic!("the damaged record read back as {other:?}"),
    }
    // Other segments are still compacted; this one stays, and is not retried.
    let deleted = store.stats().segments_deleted;
    for round in 0..200 {
        let more: Vec<u64> = (0..10).map(|_| store.publish(&[queue], "", "k", &[], &body(99)).unwrap().0).collect();
        store.ack(queue, &more).unwrap();
        if round % 20 == 19 {
            let end = store.appended_position();
            poll("the traffic to be durable", || store.durable_position() >= end);
        }
    }
    poll("compaction to delete other segments", || store.stats().segments_deleted > deleted + 3);
    assert!(disk.list().unwrap().contains(&victim), "the segment holding the unreadable record was deleted");
    assert_eq!(store.stats().unreadable_records, 1, "a kept segment is not compacted again while its messages live");
    assert_eq!(&store.read(keep).expect("the intact message").body[..], &body(0)[..]);
    let live: Vec<u64> = ids.iter().copied().filter(|id| !here.contains(id)).collect();
    for (id, read) in live.iter().zip(store.read_many(&live)) {
        assert!(read.is_ok(), "message {id} of another segment is readable");
    }
    store.shutdown();
    let restarted = LogStore::open(SimDisk::from_image(&disk.power_cut_image_any_order(7)), options(16 * 1024));
    if zeros {
        let err = restarted.err().expect("a start refuses the zeroed synced record");
        assert!(err.contains(&format!("{victim:020}.wal")) && err.contains("offset"), "{err}");
    } else {
        let (_, recovered) = restarted.expect("a start");
        let present: Vec<u64> = recovered.queue_messages().remove(&queue).unwrap().iter().map(|m| m.id).collect();
        assert!(present.contains(&keep), "the intact message of the kept segment is there");
        assert!(!present.contains(&donor), "the acked message whose bytes were copied came back");
        assert!(live.iter().all(|id| present.contains(id)), "messages of other segments are there");
    }
}

#[test]
fn compaction_that_finds_zeros_where_its_index_points_keeps_the_segment() {
    compaction_meets_another_record(true);
}

#[test]
fn compaction_that_finds_another_message_where_its_index_points_keeps_the_segment() {
    compaction_meets_another_record(false);
}
