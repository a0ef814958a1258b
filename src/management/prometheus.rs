//! The Prometheus endpoint (RabbitMQ's `rabbitmq_prometheus`, port 15692):
//! `/metrics` with broker-wide figures and `/metrics/per-object` with one
//! series per queue, under RabbitMQ's metric names and labels, so the
//! official RabbitMQ-Overview Grafana dashboard works unchanged; Warren's
//! own log figures are under `warren_`. Each scrape reads the counters and
//! the sampler's snapshot, never the broker's lock, and is encoded by the
//! prometheus-client crate (OpenMetrics text).

use std::sync::atomic::{AtomicI64, AtomicU64};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Api, node_name};
use crate::broker::GlobalStats;

pub fn routes() -> Router<Api> {
    Router::new().route("/metrics", get(aggregated)).route("/metrics/per-object", get(per_object))
}

type Labels = Vec<(String, String)>;

/// A registry being filled for one scrape.
struct Scrape {
    registry: Registry,
}

impl Scrape {
    fn gauge(&mut self, name: &str, help: &str, value: i64) {
        let g: Gauge<i64, AtomicI64> = Gauge::default();
        g.set(value);
        self.registry.register(name, help, g);
    }

    fn gauge_f(&mut self, name: &str, help: &str, value: f64) {
        let g: Gauge<f64, AtomicU64> = Gauge::default();
        g.set(value);
        self.registry.register(name, help, g);
    }

    /// A counter; the encoder adds `_total` to `name`.
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        let c: Counter<u64> = Counter::default();
        c.inc_by(value);
        self.registry.register(name, help, c);
    }

    /// A counter of seconds (the encoder adds `_total`).
    fn counter_f(&mut self, name: &str, help: &str, value: f64) {
        let c: Counter<f64, AtomicU64> = Counter::default();
        c.inc_by(value);
        self.registry.register(name, help, c);
    }

    /// A counter with labels (the encoder adds `_total`).
    fn counter_with(&mut self, name: &str, help: &str, labels: &Labels, value: u64) {
        let f: Family<Labels, Counter<u64>> = Family::default();
        f.get_or_create(labels).inc_by(value);
        self.registry.register(name, help, f);
    }

    fn histogram(&mut self, name: &str, help: &str, histogram: crate::store::histogram::HistogramSnapshot) {
        self.registry.register(name, help, Buckets(histogram));
    }

    fn labelled(&mut self, name: &str, help: &str, series: Vec<(Labels, i64)>) {
        let f: Family<Labels, Gauge<i64, AtomicI64>> = Family::default();
        for (labels, value) in series {
            f.get_or_create(&labels).set(value);
        }
        self.registry.register(name, help, f);
    }

    fn into_response(self) -> Response {
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        let mut response = text.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        response
    }
}

/// A histogram the log keeps (its own atomics), encoded as one.
#[derive(Debug)]
struct Buckets(crate::store::histogram::HistogramSnapshot);

