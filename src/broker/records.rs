//! The mapping between the broker's model and the log's records: durable
//! definitions and messages as records, and the model rebuilt from replay.

use super::*;

impl Broker {
    /// Rebuilds the model from what the log replayed: vhosts and their
    /// limits, then policies (so that restored messages get their policy's
    /// TTL), then durable exchanges, queues, bindings and messages.
    pub fn restore(&self, recovered: &Recovered) -> std::result::Result<(), vhosts::VhostError> {
        let parameters = &recovered.definitions.parameters;
        self.restore_vhosts(parameters)?;
        self.restore_policies(parameters);
        self.restore_topology(recovered);
        self.restore_tracked_offsets(parameters);
        self.restore_replicas(parameters);
        // Listings show what came back at once, not at the sampler's next turn.
        self.sample_now();
        Ok(())
    }

    /// Durable exchanges, queues, bindings and messages, into the vhosts
    /// restored before. Messages keep their publish order; those that had
    /// been delivered come back flagged redelivered. What belongs to a
    /// vhost that no longer exists (a vhost deletion cut short by a crash)
    /// is removed from the log now.
    fn restore_topology(&self, recovered: &Recovered) {
        let mut st = self.state.write();
        let defs = &recovered.definitions;
        for record in defs.exchanges.values() {
            if let Record::ExchangeDeclare { vhost, name, kind, auto_delete, internal, arguments } = record
                && let Some(kind) = ExchangeKind::parse(kind)
            {
                let Some(v) = st.vhosts.get_mut(vhost.as_str()) else {
                    self.forget_orphan(Record::ExchangeDelete { vhost: vhost.clone(), name: name.clone() });
                    continue;
                };
                let ex = Exchange::new(name, kind, true, *auto_delete, *internal, decode_table(arguments));
                v.exchanges.insert(name.clone(), ex);
            }
        }
        let mut per_queue = recovered.queue_messages();
        for record in defs.queues.values() {
            if let Record::QueueDeclare { queue, vhost, name, auto_delete, arguments } = record {
                let Some(vhost) = st.vhosts.get_key_value(vhost.as_str()).map(|(k, _)| k.clone()) else {
                    let ids: Vec<u64> = per_queue.remove(queue).unwrap_or_default().iter().map(|m| m.id).collect();
                    if let Err(e) = self.store.queue_deleted(*queue, &ids) {
                        tracing::error!("queue '{name}' of deleted vhost '{vhost}' stays in the log: {e}");
                    }
                    continue;
                };
                let args = decode_table(arguments);
                let parsed = QueueArgs::from_stored(&args);
                let mut q = Queue::new(vhost.clone(), name, true, None, *auto_delete, args, parsed);
                q.store_id = Some(*queue);
                st.apply_policies_to(&mut q);
                q.attach_timer(st.timers.clone(), super::queue::now_ms());
                let now = crate::store::wall_ms();
                for m in per_queue.remove(queue).unwrap_or_default() {
                    if let Some(stream) = q.stream_mut() {
                        // A record without an offset cannot be a stream's.
                        if let Some(offset) = m.stream_offset {
                            stream.restore(stream::StreamEntry {
                                offset,
                                store_id: m.id,
                                size: m.body_len,
                                record_len: m.record_len,
                                published_ms: m.published_ms,
                                message: None,
                            });
                        }
                        continue;
                    }
                    let meta = queue::RestoredMeta {
                        size: m.body_len,
                        redelivered: m.delivered,
                        priority: m.priority,
                        expiration_ms: m.expiration_ms,
                        age: if m.published_ms == 0 { 0 } else { now.saturating_sub(m.published_ms) },
                    };
                    match m.stream_offset {
                        // A replicated quorum queue's message, at its position.
                        Some(position) => q.restore_at(position, m.id, meta),
                        None => q.restore(m.id, meta),
                    }
                }
                st.next_incarnation += 1;
                q.incarnation = st.next_incarnation;
                if let Some(v) = st.vhosts.get_mut(&vhost) {
                    v.queues.insert(q.name.clone(), Arc::new(QueueLock::new(q)));
                }
            }
        }
        for b in &defs.bindings {
            let destination = match b.destination_kind {
                DestinationKind::Queue => Destination::Queue(b.destination.clone()),
                DestinationKind::Exchange => Destination::Exchange(b.destination.clone()),
            };
            if let Some(ex) = st.vhosts.get_mut(b.vhost.as_str()).and_then(|v| v.exchanges.get_mut(&b.source)) {
                let binding =
                    Binding { destination, routing_key: b.routing_key.clone(), arguments: decode_table(&b.arguments) };
                if !ex.bindings.contains(&binding) {
                    ex.bindings.push(binding);
                }
            }
        }
    }

