//! JSON shapes several endpoints share: queues, exchanges and bindings as
//! RabbitMQ's management API writes them, message statistics with rates,
//! and the binding "properties key" that names a binding in URLs.

use serde_json::{Map, Value, json};

use crate::broker::stats::Rated;
use crate::broker::{BindingRow, ExchangeRow, QueueRow, QueueSample};
use crate::definitions::table_to_json;
use crate::protocol::FieldTable;

/// `{"rate": r}`, the shape of every `*_details` object.
pub fn details(rate: f64) -> Value {
    json!({ "rate": (rate * 10.0).round() / 10.0 })
}

/// A counter and its `_details`, under `name`.
pub fn put_rated(stats: &mut Map<String, Value>, name: &str, rated: Rated) {
    stats.insert(name.to_string(), json!(rated.count));
    stats.insert(format!("{name}_details"), details(rated.rate));
}

/// A queue as GET /api/queues shows it: live counts from the broker,
/// rates from the sampler's last snapshot.
pub fn queue(row: &QueueRow, sample: Option<&QueueSample>, owner: Option<String>) -> Value {
    let mut stats = Map::new();
    let zero = Rated::default();
    let rate_of = |f: fn(&QueueSample) -> Rated| sample.map_or(zero, f);
    put_rated(&mut stats, "publish", rate_of(|s| s.publish));
    put_rated(&mut stats, "deliver_get", rate_of(|s| s.deliver_get));
    put_rated(&mut stats, "ack", rate_of(|s| s.ack));
    put_rated(&mut stats, "redeliver", rate_of(|s| s.redeliver));
    if let Some(s) = sample {
        let c = s.counters;
        for (name, count) in
            [("deliver", c.deliver), ("deliver_no_ack", c.deliver_no_ack), ("get", c.get), ("get_no_ack", c.get_no_ack)]
        {
            stats.insert(name.to_string(), json!(count));
            stats.insert(format!("{name}_details"), details(0.0));
        }
    }
    let mut q = json!({
        "name": row.name,
        "vhost": row.vhost,
        "type": row.queue_type,
        "durable": row.durable,
        "auto_delete": row.auto_delete,
        "exclusive": row.exclusive,
        "exclusive_consumer_tag": Value::Null,
        "arguments": table_to_json(&row.argument_table),
        "node": super::node_name(),
        "state": "running",
        "policy": non_empty(&row.policy),
        "operator_policy": non_empty(&row.operator_policy),
        "effective_policy_definition": {},
        "consumers": row.consumers,
        "consumer_capacity": if row.consumers > 0 { 1.0 } else { 0.0 },
        "consumer_utilisation": if row.consumers > 0 { 1.0 } else { 0.0 },
        "memory": 0,
        "messages": row.messages,
        "messages_details": details(0.0),
        "messages_ready": row.messages_ready,
        "messages_ready_details": details(0.0),
        "messages_unacknowledged": row.messages_unacknowledged,
        "messages_unacknowledged_details": details(0.0),
        "messages_persistent": 0,
        "messages_ram": row.messages,
        "message_bytes": row.message_bytes_ready,
        "message_bytes_ready": row.message_bytes_ready,
        "message_bytes_unacknowledged": 0,
        "message_bytes_ram": row.message_bytes_ready,
        "message_bytes_persistent": 0,
        "message_stats": Value::Object(stats),
        "idle_since": Value::Null,
    });
    if row.queue_type == "stream" {
        q["first_offset"] = json!(row.first_offset);
        q["committed_offset"] = json!(row.last_offset);
        q["disk_bytes"] = json!(row.disk_bytes);
    }
    if let Some(owner) = owner {
        q["owner_pid_details"] = json!({"name": owner});
    }
    q
}

fn non_empty(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { json!(s) }
}

pub fn exchange(row: &ExchangeRow) -> Value {
    json!({
        "name": row.name,
        "vhost": row.vhost,
        "type": row.kind,
        "durable": row.durable,
        "auto_delete": row.auto_delete,
        "internal": row.internal,
        "arguments": table_to_json(&row.argument_table),
        "user_who_performed_action": "",
        "policy": Value::Null,
        "message_stats": {},
    })
}

pub fn binding(row: &BindingRow) -> Value {
    json!({
        "source": row.source,
        "vhost": row.vhost,
        "destination": row.destination,
        "destination_type": row.destination_kind,
        "routing_key": row.routing_key,
        "arguments": table_to_json(&row.argument_table),
        "properties_key": properties_key(&row.routing_key, &row.argument_table),
    })
}

/// The name of a binding in URLs, as RabbitMQ makes it: `~` for an empty
/// routing key without arguments; else the routing key quoted (and `~`
/// escaped), then, with arguments, `~` and a hash of them.
pub fn properties_key(routing_key: &str, arguments: &FieldTable) -> String {
    if routing_key.is_empty() && arguments.is_empty() {
        return "~".to_string();
    }
    let key = quote_plus(routing_key);
    if arguments.is_empty() {
        return key;
    }
    let mut encoded = bytes::BytesMut::new();
    crate::protocol::wire::Wire::write(arguments, &mut crate::protocol::wire::Writer::new(&mut encoded));
    // FNV-1a: stable across runs and builds, which is all a URL name needs.
    let hash = encoded.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3));
    let bytes = ((hash >> 32) as u32 ^ hash as u32).to_be_bytes();
    format!("{key}~{}", base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes))
}

/// Percent-encodes one URL path segment (unreserved characters stay).
pub fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Percent-encoding as RabbitMQ's `quote_plus`: letters, digits and `-_.`
/// stay, a space is `+`, everything else (`~` included) is `%XX`.
fn quote_plus(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_keys_look_like_rabbitmq_s() {
        assert_eq!(properties_key("", &FieldTable::new()), "~");
        assert_eq!(properties_key("a.b", &FieldTable::new()), "a.b");
        assert_eq!(properties_key("a b~c/d", &FieldTable::new()), "a+b%7Ec%2Fd");
        let mut args = FieldTable::new();
        args.insert("x-match", crate::protocol::FieldValue::string("any"));
        let with = properties_key("k", &args);
        assert!(with.starts_with("k~") && with.len() > 3, "{with}");
        assert_eq!(with, properties_key("k", &args), "stable");
        let mut other = FieldTable::new();
        other.insert("x-match", crate::protocol::FieldValue::string("all"));
        assert_ne!(with, properties_key("k", &other));
    }
}
