//! Details where clients depend on RabbitMQ 3.13's exact behaviour:
//! channel_max counts open channels (rabbit_reader.erl `create_channel`),
//! the exclusive flag of a redeclare (rabbit_amqqueue.erl
//! `check_exclusive_access`, strict), the order of queue.delete-ok and the
//! basic.cancel of the deleting channel's own consumer, unbinding what is
//! already gone (rabbit_db_binding.erl), and reject-publish confirms.

mod common;

use std::time::Duration;

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};

use common::amqp::{amqp_error, table};
use common::amqp::{channel, confirm_channel, connect, drain, raw_open_tuned, within};
use common::raw::RawClient;
use warren::protocol::method::*;
use warren::protocol::{FieldValue, Frame, Method};

// ---- helpers -----------------------------------------------------------------

async fn expect(c: &mut RawClient, what: &str) -> (u16, Method) {
    match within(what, c.read_frame()).await {
        Some(Frame::Method { channel, method }) => (channel, method),
        other => panic!("{what}: got {other:?}"),
    }
}

async fn raw_channel_open(c: &mut RawClient, channel: u16) {
    c.send_method(channel, ChannelOpen::default()).await;
    match expect(c, "channel.open-ok").await {
        (ch, Method::ChannelOpenOk(_)) if ch == channel => {}
        other => panic!("channel.open of {channel}: {other:?}"),
    }
}

// ---- channel_max ---------------------------------------------------------------

#[tokio::test]
async fn channel_max_counts_open_channels_not_channel_numbers() {
    let broker = common::Broker::start();
    let expected = "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)";

    let mut c = raw_open_tuned(broker.addr, None, Some(2)).await;
    // Any numbers will do while no more than two are open.
    raw_channel_open(&mut c, 1).await;
    raw_channel_open(&mut c, 7).await;
    c.send_method(3, ChannelOpen::default()).await;
    match expect(&mut c, "connection.close").await {
        (0, Method::ConnectionClose(close)) => {
            assert_eq!((close.reply_code, close.reply_text.as_str()), (530, expected), "{close:?}")
        }
        other => panic!("a third channel.open: expected connection.close, got {other:?}"),
    }
    c.send_method(0, ConnectionCloseOk {}).await;
    assert!(c.closed_within(Duration::from_secs(5)).await, "the socket stayed open");

    // A closed channel makes room for another.
    let mut c = raw_open_tuned(broker.addr, None, Some(2)).await;
    raw_channel_open(&mut c, 1).await;
    raw_channel_open(&mut c, 7).await;
    c.send_method(1, ChannelClose { reply_code: 200, reply_text: "done".into(), class_id: 0, method_id: 0 }).await;
    match expect(&mut c, "channel.close-ok").await {
        (1, Method::ChannelCloseOk(_)) => {}
        other => panic!("channel.close: {other:?}"),
    }
    raw_channel_open(&mut c, 3).await;
    // And the limit holds again.
    c.send_method(4, ChannelOpen::default()).await;
    match expect(&mut c, "connection.close").await {
        (0, Method::ConnectionClose(close)) => assert_eq!(close.reply_code, 530, "{close:?}"),
        other => panic!("channel.open beyond channel_max: {other:?}"),
    }
}

// ---- exclusive redeclare ----------------------------------------------------------

#[tokio::test]
async fn redeclaring_with_another_exclusive_flag_is_resource_locked_even_for_the_owner() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    within("declare", ch.queue_declare("ex".into(), exclusive, FieldTable::default())).await.expect("declare ex");
    within("declare", ch.queue_declare("shared".into(), QueueDeclareOptions::default(), FieldTable::default()))
        .await
        .expect("declare shared");
    let locked = |q: &str| {
        format!(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
        )
    };
    for (queue, options) in [("ex", QueueDeclareOptions::default()), ("shared", exclusive)] {
        let ch = channel(&conn).await;
        match within("redeclare", ch.queue_declare(queue.into(), options, FieldTable::default())).await {
            Ok(q) => panic!("redeclare of '{queue}' with exclusive={}: succeeded ({q:?})", options.exclusive),
            Err(e) => assert_eq!(amqp_error(&e), Some((405, locked(queue))), "{e:?}"),
        }
    }
    // With the flag it was declared with, the owner may redeclare it.
    let ch = confirm_channel(&conn).await;
    within("redeclare", ch.queue_declare("ex".into(), exclusive, FieldTable::default())).await.expect("redeclare ex");
    within("redeclare", ch.queue_declare("shared".into(), QueueDeclareOptions::default(), FieldTable::default()))
        .await
        .expect("redeclare shared");
}

