//! Message TTL: `x-message-ttl` on a queue and the `expiration` property on
//! a message, with RabbitMQ's semantics (expired messages at the head of a
//! queue are dropped, never delivered; a waiting consumer still gets them
//! in time).

mod common;

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};

use common::amqp::*;

fn ttl_args(ms: i64) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms));
    args
}

async fn declare_with(ch: &lapin::Channel, name: &str, durable: bool, args: FieldTable) -> lapin::Result<lapin::Queue> {
    within("queue.declare", ch.queue_declare(name.into(), QueueDeclareOptions { durable, ..Default::default() }, args))
        .await
}

#[tokio::test]
async fn messages_older_than_the_queue_ttl_are_dropped_not_delivered() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    for durable in [false, true] {
        let name = if durable { "ttl.durable" } else { "ttl.transient" };
        declare_with(&ch, name, durable, ttl_args(300)).await.expect("declare");
        for body in ["a", "b", "c"] {
            publish_props(&ch, name, body.as_bytes(), BasicProperties::default().with_delivery_mode(2)).await;
        }
        assert_eq!(ready(&ch, name).await, 3, "{name}: fresh messages are there");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(ready(&ch, name).await, 0, "{name}: expired messages are gone from the count");
        assert_eq!(drain(&ch, name).await, Vec::<String>::new(), "{name}: and are never delivered");
        publish(&ch, name, "fresh").await;
        assert_eq!(drain(&ch, name).await, ["fresh"], "{name}: the queue keeps working");
    }
}

#[tokio::test]
async fn the_expiration_property_limits_one_message() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "exp").await;
    publish_props(&ch, "exp", b"short", BasicProperties::default().with_expiration("200".into())).await;
    publish_props(&ch, "exp", b"long", BasicProperties::default().with_expiration("60000".into())).await;
    publish(&ch, "exp", "forever").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(drain(&ch, "exp").await, ["long", "forever"]);
}

#[tokio::test]
async fn a_waiting_consumer_gets_messages_before_they_expire() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_with(&ch, "ttl.zero", false, ttl_args(0)).await.expect("declare");
    let consumer_channel = channel(&conn).await;
    let mut consumer = consume(&consumer_channel, "ttl.zero", "c", true).await;
    publish(&ch, "ttl.zero", "now").await;
    assert_eq!(text(&next(&mut consumer).await), "now");
}

#[tokio::test]
async fn invalid_ttls_are_refused_with_406() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    expect_code("negative x-message-ttl", declare_with(&ch, "bad", false, ttl_args(-5)), 406).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "exp").await;
    let publish = async {
        ch.basic_publish(
            "".into(),
            "exp".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_expiration("soon".into()),
        )
        .await?
        .await
    };
    expect_code("expiration 'soon'", publish, 406).await;
}

/// Polls `queue` until it is empty; returns when that happened.
async fn empty_at(ch: &lapin::Channel, queue: &str, limit: Duration) -> std::time::Instant {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if ready(ch, queue).await == 0 {
            return std::time::Instant::now();
        }
        assert!(std::time::Instant::now() < deadline, "'{queue}' still holds messages after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ttls_count_from_the_publish_across_a_restart() {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("data");
    let mut broker = common::Broker::start_in(&dir, &[]);
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let published;
    {
        let conn = connect(&broker).await;
        let ch = confirm_channel(&conn).await;
        declare_with(&ch, "ttl.queue", true, ttl_args(3000)).await.expect("declare");
        declare_with(&ch, "ttl.message", true, FieldTable::default()).await.expect("declare");
        publish_props(&ch, "ttl.queue", b"q", persistent.clone()).await;
        publish_props(&ch, "ttl.message", b"m", persistent.clone().with_expiration("3000".into())).await;
        published = std::time::Instant::now();
    }
    // Most of the TTL passes before the crash.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    broker.kill();
    let broker = common::Broker::start_in(&dir, &[]);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    for queue in ["ttl.queue", "ttl.message"] {
        // Counted from the restart they would live until about 5 s after
        // the publish; counted from the publish they are gone at 3 s.
        let gone = empty_at(&ch, queue, Duration::from_secs(10)).await;
        let lived = gone.duration_since(published);
        assert!(lived < Duration::from_millis(4300), "{queue}: expired {lived:?} after the publish");
    }
}

#[tokio::test]
async fn a_ttl_of_zero_without_a_consumer_expires_at_once() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_with(&ch, "ttl.now", false, ttl_args(0)).await.expect("declare");
    for i in 0..20 {
        publish(&ch, "ttl.now", format!("m{i}")).await;
        assert_eq!(ready(&ch, "ttl.now").await, 0, "message {i} outlived a TTL of 0");
    }
}

/// Voluntary context switches of the broker's timer thread so far.
fn timer_thread_switches(broker: &common::Broker) -> u64 {
    let pid = broker.pid().expect("broker pid");
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let path = task.expect("task").path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() == "warren-timers" {
            let status = std::fs::read_to_string(path.join("status")).expect("status");
            let line = status.lines().find(|l| l.starts_with("voluntary_ctxt_switches:")).expect("switches line");
            return line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a count");
        }
    }
    panic!("no warren-timers thread in the broker");
}

/// The timer thread sleeps until a deadline: with nothing due it does not
/// wake (it used to tick every 50 ms), and a TTL wakes it at the deadline.
#[tokio::test]
async fn the_timer_thread_sleeps_while_nothing_is_due() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let before = timer_thread_switches(&broker);
    // Waiting is the point here: over this second a ticking thread would
    // have woken about 20 times.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let idle = timer_thread_switches(&broker) - before;
    assert!(idle <= 1, "the timer thread woke {idle} times with nothing due");

    // A message TTL arms it; the message goes at its deadline although
    // nobody looks at the queue, and the thread sleeps again.
    let mut args = ttl_args(200);
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
    args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString("timer.dlq".into()));
    declare_with(&ch, "timer.dlq", false, FieldTable::default()).await.expect("declare dlq");
    declare_with(&ch, "timer.src", false, args).await.expect("declare src");
    publish_props(&ch, "timer.src", b"m", BasicProperties::default()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ready(&ch, "timer.dlq").await == 0 {
        assert!(std::time::Instant::now() < deadline, "the expired message never reached the dead-letter queue");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = timer_thread_switches(&broker);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let idle = timer_thread_switches(&broker) - before;
    assert!(idle <= 1, "the timer thread woke {idle} times after the expiry, with nothing due");
}
