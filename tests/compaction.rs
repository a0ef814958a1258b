//! Compaction follows live data: a slow queue does not pin the segments
//! written after its messages, scattered survivors are gathered, many
//! queues and restarts keep exactly their messages, delivered marks travel
//! with copied messages, and definitions survive the deletion of any segment.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use warren::store::format::{BindingRecord, DestinationKind, Record, segment_file_name};
use warren::store::io::{FileIo, LogIo, SimDisk};
use warren::store::recovery::recover;
use warren::store::{FsyncPolicy, LogOptions, LogStore, Recovered};

fn options(segment_size: u32) -> LogOptions {
    LogOptions { segment_size, fsync: FsyncPolicy::Never, ..Default::default() }
}

fn open(dir: &Path, segment_size: u32) -> (Arc<LogStore>, Recovered) {
    let io = Arc::new(FileIo::new(dir).unwrap());
    LogStore::open(io, options(segment_size)).unwrap()
}

fn declare(store: &LogStore, name: &str) -> u32 {
    declare_in(store, "/", name)
}

fn declare_in(store: &LogStore, vhost: &str, name: &str) -> u32 {
    let queue = store.allocate_queue_id();
    let (vhost, name) = (vhost.into(), name.into());
    store.define(Record::QueueDeclare { queue, vhost, name, auto_delete: false, arguments: Bytes::new() }).unwrap();
    queue
}

/// Bytes the log directory's files take (segments and spare). A file the
/// log removes or renames while the directory is read takes no room.
fn files_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()
}

fn poll(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until everything appended so far is durable (written, with fsync = never).
fn settle(store: &LogStore) {
    let target = store.appended_position();
    poll("the log to be written", Duration::from_secs(20), || store.durability().borrow().position >= target);
}

fn queue_ids(recovered: &Recovered, queue: u32) -> Vec<(u64, bool)> {
    recovered.queue_messages().remove(&queue).unwrap_or_default().into_iter().map(|m| (m.id, m.delivered)).collect()
}

#[test]
fn a_slow_queue_does_not_pin_the_segments_after_it() {
    // The scenario: 4 MiB segments, 2,000 x 1 KB left in a queue
    // nobody consumes, then 200 MB published and acked through another.
    const SEGMENT: u32 = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), SEGMENT);
    let slow = declare(&store, "slow");
    let busy = declare(&store, "busy");
    let small = vec![7u8; 1000];
    let slow_ids: Vec<u64> = (0..2000).map(|_| store.publish(&[slow], "", "s", &[], &small).unwrap().0).collect();
    let big = vec![9u8; 4000];
    let mut worst = 0f64;
    for round in 0..50 {
        let ids: Vec<u64> = (0..1000).map(|_| store.publish(&[busy], "", "b", &[], &big).unwrap().0).collect();
        store.ack(busy, &ids).unwrap();
        if round % 10 == 9 {
            // Within the bound once compaction caught up with this round.
            let within = || {
                let stats = store.stats();
                let bound = (2 * stats.live_bytes).max(stats.live_bytes + 4 * SEGMENT as u64);
                let on_disk = files_bytes(dir.path());
                worst = worst.max(on_disk as f64 / bound as f64);
                on_disk <= bound
            };
            poll("the log to shrink within max(2 x live, live + 4 segments)", Duration::from_secs(30), within);
        }
    }
    let stats = store.stats();
    assert!(stats.published_bytes > 200_000_000, "{stats:?}");
    assert!(stats.segments_deleted > 40, "compaction deleted segments: {stats:?}");
    println!("worst disk/bound ratio seen at a check: {worst:.2}; {stats:?}");
    store.shutdown();
    let (_, recovered) = open(dir.path(), SEGMENT);
    let kept: Vec<u64> = queue_ids(&recovered, slow).into_iter().map(|m| m.0).collect();
    assert_eq!(kept, slow_ids, "the slow queue keeps every message, in order");
    assert!(queue_ids(&recovered, busy).is_empty(), "no acked message comes back");
}

