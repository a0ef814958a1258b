//! How warren-dump writes what it found: records, properties, field tables
//! and findings, as text lines and as JSON objects.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use warren::protocol::wire::{Reader, Wire};
use warren::protocol::{BasicProperties, FieldTable, FieldValue};
use warren::store::format::*;
use warren::store::inspect::{Finding, SegmentFile};
use warren::store::log::type_name;

use crate::{IDS_SHOWN, PREVIEW_BYTES};

pub(crate) fn flags_text(flags: u8) -> String {
    let mut parts = Vec::new();
    if flags & FLAG_SNAPSHOT != 0 {
        parts.push("SNAPSHOT".to_string());
    }
    if flags & FLAG_RELOCATED != 0 {
        parts.push("RELOCATED".to_string());
    }
    // WIDE, TIMED, VHOST and STREAM only say how a record is laid out; its fields
    // show what they mean.
    let other = flags & !(FLAG_SNAPSHOT | FLAG_RELOCATED | FLAG_WIDE | FLAG_TIMED | FLAG_VHOST | FLAG_STREAM);
    if other != 0 {
        parts.push(format!("{other:#04x}"));
    }
    if parts.is_empty() { "-".to_string() } else { parts.join("|") }
}

pub(crate) fn flags_json(flags: u8) -> Value {
    let text = flags_text(flags);
    if text == "-" { json!([]) } else { json!(text.split('|').collect::<Vec<_>>()) }
}

/// `vhost="…" ` for a definition outside the default vhost; nothing for "/".
fn vhost_text(vhost: &str) -> String {
    if vhost == DEFAULT_VHOST { String::new() } else { format!("vhost={vhost:?} ") }
}

pub(crate) fn queue_text(id: u32, names: &HashMap<u32, String>) -> String {
    match names.get(&id) {
        Some(name) => format!("#{id} {name:?}"),
        None => format!("#{id}"),
    }
}

pub(crate) fn queue_json(id: u32, names: &HashMap<u32, String>) -> Value {
    json!({"id": id, "name": names.get(&id)})
}

pub(crate) fn ids_text(ids: &[u64]) -> String {
    let shown: Vec<String> = ids.iter().take(IDS_SHOWN).map(u64::to_string).collect();
    let more = ids.len().saturating_sub(IDS_SHOWN);
    if more > 0 { format!("[{} … +{more} more]", shown.join(",")) } else { format!("[{}]", shown.join(",")) }
}

