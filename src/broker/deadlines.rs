//! The broker's timers as an index of deadlines, so that the timer thread
//! sleeps until the earliest one instead of scanning every queue on a tick.
//!
//! Each owner of a timer (a queue for its message expiries and `x-expires`,
//! a channel for its consumer timeout, a stream for its age retention)
//! keeps the one deadline it has armed (`armed`, 0 for none) and arms
//! through a [`TimerHandle`]. Arming later than what is armed does nothing
//! and takes no lock, so a queue whose messages all live as long (each new
//! expiry after the head's) pays one comparison per publish; arming earlier
//! moves the owner's entry and wakes the thread when it became the earliest.
//!
//! A deadline may fire early (the owner's work moved later: a message was
//! consumed, the queue was used again): the thread then finds nothing due
//! and arms the owner again at its real next deadline. An entry whose owner
//! armed another time since (or went away) is stale and ignored: only
//! `armed == at` fires.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// Who a deadline belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKey {
    /// A queue's message expiries and its `x-expires`.
    Queue { vhost: Arc<str>, name: Arc<str> },
    /// A channel's consumer timeout.
    Channel { connection: u64, channel: u16 },
}

/// The deadlines, earliest first, with at most one entry per armed owner.
#[derive(Debug, Default)]
pub struct Deadlines {
    entries: BTreeSet<(u64, TimerKey)>,
}

impl Deadlines {
    /// Arms `key` at `at` (broker clock, ms) unless it is armed no later
    /// (`armed`, 0 for not armed). Returns whether `at` is now the earliest
    /// deadline of all.
    pub fn arm(&mut self, key: TimerKey, armed: &mut u64, at: u64) -> bool {
        if *armed != 0 && *armed <= at {
            return false;
        }
        let at = at.max(1);
        if *armed != 0 {
            self.entries.remove(&(*armed, key.clone()));
        }
        *armed = at;
        self.entries.insert((at, key));
        self.next() == Some(at)
    }

    /// Forgets `key`'s deadline.
    pub fn disarm(&mut self, key: TimerKey, armed: &mut u64) {
        if *armed != 0 {
            self.entries.remove(&(*armed, key));
            *armed = 0;
        }
    }

