//! Dead-lettering as RabbitMQ does it: reasons `rejected`, `expired` and
//! `maxlen`, the `x-death` history (merged by queue and reason, newest
//! first), `x-first-death-*` / `x-last-death-*`, the per-message TTL taken
//! off, cycles without a rejection dropped, a missing dead-letter exchange
//! dropping the message, `reject-publish-dlx`, and persistent messages
//! moved between durable queues surviving kill -9 in exactly one of them.

mod common;

use std::time::{Duration, Instant};

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation};

use common::amqp::*;

fn text_arg(table: &mut FieldTable, key: &str, value: &str) {
    table.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
}

/// Arguments that dead-letter to the default exchange with `routing_key`.
fn dlx_to(routing_key: &str) -> FieldTable {
    let mut args = FieldTable::default();
    text_arg(&mut args, "x-dead-letter-exchange", "");
    text_arg(&mut args, "x-dead-letter-routing-key", routing_key);
    args
}

async fn declare(ch: &Channel, name: &str, durable: bool, args: FieldTable) {
    within("queue.declare", ch.queue_declare(name.into(), QueueDeclareOptions { durable, ..Default::default() }, args))
        .await
        .unwrap_or_else(|e| panic!("declare {name}: {e:?}"));
}

async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    within("basic.get", ch.basic_get(queue.into(), BasicGetOptions { no_ack: false })).await.expect("basic.get")
}

/// Waits until `queue` holds `n` ready messages.
async fn wait_ready(ch: &Channel, queue: &str, n: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let count = ready(ch, queue).await;
        if count == n {
            return;
        }
        assert!(Instant::now() < deadline, "queue '{queue}' holds {count} ready messages, expected {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn string(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => panic!("not a string: {other:?}"),
    }
}

fn header<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref().and_then(|h| h.inner().get(key))
}

/// The `x-death` entries of a message, newest first.
fn deaths(props: &BasicProperties) -> Vec<FieldTable> {
    match header(props, "x-death") {
        Some(AMQPValue::FieldArray(items)) => items
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death entry is not a table: {other:?}"),
            })
            .collect(),
        other => panic!("no x-death array: {other:?}"),
    }
}

fn field<'a>(t: &'a FieldTable, key: &str) -> &'a AMQPValue {
    t.inner().get(key).unwrap_or_else(|| panic!("x-death entry without '{key}': {t:?}"))
}

fn count(t: &FieldTable) -> i64 {
    match field(t, "count") {
        AMQPValue::LongLongInt(n) => *n,
        other => panic!("count is not a long: {other:?}"),
    }
}

#[tokio::test]
async fn a_rejected_message_is_dead_lettered_with_its_death_recorded() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "dlq", false, FieldTable::default()).await;
    declare(&ch, "work", false, dlx_to("dlq")).await;
    let props = BasicProperties::default().with_message_id("m1".into()).with_priority(3);
    publish_props(&ch, "work", b"job", props).await;
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let m = get(&ch, "work").await.expect("the job");
    within("reject", m.delivery.acker.reject(BasicRejectOptions { requeue: false })).await.expect("reject");

    wait_ready(&ch, "dlq", 1).await;
    assert_eq!(ready(&ch, "work").await, 0, "the job left its queue");
    let dead = get(&ch, "dlq").await.expect("the dead letter");
    let d = &dead.delivery;
    assert_eq!(text(d), "job");
    assert_eq!(d.routing_key.as_str(), "dlq", "delivered with the dead-letter routing key");
    assert_eq!(d.exchange.as_str(), "", "through the dead-letter exchange");
    assert_eq!(d.properties.message_id().as_ref().map(|s| s.as_str()), Some("m1"), "other properties stay");
    assert_eq!(*d.properties.priority(), Some(3));
    let history = deaths(&d.properties);
    assert_eq!(history.len(), 1);
    let death = &history[0];
    assert_eq!(count(death), 1);
    assert_eq!(string(field(death, "reason")), "rejected");
    assert_eq!(string(field(death, "queue")), "work");
    assert_eq!(string(field(death, "exchange")), "", "the exchange it was published to");
    match field(death, "routing-keys") {
        AMQPValue::FieldArray(keys) => {
            assert_eq!(keys.as_slice().iter().map(string).collect::<Vec<_>>(), ["work"]);
        }
        other => panic!("routing-keys: {other:?}"),
    }
    match field(death, "time") {
        AMQPValue::Timestamp(t) => assert!(*t >= before && *t <= before + 60, "time {t} vs {before}"),
        other => panic!("time is not a timestamp: {other:?}"),
    }
    assert!(death.inner().get("original-expiration").is_none(), "it had no expiration");
    for (key, value) in [
        ("x-first-death-reason", "rejected"),
        ("x-first-death-queue", "work"),
        ("x-first-death-exchange", ""),
        ("x-last-death-reason", "rejected"),
        ("x-last-death-queue", "work"),
        ("x-last-death-exchange", ""),
    ] {
        assert_eq!(header(&d.properties, key).map(string).as_deref(), Some(value), "{key}");
    }
}

