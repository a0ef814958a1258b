//! The control socket: a Unix socket in the data directory
//! (`<data-dir>/warren.sock`) through which `warrenctl` asks a running
//! broker for listings and operator actions.
//!
//! One request per connection: a line of JSON such as
//! `{"command":"list_queues"}` or `{"command":"purge_queue","name":"q"}`,
//! answered by one line `{"ok":true,"rows":[{...},...]}` or
//! `{"ok":false,"error":"..."}`. Rows carry every column; the client picks
//! the ones the user asked for. Access is guarded by the socket file's
//! permissions (owner only), like rabbitmqctl's Erlang cookie.

use crate::broker::memory::Watermark;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::broker::Broker;

mod users;
mod vhosts;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub command: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Positional arguments of the verb (user, password, patterns, tags…).
    #[serde(default)]
    pub args: Vec<String>,
    /// `-p VHOST`.
    #[serde(default)]
    pub vhost: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub rows: Vec<serde_json::Map<String, Value>>,
}

/// Binds the control socket, replacing a stale one left by a killed broker.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The verbs about a cluster (`rabbitmq-queues quorum_status`,
/// `check_if_node_is_quorum_critical`), answered by a node of one.
pub trait ClusterAdmin: Send + Sync + 'static {
    /// Its answer, or None for a verb that is not about the cluster.
    fn execute(&self, req: Request) -> Option<Pin<Box<dyn Future<Output = Response> + Send>>>;
}

/// What a single node answers to the cluster verbs.
async fn single_node(broker: &Broker, req: &Request) -> Option<Response> {
    match req.command.as_str() {
        "quorum_status" => {
            let (vhost, name) = (req.vhost.as_deref().unwrap_or("/"), req.name.as_deref().unwrap_or(""));
            let status = crate::cluster::member_status::queue_status(broker, None, vhost, name).await;
            Some(status.map_or_else(|refused| fail(refused.reason), |members| ok(rows(members))))
        }
        // Nothing of a single node has other members to lose.
        "check_if_node_is_quorum_critical" => Some(ok(vec![])),
        "add_member" | "delete_member" | "grow" | "shrink" => Some(fail(format!(
            "{}: this node is not in a cluster, so its quorum queues have one member, this node",
            req.command
        ))),
        // One node leads everything there is.
        "rebalance" => Some(ok(vec![])),
        _ => None,
    }
}

pub async fn serve(listener: UnixListener, broker: Arc<Broker>, cluster: Option<Arc<dyn ClusterAdmin>>) {
    STARTED.get_or_init(std::time::Instant::now);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let broker = broker.clone();
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            // Bounded, so a stray writer cannot make us buffer forever
            // (a definitions import is the largest request).
            let mut reader = BufReader::new(read.take(64 << 20));
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let response = match serde_json::from_str::<Request>(&line) {
                Ok(req) => match &cluster {
                    Some(cluster) => match cluster.execute(req.clone()) {
                        Some(answer) => answer.await,
                        None => execute(&broker, &req),
                    },
                    None => match single_node(&broker, &req).await {
                        Some(answer) => answer,
                        None => execute(&broker, &req),
                    },
                },
                Err(e) => Response { ok: false, error: Some(format!("malformed request: {e}")), rows: vec![] },
            };
            let mut out = serde_json::to_vec(&response).unwrap_or_default();
            out.push(b'\n');
            let _ = write.write_all(&out).await;
        });
    }
}

pub(crate) fn rows<T: Serialize>(items: impl IntoIterator<Item = T>) -> Vec<serde_json::Map<String, Value>> {
    items
        .into_iter()
        .filter_map(|item| match serde_json::to_value(item) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        })
        .collect()
}

pub(crate) fn ok(rows: Vec<serde_json::Map<String, Value>>) -> Response {
    Response { ok: true, error: None, rows }
}

pub(crate) fn fail(error: String) -> Response {
    Response { ok: false, error: Some(error), rows: vec![] }
}

/// When the control socket started serving (the broker's start, near enough).
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

