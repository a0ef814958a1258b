//! RabbitMQ's routing extensions through lapin against the real binary:
//! alternate exchanges, sender-selected distribution (CC and BCC), the
//! validated user-id property, direct reply-to, and the `-with-x` header
//! matching modes. Texts as in RabbitMQ 3.13 (rabbit_channel.erl,
//! rabbit_exchange_type_headers.erl).

mod common;

use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};

use common::amqp::{
    assert_quiet, channel, confirm_channel, connect, consume, declare_queue, drain, next, publish_acked, text, within,
};
use common::amqp::{expect_error, long_string, table};

// ---- helpers -----------------------------------------------------------------

fn strings(items: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(items.iter().map(|s| long_string(s)).collect::<Vec<_>>()))
}

async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind, args: FieldTable) {
    within("exchange.declare", ch.exchange_declare(name.into(), kind, ExchangeDeclareOptions::default(), args))
        .await
        .unwrap_or_else(|e| panic!("declare exchange '{name}': {e:?}"));
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    within("queue.bind", ch.queue_bind(queue.into(), exchange.into(), key.into(), QueueBindOptions::default(), args))
        .await
        .unwrap_or_else(|e| panic!("bind '{queue}' to '{exchange}': {e:?}"));
}

/// Publishes (mandatory or not) and returns the broker's confirmation,
/// which carries a basic.return that came before it.
async fn publish_with(
    ch: &Channel,
    exchange: &str,
    key: &str,
    mandatory: bool,
    body: &str,
    props: BasicProperties,
) -> lapin::Result<Confirmation> {
    let opts = BasicPublishOptions { mandatory, ..Default::default() };
    within("publish", async {
        ch.basic_publish(exchange.into(), key.into(), opts, body.as_bytes(), props).await?.await
    })
    .await
}

fn alternate(ae: &str) -> FieldTable {
    table(&[("alternate-exchange", long_string(ae))])
}

fn header<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref().and_then(|h| h.inner().get(key))
}

// ---- alternate exchanges ----------------------------------------------------------

#[tokio::test]
async fn unroutable_messages_go_to_the_alternate_exchange_and_are_not_returned() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "ae", ExchangeKind::Fanout, FieldTable::default()).await;
    declare_queue(&ch, "unrouted").await;
    bind(&ch, "unrouted", "ae", "", FieldTable::default()).await;
    declare_exchange(&ch, "main", ExchangeKind::Direct, alternate("ae")).await;
    declare_queue(&ch, "routed").await;
    bind(&ch, "routed", "main", "known", FieldTable::default()).await;
    declare_exchange(&ch, "no-ae", ExchangeKind::Direct, FieldTable::default()).await;

    let routed = publish_with(&ch, "main", "known", true, "to routed", BasicProperties::default()).await;
    assert_eq!(routed.expect("publish"), Confirmation::Ack(None));
    let via_ae = publish_with(&ch, "main", "unknown", true, "to the AE", BasicProperties::default()).await;
    assert_eq!(via_ae.expect("publish"), Confirmation::Ack(None), "a message the AE routed is not returned");
    assert_eq!(drain(&ch, "routed").await, ["to routed"], "a routable message does not go to the AE");
    assert_eq!(drain(&ch, "unrouted").await, ["to the AE"]);

    // Without an alternate exchange the same publish comes back.
    match publish_with(&ch, "no-ae", "unknown", true, "returned", BasicProperties::default()).await.expect("publish") {
        Confirmation::Ack(Some(r)) => assert_eq!((r.reply_code, r.reply_text.as_str()), (312, "NO_ROUTE")),
        other => panic!("expected an ack with a basic.return, got {other:?}"),
    }
}

