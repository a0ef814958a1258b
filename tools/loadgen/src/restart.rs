//! The subcommands around a broker restart: `fill` (put N persistent,
//! confirmed messages in a durable queue), `wait` (poll until the queue is
//! back with exactly N messages and say how long that took) and `delete`.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

use crate::conn::Conn;
use crate::consume::ConsumePlan;
use crate::publish::PublishPlan;
use crate::report::Summary;
use crate::run::{Phase, run_phase, with_conn};
use crate::scenario::queue_arguments;
use crate::stats::{cpu_seconds, wall_ns};
use crate::uri::AmqpUri;

#[derive(Debug, Clone, Args)]
pub struct FillArgs {
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    #[arg(long)]
    pub queue: String,
    /// Messages to publish.
    #[arg(long)]
    pub count: u64,
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(8..))]
    pub size: u32,
    /// Unconfirmed publishes allowed in flight.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub confirm: u64,
    /// Purge the queue first.
    #[arg(long)]
    pub purge: bool,
    /// Queue arguments, KEY=VALUE[,KEY=VALUE...].
    #[arg(long, value_delimiter = ',')]
    pub queue_args: Vec<String>,
    /// Declare with x-max-priority=N and publish with random priorities 0..=N.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..))]
    pub priorities: Option<u8>,
    /// Seconds before giving up.
    #[arg(long, default_value_t = 1200.0)]
    pub timeout: f64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    #[arg(long)]
    pub queue: String,
    /// The message count to wait for.
    #[arg(long)]
    pub expect: u64,
    /// Seconds before giving up (exit status 3).
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
    /// Milliseconds between attempts; each attempt is a fresh connection.
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
    /// Report times from this instant (ns since the Unix epoch, e.g. from
    /// `date +%s%N` just before starting the broker) instead of our start.
    #[arg(long)]
    pub since_ns: Option<u64>,
    /// Give up (exit status 4) when the queue is there with another count
    /// that has not changed for this many seconds.
    #[arg(long, default_value_t = 30.0)]
    pub settle: f64,
    /// Then fetch one message with basic.get (requeued on close) and time it.
    #[arg(long)]
    pub get: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// Queues to delete, comma-separated; a missing queue is not an error.
    #[arg(long, value_delimiter = ',', required = true)]
    pub queue: Vec<String>,
}

/// Exit status 0, or 4 when not every message was confirmed.
pub async fn fill(a: FillArgs) -> Result<i32> {
    let uri = AmqpUri::parse(&a.uri)?;
    let cpu0 = cpu_seconds();
    let phase = Phase {
        queues: vec![a.queue.clone()],
        durable: true,
        queue_args: queue_arguments(&a.queue_args, a.priorities)?,
        consumer_args: Default::default(),
        purge: a.purge,
        delete: false,
        producers: 1,
        publish: PublishPlan {
            queue: a.queue.clone(),
            size: a.size as usize,
            persistent: true,
            confirm_window: a.confirm as usize,
            rate: 0.0,
            count: a.count,
            priorities: a.priorities,
            exchange: String::new(),
        },
        consumers: 0,
        consume: ConsumePlan { autoack: false, multi_ack: 1 },
        prefetch: 0,
        consume_target: 0,
        duration: None,
        warmup: 0.0,
        timeout: a.timeout,
    };
    let r = run_phase(&uri, &phase).await?;
    let in_queue = with_conn(&uri, async |c: &mut Conn| c.inspect_queue(&a.queue).await).await?.0;
    let ok = !r.timed_out && r.confirmed == a.count && r.nacked == 0;
    let status = match (r.timed_out, ok) {
        (true, _) => "timeout",
        (false, true) => "ok",
        (false, false) => "incomplete",
    };
    let mut s = Summary::default();
    s.text("queue", &a.queue)
        .int("count", a.count)
        .num("pub_msg_s", r.pub_rate, 0)
        .num("secs", Some(r.window_s), 3)
        .int("confirmed", r.confirmed)
        .int("nacked", r.nacked)
        .int("queue_messages", in_queue as u64)
        .percentiles("confirm_p50_ms", "confirm_p99_ms", Some(&r.confirm_latency))
        .num("client_cpu_s", cpu0.zip(cpu_seconds()).map(|(a, b)| b - a), 2)
        .text("status", status);
    println!("{}", s.render(a.json));
    Ok(if ok { 0 } else { 4 })
}

/// Exit status 0 (count reached), 3 (timeout) or 4 (settled elsewhere).
pub async fn wait(a: WaitArgs) -> Result<i32> {
    let uri = AmqpUri::parse(&a.uri)?;
    let t0 = a.since_ns.unwrap_or_else(wall_ns);
    let since = || wall_ns().saturating_sub(t0) as f64 / 1e9;
    let deadline = Instant::now() + Duration::from_secs_f64(a.timeout);
    let interval = Duration::from_millis(a.interval_ms);
    let (mut t_connect, mut t_declare) = (None, None);
    let (mut attempts, mut last_count, mut count_since) = (0u64, None::<u64>, Instant::now());
    let mut last_error = String::from("none");
    let (mut t_count, mut t_get) = (None, None);
    let (status, outcome) = loop {
        if Instant::now() >= deadline {
            eprintln!("warren-loadgen wait: timed out; last error: {last_error}");
            break (3, "timeout");
        }
        attempts += 1;
        let conn = tokio::time::timeout(Duration::from_secs(10), Conn::open(&uri, "warren-loadgen-wait")).await;
        let mut conn = match conn {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                last_error = format!("{e:#}");
                tokio::time::sleep(interval).await;
                continue;
            }
            Err(_) => {
                last_error = "connect timed out".into();
                continue;
            }
        };
        t_connect.get_or_insert_with(since);
        let count = match conn.inspect_queue(&a.queue).await {
            Ok((n, _)) => n as u64,
            Err(e) => {
                last_error = format!("{e:#}");
                conn.close().await;
                tokio::time::sleep(interval).await;
                continue;
            }
        };
        t_declare.get_or_insert_with(since);
        if last_count != Some(count) {
            last_count = Some(count);
            count_since = Instant::now();
        }
        if count == a.expect {
            t_count = Some(since());
            if a.get && conn.get_one(&a.queue).await.unwrap_or(false) {
                t_get = Some(since());
            }
            conn.close().await;
            break (0, "ok");
        }
        conn.close().await;
        if count_since.elapsed().as_secs_f64() >= a.settle {
            break (4, if count < a.expect { "incomplete" } else { "excess" });
        }
        tokio::time::sleep(interval).await;
    };
    let mut s = Summary::default();
    s.text("wait", outcome)
        .num("t_connect", t_connect, 3)
        .num("t_declare", t_declare, 3)
        .num("t_count", t_count, 3)
        .num("t_first_get", t_get, 3)
        .num("count", last_count.map(|c| c as f64), 0)
        .int("expect", a.expect)
        .int("attempts", attempts);
    println!("{}", s.render(a.json));
    Ok(status)
}

pub async fn delete(a: DeleteArgs) -> Result<i32> {
    let uri = AmqpUri::parse(&a.uri)?;
    for q in &a.queue {
        // A fresh connection per queue: a refused delete closes the channel.
        let mut conn = Conn::open(&uri, "warren-loadgen-delete").await?;
        match conn.delete_queue(q).await {
            Ok(n) => println!("deleted={q} messages={n}"),
            Err(e) => eprintln!("warren-loadgen delete: {q}: {e:#}"),
        }
        conn.close().await;
    }
    Ok(0)
}
