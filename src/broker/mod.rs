//! The broker model: virtual hosts with their exchanges, bindings, queues
//! and policies; consumers and the unacked messages of every channel.
//!
//! The maps (vhosts, exchanges, bindings, the queues and channels by name)
//! live in one [`State`] behind a read-write lock ([`StateLock`]); each
//! queue and each channel has a lock of its own. The message path takes
//! the state lock shared and then only the locks of the queues and
//! channels it touches, so publishes, deliveries and acks of different
//! queues do not wait for each other; what changes the maps takes it
//! exclusive. [`StateLock`] gives the lock order. Every critical section is
//! short and never waits on I/O (bodies paged out to the log are read back
//! by the [`loader`] thread, outside them): deliveries are pushed to the
//! consumer's connection through its unbounded outbound queue
//! ([`ConnectionHandle`]), whose writer task does the socket work.
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
//! [`arguments`] queue and consumer arguments; [`queue`] one queue: what
//! every type has (consumers, arguments, its timer) and its
//! [`queue::QueueKind`]; [`classic`] the ready messages of a classic or
//! quorum queue, `level` one priority level's ready messages and their
//! page-out; `publish` publishing;
//! `dead_letter` dead-lettering; `dispatch` consumers (priorities, single
//! active consumer), qos, get and the drain to consumers; `acks` ack,
//! nack, reject, recover; `timers` message TTL, queue expiry and consumer
//! timeouts, run by one thread that sleeps on [`deadlines`]; `reply_to`
//! direct reply-to; `policies` policies and operator
//! policies; [`vhosts`] virtual hosts and their limits; [`loader`] bodies read back from
//! the log; [`memory`] the memory alarm and paging under pressure;
//! [`stream`] stream queues (offsets, retention, their consumers' cursors); `records` the mapping to log records and the restore from
//! replay; `listings` what warrenctl shows.

mod acks;
pub mod arguments;
pub mod changes;
pub mod classic;
#[cfg(test)]
mod concurrency_tests;
mod dead_letter;
pub mod deadlines;
mod dispatch;
mod effects;
pub mod error;
pub mod exchange;
mod level;
mod listings;
pub mod loader;
pub mod memory;
pub mod message;
pub mod operator;
mod policies;
mod publish;
pub mod queue;
pub mod queue_type;
mod queues;
pub mod quorum;
mod records;
pub mod remote;
pub mod replica_state;
#[cfg(test)]
mod replica_tests;
pub mod replicas;
mod reply_to;
mod routing;
pub mod stats;
pub mod stream;
#[cfg(test)]
mod test_support;
mod timers;
pub mod vhosts;

use rustc_hash::FxHashSet as HashSet;
use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

pub use arguments::{ConsumerArgs, Overflow, QueueArgs, QueueType};
use dead_letter::Departed;
use deadlines::{TimerHandle, TimerKey};
use effects::carry_out;
pub use error::{AmqpError, Result, Scope};
pub use exchange::{Binding, Destination, Exchange, ExchangeKind};
pub use listings::{BindingRow, ConsumerRow, ExchangeRow, QueueRow, Topology, connection_name};
pub use message::{ConnectionHandle, Message, OUTBOUND_HIGH_WATER, OutboundShared, Outgoing};
pub use operator::{ChannelRow, GetSettle, Taken};
pub use policies::Policy;
pub use queue::{Consumer, Enqueued, Queue, QueuedMessage};
use queue_type::{Command, Effects, Settle};
use queues::purge_queue;
use records::{binding_record, exchange_record, queue_record};
pub use records::{message_from_parts, message_from_record};
pub use reply_to::REPLY_TO_QUEUE;
use reply_to::ReplyConsumer;
pub use stats::{GlobalStats, LockReport, QueueSample, Snapshot};
pub use timers::BrokerEvent;
pub use vhosts::{VHost, VhostError, VhostInfo, VhostLimits, VhostRow};

