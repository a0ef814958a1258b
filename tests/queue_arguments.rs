//! Queue arguments as RabbitMQ 3.13 checks them (rabbit_amqqueue.erl
//! `check_declare_arguments`, rabbit_quorum_queue.erl `declare`,
//! rabbit_misc.erl `assert_args_equivalence`), the quorum queue's delivery
//! limit, and `x-expires`, through lapin against the real binary.

mod common;

use std::time::{Duration, Instant};

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Queue};

use common::amqp::{
    WAIT, assert_quiet, channel, confirm_channel, connect, consume, drain, expect_code, next, publish, publish_acked,
    publish_props, reply_code, text, within,
};
use common::amqp::{expect_error, long_string, table};

// ---- helpers -----------------------------------------------------------------

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..Default::default() }
}

async fn declare(ch: &Channel, name: &str, options: QueueDeclareOptions, args: FieldTable) -> lapin::Result<Queue> {
    within("queue.declare", ch.queue_declare(name.into(), options, args)).await
}

async fn passive(ch: &Channel, name: &str) -> lapin::Result<Queue> {
    declare(ch, name, QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default()).await
}

/// Declares `q` with these arguments on a fresh channel and expects the
/// channel to be closed with 406 and this text.
async fn expect_refused(conn: &Connection, what: &str, options: QueueDeclareOptions, args: FieldTable, text: &str) {
    let ch = channel(conn).await;
    expect_error(what, declare(&ch, "q", options, args), 406, text).await;
}

/// Asserts that no queue `name` exists (passive declare on a fresh channel: 404).
async fn assert_absent(conn: &Connection, name: &str) {
    let ch = channel(conn).await;
    expect_code(&format!("passive declare of '{name}'"), passive(&ch, name), 404).await;
}

/// Queue names, as warrenctl lists them (an out-of-band look that does not
/// count as a use of any queue).
fn queue_names(broker: &common::Broker) -> Vec<String> {
    let out = broker.warrenctl(&["-q", "--no-table-headers", "list_queues", "name"]);
    assert!(out.status.success(), "warrenctl list_queues: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").lines().map(str::to_string).collect()
}

/// Polls warrenctl until queue `name` is no longer listed.
async fn wait_unlisted(broker: &common::Broker, name: &str) {
    let deadline = Instant::now() + WAIT;
    while queue_names(broker).iter().any(|n| n == name) {
        assert!(Instant::now() < deadline, "queue '{name}' still listed after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn int(v: &AMQPValue) -> Option<i64> {
    match *v {
        AMQPValue::ShortShortInt(n) => Some(n.into()),
        AMQPValue::ShortShortUInt(n) => Some(n.into()),
        AMQPValue::ShortInt(n) => Some(n.into()),
        AMQPValue::ShortUInt(n) => Some(n.into()),
        AMQPValue::LongInt(n) => Some(n.into()),
        AMQPValue::LongUInt(n) => Some(n.into()),
        AMQPValue::LongLongInt(n) => Some(n),
        _ => None,
    }
}

fn string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn header<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref().and_then(|h| h.inner().get(key))
}

/// The `x-delivery-count` header of a delivery, if it has one.
fn delivery_count(props: &BasicProperties) -> Option<i64> {
    header(props, "x-delivery-count").map(|v| int(v).unwrap_or_else(|| panic!("x-delivery-count {v:?}")))
}

// ---- x-queue-type -------------------------------------------------------------------

#[tokio::test]
async fn classic_and_quorum_queue_types_are_accepted_others_refused() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "classic.q", QueueDeclareOptions::default(), table(&[("x-queue-type", long_string("classic"))]))
        .await
        .expect("classic queue");
    declare(&ch, "quorum.q", durable(), table(&[("x-queue-type", long_string("quorum"))])).await.expect("quorum queue");
    for name in ["classic.q", "quorum.q"] {
        publish_acked(&ch, name, name).await;
        assert_eq!(drain(&ch, name).await, [name], "{name} serves messages");
    }

    expect_refused(
        &conn,
        "x-queue-type fancy",
        durable(),
        table(&[("x-queue-type", long_string("fancy"))]),
        "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 'q' in vhost '/': \"unsupported queue type 'fancy'\"",
    )
    .await;
    expect_refused(
        &conn,
        "x-queue-type as a number",
        durable(),
        table(&[("x-queue-type", AMQPValue::LongInt(1))]),
        "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 'q' in vhost '/': {unacceptable_type,signedint}",
    )
    .await;
    assert_absent(&conn, "q").await;
}

