//! Publishing: route a message, append it to the log once for all the
//! durable queues it reaches, enqueue it, and deliver. Dead-lettering
//! republishes through the same [`State::deliver_to`].

use smallvec::SmallVec;

use super::dead_letter::{Departed, Reason};
use super::*;
use crate::store::StoreError;

/// What offering one message to its target queues did.
#[derive(Debug, Default)]
pub(super) struct Delivery {
    /// Queues that took the message (mostly one: kept inline, as are the
    /// lists below, so that a publish allocates nothing for them).
    pub accepted: SmallVec<[Arc<str>; 2]>,
    /// A queue refused it (x-overflow = reject-publish).
    pub rejected: bool,
    pub durable_position: Option<u64>,
    /// The log recorded the message's move out of its old queue together
    /// with its new copy (dead-lettering only).
    pub moved: bool,
    /// Messages that left queues because of it: dropped from the head for
    /// length, or refused by a reject-publish-dlx queue.
    pub departed: Vec<Departed>,
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
        let mut st = self.state.lock();
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
        let message_priority = message.priority;
        let delivery = st.deliver_to(vhost, &targets, message, &self.store, None, true).map_err(store_failed)?;
        let outcome = Routed {
            routed: !delivery.accepted.is_empty() || delivery.rejected,
            rejected: delivery.rejected,
            durable_position: delivery.durable_position,
        };
        for departed in delivery.departed {
            st.depart(departed, &self.store);
        }
        let priority = message_priority;
        let pressure = self.memory.paging().then_some(&*self.memory);
        for name in &delivery.accepted {
            st.deliver_ready(vhost, name, &self.store);
            // One lookup for what follows, unless something expires.
            let Some(mut q) = st.queue_mut(vhost, name) else { continue };
            // What no consumer took and is already due (a TTL of 0) goes now.
            if q.next_expiry().is_some_and(|at| queue::now_ms() >= at) {
                let incarnation = q.incarnation;
                st.expire_messages(vhost, name, incarnation, &self.store);
                let Some(again) = st.queue_mut(vhost, name) else { continue };
                q = again;
            }
            // Length limits apply to what no consumer took.
            let dropped = q.trim_to_limits();
            let level = q.level_of(priority);
            memory::page_out(q, Some(level), &self.store, pressure);
            if !dropped.is_empty() {
                let departed = Departed::from(q, dropped, Reason::Maxlen);
                st.depart(departed, &self.store);
            }
        }
        Ok(outcome)
    }
}

impl State {
    /// Offers a message to the named queues of a vhost: appends it to the log once
    /// for the durable ones (moving it out of `moved_from` in the same
    /// step), then enqueues it. Does not deliver.
    pub(super) fn deliver_to(
        &mut self,
        vhost: &str,
        targets: &[Arc<str>],
        message: Arc<Message>,
        store: &LogStore,
        moved_from: Option<(u32, u64)>,
        trim_later: bool,
    ) -> std::result::Result<Delivery, StoreError> {
        let mut delivery = Delivery::default();
        let Some(v) = self.vhosts.get_mut(vhost) else { return Ok(delivery) };
        let size = message.body_len();
        // Queue name, and whether the log keeps the message for it.
        let mut accepting: SmallVec<[(&Arc<str>, bool); 4]> = SmallVec::new();
        let mut durable_ids: SmallVec<[u32; 4]> = SmallVec::new();
        // Streams take the message as a record of their own each.
        let mut streams: SmallVec<[&Arc<str>; 1]> = SmallVec::new();
        for name in targets {
            let Some(q) = v.queues.get(&**name) else { continue };
            if q.is_stream() {
                streams.push(name);
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
                    accepting.push((name, true));
                }
                _ => accepting.push((name, false)),
            }
        }
        let now = queue::now_ms();
        let mut store_id = 0;
        let mut moved_from = moved_from;
        for name in streams {
            let Some(q) = v.queues.get_mut(&**name) else { continue };
            // The move out of a dead-lettering queue goes with the first record.
            let moving = moved_from.take();
            let end = stream::publish_to_stream(q, &message, store, moving)?;
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
        for (name, stored) in accepting {
            let Some(q) = v.queues.get_mut(&**name) else { continue };
            let id = if stored { store_id } else { 0 };
            let (_, dropped) = q.enqueue(message.clone(), id, now, trim_later);
            q.counters.publish += 1;
            delivery.accepted.push(q.name.clone());
            if !dropped.is_empty() {
                delivery.departed.push(Departed::from(q, dropped, Reason::Maxlen));
            }
        }
        Ok(delivery)
    }
}
