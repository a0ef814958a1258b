//! What the producer and consumer tasks share with the controller of a run:
//! counters, the measuring and stop flags, and when the count targets were
//! reached; plus the clocks and the histogram shape every task uses.
//!
//! All tasks of a run live on one thread (a `LocalSet`), so plain `Cell`s
//! are enough: no atomics, no locks on the per-message path.

use std::cell::{Cell, RefCell};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

#[derive(Default)]
pub struct Shared {
    /// Messages written by producers.
    pub sent: Cell<u64>,
    /// Publishes the server confirmed with basic.ack / refused with basic.nack.
    pub confirmed: Cell<u64>,
    pub nacked: Cell<u64>,
    /// Messages delivered to consumers (and acked, with manual acks).
    pub consumed: Cell<u64>,
    /// Latency samples are recorded only while this is set (after warm-up).
    pub measuring: Cell<bool>,
    /// Producers stop publishing, consumers stop consuming.
    pub stop: Cell<bool>,
    /// After a stop, producers wait for their confirms until this instant.
    pub drain_deadline: Cell<Option<Instant>>,
    /// Total to consume across all consumers; 0 = until stopped.
    pub consume_target: Cell<u64>,
    /// When `consume_target` was reached.
    pub consumed_all_at: Cell<Option<Instant>>,
    /// Producers still running, and when the last one finished.
    pub producers_left: Cell<usize>,
    pub published_all_at: Cell<Option<Instant>>,
    /// The first error of any task; it stops the run.
    pub failure: RefCell<Option<anyhow::Error>>,
}

impl Shared {
    pub fn producer_finished(&self) {
        let left = self.producers_left.get().saturating_sub(1);
        self.producers_left.set(left);
        if left == 0 {
            self.published_all_at.set(Some(Instant::now()));
        }
    }

    /// Counts one consumed message; true once the consume target is met.
    pub fn count_consumed(&self) -> bool {
        let n = self.consumed.get() + 1;
        self.consumed.set(n);
        let target = self.consume_target.get();
        if target > 0 && n >= target {
            if self.consumed_all_at.get().is_none() {
                self.consumed_all_at.set(Some(Instant::now()));
            }
            return true;
        }
        false
    }

    pub fn consumed_all(&self) -> bool {
        self.consumed_all_at.get().is_some()
    }

    pub fn fail(&self, err: anyhow::Error) {
        let mut slot = self.failure.borrow_mut();
        if slot.is_none() {
            *slot = Some(err);
        }
        self.stop.set(true);
    }

    /// (sent, confirmed, consumed, when).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            sent: self.sent.get(),
            confirmed: self.confirmed.get(),
            consumed: self.consumed.get(),
            at: Instant::now(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub sent: u64,
    pub confirmed: u64,
    pub consumed: u64,
    pub at: Instant,
}

/// Wall-clock ns since the Unix epoch: the one clock every process on the
/// machine shares, so a message published by one run and consumed by another
/// still gets a meaningful latency.
pub fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Latencies in microseconds, 1 us to 1 hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

/// CPU seconds (user + system) this process has used so far, from
/// /proc/self/stat (Linux; the kernel reports it in USER_HZ = 100 ticks).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((user + system) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_reads_proc() {
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(cpu_seconds().is_some());
        }
    }

    #[test]
    fn consume_target() {
        let s = Shared::default();
        s.consume_target.set(2);
        assert!(!s.count_consumed());
        assert!(s.count_consumed());
        assert!(s.consumed_all());
    }
}
