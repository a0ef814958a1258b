//! Streams (`x-queue-type=stream`) through lapin against the real binary:
//! declaration and RabbitMQ 3.13's refusals, every kind of `x-stream-offset`,
//! the offset header, credit, independent consumers, filtering, LavinMQ's
//! server-side offset tracking, retention by size, by age and by policy,
//! listings, reads of a cold stream from disk, and kill -9.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};

use common::Broker;
use common::amqp::{
    WAIT, assert_quiet, channel, confirm_channel, connect, expect_error, long_string, next, table, text, within,
};

// ---- helpers -----------------------------------------------------------------

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..Default::default() }
}

fn stream_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut entries = vec![("x-queue-type", long_string("stream"))];
    entries.extend(extra.iter().cloned());
    table(&entries)
}

async fn declare_stream(ch: &Channel, name: &str, extra: &[(&str, AMQPValue)]) {
    within("declare stream", ch.queue_declare(name.into(), durable(), stream_args(extra)))
        .await
        .expect("declare stream");
}

/// Publishes `bodies` to the stream with confirms, each with these headers.
async fn publish_all(ch: &Channel, stream: &str, bodies: &[String], headers: Option<FieldTable>) {
    for body in bodies {
        let mut props = BasicProperties::default().with_delivery_mode(2);
        if let Some(h) = &headers {
            props = props.with_headers(h.clone());
        }
        let confirm = within(
            "publish",
            ch.basic_publish("".into(), stream.into(), BasicPublishOptions::default(), body.as_bytes(), props),
        )
        .await
        .expect("publish");
        let confirmation = within("confirm", confirm).await.expect("confirm");
        assert!(confirmation.is_ack(), "publish to '{stream}' not confirmed");
    }
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// A consumer of the stream on a fresh channel with this prefetch.
async fn stream_consumer(
    conn: &Connection,
    stream: &str,
    tag: &str,
    prefetch: u16,
    args: FieldTable,
) -> (Channel, Consumer) {
    let ch = channel(conn).await;
    within("qos", ch.basic_qos(prefetch, BasicQosOptions::default())).await.expect("qos");
    let consumer = within("consume", ch.basic_consume(stream.into(), tag.into(), BasicConsumeOptions::default(), args))
        .await
        .expect("consume");
    (ch, consumer)
}

/// The `x-stream-offset` header of a delivery.
fn offset_of(d: &lapin::message::Delivery) -> u64 {
    match d.properties.headers().as_ref().and_then(|h| h.inner().get("x-stream-offset")) {
        Some(AMQPValue::LongLongInt(n)) => *n as u64,
        other => panic!("delivery without an x-stream-offset header: {other:?}"),
    }
}

/// Takes `n` deliveries, acking each: (offset, body).
async fn take_acked(consumer: &mut Consumer, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let d = next(consumer).await;
        out.push((offset_of(&d), text(&d)));
        within("ack", d.ack(BasicAckOptions::default())).await.expect("ack");
    }
    out
}

fn bodies(got: &[(u64, String)]) -> Vec<String> {
    got.iter().map(|(_, b)| b.clone()).collect()
}

/// One warrenctl listing row of `columns` for `name` (first column).
fn listed(broker: &Broker, command: &str, columns: &[&str], name: &str) -> Vec<String> {
    let mut args = vec!["-q", "--no-table-headers", command];
    args.extend_from_slice(columns);
    let out = broker.warrenctl(&args);
    assert!(out.status.success(), "warrenctl {command}: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    stdout
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect::<Vec<_>>())
        .find(|row| row.first().map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("{name} not in {command}: {stdout}"))
}

/// (first offset, last offset, messages) of a stream, from warrenctl.
fn stream_span(broker: &Broker, name: &str) -> (u64, u64, u64) {
    let row = listed(broker, "list_queues", &["name", "first_offset", "last_offset", "messages"], name);
    let n = |i: usize| row[i].parse::<u64>().unwrap_or_else(|_| panic!("column {i} of {row:?}"));
    (n(1), n(2), n(3))
}

async fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn offset_arg(v: AMQPValue) -> FieldTable {
    table(&[("x-stream-offset", v)])
}

// ---- declaring ------------------------------------------------------------------

