//! The broker as a whole: /api/overview, /api/whoami, the
//! health checks, /api/aliveness-test, and the connection, channel and
//! consumer listings (DELETE on a connection closes it).

use std::sync::atomic::AtomicU64;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use super::json::{details, put_rated};
use super::{Api, ApiError, ApiResult, Caller, node_name};
use crate::access::{Access, ResourceKind};
use crate::broker::GlobalStats;
use crate::broker::stats::Rated;

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/health/checks/alarms", get(alarms))
        .route("/api/health/checks/local-alarms", get(alarms))
        .route("/api/health/checks/port-listener/{port}", get(port_listener))
        .route("/api/health/checks/protocol-listener/{protocol}", get(protocol_listener))
        .route("/api/health/checks/virtual-hosts", get(virtual_hosts))
        .route("/api/health/checks/node-is-mirror-sync-critical", get(ok_check))
        .route("/api/aliveness-test/{vhost}", get(aliveness))
        .route("/api/connections", get(connections))
        .route("/api/vhosts/{vhost}/connections", get(vhost_connections))
        .route("/api/connections/{name}", get(connection).delete(close_connection))
        .route("/api/connections/{name}/channels", get(connection_channels))
        .route("/api/connections/username/{user}", get(user_connections).delete(close_user_connections))
        .route("/api/channels", get(channels))
        .route("/api/channels/{name}", get(one_channel))
        .route("/api/vhosts/{vhost}/channels", get(vhost_channels))
        .route("/api/consumers", get(consumers))
        .route("/api/consumers/{vhost}", get(vhost_consumers))
}

/// The version RabbitMQ clients are told (the management API's and AMQP's
/// behaviour Warren follows).
pub const RABBITMQ_VERSION: &str = "3.13.7";

fn counter(c: &AtomicU64) -> u64 {
    GlobalStats::get(c)
}

async fn overview(State(api): State<Api>, caller: Caller) -> Json<Value> {
    if !caller.is_monitor() {
        return Json(own_overview(&api, &caller));
    }
    let snapshot = api.broker.snapshot();
    let stats = api.broker.stats();
    let (connections, queues, ready, unacked) = api.broker.totals();
    let mut message_stats = Map::new();
    put_rated(&mut message_stats, "publish", Rated { count: counter(&stats.received), rate: snapshot.publish_rate });
    put_rated(&mut message_stats, "confirm", Rated { count: counter(&stats.confirmed), rate: snapshot.confirm_rate });
    put_rated(
        &mut message_stats,
        "deliver_get",
        Rated { count: stats.delivered_total(), rate: snapshot.deliver_get_rate },
    );
    put_rated(&mut message_stats, "ack", Rated { count: counter(&stats.acknowledged), rate: snapshot.ack_rate });
    for (name, value) in [
        ("deliver", counter(&stats.delivered_consume_manual_ack)),
        ("deliver_no_ack", counter(&stats.delivered_consume_auto_ack)),
        ("get", counter(&stats.delivered_get_manual_ack)),
        ("get_no_ack", counter(&stats.delivered_get_auto_ack)),
        ("get_empty", counter(&stats.get_empty)),
        ("redeliver", counter(&stats.redelivered)),
        ("return_unroutable", counter(&stats.unroutable_returned)),
        ("drop_unroutable", counter(&stats.unroutable_dropped)),
    ] {
        message_stats.insert(name.into(), json!(value));
        message_stats.insert(format!("{name}_details"), details(0.0));
    }
    let listeners = &api.listeners;
    let mut listening = Vec::new();
    for (protocol, addr) in
        [("amqp", listeners.amqp), ("http", listeners.management), ("http/prometheus", listeners.prometheus)]
    {
        if let Some(addr) = addr {
            listening.push(json!({"node": node_name(), "protocol": protocol, "ip_address": addr.ip().to_string(),
                                  "port": addr.port(), "socket_opts": []}));
        }
    }
    let history: Vec<Value> = snapshot.history.iter().map(|s| json!(s)).collect();
    Json(json!({
        "management_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "erlang_version": "none (Rust)",
        "erlang_full_version": "none (Rust)",
        "cluster_name": node_name(),
        "node": node_name(),
        "rates_mode": "basic",
        "disable_stats": false,
        "enable_queue_totals": true,
        "is_op_policy_updating_enabled": true,
        "statistics_db_event_queue": 0,
        "default_queue_type": "classic",
        "exchange_types": [
            {"name": "direct", "description": "AMQP direct exchange, as per the AMQP specification", "enabled": true},
            {"name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification", "enabled": true},
            {"name": "headers", "description": "AMQP headers exchange, as per the AMQP specification", "enabled": true},
            {"name": "topic", "description": "AMQP topic exchange, as per the AMQP specification", "enabled": true},
        ],
        "message_stats": Value::Object(message_stats),
        "churn_rates": {
            "connection_created": counter(&stats.connections_opened),
            "connection_closed": counter(&stats.connections_closed),
            "channel_created": counter(&stats.channels_opened),
            "channel_closed": counter(&stats.channels_closed),
            "queue_declared": counter(&stats.queues_declared),
            "queue_created": counter(&stats.queues_created),
            "queue_deleted": counter(&stats.queues_deleted),
        },
        "queue_totals": {
            "messages": ready + unacked, "messages_details": details(0.0),
            "messages_ready": ready, "messages_ready_details": details(0.0),
            "messages_unacknowledged": unacked, "messages_unacknowledged_details": details(0.0),
        },
        "object_totals": {
            "channels": snapshot.channels, "connections": connections, "consumers": snapshot.consumers,
            "exchanges": snapshot.exchanges, "queues": queues,
        },
        "listeners": listening,
        "contexts": [{"node": node_name(), "description": "RabbitMQ Management", "path": "/",
                      "port": listeners.management.map(|a| a.port().to_string())}],
        "sample_retention_policies": {"global": [600], "basic": [600], "detailed": [600]},
        "warren_history": history,
        "user": caller.name,
    }))
}

