//! Consumer features through lapin against the real binary: single active
//! consumer, consumer priorities, the consumer timeout (per queue and for
//! the broker), and basic.recover without requeue, with RabbitMQ 3.13's
//! reply codes and texts (rabbit_channel.erl).

mod common;

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, Consumer};

use common::amqp::{
    WAIT, assert_quiet, channel, confirm_channel, connect, consume, declare_queue, next, publish_acked, ready, text,
    within,
};
use common::amqp::{amqp_error, expect_error, table};

// ---- helpers -----------------------------------------------------------------

async fn declare_with(ch: &Channel, name: &str, args: FieldTable) {
    within("queue.declare", ch.queue_declare(name.into(), QueueDeclareOptions::default(), args))
        .await
        .unwrap_or_else(|e| panic!("declare '{name}': {e:?}"));
}

fn single_active() -> FieldTable {
    table(&[("x-single-active-consumer", AMQPValue::Boolean(true))])
}

async fn consume_with(ch: &Channel, queue: &str, tag: &str, no_ack: bool, args: FieldTable) -> lapin::Result<Consumer> {
    let opts = BasicConsumeOptions { no_ack, ..Default::default() };
    within("basic.consume", ch.basic_consume(queue.into(), tag.into(), opts, args)).await
}

async fn ack(d: &Delivery) {
    within("ack", d.ack(BasicAckOptions::default())).await.expect("ack");
}

/// (consumer_tag, activity_status) rows of `warrenctl list_consumers`, sorted.
fn activity(broker: &common::Broker) -> Vec<String> {
    let out = broker.warrenctl(&["-q", "--no-table-headers", "list_consumers", "consumer_tag", "activity_status"]);
    assert!(out.status.success(), "warrenctl list_consumers: {}", String::from_utf8_lossy(&out.stderr));
    let mut rows: Vec<String> = String::from_utf8(out.stdout).expect("utf-8").lines().map(str::to_string).collect();
    rows.sort();
    rows
}

/// Polls until `queue` has `want` ready messages.
async fn wait_ready(ch: &Channel, queue: &str, want: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let have = ready(ch, queue).await;
        if have == want {
            return;
        }
        assert!(Instant::now() < deadline, "'{queue}' has {have} ready messages, want {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the consumer's channel to be closed by the broker and returns
/// the error it was closed with.
async fn channel_closed(consumer: &mut Consumer) -> lapin::Error {
    match within("the channel to be closed", consumer.next()).await {
        Some(Err(e)) => e,
        Some(Ok(d)) => panic!("expected the channel to close, got a delivery of {:?}", text(&d)),
        None => panic!("the consumer ended without an error"),
    }
}

// ---- single active consumer ---------------------------------------------------

#[tokio::test]
async fn single_active_consumer_only_the_first_gets_messages_until_it_cancels() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_with(&ch, "sac", single_active()).await;
    let ach = channel(&conn).await;
    let mut a = consume(&ach, "sac", "a", true).await;
    let bch = channel(&conn).await;
    let mut b = consume(&bch, "sac", "b", true).await;
    for i in 0..4 {
        publish_acked(&ch, "sac", &format!("m{i}")).await;
    }
    for i in 0..4 {
        assert_eq!(text(&next(&mut a).await), format!("m{i}"));
    }
    assert_quiet(&mut b, "the waiting consumer").await;

    within("cancel", ach.basic_cancel("a".into(), BasicCancelOptions::default())).await.expect("cancel");
    for i in 4..6 {
        publish_acked(&ch, "sac", &format!("m{i}")).await;
    }
    for i in 4..6 {
        assert_eq!(text(&next(&mut b).await), format!("m{i}"), "the second consumer took over");
    }
}

#[tokio::test]
async fn single_active_consumer_hands_over_when_the_active_channel_closes() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_with(&ch, "sac", single_active()).await;
    let ach = channel(&conn).await;
    let mut a = consume(&ach, "sac", "a", false).await;
    let bch = channel(&conn).await;
    let mut b = consume(&bch, "sac", "b", false).await;
    publish_acked(&ch, "sac", "m0").await;
    publish_acked(&ch, "sac", "m1").await;
    // The active consumer takes both and settles neither.
    assert_eq!(text(&next(&mut a).await), "m0");
    assert_eq!(text(&next(&mut a).await), "m1");
    assert_quiet(&mut b, "the waiting consumer").await;

    within("channel.close", ach.close(200, "bye".into())).await.expect("close");
    // Its unacked messages come back and go to the new active consumer, in order.
    for body in ["m0", "m1"] {
        let d = next(&mut b).await;
        assert_eq!(text(&d), body);
        assert!(d.redelivered, "{body} was delivered before");
        ack(&d).await;
    }
    publish_acked(&ch, "sac", "m2").await;
    assert_eq!(text(&next(&mut b).await), "m2");
}

