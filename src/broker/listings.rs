//! What warrenctl lists: queues, exchanges, bindings, connections and
//! consumers, and its purge and delete commands.

use super::*;

impl Broker {
    pub fn list_queues(&self) -> Vec<QueueRow> {
        let mut st = self.state.lock();
        let queues: Vec<(Arc<str>, u64)> = st.queues.values().map(|q| (q.name.clone(), q.incarnation)).collect();
        for (name, incarnation) in queues {
            st.expire_messages(&name, incarnation, &self.store);
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
                policy: q.policy.clone().unwrap_or_default(),
                operator_policy: q.operator_policy.clone().unwrap_or_default(),
                queue_type: q.args.queue_type.as_str().to_string(),
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

    /// The durable topology, as a definitions export holds it: durable
    /// exchanges (not the predeclared ones), durable queues that outlive
    /// a restart, and the bindings between them.
    pub fn durable_topology(&self) -> Topology {
        let st = self.state.lock();
        let predeclared = |name: &str| name.is_empty() || name.starts_with("amq.");
        let exchanges: Vec<Exchange> = st
            .exchanges
            .values()
            .filter(|e| e.durable && !predeclared(&e.name))
            .map(|e| Exchange { bindings: Vec::new(), ..e.clone() })
            .collect();
        let queues = st
            .queues
            .values()
            .filter(|q| q.store_id.is_some())
            .map(|q| (q.name.to_string(), q.auto_delete, q.arguments.clone()))
            .collect();
        let mut bindings = Vec::new();
        for ex in st.exchanges.values().filter(|e| e.durable) {
            for b in &ex.bindings {
                let durable_end = match &b.destination {
                    Destination::Queue(q) => st.queues.get(q.as_str()).is_some_and(|q| q.store_id.is_some()),
                    Destination::Exchange(e) => st.exchanges.get(e).is_some_and(|e| e.durable),
                };
                if durable_end {
                    bindings.push((ex.name.clone(), b.clone()));
                }
            }
        }
        Topology { exchanges, queues, bindings }
    }

    /// (id, info, channel count) per connection.
    pub fn list_connections(&self) -> Vec<(u64, ConnectionInfo, usize)> {
        let st = self.state.lock();
        let mut rows: Vec<_> =
            st.connections.values().map(|c| (c.handle.id, c.info.clone(), c.channels.len())).collect();
        rows.sort_by_key(|r| r.0);
        rows
    }

    /// close_connection: asks the connection named as `list_connections`
    /// names it (or by its peer address) to close; false if none has it.
    pub fn close_connection_named(&self, name: &str, explanation: &str) -> bool {
        let st = self.state.lock();
        let Some(c) =
            st.connections.values().find(|c| connection_name(c.handle.id, &c.info.peer) == name || c.info.peer == name)
        else {
            return false;
        };
        c.handle.event(BrokerEvent::CloseConnection { explanation: explanation.to_string() });
        true
    }

    /// Closes every connection of a user (it was deleted); returns how many.
    pub fn close_connections_of(&self, user: &str, explanation: &str) -> usize {
        let st = self.state.lock();
        let mine: Vec<&ConnectionEntry> = st.connections.values().filter(|c| c.info.user == user).collect();
        for c in &mine {
            c.handle.event(BrokerEvent::CloseConnection { explanation: explanation.to_string() });
        }
        mine.len()
    }

    /// Whether a queue of this name exists.
    pub fn queue_exists(&self, name: &str) -> bool {
        self.state.lock().queues.contains_key(name)
    }

    /// Whether an exchange of this name exists.
    pub fn exchange_exists(&self, name: &str) -> bool {
        self.state.lock().exchanges.contains_key(name)
    }

    /// Counts for `status`: (connections, queues, ready messages, unacked).
    pub fn totals(&self) -> (usize, usize, usize, usize) {
        let st = self.state.lock();
        let ready = st.queues.values().map(|q| q.ready_count()).sum();
        let unacked = st.queues.values().map(|q| q.unacked).sum();
        (st.connections.len(), st.queues.len(), ready, unacked)
    }

    /// Every consumer, by queue and tag.
    pub fn list_consumers(&self) -> Vec<ConsumerRow> {
        let st = self.state.lock();
        let mut rows = Vec::new();
        for q in st.queues.values() {
            for c in &q.consumers {
                let peer = st.connections.get(&c.connection.id).map(|e| e.info.peer.clone()).unwrap_or_default();
                rows.push(ConsumerRow {
                    queue: q.name.to_string(),
                    tag: c.tag.to_string(),
                    peer,
                    channel: c.channel,
                    ack_required: !c.no_ack,
                    exclusive: c.exclusive,
                    prefetch: c.prefetch,
                    active: c.active,
                    single_active: q.args.single_active_consumer,
                    priority: c.args.priority,
                });
            }
        }
        rows.sort_by(|a, b| (&a.queue, &a.tag).cmp(&(&b.queue, &b.tag)));
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
    pub policy: String,
    pub operator_policy: String,
    /// `classic` or `quorum`.
    #[serde(rename = "type")]
    pub queue_type: String,
}

pub(super) fn format_table(t: &FieldTable) -> String {
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

/// What `list_consumers` shows of one consumer.
#[derive(Debug, Clone)]
pub struct ConsumerRow {
    pub queue: String,
    pub tag: String,
    pub peer: String,
    pub channel: u16,
    pub ack_required: bool,
    pub exclusive: bool,
    pub prefetch: u16,
    /// Receives messages (false: waiting behind a single active consumer).
    pub active: bool,
    pub single_active: bool,
    /// `x-priority`.
    pub priority: i32,
}

/// What [`Broker::durable_topology`] returns.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub exchanges: Vec<Exchange>,
    /// (name, auto-delete, arguments).
    pub queues: Vec<(String, bool, FieldTable)>,
    /// (source exchange, binding).
    pub bindings: Vec<(String, Binding)>,
}

/// A connection's name in listings: its peer and its number.
pub fn connection_name(id: u64, peer: &str) -> String {
    format!("{peer} (#{id})")
}
