//! Exchanges, bindings and routing: exchange declare and delete, bind and
//! unbind (durable ones logged), and the walk from an exchange to the
//! queues a message reaches (exchange-to-exchange bindings included).

use super::*;

impl Broker {
    pub fn exchange_declare(&self, vhost: &str, m: &ExchangeDeclare) -> Result<()> {
        let mut st = self.state.write();
        let Some(v) = st.vhosts.get_mut(vhost) else { return Err(no_vhost(vhost)) };
        if m.exchange.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        // As RabbitMQ: an unknown type is a connection error, checked first.
        if !m.passive && ExchangeKind::parse(&m.kind).is_none() {
            return Err(AmqpError::command_invalid(format!("invalid exchange type '{}'", m.kind)));
        }
        if let Some(ex) = v.exchanges.get(&m.exchange) {
            if m.passive {
                return Ok(());
            }
            let mismatch = |what: &str, received: &str, current: &str| {
                AmqpError::precondition(format!(
                    "inequivalent arg '{what}' for exchange '{}' in vhost '{vhost}': received '{received}' but current is '{current}'",
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
            return Err(no_exchange(vhost, &m.exchange));
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
            self.store.define(exchange_record(vhost, &ex)).map_err(store_failed)?;
        }
        v.exchanges.insert(m.exchange.clone(), ex);
        Ok(())
    }

    /// Whether exchange `name` is the source or destination of a binding
    /// (what exchange.delete's `if-unused` refuses).
    pub fn exchange_in_use(&self, vhost: &str, name: &str) -> bool {
        let st = self.state.read();
        let Some(v) = st.vhosts.get(vhost) else { return false };
        let Some(ex) = v.exchanges.get(name) else { return false };
        !ex.bindings.is_empty()
            || v.exchanges
                .values()
                .any(|e| e.bindings.iter().any(|b| b.destination == Destination::Exchange(name.to_string())))
    }

    pub fn exchange_delete(&self, vhost: &str, name: &str, if_unused: bool) -> Result<()> {
        let mut st = self.state.write();
        let Some(v) = st.vhosts.get(vhost) else { return Err(no_vhost(vhost)) };
        if name.is_empty() {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{vhost}' not allowed"
            )));
        }
        let Some(ex) = v.exchanges.get(name) else {
            // RabbitMQ answers delete-ok for an exchange that does not exist.
            return Ok(());
        };
        let used_as_destination = v
            .exchanges
            .values()
            .any(|e| e.bindings.iter().any(|b| b.destination == Destination::Exchange(name.to_string())));
        if if_unused && (!ex.bindings.is_empty() || used_as_destination) {
            return Err(AmqpError::precondition(format!("exchange '{name}' in vhost '{vhost}' in use")));
        }
        st.delete_exchange(vhost, name, &self.store);
        Ok(())
    }

