//! `warren-dump`: the log inspector. Reads a Warren data directory's
//! write-ahead log (read-only: safe on the data directory of a running
//! broker) and prints a per-segment summary, every record, or a verdict on
//! the log's integrity.
//!
//! Every byte is decoded by `warren::store::format` (through the helpers of
//! `warren::store::inspect`); live and dead messages come from the broker's
//! own replay.
//!
//! Exit status: 0 when the work was done (for `--verify`: the log is clean,
//! possibly ending in a torn tail), 1 when `--verify` found damage, 2 on a
//! usage error or when the log cannot be read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bytes::Bytes;
use clap::Parser;
use serde_json::{Map, Value, json};

use warren::protocol::wire::{Reader, Wire};
use warren::protocol::{BasicProperties, FieldTable, FieldValue};
use warren::store::format::{
    BindingRecord, DestinationKind, FLAG_RELOCATED, FLAG_SNAPSHOT, MessageRecord, Record, parse_segment_file_name,
};
use warren::store::inspect::{
    Finding, Inspector, RECORD_TYPES, Replay, SegmentFile, SegmentRead, SegmentScan, SegmentSummary, Severity,
    type_code,
};
use warren::store::log::type_name;

/// Body bytes shown in a record's preview.
const PREVIEW_BYTES: usize = 32;
/// Message ids listed in the text form of an ack or delivered record.
const IDS_SHOWN: usize = 16;

/// Inspects the write-ahead log of a Warren data directory, read-only.
///
/// Without a mode flag, prints one summary line per segment (records by
/// type, live and dead messages, whether it could be reclaimed) and totals.
/// The --queue, --message and --type filters imply --records.
#[derive(Parser, Debug)]
#[command(name = "warren-dump", version)]
struct Args {
    /// The broker's data directory (holding log/), or the log directory itself.
    data_dir: PathBuf,
    /// One line per record: position, type, CRC status, flags and fields.
    #[arg(long)]
    records: bool,
    /// Check every segment header and record; exit 1 if the log is damaged.
    /// A torn tail at the end of the newest segment is not damage.
    #[arg(long, conflicts_with_all = ["records", "queue", "message", "kind"])]
    verify: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Only this segment: its base position or its file name.
    #[arg(long, value_name = "BASE|FILE")]
    segment: Option<String>,
    /// Only records about this queue (name or queue id).
    #[arg(long, value_name = "NAME|ID")]
    queue: Option<String>,
    /// Only records about this message id (the message, its acks and deliveries).
    #[arg(long, value_name = "ID")]
    message: Option<u64>,
    /// Only records of these types (comma-separated: message, ack, delivered,
    /// queue.declare, exchange.declare, binding.add, id-watermark…).
    #[arg(long = "type", value_name = "TYPE[,TYPE…]")]
    kind: Option<String>,
}

enum Failure {
    /// stdout was closed (`warren-dump … | head`): stop quietly.
    Pipe,
    Error(String),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Failure::Pipe
        } else {
            Failure::Error(format!("writing output: {e}"))
        }
    }
}

type Out<'a> = io::BufWriter<io::StdoutLock<'a>>;

