//! The queue class, through lapin against the real binary.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::amqp::{WAIT, confirm_channel, connect, drain, expect_code, publish_acked, publish_to, reply_code, within};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Confirmation, Connection, Queue};

async fn declare(ch: &Channel, name: &str, options: QueueDeclareOptions, args: FieldTable) -> lapin::Result<Queue> {
    within("queue.declare", ch.queue_declare(name.into(), options, args)).await
}

async fn declare_plain(ch: &Channel, name: &str) -> Queue {
    declare(ch, name, QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("declare '{name}': {e:?}"))
}

async fn passive(ch: &Channel, name: &str) -> lapin::Result<Queue> {
    declare(ch, name, QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default()).await
}

/// Passive declare on a fresh channel: (ready messages, consumers), or the error.
async fn counts(conn: &Connection, name: &str) -> lapin::Result<(u32, u32)> {
    let ch = within("channel", conn.create_channel()).await?;
    let q = passive(&ch, name).await?;
    let _ = within("channel.close", ch.close(200, "done".into())).await;
    Ok((q.message_count(), q.consumer_count()))
}

/// Polls until a passive declare of the queue fails with 404.
async fn wait_gone(conn: &Connection, name: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        match counts(conn, name).await {
            Err(e) if reply_code(&e) == Some(404) => return,
            Err(e) => panic!("passive declare of '{name}': {e:?}"),
            Ok(_) => assert!(Instant::now() < deadline, "queue '{name}' still exists"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until the queue reports these (ready, consumers) counts.
async fn wait_counts(conn: &Connection, name: &str, want: (u32, u32)) {
    let deadline = Instant::now() + WAIT;
    loop {
        let have = counts(conn, name).await.unwrap_or_else(|e| panic!("passive declare of '{name}': {e:?}"));
        if have == want {
            return;
        }
        assert!(Instant::now() < deadline, "queue '{name}' has (ready, consumers) {have:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn warrenctl_rows(broker: &common::Broker, args: &[&str]) -> Vec<String> {
    let out = broker.warrenctl(args);
    assert!(out.status.success(), "warrenctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").lines().map(str::to_string).collect()
}

// ---- declare -----------------------------------------------------------------

#[tokio::test]
async fn declare_durable_exclusive_auto_delete_and_passive() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "q.durable", QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("durable");
    declare(&ch, "q.exclusive", QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("exclusive");
    declare(&ch, "q.autodel", QueueDeclareOptions { auto_delete: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("auto-delete");
    declare_plain(&ch, "q.plain").await;
    for name in ["q.durable", "q.exclusive", "q.autodel", "q.plain"] {
        let q = passive(&ch, name).await.unwrap_or_else(|e| panic!("passive declare of '{name}': {e:?}"));
        assert_eq!(q.name().as_str(), name);
    }
    let rows = warrenctl_rows(
        &broker,
        &["-q", "--no-table-headers", "list_queues", "name", "durable", "exclusive", "auto_delete"],
    );
    for row in [
        "q.durable\ttrue\tfalse\tfalse",
        "q.exclusive\tfalse\ttrue\tfalse",
        "q.autodel\tfalse\tfalse\ttrue",
        "q.plain\tfalse\tfalse\tfalse",
    ] {
        assert!(rows.iter().any(|r| r == row), "no row {row:?} in {rows:?}");
    }
    // Redeclaring with the same properties is fine (the owner may redeclare its exclusive queue).
    declare(&ch, "q.durable", QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("redeclare durable");
    declare(&ch, "q.exclusive", QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("redeclare exclusive");
    declare(&ch, "q.autodel", QueueDeclareOptions { auto_delete: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("redeclare auto-delete");
}

#[tokio::test]
async fn passive_declare_of_a_missing_queue_is_404_and_creates_nothing() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    expect_code("passive declare", passive(&ch, "absent"), 404).await;
    assert_eq!(counts(&conn, "absent").await.err().and_then(|e| reply_code(&e)), Some(404));
    // Only the channel was closed.
    let ch = confirm_channel(&conn).await;
    declare_plain(&ch, "present").await;
}

#[tokio::test]
async fn server_named_queues_start_with_amq_gen_and_are_unique() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let mut names = HashSet::new();
    for _ in 0..25 {
        let q = declare(&ch, "", QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default())
            .await
            .expect("declare server-named");
        let name = q.name().to_string();
        assert!(name.starts_with("amq.gen-") && name.len() > "amq.gen-".len(), "server-named queue '{name}'");
        assert!(names.insert(name), "duplicate server-generated name");
    }
    // They are real queues, reachable by the generated name.
    let name = names.iter().next().expect("a name").clone();
    publish_acked(&ch, &name, "to generated").await;
    assert_eq!(drain(&ch, &name).await, ["to generated"]);
}

#[tokio::test]
async fn client_may_not_name_a_queue_with_the_amq_prefix() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    expect_code("declare amq.mine", declare(&ch, "amq.mine", Default::default(), FieldTable::default()), 403).await;
}

#[tokio::test]
async fn declare_ok_carries_message_and_consumer_counts() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let q = declare_plain(&ch, "counted").await;
    assert_eq!((q.message_count(), q.consumer_count()), (0, 0));
    for i in 0..3 {
        publish_acked(&ch, "counted", &format!("m{i}")).await;
    }
    let q = declare_plain(&ch, "counted").await;
    assert_eq!((q.message_count(), q.consumer_count()), (3, 0));
    let q = passive(&ch, "counted").await.expect("passive");
    assert_eq!((q.message_count(), q.consumer_count()), (3, 0));

    let idle = declare_plain(&ch, "watched").await;
    assert_eq!(idle.consumer_count(), 0);
    let consumers_ch = confirm_channel(&conn).await;
    let mut consumers = Vec::new();
    for tag in ["w1", "w2"] {
        let c = within(
            "consume",
            consumers_ch.basic_consume(
                "watched".into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("consume");
        consumers.push(c);
    }
    let q = declare_plain(&ch, "watched").await;
    assert_eq!((q.message_count(), q.consumer_count()), (0, 2));
    within("cancel", consumers_ch.basic_cancel("w1".into(), BasicCancelOptions::default())).await.expect("cancel");
    let q = passive(&ch, "watched").await.expect("passive");
    assert_eq!((q.message_count(), q.consumer_count()), (0, 1));
}

#[tokio::test]
async fn redeclare_with_other_properties_is_refused_with_406() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let limited = table(&[("x-max-length", AMQPValue::LongInt(10))]);
    declare(&ch, "fixed", QueueDeclareOptions { durable: true, ..Default::default() }, limited.clone())
        .await
        .expect("declare");
    let cases: [(&str, QueueDeclareOptions, FieldTable); 4] = [
        ("non-durable", QueueDeclareOptions::default(), limited.clone()),
        (
            "auto-delete",
            QueueDeclareOptions { durable: true, auto_delete: true, ..Default::default() },
            limited.clone(),
        ),
        (
            "other x-max-length",
            QueueDeclareOptions { durable: true, ..Default::default() },
            table(&[("x-max-length", AMQPValue::LongInt(20))]),
        ),
        ("no arguments", QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default()),
    ];
    for (what, options, args) in cases {
        let ch = confirm_channel(&conn).await;
        expect_code(what, declare(&ch, "fixed", options, args), 406).await;
    }
    // The failed redeclares changed nothing: the original declaration still matches.
    let ch = confirm_channel(&conn).await;
    declare(&ch, "fixed", QueueDeclareOptions { durable: true, ..Default::default() }, limited)
        .await
        .expect("same declaration");
}

// ---- exclusive queues ----------------------------------------------------------

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection() {
    let broker = common::Broker::start();
    let owner = connect(&broker).await;
    let och = confirm_channel(&owner).await;
    declare(&och, "private", QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default())
        .await
        .expect("declare exclusive");
    publish_acked(&och, "private", "secret").await;

    let other = connect(&broker).await;
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    expect_code(
        "declare",
        declare(&confirm_channel(&other).await, "private", Default::default(), FieldTable::default()),
        405,
    )
    .await;
    expect_code(
        "declare exclusive",
        declare(&confirm_channel(&other).await, "private", exclusive, FieldTable::default()),
        405,
    )
    .await;
    expect_code("passive declare", passive(&confirm_channel(&other).await, "private"), 405).await;
    let ch = confirm_channel(&other).await;
    expect_code(
        "consume",
        ch.basic_consume("private".into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()),
        405,
    )
    .await;
    let ch = confirm_channel(&other).await;
    expect_code(
        "bind",
        ch.queue_bind("private".into(), "amq.fanout".into(), "".into(), Default::default(), FieldTable::default()),
        405,
    )
    .await;
    let ch = confirm_channel(&other).await;
    expect_code("purge", ch.queue_purge("private".into(), Default::default()), 405).await;
    let ch = confirm_channel(&other).await;
    expect_code("delete", ch.queue_delete("private".into(), Default::default()), 405).await;
    let ch = confirm_channel(&other).await;
    expect_code("get", ch.basic_get("private".into(), BasicGetOptions { no_ack: true }), 405).await;

    // None of that touched the queue; the owner still has it, message and all.
    let q = passive(&och, "private").await.expect("owner's passive declare");
    assert_eq!(q.message_count(), 1);
    within(
        "bind",
        och.queue_bind("private".into(), "amq.fanout".into(), "".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("owner binds");
    assert_eq!(drain(&och, "private").await, ["secret"]);

    within("close owner", owner.close(200, "bye".into())).await.expect("close");
    wait_gone(&other, "private").await;
    // Once gone, another connection may take the name.
    declare(&confirm_channel(&other).await, "private", exclusive, FieldTable::default()).await.expect("new owner");
}

#[tokio::test]
async fn declaring_a_shared_queue_as_exclusive_is_refused() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    declare_plain(&confirm_channel(&conn).await, "shared").await;
    let other = connect(&broker).await;
    let ch = confirm_channel(&other).await;
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    expect_code("declare exclusive", declare(&ch, "shared", exclusive, FieldTable::default()), 405).await;
}

// ---- auto-delete -----------------------------------------------------------------

#[tokio::test]
async fn auto_delete_queue_goes_when_its_last_consumer_cancels() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let auto = QueueDeclareOptions { auto_delete: true, ..Default::default() };
    declare(&ch, "transient", auto, FieldTable::default()).await.expect("declare");
    // Without ever having had a consumer it stays.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(counts(&conn, "transient").await.expect("still there"), (0, 0));

    let cch = confirm_channel(&conn).await;
    let _c1 = within(
        "consume",
        cch.basic_consume("transient".into(), "c1".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("consume c1");
    let _c2 = within(
        "consume",
        cch.basic_consume("transient".into(), "c2".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("consume c2");
    within("cancel c1", cch.basic_cancel("c1".into(), Default::default())).await.expect("cancel");
    assert_eq!(counts(&conn, "transient").await.expect("one consumer left"), (0, 1));
    within("cancel c2", cch.basic_cancel("c2".into(), Default::default())).await.expect("cancel");
    wait_gone(&conn, "transient").await;

    // Closing the channel of the last consumer counts as cancelling it.
    declare(&ch, "transient2", auto, FieldTable::default()).await.expect("declare");
    let cch = confirm_channel(&conn).await;
    let _c = within(
        "consume",
        cch.basic_consume("transient2".into(), "c".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("consume");
    within("channel.close", cch.close(200, "bye".into())).await.expect("close");
    wait_gone(&conn, "transient2").await;
}

// ---- bind / unbind -----------------------------------------------------------------

#[tokio::test]
async fn bind_and_unbind_control_routing() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_plain(&ch, "bound").await;
    within(
        "bind",
        ch.queue_bind("bound".into(), "amq.direct".into(), "key".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("bind");
    publish_to(&ch, "amq.direct", "key", "routed").await;
    assert_eq!(drain(&ch, "bound").await, ["routed"]);
    within("unbind", ch.queue_unbind("bound".into(), "amq.direct".into(), "key".into(), FieldTable::default()))
        .await
        .expect("unbind");
    publish_to(&ch, "amq.direct", "key", "dropped").await;
    assert_eq!(drain(&ch, "bound").await, Vec::<String>::new());
    // The default-exchange binding is not affected.
    publish_acked(&ch, "bound", "by name").await;
    assert_eq!(drain(&ch, "bound").await, ["by name"]);

    expect_code(
        "bind to a missing exchange",
        ch.queue_bind("bound".into(), "no-exchange".into(), "k".into(), Default::default(), FieldTable::default()),
        404,
    )
    .await;
    let ch = confirm_channel(&conn).await;
    expect_code(
        "bind a missing queue",
        ch.queue_bind("no-queue".into(), "amq.direct".into(), "k".into(), Default::default(), FieldTable::default()),
        404,
    )
    .await;
}

// ---- purge -------------------------------------------------------------------------

#[tokio::test]
async fn purge_returns_the_count_and_leaves_unacked_messages_alone() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_plain(&ch, "purged").await;
    for i in 1..=5 {
        publish_acked(&ch, "purged", &format!("m{i}")).await;
    }
    let holder = confirm_channel(&conn).await;
    for want in ["m1", "m2"] {
        let got = within("get", holder.basic_get("purged".into(), BasicGetOptions { no_ack: false }))
            .await
            .expect("get")
            .expect("a message");
        assert_eq!(got.delivery.data, want.as_bytes());
    }
    let purged = within("purge", ch.queue_purge("purged".into(), Default::default())).await.expect("purge");
    assert_eq!(purged, 3);
    assert_eq!(counts(&conn, "purged").await.expect("counts"), (0, 0));
    let again = within("purge", ch.queue_purge("purged".into(), Default::default())).await.expect("purge");
    assert_eq!(again, 0);

    // The two unacked messages survived the purge and come back when their channel closes.
    within("close holder", holder.close(200, "bye".into())).await.expect("close");
    wait_counts(&conn, "purged", (2, 0)).await;
    assert_eq!(drain(&ch, "purged").await, ["m1", "m2"]);

    expect_code("purge a missing queue", ch.queue_purge("nothing-here".into(), Default::default()), 404).await;
}

// ---- delete --------------------------------------------------------------------------

#[tokio::test]
async fn delete_if_unused_refuses_a_queue_with_consumers() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_plain(&ch, "in-use").await;
    let cch = confirm_channel(&conn).await;
    let _c =
        within("consume", cch.basic_consume("in-use".into(), "c".into(), Default::default(), FieldTable::default()))
            .await
            .expect("consume");
    let if_unused = QueueDeleteOptions { if_unused: true, ..Default::default() };
    expect_code("delete if-unused", ch.queue_delete("in-use".into(), if_unused), 406).await;
    assert_eq!(counts(&conn, "in-use").await.expect("still there"), (0, 1));
    within("cancel", cch.basic_cancel("c".into(), Default::default())).await.expect("cancel");
    let ch = confirm_channel(&conn).await;
    within("delete if-unused", ch.queue_delete("in-use".into(), if_unused)).await.expect("delete once unused");
    wait_gone(&conn, "in-use").await;
}

#[tokio::test]
async fn delete_if_empty_refuses_a_queue_with_messages() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_plain(&ch, "full").await;
    publish_acked(&ch, "full", "m").await;
    let if_empty = QueueDeleteOptions { if_empty: true, ..Default::default() };
    expect_code("delete if-empty", ch.queue_delete("full".into(), if_empty), 406).await;
    assert_eq!(counts(&conn, "full").await.expect("still there"), (1, 0));
    let ch = confirm_channel(&conn).await;
    assert_eq!(drain(&ch, "full").await, ["m"]);
    let count = within("delete if-empty", ch.queue_delete("full".into(), if_empty)).await.expect("delete once empty");
    assert_eq!(count, 0);
    wait_gone(&conn, "full").await;
}

#[tokio::test]
async fn delete_ok_reports_the_message_count() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_plain(&ch, "doomed").await;
    for i in 0..4 {
        publish_acked(&ch, "doomed", &format!("m{i}")).await;
    }
    within(
        "bind",
        ch.queue_bind("doomed".into(), "amq.fanout".into(), "".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("bind");
    let count = within("delete", ch.queue_delete("doomed".into(), Default::default())).await.expect("delete");
    assert_eq!(count, 4);
    expect_code("passive after delete", passive(&ch, "doomed"), 404).await;
    // Its bindings went with it: a redeclared queue of that name starts unbound and empty.
    let ch = confirm_channel(&conn).await;
    let q = declare_plain(&ch, "doomed").await;
    assert_eq!(q.message_count(), 0);
    publish_to(&ch, "amq.fanout", "", "after").await;
    assert_eq!(drain(&ch, "doomed").await, Vec::<String>::new());

    // Deleting a queue that does not exist succeeds with a count of zero.
    let count =
        within("delete missing", ch.queue_delete("never-was".into(), Default::default())).await.expect("delete");
    assert_eq!(count, 0);
}

#[tokio::test]
async fn consumer_is_cancelled_by_the_broker_when_its_queue_is_deleted() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let cch = confirm_channel(&conn).await;
    declare_plain(&cch, "vanishing").await;
    let mut consumer = within(
        "consume",
        cch.basic_consume("vanishing".into(), "watcher".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("consume");

    let admin = connect(&broker).await;
    let ach = confirm_channel(&admin).await;
    publish_acked(&ach, "vanishing", "before").await;
    let first = within("first delivery", consumer.next()).await.expect("a delivery").expect("delivery ok");
    assert_eq!(first.data, b"before");
    within("ack", first.ack(BasicAckOptions::default())).await.expect("ack");

    within("delete", ach.queue_delete("vanishing".into(), Default::default())).await.expect("delete");
    // basic.cancel from the broker ends lapin's consumer stream.
    match within("the consumer to be cancelled", consumer.next()).await {
        None => {}
        Some(other) => panic!("expected the stream to end, got {other:?}"),
    }
    // The consumer's channel is still open.
    declare_plain(&cch, "still-usable").await;
}

// ---- length limits -------------------------------------------------------------------

#[tokio::test]
async fn max_length_with_drop_head_drops_the_oldest() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let explicit =
        table(&[("x-max-length", AMQPValue::LongInt(3)), ("x-overflow", AMQPValue::LongString("drop-head".into()))]);
    // drop-head is also the default overflow behaviour.
    let implicit = table(&[("x-max-length", AMQPValue::LongInt(3))]);
    for (name, args) in [("capped", explicit), ("capped-default", implicit)] {
        declare(&ch, name, Default::default(), args).await.expect("declare");
        for i in 1..=5 {
            publish_acked(&ch, name, &format!("m{i}")).await;
        }
        assert_eq!(counts(&conn, name).await.expect("counts"), (3, 0), "{name}");
        assert_eq!(drain(&ch, name).await, ["m3", "m4", "m5"], "{name}");
    }
}

#[tokio::test]
async fn max_length_with_reject_publish_nacks_the_newest() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let args = table(&[
        ("x-max-length", AMQPValue::LongInt(2)),
        ("x-overflow", AMQPValue::LongString("reject-publish".into())),
    ]);
    declare(&ch, "strict", Default::default(), args).await.expect("declare");
    publish_acked(&ch, "strict", "m1").await;
    publish_acked(&ch, "strict", "m2").await;
    let third = publish_to(&ch, "", "strict", "m3").await;
    assert!(matches!(third, Confirmation::Nack(_)), "publish into a full reject-publish queue: {third:?}");
    assert_eq!(drain(&ch, "strict").await, ["m1", "m2"]);
}

#[tokio::test]
async fn unacked_messages_of_a_deleted_queue_do_not_reach_a_new_queue_of_that_name() {
    let broker = common::Broker::start();
    let holder = connect(&broker).await;
    let hch = confirm_channel(&holder).await;
    declare_plain(&hch, "reborn").await;
    publish_acked(&hch, "reborn", "m1").await;
    publish_acked(&hch, "reborn", "m2").await;
    let mut held = Vec::new();
    for want in ["m1", "m2"] {
        let got = within("get", hch.basic_get("reborn".into(), BasicGetOptions { no_ack: false }))
            .await
            .expect("get")
            .expect("a message");
        assert_eq!(got.delivery.data, want.as_bytes());
        held.push(got);
    }

    let admin = connect(&broker).await;
    let ach = confirm_channel(&admin).await;
    let deleted = within("delete", ach.queue_delete("reborn".into(), Default::default())).await.expect("delete");
    assert_eq!(deleted, 0, "delete-ok counts ready messages only");
    declare_plain(&ach, "reborn").await;

    // Settling deliveries of the old queue is allowed and affects nothing else.
    let second = held.pop().expect("m2");
    let first = held.pop().expect("m1");
    within("ack m1", first.delivery.ack(BasicAckOptions::default())).await.expect("ack");
    within("nack m2", second.delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }))
        .await
        .expect("nack");
    let q = passive(&hch, "reborn").await.unwrap_or_else(|e| panic!("holder's channel after settling: {e:?}"));
    assert_eq!(q.message_count(), 0, "a message of the deleted queue went into its namesake");
    assert_eq!(counts(&admin, "reborn").await.expect("counts"), (0, 0));
    assert_eq!(drain(&ach, "reborn").await, Vec::<String>::new());
    assert!(holder.status().connected(), "the holder's connection was dropped");
}

#[tokio::test]
async fn invalid_length_limit_arguments_are_refused_with_406() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    for (what, args) in [
        ("negative x-max-length", table(&[("x-max-length", AMQPValue::LongInt(-1))])),
        ("string x-max-length", table(&[("x-max-length", AMQPValue::LongString("ten".into()))])),
        ("unknown x-overflow", table(&[("x-overflow", AMQPValue::LongString("explode".into()))])),
    ] {
        let ch = confirm_channel(&conn).await;
        expect_code(what, declare(&ch, "limited", Default::default(), args), 406).await;
        assert_eq!(counts(&conn, "limited").await.err().and_then(|e| reply_code(&e)), Some(404), "{what} created it");
    }
}
