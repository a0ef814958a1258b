//! The exchange class and routing, through lapin against the real binary.

mod common;

use std::time::Duration;

use common::amqp::{
    WAIT, confirm_channel, connect, declare_queue, drain, expect_code, expect_error, reply_code, within,
};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};

async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind, options: ExchangeDeclareOptions) {
    within("exchange.declare", ch.exchange_declare(name.into(), kind, options, FieldTable::default()))
        .await
        .unwrap_or_else(|e| panic!("declare exchange '{name}': {e:?}"));
}

async fn passive_exchange(ch: &Channel, name: &str) -> lapin::Result<()> {
    let options = ExchangeDeclareOptions { passive: true, ..Default::default() };
    within(
        "passive exchange.declare",
        ch.exchange_declare(name.into(), ExchangeKind::Direct, options, FieldTable::default()),
    )
    .await
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    within("queue.bind", ch.queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), args))
        .await
        .unwrap_or_else(|e| panic!("bind '{queue}' to '{exchange}' with '{key}': {e:?}"));
}

/// Publishes and waits for the broker's confirm.
async fn publish_with(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    props: BasicProperties,
) -> lapin::Result<()> {
    let confirm = within(
        "publish",
        ch.basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), body.as_bytes(), props),
    )
    .await?;
    match within("confirm", confirm).await? {
        Confirmation::Ack(_) => Ok(()),
        other => panic!("publish to '{exchange}' with '{key}' was not acked: {other:?}"),
    }
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &str) {
    publish_with(ch, exchange, key, body, BasicProperties::default())
        .await
        .unwrap_or_else(|e| panic!("publish to '{exchange}' with '{key}': {e:?}"));
}

fn headers(entries: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), AMQPValue::LongString((*v).into()));
    }
    t
}

// ---- existence and declaration ---------------------------------------------

#[tokio::test]
async fn the_standard_exchanges_exist() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    for name in ["amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"] {
        passive_exchange(&ch, name).await.unwrap_or_else(|e| panic!("passive declare of '{name}': {e:?}"));
    }
    // The default exchange routes to the queue named by the routing key.
    declare_queue(&ch, "by-name").await;
    publish(&ch, "", "by-name", "hello").await;
    assert_eq!(drain(&ch, "by-name").await, ["hello"]);
    // Each standard exchange has its documented type: a non-passive redeclare
    // with the same type and durable=true is accepted.
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        declare_exchange(&ch, name, kind, ExchangeDeclareOptions { durable: true, ..Default::default() }).await;
    }
}

#[tokio::test]
async fn declaring_the_default_exchange_is_refused() {
    // RabbitMQ: "operation not permitted on the default exchange", even passively.
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    expect_code("passive declare of ''", passive_exchange(&ch, ""), 403).await;
}

