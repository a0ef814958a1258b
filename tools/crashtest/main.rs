//! `warren-crashtest`: kills a real `warren` with SIGKILL at random moments
//! under load and checks, after each restart, that everything the broker
//! promised is still there.
//!
//! One cycle: confirmed publishers and an acking consumer run against the
//! broker; after a random delay the broker is SIGKILLed and restarted on the
//! same data directory; then every queue is read back and compared with
//! what was promised (see `check.rs`): every message whose publisher
//! confirm arrived and whose consumer ack was not sent must be present with
//! an intact body, and the durable exchange, queues and bindings must still
//! exist. The queues are then purged (the purge is durable before it is
//! answered) so the next cycle starts empty.
//!
//! The seed fixes every decision the driver makes (body sizes and bytes,
//! routing keys, ack decisions, kill delays); how far the publishers get
//! before the kill still depends on timing.

// Shared with warren-clustertest, which uses more of it.
#[allow(dead_code)]
mod broker;
mod check;
mod message;
mod verify;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use broker::{Broker, BrokerConfig};
use check::{Fate, Report};
use message::{QUEUES, Workload};

/// Crash-recovery driver for Warren: SIGKILLs the broker under load, restarts
/// it, and checks that every confirmed, unacked message survived intact.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The warren binary [default: `warren` next to this executable].
    #[arg(long)]
    warren: Option<PathBuf>,
    /// Data directory for warren (created if missing; warren's stderr goes to
    /// DIR/warren.log) [default: a fresh temporary directory, removed after a
    /// run without failures].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Number of kill/restart cycles.
    #[arg(long, default_value_t = 10)]
    cycles: u32,
    /// Seed for sizes, bodies, routing keys, ack decisions and kill delays [default: random, printed].
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent confirmed publishers (one connection each).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=1000))]
    publishers: u16,
    /// Smallest message body, in bytes.
    #[arg(long, default_value_t = 0)]
    min_size: usize,
    /// Largest message body, in bytes.
    #[arg(long, default_value_t = 4096)]
    max_size: usize,
    /// The broker is killed after a random delay of 0..=this many milliseconds of load.
    #[arg(long, default_value_t = 1500)]
    max_run_ms: u64,
    /// warren's --fsync policy: batch, a period such as 10ms, or never.
    #[arg(long, default_value = "batch")]
    fsync: String,
    /// warren's --segment-size in bytes; small, so segment rollover and reclaim happen.
    #[arg(long, default_value_t = 1 << 20)]
    segment_size: u32,
    /// Chance, in percent, that the consumer acks a delivery.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    ack_percent: u8,
    /// Unconfirmed messages each publisher may have in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    window: u16,
    /// Keep the temporary data directory even when every cycle passed.
    #[arg(long)]
    keep: bool,
    /// Print what happens within each cycle.
    #[arg(long, short)]
    verbose: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tokio::select! {
        code = run(args) => code,
        _ = tokio::signal::ctrl_c() => {
            // Dropping `run` kills the broker it started.
            eprintln!("warren-crashtest: interrupted");
            ExitCode::from(130)
        }
    }
}

