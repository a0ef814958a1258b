//! The Prometheus endpoint of the real `warren` binary, scraped over HTTP:
//! `/metrics` and `/metrics/per-object` carry the metric names, types and
//! labels the official RabbitMQ-Overview Grafana dashboard queries
//! (identity and build info, object counts, the `rabbitmq_global_messages_*`
//! counters with `protocol="amqp091"`, churn counters, memory, disk and
//! file descriptors, and Warren's own `warren_log_*`), in OpenMetrics text;
//! and their values follow real AMQP traffic: counters move by exactly what
//! was published, routed, dropped, confirmed, delivered and acknowledged,
//! and per-queue depths show what is left (polled, as the per-queue
//! snapshot is refreshed every 5 s).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lapin::Confirmation;
use lapin::options::{BasicAckOptions, BasicGetOptions};

use common::Broker;
use common::amqp::*;
use common::http;

/// One sample: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// A scrape: its text, after checking the reply's status, content type and end.
async fn scrape(addr: SocketAddr, path: &str) -> String {
    let reply = http::get(addr, path, None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let kind = reply.header("content-type").unwrap_or_default();
    assert!(kind.starts_with("application/openmetrics-text"), "content type {kind:?}");
    assert!(reply.body.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
    reply.body
}

fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number in {line:?}"));
            let Some((name, labels)) = series.split_once('{') else { return (series.to_string(), Vec::new(), value) };
            let labels = labels.trim_end_matches('}');
            let labels = labels
                .split("\",")
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once("=\"").unwrap_or_else(|| panic!("a label in {line:?}"));
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value)
        })
        .collect()
}

/// The value of the one sample with this name carrying these labels.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples(text)
        .into_iter()
        .filter(|(n, ls, _)| n == name && labels.iter().all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v)))
        .map(|(_, _, v)| v)
        .collect();
    assert!(matching.len() <= 1, "{name}{labels:?} is ambiguous: {matching:?}");
    matching.first().copied()
}

fn must(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(text, name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{text}"))
}

/// The `# TYPE` a metric family is declared with.
fn type_of<'a>(text: &'a str, family: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix("# TYPE ")?.strip_prefix(family)?.strip_prefix(' '))
}

const AMQP: &[(&str, &str)] = &[("protocol", "amqp091")];

/// The message counters the dashboard plots (each `_total`, amqp091).
const GLOBAL_COUNTERS: [&str; 6] = [
    "rabbitmq_global_messages_received",
    "rabbitmq_global_messages_confirmed",
    "rabbitmq_global_messages_delivered",
    "rabbitmq_global_messages_acknowledged",
    "rabbitmq_global_messages_routed",
    "rabbitmq_global_messages_unroutable_dropped",
];

const GAUGES: [&str; 15] = [
    "rabbitmq_build_info",
    "rabbitmq_queues",
    "rabbitmq_connections",
    "rabbitmq_channels",
    "rabbitmq_consumers",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_process_resident_memory_bytes",
    "rabbitmq_resident_memory_limit_bytes",
    "rabbitmq_disk_space_available_bytes",
    "rabbitmq_process_open_fds",
    "warren_log_segments",
    "rabbitmq_alarms_memory_used_watermark",
    "warren_memory_paging",
    "warren_log_spilled_messages",
];

