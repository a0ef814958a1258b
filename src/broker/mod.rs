//! The broker model: exchanges, bindings, queues, consumers and the unacked
//! messages of every channel, for the single vhost "/".
//!
//! All of it lives in one [`State`] behind one mutex. Every operation is a
//! short critical section that never waits on I/O (bodies paged out to the
//! log are read back by the [`loader`] thread, outside it): deliveries are pushed to
//! the consumer's connection through its unbounded outbound queue
//! ([`ConnectionHandle`]), whose writer task does the socket work. One lock
//! keeps prefetch accounting, round-robin order and requeue-on-close exact
//! without cross-task protocols; on a 2-core machine it is not the bottleneck.
//!
//! This layer knows nothing about sockets or files. It speaks AMQP only
//! through the method structs of [`crate::protocol`] that it hands to
//! connections, and it reaches durability through [`crate::store::LogStore`]:
//! durable definitions and persistent messages in durable queues are appended
//! to the log, acks append tombstones, and bodies paged out of memory are read
//! back from it.

pub mod error;
pub mod exchange;
pub mod loader;
pub mod message;
pub mod queue;

use std::collections::{BTreeMap, HashSet};

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

pub use error::{AmqpError, Result, Scope};
pub use exchange::{Binding, Destination, Exchange, ExchangeKind};
pub use message::{ConnectionHandle, Message, OutboundShared, Outgoing};
pub use queue::{Consumer, Enqueued, Limits, Queue, QueuedMessage};

use crate::protocol::method::*;
use crate::protocol::wire::{Wire, Writer};
use crate::protocol::{FieldTable, reply};
use crate::store::format::{BindingRecord, DestinationKind, MessageRecord, Record};
use crate::store::{LogStore, Recovered, StoreError};

/// A message handed to a consumer or to basic.get and not yet settled.
#[derive(Debug)]
struct Unacked {
    queue: Arc<str>,
    /// Which queue of that name: a queue deleted and declared again is
    /// another queue, and must not receive the old one's messages.
    incarnation: u64,
    entry: QueuedMessage,
    /// None for basic.get.
    consumer_tag: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct ChannelState {
    next_delivery_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    /// basic.qos(global=true): limit on the channel's unacked total; 0 = none.
    channel_prefetch: u16,
    /// basic.qos(global=false): the limit given to consumers created later.
    consumer_prefetch: u16,
    /// Consumer tag -> queue name.
    consumers: HashMap<Arc<str>, Arc<str>>,
    /// channel.flow(active=false) pauses deliveries.
    paused: bool,
}

impl ChannelState {
    fn take_tag(&mut self) -> u64 {
        self.next_delivery_tag += 1;
        self.next_delivery_tag
    }

    fn has_room(&self) -> bool {
        !self.paused && (self.channel_prefetch == 0 || self.unacked.len() < self.channel_prefetch as usize)
    }
}

/// What the admin interface shows of a connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer: String,
    pub user: String,
    pub client: String,
    pub heartbeat: u16,
    pub frame_max: u32,
}

#[derive(Debug)]
struct ConnectionEntry {
    handle: ConnectionHandle,
    info: ConnectionInfo,
    channels: HashSet<u16>,
}

#[derive(Debug, Default)]
pub struct State {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<Arc<str>, Queue>,
    channels: HashMap<(u64, u16), ChannelState>,
    connections: HashMap<u64, ConnectionEntry>,
    next_incarnation: u64,
    /// Reads paged-out bodies back; `None` if its thread could not start
    /// (bodies are then read under the lock, as a last resort).
    loader: Option<loader::Loader>,
}

/// The result of routing one publish.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Routed {
    /// At least one queue took the message.
    pub routed: bool,
    /// A queue refused it (x-overflow = reject-publish): confirm with a nack.
    pub rejected: bool,
    /// The message went to the log; confirm once this position is durable.
    pub durable_position: Option<u64>,
}

pub struct Broker {
    state: Arc<Mutex<State>>,
    store: Arc<LogStore>,
}

/// Rows for the admin interface, one per queue.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueRow {
    pub name: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub exclusive: bool,
    pub messages_ready: usize,
    pub messages_unacknowledged: usize,
    pub messages: usize,
    pub message_bytes_ready: usize,
    pub consumers: usize,
    pub arguments: String,
}

const DEFAULT_EXCHANGES: [(&str, ExchangeKind); 6] = [
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

fn no_queue(name: &str) -> AmqpError {
    AmqpError::not_found(format!("no queue '{name}' in vhost '/'"))
}

fn no_exchange(name: &str) -> AmqpError {
    AmqpError::not_found(format!("no exchange '{name}' in vhost '/'"))
}

fn check_owner(q: &Queue, conn: u64) -> Result<()> {
    match q.exclusive_owner {
        Some(owner) if owner != conn => Err(AmqpError::locked(format!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            q.name
        ))),
        _ => Ok(()),
    }
}

/// Server-generated names (`amq.gen-…`, `amq.ctag-…`): 22 random characters
/// from the URL-safe base64 alphabet, as RabbitMQ makes them.
pub fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut name = String::with_capacity(prefix.len() + 22);
    name.push_str(prefix);
    for _ in 0..22 {
        name.push(ALPHABET[fastrand::usize(..ALPHABET.len())] as char);
    }
    name
}