#[tokio::test]
async fn list_consumers_shows_single_active_and_waiting() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_with(&ch, "sac", single_active()).await;
    declare_queue(&ch, "plain").await;
    let ach = channel(&conn).await;
    let _a = consume(&ach, "sac", "a", true).await;
    let bch = channel(&conn).await;
    let _b = consume(&bch, "sac", "b", true).await;
    let _p = consume(&bch, "plain", "p", true).await;
    assert_eq!(activity(&broker), ["a\tsingle_active", "b\twaiting", "p\tup"]);

    within("cancel", ach.basic_cancel("a".into(), BasicCancelOptions::default())).await.expect("cancel");
    assert_eq!(activity(&broker), ["b\tsingle_active", "p\tup"]);
}

// ---- consumer priorities -------------------------------------------------------

#[tokio::test]
async fn the_high_priority_consumer_gets_messages_first_while_it_has_room() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "prio").await;
    // The low-priority consumer registers first, so plain round-robin
    // would serve it first.
    let lch = channel(&conn).await;
    within("qos", lch.basic_qos(1, BasicQosOptions::default())).await.expect("qos");
    let mut low = consume_with(&lch, "prio", "low", false, table(&[("x-priority", AMQPValue::LongInt(1))]))
        .await
        .expect("consume low");
    let hch = channel(&conn).await;
    within("qos", hch.basic_qos(1, BasicQosOptions::default())).await.expect("qos");
    let mut high = consume_with(&hch, "prio", "high", false, table(&[("x-priority", AMQPValue::LongInt(10))]))
        .await
        .expect("consume high");

    publish_acked(&ch, "prio", "m1").await;
    let m1 = next(&mut high).await;
    assert_eq!(text(&m1), "m1");
    assert_quiet(&mut low, "low while high has room").await;

    // High is full (prefetch 1): the next goes to low.
    publish_acked(&ch, "prio", "m2").await;
    let m2 = next(&mut low).await;
    assert_eq!(text(&m2), "m2");

    // Nobody has room: it waits, and goes to high once high acks.
    publish_acked(&ch, "prio", "m3").await;
    assert_quiet(&mut high, "high while full").await;
    assert_eq!(ready(&ch, "prio").await, 1);
    ack(&m1).await;
    let m3 = next(&mut high).await;
    assert_eq!(text(&m3), "m3");

    // Both have room again: high is served first.
    ack(&m2).await;
    ack(&m3).await;
    publish_acked(&ch, "prio", "m4").await;
    assert_eq!(text(&next(&mut high).await), "m4");
    assert_quiet(&mut low, "low while high has room again").await;
}

