//! The `run` subcommand's knobs and the scenarios S1-S5 as presets of them.
//!
//! A scenario only fills in defaults: any knob given on the command line
//! wins. [`plan`] turns the knobs into the phases the controller runs (one,
//! or two for S3: fill, then drain).

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use warren::protocol::{FieldTable, FieldValue};

use crate::consume::ConsumePlan;
use crate::publish::PublishPlan;
use crate::run::Phase;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum Scenario {
    /// 1 durable queue, persistent, 1 producer with confirms (<= 100 in
    /// flight), 1 consumer acking each message, prefetch 100; timed.
    S1,
    /// As S1 on 4 queues, one producer and one consumer per queue.
    S2,
    /// Backlog: publish --backlog persistent messages with confirms and no
    /// consumer, then drain them with 1 consumer; fill rate and drain rate.
    S3,
    /// Transient messages, non-durable queue, no confirms, unthrottled
    /// producer, auto-ack consumer; timed.
    S4,
    /// Latency: as S1 with the producer held to --rate (default 1000) msg/s.
    S5,
}

/// Bool knobs take an optional value: `--persistent` means true,
/// `--persistent false` turns off what a scenario turned on.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// Preset knobs; without one every knob has a plain default.
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    /// Queue name (with --queues K: NAME-0 .. NAME-(K-1)); default bench-s1 etc.
    #[arg(long)]
    pub queue: Option<String>,
    /// Number of queues; producer and consumer i use queue i mod K.
    #[arg(long)]
    pub queues: Option<usize>,
    #[arg(long)]
    pub producers: Option<usize>,
    #[arg(long)]
    pub consumers: Option<usize>,
    /// Message body size in bytes (at least 8: the first 8 carry a timestamp).
    #[arg(long, value_parser = clap::value_parser!(u32).range(8..))]
    pub size: Option<u32>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub persistent: Option<bool>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub durable: Option<bool>,
    /// Unconfirmed publishes allowed in flight per producer; 0 = no confirms.
    #[arg(long)]
    pub confirm: Option<usize>,
    /// basic.qos prefetch count per consumer; 0 = unlimited.
    #[arg(long)]
    pub prefetch: Option<u16>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub autoack: Option<bool>,
    /// Ack every N messages with multiple=true (N <= prefetch).
    #[arg(long, default_value_t = 1)]
    pub multi_ack: u64,
    /// Messages per second per producer; 0 = unthrottled.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Messages per producer; makes the run count-bounded.
    #[arg(long)]
    pub pmessages: Option<u64>,
    /// Messages to consume in total; makes the run count-bounded.
    #[arg(long)]
    pub cmessages: Option<u64>,
    /// S3's backlog (messages filled, then drained).
    #[arg(long, default_value_t = 200_000)]
    pub backlog: u64,
    /// Seconds a timed run lasts, warm-up included.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds at the start of a timed run left out of the figures (scenarios:
    /// 3, or 15% of a shorter --duration).
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Queue arguments, KEY=VALUE[,KEY=VALUE...] (integers are sent as
    /// long-long, true/false as booleans, the rest as strings).
    #[arg(long, value_delimiter = ',')]
    pub queue_args: Vec<String>,
    /// basic.consume arguments, KEY=VALUE[,KEY=VALUE...] (as --queue-args;
    /// e.g. x-stream-offset=first for a stream).
    #[arg(long, value_delimiter = ',')]
    pub consumer_args: Vec<String>,
    /// Publish to this fanout exchange (declared durable, bound to every
    /// queue of the run) instead of to each producer's queue.
    #[arg(long)]
    pub exchange: Option<String>,
    /// Declare the queues with x-max-priority=N and publish with random
    /// priorities 0..=N.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..))]
    pub priorities: Option<u8>,
    /// Purge the queues before the run.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub purge: Option<bool>,
    /// Delete the queues after the run.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub delete: Option<bool>,
    /// Give up on a count-bounded phase after this many seconds.
    #[arg(long, default_value_t = 1200.0)]
    pub timeout: f64,
    /// Print the summary as one JSON object instead of key=value pairs.
    #[arg(long)]
    pub json: bool,
    /// A label to put first in the summary (e.g. the broker's name).
    #[arg(long)]
    pub label: Option<String>,
}

/// What the controller runs, and how to report it.
pub struct Plan {
    pub name: String,
    pub phases: Vec<Phase>,
    /// S3: the first phase gives the publish rate, the second the consume
    /// rate, and latency is not reported (it would be queueing time).
    pub fill_then_drain: bool,
}

/// Parses `KEY=VALUE` queue (or consumer) arguments.
pub fn queue_arguments(pairs: &[String], priorities: Option<u8>) -> Result<FieldTable> {
    let mut table = FieldTable::new();
    for pair in pairs.iter().filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else { bail!("argument '{pair}' is not KEY=VALUE") };
        let value = match value {
            "true" => FieldValue::Bool(true),
            "false" => FieldValue::Bool(false),
            v => v.parse::<i64>().map(FieldValue::I64).unwrap_or_else(|_| FieldValue::string(v)),
        };
        table.insert(key, value);
    }
    if let Some(n) = priorities {
        table.insert("x-max-priority", FieldValue::I64(n as i64));
    }
    Ok(table)
}