#[tokio::test]
async fn dashboard_names_types_and_labels() {
    let broker = Broker::start_with_http();
    let addr = broker.prometheus.expect("prometheus endpoint");
    // A queue, so that the per-queue families have a series.
    let management = broker.management.expect("management API");
    let put = http::request(management, "PUT", "/api/queues/%2F/dash", Some(("guest", "guest")), Some("{}")).await;
    assert_eq!(put.status, 201, "{put:?}");
    let dash = [("vhost", "/"), ("queue", "dash")];
    until(addr, "/metrics/per-object", "the queue's series", |t| {
        value(t, "rabbitmq_queue_messages_ready", &dash).is_some()
    })
    .await;
    for path in ["/metrics", "/metrics/per-object"] {
        let text = scrape(addr, path).await;
        assert_eq!(type_of(&text, "rabbitmq_identity_info"), Some("gauge"), "{path}");
        let identity = samples(&text).into_iter().find(|(n, _, _)| n == "rabbitmq_identity_info").expect("identity");
        for label in ["rabbitmq_node", "rabbitmq_cluster"] {
            let v = identity.1.iter().find(|(k, _)| k == label).map(|(_, v)| v.as_str());
            assert!(v.is_some_and(|v| !v.is_empty()), "{label} on {identity:?}");
        }
        assert_eq!(identity.2, 1.0);
        for gauge in GAUGES {
            assert_eq!(type_of(&text, gauge), Some("gauge"), "TYPE of {gauge} at {path}");
        }
        for counter in GLOBAL_COUNTERS {
            assert_eq!(type_of(&text, counter), Some("counter"), "TYPE of {counter} at {path}");
            must(&text, &format!("{counter}_total"), AMQP);
        }
        for counter in ["rabbitmq_connections_opened", "rabbitmq_queues_declared"] {
            assert_eq!(type_of(&text, counter), Some("counter"), "TYPE of {counter} at {path}");
            must(&text, &format!("{counter}_total"), &[]);
        }
        let version = samples(&text)
            .into_iter()
            .find(|(n, _, _)| n == "rabbitmq_build_info")
            .and_then(|(_, labels, _)| labels.into_iter().find(|(k, _)| k == "rabbitmq_version"))
            .map(|(_, v)| v)
            .expect("rabbitmq_build_info{rabbitmq_version}");
        assert_eq!(version.split('.').filter(|p| p.parse::<u32>().is_ok()).count(), 3, "{version}");
        for positive in [
            "rabbitmq_process_resident_memory_bytes",
            "rabbitmq_resident_memory_limit_bytes",
            "rabbitmq_disk_space_available_bytes",
            "rabbitmq_process_open_fds",
            "warren_log_segments",
        ] {
            assert!(must(&text, positive, &[]) > 0.0, "{positive} at {path}");
        }
        assert_eq!(must(&text, "rabbitmq_connections", &[]), 0.0, "no client yet");
        assert_eq!(must(&text, "rabbitmq_alarms_memory_used_watermark", &[]), 0.0, "no memory alarm at rest");
        assert_eq!(must(&text, "warren_memory_paging", &[]), 0.0, "no paging at rest");
    }
    // The memory limit is above what the process uses (no alarm at rest).
    let text = scrape(addr, "/metrics").await;
    let (rss, limit) = (
        must(&text, "rabbitmq_process_resident_memory_bytes", &[]),
        must(&text, "rabbitmq_resident_memory_limit_bytes", &[]),
    );
    assert!(rss < limit, "rss {rss} limit {limit}");
}

