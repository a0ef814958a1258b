//! RabbitMQ's JSON definitions file: export of users, vhosts, permissions,
//! topic permissions, policies, durable queues, exchanges and bindings in
//! the shape `rabbitmqctl export_definitions` writes, and import of such a
//! file (from RabbitMQ 3.10 and later, or from Warren) at run time or at
//! start-up (`load_definitions`).
//!
//! Vhost limits travel as RabbitMQ's `vhost-limits` runtime parameters;
//! other runtime parameters (shovels, federation) have no meaning here and
//! are counted as skipped.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::access::{TopicPermission, User};
use crate::broker::changes::{Change, SettingChange, detail};
use crate::broker::{Broker, Destination, Policy, VhostInfo, VhostLimits};
use crate::protocol::method::{ExchangeBind, ExchangeDeclare, QueueBind, QueueDeclare};
use crate::protocol::{FieldTable, FieldValue};

/// The parts of a definitions file Warren reads; others are ignored.
#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    users: Vec<User>,
    #[serde(default)]
    vhosts: Vec<Map<String, Value>>,
    #[serde(default)]
    parameters: Vec<ParameterDef>,
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

/// A runtime parameter: `vhost-limits` is the one Warren knows.
#[derive(Debug, Deserialize)]
struct ParameterDef {
    #[serde(default)]
    vhost: String,
    component: String,
    #[serde(default)]
    value: Value,
}

fn yes() -> bool {
    true
}

