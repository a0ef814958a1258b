//! Priority queues (`x-max-priority`): higher priorities first, publish
//! order within a priority, priorities above the maximum counted as the
//! maximum, requeued messages back in their priority's place, and the
//! order kept across kill -9 for a backlog that lives on disk.

mod common;

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

use common::amqp::*;

fn max_priority(n: i64) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::LongLongInt(n));
    args
}

async fn declare(ch: &Channel, name: &str, durable: bool, args: FieldTable) {
    within("queue.declare", ch.queue_declare(name.into(), QueueDeclareOptions { durable, ..Default::default() }, args))
        .await
        .unwrap_or_else(|e| panic!("declare {name}: {e:?}"));
}

async fn publish_with(ch: &Channel, queue: &str, body: &str, priority: Option<u8>, persistent: bool) {
    let mut props = BasicProperties::default();
    if let Some(p) = priority {
        props = props.with_priority(p);
    }
    if persistent {
        props = props.with_delivery_mode(2);
    }
    publish_props(ch, queue, body.as_bytes(), props).await;
}

#[tokio::test]
async fn higher_priorities_first_fifo_within_a_priority() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "prio", false, max_priority(10)).await;
    let sends = [
        ("low-1", Some(1)),
        ("none-1", None),
        ("high-1", Some(9)),
        ("low-2", Some(1)),
        ("mid-1", Some(5)),
        ("high-2", Some(9)),
        ("none-2", None),
        ("above-max", Some(200)),
        ("max", Some(10)),
    ];
    for (body, p) in sends {
        publish_with(&ch, "prio", body, p, false).await;
    }
    assert_eq!(
        drain(&ch, "prio").await,
        ["above-max", "max", "high-1", "high-2", "mid-1", "low-1", "low-2", "none-1", "none-2"],
        "a priority above x-max-priority counts as the maximum, none as 0"
    );
}

#[tokio::test]
async fn a_plain_queue_ignores_priorities() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "plain").await;
    for (body, p) in [("a", Some(1)), ("b", Some(9)), ("c", None)] {
        publish_with(&ch, "plain", body, p, false).await;
    }
    assert_eq!(drain(&ch, "plain").await, ["a", "b", "c"]);
}

#[tokio::test]
async fn requeued_messages_go_back_to_their_priority_s_place() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "redo", false, max_priority(5)).await;
    for (body, p) in [("high-1", 5), ("high-2", 5), ("low-1", 1), ("low-2", 1)] {
        publish_with(&ch, "redo", body, Some(p), false).await;
    }
    within("qos", ch.basic_qos(3, BasicQosOptions::default())).await.expect("qos");
    let mut consumer = consume(&ch, "redo", "c", false).await;
    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    let third = next(&mut consumer).await;
    assert_eq!([text(&first), text(&second), text(&third)], ["high-1", "high-2", "low-1"]);
    within("cancel", ch.basic_cancel("c".into(), BasicCancelOptions::default())).await.expect("cancel");
    // Give back low-1 and high-1: high-1 goes before everything again,
    // low-1 before low-2.
    for d in [&third, &first] {
        within("nack", d.acker.nack(BasicNackOptions { requeue: true, ..Default::default() })).await.expect("nack");
    }
    within("ack", second.acker.ack(BasicAckOptions::default())).await.expect("ack");
    assert_eq!(
        drain_with_redelivered(&ch, "redo").await,
        [("high-1".to_string(), true), ("low-1".to_string(), true), ("low-2".to_string(), false)]
    );
}

#[tokio::test]
async fn a_durable_priority_backlog_keeps_its_order_across_kill_9() {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("data");
    let mut broker = common::Broker::start_in(&dir, &[]);
    // Enough messages per priority that most bodies are paged out to the log.
    const PER_PRIORITY: usize = 1500;
    {
        let conn = connect(&broker).await;
        let ch = confirm_channel(&conn).await;
        declare(&ch, "backlog", true, max_priority(3)).await;
        for i in 0..PER_PRIORITY {
            for p in [0u8, 3, 1] {
                publish_with(&ch, "backlog", &format!("{p}/{i:05}"), Some(p), true).await;
            }
        }
        // Take the first high-priority one and give it back unacked: it
        // comes back first, flagged redelivered.
        let m = within("get", ch.basic_get("backlog".into(), BasicGetOptions { no_ack: false }))
            .await
            .expect("get")
            .expect("a message");
        assert_eq!(text(&m.delivery), "3/00000");
        // Once a later persistent message is confirmed, the delivered mark
        // before it in the log is durable too.
        declare(&ch, "sync", true, FieldTable::default()).await;
        publish_with(&ch, "sync", "marker", None, true).await;
    }
    broker.kill();
    let broker = common::Broker::start_in(&dir, &[]);
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let got = drain_with_redelivered(&ch, "backlog").await;
    assert_eq!(got.len(), 3 * PER_PRIORITY, "every confirmed message is back");
    assert_eq!(got[0], ("3/00000".to_string(), true), "the delivered one, flagged redelivered");
    let expected: Vec<String> =
        [3u8, 1, 0].iter().flat_map(|p| (0..PER_PRIORITY).map(move |i| format!("{p}/{i:05}"))).collect();
    let bodies: Vec<String> = got.iter().map(|(b, _)| b.clone()).collect();
    assert_eq!(bodies, expected, "priority order, publish order within each");
    assert!(got[1..].iter().all(|(_, redelivered)| !redelivered));
}
