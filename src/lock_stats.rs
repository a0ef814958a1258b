//! How long the broker-wide locks are held: the broker's state lock
//! (exclusive and shared holds apart) and the log's lock. What a message
//! spends under a lock that every message takes exclusively is the part of
//! its cost that more cores cannot share (Amdahl): with `h` seconds held
//! per message, no number of cores passes `1 / h` messages per second.
//!
//! Timing every hold would cost two clock reads per lock taken, a few
//! percent of a message's cost; one hold in [`SAMPLE_EVERY`] is timed
//! instead, and stands for the [`SAMPLE_EVERY`] holds around it: the total
//! is the sampled time times [`SAMPLE_EVERY`], which only grows (Prometheus
//! counts it as a counter).

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// One hold in this many is timed.
pub const SAMPLE_EVERY: u64 = 64;

/// Holds of one lock: how many, and the time of the sampled ones.
#[derive(Debug, Default)]
pub struct HoldStats {
    holds: AtomicU64,
    sampled: AtomicU64,
    sampled_ns: AtomicU64,
}

/// What [`HoldStats`] knows, read at once.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HoldFigures {
    pub holds: u64,
    /// Mean hold of the sampled ones, in nanoseconds.
    pub mean_ns: f64,
    /// Estimated time held in all, in seconds: each timed hold stands for
    /// [`SAMPLE_EVERY`] holds.
    pub held_seconds: f64,
}

impl HoldStats {
    /// Counts a hold that starts now; the returned timer records it when
    /// dropped (or [`HoldTimer::end`]ed) if it is a sampled one.
    pub fn start(&self) -> HoldTimer<'_> {
        let n = self.holds.fetch_add(1, Ordering::Relaxed);
        HoldTimer { stats: self, started: n.is_multiple_of(SAMPLE_EVERY).then(Instant::now) }
    }

    pub fn figures(&self) -> HoldFigures {
        let holds = self.holds.load(Ordering::Relaxed);
        let sampled = self.sampled.load(Ordering::Relaxed);
        let ns = self.sampled_ns.load(Ordering::Relaxed);
        let mean_ns = if sampled == 0 { 0.0 } else { ns as f64 / sampled as f64 };
        HoldFigures { holds, mean_ns, held_seconds: ns as f64 * SAMPLE_EVERY as f64 / 1e9 }
    }
}

/// A hold being timed (or only counted).
#[derive(Debug)]
pub struct HoldTimer<'a> {
    stats: &'a HoldStats,
    started: Option<Instant>,
}

impl HoldTimer<'_> {
    /// The hold ends here (before the lock's guard is dropped).
    pub fn end(self) {}
}

impl Drop for HoldTimer<'_> {
    fn drop(&mut self) {
        if let Some(started) = self.started {
            let ns = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
            self.stats.sampled.fetch_add(1, Ordering::Relaxed);
            self.stats.sampled_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }
}

/// A read-write lock whose exclusive holds and shared holds are counted
/// and sampled apart: only exclusive holds serialise the threads that
/// take it (a shared hold costs its two atomic updates, not a wait).
#[derive(Debug, Default)]
pub struct TimedRwLock<T> {
    inner: RwLock<T>,
    exclusive: HoldStats,
    shared: HoldStats,
}

impl<T> TimedRwLock<T> {
    pub fn new(value: T) -> TimedRwLock<T> {
        TimedRwLock { inner: RwLock::new(value), exclusive: HoldStats::default(), shared: HoldStats::default() }
    }

    /// An exclusive hold.
    pub fn write(&self) -> TimedWriteGuard<'_, T> {
        let guard = self.inner.write();
        Timed { timer: self.exclusive.start(), guard }
    }

    /// A shared hold.
    pub fn read(&self) -> TimedReadGuard<'_, T> {
        let guard = self.inner.read();
        Timed { timer: self.shared.start(), guard }
    }

    /// The exclusive holds.
    pub fn hold_figures(&self) -> HoldFigures {
        self.exclusive.figures()
    }

    /// The shared holds.
    pub fn shared_figures(&self) -> HoldFigures {
        self.shared.figures()
    }
}

/// A guard whose hold is recorded when it is dropped: `G` is the lock's
/// own guard.
pub struct Timed<'a, G> {
    // Dropped before the guard (fields drop in order): the time recorded
    // is the time held.
    timer: HoldTimer<'a>,
    guard: G,
}

/// An exclusive hold of a [`TimedRwLock`].
pub type TimedWriteGuard<'a, T> = Timed<'a, RwLockWriteGuard<'a, T>>;
/// A shared hold of a [`TimedRwLock`].
pub type TimedReadGuard<'a, T> = Timed<'a, RwLockReadGuard<'a, T>>;

impl<G: Deref> Deref for Timed<'_, G> {
    type Target = G::Target;
    fn deref(&self) -> &G::Target {
        &self.guard
    }
}

impl<G: DerefMut> DerefMut for Timed<'_, G> {
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.guard
    }
}

impl<G> std::fmt::Debug for Timed<'_, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timed").field("timer", &self.timer).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hold_is_counted_and_one_in_sample_every_is_timed() {
        let m = TimedRwLock::new(0u64);
        for _ in 0..(SAMPLE_EVERY * 3) {
            *m.write() += 1;
        }
        for _ in 0..SAMPLE_EVERY {
            assert!(*m.read() > 0);
        }
        let f = m.hold_figures();
        assert_eq!(f.holds, SAMPLE_EVERY * 3, "exclusive holds");
        assert_eq!(m.exclusive.sampled.load(Ordering::Relaxed), 3);
        assert_eq!(m.shared_figures().holds, SAMPLE_EVERY, "shared holds, counted apart");
        assert_eq!(m.shared.sampled.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_estimate_never_goes_back() {
        // A long timed hold, the holds it stands for, then a short timed
        // one: the mean falls, the total must not (a mean times the count
        // of holds would fall here, from 128 ms to about 65).
        let stats = HoldStats::default();
        let long = stats.start();
        std::thread::sleep(std::time::Duration::from_millis(2));
        long.end();
        for _ in 1..SAMPLE_EVERY {
            stats.start().end();
        }
        let before = stats.figures();
        stats.start().end();
        let after = stats.figures();
        assert!(after.mean_ns < before.mean_ns, "the second timed hold was short");
        assert!(after.held_seconds >= before.held_seconds, "{} s after {} s", after.held_seconds, before.held_seconds);
    }

    #[test]
    fn a_long_hold_shows_in_the_mean() {
        let stats = HoldStats::default();
        let timer = stats.start(); // the first hold is a sampled one
        let until = Instant::now() + std::time::Duration::from_millis(5);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        timer.end();
        let f = stats.figures();
        assert!(f.mean_ns >= 5e6, "mean {} ns for a 5 ms hold", f.mean_ns);
        // The one timed hold stands for SAMPLE_EVERY holds.
        assert!((f.held_seconds - f.mean_ns * SAMPLE_EVERY as f64 / 1e9).abs() < 1e-9);
    }
}
