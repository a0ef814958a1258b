//! Queue and consumer arguments: which `x-` arguments each queue type
//! takes, their validation with RabbitMQ's reply texts, the parsed
//! [`QueueArgs`] the rest of the broker reads, and the equivalence check
//! of a redeclare.
//!
//! As RabbitMQ does, an `x-` argument no queue type knows is ignored; one
//! that belongs to another queue type (x-max-priority on a quorum queue)
//! or has the wrong type or range is refused with 406 PRECONDITION_FAILED.

use std::sync::Arc;

use super::error::{AmqpError, Result};
use crate::protocol::{FieldTable, FieldValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Classic,
    /// Accepted for compatibility: stored and served like a classic queue,
    /// with the quorum queue's rules (durable, not exclusive nor
    /// auto-delete) and its delivery limit.
    Quorum,
    /// A stream (`stream`): an append-only, retained log that consumers
    /// read at their own offsets (see `broker::stream`).
    Stream,
}

impl QueueType {
    /// A type by its name (`classic`, `quorum`, `stream`).
    pub fn parse(name: &str) -> Option<QueueType> {
        [QueueType::Classic, QueueType::Quorum, QueueType::Stream].into_iter().find(|t| t.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
            QueueType::Stream => "stream",
        }
    }

    /// The name RabbitMQ gives the type in its error texts.
    pub fn module(self) -> &'static str {
        match self {
            QueueType::Classic => "rabbit_classic_queue",
            QueueType::Quorum => "rabbit_quorum_queue",
            QueueType::Stream => "rabbit_stream_queue",
        }
    }

    fn queue_arguments(self) -> &'static [&'static str] {
        match self {
            QueueType::Classic => &[
                "x-expires",
                "x-message-ttl",
                "x-dead-letter-exchange",
                "x-dead-letter-routing-key",
                "x-max-length",
                "x-max-length-bytes",
                "x-max-priority",
                "x-overflow",
                "x-queue-mode",
                "x-queue-version",
                "x-single-active-consumer",
                "x-queue-type",
                "x-queue-master-locator",
                "x-queue-leader-locator",
                "x-consumer-timeout",
            ],
            QueueType::Quorum => &[
                "x-dead-letter-exchange",
                "x-dead-letter-routing-key",
                "x-dead-letter-strategy",
                "x-expires",
                "x-max-length",
                "x-max-length-bytes",
                "x-max-in-memory-length",
                "x-max-in-memory-bytes",
                "x-overflow",
                "x-single-active-consumer",
                "x-queue-type",
                "x-quorum-initial-group-size",
                "x-delivery-limit",
                "x-message-ttl",
                "x-queue-leader-locator",
                "x-consumer-timeout",
            ],
            QueueType::Stream => &[
                "x-max-length-bytes",
                "x-queue-type",
                "x-max-age",
                "x-stream-max-segment-size-bytes",
                "x-stream-filter-size-bytes",
                "x-initial-cluster-size",
                "x-queue-leader-locator",
            ],
        }
    }
}

/// Every basic.consume argument some queue type takes (RabbitMQ 3.13): one
/// that belongs to another queue type is refused.
const ALL_CONSUMER_ARGUMENTS: &[&str] = &["x-cancel-on-ha-failover", "x-priority", "x-credit", "x-stream-offset"];

impl QueueType {
    fn consumer_arguments(self) -> &'static [&'static str] {
        match self {
            QueueType::Classic => &["x-cancel-on-ha-failover", "x-priority", "x-credit"],
            QueueType::Quorum => &["x-priority", "x-credit"],
            QueueType::Stream => &["x-stream-offset", "x-credit"],
        }
    }
}

/// Refuses a basic.consume argument of another queue type, as RabbitMQ
/// does (406 `invalid arg 'x-priority' for queue 's' in vhost '/' of queue
/// type rabbit_stream_queue`).
pub fn check_consume_keys(kind: QueueType, args: &FieldTable, queue: &str, vhost: &str) -> Result<()> {
    let own = kind.consumer_arguments();
    match args.iter().map(|(key, _)| key).find(|key| ALL_CONSUMER_ARGUMENTS.contains(key) && !own.contains(key)) {
        Some(key) => Err(AmqpError::precondition(format!(
            "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}' of queue type {}",
            kind.module()
        ))),
        None => Ok(()),
    }
}

