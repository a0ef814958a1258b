//! The operators' read model: message and object counters, and a snapshot
//! of every queue sampled every few seconds with its rates, which the HTTP
//! API, the Prometheus endpoint and the console read without touching the
//! broker's lock.
//!
//! Broker-wide counters are atomics bumped where things happen (a relaxed
//! add each); per-queue counters are plain integers in the queue, bumped
//! under the broker's lock the operation holds anyway. A sampler thread
//! takes the lock once per [`SAMPLE_EVERY`] to copy the queues' counts and
//! counters into a [`Snapshot`], and derives rates from the previous one,
//! as RabbitMQ's management statistics do every 5 seconds.

use std::collections::VecDeque;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::*;

/// How often queues are sampled for rates (RabbitMQ's `collect_statistics_interval`).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Overview samples kept for the console's charts: ten minutes.
const HISTORY: usize = 120;

/// Broker-wide counters, named after RabbitMQ's `rabbitmq_global_*` and
/// object churn metrics.
#[derive(Debug, Default)]
pub struct GlobalStats {
    pub received: AtomicU64,
    pub received_confirm: AtomicU64,
    pub routed: AtomicU64,
    pub unroutable_dropped: AtomicU64,
    pub unroutable_returned: AtomicU64,
    pub confirmed: AtomicU64,
    pub delivered_consume_manual_ack: AtomicU64,
    pub delivered_consume_auto_ack: AtomicU64,
    pub delivered_get_manual_ack: AtomicU64,
    pub delivered_get_auto_ack: AtomicU64,
    pub get_empty: AtomicU64,
    pub redelivered: AtomicU64,
    pub acknowledged: AtomicU64,
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    pub channels_opened: AtomicU64,
    pub channels_closed: AtomicU64,
    pub queues_declared: AtomicU64,
    pub queues_created: AtomicU64,
    pub queues_deleted: AtomicU64,
}

impl GlobalStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Messages handed to consumers and basic.get, every kind.
    pub fn delivered_total(&self) -> u64 {
        [
            &self.delivered_consume_manual_ack,
            &self.delivered_consume_auto_ack,
            &self.delivered_get_manual_ack,
            &self.delivered_get_auto_ack,
        ]
        .iter()
        .map(|c| Self::get(c))
        .sum()
    }
}

/// One queue's message counters since it was declared.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueCounters {
    pub publish: u64,
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub get: u64,
    pub get_no_ack: u64,
    pub redeliver: u64,
    pub ack: u64,
}

impl QueueCounters {
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }
}

/// A counter and its rate per second over the last sampling interval.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct Rated {
    pub count: u64,
    pub rate: f64,
}

/// One queue as sampled.
#[derive(Debug, Clone)]
pub struct QueueSample {
    pub vhost: Arc<str>,
    pub name: Arc<str>,
    /// Which queue of that name (one deleted and declared again starts over).
    pub incarnation: u64,
    pub queue_type: &'static str,
    pub durable: bool,
    pub ready: usize,
    pub unacked: usize,
    pub consumers: usize,
    pub ready_bytes: usize,
    pub counters: QueueCounters,
    pub publish: Rated,
    pub deliver_get: Rated,
    pub ack: Rated,
    pub redeliver: Rated,
}

/// Broker-wide figures at one sample, for the overview's charts.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct OverviewSample {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub ready: usize,
    pub unacked: usize,
    pub publish_rate: f64,
    pub deliver_get_rate: f64,
    pub ack_rate: f64,
}

/// What the sampler saw last.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub queues: Vec<QueueSample>,
    pub connections: usize,
    pub channels: usize,
    pub consumers: usize,
    pub exchanges: usize,
    pub vhosts: usize,
    /// Broker-wide publish, deliver/get and ack rates of the last interval.
    pub publish_rate: f64,
    pub deliver_get_rate: f64,
    pub ack_rate: f64,
    pub confirm_rate: f64,
    pub history: VecDeque<OverviewSample>,
}

impl Snapshot {
    /// A queue's sample (queues are sorted by vhost and name).
    pub fn queue(&self, vhost: &str, name: &str) -> Option<&QueueSample> {
        let at = self.queues.binary_search_by(|q| (&*q.vhost, &*q.name).cmp(&(vhost, name))).ok()?;
        self.queues.get(at)
    }
}

fn rated(count: u64, before: Option<u64>, seconds: f64) -> Rated {
    let rate = match before {
        Some(b) if seconds > 0.0 && count >= b => (count - b) as f64 / seconds,
        _ => 0.0,
    };
    Rated { count, rate }
}

/// Starts the sampler thread; it ends with the broker.
pub(super) fn spawn(state: Weak<StateLock>, stats: Arc<GlobalStats>, out: Arc<RwLock<Arc<Snapshot>>>) {
    let started = std::thread::Builder::new().name("warren-stats".into()).spawn(move || {
        let mut last = Instant::now();
        // Broker-wide counters at the previous sample: the first one's
        // rates count from the start, when every counter was zero.
        let mut before = (0, 0, 0, 0);
        loop {
            // The first snapshot is the restore's (`Broker::sample_now`).
            std::thread::sleep(SAMPLE_EVERY);
            let Some(state) = state.upgrade() else { return };
            let now = Instant::now();
            let seconds = now.duration_since(last).as_secs_f64();
            last = now;
            let previous = out.read().clone();
            let mut next = state.read().sample(&previous, seconds);
            drop(state);
            let counters = (
                GlobalStats::get(&stats.received),
                stats.delivered_total(),
                GlobalStats::get(&stats.acknowledged),
                GlobalStats::get(&stats.confirmed),
            );
            let per_second =
                |now: u64, was: u64| if seconds > 0.0 { now.saturating_sub(was) as f64 / seconds } else { 0.0 };
            next.publish_rate = per_second(counters.0, before.0);
            next.deliver_get_rate = per_second(counters.1, before.1);
            next.ack_rate = per_second(counters.2, before.2);
            next.confirm_rate = per_second(counters.3, before.3);
            before = counters;
            let mut history = previous.history.clone();
            history.push_back(OverviewSample {
                at_ms: crate::store::wall_ms(),
                ready: next.queues.iter().map(|q| q.ready).sum(),
                unacked: next.queues.iter().map(|q| q.unacked).sum(),
                publish_rate: next.publish_rate,
                deliver_get_rate: next.deliver_get_rate,
                ack_rate: next.ack_rate,
            });
            while history.len() > HISTORY {
                history.pop_front();
            }
            next.history = history;
            *out.write() = Arc::new(next);
        }
    });
    if let Err(e) = started {
        tracing::error!("cannot start the statistics thread ({e}); rates stay at zero");
    }
}

