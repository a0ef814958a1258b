//! Policies and operator policies set with warrenctl: they change live
//! queues at once (a lowered max-length trims, dead-lettering set by policy),
//! merge with queue arguments by RabbitMQ's rules (the lower limit, the
//! argument's dead-letter exchange), pick the highest priority, are refused
//! when invalid, and survive kill -9.

mod common;

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

use common::amqp::*;

fn ctl(broker: &common::Broker, args: &[&str]) -> String {
    let out = broker.warrenctl(args);
    assert!(out.status.success(), "warrenctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The policy column of `list_queues` for a queue.
fn policy_of(broker: &common::Broker, queue: &str) -> String {
    let out = ctl(broker, &["list_queues", "name", "policy", "--no-table-headers", "-q"]);
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{queue}\t")).map(str::to_string))
        .unwrap_or_else(|| panic!("queue {queue} not listed: {out}"))
}

async fn wait_ready(ch: &lapin::Channel, queue: &str, n: u32) {
    let deadline = std::time::Instant::now() + WAIT;
    while ready(ch, queue).await != n {
        assert!(std::time::Instant::now() < deadline, "'{queue}' never held {n} ready messages");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_policy_changes_a_live_queue_and_clearing_it_undoes_that() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "capped.jobs").await;
    declare_queue(&ch, "capped.dead").await;
    declare_queue(&ch, "free").await;
    for i in 0..5 {
        publish(&ch, "capped.jobs", format!("m{i}")).await;
        publish(&ch, "free", format!("m{i}")).await;
    }
    ctl(
        &broker,
        &[
            "set_policy",
            "--apply-to",
            "queues",
            "cap",
            "^capped\\.jobs$",
            r#"{"max-length":2,"dead-letter-exchange":"","dead-letter-routing-key":"capped.dead"}"#,
        ],
    );
    // Trimmed at once, the dropped head dead-lettered by the policy's settings.
    wait_ready(&ch, "capped.jobs", 2).await;
    wait_ready(&ch, "capped.dead", 3).await;
    assert_eq!(ready(&ch, "free").await, 5, "a queue the pattern does not match is untouched");
    assert_eq!(policy_of(&broker, "capped.jobs"), "cap");
    assert_eq!(policy_of(&broker, "free"), "");
    let listed = ctl(&broker, &["list_policies", "--no-table-headers", "-q"]);
    assert!(listed.contains("cap\t^capped\\.jobs$\tqueues"), "{listed}");
    assert_eq!(drain(&ch, "capped.dead").await, ["m0", "m1", "m2"]);

    ctl(&broker, &["clear_policy", "cap"]);
    for i in 5..9 {
        publish(&ch, "capped.jobs", format!("m{i}")).await;
    }
    assert_eq!(ready(&ch, "capped.jobs").await, 6, "no limit once the policy is gone");
    assert_eq!(policy_of(&broker, "capped.jobs"), "");
    let missing = broker.warrenctl(&["clear_policy", "cap"]);
    assert!(!missing.status.success(), "clearing a missing policy fails: {missing:?}");
}

#[tokio::test]
async fn policy_and_arguments_merge_by_rabbitmq_s_rules() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    for q in ["by-arg", "by-policy"] {
        declare_queue(&ch, q).await;
    }
    // The queue says max-length 3 and dead-letter to "by-arg"; the policy
    // says max-length 10 and dead-letter to "by-policy".
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(3));
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
    args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString("by-arg".into()));
    within("declare", ch.queue_declare("merged".into(), QueueDeclareOptions::default(), args)).await.expect("declare");
    ctl(
        &broker,
        &[
            "set_policy",
            "loose",
            "^merged$",
            r#"{"max-length":10,"dead-letter-exchange":"","dead-letter-routing-key":"by-policy"}"#,
        ],
    );
    for i in 0..5 {
        publish(&ch, "merged", format!("m{i}")).await;
    }
    assert_eq!(ready(&ch, "merged").await, 3, "the lower max-length wins");
    wait_ready(&ch, "by-arg", 2).await;
    assert_eq!(ready(&ch, "by-policy").await, 0, "the queue's own dead-letter settings win");

    // Of two matching policies, the higher priority applies.
    ctl(&broker, &["set_policy", "--priority", "5", "tight", "^merged$", r#"{"max-length":1}"#]);
    wait_ready(&ch, "merged", 1).await;
    assert_eq!(policy_of(&broker, "merged"), "tight");
    // An operator policy's lower limit holds against a user's policy.
    ctl(&broker, &["clear_policy", "tight"]);
    declare_queue(&ch, "op").await;
    ctl(&broker, &["set_policy", "user-limit", "^op$", r#"{"max-length":50}"#]);
    ctl(&broker, &["set_operator_policy", "op-limit", "^op$", r#"{"max-length":2}"#]);
    for i in 0..4 {
        publish(&ch, "op", format!("m{i}")).await;
    }
    assert_eq!(ready(&ch, "op").await, 2);
}

#[tokio::test]
async fn invalid_policies_are_refused() {
    let broker = common::Broker::start();
    for (definition, pattern) in [
        (r#"{"max-priority":5}"#, "^q$"),
        (r#"{"no-such-key":1}"#, "^q$"),
        (r#"{"max-length":"lots"}"#, "^q$"),
        (r#"{}"#, "^q$"),
        (r#"{"max-length":1}"#, "(unclosed"),
        ("not json", "^q$"),
    ] {
        let out = broker.warrenctl(&["set_policy", "bad", pattern, definition]);
        assert!(!out.status.success(), "{definition} {pattern}: accepted");
    }
    let listed = ctl(&broker, &["list_policies", "--no-table-headers", "-q"]);
    assert!(listed.trim().is_empty(), "{listed}");
}

#[tokio::test]
async fn an_alternate_exchange_can_come_from_a_policy() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    within(
        "exchange",
        ch.exchange_declare("front".into(), ExchangeKind::Direct, Default::default(), FieldTable::default()),
    )
    .await
    .expect("exchange");
    declare_queue(&ch, "unrouted").await;
    ctl(&broker, &["set_policy", "--apply-to", "exchanges", "ae", "^front$", r#"{"alternate-exchange":"amq.fanout"}"#]);
    within(
        "bind",
        ch.queue_bind("unrouted".into(), "amq.fanout".into(), "".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("bind");
    publish_to(&ch, "front", "nowhere", "caught").await;
    assert_eq!(drain(&ch, "unrouted").await, ["caught"]);
}

#[tokio::test]
async fn policies_survive_kill_9() {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("data");
    let mut broker = common::Broker::start_in(&dir, &[]);
    ctl(&broker, &["set_policy", "ttl", "^short$", r#"{"message-ttl":60000,"max-length":2}"#]);
    {
        let conn = connect(&broker).await;
        let ch = confirm_channel(&conn).await;
        within(
            "declare",
            ch.queue_declare(
                "short".into(),
                QueueDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            ),
        )
        .await
        .expect("declare");
        publish_props(&ch, "short", b"marker", BasicProperties::default().with_delivery_mode(2)).await;
    }
    broker.kill();
    let broker = common::Broker::start_in(&dir, &[]);
    assert_eq!(policy_of(&broker, "short"), "ttl");
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    for i in 0..3 {
        publish(&ch, "short", format!("m{i}")).await;
    }
    assert_eq!(ready(&ch, "short").await, 2, "the policy's max-length still holds");
}

#[tokio::test]
async fn a_policy_ttl_applies_to_messages_restored_after_a_restart() {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("data");
    let mut broker = common::Broker::start_in(&dir, &[]);
    ctl(&broker, &["set_policy", "short-lived", "^expiring$", r#"{"message-ttl":1500}"#]);
    {
        let conn = connect(&broker).await;
        let ch = confirm_channel(&conn).await;
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        within("declare", ch.queue_declare("expiring".into(), durable, FieldTable::default())).await.expect("declare");
        publish_props(&ch, "expiring", b"soon gone", BasicProperties::default().with_delivery_mode(2)).await;
    }
    broker.kill();
    let broker = common::Broker::start_in(&dir, &[]);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    // The policy's TTL holds for the restored message: it goes by itself.
    wait_ready(&ch, "expiring", 0).await;
}
