//! Virtual hosts, the unit of the model: each has its own exchanges (the
//! predeclared `amq.*` set included), queues and their bindings, policies
//! and limits (`max-connections`, `max-queues`). Created, listed and
//! deleted here, and kept in the log as parameter records (kind `vhost`
//! keyed by the name, kind `vhost-limits` likewise).
//!
//! Deleting a vhost logs its own removal first, then the removal of what
//! it held; a crash in between leaves things of a vhost that no longer
//! exists, which the next start removes (see [`Broker::restore`]), so a
//! deleted vhost never comes back.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::policies::ActivePolicy;
use super::*;
use crate::store::format::{DEFAULT_VHOST, ParameterKind};

/// The exchanges every vhost has from its creation.
const PREDECLARED_EXCHANGES: [(&str, ExchangeKind); 6] = [
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// A vhost's description, tags and default queue type, as stored (the
/// shape of a vhost in RabbitMQ's HTTP API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostInfo {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// `classic` or `quorum`: the type of a queue declared without
    /// `x-queue-type`, where that type can take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_queue_type: Option<String>,
}

/// `max-connections` and `max-queues`; a negative value (or none) means no
/// limit, 0 allows none, as in RabbitMQ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostLimits {
    #[serde(rename = "max-connections", default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i64>,
    #[serde(rename = "max-queues", default, skip_serializing_if = "Option::is_none")]
    pub max_queues: Option<i64>,
}

impl VhostLimits {
    /// Parses a `set_vhost_limits` definition: a JSON object with only
    /// these two integer keys.
    pub fn parse(definition: &Map<String, Value>) -> std::result::Result<VhostLimits, String> {
        let mut limits = VhostLimits::default();
        for (key, value) in definition {
            let n = value.as_i64().ok_or_else(|| format!("Validation failed\n\n{key} should be a number"))?;
            match key.as_str() {
                "max-connections" => limits.max_connections = Some(n),
                "max-queues" => limits.max_queues = Some(n),
                other => return Err(format!("Validation failed\n\nUnrecognised terms [{{<<\"{other}\">>,{n}}}]")),
            }
        }
        Ok(limits)
    }

    pub fn is_empty(&self) -> bool {
        self.max_connections.is_none() && self.max_queues.is_none()
    }

    /// The limit when `count` more would break it: at or over a limit of
    /// 0 or more (a negative limit is none).
    fn reached(limit: Option<i64>, count: usize) -> Option<i64> {
        limit.filter(|l| *l >= 0 && count as i64 >= *l)
    }
}

/// One vhost's model.
#[derive(Debug)]
pub struct VHost {
    pub info: VhostInfo,
    pub limits: VhostLimits,
    pub(super) exchanges: HashMap<String, Exchange>,
    pub(super) queues: HashMap<Arc<str>, Arc<super::QueueLock>>,
    pub(super) policies: Vec<ActivePolicy>,
    pub(super) operator_policies: Vec<ActivePolicy>,
}

impl VHost {
    fn new(info: VhostInfo) -> VHost {
        let mut exchanges = HashMap::default();
        for (name, kind) in PREDECLARED_EXCHANGES {
            exchanges.insert(name.to_string(), Exchange::new(name, kind, true, false, false, FieldTable::new()));
        }
        VHost {
            info,
            limits: VhostLimits::default(),
            exchanges,
            queues: HashMap::default(),
            policies: Vec::new(),
            operator_policies: Vec::new(),
        }
    }
}

