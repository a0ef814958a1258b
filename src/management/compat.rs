//! Endpoints RabbitMQ's tools probe that answer with Warren's state even
//! where Warren has nothing to show: the cluster name, extensions, feature
//! flags, runtime parameters (vhost limits are shown under
//! /api/vhost-limits), the auth settings, and queue listings "with details".

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::paging::ListQuery;
use super::{Api, ApiResult, Caller, node_name};

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/cluster-name", get(cluster_name))
        .route("/api/extensions", get(|_caller: Caller| async { Json(json!([])) }))
        .route("/api/feature-flags", get(|_caller: Caller| async { Json(json!([])) }))
        .route("/api/deprecated-features", get(|_caller: Caller| async { Json(json!([])) }))
        .route("/api/deprecated-features/used", get(|_caller: Caller| async { Json(json!([])) }))
        .route("/api/global-parameters", get(|_caller: Caller| async { Json(json!([])) }))
        .route("/api/parameters", get(|_caller: Caller| async { Json(json!([])) }))
        .route("/api/parameters/{component}", get(|_caller: Caller, Path(_c): Path<String>| async { Json(json!([])) }))
        .route(
            "/api/parameters/{component}/{vhost}",
            get(|_caller: Caller, Path(_p): Path<(String, String)>| async { Json(json!([])) }),
        )
        .route(
            "/api/auth",
            get(|| async { Json(json!({"oauth_enabled": false, "oauth_client_id": "", "oauth_provider_url": ""})) }),
        )
        // A literal segment: it wins over /api/queues/{vhost}.
        .route("/api/queues/detailed", get(detailed_queues))
}

async fn cluster_name(_caller: Caller) -> Json<Value> {
    Json(json!({"name": node_name()}))
}

/// The queues with the extra figures RabbitMQ's detailed listing adds
/// (none apply to Warren's queues beyond what the plain listing has).
async fn detailed_queues(state: State<Api>, caller: Caller, query: Query<ListQuery>) -> ApiResult<Json<Value>> {
    super::queues::all_queues(state, caller, query).await
}
