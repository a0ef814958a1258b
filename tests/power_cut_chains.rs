//! Power cuts after power cuts: a chain runs a workload on the simulated
//! disk, cuts the power at a random moment (unsynced 4 KiB pages written
//! back in any order, whole, not at all or with a torn sector), recovers
//! the image, runs more workload on the recovered log (acks of recovered
//! messages, new publishes, dead-letter moves, compaction of the recovered
//! segments), cuts again, and so on. Every start must succeed; every
//! confirmed message never acked must be there with its body, in every
//! queue that holds it; no message whose ack was durable may come back;
//! and a recovered log must read the same way to everyone: the running
//! log's reads of every recovered message, compaction (which never finds
//! another record where its index points), and later readers of the
//! segments recovery kept, which walk them without a bad spot (a cut tail
//! leaves nothing that could be taken for records).
//!
//! `POWER_CUT_CHAINS=N` sets the number of chains (default 2,000, about
//! 10,000 starts); the ignored test runs 20,000 or more:
//! `POWER_CUT_CHAINS=20000 cargo test --release --test power_cut_chains -- --ignored --nocapture`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use warren::store::format::*;
use warren::store::io::{DiskImage, SimDisk};
use warren::store::recovery::recover;
use warren::store::walk::walk_segment;
use warren::store::{FsyncPolicy, LogOptions, LogStore, Recovered};

const SEGMENT: u32 = 16 * 1024;
/// The chain's two durable queues: the work queue, and the one its
/// dead-lettered messages go to.
const QUEUE_NAMES: [&str; 2] = ["work", "dead"];

fn options() -> LogOptions {
    LogOptions { segment_size: SEGMENT, fsync: FsyncPolicy::EveryBatch, ..Default::default() }
}