#[tokio::test]
async fn declare_refuses_what_a_stream_cannot_be_as_rabbitmq_does() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_stream(
        &ch,
        "s",
        &[("x-max-age", long_string("7D")), ("x-max-length-bytes", AMQPValue::LongLongInt(1 << 30))],
    )
    .await;
    // A redeclare with the same arguments is fine; the type is listed.
    declare_stream(
        &ch,
        "s",
        &[("x-max-age", long_string("7D")), ("x-max-length-bytes", AMQPValue::LongLongInt(1 << 30))],
    )
    .await;
    assert_eq!(listed(&broker, "list_queues", &["name", "type"], "s")[1], "stream");

    let refusals: Vec<(QueueDeclareOptions, FieldTable, String)> = vec![
        (
            QueueDeclareOptions::default(),
            stream_args(&[]),
            "invalid property 'non-durable' for queue 'q' in vhost '/'".into(),
        ),
        (
            QueueDeclareOptions { durable: true, exclusive: true, ..Default::default() },
            stream_args(&[]),
            "invalid property 'exclusive-owner' for queue 'q' in vhost '/'".into(),
        ),
        (
            QueueDeclareOptions { durable: true, auto_delete: true, ..Default::default() },
            stream_args(&[]),
            "invalid property 'auto-delete' for queue 'q' in vhost '/'".into(),
        ),
        (
            durable(),
            stream_args(&[("x-max-age", long_string("3 days"))]),
            "invalid arg 'x-max-age' for queue 'q' in vhost '/': invalid_max_age".into(),
        ),
        (
            durable(),
            stream_args(&[("x-stream-max-segment-size-bytes", AMQPValue::LongLongInt(4_000_000_000))]),
            "Exceeded max value for x-stream-max-segment-size-bytes".into(),
        ),
        (
            durable(),
            stream_args(&[("x-stream-filter-size-bytes", AMQPValue::LongInt(300))]),
            "Invalid value for  x-stream-filter-size-bytes".into(),
        ),
    ];
    for (options, args, expected) in refusals {
        let ch = channel(&conn).await;
        let text = format!("PRECONDITION_FAILED - {expected}");
        expect_error(&expected, ch.queue_declare("q".into(), options, args), 406, &text).await;
    }
    for (key, value) in [
        ("x-message-ttl", AMQPValue::LongInt(1000)),
        ("x-dead-letter-exchange", long_string("dlx")),
        ("x-max-length", AMQPValue::LongInt(10)),
        ("x-max-priority", AMQPValue::LongInt(5)),
        ("x-overflow", long_string("reject-publish")),
        ("x-single-active-consumer", AMQPValue::Boolean(true)),
        ("x-delivery-limit", AMQPValue::LongInt(3)),
        ("x-expires", AMQPValue::LongInt(60_000)),
    ] {
        let ch = channel(&conn).await;
        let expected = format!(
            "PRECONDITION_FAILED - invalid arg '{key}' for queue 'q' in vhost '/' of queue type rabbit_stream_queue"
        );
        expect_error(key, ch.queue_declare("q".into(), durable(), stream_args(&[(key, value)])), 406, &expected).await;
    }
    let ch = channel(&conn).await;
    expect_error(
        "server-named stream",
        ch.queue_declare("".into(), durable(), stream_args(&[])),
        406,
        "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_stream_queue",
    )
    .await;

    // Purge and basic.get are connection errors (540), as in RabbitMQ.
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    expect_error(
        "purge",
        ch.queue_purge("s".into(), QueuePurgeOptions::default()),
        540,
        "NOT_IMPLEMENTED - queue.purge not supported by stream queues queue 's' in vhost '/'",
    )
    .await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    expect_error(
        "basic.get",
        ch.basic_get("s".into(), BasicGetOptions::default()),
        540,
        "NOT_IMPLEMENTED - basic.get not supported by stream queues queue 's' in vhost '/'",
    )
    .await;
}

/// A basic.consume on stream "s" from a fresh connection, after a
/// consumer prefetch (and a global one) when given, must fail this way.
async fn consume_refused(broker: &Broker, qos: (u16, u16), no_ack: bool, args: FieldTable, code: u16, text: &str) {
    let conn = connect(broker).await;
    let ch = channel(&conn).await;
    let (prefetch, global) = qos;
    if prefetch > 0 {
        within("qos", ch.basic_qos(prefetch, BasicQosOptions::default())).await.expect("qos");
    }
    if global > 0 {
        within("global qos", ch.basic_qos(global, BasicQosOptions { global: true })).await.expect("qos");
    }
    let options = BasicConsumeOptions { no_ack, ..Default::default() };
    expect_error(text, ch.basic_consume("s".into(), "c".into(), options, args), code, text).await;
}

