//! One connection's publishes to replicated quorum queues (a node of a
//! cluster): each message is committed by the queue's Raft group before
//! its publisher confirm goes out.
//!
//! A connection's messages go to a task of its own, in publish order; the
//! task takes what has gathered meanwhile (up to [`MAX_BATCH`]) and
//! commits it as one enqueue per group, all groups at once, then the next
//! gathering. So each group gets the connection's messages in publish
//! order, and a burst costs one commit per group rather than one per
//! message. Each confirm-mode publish holds a [`Ticket`], settled once
//! every group it went to has committed it (ack) or one has not within
//! the time-out (nack); the connection is woken to send its confirms.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc};

use crate::broker::Message;
use crate::broker::replicas::ReplicaRouter;

/// The most messages committed in one gathering.
const MAX_BATCH: usize = 4096;
/// A connection with this many messages waiting for their groups is not
/// read until fewer wait (flow control).
const HOLD_BACK_AT: usize = 4 * MAX_BATCH;

/// A confirm-mode publish waiting for its groups.
#[derive(Debug)]
pub struct Ticket {
    /// Groups that have not committed it yet.
    waiting: AtomicU32,
    failed: AtomicBool,
}

/// Where a [`Ticket`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketState {
    Waiting,
    Committed,
    Failed,
}

impl Ticket {
    pub fn state(&self) -> TicketState {
        if self.failed.load(Ordering::Acquire) {
            TicketState::Failed
        } else if self.waiting.load(Ordering::Acquire) > 0 {
            TicketState::Waiting
        } else {
            TicketState::Committed
        }
    }

    fn settle(&self, committed: bool) {
        if !committed {
            self.failed.store(true, Ordering::Release);
        }
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Job {
    group: u64,
    message: Arc<Message>,
    ticket: Option<Arc<Ticket>>,
}

/// A connection's way to its replicated queues.
pub struct ReplicatedPublisher {
    jobs: mpsc::UnboundedSender<Job>,
    /// Messages handed to the task and not yet committed (or refused).
    in_flight: Arc<AtomicUsize>,
}

impl ReplicatedPublisher {
    /// Starts the connection's task; `settled` is notified when tickets
    /// were settled.
    pub fn start(router: Arc<dyn ReplicaRouter>, settled: Arc<Notify>) -> ReplicatedPublisher {
        let (jobs, rx) = mpsc::unbounded_channel();
        let in_flight = Arc::new(AtomicUsize::new(0));
        tokio::spawn(commit_in_order(router, rx, settled, in_flight.clone()));
        ReplicatedPublisher { jobs, in_flight }
    }

    /// Whether the connection should stop reading until some of its
    /// messages are committed.
    pub fn held_back(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) >= HOLD_BACK_AT
    }

    /// Sends `message` to the groups; with `confirm`, the ticket its
    /// confirm waits for.
    pub fn publish(&self, groups: &[u64], message: &Arc<Message>, confirm: bool) -> Option<Arc<Ticket>> {
        let ticket = confirm
            .then(|| Arc::new(Ticket { waiting: AtomicU32::new(groups.len() as u32), failed: AtomicBool::new(false) }));
        for &group in groups {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            let job = Job { group, message: message.clone(), ticket: ticket.clone() };
            if let Err(mpsc::error::SendError(job)) = self.jobs.send(job) {
                // The task is gone (the runtime is stopping): not committed.
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                if let Some(ticket) = job.ticket {
                    ticket.settle(false);
                }
            }
        }
        ticket
    }
}

/// The connection's task: commits each gathering of messages, one enqueue
/// per group, then the next.
async fn commit_in_order(
    router: Arc<dyn ReplicaRouter>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    settled: Arc<Notify>,
    in_flight: Arc<AtomicUsize>,
) {
    let mut jobs: Vec<Job> = Vec::new();
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let gathered = jobs.len();
        let mut groups: Vec<(u64, Vec<Job>)> = Vec::new();
        for job in jobs.drain(..) {
            match groups.iter_mut().find(|(g, _)| *g == job.group) {
                Some((_, list)) => list.push(job),
                None => groups.push((job.group, vec![job])),
            }
        }
        let commits = groups.into_iter().map(|(group, list)| {
            let router = router.clone();
            async move {
                let messages = list.iter().map(|j| j.message.clone()).collect();
                let committed = router.enqueue(group, messages).await;
                for ticket in list.iter().filter_map(|j| j.ticket.as_ref()) {
                    ticket.settle(committed);
                }
            }
        });
        futures_util::future::join_all(commits).await;
        in_flight.fetch_sub(gathered, Ordering::AcqRel);
        settled.notify_one();
    }
}
