//! Dead-lettering: messages that leave a queue rejected, expired, dropped
//! for length or past their delivery limit are republished to the queue's
//! `x-dead-letter-exchange`, with the `x-death` history RabbitMQ writes.
//!
//! A persistent message moving between durable queues is appended again
//! for its new queues together with the ack of its old place, in one
//! commit group ([`LogStore::publish_moving`]): after a crash it is in
//! exactly one of them.

use std::collections::VecDeque;

use super::publish::Arrival;
use super::routing::Targets;
use super::*;
use crate::protocol::{BasicProperties, FieldValue};

/// Why a message was dead-lettered; the text is the `reason` RabbitMQ writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Rejected,
    Expired,
    Maxlen,
    DeliveryLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Messages that left a queue and may have somewhere to go.
#[derive(Debug)]
pub(super) struct Departed {
    pub vhost: Arc<str>,
    pub queue: Arc<str>,
    pub incarnation: u64,
    pub entries: Vec<QueuedMessage>,
    pub reason: Reason,
}

impl Departed {
    /// `entries` left queue `q` for `reason`.
    pub(super) fn from(q: &Queue, entries: Vec<QueuedMessage>, reason: Reason) -> Departed {
        Departed { vhost: q.vhost.clone(), queue: q.name.clone(), incarnation: q.incarnation, entries, reason }
    }
}

impl State {
    /// Settles messages that left queue `queue` for good: dead-letters them
    /// when the queue has a dead-letter exchange, else only tells the log.
    /// Queues they reach may drop or refuse messages in turn; those follow
    /// until nothing is left to move.
    pub(super) fn depart(&self, first: Departed, store: &LogStore) {
        // Dead-letter exchanges are in the queue's vhost: everything that
        // follows stays in it.
        let vhost = first.vhost.clone();
        let mut touched: Vec<Arc<str>> = Vec::new();
        self.dead_letter(first, store, &mut touched);
        self.drain_all(&vhost, touched, store);
    }

    /// [`State::depart`] without the drain of the queues the messages
    /// reached: those are added to `touched`, for the caller to drain once
    /// it holds no expiry-order lock (a drain expires, which takes one).
    pub(super) fn dead_letter(&self, first: Departed, store: &LogStore, touched: &mut Vec<Arc<str>>) {
        let mut work = VecDeque::from([first]);
        while let Some(departed) = work.pop_front() {
            self.dead_letter_batch(departed, store, &mut work, touched);
        }
    }

    /// Hands the ready messages of each named queue of `vhost` to their consumers.
    pub(super) fn drain_all(&self, vhost: &str, queues: Vec<Arc<str>>, store: &LogStore) {
        for name in queues {
            self.drain(vhost, &name, store);
        }
    }

    fn dead_letter_batch(
        &self,
        departed: Departed,
        store: &LogStore,
        work: &mut VecDeque<Departed>,
        touched: &mut Vec<Arc<str>>,
    ) {
        let Departed { vhost, queue, incarnation, entries, reason } = departed;
        let Some(v) = self.vhosts.get(&vhost) else { return };
        let Some(cell) = v.queues.get(&queue) else { return };
        // What dead-lettering needs of the queue, read before its lock is
        // let go: the targets' locks are taken without it.
        let (qid, durable_qid, dlx, dlrk) = {
            let q = cell.lock();
            if q.incarnation != incarnation {
                return;
            }
            (q.settle_id(), q.store_id, q.args.dead_letter_exchange.clone(), q.args.dead_letter_routing_key.clone())
        };
        let Some(dlx) = dlx.filter(|x| x.is_empty() || v.exchanges.contains_key(&**x)) else {
            // No dead-letter exchange, or one that does not exist: dropped.
            forget(store, qid, &entries);
            return;
        };
        for entry in entries {
            let message = match &entry.message {
                Some(m) => m.clone(),
                None => match store.read(entry.store_id) {
                    Ok(record) => Arc::new(message_from_record(record)),
                    Err(e) => {
                        tracing::error!("queue '{queue}': cannot read a message back to dead-letter it: {e}");
                        forget(store, qid, std::slice::from_ref(&entry));
                        continue;
                    }
                },
            };
            let (dead, deaths, keys) = dead_lettered(&message, &queue, reason, &dlx, dlrk.as_deref());
            let mut targets = Targets::new();
            let Some(v) = self.vhosts.get(&vhost) else { return };
            for key in keys {
                let found = if dlx.is_empty() {
                    Ok(v.queue_name(&key).into_iter().collect())
                } else {
                    v.route(&dlx, &key, dead_headers(&dead).as_ref())
                };
                for t in found.unwrap_or_default() {
                    if !targets.contains(&t) {
                        targets.push(t);
                    }
                }
            }
            if reason != Reason::Rejected {
                let before = targets.len();
                targets.retain(|t| !is_cycle(t, &deaths));
                if targets.len() != before {
                    tracing::warn!(
                        "queue '{queue}': message dropped, its dead-letter route leads back to a queue it died in without being rejected"
                    );
                }
            }
            // A persistent message moves in one commit group; a paged-out
            // transient body is simply released.
            let moved_from = durable_qid
                .filter(|_| entry.store_id != 0 && !store.is_spilled(entry.store_id))
                .map(|qid| (qid, entry.store_id));
            let dead = Arc::new(dead);
            let delivery = self.deliver_to(&vhost, &targets, dead.clone(), store, moved_from, Arrival::DeadLettered);
            if let Ok(d) = delivery {
                // Replicated queues take it through their groups.
                if let Some(router) = self.replica_router.get() {
                    for &group in &d.replicated {
                        router.enqueue_detached(group, vec![dead.clone()]);
                    }
                }
                if !d.moved {
                    forget(store, qid, std::slice::from_ref(&entry));
                }
                for name in d.accepted {
                    if !touched.contains(&name) {
                        touched.push(name);
                    }
                }
                work.extend(d.departed);
            } else {
                forget(store, qid, std::slice::from_ref(&entry));
            }
        }
    }
}