#[tokio::test]
async fn consume_needs_a_prefetch_manual_acks_and_no_global_qos() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    declare_stream(&channel(&conn).await, "s", &[]).await;
    let none = FieldTable::default;
    let text = "PRECONDITION_FAILED - consumer prefetch count is not set for 'queue 's' in vhost '/''";
    consume_refused(&broker, (0, 0), false, none(), 406, text).await;
    let text = "NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues queue 's' in vhost '/'";
    consume_refused(&broker, (10, 0), true, none(), 540, text).await;
    let text = "NOT_IMPLEMENTED - queue 's' in vhost '/' does not support global qos";
    consume_refused(&broker, (10, 10), false, none(), 540, text).await;
    let text = "PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue 's' in vhost '/': {invalid_stream_offset_arg,{longstr,<<\"soon\">>}}";
    consume_refused(&broker, (10, 0), false, offset_arg(long_string("soon")), 406, text).await;
    // Checked before the prefetch, as RabbitMQ does.
    consume_refused(&broker, (0, 0), false, offset_arg(long_string("soon")), 406, text).await;
    let text =
        "PRECONDITION_FAILED - invalid arg 'x-priority' for queue 's' in vhost '/' of queue type rabbit_stream_queue";
    consume_refused(&broker, (10, 0), false, table(&[("x-priority", AMQPValue::LongInt(5))]), 406, text).await;
    // A stream's consumer argument on a classic queue is refused too.
    let ch = channel(&conn).await;
    within("declare", ch.queue_declare("classic".into(), durable(), FieldTable::default())).await.expect("declare");
    let text = "PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue 'classic' in vhost '/' of queue type rabbit_classic_queue";
    let consume = ch.basic_consume(
        "classic".into(),
        "c".into(),
        BasicConsumeOptions::default(),
        offset_arg(long_string("first")),
    );
    expect_error("x-stream-offset on a classic queue", consume, 406, text).await;
    // Exclusive is only noted: other readers still read (RabbitMQ 3.13).
    let conn = connect(&broker).await;
    let (_a, _exclusive) = {
        let ch = channel(&conn).await;
        within("qos", ch.basic_qos(5, BasicQosOptions::default())).await.expect("qos");
        let options = BasicConsumeOptions { exclusive: true, ..Default::default() };
        let c = within("consume", ch.basic_consume("s".into(), "x".into(), options, FieldTable::default())).await;
        (ch, c.expect("exclusive consume"))
    };
    let _other = stream_consumer(&conn, "s", "y", 5, FieldTable::default()).await;
    // queue.delete with if-empty deletes a stream that is not empty, as RabbitMQ.
    let ch = confirm_channel(&conn).await;
    declare_stream(&ch, "full", &[]).await;
    publish_all(&ch, "full", &numbered("m", 2), None).await;
    let options = QueueDeleteOptions { if_empty: true, if_unused: true, ..Default::default() };
    let deleted = within("delete", ch.queue_delete("full".into(), options)).await.expect("delete if-empty");
    assert_eq!(deleted, 2);
}

// ---- consuming -------------------------------------------------------------------

#[tokio::test]
async fn every_kind_of_offset_and_the_offset_header() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let pub_ch = confirm_channel(&conn).await;
    declare_stream(&pub_ch, "s", &[]).await;
    let before_first = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    publish_all(&pub_ch, "s", &numbered("a", 10), None).await;
    // A second batch published at least a second later, for the timestamp offset.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second_batch = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    publish_all(&pub_ch, "s", &numbered("b", 5), None).await;

    let (_c1, mut first) = stream_consumer(&conn, "s", "first", 50, offset_arg(long_string("first"))).await;
    let got = take_acked(&mut first, 15).await;
    assert_eq!(got.iter().map(|(o, _)| *o).collect::<Vec<_>>(), (0..15).collect::<Vec<_>>());
    assert_eq!(bodies(&got[..10]), numbered("a", 10));

    let (_c2, mut numeric) = stream_consumer(&conn, "s", "numeric", 50, offset_arg(AMQPValue::LongLongInt(12))).await;
    assert_eq!(take_acked(&mut numeric, 3).await, vec![(12, "b2".into()), (13, "b3".into()), (14, "b4".into())]);

    let (_c3, mut last) = stream_consumer(&conn, "s", "last", 50, offset_arg(long_string("last"))).await;
    assert_eq!(take_acked(&mut last, 1).await, vec![(14, "b4".into())]);
    assert_quiet(&mut last, "after the last message").await;

    let (_c4, mut next_only) = stream_consumer(&conn, "s", "next", 50, FieldTable::default()).await;
    assert_quiet(&mut next_only, "a consumer at next, before a publish").await;

    let (_c5, mut by_time) =
        stream_consumer(&conn, "s", "time", 50, offset_arg(AMQPValue::Timestamp(second_batch))).await;
    let got = take_acked(&mut by_time, 5).await;
    assert_eq!(got[0], (10, "b0".into()), "a timestamp starts at the first message published at or after it");

    let (_c6, mut interval) = stream_consumer(&conn, "s", "interval", 50, offset_arg(long_string("1h"))).await;
    let got = take_acked(&mut interval, 15).await;
    assert_eq!(got[0].0, 0, "everything was published within the hour");

    let (_c7, mut old) =
        stream_consumer(&conn, "s", "old", 50, offset_arg(AMQPValue::Timestamp(before_first.saturating_sub(3600))))
            .await;
    assert_eq!(take_acked(&mut old, 1).await[0].0, 0);

    // Consumers at the end wait for new messages, each gets them.
    publish_all(&pub_ch, "s", &["c0".to_string()], None).await;
    for consumer in [&mut first, &mut numeric, &mut last, &mut next_only, &mut by_time, &mut interval] {
        assert_eq!(take_acked(consumer, 1).await, vec![(15, "c0".into())]);
    }
}