#[test]
fn survivors_scattered_one_per_segment_are_gathered_and_keep_their_delivered_mark() {
    const SEGMENT: u32 = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), SEGMENT);
    let queue = declare(&store, "q");
    let body = vec![1u8; 2000];
    let mut survivors = Vec::new();
    let mut early = 0;
    for round in 0..60 {
        if round == 10 {
            early = store.appended_position();
        }
        // ~31 messages a segment; one of each segment's worth stays.
        let ids: Vec<u64> = (0..31).map(|_| store.publish(&[queue], "", "k", &[], &body).unwrap().0).collect();
        survivors.push(ids[15]);
        let dead: Vec<u64> = ids.iter().copied().filter(|id| *id != ids[15]).collect();
        store.ack(queue, &dead).unwrap();
    }
    // Half the survivors were handed to a consumer before the copy.
    let delivered: Vec<u64> = survivors.iter().copied().step_by(2).collect();
    store.delivered(queue, &delivered).unwrap();
    settle(&store);
    poll("the scattered survivors to be gathered", Duration::from_secs(20), || {
        store.delivered(queue, &[]).unwrap();
        let segments = FileIo::new(dir.path()).unwrap().list().unwrap();
        // Nothing of the first ten rounds' segments is left.
        segments.len() <= 6 && segments.iter().all(|base| *base >= early)
    });
    for id in &survivors {
        let read = store.read(*id);
        assert_eq!(&read.expect("a gathered message reads back").body[..], &body[..]);
    }
    store.shutdown();
    let (_, recovered) = open(dir.path(), SEGMENT);
    let expected: Vec<(u64, bool)> = survivors.iter().map(|id| (*id, delivered.contains(id))).collect();
    assert_eq!(queue_ids(&recovered, queue), expected, "every survivor, in order, redelivered where delivered");
}

/// Three queues, messages to one to three of them, acks and delivered marks
/// at random, on a disk that loses what was not synced in any page order:
/// every image taken while compaction runs recovers each queue exactly.
#[test]
fn many_queues_recover_exactly_from_cuts_taken_during_compaction() {
    for seed in 0..12u64 {
        let disk = SimDisk::new();
        let opts = LogOptions { segment_size: 32 * 1024, fsync: FsyncPolicy::EveryBatch, ..Default::default() };
        let (store, _) = LogStore::open(disk.clone(), opts).unwrap();
        let queues: Vec<u32> = (0..3).map(|i| declare(&store, &format!("q{i}"))).collect();
        let mut rng = fastrand::Rng::with_seed(seed);
        // Per queue: id -> (delivered, position of the publish's end).
        let mut held: Vec<BTreeMap<u64, (bool, u64)>> = vec![BTreeMap::new(); 3];
        let mut acked: Vec<HashMap<u64, u64>> = vec![HashMap::new(); 3];
        let mut images = Vec::new();
        for step in 0..600 {
            let targets: Vec<usize> = (0..3).filter(|_| rng.bool()).collect();
            if !targets.is_empty() {
                let body = vec![step as u8; rng.usize(10..1500)];
                let ids: Vec<u32> = targets.iter().map(|t| queues[*t]).collect();
                let (id, end) = store.publish(&ids, "", "k", &[], &body).unwrap();
                for t in targets {
                    held[t].insert(id, (false, end));
                }
            }
            for t in 0..3 {
                let Some(&id) = held[t].keys().nth(rng.usize(0..held[t].len().max(1))) else { continue };
                {
                    if rng.u8(..) < 200 {
                        held[t].remove(&id);
                        store.ack(queues[t], &[id]).unwrap();
                        acked[t].insert(id, store.appended_position());
                    } else if let Some(entry) = held[t].get_mut(&id) {
                        store.delivered(queues[t], &[id]).unwrap();
                        entry.0 = true;
                    }
                }
            }
            if step % 50 == 0 {
                // Let the writer and the compactor keep up.
                settle(&store);
            }
            if step % 100 == 99 {
                let durable = store.durability().borrow().position;
                images.push((disk.power_cut_image_any_order(seed * 100 + step), durable, held.clone(), acked.clone()));
            }
        }
        store.shutdown();
        assert!(store.stats().segments_deleted > 0, "seed {seed}: compaction ran");
        for (image, durable, held, acked) in images {
            let recovered = recover(&*SimDisk::from_image(&image), false).expect("recover");
            for (t, queue) in queues.iter().enumerate() {
                let present: HashMap<u64, bool> = queue_ids(&recovered, *queue).into_iter().collect();
                for (id, (_, end)) in &held[t] {
                    if *end <= durable {
                        assert!(present.contains_key(id), "seed {seed}: queue {t} lost message {id}");
                    }
                }
                for (id, ack) in &acked[t] {
                    if *ack <= durable {
                        assert!(!present.contains_key(id), "seed {seed}: queue {t}: acked message {id} came back");
                    }
                }
            }
        }
    }
}

