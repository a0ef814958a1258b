//! What warrenctl lists: queues, exchanges, bindings, connections and
//! consumers, and its purge and delete commands.

use super::*;

impl Broker {
    /// Queues of one vhost, or of every vhost with `None`, by vhost and name.
    pub fn list_queues(&self, vhost: Option<&str>) -> Vec<QueueRow> {
        let st = self.state.read();
        let in_scope = || st.vhosts.values().filter(|v| in_scope(vhost, v)).flat_map(|v| v.queues.values());
        for cell in in_scope() {
            st.expire_messages(cell, &self.store);
        }
        let mut rows: Vec<QueueRow> = in_scope().map(|q| queue_row(&q.lock())).collect();
        rows.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        rows
    }

    /// One queue's row (no expiry pass: a poll of one queue stays cheap).
    pub fn queue_row(&self, vhost: &str, name: &str) -> Option<QueueRow> {
        let st = self.state.read();
        st.queue(vhost, name).map(|q| queue_row(&q.lock()))
    }

    /// Exchanges of one vhost (or all), by vhost and name.
    pub fn list_exchanges(&self, vhost: Option<&str>) -> Vec<ExchangeRow> {
        let st = self.state.read();
        let mut rows: Vec<ExchangeRow> = st
            .vhosts
            .values()
            .filter(|v| in_scope(vhost, v))
            .flat_map(|v| {
                v.exchanges.values().map(|e| ExchangeRow {
                    vhost: v.info.name.clone(),
                    name: e.name.clone(),
                    kind: e.kind.as_str(),
                    durable: e.durable,
                    auto_delete: e.auto_delete,
                    internal: e.internal,
                    arguments: format_table(&e.arguments),
                    argument_table: e.arguments.clone(),
                })
            })
            .collect();
        rows.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        rows
    }

