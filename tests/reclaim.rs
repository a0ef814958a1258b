//! Reclaim: disk use follows live data. Dead segments are deleted, and a
//! mostly dead oldest segment has its live messages copied forward.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use warren::store::format::Record;
use warren::store::io::{FileIo, LogIo};
use warren::store::{FsyncPolicy, LogOptions, LogStore};

const SEGMENT: u32 = 16 * 1024;

fn open(dir: &std::path::Path) -> (Arc<LogStore>, warren::store::Recovered, Arc<FileIo>) {
    let io = Arc::new(FileIo::new(dir).unwrap());
    let options =
        LogOptions { segment_size: SEGMENT, fsync: FsyncPolicy::EveryBatch, skip_damaged: false, ..Default::default() };
    let (store, recovered) = LogStore::open(io.clone(), options).unwrap();
    (store, recovered, io)
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn declare(store: &LogStore) -> u32 {
    let queue = store.allocate_queue_id();
    store
        .define(Record::QueueDeclare {
            queue,
            vhost: "/".into(),
            name: "q".into(),
            auto_delete: false,
            arguments: Bytes::new(),
        })
        .unwrap();
    queue
}

#[test]
fn an_idle_log_whose_queues_are_empty_keeps_only_its_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, io) = open(dir.path());
    let queue = declare(&store);
    let body = vec![7u8; 1000];
    let ids: Vec<u64> = (0..200).map(|_| store.publish(&[queue], "", "k", &[], &body).unwrap().0).collect();
    wait_for("several segments", || io.list().unwrap().len() >= 5);
    store.ack(queue, &ids).unwrap();
    // One more small append so a writer batch runs after the acks are accounted.
    store.delivered(queue, &[]).unwrap();
    wait_for("only the active segment left", || io.list().unwrap().len() == 1);
    store.shutdown();
    let (_, recovered, _) = open(dir.path());
    assert!(recovered.messages.is_empty());
    assert!(recovered.definitions.queues.contains_key(&queue), "the queue definition must survive segment deletion");
}

#[test]
fn a_long_lived_message_is_copied_forward_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, io) = open(dir.path());
    let queue = declare(&store);
    let (stuck, _) = store.publish(&[queue], "ex", "stuck.key", &[0x10, 0, 2], b"I stay").unwrap();
    let body = vec![1u8; 900];
    let others: Vec<u64> = (0..150).map(|_| store.publish(&[queue], "", "k", &[], &body).unwrap().0).collect();
    wait_for("several segments", || io.list().unwrap().len() >= 5);
    let first_segment = io.list().unwrap()[0];
    store.ack(queue, &others).unwrap();
    // Writer batches run reclaim; keep appending a little so they happen.
    wait_for("the first segment to be reclaimed", || {
        store.delivered(queue, &[]).unwrap();
        let segments = io.list().unwrap();
        !segments.contains(&first_segment) && segments.len() <= 2
    });
    let read = store.read(stuck).expect("the stuck message is still readable");
    assert_eq!(&read.body[..], b"I stay");
    assert_eq!(read.routing_key, "stuck.key");
    store.shutdown();

    let (store, recovered, _) = open(dir.path());
    let ids: Vec<u64> = recovered.queue_messages().remove(&queue).unwrap_or_default().iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![stuck], "exactly the unacked message comes back");
    assert_eq!(&store.read(stuck).unwrap().body[..], b"I stay");
}

#[test]
fn ids_are_not_reused_after_the_segments_that_held_them_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, io) = open(dir.path());
    let queue = declare(&store);
    let body = vec![3u8; 1000];
    let ids: Vec<u64> = (0..60).map(|_| store.publish(&[queue], "", "k", &[], &body).unwrap().0).collect();
    store.ack(queue, &ids).unwrap();
    wait_for("the published segments to be reclaimed", || {
        store.delivered(queue, &[]).unwrap();
        io.list().unwrap().len() == 1
    });
    store.shutdown();
    let (store, _, _) = open(dir.path());
    let (fresh, _) = store.publish(&[queue], "", "k", &[], b"new").unwrap();
    assert!(fresh > *ids.iter().max().unwrap(), "message id {fresh} reused after restart");
    store.shutdown();
    let (_, recovered, _) = open(dir.path());
    let present: Vec<u64> =
        recovered.queue_messages().remove(&queue).unwrap_or_default().iter().map(|m| m.id).collect();
    assert_eq!(present, vec![fresh], "an old ack record must not settle the new message");
}