    /// exchange.bind / queue.bind.
    pub fn bind(
        &self,
        vhost: &str,
        conn: u64,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<()> {
        let mut st = self.state.write();
        let durable = st.check_binding_ends(vhost, conn, source, &destination)?;
        let Some(ex) = st.vhosts.get_mut(vhost).and_then(|v| v.exchanges.get_mut(source)) else {
            return Err(no_exchange(vhost, source));
        };
        if ex.kind == ExchangeKind::Headers {
            check_x_match(arguments)?;
        }
        let binding = Binding { destination, routing_key: routing_key.to_string(), arguments: arguments.clone() };
        if !ex.bindings.contains(&binding) {
            if durable {
                let record = Record::BindingAdd(binding_record(vhost, source, &binding));
                self.store.define(record).map_err(store_failed)?;
            }
            ex.bindings.push(binding);
        }
        Ok(())
    }

    /// exchange.unbind / queue.unbind. Removing a binding that does not exist succeeds.
    pub fn unbind(
        &self,
        vhost: &str,
        conn: u64,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<()> {
        let mut st = self.state.write();
        // As RabbitMQ: unbinding from or to something already gone (an
        // auto-delete exchange goes with its last binding) succeeds.
        let dest_exists = match &destination {
            Destination::Queue(name) => st.queue(vhost, name).is_some(),
            Destination::Exchange(name) => st.exchange(vhost, name).is_some(),
        };
        if !source.is_empty() && (st.exchange(vhost, source).is_none() || !dest_exists) {
            return Ok(());
        }
        let durable = st.check_binding_ends(vhost, conn, source, &destination)?;
        let Some(ex) = st.vhosts.get_mut(vhost).and_then(|v| v.exchanges.get_mut(source)) else {
            return Err(no_exchange(vhost, source));
        };
        let binding = Binding { destination, routing_key: routing_key.to_string(), arguments: arguments.clone() };
        let before = ex.bindings.len();
        ex.bindings.retain(|b| *b != binding);
        if ex.bindings.len() != before {
            if durable {
                let record = Record::BindingRemove(binding_record(vhost, source, &binding));
                self.store.define(record).map_err(store_failed)?;
            }
            if ex.auto_delete && ex.bindings.is_empty() {
                let name = ex.name.clone();
                st.delete_exchange(vhost, &name, &self.store);
            }
        }
        Ok(())
    }

    /// Whether the named exchange is a topic exchange (topic permissions apply).
    pub fn is_topic_exchange(&self, vhost: &str, name: &str) -> bool {
        self.state.read().exchange(vhost, name).is_some_and(|ex| ex.kind == ExchangeKind::Topic)
    }

    /// Fails unless the exchange exists and clients may publish to it.
    pub fn check_publishable(&self, vhost: &str, exchange: &str) -> Result<()> {
        let st = self.state.read();
        match st.exchange(vhost, exchange) {
            None => Err(no_exchange(vhost, exchange)),
            Some(ex) if ex.internal => Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{vhost}'"
            ))),
            Some(_) => Ok(()),
        }
    }
}

