//! Users, permissions and topic permissions over HTTP; every endpoint
//! needs the `administrator` tag, as in RabbitMQ.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::settings::tag_list;
use super::{Api, ApiError, ApiResult, Caller, JsonBody, change_refused};
use crate::access::{Permission, TopicPermission, User};
use crate::broker::changes::{Change, SettingChange};

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/vhosts/{vhost}/permissions", get(vhost_permissions))
        .route("/api/vhosts/{vhost}/topic-permissions", get(vhost_topic_permissions))
        .route("/api/users", get(users))
        .route("/api/users/without-permissions", get(users_without_permissions))
        .route("/api/users/bulk-delete", axum::routing::post(delete_users))
        .route("/api/users/{user}", get(one_user).put(put_user).delete(delete_user))
        .route("/api/users/{user}/permissions", get(user_permissions))
        .route("/api/users/{user}/topic-permissions", get(user_topic_permissions))
        .route("/api/permissions", get(permissions))
        .route("/api/permissions/{vhost}/{user}", get(one_permission).put(put_permission).delete(delete_permission))
        .route("/api/topic-permissions", get(topic_permissions))
        .route("/api/user-limits", get(user_limits))
        .route("/api/user-limits/{user}", get(one_user_limits))
        .route("/api/user-limits/{user}/{name}", axum::routing::put(put_user_limit).delete(delete_user_limit))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(one_topic_permission).put(put_topic_permission).delete(delete_topic_permission),
        )
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
    JsonBody(body): JsonBody<UserBody>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let access = api.broker.access();
    let existing = access.user(&user);
    let existed = existing.is_some();
    // No `tags` keeps a user's tags (a password change must not drop them).
    let tags = match (&body.tags, existing) {
        (None, Some(u)) => u.tags,
        _ => tag_list(body.tags.as_ref()),
    };
    let change = |setting: SettingChange| api.broker.change(Change::Setting(setting));
    match (body.password, body.password_hash) {
        (Some(password), _) => {
            if existed {
                let password_hash = crate::access::password::hash(&password);
                change(SettingChange::ChangePassword { name: user.clone(), password_hash }).await?;
                change(SettingChange::SetUserTags { name: user, tags }).await?;
            } else {
                change(SettingChange::AddUser { user: User::new(&user, &password, tags) }).await?;
            }
        }
        (None, Some(hash)) => {
            let hashing_algorithm =
                body.hashing_algorithm.unwrap_or_else(|| crate::access::password::SHA256.to_string());
            // A user replaced by hash keeps the limits it had.
            let limits = access.user_limits(&user);
            let user = User { name: user, password_hash: hash, hashing_algorithm, tags, limits };
            change(SettingChange::PutUser { user }).await?;
        }
        (None, None) if existed => change(SettingChange::SetUserTags { name: user, tags }).await?,
        (None, None) => return Err(ApiError::bad_request("password or password_hash must be set")),
    }
    Ok(if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED })
}

async fn delete_user(State(api): State<Api>, caller: Caller, Path(user): Path<String>) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let delete = SettingChange::DeleteUser { name: user };
    api.broker.change(Change::Setting(delete)).await.map_err(change_refused)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct BulkDelete {
    users: Vec<String>,
}

/// POST /api/users/bulk-delete: deletes each named user (missing ones are skipped).
async fn delete_users(
    State(api): State<Api>,
    caller: Caller,
    JsonBody(body): JsonBody<BulkDelete>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    for user in body.users {
        // A missing user is skipped; a cluster without a majority is not.
        match api.broker.change(Change::Setting(SettingChange::DeleteUser { name: user })).await {
            Err(e) if !crate::broker::changes::is_not_found(&e) => return Err(e.into()),
            _ => {}
        }
    }
    Ok(StatusCode::NO_CONTENT)
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
    JsonBody(body): JsonBody<PermissionBody>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if !api.broker.vhost_exists(&vhost) || api.broker.access().user(&user).is_none() {
        return Err(ApiError::bad_request(format!("vhost '{vhost}' or user '{user}' does not exist")));
    }
    let access = api.broker.access();
    let existed = access.permissions().iter().any(|p| p.vhost == vhost && p.user == user);
    let permission = Permission { user, vhost, configure: body.configure, write: body.write, read: body.read };
    api.broker.change(Change::Setting(SettingChange::SetPermissions { permission })).await?;
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
    api.broker.change(Change::Setting(SettingChange::ClearPermissions { user, vhost })).await?;
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
    JsonBody(body): JsonBody<TopicBody>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if !api.broker.vhost_exists(&vhost) {
        return Err(ApiError::bad_request(format!("vhost '{vhost}' does not exist")));
    }
    let permission = TopicPermission { user, vhost, exchange: body.exchange, write: body.write, read: body.read };
    api.broker.change(Change::Setting(SettingChange::SetTopicPermissions { permission })).await?;
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
        let clear = SettingChange::ClearTopicPermissions { user: user.clone(), vhost: vhost.clone(), exchange };
        api.broker.change(Change::Setting(clear)).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

fn user_limits_json(user: &crate::access::User) -> Value {
    json!({"user": user.name, "value": user.limits})
}

/// GET /api/user-limits: the users that have limits, with them.
async fn user_limits(State(api): State<Api>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let users = api.broker.access().users();
    Ok(Json(users.iter().filter(|u| !u.limits.is_empty()).map(user_limits_json).collect()))
}

async fn one_user_limits(State(api): State<Api>, caller: Caller, Path(user): Path<String>) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let user = api.broker.access().user(&user).ok_or_else(ApiError::not_found)?;
    Ok(Json(if user.limits.is_empty() { json!([]) } else { json!([user_limits_json(&user)]) }))
}

/// PUT /api/user-limits/{user}/{max-connections|max-channels}.
async fn put_user_limit(
    State(api): State<Api>,
    caller: Caller,
    Path((user, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<super::settings::LimitBody>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let mut definition = serde_json::Map::new();
    definition.insert(name, json!(body.value));
    let limits = crate::access::UserLimits::parse(&definition).map_err(ApiError::bad_request)?;
    api.broker.change(Change::Setting(SettingChange::SetUserLimits { user, limits })).await.map_err(change_refused)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_user_limit(
    State(api): State<Api>,
    caller: Caller,
    Path((user, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    api.broker.change(Change::Setting(SettingChange::ClearUserLimits { user, name })).await.map_err(change_refused)?;
    Ok(StatusCode::NO_CONTENT)
}