pub fn plan(a: &RunArgs) -> Result<Plan> {
    use Scenario::*;
    let sc = a.scenario;
    let durable_sc = matches!(sc, Some(S1 | S2 | S3 | S5));
    let name = sc.map_or("custom".to_string(), |s| format!("{s:?}"));
    let base =
        a.queue.clone().unwrap_or_else(|| sc.map_or("loadgen".into(), |s| format!("bench-{s:?}").to_lowercase()));
    let queues = a.queues.unwrap_or(if sc == Some(S2) { 4 } else { 1 }).max(1);
    let names: Vec<String> =
        if queues == 1 { vec![base.clone()] } else { (0..queues).map(|i| format!("{base}-{i}")).collect() };
    let producers = a.producers.unwrap_or(if sc == Some(S2) { 4 } else { 1 });
    let consumers = a.consumers.unwrap_or(if sc == Some(S2) { 4 } else { 1 });
    let autoack = a.autoack.unwrap_or(sc == Some(S4));
    let prefetch = a.prefetch.unwrap_or(100);
    if !autoack && prefetch > 0 && a.multi_ack > prefetch as u64 {
        bail!("--multi-ack {} is above --prefetch {prefetch}: the consumer would stall", a.multi_ack);
    }
    let publish = PublishPlan {
        queue: String::new(),
        size: a.size.unwrap_or(1024) as usize,
        persistent: a.persistent.unwrap_or(durable_sc),
        confirm_window: a.confirm.unwrap_or(if durable_sc { 100 } else { 0 }),
        rate: a.rate.unwrap_or(if sc == Some(S5) { 1000.0 } else { 0.0 }),
        count: 0,
        priorities: a.priorities,
        exchange: a.exchange.clone().unwrap_or_default(),
    };
    let phase = Phase {
        queues: names,
        durable: a.durable.unwrap_or(durable_sc),
        queue_args: queue_arguments(&a.queue_args, a.priorities)?,
        consumer_args: queue_arguments(&a.consumer_args, None)?,
        purge: a.purge.unwrap_or(sc.is_some()),
        delete: false,
        producers,
        publish,
        consumers,
        consume: ConsumePlan { autoack, multi_ack: a.multi_ack.max(1) },
        prefetch,
        consume_target: 0,
        duration: None,
        warmup: 0.0,
        timeout: a.timeout,
    };
    let delete = a.delete.unwrap_or(sc.is_some());
    if sc == Some(S3) {
        let per_producer = a.pmessages.unwrap_or(a.backlog);
        let total = a.cmessages.unwrap_or(per_producer * producers as u64);
        let mut fill = Phase { consumers: 0, ..phase.clone() };
        fill.publish.count = per_producer;
        let drain = Phase { producers: 0, purge: false, delete, consume_target: total, ..phase };
        return Ok(Plan { name, phases: vec![fill, drain], fill_then_drain: true });
    }
    let mut phase = Phase { delete, ..phase };
    if a.pmessages.is_some() || a.cmessages.is_some() {
        phase.publish.count = a.pmessages.unwrap_or(0);
        let published = phase.publish.count * producers as u64;
        phase.consume_target = if consumers == 0 { 0 } else { a.cmessages.unwrap_or(published) };
        if phase.producers > 0 && phase.publish.count == 0 {
            bail!("--cmessages without --pmessages: the producers would never stop (use --producers 0 to drain)");
        }
    } else {
        let duration = a.duration.unwrap_or(if sc.is_some() { 20.0 } else { 10.0 });
        // A scenario's 3 s warm-up shrinks for short smoke runs.
        let warmup = a.warmup.unwrap_or(if sc.is_some() { (duration * 0.15).min(3.0) } else { 0.0 });
        if duration <= 0.0 || warmup < 0.0 || warmup >= duration {
            bail!("need 0 <= --warmup ({warmup}) < --duration ({duration})");
        }
        (phase.duration, phase.warmup) = (Some(duration), warmup);
    }
    Ok(Plan { name, phases: vec![phase], fill_then_drain: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: RunArgs,
    }

    fn args(line: &str) -> RunArgs {
        T::parse_from(std::iter::once("t").chain(line.split_whitespace())).a
    }

    #[test]
    fn presets_and_overrides() {
        let p = plan(&args("--scenario S2 --duration 2")).unwrap();
        let ph = &p.phases[0];
        assert_eq!(ph.queues, ["bench-s2-0", "bench-s2-1", "bench-s2-2", "bench-s2-3"]);
        assert_eq!((ph.producers, ph.consumers, ph.publish.confirm_window), (4, 4, 100));
        assert!(ph.durable && ph.publish.persistent && ph.purge && ph.delete);
        assert_eq!(ph.duration, Some(2.0));

        let p = plan(&args("--scenario S4 --persistent")).unwrap();
        assert!(p.phases[0].publish.persistent && !p.phases[0].durable && p.phases[0].consume.autoack);

        let p = plan(&args("--scenario S3 --backlog 1000")).unwrap();
        assert!(p.fill_then_drain);
        assert_eq!((p.phases[0].publish.count, p.phases[0].consumers), (1000, 0));
        assert_eq!((p.phases[1].consume_target, p.phases[1].producers), (1000, 0));
    }

    #[test]
    fn queue_args_and_priorities() {
        let t = queue_arguments(&["x-queue-type=quorum".into(), "x-max-length=10".into()], Some(5)).unwrap();
        assert_eq!(t.get("x-max-length"), Some(&FieldValue::I64(10)));
        assert_eq!(t.get("x-max-priority"), Some(&FieldValue::I64(5)));
        assert!(queue_arguments(&["nope".into()], None).is_err());
    }
}
