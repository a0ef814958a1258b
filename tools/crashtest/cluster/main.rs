//! `warren-clustertest`: a fault driver and checker for a Warren cluster.
//!
//! It starts three (or more) real `warren` nodes on loopback, each with
//! its own ports and data directory, declares a quorum queue, and runs
//! confirmed publishers and acking consumers, each on a node picked at
//! random (moving to another when its node fails). Meanwhile it kills the
//! queue's leader with SIGKILL (found through the management API) and
//! restarts it, pauses it with SIGSTOP, or partitions the cluster (a proxy
//! on each node-to-node link, cut one way or both: a node isolated, the
//! leader isolated, or the bridge that leaves each node a different
//! majority), again and again. Then it stops the publishers, drains the
//! queue and checks: every confirmed message delivered (none lost),
//! nothing delivered that was not sent (none unexpected), no confirm from
//! a node a partition left without a majority, and how many deliveries
//! were repeats (duplicated: at least once allows them). It also measures
//! each failover as the longest stretch without any confirm around the
//! fault.

// Shared with warren-crashtest, which uses more of it.
#[allow(dead_code)]
#[path = "../broker.rs"]
mod broker;
mod clients;
mod nodes;
// Shared with the integration tests' partitions.
#[path = "../../../tests/common/proxy.rs"]
mod proxy;
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
use nodes::{Cluster, Shape, Way};
use verdict::{Fault, Verdict};

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
    /// Partitions of each shape (a node isolated, the leader isolated, a
    /// bridge), each cut one way or both and healed after 3 to 8 s. Puts
    /// a proxy on every node-to-node link.
    #[arg(long, default_value_t = 0)]
    partitions: u32,
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
        "warren-clustertest: {} nodes, {} publishers, {} consumers, {} leader kills, {} leader pauses, {} partitions of each shape (seed {seed}, in {})",
        args.nodes,
        args.publishers,
        args.consumers,
        args.kills,
        args.pauses,
        args.partitions,
        dir.display()
    );
    let links = args.partitions > 0;
    let mut cluster = Cluster::start(&warren, &dir, args.nodes as usize, &args.fsync, links).await?;
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

    let mut plan: Vec<Planned> = Vec::new();
    plan.extend((0..args.kills).map(|_| Planned::Kill));
    plan.extend((0..args.pauses).map(|_| Planned::Pause));
    for shape in [Shape::OneIsolated, Shape::LeaderIsolated, Shape::Bridge] {
        plan.extend((0..args.partitions).map(|_| Planned::Partition(shape)));
    }
    fastrand::shuffle(&mut plan);
    let faulting = urls.clone();
    let (cluster, faults) = tokio::task::spawn_blocking(move || {
        let faults = make_faults(&mut cluster, &faulting, plan);
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
async fn declare(urls: &[(String, String)]) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_WITHIN;
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    loop {
        let attempt = async {
            let conn = lapin::Connection::connect(&urls[0].1, Default::default()).await?;
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

/// A fault to make.
#[derive(Debug, Clone, Copy)]
enum Planned {
    Kill,
    Pause,
    Partition(Shape),
}

/// Makes the planned faults one at a time, each after 1 to 3 s of load;
/// returns each as made.
fn make_faults(cluster: &mut Cluster, urls: &Urls, plan: Vec<Planned>) -> anyhow::Result<Vec<Fault>> {
    let mut faults = Vec::new();
    for (n, planned) in plan.into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(fastrand::u64(1000..3000)));
        let leader = cluster.queue_leader(QUEUE, SETTLE_WITHIN)?;
        let name = cluster.nodes[leader].name.clone();
        let at = Instant::now();
        let n = n + 1;
        let fault = match planned {
            Planned::Kill => {
                // The others elect a new leader before the killed node comes back.
                cluster.kill(leader)?;
                *urls.lock().expect("urls") = cluster.urls();
                let next = cluster.queue_leader(QUEUE, SETTLE_WITHIN)?;
                let after = at.elapsed().as_secs_f64();
                println!("fault {n}: killed {name}; {} leads {after:.2} s after", cluster.nodes[next].name);
                std::thread::sleep(Duration::from_millis(fastrand::u64(0..1000)));
                cluster.start_node(leader)?;
                *urls.lock().expect("urls") = cluster.urls();
                Fault::new("kill", at)
            }
            Planned::Pause => {
                cluster.pause(leader)?;
                std::thread::sleep(Duration::from_millis(fastrand::u64(2000..5000)));
                cluster.resume(leader)?;
                let next = cluster.queue_leader(QUEUE, SETTLE_WITHIN)?;
                let after = at.elapsed().as_secs_f64();
                println!(
                    "fault {n}: paused and continued {name}; {} leads {after:.2} s after",
                    cluster.nodes[next].name
                );
                Fault::new("pause", at)
            }
            Planned::Partition(shape) => {
                let way = [Way::Both, Way::Outgoing, Way::Incoming][fastrand::usize(..3)];
                let made = cluster.partition(shape, way, leader)?;
                std::thread::sleep(Duration::from_millis(fastrand::u64(3000..8000)));
                cluster.heal();
                let healed = Instant::now();
                let next = cluster.queue_leader(QUEUE, SETTLE_WITHIN)?;
                let names = |pairs: &[(usize, usize)]| {
                    let named: Vec<String> = pairs
                        .iter()
                        .map(|(i, j)| format!("{}|{}", cluster.nodes[*i].name, cluster.nodes[*j].name))
                        .collect();
                    named.join(", ")
                };
                println!(
                    "fault {n}: {} ({:?} cut {}; leader was {name}), healed after {:.2} s; {} leads {:.2} s after the heal",
                    shape.label(),
                    way,
                    names(&made.cut),
                    healed.duration_since(at).as_secs_f64(),
                    cluster.nodes[next].name,
                    healed.elapsed().as_secs_f64()
                );
                Fault { kind: shape.label().to_string(), at, healed: Some(healed), minority: made.minority }
            }
        };
        faults.push(fault);
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
    for kind in v.kinds() {
        if let Some((median, worst)) = v.failover(&kind) {
            println!(
                "failover after a {kind} (longest stretch without a confirm around each): median {:.2} s, worst {:.2} s",
                median.as_secs_f64(),
                worst.as_secs_f64()
            );
        }
    }
    let each: Vec<String> = v.gaps.iter().map(|(_, gap)| format!("{:.2}", gap.as_secs_f64())).collect();
    println!("each fault's stretch without a confirm, in order (s): {}", each.join(" "));
    println!("confirms from a node without a majority: {}", v.minority_confirms.len());
    for m in v.minority_confirms.iter().take(20) {
        println!("  confirmed by a minority: {m}");
    }
    for m in v.lost.iter().take(20) {
        println!("  lost: {m}");
    }
    for m in v.unexpected.iter().take(20) {
        println!("  unexpected: {m}");
    }
    println!("{}", if v.passed() { "PASS" } else { "FAIL" });
}