/// Polls a scrape until `check` holds, failing (with the last text) after 15 s.
async fn until(addr: SocketAddr, path: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = scrape(addr, path).await;
        if check(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}; last scrape:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn values_follow_traffic() {
    let broker = Broker::start_with_http();
    let addr = broker.prometheus.expect("prometheus endpoint");
    let before = scrape(addr, "/metrics").await;
    let base = |name: &str, labels: &[(&str, &str)]| must(&before, name, labels);

    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "q").await;
    declare_queue(&ch, "held").await;
    for i in 0..10 {
        publish_acked(&ch, "q", &format!("m{i}")).await;
    }
    publish_acked(&ch, "held", "kept unacked").await;
    for _ in 0..2 {
        let confirmation = publish_to(&ch, "amq.direct", "no-such-binding", "dropped").await;
        assert!(matches!(confirmation, Confirmation::Ack(_)), "{confirmation:?}");
    }
    // Four basic.gets with manual acks, and a consumer holding one message unacked.
    for i in 0..4 {
        let get = within("basic.get", ch.basic_get("q".into(), BasicGetOptions { no_ack: false }))
            .await
            .expect("basic.get")
            .expect("a message");
        assert_eq!(text(&get.delivery), format!("m{i}"));
        within("basic.ack", ch.basic_ack(get.delivery.delivery_tag, BasicAckOptions::default())).await.expect("ack");
    }
    let consumer_channel = channel(&conn).await;
    let mut consumer = consume(&consumer_channel, "held", "holder", false).await;
    assert_eq!(text(&next(&mut consumer).await), "kept unacked");

    // Counters are read live: each moves by exactly what happened.
    let expected: [(&str, f64); 6] = [
        ("rabbitmq_global_messages_received_total", 13.0),
        ("rabbitmq_global_messages_confirmed_total", 13.0),
        ("rabbitmq_global_messages_routed_total", 11.0),
        ("rabbitmq_global_messages_unroutable_dropped_total", 2.0),
        ("rabbitmq_global_messages_delivered_total", 5.0),
        ("rabbitmq_global_messages_acknowledged_total", 4.0),
    ];
    let text = until(addr, "/metrics", "the counters to move", |t| {
        expected.iter().all(|(name, delta)| must(t, name, AMQP) >= base(name, AMQP) + delta)
    })
    .await;
    for (name, delta) in expected {
        assert_eq!(must(&text, name, AMQP) - base(name, AMQP), delta, "{name}");
    }
    for (name, delta) in [("rabbitmq_connections_opened_total", 1.0), ("rabbitmq_queues_declared_total", 2.0)] {
        assert_eq!(must(&text, name, &[]) - base(name, &[]), delta, "{name}");
    }

    // Object counts, depths, channels and consumers come from the
    // sampler's snapshot (a scrape never takes the broker's lock).
    let text = until(addr, "/metrics", "the snapshot to show the traffic", |t| {
        must(t, "rabbitmq_queue_messages_ready", &[]) == base("rabbitmq_queue_messages_ready", &[]) + 6.0
            && must(t, "rabbitmq_consumers", &[]) == base("rabbitmq_consumers", &[]) + 1.0
    })
    .await;
    assert_eq!(must(&text, "rabbitmq_connections", &[]), base("rabbitmq_connections", &[]) + 1.0);
    assert_eq!(must(&text, "rabbitmq_queues", &[]), base("rabbitmq_queues", &[]) + 2.0);
    assert_eq!(must(&text, "rabbitmq_queue_messages_unacked", &[]), base("rabbitmq_queue_messages_unacked", &[]) + 1.0);
    assert_eq!(must(&text, "rabbitmq_channels", &[]), base("rabbitmq_channels", &[]) + 2.0);

    let q = [("vhost", "/"), ("queue", "q")];
    let held = [("vhost", "/"), ("queue", "held")];
    let text = until(addr, "/metrics/per-object", "per-queue depths", |t| {
        value(t, "rabbitmq_queue_messages_ready", &q) == Some(6.0)
    })
    .await;
    assert_eq!(must(&text, "rabbitmq_queue_messages_unacked", &q), 0.0);
    assert_eq!(must(&text, "rabbitmq_queue_messages_ready", &held), 0.0);
    assert_eq!(must(&text, "rabbitmq_queue_messages_unacked", &held), 1.0);
    assert_eq!(must(&text, "rabbitmq_queue_consumers", &held), 1.0);

    // Acking the held message and draining q empty both queues.
    within("basic.ack", consumer_channel.basic_ack(1, BasicAckOptions::default())).await.expect("ack");
    assert_eq!(drain(&ch, "q").await.len(), 6);
    let text = until(addr, "/metrics/per-object", "both queues empty", |t| {
        value(t, "rabbitmq_queue_messages_ready", &q) == Some(0.0)
            && value(t, "rabbitmq_queue_messages_unacked", &held) == Some(0.0)
    })
    .await;
    assert_eq!(
        must(&text, "rabbitmq_global_messages_acknowledged_total", AMQP),
        base("rabbitmq_global_messages_acknowledged_total", AMQP) + 5.0
    );
    assert_eq!(
        must(&text, "rabbitmq_global_messages_delivered_total", AMQP),
        base("rabbitmq_global_messages_delivered_total", AMQP) + 11.0
    );

    // The log: a confirm of a persistent message waited for an fdatasync,
    // each one timed in the histogram; each writer pass counted in the
    // batch histogram with the bytes it wrote.
    let before = scrape(addr, "/metrics").await;
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    let args = lapin::types::FieldTable::default();
    within("declare", ch.queue_declare("logged".into(), durable, args)).await.expect("declare");
    let body = "x".repeat(1000);
    for _ in 0..3 {
        let props = lapin::BasicProperties::default().with_delivery_mode(2);
        publish_props(&ch, "logged", body.as_bytes(), props).await;
    }
    let text = scrape(addr, "/metrics").await;
    assert_eq!(type_of(&text, "warren_log_fsync_seconds"), Some("histogram"));
    assert_eq!(type_of(&text, "warren_log_batch_bytes"), Some("histogram"));
    let was = |name: &str, labels: &[(&str, &str)]| must(&before, name, labels);
    let fsyncs = must(&text, "warren_log_fsyncs_total", &[]);
    assert!(fsyncs - was("warren_log_fsyncs_total", &[]) >= 1.0, "confirms come after fdatasync");
    assert_eq!(must(&text, "warren_log_fsync_seconds_count", &[]), fsyncs, "one latency per fdatasync");
    assert_eq!(must(&text, "warren_log_fsync_seconds_bucket", &[("le", "+Inf")]), fsyncs);
    assert!(must(&text, "warren_log_batch_bytes_count", &[]) > was("warren_log_batch_bytes_count", &[]));
    let written = must(&text, "warren_log_batch_bytes_sum", &[]) - was("warren_log_batch_bytes_sum", &[]);
    assert!(written >= 3000.0, "three 1000-byte bodies were written: {written}");
    assert_eq!(type_of(&text, "warren_log_replay_seconds"), Some("gauge"));
    must(&text, "warren_log_replay_seconds", &[]);

    // The locks every message passes through: three publishes took the
    // broker's lock shared and the log's (appends) at least once each,
    // and the broker's lock exclusive not at all (the declare took it once).
    let exclusive = must(&text, "warren_broker_lock_holds_total", &[]) - was("warren_broker_lock_holds_total", &[]);
    assert!(
        exclusive <= 1.0,
        "publishes took the broker's lock exclusive: {exclusive} holds for a declare and 3 publishes"
    );
    for lock in ["warren_broker_lock_shared", "warren_log_lock"] {
        let holds = format!("{lock}_holds_total");
        assert_eq!(type_of(&text, &format!("{lock}_holds")), Some("counter"));
        assert!(must(&text, &holds, &[]) - was(&holds, &[]) >= 3.0, "{holds} counts the three publishes");
        let held = format!("{lock}_held_seconds_total");
        assert!(must(&text, &held, &[]) >= was(&held, &[]), "{held} never goes back");
    }
}