/// The overview a user without `monitoring` gets, as RabbitMQ gives it:
/// figures of the vhosts it may use and of its own connections only, from
/// the sampler's snapshot, without node, listeners or broker-wide history.
fn own_overview(api: &Api, caller: &Caller) -> Value {
    let snapshot = api.broker.snapshot();
    let mine: Vec<&crate::broker::QueueSample> =
        snapshot.queues.iter().filter(|q| caller.sees_vhost(api, &q.vhost)).collect();
    let sum = |f: fn(&crate::broker::QueueSample) -> Rated| {
        mine.iter()
            .map(|q| f(q))
            .fold(Rated::default(), |a, b| Rated { count: a.count + b.count, rate: a.rate + b.rate })
    };
    let mut message_stats = Map::new();
    put_rated(&mut message_stats, "publish", sum(|q| q.publish));
    put_rated(&mut message_stats, "deliver_get", sum(|q| q.deliver_get));
    put_rated(&mut message_stats, "ack", sum(|q| q.ack));
    put_rated(&mut message_stats, "redeliver", sum(|q| q.redeliver));
    let (ready, unacked): (usize, usize) = mine.iter().fold((0, 0), |(r, u), q| (r + q.ready, u + q.unacked));
    let connections = visible_connections(api, caller, None).len();
    json!({
        "management_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "cluster_name": node_name(),
        "rates_mode": "basic",
        "message_stats": Value::Object(message_stats),
        "queue_totals": {
            "messages": ready + unacked, "messages_details": details(0.0),
            "messages_ready": ready, "messages_ready_details": details(0.0),
            "messages_unacknowledged": unacked, "messages_unacknowledged_details": details(0.0),
        },
        "object_totals": {
            "connections": connections, "queues": mine.len(),
            "consumers": mine.iter().map(|q| q.consumers).sum::<usize>(),
            "channels": visible_channels(api, caller, |_| true).as_array().map_or(0, Vec::len),
            "exchanges": api.broker.list_exchanges(None).iter().filter(|e| caller.sees_vhost(api, &e.vhost)).count(),
        },
        "listeners": [],
        "contexts": [],
        "user": caller.name,
    })
}

async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({"name": caller.name, "tags": caller.tags, "is_internal_user": true}))
}

