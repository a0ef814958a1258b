//! Publishing: route a message, append it to the log once for all the
//! durable queues it reaches, enqueue it, and deliver. Dead-lettering
//! republishes through the same [`State::deliver_to`].

use smallvec::SmallVec;

use super::dead_letter::{Departed, Reason};
use super::*;
use crate::store::StoreError;

/// What offering one message to its target queues did.
#[derive(Debug, Default)]
pub(super) struct Delivery<'a> {
    /// Queues that took the message (mostly one: kept inline, as are the
    /// lists below, so that a publish allocates nothing for them).
    pub accepted: SmallVec<[Arc<str>; 2]>,
    /// A queue refused it (x-overflow = reject-publish).
    pub rejected: bool,
    /// The groups of the replicated queues it reached: their groups must
    /// commit it (it is not enqueued here: every member applies the
    /// group's commit).
    pub replicated: SmallVec<[u64; 1]>,
    pub durable_position: Option<u64>,
    /// The log recorded the message's move out of its old queue together
    /// with its new copy (dead-lettering only).
    pub moved: bool,
    /// Messages that left queues because of it: dropped from the head for
    /// length, expired (a TTL of 0), or refused by a reject-publish-dlx
    /// queue.
    pub departed: Vec<Departed>,
    /// The expiry-order locks of the queues whose expired messages are in
    /// `departed`: held until those are dead-lettered (see
    /// `State::expiry_order`).
    pub expiry_order: SmallVec<[parking_lot::MutexGuard<'a, ()>; 1]>,
}

impl Broker {
    /// Routes a message and enqueues it on every queue it reaches. A
    /// persistent message reaching durable queues is appended to the log
    /// once, with the list of those queues; `Routed::durable_position` then
    /// says what must be durable before the publish may be confirmed.
    /// `headers` are the publisher's, `CC` and `BCC` included (the message's
    /// own properties no longer carry `BCC`).
    pub fn publish(
        &self,
        vhost: &str,
        exchange: &str,
        headers: Option<&FieldTable>,
        message: Arc<Message>,
    ) -> Result<Routed> {
        let st = self.state.read();
        // The default exchange is never internal: no lookup for it.
        if let Some(ex) = (!exchange.is_empty()).then(|| st.exchange(vhost, exchange)).flatten()
            && ex.internal
        {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{vhost}'"
            )));
        }
        if exchange.is_empty() && message.routing_key.starts_with(REPLY_TO_QUEUE) {
            return Ok(st.reply_to(&message));
        }
        let targets = st.route_publish(vhost, exchange, &message.routing_key, headers)?;
        let pressure = self.memory.paging().then_some(&*self.memory);
        let arrival = Arrival::Published { pressure };
        let mut delivery = st.deliver_to(vhost, &targets, message, &self.store, None, arrival).map_err(store_failed)?;
        let outcome = Routed {
            routed: !delivery.accepted.is_empty() || delivery.rejected || !delivery.replicated.is_empty(),
            rejected: delivery.rejected,
            durable_position: delivery.durable_position,
            replicated: std::mem::take(&mut delivery.replicated),
        };
        if !delivery.departed.is_empty() {
            let order = std::mem::take(&mut delivery.expiry_order);
            let mut touched = Vec::new();
            for departed in delivery.departed {
                st.dead_letter(departed, &self.store, &mut touched);
            }
            drop(order);
            st.drain_all(vhost, touched, &self.store);
        }
        Ok(outcome)
    }
}

/// How a message reaches [`State::deliver_to`].
#[derive(Debug, Clone, Copy)]
pub(super) enum Arrival<'a> {
    /// Published: each queue hands it to a waiting consumer at once, then
    /// applies a TTL of 0 and its length limits to what no consumer took
    /// (RabbitMQ delivers before it drops), and pages out under memory
    /// `pressure`, all under the one hold of its lock.
    Published { pressure: Option<&'a memory::MemoryMonitor> },
    /// Dead-lettered: enqueued within the length limits; the caller
    /// drains the queues it reached.
    DeadLettered,
}