#[tokio::test]
async fn alternate_exchanges_chain_and_a_cycle_ends_unroutable() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "x3", ExchangeKind::Fanout, FieldTable::default()).await;
    declare_queue(&ch, "end").await;
    bind(&ch, "end", "x3", "", FieldTable::default()).await;
    declare_exchange(&ch, "x2", ExchangeKind::Direct, alternate("x3")).await;
    declare_exchange(&ch, "x1", ExchangeKind::Topic, alternate("x2")).await;
    let confirmation = publish_with(&ch, "x1", "a.b", true, "down the chain", BasicProperties::default()).await;
    assert_eq!(confirmation.expect("publish"), Confirmation::Ack(None));
    assert_eq!(drain(&ch, "end").await, ["down the chain"]);

    // Two exchanges naming each other, neither with a binding.
    declare_exchange(&ch, "ping", ExchangeKind::Direct, alternate("pong")).await;
    declare_exchange(&ch, "pong", ExchangeKind::Direct, alternate("ping")).await;
    match publish_with(&ch, "ping", "k", true, "lost", BasicProperties::default()).await.expect("publish") {
        Confirmation::Ack(Some(r)) => assert_eq!(r.reply_code, 312),
        other => panic!("expected an ack with a basic.return, got {other:?}"),
    }
}

// ---- CC and BCC ----------------------------------------------------------------------

#[tokio::test]
async fn cc_and_bcc_headers_route_to_their_keys_and_bcc_is_stripped() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "dx", ExchangeKind::Direct, FieldTable::default()).await;
    for q in ["qa", "qb", "qc", "qd"] {
        declare_queue(&ch, q).await;
        bind(&ch, q, "dx", &q[1..], FieldTable::default()).await;
    }
    let headers = table(&[("CC", strings(&["b", "a"])), ("BCC", strings(&["c"])), ("other", long_string("kept"))]);
    let props = BasicProperties::default().with_headers(headers);
    assert_eq!(publish_with(&ch, "dx", "a", true, "hello", props).await.expect("publish"), Confirmation::Ack(None));

    for q in ["qa", "qb", "qc"] {
        let m = within("basic.get", ch.basic_get(q.into(), BasicGetOptions { no_ack: true }))
            .await
            .expect("basic.get")
            .unwrap_or_else(|| panic!("'{q}' got no copy"));
        assert_eq!(text(&m.delivery), "hello");
        let props = &m.delivery.properties;
        assert_eq!(header(props, "CC"), Some(&strings(&["b", "a"])), "{q}: CC stays");
        assert_eq!(header(props, "BCC"), None, "{q}: BCC is stripped");
        assert_eq!(header(props, "other"), Some(&long_string("kept")), "{q}");
        // One copy per queue, even when a key repeats the routing key.
        assert_eq!(drain(&ch, q).await, Vec::<String>::new(), "{q}: more than one copy");
    }
    assert_eq!(drain(&ch, "qd").await, Vec::<String>::new(), "a queue no key named got a copy");

    // A message routed only by its BCC is not unroutable.
    let props = BasicProperties::default().with_headers(table(&[("BCC", strings(&["d"]))]));
    assert_eq!(
        publish_with(&ch, "dx", "nowhere", true, "bcc only", props).await.expect("publish"),
        Confirmation::Ack(None)
    );
    assert_eq!(drain(&ch, "qd").await, ["bcc only"]);
}

// ---- user-id -----------------------------------------------------------------------------