    /// Bindings of one vhost (or all), the default exchange's implicit ones
    /// included.
    pub fn list_bindings(&self, vhost: Option<&str>) -> Vec<BindingRow> {
        let st = self.state.read();
        let mut rows = Vec::new();
        for v in st.vhosts.values().filter(|v| in_scope(vhost, v)) {
            let row = |source: &str, kind: &'static str, destination: &str, key: &str, table: &FieldTable| BindingRow {
                vhost: v.info.name.clone(),
                source: source.to_string(),
                destination_kind: kind,
                destination: destination.to_string(),
                routing_key: key.to_string(),
                arguments: format_table(table),
                argument_table: table.clone(),
            };
            let none = FieldTable::new();
            rows.extend(v.queues.keys().map(|q| row("", "queue", q, q, &none)));
            for ex in v.exchanges.values() {
                for b in &ex.bindings {
                    rows.push(row(&ex.name, b.destination.kind(), b.destination.name(), &b.routing_key, &b.arguments));
                }
            }
        }
        rows.sort_by(|a, b| {
            (&a.vhost, &a.source, a.destination_kind, &a.destination, &a.routing_key).cmp(&(
                &b.vhost,
                &b.source,
                b.destination_kind,
                &b.destination,
                &b.routing_key,
            ))
        });
        rows
    }

    /// The durable topology of every vhost, as a definitions export holds
    /// it: durable exchanges (not the predeclared ones), durable queues
    /// that outlive a restart, and the bindings between them.
    pub fn durable_topology(&self) -> Topology {
        let st = self.state.read();
        let predeclared = |name: &str| name.is_empty() || name.starts_with("amq.");
        let mut topology = Topology::default();
        for v in st.vhosts.values() {
            let vhost = &v.info.name;
            topology.exchanges.extend(
                v.exchanges
                    .values()
                    .filter(|e| e.durable && !predeclared(&e.name))
                    .map(|e| (vhost.clone(), Exchange { bindings: Vec::new(), ..e.clone() })),
            );
            topology.queues.extend(
                v.queues
                    .values()
                    .map(|q| q.lock())
                    .filter(|q| q.store_id.is_some())
                    .map(|q| (vhost.clone(), q.name.to_string(), q.auto_delete, q.arguments.clone())),
            );
            for ex in v.exchanges.values().filter(|e| e.durable) {
                for b in &ex.bindings {
                    let durable_end = match &b.destination {
                        Destination::Queue(q) => v.queues.get(q.as_str()).is_some_and(|q| q.lock().store_id.is_some()),
                        Destination::Exchange(e) => v.exchanges.get(e).is_some_and(|e| e.durable),
                    };
                    if durable_end {
                        topology.bindings.push((vhost.clone(), ex.name.clone(), b.clone()));
                    }
                }
            }
        }
        topology.exchanges.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
        topology.queues.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        topology
    }

    /// (id, info, channel count) per connection.
    pub fn list_connections(&self) -> Vec<(u64, ConnectionInfo, usize)> {
        let st = self.state.read();
        let mut rows: Vec<_> =
            st.connections.values().map(|c| (c.handle.id, c.info.clone(), c.channels.len())).collect();
        rows.sort_by_key(|r| r.0);
        rows
    }

    /// close_connection: asks the connection named as `list_connections`
    /// names it (or by its peer address) to close; false if none has it.
    pub fn close_connection_named(&self, name: &str, explanation: &str) -> bool {
        let st = self.state.read();
        let Some(c) =
            st.connections.values().find(|c| connection_name(c.handle.id, &c.info.peer) == name || c.info.peer == name)
        else {
            return false;
        };
        c.handle.event(BrokerEvent::CloseConnection { explanation: explanation.to_string() });
        true
    }

    /// Asks every connection to close (320 CONNECTION_FORCED); returns how many.
    pub fn close_all_connections(&self, explanation: &str) -> usize {
        let st = self.state.read();
        for c in st.connections.values() {
            c.handle.event(BrokerEvent::CloseConnection { explanation: explanation.to_string() });
        }
        st.connections.len()
    }

    /// Closes every connection of a user (it was deleted); returns how many.
    pub fn close_connections_of(&self, user: &str, explanation: &str) -> usize {
        let st = self.state.read();
        let mine: Vec<&ConnectionEntry> = st.connections.values().filter(|c| c.info.user == user).collect();
        for c in &mine {
            c.handle.event(BrokerEvent::CloseConnection { explanation: explanation.to_string() });
        }
        mine.len()
    }

    /// Whether a queue of this name exists in the vhost.
    pub fn queue_exists(&self, vhost: &str, name: &str) -> bool {
        self.state.read().queue(vhost, name).is_some()
    }

    /// Whether an exchange of this name exists in the vhost.
    pub fn exchange_exists(&self, vhost: &str, name: &str) -> bool {
        self.state.read().exchange(vhost, name).is_some()
    }

    /// Counts for `status`: (connections, queues, ready messages, unacked).
    pub fn totals(&self) -> (usize, usize, usize, usize) {
        let st = self.state.read();
        let queues = || st.vhosts.values().flat_map(|v| v.queues.values());
        let (mut ready, mut unacked) = (0, 0);
        for q in queues() {
            let q = q.lock();
            ready += q.ready_count();
            unacked += q.unacked();
        }
        (st.connections.len(), queues().count(), ready, unacked)
    }

    /// Every consumer of one vhost (or all), by queue and tag.
    pub fn list_consumers(&self, vhost: Option<&str>) -> Vec<ConsumerRow> {
        let st = self.state.read();
        let mut rows = Vec::new();
        for q in st.vhosts.values().filter(|v| in_scope(vhost, v)).flat_map(|v| v.queues.values()) {
            let q = q.lock();
            for c in &q.consumers {
                let peer = st.connections.get(&c.connection.id).map(|e| e.info.peer.clone()).unwrap_or_default();
                rows.push(ConsumerRow {
                    vhost: q.vhost.to_string(),
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
                    offset: c.stream.as_ref().map(|s| s.next),
                });
            }
        }
        rows.sort_by(|a, b| (&a.vhost, &a.queue, &a.tag).cmp(&(&b.vhost, &b.queue, &b.tag)));
        rows
    }

    /// Admin purge: ready messages of any queue, exclusive or not (a
    /// stream cannot be purged, as in RabbitMQ).
    pub fn admin_purge(&self, vhost: &str, name: &str) -> Result<usize> {
        let st = self.state.read();
        let mut q = st.queue(vhost, name).ok_or_else(|| no_queue(vhost, name))?.lock();
        if q.is_stream() {
            return Err(AmqpError::not_implemented(format!(
                "queue.purge not supported by stream queues queue '{name}' in vhost '{vhost}'"
            )));
        }
        purge_queue(&mut q, &self.store)
    }

    /// Admin delete: like queue.delete without the ownership check.
    pub fn admin_delete(&self, vhost: &str, name: &str) -> Option<usize> {
        let mut st = self.state.write();
        let count = st.queue(vhost, name)?.lock().ready_count();
        st.delete_queue(vhost, name, &self.store);
        Some(count)
    }
}

