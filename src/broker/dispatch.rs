//! Consumers and delivery: basic.qos, consume, cancel, get, channel flow,
//! and the drain that hands ready messages to consumers with room (the
//! highest `x-priority` first, round-robin among equals, only the active
//! one of a single-active-consumer queue), asking the loader for bodies
//! paged out to the log.

use super::*;

impl Broker {
    pub fn flow(&self, conn: u64, channel: u16, active: bool) {
        let mut st = self.state.lock();
        let (vhost, queues): (Arc<str>, Vec<Arc<str>>) = match st.channels.get_mut(&(conn, channel)) {
            Some(ch) => {
                ch.paused = !active;
                (ch.vhost.clone(), ch.consumers.values().cloned().collect())
            }
            None => return,
        };
        if active {
            for q in queues {
                st.drain(&vhost, &q, &self.store);
            }
        }
    }

    /// Called by a connection's writer once a backlog it reported has drained.
    pub fn resume_connection(&self, conn: u64) {
        let mut st = self.state.lock();
        let Some(vhost) = st.connections.get(&conn).map(|c| c.vhost.clone()) else { return };
        let queues: HashSet<Arc<str>> = st
            .channels
            .iter()
            .filter(|((c, _), _)| *c == conn)
            .flat_map(|(_, ch)| ch.consumers.values().cloned())
            .collect();
        for q in queues {
            st.drain(&vhost, &q, &self.store);
        }
    }

    pub fn qos(&self, conn: u64, channel: u16, prefetch_count: u16, global: bool) {
        let mut st = self.state.lock();
        let (vhost, queues): (Arc<str>, Vec<Arc<str>>) = match st.channels.get_mut(&(conn, channel)) {
            Some(ch) => {
                if global {
                    ch.channel_prefetch = prefetch_count;
                } else {
                    ch.consumer_prefetch = prefetch_count;
                }
                (ch.vhost.clone(), ch.consumers.values().cloned().collect())
            }
            None => return,
        };
        // A raised limit may let waiting messages through.
        for q in queues {
            st.drain(&vhost, &q, &self.store);
        }
    }