/// Every queue argument some queue type takes (streams' included, so that
/// a stream argument on a classic queue is refused as RabbitMQ does).
const ALL_QUEUE_ARGUMENTS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-queue-master-locator",
    "x-queue-leader-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-stream-filter-size-bytes",
    "x-initial-cluster-size",
    "x-consumer-timeout",
];

/// What happens when a publish would push a queue past its max length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    DropHead,
    RejectPublish,
    /// As reject-publish, and the refused message is dead-lettered.
    RejectPublishDlx,
}

/// RabbitMQ 4's delivery limit for quorum queues that set none.
pub const DEFAULT_DELIVERY_LIMIT: u64 = 20;

/// The highest `x-max-priority` RabbitMQ accepts.
pub const MAX_PRIORITY: i64 = 255;

/// The parsed arguments of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueArgs {
    pub queue_type: QueueType,
    pub max_length: Option<usize>,
    pub max_length_bytes: Option<usize>,
    pub overflow: Option<Overflow>,
    /// `x-message-ttl`, in milliseconds.
    pub message_ttl: Option<u64>,
    /// `x-expires`: the queue goes after this many ms unused.
    pub expires: Option<u64>,
    pub dead_letter_exchange: Option<Arc<str>>,
    pub dead_letter_routing_key: Option<Arc<str>>,
    /// `x-max-priority`: message priorities 0..=this (higher first).
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
    /// `x-consumer-timeout`, in milliseconds.
    pub consumer_timeout: Option<u64>,
    /// Deliveries after which a quorum queue dead-letters a message; None
    /// for no limit.
    pub delivery_limit: Option<u64>,
    /// `x-max-age` of a stream, in milliseconds: older messages are dropped.
    pub max_age: Option<u64>,
}

/// A duration as RabbitMQ's `x-max-age` takes it: a positive number and
/// one unit of `Y` (365 days), `M` (30 days), `D`, `h`, `m` or `s`; in ms.
pub fn parse_max_age(text: &str) -> Option<u64> {
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let value: u64 = text[..digits].parse().ok().filter(|n| *n > 0)?;
    let unit_ms: u64 = match &text[digits..] {
        "Y" => 365 * 86_400_000,
        "M" => 30 * 86_400_000,
        "D" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        _ => return None,
    };
    value.checked_mul(unit_ms)
}

/// How RabbitMQ names a field value's type in its error texts.
pub(super) fn type_name(v: &FieldValue) -> &'static str {
    match v {
        FieldValue::Bool(_) => "bool",
        FieldValue::I8(_) => "byte",
        FieldValue::U8(_) => "unsignedbyte",
        FieldValue::I16(_) => "short",
        FieldValue::U16(_) => "unsignedshort",
        FieldValue::I32(_) => "signedint",
        FieldValue::U32(_) => "unsignedint",
        FieldValue::I64(_) => "long",
        FieldValue::F32(_) => "float",
        FieldValue::F64(_) => "double",
        FieldValue::Decimal { .. } => "decimal",
        FieldValue::LongStr(_) => "longstr",
        FieldValue::Array(_) => "array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Table(_) => "table",
        FieldValue::Void => "void",
        FieldValue::ByteArray(_) => "binary",
    }
}

fn is_integer(v: &FieldValue) -> bool {
    matches!(
        v,
        FieldValue::I8(_)
            | FieldValue::U8(_)
            | FieldValue::I16(_)
            | FieldValue::U16(_)
            | FieldValue::I32(_)
            | FieldValue::U32(_)
            | FieldValue::I64(_)
    )
}

/// A validator's complaint, rendered as RabbitMQ's Erlang term would be.
type Check = std::result::Result<(), String>;

