//! Publisher confirms (RabbitMQ's confirm class): acks with increasing
//! delivery tags, basic.return before the ack of an unroutable mandatory
//! message, nacks from a full reject-publish queue, channel errors, and the
//! exclusion of confirm and tx modes.

mod common;

use std::time::Duration;

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation};

use common::amqp::{WAIT, channel, confirm_channel, connect, raw_channel, raw_publish, ready, reply_code, within};
use common::raw::RawClient;
use warren::protocol::method::*;
use warren::protocol::{Frame, Method};

async fn declare_with(ch: &Channel, queue: &str, args: FieldTable) {
    within("queue.declare", ch.queue_declare(queue.into(), QueueDeclareOptions::default(), args))
        .await
        .expect("queue.declare");
}

/// Publishes and waits for the broker's confirmation.
async fn publish_confirmed(ch: &Channel, exchange: &str, key: &str, mandatory: bool, body: &[u8]) -> Confirmation {
    let opts = BasicPublishOptions { mandatory, ..Default::default() };
    let confirm =
        within("basic.publish", ch.basic_publish(exchange.into(), key.into(), opts, body, Default::default()))
            .await
            .expect("basic.publish");
    within("publisher confirm", confirm).await.expect("confirmation")
}

/// The next frame that is not a heartbeat; panics if the socket closed.
async fn raw_frame(c: &mut RawClient) -> Frame {
    loop {
        match within("a frame", c.read_frame()).await {
            Some(Frame::Heartbeat) => continue,
            Some(frame) => return frame,
            None => panic!("the broker closed the socket"),
        }
    }
}

async fn raw_confirm_select(c: &mut RawClient, channel: u16) {
    c.send_method(channel, ConfirmSelect { no_wait: false }).await;
    match within("confirm.select-ok", c.expect_method()).await {
        Method::ConfirmSelectOk(_) => {}
        other => panic!("expected confirm.select-ok, got {other:?}"),
    }
}

#[tokio::test]
async fn every_publish_in_confirm_mode_is_acked() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_with(&ch, "confirmed", FieldTable::default()).await;
    // Many publishes in flight at once, then every confirmation.
    let mut pending = Vec::new();
    for i in 0..200 {
        let body = format!("m{i}");
        let confirm = within(
            "basic.publish",
            ch.basic_publish(
                "".into(),
                "confirmed".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish");
        pending.push(confirm);
    }
    for (i, confirm) in pending.into_iter().enumerate() {
        let confirmation = within("confirmation", confirm).await.expect("confirmation");
        assert_eq!(confirmation, Confirmation::Ack(None), "publish {i}");
    }
    assert_eq!(ready(&ch, "confirmed").await, 200);
    // Unroutable but not mandatory: acked all the same.
    assert_eq!(publish_confirmed(&ch, "amq.direct", "nobody", false, b"lost").await, Confirmation::Ack(None));
    // confirm.select again on a confirm channel is harmless.
    within("confirm.select", ch.confirm_select(ConfirmSelectOptions::default())).await.expect("confirm.select again");
    assert_eq!(publish_confirmed(&ch, "", "confirmed", false, b"more").await, Confirmation::Ack(None));
}

#[tokio::test]
async fn confirm_delivery_tags_count_up_from_one() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    c.send_method(1, QueueDeclare { queue: "tags".into(), ..Default::default() }).await;
    assert!(matches!(c.expect_method().await, Method::QueueDeclareOk(_)));
    raw_confirm_select(&mut c, 1).await;
    for i in 0..20 {
        raw_publish(
            &mut c,
            1,
            "",
            if i % 3 == 0 { "nowhere" } else { "tags" },
            false,
            &[0, 0],
            format!("{i}").as_bytes(),
            131_072,
        )
        .await;
    }
    // Each ack covers the tags after the last one seen (a multiple ack may cover several).
    let mut confirmed = 0u64;
    while confirmed < 20 {
        match raw_frame(&mut c).await {
            Frame::Method { channel: 1, method: Method::BasicAck(ack) } => {
                assert!(ack.delivery_tag > confirmed, "ack tag {} after {confirmed}", ack.delivery_tag);
                if !ack.multiple {
                    assert_eq!(ack.delivery_tag, confirmed + 1, "a single ack skipped a publish");
                }
                confirmed = ack.delivery_tag;
            }
            other => panic!("expected basic.ack, got {other:?}"),
        }
    }
    assert_eq!(confirmed, 20);
    // A second channel numbers its publishes from 1 again; with no-wait,
    // confirm.select gets no select-ok, so the ack is the first reply.
    raw_channel(&mut c, 2).await;
    c.send_method(2, ConfirmSelect { no_wait: true }).await;
    raw_publish(&mut c, 2, "", "tags", false, &[0, 0], b"x", 131_072).await;
    match raw_frame(&mut c).await {
        Frame::Method { channel: 2, method: Method::BasicAck(ack) } => assert_eq!(ack.delivery_tag, 1),
        other => panic!("expected basic.ack on channel 2, got {other:?}"),
    }
}

