//! A queue: what every queue type has (its name and arguments, its
//! consumers, counters and timer) and a [`QueueKind`] holding the
//! messages the way its type keeps them: a classic or quorum queue's ready
//! messages in [`ClassicQueue`] (one level per priority: delivery takes
//! the highest level that has a message, and within a level publish order,
//! with requeued messages back at the place their `seq` gives them), a
//! stream's retained sequence in [`Stream`].
//!
//! Every change to the messages is a command of `broker::queue_type`,
//! applied through [`Queue::apply`], which answers for every type and arms
//! the queue's timer at the deadline its type asks for. The other methods
//! read (counts, the next deadline, what to read back from the log) or
//! manage where bodies are kept (page-out, bodies read back), which
//! changes no message's place or fate.

use std::collections::VecDeque;
use std::sync::Arc;

use super::arguments::{ConsumerArgs, QueueArgs, QueueType};
pub use super::classic::ClassicQueue;
use super::deadlines::{TimerHandle, TimerKey};
pub use super::level::Spill;
use super::message::{ConnectionHandle, Message};
use super::queue_type::{Command, Effects, Settle};
use super::quorum::QuorumQueue;
use super::stream::Stream;
use crate::protocol::FieldTable;
use crate::store::SPILL_QUEUE;

/// One message in one queue. `seq` is the queue's own publish counter: a
/// requeued message goes back to the place its `seq` gives it.
///
/// A persistent message in a durable queue has a `store_id`; its body may
/// then be dropped from memory (`message = None`) and read back from the log
/// when it is delivered.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub seq: u64,
    /// Id in the write-ahead log; 0 when the message is not stored.
    pub store_id: u64,
    pub message: Option<Arc<Message>>,
    /// Body length, kept for `x-max-length-bytes` when the body is on disk.
    pub size: u32,
    pub redelivered: bool,
    /// Broker clock ([`now_ms`]) at which the message expires, plus one; 0
    /// for never.
    pub expires_at: u64,
    /// The priority level the message waits in (0 in a plain queue).
    pub level: u8,
    /// Times the message was handed out and came back (the quorum queue's
    /// `x-delivery-count`).
    pub delivery_count: u32,
}

