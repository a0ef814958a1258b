//! The Raft groups' logs in Warren's one write-ahead log: what a group
//! appended and made durable (entries, vote, commit point, truncations,
//! purges and its state machine's applied marker) is what a restart finds, after compaction deleted the segments
//! that first held it, and after a power cut that kept only what was
//! synced, in any order of page write-back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use warren::store::format::RaftStateKind;
use warren::store::io::{LogIo, SimDisk};
use warren::store::raft::RaftGroupState;
use warren::store::recovery::recover;
use warren::store::{FsyncPolicy, LogOptions, LogStore};

fn options(segment_size: u32) -> LogOptions {
    LogOptions { segment_size, fsync: FsyncPolicy::EveryBatch, ..Default::default() }
}

fn wait_durable(store: &LogStore, position: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.durability().borrow().position < position {
        assert!(Instant::now() < deadline, "timed out waiting for position {position} to be durable");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn entry_bytes(group: u64, index: u64, term: u64) -> Bytes {
    Bytes::from(format!("group {group} index {index} term {term} {}", "x".repeat((index % 300) as usize)))
}

/// What a group should hold, kept beside the log by the test.
#[derive(Default, Clone, PartialEq, Debug)]
struct Model {
    vote: Option<Bytes>,
    committed: Option<Bytes>,
    purged: Option<(u64, Bytes)>,
    applied: Option<Bytes>,
    entries: BTreeMap<u64, Bytes>,
}

impl Model {
    fn state(&self) -> RaftGroupState {
        RaftGroupState {
            vote: self.vote.clone(),
            committed: self.committed.clone(),
            purged: self.purged.clone(),
            applied: self.applied.clone(),
            last: self.entries.iter().next_back().map(|(i, e)| (*i, e.clone())),
        }
    }
}

fn check(store: &LogStore, models: &BTreeMap<u64, Model>, when: &str) {
    for (group, model) in models {
        assert_eq!(store.raft_state(*group), model.state(), "{when}: group {group}'s state");
        let held: BTreeMap<u64, Bytes> = store.raft_entries(*group, 0..u64::MAX).into_iter().collect();
        assert_eq!(held, model.entries, "{when}: group {group}'s entries");
    }
}

/// Drives groups the way a Raft layer does: appends, votes, commits, a
/// follower's tail truncated by a new leader, purges behind snapshots.
fn drive(store: &LogStore, models: &mut BTreeMap<u64, Model>, rng: &mut fastrand::Rng, steps: usize) -> u64 {
    let mut end = 0;
    for step in 0..steps {
        let group = rng.u64(1..=3);
        let model = models.entry(group).or_default();
        let next = model.entries.keys().next_back().map_or(model.purged.as_ref().map_or(1, |p| p.0 + 1), |i| i + 1);
        end = match rng.u8(0..20) {
            0 => {
                let vote = Bytes::from(format!("vote term {step}"));
                model.vote = Some(vote.clone());
                store.raft_set(group, RaftStateKind::Vote, 0, vote).unwrap()
            }
            1 if next > 1 => {
                let committed = Bytes::from(format!("committed {}", next - 1));
                model.committed = Some(committed.clone());
                store.raft_set(group, RaftStateKind::Committed, 0, committed).unwrap()
            }
            2 if model.entries.len() > 3 => {
                let from = next - rng.u64(1..3);
                model.entries.retain(|i, _| *i < from);
                store.raft_set(group, RaftStateKind::Truncated, from, Bytes::new()).unwrap()
            }
            4 if next > 1 => {
                let applied = Bytes::from(format!("applied {}", next - 1));
                model.applied = Some(applied.clone());
                store.raft_set(group, RaftStateKind::Applied, 0, applied).unwrap()
            }
            3 if model.entries.len() > 10 => {
                let upto = model.entries.keys().nth(model.entries.len() / 2).copied().unwrap();
                let id = Bytes::from(format!("log id {upto}"));
                model.entries.retain(|i, _| *i > upto);
                model.purged = Some((upto, id.clone()));
                store.raft_set(group, RaftStateKind::Purged, upto, id).unwrap()
            }
            _ => {
                let batch: Vec<(u64, Bytes)> =
                    (next..next + rng.u64(1..8)).map(|i| (i, entry_bytes(group, i, step as u64))).collect();
                model.entries.extend(batch.iter().cloned());
                store.raft_append(group, batch).unwrap()
            }
        };
    }
    end
}

#[test]
fn groups_survive_restarts_and_the_deletion_of_the_segments_that_held_them() {
    // Small segments: the groups' records are spread over many, and
    // compaction deletes the old ones (their messages, to a queue id no
    // definition needs, are all acked).
    let disk = SimDisk::new();
    let (store, _) = LogStore::open(disk.clone(), options(32 * 1024)).unwrap();
    let queue = store.allocate_queue_id();
    let mut models = BTreeMap::new();
    let mut rng = fastrand::Rng::with_seed(7);
    wait_durable(&store, store.appended_position());
    let first_segment = disk.list().unwrap()[0];
    for _ in 0..40 {
        drive(&store, &mut models, &mut rng, 20);
        let ids: Vec<u64> = (0..20).map(|_| store.publish(&[queue], "", "k", &[], &[5u8; 900]).unwrap().0).collect();
        store.ack(queue, &ids).unwrap();
    }
    wait_durable(&store, store.appended_position());
    check(&store, &models, "running");
    let deadline = Instant::now() + Duration::from_secs(20);
    while disk.list().unwrap().contains(&first_segment) {
        assert!(Instant::now() < deadline, "compaction never deleted the first segment");
        std::thread::sleep(Duration::from_millis(10));
    }
    store.shutdown();

    let (store, recovered) = LogStore::open(disk.clone(), options(32 * 1024)).unwrap();
    assert!(!disk.list().unwrap().contains(&first_segment));
    assert_eq!(recovered.raft.groups().count(), models.len());
    check(&store, &models, "after a restart");

    // A group removed from this node is gone after the next restart too.
    let end = store.raft_set(2, RaftStateKind::Removed, 0, Bytes::new()).unwrap();
    wait_durable(&store, end);
    models.remove(&2);
    store.shutdown();
    let (store, _) = LogStore::open(disk, options(32 * 1024)).unwrap();
    assert_eq!(store.raft_groups(), models.keys().copied().collect::<Vec<_>>());
    check(&store, &models, "after the removal and a restart");
}

#[test]
fn a_power_cut_in_any_page_order_leaves_a_state_the_groups_passed_through() {
    // A cut keeps a prefix of the log (whole commit groups): the groups
    // come back exactly as they stood after some step, never before the
    // last step made durable and never a mix of steps.
    for seed in 0..16u64 {
        let disk = SimDisk::new();
        let (store, _) = LogStore::open(disk.clone(), options(16 * 1024)).unwrap();
        let mut models = BTreeMap::new();
        let mut rng = fastrand::Rng::with_seed(seed);
        // (end position of the step, every group's state after it)
        let mut history = vec![(0, models.clone())];
        for _ in 0..180 {
            let end = drive(&store, &mut models, &mut rng, 1);
            history.push((end, models.clone()));
            if history.len() == 150 {
                wait_durable(&store, end);
            }
        }
        let durable = store.durability().borrow().position;
        let image = disk.power_cut_image_any_order(seed);
        store.shutdown();

        let recovered = recover(&*SimDisk::from_image(&image), false).expect("recovery after the cut");
        let found: BTreeMap<u64, Model> = recovered
            .raft
            .groups()
            .map(|(group, log)| {
                let model = Model {
                    vote: log.vote.clone(),
                    committed: log.committed.clone(),
                    purged: log.purged.clone(),
                    applied: log.applied.clone(),
                    entries: log.entries(0..u64::MAX).map(|(i, e)| (i, e.clone())).collect(),
                };
                (group, model)
            })
            .collect();
        // The last step wholly durable: the state found is that one or later.
        let durable_step = history.iter().rposition(|(end, _)| *end <= durable).unwrap_or(0);
        let matches: Vec<usize> = (0..history.len()).filter(|k| history[*k].1 == found).collect();
        assert!(!matches.is_empty(), "seed {seed}: the groups came back in a state they never had: {found:?}");
        assert!(
            matches.iter().any(|k| *k >= durable_step),
            "seed {seed}: the groups came back as they stood before step {durable_step}, durable at the cut"
        );
    }
}