/// Why a vhost change was refused.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    #[error("Virtual host '{0}' does not exist")]
    NoVhost(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the log refused the change: {0}")]
    Store(#[from] StoreError),
}

/// What `list_vhosts` shows of one vhost.
#[derive(Debug, Clone, Serialize)]
pub struct VhostRow {
    #[serde(flatten)]
    pub info: VhostInfo,
    pub limits: VhostLimits,
    pub queues: usize,
    pub exchanges: usize,
    pub connections: usize,
    pub messages: usize,
}

fn check_vhost_name(name: &str) -> std::result::Result<(), VhostError> {
    if name.is_empty() || name.len() > 255 || name.contains('\0') {
        return Err(VhostError::Invalid(format!(
            "'{name}' is not a valid vhost name (1 to 255 bytes of UTF-8, no NUL)"
        )));
    }
    Ok(())
}

impl Broker {
    /// Rebuilds the vhosts and their limits from the log's parameters; a
    /// log with no vhost at all (a first start, or one from before vhosts
    /// were stored) gets the default vhost "/", as RabbitMQ's first boot does.
    pub(super) fn restore_vhosts(
        &self,
        parameters: &std::collections::BTreeMap<(ParameterKind, String), bytes::Bytes>,
    ) -> std::result::Result<(), VhostError> {
        {
            let mut st = self.state.write();
            for ((kind, key), value) in parameters {
                if *kind != ParameterKind::Vhost {
                    continue;
                }
                match serde_json::from_slice::<VhostInfo>(value) {
                    Ok(info) => {
                        st.vhosts.insert(Arc::from(key.as_str()), VHost::new(info));
                    }
                    Err(e) => tracing::error!("stored vhost '{key}' cannot be read, skipped: {e}"),
                }
            }
            for ((kind, key), value) in parameters {
                if *kind != ParameterKind::VhostLimits {
                    continue;
                }
                match (serde_json::from_slice::<VhostLimits>(value), st.vhosts.get_mut(key.as_str())) {
                    (Ok(limits), Some(v)) => v.limits = limits,
                    (Err(e), _) => tracing::error!("stored limits of vhost '{key}' cannot be read, skipped: {e}"),
                    (Ok(_), None) => self.forget_parameter(ParameterKind::VhostLimits, key),
                }
            }
            if !st.vhosts.is_empty() {
                return Ok(());
            }
        }
        let info = VhostInfo {
            name: DEFAULT_VHOST.to_string(),
            description: "Default virtual host".to_string(),
            tags: Vec::new(),
            default_queue_type: None,
        };
        self.add_vhost(info)
    }

    /// Logs the removal of a parameter left over from a deleted vhost.
    pub(super) fn forget_parameter(&self, kind: ParameterKind, key: &str) {
        if let Err(e) = self.store.define(Record::ParameterDelete { kind, key: key.to_string() }) {
            tracing::error!("cannot remove the {} '{key}' of a deleted vhost: {e}", kind.name());
        }
    }

    /// add_vhost: creates the vhost with its predeclared exchanges; adding
    /// one that exists changes nothing, as in RabbitMQ.
    pub fn add_vhost(&self, info: VhostInfo) -> std::result::Result<(), VhostError> {
        self.write_vhost(info, false)
    }

    /// PUT of a vhost over HTTP: creates it, or replaces the description,
    /// tags and default queue type of one that exists.
    pub fn put_vhost(&self, info: VhostInfo) -> std::result::Result<(), VhostError> {
        self.write_vhost(info, true)
    }

    fn write_vhost(&self, info: VhostInfo, replace: bool) -> std::result::Result<(), VhostError> {
        check_vhost_name(&info.name)?;
        if let Some(t) = info.default_queue_type.as_deref()
            && QueueType::parse(t).is_none()
        {
            return Err(VhostError::Invalid(format!("Unsupported default queue type '{t}'")));
        }
        let mut st = self.state.write();
        let exists = st.vhosts.contains_key(info.name.as_str());
        if exists && !replace {
            return Ok(());
        }
        let value = serde_json::to_vec(&info).map_err(|e| VhostError::Invalid(e.to_string()))?;
        let record = Record::Parameter { kind: ParameterKind::Vhost, key: info.name.clone(), value: value.into() };
        self.store.define(record)?;
        match st.vhosts.get_mut(info.name.as_str()) {
            Some(v) => v.info = info,
            None => {
                tracing::info!("vhost '{}' added", info.name);
                st.vhosts.insert(Arc::from(info.name.as_str()), VHost::new(info));
            }
        }
        Ok(())
    }

    /// delete_vhost: closes its connections (320 CONNECTION_FORCED), then
    /// removes its queues with their messages, its exchanges, bindings,
    /// policies and limits, and every user's permissions in it.
    pub fn delete_vhost(&self, name: &str) -> std::result::Result<(), VhostError> {
        let mut st = self.state.write();
        let Some((vhost, _)) = st.vhosts.get_key_value(name).map(|(k, v)| (k.clone(), v.limits)) else {
            return Err(VhostError::NoVhost(name.to_string()));
        };
        // The vhost's own record goes first: from here on a restart
        // finishes the removal rather than bring the vhost back.
        self.store.define(Record::ParameterDelete { kind: ParameterKind::Vhost, key: name.to_string() })?;
        tracing::info!("deleting vhost '{name}'");
        let explanation = format!("vhost '{name}' is deleted");
        for c in st.connections.values().filter(|c| c.vhost == vhost) {
            c.handle.event(BrokerEvent::CloseConnection { explanation: explanation.clone() });
        }
        let queues: Vec<Arc<str>> =
            st.vhosts.get(&vhost).map(|v| v.queues.keys().cloned().collect()).unwrap_or_default();
        for queue in queues {
            st.delete_queue(&vhost, &queue, &self.store);
        }
        if let Some(v) = st.vhosts.remove(&vhost) {
            self.forget_vhost_contents(&v);
        }
        drop(st);
        if let Err(e) = self.access.forget_vhost(name) {
            tracing::error!("permissions in deleted vhost '{name}' not all removed: {e}");
        }
        Ok(())
    }

    /// Logs the removal of a removed vhost's durable exchanges (their
    /// bindings go with them in the log), policies and limits.
    fn forget_vhost_contents(&self, v: &VHost) {
        for ex in v.exchanges.values().filter(|e| e.durable && !e.name.is_empty() && !e.name.starts_with("amq.")) {
            let record = Record::ExchangeDelete { vhost: v.info.name.clone(), name: ex.name.clone() };
            if let Err(e) = self.store.define(record) {
                tracing::error!("exchange '{}' of a deleted vhost stays in the log: {e}", ex.name);
            }
        }
        for p in &v.policies {
            self.forget_parameter(ParameterKind::Policy, &format!("{}\0{}", v.info.name, p.policy.name));
        }
        for p in &v.operator_policies {
            self.forget_parameter(ParameterKind::OperatorPolicy, &format!("{}\0{}", v.info.name, p.policy.name));
        }
        if !v.limits.is_empty() {
            self.forget_parameter(ParameterKind::VhostLimits, &v.info.name);
        }
    }

    /// Every vhost with its counts, by name.
    pub fn list_vhosts(&self) -> Vec<VhostRow> {
        let st = self.state.read();
        let mut rows: Vec<VhostRow> = st
            .vhosts
            .iter()
            .map(|(name, v)| VhostRow {
                info: v.info.clone(),
                limits: v.limits,
                queues: v.queues.len(),
                exchanges: v.exchanges.len(),
                connections: st.connections.values().filter(|c| c.vhost == *name).count(),
                messages: v.queues.values().map(|q| q.lock().message_count()).sum(),
            })
            .collect();
        rows.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        rows
    }

    pub fn vhost_exists(&self, name: &str) -> bool {
        self.state.read().vhosts.contains_key(name)
    }

    /// set_vhost_limits: replaces the vhost's limits with `limits` (an empty
    /// definition clears them, as clear_vhost_limits does).
    pub fn set_vhost_limits(&self, name: &str, limits: VhostLimits) -> std::result::Result<(), VhostError> {
        let mut st = self.state.write();
        let v = st.vhosts.get_mut(name).ok_or_else(|| VhostError::NoVhost(name.to_string()))?;
        let record = if limits.is_empty() {
            Record::ParameterDelete { kind: ParameterKind::VhostLimits, key: name.to_string() }
        } else {
            let value = serde_json::to_vec(&limits).map_err(|e| VhostError::Invalid(e.to_string()))?;
            Record::Parameter { kind: ParameterKind::VhostLimits, key: name.to_string(), value: value.into() }
        };
        self.store.define(record)?;
        v.limits = limits;
        Ok(())
    }

    pub fn vhost_limits(&self, name: &str) -> Option<VhostLimits> {
        self.state.read().vhosts.get(name).map(|v| v.limits)
    }
}

impl State {
    /// Refuses a connection when the broker is at its `connection_max`, to
    /// a vhost that does not exist or is at its `max-connections`, or for a
    /// user at its own `max-connections` (`user_max`), with RabbitMQ's texts
    /// (530 NOT_ALLOWED) and in RabbitMQ's order.
    pub(super) fn check_connection_limit(&self, vhost: &str, user: &str, user_max: Option<i64>) -> Result<()> {
        // The node's own limit first, as RabbitMQ checks it.
        if let Some(max) = self.connection_max
            && self.connections.len() >= max
        {
            return Err(AmqpError::connection(
                reply::NOT_ALLOWED,
                format!("connection refused: node connection limit ({max}) is reached"),
            ));
        }
        let Some(v) = self.vhosts.get(vhost) else {
            return Err(AmqpError::connection(reply::NOT_ALLOWED, format!("vhost {vhost} not found")));
        };
        let open = self.connections.values().filter(|c| &*c.vhost == vhost).count();
        if let Some(limit) = VhostLimits::reached(v.limits.max_connections, open) {
            return Err(AmqpError::connection(
                reply::NOT_ALLOWED,
                format!("access to vhost '{vhost}' refused for user '{user}': connection limit ({limit}) is reached"),
            ));
        }
        let mine = self.connections.values().filter(|c| c.info.user == user).count();
        match VhostLimits::reached(user_max, mine) {
            Some(limit) => Err(AmqpError::connection(
                reply::NOT_ALLOWED,
                format!("connection refused for user '{user}': user connection limit ({limit}) is reached"),
            )),
            None => Ok(()),
        }
    }

    /// Refuses a new queue in a vhost at its `max-queues` (406, RabbitMQ's text).
    pub(super) fn check_queue_limit(&self, vhost: &str, queue: &str) -> Result<()> {
        let Some(v) = self.vhosts.get(vhost) else { return Err(no_vhost(vhost)) };
        match VhostLimits::reached(v.limits.max_queues, v.queues.len()) {
            Some(limit) => Err(AmqpError::precondition(format!(
                "cannot declare queue '{queue}': queue limit in vhost '{vhost}' ({limit}) is reached"
            ))),
            None => Ok(()),
        }
    }
}
