//! Queues over HTTP: listings, one queue, declare (PUT), delete, purge,
//! get messages, and a queue's bindings. Every change goes through the
//! broker calls AMQP uses, with the caller's permissions checked as AMQP
//! checks them.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::bindings::bindings_where;
use super::paging::{ListQuery, listing};
use super::{Api, ApiError, ApiResult, Caller, JsonBody, JsonOrEmpty, check_short, json as shape};
use crate::access::{Access, ResourceKind};
use crate::broker::GetSettle;
use crate::definitions::json_to_table;
use crate::protocol::BasicProperties;
use crate::protocol::method::{QueueDeclare, QueueDelete};

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/queues", get(all_queues))
        .route("/api/queues/{vhost}", get(vhost_queues))
        .route("/api/queues/{vhost}/{name}", get(one_queue).put(put_queue).delete(delete_queue))
        .route("/api/queues/{vhost}/{name}/contents", axum::routing::delete(purge_queue))
        .route("/api/queues/{vhost}/{name}/get", post(get_messages))
        .route("/api/queues/{vhost}/{name}/bindings", get(queue_bindings))
}

/// Connection names by id, for the owners of exclusive queues.
fn connection_names(api: &Api) -> HashMap<u64, String> {
    api.broker
        .list_connections()
        .into_iter()
        .map(|(id, info, _)| (id, crate::broker::connection_name(id, &info.peer)))
        .collect()
}

fn queues_json(api: &Api, caller: &Caller, vhost: Option<&str>) -> Vec<Value> {
    let snapshot = api.broker.snapshot();
    let connections = connection_names(api);
    api.broker
        .list_queues(vhost)
        .iter()
        .filter(|row| caller.sees_vhost(api, &row.vhost))
        .map(|row| {
            let owner = row.owner.and_then(|id| connections.get(&id).cloned());
            let mut json = shape::queue(row, snapshot.queue(&row.vhost, &row.name), owner);
            super::cluster::add_members(api, row, &mut json);
            json
        })
        .collect()
}

pub(super) async fn all_queues(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    listing(queues_json(&api, &caller, None), &q)
}

async fn vhost_queues(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    listing(queues_json(&api, &caller, Some(&vhost)), &q)
}

async fn one_queue(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    // One queue, looked up directly (KEDA polls this).
    let row = api.broker.queue_row(&vhost, &name).ok_or_else(ApiError::not_found)?;
    let owner = row.owner.and_then(|id| connection_names(&api).remove(&id));
    let mut json = shape::queue(&row, api.broker.snapshot().queue(&vhost, &name), owner);
    super::cluster::add_members(&api, &row, &mut json);
    Ok(Json(json))
}

/// An exclusive queue belongs to its connection: HTTP may look at it but
/// not purge, delete or take its messages, as in RabbitMQ.
fn check_not_exclusive(api: &Api, vhost: &str, name: &str) -> ApiResult<()> {
    match api.broker.queue_row(vhost, name) {
        None => Err(ApiError::not_found()),
        Some(row) if row.exclusive => Err(ApiError::bad_request(format!(
            "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
        ))),
        Some(_) => Ok(()),
    }
}

#[derive(Debug, Default, Deserialize)]
struct QueueBody {
    #[serde(default)]
    durable: Option<bool>,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    arguments: Map<String, Value>,
}

/// PUT /api/queues/{vhost}/{name}: 201 when created, 204 when it existed
/// (with the same properties), 400 when it differs.
async fn put_queue(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    JsonOrEmpty(body): JsonOrEmpty<QueueBody>,
) -> ApiResult<StatusCode> {
    caller.require_vhost(&api, &vhost)?;
    check_short("queue name", &name)?;
    caller.require(&api, &vhost, Access::Configure, ResourceKind::Queue, &name)?;
    let existed = api.broker.queue_exists(&vhost, &name);
    let declare = QueueDeclare {
        queue: name,
        durable: body.durable.unwrap_or(true),
        auto_delete: body.auto_delete,
        arguments: json_to_table(&body.arguments),
        ..Default::default()
    };
    match api.broker.queue_change(&vhost, declare.clone().into()) {
        // A new quorum queue of a cluster: made on every node.
        Some(change) => api.broker.change(change).await?,
        None => drop(api.broker.queue_declare(&vhost, 0, &declare)?),
    }
    Ok(if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED })
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct DeleteQuery {
    #[serde(rename = "if-empty")]
    pub if_empty: Option<String>,
    #[serde(rename = "if-unused")]
    pub if_unused: Option<String>,
}