fn int_arg(v: &FieldValue) -> std::result::Result<i64, String> {
    match v.as_i64() {
        Some(n) if is_integer(v) => Ok(n),
        _ => Err(format!("\"expected integer, got {}\"", type_name(v))),
    }
}

fn non_negative(v: &FieldValue) -> std::result::Result<i64, String> {
    let n = int_arg(v)?;
    if n < 0 { Err(format!("{{value_negative,{n}}}")) } else { Ok(n) }
}

/// TTLs and expiries: RabbitMQ's limit is what its timers take.
fn expiry(n: i64) -> Check {
    const MAX_EXPIRY: i64 = 4_294_967_295;
    if n < 0 {
        Err(format!("{{value_negative,{n}}}"))
    } else if n > MAX_EXPIRY {
        Err(format!("{{value_too_large,{n},{MAX_EXPIRY}}}"))
    } else {
        Ok(())
    }
}

fn string_in(v: &FieldValue, allowed: &[&str], invalid: &str) -> Check {
    match v {
        FieldValue::LongStr(_) => match v.as_str() {
            Some(s) if allowed.contains(&s) => Ok(()),
            _ => Err(invalid.to_string()),
        },
        other => Err(format!("{{unacceptable_type,{}}}", type_name(other))),
    }
}

fn validate(key: &str, v: &FieldValue, args: &FieldTable) -> Check {
    match key {
        "x-expires" => {
            let n = int_arg(v)?;
            if n == 0 {
                return Err("{value_zero,0}".into());
            }
            expiry(n)
        }
        "x-message-ttl" => expiry(int_arg(v)?),
        "x-dead-letter-exchange" => match v {
            FieldValue::LongStr(_) => Ok(()),
            other => Err(format!("{{unacceptable_type,{}}}", type_name(other))),
        },
        "x-dead-letter-routing-key" => match v {
            FieldValue::LongStr(_) if args.get("x-dead-letter-exchange").is_none() => {
                Err("routing_key_but_no_dlx_defined".into())
            }
            FieldValue::LongStr(_) => Ok(()),
            other => Err(format!("{{unacceptable_type,{}}}", type_name(other))),
        },
        "x-dead-letter-strategy" => string_in(v, &["at-most-once", "at-least-once"], "invalid_dlx_strategy"),
        "x-max-length"
        | "x-max-length-bytes"
        | "x-max-in-memory-length"
        | "x-max-in-memory-bytes"
        | "x-consumer-timeout"
        | "x-stream-max-segment-size-bytes"
        | "x-stream-filter-size-bytes" => non_negative(v).map(|_| ()),
        "x-max-priority" => {
            let n = non_negative(v)?;
            if n > MAX_PRIORITY { Err(format!("{{max_value_exceeded,{n}}}")) } else { Ok(()) }
        }
        "x-overflow" => string_in(v, &["drop-head", "reject-publish", "reject-publish-dlx"], "invalid_overflow"),
        "x-queue-mode" => match v {
            FieldValue::LongStr(_) => match v.as_str() {
                Some("default") | Some("lazy") => Ok(()),
                s => Err(format!("\"unsupported queue mode '{}'\"", s.unwrap_or(""))),
            },
            other => Err(format!("{{unacceptable_type,{}}}", type_name(other))),
        },
        "x-queue-version" => match non_negative(v)? {
            1 | 2 => Ok(()),
            n => Err(format!("\"unsupported queue version '{n}'\"")),
        },
        "x-single-active-consumer" => match v {
            FieldValue::Bool(_) => Ok(()),
            other => Err(format!("{{unacceptable_type,{}}}", type_name(other))),
        },
        "x-quorum-initial-group-size" | "x-initial-cluster-size" => match non_negative(v)? {
            0 => Err("{value_zero,0}".into()),
            _ => Ok(()),
        },
        "x-delivery-limit" => int_arg(v).map(|_| ()),
        // x-queue-master-locator has no validator in RabbitMQ: any value goes.
        "x-queue-leader-locator" => string_in(
            v,
            &["client-local", "balanced", "random", "least-leaders", "min-masters"],
            "invalid_queue_locator_arg",
        ),
        "x-max-age" => match v {
            FieldValue::LongStr(_) => match v.as_str().and_then(parse_max_age) {
                Some(_) => Ok(()),
                None => Err("invalid_max_age".into()),
            },
            other => Err(format!("{{unacceptable_type,{}}}", type_name(other))),
        },
        _ => Ok(()),
    }
}