#[tokio::test]
async fn declare_flags_are_kept_and_redeclare_must_match() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let auto_delete = ExchangeDeclareOptions { auto_delete: true, ..Default::default() };
    let internal = ExchangeDeclareOptions { internal: true, ..Default::default() };
    declare_exchange(&ch, "x.durable", ExchangeKind::Direct, durable).await;
    declare_exchange(&ch, "x.autodel", ExchangeKind::Fanout, auto_delete).await;
    declare_exchange(&ch, "x.internal", ExchangeKind::Topic, internal).await;
    // The same declaration again is a no-op.
    declare_exchange(&ch, "x.durable", ExchangeKind::Direct, durable).await;
    declare_exchange(&ch, "x.autodel", ExchangeKind::Fanout, auto_delete).await;
    declare_exchange(&ch, "x.internal", ExchangeKind::Topic, internal).await;
    for name in ["x.durable", "x.autodel", "x.internal"] {
        passive_exchange(&ch, name).await.unwrap_or_else(|e| panic!("passive declare of '{name}': {e:?}"));
    }

    let out = broker.warrenctl(&[
        "-q",
        "--no-table-headers",
        "list_exchanges",
        "name",
        "type",
        "durable",
        "auto_delete",
        "internal",
    ]);
    assert!(out.status.success(), "warrenctl failed: {}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8(out.stdout).expect("utf-8");
    for row in [
        "x.durable\tdirect\ttrue\tfalse\tfalse",
        "x.autodel\tfanout\tfalse\ttrue\tfalse",
        "x.internal\ttopic\tfalse\tfalse\ttrue",
    ] {
        assert!(listing.lines().any(|l| l == row), "no row {row:?} in:\n{listing}");
    }

    let cases: [(&str, ExchangeKind, ExchangeDeclareOptions); 4] = [
        ("x.durable", ExchangeKind::Direct, ExchangeDeclareOptions::default()),
        ("x.autodel", ExchangeKind::Fanout, ExchangeDeclareOptions::default()),
        ("x.internal", ExchangeKind::Topic, ExchangeDeclareOptions::default()),
        (
            "x.durable",
            ExchangeKind::Direct,
            ExchangeDeclareOptions { durable: true, auto_delete: true, ..Default::default() },
        ),
    ];
    for (name, kind, options) in cases {
        let ch = confirm_channel(&conn).await;
        let what = format!("redeclare '{name}' with {options:?}");
        expect_code(&what, ch.exchange_declare(name.into(), kind, options, FieldTable::default()), 406).await;
    }
}

#[tokio::test]
async fn redeclare_with_another_type_is_refused_with_406() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "typed", ExchangeKind::Direct, Default::default()).await;
    expect_code(
        "redeclare as fanout",
        ch.exchange_declare("typed".into(), ExchangeKind::Fanout, Default::default(), FieldTable::default()),
        406,
    )
    .await;
    let ch = confirm_channel(&conn).await;
    expect_code(
        "redeclare amq.direct as topic",
        ch.exchange_declare(
            "amq.direct".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        ),
        406,
    )
    .await;
    // The channel error left the exchange as it was.
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "typed", ExchangeKind::Direct, Default::default()).await;
}

#[tokio::test]
async fn passive_declare_of_a_missing_exchange_is_404() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    expect_code("passive declare", passive_exchange(&ch, "nowhere"), 404).await;
    // A channel error: the connection stays usable.
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "somewhere", ExchangeKind::Direct, Default::default()).await;
    // Passive declare does not create it.
    let ch = confirm_channel(&conn).await;
    expect_code("passive declare again", passive_exchange(&ch, "nowhere"), 404).await;
}

#[tokio::test]
async fn declaring_a_new_amq_prefixed_exchange_is_refused_with_403() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    expect_code(
        "declare amq.mine",
        ch.exchange_declare("amq.mine".into(), ExchangeKind::Direct, Default::default(), FieldTable::default()),
        403,
    )
    .await;
    let ch = confirm_channel(&conn).await;
    expect_code("passive declare amq.mine", passive_exchange(&ch, "amq.mine"), 404).await;
}

