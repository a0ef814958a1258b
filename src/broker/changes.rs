//! Changes to the definitions every node of a cluster shares, as values:
//! what a change is, its bytes (a command in the metadata group's log,
//! storage-format.md "The metadata group's commands"), and how a broker
//! applies one.
//!
//! Every entry point that makes such a change (AMQP methods, the HTTP API,
//! the control socket, a definitions import) builds a [`Change`] and hands
//! it to [`Broker::change`]. A single node applies it at once. A node of a
//! cluster hands it to its [`ChangeRouter`] instead, which commits it in
//! the metadata group; every node then applies it, in log order, with
//! [`Broker::apply_change`], so every node holds the same definitions.
//!
//! What is replicated so far: virtual hosts, users, permissions, topic
//! permissions, user and vhost limits, policies, exchanges and the
//! bindings between exchanges, and a replicated quorum queue's declare,
//! bindings, delete and members (`broker::replicas`). Classic queues,
//! streams and the bindings to them stay on the node that made them
//! (ARCHITECTURE.md, "The cluster").

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use serde::{Deserialize, Serialize};

use super::{AmqpError, Broker, Destination, Policy, Result, Scope, VhostError, VhostInfo, VhostLimits};
use crate::access::{AccessError, Permission, TopicPermission, User, UserLimits};
use crate::protocol::Method;
use crate::protocol::reply;

const KIND_EXCHANGE: u8 = 1;
const KIND_VHOST_ADD: u8 = 2;
const KIND_VHOST_PUT: u8 = 3;
const KIND_VHOST_DELETE: u8 = 4;
const KIND_SETTING: u8 = 5;
const KIND_QUEUE: u8 = 6;
const KIND_QUEUE_MEMBERS: u8 = 7;

/// A change to the shared definitions.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `exchange.declare`, `exchange.delete`, `exchange.bind` or
    /// `exchange.unbind` in `vhost`, as the AMQP method (its own bytes in
    /// the log keep every argument's type). A node of a cluster judges a
    /// delete's `if-unused` itself (queue bindings are its own) and
    /// proposes the delete without it.
    Exchange {
        vhost: String,
        method: Method,
    },
    /// `add_vhost`: creates the vhost unless it exists.
    VhostAdd(VhostInfo),
    /// PUT of a vhost: creates it or replaces its description and tags.
    VhostPut(VhostInfo),
    VhostDelete(String),
    /// Users, permissions, limits and policies.
    Setting(SettingChange),
    /// A replicated quorum queue's `queue.declare` (with its `replica`),
    /// `queue.delete` (its `if-unused` and `if-empty` judged where it was
    /// made, and proposed without them), `queue.bind` or `queue.unbind`
    /// (`broker::replicas`).
    Queue {
        vhost: String,
        method: Method,
        replica: Option<super::replicas::Replica>,
    },
    /// A change to a replicated quorum queue's members
    /// (`broker::replicas`, `cluster::membership`).
    QueueMembers {
        vhost: String,
        name: String,
        change: super::replicas::MemberChange,
    },
}

/// A change to users, permissions, limits or policies (JSON in the log).
/// A password is hashed where the change is made, so every node of a
/// cluster stores the same hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum SettingChange {
    /// add_user: refuses a user that exists.
    AddUser {
        user: User,
    },
    /// A user as given (a definitions import, a PUT with a hash): added or
    /// replaced.
    PutUser {
        user: User,
    },
    ChangePassword {
        name: String,
        password_hash: String,
    },
    SetUserTags {
        name: String,
        tags: Vec<String>,
    },
    /// Deletes the user with its permissions; every node closes the
    /// user's connections.
    DeleteUser {
        name: String,
    },
    SetPermissions {
        permission: Permission,
    },
    ClearPermissions {
        user: String,
        vhost: String,
    },
    SetTopicPermissions {
        permission: TopicPermission,
    },
    ClearTopicPermissions {
        user: String,
        vhost: String,
        exchange: String,
    },
    /// Merged into the user's limits.
    SetUserLimits {
        user: String,
        limits: UserLimits,
    },
    /// One limit by name, or "all".
    ClearUserLimits {
        user: String,
        name: String,
    },
    SetPolicy {
        policy: Policy,
        operator: bool,
    },
    ClearPolicy {
        vhost: String,
        name: String,
        operator: bool,
    },
    /// Replaces the vhost's limits (empty: none).
    SetVhostLimits {
        vhost: String,
        limits: VhostLimits,
    },
}