    /// basic.consume: registers the consumer and sends consume-ok (unless
    /// no-wait); deliveries start with [`Broker::start_delivery`], so the
    /// client always learns the tag before the first message.
    #[allow(clippy::too_many_arguments)]
    pub fn consume(
        &self,
        handle: &ConnectionHandle,
        channel: u16,
        queue: &str,
        tag: &str,
        no_ack: bool,
        exclusive: bool,
        no_wait: bool,
        arguments: &FieldTable,
    ) -> Result<()> {
        let mut st = self.state.lock();
        let conn = handle.id;
        let client_chose_tag = !tag.is_empty();
        let tag: Arc<str> = if tag.is_empty() { Arc::from(generated_name("amq.ctag-")) } else { Arc::from(tag) };
        let State { vhosts, channels, .. } = &mut *st;
        let ch = channels
            .get_mut(&(conn, channel))
            .ok_or_else(|| AmqpError::connection(reply::CHANNEL_ERROR, "channel not open"))?;
        let vhost = ch.vhost.clone();
        if ch.consumers.contains_key(&tag) || ch.reply_to.as_ref().is_some_and(|r| r.tag == tag) {
            return Err(AmqpError::connection(reply::NOT_ALLOWED, format!("attempt to reuse consumer tag '{tag}'")));
        }
        if queue == REPLY_TO_QUEUE {
            if !no_ack {
                return Err(AmqpError::precondition("reply consumer cannot acknowledge"));
            }
            if ch.reply_to.is_some() {
                return Err(AmqpError::precondition("reply consumer already set"));
            }
            ch.reply_to = Some(ReplyConsumer { tag: tag.clone(), secret: fastrand::u64(..) });
            if !no_wait {
                handle.method(channel, BasicConsumeOk { consumer_tag: tag.to_string() });
            }
            return Ok(());
        }
        let q = vhosts.get_mut(&vhost).and_then(|v| v.queues.get_mut(queue)).ok_or_else(|| no_queue(&vhost, queue))?;
        check_owner(q, conn)?;
        // A stream's offset is checked first, as RabbitMQ checks it.
        let stream_args = match q.is_stream() {
            true => {
                Some(stream::consumer::StreamConsumeArgs::parse(arguments, queue, &vhost, crate::store::wall_ms())?)
            }
            false => None,
        };
        arguments::check_consume_keys(q.args.queue_type, arguments, queue, &vhost)?;
        let args = ConsumerArgs::parse(arguments, queue)?;
        let stream = match stream_args {
            Some(stream_args) => {
                let client_tag = client_chose_tag.then_some(&tag);
                Some(stream::consumer_cursor(q, ch, client_tag, no_ack, stream_args)?)
            }
            None => None,
        };
        // A stream only notes `exclusive`, as RabbitMQ's: readers do not
        // take messages from each other.
        if !q.is_stream() && (q.has_exclusive_consumer() || (exclusive && !q.consumers.is_empty())) {
            return Err(AmqpError::access_refused(format!("queue '{queue}' in vhost '{vhost}' in exclusive use")));
        }
        let active = !q.args.single_active_consumer || q.consumers.is_empty();
        if let (Some(cursor), Some(s)) = (&stream, q.stream_mut())
            && let Some(tag) = &cursor.tracking
        {
            s.tracking_tags.insert(tag.clone());
        }
        q.consumers.push_back(Consumer {
            tag: tag.clone(),
            connection: handle.clone(),
            channel,
            no_ack,
            exclusive,
            prefetch: ch.consumer_prefetch,
            unacked: 0,
            args,
            active,
            stream,
        });
        q.had_consumer = true;
        q.last_used = queue::now_ms();
        ch.consumers.insert(tag.clone(), q.name.clone());
        if !no_wait {
            handle.method(channel, BasicConsumeOk { consumer_tag: tag.to_string() });
        }
        Ok(())
    }

    /// Hands a queue's ready messages to its consumers. The connection that
    /// registered a consumer calls this once its consume-ok has gone out, so
    /// the reply travels in a write of its own ahead of the first deliveries
    /// (some clients only look at frames that arrive after it).
    pub fn start_delivery(&self, vhost: &str, queue: &str) {
        self.state.lock().drain(vhost, queue, &self.store);
    }

    /// basic.cancel; returns false for an unknown tag (which RabbitMQ answers with cancel-ok anyway).
    pub fn cancel(&self, conn: u64, channel: u16, tag: &str) -> bool {
        let mut st = self.state.lock();
        st.cancel(conn, channel, tag, &self.store)
    }