/// Tells the log that these messages left queue `qid` for good.
pub(super) fn forget(store: &LogStore, qid: u32, entries: &[QueuedMessage]) {
    let ids: Vec<u64> = entries.iter().filter(|e| e.store_id != 0).map(|e| e.store_id).collect();
    if !ids.is_empty() {
        // A failure here is the log's I/O failure, already reported.
        let _ = store.ack(qid, &ids);
    }
}

fn dead_headers(message: &Message) -> Option<FieldTable> {
    BasicProperties::decode(message.properties.clone()).ok().and_then(|p| p.headers)
}

/// One entry of the `x-death` history.
#[derive(Debug, Clone)]
struct Death {
    queue: String,
    reason: String,
    table: FieldTable,
}

/// The message as it is republished to the dead-letter exchange, its
/// death history (newest first) for cycle detection, and the routing keys
/// to route it with: `x-dead-letter-routing-key`, else the keys it was
/// published with (its routing key and `CC`; `BCC` never stays on a message).
fn dead_lettered(
    message: &Message,
    queue: &str,
    reason: Reason,
    dlx: &str,
    dlrk: Option<&str>,
) -> (Message, Vec<Death>, Vec<String>) {
    let mut props = BasicProperties::decode(message.properties.clone()).unwrap_or_default();
    let mut headers = props.headers.take().unwrap_or_default();
    let mut deaths: Vec<Death> = match headers.get("x-death") {
        Some(FieldValue::Array(items)) => items
            .iter()
            .filter_map(|item| match item {
                FieldValue::Table(t) => Some(Death {
                    queue: t.get("queue").and_then(FieldValue::as_str).unwrap_or_default().to_string(),
                    reason: t.get("reason").and_then(FieldValue::as_str).unwrap_or_default().to_string(),
                    table: t.clone(),
                }),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let first_death = deaths.is_empty();
    let mut published_keys = vec![message.routing_key.clone()];
    published_keys.extend(super::routing::cc_keys(&headers, "CC"));
    let keys: Vec<FieldValue> = published_keys.iter().map(|k| FieldValue::string(k)).collect();
    let position = deaths.iter().position(|d| d.queue == queue && d.reason == reason.as_str());
    let death = match position {
        Some(i) => {
            let mut d = deaths.remove(i);
            let count = d.table.get("count").and_then(FieldValue::as_i64).unwrap_or(0);
            d.table.insert("count", FieldValue::I64(count.saturating_add(1)));
            d
        }
        None => {
            let mut t = FieldTable::new();
            if let Some(expiration) = &props.expiration {
                t.insert("original-expiration", FieldValue::string(expiration));
            }
            t.insert("count", FieldValue::I64(1));
            t.insert("reason", FieldValue::string(reason.as_str()));
            t.insert("queue", FieldValue::string(queue));
            t.insert("time", FieldValue::Timestamp(crate::store::wall_ms() / 1000));
            t.insert("exchange", FieldValue::string(&message.exchange));
            t.insert("routing-keys", FieldValue::Array(keys));
            Death { queue: queue.to_string(), reason: reason.as_str().to_string(), table: t }
        }
    };
    deaths.insert(0, death);
    headers.insert("x-death", FieldValue::Array(deaths.iter().map(|d| FieldValue::Table(d.table.clone())).collect()));
    if first_death {
        headers.insert("x-first-death-reason", FieldValue::string(reason.as_str()));
        headers.insert("x-first-death-queue", FieldValue::string(queue));
        headers.insert("x-first-death-exchange", FieldValue::string(&message.exchange));
    }
    headers.insert("x-last-death-reason", FieldValue::string(reason.as_str()));
    headers.insert("x-last-death-queue", FieldValue::string(queue));
    headers.insert("x-last-death-exchange", FieldValue::string(&message.exchange));
    props.headers = Some(headers);
    props.expiration = None;
    let dead = Message {
        exchange: dlx.to_string(),
        routing_key: dlrk.map_or_else(|| message.routing_key.clone(), str::to_string),
        properties: props.to_bytes(),
        body: message.body.clone(),
        persistent: message.persistent,
        expiration_ms: None,
        priority: message.priority,
    };
    let route_keys = match dlrk {
        Some(k) => vec![k.to_string()],
        None => published_keys,
    };
    (dead, deaths, route_keys)
}

/// Whether sending a message to `target` closes a dead-letter cycle with
/// no `rejected` death in it (RabbitMQ then drops it for that queue).
fn is_cycle(target: &str, deaths: &[Death]) -> bool {
    match deaths.iter().position(|d| d.queue == target) {
        None => false,
        Some(i) => deaths[..=i].iter().all(|d| d.reason != "rejected"),
    }
}