fn binding(vhost: &str, source: &str, queue: &str, key: &str) -> BindingRecord {
    BindingRecord {
        vhost: vhost.into(),
        source: source.into(),
        destination_kind: DestinationKind::Queue,
        destination: queue.into(),
        routing_key: key.into(),
        arguments: Bytes::new(),
    }
}

#[test]
fn definitions_survive_the_deletion_of_any_segment() {
    const SEGMENT: u32 = 16 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions { compaction: false, ..options(SEGMENT) };
    let (store, _) = LogStore::open(Arc::new(FileIo::new(dir.path()).unwrap()), opts).unwrap();
    let filler = declare(&store, "filler");
    let body = vec![0u8; 3000];
    let mut queues = Vec::new();
    // Declarations and deletions spread over many segments, in two vhosts
    // (the same names in both).
    for i in 0..20 {
        let vhost = if i % 2 == 0 { "/" } else { "other" };
        let exchange = format!("ex{}", i / 2);
        store
            .define(Record::ExchangeDeclare {
                vhost: vhost.into(),
                name: exchange.clone(),
                kind: "topic".into(),
                auto_delete: false,
                internal: false,
                arguments: Bytes::new(),
            })
            .unwrap();
        let queue_name = format!("queue{}", i / 2);
        let queue = declare_in(&store, vhost, &queue_name);
        store.define(Record::BindingAdd(binding(vhost, &exchange, &queue_name, "a.#"))).unwrap();
        queues.push(queue);
        if i % 3 == 0 {
            store.define(Record::QueueDelete { queue }).unwrap();
            store.define(Record::ExchangeDelete { vhost: vhost.into(), name: exchange }).unwrap();
        } else if i % 3 == 1 {
            store.define(Record::BindingRemove(binding(vhost, &exchange, &queue_name, "a.#"))).unwrap();
        }
        let ids: Vec<u64> = (0..6).map(|_| store.publish(&[filler], "", "k", &[], &body).unwrap().0).collect();
        store.ack(filler, &ids).unwrap();
    }
    store.shutdown();
    let full = {
        let io = FileIo::new(dir.path()).unwrap();
        recover(&io, false).unwrap()
    };
    let segments = FileIo::new(dir.path()).unwrap().list().unwrap();
    assert!(segments.len() > 10, "definitions are spread over many segments: {segments:?}");
    // Any sealed segment may be deleted by compaction: what replay rebuilds
    // must not change.
    for victim in &segments[..segments.len() - 1] {
        let copy = tempfile::tempdir().unwrap();
        for base in &segments {
            if base != victim {
                let name = segment_file_name(*base);
                std::fs::copy(dir.path().join(&name), copy.path().join(&name)).unwrap();
            }
        }
        let io = FileIo::new(copy.path()).unwrap();
        let without = recover(&io, false).unwrap();
        let names = |r: &Recovered| -> (Vec<(String, String)>, Vec<u32>, usize) {
            (
                r.definitions.exchanges.keys().cloned().collect(),
                r.definitions.queues.keys().copied().collect(),
                r.definitions.bindings.len(),
            )
        };
        assert_eq!(names(&without), names(&full), "without segment {victim}");
    }
    let expected_queues = 1 + queues.len() - queues.len().div_ceil(3);
    assert_eq!(full.definitions.queues.len(), expected_queues);
    assert_eq!(full.definitions.bindings.len(), queues.len() / 3);
    // Same names in both vhosts, kept apart.
    assert_eq!(full.definitions.exchanges.len(), 20 - 20usize.div_ceil(3));
    let in_other = full.definitions.exchanges.keys().filter(|(v, _)| v == "other").count();
    assert!(in_other > 0 && in_other < full.definitions.exchanges.len(), "{:?}", full.definitions.exchanges.keys());
    assert!(full.definitions.bindings.iter().any(|b| b.vhost == "other"));
}