impl super::Broker {
    /// Replaces the snapshot with one taken now (its rates zero, its
    /// history kept): after the restore, so that the first listings do not
    /// show an empty broker until the sampler's next turn.
    pub(super) fn sample_now(&self) {
        let previous = self.snapshot.read().clone();
        let mut next = self.state.read().sample(&previous, 0.0);
        next.history = previous.history.clone();
        *self.snapshot.write() = Arc::new(next);
    }
}

impl State {
    /// Copies every queue's counts and counters, with rates against `previous`.
    fn sample(&self, previous: &Snapshot, seconds: f64) -> Snapshot {
        let mut queues = Vec::with_capacity(previous.queues.len());
        for v in self.vhosts.values() {
            for q in v.queues.values() {
                let q = q.lock();
                let was =
                    previous.queue(&q.vhost, &q.name).filter(|s| s.incarnation == q.incarnation).map(|s| s.counters);
                let c = q.counters;
                queues.push(QueueSample {
                    vhost: q.vhost.clone(),
                    name: q.name.clone(),
                    incarnation: q.incarnation,
                    queue_type: q.args.queue_type.as_str(),
                    durable: q.durable,
                    ready: q.ready_count(),
                    unacked: q.unacked(),
                    consumers: q.consumers.len(),
                    ready_bytes: q.ready_bytes(),
                    counters: c,
                    publish: rated(c.publish, was.map(|w| w.publish), seconds),
                    deliver_get: rated(c.deliver_get(), was.map(|w| w.deliver_get()), seconds),
                    ack: rated(c.ack, was.map(|w| w.ack), seconds),
                    redeliver: rated(c.redeliver, was.map(|w| w.redeliver), seconds),
                });
            }
        }
        queues.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        Snapshot {
            consumers: queues.iter().map(|q| q.consumers).sum(),
            queues,
            connections: self.connections.len(),
            channels: self.channels.len(),
            exchanges: self.vhosts.values().map(|v| v.exchanges.len()).sum(),
            vhosts: self.vhosts.len(),
            ..Snapshot::default()
        }
    }
}

/// How long the locks every message passes through were held since the
/// start (sampled: see [`crate::lock_stats`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct LockReport {
    /// The broker's state lock taken exclusive (declares, deletes,
    /// bindings, channel opens and closes): these holds wait for each
    /// other and for every shared one.
    pub broker: crate::lock_stats::HoldFigures,
    /// The broker's state lock taken shared (the message path): these
    /// holds run side by side.
    pub shared: crate::lock_stats::HoldFigures,
    /// The log's lock, by the message path (appends, acks, delivery marks).
    pub log: crate::lock_stats::HoldFigures,
    /// Messages published since the start.
    pub published: u64,
}

impl LockReport {
    /// Nanoseconds under the broker's lock held exclusive and under the
    /// log's, per message published.
    pub fn per_message_ns(&self) -> Option<(f64, f64)> {
        (self.published > 0).then(|| {
            let per = |seconds: f64| seconds * 1e9 / self.published as f64;
            (per(self.broker.held_seconds), per(self.log.held_seconds))
        })
    }

    /// The rate no number of cores could pass (Amdahl): the time under
    /// the broker's lock held exclusive plus the time under the log's
    /// lock is the part of a message's cost that is serial.
    pub fn ceiling(&self) -> Option<f64> {
        self.per_message_ns().map(|(broker, log)| broker + log).filter(|serial| *serial > 0.0).map(|s| 1e9 / s)
    }
}

impl std::fmt::Display for LockReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "broker lock: {} holds, {:.0} ns mean, {:.3} s held; log lock (message path): {} holds, {:.0} ns mean, {:.3} s held; {} messages published; broker lock shared: {} holds, {:.0} ns mean, {:.3} s held",
            self.broker.holds,
            self.broker.mean_ns,
            self.broker.held_seconds,
            self.log.holds,
            self.log.mean_ns,
            self.log.held_seconds,
            self.published,
            self.shared.holds,
            self.shared.mean_ns,
            self.shared.held_seconds
        )?;
        if let (Some((broker, log)), Some(ceiling)) = (self.per_message_ns(), self.ceiling()) {
            write!(
                f,
                "; per message {broker:.0} ns under the broker lock held exclusive and {log:.0} ns under the log's: at most {ceiling:.0} messages/s on any number of cores"
            )?;
        }
        Ok(())
    }
}

impl Broker {
    /// The lock figures since the start.
    pub fn lock_report(&self) -> LockReport {
        LockReport {
            broker: self.state.hold_figures(),
            shared: self.state.shared_figures(),
            log: self.store.message_lock_figures(),
            published: GlobalStats::get(&self.stats.received),
        }
    }
}