fn queue_row(q: &Queue) -> QueueRow {
    QueueRow {
        name: q.name.to_string(),
        vhost: q.vhost.to_string(),
        durable: q.durable,
        auto_delete: q.auto_delete,
        exclusive: q.exclusive_owner.is_some(),
        messages_ready: q.ready_count(),
        messages_unacknowledged: q.unacked(),
        messages: q.message_count(),
        message_bytes_ready: q.ready_bytes(),
        consumers: q.consumers.len(),
        arguments: format_table(&q.arguments),
        argument_table: q.arguments.clone(),
        owner: q.exclusive_owner,
        policy: q.policy.clone().unwrap_or_default(),
        operator_policy: q.operator_policy.clone().unwrap_or_default(),
        queue_type: q.args.queue_type.as_str().to_string(),
        first_offset: q.stream().map(|s| s.first_offset()),
        last_offset: q.stream().and_then(|s| s.last_offset()),
        disk_bytes: q.stream().map(|s| s.record_bytes()),
        replica: q.replica.clone(),
    }
}

/// Whether a listing for `vhost` (None: every vhost) includes `v`.
fn in_scope(vhost: Option<&str>, v: &VHost) -> bool {
    vhost.is_none_or(|name| v.info.name == name)
}

/// Rows for the admin interface, one per queue.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueRow {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub exclusive: bool,
    pub messages_ready: usize,
    pub messages_unacknowledged: usize,
    pub messages: usize,
    pub message_bytes_ready: usize,
    pub consumers: usize,
    pub arguments: String,
    #[serde(skip)]
    pub argument_table: FieldTable,
    /// The connection owning an exclusive queue.
    #[serde(skip)]
    pub owner: Option<u64>,
    pub policy: String,
    pub operator_policy: String,
    /// `classic`, `quorum` or `stream`.
    #[serde(rename = "type")]
    pub queue_type: String,
    /// A stream's oldest retained offset.
    pub first_offset: Option<u64>,
    /// A stream's newest offset (RabbitMQ's committed offset).
    pub last_offset: Option<u64>,
    /// Bytes a stream's retained messages take in the log.
    pub disk_bytes: Option<u64>,
    /// A replicated quorum queue's group and members.
    #[serde(skip)]
    pub replica: Option<Arc<super::replicas::Replica>>,
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
    pub vhost: String,
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
    /// A stream consumer's position: the next offset it reads.
    pub offset: Option<u64>,
}

/// What [`Broker::durable_topology`] returns, each item with its vhost.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// (vhost, exchange without its bindings).
    pub exchanges: Vec<(String, Exchange)>,
    /// (vhost, name, auto-delete, arguments).
    pub queues: Vec<(String, String, bool, FieldTable)>,
    /// (vhost, source exchange, binding).
    pub bindings: Vec<(String, String, Binding)>,
}

/// What `list_exchanges` shows of one exchange.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExchangeRow {
    pub vhost: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: String,
    #[serde(skip)]
    pub argument_table: FieldTable,
}

/// What `list_bindings` shows of one binding.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BindingRow {
    pub vhost: String,
    pub source: String,
    pub destination_kind: &'static str,
    pub destination: String,
    pub routing_key: String,
    pub arguments: String,
    #[serde(skip)]
    pub argument_table: FieldTable,
}

/// A connection's name in listings: its peer and its number.
pub fn connection_name(id: u64, peer: &str) -> String {
    format!("{peer} (#{id})")
}