/// Where a node of a cluster sends its changes: the metadata group.
pub trait ChangeRouter: Send + Sync + 'static {
    /// Commits `change`; resolves once this node has applied it, with the
    /// result of applying it.
    fn propose(&self, change: Change) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;
}

impl Change {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        match self {
            Change::Exchange { vhost, method } => {
                out.put_u8(KIND_EXCHANGE);
                put_str(&mut out, vhost);
                method.encode(&mut out);
            }
            Change::VhostAdd(info) | Change::VhostPut(info) => {
                out.put_u8(if matches!(self, Change::VhostAdd(_)) { KIND_VHOST_ADD } else { KIND_VHOST_PUT });
                // A VhostInfo always serializes.
                out.extend_from_slice(&serde_json::to_vec(info).unwrap_or_default());
            }
            Change::VhostDelete(name) => {
                out.put_u8(KIND_VHOST_DELETE);
                out.extend_from_slice(name.as_bytes());
            }
            Change::Setting(setting) => {
                out.put_u8(KIND_SETTING);
                // Plain data: it always serializes.
                out.extend_from_slice(&serde_json::to_vec(setting).unwrap_or_default());
            }
            Change::Queue { vhost, method, replica } => {
                out.put_u8(KIND_QUEUE);
                put_str(&mut out, vhost);
                // Plain data: it always serializes.
                let replica = replica.as_ref().map(|r| serde_json::to_vec(r).unwrap_or_default()).unwrap_or_default();
                out.put_u32_le(replica.len() as u32);
                out.extend_from_slice(&replica);
                method.encode(&mut out);
            }
            Change::QueueMembers { vhost, name, change } => {
                out.put_u8(KIND_QUEUE_MEMBERS);
                put_str(&mut out, vhost);
                put_str(&mut out, name);
                // Plain data: it always serializes.
                out.extend_from_slice(&serde_json::to_vec(change).unwrap_or_default());
            }
        }
        out.freeze()
    }

    /// Reads a change back; Err names what was wrong (the bytes come from
    /// the log or a peer).
    pub fn decode(bytes: &Bytes) -> std::result::Result<Change, String> {
        let (&kind, rest) = bytes.split_first().ok_or("an empty change")?;
        let rest = bytes.slice(bytes.len() - rest.len()..);
        match kind {
            KIND_EXCHANGE => {
                let (vhost, method) = take_str(&rest).ok_or("a change whose vhost is cut short")?;
                let method = Method::decode(method).map_err(|e| format!("a change's method: {e}"))?;
                match method {
                    Method::ExchangeDeclare(_)
                    | Method::ExchangeDelete(_)
                    | Method::ExchangeBind(_)
                    | Method::ExchangeUnbind(_) => Ok(Change::Exchange { vhost, method }),
                    other => Err(format!("{} is not a change to the shared definitions", other.name())),
                }
            }
            KIND_VHOST_ADD | KIND_VHOST_PUT => {
                let info: VhostInfo = serde_json::from_slice(&rest).map_err(|e| format!("a vhost change: {e}"))?;
                Ok(if kind == KIND_VHOST_ADD { Change::VhostAdd(info) } else { Change::VhostPut(info) })
            }
            KIND_VHOST_DELETE => {
                let name = std::str::from_utf8(&rest).map_err(|_| "a vhost name that is not UTF-8")?;
                Ok(Change::VhostDelete(name.to_string()))
            }
            KIND_SETTING => {
                let setting = serde_json::from_slice(&rest).map_err(|e| format!("a settings change: {e}"))?;
                Ok(Change::Setting(setting))
            }
            KIND_QUEUE => {
                let (vhost, rest) = take_str(&rest).ok_or("a queue change whose vhost is cut short")?;
                let len = rest.get(..4).ok_or("a queue change cut short")?;
                let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                let replica = rest.get(4..4 + len).ok_or("a queue change whose members are cut short")?;
                let replica = match len {
                    0 => None,
                    _ => Some(serde_json::from_slice(replica).map_err(|e| format!("a queue change's members: {e}"))?),
                };
                let method = Method::decode(rest.slice(4 + len..)).map_err(|e| format!("a change's method: {e}"))?;
                match method {
                    Method::QueueDeclare(_)
                    | Method::QueueDelete(_)
                    | Method::QueueBind(_)
                    | Method::QueueUnbind(_) => Ok(Change::Queue { vhost, method, replica }),
                    other => Err(format!("{} is not a change to the shared definitions", other.name())),
                }
            }
            KIND_QUEUE_MEMBERS => {
                let (vhost, rest) = take_str(&rest).ok_or("a members change whose vhost is cut short")?;
                let (name, rest) = take_str(&rest).ok_or("a members change whose queue is cut short")?;
                let change = serde_json::from_slice(&rest).map_err(|e| format!("a members change: {e}"))?;
                Ok(Change::QueueMembers { vhost, name, change })
            }
            other => Err(format!("unknown change kind {other}")),
        }
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    let len = s.len().min(u16::MAX as usize);
    out.put_u16_le(len as u16);
    out.extend_from_slice(&s.as_bytes()[..len]);
}

