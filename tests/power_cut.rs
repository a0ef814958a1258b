//! Durability against a simulated power cut: the log runs on a disk that
//! remembers what each fdatasync made durable; the image a power cut would
//! leave (unsynced bytes lost, the first unsynced sector torn) is recovered
//! with the real file code, and every confirmed message must be there, intact.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use warren::store::format::Record;
use warren::store::io::{FileIo, SimDisk};
use warren::store::{FsyncPolicy, LogOptions, LogStore};

fn options(segment_size: u32) -> LogOptions {
    LogOptions { segment_size, fsync: FsyncPolicy::EveryBatch, skip_damaged: false }
}

fn wait_durable(store: &LogStore, position: u64) {
    let mut rx = store.durability();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rx.borrow().position < position {
        assert!(std::time::Instant::now() < deadline, "log never became durable up to {position}");
        std::thread::sleep(Duration::from_millis(1));
        let _ = rx.borrow_and_update();
    }
}

fn body_for(seed: u64, i: usize, rng: &mut fastrand::Rng) -> Vec<u8> {
    let len = rng.usize(0..3000);
    (0..len).map(|j| (seed as usize * 31 + i * 7 + j) as u8).collect()
}

#[test]
fn confirmed_messages_survive_a_power_cut_at_any_moment() {
    for seed in 0..40u64 {
        let disk = SimDisk::new();
        let (store, _) = LogStore::open(disk.clone(), options(32 * 1024)).expect("open");
        let queue = store.allocate_queue_id();
        let declared = store
            .define(Record::QueueDeclare { queue, name: "q".into(), auto_delete: false, arguments: Bytes::new() })
            .unwrap();
        wait_durable(&store, declared);

        let mut rng = fastrand::Rng::with_seed(seed);
        let mut published: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        let mut acked: HashMap<u64, u64> = HashMap::new();
        let count = rng.usize(20..300);
        // Odd seeds ack most messages, so segments die and reclaim deletes
        // and copies forward while the cut can happen.
        let ack_rate = if seed % 2 == 0 { 40 } else { 240 };
        for i in 0..count {
            let body = body_for(seed, i, &mut rng);
            let (id, end) = store.publish(&[queue], "", "k", &[0x10, 0, 2], &body).unwrap();
            published.push((id, end, body));
            if rng.u8(..) < ack_rate && !published.is_empty() {
                let (victim, _, _) = published[rng.usize(..published.len())];
                if let std::collections::hash_map::Entry::Vacant(e) = acked.entry(victim) {
                    store.ack(queue, &[victim]).unwrap();
                    e.insert(store.appended_position());
                }
            }
            if rng.u8(..) < 20 {
                std::thread::sleep(Duration::from_micros(rng.u64(0..300)));
            }
        }
        // The cut: what was durable at this instant must be in the image.
        let durable = store.durability().borrow().position;
        let image = disk.power_cut_image(seed);
        store.shutdown();

        let dir = tempfile::tempdir().unwrap();
        SimDisk::write_image(&image, dir.path()).unwrap();
        let io = Arc::new(FileIo::new(dir.path()).unwrap());
        let (recovered_store, recovered) = LogStore::open(io, options(32 * 1024)).expect("recover the image");
        let present: HashMap<u64, bool> = recovered
            .queue_messages()
            .remove(&queue)
            .unwrap_or_default()
            .into_iter()
            .map(|(id, _, d)| (id, d))
            .collect();
        assert!(recovered.definitions.queues.contains_key(&queue), "seed {seed}: the durable queue is gone");
        let mut confirmed = 0;
        for (id, end, body) in &published {
            // An ack issued after the cut's durable mark may still have made
            // it into the image (the writer keeps going until the image is
            // taken), so only never-acked messages must be present.
            let ack_durable = acked.get(id).is_some_and(|p| *p <= durable);
            if *end <= durable && !acked.contains_key(id) {
                confirmed += 1;
                assert!(
                    present.contains_key(id),
                    "seed {seed}: confirmed message {id} lost (durable {durable}, end {end})"
                );
            }
            if ack_durable {
                assert!(!present.contains_key(id), "seed {seed}: message {id} came back although its ack was durable");
            }
            if present.contains_key(id) {
                let read = recovered_store.read(*id).expect("read back");
                assert_eq!(&read.body[..], &body[..], "seed {seed}: message {id} has a different body");
            }
        }
        assert!(confirmed > 0 || durable <= declared, "seed {seed}: the test confirmed nothing");
        recovered_store.shutdown();
    }
}

#[test]
fn a_failed_fsync_stops_the_log_and_is_never_retried() {
    let disk = SimDisk::new();
    let (store, _) = LogStore::open(disk.clone(), options(64 * 1024)).expect("open");
    let queue = store.allocate_queue_id();
    let p = store
        .define(Record::QueueDeclare { queue, name: "q".into(), auto_delete: false, arguments: Bytes::new() })
        .unwrap();
    wait_durable(&store, p);
    disk.fail_syncs.store(true, std::sync::atomic::Ordering::Relaxed);
    let (_, end) = store.publish(&[queue], "", "k", &[0, 0], b"doomed").unwrap();
    let mut rx = store.durability();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !rx.borrow_and_update().failed {
        assert!(std::time::Instant::now() < deadline, "the failure was not reported");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(rx.borrow().position < end, "a message whose fdatasync failed was reported durable");
    // Even once the disk "recovers", the log refuses writes until a restart.
    disk.fail_syncs.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(store.publish(&[queue], "", "k", &[0, 0], b"later").is_err());
    assert!(store.ack(queue, &[1]).is_err());
}
