//! The verdict of a cluster run: every confirmed message delivered (lost:
//! confirmed but never delivered), nothing delivered that no publisher sent
//! (unexpected), how many deliveries were repeats (duplicated: allowed,
//! at least once, but counted), no confirm from a node left without a
//! majority (a message published there after a partition began and
//! confirmed before it healed), and the failover after each fault: the
//! longest stretch without any confirm around it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::clients::Record;

/// A fault as the driver made it.
#[derive(Debug, Clone)]
pub struct Fault {
    /// What it was ("kill", "pause", or a partition's shape).
    pub kind: String,
    pub at: Instant,
    /// When a partition healed.
    pub healed: Option<Instant>,
    /// The nodes a partition left without a majority.
    pub minority: BTreeSet<String>,
}

impl Fault {
    pub fn new(kind: &str, at: Instant) -> Fault {
        Fault { kind: kind.to_string(), at, healed: None, minority: BTreeSet::new() }
    }
}

#[derive(Debug, Default)]
pub struct Verdict {
    pub sent: usize,
    pub confirmed: usize,
    pub nacked: usize,
    pub delivered: usize,
    pub lost: Vec<String>,
    pub unexpected: Vec<String>,
    /// Deliveries beyond the first of a message.
    pub duplicated: u64,
    /// Confirmed by a node a partition had left without a majority.
    pub minority_confirms: Vec<String>,
    /// Per fault (its kind), the stretch without any confirm that spans it.
    pub gaps: Vec<(String, Duration)>,
}

impl Verdict {
    pub fn of(record: &Record, faults: &[Fault]) -> Verdict {
        let mut lost: Vec<String> =
            record.confirmed.keys().filter(|m| !record.delivered.contains_key(*m)).cloned().collect();
        lost.sort();
        let mut unexpected: Vec<String> =
            record.delivered.keys().filter(|m| !record.sent.contains(*m)).cloned().collect();
        unexpected.sort();
        let mut confirms: Vec<Instant> = record.confirmed.values().copied().collect();
        confirms.sort();
        let mut minority_confirms: Vec<String> = record
            .confirmed_via
            .iter()
            .filter(|(message, (node, published))| {
                let confirmed = record.confirmed.get(*message);
                faults.iter().any(|f| {
                    f.minority.contains(node)
                        && *published >= f.at
                        && f.healed.is_some_and(|healed| confirmed.is_some_and(|c| *c < healed))
                })
            })
            .map(|(message, (node, _))| format!("{message} (via {node})"))
            .collect();
        minority_confirms.sort();
        Verdict {
            sent: record.sent.len(),
            confirmed: record.confirmed.len(),
            nacked: record.nacked.len(),
            delivered: record.delivered.len(),
            lost,
            unexpected,
            duplicated: record.delivered.values().map(|n| u64::from(n.saturating_sub(1))).sum(),
            minority_confirms,
            gaps: faults
                .iter()
                .enumerate()
                .filter_map(|(i, fault)| {
                    let next = faults.get(i + 1).map_or(fault.at + WINDOW, |f| f.at);
                    let gap = longest_gap(&confirms, fault.at, next.min(fault.at + WINDOW))?;
                    Some((fault.kind.clone(), gap))
                })
                .collect(),
        }
    }

    pub fn passed(&self) -> bool {
        self.lost.is_empty() && self.unexpected.is_empty() && self.minority_confirms.is_empty()
    }

    /// The kinds of fault that have a failover, in the order first made.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = Vec::new();
        for (kind, _) in &self.gaps {
            if !kinds.contains(kind) {
                kinds.push(kind.clone());
            }
        }
        kinds
    }

    /// The median and the longest gap after faults of `kind`.
    pub fn failover(&self, kind: &str) -> Option<(Duration, Duration)> {
        let mut gaps: Vec<Duration> = self.gaps.iter().filter(|(k, _)| k == kind).map(|(_, gap)| *gap).collect();
        gaps.sort();
        Some((*gaps.get(gaps.len() / 2)?, *gaps.last()?))
    }
}