/// The queue type an `x-queue-type` argument names.
fn queue_type(args: &FieldTable, queue: &str) -> Result<QueueType> {
    let invalid = |detail: String| {
        AmqpError::precondition(format!("invalid arg 'x-queue-type' for queue '{queue}' in vhost '/': {detail}"))
    };
    match args.get("x-queue-type") {
        None => Ok(QueueType::Classic),
        Some(v @ FieldValue::LongStr(_)) => match v.as_str() {
            Some("classic") => Ok(QueueType::Classic),
            Some("quorum") => Ok(QueueType::Quorum),
            Some("stream") => Ok(QueueType::Stream),
            s => Err(invalid(format!("\"unsupported queue type '{}'\"", s.unwrap_or("")))),
        },
        Some(other) => Err(invalid(format!("{{unacceptable_type,{}}}", type_name(other)))),
    }
}

impl QueueArgs {
    /// Validates a queue.declare's arguments as RabbitMQ does and reads them.
    pub fn parse(args: &FieldTable, queue: &str) -> Result<QueueArgs> {
        let kind = queue_type(args, queue)?;
        let own = kind.queue_arguments();
        for (key, value) in args.iter() {
            if !own.contains(&key) {
                continue;
            }
            if let Err(detail) = validate(key, value, args) {
                return Err(AmqpError::precondition(format!(
                    "invalid arg '{key}' for queue '{queue}' in vhost '/': {detail}"
                )));
            }
        }
        for (key, _) in args.iter() {
            if ALL_QUEUE_ARGUMENTS.contains(&key) && !own.contains(&key) {
                return Err(AmqpError::precondition(format!(
                    "invalid arg '{key}' for queue '{queue}' in vhost '/' of queue type {}",
                    kind.module()
                )));
            }
        }
        Ok(QueueArgs::read(args, kind))
    }

    /// Reads arguments that were validated when the queue was declared
    /// (the log's copy): anything unreadable is left at its default.
    pub fn read(args: &FieldTable, queue_type: QueueType) -> QueueArgs {
        let count = |key: &str| args.get(key).and_then(FieldValue::as_i64).filter(|n| *n >= 0);
        let string = |key: &str| args.get(key).and_then(FieldValue::as_str).map(Arc::<str>::from);
        let overflow = match args.get("x-overflow").and_then(FieldValue::as_str) {
            Some("drop-head") => Some(Overflow::DropHead),
            Some("reject-publish") => Some(Overflow::RejectPublish),
            Some("reject-publish-dlx") => Some(Overflow::RejectPublishDlx),
            _ => None,
        };
        let delivery_limit = match (queue_type, args.get("x-delivery-limit").and_then(FieldValue::as_i64)) {
            (QueueType::Quorum, None) => Some(DEFAULT_DELIVERY_LIMIT),
            // A negative limit means none, as in RabbitMQ 4.
            (QueueType::Quorum, Some(n)) => u64::try_from(n).ok(),
            (QueueType::Classic | QueueType::Stream, _) => None,
        };
        let max_age = match queue_type {
            QueueType::Stream => args.get("x-max-age").and_then(FieldValue::as_str).and_then(parse_max_age),
            _ => None,
        };
        QueueArgs {
            queue_type,
            max_length: count("x-max-length").map(|n| n as usize),
            max_length_bytes: count("x-max-length-bytes").map(|n| n as usize),
            overflow,
            message_ttl: count("x-message-ttl").map(|n| n as u64),
            expires: count("x-expires").filter(|n| *n > 0).map(|n| n as u64),
            dead_letter_exchange: string("x-dead-letter-exchange"),
            dead_letter_routing_key: string("x-dead-letter-routing-key"),
            max_priority: count("x-max-priority").filter(|n| *n > 0).map(|n| n.min(MAX_PRIORITY) as u8),
            single_active_consumer: args.get("x-single-active-consumer").and_then(FieldValue::as_bool) == Some(true),
            consumer_timeout: count("x-consumer-timeout").map(|n| n as u64),
            delivery_limit,
            max_age,
        }
    }

