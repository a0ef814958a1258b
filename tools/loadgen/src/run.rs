//! The controller of a run: declares the queues, opens one connection per
//! producer and per consumer, runs them as tasks on this one thread, takes
//! the warm-up and end snapshots, and turns them into rates and latency
//! percentiles.
//!
//! A phase is either timed (a duration, of which the warm-up is left out)
//! or count-bounded (each producer publishes N, the consumers take M in
//! total; rates are counts over the time until the last one was done).

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use warren::protocol::FieldTable;

use crate::conn::Conn;
use crate::consume::{ConsumePlan, ConsumeReport, consume};
use crate::publish::{PublishPlan, PublishReport, publish};
use crate::stats::{Shared, Snapshot, new_histogram};
use crate::uri::AmqpUri;

/// How often the controller looks at the clock and the counters.
const TICK: Duration = Duration::from_millis(5);
/// How long producers may wait for their last confirms after a stop.
const DRAIN: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Phase {
    pub queues: Vec<String>,
    pub durable: bool,
    pub queue_args: FieldTable,
    /// basic.consume arguments.
    pub consumer_args: FieldTable,
    pub purge: bool,
    pub delete: bool,
    pub producers: usize,
    /// Template for every producer; its queue is filled in per producer.
    pub publish: PublishPlan,
    pub consumers: usize,
    pub consume: ConsumePlan,
    pub prefetch: u16,
    /// Messages to consume in total; 0 = until the phase ends.
    pub consume_target: u64,
    /// Some(seconds) for a timed phase.
    pub duration: Option<f64>,
    pub warmup: f64,
    /// Limit for a count-bounded phase, in seconds.
    pub timeout: f64,
}

/// The figures of one phase.
pub struct PhaseResult {
    /// Confirmed msg/s with confirms, else sent msg/s; None without producers.
    pub pub_rate: Option<f64>,
    /// Consumed msg/s; None without consumers.
    pub cons_rate: Option<f64>,
    pub latency: Histogram<u64>,
    pub confirm_latency: Histogram<u64>,
    /// Seconds the rates are taken over.
    pub window_s: f64,
    pub sent: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub consumed: u64,
    pub timed_out: bool,
}

/// Opens a connection for setup work, runs `f` on it, closes it.
pub async fn with_conn<T>(uri: &AmqpUri, f: impl AsyncFnOnce(&mut Conn) -> Result<T>) -> Result<T> {
    let mut conn = Conn::open(uri, "warren-loadgen-admin").await?;
    let out = f(&mut conn).await;
    conn.close().await;
    out
}

pub async fn delete_queues(uri: &AmqpUri, queues: &[String]) -> Result<()> {
    with_conn(uri, async |c: &mut Conn| {
        for q in queues {
            c.delete_queue(q).await.with_context(|| format!("deleting queue '{q}'"))?;
        }
        Ok(())
    })
    .await
}

