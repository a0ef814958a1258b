//! Queues, exchanges and bindings over HTTP: listings (with RabbitMQ's
//! paging, name and regex filters and `columns`), one object, declare
//! (PUT), delete, purge, get messages, publish, and bindings by their
//! properties key. Every change goes through the broker calls AMQP uses,
//! with the caller's permissions checked as AMQP checks them.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Api, ApiError, ApiResult, Caller, json as shape};
use crate::access::{Access, ResourceKind};
use crate::broker::{Destination, GetSettle, Message};
use crate::definitions::json_to_table;
use crate::protocol::method::{ExchangeDeclare, QueueDeclare};
use crate::protocol::{BasicProperties, FieldTable};

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/queues", get(all_queues))
        .route("/api/queues/{vhost}", get(vhost_queues))
        .route("/api/queues/{vhost}/{name}", get(one_queue).put(put_queue).delete(delete_queue))
        .route("/api/queues/{vhost}/{name}/contents", axum::routing::delete(purge_queue))
        .route("/api/queues/{vhost}/{name}/get", post(get_messages))
        .route("/api/queues/{vhost}/{name}/bindings", get(queue_bindings))
        .route("/api/exchanges", get(all_exchanges))
        .route("/api/exchanges/{vhost}", get(vhost_exchanges))
        .route("/api/exchanges/{vhost}/{name}", get(one_exchange).put(put_exchange).delete(delete_exchange))
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
        // The default exchange has an empty name: an empty path segment.
        .route("/api/exchanges/{vhost}//publish", post(publish_default))
        .route("/api/exchanges/{vhost}/{name}/bindings/source", get(bindings_from))
        .route("/api/exchanges/{vhost}/{name}/bindings/destination", get(bindings_to))
        .route("/api/bindings", get(all_bindings))
        .route("/api/bindings/{vhost}", get(vhost_bindings))
        .route("/api/bindings/{vhost}/e/{source}/{kind}/{destination}", get(bindings_between).post(add_binding))
        .route("/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}", get(one_binding).delete(delete_binding))
        .route("/api/bindings/{vhost}/e//q/{destination}", get(default_bindings))
}

/// The default exchange is `amq.default` in URLs.
fn exchange_name(name: &str) -> &str {
    if name == "amq.default" { "" } else { name }
}

async fn publish_default(
    state: State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    body: Json<PublishBody>,
) -> ApiResult<Json<Value>> {
    publish(state, caller, Path((vhost, String::new())), body).await
}

/// The default exchange's implicit binding of a queue.
async fn default_bindings(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, destination)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    Ok(Json(bindings_where(&api, &caller, Some(&vhost), |b| {
        b.source.is_empty() && b.destination_kind == "queue" && b.destination == destination
    })))
}

/// Query parameters of the listings.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    page: Option<usize>,
    page_size: Option<usize>,
    name: Option<String>,
    use_regex: Option<String>,
    columns: Option<String>,
    sort: Option<String>,
    sort_reverse: Option<String>,
}

/// Applies `name` / `use_regex`, `sort`, `columns` and paging to a listing
/// as RabbitMQ does: with `page`, the reply is an object with `items` and
/// the counts; without, the array itself.
fn listing(items: Vec<Value>, q: &ListQuery) -> ApiResult<Json<Value>> {
    let total = items.len();
    let regex = q.use_regex.as_deref() == Some("true");
    // As RabbitMQ: `name` filters a paged listing only; matching ignores case.
    let name = q.name.as_ref().filter(|_| q.page.is_some());
    let filter = match (name, regex) {
        (Some(name), true) if !name.is_empty() => {
            let re = regex::RegexBuilder::new(name)
                .case_insensitive(true)
                .build()
                .map_err(|e| ApiError::bad_request(format!("invalid regex: {e}")))?;
            Some(Box::new(move |n: &str| re.is_match(n)) as Box<dyn Fn(&str) -> bool>)
        }
        (Some(name), false) if !name.is_empty() => {
            let needle = name.to_lowercase();
            Some(Box::new(move |n: &str| n.to_lowercase().contains(&needle)) as Box<dyn Fn(&str) -> bool>)
        }
        _ => None,
    };
    let mut items: Vec<Value> = match &filter {
        Some(f) => items.into_iter().filter(|i| f(i["name"].as_str().unwrap_or_default())).collect(),
        None => items,
    };
    if let Some(key) = &q.sort {
        let path: Vec<&str> = key.split('.').collect();
        let at = |v: &Value| path.iter().fold(v.clone(), |v, k| v.get(k).cloned().unwrap_or(Value::Null));
        items.sort_by(|a, b| compare(&at(a), &at(b)));
        if q.sort_reverse.as_deref() == Some("true") {
            items.reverse();
        }
    }
    if let Some(columns) = &q.columns {
        let wanted: Vec<Vec<&str>> = columns.split(',').map(|c| c.trim().split('.').collect()).collect();
        items = items.into_iter().map(|item| pick(&item, &wanted)).collect();
    }
    let Some(page) = q.page else { return Ok(Json(Value::Array(items))) };
    let page_size = q.page_size.unwrap_or(100);
    if !(1..=500).contains(&page_size) {
        return Err(ApiError::bad_request(format!("page_size must be between 1 and 500, got {page_size}")));
    }
    let filtered = items.len();
    let page_count = filtered.div_ceil(page_size).max(1);
    if page == 0 || page > page_count {
        return Err(ApiError::bad_request(format!("page out of range: {page} of {page_count}")));
    }
    let chunk: Vec<Value> = items.into_iter().skip((page - 1) * page_size).take(page_size).collect();
    Ok(Json(json!({
        "filtered_count": filtered,
        "item_count": chunk.len(),
        "items": chunk,
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
    })))
}

fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Only the given (dotted) columns of an object, nested as they were.
fn pick(item: &Value, columns: &[Vec<&str>]) -> Value {
    let mut out = Map::new();
    for path in columns {
        let mut source = item;
        let mut target = &mut out;
        for (i, key) in path.iter().enumerate() {
            let Some(next) = source.get(*key) else { break };
            if i + 1 == path.len() {
                target.insert(key.to_string(), next.clone());
            } else {
                source = next;
                let entry = target.entry(key.to_string()).or_insert_with(|| Value::Object(Map::new()));
                let Value::Object(map) = entry else { break };
                target = map;
            }
        }
    }
    Value::Object(out)
}

fn queues_json(api: &Api, caller: &Caller, vhost: Option<&str>) -> Vec<Value> {
    let snapshot = api.broker.snapshot();
    let connections: HashMap<u64, String> = api
        .broker
        .list_connections()
        .into_iter()
        .map(|(id, info, _)| (id, crate::broker::connection_name(id, &info.peer)))
        .collect();
    api.broker
        .list_queues(vhost)
        .iter()
        .filter(|row| caller.sees_vhost(api, &row.vhost))
        .map(|row| {
            let owner = row.owner.and_then(|id| connections.get(&id).cloned());
            shape::queue(row, snapshot.queue(&row.vhost, &row.name), owner)
        })
        .collect()
}

async fn all_queues(State(api): State<Api>, caller: Caller, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
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
    queues_json(&api, &caller, Some(&vhost))
        .into_iter()
        .find(|q| q["name"] == name.as_str())
        .map(Json)
        .ok_or_else(ApiError::not_found)
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
    body: Option<Json<QueueBody>>,
) -> ApiResult<StatusCode> {
    caller.require_vhost(&api, &vhost)?;
    caller.require(&api, &vhost, Access::Configure, ResourceKind::Queue, &name)?;
    let body = body.map(|b| b.0).unwrap_or_default();
    let existed = api.broker.queue_exists(&vhost, &name);
    let declare = QueueDeclare {
        queue: name,
        durable: body.durable.unwrap_or(true),
        auto_delete: body.auto_delete,
        arguments: json_to_table(&body.arguments),
        ..Default::default()
    };
    api.broker.queue_declare(&vhost, 0, &declare)?;
    Ok(if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED })
}

#[derive(Debug, Default, Deserialize)]
struct DeleteQuery {
    #[serde(rename = "if-empty")]
    if_empty: Option<String>,
    #[serde(rename = "if-unused")]
    if_unused: Option<String>,
}