// ---- ill-typed and out-of-range values ----------------------------------------------

#[tokio::test]
async fn ill_typed_and_out_of_range_arguments_are_refused_with_rabbitmqs_texts() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let prefix = "PRECONDITION_FAILED - invalid arg";
    let cases: Vec<(&str, FieldTable, String)> = vec![
        (
            "x-message-ttl as a string",
            table(&[("x-message-ttl", long_string("1000"))]),
            format!("{prefix} 'x-message-ttl' for queue 'q' in vhost '/': \"expected integer, got longstr\""),
        ),
        (
            "negative x-max-length",
            table(&[("x-max-length", AMQPValue::LongInt(-1))]),
            format!("{prefix} 'x-max-length' for queue 'q' in vhost '/': {{value_negative,-1}}"),
        ),
        (
            "x-max-priority 256",
            table(&[("x-max-priority", AMQPValue::LongInt(256))]),
            format!("{prefix} 'x-max-priority' for queue 'q' in vhost '/': {{max_value_exceeded,256}}"),
        ),
        (
            "x-expires 0",
            table(&[("x-expires", AMQPValue::LongInt(0))]),
            format!("{prefix} 'x-expires' for queue 'q' in vhost '/': {{value_zero,0}}"),
        ),
        (
            "x-overflow explode",
            table(&[("x-overflow", long_string("explode"))]),
            format!("{prefix} 'x-overflow' for queue 'q' in vhost '/': invalid_overflow"),
        ),
        (
            "x-dead-letter-routing-key without x-dead-letter-exchange",
            table(&[("x-dead-letter-routing-key", long_string("dead"))]),
            format!("{prefix} 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined"),
        ),
    ];
    for (what, args, expected) in cases {
        expect_refused(&conn, what, QueueDeclareOptions::default(), args, &expected).await;
        assert_absent(&conn, "q").await;
    }
    // In range, the same arguments are fine.
    let ch = confirm_channel(&conn).await;
    let good = table(&[
        ("x-message-ttl", AMQPValue::LongInt(60_000)),
        ("x-max-length", AMQPValue::LongInt(0)),
        ("x-max-priority", AMQPValue::LongInt(255)),
        ("x-expires", AMQPValue::LongInt(60_000)),
        ("x-overflow", long_string("reject-publish")),
        ("x-dead-letter-exchange", long_string("")),
        ("x-dead-letter-routing-key", long_string("dead")),
    ]);
    declare(&ch, "q", QueueDeclareOptions::default(), good).await.expect("valid arguments");
}

#[tokio::test]
async fn arguments_rabbitmq_accepts_and_ignores_are_accepted() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let args = table(&[
        ("x-queue-mode", long_string("lazy")),
        ("x-queue-master-locator", long_string("min-masters")),
        ("x-queue-version", AMQPValue::LongInt(2)),
        ("x-foo", long_string("bar")),
    ]);
    declare(&ch, "ignored", durable(), args.clone()).await.expect("declare with ignorable arguments");
    // Redeclaring with the same arguments is equivalent.
    declare(&ch, "ignored", durable(), args).await.expect("redeclare");
    publish_acked(&ch, "ignored", "works").await;
    assert_eq!(drain(&ch, "ignored").await, ["works"]);
}

#[tokio::test]
async fn an_argument_of_another_queue_type_is_refused() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    expect_refused(
        &conn,
        "x-max-priority on a quorum queue",
        durable(),
        table(&[("x-queue-type", long_string("quorum")), ("x-max-priority", AMQPValue::LongInt(10))]),
        "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue",
    )
    .await;
    expect_refused(
        &conn,
        "x-delivery-limit on a classic queue",
        durable(),
        table(&[("x-delivery-limit", AMQPValue::LongInt(5))]),
        "PRECONDITION_FAILED - invalid arg 'x-delivery-limit' for queue 'q' in vhost '/' of queue type rabbit_classic_queue",
    )
    .await;
    assert_absent(&conn, "q").await;
}

