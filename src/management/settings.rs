//! Settings over HTTP: vhosts, policies and operator policies, vhost
//! limits and definitions. Changing anything but policies needs the
//! `administrator` tag, as in RabbitMQ.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Api, ApiError, ApiResult, Caller, JsonBody, JsonOrEmpty};
use crate::broker::changes::{Change, SettingChange};
use crate::broker::{Policy, VhostInfo, VhostLimits};

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/vhosts", get(vhosts))
        .route("/api/vhosts/{vhost}", get(one_vhost).put(put_vhost).delete(delete_vhost))
        .route("/api/policies", get(|s, c| policies(s, c, None, false)))
        .route("/api/policies/{vhost}", get(|s, c, Path(v): Path<String>| policies(s, c, Some(v), false)))
        .route(
            "/api/policies/{vhost}/{name}",
            get(|s, c, p| one_policy(s, c, p, false))
                .put(|s, c, p, b| put_policy(s, c, p, b, false))
                .delete(|s, c, p| delete_policy(s, c, p, false)),
        )
        .route("/api/operator-policies", get(|s, c| policies(s, c, None, true)))
        .route("/api/operator-policies/{vhost}", get(|s, c, Path(v): Path<String>| policies(s, c, Some(v), true)))
        .route(
            "/api/operator-policies/{vhost}/{name}",
            get(|s, c, p| one_policy(s, c, p, true))
                .put(|s, c, p, b| put_policy(s, c, p, b, true))
                .delete(|s, c, p| delete_policy(s, c, p, true)),
        )
        .route("/api/vhost-limits", get(vhost_limits))
        .route("/api/vhost-limits/{vhost}", get(one_vhost_limits))
        .route("/api/vhost-limits/{vhost}/{name}", axum::routing::put(put_vhost_limit).delete(delete_vhost_limit))
        .route("/api/definitions", get(export).post(import))
        .route("/api/definitions/{vhost}", get(export_vhost))
}

fn vhost_json(api: &Api, row: &crate::broker::VhostRow) -> Value {
    let snapshot = api.broker.snapshot();
    let (ready, unacked) = snapshot
        .queues
        .iter()
        .filter(|q| *q.vhost == *row.info.name)
        .fold((0, 0), |(r, u), q| (r + q.ready, u + q.unacked));
    json!({
        "name": row.info.name,
        "description": row.info.description,
        "tags": row.info.tags,
        "default_queue_type": row.info.default_queue_type.as_deref().unwrap_or("classic"),
        "metadata": {"description": row.info.description, "tags": row.info.tags,
                     "default_queue_type": row.info.default_queue_type.as_deref().unwrap_or("classic")},
        "tracing": false,
        "protected_from_deletion": false,
        "cluster_state": {super::node_name(): "running"},
        "messages": row.messages,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "messages_details": super::json::details(0.0),
        "recv_oct": 0,
        "send_oct": 0,
    })
}

async fn vhosts(State(api): State<Api>, caller: Caller) -> Json<Value> {
    let rows = api.broker.list_vhosts();
    Json(Value::Array(
        rows.iter().filter(|v| caller.sees_vhost(&api, &v.info.name)).map(|v| vhost_json(&api, v)).collect(),
    ))
}

async fn one_vhost(State(api): State<Api>, caller: Caller, Path(vhost): Path<String>) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    api.broker
        .list_vhosts()
        .iter()
        .find(|v| v.info.name == vhost)
        .map(|v| Json(vhost_json(&api, v)))
        .ok_or_else(ApiError::not_found)
}

#[derive(Debug, Default, Deserialize)]
struct VhostBody {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tags: Option<Value>,
    #[serde(default)]
    default_queue_type: Option<String>,
}

pub(super) fn tag_list(tags: Option<&Value>) -> Vec<String> {
    match tags {
        Some(Value::String(s)) => s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

async fn put_vhost(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<VhostBody>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let existed = api.broker.vhost_exists(&vhost);
    let info = VhostInfo {
        name: vhost,
        description: body.description.unwrap_or_default(),
        tags: tag_list(body.tags.as_ref()),
        default_queue_type: body.default_queue_type.filter(|t| !t.is_empty()),
    };
    let name = info.name.clone();
    api.broker.change(Change::VhostPut(info)).await?;
    if existed {
        return Ok(StatusCode::NO_CONTENT);
    }
    // As RabbitMQ: whoever creates a vhost over HTTP may use it.
    let permission = crate::access::Permission {
        user: caller.name.clone(),
        vhost: name,
        configure: ".*".into(),
        write: ".*".into(),
        read: ".*".into(),
    };
    api.broker.change(Change::Setting(SettingChange::SetPermissions { permission })).await?;
    Ok(StatusCode::CREATED)
}

async fn delete_vhost(State(api): State<Api>, caller: Caller, Path(vhost): Path<String>) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    api.broker.change(Change::VhostDelete(vhost)).await.map_err(super::change_refused)?;
    Ok(StatusCode::NO_CONTENT)
}

fn policy_json(p: &Policy) -> Value {
    json!({"vhost": p.vhost, "name": p.name, "pattern": p.pattern, "apply-to": p.apply_to,
           "definition": p.definition, "priority": p.priority})
}

/// Policies may be read by whoever sees the vhost, and changed by
/// `policymaker`s and administrators.
fn require_policy_access(caller: &Caller, operator: bool) -> ApiResult<()> {
    if operator { caller.require_admin() } else { require_policymaker(caller) }
}

fn require_policymaker(caller: &Caller) -> ApiResult<()> {
    if caller.is_admin() || caller.has_tag("policymaker") {
        Ok(())
    } else {
        Err(ApiError::not_authorised("Not policymaker user"))
    }
}

async fn policies(
    State(api): State<Api>,
    caller: Caller,
    vhost: Option<String>,
    operator: bool,
) -> ApiResult<Json<Value>> {
    if let Some(v) = &vhost {
        caller.require_vhost(&api, v)?;
    }
    let list = api.broker.policies(vhost.as_deref(), operator);
    Ok(Json(Value::Array(list.iter().filter(|p| caller.sees_vhost(&api, &p.vhost)).map(policy_json).collect())))
}

async fn one_policy(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    operator: bool,
) -> ApiResult<Json<Value>> {
    require_policy_access(&caller, operator)?;
    caller.require_vhost(&api, &vhost)?;
    let found = api.broker.policies(Some(&vhost), operator).into_iter().find(|p| p.name == name);
    found.map(|p| Json(policy_json(&p))).ok_or_else(ApiError::not_found)
}

#[derive(Debug, Deserialize)]
struct PolicyBody {
    pattern: String,
    #[serde(rename = "apply-to", default = "all")]
    apply_to: String,
    definition: Map<String, Value>,
    #[serde(default)]
    priority: i64,
}

fn all() -> String {
    "all".into()
}

async fn put_policy(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<PolicyBody>,
    operator: bool,
) -> ApiResult<StatusCode> {
    require_policy_access(&caller, operator)?;
    caller.require_vhost(&api, &vhost)?;
    let existed = api.broker.policies(Some(&vhost), operator).iter().any(|p| p.name == name);
    let policy = Policy {
        vhost,
        name,
        pattern: body.pattern,
        apply_to: body.apply_to,
        definition: body.definition,
        priority: body.priority,
    };
    api.broker.change(Change::Setting(SettingChange::SetPolicy { policy, operator })).await?;
    Ok(if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED })
}

