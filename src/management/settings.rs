//! The access model and settings over HTTP: vhosts, users, permissions,
//! topic permissions, policies and operator policies, vhost limits and
//! definitions. Reading users and changing anything but policies needs
//! the `administrator` tag, as in RabbitMQ.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Api, ApiError, ApiResult, Caller};
use crate::access::{Permission, TopicPermission};
use crate::broker::{Policy, VhostInfo, VhostLimits};

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/vhosts", get(vhosts))
        .route("/api/vhosts/{vhost}", get(one_vhost).put(put_vhost).delete(delete_vhost))
        .route("/api/vhosts/{vhost}/permissions", get(vhost_permissions))
        .route("/api/vhosts/{vhost}/topic-permissions", get(vhost_topic_permissions))
        .route("/api/users", get(users))
        .route("/api/users/without-permissions", get(users_without_permissions))
        .route("/api/users/{user}", get(one_user).put(put_user).delete(delete_user))
        .route("/api/users/{user}/permissions", get(user_permissions))
        .route("/api/users/{user}/topic-permissions", get(user_topic_permissions))
        .route("/api/permissions", get(permissions))
        .route("/api/permissions/{vhost}/{user}", get(one_permission).put(put_permission).delete(delete_permission))
        .route("/api/topic-permissions", get(topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(one_topic_permission).put(put_topic_permission).delete(delete_topic_permission),
        )
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

fn tag_list(tags: Option<&Value>) -> Vec<String> {
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
    body: Option<Json<VhostBody>>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let body = body.map(|b| b.0).unwrap_or_default();
    let existed = api.broker.vhost_exists(&vhost);
    let info = VhostInfo {
        name: vhost,
        description: body.description.unwrap_or_default(),
        tags: tag_list(body.tags.as_ref()),
        default_queue_type: body.default_queue_type.filter(|t| !t.is_empty()),
    };
    let name = info.name.clone();
    api.broker.put_vhost(info).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if existed {
        return Ok(StatusCode::NO_CONTENT);
    }
    // As RabbitMQ: whoever creates a vhost over HTTP may use it.
    api.broker
        .access()
        .set_permissions(&caller.name, &name, ".*", ".*", ".*")
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(StatusCode::CREATED)
}

async fn delete_vhost(State(api): State<Api>, caller: Caller, Path(vhost): Path<String>) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    match api.broker.delete_vhost(&vhost) {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(crate::broker::VhostError::NoVhost(_)) => Err(ApiError::not_found()),
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    }
}

fn user_json(u: &crate::access::User) -> Value {
    json!({"name": u.name, "password_hash": u.password_hash, "hashing_algorithm": u.hashing_algorithm,
           "tags": u.tags, "limits": {}})
}

async fn users(State(api): State<Api>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(Value::Array(api.broker.access().users().iter().map(user_json).collect())))
}

async fn users_without_permissions(State(api): State<Api>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let access = api.broker.access();
    let with: Vec<String> = access.permissions().into_iter().map(|p| p.user).collect();
    Ok(Json(Value::Array(access.users().iter().filter(|u| !with.contains(&u.name)).map(user_json).collect())))
}

async fn one_user(State(api): State<Api>, caller: Caller, Path(user): Path<String>) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    api.broker.access().user(&user).map(|u| Json(user_json(&u))).ok_or_else(ApiError::not_found)
}

#[derive(Debug, Default, Deserialize)]
struct UserBody {
    password: Option<String>,
    password_hash: Option<String>,
    hashing_algorithm: Option<String>,
    #[serde(default)]
    tags: Option<Value>,
}

