//! Queue lifecycle at the broker level: declare (with equivalence checks
//! and logging of durable queues), purge, delete (bindings, consumers and
//! the log's claim on its messages go with it), and TTL expiry of heads
//! (expired messages are dead-lettered when the queue says so).

use super::*;

impl Broker {
    /// queue.declare; returns (name, ready messages, consumers).
    pub fn queue_declare(&self, conn: u64, m: &QueueDeclare) -> Result<(String, u32, u32)> {
        let mut st = self.state.lock();
        let name = if m.queue.is_empty() {
            if m.passive {
                return Err(no_queue(""));
            }
            loop {
                let candidate = generated_name("amq.gen-");
                if !st.queues.contains_key(candidate.as_str()) {
                    break candidate;
                }
            }
        } else {
            m.queue.clone()
        };
        if name.starts_with(REPLY_TO_QUEUE) {
            // The direct reply-to pseudo-queue, and the reply address of a
            // requester still consuming its replies, exist (as RabbitMQ,
            // any declare of them is passive): empty, one consumer.
            return if name == REPLY_TO_QUEUE || st.reply_consumer_of(&name).is_some() {
                Ok((name, 0, 1))
            } else {
                Err(no_queue(&name))
            };
        }
        if let Some(q) = st.queues.get_mut(name.as_str()) {
            check_owner(q, conn)?;
            if !m.passive {
                if m.exclusive != q.exclusive_owner.is_some() {
                    return Err(AmqpError::locked(format!(
                        "cannot obtain exclusive access to locked queue '{name}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
                    )));
                }
                arguments::check_equivalent(
                    &name,
                    (q.durable, q.auto_delete, &q.arguments),
                    m.durable,
                    m.auto_delete,
                    &m.arguments,
                )?;
            }
            // Any declare, passive too, counts as a use for x-expires.
            q.last_used = queue::now_ms();
            let q = st.queues.get(name.as_str()).map(|q| (q.name.clone(), q.incarnation));
            if let Some((qname, incarnation)) = q {
                st.expire_messages(&qname, incarnation, &self.store);
            }
            let q = st.queues.get(name.as_str()).ok_or_else(|| no_queue(&name))?;
            return Ok((name, q.ready_count() as u32, q.consumers.len() as u32));
        }
        if m.passive {
            return Err(no_queue(&name));
        }
        if name.starts_with("amq.") && !m.queue.is_empty() {
            return Err(AmqpError::access_refused(format!("queue name '{name}' contains reserved prefix 'amq.*'")));
        }
        let args = QueueArgs::parse(&m.arguments, &name)?;
        if args.queue_type == QueueType::Quorum {
            // As RabbitMQ's quorum queues: replicated, so durable and shared.
            let property = if m.auto_delete {
                Some("auto-delete")
            } else if m.exclusive {
                Some("exclusive-owner")
            } else if !m.durable {
                Some("non-durable")
            } else {
                None
            };
            if let Some(property) = property {
                return Err(AmqpError::precondition(format!(
                    "invalid property '{property}' for queue '{name}' in vhost '/'"
                )));
            }
        }
        let owner = m.exclusive.then_some(conn);
        let mut q = Queue::new(&name, m.durable, owner, m.auto_delete, m.arguments.clone(), args);
        st.apply_policies_to(&mut q);
        // As in RabbitMQ, exclusive and auto-delete queues do not outlive a
        // restart, so only durable queues that are neither are logged.
        if q.durable && owner.is_none() && !q.auto_delete {
            let id = self.store.allocate_queue_id();
            q.store_id = Some(id);
            self.store.define(queue_record(&q, id)).map_err(store_failed)?;
        }
        st.next_incarnation += 1;
        q.incarnation = st.next_incarnation;
        st.queues.insert(q.name.clone(), q);
        // Every queue is bound to the default exchange by its name; that
        // binding is implicit (see `State::route`).
        Ok((name, 0, 0))
    }

    pub fn queue_purge(&self, conn: u64, name: &str) -> Result<u32> {
        let mut st = self.state.lock();
        let q = st.queues.get_mut(name).ok_or_else(|| no_queue(name))?;
        check_owner(q, conn)?;
        q.last_used = queue::now_ms();
        purge_queue(q, &self.store).map(|n| n as u32)
    }