#[tokio::test]
async fn invalid_exchange_type_closes_the_connection_with_503() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    expect_code(
        "declare with type 'nonsense'",
        ch.exchange_declare(
            "odd".into(),
            ExchangeKind::Custom("nonsense".into()),
            Default::default(),
            FieldTable::default(),
        ),
        503,
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    while conn.status().connected() {
        assert!(std::time::Instant::now() < deadline, "connection still open after a 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = connect(&broker).await;
    let ch = confirm_channel(&other).await;
    expect_code("passive declare odd", passive_exchange(&ch, "odd"), 404).await;
}

// ---- deletion ----------------------------------------------------------------

#[tokio::test]
async fn delete_if_unused_refuses_a_bound_exchange() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "busy", ExchangeKind::Direct, Default::default()).await;
    declare_queue(&ch, "busy-q").await;
    bind(&ch, "busy-q", "busy", "k", FieldTable::default()).await;
    expect_code(
        "delete if-unused",
        ch.exchange_delete("busy".into(), ExchangeDeleteOptions { if_unused: true, ..Default::default() }),
        406,
    )
    .await;
    let ch = confirm_channel(&conn).await;
    passive_exchange(&ch, "busy").await.expect("still there after the refused delete");
    publish(&ch, "busy", "k", "still routed").await;
    assert_eq!(drain(&ch, "busy-q").await, ["still routed"]);

    within("delete", ch.exchange_delete("busy".into(), ExchangeDeleteOptions::default())).await.expect("delete");
    expect_code("passive declare after delete", passive_exchange(&ch, "busy"), 404).await;
    // The queue is untouched by the exchange's deletion.
    let ch = confirm_channel(&conn).await;
    within(
        "queue still exists",
        ch.queue_declare(
            "busy-q".into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue survives");
}

#[tokio::test]
async fn delete_if_unused_accepts_an_unbound_exchange() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "idle", ExchangeKind::Topic, Default::default()).await;
    within(
        "delete",
        ch.exchange_delete("idle".into(), ExchangeDeleteOptions { if_unused: true, ..Default::default() }),
    )
    .await
    .expect("delete if-unused");
    expect_code("passive after delete", passive_exchange(&ch, "idle"), 404).await;
}

#[tokio::test]
async fn deleting_a_missing_exchange_succeeds() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    within("delete", ch.exchange_delete("never-declared".into(), ExchangeDeleteOptions::default()))
        .await
        .expect("delete of a missing exchange");
    // The channel is still open.
    declare_exchange(&ch, "after", ExchangeKind::Direct, Default::default()).await;
}

#[tokio::test]
async fn deleting_a_standard_exchange_is_refused_with_403() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    expect_error(
        "delete amq.direct",
        ch.exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default()),
        403,
        "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed",
    )
    .await;
    let ch = confirm_channel(&conn).await;
    passive_exchange(&ch, "amq.direct").await.expect("amq.direct survives");
    expect_error(
        "delete the default exchange",
        ch.exchange_delete("".into(), ExchangeDeleteOptions::default()),
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    )
    .await;
}

#[tokio::test]
async fn publishing_to_a_missing_exchange_is_404() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    match publish_with(&ch, "missing", "k", "lost", BasicProperties::default()).await {
        Ok(()) => panic!("publish to a missing exchange was acked"),
        Err(e) => assert_eq!(reply_code(&e), Some(404), "{e:?}"),
    }
}