#[tokio::test]
async fn nack_without_requeue_dead_letters_and_with_requeue_does_not() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "dlq", false, FieldTable::default()).await;
    declare(&ch, "work", false, dlx_to("dlq")).await;
    for body in ["a", "b", "c"] {
        publish(&ch, "work", body).await;
    }
    let mut consumer = consume(&ch, "work", "c", false).await;
    let first = next(&mut consumer).await;
    let _second = next(&mut consumer).await;
    let third = next(&mut consumer).await;
    // multiple nack of the first two, without requeue; the third back to its queue.
    within("nack", ch.basic_nack(first.delivery_tag + 1, BasicNackOptions { multiple: true, requeue: false }))
        .await
        .expect("nack");
    wait_ready(&ch, "dlq", 2).await;
    within("cancel", ch.basic_cancel("c".into(), BasicCancelOptions::default())).await.expect("cancel");
    within("nack", third.acker.nack(BasicNackOptions { requeue: true, ..Default::default() })).await.expect("nack");
    assert_eq!(drain(&ch, "dlq").await, ["a", "b"]);
    assert_eq!(drain(&ch, "work").await, ["c"], "a requeued message is not dead-lettered");
}

#[tokio::test]
async fn expired_messages_are_dead_lettered_without_anyone_looking() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "expired", false, FieldTable::default()).await;
    let mut args = dlx_to("expired");
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(200));
    declare(&ch, "delay", false, args).await;
    publish(&ch, "delay", "by queue ttl").await;
    let own = BasicProperties::default().with_expiration("100".into());
    publish_props(&ch, "delay", b"by its expiration", own).await;
    // Nothing consumes or polls "delay": the broker's own timer moves them.
    let mut consumer = consume(&ch, "expired", "late", false).await;
    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    assert_eq!([text(&first), text(&second)], ["by queue ttl", "by its expiration"]);
    for d in [&first, &second] {
        let history = deaths(&d.properties);
        assert_eq!(string(field(&history[0], "reason")), "expired");
        assert_eq!(string(field(&history[0], "queue")), "delay");
        assert!(d.properties.expiration().is_none(), "the per-message TTL is taken off");
    }
    assert!(deaths(&first.properties)[0].inner().get("original-expiration").is_none());
    assert_eq!(
        string(field(&deaths(&second.properties)[0], "original-expiration")),
        "100",
        "the message's own expiration is kept in its death"
    );
    assert_eq!(ready(&ch, "delay").await, 0);
}

#[tokio::test]
async fn messages_dropped_for_length_are_dead_lettered_as_maxlen() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "overflow", false, FieldTable::default()).await;
    let mut args = dlx_to("overflow");
    args.insert("x-max-length".into(), AMQPValue::LongInt(2));
    declare(&ch, "bounded", false, args).await;
    for body in ["1", "2", "3", "4"] {
        publish(&ch, "bounded", body).await;
    }
    assert_eq!(drain(&ch, "bounded").await, ["3", "4"]);
    wait_ready(&ch, "overflow", 2).await;
    let m = get(&ch, "overflow").await.expect("dropped head");
    assert_eq!(text(&m.delivery), "1");
    assert_eq!(string(field(&deaths(&m.delivery.properties)[0], "reason")), "maxlen");
}