// ---- queue.delete and the deleting channel's own consumer ----------------------------

fn cancel_notify_properties() -> warren::protocol::FieldTable {
    let mut caps = warren::protocol::FieldTable::new();
    caps.insert("consumer_cancel_notify", FieldValue::Bool(true));
    let mut props = warren::protocol::FieldTable::new();
    props.insert("capabilities", FieldValue::Table(caps));
    props
}

/// Declares `queue` and consumes from it (no-ack) on each of these channels,
/// one consumer tag per channel.
async fn raw_consumers(c: &mut RawClient, queue: &str, consumers: &[(u16, &str)]) {
    c.send_method(1, QueueDeclare { queue: queue.into(), ..Default::default() }).await;
    assert!(matches!(expect(c, "queue.declare-ok").await, (1, Method::QueueDeclareOk(_))));
    for &(channel, tag) in consumers {
        c.send_method(
            channel,
            BasicConsume { queue: queue.into(), consumer_tag: tag.into(), no_ack: true, ..Default::default() },
        )
        .await;
        match expect(c, "basic.consume-ok").await {
            (ch, Method::BasicConsumeOk(ok)) if ch == channel && ok.consumer_tag == tag => {}
            other => panic!("consume {tag} on {channel}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn queue_delete_ok_comes_before_the_cancel_of_the_deleting_channels_consumer() {
    let broker = common::Broker::start();
    let mut c = RawClient::open_with_properties(broker.addr, 0, cancel_notify_properties()).await;
    raw_channel_open(&mut c, 1).await;
    raw_channel_open(&mut c, 2).await;
    raw_consumers(&mut c, "doomed", &[(1, "mine"), (2, "other")]).await;
    c.send_method(1, QueueDelete { queue: "doomed".into(), ..Default::default() }).await;

    let mut seen: Vec<(u16, String)> = Vec::new();
    while seen.len() < 3 {
        let (channel, method) = expect(&mut c, "queue.delete-ok and two basic.cancel").await;
        let what = match method {
            Method::QueueDeleteOk(_) => "delete-ok".to_string(),
            Method::BasicCancel(m) => format!("cancel {}", m.consumer_tag),
            other => panic!("unexpected {other:?} on channel {channel} (so far {seen:?})"),
        };
        seen.push((channel, what));
    }
    let at = |entry: (u16, &str)| {
        seen.iter()
            .position(|(ch, w)| *ch == entry.0 && w == entry.1)
            .unwrap_or_else(|| panic!("no {entry:?} in {seen:?}"))
    };
    assert!(at((1, "delete-ok")) < at((1, "cancel mine")), "order on the deleting channel: {seen:?}");
    at((2, "cancel other"));
    // Nothing else follows, and the channel goes on.
    assert!(c.read_frame_within(Duration::from_millis(400)).await.is_none(), "more frames after the cancels");
    c.send_method(1, QueueDeclare { queue: "next".into(), ..Default::default() }).await;
    assert!(matches!(expect(&mut c, "queue.declare-ok").await, (1, Method::QueueDeclareOk(_))));
}

#[tokio::test]
async fn without_consumer_cancel_notify_a_deleted_queue_cancels_silently() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel_open(&mut c, 1).await;
    raw_consumers(&mut c, "doomed", &[(1, "mine")]).await;
    c.send_method(1, QueueDelete { queue: "doomed".into(), ..Default::default() }).await;
    assert!(matches!(expect(&mut c, "queue.delete-ok").await, (1, Method::QueueDeleteOk(_))));
    let after = c.read_frame_within(Duration::from_millis(400)).await;
    assert!(after.is_none(), "a client without consumer_cancel_notify got {after:?}");
}

// ---- unbind of what is gone -----------------------------------------------------------

async fn queue_unbind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> lapin::Result<()> {
    within("queue.unbind", ch.queue_unbind(queue.into(), exchange.into(), key.into(), FieldTable::default())).await
}

async fn exchange_unbind(ch: &Channel, destination: &str, source: &str, key: &str) -> lapin::Result<()> {
    within(
        "exchange.unbind",
        ch.exchange_unbind(
            destination.into(),
            source.into(),
            key.into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

async fn publish_mandatory(ch: &Channel, exchange: &str, key: &str, body: &str) -> Confirmation {
    let opts = BasicPublishOptions { mandatory: true, ..Default::default() };
    let confirm = within(
        "publish",
        ch.basic_publish(exchange.into(), key.into(), opts, body.as_bytes(), BasicProperties::default()),
    )
    .await
    .expect("publish");
    within("confirm", confirm).await.expect("confirm")
}

#[tokio::test]
async fn unbind_succeeds_when_the_binding_exchange_or_queue_is_gone() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    for (name, kind) in [("x", ExchangeKind::Direct), ("x2", ExchangeKind::Fanout)] {
        within("exchange.declare", ch.exchange_declare(name.into(), kind, Default::default(), FieldTable::default()))
            .await
            .expect("exchange.declare");
    }
    for q in ["q", "q2"] {
        within("queue.declare", ch.queue_declare(q.into(), Default::default(), FieldTable::default()))
            .await
            .expect("queue.declare");
    }
    within("bind", ch.queue_bind("q".into(), "x".into(), "k".into(), Default::default(), FieldTable::default()))
        .await
        .expect("queue.bind");
    within("bind", ch.queue_bind("q2".into(), "x2".into(), "".into(), Default::default(), FieldTable::default()))
        .await
        .expect("queue.bind");
    within("bind", ch.exchange_bind("x2".into(), "x".into(), "k".into(), Default::default(), FieldTable::default()))
        .await
        .expect("exchange.bind");

    queue_unbind(&ch, "q", "x", "other-key").await.expect("queue.unbind of a missing binding");
    queue_unbind(&ch, "q", "no-such-exchange", "k").await.expect("queue.unbind from a missing exchange");
    queue_unbind(&ch, "no-such-queue", "x", "k").await.expect("queue.unbind of a missing queue");
    exchange_unbind(&ch, "x2", "x", "other-key").await.expect("exchange.unbind of a missing binding");
    exchange_unbind(&ch, "x2", "no-such-exchange", "k").await.expect("exchange.unbind from a missing source");
    exchange_unbind(&ch, "no-such-exchange", "x", "k").await.expect("exchange.unbind of a missing destination");

    // The real bindings are untouched...
    assert_eq!(publish_mandatory(&ch, "x", "k", "both").await, Confirmation::Ack(None));
    assert_eq!(drain(&ch, "q").await, ["both"]);
    assert_eq!(drain(&ch, "q2").await, ["both"]);
    // ...and unbinding them works.
    queue_unbind(&ch, "q", "x", "k").await.expect("queue.unbind");
    exchange_unbind(&ch, "x2", "x", "k").await.expect("exchange.unbind");
    assert!(matches!(publish_mandatory(&ch, "x", "k", "nowhere").await, Confirmation::Ack(Some(_))));

    // Once an end is deleted, unbinding from it still succeeds.
    within("queue.delete", ch.queue_delete("q2".into(), Default::default())).await.expect("queue.delete");
    queue_unbind(&ch, "q2", "x2", "").await.expect("queue.unbind of a deleted queue");
    within("exchange.delete", ch.exchange_delete("x".into(), Default::default())).await.expect("exchange.delete");
    exchange_unbind(&ch, "x2", "x", "k").await.expect("exchange.unbind from a deleted exchange");
}

// ---- reject-publish and confirms --------------------------------------------------------

#[tokio::test]
async fn a_publish_refused_by_reject_publish_is_nacked_and_never_returned() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let args = table(&[
        ("x-max-length", AMQPValue::LongInt(1)),
        ("x-overflow", AMQPValue::LongString(LongString::from("reject-publish"))),
    ]);
    within("declare", ch.queue_declare("full".into(), QueueDeclareOptions::default(), args)).await.expect("declare");
    assert_eq!(publish_mandatory(&ch, "", "full", "a").await, Confirmation::Ack(None));
    // Routed to a queue that refuses it: a nack, with no basic.return before it.
    assert_eq!(publish_mandatory(&ch, "", "full", "b").await, Confirmation::Nack(None));
    assert_eq!(publish_mandatory(&ch, "", "full", "c").await, Confirmation::Nack(None));
    // A mandatory publish that is really unroutable is returned on this channel.
    match publish_mandatory(&ch, "", "no-such-queue", "lost").await {
        Confirmation::Ack(Some(r)) => assert_eq!(r.reply_code, 312),
        other => panic!("expected an ack with a basic.return, got {other:?}"),
    }
    assert_eq!(drain(&ch, "full").await, ["a"]);
    assert_eq!(publish_mandatory(&ch, "", "full", "d").await, Confirmation::Ack(None), "room again");
}