pub async fn run_phase(uri: &AmqpUri, phase: &Phase) -> Result<PhaseResult> {
    with_conn(uri, async |c: &mut Conn| {
        for q in &phase.queues {
            c.declare_queue(q, phase.durable, phase.queue_args.clone()).await?;
            if phase.purge {
                c.purge_queue(q).await.with_context(|| format!("purging queue '{q}'"))?;
            }
        }
        if !phase.publish.exchange.is_empty() {
            c.declare_fanout(&phase.publish.exchange).await?;
            for q in &phase.queues {
                c.bind_queue(q, &phase.publish.exchange).await?;
            }
        }
        Ok(())
    })
    .await?;

    let shared = Rc::new(Shared::default());
    shared.consume_target.set(phase.consume_target);
    shared.producers_left.set(phase.producers);
    shared.measuring.set(phase.duration.is_none() || phase.warmup <= 0.0);
    let queue = |i: usize| phase.queues[i % phase.queues.len()].clone();

    // Consumers first, so nothing published is missed; then producers.
    let mut consumers: Vec<JoinHandle<Option<ConsumeReport>>> = vec![];
    let mut conns = vec![];
    for i in 0..phase.consumers {
        let mut c = Conn::open(uri, &format!("warren-loadgen-consumer-{i}")).await?;
        if !phase.consume.autoack && phase.prefetch > 0 {
            c.qos(phase.prefetch).await?;
        }
        c.consume(&queue(i), &format!("warren-loadgen-{i}"), phase.consume.autoack, phase.consumer_args.clone())
            .await?;
        conns.push(c);
    }
    let mut producer_conns = vec![];
    for i in 0..phase.producers {
        let mut c = Conn::open(uri, &format!("warren-loadgen-producer-{i}")).await?;
        if phase.publish.confirm_window > 0 {
            c.confirm_select().await?;
        }
        producer_conns.push(c);
    }
    let start = Instant::now();
    for c in conns {
        let (plan, shared) = (phase.consume.clone(), shared.clone());
        consumers.push(tokio::task::spawn_local(async move {
            consume(c, plan, shared.clone()).await.map_err(|e| shared.fail(e)).ok()
        }));
    }
    let mut producers: Vec<JoinHandle<Option<PublishReport>>> = vec![];
    for (i, c) in producer_conns.into_iter().enumerate() {
        let plan = PublishPlan { queue: queue(i), ..phase.publish.clone() };
        let shared = shared.clone();
        let seed = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1) ^ crate::stats::wall_ns();
        producers.push(tokio::task::spawn_local(async move {
            publish(c, plan, shared.clone(), seed).await.map_err(|e| shared.fail(e)).ok()
        }));
    }

    let (first, last, timed_out) = watch(phase, &shared, start).await;
    shared.measuring.set(false);
    shared.stop.set(true);
    shared.drain_deadline.set(Some(Instant::now() + DRAIN));

    let mut latency = new_histogram();
    let mut confirm_latency = new_histogram();
    for h in producers {
        match tokio::time::timeout(DRAIN + Duration::from_secs(5), h).await {
            Ok(Ok(Some(r))) => confirm_latency.add(&r.confirm_latency).ok(),
            _ => None,
        };
    }
    for h in consumers {
        match tokio::time::timeout(Duration::from_secs(10), h).await {
            Ok(Ok(Some(r))) => latency.add(&r.latency).ok(),
            _ => None,
        };
    }
    if let Some(err) = shared.failure.borrow_mut().take() {
        return Err(err);
    }
    if phase.delete {
        delete_queues(uri, &phase.queues).await?;
    }

    let confirms = phase.publish.confirm_window > 0;
    let published = |s: &Snapshot| if confirms { s.confirmed } else { s.sent };
    let per_s = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let (pub_rate, cons_rate, window_s) = if phase.duration.is_some() {
        let secs = last.at.duration_since(first.at).as_secs_f64();
        (per_s(published(&last) - published(&first), secs), per_s(last.consumed - first.consumed, secs), secs)
    } else {
        let until = |t: Option<Instant>| t.unwrap_or(last.at).duration_since(start).as_secs_f64();
        let (pub_s, cons_s) = (until(shared.published_all_at.get()), until(shared.consumed_all_at.get()));
        (per_s(published(&last), pub_s), per_s(last.consumed, cons_s), pub_s.max(cons_s))
    };
    Ok(PhaseResult {
        pub_rate: (phase.producers > 0).then_some(pub_rate),
        cons_rate: (phase.consumers > 0).then_some(cons_rate),
        latency,
        confirm_latency,
        window_s,
        sent: shared.sent.get(),
        confirmed: shared.confirmed.get(),
        nacked: shared.nacked.get(),
        consumed: shared.consumed.get(),
        timed_out,
    })
}

/// Waits for the phase to end; returns the snapshots at the end of the
/// warm-up and at the end, and whether a count-bounded phase timed out.
async fn watch(phase: &Phase, shared: &Shared, start: Instant) -> (Snapshot, Snapshot, bool) {
    let (end, warm_end) = match phase.duration {
        Some(d) => (start + Duration::from_secs_f64(d), Some(start + Duration::from_secs_f64(phase.warmup.min(d)))),
        None => (start + Duration::from_secs_f64(phase.timeout), None),
    };
    let mut first = if warm_end.is_none() || phase.warmup <= 0.0 { Some(shared.snapshot()) } else { None };
    loop {
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        if first.is_none() && warm_end.is_some_and(|w| now >= w) {
            shared.measuring.set(true);
            first = Some(shared.snapshot());
        }
        if shared.failure.borrow().is_some() {
            break;
        }
        if phase.duration.is_none() {
            let published = phase.producers == 0 || shared.producers_left.get() == 0;
            let consumed = phase.consumers == 0 || phase.consume_target == 0 || shared.consumed_all();
            if published && consumed {
                break;
            }
        }
        if now >= end {
            let last = shared.snapshot();
            return (first.unwrap_or(last), last, phase.duration.is_none());
        }
    }
    let last = shared.snapshot();
    (first.unwrap_or(last), last, false)
}
