//! The control socket's vhost, limit, policy and definitions verbs (as
//! rabbitmqctl names them): add_vhost, delete_vhost, list_vhosts,
//! set_vhost_limits, clear_vhost_limits, list_vhost_limits, set_policy,
//! clear_policy, list_policies (and their operator-policy twins),
//! export_definitions and import_definitions.

use serde_json::{Map, Value, json};

use super::{Request, Response, fail, ok, rows};
use crate::broker::changes::{Change, SettingChange, detail};
use crate::broker::{Broker, Policy, VhostInfo, VhostLimits};

/// Answers the verbs this module owns; None for the others.
pub fn execute(broker: &Broker, req: &Request) -> Option<Response> {
    let vhost = req.vhost.as_deref().unwrap_or("/");
    let need = |n: usize, usage: &str| {
        if req.args.len() < n { Err(fail(format!("{} needs {usage}", req.command))) } else { Ok(()) }
    };
    // Every change goes through Broker::change_blocking: on a node of a
    // cluster, through the metadata group.
    let done = |change: Change| match broker.change_blocking(change) {
        Ok(()) => ok(Vec::new()),
        Err(e) => fail(detail(&e)),
    };
    let limits = |limits| Change::Setting(SettingChange::SetVhostLimits { vhost: vhost.to_string(), limits });
    let response = match req.command.as_str() {
        "add_vhost" => match need(1, "<vhost>") {
            Err(r) => r,
            Ok(()) => {
                let arg = |i: usize| req.args.get(i).filter(|a| !a.is_empty()).cloned();
                let tags = arg(2)
                    .map(|t| t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect())
                    .unwrap_or_default();
                let info = VhostInfo {
                    name: req.args[0].clone(),
                    description: arg(1).unwrap_or_default(),
                    tags,
                    default_queue_type: arg(3),
                };
                done(Change::VhostAdd(info))
            }
        },
        "delete_vhost" => match need(1, "<vhost>") {
            Err(r) => r,
            Ok(()) => done(Change::VhostDelete(req.args[0].clone())),
        },
        "list_vhosts" => ok(rows(broker.list_vhosts().into_iter().map(|v| {
            json!({"name": v.info.name, "description": v.info.description,
                   "tags": format!("[{}]", v.info.tags.join(", ")),
                   "default_queue_type": v.info.default_queue_type.as_deref().unwrap_or("classic"),
                   "tracing": false, "cluster_state": format!("[{{{},running}}]", crate::metrics::node_name()),
                   "queues": v.queues, "exchanges": v.exchanges, "connections": v.connections,
                   "messages": v.messages, "limits": limits_json(&v.limits)})
        }))),
        "set_vhost_limits" => match need(1, "<definition>") {
            Err(r) => r,
            Ok(()) => match serde_json::from_str::<Map<String, Value>>(&req.args[0]) {
                Err(e) => fail(format!("Could not parse JSON document: {e}")),
                Ok(definition) => match VhostLimits::parse(&definition) {
                    Err(e) => fail(e),
                    Ok(parsed) => done(limits(parsed)),
                },
            },
        },
        "clear_vhost_limits" => done(limits(VhostLimits::default())),
        "list_vhost_limits" => match req.vhost.as_deref() {
            None => ok(rows(
                broker
                    .list_vhosts()
                    .into_iter()
                    .filter(|v| !v.limits.is_empty())
                    .map(|v| json!({"vhost": v.info.name, "limits": limits_json(&v.limits)})),
            )),
            Some(vhost) => match broker.vhost_limits(vhost) {
                None => fail(format!("Virtual host '{vhost}' does not exist")),
                Some(limits) if limits.is_empty() => ok(Vec::new()),
                Some(limits) => ok(rows([json!({"vhost": vhost, "limits": limits_json(&limits)})])),
            },
        },
        "set_policy" | "set_operator_policy" => match need(5, "<name> <pattern> <definition> <priority> <apply-to>") {
            Err(r) => r,
            Ok(()) => {
                let operator = req.command == "set_operator_policy";
                match serde_json::from_str::<Map<String, Value>>(&req.args[2]) {
                    Err(e) => fail(format!("Error: the definition is not a JSON object: {e}")),
                    Ok(definition) => {
                        let policy = Policy {
                            vhost: vhost.to_string(),
                            name: req.args[0].clone(),
                            pattern: req.args[1].clone(),
                            apply_to: req.args[4].clone(),
                            definition,
                            priority: req.args[3].parse().unwrap_or(0),
                        };
                        done(Change::Setting(SettingChange::SetPolicy { policy, operator }))
                    }
                }
            }
        },
        "clear_policy" | "clear_operator_policy" => match need(1, "<name>") {
            Err(r) => r,
            Ok(()) => done(Change::Setting(SettingChange::ClearPolicy {
                vhost: vhost.to_string(),
                name: req.args[0].clone(),
                operator: req.command == "clear_operator_policy",
            })),
        },
        "list_policies" | "list_operator_policies" => {
            let operator = req.command == "list_operator_policies";
            ok(rows(broker.policies(Some(vhost), operator).into_iter().map(|p| {
                json!({"vhost": p.vhost, "name": p.name, "pattern": p.pattern, "apply-to": p.apply_to,
                       "definition": Value::Object(p.definition).to_string(), "priority": p.priority})
            })))
        }
        "export_definitions" => {
            let mut row = Map::new();
            row.insert("definitions".into(), crate::definitions::export(broker));
            ok(vec![row])
        }
        "import_definitions" => match need(1, "<definitions JSON>") {
            Err(r) => r,
            Ok(()) => match crate::definitions::import(broker, &req.args[0]) {
                Ok(report) => ok(rows([report])),
                Err(e) => fail(e),
            },
        },
        _ => return None,
    };
    Some(response)
}

/// Limits as rabbitmqctl shows them: `{"max-connections":5}`.
fn limits_json(limits: &VhostLimits) -> String {
    serde_json::to_string(limits).unwrap_or_default()
}
