//! Streams at work: a publish appends a record carrying its offset (and the
//! `x-stream-offset` header every delivery shows) and applies the size
//! retention; each consumer is handed messages from its own cursor while
//! it has credit, from memory for the newest messages and through the
//! loader for the others; an ack only returns credit (and moves a tracked
//! offset); retention by age runs on the timer.

use std::sync::{Arc, Weak};

use crate::broker::StateLock;

use super::super::loader::{self, LoadRequest};
use super::super::message::{Message, Outgoing};
use super::super::queue::{Queue, QueueKind, QueuedMessage, now_ms};
use super::super::stats::GlobalStats;
use super::super::{AmqpError, ChannelState, Result, State, Unacked, message_from_record};
use super::consumer::{StreamConsumeArgs, StreamCursor};
use super::{STREAM_HOT_WINDOW, StreamEntry};
use crate::protocol::{BasicProperties, FieldTable, FieldValue};
use crate::store::format::{MessageRecord, ParameterKind, Record};
use crate::store::{LogStore, StoreError, wall_ms};

/// The header each delivery of a stream carries: the message's offset.
const STREAM_OFFSET_HEADER: &str = "x-stream-offset";

/// How RabbitMQ names a queue in its texts.
fn rs(q: &Queue) -> String {
    format!("queue '{}' in vhost '{}'", q.name, q.vhost)
}

/// Appends a message to a stream: its own log record at the stream's next
/// offset, with the offset in its headers, then drops what the size
/// retention no longer keeps. Returns the position that must be durable
/// before the publish is confirmed.
pub(in crate::broker) fn publish_to_stream(
    q: &mut Queue,
    message: &Message,
    store: &LogStore,
    moved_from: Option<(u32, u64)>,
) -> std::result::Result<u64, StoreError> {
    let (Some(qid), Some(stream)) = (q.store_id, q.stream_mut()) else { return Ok(0) };
    let offset = stream.next_offset();
    let properties = with_offset_header(&message.properties, offset);
    let names = (message.exchange.as_str(), message.routing_key.as_str());
    let (id, end, record_len) = store.publish_stream(qid, offset, names, &properties, &message.body, moved_from)?;
    let stored = Arc::new(Message {
        exchange: message.exchange.clone(),
        routing_key: message.routing_key.clone(),
        properties,
        body: message.body.clone(),
        persistent: message.persistent,
        expiration_ms: message.expiration_ms,
        priority: message.priority,
    });
    let entry = StreamEntry {
        offset,
        store_id: id,
        size: message.body_len() as u32,
        record_len,
        published_ms: wall_ms(),
        message: Some(stored),
    };
    stream.publish(entry, end);
    q.counters.publish += 1;
    apply_retention(q, store, false);
    if let Some(stream) = q.stream_mut() {
        stream.page_out(STREAM_HOT_WINDOW, |id| store.is_written(id));
    }
    Ok(end)
}

/// The publisher's properties with `x-stream-offset` set in the headers.
fn with_offset_header(raw: &bytes::Bytes, offset: u64) -> bytes::Bytes {
    let Ok(mut props) = BasicProperties::decode(raw.clone()) else { return raw.clone() };
    props.headers.get_or_insert_with(FieldTable::new).insert(STREAM_OFFSET_HEADER, FieldValue::I64(offset as i64));
    props.to_bytes()
}

/// Drops the head messages the stream's retention no longer keeps (size
/// always; age too with `by_age`) and tells the log.
pub(in crate::broker) fn apply_retention(q: &mut Queue, store: &LogStore, by_age: bool) {
    let max_bytes = q.args.max_length_bytes.map(|n| n as u64);
    let min_published = match q.args.max_age {
        Some(age) if by_age => Some(wall_ms().saturating_sub(age)),
        _ => None,
    };
    let (Some(qid), Some(stream)) = (q.store_id, q.stream_mut()) else { return };
    if by_age {
        stream.age_checked = now_ms();
    }
    let dropped = stream.apply_retention(max_bytes, min_published);
    if !dropped.is_empty()
        && let Err(e) = store.ack(qid, &dropped)
    {
        tracing::error!("stream {}: retention applied in memory only: {e}", rs(q));
    }
}