/// What an import did.
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub vhosts: usize,
    pub users: usize,
    pub permissions: usize,
    pub policies: usize,
    pub queues: usize,
    pub exchanges: usize,
    pub bindings: usize,
    pub vhost_limits: usize,
    /// Runtime parameters of components Warren does not have.
    pub skipped_parameters: usize,
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
    let vhost_rows = broker.list_vhosts();
    let vhosts: Vec<Value> = vhost_rows
        .iter()
        .map(|v| {
            let mut metadata = json!({"description": v.info.description, "tags": v.info.tags});
            if let Some(t) = &v.info.default_queue_type {
                metadata["default_queue_type"] = json!(t);
            }
            json!({"name": v.info.name, "limits": [], "metadata": metadata})
        })
        .collect();
    // Vhost limits as RabbitMQ stores them: a runtime parameter.
    let parameters: Vec<Value> = vhost_rows
        .iter()
        .filter(|v| !v.limits.is_empty())
        .map(|v| json!({"vhost": v.info.name, "component": "vhost-limits", "name": "limits", "value": v.limits}))
        .collect();
    let topology = broker.durable_topology();
    let exchanges: Vec<Value> = topology
        .exchanges
        .iter()
        .map(|(vhost, e)| {
            json!({"name": e.name, "vhost": vhost, "type": e.kind.as_str(), "durable": true,
                   "auto_delete": e.auto_delete, "internal": e.internal, "arguments": table_to_json(&e.arguments)})
        })
        .collect();
    let queues: Vec<Value> = topology
        .queues
        .iter()
        .map(|(vhost, name, auto_delete, args)| {
            json!({"name": name, "vhost": vhost, "durable": true, "auto_delete": auto_delete,
                   "arguments": table_to_json(args)})
        })
        .collect();
    let bindings: Vec<Value> = topology
        .bindings
        .iter()
        .map(|(vhost, source, b)| {
            json!({"source": source, "vhost": vhost, "destination": b.destination.name(),
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
        "vhosts": vhosts,
        "permissions": access.permissions(),
        "topic_permissions": access.topic_permissions(),
        "parameters": parameters,
        "global_parameters": [],
        "policies": broker.policies(None, false),
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    })
}

/// A vhost entry of a definitions file: description and tags at the top
/// or in `metadata`, tags as a list or as "a,b" (RabbitMQ 3.10 writes both ways).
fn vhost_info(v: &Map<String, Value>) -> Option<VhostInfo> {
    let name = v.get("name")?.as_str()?.to_string();
    let metadata = v.get("metadata").and_then(Value::as_object);
    let field = |key: &str| v.get(key).or_else(|| metadata.and_then(|m| m.get(key)));
    let tags = match field("tags") {
        Some(Value::String(s)) => s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    };
    Some(VhostInfo {
        name,
        description: field("description").and_then(Value::as_str).unwrap_or_default().to_string(),
        tags,
        default_queue_type: field("default_queue_type").and_then(Value::as_str).map(str::to_string),
    })
}

/// Imports a definitions file: vhosts, users (with their password hashes),
/// permissions, vhost limits, policies, then exchanges, queues and bindings.
pub fn import(broker: &Broker, text: &str) -> Result<ImportReport, String> {
    let file: File = serde_json::from_str(text).map_err(|e| format!("not a definitions file: {e}"))?;
    let mut report = ImportReport::default();
    for v in &file.vhosts {
        let info = vhost_info(v).ok_or_else(|| format!("a vhost without a name: {}", Value::Object(v.clone())))?;
        let name = info.name.clone();
        broker.change_blocking(Change::VhostAdd(info)).map_err(|e| format!("vhost '{name}': {}", detail(&e)))?;
        report.vhosts += 1;
    }
    let vhost_exists = |vhost: &str| {
        if broker.vhost_exists(vhost) { Ok(()) } else { Err(format!("Virtual host '{vhost}' does not exist")) }
    };
    // Every change goes through Broker::change_blocking: on a node of a
    // cluster, through the metadata group.
    let change = |setting: SettingChange| broker.change_blocking(Change::Setting(setting)).map_err(|e| detail(&e));
    for user in file.users {
        let name = user.name.clone();
        change(SettingChange::PutUser { user }).map_err(|e| format!("user '{name}': {e}"))?;
        report.users += 1;
    }
    for permission in file.permissions {
        let user = permission.user.clone();
        vhost_exists(&permission.vhost).map_err(|e| format!("permissions of '{user}': {e}"))?;
        change(SettingChange::SetPermissions { permission }).map_err(|e| format!("permissions of '{user}': {e}"))?;
        report.permissions += 1;
    }
    for permission in file.topic_permissions {
        let user = permission.user.clone();
        vhost_exists(&permission.vhost).map_err(|e| format!("topic permissions of '{user}': {e}"))?;
        change(SettingChange::SetTopicPermissions { permission })
            .map_err(|e| format!("topic permissions of '{user}': {e}"))?;
    }
    for p in file.parameters {
        if p.component != "vhost-limits" {
            report.skipped_parameters += 1;
            continue;
        }
        let limits = p
            .value
            .as_object()
            .ok_or_else(|| "vhost-limits: the value is not an object".to_string())
            .and_then(VhostLimits::parse)
            .map_err(|e| format!("limits of vhost '{}': {e}", p.vhost))?;
        let vhost = p.vhost.clone();
        change(SettingChange::SetVhostLimits { vhost: p.vhost, limits })
            .map_err(|e| format!("limits of vhost '{vhost}': {e}"))?;
        report.vhost_limits += 1;
    }
    for policy in file.policies {
        let name = policy.name.clone();
        change(SettingChange::SetPolicy { policy, operator: false }).map_err(|e| format!("policy '{name}': {e}"))?;
        report.policies += 1;
    }
    for e in file.exchanges {
        if e.name.is_empty() || e.name.starts_with("amq.") {
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
        broker
            .change_blocking(Change::Exchange { vhost: e.vhost.clone(), method: declare.into() })
            .map_err(|err| format!("exchange '{}' in vhost '{}': {}", e.name, e.vhost, err.text))?;
        report.exchanges += 1;
    }
    for q in file.queues {
        let declare = QueueDeclare {
            queue: q.name.clone(),
            durable: q.durable,
            auto_delete: q.auto_delete,
            arguments: json_to_table(&q.arguments),
            ..Default::default()
        };
        let declared = match broker.queue_change(&q.vhost, declare.clone().into()) {
            // A new quorum queue of a cluster: made on every node.
            Some(change) => broker.change_blocking(change),
            None => broker.queue_declare(&q.vhost, 0, &declare).map(drop),
        };
        declared.map_err(|err| format!("queue '{}' in vhost '{}': {}", q.name, q.vhost, err.text))?;
        report.queues += 1;
    }
    for b in file.bindings {
        let destination = match b.destination_type.as_str() {
            "queue" => Destination::Queue(b.destination.clone()),
            "exchange" => Destination::Exchange(b.destination.clone()),
            other => return Err(format!("binding to '{}': unknown destination type '{other}'", b.destination)),
        };
        let arguments = json_to_table(&b.arguments);
        let result = match destination {
            // A binding to an exchange is shared by every node of a cluster.
            Destination::Exchange(destination) => {
                let bind = ExchangeBind {
                    destination,
                    source: b.source.clone(),
                    routing_key: b.routing_key.clone(),
                    arguments,
                    ..Default::default()
                };
                broker.change_blocking(Change::Exchange { vhost: b.vhost.clone(), method: bind.into() })
            }
            Destination::Queue(queue) => {
                let bind = QueueBind {
                    queue: queue.clone(),
                    exchange: b.source.clone(),
                    routing_key: b.routing_key.clone(),
                    arguments: arguments.clone(),
                    ..Default::default()
                };
                match broker.queue_change(&b.vhost, bind.into()) {
                    Some(change) => broker.change_blocking(change),
                    None => broker.bind(&b.vhost, 0, &b.source, Destination::Queue(queue), &b.routing_key, &arguments),
                }
            }
        };
        result
            .map_err(|err| format!("binding {} -> {} in vhost '{}': {}", b.source, b.destination, b.vhost, err.text))?;
        report.bindings += 1;
    }
    Ok(report)
}