fn take_str(bytes: &Bytes) -> Option<(String, Bytes)> {
    let len = u16::from_le_bytes([*bytes.first()?, *bytes.get(1)?]) as usize;
    let text = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?.to_string();
    Some((text, bytes.slice(2 + len..)))
}

/// The outcome of applying a change, as the metadata group replies it:
/// `0`, or `1`, the reply code u16, the scope u8 (0 channel, 1
/// connection) and the text.
pub fn encode_outcome(outcome: &Result<()>) -> Bytes {
    let mut out = BytesMut::new();
    match outcome {
        Ok(()) => out.put_u8(0),
        Err(e) => {
            out.put_u8(1);
            out.put_u16_le(e.code);
            out.put_u8(matches!(e.scope, Scope::Connection) as u8);
            out.extend_from_slice(e.text.as_bytes());
        }
    }
    out.freeze()
}

pub fn decode_outcome(bytes: &[u8]) -> std::result::Result<Result<()>, String> {
    match bytes.split_first() {
        Some((0, [])) => Ok(Ok(())),
        Some((1, [c0, c1, scope @ (0 | 1), text @ ..])) => {
            let text = std::str::from_utf8(text).map_err(|_| "an error text that is not UTF-8")?;
            let scope = if *scope == 1 { Scope::Connection } else { Scope::Channel };
            Ok(Err(AmqpError { code: u16::from_le_bytes([*c0, *c1]), text: text.to_string(), scope }))
        }
        _ => Err("an undecodable outcome of a change".to_string()),
    }
}

/// A vhost error as the change's outcome: NOT_FOUND for a missing vhost,
/// PRECONDITION_FAILED for a refused one, INTERNAL_ERROR for the log.
fn vhost_outcome(result: std::result::Result<(), VhostError>) -> Result<()> {
    result.map_err(|e| match e {
        VhostError::NoVhost(_) => AmqpError::channel(reply::NOT_FOUND, e),
        VhostError::Invalid(_) => AmqpError::channel(reply::PRECONDITION_FAILED, e),
        VhostError::Store(_) => AmqpError::connection(reply::INTERNAL_ERROR, e),
    })
}

/// An access error as the change's outcome: NOT_FOUND for a missing
/// user, PRECONDITION_FAILED for a refused change, INTERNAL_ERROR for the
/// log.
fn access_outcome(result: std::result::Result<(), AccessError>) -> Result<()> {
    result.map_err(|e| match e {
        AccessError::NoUser(_) => AmqpError::channel(reply::NOT_FOUND, e),
        AccessError::UserExists(_) | AccessError::Invalid(_) => AmqpError::channel(reply::PRECONDITION_FAILED, e),
        AccessError::Store(_) => AmqpError::connection(reply::INTERNAL_ERROR, e),
    })
}

/// What a change's error says, without the reply code's name (the HTTP
/// API and the control socket report it in their own words).
pub fn detail(e: &AmqpError) -> String {
    e.text.split_once(" - ").map_or(e.text.as_str(), |(_, d)| d).to_string()
}

/// Whether a change failed because what it names does not exist.
pub fn is_not_found(e: &AmqpError) -> bool {
    e.code == reply::NOT_FOUND
}

impl Broker {
    /// Routes this node's changes through `router` (a node of a cluster:
    /// the metadata group) from now on.
    pub fn set_change_router(&self, router: Arc<dyn ChangeRouter>) {
        *self.change_router.write() = Some(router);
    }

    /// Whether this node's changes go through a cluster's metadata group.
    pub fn is_clustered(&self) -> bool {
        self.change_router.read().is_some()
    }

    /// Makes a change: at once on a single node; on a node of a cluster,
    /// once the metadata group has committed it and this node applied it.
    pub async fn change(&self, change: Change) -> Result<()> {
        let router = self.change_router.read().clone();
        match router {
            Some(router) => router.propose(change).await,
            None => self.apply_change(&change),
        }
    }

