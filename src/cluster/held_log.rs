//! A quorum queue group's Raft entries kept under their bound: the
//! entries a group holds are kept in memory and restated at the start of
//! every new segment of the node's log, so they are snapshotted and
//! purged by size, not only every [`SNAPSHOT_EVERY`](super::quorum::SNAPSHOT_EVERY) entries.

use super::quorum::QueueRaft;
use super::types::*;

/// Where a group's log stands, for [`bound_held_log`].
pub(super) struct HeldIndexes {
    pub applied: Option<u64>,
    pub snapshot: Option<u64>,
    pub purged: Option<u64>,
    /// On a leader, the last index every member has (None: it does not
    /// lead, or knows of a member that has nothing).
    pub everywhere: Option<u64>,
}

impl HeldIndexes {
    pub fn of(m: &openraft::RaftMetrics<RaftConfig>) -> HeldIndexes {
        let index = |id: &Option<openraft::LogId<_>>| id.as_ref().map(|id| id.index);
        let everywhere = m.replication.as_ref().and_then(|r| r.values().map(index).min().flatten());
        HeldIndexes {
            applied: index(&m.last_applied),
            snapshot: index(&m.snapshot),
            purged: index(&m.purged),
            everywhere,
        }
    }
}

/// What [`bound_held_log`] asks of the group.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Steps {
    /// Purge up to this index.
    pub purge: Option<u64>,
    /// Take a snapshot of what is applied.
    pub snapshot: bool,
}

/// Keeps the entries a group's log holds under an eighth of a segment,
/// and every group's under about a quarter (a group holding a little
/// more than a 256th of one then counts as holding too much): past it, a
/// snapshot (which costs nothing: `machine`) and a purge up to the last
/// one, however few the entries. Entries are held in memory and restated
/// at the start of every new segment, so large messages (an entry holds a
/// batch of them) must not wait for [`SNAPSHOT_EVERY`](super::quorum::SNAPSHOT_EVERY) entries: a log
/// whose new segments are mostly restated entries never gets within its
/// disk bound, and its publishers wait for compaction for good (and a
/// group holding most of a segment writes it again with every segment).
///
/// Both at once: under load a group has always applied past its last
/// snapshot, so a purge that waited for the snapshot to catch up would
/// never come. A leader purges only what every member has, while the
/// group holds less than four times its bound: a member a moment behind
/// is sent entries, not the queue's whole state.
pub(super) async fn bound_held_log(raft: &QueueRaft, store: &crate::store::LogStore, group: u64, at: HeldIndexes) {
    let (held, all) = store.raft_bytes(group);
    let steps = steps(held, all, store.segment_size() as usize, &at);
    if let Some(upto) = steps.purge {
        let _ = raft.trigger().purge_log(upto).await;
    }
    if steps.snapshot {
        let _ = raft.trigger().snapshot().await;
    }
}

/// The steps for a group holding `held` bytes of entries, while every
/// group's hold `all`, in a log of `segment`-byte segments.
fn steps(held: usize, all: usize, segment: usize, at: &HeldIndexes) -> Steps {
    let (one, every, floor) = (segment / 8, segment / 4, (segment / 256).min(256 << 10));
    if held <= one && (all <= every || held <= floor) {
        return Steps { purge: None, snapshot: false };
    }
    let upto = match at.everywhere {
        Some(everywhere) if held <= 4 * one => at.snapshot.map(|s| s.min(everywhere)),
        _ => at.snapshot,
    };
    Steps { purge: upto.filter(|upto| at.purged < Some(*upto)), snapshot: at.snapshot < at.applied }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEGMENT: usize = 64 << 20;

    fn at(applied: u64, snapshot: u64, purged: u64, everywhere: Option<u64>) -> HeldIndexes {
        HeldIndexes { applied: Some(applied), snapshot: Some(snapshot), purged: Some(purged), everywhere }
    }

    #[test]
    fn within_the_bound_nothing_is_asked() {
        let steps = steps(SEGMENT / 8, SEGMENT / 4, SEGMENT, &at(900, 500, 100, None));
        assert_eq!(steps, Steps { purge: None, snapshot: false });
    }

    #[test]
    fn under_load_a_purge_comes_though_the_snapshot_is_always_behind_what_is_applied() {
        // Applied is past the last snapshot at every look while messages
        // flow: the purge up to the snapshot must not wait for it.
        let steps = steps(SEGMENT / 2, SEGMENT / 2, SEGMENT, &at(900, 800, 100, None));
        assert_eq!(steps, Steps { purge: Some(800), snapshot: true });
    }

    #[test]
    fn a_leader_keeps_what_a_member_lacks_until_it_holds_four_times_the_bound() {
        let lagging = at(900, 800, 100, Some(600));
        assert_eq!(steps(SEGMENT / 4, 0, SEGMENT, &lagging), Steps { purge: Some(600), snapshot: true });
        assert_eq!(steps(SEGMENT, 0, SEGMENT, &lagging), Steps { purge: Some(800), snapshot: true });
    }

    #[test]
    fn what_is_purged_already_is_not_asked_again() {
        let steps = steps(SEGMENT, 0, SEGMENT, &at(800, 800, 800, None));
        assert_eq!(steps, Steps { purge: None, snapshot: false });
    }
}