static CLOCK_START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Milliseconds on the broker's monotonic clock, for message TTLs.
pub fn now_ms() -> u64 {
    CLOCK_START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// The instant a broker-clock time (ms) stands for, for sleeping until it.
pub fn instant_of(ms: u64) -> std::time::Instant {
    *CLOCK_START.get_or_init(std::time::Instant::now) + std::time::Duration::from_millis(ms)
}

/// How many of the newest ready messages of a durable queue's level keep
/// their body in memory; older ones are read back from the log when delivered.
pub const HOT_WINDOW: usize = 512;

#[derive(Debug)]
pub struct Consumer {
    pub tag: Arc<str>,
    pub connection: ConnectionHandle,
    pub channel: u16,
    /// That channel's own state (delivery tags, unacked deliveries), so a
    /// delivery needs no lookup of it.
    pub(in crate::broker) channel_state: Arc<super::ChannelLock>,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Per-consumer limit from basic.qos(global=false); 0 = none.
    pub prefetch: u16,
    pub unacked: u32,
    pub args: ConsumerArgs,
    /// Whether it receives messages: false for the waiting consumers of a
    /// single-active-consumer queue.
    pub active: bool,
    /// A stream consumer's cursor.
    pub stream: Option<Box<super::stream::StreamCursor>>,
}

#[derive(Debug)]
pub struct Queue {
    pub name: Arc<str>,
    /// The virtual host the queue lives in.
    pub vhost: Arc<str>,
    pub durable: bool,
    /// Id in the write-ahead log, for durable queues.
    pub store_id: Option<u32>,
    /// Unique per queue the broker ever created (names are reused).
    pub incarnation: u64,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    pub args: QueueArgs,
    /// The queue's type, with the messages it holds.
    pub(in crate::broker) kind: QueueKind,
    /// A replicated quorum queue's group and members (a node of a cluster).
    pub replica: Option<Arc<super::replicas::Replica>>,
    /// Whether this node's member leads the replicated queue's group: only
    /// the leader hands messages out (`broker::replicas`).
    pub replica_active: bool,
    /// The highest position (`cluster::queue_commands::position`) this
    /// node applied to the replicated queue: an enqueue applied again
    /// after a restart is skipped.
    pub replica_applied: u64,
    /// What the group's applied commands left in a replicated queue: the
    /// position of each message enqueued and not settled, with its log
    /// record. A snapshot for a member is made from this, whatever this
    /// node has handed out meanwhile (a message being requeued is in no
    /// channel and not yet ready again, but the group still holds it).
    pub replica_held: std::collections::BTreeMap<u64, u64>,
    /// Bodies are being read back from the log for this queue.
    pub loading: bool,
    /// How many messages were asked of the loader and not yet taken: while
    /// enough of them are ahead of consumers, no read-ahead scan is needed.
    pub read_ahead_upto: u64,
    pub consumers: VecDeque<Consumer>,
    /// Delivered to a consumer or basic.get and not yet settled (changed
    /// only by [`Queue::delivered`] and [`Queue::settled`]).
    unacked: usize,
    /// An auto-delete queue goes away when its last consumer does, but only
    /// once it has had one.
    pub had_consumer: bool,
    /// Broker clock of the last use (declare, consume, get) for `x-expires`.
    pub last_used: u64,
    /// The policy and operator policy that apply, by name.
    pub policy: Option<String>,
    pub operator_policy: Option<String>,
    /// Message counters for the statistics (see `stats`).
    pub counters: super::stats::QueueCounters,
    /// The broker's deadlines, armed for message expiries and `x-expires`
    /// (none in a queue not yet attached: it arms nothing).
    timer: Option<TimerHandle>,
    /// The deadline this queue has armed (0: none).
    timer_at: u64,
}

/// What a queue is, with the messages it holds: one type per queue type,
/// as RabbitMQ's `x-queue-type` names them.
#[derive(Debug)]
pub enum QueueKind {
    Classic(ClassicQueue),
    /// A classic queue's messages under the quorum queue's rules (every
    /// message logged, delivery counts and their limit): `broker::quorum`.
    Quorum(QuorumQueue),
    /// A stream: an append-only sequence its readers each read at their
    /// own offset.
    Stream(Box<Stream>),
}

impl QueueKind {
    /// What the queue holds: ready messages (a classic or quorum queue's)
    /// or a stream.
    fn holds(&self) -> Result<&ClassicQueue, &Stream> {
        match self {
            QueueKind::Classic(m) => Ok(m),
            QueueKind::Quorum(q) => Ok(q.messages()),
            QueueKind::Stream(s) => Err(s),
        }
    }

    fn messages_mut(&mut self) -> Option<&mut ClassicQueue> {
        match self {
            QueueKind::Classic(m) => Some(m),
            QueueKind::Quorum(q) => Some(q.messages_mut()),
            QueueKind::Stream(_) => None,
        }
    }
}

/// The outcome of offering a message to a queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued {
    Accepted,
    /// x-overflow = reject-publish and the queue is full.
    Rejected,
}

impl Queue {
    pub fn new(
        vhost: Arc<str>,
        name: &str,
        durable: bool,
        exclusive_owner: Option<u64>,
        auto_delete: bool,
        arguments: FieldTable,
        args: QueueArgs,
    ) -> Self {
        let kind = match args.queue_type {
            QueueType::Classic => QueueKind::Classic(ClassicQueue::new(args.max_priority)),
            QueueType::Quorum => QueueKind::Quorum(QuorumQueue::new(args.max_priority)),
            QueueType::Stream => QueueKind::Stream(Box::default()),
        };
        Queue {
            name: Arc::from(name),
            vhost,
            durable,
            store_id: None,
            incarnation: 0,
            exclusive_owner,
            auto_delete,
            arguments,
            args,
            kind,
            replica: None,
            replica_active: false,
            replica_applied: 0,
            replica_held: Default::default(),
            loading: false,
            read_ahead_upto: 0,
            consumers: VecDeque::new(),
            unacked: 0,
            had_consumer: false,
            last_used: now_ms(),
            policy: None,
            operator_policy: None,
            counters: Default::default(),
            timer: None,
            timer_at: 0,
        }
    }

