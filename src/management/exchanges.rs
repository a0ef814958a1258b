//! Exchanges over HTTP: listings, one exchange, declare (PUT), delete, and
//! publishing a message (the default exchange is `amq.default` in URLs, or
//! an empty path segment).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::paging::{ListQuery, listing};
use super::queues::DeleteQuery;
use super::{Api, ApiError, ApiResult, Caller, JsonBody, check_short, json as shape};
use crate::access::{Access, ResourceKind};
use crate::broker::changes::Change;
use crate::broker::{GlobalStats, Message};
use crate::definitions::json_to_table;
use crate::protocol::BasicProperties;
use crate::protocol::method::{ExchangeDeclare, ExchangeDelete};

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/exchanges", get(all_exchanges))
        .route("/api/exchanges/{vhost}", get(vhost_exchanges))
        .route("/api/exchanges/{vhost}/{name}", get(one_exchange).put(put_exchange).delete(delete_exchange))
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
        // The default exchange has an empty name: an empty path segment.
        .route("/api/exchanges/{vhost}//publish", post(publish_default))
}

/// The default exchange is `amq.default` in URLs.
pub(super) fn exchange_name(name: &str) -> &str {
    if name == "amq.default" { "" } else { name }
}

async fn publish_default(
    state: State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    body: JsonBody<PublishBody>,
) -> ApiResult<Json<Value>> {
    publish(state, caller, Path((vhost, String::new())), body).await
}

/// Message properties from the JSON a publish carries; text properties and
/// header names are AMQP short strings (at most 255 bytes).
fn properties_from_json(v: &Map<String, Value>) -> ApiResult<BasicProperties> {
    for (key, value) in v {
        if let Some(text) = value.as_str() {
            check_short(key, text)?;
        }
    }
    if let Some(headers) = v.get("headers").and_then(Value::as_object) {
        for key in headers.keys() {
            check_short("a header name", key)?;
        }
    }
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    Ok(BasicProperties {
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
    })
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
    JsonBody(body): JsonBody<ExchangeBody>,
) -> ApiResult<StatusCode> {
    caller.require_vhost(&api, &vhost)?;
    check_short("exchange name", &name)?;
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
    api.broker.change(Change::Exchange { vhost, method: declare.into() }).await?;
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
    let delete = ExchangeDelete {
        exchange: exchange_name(&name).to_string(),
        if_unused: q.if_unused.as_deref() == Some("true"),
        ..Default::default()
    };
    api.broker.change(Change::Exchange { vhost, method: delete.into() }).await?;
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
    JsonBody(body): JsonBody<PublishBody>,
) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    let exchange = exchange_name(&name);
    let resource = if exchange.is_empty() { "amq.default" } else { exchange };
    caller.require(&api, &vhost, Access::Write, ResourceKind::Exchange, resource)?;
    check_short("routing_key", &body.routing_key)?;
    if !api.broker.exchange_exists(&vhost, exchange) {
        return Err(ApiError::not_found());
    }
    caller.require_topic(&api, &vhost, exchange, &body.routing_key, true)?;
    let payload = match body.payload_encoding.as_str() {
        "string" => bytes::Bytes::from(body.payload.into_bytes()),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(body.payload.as_bytes())
            .map(bytes::Bytes::from)
            .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?,
        other => return Err(ApiError::bad_request(format!("unknown payload_encoding '{other}'"))),
    };
    let mut props = properties_from_json(&body.properties)?;
    // As AMQP publishes are checked: no impersonation, a valid expiration.
    if let Some(user_id) = props.user_id.as_deref()
        && user_id != caller.name
    {
        return Err(ApiError::bad_request(format!(
            "user_id property set to '{user_id}' but authenticated user was '{}'",
            caller.name
        )));
    }
    let expiration_ms = match props.expiration.as_deref() {
        None => None,
        Some(e) => Some(e.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid expiration '{e}'")))?),
    };
    // BCC selects queues but never travels with the message.
    let headers = props.headers.clone();
    if let Some(h) = props.headers.as_mut() {
        h.0.retain(|(k, _)| k != "BCC");
    }
    let message = Message {
        exchange: exchange.to_string(),
        routing_key: body.routing_key,
        persistent: props.delivery_mode == Some(2),
        expiration_ms,
        priority: props.priority.unwrap_or(0),
        properties: props.to_bytes(),
        body: payload,
    };
    let stats = api.broker.stats();
    GlobalStats::add(&stats.received, 1);
    let routed = api.broker.publish(&vhost, exchange, headers.as_ref(), std::sync::Arc::new(message))?;
    GlobalStats::add(if routed.routed { &stats.routed } else { &stats.unroutable_dropped }, 1);
    Ok(Json(json!({"routed": routed.routed})))
}