use crate::protocol::method::*;
use crate::protocol::wire::{Wire, Writer};
use crate::protocol::{FieldTable, reply};
use crate::store::format::{BindingRecord, DestinationKind, MessageRecord, ParameterKind, Record};
use crate::store::{LogStore, Recovered, StoreError};

/// The lock around the broker's [`State`]: the message path (publish,
/// delivery, ack) takes it shared and then the lock of the one queue or
/// channel it works on; declares, deletes, bindings, policies and channel
/// closes take it exclusive. Its holds are counted and sampled (see
/// [`crate::lock_stats`]).
///
/// Lock order: the state lock, then queue locks, then channel locks.
/// A thread holding a queue's lock takes another queue's only in
/// [`State::deliver_to`], all of them at once in address order; a
/// thread holding a channel's lock takes no queue's.
pub type StateLock = crate::lock_stats::TimedRwLock<State>;

/// One queue behind its own lock: publishes, deliveries and acks of
/// different queues do not wait for each other.
pub type QueueLock = parking_lot::Mutex<Queue>;

/// One channel's deliveries behind their own lock.
pub(crate) type ChannelLock = parking_lot::Mutex<ChannelState>;

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

#[derive(Debug)]
pub(crate) struct ChannelState {
    /// The vhost of the channel's connection: the queues its consumers and
    /// unacked messages name are in it.
    vhost: Arc<str>,
    next_delivery_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    /// Deliveries the leader of a replicated queue made to this channel's
    /// consumers, by this channel's delivery tag (see [`remote`]).
    remote_unacked: BTreeMap<u64, remote::RemoteUnacked>,
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
    /// confirm.select or tx.select, for the channel listing.
    mode: ChannelMode,
    /// The consumer-timeout deadline this channel has armed (0: none).
    timer_at: u64,
}

/// What a channel was put in by its client, as listings show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChannelMode {
    #[default]
    Plain,
    Confirm,
    Transactional,
}

impl ChannelState {
    fn new(vhost: Arc<str>) -> ChannelState {
        ChannelState {
            vhost,
            next_delivery_tag: 0,
            unacked: BTreeMap::new(),
            remote_unacked: BTreeMap::new(),
            channel_prefetch: 0,
            consumer_prefetch: 0,
            consumers: HashMap::default(),
            paused: false,
            reply_to: None,
            timed_out: false,
            closing: false,
            mode: ChannelMode::Plain,
            timer_at: 0,
        }
    }

    /// A delivery the client must acknowledge within `timeout` ms (None:
    /// no consumer timeout applies): the channel's timer is armed for it
    /// unless it is armed no later.
    fn arm_timeout(
        &mut self,
        (conn, channel): (u64, u16),
        delivered_at: u64,
        timeout: Option<u64>,
        timers: &TimerHandle,
    ) {
        let Some(timeout) = timeout else { return };
        // One past the timeout: it fires once the delivery is older than it.
        let at = delivered_at.saturating_add(timeout).saturating_add(1);
        if self.timer_at == 0 || at < self.timer_at {
            timers.arm(TimerKey::Channel { connection: conn, channel }, &mut self.timer_at, at);
        }
    }

    fn take_tag(&mut self) -> u64 {
        self.next_delivery_tag += 1;
        self.next_delivery_tag
    }

