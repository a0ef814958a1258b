//! warren-loadgen: a PerfTest-like AMQP 0-9-1 load generator, so that
//! Warren's benchmarks (benches/compare.sh, benches/log-bench.sh) drive
//! Warren and RabbitMQ with the very same client, built from this workspace.
//!
//! Subcommands:
//! - `run`: producers and consumers, one connection each, timed or
//!   count-bounded, with the scenarios S1-S5 as presets; prints one summary
//!   line (publish and consume rates, publish-to-delivery latency p50/p99).
//! - `fill` / `wait` / `delete`: restart measurements (see `restart`).
//!
//! The client speaks AMQP through the broker's own codec (`warren::protocol`)
//! and runs every connection as a task on one thread, batching frames per
//! read and per write, so it costs far less CPU per message than the broker
//! it measures. Module map: `uri` (addresses), `conn` (one connection and
//! its I/O), `publish` / `consume` (the hot loops), `stats` (what the tasks
//! share), `run` (the controller), `scenario` (knobs and presets),
//! `restart` (fill, wait, delete), `report` (the summary line).

mod conn;
mod consume;
mod publish;
mod report;
mod restart;
mod run;
mod scenario;
mod stats;
mod uri;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use report::Summary;
use run::{PhaseResult, run_phase};
use scenario::RunArgs;
use stats::cpu_seconds;
use uri::AmqpUri;

#[derive(Parser)]
#[command(name = "warren-loadgen", version, about = "AMQP 0-9-1 load generator for Warren's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run producers and consumers (a scenario S1-S5, or any mix of knobs)
    /// and print one summary line.
    Run(Box<RunArgs>),
    /// Publish N persistent messages with confirms into a durable queue.
    Fill(restart::FillArgs),
    /// Poll (fresh connection, passive declare) until a queue holds N messages.
    Wait(restart::WaitArgs),
    /// Delete queues.
    Delete(restart::DeleteArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren-loadgen: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let local = tokio::task::LocalSet::new();
    let outcome = runtime.block_on(local.run_until(async move {
        match cli.command {
            Command::Run(a) => run(*a).await,
            Command::Fill(a) => restart::fill(a).await,
            Command::Wait(a) => restart::wait(a).await,
            Command::Delete(a) => restart::delete(a).await,
        }
    }));
    match outcome {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("warren-loadgen: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs the plan's phases and prints the summary; exit status 3 when a
/// count-bounded phase timed out.
async fn run(a: RunArgs) -> Result<i32> {
    let uri = AmqpUri::parse(&a.uri)?;
    let plan = scenario::plan(&a)?;
    let cpu0 = cpu_seconds();
    let mut results: Vec<PhaseResult> = vec![];
    for phase in &plan.phases {
        let r = run_phase(&uri, phase).await?;
        let timed_out = r.timed_out;
        results.push(r);
        if timed_out {
            break;
        }
    }
    let cpu = cpu0.zip(cpu_seconds()).map(|(a, b)| b - a);
    let sum = |f: fn(&PhaseResult) -> u64| results.iter().map(f).sum::<u64>();
    let (sent, consumed) = (sum(|r| r.sent), sum(|r| r.consumed));
    let moved = sent.max(consumed);
    let timed_out = results.iter().any(|r| r.timed_out);
    let first = &results[0];
    let (pub_rate, cons_rate, latency) = if plan.fill_then_drain {
        (first.pub_rate, results.get(1).and_then(|r| r.cons_rate), None)
    } else {
        (first.pub_rate, first.cons_rate, Some(&first.latency))
    };
    let mut s = Summary::default();
    if let Some(label) = &a.label {
        s.text("label", label);
    }
    s.text("scenario", &plan.name)
        .num("pub_msg_s", pub_rate, 0)
        .num("cons_msg_s", cons_rate, 0)
        .percentiles("p50_ms", "p99_ms", latency)
        .percentiles("confirm_p50_ms", "confirm_p99_ms", Some(&first.confirm_latency))
        .num("window_s", Some(results.iter().map(|r| r.window_s).sum()), 3)
        .int("sent", sent)
        .int("confirmed", sum(|r| r.confirmed))
        .int("nacked", sum(|r| r.nacked))
        .int("consumed", consumed)
        .int("lat_samples", latency.map_or(0, |h| h.len()))
        .num("client_cpu_s", cpu, 2)
        .num("client_us_per_msg", cpu.filter(|_| moved > 0).map(|c| c * 1e6 / moved as f64), 1)
        .text("status", if timed_out { "timeout" } else { "ok" });
    println!("{}", s.render(a.json));
    Ok(if timed_out { 3 } else { 0 })
}