/// PUT /api/users/{user}: a password, or a hash as RabbitMQ stores it.
async fn put_user(
    State(api): State<Api>,
    caller: Caller,
    Path(user): Path<String>,
    Json(body): Json<UserBody>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let access = api.broker.access();
    let existed = access.user(&user).is_some();
    let tags = tag_list(body.tags.as_ref());
    let bad = |e: crate::access::AccessError| ApiError::bad_request(e.to_string());
    match (body.password, body.password_hash) {
        (Some(password), _) => {
            if existed {
                access.change_password(&user, &password).map_err(bad)?;
                access.set_user_tags(&user, tags).map_err(bad)?;
            } else {
                access.add_user(&user, &password, tags).map_err(bad)?;
            }
        }
        (None, Some(hash)) => {
            let hashing_algorithm =
                body.hashing_algorithm.unwrap_or_else(|| crate::access::password::SHA256.to_string());
            access
                .import_user(crate::access::User { name: user, password_hash: hash, hashing_algorithm, tags })
                .map_err(bad)?;
        }
        (None, None) if existed => access.set_user_tags(&user, tags).map_err(bad)?,
        (None, None) => return Err(ApiError::bad_request("password or password_hash must be set")),
    }
    Ok(if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED })
}

async fn delete_user(State(api): State<Api>, caller: Caller, Path(user): Path<String>) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    match api.broker.access().delete_user(&user) {
        Ok(()) => {
            api.broker.close_connections_of(&user, &format!("user '{user}' is deleted"));
            Ok(StatusCode::NO_CONTENT)
        }
        Err(crate::access::AccessError::NoUser(_)) => Err(ApiError::not_found()),
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    }
}

fn permission_json(p: &Permission) -> Value {
    json!({"user": p.user, "vhost": p.vhost, "configure": p.configure, "write": p.write, "read": p.read})
}

fn topic_json(t: &TopicPermission) -> Value {
    json!({"user": t.user, "vhost": t.vhost, "exchange": t.exchange, "write": t.write, "read": t.read})
}

fn permissions_where(api: &Api, keep: impl Fn(&Permission) -> bool) -> Json<Value> {
    Json(Value::Array(api.broker.access().permissions().iter().filter(|p| keep(p)).map(permission_json).collect()))
}

fn topics_where(api: &Api, keep: impl Fn(&TopicPermission) -> bool) -> Json<Value> {
    Json(Value::Array(api.broker.access().topic_permissions().iter().filter(|t| keep(t)).map(topic_json).collect()))
}

async fn permissions(State(api): State<Api>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(permissions_where(&api, |_| true))
}

async fn vhost_permissions(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    caller.require_vhost(&api, &vhost)?;
    Ok(permissions_where(&api, |p| p.vhost == vhost))
}

async fn user_permissions(State(api): State<Api>, caller: Caller, Path(user): Path<String>) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    if api.broker.access().user(&user).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(permissions_where(&api, |p| p.user == user))
}

async fn one_permission(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let found = api.broker.access().permissions().into_iter().find(|p| p.vhost == vhost && p.user == user);
    found.map(|p| Json(permission_json(&p))).ok_or_else(ApiError::not_found)
}

#[derive(Debug, Deserialize)]
struct PermissionBody {
    configure: String,
    write: String,
    read: String,
}

async fn put_permission(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
    Json(body): Json<PermissionBody>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if !api.broker.vhost_exists(&vhost) || api.broker.access().user(&user).is_none() {
        return Err(ApiError::bad_request(format!("vhost '{vhost}' or user '{user}' does not exist")));
    }
    let access = api.broker.access();
    let existed = access.permissions().iter().any(|p| p.vhost == vhost && p.user == user);
    access
        .set_permissions(&user, &vhost, &body.configure, &body.write, &body.read)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED })
}