    fn has_room(&self) -> bool {
        self.takes_deliveries()
            && (self.channel_prefetch == 0
                || self.unacked.len() + self.remote_unacked.len() < self.channel_prefetch as usize)
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
    pub vhost: String,
    pub client: String,
    pub heartbeat: u16,
    pub frame_max: u32,
    /// When the connection opened, ms since the Unix epoch.
    pub connected_at: u64,
    /// Over TLS (the amqps listener).
    pub tls: bool,
    /// The authentication mechanism the client used.
    pub auth_mechanism: String,
}

#[derive(Debug)]
struct ConnectionEntry {
    handle: ConnectionHandle,
    info: ConnectionInfo,
    vhost: Arc<str>,
    channels: HashSet<u16>,
}

#[derive(Debug, Default)]
pub struct State {
    vhosts: HashMap<Arc<str>, VHost>,
    channels: HashMap<(u64, u16), Arc<ChannelLock>>,
    connections: HashMap<u64, ConnectionEntry>,
    next_incarnation: u64,
    /// Reads paged-out bodies back; `None` if its thread could not start
    /// (bodies are then read under the lock, as a last resort).
    loader: Option<loader::Loader>,
    /// `consumer_timeout`: ms a delivery may stay unacknowledged; None = off.
    consumer_timeout: Option<u64>,
    /// The broker-wide counters (the same as [`Broker::stats`]).
    stats: Arc<GlobalStats>,
    /// RabbitMQ's `connection_max`: connections accepted at most.
    connection_max: Option<usize>,
    /// Streams whose readers wait for the log to make messages durable
    /// (see `stream`): drained when it has.
    durability_waiters: parking_lot::Mutex<HashSet<(Arc<str>, Arc<str>)>>,
    /// Wakes the stream thread when a stream starts waiting: without
    /// waiters it sleeps, instead of waking (and taking the broker's lock)
    /// at every group commit.
    durability_wanted: Arc<tokio::sync::Notify>,
    /// The deadlines the timer thread sleeps on: queues' expiries,
    /// channels' consumer timeouts, stream retention (see `deadlines`).
    timers: TimerHandle,
    /// Held from taking a queue's expired messages out until they are
    /// dead-lettered, so that two threads expiring one queue (the timer,
    /// a publish, a drain) dead-letter its messages in the order they
    /// expired. One of [`EXPIRY_STRIPES`] by the queue's address: queues
    /// sharing a stripe only take turns. Taken before any queue's lock,
    /// or with `try_lock` under one (see `queues::expire_messages`).
    expiry_order: [parking_lot::Mutex<()>; EXPIRY_STRIPES],
    /// On a node of a cluster: where replicated queues' enqueues and
    /// settles go (see [`replicas`]).
    replica_router: replicas::RouterSlot,
}

/// How many locks order the expiries of all queues (see `State::expiry_order`).
const EXPIRY_STRIPES: usize = 32;

/// The result of routing one publish.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Routed {
    /// At least one queue took the message.
    pub routed: bool,
    /// A queue refused it (x-overflow = reject-publish): confirm with a nack.
    pub rejected: bool,
    /// The message went to the log; confirm once this position is durable.
    pub durable_position: Option<u64>,
    /// The groups of the replicated queues it reached, which must commit
    /// it (`replicas::ReplicaRouter::enqueue`) before it is confirmed.
    pub replicated: smallvec::SmallVec<[u64; 1]>,
}

pub struct Broker {
    state: Arc<StateLock>,
    store: Arc<LogStore>,
    /// Users and permissions (their own lock: checked on every operation).
    access: Arc<crate::access::AccessControl>,
    /// Broker-wide counters (atomics: no lock).
    stats: Arc<GlobalStats>,
    /// The sampler's latest snapshot of every queue, with rates.
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    /// The memory alarm and paging flag (see [`memory`]).
    memory: Arc<memory::MemoryMonitor>,
    /// On a node of a cluster: where changes to the shared definitions go
    /// (see [`changes`]).
    change_router: RwLock<Option<Arc<dyn changes::ChangeRouter>>>,
}

fn no_queue(vhost: &str, name: &str) -> AmqpError {
    AmqpError::not_found(format!("no queue '{name}' in vhost '{vhost}'"))
}

fn no_exchange(vhost: &str, name: &str) -> AmqpError {
    AmqpError::not_found(format!("no exchange '{name}' in vhost '{vhost}'"))
}