    /// Makes a change from code that cannot wait asynchronously (the
    /// control socket, a definitions import): on a node of a cluster it
    /// waits for the metadata group on this thread (a runtime worker
    /// hands its other tasks over meanwhile).
    pub fn change_blocking(&self, change: Change) -> Result<()> {
        let router = self.change_router.read().clone();
        match (router, tokio::runtime::Handle::try_current()) {
            (None, _) => self.apply_change(&change),
            (Some(router), Ok(handle)) => tokio::task::block_in_place(|| handle.block_on(router.propose(change))),
            (Some(_), Err(_)) => Err(AmqpError::connection(
                reply::INTERNAL_ERROR,
                "a change to a cluster's definitions was made outside the runtime",
            )),
        }
    }

    /// Applies a change to this node's definitions (a single node at
    /// once; a node of a cluster in the metadata group's log order).
    pub fn apply_change(&self, change: &Change) -> Result<()> {
        match change {
            Change::Exchange { vhost, method } => match method {
                Method::ExchangeDeclare(m) => self.exchange_declare(vhost, m),
                Method::ExchangeDelete(m) => self.exchange_delete(vhost, &m.exchange, m.if_unused),
                Method::ExchangeBind(m) => self.bind(
                    vhost,
                    0,
                    &m.source,
                    Destination::Exchange(m.destination.clone()),
                    &m.routing_key,
                    &m.arguments,
                ),
                Method::ExchangeUnbind(m) => self.unbind(
                    vhost,
                    0,
                    &m.source,
                    Destination::Exchange(m.destination.clone()),
                    &m.routing_key,
                    &m.arguments,
                ),
                other => Err(AmqpError::command_invalid(format!("{} is not a definitions change", other.name()))),
            },
            Change::VhostAdd(info) => vhost_outcome(self.add_vhost(info.clone())),
            Change::VhostPut(info) => vhost_outcome(self.put_vhost(info.clone())),
            Change::VhostDelete(name) => vhost_outcome(self.delete_vhost(name)),
            Change::Setting(setting) => self.apply_setting(setting),
            Change::Queue { vhost, method, replica } => self.apply_queue_change(vhost, method, replica.as_ref()),
            Change::QueueMembers { vhost, name, change } => self.apply_member_change(vhost, name, change),
        }
    }

    fn apply_setting(&self, setting: &SettingChange) -> Result<()> {
        let access = self.access();
        let refused = |e: String| AmqpError::channel(reply::PRECONDITION_FAILED, e);
        match setting.clone() {
            SettingChange::AddUser { user } => access_outcome(access.add_user_record(user)),
            SettingChange::PutUser { user } => access_outcome(access.import_user(user)),
            SettingChange::ChangePassword { name, password_hash } => {
                access_outcome(access.set_password_hash(&name, password_hash))
            }
            SettingChange::SetUserTags { name, tags } => access_outcome(access.set_user_tags(&name, tags)),
            SettingChange::DeleteUser { name } => {
                access_outcome(access.delete_user(&name))?;
                // As RabbitMQ: a deleted user's connections go too.
                self.close_connections_of(&name, &format!("user '{name}' is deleted"));
                Ok(())
            }
            SettingChange::SetPermissions { permission: p } => {
                self.require_vhost(&p.vhost)?;
                access_outcome(access.set_permissions(&p.user, &p.vhost, &p.configure, &p.write, &p.read))
            }
            SettingChange::ClearPermissions { user, vhost } => access_outcome(access.clear_permissions(&user, &vhost)),
            SettingChange::SetTopicPermissions { permission } => {
                self.require_vhost(&permission.vhost)?;
                access_outcome(access.set_topic_permissions(permission))
            }
            SettingChange::ClearTopicPermissions { user, vhost, exchange } => {
                access_outcome(access.clear_topic_permissions(&user, &vhost, &exchange))
            }
            SettingChange::SetUserLimits { user, limits } => access_outcome(access.set_user_limits(&user, limits)),
            SettingChange::ClearUserLimits { user, name } => access_outcome(access.clear_user_limits(&user, &name)),
            SettingChange::SetPolicy { policy, operator } => self.set_policy(policy, operator).map_err(refused),
            SettingChange::ClearPolicy { vhost, name, operator } => {
                self.clear_policy(&vhost, &name, operator).map_err(refused)
            }
            SettingChange::SetVhostLimits { vhost, limits } => vhost_outcome(self.set_vhost_limits(&vhost, limits)),
        }
    }