#[tokio::test]
async fn quorum_queues_must_be_durable_shared_and_kept() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let quorum = || table(&[("x-queue-type", long_string("quorum"))]);
    expect_refused(
        &conn,
        "non-durable quorum queue",
        QueueDeclareOptions::default(),
        quorum(),
        "PRECONDITION_FAILED - invalid property 'non-durable' for queue 'q' in vhost '/'",
    )
    .await;
    expect_refused(
        &conn,
        "exclusive quorum queue",
        QueueDeclareOptions { durable: true, exclusive: true, ..Default::default() },
        quorum(),
        "PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue 'q' in vhost '/'",
    )
    .await;
    expect_refused(
        &conn,
        "auto-delete quorum queue",
        QueueDeclareOptions { durable: true, auto_delete: true, ..Default::default() },
        quorum(),
        "PRECONDITION_FAILED - invalid property 'auto-delete' for queue 'q' in vhost '/'",
    )
    .await;
    assert_absent(&conn, "q").await;
}

#[tokio::test]
async fn basic_get_on_a_single_active_consumer_quorum_queue_is_refused() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let args =
        table(&[("x-queue-type", long_string("quorum")), ("x-single-active-consumer", AMQPValue::Boolean(true))]);
    declare(&ch, "sac", durable(), args).await.expect("declare");
    expect_error(
        "basic.get",
        ch.basic_get("sac".into(), BasicGetOptions::default()),
        405,
        "RESOURCE_LOCKED - cannot obtain access to locked queue 'sac' in vhost '/'. basic.get operations are not supported by quorum queues with single active consumer",
    )
    .await;
}

// ---- equivalence ---------------------------------------------------------------------

#[tokio::test]
async fn redeclare_adding_or_dropping_an_argument_is_inequivalent() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let ten = table(&[("x-max-length", AMQPValue::LongInt(10))]);
    declare(&ch, "q", QueueDeclareOptions::default(), ten.clone()).await.expect("declare");
    // The same value in another integer width is the same argument.
    declare(&ch, "q", QueueDeclareOptions::default(), table(&[("x-max-length", AMQPValue::LongLongInt(10))]))
        .await
        .expect("redeclare with a 64-bit 10");

    let ch = channel(&conn).await;
    expect_error(
        "redeclare without x-max-length",
        declare(&ch, "q", QueueDeclareOptions::default(), FieldTable::default()),
        406,
        "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received none but current is the value '10' of type 'signedint'",
    )
    .await;
    let ch = channel(&conn).await;
    let mut more = ten.clone();
    more.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
    expect_error(
        "redeclare adding x-message-ttl",
        declare(&ch, "q", QueueDeclareOptions::default(), more),
        406,
        "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received the value '1000' of type 'signedint' but current is none",
    )
    .await;
    // The queue is unchanged and still takes its original declaration.
    let ch = confirm_channel(&conn).await;
    declare(&ch, "q", QueueDeclareOptions::default(), ten).await.expect("redeclare as declared");
}

/// rabbit_misc:assert_args_equivalence1 passes the bare values to
/// equivalence_fail when both sides are present, so the text names them
/// without their types.
#[tokio::test]
async fn redeclare_with_another_value_names_both_values_as_rabbitmq_does() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "q", QueueDeclareOptions::default(), table(&[("x-max-length", AMQPValue::LongInt(10))]))
        .await
        .expect("declare");
    let ch = channel(&conn).await;
    expect_error(
        "redeclare with x-max-length 20",
        declare(&ch, "q", QueueDeclareOptions::default(), table(&[("x-max-length", AMQPValue::LongInt(20))])),
        406,
        "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received '20' but current is '10'",
    )
    .await;
}

// ---- quorum delivery limit ----------------------------------------------------------