impl EncodeMetric for Buckets {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.0.sum, self.0.count, &self.0.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// What both endpoints start with: identity, build, object counts,
/// message counters, process and disk figures, and the log's.
fn common(api: &Api) -> Scrape {
    let mut s = Scrape { registry: Registry::default() };
    let node = node_name();
    s.labelled(
        "rabbitmq_identity_info",
        "RabbitMQ node & cluster identity info",
        vec![(
            labels(&[
                ("rabbitmq_node", &node),
                ("rabbitmq_cluster", &node),
                ("rabbitmq_cluster_permanent_id", &format!("warren-{node}")),
            ]),
            1,
        )],
    );
    s.labelled(
        "rabbitmq_build_info",
        "RabbitMQ & Erlang/OTP version info",
        vec![(
            labels(&[
                ("rabbitmq_version", super::overview::RABBITMQ_VERSION),
                ("prometheus_plugin_version", super::overview::RABBITMQ_VERSION),
                ("prometheus_client_version", "prometheus-client 0.26"),
                ("erlang_version", "none"),
                ("product", "Warren"),
                ("product_version", env!("CARGO_PKG_VERSION")),
            ]),
            1,
        )],
    );
    let snapshot = api.broker.snapshot();
    // From the snapshot and the atomics only: a scrape never waits on the
    // broker's lock, whatever the number of queues.
    let (connections, queues) = (snapshot.connections, snapshot.queues.len());
    s.gauge("rabbitmq_connections", "Connections currently open", connections as i64);
    s.gauge("rabbitmq_channels", "Channels currently open", snapshot.channels as i64);
    s.gauge("rabbitmq_consumers", "Consumers currently connected", snapshot.consumers as i64);
    s.gauge("rabbitmq_queues", "Queues available", queues as i64);
    let stats = api.broker.stats();
    let get = GlobalStats::get;
    for (name, help, value) in [
        ("rabbitmq_connections_opened", "Total number of connections opened", get(&stats.connections_opened)),
        (
            "rabbitmq_connections_closed",
            "Total number of connections closed or terminated",
            get(&stats.connections_closed),
        ),
        ("rabbitmq_channels_opened", "Total number of channels opened", get(&stats.channels_opened)),
        ("rabbitmq_channels_closed", "Total number of channels closed", get(&stats.channels_closed)),
        ("rabbitmq_queues_declared", "Total number of queues declared", get(&stats.queues_declared)),
        ("rabbitmq_queues_created", "Total number of queues created", get(&stats.queues_created)),
        ("rabbitmq_queues_deleted", "Total number of queues deleted", get(&stats.queues_deleted)),
    ] {
        s.counter(name, help, value);
    }
    let amqp = labels(&[("protocol", "amqp091")]);
    for (name, help, value) in [
        (
            "rabbitmq_global_messages_received",
            "Total number of messages received from publishers",
            get(&stats.received),
        ),
        (
            "rabbitmq_global_messages_received_confirm",
            "Total number of messages received from publishers expecting confirmations",
            get(&stats.received_confirm),
        ),
        ("rabbitmq_global_messages_routed", "Total number of messages routed to queues or streams", get(&stats.routed)),
        (
            "rabbitmq_global_messages_unroutable_dropped",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            get(&stats.unroutable_dropped),
        ),
        (
            "rabbitmq_global_messages_unroutable_returned",
            "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
            get(&stats.unroutable_returned),
        ),
        (
            "rabbitmq_global_messages_confirmed",
            "Total number of messages confirmed to publishers",
            get(&stats.confirmed),
        ),
        (
            "rabbitmq_global_messages_delivered",
            "Total number of messages delivered to consumers",
            stats.delivered_total(),
        ),
        (
            "rabbitmq_global_messages_delivered_consume_manual_ack",
            "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
            get(&stats.delivered_consume_manual_ack),
        ),
        (
            "rabbitmq_global_messages_delivered_consume_auto_ack",
            "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
            get(&stats.delivered_consume_auto_ack),
        ),
        (
            "rabbitmq_global_messages_delivered_get_manual_ack",
            "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
            get(&stats.delivered_get_manual_ack),
        ),
        (
            "rabbitmq_global_messages_delivered_get_auto_ack",
            "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
            get(&stats.delivered_get_auto_ack),
        ),
        (
            "rabbitmq_global_messages_get_empty",
            "Total number of times basic.get operations fetched no message",
            get(&stats.get_empty),
        ),
        (
            "rabbitmq_global_messages_redelivered",
            "Total number of messages redelivered to consumers",
            get(&stats.redelivered),
        ),
        (
            "rabbitmq_global_messages_acknowledged",
            "Total number of messages acknowledged by consumers",
            get(&stats.acknowledged),
        ),
    ] {
        s.counter_with(name, help, &amqp, value);
    }
    let (rss, available) = crate::metrics::memory();
    let memory = api.broker.memory();
    let limit = if memory.limit() == u64::MAX { available } else { memory.limit() };
    s.gauge("rabbitmq_process_resident_memory_bytes", "Memory used in bytes", rss as i64);
    s.gauge("rabbitmq_resident_memory_limit_bytes", "Memory high watermark in bytes", limit as i64);
    s.gauge(
        "rabbitmq_alarms_memory_used_watermark",
        "is 1 if VM memory watermark alarm is in effect",
        memory.alarm_raised() as i64,
    );
    let store = api.broker.store();
    s.gauge(
        "rabbitmq_disk_space_available_bytes",
        "Disk space available in bytes",
        store.free_space().unwrap_or(0) as i64,
    );
    s.gauge(
        "rabbitmq_disk_space_available_limit_bytes",
        "Free disk space low watermark in bytes",
        store.disk_free_limit() as i64,
    );
    s.gauge("rabbitmq_process_open_fds", "Open file descriptors", crate::metrics::open_fds() as i64);
    s.gauge("rabbitmq_process_max_fds", "Open file descriptors limit", crate::metrics::fd_limit() as i64);
    s.gauge_f("rabbitmq_erlang_uptime_seconds", "Node uptime", crate::metrics::uptime_ms() as f64 / 1000.0);
    let log = store.stats();
    s.gauge("warren_log_segments", "Segment files of the write-ahead log", log.segments as i64);
    s.gauge("warren_log_disk_bytes", "Bytes the log's segment files occupy", log.disk_bytes as i64);
    s.gauge("warren_log_live_bytes", "Bytes of live message records in the log", log.live_bytes as i64);
    s.counter("warren_log_published_bytes", "Bytes of records appended for publishers", log.published_bytes);
    s.counter("warren_log_written_bytes", "Bytes written to the log's segments", log.written_bytes);
    s.counter("warren_log_compaction_bytes", "Bytes compaction copied forward", log.compaction_bytes);
    s.counter(
        "warren_log_unreadable_records",
        "Live records compaction could not read where its index put them (their segments are kept)",
        log.unreadable_records,
    );
    let locks = api.broker.lock_report();
    s.counter("warren_broker_lock_holds", "Times the broker's state lock was taken exclusive", locks.broker.holds);
    s.counter_f(
        "warren_broker_lock_held_seconds",
        "Time the broker's state lock was held exclusive (estimated from one hold in 64)",
        locks.broker.held_seconds,
    );
    s.counter(
        "warren_broker_lock_shared_holds",
        "Times the broker's state lock was taken shared (the message path)",
        locks.shared.holds,
    );
    s.counter_f(
        "warren_broker_lock_shared_held_seconds",
        "Time the broker's state lock was held shared (estimated from one hold in 64)",
        locks.shared.held_seconds,
    );
    s.counter("warren_log_lock_holds", "Times the message path took the log's lock", locks.log.holds);
    s.counter_f(
        "warren_log_lock_held_seconds",
        "Time the message path held the log's lock (estimated from one hold in 64)",
        locks.log.held_seconds,
    );
    s.counter("warren_log_segments_deleted", "Segment files compaction deleted", log.segments_deleted);
    s.counter("warren_log_fsyncs", "fdatasync calls on the log's segments", log.fsyncs);
    s.counter("warren_log_spilled_bytes", "Body bytes paged out to the log under memory pressure", log.spilled_bytes);
    s.gauge("warren_log_spilled_messages", "Paged-out bodies still live in the log", log.spilled_messages as i64);
    s.gauge(
        "warren_memory_paging",
        "is 1 while queues page their messages out (memory above the paging ratio)",
        api.broker.memory().paging() as i64,
    );
    s.gauge_f(
        "warren_log_replay_seconds",
        "How long replaying the log took at start-up",
        log.replay_ms as f64 / 1000.0,
    );
    let (fsync, pass) = store.histograms();
    s.histogram("warren_log_fsync_seconds", "How long each fdatasync of a segment took", fsync);
    s.histogram("warren_log_batch_bytes", "Bytes each writer pass (one group commit) wrote", pass);
    s
}

async fn aggregated(State(api): State<Api>) -> Response {
    let mut s = common(&api);
    let snapshot = api.broker.snapshot();
    let ready: usize = snapshot.queues.iter().map(|q| q.ready).sum();
    let unacked: usize = snapshot.queues.iter().map(|q| q.unacked).sum();
    s.gauge("rabbitmq_queue_messages_ready", "Messages ready to be delivered to consumers", ready as i64);
    s.gauge(
        "rabbitmq_queue_messages_unacked",
        "Messages delivered to consumers but not yet acknowledged",
        unacked as i64,
    );
    s.gauge(
        "rabbitmq_queue_messages",
        "Sum of ready and unacknowledged messages - total queue depth",
        (ready + unacked) as i64,
    );
    s.gauge("rabbitmq_queue_consumers", "Consumers on a queue", snapshot.consumers as i64);
    s.into_response()
}

async fn per_object(State(api): State<Api>) -> Response {
    let mut s = common(&api);
    let snapshot = api.broker.snapshot();
    let series = |value: fn(&crate::broker::QueueSample) -> i64| -> Vec<(Labels, i64)> {
        snapshot.queues.iter().map(|q| (labels(&[("vhost", &q.vhost), ("queue", &q.name)]), value(q))).collect()
    };
    s.labelled(
        "rabbitmq_queue_messages_ready",
        "Messages ready to be delivered to consumers",
        series(|q| q.ready as i64),
    );
    s.labelled(
        "rabbitmq_queue_messages_unacked",
        "Messages delivered to consumers but not yet acknowledged",
        series(|q| q.unacked as i64),
    );
    s.labelled(
        "rabbitmq_queue_messages",
        "Sum of ready and unacknowledged messages - total queue depth",
        series(|q| (q.ready + q.unacked) as i64),
    );
    s.labelled(
        "rabbitmq_queue_messages_ready_bytes",
        "Size in bytes of ready messages",
        series(|q| q.ready_bytes as i64),
    );
    s.labelled("rabbitmq_queue_consumers", "Consumers on a queue", series(|q| q.consumers as i64));
    let published: Family<Labels, Counter<u64>> = Family::default();
    for q in &snapshot.queues {
        published.get_or_create(&labels(&[("vhost", &q.vhost), ("queue", &q.name)])).inc_by(q.counters.publish);
    }
    s.registry.register("rabbitmq_queue_messages_published", "Messages published to queues", published);
    s.into_response()
}