#[tokio::test]
async fn acks_return_credit_and_consumers_read_independently() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let pub_ch = confirm_channel(&conn).await;
    declare_stream(&pub_ch, "s", &[]).await;
    publish_all(&pub_ch, "s", &numbered("m", 20), None).await;

    // Prefetch 3: three deliveries, then nothing until an ack.
    let (_ch, mut slow) = stream_consumer(&conn, "s", "slow", 3, offset_arg(long_string("first"))).await;
    let held: Vec<_> = vec![next(&mut slow).await, next(&mut slow).await, next(&mut slow).await];
    assert_eq!(held.iter().map(offset_of).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_quiet(&mut slow, "a consumer without credit").await;
    // Another consumer is not held up by it and reads the whole stream.
    let (_ch2, mut fast) = stream_consumer(&conn, "s", "fast", 100, offset_arg(long_string("first"))).await;
    assert_eq!(bodies(&take_acked(&mut fast, 20).await), numbered("m", 20));
    within("ack", held[1].ack(BasicAckOptions::default())).await.expect("ack");
    assert_eq!(offset_of(&next(&mut slow).await), 3);
    // A nack or reject (even with requeue) returns credit and redelivers nothing.
    within("nack", held[0].nack(BasicNackOptions { requeue: true, ..Default::default() })).await.expect("nack");
    let d = next(&mut slow).await;
    assert_eq!((offset_of(&d), d.redelivered), (4, false));
    // The stream still holds every message.
    assert_eq!(stream_span(&broker, "s"), (0, 19, 20));
    // Consumer positions are listed.
    let row = listed(&broker, "list_consumers", &["consumer_tag", "offset"], "fast");
    assert_eq!(row[1], "20");
}

#[tokio::test]
async fn filters_as_rabbitmq_3_13() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let pub_ch = confirm_channel(&conn).await;
    declare_stream(&pub_ch, "s", &[]).await;
    let header = |v: &str| table(&[("x-stream-filter-value", long_string(v))]);
    publish_all(&pub_ch, "s", &["eu1".into(), "eu2".into()], Some(header("eu"))).await;
    publish_all(&pub_ch, "s", &["us1".into()], Some(header("us"))).await;
    publish_all(&pub_ch, "s", &["none1".into()], None).await;
    publish_all(&pub_ch, "s", &["asia1".into()], Some(header("asia"))).await;
    publish_all(&pub_ch, "s", &["eu3".into()], Some(header("eu"))).await;

    let first = ("x-stream-offset", long_string("first"));
    let consume = |tag: &'static str, extra: Vec<(&'static str, AMQPValue)>| {
        let mut entries = vec![first.clone()];
        entries.extend(extra);
        let args = table(&entries);
        let conn = &conn;
        async move { stream_consumer(conn, "s", tag, 20, args).await }
    };
    let (_a, mut one) = consume("one", vec![("x-stream-filter", long_string("eu"))]).await;
    assert_eq!(bodies(&take_acked(&mut one, 3).await), vec!["eu1", "eu2", "eu3"]);
    assert_quiet(&mut one, "a filter on eu").await;

    let list = AMQPValue::FieldArray(vec![long_string("us"), long_string("asia")].into());
    let (_b, mut two) = consume("two", vec![("x-stream-filter", list)]).await;
    assert_eq!(bodies(&take_acked(&mut two, 2).await), vec!["us1", "asia1"]);
    assert_quiet(&mut two, "a filter on us and asia").await;

    let (_c, mut unfiltered) = consume(
        "unfiltered",
        vec![("x-stream-filter", long_string("us")), ("x-stream-match-unfiltered", AMQPValue::Boolean(true))],
    )
    .await;
    assert_eq!(bodies(&take_acked(&mut unfiltered, 2).await), vec!["us1", "none1"]);
    assert_quiet(&mut unfiltered, "us and unfiltered").await;

    let (_d, mut all) = consume("all", vec![]).await;
    assert_eq!(take_acked(&mut all, 6).await.len(), 6);

    // New messages are filtered the same way.
    publish_all(&pub_ch, "s", &["eu4".into()], Some(header("eu"))).await;
    publish_all(&pub_ch, "s", &["us2".into()], Some(header("us"))).await;
    assert_eq!(take_acked(&mut one, 1).await, vec![(6, "eu4".into())]);
    assert_eq!(take_acked(&mut two, 1).await, vec![(7, "us2".into())]);
}

// ---- server-side offset tracking ---------------------------------------------------

