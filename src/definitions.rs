//! RabbitMQ's JSON definitions file: export of users, vhosts, permissions,
//! topic permissions, policies, durable queues, exchanges and bindings in
//! the shape `rabbitmqctl export_definitions` writes, and import of such a
//! file (from RabbitMQ 3.10 and later, or from Warren) at run time or at
//! start-up (`load_definitions`).
//!
//! Warren has one virtual host, `/`: entities of other vhosts in an import
//! are skipped and counted, not created.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::access::{TopicPermission, User};
use crate::broker::{Broker, Destination, Policy};
use crate::protocol::method::{ExchangeDeclare, QueueDeclare};
use crate::protocol::{FieldTable, FieldValue};

/// The parts of a definitions file Warren reads; others are ignored.
#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    users: Vec<User>,
    #[serde(default)]
    vhosts: Vec<Map<String, Value>>,
    #[serde(default)]
    permissions: Vec<crate::access::Permission>,
    #[serde(default)]
    topic_permissions: Vec<TopicPermission>,
    #[serde(default)]
    policies: Vec<Policy>,
    #[serde(default)]
    queues: Vec<QueueDef>,
    #[serde(default)]
    exchanges: Vec<ExchangeDef>,
    #[serde(default)]
    bindings: Vec<BindingDef>,
}

#[derive(Debug, Serialize, Deserialize)]
struct QueueDef {
    name: String,
    vhost: String,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: Map<String, Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ExchangeDef {
    name: String,
    vhost: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    arguments: Map<String, Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct BindingDef {
    source: String,
    vhost: String,
    destination: String,
    destination_type: String,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// What an import did.
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub users: usize,
    pub permissions: usize,
    pub policies: usize,
    pub queues: usize,
    pub exchanges: usize,
    pub bindings: usize,
    /// Entities of vhosts other than "/", not created.
    pub skipped_other_vhosts: usize,
}

/// An AMQP field table as JSON (as RabbitMQ writes arguments).
pub fn table_to_json(t: &FieldTable) -> Map<String, Value> {
    t.iter().map(|(k, v)| (k.to_string(), value_to_json(v))).collect()
}

fn value_to_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => json!(b),
        FieldValue::F32(f) => json!(f),
        FieldValue::F64(f) => json!(f),
        FieldValue::Table(t) => Value::Object(table_to_json(t)),
        FieldValue::Array(items) => Value::Array(items.iter().map(value_to_json).collect()),
        FieldValue::Void => Value::Null,
        other => match (other.as_i64(), other.as_str()) {
            (Some(n), _) => json!(n),
            (_, Some(s)) => json!(s),
            _ => json!(format!("{other:?}")),
        },
    }
}

/// JSON arguments as an AMQP field table: integers as signed 64-bit
/// (`long`), as RabbitMQ reads them from a definitions file.
pub fn json_to_table(m: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in m {
        t.insert(k.as_str(), json_to_value(v));
    }
    t
}

fn json_to_value(v: &Value) -> FieldValue {
    match v {
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => FieldValue::string(s),
        Value::Array(items) => FieldValue::Array(items.iter().map(json_to_value).collect()),
        Value::Object(m) => FieldValue::Table(json_to_table(m)),
        Value::Null => FieldValue::Void,
    }
}

/// Everything durable, as `rabbitmqctl export_definitions` writes it.
pub fn export(broker: &Broker) -> Value {
    let access = broker.access();
    let users: Vec<Value> = access
        .users()
        .into_iter()
        .map(|u| {
            json!({"name": u.name, "password_hash": u.password_hash, "hashing_algorithm": u.hashing_algorithm,
                   "tags": u.tags, "limits": {}})
        })
        .collect();
    let topology = broker.durable_topology();
    let exchanges: Vec<Value> = topology
        .exchanges
        .iter()
        .map(|e| {
            json!({"name": e.name, "vhost": "/", "type": e.kind.as_str(), "durable": true,
                   "auto_delete": e.auto_delete, "internal": e.internal, "arguments": table_to_json(&e.arguments)})
        })
        .collect();
    let queues: Vec<Value> = topology
        .queues
        .iter()
        .map(|(name, auto_delete, args)| {
            json!({"name": name, "vhost": "/", "durable": true, "auto_delete": auto_delete,
                   "arguments": table_to_json(args)})
        })
        .collect();
    let bindings: Vec<Value> = topology
        .bindings
        .iter()
        .map(|(source, b)| {
            json!({"source": source, "vhost": "/", "destination": b.destination.name(),
                   "destination_type": b.destination.kind(), "routing_key": b.routing_key,
                   "arguments": table_to_json(&b.arguments)})
        })
        .collect();
    json!({
        "rabbit_version": "3.13.7",
        "rabbitmq_version": "3.13.7",
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": users,
        "vhosts": [{"name": "/", "limits": [], "metadata": {"description": "Default virtual host", "tags": []}}],
        "permissions": access.permissions(),
        "topic_permissions": access.topic_permissions(),
        "parameters": [],
        "global_parameters": [],
        "policies": broker.policies(false),
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    })
}