async fn delete_permission(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let access = api.broker.access();
    if !access.permissions().iter().any(|p| p.vhost == vhost && p.user == user) {
        return Err(ApiError::not_found());
    }
    access.clear_permissions(&user, &vhost).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn topic_permissions(State(api): State<Api>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(topics_where(&api, |_| true))
}

async fn vhost_topic_permissions(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(topics_where(&api, |t| t.vhost == vhost))
}

async fn user_topic_permissions(
    State(api): State<Api>,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(topics_where(&api, |t| t.user == user))
}

async fn one_topic_permission(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let found: Vec<Value> = api
        .broker
        .access()
        .topic_permissions()
        .iter()
        .filter(|t| t.vhost == vhost && t.user == user)
        .map(topic_json)
        .collect();
    if found.is_empty() { Err(ApiError::not_found()) } else { Ok(Json(Value::Array(found))) }
}

#[derive(Debug, Deserialize)]
struct TopicBody {
    exchange: String,
    write: String,
    read: String,
}

async fn put_topic_permission(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
    Json(body): Json<TopicBody>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if !api.broker.vhost_exists(&vhost) {
        return Err(ApiError::bad_request(format!("vhost '{vhost}' does not exist")));
    }
    let t = TopicPermission { user, vhost, exchange: body.exchange, write: body.write, read: body.read };
    api.broker.access().set_topic_permissions(t).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(StatusCode::CREATED)
}

async fn delete_topic_permission(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let access = api.broker.access();
    let exchanges: Vec<String> = access
        .topic_permissions()
        .into_iter()
        .filter(|t| t.vhost == vhost && t.user == user)
        .map(|t| t.exchange)
        .collect();
    if exchanges.is_empty() {
        return Err(ApiError::not_found());
    }
    for exchange in exchanges {
        access.clear_topic_permissions(&user, &vhost, &exchange).map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    Ok(StatusCode::NO_CONTENT)
}

fn policy_json(p: &Policy) -> Value {
    json!({"vhost": p.vhost, "name": p.name, "pattern": p.pattern, "apply-to": p.apply_to,
           "definition": p.definition, "priority": p.priority})
}

/// Policies may be read by whoever sees the vhost, and changed by
/// `policymaker`s and administrators.
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
    if operator {
        caller.require_admin()?;
    } else {
        require_policymaker(&caller)?;
    }
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
    Json(body): Json<PolicyBody>,
    operator: bool,
) -> ApiResult<StatusCode> {
    if operator {
        caller.require_admin()?;
    } else {
        require_policymaker(&caller)?;
    }
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
    api.broker.set_policy(policy, operator).map_err(ApiError::bad_request)?;
    Ok(if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED })
}

async fn delete_policy(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    operator: bool,
) -> ApiResult<StatusCode> {
    if operator {
        caller.require_admin()?;
    } else {
        require_policymaker(&caller)?;
    }
    caller.require_vhost(&api, &vhost)?;
    api.broker.clear_policy(&vhost, &name, operator).map_err(|_| ApiError::not_found())?;
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

#[derive(Debug, Deserialize)]
struct LimitBody {
    value: i64,
}

/// PUT /api/vhost-limits/{vhost}/{max-connections|max-queues}: one limit,
/// the other kept.
async fn put_vhost_limit(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    Json(body): Json<LimitBody>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let mut limits = api.broker.vhost_limits(&vhost).ok_or_else(ApiError::not_found)?;
    match name.as_str() {
        "max-connections" => limits.max_connections = Some(body.value),
        "max-queues" => limits.max_queues = Some(body.value),
        other => return Err(ApiError::bad_request(format!("unknown limit '{other}'"))),
    }
    api.broker.set_vhost_limits(&vhost, limits).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_vhost_limit(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let mut limits = api.broker.vhost_limits(&vhost).ok_or_else(ApiError::not_found)?;
    match name.as_str() {
        "max-connections" => limits.max_connections = None,
        "max-queues" => limits.max_queues = None,
        other => return Err(ApiError::bad_request(format!("unknown limit '{other}'"))),
    }
    api.broker.set_vhost_limits(&vhost, limits).map_err(|e| ApiError::bad_request(e.to_string()))?;
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

async fn import(State(api): State<Api>, caller: Caller, body: String) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    crate::definitions::import(&api.broker, &body).map_err(ApiError::bad_request)?;
    Ok(StatusCode::NO_CONTENT)
}