impl State {
    /// Offers a message to the named queues of a vhost: appends it to the log once
    /// for the durable ones (moving it out of `moved_from` in the same
    /// step), then enqueues it, and for a publish delivers it (see
    /// [`Arrival`]). Messages that leave queues meanwhile are returned in
    /// [`Delivery::departed`], for the caller to dead-letter once it holds
    /// no queue's lock.
    pub(super) fn deliver_to(
        &self,
        vhost: &str,
        targets: &[Arc<str>],
        message: Arc<Message>,
        store: &LogStore,
        moved_from: Option<(u32, u64)>,
        arrival: Arrival<'_>,
    ) -> std::result::Result<Delivery<'_>, StoreError> {
        let trim_later = matches!(arrival, Arrival::Published { .. });
        let mut delivery = Delivery::default();
        let Some(v) = self.vhosts.get(vhost) else { return Ok(delivery) };
        let size = message.body_len();
        // Every target's lock, taken at once in address order (the order
        // between queue locks): the message goes to all of them or, if
        // the log refuses it, to none.
        let mut cells: SmallVec<[&Arc<QueueLock>; 2]> = targets.iter().filter_map(|n| v.queues.get(&**n)).collect();
        cells.sort_unstable_by_key(|c| Arc::as_ptr(c) as usize);
        let mut queues: SmallVec<[parking_lot::MutexGuard<'_, Queue>; 2]> = cells.iter().map(|c| c.lock()).collect();
        // Which of `queues` take it, and whether the log keeps it for them.
        let mut accepting: SmallVec<[(usize, bool); 4]> = SmallVec::new();
        let mut durable_ids: SmallVec<[u32; 4]> = SmallVec::new();
        // Streams take the message as a record of their own each.
        let mut streams: SmallVec<[usize; 1]> = SmallVec::new();
        for (i, q) in queues.iter().enumerate() {
            if q.is_stream() {
                streams.push(i);
                continue;
            }
            if let Some(replica) = &q.replica {
                delivery.replicated.push(replica.group);
                continue;
            }
            if q.would_reject(size) {
                delivery.rejected = true;
                if q.args.overflow == Some(Overflow::RejectPublishDlx) {
                    let entry = QueuedMessage {
                        seq: 0,
                        store_id: 0,
                        message: Some(message.clone()),
                        size: size as u32,
                        redelivered: false,
                        expires_at: 0,
                        level: 0,
                        delivery_count: 0,
                    };
                    delivery.departed.push(Departed::from(q, vec![entry], Reason::Maxlen));
                }
                continue;
            }
            let stored = q.keeps_in_log(&message);
            match q.store_id {
                Some(id) if stored => {
                    durable_ids.push(id);
                    accepting.push((i, true));
                }
                _ => accepting.push((i, false)),
            }
        }
        let now = queue::now_ms();
        let mut store_id = 0;
        let mut moved_from = moved_from;
        for i in streams {
            let q = &mut queues[i];
            // The move out of a dead-lettering queue goes with the first record.
            let moving = moved_from.take();
            let end = stream::publish_to_stream(&mut *q, &message, store, moving)?;
            delivery.durable_position = delivery.durable_position.max(Some(end));
            delivery.accepted.push(q.name.clone());
            delivery.moved |= moving.is_some();
        }
        if !durable_ids.is_empty() {
            let (id, end) = store.publish_moving(
                &durable_ids,
                &message.exchange,
                &message.routing_key,
                &message.properties,
                &message.body,
                moved_from,
            )?;
            store_id = id;
            delivery.durable_position = delivery.durable_position.max(Some(end));
            delivery.moved |= moved_from.is_some();
        }
        let priority = message.priority;
        let mut fx = Effects::default();
        for &(i, stored) in &accepting {
            let q = &mut queues[i];
            let store_id = if stored { store_id } else { 0 };
            q.apply(Command::Enqueue { message: message.clone(), store_id, trim_later }, now, &mut fx);
            q.counters.publish += 1;
            delivery.accepted.push(q.name.clone());
            // A failure is the log's I/O failure, which its writer reports.
            let _ = carry_out(q, &mut fx, store, &mut delivery.departed);
        }
        if let Arrival::Published { pressure } = arrival {
            for (q, cell) in queues.iter_mut().zip(&cells) {
                self.deliver_ready(q, store, now);
                // What no consumer took and is already due (a TTL of 0)
                // goes now, unless another thread is expiring the queue:
                // the timer then takes it after that thread's messages.
                if q.next_expiry().is_some_and(|at| now >= at)
                    && let Some(order) = self.expiry_stripe(cell).try_lock()
                {
                    q.apply(Command::Expire, now, &mut fx);
                    delivery.expiry_order.push(order);
                }
                // Length limits apply to what no consumer took.
                q.apply(Command::Trim, now, &mut fx);
                let level = q.level_of(priority);
                memory::page_out(q, Some(level), store, pressure);
                let _ = carry_out(q, &mut fx, store, &mut delivery.departed);
            }
        }
        Ok(delivery)
    }
}