#[tokio::test]
async fn publishing_to_an_internal_exchange_is_refused_with_403() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(
        &ch,
        "inner",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions { internal: true, ..Default::default() },
    )
    .await;
    declare_queue(&ch, "inner-q").await;
    bind(&ch, "inner-q", "inner", "", FieldTable::default()).await;
    match publish_with(&ch, "inner", "", "direct to internal", BasicProperties::default()).await {
        Ok(()) => panic!("publish to an internal exchange was accepted"),
        Err(e) => assert_eq!(reply_code(&e), Some(403), "{e:?}"),
    }
    // Routing through it from another exchange is what internal exchanges are for.
    let ch = confirm_channel(&conn).await;
    assert_eq!(drain(&ch, "inner-q").await, Vec::<String>::new(), "the refused message was routed");
    declare_exchange(&ch, "front", ExchangeKind::Fanout, Default::default()).await;
    within(
        "exchange.bind",
        ch.exchange_bind("inner".into(), "front".into(), "".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("exchange.bind");
    publish(&ch, "front", "", "via front").await;
    assert_eq!(drain(&ch, "inner-q").await, ["via front"]);
}

// ---- routing -----------------------------------------------------------------

#[tokio::test]
async fn direct_routing_matches_the_key_exactly() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "logs.direct", ExchangeKind::Direct, Default::default()).await;
    for q in ["errors", "infos", "everything"] {
        declare_queue(&ch, q).await;
    }
    bind(&ch, "errors", "logs.direct", "error", FieldTable::default()).await;
    bind(&ch, "infos", "logs.direct", "info", FieldTable::default()).await;
    bind(&ch, "everything", "logs.direct", "error", FieldTable::default()).await;
    bind(&ch, "everything", "logs.direct", "info", FieldTable::default()).await;
    // A duplicate binding changes nothing.
    bind(&ch, "everything", "logs.direct", "info", FieldTable::default()).await;
    for (key, body) in [("error", "e1"), ("info", "i1"), ("warning", "w1"), ("Error", "E1"), ("error.x", "ex")] {
        publish(&ch, "logs.direct", key, body).await;
    }
    assert_eq!(drain(&ch, "errors").await, ["e1"]);
    assert_eq!(drain(&ch, "infos").await, ["i1"]);
    assert_eq!(drain(&ch, "everything").await, ["e1", "i1"]);

    // amq.direct routes the same way.
    bind(&ch, "errors", "amq.direct", "error", FieldTable::default()).await;
    publish(&ch, "amq.direct", "error", "e2").await;
    publish(&ch, "amq.direct", "info", "i2").await;
    assert_eq!(drain(&ch, "errors").await, ["e2"]);
    assert_eq!(drain(&ch, "infos").await, Vec::<String>::new());
}

#[tokio::test]
async fn fanout_routing_ignores_the_key() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "broadcast", ExchangeKind::Fanout, Default::default()).await;
    for q in ["f1", "f2", "unbound"] {
        declare_queue(&ch, q).await;
    }
    bind(&ch, "f1", "broadcast", "", FieldTable::default()).await;
    bind(&ch, "f2", "broadcast", "whatever", FieldTable::default()).await;
    publish(&ch, "broadcast", "", "a").await;
    publish(&ch, "broadcast", "some.key", "b").await;
    assert_eq!(drain(&ch, "f1").await, ["a", "b"]);
    assert_eq!(drain(&ch, "f2").await, ["a", "b"]);
    assert_eq!(drain(&ch, "unbound").await, Vec::<String>::new());

    bind(&ch, "f1", "amq.fanout", "", FieldTable::default()).await;
    publish(&ch, "amq.fanout", "x", "c").await;
    assert_eq!(drain(&ch, "f1").await, ["c"]);
}

#[tokio::test]
async fn topic_routing_with_star_and_hash() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "animals", ExchangeKind::Topic, Default::default()).await;
    for q in ["orange", "lazy", "all", "exact"] {
        declare_queue(&ch, q).await;
    }
    bind(&ch, "orange", "animals", "*.orange.*", FieldTable::default()).await;
    bind(&ch, "lazy", "animals", "*.*.rabbit", FieldTable::default()).await;
    bind(&ch, "lazy", "animals", "lazy.#", FieldTable::default()).await;
    bind(&ch, "all", "animals", "#", FieldTable::default()).await;
    bind(&ch, "exact", "animals", "quick.brown.fox", FieldTable::default()).await;
    let keys = [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "lazy.brown.fox",
        "lazy.pink.rabbit",
        "quick.brown.fox",
        "quick.orange.new.rabbit",
        "orange",
        "lazy",
    ];
    for key in keys {
        publish(&ch, "animals", key, key).await;
    }
    assert_eq!(drain(&ch, "orange").await, ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox"]);
    // lazy.pink.rabbit matches both bindings of "lazy" but arrives once.
    assert_eq!(
        drain(&ch, "lazy").await,
        ["quick.orange.rabbit", "lazy.orange.elephant", "lazy.brown.fox", "lazy.pink.rabbit", "lazy"]
    );
    assert_eq!(drain(&ch, "all").await, keys);
    assert_eq!(drain(&ch, "exact").await, ["quick.brown.fox"]);

    bind(&ch, "orange", "amq.topic", "a.*.c", FieldTable::default()).await;
    bind(&ch, "lazy", "amq.topic", "a.#.c", FieldTable::default()).await;
    for key in ["a.b.c", "a.c", "a.b.b.c", "a.b"] {
        publish(&ch, "amq.topic", key, key).await;
    }
    assert_eq!(drain(&ch, "orange").await, ["a.b.c"]);
    assert_eq!(drain(&ch, "lazy").await, ["a.b.c", "a.c", "a.b.b.c"]);
}

