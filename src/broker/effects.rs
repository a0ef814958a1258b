//! Carrying out what a queue command asked of the world (see
//! `broker::queue_type`): the log records it gathered, appended once per
//! batch under the queue's settle id, and its dead letters, handed back as
//! `Departed` batches for the caller to dead-letter once it holds no
//! queue's lock. The deadline is the queue's own business (`Queue::apply`
//! arms it), the message taken is the caller's.

use super::dead_letter::Departed;
use super::queue::Queue;
use super::queue_type;
use crate::store::{LogStore, StoreError};

/// Carries out what applying commands to queue `q` asked of the log (its
/// records, appended under the queue's settle id) and moves the dead
/// letters into `departed`, to be dead-lettered once no queue's lock is
/// held. `fx` is left empty but for `taken`, `rejected` and `removed` (its
/// deadline `Queue::apply` armed already). An
/// append that fails is the log's I/O failure, which its writer reports;
/// the change in memory stands, and the error is returned for a caller that
/// answers a client with it.
#[inline]
pub(super) fn carry_out(
    q: &Queue,
    fx: &mut queue_type::Effects,
    store: &LogStore,
    departed: &mut Vec<Departed>,
) -> std::result::Result<(), StoreError> {
    if fx.log_delivered.is_empty() && fx.log_settled.is_empty() && fx.dead_letters.is_empty() {
        // Most publishes: nothing to carry out.
        return Ok(());
    }
    carry_out_records(q, fx, store, departed)
}

/// [`carry_out`] once there is something to carry out.
#[inline(never)]
fn carry_out_records(
    q: &Queue,
    fx: &mut queue_type::Effects,
    store: &LogStore,
    departed: &mut Vec<Departed>,
) -> std::result::Result<(), StoreError> {
    let mut result = Ok(());
    if !fx.log_delivered.is_empty() {
        result = store.delivered(q.settle_id(), &fx.log_delivered);
        fx.log_delivered.clear();
    }
    if !fx.log_settled.is_empty() {
        result = result.and(store.ack(q.settle_id(), &fx.log_settled));
        fx.log_settled.clear();
    }
    if !fx.dead_letters.is_empty() {
        for (reason, entries) in fx.take_dead_letters() {
            departed.push(Departed::from(q, entries, reason));
        }
    }
    result
}
