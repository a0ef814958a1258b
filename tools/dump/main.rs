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

mod render;

use render::{finding_json, finding_line, record_json, record_text};

use clap::Parser;
use serde_json::{Value, json};

use warren::store::format::{DestinationKind, Record, parse_segment_file_name};
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
