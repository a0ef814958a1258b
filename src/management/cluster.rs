//! The cluster as the HTTP API shows it: /api/nodes (this node and every
//! configured peer), /api/metadata-store (the metadata group: its
//! leader, voters and how far this node has applied its log, as
//! `rabbitmq-diagnostics metadata_store_status` shows Khepri's), a quorum
//! queue's members' Raft figures (/api/queues/quorum/VHOST/NAME/status,
//! as `rabbitmq-queues quorum_status`), the `node-is-quorum-critical`
//! health check, and changes to quorum queues' members and leaders
//! (RabbitMQ's `replicas/add`, `replicas/delete`, `grow`, `shrink` and
//! `rebalance/queues`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::cluster::member_status;
use crate::cluster::membership::{self, Refused, Selection};
use crate::cluster::quorum::QueueGroups;

use super::overview::node_json;
use super::{Api, ApiError, ApiResult, Caller, JsonBody, JsonOrEmpty};

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{node}", get(node))
        .route("/api/metadata-store", get(metadata_store))
        .route("/api/queues/quorum/{vhost}/{name}/status", get(quorum_status))
        .route("/api/health/checks/node-is-quorum-critical", get(quorum_critical))
        .route("/api/queues/quorum/{vhost}/{name}/replicas/{action}", post(change_replica).delete(change_replica))
        .route("/api/queues/quorum/replicas/on/{node}/grow", post(grow))
        .route("/api/queues/quorum/replicas/on/{node}/shrink", delete(shrink))
        .route("/api/rebalance/queues", post(rebalance))
}

/// How long a member removal is waited for over HTTP.
const REMOVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(serde::Deserialize)]
struct NodeBody {
    node: String,
}

#[derive(serde::Deserialize, Default)]
struct GrowBody {
    strategy: Option<String>,
    vhost_pattern: Option<String>,
    queue_pattern: Option<String>,
}

/// The quorum queue groups of a node of a cluster; 400 on a single node.
fn cluster_queues(api: &Api) -> ApiResult<&QueueGroups> {
    api.queues.as_deref().ok_or_else(|| {
        ApiError::bad_request("this node is not in a cluster: its quorum queues have one member, this node")
    })
}

fn refused(refused: Refused) -> ApiError {
    if refused.missing {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", refused.reason);
    }
    ApiError::bad_request(refused.reason)
}

