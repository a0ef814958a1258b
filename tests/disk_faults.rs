//! The real broker on a misbehaving disk: segment files damaged or truncated
//! behind its back while it runs, and a small file system it fills.
//!
//! - A damaged or truncated segment is an I/O error, never a crash: the
//!   broker names segment and offset, drops what it cannot read with a
//!   tombstone (so a restart does not bring it back), and serves the rest.
//! - On a real small file system (a tmpfs the test mounts; skipped with a
//!   line saying so when it cannot), the free-disk alarm blocks publishers
//!   before the disk is full, consumers drain, the alarm clears and
//!   publishing resumes, nothing confirmed lost; with the alarm off, ENOSPC
//!   does not kill the log either.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::amqp::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};

async fn poll_async(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn durable_queue(ch: &Channel, name: &str) {
    let opts = QueueDeclareOptions { durable: true, ..Default::default() };
    within("queue.declare", ch.queue_declare(name.into(), opts, FieldTable::default())).await.expect("declare");
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn numbered(i: usize, len: usize) -> Vec<u8> {
    let mut body = format!("{i:08}:").into_bytes();
    body.resize(len, b'a' + (i % 26) as u8);
    body
}

fn number_of(body: &[u8]) -> usize {
    std::str::from_utf8(&body[..8]).expect("utf-8 prefix").parse().expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_and_truncated_segments_are_errors_not_crashes_and_what_is_lost_stays_lost() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("data");
    let args = ["--segment-size", "65536"];
    let mut broker = common::Broker::start_in(&dir, &args);
    const COUNT: usize = 2000;
    {
        let conn = connect(&broker).await;
        let ch = confirm_channel(&conn).await;
        durable_queue(&ch, "q").await;
        for i in 0..COUNT {
            publish_props(&ch, "q", &numbered(i, 1000), persistent()).await;
        }
        conn.close(200, "done".into()).await.unwrap();
    }
    // Old segments: their bodies are no longer in memory.
    let files = common::segment_files(&dir);
    assert!(files.len() > 20, "{files:?}");
    let (flipped, truncated) = (&files[3], &files[6]);
    let mut bytes = std::fs::read(flipped).unwrap();
    let middle = bytes.iter().rposition(|b| *b != 0).unwrap() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(flipped, &bytes).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(truncated).unwrap();
    file.set_len(30_000).unwrap();
    drop(file);

    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    within("qos", ch.basic_qos(50, BasicQosOptions::default())).await.unwrap();
    let mut consumer = consume(&ch, "q", "drain", false).await;
    let mut seen = BTreeSet::new();
    // Everything readable arrives; the rest is dropped, not delivered damaged.
    loop {
        match tokio::time::timeout(Duration::from_secs(3), futures_lite::StreamExt::next(&mut consumer)).await {
            Ok(Some(Ok(d))) => {
                let n = number_of(&d.data);
                assert_eq!(d.data, numbered(n, 1000), "message {n} is delivered intact");
                assert!(seen.insert(n), "message {n} delivered twice");
                d.ack(BasicAckOptions::default()).await.unwrap();
            }
            Ok(other) => panic!("consumer ended: {other:?}"),
            Err(_) => break,
        }
    }
    assert!(broker.is_running(), "the broker survived: {}", broker.log());
    let lost = COUNT - seen.len();
    assert!(lost > 0 && lost < 60, "only the damaged and truncated messages are missing ({lost})");
    let log = broker.log();
    for file in [flipped, truncated] {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            log.lines().any(|l| l.contains("cannot be read back") && l.contains(name) && l.contains("offset")),
            "the log names {name} and an offset:\n{log}"
        );
    }
    assert_eq!(queue_stats(&broker, "q"), (0, 0, 1), "nothing stuck in the queue");
    conn.close(200, "done".into()).await.unwrap();
    // With nothing live left in them, compaction deletes both segments
    // without reading them: the dropped messages had tombstones.
    poll_async("the damaged segments to be compacted away", Duration::from_secs(20), || {
        !flipped.exists() && !truncated.exists()
    })
    .await;
    broker.kill();
    let broker = common::Broker::start_in(&dir, &args);
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    assert_eq!(ready(&ch, "q").await, 0, "no dropped message comes back after a restart");
}

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u32) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs for the full-disk test (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

const BODY: usize = 256 * 1024;

/// A publish's confirmation, still to come.
type PendingConfirm = std::pin::Pin<Box<dyn std::future::Future<Output = lapin::Result<lapin::Confirmation>> + Send>>;

/// Publishes numbered persistent messages one confirm at a time until a
/// confirm takes longer than `stall`; returns those confirmed and the
/// confirmation still pending.
async fn publish_until_stalled(
    ch: &Channel,
    from: usize,
    stall: Duration,
) -> (Vec<usize>, Option<(usize, PendingConfirm)>) {
    let mut confirmed = Vec::new();
    for i in from..from + 10_000 {
        let confirm = within(
            "basic.publish",
            ch.basic_publish(
                "".into(),
                "fill".into(),
                BasicPublishOptions::default(),
                &numbered(i, BODY),
                persistent(),
            ),
        )
        .await
        .expect("basic.publish");
        let mut confirm: PendingConfirm = Box::pin(confirm);
        match tokio::time::timeout(stall, &mut confirm).await {
            Ok(Ok(c)) => {
                assert!(c.is_ack(), "message {i} was nacked: {c:?}");
                confirmed.push(i);
            }
            Ok(Err(e)) => panic!("publish {i} failed: {e:?}"),
            Err(_) => return (confirmed, Some((i, confirm))),
        }
    }
    (confirmed, None)
}

/// Takes every message off `fill` on its own connection, acking each.
async fn drain_fill(conn: &Connection) -> BTreeSet<usize> {
    let ch = channel(conn).await;
    let mut got = BTreeSet::new();
    while let Some(m) =
        within("basic.get", ch.basic_get("fill".into(), BasicGetOptions { no_ack: false })).await.expect("basic.get")
    {
        let n = number_of(&m.delivery.data);
        assert_eq!(m.delivery.data.len(), BODY);
        got.insert(n);
        within("ack", m.delivery.ack(BasicAckOptions::default())).await.expect("ack");
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_free_disk_alarm_blocks_publishers_before_the_disk_fills_and_clears_when_consumers_drain() {
    let Some(fs) = Tmpfs::mount(48) else { return };
    let dir = fs.path().join("data");
    let broker = common::Broker::start_in(&dir, &["--segment-size", "2097152", "--disk-free-limit", "16MiB"]);
    let publisher = connect(&broker).await;
    let ch = confirm_channel(&publisher).await;
    durable_queue(&ch, "fill").await;
    let (confirmed, pending) = publish_until_stalled(&ch, 0, Duration::from_secs(3)).await;
    assert!(confirmed.len() > 20, "the disk took {} messages before the alarm", confirmed.len());
    poll_async("connection.blocked", Duration::from_secs(10), || publisher.status().blocked()).await;
    let log = broker.log();
    assert!(log.contains("free disk space alarm"), "{log}");
    assert!(!log.contains("the disk is full"), "the alarm came before ENOSPC:\n{log}");
    // Consumers are not blocked: draining gives the space back.
    let consumer = connect(&broker).await;
    let got = drain_fill(&consumer).await;
    let confirmed_set: BTreeSet<usize> = confirmed.iter().copied().collect();
    assert!(got.is_superset(&confirmed_set), "every confirmed message is delivered");
    poll_async("connection.unblocked", Duration::from_secs(20), || !publisher.status().blocked()).await;
    if let Some((i, confirm)) = pending {
        let c = within("the held-back confirm", confirm).await.expect("confirm");
        assert!(c.is_ack(), "message {i}: {c:?}");
    }
    let (more, stalled) = publish_until_stalled(&ch, 100_000, Duration::from_secs(5)).await;
    assert!(more.len() >= 5, "publishing resumed ({} more)", more.len());
    drop(stalled);
    assert!(broker.log().contains("alarm cleared"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_alarm_off_a_full_disk_stalls_confirms_but_does_not_kill_the_log() {
    let Some(fs) = Tmpfs::mount(40) else { return };
    let dir = fs.path().join("data");
    let mut broker = common::Broker::start_in(&dir, &["--segment-size", "2097152", "--disk-free-limit", "0"]);
    let publisher = connect(&broker).await;
    let ch = confirm_channel(&publisher).await;
    durable_queue(&ch, "fill").await;
    let (confirmed, pending) = publish_until_stalled(&ch, 0, Duration::from_secs(3)).await;
    let (stuck, confirm) = pending.expect("the disk filled up");
    assert!(broker.log().contains("the disk is full"), "{}", broker.log());
    assert!(broker.is_running());
    // Draining frees segments; the writer writes again and the confirm comes.
    let consumer = connect(&broker).await;
    let got = drain_fill(&consumer).await;
    assert!(got.is_superset(&confirmed.iter().copied().collect()), "every confirmed message is delivered");
    let c = within("the stalled confirm", confirm).await.expect("confirm");
    assert!(c.is_ack(), "message {stuck}: {c:?}");
    let (more, _) = publish_until_stalled(&ch, 100_000, Duration::from_secs(5)).await;
    assert!(more.len() >= 5, "publishing resumed ({} more)", more.len());
    assert!(broker.log().contains("writing again"), "{}", broker.log());
    // And what was confirmed after the stall is there after a crash.
    publisher.close(200, "done".into()).await.unwrap();
    consumer.close(200, "done".into()).await.unwrap();
    broker.kill();
    let broker = common::Broker::start_in(&dir, &["--segment-size", "2097152", "--disk-free-limit", "0"]);
    let conn = connect(&broker).await;
    let after = drain_fill(&conn).await;
    let expected: BTreeSet<usize> = more.iter().copied().collect();
    assert!(after.is_superset(&expected), "confirmed after the stall, present after kill -9");
}