#[tokio::test]
async fn tracked_offsets_resume_after_acks_and_survive_kill_9() {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("data");
    let mut broker = Broker::start_in(&dir, &[]);
    let conn = connect(&broker).await;
    let pub_ch = confirm_channel(&conn).await;
    declare_stream(&pub_ch, "s", &[]).await;
    publish_all(&pub_ch, "s", &numbered("m", 10), None).await;

    // A void offset asks the broker to track (LavinMQ): the first time from
    // the start; 4 acked.
    let void = || offset_arg(AMQPValue::Void);
    let (ch, mut tracked) = stream_consumer(&conn, "s", "reader", 1, void()).await;
    assert_eq!(take_acked(&mut tracked, 4).await.last().map(|d| d.0), Some(3));
    // Automatic tracking with an explicit start offset.
    let auto = table(&[
        ("x-stream-offset", AMQPValue::LongLongInt(6)),
        ("x-stream-automatic-offset-tracking", AMQPValue::Boolean(true)),
    ]);
    let (ch2, mut auto_tracked) = stream_consumer(&conn, "s", "auto", 1, auto.clone()).await;
    assert_eq!(take_acked(&mut auto_tracked, 2).await, vec![(6, "m6".into()), (7, "m7".into())]);
    // Untracked consumers start where they ask, whatever their tag.
    let (_ch3, mut plain) = stream_consumer(&conn, "s", "plain", 1, offset_arg(long_string("first"))).await;
    assert_eq!(take_acked(&mut plain, 2).await.last().map(|d| d.0), Some(1));
    within("close", ch.close(200, "bye".into())).await.expect("close");
    within("close", ch2.close(200, "bye".into())).await.expect("close");

    let (ch, mut tracked) = stream_consumer(&conn, "s", "reader", 1, void()).await;
    assert_eq!(take_acked(&mut tracked, 1).await, vec![(4, "m4".into())]);
    within("close", ch.close(200, "bye".into())).await.expect("close");
    // A tracked offset is logged when its ack arrives, not synced before
    // any reply (as a publish is before its confirm): a kill -9 right after
    // the ack may lose it, and the reader then gets messages again. A
    // confirmed publish makes everything logged before it durable: the
    // client's way to know the offsets above are.
    within("declare", pub_ch.queue_declare("sync".into(), durable(), FieldTable::default()))
        .await
        .expect("declare a queue to sync with");
    publish_all(&pub_ch, "sync", &["after the acks".into()], None).await;
    drop(conn);

    broker.kill();
    let broker = Broker::start_in(&dir, &[]);
    let conn = connect(&broker).await;
    let (_ch, mut tracked) = stream_consumer(&conn, "s", "reader", 1, void()).await;
    assert_eq!(take_acked(&mut tracked, 1).await, vec![(5, "m5".into())], "resumes after its last ack, after kill -9");
    let (_ch2, mut auto_tracked) = stream_consumer(&conn, "s", "auto", 1, auto).await;
    assert_eq!(take_acked(&mut auto_tracked, 1).await, vec![(8, "m8".into())]);
    // Without tracking, an explicit offset wins; its acks leave the
    // tracked offset alone (as LavinMQ).
    let (ch3, mut explicit) = stream_consumer(&conn, "s", "reader", 1, offset_arg(long_string("first"))).await;
    assert_eq!(take_acked(&mut explicit, 1).await[0].0, 0);
    within("close", ch3.close(200, "bye".into())).await.expect("close");
    let (_ch4, mut again) = stream_consumer(&conn, "s", "reader", 1, void()).await;
    assert_eq!(take_acked(&mut again, 1).await[0].0, 6, "tracking resumes where it was");
    drop(scratch);
}

// ---- retention -------------------------------------------------------------------

#[tokio::test]
async fn retention_by_size_drops_from_the_head_and_offsets_go_on() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let pub_ch = confirm_channel(&conn).await;
    declare_stream(&pub_ch, "s", &[("x-max-length-bytes", AMQPValue::LongInt(1000))]).await;
    let payload = |i: usize| format!("{i:0>100}");
    let all: Vec<String> = (0..30).map(payload).collect();
    publish_all(&pub_ch, "s", &all, None).await;
    // 1,000 bytes of 100-byte bodies: the newest ten.
    assert_eq!(stream_span(&broker, "s"), (20, 29, 10));
    let (_ch, mut reader) = stream_consumer(&conn, "s", "r", 50, offset_arg(long_string("first"))).await;
    let got = take_acked(&mut reader, 10).await;
    assert_eq!(got.first().map(|g| g.0), Some(20));
    assert_eq!(bodies(&got), all[20..].to_vec());
    // A numeric offset below the head starts at the head.
    let (_ch2, mut low) = stream_consumer(&conn, "s", "low", 50, offset_arg(AMQPValue::LongLongInt(3))).await;
    assert_eq!(take_acked(&mut low, 1).await[0].0, 20);
}