#[tokio::test]
async fn the_user_id_property_must_name_the_authenticated_user() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "q").await;
    let own = BasicProperties::default().with_user_id(ShortString::from("guest"));
    assert_eq!(publish_with(&ch, "", "q", false, "mine", own).await.expect("publish"), Confirmation::Ack(None));
    let got = within("basic.get", ch.basic_get("q".into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("get")
        .expect("the message");
    assert_eq!(got.delivery.properties.user_id().as_ref().map(|u| u.as_str()), Some("guest"));

    let other = BasicProperties::default().with_user_id(ShortString::from("bob"));
    expect_error(
        "publish as bob",
        publish_with(&ch, "", "q", false, "forged", other),
        406,
        "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'guest'",
    )
    .await;
    let ch = confirm_channel(&conn).await;
    assert_eq!(drain(&ch, "q").await, Vec::<String>::new(), "the forged message was enqueued");
}

// ---- direct reply-to -------------------------------------------------------------------

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

#[tokio::test]
async fn direct_reply_to_rpc_round_trip() {
    let broker = common::Broker::start();
    let server_conn = connect(&broker).await;
    let sch = confirm_channel(&server_conn).await;
    declare_queue(&sch, "rpc").await;
    let mut requests = consume(&sch, "rpc", "server", true).await;

    let client_conn = connect(&broker).await;
    let cch = confirm_channel(&client_conn).await;
    let mut replies = consume(&cch, REPLY_TO, "replies", true).await;
    for i in 0..3 {
        let request = BasicProperties::default()
            .with_reply_to(ShortString::from(REPLY_TO))
            .with_correlation_id(ShortString::from(format!("id-{i}")));
        let sent = publish_with(&cch, "", "rpc", true, &format!("ping {i}"), request).await.expect("request");
        assert_eq!(sent, Confirmation::Ack(None));

        let req = next(&mut requests).await;
        assert_eq!(text(&req), format!("ping {i}"));
        let reply_to = req.properties.reply_to().as_ref().expect("reply_to").as_str().to_string();
        assert!(
            reply_to.starts_with(&format!("{REPLY_TO}.")) && reply_to.len() > REPLY_TO.len() + 1,
            "reply_to as the server sees it: {reply_to:?}"
        );
        let correlation = req.properties.correlation_id().clone().expect("correlation_id");
        let reply = BasicProperties::default().with_correlation_id(correlation);
        let answered = publish_with(&sch, "", &reply_to, true, &format!("pong {i}"), reply).await.expect("reply");
        assert_eq!(answered, Confirmation::Ack(None), "a reply to a live requester is routed");

        let got = next(&mut replies).await;
        assert_eq!(text(&got), format!("pong {i}"));
        assert_eq!(got.properties.correlation_id().as_ref().map(|c| c.as_str()), Some(format!("id-{i}").as_str()));
    }
    assert_quiet(&mut replies, "replies").await;
}

#[tokio::test]
async fn the_reply_consumer_cannot_acknowledge() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let opts = BasicConsumeOptions { no_ack: false, ..Default::default() };
    expect_error(
        "consume amq.rabbitmq.reply-to with acks",
        ch.basic_consume(REPLY_TO.into(), "replies".into(), opts, FieldTable::default()),
        406,
        "PRECONDITION_FAILED - reply consumer cannot acknowledge",
    )
    .await;
}

#[tokio::test]
async fn a_request_with_direct_reply_to_needs_a_reply_consumer() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "rpc").await;
    let request = BasicProperties::default().with_reply_to(ShortString::from(REPLY_TO));
    expect_error(
        "request without a reply consumer",
        publish_with(&ch, "", "rpc", false, "ping", request),
        406,
        "PRECONDITION_FAILED - fast reply consumer does not exist",
    )
    .await;
    let ch = confirm_channel(&conn).await;
    assert_eq!(drain(&ch, "rpc").await, Vec::<String>::new(), "the refused request was enqueued");
}

#[tokio::test]
async fn a_passive_declare_of_the_reply_to_pseudo_queue_succeeds() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let opts = QueueDeclareOptions { passive: true, ..Default::default() };
    let q = within("passive declare", ch.queue_declare(REPLY_TO.into(), opts, FieldTable::default()))
        .await
        .expect("passive declare of amq.rabbitmq.reply-to");
    assert_eq!(q.name().as_str(), REPLY_TO);
    assert_eq!(q.message_count(), 0);
}

