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
//!
//! Where each thing lives: this file holds the state, connections and
//! channels; `routing` exchanges, bindings, routing, alternate exchanges
//! and CC/BCC; `queues` queue declare, purge, delete and TTL expiry;
//! [`arguments`] queue and consumer arguments; [`queue`] one queue's
//! messages (priority levels) and consumers; `publish` publishing;
//! `dead_letter` dead-lettering; `dispatch` consumers (priorities, single
//! active consumer), qos, get and the drain to consumers; `acks` ack,
//! nack, reject, recover; `timers` message TTL, queue expiry and consumer
//! timeouts; `reply_to` direct reply-to; `policies` policies and operator
//! policies; [`loader`] bodies read back from
//! the log; `records` the mapping to log records and the restore from
//! replay; `listings` what warrenctl shows.

mod acks;
pub mod arguments;
mod dead_letter;
mod dispatch;
pub mod error;
pub mod exchange;
mod listings;
pub mod loader;
pub mod message;
mod policies;
mod publish;
pub mod queue;
mod queues;
mod records;
mod reply_to;
mod routing;
mod timers;

use std::collections::{BTreeMap, HashSet};

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

pub use arguments::{ConsumerArgs, Overflow, QueueArgs, QueueType};
use dead_letter::{Departed, Reason};
pub use error::{AmqpError, Result, Scope};
pub use exchange::{Binding, Destination, Exchange, ExchangeKind};
pub use listings::{ConsumerRow, QueueRow, Topology, connection_name};
pub use message::{ConnectionHandle, Message, OutboundShared, Outgoing};
pub use policies::Policy;
pub use queue::{Consumer, Enqueued, Queue, QueuedMessage};
use queues::purge_queue;
pub use records::message_from_record;
use records::{binding_record, exchange_record, queue_record};
pub use reply_to::REPLY_TO_QUEUE;
use reply_to::ReplyConsumer;
pub use timers::BrokerEvent;

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
    /// Broker clock of the delivery, for the consumer timeout.
    delivered_at: u64,
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
    /// The channel consumes from the direct reply-to pseudo-queue.
    reply_to: Option<ReplyConsumer>,
    /// The consumer timeout fired: the connection is closing the channel.
    timed_out: bool,
    /// Its connection is closing.
    closing: bool,
}

impl ChannelState {
    fn take_tag(&mut self) -> u64 {
        self.next_delivery_tag += 1;
        self.next_delivery_tag
    }

    fn has_room(&self) -> bool {
        self.takes_deliveries() && (self.channel_prefetch == 0 || self.unacked.len() < self.channel_prefetch as usize)
    }

    /// Not paused by channel.flow, not being closed (its connection going,
    /// or its consumer timed out): messages requeued while a connection
    /// closes must not go to another of its channels.
    fn takes_deliveries(&self) -> bool {
        !self.paused && !self.timed_out && !self.closing
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
    /// `consumer_timeout`: ms a delivery may stay unacknowledged; None = off.
    consumer_timeout: Option<u64>,
    policies: Vec<policies::ActivePolicy>,
    operator_policies: Vec<policies::ActivePolicy>,
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
    /// Users and permissions (their own lock: checked on every operation).
    access: Arc<crate::access::AccessControl>,
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
        state.consumer_timeout = Some(timers::DEFAULT_CONSUMER_TIMEOUT_MS);
        let state = Arc::new(Mutex::new(state));
        match loader::Loader::spawn(state.clone(), store.clone()) {
            Ok(l) => state.lock().loader = Some(l),
            Err(e) => tracing::error!("cannot start the body loader thread ({e}); paged-out bodies are read in line"),
        }
        if let Err(e) = timers::spawn(Arc::downgrade(&state), store.clone()) {
            tracing::error!("cannot start the timer thread ({e}); TTLs act only when a queue is used");
        }
        let access = Arc::new(crate::access::AccessControl::new(store.clone()));
        Broker { state, store, access }
    }

    pub fn store(&self) -> &Arc<LogStore> {
        &self.store
    }

    pub fn access(&self) -> &Arc<crate::access::AccessControl> {
        &self.access
    }

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
        for ch in &channels {
            if let Some(state) = st.channels.get_mut(&(conn, *ch)) {
                state.closing = true;
            }
        }
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
}

impl State {
    fn close_channel(&mut self, conn: u64, channel: u16, store: &LogStore) {
        let Some(mut ch) = self.channels.remove(&(conn, channel)) else { return };
        let mut touched: Vec<Arc<str>> = Vec::new();
        let mut over_limit: Vec<Departed> = Vec::new();
        for (_, u) in std::mem::take(&mut ch.unacked) {
            if let Some(q) = self.queues.get_mut(&u.queue).filter(|q| q.incarnation == u.incarnation) {
                q.unacked -= 1;
                if let Some(entry) = q.requeue(u.entry) {
                    departed_push(&mut over_limit, q, entry, Reason::DeliveryLimit);
                }
                if !touched.contains(&u.queue) {
                    touched.push(u.queue.clone());
                }
            }
        }
        for (tag, queue) in ch.consumers {
            if let Some(q) = self.queues.get_mut(&queue) {
                q.consumers.retain(|c| !(c.tag == tag && c.connection.id == conn && c.channel == channel));
                q.activate_next_consumer();
                if !touched.contains(&queue) {
                    touched.push(queue);
                }
            }
        }
        for departed in over_limit {
            self.depart(departed, store);
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
}

/// Adds a message that left queue `q` for `reason` to the batch for that queue.
fn departed_push(batch: &mut Vec<Departed>, q: &Queue, entry: QueuedMessage, reason: Reason) {
    match batch.iter_mut().find(|d| d.queue == q.name && d.incarnation == q.incarnation && d.reason == reason) {
        Some(d) => d.entries.push(entry),
        None => {
            batch.push(Departed { queue: q.name.clone(), incarnation: q.incarnation, entries: vec![entry], reason })
        }
    }
}

fn store_failed(e: StoreError) -> AmqpError {
    AmqpError::connection(reply::INTERNAL_ERROR, e)
}