fn main() -> ExitCode {
    let args = Args::parse();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = run(&args, &mut out).and_then(|code| {
        out.flush()?;
        Ok(code)
    });
    match result {
        Ok(code) => code,
        Err(Failure::Pipe) => ExitCode::SUCCESS,
        Err(Failure::Error(message)) => {
            let _ = out.flush();
            eprintln!("warren-dump: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args, out: &mut Out) -> Result<ExitCode, Failure> {
    let inspector = Inspector::open(&args.data_dir).map_err(|e| Failure::Error(e.to_string()))?;
    let filters = Filters::new(args, &inspector)?;
    for file in &inspector.files.set_aside {
        eprintln!(
            "note: {} was set aside by --skip-damaged-segments; it is no part of the log and is not read",
            file.path.display()
        );
    }
    if inspector.segments().is_empty() {
        eprintln!("note: no segment files in {}", inspector.files.dir.display());
    }
    if args.verify {
        verify(args, &inspector, &filters, out)
    } else if args.records || filters.selects_records() {
        records(args, &inspector, &filters, out)
    } else {
        summary(args, &inspector, &filters, out)
    }
}

// ---------------------------------------------------------------------------
// Filters

struct QueueFilter {
    text: String,
    id: Option<u32>,
}

impl QueueFilter {
    fn matches(&self, id: u32, names: &HashMap<u32, String>) -> bool {
        self.id == Some(id) || names.get(&id).is_some_and(|n| *n == self.text)
    }

    fn matches_name(&self, name: &str, names: &HashMap<u32, String>) -> bool {
        name == self.text || self.id.is_some_and(|id| names.get(&id).is_some_and(|n| n == name))
    }
}

struct Filters {
    segment: Option<u64>,
    queue: Option<QueueFilter>,
    message: Option<u64>,
    types: Option<HashSet<u8>>,
}

impl Filters {
    fn new(args: &Args, inspector: &Inspector) -> Result<Filters, Failure> {
        let segment = match &args.segment {
            None => None,
            Some(text) => {
                let name = Path::new(text).file_name().and_then(|n| n.to_str()).unwrap_or(text);
                let base = parse_segment_file_name(name).or_else(|| name.parse::<u64>().ok()).ok_or_else(|| {
                    Failure::Error(format!("--segment {text}: give a base position or a segment file name"))
                })?;
                if !inspector.segments().iter().any(|s| s.base == base) {
                    let known: Vec<String> = inspector.segments().iter().map(|s| s.name()).collect();
                    return Err(Failure::Error(format!(
                        "no segment {text} in {} (segments: {})",
                        inspector.files.dir.display(),
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    )));
                }
                Some(base)
            }
        };
        let types = match &args.kind {
            None => None,
            Some(list) => {
                let mut types = HashSet::new();
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let code = type_code(name).ok_or_else(|| {
                        let valid: Vec<&str> = RECORD_TYPES.iter().map(|c| type_name(*c)).collect();
                        Failure::Error(format!("unknown record type '{name}'; the types are: {}", valid.join(", ")))
                    })?;
                    types.insert(code);
                }
                Some(types)
            }
        };
        Ok(Filters {
            segment,
            queue: args.queue.as_ref().map(|text| QueueFilter { text: text.clone(), id: text.parse().ok() }),
            message: args.message,
            types,
        })
    }

    fn selects_records(&self) -> bool {
        self.queue.is_some() || self.message.is_some() || self.types.is_some()
    }

    fn segment_selected(&self, base: u64) -> bool {
        self.segment.is_none_or(|s| s == base)
    }

    fn record_selected(&self, record: &Record, names: &HashMap<u32, String>) -> bool {
        if let Some(types) = &self.types
            && !types.contains(&record.type_code())
        {
            return false;
        }
        if let Some(id) = self.message {
            let mentions = match record {
                Record::Message(m) => m.id == id,
                Record::Ack { ids, .. } | Record::Delivered { ids, .. } => ids.contains(&id),
                _ => false,
            };
            if !mentions {
                return false;
            }
        }
        if let Some(q) = &self.queue {
            let mentions = match record {
                Record::Message(m) => m.queues.iter().any(|id| q.matches(*id, names)),
                Record::Ack { queue, .. }
                | Record::Delivered { queue, .. }
                | Record::QueueDeclare { queue, .. }
                | Record::QueueDelete { queue } => q.matches(*queue, names),
                Record::BindingAdd(b) | Record::BindingRemove(b) => {
                    b.destination_kind == DestinationKind::Queue && q.matches_name(&b.destination, names)
                }
                _ => false,
            };
            if !mentions {
                return false;
            }
        }
        true
    }
}

// ---------------------------------------------------------------------------
// Summary

fn summary(args: &Args, inspector: &Inspector, filters: &Filters, out: &mut Out) -> Result<ExitCode, Failure> {
    let replay = inspector.replay();
    if let Some(error) = &replay.error {
        eprintln!("warning: the log could not be replayed, live and dead messages are unknown: {error}");
    }
    let header =
        ["SEGMENT", "SIZE", "USED", "FIRST POS", "LAST POS", "LIVE", "DEAD", "RECLAIMABLE", "STATUS", "RECORDS"];
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut totals = Totals::default();
    let mut failure = None;
    inspector.scan_all(|index, file, read| {
        if !filters.segment_selected(file.base) {
            return;
        }
        let newest = inspector.is_newest(index);
        let scan = match read {
            SegmentRead::Scanned(scan) => scan,
            SegmentRead::Vanished => {
                problems.push(format!("{}: removed while reading (reclaimed by the running broker)", file.name()));
                return;
            }
            SegmentRead::Unreadable(e) => {
                failure.get_or_insert_with(|| format!("cannot read {}: {e}", file.path.display()));
                return;
            }
        };
        let s = SegmentSummary::new(&scan, &replay);
        totals.add(&s, &scan);
        for f in &scan.findings {
            problems.push(finding_line(file, f));
        }
        if args.json {
            let findings: Vec<Value> = scan.findings.iter().map(finding_json).collect();
            let line = json!({
                "kind": "segment",
                "file": file.name(),
                "path": file.path.display().to_string(),
                "base": s.base,
                "size": s.size,
                "capacity": s.capacity,
                "used": s.used,
                "first_position": s.first_position(),
                "last_position": s.last_position(),
                "records": s.records,
                "by_type": by_type_json(&s.by_type),
                "messages": s.messages,
                "live": s.live,
                "dead": s.dead(),
                "reclaimable": s.reclaimable(),
                "newest": newest,
                "status": status(&scan),
                "findings": findings,
            });
            rows.push(vec![line.to_string()]);
        } else {
            let opt = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
            rows.push(vec![
                file.name(),
                s.size.to_string(),
                s.used.to_string(),
                opt(s.first_position()),
                opt(s.last_position()),
                opt(s.live),
                opt(s.dead()),
                s.reclaimable().map_or("?", |r| if r { "yes" } else { "no" }).to_string(),
                status(&scan),
                format!("{} ({})", s.records, by_type_text(&s.by_type)),
            ]);
        }
    });
    if let Some(error) = failure {
        return Err(Failure::Error(error));
    }
    if args.json {
        for row in rows {
            writeln!(out, "{}", row[0])?;
        }
        for (id, name, messages) in queue_counts(&replay) {
            writeln!(out, "{}", json!({"kind": "queue", "id": id, "name": name, "messages": messages}))?;
        }
        writeln!(out, "{}", totals.json(&replay))?;
    } else {
        writeln!(out, "log {}", inspector.files.dir.display())?;
        let mut table = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
        table.extend(rows);
        write_table(out, &table)?;
        totals.write_text(out, &replay)?;
        if !problems.is_empty() {
            writeln!(out, "findings:")?;
            for p in &problems {
                writeln!(out, "  {p}")?;
            }
        }
    }
    if totals.damaged > 0 {
        eprintln!("warning: the log is damaged; `warren-dump {} --verify` lists the problems", args.data_dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn status(scan: &SegmentScan) -> String {
    let first = |severity| scan.findings.iter().find(|f| f.severity == severity).map(|f| f.offset);
    if let Some(offset) = first(Severity::Damage) {
        format!("DAMAGED@{offset}")
    } else if let Some(offset) = first(Severity::TornTail) {
        format!("torn-tail@{offset}")
    } else if first(Severity::Warning).is_some() {
        "warnings".to_string()
    } else {
        "ok".to_string()
    }
}

#[derive(Default)]
struct Totals {
    segments: u64,
    size: u64,
    records: u64,
    by_type: BTreeMap<u8, u64>,
    messages: u64,
    live: u64,
    dead: u64,
    unknown: u64,
    reclaimable: u64,
    damaged: u64,
    torn_tail: Option<String>,
}

impl Totals {
    fn add(&mut self, s: &SegmentSummary, scan: &SegmentScan) {
        self.segments += 1;
        self.size += s.size as u64;
        self.records += s.records;
        for (t, n) in &s.by_type {
            *self.by_type.entry(*t).or_default() += n;
        }
        self.messages += s.messages;
        match (s.live, s.dead()) {
            (Some(live), Some(dead)) => {
                self.live += live;
                self.dead += dead;
            }
            _ => self.unknown += s.messages,
        }
        if s.reclaimable() == Some(true) {
            self.reclaimable += 1;
        }
        if scan.is_damaged() {
            self.damaged += 1;
        }
        if let Some(f) = scan.torn_tail() {
            self.torn_tail = Some(format!("{}@{}", warren::store::format::segment_file_name(scan.base), f.offset));
        }
    }

    fn write_text(&self, out: &mut Out, replay: &Replay) -> io::Result<()> {
        writeln!(
            out,
            "total: {} segment{}, {} bytes, {} records ({})",
            self.segments,
            plural(self.segments),
            self.size,
            self.records,
            by_type_text(&self.by_type)
        )?;
        let unknown = if self.unknown > 0 {
            format!(", {} in damaged segments not replayed", self.unknown)
        } else {
            String::new()
        };
        writeln!(
            out,
            "messages: {} records, {} live, {} dead{unknown}; {} reclaimable segment{}{}{}",
            self.messages,
            self.live,
            self.dead,
            self.reclaimable,
            plural(self.reclaimable),
            if self.damaged > 0 {
                format!("; {} DAMAGED segment{}", self.damaged, plural(self.damaged))
            } else {
                String::new()
            },
            self.torn_tail.as_ref().map_or(String::new(), |t| format!("; torn tail at {t}")),
        )?;
        if replay.error.is_none() {
            let defs = &replay.recovered.definitions;
            let queues: Vec<String> = queue_counts(replay)
                .into_iter()
                .map(|(id, name, n)| format!("{name:?} (#{id}) {n} message{}", plural(n)))
                .collect();
            writeln!(
                out,
                "after replay: {} durable exchange{}, {} binding{}, {} durable queue{}{}{}",
                defs.exchanges.len(),
                plural(defs.exchanges.len() as u64),
                defs.bindings.len(),
                plural(defs.bindings.len() as u64),
                queues.len(),
                plural(queues.len() as u64),
                if queues.is_empty() { "" } else { ": " },
                queues.join(", ")
            )?;
        }
        Ok(())
    }

    fn json(&self, replay: &Replay) -> Value {
        json!({
            "kind": "total",
            "segments": self.segments,
            "size": self.size,
            "records": self.records,
            "by_type": by_type_json(&self.by_type),
            "messages": self.messages,
            "live": self.live,
            "dead": self.dead,
            "not_replayed": self.unknown,
            "reclaimable_segments": self.reclaimable,
            "damaged_segments": self.damaged,
            "torn_tail": self.torn_tail,
            "replay_error": replay.error,
        })
    }
}

/// (queue id, name, live messages) of every durable queue after replay.
fn queue_counts(replay: &Replay) -> Vec<(u32, String, u64)> {
    let per_queue = replay.recovered.queue_messages();
    let mut queues: Vec<(u32, String, u64)> = replay
        .queue_names()
        .into_iter()
        .map(|(id, name)| (id, name, per_queue.get(&id).map_or(0, |m| m.len() as u64)))
        .collect();
    queues.sort();
    queues
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn by_type_text(by_type: &BTreeMap<u8, u64>) -> String {
    if by_type.is_empty() {
        return "none".to_string();
    }
    by_type.iter().map(|(t, n)| format!("{} {n}", type_name(*t))).collect::<Vec<_>>().join(", ")
}

fn by_type_json(by_type: &BTreeMap<u8, u64>) -> Value {
    Value::Object(by_type.iter().map(|(t, n)| (type_name(*t).to_string(), json!(n))).collect())
}

/// Left-aligned columns; the last one is not padded.
fn write_table(out: &mut Out, rows: &[Vec<String>]) -> io::Result<()> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..columns).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.len()).max().unwrap_or(0)).collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Records

fn records(args: &Args, inspector: &Inspector, filters: &Filters, out: &mut Out) -> Result<ExitCode, Failure> {
    let replay = inspector.replay();
    if let Some(error) = &replay.error {
        eprintln!("warning: the log could not be replayed, live and dead messages are unknown: {error}");
    }
    let mut names = replay.queue_names();
    let mut result: Result<(), Failure> = Ok(());
    let mut shown = 0u64;
    inspector.scan_all(|_, file, read| {
        if result.is_err() {
            return;
        }
        let selected = filters.segment_selected(file.base);
        let scan = match read {
            SegmentRead::Scanned(scan) => scan,
            SegmentRead::Vanished => {
                if selected {
                    eprintln!("note: {} was removed while reading (reclaimed by the running broker)", file.name());
                }
                return;
            }
            SegmentRead::Unreadable(e) => {
                result = Err(Failure::Error(format!("cannot read {}: {e}", file.path.display())));
                return;
            }
        };
        // Names from every segment, shown or not: later records refer to them.
        result = (|| -> Result<(), Failure> {
            let mut findings = scan.findings.iter().peekable();
            for entry in &scan.entries {
                if let Record::QueueDeclare { queue, name, .. } = &entry.record {
                    names.insert(*queue, name.clone());
                }
                if !selected {
                    continue;
                }
                while let Some(f) = findings.next_if(|f| f.offset <= entry.offset) {
                    write_finding_record(args, out, file, f)?;
                }
                if filters.record_selected(&entry.record, &names) {
                    shown += 1;
                    let live = match &entry.record {
                        Record::Message(_) => replay.is_live(file.base, entry.offset),
                        _ => None,
                    };
                    if args.json {
                        let line = record_json(file, entry.offset, entry.len, entry.flags, &entry.record, live, &names);
                        writeln!(out, "{line}")?;
                    } else {
                        writeln!(out, "{}", record_text(file, entry.offset, entry.flags, &entry.record, live, &names))?;
                    }
                }
            }
            if selected {
                for f in findings {
                    write_finding_record(args, out, file, f)?;
                }
            }
            Ok(())
        })();
    });
    result?;
    if shown == 0 && filters.selects_records() {
        eprintln!("note: no record matches the filters");
    }
    Ok(ExitCode::SUCCESS)
}

fn write_finding_record(args: &Args, out: &mut Out, file: &SegmentFile, f: &Finding) -> Result<(), Failure> {
    if args.json {
        let mut obj = finding_json(f);
        if let Value::Object(map) = &mut obj {
            map.insert("kind".into(), json!("problem"));
            map.insert("segment".into(), json!(file.name()));
            map.insert("position".into(), json!(file.base + f.offset as u64));
        }
        writeln!(out, "{obj}")?;
    } else {
        let label = match f.severity {
            Severity::Damage => "DAMAGED",
            Severity::TornTail => "TORN-TAIL",
            Severity::Warning => "WARNING",
        };
        writeln!(
            out,
            "{} +{} pos={} {label:<16} crc={} {}",
            file.name(),
            f.offset,
            file.base + f.offset as u64,
            f.crc_status(),
            f.what
        )?;
    }
    Ok(())
}

fn flags_text(flags: u8) -> String {
    let mut parts = Vec::new();
    if flags & FLAG_SNAPSHOT != 0 {
        parts.push("SNAPSHOT".to_string());
    }
    if flags & FLAG_RELOCATED != 0 {
        parts.push("RELOCATED".to_string());
    }
    let other = flags & !(FLAG_SNAPSHOT | FLAG_RELOCATED);
    if other != 0 {
        parts.push(format!("{other:#04x}"));
    }
    if parts.is_empty() { "-".to_string() } else { parts.join("|") }
}

fn flags_json(flags: u8) -> Value {
    let text = flags_text(flags);
    if text == "-" { json!([]) } else { json!(text.split('|').collect::<Vec<_>>()) }
}

fn queue_text(id: u32, names: &HashMap<u32, String>) -> String {
    match names.get(&id) {
        Some(name) => format!("#{id} {name:?}"),
        None => format!("#{id}"),
    }
}

fn queue_json(id: u32, names: &HashMap<u32, String>) -> Value {
    json!({"id": id, "name": names.get(&id)})
}

fn ids_text(ids: &[u64]) -> String {
    let shown: Vec<String> = ids.iter().take(IDS_SHOWN).map(u64::to_string).collect();
    let more = ids.len().saturating_sub(IDS_SHOWN);
    if more > 0 { format!("[{} … +{more} more]", shown.join(",")) } else { format!("[{}]", shown.join(",")) }
}

/// The first bytes of a body, printable ASCII as is, the rest escaped.
fn preview(body: &[u8]) -> String {
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

fn record_text(
    file: &SegmentFile,
    offset: usize,
    flags: u8,
    record: &Record,
    live: Option<bool>,
    names: &HashMap<u32, String>,
) -> String {
    let fields = match record {
        Record::ExchangeDeclare { name, kind, auto_delete, internal, arguments } => format!(
            "name={name:?} exchange_type={kind} auto_delete={auto_delete} internal={internal}{}",
            arguments_text(arguments)
        ),
        Record::ExchangeDelete { name } => format!("name={name:?}"),
        Record::QueueDeclare { queue, name, auto_delete, arguments } => {
            format!("queue=#{queue} name={name:?} auto_delete={auto_delete}{}", arguments_text(arguments))
        }
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

fn message_text(m: &MessageRecord, live: Option<bool>, names: &HashMap<u32, String>) -> String {
    let queues: Vec<String> = m.queues.iter().map(|q| queue_text(*q, names)).collect();
    let state = match live {
        Some(true) => "live",
        Some(false) => "dead",
        None => "?",
    };
    let ellipsis = if m.body.len() > PREVIEW_BYTES { "…" } else { "" };
    format!(
        "id={} {state} queues=[{}] exchange={:?} routing_key={:?} props={} body={} \"{}\"{ellipsis}",
        m.id,
        queues.join(", "),
        m.exchange,
        m.routing_key,
        properties_text(&m.properties),
        m.body.len(),
        preview(&m.body)
    )
}

fn binding_text(b: &BindingRecord) -> String {
    let kind = match b.destination_kind {
        DestinationKind::Queue => "queue",
        DestinationKind::Exchange => "exchange",
    };
    format!(
        "source={:?} destination={kind} {:?} routing_key={:?}{}",
        b.source,
        b.destination,
        b.routing_key,
        arguments_text(&b.arguments)
    )
}

fn record_json(
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
        Record::ExchangeDeclare { name, kind, auto_delete, internal, arguments } => {
            put("name", json!(name));
            put("exchange_type", json!(kind));
            put("auto_delete", json!(auto_delete));
            put("internal", json!(internal));
            put("arguments", arguments_json(arguments));
        }
        Record::ExchangeDelete { name } => put("name", json!(name)),
        Record::QueueDeclare { queue, name, auto_delete, arguments } => {
            put("queue", json!({"id": queue, "name": name}));
            put("auto_delete", json!(auto_delete));
            put("arguments", arguments_json(arguments));
        }
        Record::QueueDelete { queue } => put("queue", queue_json(*queue, names)),
        Record::BindingAdd(b) | Record::BindingRemove(b) => {
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

fn decode_table(raw: &Bytes) -> Result<FieldTable, String> {
    if raw.is_empty() {
        return Ok(FieldTable::new());
    }
    FieldTable::read(&mut Reader::new(raw.clone())).map_err(|e| format!("{e} ({} bytes)", raw.len()))
}

fn arguments_text(raw: &Bytes) -> String {
    match decode_table(raw) {
        Ok(t) if t.is_empty() => String::new(),
        Ok(t) => format!(" arguments={}", table_text(&t)),
        Err(e) => format!(" arguments=<undecodable: {e}>"),
    }
}

fn arguments_json(raw: &Bytes) -> Value {
    match decode_table(raw) {
        Ok(t) => table_json(&t),
        Err(e) => json!({ "undecodable": e }),
    }
}

fn properties_text(raw: &Bytes) -> String {
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

fn properties_json(p: &BasicProperties) -> Value {
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

fn table_text(t: &FieldTable) -> String {
    let entries: Vec<String> = t.iter().map(|(k, v)| format!("{k}={}", value_text(v))).collect();
    format!("{{{}}}", entries.join(", "))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value_text(v: &FieldValue) -> String {
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

fn table_json(t: &FieldTable) -> Value {
    Value::Object(t.iter().map(|(k, v)| (k.to_string(), value_json(v))).collect())
}

fn value_json(v: &FieldValue) -> Value {
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

fn finding_line(file: &SegmentFile, f: &Finding) -> String {
    format!("{}: {} at offset {}: {}", file.name(), f.severity.as_str(), f.offset, f.what)
}

fn finding_json(f: &Finding) -> Value {
    json!({"offset": f.offset, "severity": f.severity.as_str(), "crc": f.crc_status(), "what": f.what})
}

fn verify(args: &Args, inspector: &Inspector, filters: &Filters, out: &mut Out) -> Result<ExitCode, Failure> {
    if !args.json {
        writeln!(out, "verifying {}", inspector.files.dir.display())?;
    }
    let mut counts: HashMap<Severity, u64> = HashMap::new();
    let (mut segments, mut records, mut damaged_segments, mut unreadable) = (0u64, 0u64, 0u64, 0u64);
    let mut result: Result<(), Failure> = Ok(());
    inspector.scan_all(|_, file, read| {
        if result.is_err() || !filters.segment_selected(file.base) {
            return;
        }
        result = (|| -> Result<(), Failure> {
            let scan = match read {
                SegmentRead::Scanned(scan) => scan,
                SegmentRead::Vanished => {
                    if args.json {
                        writeln!(out, "{}", json!({"kind": "note", "segment": file.name(), "what": "removed while reading (reclaimed by the running broker)"}))?;
                    } else {
                        writeln!(out, "{}: removed while reading (reclaimed by the running broker)", file.name())?;
                    }
                    return Ok(());
                }
                SegmentRead::Unreadable(e) => {
                    unreadable += 1;
                    if args.json {
                        writeln!(out, "{}", json!({"kind": "problem", "segment": file.name(), "offset": Value::Null, "severity": "unreadable", "what": e.to_string()}))?;
                    } else {
                        writeln!(out, "{}: cannot read: {e}", file.name())?;
                    }
                    return Ok(());
                }
            };
            segments += 1;
            records += scan.entries.len() as u64;
            if scan.is_damaged() {
                damaged_segments += 1;
            }
            for f in &scan.findings {
                *counts.entry(f.severity).or_default() += 1;
                if args.json {
                    let mut obj = finding_json(f);
                    if let Value::Object(map) = &mut obj {
                        map.insert("kind".into(), json!("problem"));
                        map.insert("segment".into(), json!(file.name()));
                        map.insert("path".into(), json!(file.path.display().to_string()));
                        map.insert("position".into(), json!(file.base + f.offset as u64));
                    }
                    writeln!(out, "{obj}")?;
                } else {
                    writeln!(out, "{}", finding_line(file, f))?;
                }
            }
            if scan.findings.is_empty() && !args.json {
                writeln!(
                    out,
                    "{}: ok, {} record{}, written data ends at offset {}",
                    file.name(),
                    scan.entries.len(),
                    plural(scan.entries.len() as u64),
                    scan.end
                )?;
            }
            Ok(())
        })();
    });
    result?;
    let damage = counts.get(&Severity::Damage).copied().unwrap_or(0);
    let torn = counts.get(&Severity::TornTail).copied().unwrap_or(0);
    let warnings = counts.get(&Severity::Warning).copied().unwrap_or(0);
    let verdict = if damage > 0 {
        "DAMAGED: a restart refuses to start on this log, or loses records (see the lines above; --skip-damaged-segments sets damaged segments aside with all their records)"
    } else if unreadable > 0 {
        "INCOMPLETE: some segments could not be read"
    } else if torn > 0 {
        "clean, ending in a torn tail (a write cut short by a crash, or in progress: never confirmed; a restart zeroes it)"
    } else {
        "clean"
    };
    if args.json {
        writeln!(
            out,
            "{}",
            json!({
                "kind": "verify",
                "segments": segments,
                "records": records,
                "damaged": damage,
                "damaged_segments": damaged_segments,
                "torn_tails": torn,
                "warnings": warnings,
                "unreadable": unreadable,
                "ok": damage == 0 && unreadable == 0,
            })
        )?;
    } else {
        writeln!(
            out,
            "verify: {segments} segment{}, {records} records: {damage} damaged spot{} in {damaged_segments} segment{}, {torn} torn tail{}, {warnings} warning{}: {verdict}",
            plural(segments),
            plural(damage),
            plural(damaged_segments),
            plural(torn),
            plural(warnings)
        )?;
    }
    Ok(if damage > 0 {
        ExitCode::from(1)
    } else if unreadable > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