async fn delete_queue(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    caller.require_vhost(&api, &vhost)?;
    caller.require(&api, &vhost, Access::Configure, ResourceKind::Queue, &name)?;
    if !api.broker.queue_exists(&vhost, &name) {
        return Err(ApiError::not_found());
    }
    let (if_unused, if_empty) = (q.if_unused.as_deref() == Some("true"), q.if_empty.as_deref() == Some("true"));
    if if_unused || if_empty {
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
    api.broker.admin_purge(&vhost, &name).ok_or_else(ApiError::not_found)?;
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

fn auto() -> String {
    "auto".into()
}

/// POST /api/queues/{vhost}/{name}/get: takes messages off the queue.
async fn get_messages(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Json(body): Json<GetBody>,
) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    caller.require(&api, &vhost, Access::Read, ResourceKind::Queue, &name)?;
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

/// Message properties from the JSON a publish carries.
fn properties_from_json(v: &Map<String, Value>) -> BasicProperties {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    BasicProperties {
        content_type: text("content_type"),
        content_encoding: text("content_encoding"),
        headers: v.get("headers").and_then(Value::as_object).map(json_to_table),
        delivery_mode: v
            .get("delivery_mode")
            .and_then(|m| m.as_u64().or_else(|| m.as_str()?.parse().ok()))
            .map(|m| m as u8),
        priority: v.get("priority").and_then(Value::as_u64).map(|p| p.min(255) as u8),
        correlation_id: text("correlation_id"),
        reply_to: text("reply_to"),
        expiration: text("expiration"),
        message_id: text("message_id"),
        timestamp: v.get("timestamp").and_then(Value::as_u64),
        kind: text("type"),
        user_id: text("user_id"),
        app_id: text("app_id"),
        cluster_id: text("cluster_id"),
    }
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

fn exchanges_json(api: &Api, caller: &Caller, vhost: Option<&str>) -> Vec<Value> {
    api.broker.list_exchanges(vhost).iter().filter(|e| caller.sees_vhost(api, &e.vhost)).map(shape::exchange).collect()
}

async fn all_exchanges(State(api): State<Api>, caller: Caller, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    listing(exchanges_json(&api, &caller, None), &q)
}

async fn vhost_exchanges(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    listing(exchanges_json(&api, &caller, Some(&vhost)), &q)
}

async fn one_exchange(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    let name = exchange_name(&name);
    exchanges_json(&api, &caller, Some(&vhost))
        .into_iter()
        .find(|e| e["name"] == name)
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

#[derive(Debug, Deserialize)]
struct ExchangeBody {
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

fn yes() -> bool {
    true
}

async fn put_exchange(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Json(body): Json<ExchangeBody>,
) -> ApiResult<StatusCode> {
    caller.require_vhost(&api, &vhost)?;
    caller.require(&api, &vhost, Access::Configure, ResourceKind::Exchange, &name)?;
    let existed = api.broker.exchange_exists(&vhost, &name);
    let declare = ExchangeDeclare {
        exchange: name,
        kind: body.kind,
        durable: body.durable,
        auto_delete: body.auto_delete,
        internal: body.internal,
        arguments: json_to_table(&body.arguments),
        ..Default::default()
    };
    api.broker.exchange_declare(&vhost, &declare)?;
    Ok(if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED })
}

async fn delete_exchange(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    caller.require_vhost(&api, &vhost)?;
    caller.require(&api, &vhost, Access::Configure, ResourceKind::Exchange, &name)?;
    if !api.broker.exchange_exists(&vhost, exchange_name(&name)) {
        return Err(ApiError::not_found());
    }
    api.broker.exchange_delete(&vhost, exchange_name(&name), q.if_unused.as_deref() == Some("true"))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct PublishBody {
    #[serde(default)]
    properties: Map<String, Value>,
    routing_key: String,
    payload: String,
    #[serde(default = "string")]
    payload_encoding: String,
}

fn string() -> String {
    "string".into()
}

/// POST /api/exchanges/{vhost}/{name}/publish: `{"routed": bool}`.
async fn publish(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Json(body): Json<PublishBody>,
) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    let exchange = exchange_name(&name);
    let resource = if exchange.is_empty() { "amq.default" } else { exchange };
    caller.require(&api, &vhost, Access::Write, ResourceKind::Exchange, resource)?;
    if !api.broker.exchange_exists(&vhost, exchange) {
        return Err(ApiError::not_found());
    }
    let payload = match body.payload_encoding.as_str() {
        "string" => bytes::Bytes::from(body.payload.into_bytes()),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(body.payload.as_bytes())
            .map(bytes::Bytes::from)
            .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?,
        other => return Err(ApiError::bad_request(format!("unknown payload_encoding '{other}'"))),
    };
    let props = properties_from_json(&body.properties);
    let message = Message {
        exchange: exchange.to_string(),
        routing_key: body.routing_key,
        persistent: props.delivery_mode == Some(2),
        expiration_ms: props.expiration.as_deref().and_then(|e| e.parse().ok()),
        priority: props.priority.unwrap_or(0),
        properties: props.to_bytes(),
        body: payload,
    };
    let headers = props.headers.clone();
    let routed = api.broker.publish(&vhost, exchange, headers.as_ref(), std::sync::Arc::new(message))?;
    Ok(Json(json!({"routed": routed.routed})))
}

fn bindings_where(
    api: &Api,
    caller: &Caller,
    vhost: Option<&str>,
    keep: impl Fn(&crate::broker::BindingRow) -> bool,
) -> Value {
    Value::Array(
        api.broker
            .list_bindings(vhost)
            .iter()
            .filter(|b| caller.sees_vhost(api, &b.vhost) && keep(b))
            .map(shape::binding)
            .collect(),
    )
}

async fn bindings_from(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    let name = exchange_name(&name).to_string();
    Ok(Json(bindings_where(&api, &caller, Some(&vhost), |b| b.source == name)))
}

async fn bindings_to(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    Ok(Json(bindings_where(&api, &caller, Some(&vhost), |b| b.destination_kind == "exchange" && b.destination == name)))
}

async fn all_bindings(State(api): State<Api>, caller: Caller) -> Json<Value> {
    Json(bindings_where(&api, &caller, None, |_| true))
}

async fn vhost_bindings(State(api): State<Api>, caller: Caller, Path(vhost): Path<String>) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    Ok(Json(bindings_where(&api, &caller, Some(&vhost), |_| true)))
}

/// `q` or `e` in a binding URL.
fn destination_kind(kind: &str) -> ApiResult<&'static str> {
    match kind {
        "q" => Ok("queue"),
        "e" => Ok("exchange"),
        _ => Err(ApiError::not_found()),
    }
}

async fn bindings_between(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    let kind = destination_kind(&kind)?;
    let source = exchange_name(&source).to_string();
    Ok(Json(bindings_where(&api, &caller, Some(&vhost), |b| {
        b.source == source && b.destination_kind == kind && b.destination == destination
    })))
}

#[derive(Debug, Default, Deserialize)]
struct BindingBody {
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Map<String, Value>,
}

/// POST a binding: 201 with the new binding's URL (its properties key) in `Location`.
async fn add_binding(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
    body: Option<Json<BindingBody>>,
) -> ApiResult<Response> {
    caller.require_vhost(&api, &vhost)?;
    let kind = destination_kind(&kind)?;
    let body = body.map(|b| b.0).unwrap_or_default();
    let (resource, target) = if kind == "queue" {
        (ResourceKind::Queue, Destination::Queue(destination.clone()))
    } else {
        (ResourceKind::Exchange, Destination::Exchange(destination.clone()))
    };
    caller.require(&api, &vhost, Access::Write, resource, &destination)?;
    caller.require(&api, &vhost, Access::Read, ResourceKind::Exchange, &source)?;
    let arguments: FieldTable = json_to_table(&body.arguments);
    api.broker.bind(&vhost, 0, exchange_name(&source), target, &body.routing_key, &arguments)?;
    let key = shape::properties_key(&body.routing_key, &arguments);
    let mut response = StatusCode::CREATED.into_response();
    let location = format!(
        "/api/bindings/{}/e/{}/{}/{}/{key}",
        encode(&vhost),
        encode(&source),
        if kind == "queue" { "q" } else { "e" },
        encode(&destination)
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Percent-encodes a path segment.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The binding a properties key names, if it exists.
fn find_binding(
    api: &Api,
    vhost: &str,
    source: &str,
    kind: &str,
    destination: &str,
    props: &str,
) -> Option<crate::broker::BindingRow> {
    let source = exchange_name(source);
    api.broker.list_bindings(Some(vhost)).into_iter().find(|b| {
        b.source == source
            && b.destination_kind == kind
            && b.destination == destination
            && shape::properties_key(&b.routing_key, &b.argument_table) == props
    })
}

async fn one_binding(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    let kind = destination_kind(&kind)?;
    find_binding(&api, &vhost, &source, kind, &destination, &props)
        .map(|b| Json(shape::binding(&b)))
        .ok_or_else(ApiError::not_found)
}

async fn delete_binding(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
    _headers: HeaderMap,
) -> ApiResult<StatusCode> {
    caller.require_vhost(&api, &vhost)?;
    let kind = destination_kind(&kind)?;
    let binding = find_binding(&api, &vhost, &source, kind, &destination, &props).ok_or_else(ApiError::not_found)?;
    let resource = if kind == "queue" { ResourceKind::Queue } else { ResourceKind::Exchange };
    caller.require(&api, &vhost, Access::Write, resource, &destination)?;
    caller.require(&api, &vhost, Access::Read, ResourceKind::Exchange, &source)?;
    let target = if kind == "queue" { Destination::Queue(destination) } else { Destination::Exchange(destination) };
    api.broker.unbind(&vhost, 0, &binding.source, target, &binding.routing_key, &binding.argument_table)?;
    Ok(StatusCode::NO_CONTENT)
}