impl Broker {
    pub fn new(store: Arc<LogStore>) -> Broker {
        let mut state = State::default();
        for (name, kind) in DEFAULT_EXCHANGES {
            state.exchanges.insert(name.to_string(), Exchange::new(name, kind, true, false, false, FieldTable::new()));
        }
        let state = Arc::new(Mutex::new(state));
        match loader::Loader::spawn(state.clone(), store.clone()) {
            Ok(l) => state.lock().loader = Some(l),
            Err(e) => tracing::error!("cannot start the body loader thread ({e}); paged-out bodies are read in line"),
        }
        Broker { state, store }
    }

    /// Rebuilds durable exchanges, queues, bindings and messages from what
    /// the log replayed. Messages keep their publish order; those that had
    /// been delivered come back flagged redelivered.
    pub fn restore(&self, recovered: &Recovered) {
        let mut st = self.state.lock();
        let defs = &recovered.definitions;
        for record in defs.exchanges.values() {
            if let Record::ExchangeDeclare { name, kind, auto_delete, internal, arguments } = record
                && let Some(kind) = ExchangeKind::parse(kind)
            {
                let ex = Exchange::new(name, kind, true, *auto_delete, *internal, decode_table(arguments));
                st.exchanges.insert(name.clone(), ex);
            }
        }
        let mut per_queue = recovered.queue_messages();
        for record in defs.queues.values() {
            if let Record::QueueDeclare { queue, name, auto_delete, arguments } = record {
                let args = decode_table(arguments);
                let limits = Limits::from_arguments(&args).unwrap_or_default();
                let mut q = Queue::new(name, true, None, *auto_delete, args, limits);
                q.store_id = Some(*queue);
                for (id, size, delivered) in per_queue.remove(queue).unwrap_or_default() {
                    q.restore(id, size, delivered);
                }
                st.next_incarnation += 1;
                q.incarnation = st.next_incarnation;
                st.queues.insert(q.name.clone(), q);
            }
        }
        for b in &defs.bindings {
            let destination = match b.destination_kind {
                DestinationKind::Queue => Destination::Queue(b.destination.clone()),
                DestinationKind::Exchange => Destination::Exchange(b.destination.clone()),
            };
            if let Some(ex) = st.exchanges.get_mut(&b.source) {
                let binding =
                    Binding { destination, routing_key: b.routing_key.clone(), arguments: decode_table(&b.arguments) };
                if !ex.bindings.contains(&binding) {
                    ex.bindings.push(binding);
                }
            }
        }
    }

    pub fn store(&self) -> &Arc<LogStore> {
        &self.store
    }

    // ---- connections and channels -------------------------------------

    pub fn register_connection(&self, handle: ConnectionHandle, info: ConnectionInfo) {
        let mut st = self.state.lock();
        st.connections.insert(handle.id, ConnectionEntry { handle, info, channels: HashSet::new() });
    }

    pub fn open_channel(&self, conn: u64, channel: u16) {
        let mut st = self.state.lock();
        st.channels.insert((conn, channel), ChannelState::default());
        if let Some(c) = st.connections.get_mut(&conn) {
            c.channels.insert(channel);
        }
    }

    /// Releases a channel: its unacked messages go back to their queues
    /// (flagged redelivered) and its consumers are cancelled.
    pub fn close_channel(&self, conn: u64, channel: u16) {
        let mut st = self.state.lock();
        st.close_channel(conn, channel, &self.store);
        if let Some(c) = st.connections.get_mut(&conn) {
            c.channels.remove(&channel);
        }
    }

    /// Releases a connection: every channel as in [`Broker::close_channel`],
    /// then its exclusive queues are deleted.
    pub fn close_connection(&self, conn: u64) {
        let mut st = self.state.lock();
        let channels: Vec<u16> =
            st.connections.get(&conn).map(|c| c.channels.iter().copied().collect()).unwrap_or_default();
        for ch in channels {
            st.close_channel(conn, ch, &self.store);
        }
        let exclusive: Vec<Arc<str>> =
            st.queues.values().filter(|q| q.exclusive_owner == Some(conn)).map(|q| q.name.clone()).collect();
        for name in exclusive {
            st.delete_queue(&name, &self.store);
        }
        st.connections.remove(&conn);
    }

    pub fn flow(&self, conn: u64, channel: u16, active: bool) {
        let mut st = self.state.lock();
        let queues: Vec<Arc<str>> = match st.channels.get_mut(&(conn, channel)) {
            Some(ch) => {
                ch.paused = !active;
                ch.consumers.values().cloned().collect()
            }
            None => return,
        };
        if active {
            for q in queues {
                st.drain(&q, &self.store);
            }
        }
    }

    /// Called by a connection's writer once a backlog it reported has drained.
    pub fn resume_connection(&self, conn: u64) {
        let mut st = self.state.lock();
        let queues: HashSet<Arc<str>> = st
            .channels
            .iter()
            .filter(|((c, _), _)| *c == conn)
            .flat_map(|(_, ch)| ch.consumers.values().cloned())
            .collect();
        for q in queues {
            st.drain(&q, &self.store);
        }
    }

    // ---- exchanges ------------------------------------------------------

