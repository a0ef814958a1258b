//! Another connection's publish→confirm latency while a consumer drains a
//! backlog of several GB whose bodies are on disk, not in the page cache,
//! versus with no drain: what the loader (bodies read back outside the
//! broker's lock) is for.
//!
//!     cargo build --release && cargo bench --bench cold_drain
//!     COLD_DRAIN_GB=4 WARREN=target/release/warren cargo bench --bench cold_drain
//!
//! Steps: fill a durable queue with persistent 64 KiB messages; restart the
//! broker (a clean stop); drop the page cache (`/proc/sys/vm/drop_caches`,
//! root; without it the figure says the cache was warm); probe for a few
//! seconds with no drain; then drain the backlog with an acking consumer
//! (prefetch 200) while the probes go on. Two probes, each on a connection
//! of its own, publish 1 KiB messages one at a time, each waiting for its
//! confirm: persistent ones to a durable queue (the confirm waits for an
//! fdatasync, so it also measures the disk shared with the drain's reads)
//! and transient ones to a transient queue (it waits for the broker only).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

const BODY: usize = 64 * 1024;

struct Broker {
    child: Child,
    url: String,
}

impl Broker {
    fn start(bin: &str, data: &std::path::Path) -> Broker {
        let mut child = Command::new(bin)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--management-port",
                "0",
                "--prometheus-port",
                "0",
                "--data-dir",
            ])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (cargo build --release first)"));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("listening on ") => break line["listening on ".len()..].to_string(),
                Some(_) => continue,
                None => panic!("warren exited before listening"),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Broker { child, url: format!("amqp://guest:guest@{addr}/%2f") }
    }

    fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

async fn channel(url: &str, confirm: bool) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    if confirm {
        ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm.select");
    }
    for queue in ["backlog", "probe"] {
        let opts = QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(queue.into(), opts, FieldTable::default()).await.expect("declare");
    }
    (conn, ch)
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn fill(url: &str, count: usize) {
    let (_conn, ch) = channel(url, true).await;
    let body = vec![0x42u8; BODY];
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..count {
        let confirm = ch
            .basic_publish("".into(), "backlog".into(), BasicPublishOptions::default(), &body, persistent())
            .await
            .expect("publish");
        pending.push_back(confirm);
        if pending.len() >= 64
            && let Some(c) = pending.pop_front()
        {
            c.await.expect("confirm");
        }
    }
    for c in pending {
        c.await.expect("confirm");
    }
}

/// Publish→confirm latencies of one-at-a-time publishes until `stop`:
/// persistent to a durable queue (the confirm waits for an fdatasync), or
/// transient to a transient queue (it waits for nothing but the broker).
async fn probe(url: String, stop: Arc<AtomicBool>, limit: Duration, durable: bool) -> Vec<Duration> {
    let (_conn, ch) = channel(&url, true).await;
    let queue = if durable { "probe" } else { "probe.transient" };
    let props = if durable { persistent() } else { BasicProperties::default() };
    ch.queue_declare(queue.into(), QueueDeclareOptions { durable, ..Default::default() }, FieldTable::default())
        .await
        .expect("declare");
    let body = vec![0x17u8; 1024];
    let mut latencies = Vec::new();
    let deadline = Instant::now() + limit;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let started = Instant::now();
        ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &body, props.clone())
            .await
            .expect("publish")
            .await
            .expect("confirm");
        latencies.push(started.elapsed());
    }
    latencies
}

fn summary(what: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{what}: {} confirms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
}

fn drop_page_cache() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let bin = std::env::var("WARREN").unwrap_or_else(|_| "target/release/warren".into());
    let gb: f64 = std::env::var("COLD_DRAIN_GB").ok().and_then(|v| v.parse().ok()).unwrap_or(3.0);
    let count = (gb * 1e9 / BODY as f64) as usize;
    let scratch = tempfile::tempdir_in(".").expect("scratch dir");
    let data = scratch.path().join("data");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");

    let broker = Broker::start(&bin, &data);
    let started = Instant::now();
    runtime.block_on(fill(&broker.url, count));
    println!(
        "filled {count} x {} KiB ({:.2} GB) in {:.1} s",
        BODY / 1024,
        (count * BODY) as f64 / 1e9,
        started.elapsed().as_secs_f64()
    );
    broker.stop();
    let broker = Broker::start(&bin, &data);
    let cold = drop_page_cache();
    println!("page cache {}", if cold { "dropped" } else { "NOT dropped (needs root): the drain reads from memory" });

    let url = broker.url.clone();
    runtime.block_on(async move {
        let no_stop = Arc::new(AtomicBool::new(false));
        let idle = probe(url.clone(), no_stop.clone(), Duration::from_secs(4), true).await;
        summary("persistent probe, no drain     ", idle);
        let idle = probe(url.clone(), no_stop, Duration::from_secs(4), false).await;
        summary("transient probe, no drain      ", idle);

        let stop = Arc::new(AtomicBool::new(false));
        let probing = tokio::spawn(probe(url.clone(), stop.clone(), Duration::from_secs(3600), true));
        let probing_transient = tokio::spawn(probe(url.clone(), stop.clone(), Duration::from_secs(3600), false));
        let (_conn, ch) = channel(&url, false).await;
        ch.basic_qos(200, BasicQosOptions::default()).await.expect("qos");
        let mut consumer = ch
            .basic_consume("backlog".into(), "drain".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .expect("consume");
        let started = Instant::now();
        let mut drained = 0usize;
        while drained < count {
            let delivery = consumer.next().await.expect("consumer ended").expect("delivery");
            assert_eq!(delivery.data.len(), BODY);
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
            drained += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        summary("persistent probe, during drain ", probing.await.expect("probe"));
        summary("transient probe, during drain  ", probing_transient.await.expect("probe"));
        println!(
            "drained {drained} messages ({:.2} GB) in {secs:.1} s: {:.0} MB/s, {:.0} msg/s",
            (drained * BODY) as f64 / 1e9,
            (drained * BODY) as f64 / 1e6 / secs,
            drained as f64 / secs
        );
    });
    broker.stop();
}
