//! The control socket's user and permission verbs (as rabbitmqctl names
//! them): add_user, delete_user, change_password, authenticate_user,
//! set_user_tags, list_users, set_permissions, clear_permissions,
//! list_permissions, list_user_permissions, set_topic_permissions,
//! list_topic_permissions, set_user_limits, clear_user_limits,
//! list_user_limits.

use serde_json::json;

use super::{Request, Response, fail, ok, rows};
use crate::access::{Permission, TopicPermission, User};
use crate::broker::Broker;
use crate::broker::changes::{Change, SettingChange, detail};

/// Answers the verbs this module owns; None for the others.
pub fn execute(broker: &Broker, req: &Request) -> Option<Response> {
    let access = broker.access();
    let vhost = req.vhost.as_deref().unwrap_or("/");
    let arg = |i: usize| req.args.get(i).map(String::as_str);
    let need = |n: usize, usage: &str| {
        if req.args.len() < n { Err(fail(format!("{} needs {usage}", req.command))) } else { Ok(()) }
    };
    // Every change goes through Broker::change_blocking: on a node of a
    // cluster, through the metadata group.
    let done = |setting: SettingChange| match broker.change_blocking(Change::Setting(setting)) {
        Ok(()) => ok(Vec::new()),
        Err(e) => fail(detail(&e)),
    };
    let name = || req.args[0].clone();
    // Permissions name a vhost that must exist, as in RabbitMQ.
    let no_vhost = || fail(format!("Virtual host '{vhost}' does not exist"));
    let vhost_verb = matches!(
        req.command.as_str(),
        "set_permissions"
            | "clear_permissions"
            | "list_permissions"
            | "set_topic_permissions"
            | "list_topic_permissions"
    );
    if vhost_verb && !broker.vhost_exists(vhost) {
        return Some(no_vhost());
    }
    let response =
        match req.command.as_str() {
            "add_user" => match need(2, "<username> <password>") {
                Err(r) => r,
                Ok(()) => done(SettingChange::AddUser { user: User::new(&req.args[0], &req.args[1], Vec::new()) }),
            },
            "delete_user" => match need(1, "<username>") {
                Err(r) => r,
                // As RabbitMQ: a deleted user's connections go too (on every node).
                Ok(()) => done(SettingChange::DeleteUser { name: name() }),
            },
            "change_password" => match need(2, "<username> <new_password>") {
                Err(r) => r,
                Ok(()) => done(SettingChange::ChangePassword {
                    name: name(),
                    password_hash: crate::access::password::hash(&req.args[1]),
                }),
            },
            "authenticate_user" => match need(2, "<username> <password>") {
                Err(r) => r,
                Ok(()) if access.authenticate(&req.args[0], &req.args[1]) => ok(Vec::new()),
                Ok(()) => fail(format!("Error: failed to authenticate user \"{}\"", req.args[0])),
            },
            "set_user_tags" => match need(1, "<username> [<tag> ...]") {
                Err(r) => r,
                Ok(()) => done(SettingChange::SetUserTags { name: name(), tags: req.args[1..].to_vec() }),
            },
            "set_user_limits" => match need(2, "<username> <definition>") {
                Err(r) => r,
                Ok(()) => match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&req.args[1]) {
                    Err(e) => fail(format!("Could not parse JSON document: {e}")),
                    Ok(definition) => match crate::access::UserLimits::parse(&definition) {
                        Err(e) => fail(e),
                        Ok(limits) => done(SettingChange::SetUserLimits { user: name(), limits }),
                    },
                },
            },
            "clear_user_limits" => match need(2, "<username> <limit name|all>") {
                Err(r) => r,
                Ok(()) => done(SettingChange::ClearUserLimits { user: name(), name: req.args[1].clone() }),
            },
            "list_user_limits" => {
                let users = access.users().into_iter().filter(|u| arg(0).is_none_or(|name| u.name == name));
                match arg(0) {
                    Some(name) if access.user(name).is_none() => fail(format!("user '{name}' does not exist")),
                    _ => ok(rows(users.filter(|u| !u.limits.is_empty()).map(
                        |u| json!({"user": u.name, "limits": serde_json::to_string(&u.limits).unwrap_or_default()}),
                    ))),
                }
            }
            "list_users" => ok(rows(
                access.users().into_iter().map(|u| json!({"user": u.name, "tags": format!("[{}]", u.tags.join(", "))})),
            )),
            "set_permissions" => match need(4, "<username> <conf> <write> <read>") {
                Err(r) => r,
                Ok(()) => done(SettingChange::SetPermissions {
                    permission: Permission {
                        user: name(),
                        vhost: vhost.to_string(),
                        configure: req.args[1].clone(),
                        write: req.args[2].clone(),
                        read: req.args[3].clone(),
                    },
                }),
            },
            "clear_permissions" => match need(1, "<username>") {
                Err(r) => r,
                Ok(()) => done(SettingChange::ClearPermissions { user: name(), vhost: vhost.to_string() }),
            },
            "list_permissions" => ok(rows(
                access
                    .permissions()
                    .into_iter()
                    .filter(|p| p.vhost == vhost)
                    .map(|p| json!({"user": p.user, "configure": p.configure, "write": p.write, "read": p.read})),
            )),
            "list_user_permissions" => {
                match arg(0) {
                    None => fail("list_user_permissions needs <username>".into()),
                    Some(user) if access.user(user).is_none() => fail(format!("user '{user}' does not exist")),
                    Some(user) => ok(rows(access.permissions().into_iter().filter(|p| p.user == user).map(
                        |p| json!({"vhost": p.vhost, "configure": p.configure, "write": p.write, "read": p.read}),
                    ))),
                }
            }
            "set_topic_permissions" => match need(4, "<username> <exchange> <write> <read>") {
                Err(r) => r,
                Ok(()) => done(SettingChange::SetTopicPermissions {
                    permission: TopicPermission {
                        user: name(),
                        vhost: vhost.to_string(),
                        exchange: req.args[1].clone(),
                        write: req.args[2].clone(),
                        read: req.args[3].clone(),
                    },
                }),
            },
            "list_topic_permissions" => ok(rows(
                access
                    .topic_permissions()
                    .into_iter()
                    .filter(|t| t.vhost == vhost)
                    .map(|t| json!({"user": t.user, "exchange": t.exchange, "write": t.write, "read": t.read})),
            )),
            _ => return None,
        };
    Some(response)
}