async fn delete_policy(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    operator: bool,
) -> ApiResult<StatusCode> {
    require_policy_access(&caller, operator)?;
    caller.require_vhost(&api, &vhost)?;
    let clear = SettingChange::ClearPolicy { vhost, name, operator };
    api.broker.change(Change::Setting(clear)).await.map_err(|e| match e.code {
        crate::protocol::reply::INTERNAL_ERROR => ApiError::from(e),
        _ => ApiError::not_found(),
    })?;
    Ok(StatusCode::NO_CONTENT)
}

fn limits_json(vhost: &str, limits: &VhostLimits) -> Value {
    json!({"vhost": vhost, "value": limits})
}

async fn vhost_limits(State(api): State<Api>, caller: Caller) -> Json<Value> {
    let rows = api.broker.list_vhosts();
    Json(Value::Array(
        rows.iter()
            .filter(|v| !v.limits.is_empty() && caller.sees_vhost(&api, &v.info.name))
            .map(|v| limits_json(&v.info.name, &v.limits))
            .collect(),
    ))
}

async fn one_vhost_limits(State(api): State<Api>, caller: Caller, Path(vhost): Path<String>) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    let limits = api.broker.vhost_limits(&vhost).ok_or_else(ApiError::not_found)?;
    Ok(Json(if limits.is_empty() { json!([]) } else { json!([limits_json(&vhost, &limits)]) }))
}

/// The body of a PUT of one vhost or user limit.
#[derive(Debug, Deserialize)]
pub(super) struct LimitBody {
    pub value: i64,
}

/// PUT /api/vhost-limits/{vhost}/{max-connections|max-queues}: one limit,
/// the other kept.
async fn put_vhost_limit(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<LimitBody>,
) -> ApiResult<StatusCode> {
    change_limit(&api, &caller, &vhost, &name, Some(body.value)).await
}

async fn delete_vhost_limit(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    change_limit(&api, &caller, &vhost, &name, None).await
}

/// Sets (or, with None, removes) one limit of a vhost, keeping the other.
async fn change_limit(
    api: &Api,
    caller: &Caller,
    vhost: &str,
    name: &str,
    value: Option<i64>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let mut limits = api.broker.vhost_limits(vhost).ok_or_else(ApiError::not_found)?;
    match name {
        "max-connections" => limits.max_connections = value,
        "max-queues" => limits.max_queues = value,
        other => return Err(ApiError::bad_request(format!("unknown limit '{other}'"))),
    }
    let set = SettingChange::SetVhostLimits { vhost: vhost.to_string(), limits };
    api.broker.change(Change::Setting(set)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn export(State(api): State<Api>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(crate::definitions::export(&api.broker)))
}

/// The definitions of one vhost, without users, vhosts and permissions (as RabbitMQ).
async fn export_vhost(State(api): State<Api>, caller: Caller, Path(vhost): Path<String>) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    caller.require_vhost(&api, &vhost)?;
    let all = crate::definitions::export(&api.broker);
    let mut out = Map::new();
    for key in ["rabbit_version", "rabbitmq_version", "product_name", "product_version"] {
        out.insert(key.into(), all[key].clone());
    }
    for key in ["parameters", "policies", "queues", "exchanges", "bindings"] {
        let items: Vec<Value> = all[key]
            .as_array()
            .map(|a| a.iter().filter(|i| i["vhost"] == vhost.as_str()).cloned().collect())
            .unwrap_or_default();
        out.insert(key.into(), Value::Array(items));
    }
    Ok(Json(Value::Object(out)))
}

async fn import(
    State(api): State<Api>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    body: String,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    // JSON only, as RabbitMQ: a cross-site form (text/plain) cannot post here.
    let kind = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !kind.starts_with("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "definitions must be posted as application/json",
        ));
    }
    crate::definitions::import(&api.broker, &body).map_err(ApiError::bad_request)?;
    Ok(StatusCode::NO_CONTENT)
}