    /// basic.get: sends get-ok with the message or get-empty.
    pub fn get(&self, handle: &ConnectionHandle, channel: u16, queue: &str, no_ack: bool) -> Result<()> {
        let conn = handle.id;
        loop {
            let mut st = self.state.lock();
            let Some(vhost) = st.channels.get(&(conn, channel)).map(|ch| ch.vhost.clone()) else {
                return Err(AmqpError::connection(reply::CHANNEL_ERROR, "channel not open"));
            };
            let q = st.queue_mut(&vhost, queue).ok_or_else(|| no_queue(&vhost, queue))?;
            check_owner(q, conn)?;
            if q.is_stream() {
                return Err(AmqpError::not_implemented(format!(
                    "basic.get not supported by stream queues queue '{queue}' in vhost '{vhost}'"
                )));
            }
            if q.args.queue_type == QueueType::Quorum && q.args.single_active_consumer {
                return Err(AmqpError::locked(format!(
                    "cannot obtain access to locked queue '{queue}' in vhost '{vhost}'. basic.get operations are not supported by quorum queues with single active consumer"
                )));
            }
            q.last_used = queue::now_ms();
            let incarnation = q.incarnation;
            st.expire_messages(&vhost, queue, incarnation, &self.store);
            let Some(q) = st.queue_mut(&vhost, queue) else { return Err(no_queue(&vhost, queue)) };
            let Some(mut entry) = q.pop_ready() else {
                GlobalStats::add(&self.stats.get_empty, 1);
                handle.method(channel, BasicGetEmpty::default());
                return Ok(());
            };
            if entry.message.is_none() && st.loader.as_ref().is_some_and(|l| l.is_alive()) {
                // Read the body back without holding the broker's lock.
                drop(st);
                let read = self.store.read(entry.store_id);
                st = self.state.lock();
                // A queue deleted meanwhile took the message with it.
                let Some(q) = st.queue_of(&vhost, queue, incarnation) else { continue };
                match read {
                    Ok(record) => entry.message = Some(Arc::new(message_from_record(record))),
                    Err(e) => {
                        drop_unreadable(&self.store, q, entry.store_id, &e);
                        continue;
                    }
                }
            }
            let State { vhosts, channels, timers, consumer_timeout, .. } = &mut *st;
            let Some(q) =
                vhosts.get_mut(&vhost).and_then(|v| v.queues.get_mut(queue)).filter(|q| q.incarnation == incarnation)
            else {
                continue;
            };
            let Some(ch) = channels.get_mut(&(conn, channel)) else {
                q.put_back(entry);
                return Err(AmqpError::connection(reply::CHANNEL_ERROR, "channel not open"));
            };
            let Some(message) = load(&self.store, q, &entry) else { continue };
            let message = q.as_delivered(&entry, message);
            let tag = ch.take_tag();
            if no_ack {
                q.counters.get_no_ack += 1;
                GlobalStats::add(&self.stats.delivered_get_auto_ack, 1);
            } else {
                q.counters.get += 1;
                GlobalStats::add(&self.stats.delivered_get_manual_ack, 1);
            }
            if entry.redelivered {
                q.counters.redeliver += 1;
                GlobalStats::add(&self.stats.redelivered, 1);
            }
            let method = BasicGetOk {
                delivery_tag: tag,
                redelivered: entry.redelivered,
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
                message_count: q.ready_count() as u32,
            };
            if entry.store_id != 0 {
                let qid = q.settle_id();
                let stored = if no_ack {
                    self.store.ack(qid, &[entry.store_id])
                } else if !entry.redelivered {
                    self.store.delivered(qid, &[entry.store_id])
                } else {
                    Ok(())
                };
                stored.map_err(store_failed)?;
            }
            if !no_ack {
                let now = queue::now_ms();
                q.delivered(1);
                ch.unacked.insert(
                    tag,
                    Unacked {
                        queue: q.name.clone(),
                        incarnation: q.incarnation,
                        entry: unloaded(entry, &self.store),
                        consumer_tag: None,
                        delivered_at: now,
                    },
                );
                let timeout = super::timers::consumer_timeout_of(None, q.args.consumer_timeout, *consumer_timeout);
                ch.arm_timeout((conn, channel), now, timeout, timers);
            }
            handle.send(Outgoing::Content { channel, method: method.into(), message });
            return Ok(());
        }
    }
}

impl State {
    /// Hands ready messages of one queue to consumers with room, in
    /// round-robin order: a consumer that received a message moves to the back.
    pub(super) fn drain(&mut self, vhost: &str, queue: &str, store: &LogStore) {
        if let Some(q) = self.queue(vhost, queue).filter(|q| q.next_expiry().is_some()) {
            let incarnation = q.incarnation;
            self.expire_messages(vhost, queue, incarnation, store);
        }
        self.deliver_ready(vhost, queue, store);
    }

