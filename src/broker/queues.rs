//! Queue lifecycle at the broker level: declare (with equivalence checks
//! and logging of durable queues), purge, delete (bindings, consumers and
//! the log's claim on its messages go with it), and TTL expiry of heads
//! (expired messages are dead-lettered when the queue says so).

use super::*;

impl Broker {
    /// queue.declare in `vhost`; returns (name, ready messages, consumers).
    pub fn queue_declare(&self, vhost: &str, conn: u64, m: &QueueDeclare) -> Result<(String, u32, u32)> {
        let mut st = self.state.write();
        GlobalStats::add(&self.stats.queues_declared, 1);
        let Some((vhost_name, v)) = st.vhosts.get_key_value(vhost) else { return Err(no_vhost(vhost)) };
        let vhost_name = vhost_name.clone();
        let name = if m.queue.is_empty() {
            if m.passive {
                return Err(no_queue(vhost, ""));
            }
            if m.arguments.get("x-queue-type").and_then(|v| v.as_str()) == Some("stream") {
                return Err(AmqpError::precondition(
                    "Cannot declare a server-named queue for type rabbit_stream_queue",
                ));
            }
            loop {
                let candidate = generated_name("amq.gen-");
                if !v.queues.contains_key(candidate.as_str()) {
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
                Err(no_queue(vhost, &name))
            };
        }
        if let Some(cell) = st.queue(vhost, &name).cloned() {
            let mut q = cell.lock();
            check_owner(&q, conn)?;
            if !m.passive {
                if m.exclusive != q.exclusive_owner.is_some() {
                    return Err(AmqpError::locked(format!(
                        "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
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
            drop(q);
            st.expire_messages(&cell, &self.store);
            let q = cell.lock();
            return Ok((name, q.ready_count() as u32, q.consumers.len() as u32));
        }
        if m.passive {
            return Err(no_queue(vhost, &name));
        }
        if name.starts_with("amq.") && !m.queue.is_empty() {
            return Err(AmqpError::access_refused(format!("queue name '{name}' contains reserved prefix 'amq.*'")));
        }
        let arguments = st.with_default_queue_type(vhost, m);
        let args = QueueArgs::parse(&arguments, &name)?;
        if matches!(args.queue_type, QueueType::Quorum | QueueType::Stream) {
            // As RabbitMQ's quorum queues and streams: replicated, so
            // durable and shared.
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
                    "invalid property '{property}' for queue '{name}' in vhost '{vhost}'"
                )));
            }
        }
        if args.queue_type == QueueType::Stream {
            stream_declare_checks(&arguments)?;
        }
        st.check_queue_limit(vhost, &name)?;
        let owner = m.exclusive.then_some(conn);
        let mut q = Queue::new(vhost_name, &name, m.durable, owner, m.auto_delete, arguments, args);
        st.apply_policies_to(&mut q);
        q.attach_timer(st.timers.clone(), queue::now_ms());
        // As in RabbitMQ, exclusive and auto-delete queues do not outlive a
        // restart, so only durable queues that are neither are logged.
        if q.durable && owner.is_none() && !q.auto_delete {
            let id = self.store.allocate_queue_id();
            q.store_id = Some(id);
            self.store.define(queue_record(&q, id)).map_err(store_failed)?;
        }
        st.next_incarnation += 1;
        q.incarnation = st.next_incarnation;
        let Some(v) = st.vhosts.get_mut(vhost) else { return Err(no_vhost(vhost)) };
        v.queues.insert(q.name.clone(), Arc::new(QueueLock::new(q)));
        GlobalStats::add(&self.stats.queues_created, 1);
        // Every queue is bound to the default exchange by its name; that
        // binding is implicit (see `State::route`).
        Ok((name, 0, 0))
    }

    pub fn queue_purge(&self, vhost: &str, conn: u64, name: &str) -> Result<u32> {
        let st = self.state.read();
        let mut q = st.queue(vhost, name).ok_or_else(|| no_queue(vhost, name))?.lock();
        check_owner(&q, conn)?;
        if q.is_stream() {
            return Err(AmqpError::not_implemented(format!(
                "queue.purge not supported by stream queues queue '{name}' in vhost '{vhost}'"
            )));
        }
        q.last_used = queue::now_ms();
        purge_queue(&mut q, &self.store).map(|n| n as u32)
    }

    /// queue.delete; returns the message count and the tags of the
    /// deleting channel's own consumers, to cancel after the delete-ok.
    pub fn queue_delete(
        &self,
        vhost: &str,
        (conn, channel): (u64, u16),
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<(u32, Vec<String>)> {
        let mut st = self.state.write();
        let Some(cell) = st.queue(vhost, name) else {
            // As RabbitMQ: deleting a queue that does not exist is not an error.
            return Ok((0, Vec::new()));
        };
        let q = cell.lock();
        check_owner(&q, conn)?;
        // As RabbitMQ, a stream is deleted whatever if-unused and if-empty say.
        let (if_unused, if_empty) = if q.is_stream() { (false, false) } else { (if_unused, if_empty) };
        delete_refused(&q, if_unused, if_empty)?;
        let count = q.ready_count() as u32;
        drop(q);
        let own = st.delete_queue_from(vhost, name, &self.store, Some((conn, channel)));
        Ok((count, own))
    }
}

impl Broker {
    /// What `queue.delete` with `if-unused` and `if-empty` would refuse,
    /// judged on this node without deleting: Ok(its ready messages).
    pub fn queue_delete_check(&self, vhost: &str, name: &str, if_unused: bool, if_empty: bool) -> Result<u32> {
        let st = self.state.read();
        let Some(cell) = st.queue(vhost, name) else { return Ok(0) };
        let q = cell.lock();
        delete_refused(&q, if_unused, if_empty)?;
        Ok(q.ready_count() as u32)
    }
}

/// What `if-unused` (consumers) and `if-empty` (ready messages) refuse.
fn delete_refused(q: &Queue, if_unused: bool, if_empty: bool) -> Result<()> {
    let (name, vhost) = (&q.name, &q.vhost);
    if if_unused && !q.consumers.is_empty() {
        return Err(AmqpError::precondition(format!("queue '{name}' in vhost '{vhost}' in use")));
    }
    if if_empty && q.ready_count() > 0 {
        return Err(AmqpError::precondition(format!("queue '{name}' in vhost '{vhost}' is not empty")));
    }
    Ok(())
}

impl State {
    /// The arguments of a new queue: the declared ones, with `x-queue-type`
    /// added from the vhost's default queue type when none is given and
    /// the queue can be of that type (durable, shared, not auto-delete),
    /// as RabbitMQ does.
    pub(super) fn with_default_queue_type(&self, vhost: &str, m: &QueueDeclare) -> FieldTable {
        let default = self.vhosts.get(vhost).and_then(|v| v.info.default_queue_type.as_deref());
        match default.and_then(QueueType::parse) {
            Some(kind @ (QueueType::Quorum | QueueType::Stream))
                if m.arguments.get("x-queue-type").is_none()
                    && m.durable
                    && !m.exclusive
                    && !m.auto_delete
                    // A stream is never server-named.
                    && (kind == QueueType::Quorum || !m.queue.is_empty()) =>
            {
                let mut arguments = m.arguments.clone();
                arguments.insert("x-queue-type", crate::protocol::FieldValue::string(kind.as_str()));
                arguments
            }
            _ => m.arguments.clone(),
        }
    }

    /// Removes a queue and every binding to it; its consumers are told with
    /// basic.cancel when their client asked for that.
    pub(super) fn delete_queue(&mut self, vhost: &str, name: &str, store: &LogStore) {
        self.delete_queue_from(vhost, name, store, None);
    }

    /// As [`State::delete_queue`]; the basic.cancel of the consumers of the
    /// channel `from` (the one deleting the queue) are returned rather than
    /// sent, as they must follow its queue.delete-ok.
    pub(super) fn delete_queue_from(
        &mut self,
        vhost: &str,
        name: &str,
        store: &LogStore,
        from: Option<(u64, u16)>,
    ) -> Vec<String> {
        let mut own_cancels = Vec::new();
        let Some(v) = self.vhosts.get_mut(vhost) else { return own_cancels };
        let Some(cell) = v.queues.remove(name) else { return own_cancels };
        let mut q = cell.lock();
        q.disarm_timer();
        GlobalStats::add(&self.stats.queues_deleted, 1);
        for c in &q.consumers {
            if let Some(ch) = self.channels.get(&(c.connection.id, c.channel)) {
                ch.lock().consumers.remove(&c.tag);
            }
            if c.connection.cancel_notify {
                if from == Some((c.connection.id, c.channel)) {
                    own_cancels.push(c.tag.to_string());
                } else {
                    c.connection.method(c.channel, BasicCancel { consumer_tag: c.tag.to_string(), no_wait: true });
                }
            }
        }
        // The log must forget the messages the queue still held, ready or
        // delivered and unacked, so their segments can be reclaimed (for a
        // queue that is not durable: its paged-out bodies, if any).
        if q.store_id.is_some() || store.has_spilled() {
            let mut ids = q.ready_store_ids();
            for ch in self.channels.values() {
                ids.extend(
                    ch.lock()
                        .unacked
                        .values()
                        .filter(|u| u.incarnation == q.incarnation && u.entry.store_id != 0)
                        .map(|u| u.entry.store_id),
                );
            }
            let logged = match q.store_id {
                Some(qid) => store.queue_deleted(qid, &ids).map(drop),
                None => store.ack(q.settle_id(), &ids),
            };
            if let Err(e) = logged {
                tracing::error!("queue '{name}' in vhost '{vhost}' deleted in memory only: {e}");
            }
        }
        State::forget_replica(&q, store);
        // A stream's tracked offsets go with it.
        for tag in q.stream().into_iter().flat_map(|s| s.tracked.keys()) {
            let key = stream::tracked_key(&q, tag);
            if let Err(e) = store.define(Record::ParameterDelete { kind: ParameterKind::StreamOffset, key }) {
                tracing::error!("stream '{name}' in vhost '{vhost}': a tracked offset stays in the log: {e}");
            }
        }
        let dest = Destination::Queue(name.to_string());
        let mut emptied = Vec::new();
        for ex in v.exchanges.values_mut() {
            let before = ex.bindings.len();
            ex.bindings.retain(|b| b.destination != dest);
            if ex.auto_delete && before > 0 && ex.bindings.is_empty() {
                emptied.push(ex.name.clone());
            }
        }
        for ex in emptied {
            self.delete_exchange(vhost, &ex, store);
        }
        own_cancels
    }
}

impl State {
    /// Drops (or dead-letters, reason `maxlen`) the head messages that keep
    /// a queue over a drop-head length limit.
    pub(super) fn trim_queue(&self, cell: &QueueLock, store: &LogStore) {
        for d in apply_to(cell, Command::Trim, store) {
            self.depart(d, store);
        }
    }

    /// Takes a queue's expired head messages out and dead-letters them (or
    /// drops them, and their log records' claim), in the order they
    /// expired: the queue's expiry-order lock is held from taking them out
    /// until they are dead-lettered, so another thread expiring the same
    /// queue meanwhile waits instead of overtaking them. The caller holds
    /// no queue's lock and no expiry-order lock.
    pub(super) fn expire_messages(&self, cell: &QueueLock, store: &LogStore) {
        let order = self.expiry_stripe(cell).lock();
        let departed = apply_to(cell, Command::Expire, store);
        let mut touched = Vec::new();
        let vhost = departed.first().map(|d| d.vhost.clone());
        for d in departed {
            self.dead_letter(d, store, &mut touched);
        }
        drop(order);
        if let Some(vhost) = vhost {
            self.drain_all(&vhost, touched, store);
        }
    }
}

/// Applies `command` to a queue the caller does not hold and carries out
/// its log records; returns what left for the dead-letter exchange, to be
/// dead-lettered once the queue's lock is let go (it is, on return).
fn apply_to(cell: &QueueLock, command: Command, store: &LogStore) -> Vec<Departed> {
    let mut departed = Vec::new();
    let mut q = cell.lock();
    let mut fx = Effects::default();
    q.apply(command, queue::now_ms(), &mut fx);
    // A failure is the log's I/O failure, already reported.
    let _ = carry_out(&q, &mut fx, store, &mut departed);
    departed
}

/// The segment size and filter size limits RabbitMQ checks when a stream
/// is declared (Warren takes both and keeps no per-stream segments).
fn stream_declare_checks(arguments: &FieldTable) -> Result<()> {
    const MAX_SEGMENT_SIZE: i64 = 3_000_000_000;
    let number = |key: &str| arguments.get(key).and_then(|v| v.as_i64());
    if number("x-stream-max-segment-size-bytes").is_some_and(|n| n > MAX_SEGMENT_SIZE) {
        return Err(AmqpError::precondition("Exceeded max value for x-stream-max-segment-size-bytes"));
    }
    if number("x-stream-filter-size-bytes").is_some_and(|n| !(16..=255).contains(&n)) {
        return Err(AmqpError::precondition("Invalid value for  x-stream-filter-size-bytes"));
    }
    Ok(())
}

pub(super) fn purge_queue(q: &mut Queue, store: &LogStore) -> Result<usize> {
    let mut fx = Effects::default();
    q.apply(Command::Purge, queue::now_ms(), &mut fx);
    carry_out(q, &mut fx, store, &mut Vec::new()).map_err(store_failed)?;
    Ok(fx.removed)
}
