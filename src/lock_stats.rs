//! How long the locks every message passes through are held: the broker's
//! state lock and the log's lock. What a message spends under a lock that
//! every message takes is the part of its cost that more cores cannot
//! share (Amdahl): with `h` seconds held per message, no number of cores
//! passes `1 / h` messages per second.
//!
//! Timing every hold would cost two clock reads per lock taken, a few
//! percent of a message's cost; one hold in [`SAMPLE_EVERY`] is timed
//! instead, and stands for the [`SAMPLE_EVERY`] holds around it: the total
//! is the sampled time times [`SAMPLE_EVERY`], which only grows (Prometheus
//! counts it as a counter).

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

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

/// A mutex whose holds are counted and sampled ([`HoldStats`]).
#[derive(Debug, Default)]
pub struct TimedMutex<T> {
    inner: Mutex<T>,
    stats: HoldStats,
}

impl<T> TimedMutex<T> {
    pub fn new(value: T) -> TimedMutex<T> {
        TimedMutex { inner: Mutex::new(value), stats: HoldStats::default() }
    }

    pub fn lock(&self) -> TimedGuard<'_, T> {
        let guard = self.inner.lock();
        TimedGuard { timer: self.stats.start(), guard }
    }

    pub fn hold_figures(&self) -> HoldFigures {
        self.stats.figures()
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
        TimedWriteGuard { _timer: self.exclusive.start(), guard }
    }

    /// A shared hold.
    pub fn read(&self) -> TimedReadGuard<'_, T> {
        let guard = self.inner.read();
        TimedReadGuard { timer: self.shared.start(), guard }
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

/// An exclusive hold of a [`TimedRwLock`], recorded when dropped.
pub struct TimedWriteGuard<'a, T> {
    // Only dropped, before the guard (fields drop in order).
    _timer: HoldTimer<'a>,
    guard: RwLockWriteGuard<'a, T>,
}

impl<T> Deref for TimedWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for TimedWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// A shared hold of a [`TimedRwLock`], recorded when dropped.
pub struct TimedReadGuard<'a, T> {
    timer: HoldTimer<'a>,
    guard: RwLockReadGuard<'a, T>,
}

impl<T> Deref for TimedReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> TimedReadGuard<'_, T> {
    /// Ends the hold (the timer first: fields drop in order anyway, this
    /// names the moment).
    pub fn release(self) {
        let TimedReadGuard { timer, guard } = self;
        drop(timer);
        drop(guard);
    }
}

/// The guard of a [`TimedMutex`]: the hold is recorded when it is dropped.
pub struct TimedGuard<'a, T> {
    // Dropped before the guard (fields drop in order): the time recorded
    // is the time held.
    timer: HoldTimer<'a>,
    guard: MutexGuard<'a, T>,
}

impl<T> Deref for TimedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for TimedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for TimedGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedGuard").field("timer", &self.timer).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hold_is_counted_and_one_in_sample_every_is_timed() {
        let m = TimedMutex::new(0u64);
        for _ in 0..(SAMPLE_EVERY * 3) {
            *m.lock() += 1;
        }
        let f = m.hold_figures();
        assert_eq!(f.holds, SAMPLE_EVERY * 3);
        assert_eq!(m.stats.sampled.load(Ordering::Relaxed), 3);
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