#[tokio::test]
async fn unroutable_mandatory_publish_is_returned_before_it_is_acked() {
    let broker = common::Broker::start();
    // lapin pairs a basic.return with the ack that follows it.
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_with(&ch, "routable", FieldTable::default()).await;
    match publish_confirmed(&ch, "", "unroutable", true, b"bounce").await {
        Confirmation::Ack(Some(returned)) => {
            assert_eq!(returned.reply_code, 312);
            assert_eq!(returned.delivery.routing_key.as_str(), "unroutable");
            assert_eq!(returned.delivery.data, b"bounce");
        }
        other => panic!("expected an ack carrying the returned message, got {other:?}"),
    }
    assert_eq!(publish_confirmed(&ch, "", "routable", true, b"fine").await, Confirmation::Ack(None));

    // On the wire: return, its content, then the ack.
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    raw_confirm_select(&mut c, 1).await;
    raw_publish(&mut c, 1, "amq.topic", "no.binding", true, &[0, 0], b"bounce", 131_072).await;
    match raw_frame(&mut c).await {
        Frame::Method { method: Method::BasicReturn(r), .. } => {
            assert_eq!((r.reply_code, r.exchange.as_str(), r.routing_key.as_str()), (312, "amq.topic", "no.binding"))
        }
        other => panic!("expected basic.return first, got {other:?}"),
    }
    assert!(matches!(raw_frame(&mut c).await, Frame::Header { .. }));
    match raw_frame(&mut c).await {
        Frame::Body { payload, .. } => assert_eq!(payload.as_ref(), b"bounce"),
        other => panic!("expected the returned body, got {other:?}"),
    }
    match raw_frame(&mut c).await {
        Frame::Method { method: Method::BasicAck(ack), .. } => assert_eq!(ack.delivery_tag, 1),
        other => panic!("expected basic.ack after the return, got {other:?}"),
    }
}

