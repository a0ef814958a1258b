//! Bindings over HTTP: listings (all, per vhost, from or to an exchange,
//! between two objects), one binding by its properties key, adding one
//! (201 with its URL in `Location`) and deleting one.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::exchanges::exchange_name;
use super::{Api, ApiError, ApiResult, Caller, JsonOrEmpty, check_short, json as shape};
use crate::access::{Access, ResourceKind};
use crate::broker::Destination;
use crate::broker::changes::Change;
use crate::definitions::json_to_table;
use crate::protocol::FieldTable;
use crate::protocol::method::{ExchangeBind, ExchangeUnbind, QueueBind, QueueUnbind};

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/exchanges/{vhost}/{name}/bindings/source", get(bindings_from))
        .route("/api/exchanges/{vhost}/{name}/bindings/destination", get(bindings_to))
        .route("/api/bindings", get(all_bindings))
        .route("/api/bindings/{vhost}", get(vhost_bindings))
        .route("/api/bindings/{vhost}/e/{source}/{kind}/{destination}", get(bindings_between).post(add_binding))
        .route("/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}", get(one_binding).delete(delete_binding))
        .route("/api/bindings/{vhost}/e//q/{destination}", get(default_bindings))
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

pub(super) fn bindings_where(
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
    JsonOrEmpty(body): JsonOrEmpty<BindingBody>,
) -> ApiResult<Response> {
    caller.require_vhost(&api, &vhost)?;
    let kind = destination_kind(&kind)?;
    check_short("routing_key", &body.routing_key)?;
    let (resource, target) = if kind == "queue" {
        (ResourceKind::Queue, Destination::Queue(destination.clone()))
    } else {
        (ResourceKind::Exchange, Destination::Exchange(destination.clone()))
    };
    caller.require(&api, &vhost, Access::Write, resource, &destination)?;
    caller.require(&api, &vhost, Access::Read, ResourceKind::Exchange, &source)?;
    caller.require_topic(&api, &vhost, exchange_name(&source), &body.routing_key, false)?;
    let arguments: FieldTable = json_to_table(&body.arguments);
    match target {
        // A binding to an exchange is shared by every node of a cluster.
        Destination::Exchange(destination) => {
            let bind = ExchangeBind {
                destination,
                source: exchange_name(&source).to_string(),
                routing_key: body.routing_key.clone(),
                arguments: arguments.clone(),
                ..Default::default()
            };
            api.broker.change(Change::Exchange { vhost: vhost.clone(), method: bind.into() }).await?;
        }
        Destination::Queue(queue) => {
            let bind = QueueBind {
                queue: queue.clone(),
                exchange: exchange_name(&source).to_string(),
                routing_key: body.routing_key.clone(),
                arguments: arguments.clone(),
                ..Default::default()
            };
            match api.broker.queue_change(&vhost, bind.into()) {
                // A binding to a replicated quorum queue is shared by every node.
                Some(change) => api.broker.change(change).await?,
                None => {
                    let target = Destination::Queue(queue);
                    api.broker.bind(&vhost, 0, exchange_name(&source), target, &body.routing_key, &arguments)?
                }
            }
        }
    }
    let key = shape::properties_key(&body.routing_key, &arguments);
    let mut response = StatusCode::CREATED.into_response();
    let location = format!(
        "/api/bindings/{}/e/{}/{}/{}/{key}",
        shape::encode_segment(&vhost),
        shape::encode_segment(&source),
        if kind == "queue" { "q" } else { "e" },
        shape::encode_segment(&destination)
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
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
    // Permissions first: a refused caller learns nothing of what exists.
    let resource = if kind == "queue" { ResourceKind::Queue } else { ResourceKind::Exchange };
    caller.require(&api, &vhost, Access::Write, resource, &destination)?;
    caller.require(&api, &vhost, Access::Read, ResourceKind::Exchange, &source)?;
    let binding = find_binding(&api, &vhost, &source, kind, &destination, &props).ok_or_else(ApiError::not_found)?;
    caller.require_topic(&api, &vhost, &binding.source, &binding.routing_key, false)?;
    if kind == "queue" {
        let unbind = QueueUnbind {
            queue: destination.clone(),
            exchange: binding.source.clone(),
            routing_key: binding.routing_key.clone(),
            arguments: binding.argument_table.clone(),
            ..Default::default()
        };
        match api.broker.queue_change(&vhost, unbind.into()) {
            Some(change) => api.broker.change(change).await?,
            None => {
                let target = Destination::Queue(destination);
                api.broker.unbind(&vhost, 0, &binding.source, target, &binding.routing_key, &binding.argument_table)?
            }
        }
    } else {
        let unbind = ExchangeUnbind {
            destination,
            source: binding.source.clone(),
            routing_key: binding.routing_key.clone(),
            arguments: binding.argument_table.clone(),
            ..Default::default()
        };
        api.broker.change(Change::Exchange { vhost, method: unbind.into() }).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