    fn require_vhost(&self, vhost: &str) -> Result<()> {
        if self.vhost_exists(vhost) {
            Ok(())
        } else {
            Err(AmqpError::channel(reply::NOT_FOUND, format!("Virtual host '{vhost}' does not exist")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::replicas::{Member, MemberChange, Replica};
    use crate::protocol::FieldTable;
    use crate::protocol::method::{ExchangeBind, ExchangeDeclare, QueueDeclare, QueueDelete, QueuePurge};
    use crate::protocol::table::FieldValue;

    #[test]
    fn changes_round_trip_with_their_argument_types() {
        let mut arguments = FieldTable::new();
        let mut quorum = FieldTable::new();
        quorum.insert("x-queue-type", FieldValue::string("quorum"));
        arguments.insert("alternate-exchange", FieldValue::string("ae"));
        arguments.insert("x-n", FieldValue::I16(-3));
        let changes = [
            Change::Exchange {
                vhost: "/prod".into(),
                method: ExchangeDeclare {
                    exchange: "logs".into(),
                    kind: "topic".into(),
                    durable: true,
                    arguments: arguments.clone(),
                    ..Default::default()
                }
                .into(),
            },
            Change::Exchange {
                vhost: "/".into(),
                method: ExchangeBind {
                    destination: "d".into(),
                    source: "s".into(),
                    routing_key: "a.#".into(),
                    arguments,
                    ..Default::default()
                }
                .into(),
            },
            Change::VhostAdd(VhostInfo {
                name: "qa".into(),
                description: "tests".into(),
                tags: vec!["t".into()],
                default_queue_type: Some("quorum".into()),
            }),
            Change::VhostPut(VhostInfo {
                name: "qa".into(),
                description: String::new(),
                tags: vec![],
                default_queue_type: None,
            }),
            Change::VhostDelete("qa".into()),
            Change::Setting(SettingChange::AddUser { user: User::new("carol", "s3cret", vec!["monitoring".into()]) }),
            Change::Setting(SettingChange::ClearTopicPermissions {
                user: "carol".into(),
                vhost: "/".into(),
                exchange: "amq.topic".into(),
            }),
            Change::Queue {
                vhost: "/".into(),
                method: QueueDeclare {
                    queue: "orders".into(),
                    durable: true,
                    arguments: quorum.clone(),
                    ..Default::default()
                }
                .into(),
                replica: Some(Replica {
                    group: 0x5eed,
                    members: vec![Member::new("beta@h", 7), Member::new("alpha@h", 3)],
                }),
            },
            Change::QueueMembers {
                vhost: "/".into(),
                name: "orders".into(),
                change: MemberChange::Add { member: Member { added: true, ..Member::new("gamma@h", 9) } },
            },
            Change::QueueMembers {
                vhost: "/".into(),
                name: "orders".into(),
                change: MemberChange::Remove { node: "beta@h".into(), id: 7 },
            },
            Change::Queue {
                vhost: "/".into(),
                method: QueueDelete { queue: "orders".into(), ..Default::default() }.into(),
                replica: None,
            },
        ];
        for change in changes {
            let bytes = change.encode();
            assert_eq!(Change::decode(&bytes), Ok(change.clone()));
            for cut in 0..bytes.len() {
                // Cut short, a change is an error or (for text at the end)
                // another change; never a panic.
                let _ = Change::decode(&bytes.slice(..cut));
            }
        }
        let not_a_change = Change::Exchange { vhost: "/".into(), method: QueueDelete::default().into() }.encode();
        assert!(Change::decode(&not_a_change).unwrap_err().contains("queue.delete"));
        let not_a_change = Change::Queue { vhost: "/".into(), method: QueuePurge::default().into(), replica: None };
        assert!(Change::decode(&not_a_change.encode()).unwrap_err().contains("queue.purge"));
        assert_eq!(Change::decode(&Bytes::from_static(&[9])), Err("unknown change kind 9".to_string()));
    }

    #[test]
    fn outcomes_round_trip() {
        for outcome in [
            Ok(()),
            Err(AmqpError::precondition("inequivalent arg 'type' for exchange 'x'")),
            Err(AmqpError::connection(reply::INTERNAL_ERROR, "the log failed")),
        ] {
            assert_eq!(decode_outcome(&encode_outcome(&outcome)), Ok(outcome));
        }
        assert!(decode_outcome(&[1, 0]).is_err());
        assert!(decode_outcome(&[]).is_err());
    }
}