/// rabbit_channel.erl: every queue.declare of a name starting with
/// `amq.rabbitmq.reply-to` is effectively passive; the pseudo-queue and a
/// reply address whose channel still consumes its replies exist "with one
/// consumer" (`{ok, QueueName, 0, 1}`), a reply address whose requester is
/// gone is NOT_FOUND. RPC servers use this to skip work nobody waits for.
#[tokio::test]
async fn declaring_a_reply_address_tells_whether_its_requester_is_still_there() {
    let broker = common::Broker::start();
    let server_conn = connect(&broker).await;
    let sch = confirm_channel(&server_conn).await;
    declare_queue(&sch, "rpc").await;
    let mut requests = consume(&sch, "rpc", "server", true).await;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };

    let q = within("declare", sch.queue_declare(REPLY_TO.into(), passive, FieldTable::default()))
        .await
        .expect("passive declare of the pseudo-queue");
    assert_eq!((q.message_count(), q.consumer_count()), (0, 1), "the pseudo-queue");

    let client_conn = connect(&broker).await;
    let cch = confirm_channel(&client_conn).await;
    let _replies = consume(&cch, REPLY_TO, "replies", true).await;
    let request = BasicProperties::default().with_reply_to(ShortString::from(REPLY_TO));
    publish_with(&cch, "", "rpc", false, "ping", request).await.expect("request");
    let req = next(&mut requests).await;
    let reply_to = req.properties.reply_to().as_ref().expect("reply_to").as_str().to_string();

    let q = within("declare", sch.queue_declare(reply_to.as_str().into(), passive, FieldTable::default()))
        .await
        .unwrap_or_else(|e| panic!("passive declare of the live reply address {reply_to}: {e:?}"));
    assert_eq!((q.message_count(), q.consumer_count()), (0, 1), "a live reply address");

    within("close", cch.close(200, "done".into())).await.expect("close the requester's channel");
    let ch = channel(&server_conn).await;
    expect_error(
        "passive declare of a dead reply address",
        ch.queue_declare(reply_to.as_str().into(), passive, FieldTable::default()),
        404,
        &format!("NOT_FOUND - no queue '{reply_to}' in vhost '/'"),
    )
    .await;
}

// ---- headers exchange: x-match with x- headers -----------------------------------------

#[tokio::test]
async fn headers_exchange_matches_x_headers_only_in_the_with_x_modes() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "hx", ExchangeKind::Headers, FieldTable::default()).await;
    let bindings = [
        ("all", table(&[("x-match", long_string("all")), ("x-tag", long_string("t")), ("kind", long_string("k"))])),
        (
            "all-with-x",
            table(&[("x-match", long_string("all-with-x")), ("x-tag", long_string("t")), ("kind", long_string("k"))]),
        ),
        // Only an x- key: plain `any` has nothing it may match.
        ("any", table(&[("x-match", long_string("any")), ("x-tag", long_string("t"))])),
        (
            "any-with-x",
            table(&[("x-match", long_string("any-with-x")), ("x-tag", long_string("t")), ("kind", long_string("zzz"))]),
        ),
    ];
    for (q, args) in &bindings {
        declare_queue(&ch, q).await;
        bind(&ch, q, "hx", "", args.clone()).await;
    }
    let messages = [
        ("no-tag", table(&[("kind", long_string("k"))])),
        ("tagged", table(&[("kind", long_string("k")), ("x-tag", long_string("t"))])),
        ("mistagged", table(&[("kind", long_string("k")), ("x-tag", long_string("other"))])),
    ];
    for (body, headers) in &messages {
        let props = BasicProperties::default().with_headers(headers.clone());
        publish_with(&ch, "hx", "", false, body, props).await.expect("publish");
    }
    assert_eq!(drain(&ch, "all").await, ["no-tag", "tagged", "mistagged"], "all ignores x- keys");
    assert_eq!(drain(&ch, "all-with-x").await, ["tagged"]);
    assert_eq!(drain(&ch, "any").await, Vec::<String>::new(), "any with only x- keys matches nothing");
    assert_eq!(drain(&ch, "any-with-x").await, ["tagged"]);
}

/// rabbit_exchange_type_headers.erl `validate_binding`: an x-match other
/// than all, any, all-with-x or any-with-x is refused, which
/// rabbit_channel.erl `binding_action` turns into 406.
#[tokio::test]
async fn an_unknown_x_match_is_refused_at_bind() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "hx", ExchangeKind::Headers, FieldTable::default()).await;
    declare_queue(&ch, "q").await;
    let ch = channel(&conn).await;
    let args = table(&[("x-match", long_string("bogus")), ("a", long_string("b"))]);
    expect_error(
        "bind with x-match bogus",
        ch.queue_bind("q".into(), "hx".into(), "".into(), QueueBindOptions::default(), args),
        406,
        "PRECONDITION_FAILED - Invalid x-match field value <<\"bogus\">>; expected all, any, all-with-x, or any-with-x",
    )
    .await;
    let ch = confirm_channel(&conn).await;
    publish_acked(&ch, "q", "still usable").await;
}