#[tokio::test]
async fn headers_routing_with_x_match_all_and_any() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "docs", ExchangeKind::Headers, Default::default()).await;
    for q in ["h.all", "h.any", "h.implicit"] {
        declare_queue(&ch, q).await;
    }
    bind(&ch, "h.all", "docs", "", headers(&[("x-match", "all"), ("format", "pdf"), ("type", "report")])).await;
    bind(&ch, "h.any", "docs", "", headers(&[("x-match", "any"), ("format", "pdf"), ("type", "report")])).await;
    // Without x-match, "all" is the default.
    bind(&ch, "h.implicit", "docs", "", headers(&[("format", "zip"), ("type", "log")])).await;
    let messages: [(&str, &[(&str, &str)]); 6] = [
        ("pdf-report", &[("format", "pdf"), ("type", "report")]),
        ("pdf-log", &[("format", "pdf"), ("type", "log")]),
        ("zip-report", &[("format", "zip"), ("type", "report")]),
        ("zip-log", &[("format", "zip"), ("type", "log")]),
        ("pdf-report-extra", &[("format", "pdf"), ("type", "report"), ("size", "big")]),
        ("zip-only", &[("format", "zip")]),
    ];
    for (body, hs) in messages {
        // The routing key plays no part in a headers exchange.
        publish_with(&ch, "docs", "ignored", body, BasicProperties::default().with_headers(headers(hs)))
            .await
            .expect("publish");
    }
    publish(&ch, "docs", "ignored", "no-headers").await;
    assert_eq!(drain(&ch, "h.all").await, ["pdf-report", "pdf-report-extra"]);
    assert_eq!(drain(&ch, "h.any").await, ["pdf-report", "pdf-log", "zip-report", "pdf-report-extra"]);
    assert_eq!(drain(&ch, "h.implicit").await, ["zip-log"]);

    bind(&ch, "h.any", "amq.match", "", headers(&[("x-match", "any"), ("a", "1"), ("b", "2")])).await;
    publish_with(&ch, "amq.match", "", "b-only", BasicProperties::default().with_headers(headers(&[("b", "2")])))
        .await
        .expect("publish");
    publish_with(&ch, "amq.match", "", "wrong-b", BasicProperties::default().with_headers(headers(&[("b", "3")])))
        .await
        .expect("publish");
    assert_eq!(drain(&ch, "h.any").await, ["b-only"]);
}

