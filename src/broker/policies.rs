//! Policies and operator policies: queue settings an operator applies by
//! name pattern instead of `x-` arguments, as RabbitMQ has them. For each
//! queue the matching policy of highest priority applies (and likewise one
//! operator policy); its definition is merged with the queue's arguments by
//! RabbitMQ's rules: the lower of the two for TTLs, expiry, lengths,
//! delivery limit and consumer timeout, the argument's value for the
//! dead-letter settings and overflow. Changes apply to existing queues at
//! once and are kept in the log as parameter records.

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::arguments::{DEFAULT_DELIVERY_LIMIT, Overflow};
use super::*;
use crate::store::format::ParameterKind;

/// The definition keys a policy may set (RabbitMQ's names). `max-priority`
/// is argument-only, as in RabbitMQ.
const KEYS: &[&str] = &[
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "overflow",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "delivery-limit",
    "consumer-timeout",
    "queue-mode",
    "queue-version",
    "alternate-exchange",
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
    "queue-leader-locator",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "dead-letter-strategy",
    "max-age",
    "stream-max-segment-size-bytes",
    "stream-filter-size-bytes",
    "initial-cluster-size",
];

/// A policy as RabbitMQ's definitions file has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    #[serde(rename = "apply-to", default = "all")]
    pub apply_to: String,
    pub definition: Map<String, Value>,
    #[serde(default)]
    pub priority: i64,
}

fn all() -> String {
    "all".to_string()
}

/// A policy with its pattern compiled.
#[derive(Debug, Clone)]
pub(super) struct ActivePolicy {
    pub policy: Policy,
    pattern: Regex,
}

impl ActivePolicy {
    fn applies_to_queue(&self, q: &Queue) -> bool {
        let kind_ok = match self.policy.apply_to.as_str() {
            "all" | "queues" => true,
            "classic_queues" => q.args.queue_type == QueueType::Classic,
            "quorum_queues" => q.args.queue_type == QueueType::Quorum,
            "streams" => q.args.queue_type == QueueType::Stream,
            _ => false,
        };
        kind_ok && self.pattern.is_match(&q.name)
    }

    fn applies_to_exchange(&self, name: &str) -> bool {
        matches!(self.policy.apply_to.as_str(), "all" | "exchanges") && self.pattern.is_match(name)
    }
}

/// Checks a policy as RabbitMQ's `set_policy` does.
pub fn validate(policy: &Policy) -> std::result::Result<Regex, String> {
    let pattern = Regex::new(&policy.pattern).map_err(|e| format!("invalid pattern '{}': {e}", policy.pattern))?;
    if !["all", "queues", "exchanges", "classic_queues", "quorum_queues", "streams"].contains(&policy.apply_to.as_str())
    {
        return Err(format!("'{}' is not a valid apply-to value", policy.apply_to));
    }
    if policy.definition.is_empty() {
        return Err("Validation failed\n\nno policy provided".into());
    }
    let unknown: Vec<&String> = policy.definition.keys().filter(|k| !KEYS.contains(&k.as_str())).collect();
    if !unknown.is_empty() {
        return Err(format!("Validation failed\n\n{unknown:?} are not recognised policy settings"));
    }
    for (key, value) in &policy.definition {
        let ok = match key.as_str() {
            "message-ttl" | "max-length" | "max-length-bytes" | "consumer-timeout" => value.as_u64().is_some(),
            "expires" => value.as_u64().is_some_and(|n| n > 0),
            "delivery-limit" => value.as_i64().is_some(),
            "max-age" => value.as_str().and_then(super::arguments::parse_max_age).is_some(),
            "stream-max-segment-size-bytes" | "stream-filter-size-bytes" | "initial-cluster-size" => {
                value.as_u64().is_some()
            }
            "overflow" => matches!(value.as_str(), Some("drop-head" | "reject-publish" | "reject-publish-dlx")),
            "dead-letter-exchange" | "dead-letter-routing-key" | "alternate-exchange" => value.is_string(),
            _ => true,
        };
        if !ok {
            return Err(format!("Validation failed\n\n{value} is not a valid value for '{key}'"));
        }
    }
    Ok(pattern)
}