async fn delete_queue(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    caller.require_vhost(&api, &vhost)?;
    caller.require(&api, &vhost, Access::Configure, ResourceKind::Queue, &name)?;
    check_not_exclusive(&api, &vhost, &name)?;
    let (if_unused, if_empty) = (q.if_unused.as_deref() == Some("true"), q.if_empty.as_deref() == Some("true"));
    let delete = QueueDelete { queue: name.clone(), ..Default::default() };
    if let Some(change) = api.broker.queue_change(&vhost, delete.into()) {
        // A replicated quorum queue: deleted on every node.
        api.broker.queue_delete_check(&vhost, &name, if_unused, if_empty)?;
        api.broker.change(change).await?;
    } else if if_unused || if_empty {
        api.broker.queue_delete(&vhost, (0, 0), &name, if_unused, if_empty)?;
    } else {
        api.broker.admin_delete(&vhost, &name);
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn purge_queue(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_vhost(&api, &vhost)?;
    caller.require(&api, &vhost, Access::Read, ResourceKind::Queue, &name)?;
    check_not_exclusive(&api, &vhost, &name)?;
    api.broker.admin_purge(&vhost, &name).map_err(|e| match e.code {
        crate::protocol::reply::NOT_FOUND => ApiError::not_found(),
        _ => e.into(),
    })?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct GetBody {
    count: usize,
    ackmode: String,
    #[serde(default = "auto")]
    encoding: String,
    #[serde(default)]
    truncate: Option<usize>,
}

/// Messages one POST /get may take: they are held in memory until answered.
const MAX_GET: usize = 10_000;

fn auto() -> String {
    "auto".into()
}

/// POST /api/queues/{vhost}/{name}/get: takes messages off the queue.
async fn get_messages(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<GetBody>,
) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    caller.require(&api, &vhost, Access::Read, ResourceKind::Queue, &name)?;
    check_not_exclusive(&api, &vhost, &name)?;
    if body.count > MAX_GET {
        return Err(ApiError::bad_request(format!("count must be at most {MAX_GET}")));
    }
    let settle = match body.ackmode.as_str() {
        "ack_requeue_true" | "reject_requeue_true" => GetSettle::Requeue,
        "ack_requeue_false" => GetSettle::Ack,
        "reject_requeue_false" => GetSettle::Reject,
        other => return Err(ApiError::bad_request(format!("unknown ackmode '{other}'"))),
    };
    if !matches!(body.encoding.as_str(), "auto" | "base64") {
        return Err(ApiError::bad_request(format!("unknown encoding '{}'", body.encoding)));
    }
    let taken = api.broker.operator_get(&vhost, &name, body.count, settle)?;
    let messages: Vec<Value> = taken
        .iter()
        .map(|t| {
            let bytes = &t.message.body[..];
            let shown = &bytes[..body.truncate.map_or(bytes.len(), |n| n.min(bytes.len()))];
            let (payload, encoding) = match std::str::from_utf8(shown) {
                Ok(text) if body.encoding == "auto" => (text.to_string(), "string"),
                _ => (base64::engine::general_purpose::STANDARD.encode(shown), "base64"),
            };
            json!({
                "payload_bytes": bytes.len(),
                "redelivered": t.redelivered,
                "exchange": t.message.exchange,
                "routing_key": t.message.routing_key,
                "message_count": t.remaining,
                "properties": properties_json(&t.message.properties),
                "payload": payload,
                "payload_encoding": encoding,
            })
        })
        .collect();
    Ok(Json(Value::Array(messages)))
}

/// Message properties as the management API shows them (absent ones left out).
fn properties_json(raw: &bytes::Bytes) -> Value {
    let Ok(p) = BasicProperties::decode(raw.clone()) else { return json!({}) };
    let mut out = Map::new();
    let mut text = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            out.insert(k.into(), json!(v));
        }
    };
    text("content_type", &p.content_type);
    text("content_encoding", &p.content_encoding);
    text("correlation_id", &p.correlation_id);
    text("reply_to", &p.reply_to);
    text("expiration", &p.expiration);
    text("message_id", &p.message_id);
    text("type", &p.kind);
    text("user_id", &p.user_id);
    text("app_id", &p.app_id);
    text("cluster_id", &p.cluster_id);
    if let Some(m) = p.delivery_mode {
        out.insert("delivery_mode".into(), json!(m));
    }
    if let Some(pr) = p.priority {
        out.insert("priority".into(), json!(pr));
    }
    if let Some(t) = p.timestamp {
        out.insert("timestamp".into(), json!(t));
    }
    if let Some(h) = &p.headers {
        out.insert("headers".into(), Value::Object(crate::definitions::table_to_json(h)));
    }
    Value::Object(out)
}

async fn queue_bindings(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    if !api.broker.queue_exists(&vhost, &name) {
        return Err(ApiError::not_found());
    }
    Ok(Json(bindings_where(&api, &caller, Some(&vhost), |b| b.destination_kind == "queue" && b.destination == name)))
}
