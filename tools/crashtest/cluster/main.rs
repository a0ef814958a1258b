//! `warren-clustertest`: a fault driver and checker for a Warren cluster.
//!
//! It starts three (or more) real `warren` nodes on loopback, each with
//! its own ports and data directory, declares a quorum queue, and runs
//! confirmed publishers and acking consumers, each on a node picked at
//! random (moving to another when its node fails). Meanwhile it kills the
//! queue's leader with SIGKILL (found through the management API) and
//! restarts it, or pauses it with SIGSTOP, again and again. Then it stops
//! the publishers, drains the queue and checks: every confirmed message
//! delivered (none lost), nothing delivered that was not sent (none
//! unexpected), and how many deliveries were repeats (duplicated: at least
//! once allows them). It also measures each failover as the longest
//! stretch without any confirm around the fault.

// Shared with warren-crashtest, which uses more of it.
#[allow(dead_code)]
#[path = "../broker.rs"]
mod broker;
mod clients;
mod nodes;
mod verdict;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::watch;

use clients::{Record, Urls};
use nodes::Cluster;
use verdict::Verdict;

const QUEUE: &str = "clustertest";
/// How long the cluster may take to agree on a leader after a fault.
const SETTLE_WITHIN: Duration = Duration::from_secs(60);

/// Fault driver for a Warren cluster: kills and pauses the leader of a
/// quorum queue under confirmed publishers and acking consumers, then
/// checks that no confirmed message was lost.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The warren binary [default: `warren` next to this executable].
    #[arg(long)]
    warren: Option<PathBuf>,
    /// Where the nodes' data directories and logs go [default: a fresh
    /// temporary directory, removed after a run that passed].
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(3..=7))]
    nodes: u16,
    /// SIGKILLs of the queue's leader (each restarted after a moment).
    #[arg(long, default_value_t = 10)]
    kills: u32,
    /// SIGSTOPs of the queue's leader (each continued after 2 to 5 s).
    #[arg(long, default_value_t = 0)]
    pauses: u32,
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Seed for every choice the driver makes [default: random, printed].
    #[arg(long)]
    seed: Option<u64>,
    /// warren's --fsync policy.
    #[arg(long, default_value = "batch")]
    fsync: String,
    /// Keep the temporary directory even when the run passed.
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match tokio::runtime::Runtime::new().context("a runtime").and_then(|rt| rt.block_on(run(args))) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("warren-clustertest: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn warren_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path);
    }
    let me = std::env::current_exe().context("this executable's path")?;
    Ok(me.with_file_name("warren"))
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    fastrand::seed(seed);
    let warren = warren_binary(args.warren.clone())?;
    let (dir, temporary) = match &args.dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = std::env::temp_dir().join(format!("warren-clustertest-{}-{seed:x}", std::process::id()));
            (temp.clone(), Some(temp))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot make {}", dir.display()))?;
    println!(
        "warren-clustertest: {} nodes, {} publishers, {} consumers, {} leader kills, {} leader pauses (seed {seed}, in {})",
        args.nodes,
        args.publishers,
        args.consumers,
        args.kills,
        args.pauses,
        dir.display()
    );
    let mut cluster = Cluster::start(&warren, &dir, args.nodes as usize, &args.fsync)?;
    let urls: Urls = Arc::new(Mutex::new(cluster.urls()));
    declare(&cluster.urls()).await?;
    cluster.queue_leader(QUEUE, SETTLE_WITHIN)?;

    let record = Arc::new(Mutex::new(Record::default()));
    let (stop_publishers, publishing) = watch::channel(false);
    let (stop_consumers, consuming) = watch::channel(false);
    let mut publishers = Vec::new();
    for id in 0..args.publishers {
        publishers.push(clients::publisher(id, QUEUE.into(), urls.clone(), record.clone(), publishing.clone()));
    }
    let mut consumers = Vec::new();
    for id in 0..args.consumers {
        consumers.push(clients::consumer(id, QUEUE.into(), urls.clone(), record.clone(), consuming.clone()));
    }

    let (kills, pauses) = (args.kills, args.pauses);
    let faulting = urls.clone();
    let (cluster, faults) = tokio::task::spawn_blocking(move || {
        let faults = make_faults(&mut cluster, &faulting, kills, pauses);
        (cluster, faults)
    })
    .await?;
    let faults = faults?;

    // A little more load with every node back, then the publishers stop,
    // the consumers catch up, and the queue is drained.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_publishers.send_replace(true);
    for p in publishers {
        p.await?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_consumers.send_replace(true);
    for c in consumers {
        c.await?;
    }
    drain(&urls, &record).await;

    let verdict = Verdict::of(&record.lock().expect("record"), &faults);
    report(&verdict);
    let passed = verdict.passed();
    drop(cluster);
    match temporary {
        Some(temp) if passed && !args.keep => {
            let _ = std::fs::remove_dir_all(temp);
        }
        _ => println!("nodes' data and logs kept in {}", dir.display()),
    }
    Ok(passed)
}

