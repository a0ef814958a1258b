//! The verdict of a cluster run: every confirmed message delivered (lost:
//! confirmed but never delivered), nothing delivered that no publisher sent
//! (unexpected), how many deliveries were repeats (duplicated: allowed,
//! at least once, but counted), and the failover after each fault: the
//! longest stretch without any confirm around it.

use std::time::{Duration, Instant};

use crate::clients::Record;

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
    /// Per fault, the stretch without any confirm that spans it.
    pub gaps: Vec<Duration>,
}

impl Verdict {
    pub fn of(record: &Record, faults: &[Instant]) -> Verdict {
        let mut lost: Vec<String> =
            record.confirmed.keys().filter(|m| !record.delivered.contains_key(*m)).cloned().collect();
        lost.sort();
        let mut unexpected: Vec<String> =
            record.delivered.keys().filter(|m| !record.sent.contains(*m)).cloned().collect();
        unexpected.sort();
        let mut confirms: Vec<Instant> = record.confirmed.values().copied().collect();
        confirms.sort();
        Verdict {
            sent: record.sent.len(),
            confirmed: record.confirmed.len(),
            nacked: record.nacked.len(),
            delivered: record.delivered.len(),
            lost,
            unexpected,
            duplicated: record.delivered.values().map(|n| u64::from(n.saturating_sub(1))).sum(),
            gaps: faults
                .iter()
                .enumerate()
                .filter_map(|(i, at)| {
                    let until = faults.get(i + 1).copied().unwrap_or(*at + WINDOW).min(*at + WINDOW);
                    longest_gap(&confirms, *at, until)
                })
                .collect(),
        }
    }

    pub fn passed(&self) -> bool {
        self.lost.is_empty() && self.unexpected.is_empty()
    }

    /// The median and the longest gap.
    pub fn failover(&self) -> Option<(Duration, Duration)> {
        let mut gaps = self.gaps.clone();
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
        let verdict = Verdict::of(&record, &[t0 + Duration::from_millis(100)]);
        assert_eq!(verdict.lost, ["b"]);
        assert_eq!(verdict.unexpected, ["z"]);
        assert_eq!(verdict.duplicated, 1);
        assert!(!verdict.passed());
        assert_eq!(verdict.gaps, [Duration::from_millis(890)], "from b's confirm to c's");
        assert_eq!(verdict.failover(), Some((Duration::from_millis(890), Duration::from_millis(890))));
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