fn wait_durable(store: &LogStore, position: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.durable_position() < position {
        assert!(std::time::Instant::now() < deadline, "the log never became durable up to {position}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Every segment recovery kept walks without a bad spot once the log is
/// open: recovery left nothing (a cut tail included) that a later reader
/// could judge another way. (Compaction may have deleted some already.)
fn check_segments_read_clean(what: &str, disk: &SimDisk, recovered: &Recovered) {
    for segment in &recovered.segments {
        let Some(bytes) = disk.durable_bytes(segment.base) else { continue };
        let walk =
            walk_segment(&bytes).unwrap_or_else(|e| panic!("{what}: segment {} has no header: {e}", segment.base));
        assert!(
            walk.bad.is_none(),
            "{what}: segment {} still has a bad spot after recovery: {:?}",
            segment.base,
            walk.bad
        );
    }
}

/// What the chain promised so far: per queue, the messages it must still
/// hold after the next cut, and those it must never hold again.
#[derive(Default)]
struct Promises {
    /// Body of every message id the chain knows (ids of a torn tail may be
    /// given again after a cut: the newer body replaces the older).
    bodies: HashMap<u64, Vec<u8>>,
    /// (queue, id): confirmed, never acked from that queue.
    kept: HashSet<(u32, u64)>,
    /// (queue, id): an ack that was durable at a cut.
    gone: HashSet<(u32, u64)>,
    /// Dead-letter moves of a durable message: after the next cut it is in
    /// exactly one of the two places, never both, never neither.
    moves: Vec<((u32, u64), (u32, u64))>,
}

/// The moves of one link of a chain that the cut judges afterwards.
#[derive(Default)]
struct Link {
    /// (queue, id, position that must be durable): publishes and
    /// dead-letter arrivals.
    arrived: Vec<(u32, u64, u64)>,
    /// (queue, id, position just past the ack or later).
    acked: Vec<(u32, u64, u64)>,
    /// Dead-letter moves: (from, to).
    moves: Vec<((u32, u64), (u32, u64))>,
}

struct Chain {
    seed: u64,
    rng: fastrand::Rng,
    queues: [u32; 2],
    promises: Promises,
    tally: Tally,
}

/// What a run of chains went through, so that it is known to have cut
/// torn tails and compacted recovered logs, not only to have passed.
#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    starts: usize,
    /// Starts that cut a torn write off the newest segment.
    torn_tails: usize,
    /// Segments compaction deleted.
    compacted: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.starts += other.starts;
        self.torn_tails += other.torn_tails;
        self.compacted += other.compacted;
    }
}

impl Chain {
    fn new(seed: u64) -> Chain {
        Chain {
            seed,
            rng: fastrand::Rng::with_seed(seed),
            queues: [0; 2],
            promises: Promises::default(),
            tally: Tally::default(),
        }
    }

    /// Runs `cuts` links.
    fn run(mut self, cuts: usize) -> Tally {
        let mut image = None;
        for cut in 0..=cuts {
            let disk = match &image {
                None => SimDisk::new(),
                Some(image) => SimDisk::from_image(image),
            };
            let what = format!("chain {}, start {cut}", self.seed);
            let (store, recovered) = LogStore::open(disk.clone(), options())
                .unwrap_or_else(|e| panic!("{what}: the start was refused: {e}"));
            self.tally.starts += 1;
            self.tally.torn_tails += usize::from(recovered.torn_tail.is_some());
            if cut == 0 {
                self.declare(&store);
            } else {
                self.check_recovery(&what, &store, &recovered);
                check_segments_read_clean(&what, &disk, &recovered);
            }
            let cut_made = (cut < cuts).then(|| self.workload(&store, &disk));
            // Everything the workload appended after the cut is lost with
            // the power; stop the log before judging.
            store.shutdown();
            let stats = store.stats();
            assert_eq!(stats.unreadable_records, 0, "{what}: compaction found records other than its index expected");
            self.tally.compacted += stats.segments_deleted;
            let Some((link, durable, cut_image)) = cut_made else { break };
            self.judge(&link, durable);
            image = Some(cut_image);
        }
        self.tally
    }

    fn declare(&mut self, store: &LogStore) {
        let mut end = 0;
        for (i, name) in QUEUE_NAMES.iter().enumerate() {
            let queue = store.allocate_queue_id();
            self.queues[i] = queue;
            end = store
                .define(Record::QueueDeclare {
                    queue,
                    vhost: "/".into(),
                    name: (*name).into(),
                    auto_delete: false,
                    arguments: Bytes::new(),
                })
                .expect("declare");
        }
        wait_durable(store, end);
    }

    /// The recovered log holds what was promised, nothing acked durably,
    /// and bodies the running log reads back intact.
    fn check_recovery(&mut self, what: &str, store: &LogStore, recovered: &Recovered) {
        for queue in self.queues {
            assert!(recovered.definitions.queues.contains_key(&queue), "{what}: durable queue {queue} is gone");
        }
        let per_queue = recovered.queue_messages();
        let present: HashSet<(u32, u64)> =
            self.queues.iter().flat_map(|q| per_queue.get(q).into_iter().flatten().map(move |m| (*q, m.id))).collect();
        for key in &self.promises.kept {
            assert!(present.contains(key), "{what}: confirmed message {} of queue {} was lost", key.1, key.0);
        }
        for key in &present {
            assert!(
                !self.promises.gone.contains(key),
                "{what}: message {} came back to queue {} after a durable ack",
                key.1,
                key.0
            );
        }
        for (from, to) in &self.promises.moves {
            assert!(
                present.contains(from) != present.contains(to),
                "{what}: a dead-lettered message is in {} of its two places ({from:?} -> {to:?})",
                if present.contains(from) { "both" } else { "neither" }
            );
        }
        let ids: Vec<u64> = present.iter().map(|(_, id)| *id).collect::<HashSet<_>>().into_iter().collect();
        for (id, read) in ids.iter().zip(store.read_many(&ids)) {
            let message = read.unwrap_or_else(|e| panic!("{what}: recovered message {id} cannot be read: {e}"));
            let body =
                self.promises.bodies.get(id).unwrap_or_else(|| panic!("{what}: message {id} was never published"));
            assert_eq!(&message.body[..], &body[..], "{what}: message {id} came back with another body");
        }
        // What recovery found is durable now: it is the new promise.
        self.promises.kept = present;
    }

    /// Publishes, acks (recovered messages too), dead-letters and pauses at
    /// random, and takes the power-cut image at a random moment.
    fn workload(&mut self, store: &LogStore, disk: &SimDisk) -> (Link, u64, DiskImage) {
        let [work, dead] = self.queues;
        let mut link = Link::default();
        let mut live: Vec<(u32, u64)> = self.promises.kept.iter().copied().collect();
        live.sort_unstable();
        let steps = self.rng.usize(20..160);
        let cut_at = self.rng.usize(0..steps);
        let mut image = None;
        for step in 0..steps {
            if step == cut_at {
                image = Some(self.cut(store, disk));
            }
            match self.rng.u8(0..10) {
                // Publish to the work queue, now and then to both queues.
                0..5 => {
                    let len = self.rng.usize(0..1500);
                    let fill = self.rng.u8(..);
                    let body: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                    let queues: &[u32] = if self.rng.u8(0..8) == 0 { &[work, dead] } else { &[work] };
                    let (id, end) = store.publish(queues, "", "k", &[0x10, 0, 2], &body).expect("publish");
                    self.promises.bodies.insert(id, body);
                    for q in queues {
                        link.arrived.push((*q, id, end));
                        live.push((*q, id));
                    }
                }
                // Ack a live message, recovered ones included.
                5..8 if !live.is_empty() => {
                    let (queue, id) = live.swap_remove(self.rng.usize(..live.len()));
                    store.ack(queue, &[id]).expect("ack");
                    link.acked.push((queue, id, store.appended_position()));
                }
                // Dead-letter one from the work queue: a new message in the
                // other queue and the ack of the old one, in one group.
                8 if live.iter().any(|(q, _)| *q == work) => {
                    let candidates: Vec<usize> = (0..live.len()).filter(|i| live[*i].0 == work).collect();
                    let (_, from) = live.swap_remove(candidates[self.rng.usize(..candidates.len())]);
                    let body = self.promises.bodies.get(&from).cloned().unwrap_or_default();
                    let (id, end) = store
                        .publish_moving(&[dead], "", "dead", &[0x10, 0, 2], &body, Some((work, from)))
                        .expect("dead-letter");
                    self.promises.bodies.insert(id, body);
                    link.arrived.push((dead, id, end));
                    link.acked.push((work, from, end));
                    link.moves.push(((work, from), (dead, id)));
                    live.push((dead, id));
                }
                _ => std::thread::sleep(Duration::from_micros(self.rng.u64(0..600))),
            }
        }
        let (durable, image) = image.unwrap_or_else(|| (store.durable_position(), disk.power_cut_image_any_order(0)));
        (link, durable, image)
    }

    /// The power cut: mostly while a writer pass is written and not yet
    /// synced (the syncs are held until the image is taken), otherwise
    /// whenever it falls.
    fn cut(&mut self, store: &LogStore, disk: &SimDisk) -> (u64, DiskImage) {
        let image_seed = self.rng.u64(..);
        if self.rng.u8(0..5) == 0 {
            return (store.durable_position(), disk.power_cut_image_any_order(image_seed));
        }
        let held = disk.hold_syncs();
        let queue = self.queues[0];
        let body = vec![0x5a; self.rng.usize(1..3000)];
        let (id, _) = store.publish(&[queue], "", "k", &[0x10, 0, 2], &body).expect("publish");
        self.promises.bodies.insert(id, body);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !disk.has_unsynced() {
            assert!(std::time::Instant::now() < deadline, "the writer never wrote a pass");
            std::thread::sleep(Duration::from_micros(100));
        }
        let cut = (store.durable_position(), disk.power_cut_image_any_order(image_seed));
        drop(held);
        cut
    }

    /// After the cut: what must survive it and what must not come back.
    fn judge(&mut self, link: &Link, durable: u64) {
        let acked: HashSet<(u32, u64)> = link.acked.iter().map(|(q, id, _)| (*q, *id)).collect();
        // A moved message counts when it was durable where it came from:
        // recovered there, or published to it before the cut's mark.
        let durable_before: HashSet<(u32, u64)> = link
            .arrived
            .iter()
            .filter(|(_, _, end)| *end <= durable)
            .map(|(q, id, _)| (*q, *id))
            .chain(self.promises.kept.iter().copied())
            .collect();
        self.promises.moves = link
            .moves
            .iter()
            .filter(|(from, to)| durable_before.contains(from) && !acked.contains(to))
            .copied()
            .collect();
        for (queue, id, end) in &link.arrived {
            if *end <= durable && !acked.contains(&(*queue, *id)) {
                self.promises.kept.insert((*queue, *id));
            }
        }
        for (queue, id, end) in &link.acked {
            self.promises.kept.remove(&(*queue, *id));
            if *end <= durable {
                self.promises.gone.insert((*queue, *id));
            }
        }
    }
}

fn chains() -> u64 {
    std::env::var("POWER_CUT_CHAINS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

/// Runs `count` chains of 2 to 6 cuts, on both cores.
fn run_chains(count: u64) -> Tally {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut tally = Tally::default();
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= count {
                        return tally;
                    }
                    let cuts = 2 + (seed % 5) as usize;
                    tally += Chain::new(seed).run(cuts);
                }
            })
        })
        .collect();
    let mut tally = Tally::default();
    for worker in workers {
        tally += worker.join().expect("a chain failed");
    }
    tally
}