#[tokio::test]
async fn quorum_delivery_limit_dead_letters_with_reason_delivery_limit() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "dlq", durable(), FieldTable::default()).await.expect("declare dlq");
    let args = table(&[
        ("x-queue-type", long_string("quorum")),
        ("x-delivery-limit", AMQPValue::LongInt(2)),
        ("x-dead-letter-exchange", long_string("")),
        ("x-dead-letter-routing-key", long_string("dlq")),
    ]);
    declare(&ch, "q", durable(), args).await.expect("declare quorum queue");
    publish_acked(&ch, "q", "poison").await;

    let cch = channel(&conn).await;
    within("qos", cch.basic_qos(1, BasicQosOptions::default())).await.expect("qos");
    let mut consumer = consume(&cch, "q", "c", false).await;
    // Delivered three times: the first carries no count, the redeliveries
    // count the earlier ones; the third return exceeds the limit of 2.
    for expected in [None, Some(1), Some(2)] {
        let d = next(&mut consumer).await;
        assert_eq!(text(&d), "poison");
        assert_eq!(delivery_count(&d.properties), expected, "x-delivery-count");
        assert_eq!(d.redelivered, expected.is_some(), "redelivered flag");
        within("nack", d.nack(BasicNackOptions { requeue: true, multiple: false })).await.expect("nack");
    }
    let dch = channel(&conn).await;
    let mut dead = consume(&dch, "dlq", "d", true).await;
    let d = next(&mut dead).await;
    assert_eq!(text(&d), "poison");
    let deaths = match header(&d.properties, "x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        other => panic!("x-death header: {other:?}"),
    };
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    let AMQPValue::FieldTable(death) = &deaths[0] else { panic!("x-death entry {:?}", deaths[0]) };
    let field = |k: &str| death.inner().get(k).unwrap_or_else(|| panic!("x-death lacks {k}: {death:?}"));
    assert_eq!(string(field("reason")).as_deref(), Some("delivery_limit"));
    assert_eq!(string(field("queue")).as_deref(), Some("q"));
    assert_eq!(int(field("count")), Some(1));
    // It left the quorum queue for good.
    assert_quiet(&mut consumer, "the dead-lettered message").await;
    assert_eq!(passive(&ch, "q").await.expect("passive").message_count(), 0);
}

#[tokio::test]
async fn quorum_default_delivery_limit_is_20_then_the_message_is_dropped() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "q", durable(), table(&[("x-queue-type", long_string("quorum"))])).await.expect("declare");
    publish_acked(&ch, "q", "poison").await;
    for returned in 0..=20 {
        let m = within("basic.get", ch.basic_get("q".into(), BasicGetOptions { no_ack: false }))
            .await
            .expect("basic.get")
            .unwrap_or_else(|| panic!("message gone after {returned} returns"));
        let expected = (returned > 0).then_some(returned);
        assert_eq!(delivery_count(&m.delivery.properties), expected, "after {returned} returns");
        within("nack", m.delivery.nack(BasicNackOptions { requeue: true, multiple: false })).await.expect("nack");
    }
    // The 21st return went past the limit: with no dead-letter exchange
    // the message is dropped.
    let got = within("basic.get", ch.basic_get("q".into(), BasicGetOptions { no_ack: true })).await.expect("get");
    assert!(got.is_none(), "still there: {got:?}");
    assert_eq!(passive(&ch, "q").await.expect("passive").message_count(), 0);
    // The queue keeps working.
    publish_acked(&ch, "q", "next").await;
    assert_eq!(drain(&ch, "q").await, ["next"]);
}

// ---- x-expires ------------------------------------------------------------------------

#[tokio::test]
async fn an_unused_queue_with_x_expires_is_deleted_one_with_a_consumer_stays() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let expires = || table(&[("x-expires", AMQPValue::LongInt(300))]);
    // The consumed one first: it is due before the other.
    declare(&ch, "consumed", QueueDeclareOptions::default(), expires()).await.expect("declare consumed");
    let cch = channel(&conn).await;
    let _consumer = consume(&cch, "consumed", "c", true).await;
    declare(&ch, "unused", QueueDeclareOptions::default(), expires()).await.expect("declare unused");
    publish_acked(&ch, "unused", "lost with its queue").await;

    wait_unlisted(&broker, "unused").await;
    assert_absent(&conn, "unused").await;
    // Well past its own expiry, the consumed queue is still there.
    let watch_until = Instant::now() + Duration::from_millis(700);
    while Instant::now() < watch_until {
        assert!(queue_names(&broker).iter().any(|n| n == "consumed"), "a queue with a consumer expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once its consumer goes, it is unused and expires in turn.
    within("cancel", cch.basic_cancel("c".into(), BasicCancelOptions::default())).await.expect("cancel");
    wait_unlisted(&broker, "consumed").await;
    assert_absent(&conn, "consumed").await;
}

/// RabbitMQ counts a queue.declare, passive ones included, as a use that
/// renews the `x-expires` lease: the channel calls rabbit_amqqueue:stat
/// (rabbit_channel.erl, `maybe_stat`), whose handler in
/// rabbit_amqqueue_process.erl restarts the expiry timer
/// (`handle_call(stat, ...)` -> `ensure_expiry_timer`).
#[tokio::test]
async fn a_passive_declare_renews_the_x_expires_lease() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "leased", QueueDeclareOptions::default(), table(&[("x-expires", AMQPValue::LongInt(800))]))
        .await
        .expect("declare");
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2400) {
        let probe = channel(&conn).await;
        if let Err(e) = passive(&probe, "leased").await {
            panic!(
                "queue expired {:?} after its declare although passively declared every 100 ms: {e:?}",
                started.elapsed()
            );
        }
        let _ = within("channel.close", probe.close(200, "ok".into())).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Left alone, it goes.
    wait_unlisted(&broker, "leased").await;
}

