//! warrenctl over the management HTTP API (`--url`), for machines that
//! cannot reach the broker's data directory: each control-socket request
//! becomes the HTTP calls rabbitmqadmin would make, and the replies become
//! the same rows the socket answers with, so listings and actions print
//! alike either way.

use serde_json::{Map, Value, json};

use warren::admin::{Request, Response};

/// Where and as whom to reach the API.
pub struct Target {
    pub url: String,
    pub username: String,
    pub password: String,
}

type Rows = Vec<Map<String, Value>>;

/// A reply's items: the array's, or the one value.
fn items(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        other => vec![other],
    }
}

use warren::management::json::encode_segment as enc;

impl Target {
    /// Sends one request; Err for a transport failure, Ok(reply) otherwise
    /// (an HTTP error status is a refusal, `ok: false`).
    pub fn call(&self, req: &Request) -> Result<Response, String> {
        match self.answer(req) {
            Ok(rows) => Ok(Response { ok: true, error: None, rows }),
            Err(Failure::Refused(e)) => Ok(Response { ok: false, error: Some(e), rows: Vec::new() }),
            Err(Failure::Transport(e)) => Err(e),
        }
    }

    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failure> {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let url = format!("{}/api{path}", self.url.trim_end_matches('/'));
        let auth = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{}:{}", self.username, self.password)
            )
        );
        let reply = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", Some(b)) => agent.delete(&url).header("Authorization", &auth).force_send_body().send_json(b),
            ("DELETE", None) => agent.delete(&url).header("Authorization", &auth).call(),
            ("PUT", Some(b)) => agent.put(&url).header("Authorization", &auth).send_json(b),
            ("POST", Some(b)) => agent.post(&url).header("Authorization", &auth).send_json(b),
            (m, _) => return Err(Failure::Transport(format!("unsupported method {m}"))),
        };
        let mut reply = reply.map_err(|e| Failure::Transport(format!("{url}: {e}")))?;
        let status = reply.status().as_u16();
        let text = reply.body_mut().read_to_string().unwrap_or_default();
        let value: Value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        if status >= 400 {
            let reason = value.get("reason").and_then(Value::as_str).map_or_else(|| value.to_string(), str::to_string);
            return Err(Failure::Refused(format!("{method} {path}: {status} {reason}")));
        }
        Ok(value)
    }

    fn get(&self, path: &str) -> Result<Vec<Value>, Failure> {
        Ok(items(self.send("GET", path, None)?))
    }

    fn answer(&self, req: &Request) -> Result<Rows, Failure> {
        let vhost = req.vhost.as_deref().unwrap_or("/");
        let v = enc(vhost);
        let arg = |i: usize| req.args.get(i).map(String::as_str).unwrap_or_default();
        let none = || Ok(Vec::new());
        match req.command.as_str() {
            "list_queues" => Ok(self.get(&format!("/queues/{v}"))?.iter().map(queue_row).collect()),
            "list_exchanges" => Ok(self.get(&format!("/exchanges/{v}"))?.iter().map(exchange_row).collect()),
            "list_bindings" => Ok(self.get(&format!("/bindings/{v}"))?.iter().map(binding_row).collect()),
            "list_connections" => Ok(self.get("/connections")?.iter().map(connection_row).collect()),
            "list_consumers" => Ok(self.get(&format!("/consumers/{v}"))?.iter().map(consumer_row).collect()),
            "list_users" => Ok(self
                .get("/users")?
                .iter()
                .map(|u| row(json!({"user": u["name"], "tags": format!("[{}]", join(&u["tags"]))})))
                .collect()),
            "list_vhosts" => Ok(self
                .get("/vhosts")?
                .iter()
                .map(|x| {
                    row(json!({"name": x["name"], "description": x["description"],
                               "tags": format!("[{}]", join(&x["tags"])), "default_queue_type": x["default_queue_type"],
                               "tracing": x["tracing"], "cluster_state": x["cluster_state"].to_string()}))
                })
                .collect()),
            "quorum_status" => {
                let name = enc(req.name.as_deref().unwrap_or_default());
                Ok(self.get(&format!("/queues/quorum/{v}/{name}/status"))?.into_iter().map(row).collect())
            }
            "add_member" | "delete_member" => {
                let name = enc(req.name.as_deref().unwrap_or_default());
                let (method, path) = match req.command.as_str() {
                    "add_member" => ("POST", "add"),
                    _ => ("DELETE", "delete"),
                };
                self.send(
                    method,
                    &format!("/queues/quorum/{v}/{name}/replicas/{path}"),
                    Some(json!({"node": arg(0)})),
                )?;
                none()
            }
            "grow" | "shrink" => {
                let node = enc(arg(0));
                let outcomes = if req.command == "grow" {
                    let body = json!({"strategy": arg(1), "vhost_pattern": arg(2), "queue_pattern": arg(3)});
                    self.send("POST", &format!("/queues/quorum/replicas/on/{node}/grow"), Some(body))?
                } else {
                    self.send("DELETE", &format!("/queues/quorum/replicas/on/{node}/shrink"), None)?
                };
                let errors_only = arg(if req.command == "grow" { 4 } else { 1 }) == "true";
                Ok(items(outcomes).into_iter().filter(|o| !errors_only || o["result"] != "ok").map(row).collect())
            }
            "rebalance" => {
                Ok(items(self.send("POST", "/rebalance/queues", Some(json!({})))?).into_iter().map(row).collect())
            }
            // A 503 is the check's failure: its reason and queues are the refusal.
            "check_if_node_is_quorum_critical" => {
                self.send("GET", "/health/checks/node-is-quorum-critical", None)?;
                none()
            }
            "list_permissions" => Ok(self.get(&format!("/vhosts/{v}/permissions"))?.into_iter().map(row).collect()),
            "list_user_permissions" => {
                Ok(self.get(&format!("/users/{}/permissions", enc(arg(0))))?.into_iter().map(row).collect())
            }
            "list_topic_permissions" => {
                Ok(self.get(&format!("/vhosts/{v}/topic-permissions"))?.into_iter().map(row).collect())
            }
            "list_policies" | "list_operator_policies" => {
                let kind = if req.command == "list_policies" { "policies" } else { "operator-policies" };
                Ok(self
                    .get(&format!("/{kind}/{v}"))?
                    .into_iter()
                    .map(|mut p| {
                        p["definition"] = Value::String(p["definition"].to_string());
                        row(p)
                    })
                    .collect())
            }
            "list_vhost_limits" => {
                let path = if req.vhost.is_some() { format!("/vhost-limits/{v}") } else { "/vhost-limits".into() };
                Ok(self
                    .get(&path)?
                    .iter()
                    .map(|l| row(json!({"vhost": l["vhost"], "limits": l["value"].to_string()})))
                    .collect())
            }
            "status" => {
                let o = self.send("GET", "/overview", None)?;
                let node = self.get("/nodes")?.into_iter().next().unwrap_or(Value::Null);
                Ok(vec![row(json!({
                    "product": o["product_name"], "version": o["product_version"], "pid": node["os_pid"],
                    "uptime_seconds": node["uptime"].as_u64().map(|ms| ms / 1000),
                    "connections": o["object_totals"]["connections"], "queues": o["object_totals"]["queues"],
                    "messages_ready": o["queue_totals"]["messages_ready"],
                    "messages_unacknowledged": o["queue_totals"]["messages_unacknowledged"],
                    "disk_free_bytes": node["disk_free"], "disk_free_alarm": node["disk_free_alarm"],
                    "memory_resident_bytes": node["mem_used"], "memory_high_watermark_bytes": node["mem_limit"],
                    "memory_alarm": node["mem_alarm"],
                }))])
            }
            "purge_queue" | "delete_queue" => {
                let name = req.name.as_deref().unwrap_or_default();
                let path = format!("/queues/{v}/{}", enc(name));
                let before = self.send("GET", &path, None)?;
                let suffix = if req.command == "purge_queue" { "/contents" } else { "" };
                self.send("DELETE", &format!("{path}{suffix}"), None)?;
                Ok(vec![row(json!({"name": name, "messages": before["messages_ready"]}))])
            }
            "add_user" => self.put(&format!("/users/{}", enc(arg(0))), json!({"password": arg(1), "tags": ""})),
            "change_password" => {
                let tags = self.send("GET", &format!("/users/{}", enc(arg(0))), None)?["tags"].clone();
                self.put(&format!("/users/{}", enc(arg(0))), json!({"password": arg(1), "tags": join(&tags)}))
            }
            "set_user_tags" => {
                let tags = req.args.get(1..).unwrap_or_default().join(",");
                self.put(&format!("/users/{}", enc(arg(0))), json!({"tags": tags}))
            }
            "delete_user" => self.delete(&format!("/users/{}", enc(arg(0)))),
            "authenticate_user" => {
                let other = Target { url: self.url.clone(), username: arg(0).into(), password: arg(1).into() };
                other
                    .send("GET", "/whoami", None)
                    .map_err(|_| Failure::Refused(format!("Error: failed to authenticate user \"{}\"", arg(0))))?;
                none()
            }
            "set_permissions" => self.put(
                &format!("/permissions/{v}/{}", enc(arg(0))),
                json!({"configure": arg(1), "write": arg(2), "read": arg(3)}),
            ),
            "clear_permissions" => self.delete(&format!("/permissions/{v}/{}", enc(arg(0)))),
            "set_topic_permissions" => self.put(
                &format!("/topic-permissions/{v}/{}", enc(arg(0))),
                json!({"exchange": arg(1), "write": arg(2), "read": arg(3)}),
            ),
            "add_vhost" => {
                let tags: Vec<&str> = arg(2).split(',').filter(|t| !t.is_empty()).collect();
                let mut body = json!({"description": arg(1), "tags": tags});
                if !arg(3).is_empty() {
                    body["default_queue_type"] = json!(arg(3));
                }
                self.put(&format!("/vhosts/{}", enc(arg(0))), body)
            }
            "delete_vhost" => self.delete(&format!("/vhosts/{}", enc(arg(0)))),
            "set_vhost_limits" | "clear_vhost_limits" => {
                let wanted: Map<String, Value> = if req.command == "set_vhost_limits" {
                    serde_json::from_str(arg(0))
                        .map_err(|e| Failure::Refused(format!("Could not parse JSON document: {e}")))?
                } else {
                    Map::new()
                };
                for name in ["max-connections", "max-queues"] {
                    let path = format!("/vhost-limits/{v}/{name}");
                    match wanted.get(name) {
                        Some(value) => self.put(&path, json!({"value": value}))?,
                        None => self.delete(&path)?,
                    };
                }
                none()
            }
            "set_policy" | "set_operator_policy" => {
                let kind = if req.command == "set_policy" { "policies" } else { "operator-policies" };
                let definition: Value = serde_json::from_str(arg(2))
                    .map_err(|e| Failure::Refused(format!("Error: the definition is not a JSON object: {e}")))?;
                let priority: i64 = arg(3).parse().unwrap_or(0);
                self.put(
                    &format!("/{kind}/{v}/{}", enc(arg(0))),
                    json!({"pattern": arg(1), "definition": definition, "priority": priority, "apply-to": arg(4)}),
                )
            }
            "clear_policy" | "clear_operator_policy" => {
                let kind = if req.command == "clear_policy" { "policies" } else { "operator-policies" };
                self.delete(&format!("/{kind}/{v}/{}", enc(arg(0))))
            }
            "close_connection" => {
                self.delete(&format!("/connections/{}", enc(arg(0))))?;
                none()
            }
            "export_definitions" => {
                let defs = self.send("GET", "/definitions", None)?;
                let mut r = Map::new();
                r.insert("definitions".into(), defs);
                Ok(vec![r])
            }
            "import_definitions" => {
                let defs: Value = serde_json::from_str(arg(0))
                    .map_err(|e| Failure::Refused(format!("not a definitions file: {e}")))?;
                self.send("POST", "/definitions", Some(defs))?;
                none()
            }
            other => Err(Failure::Refused(format!("{other} is not available over --url (use --data-dir)"))),
        }
    }

    fn put(&self, path: &str, body: Value) -> Result<Rows, Failure> {
        self.send("PUT", path, Some(body)).map(|_| Vec::new())
    }

    fn delete(&self, path: &str) -> Result<Rows, Failure> {
        self.send("DELETE", path, None).map(|_| Vec::new())
    }
}