fn lower(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// The queue settings from its arguments, its policy and its operator
/// policy, by RabbitMQ's precedence rules.
pub(super) fn effective_args(q: &Queue, policy: Option<&Policy>, operator: Option<&Policy>) -> QueueArgs {
    let mut args = QueueArgs::read(&q.arguments, q.args.queue_type);
    if args.queue_type == QueueType::Stream {
        return stream_args(args, policy, operator);
    }
    let from_args = args.clone();
    let number = |p: Option<&Policy>, key: &str| p.and_then(|p| p.definition.get(key)).and_then(Value::as_u64);
    let text = |p: Option<&Policy>, key: &str| {
        p.and_then(|p| p.definition.get(key)).and_then(Value::as_str).map(Arc::<str>::from)
    };
    // Between a policy and an operator policy, the lower number wins.
    let policy_number = |key: &str| lower(number(policy, key), number(operator, key));
    let arg_len = |v: Option<usize>| v.map(|n| n as u64);
    args.message_ttl = lower(from_args.message_ttl, policy_number("message-ttl"));
    args.expires = lower(from_args.expires, policy_number("expires"));
    args.max_length = lower(arg_len(from_args.max_length), policy_number("max-length")).map(|n| n as usize);
    args.max_length_bytes =
        lower(arg_len(from_args.max_length_bytes), policy_number("max-length-bytes")).map(|n| n as usize);
    args.consumer_timeout = lower(from_args.consumer_timeout, policy_number("consumer-timeout"));
    // Dead-lettering and overflow: the queue's own argument wins.
    if from_args.dead_letter_exchange.is_none() {
        args.dead_letter_exchange =
            text(policy, "dead-letter-exchange").or_else(|| text(operator, "dead-letter-exchange"));
    }
    if from_args.dead_letter_routing_key.is_none() {
        args.dead_letter_routing_key =
            text(policy, "dead-letter-routing-key").or_else(|| text(operator, "dead-letter-routing-key"));
    }
    if from_args.overflow.is_none() {
        args.overflow = match text(policy, "overflow").or_else(|| text(operator, "overflow")).as_deref() {
            Some("drop-head") => Some(Overflow::DropHead),
            Some("reject-publish") => Some(Overflow::RejectPublish),
            Some("reject-publish-dlx") => Some(Overflow::RejectPublishDlx),
            _ => None,
        };
    }
    if args.queue_type == QueueType::Quorum {
        let limit = |p: Option<&Policy>| p.and_then(|p| p.definition.get("delivery-limit")).and_then(Value::as_i64);
        let from_policy = match (limit(policy), limit(operator)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let from_arg = q.arguments.get("x-delivery-limit").and_then(|v| v.as_i64());
        let resolved = match (from_policy, from_arg) {
            // A negative value (none) only wins against another negative one.
            (Some(p), Some(a)) if p < 0 || a < 0 => Some(p.max(a)),
            (Some(p), Some(a)) => Some(p.min(a)),
            (p, a) => p.or(a),
        };
        args.delivery_limit = match resolved {
            None => Some(DEFAULT_DELIVERY_LIMIT),
            Some(n) => u64::try_from(n).ok(),
        };
    }
    args
}

/// A stream's retention by policy: as RabbitMQ's streams, a policy's
/// `max-length-bytes` and `max-age` win over the stream's arguments (the
/// lower of a policy and an operator policy); the classic queue settings
/// do not apply to streams.
fn stream_args(mut args: QueueArgs, policy: Option<&Policy>, operator: Option<&Policy>) -> QueueArgs {
    let setting = |key: &str| {
        [policy, operator].into_iter().flatten().filter_map(|p| p.definition.get(key)).cloned().collect::<Vec<Value>>()
    };
    let bytes = setting("max-length-bytes").iter().filter_map(Value::as_u64).min();
    if let Some(bytes) = bytes {
        args.max_length_bytes = Some(bytes as usize);
    }
    let age = setting("max-age").iter().filter_map(Value::as_str).filter_map(super::arguments::parse_max_age).min();
    if age.is_some() {
        args.max_age = age;
    }
    args
}

impl Broker {
    /// set_policy / set_operator_policy: stores it and applies it to the
    /// queues it matches now.
    pub fn set_policy(&self, policy: Policy, operator: bool) -> std::result::Result<(), String> {
        let pattern = validate(&policy)?;
        let kind = if operator { ParameterKind::OperatorPolicy } else { ParameterKind::Policy };
        let value = serde_json::to_vec(&policy).map_err(|e| e.to_string())?;
        let key = format!("{}\0{}", policy.vhost, policy.name);
        let mut st = self.state.write();
        let vhost = policy.vhost.clone();
        let Some(v) = st.vhosts.get_mut(vhost.as_str()) else {
            return Err(format!("Virtual host '{vhost}' does not exist"));
        };
        self.store.define(Record::Parameter { kind, key, value: value.into() }).map_err(|e| e.to_string())?;
        let list = if operator { &mut v.operator_policies } else { &mut v.policies };
        list.retain(|p| p.policy.name != policy.name);
        list.push(ActivePolicy { policy, pattern });
        st.apply_policies(&vhost, &self.store);
        Ok(())
    }

    /// clear_policy / clear_operator_policy.
    pub fn clear_policy(&self, vhost: &str, name: &str, operator: bool) -> std::result::Result<(), String> {
        let mut st = self.state.write();
        let missing = || format!("Parameter does not exist: policy '{name}' in vhost '{vhost}'");
        let Some(v) = st.vhosts.get_mut(vhost) else { return Err(missing()) };
        let list = if operator { &mut v.operator_policies } else { &mut v.policies };
        let before = list.len();
        list.retain(|p| p.policy.name != name);
        if list.len() == before {
            return Err(missing());
        }
        let kind = if operator { ParameterKind::OperatorPolicy } else { ParameterKind::Policy };
        self.store
            .define(Record::ParameterDelete { kind, key: format!("{vhost}\0{name}") })
            .map_err(|e| e.to_string())?;
        st.apply_policies(vhost, &self.store);
        Ok(())
    }

    /// The policies (or operator policies) of one vhost, or of all with `None`.
    pub fn policies(&self, vhost: Option<&str>, operator: bool) -> Vec<Policy> {
        let st = self.state.read();
        let mut out: Vec<Policy> = st
            .vhosts
            .values()
            .filter(|v| vhost.is_none_or(|name| v.info.name == name))
            .flat_map(|v| if operator { &v.operator_policies } else { &v.policies })
            .map(|p| p.policy.clone())
            .collect();
        out.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        out
    }

    /// Restores the stored policies (at start-up, after the vhosts and
    /// before [`Broker::restore`], so that restored messages get their
    /// policy's TTL). A policy of a vhost that is gone is removed.
    pub(super) fn restore_policies(
        &self,
        parameters: &std::collections::BTreeMap<(ParameterKind, String), bytes::Bytes>,
    ) {
        let mut st = self.state.write();
        for ((kind, key), value) in parameters {
            let operator = match kind {
                ParameterKind::Policy => false,
                ParameterKind::OperatorPolicy => true,
                _ => continue,
            };
            let Ok(policy) = serde_json::from_slice::<Policy>(value) else { continue };
            let Some(v) = st.vhosts.get_mut(policy.vhost.as_str()) else {
                self.forget_parameter(*kind, key);
                continue;
            };
            match validate(&policy) {
                Ok(pattern) => {
                    let list = if operator { &mut v.operator_policies } else { &mut v.policies };
                    list.push(ActivePolicy { policy, pattern });
                }
                Err(e) => tracing::error!("stored policy '{}' cannot be applied: {e}", policy.name),
            }
        }
        let vhosts: Vec<Arc<str>> = st.vhosts.keys().cloned().collect();
        for vhost in vhosts {
            st.apply_policies(&vhost, &self.store);
        }
    }
}

impl VHost {
    /// The policy and operator policy that apply to a queue: of the
    /// matching ones, the highest priority (on a tie, the first by name, so
    /// that the choice does not change with the order they were set in).
    pub(super) fn policies_for(&self, q: &Queue) -> (Option<Policy>, Option<Policy>) {
        let best = |list: &[ActivePolicy]| {
            list.iter().filter(|p| p.applies_to_queue(q)).max_by(|a, b| by_priority(a, b)).map(|p| p.policy.clone())
        };
        (best(&self.policies), best(&self.operator_policies))
    }

    /// An exchange's alternate exchange: its argument, else its policy's.
    pub(super) fn alternate_exchange_of(&self, ex: &Exchange) -> Option<String> {
        if let Some(ae) = ex.arguments.get("alternate-exchange").and_then(|v| v.as_str()) {
            return Some(ae.to_string());
        }
        self.policies
            .iter()
            .filter(|p| p.applies_to_exchange(&ex.name))
            .max_by(|a, b| by_priority(a, b))
            .and_then(|p| p.policy.definition.get("alternate-exchange"))
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

impl State {
    /// Gives a new queue the settings its vhost's policies add to its arguments.
    pub(super) fn apply_policies_to(&self, q: &mut Queue) {
        let Some(v) = self.vhosts.get(&q.vhost) else { return };
        let (policy, operator) = v.policies_for(q);
        if policy.is_some() || operator.is_some() {
            q.args = effective_args(q, policy.as_ref(), operator.as_ref());
            q.policy = policy.map(|p| p.name);
            q.operator_policy = operator.map(|p| p.name);
        }
    }

    /// Recomputes the settings of every queue of a vhost from its
    /// arguments and policies; a queue over a new length limit drops (or
    /// dead-letters) its head.
    pub(super) fn apply_policies(&self, vhost: &str, store: &LogStore) {
        let Some(v) = self.vhosts.get(vhost) else { return };
        for cell in v.queues.values() {
            {
                let mut q = cell.lock();
                let (policy, operator) = v.policies_for(&q);
                q.args = effective_args(&q, policy.as_ref(), operator.as_ref());
                q.policy = policy.map(|p| p.name);
                q.operator_policy = operator.map(|p| p.name);
                // A new x-expires may be due earlier than what is armed.
                q.rearm(queue::now_ms());
            }
            self.trim_queue(cell, store);
        }
    }
}

/// Orders policies so that the one that applies is the greatest.
fn by_priority(a: &ActivePolicy, b: &ActivePolicy) -> std::cmp::Ordering {
    a.policy.priority.cmp(&b.policy.priority).then_with(|| b.policy.name.cmp(&a.policy.name))
}