    /// [`State::drain`] without expiring first: a message just published
    /// goes to a consumer that can take it at once even with a TTL of 0, as
    /// in RabbitMQ; what stays behind expires on the next drain or tick.
    pub(super) fn deliver_ready(&mut self, vhost: &str, queue: &str, store: &LogStore) {
        let State { vhosts, channels, loader, stats, timers, consumer_timeout, .. } = self;
        let Some(q) = vhosts.get_mut(vhost).and_then(|v| v.queues.get_mut(queue)) else { return };
        if q.is_stream() {
            return self.deliver_stream(vhost, queue, store);
        }
        let counters_before = q.counters;
        // Log records for this drain, written once at the end: first
        // deliveries (so a restart flags them redelivered) and no-ack
        // deliveries (which settle at once).
        let mut delivered: Vec<u64> = Vec::new();
        let mut settled: Vec<u64> = Vec::new();
        // No consumer can beat one of this priority: the search stops there.
        let top_priority = q.consumers.iter().map(|c| c.args.priority).max().unwrap_or(0);
        while q.has_ready() && !q.consumers.is_empty() {
            // The first consumer with room among those of the highest
            // priority that have room: consumers move to the back after a
            // delivery, so equals take turns.
            let mut pick: Option<(usize, i32)> = None;
            for (i, c) in q.consumers.iter().enumerate() {
                if pick.is_some_and(|(_, p)| p == top_priority) {
                    break;
                }
                if !c.active || pick.is_some_and(|(_, p)| p >= c.args.priority) {
                    continue;
                }
                let consumer_room = c.no_ack || c.prefetch == 0 || c.unacked < c.prefetch as u32;
                if consumer_room
                    && channels
                        .get(&(c.connection.id, c.channel))
                        .is_some_and(|ch| c.no_ack && ch.takes_deliveries() || ch.has_room())
                    && c.connection.has_room()
                {
                    pick = Some((i, c.args.priority));
                }
            }
            let Some((index, _)) = pick else { break };
            if q.peek_ready().is_some_and(|e| e.message.is_none()) && loader.as_ref().is_some_and(|l| l.is_alive()) {
                // The loader reads it outside this lock and drains again.
                break;
            }
            let Some(entry) = q.pop_ready() else { break };
            let Some(message) = load(store, q, &entry) else { continue };
            let message = q.as_delivered(&entry, message);
            let Some(mut consumer) = q.consumers.remove(index) else { break };
            let Some(ch) = channels.get_mut(&(consumer.connection.id, consumer.channel)) else {
                q.consumers.push_back(consumer);
                break;
            };
            let delivery_tag = ch.take_tag();
            let redelivered = entry.redelivered;
            if consumer.no_ack {
                q.counters.deliver_no_ack += 1;
            } else {
                q.counters.deliver += 1;
            }
            if redelivered {
                q.counters.redeliver += 1;
            }
            if entry.store_id != 0 {
                if consumer.no_ack {
                    settled.push(entry.store_id);
                } else if !redelivered {
                    delivered.push(entry.store_id);
                }
            }
            if !consumer.no_ack {
                let now = queue::now_ms();
                consumer.unacked += 1;
                q.delivered(1);
                ch.unacked.insert(
                    delivery_tag,
                    Unacked {
                        queue: q.name.clone(),
                        incarnation: q.incarnation,
                        entry: unloaded(entry, store),
                        consumer_tag: Some(consumer.tag.clone()),
                        delivered_at: now,
                    },
                );
                let timeout = super::timers::consumer_timeout_of(
                    consumer.args.timeout,
                    q.args.consumer_timeout,
                    *consumer_timeout,
                );
                ch.arm_timeout((consumer.connection.id, consumer.channel), now, timeout, timers);
            }
            consumer.connection.send(Outgoing::Deliver {
                channel: consumer.channel,
                consumer_tag: consumer.tag.clone(),
                delivery_tag,
                redelivered,
                message,
            });
            q.consumers.push_back(consumer);
        }
        let c = q.counters;
        GlobalStats::add(&stats.delivered_consume_manual_ack, c.deliver - counters_before.deliver);
        GlobalStats::add(&stats.delivered_consume_auto_ack, c.deliver_no_ack - counters_before.deliver_no_ack);
        GlobalStats::add(&stats.redelivered, c.redeliver - counters_before.redeliver);
        if let Some(loader) = loader.as_ref().filter(|l| l.is_alive()) {
            read_ahead(q, loader);
        }
        // A failure here is the log's I/O failure, already reported by the
        // writer; the deliveries themselves are in memory and stand.
        if !delivered.is_empty() {
            let _ = store.delivered(q.settle_id(), &delivered);
        }
        if !settled.is_empty() {
            let _ = store.ack(q.settle_id(), &settled);
        }
    }