#[tokio::test]
async fn a_full_reject_publish_queue_nacks_the_publish() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert("x-overflow".into(), AMQPValue::LongString(LongString::from("reject-publish")));
    declare_with(&ch, "bounded", args).await;

    assert_eq!(publish_confirmed(&ch, "", "bounded", false, b"first").await, Confirmation::Ack(None));
    let second = publish_confirmed(&ch, "", "bounded", false, b"second").await;
    assert!(second.is_nack(), "a publish into a full reject-publish queue is nacked, got {second:?}");
    assert_eq!(ready(&ch, "bounded").await, 1);

    // Room again once the first message is gone.
    let got = within("basic.get", ch.basic_get("bounded".into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("basic.get")
        .expect("a message");
    assert_eq!(got.delivery.data, b"first");
    assert_eq!(publish_confirmed(&ch, "", "bounded", false, b"third").await, Confirmation::Ack(None));
    assert_eq!(ready(&ch, "bounded").await, 1);
    assert!(ch.status().connected(), "a nack is not a channel error");
}

#[tokio::test]
async fn a_nack_is_a_basic_nack_frame_with_the_publish_tag() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    let mut args = warren::protocol::FieldTable::new();
    args.insert("x-max-length", warren::protocol::FieldValue::I32(1));
    args.insert("x-overflow", warren::protocol::FieldValue::string("reject-publish"));
    c.send_method(1, QueueDeclare { queue: "bounded-raw".into(), arguments: args, ..Default::default() }).await;
    assert!(matches!(c.expect_method().await, Method::QueueDeclareOk(_)));
    raw_confirm_select(&mut c, 1).await;
    raw_publish(&mut c, 1, "", "bounded-raw", false, &[0, 0], b"1", 131_072).await;
    raw_publish(&mut c, 1, "", "bounded-raw", false, &[0, 0], b"2", 131_072).await;
    match raw_frame(&mut c).await {
        Frame::Method { method: Method::BasicAck(ack), .. } => assert_eq!((ack.delivery_tag, ack.multiple), (1, false)),
        other => panic!("expected basic.ack for publish 1, got {other:?}"),
    }
    match raw_frame(&mut c).await {
        Frame::Method { method: Method::BasicNack(nack), .. } => {
            assert_eq!((nack.delivery_tag, nack.multiple), (2, false))
        }
        other => panic!("expected basic.nack for publish 2, got {other:?}"),
    }
}

#[tokio::test]
async fn publishing_to_a_missing_exchange_closes_the_channel_with_404() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let confirm = within(
        "basic.publish",
        ch.basic_publish("no-such-exchange".into(), "k".into(), Default::default(), b"x", Default::default()),
    )
    .await;
    let err = match confirm {
        Err(err) => err,
        Ok(confirm) => within("confirmation", confirm).await.expect_err("publish to a missing exchange"),
    };
    assert_eq!(reply_code(&err), Some(404), "{err:?}");
    // The channel is gone, the connection is not.
    let deadline = tokio::time::Instant::now() + WAIT;
    while ch.status().connected() {
        assert!(tokio::time::Instant::now() < deadline, "channel still open after the 404");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ch2 = confirm_channel(&conn).await;
    declare_with(&ch2, "after-404", FieldTable::default()).await;
    assert_eq!(publish_confirmed(&ch2, "", "after-404", false, b"ok").await, Confirmation::Ack(None));

    // On the wire: channel.close 404 naming basic.publish, and no confirm.
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    raw_confirm_select(&mut c, 1).await;
    raw_publish(&mut c, 1, "no-such-exchange", "k", false, &[0, 0], b"x", 131_072).await;
    match raw_frame(&mut c).await {
        Frame::Method { channel: 1, method: Method::ChannelClose(close) } => {
            assert_eq!(close.reply_code, 404, "{close:?}");
            assert_eq!((close.class_id, close.method_id), (60, 40), "{close:?}");
        }
        other => panic!("expected channel.close, got {other:?}"),
    }
}

#[tokio::test]
async fn confirm_and_tx_modes_exclude_each_other_with_406() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;

    let tx = channel(&conn).await;
    within("tx.select", tx.tx_select()).await.expect("tx.select");
    let err = within("confirm.select", tx.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect_err("confirm.select on a transactional channel");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");

    let confirm = confirm_channel(&conn).await;
    let err = within("tx.select", confirm.tx_select()).await.expect_err("tx.select on a confirm channel");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");

    // Channel errors, not connection errors.
    let ch = confirm_channel(&conn).await;
    declare_with(&ch, "still-fine", FieldTable::default()).await;
    assert_eq!(publish_confirmed(&ch, "", "still-fine", false, b"ok").await, Confirmation::Ack(None));
}
