//! What happens with time rather than with a client's method: expired
//! messages leave their queues (dead-lettered when the queue says so)
//! even when nobody looks at the queue, queues unused for their
//! `x-expires` are deleted, and a channel whose oldest delivery stayed
//! unacknowledged past the consumer timeout is closed.
//!
//! One thread ticks every [`TICK`]; each tick is a short pass under the
//! broker's lock.

use std::sync::Weak;
use std::time::Duration;

use super::*;

/// How often the timers run: the precision of TTLs and expiries.
pub const TICK: Duration = Duration::from_millis(50);

/// Consumer timeouts are checked this often (RabbitMQ's checks are coarser).
const CONSUMER_TIMEOUT_EVERY: u64 = 1_000;

/// RabbitMQ's default `consumer_timeout`: 30 minutes.
pub const DEFAULT_CONSUMER_TIMEOUT_MS: u64 = 30 * 60 * 1000;

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

pub(super) fn spawn(state: Weak<Mutex<State>>, store: Arc<LogStore>) -> std::io::Result<()> {
    std::thread::Builder::new().name("warren-timers".into()).spawn(move || {
        let mut last_timeout_check = 0;
        loop {
            std::thread::sleep(TICK);
            let Some(state) = state.upgrade() else { return };
            let mut st = state.lock();
            let now = queue::now_ms();
            st.expire_all(now, &store);
            st.stream_retention(now, &store);
            if now.saturating_sub(last_timeout_check) >= CONSUMER_TIMEOUT_EVERY {
                last_timeout_check = now;
                st.check_consumer_timeouts(now);
            }
        }
    })?;
    Ok(())
}

impl Broker {
    /// Sets the `consumer_timeout` (ms; None turns it off).
    pub fn set_consumer_timeout(&self, timeout: Option<u64>) {
        self.state.lock().consumer_timeout = timeout;
    }
}

impl State {
    /// Expires messages whose time came, and deletes queues unused for
    /// their `x-expires`.
    fn expire_all(&mut self, now: u64, store: &LogStore) {
        let due: Vec<(Arc<str>, Arc<str>, u64)> = self
            .vhosts
            .values()
            .flat_map(|v| v.queues.values())
            .filter(|q| q.next_expiry().is_some_and(|at| now >= at))
            .map(|q| (q.vhost.clone(), q.name.clone(), q.incarnation))
            .collect();
        for (vhost, name, incarnation) in due {
            self.expire_messages(&vhost, &name, incarnation, store);
            self.drain(&vhost, &name, store);
        }
        let unused: Vec<(Arc<str>, Arc<str>)> = self
            .vhosts
            .values()
            .flat_map(|v| v.queues.values())
            .filter(|q| {
                q.args.expires.is_some_and(|ttl| now >= q.last_used.saturating_add(ttl)) && q.consumers.is_empty()
            })
            .map(|q| (q.vhost.clone(), q.name.clone()))
            .collect();
        for (vhost, name) in unused {
            tracing::info!("queue '{name}' in vhost '{vhost}' expired: unused for its x-expires");
            self.delete_queue(&vhost, &name, store);
        }
    }

    /// Closes channels whose oldest unacknowledged delivery is older than
    /// its queue's `x-consumer-timeout` or the broker's `consumer_timeout`.
    fn check_consumer_timeouts(&mut self, now: u64) {
        let State { channels, vhosts, connections, consumer_timeout, .. } = self;
        for (&(conn, channel), ch) in channels.iter_mut() {
            if ch.timed_out {
                continue;
            }
            let Some((_, oldest)) = ch.unacked.first_key_value() else { continue };
            // The consumer's own x-consumer-timeout, else its queue's, else the broker's.
            let q = vhosts
                .get(&ch.vhost)
                .and_then(|v| v.queues.get(&oldest.queue))
                .filter(|q| q.incarnation == oldest.incarnation);
            let consumer = oldest.consumer_tag.as_ref().and_then(|tag| {
                q.and_then(|q| {
                    q.consumers.iter().find(|c| c.tag == *tag && c.connection.id == conn && c.channel == channel)
                })
            });
            let timeout = consumer
                .and_then(|c| c.args.timeout)
                .or_else(|| q.and_then(|q| q.args.consumer_timeout))
                .or(*consumer_timeout);
            let Some(timeout) = timeout else { continue };
            if now.saturating_sub(oldest.delivered_at) <= timeout {
                continue;
            }
            let Some(c) = connections.get(&conn) else { continue };
            tracing::warn!(
                "consumer on channel {channel} of connection {} timed out waiting for an acknowledgement ({timeout} ms)",
                c.info.peer
            );
            ch.timed_out = true;
            c.handle.event(BrokerEvent::CloseChannel {
                channel,
                error: AmqpError::precondition(format!(
                    "delivery acknowledgement on channel {channel} timed out. Timeout value used: {timeout} ms. This timeout value can be configured, see consumers doc guide to learn more"
                )),
            });
        }
    }
}