/// Checks a basic.consume on a stream as RabbitMQ does and makes the
/// consumer's cursor from its parsed arguments (changing nothing). `client_tag` is the tag when the
/// client chose it (tracking needs one).
pub(in crate::broker) fn consumer_cursor(
    q: &mut Queue,
    ch: &ChannelState,
    client_tag: Option<&Arc<str>>,
    no_ack: bool,
    args: StreamConsumeArgs,
) -> Result<Box<StreamCursor>> {
    if ch.consumer_prefetch == 0 {
        return Err(AmqpError::precondition(format!("consumer prefetch count is not set for '{}'", rs(q))));
    }
    if no_ack {
        return Err(AmqpError::not_implemented(format!(
            "automatic acknowledgement not supported by stream queues {}",
            rs(q)
        )));
    }
    if ch.channel_prefetch > 0 {
        return Err(AmqpError::not_implemented(format!("{} does not support global qos", rs(q))));
    }
    let Some(stream) = q.stream_mut() else {
        return Err(AmqpError::precondition(format!("{} is not a stream", rs(q))));
    };
    // As LavinMQ: a tracked consumer resumes after its last ack; without
    // tracking its offset is left alone (and not moved by its acks).
    let tracking = client_tag.filter(|_| args.track).cloned();
    let start = match tracking.as_ref().and_then(|tag| stream.tracked.get(tag)) {
        Some(next) => (*next).clamp(stream.first_offset(), stream.next_offset()),
        None => args.start.resolve(stream),
    };
    Ok(Box::new(StreamCursor::new(start, args, tracking)))
}

/// The parameter key of a tracked offset: the JSON array [vhost, stream,
/// consumer tag] (unambiguous whatever the names hold).
pub fn tracked_key(q: &Queue, tag: &str) -> String {
    serde_json::json!([&*q.vhost, &*q.name, tag]).to_string()
}

/// A delivery of a stream was settled: the consumer gets its credit back.
/// Returns the tag whose tracked offset an ack moves, if it is tracked
/// (also once the consumer is gone).
pub(in crate::broker) fn settled(q: &mut Queue, (conn, channel): (u64, u16), tag: &str, ack: bool) -> Option<Arc<str>> {
    let tracking = match q.consumer_mut(tag, conn, channel) {
        Some(c) => {
            c.unacked = c.unacked.saturating_sub(1);
            c.stream.as_ref().and_then(|s| s.tracking.clone())
        }
        None => q.stream().and_then(|s| s.tracking_tags.get(tag)).cloned(),
    };
    tracking.filter(|_| ack)
}

/// Moves a tracked offset past `offset` (the highest acked in a batch) and
/// logs it, so that it survives a restart.
pub(in crate::broker) fn track(q: &mut Queue, tag: Arc<str>, offset: u64, store: &LogStore) {
    let key = tracked_key(q, &tag);
    let Some(stream) = q.stream_mut() else { return };
    let next = stream.tracked.entry(tag).or_insert(0);
    if offset < *next {
        return;
    }
    *next = offset + 1;
    let value = serde_json::json!({ "offset": offset + 1 }).to_string();
    let record = Record::Parameter { kind: ParameterKind::StreamOffset, key, value: value.into() };
    if let Err(e) = store.define(record) {
        tracing::error!("stream {}: a tracked offset kept in memory only: {e}", rs(q));
    }
}