impl State {
    /// The queues a publish reaches: routed by its routing key and every
    /// key of its `CC` and `BCC` headers (sender-selected distribution);
    /// when the exchange routes it nowhere, through the exchange's
    /// `alternate-exchange` (and that one's, in turn).
    pub(super) fn route_publish(
        &self,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> Result<Targets> {
        let Some(v) = self.vhosts.get(vhost) else { return Err(no_vhost(vhost)) };
        let selected = headers.is_some_and(|h| h.get("CC").is_some() || h.get("BCC").is_some());
        if !selected {
            // The common case: one routing key, no alternate exchange needed.
            let queues = v.route(exchange, routing_key, headers)?;
            let has_alternate = || v.exchanges.get(exchange).is_some_and(|ex| v.alternate_exchange_of(ex).is_some());
            if !queues.is_empty() || exchange.is_empty() || !has_alternate() {
                return Ok(queues);
            }
        }
        let mut keys = vec![routing_key.to_string()];
        if let Some(h) = headers {
            keys.extend(cc_keys(h, "CC"));
            keys.extend(cc_keys(h, "BCC"));
        }
        let mut current = exchange.to_string();
        let mut tried: Vec<String> = Vec::new();
        loop {
            let mut queues = Targets::new();
            for key in &keys {
                for q in v.route(&current, key, headers)? {
                    if !queues.contains(&q) {
                        queues.push(q);
                    }
                }
            }
            if !queues.is_empty() {
                return Ok(queues);
            }
            tried.push(current.clone());
            let alternate = v.exchanges.get(&current).and_then(|ex| v.alternate_exchange_of(ex));
            match alternate {
                Some(ae) if !tried.contains(&ae) && v.exchanges.contains_key(&ae) => current = ae,
                _ => return Ok(queues),
            }
        }
    }

    /// Checks both ends of a binding; returns whether it is durable (both ends are).
    pub(super) fn check_binding_ends(
        &self,
        vhost: &str,
        conn: u64,
        source: &str,
        destination: &Destination,
    ) -> Result<bool> {
        if source.is_empty() || destination.name().is_empty() && matches!(destination, Destination::Exchange(_)) {
            return Err(AmqpError::access_refused("operation not permitted on the default exchange"));
        }
        let Some(v) = self.vhosts.get(vhost) else { return Err(no_vhost(vhost)) };
        let src = v.exchanges.get(source).ok_or_else(|| no_exchange(vhost, source))?;
        let dest_durable = match destination {
            Destination::Queue(name) => {
                let q = v.queues.get(name.as_str()).ok_or_else(|| no_queue(vhost, name))?.lock();
                check_owner(&q, conn)?;
                q.store_id.is_some()
            }
            Destination::Exchange(name) => v.exchanges.get(name).ok_or_else(|| no_exchange(vhost, name))?.durable,
        };
        Ok(src.durable && dest_durable)
    }

    pub(super) fn delete_exchange(&mut self, vhost: &str, name: &str, store: &LogStore) {
        let Some(v) = self.vhosts.get_mut(vhost) else { return };
        let Some(ex) = v.exchanges.remove(name) else { return };
        if ex.durable
            && let Err(e) = store.define(Record::ExchangeDelete { vhost: vhost.to_string(), name: name.to_string() })
        {
            tracing::error!("exchange '{name}' in vhost '{vhost}' deleted in memory only: {e}");
        }
        let dest = Destination::Exchange(name.to_string());
        let mut emptied = Vec::new();
        for other in v.exchanges.values_mut() {
            let before = other.bindings.len();
            other.bindings.retain(|b| b.destination != dest);
            if other.auto_delete && before > 0 && other.bindings.is_empty() {
                emptied.push(other.name.clone());
            }
        }
        for e in emptied {
            self.delete_exchange(vhost, &e, store);
        }
    }
}

impl VHost {
    /// The queues a message published to `exchange` reaches, following
    /// exchange-to-exchange bindings, each queue once.
    pub(super) fn route(&self, exchange: &str, routing_key: &str, headers: Option<&FieldTable>) -> Result<Targets> {
        let mut queues = Targets::new();
        if exchange.is_empty() {
            queues.extend(self.queue_name(routing_key));
            return Ok(queues);
        }
        let Some(start) = self.exchanges.get(exchange) else { return Err(no_exchange(&self.info.name, exchange)) };
        let mut visited: Vec<&str> = vec![exchange];
        let mut pending: Vec<&Exchange> = vec![start];
        let mut hits: Vec<&Destination> = Vec::new();
        while let Some(ex) = pending.pop() {
            hits.clear();
            ex.route(routing_key, headers, &mut hits);
            for dest in &hits {
                match dest {
                    Destination::Queue(q) => {
                        if let Some(name) = self.queue_name(q)
                            && !queues.contains(&name)
                        {
                            queues.push(name);
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

    /// The map's own handle on a queue's name (no allocation), if it exists.
    pub(super) fn queue_name(&self, name: &str) -> Option<Arc<str>> {
        self.queues.get_key_value(name).map(|(k, _)| k.clone())
    }
}

/// The queues a message goes to: mostly one, kept inline (a publish
/// allocates nothing for its route), each the queue map's own `Arc` of
/// its name.
pub(super) type Targets = smallvec::SmallVec<[Arc<str>; 2]>;

/// The routing keys of a `CC` or `BCC` header: an array of strings.
pub(super) fn cc_keys(headers: &FieldTable, name: &str) -> Vec<String> {
    match headers.get(name) {
        Some(crate::protocol::FieldValue::Array(items)) => {
            items.iter().filter_map(|v| v.as_str()).map(str::to_string).collect()
        }
        _ => Vec::new(),
    }
}

/// A headers binding's `x-match` must be one RabbitMQ knows.
fn check_x_match(arguments: &FieldTable) -> Result<()> {
    match arguments.get("x-match") {
        None => Ok(()),
        Some(v) => match v.as_str() {
            Some("all" | "any" | "all-with-x" | "any-with-x") => Ok(()),
            Some(other) if matches!(v, crate::protocol::FieldValue::LongStr(_)) => Err(AmqpError::precondition(
                format!("Invalid x-match field value <<\"{other}\">>; expected all, any, all-with-x, or any-with-x"),
            )),
            _ => Err(AmqpError::precondition(format!(
                "Invalid x-match field type {} (value {}); expected longstr",
                super::arguments::type_name(v),
                v.as_i64().map_or_else(|| format!("{v:?}"), |n| n.to_string())
            ))),
        },
    }
}