/// Declares the quorum queue on the first node, once the cluster can.
async fn declare(urls: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    loop {
        let attempt = async {
            let conn = lapin::Connection::connect(&urls[0], Default::default()).await?;
            let ch = conn.create_channel().await?;
            let durable = QueueDeclareOptions { durable: true, ..Default::default() };
            ch.queue_declare(QUEUE.into(), durable, arguments.clone()).await?;
            let _ = conn.close(200, "declared".into()).await;
            Ok::<_, lapin::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(15), attempt).await {
            Ok(Ok(())) => return Ok(()),
            outcome => {
                anyhow::ensure!(Instant::now() < deadline, "cannot declare {QUEUE}: {outcome:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Kills and pauses the queue's leader, one fault at a time, each after
/// 1 to 3 s of load; returns when each fault happened.
fn make_faults(cluster: &mut Cluster, urls: &Urls, kills: u32, pauses: u32) -> anyhow::Result<Vec<Instant>> {
    let mut faults = Vec::new();
    let mut plan: Vec<bool> = (0..kills).map(|_| true).chain((0..pauses).map(|_| false)).collect();
    fastrand::shuffle(&mut plan);
    for (n, kill) in plan.into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(fastrand::u64(1000..3000)));
        let leader = cluster.queue_leader(QUEUE, SETTLE_WITHIN)?;
        let name = cluster.nodes[leader].name.clone();
        let at = Instant::now();
        faults.push(at);
        if kill {
            // The others elect a new leader before the killed node comes back.
            cluster.kill(leader)?;
            *urls.lock().expect("urls") = cluster.urls();
            let next = cluster.queue_leader(QUEUE, SETTLE_WITHIN)?;
            println!(
                "fault {}: killed {name}; {} leads {:.2} s after",
                n + 1,
                cluster.nodes[next].name,
                at.elapsed().as_secs_f64()
            );
            std::thread::sleep(Duration::from_millis(fastrand::u64(0..1000)));
            cluster.start_node(leader)?;
            *urls.lock().expect("urls") = cluster.urls();
        } else {
            cluster.pause(leader)?;
            std::thread::sleep(Duration::from_millis(fastrand::u64(2000..5000)));
            cluster.resume(leader)?;
        }
        let next = cluster.queue_leader(QUEUE, SETTLE_WITHIN)?;
        if !kill {
            println!(
                "fault {}: paused and continued {name}; {} leads {:.2} s after",
                n + 1,
                cluster.nodes[next].name,
                at.elapsed().as_secs_f64()
            );
        }
    }
    Ok(faults)
}

/// Consumes what is left, on nodes picked at random, until a pass on a
/// node gets nothing for 5 s.
async fn drain(urls: &Urls, record: &Arc<Mutex<Record>>) {
    let (_keep, running) = watch::channel(false);
    for _ in 0..20 {
        let before: u32 = record.lock().expect("record").delivered.values().sum();
        let done = clients::consume_once(usize::MAX, QUEUE, urls, record, &running, Some(Duration::from_secs(5))).await;
        let after: u32 = record.lock().expect("record").delivered.values().sum();
        if done.is_some() && after == before {
            return;
        }
    }
}

fn report(v: &Verdict) {
    println!(
        "sent {}, confirmed {}, nacked {}, delivered {} distinct; lost {}, unexpected {}, duplicated {}",
        v.sent,
        v.confirmed,
        v.nacked,
        v.delivered,
        v.lost.len(),
        v.unexpected.len(),
        v.duplicated
    );
    if let Some((median, worst)) = v.failover() {
        println!(
            "failover (longest stretch without a confirm around each fault): median {:.2} s, worst {:.2} s",
            median.as_secs_f64(),
            worst.as_secs_f64()
        );
    }
    for m in v.lost.iter().take(20) {
        println!("  lost: {m}");
    }
    for m in v.unexpected.iter().take(20) {
        println!("  unexpected: {m}");
    }
    println!("{}", if v.passed() { "PASS" } else { "FAIL" });
}