    /// Reads a stored queue's arguments, whatever they say.
    pub fn from_stored(args: &FieldTable) -> QueueArgs {
        let kind = match args.get("x-queue-type").and_then(FieldValue::as_str) {
            Some("quorum") => QueueType::Quorum,
            Some("stream") => QueueType::Stream,
            _ => QueueType::Classic,
        };
        QueueArgs::read(args, kind)
    }
}

/// Checks that a redeclare names the same queue: the same durable and
/// auto-delete flags and the same value for every argument RabbitMQ
/// compares.
pub fn check_equivalent(
    name: &str,
    current: (bool, bool, &FieldTable),
    durable: bool,
    auto_delete: bool,
    arguments: &FieldTable,
) -> Result<()> {
    let (cur_durable, cur_auto_delete, cur_args) = current;
    let flag = |what: &str, received: bool, current: bool| {
        AmqpError::precondition(format!(
            "inequivalent arg '{what}' for queue '{name}' in vhost '/': received '{received}' but current is '{current}'"
        ))
    };
    if durable != cur_durable {
        return Err(flag("durable", durable, cur_durable));
    }
    if auto_delete != cur_auto_delete {
        return Err(flag("auto_delete", auto_delete, cur_auto_delete));
    }
    for key in ALL_QUEUE_ARGUMENTS {
        let new = arguments.get(key);
        let old = cur_args.get(key);
        let same = match (new, old) {
            (Some(a), Some(b)) => a.as_i64().zip(b.as_i64()).map(|(x, y)| x == y).unwrap_or(a == b),
            (None, None) => true,
            // RabbitMQ treats an absent x-queue-type as "classic".
            (Some(v), None) | (None, Some(v)) => *key == "x-queue-type" && v.as_str() == Some("classic"),
        };
        if !same {
            // RabbitMQ names the type only when one side is absent.
            let show = |v: Option<&FieldValue>| match (v, new.is_some() && old.is_some()) {
                (None, _) => "none".to_string(),
                (Some(v), true) => format!("'{}'", describe(v)),
                (Some(v), false) => format!("the value '{}' of type '{}'", describe(v), type_name(v)),
            };
            return Err(AmqpError::precondition(format!(
                "inequivalent arg '{key}' for queue '{name}' in vhost '/': received {} but current is {}",
                show(new),
                show(old)
            )));
        }
    }
    Ok(())
}

fn describe(v: &FieldValue) -> String {
    if let Some(s) = v.as_str() {
        s.to_string()
    } else if let Some(n) = v.as_i64() {
        n.to_string()
    } else if let Some(b) = v.as_bool() {
        b.to_string()
    } else {
        format!("{v:?}")
    }
}

/// The arguments of a basic.consume a queue takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerArgs {
    /// `x-priority`: consumers of higher priority get messages first.
    pub priority: i32,
    /// `x-consumer-timeout` (RabbitMQ 4 also takes it per consumer).
    pub timeout: Option<u64>,
}

impl ConsumerArgs {
    pub fn parse(args: &FieldTable, queue: &str) -> Result<ConsumerArgs> {
        let invalid = |key: &str, detail: String| {
            AmqpError::precondition(format!("invalid arg '{key}' for queue '{queue}' in vhost '/': {detail}"))
        };
        let mut out = ConsumerArgs::default();
        if let Some(v) = args.get("x-priority") {
            let n = int_arg(v).map_err(|d| invalid("x-priority", d))?;
            out.priority = n.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        }
        if let Some(v) = args.get("x-consumer-timeout") {
            out.timeout = Some(non_negative(v).map_err(|d| invalid("x-consumer-timeout", d))? as u64);
        }
        Ok(out)
    }
}