#[tokio::test]
async fn reject_publish_dlx_refuses_the_publish_and_dead_letters_it() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "refused", false, FieldTable::default()).await;
    let mut args = dlx_to("refused");
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    text_arg(&mut args, "x-overflow", "reject-publish-dlx");
    declare(&ch, "full", false, args).await;
    assert!(matches!(publish_to(&ch, "", "full", "fits").await, Confirmation::Ack(_)));
    let confirmation = publish_to(&ch, "", "full", "does not fit").await;
    assert!(matches!(confirmation, Confirmation::Nack(_)), "{confirmation:?}");
    assert_eq!(drain(&ch, "full").await, ["fits"]);
    wait_ready(&ch, "refused", 1).await;
    let m = get(&ch, "refused").await.expect("the refused publish");
    assert_eq!(text(&m.delivery), "does not fit");
    assert_eq!(string(field(&deaths(&m.delivery.properties)[0], "reason")), "maxlen");
    assert_eq!(string(field(&deaths(&m.delivery.properties)[0], "queue")), "full");
}

#[tokio::test]
async fn deaths_merge_by_queue_and_reason_newest_first() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    // ping and pong dead-letter into each other: rejections keep it going.
    declare(&ch, "ping", false, dlx_to("pong")).await;
    declare(&ch, "pong", false, dlx_to("ping")).await;
    publish(&ch, "ping", "ball").await;
    for (from, to) in [("ping", "pong"), ("pong", "ping"), ("ping", "pong")] {
        wait_ready(&ch, from, 1).await;
        let m = get(&ch, from).await.expect("the ball");
        within("reject", m.delivery.acker.reject(BasicRejectOptions { requeue: false })).await.expect("reject");
        wait_ready(&ch, to, 1).await;
    }
    let m = get(&ch, "pong").await.expect("the ball");
    let history = deaths(&m.delivery.properties);
    let summary: Vec<(String, String, i64)> =
        history.iter().map(|d| (string(field(d, "queue")), string(field(d, "reason")), count(d))).collect();
    assert_eq!(
        summary,
        [("ping".to_string(), "rejected".to_string(), 2), ("pong".to_string(), "rejected".to_string(), 1)]
    );
    let p = &m.delivery.properties;
    assert_eq!(header(p, "x-first-death-queue").map(string).as_deref(), Some("ping"));
    assert_eq!(header(p, "x-last-death-queue").map(string).as_deref(), Some("ping"));
    // After the first death the message was published to the dead-letter
    // exchange: later deaths name it.
    assert_eq!(header(p, "x-last-death-exchange").map(string).as_deref(), Some(""));
}

#[tokio::test]
async fn a_cycle_without_a_rejection_drops_the_message() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "watch", false, FieldTable::default()).await;
    // A fanout dead-letter exchange that leads back to the queue itself and
    // to a witness queue.
    within(
        "exchange.declare",
        ch.exchange_declare(
            "loop".into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange");
    let mut args = FieldTable::default();
    text_arg(&mut args, "x-dead-letter-exchange", "loop");
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(50));
    declare(&ch, "spin", false, args).await;
    for q in ["spin", "watch"] {
        within("bind", ch.queue_bind(q.into(), "loop".into(), "".into(), Default::default(), FieldTable::default()))
            .await
            .expect("bind");
    }
    publish(&ch, "spin", "round").await;
    // It expires once: the witness gets it, "spin" does not (that would be
    // a cycle with no rejection in it).
    wait_ready(&ch, "watch", 1).await;
    let m = get(&ch, "watch").await.expect("witness copy");
    assert_eq!(string(field(&deaths(&m.delivery.properties)[0], "reason")), "expired");
    assert_eq!(ready(&ch, "spin").await, 0, "the copy for the queue it died in is dropped");
}