/// How long after a fault its failover is looked at, at most.
const WINDOW: Duration = Duration::from_secs(10);

/// The longest stretch without a confirm from the last confirm before
/// `at` until `until` (None: no confirm after `at` before `until`).
fn longest_gap(confirms: &[Instant], at: Instant, until: Instant) -> Option<Duration> {
    let first = confirms.partition_point(|c| *c <= at);
    let end = confirms.partition_point(|c| *c <= until);
    if first == end {
        return None;
    }
    let start = first.saturating_sub(1);
    let mut previous = if first == 0 { at } else { confirms[start] };
    let mut longest = Duration::ZERO;
    for c in &confirms[first..end] {
        longest = longest.max(c.duration_since(previous));
        previous = *c;
    }
    Some(longest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_unexpected_and_duplicated_are_told_apart() {
        let t0 = Instant::now();
        let mut record = Record::default();
        for m in ["a", "b", "c", "d"] {
            record.sent.insert(m.into());
        }
        record.confirmed.insert("a".into(), t0);
        record.confirmed.insert("b".into(), t0 + Duration::from_millis(10));
        record.confirmed.insert("c".into(), t0 + Duration::from_millis(900));
        record.delivered.insert("a".into(), 2);
        record.delivered.insert("c".into(), 1);
        // Sent, never confirmed, delivered: fine (its confirm was lost).
        record.delivered.insert("d".into(), 1);
        record.delivered.insert("z".into(), 1);
        let verdict = Verdict::of(&record, &[Fault::new("kill", t0 + Duration::from_millis(100))]);
        assert_eq!(verdict.lost, ["b"]);
        assert_eq!(verdict.unexpected, ["z"]);
        assert_eq!(verdict.duplicated, 1);
        assert!(!verdict.passed());
        assert_eq!(verdict.gaps, [("kill".to_string(), Duration::from_millis(890))], "from b's confirm to c's");
        assert_eq!(verdict.failover("kill"), Some((Duration::from_millis(890), Duration::from_millis(890))));
        assert_eq!(verdict.failover("pause"), None);
    }

    #[test]
    fn a_confirm_from_a_minority_node_during_its_partition_fails_the_run() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut record = Record::default();
        // (message, node, published, confirmed)
        let messages = [
            ("before", "n1", t0, t0 + ms(1500)), // published before the cut: may be confirmed late
            ("majority", "n2", t0 + ms(1100), t0 + ms(1200)), // the majority's node
            ("minority", "n1", t0 + ms(1100), t0 + ms(1900)), // the cut-off node, inside the cut
            ("healed", "n1", t0 + ms(1100), t0 + ms(2100)), // confirmed after the heal
        ];
        for (m, node, published, confirmed) in messages {
            record.sent.insert(m.into());
            record.delivered.insert(m.into(), 1);
            record.confirmed.insert(m.into(), confirmed);
            record.confirmed_via.insert(m.into(), (node.into(), published));
        }
        let mut cut = Fault::new("leader isolated", t0 + ms(1000));
        cut.healed = Some(t0 + ms(2000));
        cut.minority.insert("n1".into());
        let verdict = Verdict::of(&record, &[cut]);
        assert_eq!(verdict.minority_confirms, ["minority (via n1)"]);
        assert!(verdict.lost.is_empty() && verdict.unexpected.is_empty());
        assert!(!verdict.passed());
    }

    #[test]
    fn a_fault_with_no_confirm_after_it_has_no_gap() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(longest_gap(&[t0], t0 + s(1), t0 + s(5)), None);
        assert_eq!(longest_gap(&[t0 + s(2)], t0, t0 + s(5)), Some(s(2)));
        // A confirm right after the fault does not hide the stall after it.
        let confirms = [t0, t0 + Duration::from_millis(1001), t0 + s(3), t0 + s(20)];
        assert_eq!(longest_gap(&confirms, t0 + s(1), t0 + s(11)), Some(Duration::from_millis(1999)));
    }
}
