//! `warren-dump` on logs the real broker wrote: the summary's live and dead
//! counts, the records (text and JSON), the filters, `--verify` on a clean
//! log, on a flipped byte in a sealed segment and on a torn tail, that it
//! never changes a file, and that it works while the broker is running.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;

const SEGMENT_SIZE: &str = "65536";
/// Persistent messages published to `dump.q` (routing key `dump.key`).
const MAIN: usize = 120;
/// Persistent messages published to `dump.side` (routing key `side.key`).
const SIDE: usize = 6;
const BODY_LEN: usize = 1500;
const LIMIT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn main_body(i: usize) -> String {
    let mut body = format!("dump message {i:04} ");
    while body.len() < BODY_LEN {
        body.push('.');
    }
    body
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    fn json(&self) -> Vec<Value> {
        self.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
    }

    fn of_kind(&self, kind: &str) -> Vec<Value> {
        self.json().into_iter().filter(|v| v["kind"] == kind).collect()
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

fn dump(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_warren-dump")).arg(dir).args(args).output().expect("run warren-dump");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

fn persistent(content_type: &str, seq: i64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("seq".into(), AMQPValue::LongLongInt(seq));
    BasicProperties::default().with_delivery_mode(2).with_content_type(content_type.into()).with_headers(headers)
}

async fn publish(ch: &Channel, key: &str, body: &[u8], props: BasicProperties) {
    let confirm = within("publish", ch.basic_publish("dump.ex".into(), key.into(), Default::default(), body, props))
        .await
        .expect("publish");
    let confirmation = within("confirm", confirm).await.expect("confirmation");
    assert!(confirmation.is_ack(), "publish not confirmed: {confirmation:?}");
}

/// Declares a durable exchange, two durable queues and their bindings,
/// publishes MAIN + SIDE persistent messages with confirms, takes every
/// message of `dump.q` with basic.get and acks those with an even sequence
/// number; the odd ones go back to the queue when the channel closes.
async fn fill(broker: &common::Broker) {
    let conn =
        within("connect", Connection::connect(&broker.url(), ConnectionProperties::default())).await.expect("connect");
    let ch = within("channel", conn.create_channel()).await.expect("channel");
    within("confirm.select", ch.confirm_select(ConfirmSelectOptions::default())).await.expect("confirm.select");
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    within("exchange", ch.exchange_declare("dump.ex".into(), ExchangeKind::Direct, durable, FieldTable::default()))
        .await
        .expect("exchange.declare");
    for (queue, key) in [("dump.q", "dump.key"), ("dump.side", "side.key")] {
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        within("queue", ch.queue_declare(queue.into(), durable, FieldTable::default())).await.expect("queue.declare");
        within(
            "bind",
            ch.queue_bind(queue.into(), "dump.ex".into(), key.into(), Default::default(), FieldTable::default()),
        )
        .await
        .expect("queue.bind");
    }
    for i in 0..MAIN {
        publish(&ch, "dump.key", main_body(i).as_bytes(), persistent("text/plain", i as i64)).await;
    }
    for i in 0..SIDE {
        let body = format!("side message {i}\n\x00\x01");
        publish(&ch, "side.key", body.as_bytes(), persistent("application/octet-stream", i as i64)).await;
    }
    let getter = within("channel", conn.create_channel()).await.expect("channel");
    for i in 0..MAIN {
        let got = within("basic.get", getter.basic_get("dump.q".into(), BasicGetOptions { no_ack: false }))
            .await
            .expect("basic.get")
            .expect("a message");
        assert_eq!(got.delivery.data, main_body(i).as_bytes(), "basic.get returns messages in order");
        if i % 2 == 0 {
            within("ack", got.delivery.ack(BasicAckOptions::default())).await.expect("ack");
        }
    }
    within("channel.close", getter.close(200, "done".into())).await.expect("close");
    within("connection.close", conn.close(200, "done".into())).await.expect("close");
}

/// A data directory the real broker wrote and then left cleanly.
async fn stopped_broker_dir(scratch: &Path) -> PathBuf {
    let dir = scratch.join("data");
    let mut broker = common::Broker::start_in(&dir, &["--segment-size", SEGMENT_SIZE, "--no-compaction"]);
    fill(&broker).await;
    let listed = broker.warrenctl(&["list_queues", "-q", "--no-table-headers", "name", "messages"]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains(&format!("dump.q\t{}", MAIN / 2)), "broker's view: {listed}");
    broker.stop();
    dir
}

/// Every file under `dir`: (length, mtime, bytes).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() {
                out.insert(path.clone(), (meta.len(), meta.modified().unwrap(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

fn segment_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names
}

/// A copy of the log of `dir` in a new data directory, for damaging.
fn copy_log(dir: &Path, to: &Path) -> PathBuf {
    let copy = to.join("data");
    std::fs::create_dir_all(copy.join("log")).unwrap();
    for name in segment_names(dir) {
        std::fs::copy(dir.join("log").join(&name), copy.join("log").join(&name)).unwrap();
    }
    copy
}

/// The records of one segment, from `--records --json`.
fn records_of(records: &[Value], segment: &str) -> Vec<Value> {
    records.iter().filter(|r| r["segment"] == segment).cloned().collect()
}

fn offset_of(record: &Value) -> u64 {
    record["offset"].as_u64().expect("offset")
}

/// Starts the broker on `dir` and expects it to refuse: returns its log.
fn broker_refuses(dir: &Path) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--bind", "127.0.0.1", "--port", "0", "--management-port", "0", "--prometheus-port", "0", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start warren");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("warren started on a damaged log");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "warren must refuse a damaged log");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_dump_reads_a_log_written_by_the_broker() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = stopped_broker_dir(scratch.path()).await;
    let segments = segment_names(&dir);
    assert!(segments.len() >= 3, "expected several segments: {segments:?}");
    let before = snapshot(&dir);

    // --- summary --------------------------------------------------------
    let summary = dump(&dir, &[]);
    assert_eq!(summary.code, 0, "{summary:?}");
    println!("{}", summary.stdout);
    let live = SIDE + MAIN / 2;
    let dead = MAIN / 2;
    assert!(
        summary.stdout.contains(&format!("messages: {} records, {live} live, {dead} dead", MAIN + SIDE)),
        "{summary:?}"
    );
    for name in &segments {
        assert!(summary.stdout.lines().any(|l| l.starts_with(name.as_str())), "{name} missing: {summary:?}");
    }
    assert!(summary.stdout.contains("\"dump.q\" (#"), "{summary:?}");

    let summary_json = dump(&dir, &["--json"]);
    assert_eq!(summary_json.code, 0, "{summary_json:?}");
    let per_segment = summary_json.of_kind("segment");
    assert_eq!(per_segment.len(), segments.len());
    let sum = |key: &str| per_segment.iter().map(|s| s[key].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("live"), live as u64);
    assert_eq!(sum("dead"), dead as u64);
    assert_eq!(sum("messages"), (MAIN + SIDE) as u64);
    for s in &per_segment {
        assert_eq!(s["reclaimable"], s["live"] == 0, "reclaimable means no live message: {s}");
        assert!(s["first_position"].as_u64().unwrap() >= s["base"].as_u64().unwrap());
        assert!(s["last_position"].as_u64() >= s["first_position"].as_u64());
        assert_eq!(s["status"], "ok");
    }
    let queues: HashMap<String, u64> = summary_json
        .of_kind("queue")
        .iter()
        .map(|q| (q["name"].as_str().unwrap().to_string(), q["messages"].as_u64().unwrap()))
        .collect();
    assert_eq!(queues, HashMap::from([("dump.q".to_string(), (MAIN / 2) as u64), ("dump.side".into(), SIDE as u64)]));
    let total = &summary_json.of_kind("total")[0];
    assert_eq!(total["live"], live);
    assert_eq!(total["dead"], dead);

    // --- records, JSON ----------------------------------------------------
    let records_json = dump(&dir, &["--records", "--json"]);
    assert_eq!(records_json.code, 0, "{records_json:?}");
    let records = records_json.of_kind("record");
    assert_eq!(records.len(), records_json.lines().len(), "nothing but records in a clean log");
    assert!(records.iter().all(|r| r["crc"] == "ok"));
    let messages: Vec<&Value> = records.iter().filter(|r| r["type"] == "message").collect();
    assert_eq!(messages.len(), MAIN + SIDE);
    let mut id_of_seq: HashMap<usize, u64> = HashMap::new();
    let mut side_ids = HashSet::new();
    for m in &messages {
        let seq = m["properties"]["headers"]["seq"].as_u64().unwrap() as usize;
        let id = m["id"].as_u64().unwrap();
        assert_eq!(m["properties"]["delivery_mode"], 2);
        assert_eq!(m["exchange"], "dump.ex");
        assert!(m["flags"].as_array().unwrap().is_empty());
        if m["routing_key"] == "dump.key" {
            assert_eq!(m["queues"][0]["name"], "dump.q");
            assert_eq!(m["properties"]["content_type"], "text/plain");
            assert_eq!(m["body_len"], BODY_LEN);
            assert_eq!(m["body_preview"].as_str().unwrap(), &main_body(seq)[..32]);
            assert_eq!(m["live"], seq % 2 == 1, "message {seq}: only the acked (even) ones are dead");
            id_of_seq.insert(seq, id);
        } else {
            assert_eq!(m["routing_key"], "side.key");
            assert_eq!(m["queues"][0]["name"], "dump.side");
            assert_eq!(m["body_preview"], format!("side message {seq}\\n\\x00\\x01"));
            assert_eq!(m["live"], true);
            side_ids.insert(id);
        }
    }
    assert_eq!(id_of_seq.len(), MAIN);
    let acked: Vec<u64> = records
        .iter()
        .filter(|r| r["type"] == "ack")
        .flat_map(|r| r["ids"].as_array().unwrap().iter().map(|id| id.as_u64().unwrap()).collect::<Vec<_>>())
        .collect();
    let expected_acked: HashSet<u64> = (0..MAIN).step_by(2).map(|seq| id_of_seq[&seq]).collect();
    assert_eq!(acked.len(), MAIN / 2, "one id per ack");
    assert_eq!(acked.iter().copied().collect::<HashSet<_>>(), expected_acked);
    // Live per segment in the records agrees with the summary.
    for s in &per_segment {
        let name = s["file"].as_str().unwrap();
        let live_here = records_of(&records, name).iter().filter(|r| r["live"] == true).count() as u64;
        assert_eq!(s["live"].as_u64().unwrap(), live_here, "segment {name}");
    }
    // Every segment starts with a commit group holding its snapshot: the id
    // watermark, then definitions.
    for name in &segments {
        let first = &records_of(&records, name)[0];
        assert_eq!(first["type"], "group");
        assert_eq!(first["offset"], 40);
        let second = &records_of(&records, name)[1];
        assert_eq!(second["type"], "id-watermark");
        assert_eq!(second["offset"], 63);
        assert_eq!(second["flags"], serde_json::json!(["SNAPSHOT"]));
    }

    // --- records, text ----------------------------------------------------
    let text = dump(&dir, &["--records"]);
    assert_eq!(text.code, 0, "{text:?}");
    let line = |needle: &str| -> String {
        text.lines().into_iter().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle}: {text:?}")).into()
    };
    let seven = line("\"dump message 0007 ");
    for part in [
        "message",
        "crc=ok",
        "flags=-",
        &format!("id={} live", id_of_seq[&7]),
        "queues=[#",
        "\"dump.q\"",
        "exchange=\"dump.ex\"",
        "routing_key=\"dump.key\"",
        "delivery_mode=2",
        "content_type=\"text/plain\"",
        "headers={seq=7}",
        "body=1500 \"dump message 0007 ..............\"…",
    ] {
        assert!(seven.contains(part), "{part:?} not in {seven}");
    }
    assert!(line("\"dump message 0008 ").contains(&format!("id={} dead", id_of_seq[&8])));
    assert!(line("\"side message 1").contains("\"side message 1\\n\\x00\\x01\""));
    assert!(line("exchange.declare").contains("name=\"dump.ex\" exchange_type=direct"));
    assert!(line("binding.add").contains("source=\"dump.ex\" destination=queue"));
    let watermark = line("id-watermark");
    assert!(watermark.starts_with(&format!("{} +63 pos=63 id-watermark", segments[0])), "{watermark}");
    assert!(watermark.contains("flags=SNAPSHOT"));
    println!("{}", text.lines().iter().take(12).copied().collect::<Vec<_>>().join("\n"));

    // --- filters ----------------------------------------------------------
    let eight = id_of_seq[&8].to_string();
    let about_eight = dump(&dir, &["--message", &eight, "--json"]);
    assert_eq!(about_eight.code, 0, "{about_eight:?}");
    let types: Vec<String> = about_eight.json().iter().map(|r| r["type"].as_str().unwrap().to_string()).collect();
    assert!(types.contains(&"message".to_string()) && types.contains(&"ack".to_string()), "{about_eight:?}");
    for r in about_eight.json() {
        let mentions = r["id"].as_u64() == Some(id_of_seq[&8])
            || r["ids"].as_array().is_some_and(|ids| ids.contains(&Value::from(id_of_seq[&8])));
        assert!(mentions, "{r}");
    }
    let about_eight_text = dump(&dir, &["--message", &eight]);
    assert_eq!(about_eight_text.lines().len(), about_eight.lines().len());
    println!("{}", about_eight_text.stdout);

    let acks = dump(&dir, &["--type", "ack"]);
    assert_eq!(acks.code, 0, "{acks:?}");
    let ack_records = records.iter().filter(|r| r["type"] == "ack").count();
    assert_eq!(acks.lines().len(), ack_records);
    assert!(acks.lines().iter().all(|l| l.split_whitespace().nth(3) == Some("ack")), "{acks:?}");
    assert_eq!(dump(&dir, &["--type", "ack", "--json"]).of_kind("record").len(), ack_records);

    let side = dump(&dir, &["--queue", "dump.side", "--type", "message", "--json"]);
    let side_records = side.of_kind("record");
    assert_eq!(side_records.len(), SIDE, "{side:?}");
    assert!(side_records.iter().all(|r| r["routing_key"] == "side.key"));
    let side_id = side_records[0]["queues"][0]["id"].as_u64().unwrap().to_string();
    assert_eq!(dump(&dir, &["--queue", &side_id, "--type", "message", "--json"]).of_kind("record").len(), SIDE);
    let side_all = dump(&dir, &["--queue", "dump.side"]);
    assert!(side_all.stdout.contains("queue.declare") && side_all.stdout.contains("binding.add"), "{side_all:?}");
    assert!(!side_all.stdout.contains("\"dump message"), "{side_all:?}");

    let second = &segments[1];
    let base: u64 = second.trim_end_matches(".wal").parse().unwrap();
    let by_name = dump(&dir, &["--records", "--segment", second]);
    assert!(!by_name.lines().is_empty() && by_name.lines().iter().all(|l| l.starts_with(second.as_str())));
    assert_eq!(by_name.lines().len(), records_of(&records, second).len());
    assert_eq!(dump(&dir, &["--records", "--segment", &base.to_string()]).stdout, by_name.stdout);
    let one = dump(&dir, &["--segment", second, "--json"]).of_kind("segment");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["file"], second.as_str());
    let missing = dump(&dir, &["--segment", "12345"]);
    assert_eq!(missing.code, 2, "{missing:?}");

    // --- verify, clean ------------------------------------------------------
    let verify = dump(&dir, &["--verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(verify.stdout.contains("clean"), "{verify:?}");
    assert!(!verify.stdout.contains("damaged at") && !verify.stdout.contains("torn tail at"), "{verify:?}");
    let verify_json = dump(&dir, &["--verify", "--json"]);
    assert_eq!(verify_json.code, 0);
    assert_eq!(verify_json.of_kind("verify")[0]["ok"], true);

    // --- nothing was changed ------------------------------------------------
    assert!(before == snapshot(&dir), "warren-dump changed the data directory");

    // --- a flipped byte in a sealed segment ----------------------------------
    let damaged_scratch = tempfile::tempdir().unwrap();
    let damaged = copy_log(&dir, damaged_scratch.path());
    let sealed = &segments[1];
    let victim = records_of(&records, sealed)
        .into_iter()
        .find(|r| r["type"] == "message")
        .expect("a message record in the second segment");
    let offset = offset_of(&victim);
    let path = damaged.join("log").join(sealed);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize + 8 + 40] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    let verify = dump(&damaged, &["--verify"]);
    assert_eq!(verify.code, 1, "{verify:?}");
    let problem = format!("{sealed}: damaged at offset {offset}: record checksum mismatch");
    assert!(verify.stdout.contains(&problem), "expected {problem:?}: {verify:?}");
    assert_eq!(verify.lines().iter().filter(|l| l.contains("damaged at offset")).count(), 1, "{verify:?}");
    assert!(!verify.stdout.contains("torn tail at"), "{verify:?}");
    println!("{}", verify.stdout);
    let records_damaged = dump(&damaged, &["--records", "--segment", sealed]);
    assert_eq!(records_damaged.code, 0);
    let bad = records_damaged.lines().into_iter().find(|l| l.contains("DAMAGED")).expect("a DAMAGED line").to_string();
    assert!(bad.starts_with(&format!("{sealed} +{offset} ")) && bad.contains("crc=BAD"), "{bad}");
    assert_eq!(
        records_damaged.lines().iter().filter(|l| !l.contains("DAMAGED")).count(),
        records_of(&records, sealed).len() - 1,
        "the records after the damaged one are still listed"
    );
    let summary = dump(&damaged, &[]);
    assert_eq!(summary.code, 0, "{summary:?}");
    assert!(summary.stdout.contains(&format!("DAMAGED@{offset}")), "{summary:?}");
    // The broker agrees: it refuses to start, naming the same segment and offset.
    let refusal = broker_refuses(&damaged);
    assert!(refusal.contains(sealed.as_str()) && refusal.contains(&format!("offset {offset}")), "{refusal}");

    // --- a damaged record in the newest segment, followed by a valid one ----
    let newest = segments.last().unwrap();
    let newest_records = records_of(&records, newest);
    assert!(newest_records.len() >= 2);
    let middle_scratch = tempfile::tempdir().unwrap();
    let middle = copy_log(&dir, middle_scratch.path());
    // A record of a commit group that a later group follows: that later
    // group was written after this one was synced.
    let last_group = newest_records.iter().rposition(|r| r["type"] == "group").unwrap();
    assert!(last_group >= 2, "the newest segment holds several commit groups");
    let victim = &newest_records[last_group - 1];
    let path = middle.join("log").join(newest);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset_of(victim) as usize + 9] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let verify = dump(&middle, &["--verify"]);
    assert_eq!(verify.code, 1, "a valid record after the bad one makes it damage: {verify:?}");
    assert!(verify.stdout.contains(&format!("{newest}: damaged at offset {}", offset_of(victim))), "{verify:?}");

    // --- a torn tail: the newest segment cut in the middle of its last record --
    let last = newest_records.last().unwrap();
    let (last_offset, last_len) = (offset_of(last), last["len"].as_u64().unwrap());
    let torn_scratch = tempfile::tempdir().unwrap();
    let torn = copy_log(&dir, torn_scratch.path());
    let path = torn.join("log").join(newest);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(last_offset + last_len / 2).unwrap();
    drop(file);
    let verify = dump(&torn, &["--verify"]);
    assert_eq!(verify.code, 0, "a torn tail is not damage: {verify:?}");
    assert!(verify.stdout.contains(&format!("{newest}: torn tail at offset {last_offset}")), "{verify:?}");
    assert!(!verify.stdout.contains("damaged at"), "{verify:?}");
    println!("{}", verify.stdout);
    let summary = dump(&torn, &[]);
    assert!(summary.stdout.contains(&format!("torn-tail@{last_offset}")), "{summary:?}");
    let torn_records = dump(&torn, &["--records", "--segment", newest]);
    assert!(torn_records.lines().last().unwrap().contains("TORN-TAIL"), "{torn_records:?}");
    // The broker recovers from it (cutting the tail), after which the log verifies without one.
    let mut broker = common::Broker::start_in(&torn, &["--segment-size", SEGMENT_SIZE]);
    broker.stop();
    let verify = dump(&torn, &["--verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(!verify.stdout.contains("torn tail at") && !verify.stdout.contains("damaged at"), "{verify:?}");

    // --- a torn tail: garbage over the end of the last record, zeros after ----
    let garbage_scratch = tempfile::tempdir().unwrap();
    let garbage = copy_log(&dir, garbage_scratch.path());
    let path = garbage.join("log").join(newest);
    let mut bytes = std::fs::read(&path).unwrap();
    let end = (last_offset + last_len) as usize;
    bytes[end - 6..end].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x13, 0x37]);
    std::fs::write(&path, &bytes).unwrap();
    let verify = dump(&garbage, &["--verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(verify.stdout.contains(&format!("{newest}: torn tail at offset {last_offset}")), "{verify:?}");
    let verify_json = dump(&garbage, &["--verify", "--json"]);
    let problems = verify_json.of_kind("problem");
    assert_eq!(problems.len(), 1, "{verify_json:?}");
    assert_eq!(problems[0]["severity"], "torn tail");
    assert_eq!(problems[0]["crc"], "BAD");
    assert_eq!(verify_json.of_kind("verify")[0]["ok"], true);

    // The original directory is still untouched.
    assert!(before == snapshot(&dir), "warren-dump changed the data directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_dump_works_on_the_data_directory_of_a_running_broker() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("data");
    let mut broker = common::Broker::start_in(&dir, &["--segment-size", SEGMENT_SIZE, "--no-compaction"]);
    let conn =
        within("connect", Connection::connect(&broker.url(), ConnectionProperties::default())).await.expect("connect");
    let ch = within("channel", conn.create_channel()).await.expect("channel");
    within("confirm.select", ch.confirm_select(ConfirmSelectOptions::default())).await.expect("confirm.select");
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    within("queue", ch.queue_declare("running.q".into(), durable, FieldTable::default())).await.expect("declare");

    // Publish continuously while warren-dump reads the log.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (ch, stop) = (ch.clone(), stop.clone());
        tokio::spawn(async move {
            let mut confirmed = 0u64;
            let body = vec![b'r'; 3000];
            while !stop.load(Ordering::Relaxed) {
                // A few publishes in flight at once, so appends overlap the reads.
                let mut pending = Vec::new();
                for _ in 0..4 {
                    let props = BasicProperties::default().with_delivery_mode(2);
                    let confirm = ch
                        .basic_publish("".into(), "running.q".into(), Default::default(), &body, props)
                        .await
                        .expect("publish");
                    pending.push(confirm);
                }
                for confirm in pending {
                    assert!(confirm.await.expect("confirm").is_ack());
                    confirmed += 1;
                }
            }
            confirmed
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    while rounds < 12 || segment_names(&dir).len() < 4 {
        assert!(Instant::now() < deadline, "the log did not grow");
        let d = dir.clone();
        let (verify, summary, records) = tokio::task::spawn_blocking(move || {
            (dump(&d, &["--verify"]), dump(&d, &["--json"]), dump(&d, &["--records", "--json"]))
        })
        .await
        .unwrap();
        assert_eq!(verify.code, 0, "verify on a running broker: {verify:?}");
        assert!(!verify.stdout.contains("damaged at"), "{verify:?}");
        assert_eq!(summary.code, 0, "{summary:?}");
        assert_eq!(summary.of_kind("total").len(), 1, "{summary:?}");
        assert_eq!(records.code, 0, "{records:?}");
        assert!(records.json().iter().all(|r| r["kind"] != "problem" || r["severity"] != "damaged"), "{records:?}");
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let confirmed = within("publisher", publisher).await.expect("publisher");
    assert!(confirmed > 0);

    // Every confirmed message is durable, hence live in the dump of the running broker.
    let summary = dump(&dir, &["--json"]);
    let total = &summary.of_kind("total")[0];
    assert_eq!(total["live"], confirmed, "{summary:?}");
    assert_eq!(total["dead"], 0);
    let queue = &summary.of_kind("queue")[0];
    assert_eq!(queue["name"], "running.q");
    assert_eq!(queue["messages"], confirmed);
    let verify = dump(&dir, &["--verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    within("close", conn.close(200, "done".into())).await.expect("close");
    broker.stop();
}

#[test]
fn warren_dump_explains_bad_invocations() {
    let scratch = tempfile::tempdir().unwrap();
    let missing = dump(&scratch.path().join("nope"), &[]);
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(missing.stderr.contains("no such file or directory"), "{missing:?}");

    let not_warren = dump(scratch.path(), &[]);
    assert_eq!(not_warren.code, 2, "{not_warren:?}");
    assert!(not_warren.stderr.contains("is not a Warren data directory"), "{not_warren:?}");

    let file = scratch.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let not_dir = dump(&file, &[]);
    assert_eq!(not_dir.code, 2, "{not_dir:?}");
    assert!(not_dir.stderr.contains("is not a directory"), "{not_dir:?}");

    let empty = scratch.path().join("empty");
    std::fs::create_dir_all(empty.join("log")).unwrap();
    let bad_type = dump(&empty, &["--type", "bogus"]);
    assert_eq!(bad_type.code, 2, "{bad_type:?}");
    assert!(bad_type.stderr.contains("unknown record type 'bogus'") && bad_type.stderr.contains("ack"));
    let conflicting = dump(&empty, &["--verify", "--records"]);
    assert_eq!(conflicting.code, 2, "{conflicting:?}");
    let nothing = dump(&empty, &["--verify"]);
    assert_eq!(nothing.code, 0, "an empty log is a clean one: {nothing:?}");

    // A file that is not a segment at all, where a sealed segment should be.
    let log = scratch.path().join("junk").join("log");
    std::fs::create_dir_all(&log).unwrap();
    std::fs::write(log.join("00000000000000000000.wal"), vec![0x42; 4096]).unwrap();
    std::fs::write(log.join("00000000000000004096.wal"), vec![0; 4096]).unwrap();
    let junk = dump(&scratch.path().join("junk"), &["--verify"]);
    assert_eq!(junk.code, 1, "{junk:?}");
    assert!(junk.stdout.contains("00000000000000000000.wal: damaged at offset 0: bad segment header"), "{junk:?}");
    assert!(junk.stdout.contains("00000000000000004096.wal: torn tail at offset 0"), "{junk:?}");
}
