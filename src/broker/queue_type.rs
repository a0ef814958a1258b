//! The queue types' interface: every change to the messages a queue holds
//! is a [`Command`], applied with the time (`now`, given by the caller,
//! never read), and what it asks of the world comes back as [`Effects`]:
//! data the caller carries out. A type knows no socket, no log and no
//! clock, so each is tested by applying commands and reading effects
//! (`queue_type_tests`).
//!
//! The types are the variants of the closed enum `queue::QueueKind`
//! (classic, quorum, stream), not trait objects: the set is fixed by the
//! `x-queue-type`s RabbitMQ clients ask for, a `match` makes every type
//! answer every command (a type that takes no part in one says so in its
//! arm, instead of a special case somewhere in the broker), calls are
//! static, and the quorum type's state can be cloned and snapshotted as it
//! is, which the Raft state machine of the cluster issue needs.
//!
//! Who carries out what:
//!
//! - the queue (`Queue::apply`) arms its timer at [`Effects::deadline`]
//!   and keeps its count of unsettled deliveries;
//! - the broker, still holding the queue's lock, hands [`Effects::taken`]
//!   to the consumer it chose (or to basic.get), and after the batch
//!   appends the log records (`log_delivered`, `log_settled`) in one write
//!   per queue;
//! - once it holds no queue's lock, it dead-letters
//!   [`Effects::dead_letters`] (dead-lettering locks the target queues);
//! - a refused publish ([`Effects::rejected`]) is the publisher's nack.
//!   An accepted publish is confirmed when the log has made its record
//!   durable (the record is appended before the command, so that its id
//!   is known): today the log's group commit, in the cluster issue the
//!   quorum group's commit.
//!
//! Commands are data (an `Arc` of the message, never a borrow), so that a
//! replicated type can log them and apply them again on every member.

use std::sync::Arc;

use super::dead_letter::Reason;
use super::message::Message;
use super::queue::QueuedMessage;

/// A change to a queue's messages.
#[derive(Debug, Clone)]
pub enum Command {
    /// A message routed to the queue; `store_id` is its log record (0:
    /// not in the log). With `trim_later` a drop-head length limit is left
    /// to a [`Command::Trim`] after the hand-out, so that a waiting
    /// consumer still gets the message (RabbitMQ delivers before it drops).
    Enqueue { message: Arc<Message>, store_id: u64, trim_later: bool },
    /// Take the next ready message for a consumer or basic.get (the
    /// highest priority first, requeued ones at their place).
    /// `settled`: taken with no-ack, so it is settled on the way out.
    Checkout { settled: bool },
    /// A message handed out by [`Command::Checkout`] (without `settled`)
    /// came back from its consumer.
    Settle { entry: QueuedMessage, how: Settle },
    /// A message a [`Command::Checkout`] took (with the same `settled`) but
    /// never handed out goes back to its place, unchanged, and the log
    /// records that checkout asked for are taken back (`fx` must still
    /// hold them).
    Return { entry: QueuedMessage, settled: bool },
    /// Drop the messages whose TTL ran out at the heads.
    Expire,
    /// Drop head messages while the queue is over a drop-head length limit.
    Trim,
    /// Drop every ready message.
    Purge,
    /// Drop one ready message wherever it is (its body cannot be read back).
    Remove { seq: u64, store_id: u64 },
}

/// How a consumer settled a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// basic.ack: done with it.
    Ack,
    /// basic.nack or basic.reject with requeue, basic.recover, or the
    /// channel closed: back to the queue.
    Requeue,
    /// basic.nack or basic.reject without requeue: dead-lettered when the
    /// queue has a dead-letter exchange, else dropped.
    Discard,
}

/// What applying commands asks of the world. One value may gather the
/// effects of many commands (a drain, a batch of acks): the caller takes
/// what it needs after each command and carries out the rest once.
#[derive(Debug, Default)]
pub struct Effects {
    /// The publish was refused (`x-overflow` = reject-publish): nack it.
    pub rejected: bool,
    /// The message a [`Command::Checkout`] took, to hand out.
    pub taken: Option<QueuedMessage>,
    /// Log records to append: messages handed out for the first time (so
    /// that after a restart they come back flagged redelivered).
    pub log_delivered: Vec<u64>,
    /// Log records to append: messages that left the queue for good.
    pub log_settled: Vec<u64>,
    /// Messages that left the queue for its dead-letter exchange, and why.
    pub dead_letters: Vec<(Reason, QueuedMessage)>,
    /// How many ready messages a command dropped (a purge's count).
    pub removed: usize,
    /// The earliest moment the queue needs its timer, when a command made
    /// it need one (an expiry); carried out by the queue itself.
    pub deadline: Option<u64>,
}

impl Effects {
    /// Notes that the queue needs its timer at `at`.
    pub(super) fn arm(&mut self, at: Option<u64>) {
        if let Some(at) = at {
            self.deadline = Some(self.deadline.map_or(at, |d| d.min(at)));
        }
    }

    /// Messages that left the queue for `reason`: to the dead-letter
    /// exchange when it has one, else only settled in the log.
    pub(super) fn departed(&mut self, dead_letter: bool, entries: Vec<QueuedMessage>, reason: Reason) {
        for entry in entries {
            self.departed_one(dead_letter, entry, reason);
        }
    }

    /// One message that left the queue (see [`Effects::departed`]).
    pub(super) fn departed_one(&mut self, dead_letter: bool, entry: QueuedMessage, reason: Reason) {
        if dead_letter {
            self.dead_letters.push((reason, entry));
        } else {
            self.settled(&entry);
        }
    }

    /// A message that left the queue for good and goes nowhere: its
    /// record, if it has one, is settled in the log.
    pub(super) fn settled(&mut self, entry: &QueuedMessage) {
        if entry.store_id != 0 {
            self.log_settled.push(entry.store_id);
        }
    }

    /// A message taken by a checkout was not handed out after all: the
    /// record its checkout asked for (a first-delivery mark, or with
    /// `settled` its settle) is not written.
    pub(super) fn unmark(&mut self, store_id: u64, settled: bool) {
        let records = if settled { &mut self.log_settled } else { &mut self.log_delivered };
        if let Some(i) = records.iter().rposition(|id| *id == store_id) {
            records.swap_remove(i);
        }
    }

    /// Takes the dead letters out, grouped by reason (in the order the
    /// reasons first came).
    pub(super) fn take_dead_letters(&mut self) -> Vec<(Reason, Vec<QueuedMessage>)> {
        let mut groups: Vec<(Reason, Vec<QueuedMessage>)> = Vec::new();
        for (reason, entry) in self.dead_letters.drain(..) {
            match groups.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, entries)) => entries.push(entry),
                None => groups.push((reason, vec![entry])),
            }
        }
        groups
    }
}

#[cfg(test)]
#[path = "queue_type_tests.rs"]
mod tests;