    /// queue.delete; returns the message count and the tags of the
    /// deleting channel's own consumers, to cancel after the delete-ok.
    pub fn queue_delete(
        &self,
        conn: u64,
        channel: u16,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<(u32, Vec<String>)> {
        let mut st = self.state.lock();
        let Some(q) = st.queues.get(name) else {
            // As RabbitMQ: deleting a queue that does not exist is not an error.
            return Ok((0, Vec::new()));
        };
        check_owner(q, conn)?;
        if if_unused && !q.consumers.is_empty() {
            return Err(AmqpError::precondition(format!("queue '{name}' in vhost '/' in use")));
        }
        if if_empty && q.ready_count() > 0 {
            return Err(AmqpError::precondition(format!("queue '{name}' in vhost '/' is not empty")));
        }
        let count = q.ready_count() as u32;
        let own = st.delete_queue_from(name, &self.store, Some((conn, channel)));
        Ok((count, own))
    }
}

impl State {
    /// Removes a queue and every binding to it; its consumers are told with
    /// basic.cancel when their client asked for that.
    pub(super) fn delete_queue(&mut self, name: &str, store: &LogStore) {
        self.delete_queue_from(name, store, None);
    }

    /// As [`State::delete_queue`]; the basic.cancel of the consumers of the
    /// channel `from` (the one deleting the queue) are returned rather than
    /// sent, as they must follow its queue.delete-ok.
    pub(super) fn delete_queue_from(&mut self, name: &str, store: &LogStore, from: Option<(u64, u16)>) -> Vec<String> {
        let mut own_cancels = Vec::new();
        let Some(q) = self.queues.remove(name) else { return own_cancels };
        for c in &q.consumers {
            if let Some(ch) = self.channels.get_mut(&(c.connection.id, c.channel)) {
                ch.consumers.remove(&c.tag);
            }
            if c.connection.cancel_notify {
                if from == Some((c.connection.id, c.channel)) {
                    own_cancels.push(c.tag.to_string());
                } else {
                    c.connection.method(c.channel, BasicCancel { consumer_tag: c.tag.to_string(), no_wait: true });
                }
            }
        }
        if let Some(qid) = q.store_id {
            // The log must forget the messages the queue still held, ready
            // or delivered and unacked, so their segments can be reclaimed.
            let mut ids = q.ready_store_ids();
            for ch in self.channels.values() {
                ids.extend(
                    ch.unacked
                        .values()
                        .filter(|u| u.incarnation == q.incarnation && u.entry.store_id != 0)
                        .map(|u| u.entry.store_id),
                );
            }
            if let Err(e) = store.queue_deleted(qid, &ids) {
                tracing::error!("queue '{name}' deleted in memory only: {e}");
            }
        }
        let dest = Destination::Queue(name.to_string());
        let mut emptied = Vec::new();
        for ex in self.exchanges.values_mut() {
            let before = ex.bindings.len();
            ex.bindings.retain(|b| b.destination != dest);
            if ex.auto_delete && before > 0 && ex.bindings.is_empty() {
                emptied.push(ex.name.clone());
            }
        }
        for ex in emptied {
            self.delete_exchange(&ex, store);
        }
        own_cancels
    }
}

impl State {
    /// Drops (or dead-letters, reason `maxlen`) the head messages that keep
    /// a queue over a drop-head length limit.
    pub(super) fn trim_queue(&mut self, name: &str, store: &LogStore) {
        let Some(q) = self.queues.get_mut(name) else { return };
        let dropped = q.trim_to_limits();
        if !dropped.is_empty() {
            let departed = Departed {
                queue: q.name.clone(),
                incarnation: q.incarnation,
                entries: dropped,
                reason: Reason::Maxlen,
            };
            self.depart(departed, store);
        }
    }

    /// Takes a queue's expired head messages out and dead-letters them (or
    /// drops them, and their log records' claim).
    pub(super) fn expire_messages(&mut self, name: &Arc<str>, incarnation: u64, store: &LogStore) {
        let Some(q) = self.queues.get_mut(name).filter(|q| q.incarnation == incarnation) else { return };
        let expired = q.expire(queue::now_ms());
        if expired.is_empty() {
            return;
        }
        if q.args.dead_letter_exchange.is_none() {
            dead_letter::forget(store, q.store_id, &expired);
            return;
        }
        let departed = Departed { queue: name.clone(), incarnation, entries: expired, reason: Reason::Expired };
        self.depart(departed, store);
    }
}

pub(super) fn purge_queue(q: &mut Queue, store: &LogStore) -> Result<usize> {
    let purged = q.purge();
    if let Some(qid) = q.store_id {
        let ids: Vec<u64> = purged.iter().filter(|e| e.store_id != 0).map(|e| e.store_id).collect();
        if !ids.is_empty() {
            store.ack(qid, &ids).map_err(store_failed)?;
        }
    }
    Ok(purged.len())
}