/// The first bytes of a body, printable ASCII as is, the rest escaped.
pub(crate) fn preview(body: &[u8]) -> String {
    let mut s = String::new();
    for b in body.iter().take(PREVIEW_BYTES) {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(*b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

pub(crate) fn record_text(
    file: &SegmentFile,
    offset: usize,
    flags: u8,
    record: &Record,
    live: Option<bool>,
    names: &HashMap<u32, String>,
) -> String {
    let fields = match record {
        Record::ExchangeDeclare { vhost, name, kind, auto_delete, internal, arguments } => format!(
            "{}name={name:?} exchange_type={kind} auto_delete={auto_delete} internal={internal}{}",
            vhost_text(vhost),
            arguments_text(arguments)
        ),
        Record::ExchangeDelete { vhost, name } => format!("{}name={name:?}", vhost_text(vhost)),
        Record::Parameter { kind, key, value } => {
            format!("kind={} key={:?} value={}", kind.name(), key, String::from_utf8_lossy(value))
        }
        Record::ParameterDelete { kind, key } => format!("kind={} key={:?}", kind.name(), key),
        Record::RaftEntry { group, index, entry } => format!("group={group} index={index} bytes={}", entry.len()),
        Record::RaftState { group, kind, index, value } => {
            format!("group={group} kind={} index={index} bytes={}", kind.name(), value.len())
        }
        Record::QueueDeclare { queue, vhost, name, auto_delete, arguments } => format!(
            "{}queue=#{queue} name={name:?} auto_delete={auto_delete}{}",
            vhost_text(vhost),
            arguments_text(arguments)
        ),
        Record::QueueDelete { queue } => format!("queue={}", queue_text(*queue, names)),
        Record::BindingAdd(b) | Record::BindingRemove(b) => binding_text(b),
        Record::Message(m) => message_text(m, live, names),
        Record::Ack { queue, ids } | Record::Delivered { queue, ids } => {
            format!("queue={} count={} ids={}", queue_text(*queue, names), ids.len(), ids_text(ids))
        }
        Record::IdWatermark { next_message_id, next_queue_id } => {
            format!("next_message_id={next_message_id} next_queue_id={next_queue_id}")
        }
        Record::Group { length, synced_before, .. } => format!("length={length} synced_before={synced_before}"),
    };
    format!(
        "{} +{} pos={} {:<16} crc=ok flags={} {fields}",
        file.name(),
        offset,
        file.base + offset as u64,
        type_name(record.type_code()),
        flags_text(flags)
    )
}

pub(crate) fn message_text(m: &MessageRecord, live: Option<bool>, names: &HashMap<u32, String>) -> String {
    let queues: Vec<String> = m.queues.iter().map(|q| queue_text(*q, names)).collect();
    let state = match live {
        Some(true) => "live",
        Some(false) => "dead",
        None => "?",
    };
    let ellipsis = if m.body.len() > PREVIEW_BYTES { "…" } else { "" };
    let published = m.published_ms.map_or(String::new(), |ms| format!(" published_ms={ms}"));
    let offset = m.stream_offset.map_or(String::new(), |o| format!(" stream_offset={o}"));
    format!(
        "id={} {state}{published}{offset} queues=[{}] exchange={:?} routing_key={:?} props={} body={} \"{}\"{ellipsis}",
        m.id,
        queues.join(", "),
        m.exchange,
        m.routing_key,
        properties_text(&m.properties),
        m.body.len(),
        preview(&m.body)
    )
}

pub(crate) fn binding_text(b: &BindingRecord) -> String {
    let kind = match b.destination_kind {
        DestinationKind::Queue => "queue",
        DestinationKind::Exchange => "exchange",
    };
    format!(
        "{}source={:?} destination={kind} {:?} routing_key={:?}{}",
        vhost_text(&b.vhost),
        b.source,
        b.destination,
        b.routing_key,
        arguments_text(&b.arguments)
    )
}

pub(crate) fn record_json(
    file: &SegmentFile,
    offset: usize,
    len: usize,
    flags: u8,
    record: &Record,
    live: Option<bool>,
    names: &HashMap<u32, String>,
) -> Value {
    let mut o = Map::new();
    o.insert("kind".into(), json!("record"));
    o.insert("segment".into(), json!(file.name()));
    o.insert("offset".into(), json!(offset));
    o.insert("position".into(), json!(file.base + offset as u64));
    o.insert("len".into(), json!(len));
    o.insert("type".into(), json!(type_name(record.type_code())));
    o.insert("crc".into(), json!("ok"));
    o.insert("flags".into(), flags_json(flags));
    let mut put = |k: &str, v: Value| {
        o.insert(k.to_string(), v);
    };
    match record {
        Record::ExchangeDeclare { vhost, name, kind, auto_delete, internal, arguments } => {
            put("vhost", json!(vhost));
            put("name", json!(name));
            put("exchange_type", json!(kind));
            put("auto_delete", json!(auto_delete));
            put("internal", json!(internal));
            put("arguments", arguments_json(arguments));
        }
        Record::ExchangeDelete { vhost, name } => {
            put("vhost", json!(vhost));
            put("name", json!(name));
        }
        Record::Parameter { kind, key, value } => {
            put("parameter", json!(kind.name()));
            put("key", json!(key));
            put("value", serde_json::from_slice(value).unwrap_or_else(|_| json!(String::from_utf8_lossy(value))));
        }
        Record::ParameterDelete { kind, key } => {
            put("parameter", json!(kind.name()));
            put("key", json!(key));
        }
        Record::RaftEntry { group, index, entry } => {
            put("group", json!(group));
            put("index", json!(index));
            put("bytes", json!(entry.len()));
        }
        Record::RaftState { group, kind, index, value } => {
            put("group", json!(group));
            put("raft_state", json!(kind.name()));
            put("index", json!(index));
            put("bytes", json!(value.len()));
        }
        Record::QueueDeclare { queue, vhost, name, auto_delete, arguments } => {
            put("vhost", json!(vhost));
            put("queue", json!({"id": queue, "name": name}));
            put("auto_delete", json!(auto_delete));
            put("arguments", arguments_json(arguments));
        }
        Record::QueueDelete { queue } => put("queue", queue_json(*queue, names)),
        Record::BindingAdd(b) | Record::BindingRemove(b) => {
            put("vhost", json!(b.vhost));
            put("source", json!(b.source));
            put(
                "destination_kind",
                json!(match b.destination_kind {
                    DestinationKind::Queue => "queue",
                    DestinationKind::Exchange => "exchange",
                }),
            );
            put("destination", json!(b.destination));
            put("routing_key", json!(b.routing_key));
            put("arguments", arguments_json(&b.arguments));
        }
        Record::Message(m) => {
            put("id", json!(m.id));
            put("live", json!(live));
            put("published_ms", json!(m.published_ms));
            if let Some(offset) = m.stream_offset {
                put("stream_offset", json!(offset));
            }
            put("queues", Value::Array(m.queues.iter().map(|q| queue_json(*q, names)).collect()));
            put("exchange", json!(m.exchange));
            put("routing_key", json!(m.routing_key));
            match BasicProperties::decode(m.properties.clone()) {
                Ok(p) => put("properties", properties_json(&p)),
                Err(e) => {
                    put("properties", Value::Null);
                    put("properties_error", json!(format!("{e} ({} bytes)", m.properties.len())));
                }
            }
            put("body_len", json!(m.body.len()));
            put("body_preview", json!(preview(&m.body)));
        }
        Record::Ack { queue, ids } | Record::Delivered { queue, ids } => {
            put("queue", queue_json(*queue, names));
            put("count", json!(ids.len()));
            put("ids", json!(ids));
        }
        Record::IdWatermark { next_message_id, next_queue_id } => {
            put("next_message_id", json!(next_message_id));
            put("next_queue_id", json!(next_queue_id));
        }
        Record::Group { length, synced_before, .. } => {
            put("length", json!(length));
            put("synced_before", json!(synced_before));
        }
    }
    Value::Object(o)
}

// ---------------------------------------------------------------------------
// AMQP properties and field tables, for reading

pub(crate) fn decode_table(raw: &Bytes) -> Result<FieldTable, String> {
    if raw.is_empty() {
        return Ok(FieldTable::new());
    }
    FieldTable::read(&mut Reader::new(raw.clone())).map_err(|e| format!("{e} ({} bytes)", raw.len()))
}

pub(crate) fn arguments_text(raw: &Bytes) -> String {
    match decode_table(raw) {
        Ok(t) if t.is_empty() => String::new(),
        Ok(t) => format!(" arguments={}", table_text(&t)),
        Err(e) => format!(" arguments=<undecodable: {e}>"),
    }
}

pub(crate) fn arguments_json(raw: &Bytes) -> Value {
    match decode_table(raw) {
        Ok(t) => table_json(&t),
        Err(e) => json!({ "undecodable": e }),
    }
}

pub(crate) fn properties_text(raw: &Bytes) -> String {
    if raw.is_empty() {
        return "{}".to_string();
    }
    let p = match BasicProperties::decode(raw.clone()) {
        Ok(p) => p,
        Err(e) => return format!("<undecodable: {e} ({} bytes)>", raw.len()),
    };
    // delivery_mode first: it says whether the publisher asked for persistence.
    let mut parts: Vec<String> = Vec::new();
    if let Some(v) = p.delivery_mode {
        parts.push(format!("delivery_mode={v}"));
    }
    let strings = [
        ("content_type", &p.content_type),
        ("content_encoding", &p.content_encoding),
        ("correlation_id", &p.correlation_id),
        ("reply_to", &p.reply_to),
        ("expiration", &p.expiration),
        ("message_id", &p.message_id),
        ("type", &p.kind),
        ("user_id", &p.user_id),
        ("app_id", &p.app_id),
        ("cluster_id", &p.cluster_id),
    ];
    parts.extend(strings.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v:?}"))));
    if let Some(v) = p.priority {
        parts.push(format!("priority={v}"));
    }
    if let Some(t) = p.timestamp {
        parts.push(format!("timestamp={t}"));
    }
    if let Some(h) = &p.headers {
        parts.push(format!("headers={}", table_text(h)));
    }
    format!("{{{}}}", parts.join(", "))
}

pub(crate) fn properties_json(p: &BasicProperties) -> Value {
    let mut o = Map::new();
    let mut s = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            o.insert(k.to_string(), json!(v));
        }
    };
    s("content_type", &p.content_type);
    s("content_encoding", &p.content_encoding);
    s("correlation_id", &p.correlation_id);
    s("reply_to", &p.reply_to);
    s("expiration", &p.expiration);
    s("message_id", &p.message_id);
    s("type", &p.kind);
    s("user_id", &p.user_id);
    s("app_id", &p.app_id);
    s("cluster_id", &p.cluster_id);
    if let Some(h) = &p.headers {
        o.insert("headers".into(), table_json(h));
    }
    if let Some(v) = p.delivery_mode {
        o.insert("delivery_mode".into(), json!(v));
    }
    if let Some(v) = p.priority {
        o.insert("priority".into(), json!(v));
    }
    if let Some(v) = p.timestamp {
        o.insert("timestamp".into(), json!(v));
    }
    Value::Object(o)
}

pub(crate) fn table_text(t: &FieldTable) -> String {
    let entries: Vec<String> = t.iter().map(|(k, v)| format!("{k}={}", value_text(v))).collect();
    format!("{{{}}}", entries.join(", "))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn value_text(v: &FieldValue) -> String {
    match v {
        FieldValue::Bool(b) => b.to_string(),
        FieldValue::I8(n) => n.to_string(),
        FieldValue::U8(n) => n.to_string(),
        FieldValue::I16(n) => n.to_string(),
        FieldValue::U16(n) => n.to_string(),
        FieldValue::I32(n) => n.to_string(),
        FieldValue::U32(n) => n.to_string(),
        FieldValue::I64(n) => n.to_string(),
        FieldValue::F32(n) => n.to_string(),
        FieldValue::F64(n) => n.to_string(),
        FieldValue::Decimal { scale, value } => format!("{value}e-{scale}"),
        FieldValue::LongStr(s) => format!("{:?}", String::from_utf8_lossy(s)),
        FieldValue::ByteArray(b) => format!("0x{}", hex(b)),
        FieldValue::Timestamp(t) => format!("timestamp:{t}"),
        FieldValue::Void => "void".to_string(),
        FieldValue::Array(items) => format!("[{}]", items.iter().map(value_text).collect::<Vec<_>>().join(", ")),
        FieldValue::Table(t) => table_text(t),
    }
}

pub(crate) fn table_json(t: &FieldTable) -> Value {
    Value::Object(t.iter().map(|(k, v)| (k.to_string(), value_json(v))).collect())
}

pub(crate) fn value_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => json!(b),
        FieldValue::I8(n) => json!(n),
        FieldValue::U8(n) => json!(n),
        FieldValue::I16(n) => json!(n),
        FieldValue::U16(n) => json!(n),
        FieldValue::I32(n) => json!(n),
        FieldValue::U32(n) => json!(n),
        FieldValue::I64(n) => json!(n),
        FieldValue::F32(n) => json!(n),
        FieldValue::F64(n) => json!(n),
        FieldValue::Decimal { scale, value } => json!({"decimal": value, "scale": scale}),
        FieldValue::LongStr(s) => json!(String::from_utf8_lossy(s)),
        FieldValue::ByteArray(b) => json!({ "bytes": hex(b) }),
        FieldValue::Timestamp(t) => json!({ "timestamp": t }),
        FieldValue::Void => Value::Null,
        FieldValue::Array(items) => Value::Array(items.iter().map(value_json).collect()),
        FieldValue::Table(t) => table_json(t),
    }
}

// ---------------------------------------------------------------------------
// Verify

pub(crate) fn finding_line(file: &SegmentFile, f: &Finding) -> String {
    format!("{}: {} at offset {}: {}", file.name(), f.severity.as_str(), f.offset, f.what)
}

pub(crate) fn finding_json(f: &Finding) -> Value {
    json!({"offset": f.offset, "severity": f.severity.as_str(), "crc": f.crc_status(), "what": f.what})
}