    /// Connects the queue to the broker's deadlines and arms what it
    /// already needs (messages restored before, `x-expires`).
    pub fn attach_timer(&mut self, timer: TimerHandle, now: u64) {
        self.timer = Some(timer);
        self.timer_at = 0;
        self.rearm(now);
    }

    /// The queue's key among the broker's deadlines.
    pub fn timer_key(&self) -> TimerKey {
        TimerKey::Queue { vhost: self.vhost.clone(), name: self.name.clone() }
    }

    /// Arms the queue's timer at `at` unless it is armed no later.
    fn arm_at(&mut self, at: u64) {
        if self.timer_at != 0 && self.timer_at <= at {
            return;
        }
        let key = self.timer_key();
        if let Some(timer) = &self.timer {
            timer.arm(key, &mut self.timer_at, at);
        }
    }

    /// When the queue next needs the timer: its earliest message expiry,
    /// and with `x-expires` the moment it has been unused that long (while
    /// it has consumers it is not unused: looked at again `x-expires` later).
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        if let QueueKind::Stream(stream) = &self.kind {
            // A stream's age retention is looked at every AGE_CHECK_MS.
            return Some(stream.age_checked.max(now).saturating_add(super::stream::AGE_CHECK_MS));
        }
        let unused = self.args.expires.map(|ttl| {
            if self.consumers.is_empty() { self.last_used.saturating_add(ttl) } else { now.saturating_add(ttl) }
        });
        match (self.next_expiry(), unused) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Arms the timer at [`Queue::next_deadline`] (after its arguments
    /// changed, or the timer fired).
    pub fn rearm(&mut self, now: u64) {
        if let Some(at) = self.next_deadline(now) {
            self.arm_at(at);
        }
    }

    /// The timer fired for a deadline at `at`: whether it is this queue's
    /// current one (else it was stale). The queue is then not armed until
    /// [`Queue::rearm`].
    pub fn timer_fired(&mut self, at: u64) -> bool {
        if self.timer_at != 0 && self.timer_at == at {
            self.timer_at = 0;
            true
        } else {
            false
        }
    }

    /// Forgets the queue's deadline (the queue is going away).
    pub fn disarm_timer(&mut self) {
        let key = self.timer_key();
        if let Some(timer) = &self.timer {
            timer.disarm(key, &mut self.timer_at);
        }
    }

    /// The queue id its messages' log records are settled under: the
    /// durable queue's own, or for any other queue [`SPILL_QUEUE`] (only
    /// bodies paged out under memory pressure are in the log; settling
    /// them writes nothing).
    pub fn settle_id(&self) -> u32 {
        self.store_id.unwrap_or(SPILL_QUEUE)
    }

    /// Messages delivered and not yet settled.
    pub fn unacked(&self) -> usize {
        self.unacked
    }

    /// `count` messages of this stream were handed out to its readers and
    /// await their ack (a classic or quorum queue counts its own, in
    /// [`Queue::apply`]; each settle is a [`Command::Settle`]).
    pub fn delivered(&mut self, count: usize) {
        self.unacked += count;
    }

    /// The queue's type and the messages it holds.
    pub fn kind(&self) -> &QueueKind {
        &self.kind
    }

    /// The retained messages of a stream queue.
    pub fn stream(&self) -> Option<&Stream> {
        match &self.kind {
            QueueKind::Stream(s) => Some(s),
            _ => None,
        }
    }

    pub fn stream_mut(&mut self) -> Option<&mut Stream> {
        match &mut self.kind {
            QueueKind::Stream(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self.kind, QueueKind::Stream(_))
    }

    /// The ready messages of a classic or quorum queue.
    fn messages(&self) -> Option<&ClassicQueue> {
        self.kind.holds().ok()
    }

    fn messages_mut(&mut self) -> Option<&mut ClassicQueue> {
        self.kind.messages_mut()
    }

    /// Whether the log keeps `message` for this queue (when the queue is
    /// durable): a persistent one, or any a quorum queue takes.
    pub fn keeps_in_log(&self, message: &Message) -> bool {
        matches!(self.kind, QueueKind::Quorum(_)) || message.persistent
    }

    /// The message as a consumer gets it from this queue.
    pub fn as_delivered(&self, entry: &QueuedMessage, message: Arc<Message>) -> Arc<Message> {
        match self.kind {
            QueueKind::Quorum(_) => QuorumQueue::as_delivered(entry, message),
            QueueKind::Classic(_) | QueueKind::Stream(_) => message,
        }
    }

    /// Messages in the queue, ready or unacknowledged (a stream's
    /// unacknowledged messages are among those it retains).
    pub fn message_count(&self) -> usize {
        match self.kind.holds() {
            Ok(m) => m.ready_count() + self.unacked,
            Err(s) => s.len(),
        }
    }

    /// Messages ready for delivery (a stream's: every retained message).
    pub fn ready_count(&self) -> usize {
        match self.kind.holds() {
            Ok(m) => m.ready_count(),
            Err(s) => s.len(),
        }
    }

    pub fn ready_bytes(&self) -> usize {
        match self.kind.holds() {
            Ok(m) => m.ready_bytes(),
            Err(s) => s.bytes() as usize,
        }
    }

    /// Whether a classic or quorum queue has a message ready (a stream's
    /// readers each have their own position).
    pub fn has_ready(&self) -> bool {
        self.messages().is_some_and(|m| m.ready_count() > 0)
    }

    /// The level a message of this priority waits in: priorities above
    /// the queue's maximum count as the maximum.
    pub fn level_of(&self, priority: u8) -> u8 {
        self.messages().map_or(0, |m| m.level_of(priority))
    }

    /// Whether a message would be refused (x-overflow = reject-publish or
    /// reject-publish-dlx).
    pub fn would_reject(&self, size: usize) -> bool {
        self.messages().is_some_and(|m| m.would_reject(&self.args, size))
    }

    /// Applies one command to the queue's messages at time `now` (see
    /// `broker::queue_type`): arms the timer at the deadline it needs
    /// (taken out of `fx`) and counts the deliveries awaiting a settle; the
    /// other effects are gathered in `fx` for the caller to carry out.
    #[inline(always)]
    pub fn apply(&mut self, command: Command, now: u64, fx: &mut Effects) {
        // A replicated queue's message its group settled while this node
        // had it out does not come back here, whoever puts it back.
        let command = match command {
            Command::Settle { entry, how: Settle::Requeue } if self.settled_by_group(entry.seq) => {
                Command::Settle { entry, how: Settle::Ack }
            }
            other => other,
        };
        let settles = matches!(command, Command::Settle { .. } | Command::Return { settled: false, .. });
        let checkout = match command {
            Command::Checkout { settled } => Some(settled),
            _ => None,
        };
        let taken_before = fx.taken.is_some();
        let Queue { kind, args, .. } = self;
        match kind {
            QueueKind::Classic(m) => m.apply(args, command, now, fx),
            QueueKind::Quorum(q) => q.apply(args, command, now, fx),
            QueueKind::Stream(s) => s.apply(args, command, now, fx),
        }
        if checkout == Some(false) && !taken_before && fx.taken.is_some() {
            self.unacked += 1;
        }
        if settles {
            self.unacked = self.unacked.saturating_sub(1);
        }
        if let Some(at) = fx.deadline.take() {
            self.arm_at(at);
        }
    }

    /// Appends a message recovered from the log (body on disk). `age` is
    /// how long ago it was published (0 when the log does not know), so
    /// TTLs count from the publish.
    /// As [`Queue::restore`], at `position` of a replicated quorum queue
    /// (its seq is its position, alike on every member).
    pub fn restore_at(&mut self, position: u64, store_id: u64, meta: RestoredMeta) {
        self.place_next(position);
        self.replica_applied = self.replica_applied.max(position);
        self.replica_held.insert(position, store_id);
        self.restore(store_id, meta);
    }

    /// Whether the message at `seq`, handed out by this node, was settled
    /// by its replicated queue's group meanwhile (this node handed it out
    /// as leader, and it was acknowledged at the next one): it must not
    /// come back to the queue here.
    pub fn settled_by_group(&self, seq: u64) -> bool {
        self.replica.is_some() && !self.replica_held.contains_key(&seq)
    }

    /// A replica of a replicated queue whose group this node does not
    /// lead: it holds the messages but hands none out.
    #[inline]
    pub fn is_passive_replica(&self) -> bool {
        self.replica.is_some() && !self.replica_active
    }

    /// The next message enqueued or restored gets seq `position`.
    pub(super) fn place_next(&mut self, position: u64) {
        if let Some(messages) = self.kind.messages_mut() {
            messages.place_next(position);
        }
    }

    /// Every ready message of a classic or quorum queue.
    pub(super) fn ready_entries(&self) -> impl Iterator<Item = &QueuedMessage> {
        self.messages().into_iter().flat_map(|m| m.ready_entries())
    }

    /// The log record of the ready message `seq`, if the queue holds it.
    pub(super) fn store_id_at(&mut self, seq: u64) -> Option<u64> {
        self.kind.messages_mut().and_then(|m| m.store_id_at(seq))
    }

    pub fn restore(&mut self, store_id: u64, meta: RestoredMeta) {
        let Queue { kind, args, .. } = self;
        let deadline = kind.messages_mut().and_then(|m| m.restore(args, store_id, meta, now_ms()));
        if let Some(at) = deadline {
            self.arm_at(at);
        }
    }

    /// The earliest expiry among the heads (broker clock), for the expiry timer.
    pub fn next_expiry(&self) -> Option<u64> {
        self.messages().and_then(ClassicQueue::next_expiry)
    }

    /// Drops the bodies of ready messages older than the newest `window`
    /// of their level, once the log has written them (`is_written`), so
    /// that a backlog costs a small index entry per message rather than its
    /// body; with `spill` (memory pressure) transient bodies are paged out
    /// to the log first. Only the level a message was just published to
    /// grows, so only it is looked at (`level`); None looks at every level.
    pub fn page_out(
        &mut self,
        level: Option<u8>,
        window: usize,
        is_written: impl Fn(u64) -> bool,
        spill: Option<&mut Spill<'_>>,
    ) {
        if let Some(m) = self.messages_mut() {
            m.page_out(level, window, is_written, spill);
        }
    }

    /// Store ids of every ready message (a stream's retained ones too).
    pub fn ready_store_ids(&self) -> Vec<u64> {
        match self.kind.holds() {
            Ok(m) => m.store_ids().collect(),
            Err(s) => s.store_ids(),
        }
    }

    /// The message [`Queue::pop_ready`] would take next.
    pub fn peek_ready(&self) -> Option<&QueuedMessage> {
        self.messages().and_then(ClassicQueue::peek_ready)
    }

    /// Whether some ready message holds no body in memory.
    pub fn has_cold(&self) -> bool {
        self.messages().is_some_and(ClassicQueue::has_cold)
    }

    /// The next messages to read back from the log, as (seq, store id):
    /// the first ones without a body in delivery order, up to `max` or
    /// `max_bytes`; none when `warm_enough` messages with a body come first
    /// (consumers have enough to go on).
    pub fn cold_ahead(&self, warm_enough: usize, max: usize, max_bytes: usize) -> Vec<(u64, u64)> {
        self.messages().map(|m| m.cold_ahead(warm_enough, max, max_bytes)).unwrap_or_default()
    }

    /// Gives a ready message read back from the log its body again.
    pub fn attach(&mut self, seq: u64, store_id: u64, message: Arc<Message>) {
        if let Some(m) = self.messages_mut() {
            m.attach(seq, store_id, message);
        }
    }

    pub fn consumer_mut(&mut self, tag: &str, connection: u64, channel: u16) -> Option<&mut Consumer> {
        self.consumers.iter_mut().find(|c| &*c.tag == tag && c.connection.id == connection && c.channel == channel)
    }

    /// A single-active-consumer queue whose active consumer went hands
    /// over to the consumer that waited longest.
    pub fn activate_next_consumer(&mut self) {
        if self.args.single_active_consumer
            && !self.consumers.iter().any(|c| c.active)
            && let Some(next) = self.consumers.front_mut()
        {
            next.active = true;
        }
    }

    pub fn has_exclusive_consumer(&self) -> bool {
        self.consumers.iter().any(|c| c.exclusive)
    }
}

/// What the log knows of a recovered message.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoredMeta {
    pub size: u32,
    pub redelivered: bool,
    pub priority: u8,
    /// The message's own `expiration`, in ms.
    pub expiration_ms: Option<u64>,
    /// Milliseconds since the publish (0 when the log does not know).
    pub age: u64,
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