#[tokio::test]
async fn an_ill_typed_x_priority_is_refused_with_406() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "prio").await;
    let cch = channel(&conn).await;
    let args = table(&[("x-priority", AMQPValue::LongString(LongString::from("high")))]);
    expect_error(
        "x-priority as a string",
        consume_with(&cch, "prio", "c", true, args),
        406,
        "PRECONDITION_FAILED - invalid arg 'x-priority' for queue 'prio' in vhost '/': \"expected integer, got longstr\"",
    )
    .await;
    // No consumer was registered.
    let q = within(
        "passive declare",
        ch.queue_declare(
            "prio".into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive declare");
    assert_eq!(q.consumer_count(), 0);
}

// ---- consumer timeout ------------------------------------------------------------

/// A consumer that never acks: its channel is closed with RabbitMQ's text
/// (rabbit_channel.erl `handle_consumer_timed_out`), and the message is
/// ready again, flagged redelivered.
async fn check_consumer_timeout(conn: &Connection, queue: &str, timeout_ms: u64) {
    check_timeout_of(conn, queue, timeout_ms, FieldTable::default()).await
}

/// As `check_consumer_timeout`, the consumer registered with `consumer_args`.
async fn check_timeout_of(conn: &Connection, queue: &str, timeout_ms: u64, consumer_args: FieldTable) {
    let ch = confirm_channel(conn).await;
    let cch = channel(conn).await;
    let mut consumer = consume_with(&cch, queue, "slow", false, consumer_args).await.expect("basic.consume");
    // The timeout counts from the delivery, which comes before the
    // publish's confirm (that waits for the fsync): the clock starts
    // before the publish, so it never starts after the delivery.
    let started = Instant::now();
    publish_acked(&ch, queue, "never acked").await;
    let _held = next(&mut consumer).await;
    let err = channel_closed(&mut consumer).await;
    let expected = format!(
        "PRECONDITION_FAILED - delivery acknowledgement on channel {} timed out. Timeout value used: {timeout_ms} ms. This timeout value can be configured, see consumers doc guide to learn more",
        cch.id()
    );
    assert_eq!(amqp_error(&err), Some((406, expected)), "{err:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(timeout_ms),
        "closed after {:?}, before the {timeout_ms} ms timeout",
        started.elapsed()
    );
    wait_ready(&ch, queue, 1).await;
    let again = within("basic.get", ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("basic.get")
        .expect("the message is back");
    assert_eq!(text(&again.delivery), "never acked");
    assert!(again.delivery.redelivered);
}

#[tokio::test]
async fn x_consumer_timeout_closes_a_channel_that_never_acks() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_with(&ch, "slow", table(&[("x-consumer-timeout", AMQPValue::LongInt(500))])).await;
    check_consumer_timeout(&conn, "slow", 500).await;
    // The rest of the connection is fine.
    publish_acked(&ch, "slow", "after").await;
}

#[tokio::test]
async fn a_consumer_s_own_x_consumer_timeout_wins_over_its_queue_s() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_with(&ch, "patient", table(&[("x-consumer-timeout", AMQPValue::LongInt(60_000))])).await;
    check_timeout_of(&conn, "patient", 300, table(&[("x-consumer-timeout", AMQPValue::LongInt(300))])).await;
}

#[tokio::test]
async fn the_broker_consumer_timeout_applies_to_plain_queues() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let broker = common::Broker::start_in(&scratch.path().join("data"), &["--consumer-timeout", "400"]);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "plain").await;
    check_consumer_timeout(&conn, "plain", 400).await;
}

#[tokio::test]
async fn a_consumer_that_acks_in_time_keeps_its_channel() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_with(&ch, "prompt", table(&[("x-consumer-timeout", AMQPValue::LongInt(300))])).await;
    let cch = channel(&conn).await;
    let mut consumer = consume(&cch, "prompt", "c", false).await;
    // Well past the timeout in total, each delivery acked at once.
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        publish_acked(&ch, "prompt", &format!("m{i}")).await;
        let d = next(&mut consumer).await;
        assert_eq!(text(&d), format!("m{i}"));
        ack(&d).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cch.status().connected(), "the channel of a prompt consumer was closed");
}

// ---- basic.recover ---------------------------------------------------------------

#[tokio::test]
async fn basic_recover_without_requeue_is_not_implemented() {
    let broker = common::Broker::start();
    for use_async in [false, true] {
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        let what = if use_async { "basic.recover-async(requeue=false)" } else { "basic.recover(requeue=false)" };
        if use_async {
            // No reply to wait for: the connection.close is the answer.
            within(what, ch.basic_recover_async(BasicRecoverAsyncOptions { requeue: false })).await.expect(what);
            let deadline = Instant::now() + WAIT;
            while conn.status().connected() {
                assert!(Instant::now() < deadline, "{what}: connection still open");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            expect_error(
                what,
                ch.basic_recover(BasicRecoverOptions { requeue: false }),
                540,
                "NOT_IMPLEMENTED - requeue=false",
            )
            .await;
        }
        // A hard error: the whole connection is gone.
        assert!(within("channel.open", conn.create_channel()).await.is_err(), "{what}: connection still usable");
    }
}