enum Failure {
    /// The API answered with an error status.
    Refused(String),
    /// No answer at all.
    Transport(String),
}

fn row(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A JSON array of strings as "a, b".
fn join(v: &Value) -> String {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()
}

/// Arguments as rabbitmqctl prints them: `[{"x-max-length",10}]`.
fn arguments(v: &Value) -> String {
    let items: Vec<String> = v
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{{\"{k}\",{}}}", v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                .collect()
        })
        .unwrap_or_default();
    format!("[{}]", items.join(","))
}

fn text_or_empty(v: &Value) -> Value {
    if v.is_null() { json!("") } else { v.clone() }
}

fn queue_row(q: &Value) -> Map<String, Value> {
    let mut r = row(q.clone());
    r.insert("arguments".into(), json!(arguments(&q["arguments"])));
    r.insert("policy".into(), text_or_empty(&q["policy"]));
    r.insert("operator_policy".into(), text_or_empty(&q["operator_policy"]));
    r
}

fn exchange_row(e: &Value) -> Map<String, Value> {
    let mut r = row(e.clone());
    r.insert("arguments".into(), json!(arguments(&e["arguments"])));
    r
}

fn binding_row(b: &Value) -> Map<String, Value> {
    row(json!({"vhost": b["vhost"], "source_name": b["source"], "source_kind": "exchange",
               "destination_name": b["destination"], "destination_kind": b["destination_type"],
               "routing_key": b["routing_key"], "arguments": arguments(&b["arguments"])}))
}

fn connection_row(c: &Value) -> Map<String, Value> {
    row(
        json!({"name": c["name"], "peer": format!("{}:{}", c["peer_host"].as_str().unwrap_or_default(), c["peer_port"]),
               "user": c["user"], "vhost": c["vhost"], "channels": c["channels"],
               "client": c["client_properties"]["product"], "timeout": c["timeout"], "frame_max": c["frame_max"],
               "state": c["state"]}),
    )
}

fn consumer_row(c: &Value) -> Map<String, Value> {
    row(json!({"vhost": c["queue"]["vhost"], "queue_name": c["queue"]["name"], "consumer_tag": c["consumer_tag"],
               "channel_pid": c["channel_details"]["name"], "ack_required": c["ack_required"],
               "exclusive": c["exclusive"], "prefetch_count": c["prefetch_count"], "active": c["active"],
               "activity_status": c["activity_status"], "arguments": arguments(&c["arguments"])}))
}