pub(super) fn node_json(api: &Api) -> Value {
    let store = api.broker.store();
    let alarm = store.disk_alarm().borrow().raised;
    let (rss, available) = crate::metrics::memory();
    let memory = api.broker.memory();
    let limit = if memory.limit() == u64::MAX { available } else { memory.limit() };
    json!({
        "name": node_name(),
        "type": "disc",
        "running": true,
        "being_drained": false,
        // The client reads a u32.
        "uptime": crate::metrics::uptime_ms().min(u32::MAX as u64),
        "mem_used": rss,
        "mem_limit": limit,
        "mem_alarm": memory.alarm_raised(),
        "disk_free": store.free_space().unwrap_or(0),
        "disk_free_limit": store.disk_free_limit(),
        "disk_free_alarm": alarm,
        "fd_used": crate::metrics::open_fds(),
        "fd_total": crate::metrics::fd_limit(),
        "sockets_used": 0,
        "sockets_total": 0,
        "proc_used": 0,
        "proc_total": 0,
        "processors": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "run_queue": 0,
        "os_pid": std::process::id().to_string(),
        "rates_mode": "basic",
        "enabled_plugins": ["rabbitmq_management", "rabbitmq_prometheus"],
        "partitions": [],
        "exchange_types": [],
        "auth_mechanisms": [{"name": "PLAIN", "enabled": true}, {"name": "AMQPLAIN", "enabled": true}],
        "applications": [],
        "contexts": [],
        "log_files": [],
        "config_files": [],
        "cluster_links": [],
        "net_ticktime": 60,
    })
}

fn check(failure: Option<String>) -> Response {
    match failure {
        None => Json(json!({"status": "ok"})).into_response(),
        Some(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "failed", "reason": reason}))).into_response()
        }
    }
}