/// `POST .../replicas/add` adds a member on `node`, answered once the
/// change is committed (the member catches up in the background:
/// quorum_status shows it); `DELETE .../replicas/delete` removes one,
/// answered once the group no longer has it.
async fn change_replica(
    State(api): State<Api>,
    caller: Caller,
    method: axum::http::Method,
    Path((vhost, name, action)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<NodeBody>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let queues = cluster_queues(&api)?;
    let changed = match (method, action.as_str()) {
        (axum::http::Method::POST, "add") => membership::add_member(queues, &vhost, &name, &body.node, None).await,
        (axum::http::Method::DELETE, "delete") => {
            membership::delete_member(queues, &vhost, &name, &body.node, REMOVE_WITHIN).await
        }
        _ => return Err(ApiError::not_found()),
    };
    changed.map_err(refused)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn grow(
    State(api): State<Api>,
    caller: Caller,
    Path(node): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<GrowBody>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let queues = cluster_queues(&api)?;
    let even = match body.strategy.as_deref().unwrap_or("all") {
        "all" => false,
        "even" => true,
        other => return Err(ApiError::bad_request(format!("strategy '{other}' is neither 'all' nor 'even'"))),
    };
    let selection =
        Selection::new(body.vhost_pattern.as_deref().unwrap_or(".*"), body.queue_pattern.as_deref().unwrap_or(".*"))
            .map_err(refused)?;
    let outcomes = membership::grow(queues, &node, even, &selection).await.map_err(refused)?;
    Ok(Json(serde_json::to_value(outcomes).unwrap_or_default()))
}

async fn shrink(State(api): State<Api>, caller: Caller, Path(node): Path<String>) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let queues = cluster_queues(&api)?;
    let outcomes = membership::shrink(queues, &node, REMOVE_WITHIN).await;
    Ok(Json(serde_json::to_value(outcomes).unwrap_or_default()))
}

/// Spreads the quorum queues' leaders over the running nodes; a single
/// node has nothing to spread.
async fn rebalance(State(api): State<Api>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let Some(queues) = api.queues.as_deref() else { return Ok(Json(json!([]))) };
    let selection = Selection::new(".*", ".*").map_err(refused)?;
    Ok(Json(serde_json::to_value(crate::cluster::leaders::rebalance(queues, &selection).await).unwrap_or_default()))
}

/// Each member of a quorum queue with its Raft figures.
async fn quorum_status(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    match member_status::queue_status(&api.broker, api.queues.as_deref(), &vhost, &name).await {
        Ok(members) => Ok(Json(serde_json::to_value(members).unwrap_or_default())),
        Err(refused) if refused.missing => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", refused.reason)),
        Err(refused) => Err(ApiError::bad_request(refused.reason)),
    }
}

/// 503 when stopping this node would leave a quorum queue without a
/// majority of its members online, naming those queues.
async fn quorum_critical(State(api): State<Api>, _caller: Caller) -> ApiResult<Response> {
    let critical = api.queues.as_ref().map(|q| member_status::quorum_critical(q)).unwrap_or_default();
    if critical.is_empty() {
        return Ok(Json(json!({"status": "ok"})).into_response());
    }
    let body = json!({
        "status": "failed",
        "reason": "There are quorum queues that would lose their quorum if the target node is shut down",
        "queues": critical,
    });
    Ok((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response())
}

/// This node, then each configured peer of a cluster: what this node
/// knows of a peer is whether it answered on the cluster port lately
/// (`running`) and its Raft id; its own figures are on its own API.
fn all_nodes(api: &Api) -> Vec<Value> {
    let mut nodes = vec![node_json(api)];
    if let Some(cluster) = &api.cluster {
        nodes[0]["raft_id"] = json!(cluster.identity.id);
        for peer in cluster.peers() {
            nodes.push(json!({
                "name": peer.name,
                "type": "disc",
                "running": peer.running,
                "raft_id": peer.id,
                "cluster_address": peer.addr,
            }));
        }
    }
    nodes
}

async fn nodes(State(api): State<Api>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_monitor()?;
    Ok(Json(Value::Array(all_nodes(&api))))
}

async fn node(State(api): State<Api>, caller: Caller, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    caller.require_monitor()?;
    all_nodes(&api).into_iter().find(|n| n["name"] == name.as_str()).map(Json).ok_or_else(ApiError::not_found)
}

/// The metadata group as this node sees it, members by node name. 404 on
/// a single node, which has no metadata group.
async fn metadata_store(State(api): State<Api>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_monitor()?;
    let (Some(cluster), Some(metadata)) = (&api.cluster, &api.metadata) else {
        return Err(ApiError::not_found());
    };
    let status = metadata.status();
    Ok(Json(json!({
        "node": cluster.identity.name,
        "formed": status.formed,
        "leader": status.leader,
        "members": status.members,
        "member_ids": status.member_ids,
        "term": status.term,
        "last_log_index": status.last_log_index,
        "committed": status.committed,
        "last_applied": status.last_applied,
    })))
}

/// A quorum queue's `leader`, `members` and `online` (node names), as
/// RabbitMQ's queue object has them. A replicated queue's leader is its
/// group's, as this node sees it (null while none is known, or when this
/// node is no member); a quorum queue of a single node has that node.
pub(super) fn add_members(api: &Api, row: &crate::broker::QueueRow, json: &mut Value) {
    if row.queue_type != "quorum" {
        return;
    }
    let node = super::node_name();
    let (leader, members, online) = match (&row.replica, &api.queues) {
        (Some(replica), Some(queues)) => match queues.status(replica.group) {
            Some(status) => (status.leader, status.members, status.online),
            None => (None, replica.members.iter().map(|m| m.name.clone()).collect(), Vec::new()),
        },
        _ => (Some(node.clone()), vec![node.clone()], vec![node]),
    };
    json["leader"] = json!(leader);
    json["members"] = json!(members);
    json["online"] = json!(online);
}