/// Exit status: 0 when every cycle passed, 1 when one failed or the run
/// stopped on an error, 2 when the run could not start.
async fn run(args: Args) -> ExitCode {
    let setup = match Setup::new(&args) {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("warren-crashtest: {e:#}");
            return ExitCode::from(2);
        }
    };
    let seed = setup.workload.seed;
    println!(
        "warren-crashtest: seed {seed}, {} cycles, {} publishers, bodies {}..={} bytes, kill within {} ms, \
         --fsync {}, --segment-size {}",
        args.cycles, args.publishers, args.min_size, args.max_size, args.max_run_ms, args.fsync, args.segment_size
    );
    println!("warren-crashtest: warren {}, data in {}", setup.config.warren.display(), setup.config.data_dir.display());

    let started = Instant::now();
    let mut passed = 0u32;
    let mut failed = 0u32;
    let mut aborted = false;
    match start_broker(&setup.config, "start".into(), args.verbose).await {
        Err(e) => {
            eprintln!("warren-crashtest: {e:#}");
            return ExitCode::from(2);
        }
        Ok(mut broker) => {
            if let Err(e) = workload::prepare(&broker.url()).await {
                eprintln!("warren-crashtest: setting up the exchange and queues failed: {e:#}");
                return ExitCode::from(2);
            }
            for cycle in 1..=args.cycles {
                match run_cycle(&args, &setup, &mut broker, cycle).await {
                    Ok(true) => passed += 1,
                    Ok(false) => failed += 1,
                    Err(e) => {
                        failed += 1;
                        aborted = true;
                        println!("cycle {cycle}/{} FAILED: {e:#}", args.cycles);
                        break;
                    }
                }
            }
            let _ = broker.kill();
        }
    }

    let elapsed = started.elapsed();
    if aborted {
        println!("warren-crashtest: stopped after cycle {}", passed + failed);
    }
    println!("warren-crashtest: {} cycles in {:.1} s, seed {seed}", passed + failed, elapsed.as_secs_f64());
    if failed > 0 {
        println!(
            "warren-crashtest: replay with --seed {seed}; data and warren's log kept in {}",
            setup.config.data_dir.display()
        );
    } else if setup.temporary && !args.keep {
        let _ = std::fs::remove_dir_all(&setup.config.data_dir);
    } else {
        println!("warren-crashtest: data kept in {}", setup.config.data_dir.display());
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

struct Setup {
    config: BrokerConfig,
    workload: Workload,
    /// The data directory was made by this run.
    temporary: bool,
}

impl Setup {
    fn new(args: &Args) -> anyhow::Result<Setup> {
        anyhow::ensure!(
            args.min_size <= args.max_size,
            "--min-size ({}) is larger than --max-size ({})",
            args.min_size,
            args.max_size
        );
        let warren = match &args.warren {
            Some(path) => path.clone(),
            None => {
                let me = std::env::current_exe().context("cannot find this executable's path")?;
                me.with_file_name("warren")
            }
        };
        anyhow::ensure!(
            warren.is_file(),
            "no warren binary at {} (build it with `cargo build`, or pass --warren PATH)",
            warren.display()
        );
        let (data_dir, temporary) = match &args.data_dir {
            Some(dir) => (dir.clone(), false),
            None => {
                let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let name = format!("warren-crashtest-{}-{:x}", std::process::id(), nanos.as_nanos() & 0xffff_ffff);
                (std::env::temp_dir().join(name), true)
            }
        };
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let log = data_dir.join("warren.log");
        let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
        Ok(Setup {
            config: BrokerConfig {
                warren,
                data_dir,
                log,
                fsync: args.fsync.clone(),
                segment_size: args.segment_size,
                extra_args: Vec::new(),
                management_port: 0,
            },
            workload: Workload {
                seed,
                min_size: args.min_size,
                max_size: args.max_size,
                ack_percent: args.ack_percent,
            },
            temporary,
        })
    }
}

async fn start_broker(config: &BrokerConfig, label: String, verbose: bool) -> anyhow::Result<Broker> {
    let config = config.clone();
    let broker = tokio::task::spawn_blocking(move || Broker::start(&config, &label)).await??;
    if verbose {
        println!(
            "  warren pid {} listening on {} after {} ms",
            broker.pid().unwrap_or(0),
            broker.addr,
            broker.start_time.as_millis()
        );
    }
    Ok(broker)
}

/// One cycle. Ok(true) if it passed, Ok(false) if a promise was broken, Err
/// if it could not be carried out (then the run stops).
async fn run_cycle(args: &Args, setup: &Setup, broker: &mut Broker, cycle: u32) -> anyhow::Result<bool> {
    let w = setup.workload;
    let url = broker.url();
    let running = workload::start(&url, w, cycle, args.publishers as usize, args.window as usize)
        .await
        .context("starting the clients")?;
    let delay = w.kill_delay_ms(cycle, args.max_run_ms);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    if args.verbose {
        println!("  cycle {cycle}: SIGKILL after {delay} ms of load");
    }
    let killed = broker.kill();
    let record = running.finish().await;
    killed.with_context(|| broker::tail_for_error(&setup.config.log))?;

    *broker = start_broker(&setup.config, format!("restart after cycle {cycle}"), args.verbose)
        .await
        .context("restarting warren after the kill")?;
    let restart_ms = broker.start_time.as_millis();
    let observation = verify::observe(&broker.url(), &w, cycle).await.context("reading the queues back")?;
    let mut report = check::check(&w, &record, &observation.observed, observation.probe_sent);
    for problem in observation.problems {
        report.problem(problem);
    }

    let passed = !report.failed();
    let mut line = format!(
        "cycle {cycle}/{} {}: published={} confirmed={} acked={} expected={} present={} lost={} corrupt={} \
         duplicates={} restart_ms={restart_ms} killed_at_ms={delay}",
        args.cycles,
        if passed { "ok" } else { "FAILED" },
        record.published(),
        record.count(Fate::Confirmed),
        record.acked.len(),
        report.expected,
        report.present,
        report.lost,
        report.corrupt,
        report.duplicates,
    );
    for (name, n) in [("unexpected", report.unexpected), ("problems", report.problems), ("reordered", report.reordered)]
    {
        if n > 0 {
            line.push_str(&format!(" {name}={n}"));
        }
    }
    println!("{line}");
    if args.verbose {
        print_verbose(&record, &report, &observation.counts);
    }
    if !passed || args.verbose {
        print_details(&report);
    }
    if !passed {
        let kept = setup.config.data_dir.join(format!("failed-cycle-{cycle}"));
        match copy_dir(&setup.config.data_dir.join("log"), &kept.join("log")) {
            Ok(()) => println!("  the log as it stood after the check is copied to {}", kept.display()),
            Err(e) => println!("  could not copy the log: {e:#}"),
        }
    }

    workload::prepare(&broker.url()).await.context("emptying the queues for the next cycle")?;
    Ok(passed)
}

fn print_verbose(record: &check::CycleRecord, report: &Report, counts: &[Option<u32>; QUEUES.len()]) {
    for (p, fates) in record.publishers.iter().enumerate() {
        let count = |fate| fates.iter().filter(|&&f| f == fate).count();
        println!(
            "  publisher {p}: sent {} confirmed {} nacked {} unconfirmed {}",
            fates.len(),
            count(Fate::Confirmed),
            count(Fate::Nacked),
            count(Fate::Sent)
        );
    }
    println!("  consumer: received {} acked {}", record.received.len(), record.acked.len());
    let counts: Vec<String> = QUEUES
        .iter()
        .zip(counts)
        .map(|((name, _), n)| format!("{name}={}", n.map_or("missing".to_string(), |n| n.to_string())))
        .collect();
    println!("  after restart: {} (present though never confirmed: {})", counts.join(" "), report.unconfirmed_present);
}

fn print_details(report: &Report) {
    for line in &report.details {
        println!("  - {line}");
    }
    if report.undescribed > 0 {
        println!("  - ... and {} more", report.undescribed);
    }
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("cannot copy {} to {}", entry.path().display(), target.display()))?;
        }
    }
    Ok(())
}
