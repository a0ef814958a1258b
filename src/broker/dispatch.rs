//! Consumers and delivery: basic.qos, consume, cancel, get, channel flow,
//! and the drain that hands ready messages to consumers with room (the
//! highest `x-priority` first, round-robin among equals, only the active
//! one of a single-active-consumer queue), asking the loader for bodies
//! paged out to the log.

use smallvec::SmallVec;

use super::*;

impl Broker {
    pub fn flow(&self, conn: u64, channel: u16, active: bool) {
        let st = self.state.read();
        let (vhost, queues): (Arc<str>, Vec<Arc<str>>) = match st.channel(conn, channel) {
            Some(ch) => {
                let mut ch = ch.lock();
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
        let st = self.state.read();
        let Some(entry) = st.connections.get(&conn) else { return };
        let vhost = entry.vhost.clone();
        let mut queues: HashSet<Arc<str>> = HashSet::default();
        for channel in &entry.channels {
            if let Some(ch) = st.channel(conn, *channel) {
                queues.extend(ch.lock().consumers.values().cloned());
            }
        }
        for q in queues {
            st.drain(&vhost, &q, &self.store);
        }
    }

    pub fn qos(&self, conn: u64, channel: u16, prefetch_count: u16, global: bool) {
        let st = self.state.read();
        let (vhost, queues): (Arc<str>, Vec<Arc<str>>) = match st.channel(conn, channel) {
            Some(ch) => {
                let mut ch = ch.lock();
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
        let st = self.state.read();
        let conn = handle.id;
        let client_chose_tag = !tag.is_empty();
        let tag: Arc<str> = if tag.is_empty() { Arc::from(generated_name("amq.ctag-")) } else { Arc::from(tag) };
        let cell =
            st.channel(conn, channel).ok_or_else(|| AmqpError::connection(reply::CHANNEL_ERROR, "channel not open"))?;
        let vhost = {
            let mut ch = cell.lock();
            if ch.consumers.contains_key(&tag) || ch.reply_to.as_ref().is_some_and(|r| r.tag == tag) {
                return Err(AmqpError::connection(
                    reply::NOT_ALLOWED,
                    format!("attempt to reuse consumer tag '{tag}'"),
                ));
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
            ch.vhost.clone()
        };
        let qcell = st.queue(&vhost, queue).ok_or_else(|| no_queue(&vhost, queue))?;
        // Queue, then channel: the lock order.
        let mut q = qcell.lock();
        let mut ch = cell.lock();
        check_owner(&q, conn)?;
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
                Some(stream::consumer_cursor(&mut q, &ch, client_tag, no_ack, stream_args)?)
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
            channel_state: cell.clone(),
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
        self.state.read().drain(vhost, queue, &self.store);
    }

    /// basic.cancel; returns false for an unknown tag (which RabbitMQ answers with cancel-ok anyway).
    pub fn cancel(&self, conn: u64, channel: u16, tag: &str) -> bool {
        let mut st = self.state.write();
        st.cancel(conn, channel, tag, &self.store)
    }

    /// basic.get: sends get-ok with the message or get-empty.
    pub fn get(&self, handle: &ConnectionHandle, channel: u16, queue: &str, no_ack: bool) -> Result<()> {
        let conn = handle.id;
        loop {
            let mut st = self.state.read();
            let Some(cell) = st.channel(conn, channel).cloned() else {
                return Err(AmqpError::connection(reply::CHANNEL_ERROR, "channel not open"));
            };
            let vhost = cell.lock().vhost.clone();
            let qcell = st.queue(&vhost, queue).ok_or_else(|| no_queue(&vhost, queue))?.clone();
            {
                let mut q = qcell.lock();
                check_owner(&q, conn)?;
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
            }
            st.expire_messages(&qcell, &self.store);
            let mut q = qcell.lock();
            let mut fx = Effects::default();
            // A replicated queue's messages are handed out by its leader only.
            if !q.is_passive_replica() {
                q.apply(Command::Checkout { settled: no_ack }, queue::now_ms(), &mut fx);
            }
            let Some(mut entry) = fx.taken.take() else {
                GlobalStats::add(&self.stats.get_empty, 1);
                handle.method(channel, BasicGetEmpty::default());
                return Ok(());
            };
            if entry.message.is_none() {
                // Read the body back holding no lock.
                drop(q);
                drop(st);
                let read = self.store.read(entry.store_id);
                st = self.state.read();
                // A queue deleted meanwhile took the message with it.
                if !st.queue(&vhost, queue).is_some_and(|c| Arc::ptr_eq(c, &qcell)) {
                    continue;
                }
                q = qcell.lock();
                match read {
                    Ok(record) => entry.message = Some(Arc::new(message_from_record(record))),
                    Err(e) => {
                        drop_checked_out(&mut q, entry, no_ack, &e, &mut fx);
                        let _ = carry_out(&q, &mut fx, &self.store, &mut Vec::new());
                        continue;
                    }
                }
            }
            let Some(cell) = st.channel(conn, channel) else {
                // Closed from outside while the body was read: it goes back.
                q.apply(Command::Return { entry, settled: no_ack }, queue::now_ms(), &mut fx);
                return Err(AmqpError::connection(reply::CHANNEL_ERROR, "channel not open"));
            };
            let mut ch = cell.lock();
            let q = &mut *q;
            let Some(message) = entry.message.clone() else {
                // Read back above: never without a body here; if it were,
                // it goes back rather than being lost.
                q.apply(Command::Return { entry, settled: no_ack }, queue::now_ms(), &mut fx);
                continue;
            };
            let message = q.as_delivered(&entry, message);
            let tag = ch.take_tag();
            if no_ack {
                q.counters.get_no_ack += 1;
                st.settle_replicated(q, vec![entry.seq]);
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
            carry_out(q, &mut fx, &self.store, &mut Vec::new()).map_err(store_failed)?;
            if !no_ack {
                let now = queue::now_ms();
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
                let timeout = super::timers::consumer_timeout_of(None, q.args.consumer_timeout, st.consumer_timeout);
                ch.arm_timeout((conn, channel), now, timeout, &st.timers);
            }
            handle.send(Outgoing::Content { channel, method: method.into(), message });
            return Ok(());
        }
    }
}

impl State {
    /// Hands ready messages of one queue to consumers with room, in
    /// round-robin order: a consumer that received a message moves to the back.
    pub(super) fn drain(&self, vhost: &str, queue: &str, store: &LogStore) {
        if let Some(cell) = self.queue(vhost, queue) {
            self.drain_queue(cell, store);
        }
    }

    /// [`State::drain`] of a queue given by its lock (which the caller
    /// does not hold).
    pub(super) fn drain_queue(&self, cell: &QueueLock, store: &LogStore) {
        let mut q = cell.lock();
        if q.next_expiry().is_some() {
            drop(q);
            self.expire_messages(cell, store);
            q = cell.lock();
        }
        if q.has_ready() && !q.consumers.is_empty() || q.is_stream() {
            self.deliver_ready(&mut q, store, queue::now_ms());
        }
    }

    /// [`State::drain`] without expiring first: a message just published
    /// goes to a consumer that can take it at once even with a TTL of 0, as
    /// in RabbitMQ; what stays behind expires on the next drain or tick.
    /// `now` is the broker clock the caller read (a publish reads it once).
    pub(super) fn deliver_ready(&self, q: &mut Queue, store: &LogStore, now: u64) {
        if q.is_stream() {
            return self.deliver_stream(q, store);
        }
        // A replicated queue's messages are handed out by its leader only.
        if q.is_passive_replica() {
            return;
        }
        let State { loader, stats, timers, consumer_timeout, .. } = self;
        let counters_before = q.counters;
        // The log records of this drain (first deliveries, so a restart
        // flags them redelivered; no-ack deliveries, which settle at once),
        // written once at the end.
        let mut fx = Effects::default();
        // Channels found without room during this drain: their consumers
        // are passed over (a channel is locked once per delivery, when its
        // consumer is picked, not once per look).
        let mut full: SmallVec<[*const ChannelLock; 2]> = SmallVec::new();
        // A replicated queue's no-ack deliveries, settled through its group.
        let mut replica_settled: Vec<u64> = Vec::new();
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
                if consumer_room && c.connection.has_room() && !full.contains(&Arc::as_ptr(&c.channel_state)) {
                    pick = Some((i, c.args.priority));
                }
            }
            let Some((index, _)) = pick else { break };
            if q.peek_ready().is_some_and(|e| e.message.is_none()) && loader.as_ref().is_some_and(|l| l.is_alive()) {
                // The loader reads it outside this lock and drains again.
                break;
            }
            let Some(mut consumer) = q.consumers.remove(index) else { break };
            let mut ch = consumer.channel_state.lock();
            if !(consumer.no_ack && ch.takes_deliveries() || ch.has_room()) {
                drop(ch);
                full.push(Arc::as_ptr(&consumer.channel_state));
                q.consumers.insert(index, consumer);
                continue;
            }
            let settled = consumer.no_ack;
            q.apply(Command::Checkout { settled }, now, &mut fx);
            let Some(entry) = fx.taken.take() else {
                drop(ch);
                q.consumers.insert(index, consumer);
                break;
            };
            let message = match load(store, &entry) {
                Ok(message) => message,
                Err(e) => {
                    drop_checked_out(q, entry, settled, &e, &mut fx);
                    drop(ch);
                    q.consumers.insert(index, consumer);
                    continue;
                }
            };
            let message = q.as_delivered(&entry, message);
            let delivery_tag = ch.take_tag();
            let redelivered = entry.redelivered;
            if settled {
                q.counters.deliver_no_ack += 1;
                if q.replica.is_some() {
                    replica_settled.push(entry.seq);
                }
            } else {
                q.counters.deliver += 1;
            }
            if redelivered {
                q.counters.redeliver += 1;
            }
            if !settled {
                consumer.unacked += 1;
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
            // Queued under the channel's lock: tags reach the client in order.
            consumer.connection.send(Outgoing::Deliver {
                channel: consumer.channel,
                consumer_tag: consumer.tag.clone(),
                delivery_tag,
                redelivered,
                message,
            });
            drop(ch);
            q.consumers.push_back(consumer);
        }
        let c = q.counters;
        for (counter, now, before) in [
            (&stats.delivered_consume_manual_ack, c.deliver, counters_before.deliver),
            (&stats.delivered_consume_auto_ack, c.deliver_no_ack, counters_before.deliver_no_ack),
            (&stats.redelivered, c.redeliver, counters_before.redeliver),
        ] {
            if now != before {
                GlobalStats::add(counter, now - before);
            }
        }
        if let Some(loader) = loader.as_ref().filter(|l| l.is_alive()) {
            read_ahead(q, loader);
        }
        // A failure here is the log's I/O failure, already reported by the
        // writer; the deliveries themselves are in memory and stand.
        let _ = carry_out(q, &mut fx, store, &mut Vec::new());
        if !replica_settled.is_empty() {
            self.settle_replicated(q, replica_settled);
        }
    }

    pub(super) fn cancel(&mut self, conn: u64, channel: u16, tag: &str, store: &LogStore) -> bool {
        if self.cancel_reply_consumer(conn, channel, tag) {
            return true;
        }
        let Some(ch) = self.channel(conn, channel) else { return false };
        let (queue, vhost) = {
            let mut ch = ch.lock();
            let Some(queue) = ch.consumers.remove(tag) else { return false };
            (queue, ch.vhost.clone())
        };
        let Some(cell) = self.queue(&vhost, &queue) else { return true };
        let goes = {
            let mut q = cell.lock();
            let before = q.consumers.len();
            q.consumers.retain(|c| !(&*c.tag == tag && c.connection.id == conn && c.channel == channel));
            // Not here: a consumer made at the replicated queue's leader.
            if q.consumers.len() == before
                && let (Some(replica), Some(router)) = (&q.replica, self.replica_router.get())
            {
                router.cancel_consumer(conn, channel, replica.group, Arc::from(tag));
                return true;
            }
            q.activate_next_consumer();
            q.last_used = queue::now_ms();
            q.auto_delete && q.consumers.is_empty()
        };
        if goes {
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
/// running) read back from the log.
pub(super) fn load(store: &LogStore, entry: &QueuedMessage) -> std::result::Result<Arc<Message>, StoreError> {
    match &entry.message {
        Some(m) => Ok(m.clone()),
        None => store.read(entry.store_id).map(|record| Arc::new(message_from_record(record))),
    }
}

/// A message checked out (with `settled` as its checkout) whose body cannot
/// be read back intact: dropped with an error in the log and its record
/// settled, never delivered damaged and never brought back by a restart.
pub(super) fn drop_checked_out(q: &mut Queue, entry: QueuedMessage, settled: bool, e: &StoreError, fx: &mut Effects) {
    tracing::error!(
        "queue '{}' in vhost '{}': a message cannot be read back from the log, dropping it: {e}",
        q.name,
        q.vhost
    );
    fx.unmark(entry.store_id, false);
    if !settled {
        // Its settle record: the checkout with `settled` asked for it already.
        q.apply(Command::Settle { entry, how: Settle::Ack }, queue::now_ms(), fx);
    }
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
