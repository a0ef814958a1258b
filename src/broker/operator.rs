//! What operators do to queues outside AMQP (the HTTP API's "get
//! messages", and the channel listing): taking messages off a queue with
//! a chosen settlement, and describing channels.

use super::*;

/// How messages taken by [`Broker::operator_get`] are settled, as the
/// management API's `ackmode` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetSettle {
    /// Put back (flagged redelivered): `ack_requeue_true`, `reject_requeue_true`.
    Requeue,
    /// Removed for good: `ack_requeue_false`.
    Ack,
    /// Rejected without requeue: dead-lettered when the queue says so.
    Reject,
}

/// One message [`Broker::operator_get`] took.
#[derive(Debug, Clone)]
pub struct Taken {
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// Ready messages left in the queue after this one was taken.
    pub remaining: usize,
}

/// What the channel listing shows of a channel.
#[derive(Debug, Clone)]
pub struct ChannelRow {
    pub connection: u64,
    pub number: u16,
    pub vhost: String,
    pub user: String,
    pub peer: String,
    pub prefetch_count: u16,
    pub global_prefetch_count: u16,
    pub unacked: usize,
    pub consumers: usize,
    pub mode: ChannelMode,
}

impl Broker {
    /// Takes up to `count` ready messages off a queue, as the management
    /// API's POST /get does; bodies paged out to the log are read without
    /// the broker's lock.
    pub fn operator_get(&self, vhost: &str, queue: &str, count: usize, settle: GetSettle) -> Result<Vec<Taken>> {
        let mut taken = Vec::new();
        let mut put_back = Vec::new();
        while taken.len() < count {
            let mut st = self.state.read();
            let cell = st.queue(vhost, queue).ok_or_else(|| no_queue(vhost, queue))?.clone();
            // What expired goes first, as for basic.get.
            st.expire_messages(&cell, &self.store);
            let mut q = cell.lock();
            let mut fx = Effects::default();
            q.apply(Command::Checkout { settled: false }, queue::now_ms(), &mut fx);
            let Some(mut entry) = fx.taken.take() else { break };
            let redelivered = entry.redelivered;
            let message = match entry.message.clone() {
                Some(m) => m,
                None => {
                    drop(q);
                    drop(st);
                    let read = self.store.read(entry.store_id);
                    st = self.state.read();
                    // A queue deleted meanwhile took the message with it.
                    if !st.queue(vhost, queue).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                        break;
                    }
                    q = cell.lock();
                    match read {
                        Ok(record) => {
                            let message = Arc::new(message_from_record(record));
                            entry.message = Some(message.clone());
                            message
                        }
                        Err(e) => {
                            dispatch::drop_checked_out(&mut q, entry, false, &e, &mut fx);
                            let _ = carry_out(&q, &mut fx, &self.store, &mut Vec::new());
                            continue;
                        }
                    }
                }
            };
            q.counters.get += 1;
            if redelivered {
                q.counters.redeliver += 1;
                GlobalStats::add(&self.stats.redelivered, 1);
            }
            GlobalStats::add(&self.stats.delivered_get_manual_ack, 1);
            let remaining = q.ready_count();
            let now = queue::now_ms();
            match settle {
                // Settled once the others are taken, so that the loop
                // does not take it again.
                GetSettle::Requeue => put_back.push(entry),
                GetSettle::Ack => {
                    q.counters.ack += 1;
                    GlobalStats::add(&self.stats.acknowledged, 1);
                    q.apply(Command::Settle { entry, how: Settle::Ack }, now, &mut fx);
                }
                GetSettle::Reject => q.apply(Command::Settle { entry, how: Settle::Discard }, now, &mut fx),
            }
            let mut departed = Vec::new();
            let _ = carry_out(&q, &mut fx, &self.store, &mut departed);
            drop(q);
            for d in departed {
                st.depart(d, &self.store);
            }
            taken.push(Taken { message, redelivered, remaining });
        }
        if !put_back.is_empty() {
            // Back in their places, flagged redelivered, as a get and a
            // requeueing nack leave them in RabbitMQ.
            let st = self.state.read();
            let mut departed = Vec::new();
            if let Some(cell) = st.queue(vhost, queue) {
                let mut q = cell.lock();
                let mut fx = Effects::default();
                for entry in put_back {
                    let entry = dispatch::unloaded(entry, &self.store);
                    q.apply(Command::Settle { entry, how: Settle::Requeue }, queue::now_ms(), &mut fx);
                }
                let _ = carry_out(&q, &mut fx, &self.store, &mut departed);
            }
            for d in departed {
                st.depart(d, &self.store);
            }
            st.drain(vhost, queue, &self.store);
        }
        Ok(taken)
    }

    /// Notes that a channel went into confirm or transaction mode.
    pub fn set_channel_mode(&self, conn: u64, channel: u16, mode: ChannelMode) {
        if let Some(ch) = self.state.read().channel(conn, channel) {
            ch.lock().mode = mode;
        }
    }

    /// Every open channel, by connection and number.
    pub fn list_channels(&self) -> Vec<ChannelRow> {
        let st = self.state.read();
        let mut rows: Vec<ChannelRow> = st
            .channels
            .iter()
            .map(|(&(conn, number), ch)| {
                let ch = ch.lock();
                let info = st.connections.get(&conn).map(|c| &c.info);
                ChannelRow {
                    connection: conn,
                    number,
                    vhost: ch.vhost.to_string(),
                    user: info.map(|i| i.user.clone()).unwrap_or_default(),
                    peer: info.map(|i| i.peer.clone()).unwrap_or_default(),
                    prefetch_count: ch.consumer_prefetch,
                    global_prefetch_count: ch.channel_prefetch,
                    unacked: ch.unacked.len() + ch.remote_unacked.len(),
                    consumers: ch.consumers.len(),
                    mode: ch.mode,
                }
            })
            .collect();
        rows.sort_by_key(|r| (r.connection, r.number));
        rows
    }
}