#[test]
fn every_start_of_a_chain_of_power_cuts_keeps_every_confirmed_message() {
    let count = chains();
    let tally = run_chains(count);
    println!("{count} chains: {tally:?}");
    assert!(tally.starts as u64 >= count * 3, "each chain starts at least three times: {tally:?}");
    assert!(tally.torn_tails as u64 >= count / 10, "few starts had a torn tail to cut: {tally:?}");
    assert!(tally.compacted >= count, "compaction deleted few segments: {tally:?}");
}

#[test]
#[ignore = "long: POWER_CUT_CHAINS=20000 cargo test --release --test power_cut_chains -- --ignored --nocapture"]
fn a_long_run_of_chained_power_cuts() {
    let count = chains().max(20_000);
    let started = std::time::Instant::now();
    let tally = run_chains(count);
    println!("{count} chains in {:.0} s: {tally:?}", started.elapsed().as_secs_f64());
}

/// The recovery a chain's start makes is also what a second reader of the
/// same image finds: two recoveries of one image agree on every message.
#[test]
fn two_recoveries_of_one_image_agree() {
    for seed in 0..40u64 {
        let mut chain = Chain::new(seed);
        let disk = SimDisk::new();
        let (store, _) = LogStore::open(disk.clone(), options()).expect("open");
        chain.declare(&store);
        let (_, _, image) = chain.workload(&store, &disk);
        store.shutdown();
        let first = recover(&*SimDisk::from_image(&image), false).expect("first recovery");
        let second_disk = SimDisk::from_image(&image);
        let second = recover(&*second_disk, false).expect("second recovery");
        let third = recover(&*second_disk, false).expect("a recovery of a recovered disk");
        let summary = |r: &Recovered| {
            let mut v: Vec<(u64, u64, u32)> = r.messages.iter().map(|(id, m)| (*id, m.base, m.offset)).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(summary(&first), summary(&second), "seed {seed}");
        assert_eq!(summary(&second), summary(&third), "seed {seed}: a recovered disk recovers differently");
    }
}