/// Imports a definitions file: users (with their password hashes),
/// permissions, policies, then exchanges, queues and bindings of vhost "/".
pub fn import(broker: &Broker, text: &str) -> Result<ImportReport, String> {
    let file: File = serde_json::from_str(text).map_err(|e| format!("not a definitions file: {e}"))?;
    let mut report = ImportReport::default();
    let here = |vhost: &str, report: &mut ImportReport| {
        let ok = vhost == "/";
        if !ok {
            report.skipped_other_vhosts += 1;
        }
        ok
    };
    for v in &file.vhosts {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("/");
        here(name, &mut report);
    }
    let access = broker.access();
    for user in file.users {
        let name = user.name.clone();
        access.import_user(user).map_err(|e| format!("user '{name}': {e}"))?;
        report.users += 1;
    }
    for p in file.permissions {
        if here(&p.vhost, &mut report) {
            access
                .set_permissions(&p.user, &p.vhost, &p.configure, &p.write, &p.read)
                .map_err(|e| format!("permissions of '{}': {e}", p.user))?;
            report.permissions += 1;
        }
    }
    for t in file.topic_permissions {
        if here(&t.vhost, &mut report) {
            let user = t.user.clone();
            access.set_topic_permissions(t).map_err(|e| format!("topic permissions of '{user}': {e}"))?;
        }
    }
    for p in file.policies {
        if here(&p.vhost, &mut report) {
            let name = p.name.clone();
            broker.set_policy(p, false).map_err(|e| format!("policy '{name}': {e}"))?;
            report.policies += 1;
        }
    }
    for e in file.exchanges {
        if !here(&e.vhost, &mut report) || e.name.is_empty() || e.name.starts_with("amq.") {
            continue;
        }
        let declare = ExchangeDeclare {
            exchange: e.name.clone(),
            kind: e.kind.clone(),
            durable: e.durable,
            auto_delete: e.auto_delete,
            internal: e.internal,
            arguments: json_to_table(&e.arguments),
            ..Default::default()
        };
        broker.exchange_declare(&declare).map_err(|err| format!("exchange '{}': {}", e.name, err.text))?;
        report.exchanges += 1;
    }
    for q in file.queues {
        if !here(&q.vhost, &mut report) {
            continue;
        }
        let declare = QueueDeclare {
            queue: q.name.clone(),
            durable: q.durable,
            auto_delete: q.auto_delete,
            arguments: json_to_table(&q.arguments),
            ..Default::default()
        };
        broker.queue_declare(0, &declare).map_err(|err| format!("queue '{}': {}", q.name, err.text))?;
        report.queues += 1;
    }
    for b in file.bindings {
        if !here(&b.vhost, &mut report) {
            continue;
        }
        let destination = match b.destination_type.as_str() {
            "queue" => Destination::Queue(b.destination.clone()),
            "exchange" => Destination::Exchange(b.destination.clone()),
            other => return Err(format!("binding to '{}': unknown destination type '{other}'", b.destination)),
        };
        let arguments = json_to_table(&b.arguments);
        broker
            .bind(0, &b.source, destination, &b.routing_key, &arguments)
            .map_err(|err| format!("binding {} -> {}: {}", b.source, b.destination, err.text))?;
        report.bindings += 1;
    }
    Ok(report)
}