#[tokio::test]
async fn exchange_to_exchange_bindings_route_until_unbound() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "upstream", ExchangeKind::Direct, Default::default()).await;
    declare_exchange(&ch, "downstream", ExchangeKind::Fanout, Default::default()).await;
    declare_queue(&ch, "sink").await;
    bind(&ch, "sink", "downstream", "", FieldTable::default()).await;
    within(
        "exchange.bind",
        ch.exchange_bind(
            "downstream".into(),
            "upstream".into(),
            "go".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.bind");
    publish(&ch, "upstream", "go", "forwarded").await;
    publish(&ch, "upstream", "stop", "not forwarded").await;
    assert_eq!(drain(&ch, "sink").await, ["forwarded"]);

    // A queue reachable along two paths gets one copy.
    bind(&ch, "sink", "upstream", "go", FieldTable::default()).await;
    publish(&ch, "upstream", "go", "once").await;
    assert_eq!(drain(&ch, "sink").await, ["once"]);
    within("queue.unbind", ch.queue_unbind("sink".into(), "upstream".into(), "go".into(), FieldTable::default()))
        .await
        .expect("queue.unbind");

    within(
        "exchange.unbind",
        ch.exchange_unbind(
            "downstream".into(),
            "upstream".into(),
            "go".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.unbind");
    publish(&ch, "upstream", "go", "after unbind").await;
    assert_eq!(drain(&ch, "sink").await, Vec::<String>::new());
    // The destination exchange itself still works.
    publish(&ch, "downstream", "", "direct").await;
    assert_eq!(drain(&ch, "sink").await, ["direct"]);

    // Binding to a missing exchange is 404.
    expect_code(
        "exchange.bind to a missing destination",
        ch.exchange_bind("ghost".into(), "upstream".into(), "".into(), Default::default(), FieldTable::default()),
        404,
    )
    .await;
}

#[tokio::test]
async fn auto_delete_exchange_goes_when_its_last_binding_is_removed() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let auto = ExchangeDeclareOptions { auto_delete: true, ..Default::default() };
    declare_exchange(&ch, "fleeting", ExchangeKind::Direct, auto).await;
    // Never bound: it stays.
    passive_exchange(&ch, "fleeting").await.expect("a fresh auto-delete exchange exists");
    declare_queue(&ch, "fq1").await;
    declare_queue(&ch, "fq2").await;
    bind(&ch, "fq1", "fleeting", "a", FieldTable::default()).await;
    bind(&ch, "fq2", "fleeting", "b", FieldTable::default()).await;
    within("unbind fq1", ch.queue_unbind("fq1".into(), "fleeting".into(), "a".into(), FieldTable::default()))
        .await
        .expect("unbind");
    passive_exchange(&ch, "fleeting").await.expect("one binding left, still there");
    within("unbind fq2", ch.queue_unbind("fq2".into(), "fleeting".into(), "b".into(), FieldTable::default()))
        .await
        .expect("unbind");
    expect_code("passive after last unbind", passive_exchange(&ch, "fleeting"), 404).await;

    // Deleting the last bound queue removes the binding too.
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "fleeting2", ExchangeKind::Fanout, auto).await;
    bind(&ch, "fq1", "fleeting2", "", FieldTable::default()).await;
    within("delete fq1", ch.queue_delete("fq1".into(), QueueDeleteOptions::default())).await.expect("queue.delete");
    expect_code("passive after queue delete", passive_exchange(&ch, "fleeting2"), 404).await;

    // Removing its last exchange-to-exchange binding counts as well.
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "fleeting3", ExchangeKind::Fanout, auto).await;
    within(
        "exchange.bind",
        ch.exchange_bind("amq.fanout".into(), "fleeting3".into(), "".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("exchange.bind");
    within(
        "exchange.unbind",
        ch.exchange_unbind(
            "amq.fanout".into(),
            "fleeting3".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.unbind");
    expect_code("passive after exchange.unbind", passive_exchange(&ch, "fleeting3"), 404).await;
}

#[tokio::test]
async fn binding_a_queue_to_the_default_exchange_is_refused() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "dq").await;
    expect_code(
        "queue.bind to ''",
        ch.queue_bind("dq".into(), "".into(), "other".into(), Default::default(), FieldTable::default()),
        403,
    )
    .await;
}

#[tokio::test]
async fn invalid_type_for_an_existing_exchange_is_also_503() {
    // RabbitMQ validates the type before looking the exchange up.
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "exists", ExchangeKind::Direct, Default::default()).await;
    expect_code(
        "redeclare with type 'nonsense'",
        ch.exchange_declare(
            "exists".into(),
            ExchangeKind::Custom("nonsense".into()),
            Default::default(),
            FieldTable::default(),
        ),
        503,
    )
    .await;
}