#[tokio::test]
async fn a_quorum_queue_keeps_even_transient_messages_across_kill_9() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let dir = scratch.path().join("data");
    let mut broker = common::Broker::start_in(&dir, &[]);
    {
        let conn = connect(&broker).await;
        let ch = confirm_channel(&conn).await;
        let quorum = table(&[("x-queue-type", long_string("quorum"))]);
        declare(&ch, "qq", durable(), quorum).await.expect("declare quorum");
        declare(&ch, "classic", durable(), FieldTable::default()).await.expect("declare classic");
        for queue in ["qq", "classic"] {
            // delivery_mode 1: transient.
            publish_props(&ch, queue, b"transient", BasicProperties::default().with_delivery_mode(1)).await;
        }
        // A confirmed persistent message after them: the log up to here is durable.
        publish_props(&ch, "classic", b"marker", BasicProperties::default().with_delivery_mode(2)).await;
    }
    broker.kill();
    let broker = common::Broker::start_in(&dir, &[]);
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    assert_eq!(drain(&ch, "qq").await, ["transient"], "a quorum queue keeps every message it took");
    assert_eq!(drain(&ch, "classic").await, ["marker"], "a classic queue loses transient messages");
}

#[tokio::test]
async fn a_durable_queue_with_x_expires_survives_a_restart_only_until_its_expiry() {
    let mut broker = common::Broker::start();
    {
        let conn = connect(&broker).await;
        let ch = confirm_channel(&conn).await;
        declare(&ch, "exp.durable", durable(), table(&[("x-expires", AMQPValue::LongInt(3000))]))
            .await
            .expect("declare exp.durable");
        declare(&ch, "kept", durable(), FieldTable::default()).await.expect("declare kept");
    }
    broker.kill();
    let mut restarted = common::Broker::start_in(&broker.data_dir, &[]);
    let names = queue_names(&restarted);
    assert!(names.iter().any(|n| n == "exp.durable"), "the durable queue did not survive the restart: {names:?}");
    wait_unlisted(&restarted, "exp.durable").await;
    let conn = connect(&restarted).await;
    assert_absent(&conn, "exp.durable").await;
    let ch = confirm_channel(&conn).await;
    passive(&ch, "kept").await.expect("the queue without x-expires is still there");
    drop(conn);

    // Its expiry was logged: it does not come back with the next restart.
    restarted.kill();
    let again = common::Broker::start_in(&broker.data_dir, &[]);
    let names = queue_names(&again);
    assert!(!names.iter().any(|n| n == "exp.durable"), "the expired queue came back: {names:?}");
    assert!(names.iter().any(|n| n == "kept"), "{names:?}");
}

#[tokio::test]
async fn basic_get_counts_as_a_use_of_an_expiring_queue() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "polled", QueueDeclareOptions::default(), table(&[("x-expires", AMQPValue::LongInt(600))]))
        .await
        .expect("declare");
    publish(&ch, "polled", "m").await;
    // basic.get every 100 ms keeps it for well past its x-expires.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        within("basic.get", ch.basic_get("polled".into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap_or_else(|e| panic!("queue gone {:?} in although polled: {e:?}", started.elapsed()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_unlisted(&broker, "polled").await;
    let ch = channel(&conn).await;
    match passive(&ch, "polled").await {
        Err(e) => assert_eq!(reply_code(&e), Some(404), "{e:?}"),
        Ok(q) => panic!("queue still there: {q:?}"),
    }
}