impl State {
    /// Hands each consumer of a stream the messages from its cursor on,
    /// while it has credit and its channel and socket have room. Bodies
    /// not in memory are asked of the loader, once for all readers.
    pub(in crate::broker) fn deliver_stream(&self, q: &mut Queue, store: &LogStore) {
        let State { loader, stats, durability_waiters, durability_wanted, timers, consumer_timeout, .. } = self;
        let loader = loader.as_ref().filter(|l| l.is_alive());
        let Queue { kind, consumers, counters, name, incarnation, vhost: q_vhost, store_id, args, .. } = q;
        let QueueKind::Stream(stream) = kind else { return };
        let queue_ref = (&*q_vhost, &*name, *incarnation);
        let durable_below = stream.durable_below(store.durable_position());
        let mut awaits_durability = false;
        let mut delivered = 0;
        for consumer in consumers.iter_mut() {
            let Some(cursor) = consumer.stream.as_deref_mut() else { continue };
            let mut ch = consumer.channel_state.lock();
            while consumer.unacked < consumer.prefetch as u32 && ch.has_room() && consumer.connection.has_room() {
                let Some(entry) = stream.entry_from(cursor.next) else {
                    // Caught up: it waits for the next publish.
                    cursor.next = cursor.next.max(stream.next_offset());
                    break;
                };
                if entry.offset >= durable_below {
                    // Not on disk yet: it goes out once it is.
                    awaits_durability = true;
                    break;
                }
                let (offset, size) = (entry.offset, entry.size);
                let message = match &entry.message {
                    Some(m) => m.clone(),
                    None if loader.is_some() => {
                        if !stream.is_loading(offset)
                            && let Some(loader) = loader
                        {
                            request(stream, offset, loader, queue_ref);
                        }
                        break;
                    }
                    None => match store.read(entry.store_id) {
                        Ok(record) => Arc::new(message_from_record(record)),
                        Err(e) => {
                            unreadable(stream, (*store_id, offset), store, &e, queue_ref);
                            continue;
                        }
                    },
                };
                cursor.next = offset + 1;
                if !cursor.wants(&message) {
                    continue;
                }
                let delivery_tag = ch.take_tag();
                let now = now_ms();
                consumer.unacked += 1;
                counters.deliver += 1;
                delivered += 1;
                ch.unacked.insert(
                    delivery_tag,
                    Unacked {
                        queue: name.clone(),
                        incarnation: *incarnation,
                        entry: QueuedMessage {
                            seq: offset,
                            store_id: 0,
                            message: None,
                            size,
                            redelivered: false,
                            expires_at: 0,
                            level: 0,
                            delivery_count: 0,
                        },
                        consumer_tag: Some(consumer.tag.clone()),
                        delivered_at: now,
                    },
                );
                let timeout = crate::broker::timers::consumer_timeout_of(
                    consumer.args.timeout,
                    args.consumer_timeout,
                    *consumer_timeout,
                );
                ch.arm_timeout((consumer.connection.id, consumer.channel), now, timeout, timers);
                consumer.connection.send(Outgoing::Deliver {
                    channel: consumer.channel,
                    consumer_tag: consumer.tag.clone(),
                    delivery_tag,
                    redelivered: false,
                    message,
                });
            }
            if let Some(loader) = loader {
                read_ahead(stream, cursor, loader, queue_ref);
            }
        }
        // Bodies read back that every reader is past go; the rest stay
        // within a budget that grows with the readers.
        let needed_from = consumers.iter().filter_map(|c| c.stream.as_ref()).map(|c| c.next).min();
        let readers = consumers.iter().filter(|c| c.stream.is_some()).count().max(1);
        stream.evict_warm(needed_from.unwrap_or(u64::MAX), readers * super::WARM_BYTES_PER_READER);
        GlobalStats::add(&stats.delivered_consume_manual_ack, delivered);
        if awaits_durability {
            durability_waiters.lock().insert((q_vhost.clone(), name.clone()));
            durability_wanted.notify_one();
        }
        q.delivered(delivered as usize);
    }

    /// Bodies the loader read back for a stream: they go to the stream's
    /// entries, for every reader, and the readers go on.
    pub(in crate::broker) fn stream_loaded(
        &self,
        request: &LoadRequest,
        read: Vec<(u64, u64, std::result::Result<MessageRecord, StoreError>)>,
        store: &LogStore,
    ) {
        let Some(cell) = self.queue(&request.vhost, &request.queue) else { return };
        let mut guard = cell.lock();
        if guard.incarnation != request.incarnation {
            return;
        }
        let q = &mut *guard;
        let Queue { kind, vhost, name, incarnation, store_id, .. } = q;
        let (store_id, queue_ref) = (*store_id, (&*vhost, &*name, *incarnation));
        let QueueKind::Stream(stream) = kind else { return };
        if let Some((first, _)) = request.items.first() {
            stream.end_load(*first);
        }
        for (offset, _, result) in read {
            match result {
                Ok(record) => stream.attach(offset, Arc::new(message_from_record(record))),
                Err(e) => unreadable(stream, (store_id, offset), store, &e, queue_ref),
            }
        }
        self.deliver_stream(q, store);
    }
}

