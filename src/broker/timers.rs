//! What happens with time rather than with a client's method: expired
//! messages leave their queues (dead-lettered when the queue says so)
//! even when nobody looks at the queue, queues unused for their
//! `x-expires` are deleted, a channel whose oldest delivery stayed
//! unacknowledged past the consumer timeout is closed, and streams drop
//! what their `x-max-age` no longer keeps.
//!
//! One thread sleeps until the earliest deadline of [`super::deadlines`]
//! (or until an earlier one is armed), then runs what is due under the
//! broker's lock and arms each owner again at its next deadline. A broker
//! with no TTL, no `x-expires`, no unacknowledged delivery and no stream
//! has no deadline, and the thread sleeps.

use std::sync::Weak;
use std::time::{Duration, Instant};

use super::*;

/// RabbitMQ's default `consumer_timeout`: 30 minutes.
pub const DEFAULT_CONSUMER_TIMEOUT_MS: u64 = 30 * 60 * 1000;

/// The longest the thread sleeps without a deadline before it checks
/// that the broker still exists.
const IDLE_WAKE: Duration = Duration::from_secs(5);

/// How soon a channel whose oldest delivery has no timeout is looked at
/// again, for the younger deliveries that have one.
const RECHECK_MS: u64 = 1_000;

/// The consumer timeout of a delivery: the consumer's own
/// `x-consumer-timeout`, else its queue's, else the broker's
/// `consumer_timeout` (None: none applies).
pub(super) fn consumer_timeout_of(consumer: Option<u64>, queue: Option<u64>, broker: Option<u64>) -> Option<u64> {
    consumer.or(queue).or(broker)
}

/// What a connection must do because of the broker, not its client.
#[derive(Debug)]
pub enum BrokerEvent {
    /// Close this channel with a channel error.
    CloseChannel { channel: u16, error: AmqpError },
    /// An operator closes the connection (320 CONNECTION_FORCED).
    CloseConnection { explanation: String },
    /// The connection's socket is unusable (the peer stopped reading):
    /// drop it without a close handshake.
    Dropped { reason: String },
}

pub(super) fn spawn(state: Weak<StateLock>, timers: TimerHandle, store: Arc<LogStore>) -> std::io::Result<()> {
    std::thread::Builder::new().name("warren-timers".into()).spawn(move || {
        loop {
            let due = timers.take_due(queue::now_ms());
            if !due.is_empty() {
                let Some(state) = state.upgrade() else { return };
                let st = state.read();
                let now = queue::now_ms();
                let unused: Vec<_> = due.into_iter().filter_map(|(at, key)| st.fire(at, key, now, &store)).collect();
                drop(st);
                if !unused.is_empty() {
                    state.write().delete_unused(unused, now, &store);
                }
            } else if state.strong_count() == 0 {
                return;
            }
            timers.wait(Instant::now() + IDLE_WAKE, queue::instant_of);
        }
    })?;
    Ok(())
}

impl Broker {
    /// Sets the `consumer_timeout` (ms; None turns it off). Channels
    /// holding deliveries are armed for the new timeout.
    pub fn set_consumer_timeout(&self, timeout: Option<u64>) {
        let mut st = self.state.write();
        st.consumer_timeout = timeout;
        for (&key, ch) in &st.channels {
            let mut ch = ch.lock();
            if let Some((_, oldest)) = ch.unacked.first_key_value() {
                let delivered_at = oldest.delivered_at;
                ch.arm_timeout(key, delivered_at, timeout, &st.timers);
            }
        }
    }
}

impl State {
    /// Runs one deadline that came: `at` is the time it was armed for.
    /// Returns a queue unused for its `x-expires`, to delete (which takes
    /// the state lock exclusive).
    fn fire(&self, at: u64, key: TimerKey, now: u64, store: &LogStore) -> Option<Arc<QueueLock>> {
        match key {
            TimerKey::Queue { vhost, name } => self.queue_timer(&vhost, &name, at, now, store),
            TimerKey::Channel { connection, channel } => {
                self.channel_timer((connection, channel), at, now);
                None
            }
        }
    }