#[tokio::test]
async fn a_missing_dead_letter_exchange_drops_the_message() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let mut args = FieldTable::default();
    text_arg(&mut args, "x-dead-letter-exchange", "nowhere");
    declare(&ch, "orphan", false, args).await;
    publish(&ch, "orphan", "lost").await;
    let m = get(&ch, "orphan").await.expect("message");
    within("reject", m.delivery.acker.reject(BasicRejectOptions { requeue: false })).await.expect("reject");
    assert_eq!(ready(&ch, "orphan").await, 0);
    assert_eq!(queue_stats(&broker, "orphan"), (0, 0, 0), "dropped, not left unacked");
    // Declaring the exchange later does not bring it back; new rejects go there.
    within(
        "exchange.declare",
        ch.exchange_declare("nowhere".into(), lapin::ExchangeKind::Fanout, Default::default(), FieldTable::default()),
    )
    .await
    .expect("exchange");
    declare(&ch, "found", false, FieldTable::default()).await;
    within(
        "bind",
        ch.queue_bind("found".into(), "nowhere".into(), "".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("bind");
    publish(&ch, "orphan", "kept").await;
    let m = get(&ch, "orphan").await.expect("message");
    within("reject", m.delivery.acker.reject(BasicRejectOptions { requeue: false })).await.expect("reject");
    wait_ready(&ch, "found", 1).await;
    assert_eq!(drain(&ch, "found").await, ["kept"]);
}

#[tokio::test]
async fn dead_lettered_persistent_messages_survive_kill_9_in_exactly_one_queue() {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("data");
    let mut broker = common::Broker::start_in(&dir, &[]);
    const N: usize = 200;
    {
        let conn = connect(&broker).await;
        let ch = confirm_channel(&conn).await;
        declare(&ch, "graveyard", true, FieldTable::default()).await;
        let mut args = dlx_to("graveyard");
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(60_000));
        declare(&ch, "jobs", true, args).await;
        let persistent = BasicProperties::default().with_delivery_mode(2);
        // The first tenth expire at once (only a queue's head expires, so
        // they go first); every other one of the rest is rejected.
        let expired = N / 10;
        for i in 0..N {
            let props = persistent.clone().with_expiration(if i < expired { "1" } else { "600000" }.into());
            publish_props(&ch, "jobs", format!("job {i}").as_bytes(), props).await;
        }
        wait_ready(&ch, "graveyard", expired as u32).await;
        let mut rejected = 0;
        while let Some(m) = get(&ch, "jobs").await {
            let n: usize = text(&m.delivery)[4..].parse().expect("number");
            if n % 2 == 1 {
                assert!(n >= expired, "job {n} should have expired");
                within("reject", m.delivery.acker.reject(BasicRejectOptions { requeue: false })).await.expect("reject");
                rejected += 1;
            } else {
                within("ack", m.delivery.acker.ack(BasicAckOptions::default())).await.expect("ack");
            }
        }
        wait_ready(&ch, "graveyard", (expired + rejected) as u32).await;
        // The log is one sequence: once a later persistent message is
        // confirmed, the acks and moves before it are durable too.
        declare(&ch, "sync", true, FieldTable::default()).await;
        publish_props(&ch, "sync", b"marker", persistent.clone()).await;
    }
    broker.kill();
    let broker = common::Broker::start_in(&dir, &[]);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let mut bodies = drain(&ch, "graveyard").await;
    assert_eq!(drain(&ch, "jobs").await, Vec::<String>::new(), "nothing came back to the source");
    bodies.sort();
    let mut expected: Vec<String> = (0..N).filter(|i| *i < N / 10 || i % 2 == 1).map(|i| format!("job {i}")).collect();
    expected.sort();
    assert_eq!(bodies, expected, "each dead letter once, none lost");
}

#[tokio::test]
async fn a_waiting_consumer_gets_what_a_zero_length_queue_would_drop() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "zero.dropped", false, FieldTable::default()).await;
    let mut args = dlx_to("zero.dropped");
    args.insert("x-max-length".into(), AMQPValue::LongInt(0));
    declare(&ch, "zero", false, args).await;
    // No consumer: dropped (dead-lettered as maxlen) at once.
    publish(&ch, "zero", "nobody").await;
    wait_ready(&ch, "zero.dropped", 1).await;
    assert_eq!(ready(&ch, "zero").await, 0);
    // A consumer waiting: delivered first, as RabbitMQ does.
    let cch = channel(&conn).await;
    let mut consumer = consume(&cch, "zero", "c", true).await;
    publish(&ch, "zero", "taken").await;
    assert_eq!(text(&next(&mut consumer).await), "taken");
    assert_eq!(ready(&ch, "zero.dropped").await, 1, "nothing more dead-lettered");
}