    pub fn exchange_declare(&self, m: &ExchangeDeclare) -> Result<()> {
        let mut st = self.state.lock();
        if m.exchange.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        // As RabbitMQ: an unknown type is a connection error, checked first.
        if !m.passive && ExchangeKind::parse(&m.kind).is_none() {
            return Err(AmqpError::command_invalid(format!("invalid exchange type '{}'", m.kind)));
        }
        if let Some(ex) = st.exchanges.get(&m.exchange) {
            if m.passive {
                return Ok(());
            }
            let mismatch = |what: &str, received: &str, current: &str| {
                AmqpError::precondition(format!(
                    "inequivalent arg '{what}' for exchange '{}' in vhost '/': received '{received}' but current is '{current}'",
                    m.exchange
                ))
            };
            if ex.kind.as_str() != m.kind {
                return Err(mismatch("type", &m.kind, ex.kind.as_str()));
            }
            if ex.durable != m.durable {
                return Err(mismatch("durable", &m.durable.to_string(), &ex.durable.to_string()));
            }
            if ex.auto_delete != m.auto_delete {
                return Err(mismatch("auto_delete", &m.auto_delete.to_string(), &ex.auto_delete.to_string()));
            }
            if ex.internal != m.internal {
                return Err(mismatch("internal", &m.internal.to_string(), &ex.internal.to_string()));
            }
            return Ok(());
        }
        if m.passive {
            return Err(no_exchange(&m.exchange));
        }
        if m.exchange.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                m.exchange
            )));
        }
        let Some(kind) = ExchangeKind::parse(&m.kind) else {
            return Err(AmqpError::command_invalid(format!("invalid exchange type '{}'", m.kind)));
        };
        let ex = Exchange::new(&m.exchange, kind, m.durable, m.auto_delete, m.internal, m.arguments.clone());
        if ex.durable {
            self.store.define(exchange_record(&ex)).map_err(store_failed)?;
        }
        st.exchanges.insert(m.exchange.clone(), ex);
        Ok(())
    }

    pub fn exchange_delete(&self, name: &str, if_unused: bool) -> Result<()> {
        let mut st = self.state.lock();
        if name.is_empty() || name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!("operation not permitted on exchange '{name}'")));
        }
        let Some(ex) = st.exchanges.get(name) else {
            // RabbitMQ answers delete-ok for an exchange that does not exist.
            return Ok(());
        };
        let used_as_destination = st
            .exchanges
            .values()
            .any(|e| e.bindings.iter().any(|b| b.destination == Destination::Exchange(name.to_string())));
        if if_unused && (!ex.bindings.is_empty() || used_as_destination) {
            return Err(AmqpError::precondition(format!("exchange '{name}' in vhost '/' in use")));
        }
        st.delete_exchange(name, &self.store);
        Ok(())
    }

    /// exchange.bind / queue.bind.
    pub fn bind(
        &self,
        conn: u64,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<()> {
        let mut st = self.state.lock();
        let durable = st.check_binding_ends(conn, source, &destination)?;
        let Some(ex) = st.exchanges.get_mut(source) else { return Err(no_exchange(source)) };
        let binding = Binding { destination, routing_key: routing_key.to_string(), arguments: arguments.clone() };
        if !ex.bindings.contains(&binding) {
            if durable {
                self.store.define(Record::BindingAdd(binding_record(source, &binding))).map_err(store_failed)?;
            }
            ex.bindings.push(binding);
        }
        Ok(())
    }

    /// exchange.unbind / queue.unbind. Removing a binding that does not exist succeeds.
    pub fn unbind(
        &self,
        conn: u64,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<()> {
        let mut st = self.state.lock();
        let durable = st.check_binding_ends(conn, source, &destination)?;
        let Some(ex) = st.exchanges.get_mut(source) else { return Err(no_exchange(source)) };
        let binding = Binding { destination, routing_key: routing_key.to_string(), arguments: arguments.clone() };
        let before = ex.bindings.len();
        ex.bindings.retain(|b| *b != binding);
        if ex.bindings.len() != before {
            if durable {
                self.store.define(Record::BindingRemove(binding_record(source, &binding))).map_err(store_failed)?;
            }
            if ex.auto_delete && ex.bindings.is_empty() {
                let name = ex.name.clone();
                st.delete_exchange(&name, &self.store);
            }
        }
        Ok(())
    }

    // ---- queues ---------------------------------------------------------

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
        if let Some(q) = st.queues.get_mut(name.as_str()) {
            check_owner(q, conn)?;
            expire_queue(q, &self.store);
            if !m.passive {
                if m.exclusive && q.exclusive_owner.is_none() {
                    return Err(AmqpError::locked(format!(
                        "cannot obtain exclusive access to locked queue '{name}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
                    )));
                }
                q.check_equivalent(m.durable, m.auto_delete, &m.arguments)?;
            }
            return Ok((name, q.ready_count() as u32, q.consumers.len() as u32));
        }
        if m.passive {
            return Err(no_queue(&name));
        }
        if name.starts_with("amq.") && !m.queue.is_empty() {
            return Err(AmqpError::access_refused(format!("queue name '{name}' contains reserved prefix 'amq.*'")));
        }
        let limits = Limits::from_arguments(&m.arguments)?;
        if let Some(kind) = m.arguments.get("x-queue-type").and_then(|v| v.as_str())
            && kind != "classic"
        {
            return Err(AmqpError::precondition(format!(
                "invalid arg 'x-queue-type': '{kind}' is not supported, only 'classic'"
            )));
        }
        let owner = m.exclusive.then_some(conn);
        let mut q = Queue::new(&name, m.durable, owner, m.auto_delete, m.arguments.clone(), limits);
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
        purge_queue(q, &self.store).map(|n| n as u32)
    }

    pub fn queue_delete(&self, conn: u64, name: &str, if_unused: bool, if_empty: bool) -> Result<u32> {
        let mut st = self.state.lock();
        let Some(q) = st.queues.get(name) else {
            // As RabbitMQ: deleting a queue that does not exist is not an error.
            return Ok(0);
        };
        check_owner(q, conn)?;
        if if_unused && !q.consumers.is_empty() {
            return Err(AmqpError::precondition(format!("queue '{name}' in vhost '/' in use")));
        }
        if if_empty && q.ready_count() > 0 {
            return Err(AmqpError::precondition(format!("queue '{name}' in vhost '/' is not empty")));
        }
        let count = q.ready_count() as u32;
        st.delete_queue(name, &self.store);
        Ok(count)
    }

    // ---- basic ----------------------------------------------------------

    pub fn qos(&self, conn: u64, channel: u16, prefetch_count: u16, global: bool) {
        let mut st = self.state.lock();
        let queues: Vec<Arc<str>> = match st.channels.get_mut(&(conn, channel)) {
            Some(ch) => {
                if global {
                    ch.channel_prefetch = prefetch_count;
                } else {
                    ch.consumer_prefetch = prefetch_count;
                }
                ch.consumers.values().cloned().collect()
            }
            None => return,
        };
        // A raised limit may let waiting messages through.
        for q in queues {
            st.drain(&q, &self.store);
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
    ) -> Result<()> {
        let mut st = self.state.lock();
        let conn = handle.id;
        let tag: Arc<str> = if tag.is_empty() { Arc::from(generated_name("amq.ctag-")) } else { Arc::from(tag) };
        let State { queues, channels, .. } = &mut *st;
        let ch = channels
            .get_mut(&(conn, channel))
            .ok_or_else(|| AmqpError::connection(reply::CHANNEL_ERROR, "channel not open"))?;
        if ch.consumers.contains_key(&tag) {
            return Err(AmqpError::connection(reply::NOT_ALLOWED, format!("attempt to reuse consumer tag '{tag}'")));
        }
        let q = queues.get_mut(queue).ok_or_else(|| no_queue(queue))?;
        check_owner(q, conn)?;
        if q.has_exclusive_consumer() || (exclusive && !q.consumers.is_empty()) {
            return Err(AmqpError::access_refused(format!("queue '{queue}' in vhost '/' in exclusive use")));
        }
        q.consumers.push_back(Consumer {
            tag: tag.clone(),
            connection: handle.clone(),
            channel,
            no_ack,
            exclusive,
            prefetch: ch.consumer_prefetch,
            unacked: 0,
        });
        q.had_consumer = true;
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
    pub fn start_delivery(&self, queue: &str) {
        self.state.lock().drain(queue, &self.store);
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
            let q = st.queues.get_mut(queue).ok_or_else(|| no_queue(queue))?;
            check_owner(q, conn)?;
            expire_queue(q, &self.store);
            let incarnation = q.incarnation;
            let Some(mut entry) = q.pop_ready() else {
                handle.method(channel, BasicGetEmpty::default());
                return Ok(());
            };
            if entry.message.is_none() && st.loader.is_some() {
                // Read the body back without holding the broker's lock.
                drop(st);
                let read = self.store.read(entry.store_id);
                st = self.state.lock();
                // A queue deleted meanwhile took the message with it.
                let Some(q) = st.queues.get_mut(queue).filter(|q| q.incarnation == incarnation) else { continue };
                match read {
                    Ok(record) => entry.message = Some(Arc::new(message_from_record(record))),
                    Err(e) => {
                        drop_unreadable(&self.store, q, entry.store_id, &e);
                        continue;
                    }
                }
            }
            let State { queues, channels, .. } = &mut *st;
            let Some(q) = queues.get_mut(queue).filter(|q| q.incarnation == incarnation) else { continue };
            let Some(ch) = channels.get_mut(&(conn, channel)) else {
                q.put_back(entry);
                return Err(AmqpError::connection(reply::CHANNEL_ERROR, "channel not open"));
            };
            let Some(message) = load(&self.store, q, &entry) else { continue };
            let tag = ch.take_tag();
            let method = BasicGetOk {
                delivery_tag: tag,
                redelivered: entry.redelivered,
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
                message_count: q.ready_count() as u32,
            };
            if let Some(qid) = q.store_id
                && entry.store_id != 0
            {
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
                q.unacked += 1;
                ch.unacked.insert(
                    tag,
                    Unacked {
                        queue: q.name.clone(),
                        incarnation: q.incarnation,
                        entry: unloaded(entry),
                        consumer_tag: None,
                    },
                );
            }
            handle.send(Outgoing::Content { channel, method: method.into(), message });
            return Ok(());
        }
    }

    /// Routes a message and enqueues it on every queue it reaches. A
    /// persistent message reaching durable queues is appended to the log
    /// once, with the list of those queues; `Routed::durable_position` then
    /// says what must be durable before the publish may be confirmed.
    pub fn publish(&self, exchange: &str, headers: Option<&FieldTable>, message: Arc<Message>) -> Result<Routed> {
        let mut st = self.state.lock();
        if let Some(ex) = st.exchanges.get(exchange)
            && ex.internal
        {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '/'"
            )));
        }
        let targets = st.route(exchange, &message.routing_key, headers)?;
        let mut outcome = Routed::default();
        let size = message.body_len();
        let mut accepting: Vec<&String> = Vec::with_capacity(targets.len());
        let mut durable_ids: Vec<u32> = Vec::new();
        for name in &targets {
            let Some(q) = st.queues.get(name.as_str()) else { continue };
            if q.would_reject(size) {
                outcome.rejected = true;
                continue;
            }
            accepting.push(name);
            if message.persistent
                && let Some(id) = q.store_id
            {
                durable_ids.push(id);
            }
        }
        let now = queue::now_ms();
        let mut store_id = 0;
        if !durable_ids.is_empty() {
            let (id, end) = self
                .store
                .publish(&durable_ids, &message.exchange, &message.routing_key, &message.properties, &message.body)
                .map_err(store_failed)?;
            store_id = id;
            outcome.durable_position = Some(end);
        }
        for name in &accepting {
            let Some(q) = st.queues.get_mut(name.as_str()) else { continue };
            let id = if q.store_id.is_some() { store_id } else { 0 };
            let (_, dropped) = q.enqueue(message.clone(), id, now);
            outcome.routed = true;
            if let Some(qid) = q.store_id {
                let gone: Vec<u64> = dropped.iter().filter(|e| e.store_id != 0).map(|e| e.store_id).collect();
                if !gone.is_empty() {
                    self.store.ack(qid, &gone).map_err(store_failed)?;
                }
            }
        }
        for name in &accepting {
            st.drain(name, &self.store);
            if let Some(q) = st.queues.get_mut(name.as_str())
                && q.store_id.is_some()
            {
                q.page_out(|id| self.store.is_written(id));
            }
        }
        Ok(outcome)
    }

    /// Fails unless the exchange exists and clients may publish to it.
    pub fn check_publishable(&self, exchange: &str) -> Result<()> {
        let st = self.state.lock();
        match st.exchanges.get(exchange) {
            None => Err(no_exchange(exchange)),
            Some(ex) if ex.internal => {
                Err(AmqpError::access_refused(format!("cannot publish to internal exchange '{exchange}' in vhost '/'")))
            }
            Some(_) => Ok(()),
        }
    }

    /// basic.ack.
    pub fn ack(&self, conn: u64, channel: u16, delivery_tag: u64, multiple: bool) -> Result<()> {
        self.settle(conn, channel, delivery_tag, multiple, Settle::Ack)
    }

    /// basic.nack / basic.reject.
    pub fn reject(&self, conn: u64, channel: u16, delivery_tag: u64, multiple: bool, requeue: bool) -> Result<()> {
        self.settle(conn, channel, delivery_tag, multiple, if requeue { Settle::Requeue } else { Settle::Discard })
    }

    /// basic.recover: every unacked message of the channel goes back to its
    /// queue, flagged redelivered.
    /// `reply` (basic.recover-ok) goes out before the redeliveries, which
    /// clients such as lapin require.
    pub fn recover(&self, conn: u64, channel: u16, reply: Option<&ConnectionHandle>) {
        let _ = self.settle_then(conn, channel, 0, true, Settle::Requeue, || {
            if let Some(handle) = reply {
                handle.method(channel, BasicRecoverOk {});
            }
        });
    }

    /// Whether `delivery_tag` names an unsettled delivery of the channel (0
    /// with `multiple` means all of them): a transaction checks acks when
    /// they arrive, as RabbitMQ does.
    pub fn check_delivery_tag(&self, conn: u64, channel: u16, delivery_tag: u64, multiple: bool) -> Result<()> {
        let st = self.state.lock();
        let known = st.channels.get(&(conn, channel)).is_some_and(|ch| ch.unacked.contains_key(&delivery_tag));
        if known || (multiple && delivery_tag == 0) {
            Ok(())
        } else {
            Err(AmqpError::precondition(format!("unknown delivery tag {delivery_tag}")))
        }
    }

    fn settle(&self, conn: u64, channel: u16, delivery_tag: u64, multiple: bool, how: Settle) -> Result<()> {
        self.settle_then(conn, channel, delivery_tag, multiple, how, || {})
    }

    /// Settles deliveries, runs `before_redelivery`, then hands waiting
    /// messages to consumers that now have room.
    fn settle_then(
        &self,
        conn: u64,
        channel: u16,
        delivery_tag: u64,
        multiple: bool,
        how: Settle,
        before_redelivery: impl FnOnce(),
    ) -> Result<()> {
        let mut st = self.state.lock();
        let State { queues, channels, .. } = &mut *st;
        let Some(ch) = channels.get_mut(&(conn, channel)) else { return Ok(()) };
        let settled: Vec<Unacked> = if multiple {
            if delivery_tag != 0 && !ch.unacked.contains_key(&delivery_tag) {
                return Err(AmqpError::precondition(format!("unknown delivery tag {delivery_tag}")));
            }
            let upto = if delivery_tag == 0 { u64::MAX } else { delivery_tag };
            let rest = ch.unacked.split_off(&(upto.saturating_add(1)));
            std::mem::replace(&mut ch.unacked, rest).into_values().collect()
        } else {
            match ch.unacked.remove(&delivery_tag) {
                Some(u) => vec![u],
                None => return Err(AmqpError::precondition(format!("unknown delivery tag {delivery_tag}"))),
            }
        };
        let mut touched: Vec<Arc<str>> = Vec::new();
        // Tombstones, one record per queue for the whole batch.
        let mut tombstones: Vec<(u32, Vec<u64>)> = Vec::new();
        for u in settled {
            let Some(q) = queues.get_mut(&u.queue).filter(|q| q.incarnation == u.incarnation) else { continue };
            q.unacked -= 1;
            if let Some(tag) = &u.consumer_tag
                && let Some(c) = q.consumer_mut(tag, conn, channel)
            {
                c.unacked = c.unacked.saturating_sub(1);
            }
            if !touched.contains(&u.queue) {
                touched.push(u.queue.clone());
            }
            match how {
                Settle::Requeue => q.requeue(u.entry),
                Settle::Ack | Settle::Discard => {
                    if let Some(qid) = q.store_id
                        && u.entry.store_id != 0
                    {
                        match tombstones.iter_mut().find(|(id, _)| *id == qid) {
                            Some((_, ids)) => ids.push(u.entry.store_id),
                            None => tombstones.push((qid, vec![u.entry.store_id])),
                        }
                    }
                }
            }
        }
        for (qid, ids) in &tombstones {
            self.store.ack(*qid, ids).map_err(store_failed)?;
        }
        before_redelivery();
        // A channel-wide prefetch (global=true) freed by these acks may let
        // the channel's consumers of other queues go on too.
        if let Some(ch) = st.channels.get(&(conn, channel))
            && ch.channel_prefetch > 0
        {
            for q in ch.consumers.values() {
                if !touched.contains(q) {
                    touched.push(q.clone());
                }
            }
        }
        for q in touched {
            st.drain(&q, &self.store);
        }
        Ok(())
    }

    // ---- admin ----------------------------------------------------------

    pub fn list_queues(&self) -> Vec<QueueRow> {
        let mut st = self.state.lock();
        for q in st.queues.values_mut() {
            expire_queue(q, &self.store);
        }
        let mut rows: Vec<QueueRow> = st
            .queues
            .values()
            .map(|q| QueueRow {
                name: q.name.to_string(),
                durable: q.durable,
                auto_delete: q.auto_delete,
                exclusive: q.exclusive_owner.is_some(),
                messages_ready: q.ready_count(),
                messages_unacknowledged: q.unacked,
                messages: q.ready_count() + q.unacked,
                message_bytes_ready: q.ready_bytes(),
                consumers: q.consumers.len(),
                arguments: format_table(&q.arguments),
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    }

    /// (name, type, durable, auto_delete, internal) per exchange.
    pub fn list_exchanges(&self) -> Vec<(String, &'static str, bool, bool, bool)> {
        let st = self.state.lock();
        let mut rows: Vec<_> = st
            .exchanges
            .values()
            .map(|e| (e.name.clone(), e.kind.as_str(), e.durable, e.auto_delete, e.internal))
            .collect();
        rows.sort();
        rows
    }

    /// (source, destination kind, destination, routing key, arguments) per
    /// binding, the default exchange's implicit ones included.
    pub fn list_bindings(&self) -> Vec<(String, &'static str, String, String, String)> {
        let st = self.state.lock();
        let mut rows: Vec<_> = st
            .queues
            .keys()
            .map(|q| (String::new(), "queue", q.to_string(), q.to_string(), "[]".to_string()))
            .collect();
        for ex in st.exchanges.values() {
            for b in &ex.bindings {
                rows.push((
                    ex.name.clone(),
                    b.destination.kind(),
                    b.destination.name().to_string(),
                    b.routing_key.clone(),
                    format_table(&b.arguments),
                ));
            }
        }
        rows.sort();
        rows
    }

    /// (id, info, channel count) per connection.
    pub fn list_connections(&self) -> Vec<(u64, ConnectionInfo, usize)> {
        let st = self.state.lock();
        let mut rows: Vec<_> =
            st.connections.values().map(|c| (c.handle.id, c.info.clone(), c.channels.len())).collect();
        rows.sort_by_key(|r| r.0);
        rows
    }

    /// (queue, consumer tag, connection peer, channel, ack required, exclusive, prefetch) per consumer.
    pub fn list_consumers(&self) -> Vec<(String, String, String, u16, bool, bool, u16)> {
        let st = self.state.lock();
        let mut rows = Vec::new();
        for q in st.queues.values() {
            for c in &q.consumers {
                let peer = st.connections.get(&c.connection.id).map(|e| e.info.peer.clone()).unwrap_or_default();
                rows.push((q.name.to_string(), c.tag.to_string(), peer, c.channel, !c.no_ack, c.exclusive, c.prefetch));
            }
        }
        rows.sort();
        rows
    }

    /// Admin purge: ready messages of any queue, exclusive or not.
    pub fn admin_purge(&self, name: &str) -> Option<usize> {
        let mut st = self.state.lock();
        let q = st.queues.get_mut(name)?;
        purge_queue(q, &self.store).ok()
    }

    /// Admin delete: like queue.delete without the ownership check.
    pub fn admin_delete(&self, name: &str) -> Option<usize> {
        let mut st = self.state.lock();
        let count = st.queues.get(name)?.ready_count();
        st.delete_queue(name, &self.store);
        Some(count)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Requeue,
    Discard,
}

fn format_table(t: &FieldTable) -> String {
    let items: Vec<String> = t
        .iter()
        .map(|(k, v)| {
            let value = v
                .as_str()
                .map(str::to_string)
                .or_else(|| v.as_i64().map(|n| n.to_string()))
                .unwrap_or_else(|| format!("{v:?}"));
            format!("{{\"{k}\",{value}}}")
        })
        .collect();
    format!("[{}]", items.join(","))
}

impl State {
    /// Hands ready messages of one queue to consumers with room, in
    /// round-robin order: a consumer that received a message moves to the back.
    fn drain(&mut self, queue: &str, store: &LogStore) {
        let State { queues, channels, loader, .. } = self;
        let Some(q) = queues.get_mut(queue) else { return };
        expire_queue(q, store);
        // Log records for this drain, written once at the end: first
        // deliveries (so a restart flags them redelivered) and no-ack
        // deliveries (which settle at once).
        let mut delivered: Vec<u64> = Vec::new();
        let mut settled: Vec<u64> = Vec::new();
        while q.has_ready() && !q.consumers.is_empty() {
            let pick = q.consumers.iter().position(|c| {
                let consumer_room = c.no_ack || c.prefetch == 0 || c.unacked < c.prefetch as u32;
                consumer_room
                    && channels
                        .get(&(c.connection.id, c.channel))
                        .is_some_and(|ch| c.no_ack && !ch.paused || ch.has_room())
                    && c.connection.has_room()
            });
            let Some(index) = pick else { break };
            if q.peek_ready().is_some_and(|e| e.message.is_none()) && loader.is_some() {
                // The loader reads it outside this lock and drains again.
                break;
            }
            let Some(entry) = q.pop_ready() else { break };
            let Some(message) = load(store, q, &entry) else { continue };
            let Some(mut consumer) = q.consumers.remove(index) else { break };
            let Some(ch) = channels.get_mut(&(consumer.connection.id, consumer.channel)) else {
                q.consumers.push_back(consumer);
                break;
            };
            let delivery_tag = ch.take_tag();
            let redelivered = entry.redelivered;
            if entry.store_id != 0 {
                if consumer.no_ack {
                    settled.push(entry.store_id);
                } else if !redelivered {
                    delivered.push(entry.store_id);
                }
            }
            if !consumer.no_ack {
                consumer.unacked += 1;
                q.unacked += 1;
                ch.unacked.insert(
                    delivery_tag,
                    Unacked {
                        queue: q.name.clone(),
                        incarnation: q.incarnation,
                        entry: unloaded(entry),
                        consumer_tag: Some(consumer.tag.clone()),
                    },
                );
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
        if let Some(loader) = loader.as_ref() {
            read_ahead(q, loader);
        }
        if let Some(qid) = q.store_id {
            // A failure here is the log's I/O failure, already reported by
            // the writer; the deliveries themselves are in memory and stand.
            if !delivered.is_empty() {
                let _ = store.delivered(qid, &delivered);
            }
            if !settled.is_empty() {
                let _ = store.ack(qid, &settled);
            }
        }
    }

    /// The queues a message published to `exchange` reaches, following
    /// exchange-to-exchange bindings, each queue once.
    fn route(&self, exchange: &str, routing_key: &str, headers: Option<&FieldTable>) -> Result<Vec<String>> {
        if exchange.is_empty() {
            return Ok(if self.queues.contains_key(routing_key) { vec![routing_key.to_string()] } else { Vec::new() });
        }
        let Some(start) = self.exchanges.get(exchange) else { return Err(no_exchange(exchange)) };
        let mut queues: Vec<String> = Vec::new();
        let mut visited: Vec<&str> = vec![exchange];
        let mut pending: Vec<&Exchange> = vec![start];
        let mut hits: Vec<&Destination> = Vec::new();
        while let Some(ex) = pending.pop() {
            hits.clear();
            ex.route(routing_key, headers, &mut hits);
            for dest in &hits {
                match dest {
                    Destination::Queue(q) => {
                        if !queues.contains(q) {
                            queues.push(q.clone());
                        }
                    }
                    Destination::Exchange(e) => {
                        if !visited.contains(&e.as_str())
                            && let Some(next) = self.exchanges.get(e)
                        {
                            visited.push(&next.name);
                            pending.push(next);
                        }
                    }
                }
            }
        }
        Ok(queues)
    }

    /// Checks both ends of a binding; returns whether it is durable (both ends are).
    fn check_binding_ends(&self, conn: u64, source: &str, destination: &Destination) -> Result<bool> {
        if source.is_empty() || destination.name().is_empty() && matches!(destination, Destination::Exchange(_)) {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        let src = self.exchanges.get(source).ok_or_else(|| no_exchange(source))?;
        let dest_durable = match destination {
            Destination::Queue(name) => {
                let q = self.queues.get(name.as_str()).ok_or_else(|| no_queue(name))?;
                check_owner(q, conn)?;
                q.store_id.is_some()
            }
            Destination::Exchange(name) => self.exchanges.get(name).ok_or_else(|| no_exchange(name))?.durable,
        };
        Ok(src.durable && dest_durable)
    }

    fn close_channel(&mut self, conn: u64, channel: u16, store: &LogStore) {
        let Some(mut ch) = self.channels.remove(&(conn, channel)) else { return };
        let mut touched: Vec<Arc<str>> = Vec::new();
        for (_, u) in std::mem::take(&mut ch.unacked) {
            if let Some(q) = self.queues.get_mut(&u.queue).filter(|q| q.incarnation == u.incarnation) {
                q.unacked -= 1;
                q.requeue(u.entry);
                if !touched.contains(&u.queue) {
                    touched.push(u.queue.clone());
                }
            }
        }
        for (tag, queue) in ch.consumers {
            if let Some(q) = self.queues.get_mut(&queue) {
                q.consumers.retain(|c| !(c.tag == tag && c.connection.id == conn && c.channel == channel));
                if !touched.contains(&queue) {
                    touched.push(queue);
                }
            }
        }
        // Auto-delete first (no point redelivering from a queue about to go),
        // then hand requeued messages to the remaining consumers.
        for name in touched {
            let Some(q) = self.queues.get(&name) else { continue };
            if q.auto_delete && q.had_consumer && q.consumers.is_empty() {
                self.delete_queue(&name, store);
            } else {
                self.drain(&name, store);
            }
        }
    }

    fn cancel(&mut self, conn: u64, channel: u16, tag: &str, store: &LogStore) -> bool {
        let Some(ch) = self.channels.get_mut(&(conn, channel)) else { return false };
        let Some(queue) = ch.consumers.remove(tag) else { return false };
        let Some(q) = self.queues.get_mut(&queue) else { return true };
        q.consumers.retain(|c| !(&*c.tag == tag && c.connection.id == conn && c.channel == channel));
        if q.auto_delete && q.consumers.is_empty() {
            self.delete_queue(&queue, store);
        }
        true
    }

    /// Removes a queue and every binding to it; its consumers are told with
    /// basic.cancel when their client asked for that.
    fn delete_queue(&mut self, name: &str, store: &LogStore) {
        let Some(q) = self.queues.remove(name) else { return };
        for c in &q.consumers {
            if let Some(ch) = self.channels.get_mut(&(c.connection.id, c.channel)) {
                ch.consumers.remove(&c.tag);
            }
            if c.connection.cancel_notify {
                c.connection.method(c.channel, BasicCancel { consumer_tag: c.tag.to_string(), no_wait: true });
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
    }

    fn delete_exchange(&mut self, name: &str, store: &LogStore) {
        let Some(ex) = self.exchanges.remove(name) else { return };
        if ex.durable
            && let Err(e) = store.define(Record::ExchangeDelete { name: name.to_string() })
        {
            tracing::error!("exchange '{name}' deleted in memory only: {e}");
        }
        let dest = Destination::Exchange(name.to_string());
        let mut emptied = Vec::new();
        for other in self.exchanges.values_mut() {
            let before = other.bindings.len();
            other.bindings.retain(|b| b.destination != dest);
            if other.auto_delete && before > 0 && other.bindings.is_empty() {
                emptied.push(other.name.clone());
            }
        }
        for e in emptied {
            self.delete_exchange(&e, store);
        }
    }
}

/// Drops a queue's expired head messages, and their log records' claim.
fn expire_queue(q: &mut Queue, store: &LogStore) {
    let expired = q.expire(queue::now_ms());
    if let Some(qid) = q.store_id {
        let ids: Vec<u64> = expired.iter().filter(|e| e.store_id != 0).map(|e| e.store_id).collect();
        // A failure here is the log's I/O failure, already reported.
        if !ids.is_empty() {
            let _ = store.ack(qid, &ids);
        }
    }
}

fn store_failed(e: StoreError) -> AmqpError {
    AmqpError::connection(reply::INTERNAL_ERROR, e)
}

/// Asks the loader for the queue's next paged-out bodies, once consumers
/// are waiting and few bodies are left in memory ahead of them.
fn read_ahead(q: &mut Queue, loader: &loader::Loader) {
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
        q.loading = loader.request(loader::LoadRequest { queue: q.name.clone(), incarnation: q.incarnation, items });
    }
}

/// The message of a queue entry: from memory, or (when the loader is not
/// running) read back from the log. A message that cannot be read back
/// intact is dropped with an error in the log and a tombstone, never
/// delivered damaged and never brought back by a restart.
fn load(store: &LogStore, q: &Queue, entry: &QueuedMessage) -> Option<Arc<Message>> {
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

fn drop_unreadable(store: &LogStore, q: &Queue, store_id: u64, e: &StoreError) {
    tracing::error!("queue '{}': a message cannot be read back from the log, dropping it: {e}", q.name);
    if let Some(qid) = q.store_id {
        // A failure here is the log's own failure, already reported.
        let _ = store.ack(qid, &[store_id]);
    }
}

pub fn message_from_record(m: MessageRecord) -> Message {
    Message {
        exchange: m.exchange,
        routing_key: m.routing_key,
        properties: m.properties,
        body: m.body,
        persistent: true,
        expiration_ms: None,
    }
}

/// An unacked entry of a stored message keeps no body: a requeue reads it back.
fn unloaded(mut entry: QueuedMessage) -> QueuedMessage {
    if entry.store_id != 0 {
        entry.message = None;
    }
    entry
}

fn purge_queue(q: &mut Queue, store: &LogStore) -> Result<usize> {
    let purged = q.purge();
    if let Some(qid) = q.store_id {
        let ids: Vec<u64> = purged.iter().filter(|e| e.store_id != 0).map(|e| e.store_id).collect();
        if !ids.is_empty() {
            store.ack(qid, &ids).map_err(store_failed)?;
        }
    }
    Ok(purged.len())
}

fn encode_table(t: &FieldTable) -> bytes::Bytes {
    let mut buf = bytes::BytesMut::new();
    t.write(&mut Writer::new(&mut buf));
    buf.freeze()
}

fn decode_table(raw: &bytes::Bytes) -> FieldTable {
    let mut reader = crate::protocol::wire::Reader::new(raw.clone());
    FieldTable::read(&mut reader).unwrap_or_default()
}

fn exchange_record(ex: &Exchange) -> Record {
    Record::ExchangeDeclare {
        name: ex.name.clone(),
        kind: ex.kind.as_str().to_string(),
        auto_delete: ex.auto_delete,
        internal: ex.internal,
        arguments: encode_table(&ex.arguments),
    }
}

fn queue_record(q: &Queue, id: u32) -> Record {
    Record::QueueDeclare {
        queue: id,
        name: q.name.to_string(),
        auto_delete: q.auto_delete,
        arguments: encode_table(&q.arguments),
    }
}

fn binding_record(source: &str, b: &Binding) -> BindingRecord {
    BindingRecord {
        source: source.to_string(),
        destination_kind: match b.destination {
            Destination::Queue(_) => DestinationKind::Queue,
            Destination::Exchange(_) => DestinationKind::Exchange,
        },
        destination: b.destination.name().to_string(),
        routing_key: b.routing_key.clone(),
        arguments: encode_table(&b.arguments),
    }
}