/// Starts the thread that hands stream readers the messages they wait for
/// as soon as the log has made them durable. It sleeps until a stream has
/// readers waiting (`wanted`), then follows the durable position until none
/// waits: a broker without waiting stream readers never wakes it, however
/// many group commits it makes.
pub fn spawn_durability_waker(
    state: Weak<StateLock>,
    wanted: Arc<tokio::sync::Notify>,
    store: Arc<LogStore>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let mut durability = store.durability();
    std::thread::Builder::new().name("warren-streams".into()).spawn(move || {
        runtime.block_on(async move {
            loop {
                // A waiter registered since the last look left a permit.
                wanted.notified().await;
                loop {
                    // Changes while asleep count: the first wait may end at once.
                    if durability.changed().await.is_err() {
                        return;
                    }
                    let Some(state) = state.upgrade() else { return };
                    let st = state.read();
                    let waiters = std::mem::take(&mut *st.durability_waiters.lock());
                    for (vhost, queue) in waiters {
                        if let Some(q) = st.queue(&vhost, &queue) {
                            st.deliver_stream(&mut q.lock(), &store);
                        }
                    }
                    if st.durability_waiters.lock().is_empty() {
                        break;
                    }
                }
            }
        })
    })?;
    Ok(())
}

/// Which queue a read is for: vhost, name, incarnation.
type QueueRef<'a> = (&'a Arc<str>, &'a Arc<str>, u64);

/// Asks the loader for the bodies from `offset` on (a batch not being read).
fn request(stream: &mut super::Stream, offset: u64, loader: &loader::Loader, (vhost, queue, incarnation): QueueRef) {
    let items = stream.start_load(offset, loader::LOAD_BATCH, loader::LOAD_BATCH_BYTES);
    let Some(&(first, _)) = items.first() else { return };
    let sent =
        loader.request(LoadRequest { vhost: vhost.clone(), queue: queue.clone(), incarnation, items, stream: true });
    if !sent {
        stream.end_load(first);
    }
}

/// Reads ahead of a reader: the first body within the next
/// [`loader::WARM_ENOUGH`] messages that is neither in memory nor being read
/// is asked for, so the reader does not wait for it.
fn read_ahead(stream: &mut super::Stream, cursor: &mut StreamCursor, loader: &loader::Loader, queue: QueueRef) {
    let horizon = cursor.next.saturating_add(loader::WARM_ENOUGH as u64);
    let from = cursor.read_ahead_from.max(cursor.next);
    if from >= horizon {
        return;
    }
    let mut wanted = None;
    let mut upto = horizon.min(stream.next_offset());
    for e in stream.entries_from(from) {
        if e.offset >= horizon {
            break;
        }
        if e.message.is_none() {
            if !stream.is_loading(e.offset) {
                wanted = Some(e.offset);
            }
            upto = e.offset;
            break;
        }
    }
    cursor.read_ahead_from = upto;
    if let Some(offset) = wanted {
        request(stream, offset, loader, queue);
    }
}

/// A stream message the log cannot give back: reported and taken out of
/// the stream (and the log), so that no reader waits for it.
fn unreadable(
    stream: &mut super::Stream,
    (qid, offset): (Option<u32>, u64),
    store: &LogStore,
    e: &StoreError,
    (vhost, queue, _): QueueRef,
) {
    if let Some(id) = stream.forget(offset) {
        tracing::error!(
            "stream '{queue}' in vhost '{vhost}': offset {offset} cannot be read back from the log, dropping it: {e}"
        );
        if let Some(qid) = qid {
            // A failure here is the log's own, already reported.
            let _ = store.ack(qid, &[id]);
        }
    }
}