pub fn execute(broker: &Broker, req: &Request) -> Response {
    if let Some(response) = users::execute(broker, req).or_else(|| vhosts::execute(broker, req)) {
        return response;
    }
    // Listings are of the vhost -p names ("/" by default), as rabbitmqctl's.
    let vhost = req.vhost.as_deref().unwrap_or("/");
    let listing_of_missing_vhost =
        matches!(req.command.as_str(), "list_queues" | "list_exchanges" | "list_bindings" | "list_consumers")
            && !broker.vhost_exists(vhost);
    if listing_of_missing_vhost {
        return fail(format!("Virtual host '{vhost}' does not exist"));
    }
    match req.command.as_str() {
        "list_queues" => ok(rows(broker.list_queues(Some(vhost)))),
        "list_exchanges" => ok(rows(broker.list_exchanges(Some(vhost)))),
        "list_bindings" => ok(rows(broker.list_bindings(Some(vhost)).into_iter().map(|b| {
            json!({"vhost": b.vhost, "source_name": b.source, "source_kind": "exchange", "destination_name": b.destination,
                   "destination_kind": b.destination_kind, "routing_key": b.routing_key, "arguments": b.arguments})
        }))),
        "list_connections" => ok(rows(broker.list_connections().into_iter().map(|(id, info, channels)| {
            json!({"name": crate::broker::connection_name(id, &info.peer), "peer": info.peer, "user": info.user,
                   "vhost": info.vhost, "channels": channels, "client": info.client, "timeout": info.heartbeat,
                   "frame_max": info.frame_max, "state": "running"})
        }))),
        "list_consumers" => ok(rows(broker.list_consumers(Some(vhost)).into_iter().map(|c| {
            // RabbitMQ's activity_status: up, single_active or waiting.
            let status = match (c.single_active, c.active) {
                (false, _) => "up",
                (true, true) => "single_active",
                (true, false) => "waiting",
            };
            let arguments = if c.priority != 0 { format!("[{{\"x-priority\",{}}}]", c.priority) } else { "[]".into() };
            json!({"vhost": c.vhost, "queue_name": c.queue, "consumer_tag": c.tag,
                   "channel_pid": format!("{}:{}", c.peer, c.channel), "ack_required": c.ack_required,
                   "exclusive": c.exclusive, "prefetch_count": c.prefetch, "active": c.active,
                   "activity_status": status, "arguments": arguments, "offset": c.offset})
        }))),
        "set_vm_memory_high_watermark" => {
            let (Some(kind), Some(text)) = (req.args.first(), req.args.get(1)) else {
                return fail("set_vm_memory_high_watermark needs <fraction> or absolute <bytes>".into());
            };
            let watermark = match kind.as_str() {
                "relative" => text.trim().parse::<f64>().ok().filter(|f| f.is_finite() && *f >= 0.0).map(Watermark::Relative),
                "absolute" => text.parse::<crate::config::Size>().ok().map(|s| Watermark::Absolute(s.0)),
                _ => None,
            };
            match watermark {
                Some(w) => {
                    let bytes = broker.set_memory_high_watermark(w);
                    tracing::info!("memory high watermark set to {bytes} bytes ({w:?}) by warrenctl");
                    ok(Vec::new())
                }
                None => fail(format!(
                    "invalid memory high watermark '{text}': expected a fraction such as 0.4, or absolute and a size such as 2GB"
                )),
            }
        }
        "close_connection" => {
            let (Some(name), explanation) = (req.args.first(), req.args.get(1)) else {
                return fail("close_connection needs <connection name> [<explanation>]".into());
            };
            let explanation = explanation.map_or("Closed via warrenctl", String::as_str);
            if broker.close_connection_named(name, explanation) {
                ok(Vec::new())
            } else {
                fail(format!("no connection named '{name}' (see list_connections name)"))
            }
        }
        "status" => {
            let (connections, queues, ready, unacked) = broker.totals();
            let log = broker.store().stats();
            ok(rows([json!({
                "product": "Warren",
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "uptime_seconds": STARTED.get_or_init(std::time::Instant::now).elapsed().as_secs(),
                "connections": connections,
                "queues": queues,
                "messages_ready": ready,
                "messages_unacknowledged": unacked,
                "log_segments": log.segments,
                "log_disk_bytes": log.disk_bytes,
                "log_live_bytes": log.live_bytes,
                "log_unreadable_records": log.unreadable_records,
                "disk_free_bytes": broker.store().free_space(),
                "disk_free_alarm": broker.store().disk_alarm().borrow().raised,
                "memory_resident_bytes": broker.memory().resident(),
                "memory_high_watermark_bytes": broker.memory().limit(),
                "memory_alarm": broker.memory().alarm_raised(),
                "memory_paging": broker.memory().paging(),
                "log_spilled_messages": log.spilled_messages,
            })]))
        }
        "purge_queue" | "delete_queue" => {
            let Some(name) = req.name.as_deref() else { return fail(format!("{} needs a queue name", req.command)) };
            let not_found = || format!("queue '{name}' in vhost '{vhost}' not found");
            let result = if req.command == "purge_queue" {
                broker.admin_purge(vhost, name).map_err(|e| {
                    if e.code == crate::protocol::reply::NOT_FOUND { not_found() } else { e.text }
                })
            } else {
                let delete = crate::protocol::method::QueueDelete { queue: name.to_string(), ..Default::default() };
                match broker.queue_change(vhost, delete.into()) {
                    // A replicated quorum queue: deleted on every node.
                    Some(change) => {
                        let count = broker.queue_delete_check(vhost, name, false, false).unwrap_or(0);
                        broker.change_blocking(change).map(|()| count as usize).map_err(|e| e.text)
                    }
                    None => broker.admin_delete(vhost, name).ok_or_else(not_found),
                }
            };
            match result {
                Ok(count) => ok(rows([json!({"name": name, "messages": count})])),
                Err(error) => fail(error),
            }
        }
        other => fail(format!("unknown command '{other}'")),
    }
}