    /// Server-side tracked offsets of stream consumers; those of streams
    /// that no longer exist are forgotten.
    fn restore_tracked_offsets(&self, parameters: &BTreeMap<(ParameterKind, String), bytes::Bytes>) {
        let st = self.state.read();
        for ((kind, key), value) in parameters {
            if *kind != ParameterKind::StreamOffset {
                continue;
            }
            let Ok([vhost, queue, tag]) = serde_json::from_str::<[String; 3]>(key) else { continue };
            let (vhost, queue, tag) = (vhost.as_str(), queue.as_str(), tag.as_str());
            let offset = serde_json::from_slice::<serde_json::Value>(value)
                .ok()
                .and_then(|v| v.get("offset").and_then(serde_json::Value::as_u64));
            let mut q = st.queue(vhost, queue).map(|q| q.lock());
            match (q.as_mut().and_then(|q| q.stream_mut()), offset) {
                (Some(stream), Some(offset)) => {
                    stream.tracked.insert(Arc::from(tag), offset);
                }
                _ => self.forget_orphan(Record::ParameterDelete { kind: *kind, key: key.clone() }),
            }
        }
    }

    /// Logs the removal of a definition of a vhost that no longer exists.
    pub(super) fn forget_orphan(&self, record: Record) {
        if let Err(e) = self.store.define(record) {
            tracing::error!("a definition of a deleted vhost stays in the log: {e}");
        }
    }
}

/// A message read back from the log: a persistent one, or a body paged
/// out under memory pressure (whose properties say it is transient).
pub fn message_from_record(m: MessageRecord) -> Message {
    message_from_parts(m.exchange, m.routing_key, m.properties, m.body)
}

/// A message from its stored parts (a log record, a replicated enqueue):
/// what the broker reads from its properties is read from them again.
pub fn message_from_parts(
    exchange: String,
    routing_key: String,
    properties: bytes::Bytes,
    body: bytes::Bytes,
) -> Message {
    let (priority, expiration_ms) = crate::store::format::peek_properties(&properties);
    let persistent = crate::store::format::peek_persistent(&properties);
    Message { exchange, routing_key, properties, persistent, body, expiration_ms, priority }
}

pub(super) fn encode_table(t: &FieldTable) -> bytes::Bytes {
    let mut buf = bytes::BytesMut::new();
    t.write(&mut Writer::new(&mut buf));
    buf.freeze()
}

pub(super) fn decode_table(raw: &bytes::Bytes) -> FieldTable {
    let mut reader = crate::protocol::wire::Reader::new(raw.clone());
    FieldTable::read(&mut reader).unwrap_or_default()
}

pub(super) fn exchange_record(vhost: &str, ex: &Exchange) -> Record {
    Record::ExchangeDeclare {
        vhost: vhost.to_string(),
        name: ex.name.clone(),
        kind: ex.kind.as_str().to_string(),
        auto_delete: ex.auto_delete,
        internal: ex.internal,
        arguments: encode_table(&ex.arguments),
    }
}

pub(super) fn queue_record(q: &Queue, id: u32) -> Record {
    Record::QueueDeclare {
        queue: id,
        vhost: q.vhost.to_string(),
        name: q.name.to_string(),
        auto_delete: q.auto_delete,
        arguments: encode_table(&q.arguments),
    }
}

pub(super) fn binding_record(vhost: &str, source: &str, b: &Binding) -> BindingRecord {
    BindingRecord {
        vhost: vhost.to_string(),
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