    pub(super) fn cancel(&mut self, conn: u64, channel: u16, tag: &str, store: &LogStore) -> bool {
        if self.cancel_reply_consumer(conn, channel, tag) {
            return true;
        }
        let Some(ch) = self.channels.get_mut(&(conn, channel)) else { return false };
        let Some(queue) = ch.consumers.remove(tag) else { return false };
        let vhost = ch.vhost.clone();
        let Some(q) = self.queue_mut(&vhost, &queue) else { return true };
        q.consumers.retain(|c| !(&*c.tag == tag && c.connection.id == conn && c.channel == channel));
        q.activate_next_consumer();
        q.last_used = queue::now_ms();
        if q.auto_delete && q.consumers.is_empty() {
            self.delete_queue(&vhost, &queue, store);
        } else {
            self.drain(&vhost, &queue, store);
        }
        true
    }
}

/// Asks the loader for the queue's next paged-out bodies, once consumers
/// are waiting and few bodies are left in memory ahead of them.
pub(super) fn read_ahead(q: &mut Queue, loader: &loader::Loader) {
    if q.loading || q.consumers.is_empty() || !q.has_cold() {
        return;
    }
    // Enough was asked for ahead of the head already (checked without a
    // scan), unless the head itself waits for its body (a requeued one).
    let Some(head) = q.peek_ready() else { return };
    if head.message.is_some() && head.seq.saturating_add(loader::WARM_ENOUGH as u64) < q.read_ahead_upto {
        return;
    }
    let items = q.cold_ahead(loader::WARM_ENOUGH, loader::LOAD_BATCH, loader::LOAD_BATCH_BYTES);
    if let Some(last) = items.last() {
        q.read_ahead_upto = last.0 + 1;
        q.loading = loader.request(loader::LoadRequest {
            vhost: q.vhost.clone(),
            queue: q.name.clone(),
            incarnation: q.incarnation,
            items,
            stream: false,
        });
    }
}

/// The message of a queue entry: from memory, or (when the loader is not
/// running) read back from the log. A message that cannot be read back
/// intact is dropped with an error in the log and a tombstone, never
/// delivered damaged and never brought back by a restart.
pub(super) fn load(store: &LogStore, q: &Queue, entry: &QueuedMessage) -> Option<Arc<Message>> {
    if let Some(m) = &entry.message {
        return Some(m.clone());
    }
    match store.read(entry.store_id) {
        Ok(record) => Some(Arc::new(message_from_record(record))),
        Err(e) => {
            drop_unreadable(store, q, entry.store_id, &e);
            None
        }
    }
}

pub(super) fn drop_unreadable(store: &LogStore, q: &Queue, store_id: u64, e: &StoreError) {
    tracing::error!(
        "queue '{}' in vhost '{}': a message cannot be read back from the log, dropping it: {e}",
        q.name,
        q.vhost
    );
    // A failure here is the log's own failure, already reported.
    let _ = store.ack(q.settle_id(), &[store_id]);
}

/// An unacked entry of a stored message keeps no body once the log has
/// written it: a requeue or a dead-lettering reads it back. One the writer
/// has not reached yet keeps its body, since there is nothing to read yet.
pub(super) fn unloaded(mut entry: QueuedMessage, store: &LogStore) -> QueuedMessage {
    if entry.store_id != 0 && store.is_written(entry.store_id) {
        entry.message = None;
    }
    entry
}

#[cfg(test)]
#[path = "dispatch_tests.rs"]
mod tests;