async fn alarms(State(api): State<Api>, _caller: Caller) -> Response {
    let mut alarms = Vec::new();
    if api.broker.memory().alarm_raised() {
        alarms.push(json!({"node": node_name(), "resource": "memory"}));
    }
    if api.broker.store().disk_alarm().borrow().raised {
        alarms.push(json!({"node": node_name(), "resource": "disk"}));
    }
    if !alarms.is_empty() {
        let body = json!({"status": "failed", "reason": "resource alarm(s) in effect in the cluster",
                          "alarms": alarms});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else {
        check(None)
    }
}

async fn port_listener(State(api): State<Api>, _caller: Caller, Path(port): Path<String>) -> Response {
    let Ok(port) = port.parse::<u16>() else {
        return ApiError::bad_request(format!("invalid port '{port}'")).into_response();
    };
    let l = &api.listeners;
    let ports: Vec<u16> = [l.amqp, l.management, l.prometheus].iter().flatten().map(|a| a.port()).collect();
    if ports.contains(&port) {
        Json(json!({"status": "ok", "port": port})).into_response()
    } else {
        let body = json!({"status": "failed", "reason": format!("No active listener on port {port}"),
                          "missing": port, "ports": ports});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// Whether a listener for the protocol is up (`amqp`, `amqp091`, `http`, `prometheus`).
async fn protocol_listener(State(api): State<Api>, _caller: Caller, Path(protocol): Path<String>) -> Response {
    let l = &api.listeners;
    let up = match protocol.as_str() {
        "amqp" | "amqp091" | "amqp0-9-1" => l.amqp.is_some(),
        "http" | "management" => l.management.is_some(),
        "http/prometheus" | "prometheus" => l.prometheus.is_some(),
        _ => false,
    };
    if up {
        Json(json!({"status": "ok", "protocol": protocol})).into_response()
    } else {
        let body = json!({"status": "failed", "reason": format!("No active listener for protocol {protocol}"),
                          "missing": protocol, "protocols": ["amqp", "http", "http/prometheus"]});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn virtual_hosts(_caller: Caller) -> Response {
    // Every vhost lives in this one process: when it answers, all are up.
    check(None)
}

async fn ok_check(_caller: Caller) -> Response {
    check(None)
}

/// Declares `aliveness-test` in the vhost, publishes a message and gets it
/// back, as RabbitMQ's aliveness test does.
async fn aliveness(State(api): State<Api>, caller: Caller, Path(vhost): Path<String>) -> ApiResult<Response> {
    caller.require_vhost(&api, &vhost)?;
    let queue = "aliveness-test";
    // Run as the caller: the permissions a client would need.
    caller.require(&api, &vhost, Access::Configure, ResourceKind::Queue, queue)?;
    caller.require(&api, &vhost, Access::Write, ResourceKind::Exchange, "amq.default")?;
    caller.require(&api, &vhost, Access::Read, ResourceKind::Queue, queue)?;
    let declare = crate::protocol::method::QueueDeclare { queue: queue.into(), ..Default::default() };
    api.broker.queue_declare(&vhost, 0, &declare)?;
    let message = std::sync::Arc::new(crate::broker::Message {
        exchange: String::new(),
        routing_key: queue.into(),
        properties: bytes::Bytes::from_static(&[0, 0]),
        body: bytes::Bytes::from_static(b"test_message"),
        persistent: false,
        expiration_ms: None,
        priority: 0,
    });
    api.broker.publish(&vhost, "", None, message)?;
    let taken = api.broker.operator_get(&vhost, queue, 1, crate::broker::GetSettle::Ack)?;
    Ok(match taken.first() {
        Some(t) if &t.message.body[..] == b"test_message" => check(None),
        _ => check(Some("aliveness test: the test message did not come back".into())),
    })
}

fn peer_host(peer: &str) -> &str {
    peer.rsplit_once(':').map_or(peer, |(h, _)| h)
}

fn peer_port(peer: &str) -> u16 {
    peer.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0)
}

fn connection_json(api: &Api, id: u64, info: &crate::broker::ConnectionInfo, channels: usize) -> Value {
    let listener = api.listeners.amqp;
    let (host, port) = (peer_host(&info.peer), peer_port(&info.peer).to_string());
    json!({
        "name": crate::broker::connection_name(id, &info.peer),
        "node": node_name(),
        "vhost": info.vhost,
        "user": info.user,
        "user_who_performed_action": info.user,
        "peer_host": host,
        "peer_port": port.parse::<u16>().unwrap_or(0),
        "host": listener.map_or_else(|| "0.0.0.0".to_string(), |a| a.ip().to_string()),
        "port": listener.map_or(5672, |a| a.port()),
        "protocol": "AMQP 0-9-1",
        "type": "network",
        "state": "running",
        "channels": channels,
        "channel_max": 2047,
        "frame_max": info.frame_max,
        "timeout": info.heartbeat,
        "auth_mechanism": info.auth_mechanism,
        "ssl": info.tls,
        "client_properties": {"product": info.client},
        "connected_at": info.connected_at,
        "recv_oct": 0, "send_oct": 0, "recv_cnt": 0, "send_cnt": 0,
    })
}

/// Connections the caller may see: all for monitors, else its own.
fn visible_connections(api: &Api, caller: &Caller, vhost: Option<&str>) -> Vec<Value> {
    api.broker
        .list_connections()
        .into_iter()
        .filter(|(_, info, _)| caller.is_monitor() || info.user == caller.name)
        .filter(|(_, info, _)| vhost.is_none_or(|v| info.vhost == v))
        .map(|(id, info, channels)| connection_json(api, id, &info, channels))
        .collect()
}

async fn connections(State(api): State<Api>, caller: Caller) -> Json<Value> {
    Json(Value::Array(visible_connections(&api, &caller, None)))
}

async fn vhost_connections(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    Ok(Json(Value::Array(visible_connections(&api, &caller, Some(&vhost)))))
}

async fn connection(State(api): State<Api>, caller: Caller, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    visible_connections(&api, &caller, None)
        .into_iter()
        .find(|c| c["name"] == name.as_str())
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

async fn close_connection(
    State(api): State<Api>,
    caller: Caller,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult<StatusCode> {
    let Some(target) = visible_connections(&api, &caller, None).into_iter().find(|c| c["name"] == name.as_str()) else {
        return Err(ApiError::not_found());
    };
    // Monitors see every connection but close only their own, as in RabbitMQ.
    if !caller.is_admin() && target["user"] != caller.name.as_str() {
        return Err(ApiError::not_authorised("User not authorised to access object"));
    }
    let reason = headers.get("x-reason").and_then(|v| v.to_str().ok()).unwrap_or("Closed via management plugin");
    if api.broker.close_connection_named(&name, reason) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

async fn user_connections(State(api): State<Api>, caller: Caller, Path(user): Path<String>) -> ApiResult<Json<Value>> {
    if !caller.is_monitor() && caller.name != user {
        return Err(ApiError::not_authorised("User not authorised to access object"));
    }
    let all = visible_connections(&api, &caller, None);
    Ok(Json(Value::Array(all.into_iter().filter(|c| c["user"] == user.as_str()).collect())))
}

/// Closes every connection of a user (204 even when it has none).
async fn close_user_connections(
    State(api): State<Api>,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult<StatusCode> {
    if !caller.is_admin() && caller.name != user {
        return Err(ApiError::not_authorised("User not authorised to access object"));
    }
    api.broker.close_connections_of(&user, "Closed via management plugin");
    Ok(StatusCode::NO_CONTENT)
}

fn channel_json(row: &crate::broker::ChannelRow) -> Value {
    let connection = crate::broker::connection_name(row.connection, &row.peer);
    json!({
        "name": format!("{connection} ({})", row.number),
        "number": row.number,
        "node": node_name(),
        "vhost": row.vhost,
        "user": row.user,
        "user_who_performed_action": row.user,
        "connection_details": {"name": connection, "peer_host": peer_host(&row.peer), "peer_port": peer_port(&row.peer)},
        "prefetch_count": row.prefetch_count,
        "global_prefetch_count": row.global_prefetch_count,
        "messages_unacknowledged": row.unacked,
        "messages_unconfirmed": 0,
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "consumer_count": row.consumers,
        "confirm": row.mode == crate::broker::ChannelMode::Confirm,
        "transactional": row.mode == crate::broker::ChannelMode::Transactional,
        "state": "running",
    })
}

fn visible_channels(api: &Api, caller: &Caller, filter: impl Fn(&crate::broker::ChannelRow) -> bool) -> Value {
    Value::Array(
        api.broker
            .list_channels()
            .iter()
            .filter(|c| (caller.is_monitor() || c.user == caller.name) && filter(c))
            .map(channel_json)
            .collect(),
    )
}

async fn channels(State(api): State<Api>, caller: Caller) -> Json<Value> {
    Json(visible_channels(&api, &caller, |_| true))
}

async fn one_channel(State(api): State<Api>, caller: Caller, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let all = visible_channels(&api, &caller, |_| true);
    all.as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name.as_str()).cloned())
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

async fn vhost_channels(State(api): State<Api>, caller: Caller, Path(vhost): Path<String>) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    Ok(Json(visible_channels(&api, &caller, |c| c.vhost == vhost)))
}

async fn connection_channels(State(api): State<Api>, caller: Caller, Path(name): Path<String>) -> Json<Value> {
    Json(visible_channels(&api, &caller, |c| crate::broker::connection_name(c.connection, &c.peer) == name))
}

fn consumers_json(api: &Api, caller: &Caller, vhost: Option<&str>) -> Value {
    let rows = api.broker.list_consumers(vhost);
    // A consumer's connection, by its peer address (one per connection).
    let connections: std::collections::HashMap<String, (String, String)> = api
        .broker
        .list_connections()
        .into_iter()
        .map(|(id, info, _)| (info.peer.clone(), (crate::broker::connection_name(id, &info.peer), info.user)))
        .collect();
    Value::Array(
        rows.into_iter()
            .filter(|c| caller.sees_vhost(api, &c.vhost))
            .map(|c| {
                let mut arguments = Map::new();
                if c.priority != 0 {
                    arguments.insert("x-priority".into(), json!(c.priority));
                }
                let (connection, user) = connections.get(&c.peer).cloned().unwrap_or_default();
                json!({
                    "consumer_tag": c.tag,
                    "queue": {"name": c.queue, "vhost": c.vhost},
                    // Every key the client's ChannelDetails requires, named as /api/channels names the channel.
                    "channel_details": {"name": format!("{connection} ({})", c.channel), "number": c.channel,
                                        "connection_name": connection, "peer_host": peer_host(&c.peer),
                                        "peer_port": peer_port(&c.peer), "node": node_name(), "user": user},
                    "ack_required": c.ack_required,
                    "exclusive": c.exclusive,
                    "prefetch_count": c.prefetch,
                    "active": c.active,
                    "activity_status": match (c.single_active, c.active) {
                        (false, _) => "up",
                        (true, true) => "single_active",
                        (true, false) => "waiting",
                    },
                    "consumer_timeout": 1_800_000,
                    "arguments": arguments,
                    "offset": c.offset,
                })
            })
            .collect(),
    )
}

async fn consumers(State(api): State<Api>, caller: Caller) -> Json<Value> {
    Json(consumers_json(&api, &caller, None))
}

async fn vhost_consumers(State(api): State<Api>, caller: Caller, Path(vhost): Path<String>) -> ApiResult<Json<Value>> {
    caller.require_vhost(&api, &vhost)?;
    Ok(Json(consumers_json(&api, &caller, Some(&vhost))))
}