    /// Removes and returns the deadlines due at `now`, earliest first.
    pub fn take_due(&mut self, now: u64) -> Vec<(u64, TimerKey)> {
        let mut due = Vec::new();
        while let Some(first) = self.entries.first() {
            if first.0 > now {
                break;
            }
            if let Some(entry) = self.entries.pop_first() {
                due.push(entry);
            }
        }
        due
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<u64> {
        self.entries.first().map(|(at, _)| *at)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The deadlines shared by their owners and the timer thread, with the
/// condition variable the thread sleeps on.
#[derive(Debug, Default)]
struct Shared {
    deadlines: Mutex<Deadlines>,
    wake: Condvar,
}

/// A handle to the broker's deadlines: owners arm through it, the timer
/// thread waits on it. Cloning it is cheap; a default one is not connected
/// to any thread (tests read its deadlines directly).
#[derive(Debug, Clone, Default)]
pub struct TimerHandle {
    shared: Arc<Shared>,
}

impl TimerHandle {
    /// Arms `key` at `at` unless it is armed no later; wakes the timer
    /// thread when `at` became the earliest deadline. Arming later than
    /// `armed` takes no lock.
    pub fn arm(&self, key: TimerKey, armed: &mut u64, at: u64) {
        if *armed != 0 && *armed <= at {
            return;
        }
        let earliest = self.shared.deadlines.lock().arm(key, armed, at);
        if earliest {
            self.shared.wake.notify_one();
        }
    }

    pub fn disarm(&self, key: TimerKey, armed: &mut u64) {
        if *armed != 0 {
            self.shared.deadlines.lock().disarm(key, armed);
        }
    }

    /// The deadlines due at `now` (the timer thread's side).
    pub fn take_due(&self, now: u64) -> Vec<(u64, TimerKey)> {
        self.shared.deadlines.lock().take_due(now)
    }

    /// Sleeps until the earliest deadline, an earlier one being armed, or
    /// `longest` at most. `deadline_instant` turns a broker-clock deadline
    /// into an instant.
    pub fn wait(&self, longest: Instant, deadline_instant: impl Fn(u64) -> Instant) {
        let mut deadlines = self.shared.deadlines.lock();
        let until = deadlines.next().map_or(longest, |at| deadline_instant(at).min(longest));
        if until > Instant::now() {
            self.shared.wake.wait_until(&mut deadlines, until);
        }
    }

    /// The earliest deadline armed.
    pub fn next(&self) -> Option<u64> {
        self.shared.deadlines.lock().next()
    }

    /// How many deadlines are armed.
    pub fn len(&self) -> usize {
        self.shared.deadlines.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.deadlines.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str) -> TimerKey {
        TimerKey::Queue { vhost: Arc::from("/"), name: Arc::from(name) }
    }

    #[test]
    fn arming_later_keeps_the_earlier_deadline() {
        let mut d = Deadlines::default();
        let mut armed = 0;
        assert!(d.arm(queue("a"), &mut armed, 100));
        assert!(!d.arm(queue("a"), &mut armed, 150));
        assert_eq!((armed, d.len(), d.next()), (100, 1, Some(100)));
    }

    #[test]
    fn arming_earlier_moves_the_one_entry() {
        let mut d = Deadlines::default();
        let (mut a, mut b) = (0, 0);
        d.arm(queue("a"), &mut a, 100);
        assert!(!d.arm(queue("b"), &mut b, 200));
        assert!(d.arm(queue("b"), &mut b, 50), "50 is the earliest now");
        assert_eq!((b, d.len(), d.next()), (50, 2, Some(50)));
        assert!(!d.arm(queue("a"), &mut a, 70), "earlier for a, but b's 50 stays the earliest");
        assert_eq!(d.take_due(80), vec![(50, queue("b")), (70, queue("a"))]);
        assert!(d.is_empty());
    }

    #[test]
    fn only_what_is_due_is_taken() {
        let mut d = Deadlines::default();
        let (mut a, mut b, mut c) = (0, 0, 0);
        d.arm(queue("a"), &mut a, 10);
        d.arm(TimerKey::Channel { connection: 1, channel: 1 }, &mut b, 20);
        d.arm(queue("c"), &mut c, 30);
        assert_eq!(d.take_due(9), vec![]);
        assert_eq!(d.take_due(20).len(), 2);
        assert_eq!(d.next(), Some(30));
    }

    #[test]
    fn disarm_forgets_the_entry() {
        let mut d = Deadlines::default();
        let mut a = 0;
        d.arm(queue("a"), &mut a, 10);
        d.disarm(queue("a"), &mut a);
        assert_eq!((a, d.len()), (0, 0));
        d.disarm(queue("a"), &mut a);
        assert!(d.is_empty());
    }

    #[test]
    fn a_deadline_at_zero_is_still_armed() {
        // 0 means "not armed" to an owner: a deadline at 0 is kept at 1.
        let mut d = Deadlines::default();
        let mut a = 0;
        d.arm(queue("a"), &mut a, 0);
        assert_eq!((a, d.take_due(1).len()), (1, 1));
    }

    #[test]
    fn the_handle_wakes_a_waiting_thread_for_an_earlier_deadline() {
        let handle = TimerHandle::default();
        let start = Instant::now();
        let far = start + std::time::Duration::from_secs(60);
        let waiter = {
            let handle = handle.clone();
            std::thread::spawn(move || {
                handle.wait(far, |_| start);
                Instant::now()
            })
        };
        // Arm until the waiter has returned (an arm before it waits is seen
        // when it looks at the deadlines: due at `start`, it does not wait).
        let mut armed = 0;
        handle.arm(queue("a"), &mut armed, 5);
        let woke = waiter.join().expect("waiter");
        assert!(woke < far, "the waiter slept to its longest instead of the armed deadline");
        assert_eq!(handle.next(), Some(5));
    }
}