/// A vhost deleted while one of its connections still had a method in
/// flight: the connection is being closed.
fn no_vhost(vhost: &str) -> AmqpError {
    AmqpError::connection(reply::CONNECTION_FORCED, format!("vhost '{vhost}' is deleted"))
}

fn check_owner(q: &Queue, conn: u64) -> Result<()> {
    match q.exclusive_owner {
        Some(owner) if owner != conn => Err(AmqpError::locked(format!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            q.name, q.vhost
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
    /// A broker with no vhost yet: [`Broker::restore`] brings them back
    /// from the log (or makes the default one).
    pub fn new(store: Arc<LogStore>) -> Broker {
        let stats = Arc::new(GlobalStats::default());
        let state = State {
            consumer_timeout: Some(timers::DEFAULT_CONSUMER_TIMEOUT_MS),
            stats: stats.clone(),
            ..State::default()
        };
        let state = Arc::new(StateLock::new(state));
        match loader::Loader::spawn(state.clone(), store.clone()) {
            Ok(l) => state.write().loader = Some(l),
            Err(e) => tracing::error!("cannot start the body loader thread ({e}); paged-out bodies are read in line"),
        }
        let timers = state.read().timers.clone();
        if let Err(e) = timers::spawn(Arc::downgrade(&state), timers, store.clone()) {
            tracing::error!("cannot start the timer thread ({e}); TTLs act only when a queue is used");
        }
        let wanted = state.read().durability_wanted.clone();
        if let Err(e) = stream::spawn_durability_waker(Arc::downgrade(&state), wanted, store.clone()) {
            tracing::error!("cannot start the stream thread ({e}); stream readers wait for the next publish or ack");
        }
        let access = Arc::new(crate::access::AccessControl::new(store.clone()));
        let snapshot = Arc::new(RwLock::new(Arc::new(Snapshot::default())));
        stats::spawn(Arc::downgrade(&state), stats.clone(), snapshot.clone());
        Broker { state, store, access, stats, snapshot, memory: Arc::default(), change_router: RwLock::new(None) }
    }

    /// Starts the memory monitor with this watermark (of the memory
    /// available to the process): queues page out above `paging_ratio` of
    /// it and publishers are blocked above it. Returns the watermark in bytes.
    pub fn start_memory_monitor(&self, watermark: memory::Watermark, paging_ratio: f64) -> std::io::Result<u64> {
        let (_, available) = crate::metrics::memory();
        let limit = watermark.bytes(available);
        let state = Arc::downgrade(&self.state);
        memory::spawn(self.memory.clone(), (limit, paging_ratio), state, self.store.clone())?;
        Ok(limit)
    }

    /// Changes the memory high watermark (the monitor applies it at its
    /// next sample); returns it in bytes.
    pub fn set_memory_high_watermark(&self, watermark: memory::Watermark) -> u64 {
        let (_, available) = crate::metrics::memory();
        let limit = watermark.bytes(available);
        self.memory.set_limit(limit);
        limit
    }

    /// The memory alarm and the latest resident-memory sample.
    pub fn memory(&self) -> &Arc<memory::MemoryMonitor> {
        &self.memory
    }

    /// Sets the node-wide connection limit (None: none).
    pub fn set_connection_max(&self, max: Option<usize>) {
        self.state.write().connection_max = max;
    }

    /// Broker-wide counters.
    pub fn stats(&self) -> &Arc<GlobalStats> {
        &self.stats
    }

    /// The latest sample of every queue, with rates (at most
    /// [`stats::SAMPLE_EVERY`] old).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().clone()
    }

    pub fn store(&self) -> &Arc<LogStore> {
        &self.store
    }

    pub fn access(&self) -> &Arc<crate::access::AccessControl> {
        &self.access
    }

    /// Refuses a connection to a vhost that does not exist or is at its
    /// `max-connections` (530 NOT_ALLOWED, RabbitMQ's texts).
    pub fn check_vhost_entry(&self, vhost: &str, user: &str) -> Result<()> {
        let user_max = self.access.user_limits(user).max_connections();
        self.state.read().check_connection_limit(vhost, user, user_max)
    }

    /// Registers an opened connection in its vhost; refused (with
    /// RabbitMQ's text) when the vhost is gone or at its `max-connections`.
    pub fn register_connection(&self, handle: ConnectionHandle, info: ConnectionInfo) -> Result<()> {
        let user_max = self.access.user_limits(&info.user).max_connections();
        let mut st = self.state.write();
        st.check_connection_limit(&info.vhost, &info.user, user_max)?;
        let vhost = st
            .vhosts
            .get_key_value(info.vhost.as_str())
            .map(|(k, _)| k.clone())
            .ok_or_else(|| AmqpError::connection(reply::NOT_ALLOWED, format!("vhost {} not found", info.vhost)))?;
        st.connections.insert(handle.id, ConnectionEntry { handle, info, vhost, channels: HashSet::default() });
        GlobalStats::add(&self.stats.connections_opened, 1);
        Ok(())
    }

    /// Refuses one more channel to a user at its `max-channels` (counted
    /// over all of the user's connections): 530 with RabbitMQ's text.
    pub fn check_user_channels(&self, user: &str) -> Result<()> {
        let Some(max) = self.access.user_limits(user).max_channels() else { return Ok(()) };
        let st = self.state.read();
        let open: usize = st.connections.values().filter(|c| c.info.user == user).map(|c| c.channels.len()).sum();
        if open as i64 >= max {
            return Err(AmqpError::connection(
                reply::NOT_ALLOWED,
                format!(
                    "number of channels opened for user '{user}' has reached the maximum allowed user limit of ({max})"
                ),
            ));
        }
        Ok(())
    }

    pub fn open_channel(&self, conn: u64, channel: u16) {
        let mut st = self.state.write();
        let Some(vhost) = st.connections.get(&conn).map(|c| c.vhost.clone()) else { return };
        st.channels.insert((conn, channel), Arc::new(ChannelLock::new(ChannelState::new(vhost))));
        GlobalStats::add(&self.stats.channels_opened, 1);
        if let Some(c) = st.connections.get_mut(&conn) {
            c.channels.insert(channel);
        }
    }

    /// Releases a channel: its unacked messages go back to their queues
    /// (flagged redelivered) and its consumers are cancelled.
    pub fn close_channel(&self, conn: u64, channel: u16) {
        let mut st = self.state.write();
        if st.channels.contains_key(&(conn, channel)) {
            GlobalStats::add(&self.stats.channels_closed, 1);
        }
        st.close_channel(conn, channel, &self.store);
        if let Some(c) = st.connections.get_mut(&conn) {
            c.channels.remove(&channel);
        }
    }

    /// Releases a connection: every channel as in [`Broker::close_channel`],
    /// then its exclusive queues are deleted.
    pub fn close_connection(&self, conn: u64) {
        let mut st = self.state.write();
        let channels: Vec<u16> =
            st.connections.get(&conn).map(|c| c.channels.iter().copied().collect()).unwrap_or_default();
        for ch in &channels {
            if let Some(state) = st.channel(conn, *ch) {
                state.lock().closing = true;
            }
        }
        for ch in channels {
            if st.channels.contains_key(&(conn, ch)) {
                GlobalStats::add(&self.stats.channels_closed, 1);
            }
            st.close_channel(conn, ch, &self.store);
        }
        if let Some(vhost) = st.connections.get(&conn).map(|c| c.vhost.clone()) {
            let exclusive: Vec<Arc<str>> = st
                .vhosts
                .get(&vhost)
                .map(|v| {
                    v.queues
                        .iter()
                        .filter(|(_, q)| q.lock().exclusive_owner == Some(conn))
                        .map(|(name, _)| name.clone())
                        .collect()
                })
                .unwrap_or_default();
            for name in exclusive {
                st.delete_queue(&vhost, &name, &self.store);
            }
        }
        if st.connections.remove(&conn).is_some() {
            GlobalStats::add(&self.stats.connections_closed, 1);
        }
    }
}

impl State {
    /// The lock that orders the expiries of the queue `cell` locks.
    fn expiry_stripe(&self, cell: &QueueLock) -> &parking_lot::Mutex<()> {
        // Queue locks live apart on the heap: the address's low bits say
        // little, the ones above the allocation's alignment do.
        let address = std::ptr::from_ref(cell) as usize;
        &self.expiry_order[(address >> 6) % EXPIRY_STRIPES]
    }

    /// A queue's lock, by name.
    fn queue(&self, vhost: &str, name: &str) -> Option<&Arc<QueueLock>> {
        self.vhosts.get(vhost)?.queues.get(name)
    }

    /// A channel's lock.
    fn channel(&self, conn: u64, channel: u16) -> Option<&Arc<ChannelLock>> {
        self.channels.get(&(conn, channel))
    }

    fn exchange(&self, vhost: &str, name: &str) -> Option<&Exchange> {
        self.vhosts.get(vhost)?.exchanges.get(name)
    }

    fn close_channel(&mut self, conn: u64, channel: u16, store: &LogStore) {
        let Some(cell) = self.channels.remove(&(conn, channel)) else { return };
        // What the channel held, taken out before any queue is locked.
        let (vhost, unacked, consumers) = {
            let mut ch = cell.lock();
            self.timers.disarm(TimerKey::Channel { connection: conn, channel }, &mut ch.timer_at);
            // What leaders delivered goes back when the sessions close.
            ch.remote_unacked.clear();
            if let Some(router) = self.replica_router.get() {
                router.channel_closed(conn, channel);
            }
            (ch.vhost.clone(), std::mem::take(&mut ch.unacked), std::mem::take(&mut ch.consumers))
        };
        let mut touched: Vec<Arc<str>> = Vec::new();
        let mut over_limit: Vec<Departed> = Vec::new();
        let Some(v) = self.vhosts.get(&vhost) else { return };
        let now = queue::now_ms();
        let mut fx = Effects::default();
        for (_, u) in unacked {
            let Some(cell) = v.queues.get(&u.queue) else { continue };
            let mut q = cell.lock();
            if q.incarnation != u.incarnation {
                continue;
            }
            q.apply(Command::Settle { entry: u.entry, how: Settle::Requeue }, now, &mut fx);
            // A failure is the log's I/O failure, already reported.
            let _ = carry_out(&q, &mut fx, store, &mut over_limit);
            if !touched.contains(&u.queue) {
                touched.push(u.queue.clone());
            }
        }
        for (tag, queue) in consumers {
            let Some(cell) = v.queues.get(&queue) else { continue };
            let mut q = cell.lock();
            q.consumers.retain(|c| !(c.tag == tag && c.connection.id == conn && c.channel == channel));
            q.activate_next_consumer();
            // x-expires counts from the last consumer's going, as RabbitMQ's does.
            if q.consumers.is_empty() {
                q.last_used = queue::now_ms();
                let at = q.last_used;
                q.rearm(at);
            }
            drop(q);
            if !touched.contains(&queue) {
                touched.push(queue);
            }
        }
        for departed in over_limit {
            self.depart(departed, store);
        }
        // Auto-delete first (no point redelivering from a queue about to go),
        // then hand requeued messages to the remaining consumers.
        for name in touched {
            let Some(cell) = self.queue(&vhost, &name) else { continue };
            let goes = {
                let q = cell.lock();
                q.auto_delete && q.had_consumer && q.consumers.is_empty()
            };
            if goes {
                self.delete_queue(&vhost, &name, store);
            } else {
                self.drain(&vhost, &name, store);
            }
        }
    }
}

fn store_failed(e: StoreError) -> AmqpError {
    AmqpError::connection(reply::INTERNAL_ERROR, e)
}