    /// Deletes the queues [`State::fire`] found unused, unless they were
    /// used (or deleted) since.
    fn delete_unused(&mut self, queues: Vec<Arc<QueueLock>>, now: u64, store: &LogStore) {
        for cell in queues {
            let (vhost, name) = {
                let mut q = cell.lock();
                if !is_unused(&q, now) {
                    // Used meanwhile: its timer counts again from the use.
                    q.rearm(now);
                    continue;
                }
                (q.vhost.clone(), q.name.clone())
            };
            if self.queue(&vhost, &name).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                tracing::info!("queue '{name}' in vhost '{vhost}' expired: unused for its x-expires");
                self.delete_queue(&vhost, &name, store);
            }
        }
    }

    /// A queue's deadline: expires its due messages, retains a stream's,
    /// deletes it when unused for its `x-expires`, and arms it again.
    fn queue_timer(&self, vhost: &str, name: &str, at: u64, now: u64, store: &LogStore) -> Option<Arc<QueueLock>> {
        let cell = self.queue(vhost, name)?;
        let mut q = cell.lock();
        if !q.timer_fired(at) {
            return None;
        }
        if q.is_stream() {
            stream::apply_retention(&mut q, store, true);
            q.rearm(now);
            return None;
        }
        if q.next_expiry().is_some_and(|due| now >= due) {
            drop(q);
            self.expire_messages(cell, store);
            self.drain_queue(cell, store);
            q = cell.lock();
        }
        if is_unused(&q, now) {
            return Some(cell.clone());
        }
        q.rearm(now);
        None
    }

    /// A channel's consumer-timeout deadline: closes the channel when its
    /// oldest delivery is past its timeout, else arms it for that delivery.
    fn channel_timer(&self, (conn, channel): (u64, u16), at: u64, now: u64) {
        let Some(ch) = self.channel(conn, channel) else { return };
        {
            let mut ch = ch.lock();
            if ch.timer_at != at {
                return;
            }
            ch.timer_at = 0;
        }
        self.check_consumer_timeout((conn, channel), now);
    }

    /// Closes a channel whose oldest unacknowledged delivery is older than
    /// its consumer's `x-consumer-timeout`, its queue's, or the broker's
    /// `consumer_timeout`; a channel with younger deliveries is armed again.
    fn check_consumer_timeout(&self, (conn, channel): (u64, u16), now: u64) {
        let Some(cell) = self.channel(conn, channel) else { return };
        // The oldest delivery, read before its queue is locked (lock order).
        let (vhost, queue, incarnation, tag, delivered_at, oldest_tag) = {
            let ch = cell.lock();
            if ch.timed_out {
                return;
            }
            let Some((&oldest_tag, oldest)) = ch.unacked.first_key_value() else { return };
            let tag = oldest.consumer_tag.clone();
            (ch.vhost.clone(), oldest.queue.clone(), oldest.incarnation, tag, oldest.delivered_at, oldest_tag)
        };
        // The consumer's own x-consumer-timeout, else its queue's, else the broker's.
        let (consumer_timeout, queue_timeout) = match self.queue(&vhost, &queue) {
            Some(q) => {
                let q = q.lock();
                if q.incarnation == incarnation {
                    let consumer = tag.as_ref().and_then(|tag| {
                        q.consumers.iter().find(|c| c.tag == *tag && c.connection.id == conn && c.channel == channel)
                    });
                    (consumer.and_then(|c| c.args.timeout), q.args.consumer_timeout)
                } else {
                    (None, None)
                }
            }
            None => (None, None),
        };
        let timeout = consumer_timeout_of(consumer_timeout, queue_timeout, self.consumer_timeout);
        let mut ch = cell.lock();
        if ch.unacked.first_key_value().is_none_or(|(&t, _)| t != oldest_tag) {
            // Settled meanwhile: look again at the new oldest.
            if !ch.unacked.is_empty() {
                ch.arm_timeout((conn, channel), now, Some(RECHECK_MS), &self.timers);
            }
            return;
        }
        let Some(timeout) = timeout else {
            // No timeout for the oldest; a younger delivery may have one
            // once the oldest is settled: look again then.
            if ch.unacked.len() > 1 {
                ch.arm_timeout((conn, channel), now, Some(RECHECK_MS), &self.timers);
            }
            return;
        };
        if now.saturating_sub(delivered_at) <= timeout {
            ch.arm_timeout((conn, channel), delivered_at, Some(timeout), &self.timers);
            return;
        }
        let Some(c) = self.connections.get(&conn) else { return };
        tracing::warn!(
            "consumer on channel {channel} of connection {} timed out waiting for an acknowledgement ({timeout} ms)",
            c.info.peer
        );
        ch.timed_out = true;
        let text = format!(
            "delivery acknowledgement on channel {channel} timed out. Timeout value used: {timeout} ms. This timeout value can be configured, see consumers doc guide to learn more"
        );
        c.handle.event(BrokerEvent::CloseChannel { channel, error: AmqpError::precondition(text) });
    }
}

/// Unused for its `x-expires`: no consumer, and no declare, consume or
/// get for that long.
fn is_unused(q: &Queue, now: u64) -> bool {
    q.args.expires.is_some_and(|ttl| now >= q.last_used.saturating_add(ttl)) && q.consumers.is_empty()
}

#[cfg(test)]
#[path = "timers_tests.rs"]
mod tests;
