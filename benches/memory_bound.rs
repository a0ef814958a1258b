//! Bounded memory under a transient backlog much larger than the memory
//! high watermark: a producer publishes `TOTAL_MB` of transient messages
//! (`SIZE` bytes each, numbered) to a non-durable queue nobody consumes,
//! against the real `warren` binary started with
//! `--memory-high-watermark WATERMARK`. Meanwhile the broker's resident
//! memory is sampled every 20 ms and the producer's connection.blocked
//! state every 5 ms. Then one consumer takes every message and checks the
//! numbers come in order.
//!
//! `cargo bench --bench memory_bound` (defaults: TOTAL_MB=5000, SIZE=65536,
//! WATERMARK=512MiB; the data directory goes under BENCH_DIR or the
//! system's temporary directory).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use support::{KillOnDrop, free_port, resident_bytes};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let total_mb: u64 = env_or("TOTAL_MB", 5000);
    let size: usize = env_or("SIZE", 65536);
    let watermark: String = env_or("WATERMARK", "512MiB".to_string());
    let base = std::env::var("BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
    let scratch = tempfile::tempdir_in(base).expect("scratch directory");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--port", &port.to_string(), "--management-port", "0", "--prometheus-port", "0"])
        .args(["--memory-high-watermark", &watermark])
        .arg("--data-dir")
        .arg(scratch.path().join("data"))
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(std::env::var("BENCH_LOG").map_or(scratch.path().join("warren.log"), Into::into))
                .expect("log file"),
        )
        .spawn()
        .expect("start warren");
    let pid = child.id();
    let broker = KillOnDrop(child);
    let count = (total_mb * 1_000_000).div_ceil(size as u64);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        let deadline = Instant::now() + Duration::from_secs(10);
        let publisher = loop {
            match Connection::connect(&uri, ConnectionProperties::default()).await {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => panic!("cannot connect: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let ch = publisher.create_channel().await.expect("channel");
        ch.queue_declare("backlog".into(), QueueDeclareOptions::default(), FieldTable::default()).await.expect("declare");

        // Samplers: broker RSS, and the producer's blocked state.
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let sampler = {
            let (stop, peak) = (stop.clone(), peak.clone());
            tokio::spawn(async move {
                let trace = std::env::var("TRACE_RSS").is_ok();
                let mut tick = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let rss = resident_bytes(pid);
                    peak.fetch_max(rss, Ordering::Relaxed);
                    tick += 1;
                    if trace && tick.is_multiple_of(10) {
                        eprintln!("rss {:.0} MiB", rss as f64 / 1048576.0);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let blocks = Arc::new(AtomicU64::new(0));
        let blocked_ms = Arc::new(AtomicU64::new(0));
        let watcher = {
            let (stop, blocks, blocked_ms) = (stop.clone(), blocks.clone(), blocked_ms.clone());
            let status = publisher.status().clone();
            tokio::spawn(async move {
                let mut was = false;
                while !stop.load(Ordering::Relaxed) {
                    let now = status.blocked();
                    if now && !was {
                        blocks.fetch_add(1, Ordering::Relaxed);
                    }
                    if now {
                        blocked_ms.fetch_add(5, Ordering::Relaxed);
                    }
                    was = now;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };

        let started = Instant::now();
        let mut body = vec![0u8; size];
        for n in 0..count {
            body[..8].copy_from_slice(&n.to_be_bytes());
            ch.basic_publish("".into(), "backlog".into(), BasicPublishOptions::default(), &body, BasicProperties::default())
                .await
                .expect("publish");
        }
        // Every message is in the queue before the drain starts.
        loop {
            let q = ch
                .queue_declare("backlog".into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
                .await
                .expect("passive declare");
            if q.message_count() as u64 >= count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let publish_secs = started.elapsed().as_secs_f64();
        let peak_publish = peak.load(Ordering::Relaxed);

        let consumer = Connection::connect(&uri, ConnectionProperties::default()).await.expect("connect");
        let cch = consumer.create_channel().await.expect("channel");
        cch.basic_qos(1000, BasicQosOptions::default()).await.expect("qos");
        let mut deliveries = cch
            .basic_consume("backlog".into(), "drain".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .expect("consume");
        let drain_started = Instant::now();
        let mut expected = 0u64;
        while expected < count {
            let d = deliveries.next().await.expect("delivery").expect("delivery ok");
            let n = u64::from_be_bytes(d.data[..8].try_into().expect("8 bytes"));
            assert_eq!(n, expected, "messages come back in publish order");
            assert_eq!(d.data.len(), size);
            expected += 1;
            if expected.is_multiple_of(500) || expected == count {
                d.ack(BasicAckOptions { multiple: true }).await.expect("ack");
            }
        }
        let drain_secs = drain_started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.await;
        let _ = watcher.await;
        let mb = (count * size as u64) as f64 / 1e6;
        println!(
            "memory_bound: {count} transient messages of {size} B ({mb:.0} MB), watermark {watermark}: \
             published in {publish_secs:.1} s ({:.0} MB/s); peak broker RSS while publishing {:.0} MiB, overall {:.0} MiB; \
             producer blocked {} times, {:.1} s in all; drained in order in {drain_secs:.1} s ({:.0} MB/s)",
            mb / publish_secs,
            peak_publish as f64 / 1048576.0,
            peak.load(Ordering::Relaxed) as f64 / 1048576.0,
            blocks.load(Ordering::Relaxed),
            blocked_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            mb / drain_secs,
        );
    });
    drop(broker);
}