#[tokio::test]
async fn retention_by_age_and_by_policy() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let pub_ch = confirm_channel(&conn).await;
    declare_stream(&pub_ch, "aged", &[("x-max-age", long_string("1s"))]).await;
    publish_all(&pub_ch, "aged", &numbered("old", 5), None).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish_all(&pub_ch, "aged", &numbered("new", 2), None).await;
    // The timer drops what is older than a second: the new ones stay.
    poll_until("the old messages age out", || stream_span(&broker, "aged").0 == 5).await;
    assert_eq!(stream_span(&broker, "aged"), (5, 6, 2));
    poll_until("all but the newest age out", || stream_span(&broker, "aged").2 == 1).await;
    assert_eq!(stream_span(&broker, "aged"), (6, 6, 1), "the newest message stays, so offsets go on");

    // A policy sets the retention of a stream declared without any.
    declare_stream(&pub_ch, "by-policy", &[]).await;
    publish_all(&pub_ch, "by-policy", &(0..20).map(|i| format!("{i:0>100}")).collect::<Vec<_>>(), None).await;
    let out = broker.warrenctl(&[
        "set_policy",
        "--apply-to",
        "streams",
        "retention",
        "^by-",
        r#"{"max-length-bytes": 500, "max-age": "1D"}"#,
    ]);
    assert!(out.status.success(), "set_policy: {}", String::from_utf8_lossy(&out.stderr));
    poll_until("the policy's retention applies", || stream_span(&broker, "by-policy").2 == 5).await;
    assert_eq!(stream_span(&broker, "by-policy"), (15, 19, 5));
    assert_eq!(listed(&broker, "list_queues", &["name", "policy"], "by-policy")[1], "retention");
}

// ---- storage ---------------------------------------------------------------------

#[tokio::test]
async fn a_cold_stream_is_read_from_disk_in_order_after_kill_9() {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("data");
    let mut broker = Broker::start_in(&dir, &["--segment-size", "1048576"]);
    let conn = connect(&broker).await;
    let pub_ch = confirm_channel(&conn).await;
    declare_stream(&pub_ch, "s", &[]).await;
    within("declare work", pub_ch.queue_declare("work".into(), durable(), FieldTable::default()))
        .await
        .expect("declare work");
    // 3,000 messages of 1 KiB: six times the bodies kept in memory, over
    // several segments, interleaved with a classic queue's messages.
    let body = |i: usize| format!("{i:06}{}", "x".repeat(1018));
    for chunk in 0..30 {
        let batch: Vec<String> = (chunk * 100..chunk * 100 + 100).map(body).collect();
        publish_all(&pub_ch, "s", &batch, None).await;
        publish_all(&pub_ch, "work", &[format!("job{chunk}")], None).await;
    }
    let disk_bytes =
        |b: &Broker| listed(b, "list_queues", &["name", "disk_bytes"], "s")[1].parse::<u64>().expect("bytes");
    let before = disk_bytes(&broker);
    assert!(before > 3000 * 1024, "disk bytes {before}");
    drop(conn);
    broker.kill();

    let broker = Broker::start_in(&dir, &["--segment-size", "1048576"]);
    assert_eq!(stream_span(&broker, "s"), (0, 2999, 3000));
    assert_eq!(disk_bytes(&broker), before);
    let conn = connect(&broker).await;
    // Two readers from the start and a classic consumer at once.
    let (_a, mut one) = stream_consumer(&conn, "s", "one", 200, offset_arg(long_string("first"))).await;
    let (_b, mut two) = stream_consumer(&conn, "s", "two", 7, offset_arg(AMQPValue::LongLongInt(1500))).await;
    // A third reader from the start, one message at a time: it shares what
    // the first one has read back, or reads it again once dropped.
    let (_c, mut three) = stream_consumer(&conn, "s", "three", 1, offset_arg(long_string("first"))).await;
    let work_ch = channel(&conn).await;
    let mut work = within(
        "consume work",
        work_ch.basic_consume(
            "work".into(),
            "w".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    for chunk in 0..30 {
        assert_eq!(text(&next(&mut work).await), format!("job{chunk}"));
    }
    let got = take_acked(&mut one, 3000).await;
    assert!(got.iter().enumerate().all(|(i, (o, b))| *o == i as u64 && *b == body(i)), "every message, in order");
    let got = take_acked(&mut two, 1500).await;
    assert!(got.iter().enumerate().all(|(i, (o, _))| *o == 1500 + i as u64));
    let got = take_acked(&mut three, 3000).await;
    assert!(got.iter().enumerate().all(|(i, (o, b))| *o == i as u64 && *b == body(i)), "the third reader too");
    // Offsets go on after the restart.
    let pub_ch = confirm_channel(&conn).await;
    publish_all(&pub_ch, "s", &["after".to_string()], None).await;
    assert_eq!(take_acked(&mut one, 1).await, vec![(3000, "after".into())]);
    drop(scratch);
}

#[tokio::test]
async fn deleting_a_stream_forgets_its_messages_and_tracked_offsets() {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("data");
    let mut broker = Broker::start_in(&dir, &[]);
    let conn = connect(&broker).await;
    let pub_ch = confirm_channel(&conn).await;
    declare_stream(&pub_ch, "s", &[]).await;
    publish_all(&pub_ch, "s", &numbered("m", 5), None).await;
    let (ch, mut tracked) = stream_consumer(&conn, "s", "t", 1, offset_arg(AMQPValue::Void)).await;
    take_acked(&mut tracked, 3).await;
    within("close", ch.close(200, "bye".into())).await.expect("close");
    within("delete", pub_ch.queue_delete("s".into(), QueueDeleteOptions::default())).await.expect("delete");
    declare_stream(&pub_ch, "s", &[]).await;
    publish_all(&pub_ch, "s", &numbered("n", 2), None).await;
    drop(conn);
    broker.kill();
    let broker = Broker::start_in(&dir, &[]);
    assert_eq!(stream_span(&broker, "s"), (0, 1, 2), "only the new stream's messages");
    let conn = connect(&broker).await;
    let (_ch, mut tracked) = stream_consumer(&conn, "s", "t", 1, offset_arg(AMQPValue::Void)).await;
    assert_eq!(take_acked(&mut tracked, 2).await, vec![(0, "n0".into()), (1, "n1".into())]);
    drop(scratch);
}

#[tokio::test]
async fn compaction_reclaims_around_streams_and_keeps_what_retention_keeps() {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("data");
    let flags = ["--segment-size", "65536"];
    let mut broker = Broker::start_in(&dir, &flags);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    // "keep" retains everything, "short" about ten messages; "work" is a
    // classic queue whose messages are all consumed: dead data between the
    // streams' records.
    declare_stream(&ch, "keep", &[]).await;
    declare_stream(&ch, "short", &[("x-max-length-bytes", AMQPValue::LongInt(10_240))]).await;
    within("declare work", ch.queue_declare("work".into(), durable(), FieldTable::default())).await.expect("declare");
    let body = |i: usize| format!("{i:06}{}", "k".repeat(1018));
    let job = "j".repeat(8192);
    for i in 0..400 {
        publish_all(&ch, "keep", &[body(i)], None).await;
        publish_all(&ch, "short", &[body(i)], None).await;
        publish_all(&ch, "work", std::slice::from_ref(&job), None).await;
        let got = within("get", ch.basic_get("work".into(), BasicGetOptions { no_ack: true })).await.expect("get");
        assert!(got.is_some(), "the job just published");
    }
    let segments_bytes = || -> u64 {
        common::segment_files(&dir).iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum()
    };
    // 4.4 MB were written; about 420 KB are live. Compaction must bring the
    // files near that, copying the streams' records forward.
    let bound = 420 * 1024 + 12 * 65536;
    let deadline = Instant::now() + Duration::from_secs(60);
    while segments_bytes() > bound {
        assert!(Instant::now() < deadline, "segments still take {} bytes (bound {bound})", segments_bytes());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (short_first, short_last, short_count) = stream_span(&broker, "short");
    assert_eq!((short_last, short_count), (399, 10));
    drop(conn);
    broker.kill();

    let broker = Broker::start_in(&dir, &flags);
    assert_eq!(stream_span(&broker, "keep"), (0, 399, 400));
    assert_eq!(stream_span(&broker, "short"), (short_first, short_last, short_count));
    let conn = connect(&broker).await;
    let (_a, mut keep) = stream_consumer(&conn, "keep", "k", 100, offset_arg(long_string("first"))).await;
    let got = take_acked(&mut keep, 400).await;
    assert!(got.iter().enumerate().all(|(i, (o, b))| *o == i as u64 && *b == body(i)), "the whole stream, intact");
    let (_b, mut short) = stream_consumer(&conn, "short", "s", 100, offset_arg(long_string("first"))).await;
    let got = take_acked(&mut short, 10).await;
    assert!(got.iter().enumerate().all(|(i, (o, b))| *o == 390 + i as u64 && *b == body(390 + i)));
    drop(scratch);
}

#[tokio::test]
async fn the_http_api_shows_a_streams_offsets_and_its_consumers_positions() {
    let broker = Broker::start_with_http();
    let api = broker.management.expect("management API");
    let conn = connect(&broker).await;
    let pub_ch = confirm_channel(&conn).await;
    declare_stream(&pub_ch, "s", &[]).await;
    publish_all(&pub_ch, "s", &numbered("m", 3), None).await;
    let (_ch, mut reader) = stream_consumer(&conn, "s", "reader", 10, offset_arg(long_string("first"))).await;
    take_acked(&mut reader, 3).await;
    let guest = Some(("guest", "guest"));
    let q = common::http::get(api, "/api/queues/%2F/s", guest).await.json();
    assert_eq!(q["type"], "stream");
    assert_eq!(
        (q["first_offset"].as_u64(), q["committed_offset"].as_u64(), q["messages"].as_u64()),
        (Some(0), Some(2), Some(3))
    );
    assert!(q["disk_bytes"].as_u64().is_some_and(|b| b > 3 * 40), "{q}");
    let consumers = common::http::get(api, "/api/consumers", guest).await.json();
    let reader = consumers.as_array().and_then(|a| a.iter().find(|c| c["consumer_tag"] == "reader")).cloned();
    assert_eq!(reader.map(|c| c["offset"].clone()), Some(serde_json::json!(3)));
}

#[tokio::test]
async fn warrenctl_refuses_to_purge_a_stream() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_stream(&ch, "s", &[]).await;
    publish_all(&ch, "s", &numbered("m", 2), None).await;
    let out = broker.warrenctl(&["purge_queue", "s"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("queue.purge not supported by stream queues queue 's' in vhost '/'"), "{stderr}");
    assert_eq!(stream_span(&broker, "s"), (0, 1, 2));
}

#[tokio::test]
async fn a_vhost_whose_default_queue_type_is_stream() {
    let broker = Broker::start();
    for args in [
        &["add_vhost", "events", "--default-queue-type", "stream"][..],
        &["set_permissions", "-p", "events", "guest", ".*", ".*", ".*"],
    ] {
        let out = broker.warrenctl(args);
        assert!(out.status.success(), "warrenctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let conn = common::amqp::connect_url(&broker.url().replace("%2f", "events")).await;
    let ch = confirm_channel(&conn).await;
    within("declare", ch.queue_declare("audit".into(), durable(), FieldTable::default())).await.expect("declare");
    within("declare", ch.queue_declare("scratch".into(), QueueDeclareOptions::default(), FieldTable::default()))
        .await
        .expect("declare");
    let server_named =
        within("declare", ch.queue_declare("".into(), durable(), FieldTable::default())).await.expect("declare");
    let out = broker.warrenctl(&["-q", "--no-table-headers", "list_queues", "-p", "events", "name", "type"]);
    let listed = String::from_utf8(out.stdout).expect("utf-8");
    let mut rows: Vec<&str> = listed.lines().collect();
    rows.sort();
    let server_named = format!("{}\tclassic", server_named.name().as_str());
    let mut expected = vec!["audit\tstream", "scratch\tclassic", server_named.as_str()];
    expected.sort();
    assert_eq!(rows, expected);
    publish_all(&ch, "audit", &numbered("e", 2), None).await;
    let (_c, mut reader) = stream_consumer(&conn, "audit", "r", 5, offset_arg(long_string("first"))).await;
    assert_eq!(take_acked(&mut reader, 2).await, vec![(0, "e0".into()), (1, "e1".into())]);
}

#[tokio::test]
async fn acks_after_a_cancel_still_move_a_tracked_offset() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let pub_ch = confirm_channel(&conn).await;
    declare_stream(&pub_ch, "s", &[]).await;
    publish_all(&pub_ch, "s", &numbered("m", 6), None).await;
    let (ch, mut tracked) = stream_consumer(&conn, "s", "late", 3, offset_arg(AMQPValue::Void)).await;
    let held = vec![next(&mut tracked).await, next(&mut tracked).await, next(&mut tracked).await];
    within("cancel", ch.basic_cancel("late".into(), BasicCancelOptions::default())).await.expect("cancel");
    for d in &held {
        within("ack", d.ack(BasicAckOptions::default())).await.expect("ack");
    }
    within("close", ch.close(200, "bye".into())).await.expect("close");
    let (_ch, mut again) = stream_consumer(&conn, "s", "late", 3, offset_arg(AMQPValue::Void)).await;
    assert_eq!(take_acked(&mut again, 1).await, vec![(3, "m3".into())]);
}

#[tokio::test]
async fn readers_get_a_message_only_once_it_is_durable() {
    // The log syncs at most every 1.5 s: a message published right after a
    // sync is durable 1.5 s later, and no reader may see it before, or a
    // crash could give its offset to another message.
    let scratch = tempfile::tempdir().expect("scratch");
    let broker = Broker::start_in(&scratch.path().join("data"), &["--fsync", "1500ms"]);
    let conn = connect(&broker).await;
    let pub_ch = confirm_channel(&conn).await;
    declare_stream(&pub_ch, "s", &[]).await;
    let (_ch, mut reader) = stream_consumer(&conn, "s", "r", 10, FieldTable::default()).await;
    // Confirmed: a sync just happened.
    publish_all(&pub_ch, "s", &["a".to_string()], None).await;
    let published = Instant::now();
    let props = BasicProperties::default().with_delivery_mode(2);
    let _unconfirmed =
        within("publish b", pub_ch.basic_publish("".into(), "s".into(), BasicPublishOptions::default(), b"b", props))
            .await
            .expect("publish");
    assert_eq!(take_acked(&mut reader, 1).await, vec![(0, "a".into())]);
    assert_eq!(take_acked(&mut reader, 1).await, vec![(1, "b".into())]);
    let waited = published.elapsed();
    assert!(waited >= Duration::from_millis(1000), "b was delivered {waited:?} after its publish, before the sync");
    drop(scratch);
}
