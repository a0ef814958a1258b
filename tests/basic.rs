//! The basic class through the real broker: publish (mandatory returns,
//! properties, large and empty bodies), consume (ack modes, exclusivity,
//! consumer tags, cancel, prefetch, round-robin), get, ack / nack / reject /
//! recover, and requeueing of unacked messages when their channel,
//! connection or client process goes away.
//!
//! Most tests use lapin, a real client; the raw client is used where the exact
//! frames matter (reply codes, consumer tags, property bytes, frame sizes).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel};

use common::amqp::{
    QUIET, WAIT, assert_quiet, channel, connect, consume, declare_queue, drain_with_redelivered, next, publish,
    publish_props, queue_stats, raw_channel, raw_open, raw_publish, ready, reply_code, text, within,
};
use common::raw::RawClient;
use warren::protocol::method::*;
use warren::protocol::{ContentHeader, Frame, Method, encode_content, encode_method};

// ---- helpers ------------------------------------------------------------

/// Polls until `queue` holds exactly `n` ready messages.
async fn wait_ready(ch: &Channel, queue: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = ready(ch, queue).await;
        if now == n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "queue '{queue}' has {now} ready messages, expected {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publish_all(ch: &Channel, queue: &str, bodies: &[&str]) {
    for body in bodies {
        publish(ch, queue, body.as_bytes()).await;
    }
}

async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<lapin::message::BasicGetMessage> {
    within("basic.get", ch.basic_get(queue.into(), BasicGetOptions { no_ack })).await.expect("basic.get")
}

// ---- raw-client helpers ---------------------------------------------------

/// A method with its content, as the raw client saw it.
struct RawContent {
    method: Method,
    header: ContentHeader,
    body: Vec<u8>,
    body_frames: Vec<usize>,
}

/// The next method; if it carries content, its header and body too.
async fn raw_next(c: &mut RawClient) -> RawContent {
    let method = within("a method frame", c.expect_method()).await;
    assert!(method.has_content(), "expected a method with content, got {method:?}");
    let header = match within("content header", c.read_frame()).await {
        Some(Frame::Header { header, .. }) => header,
        other => panic!("expected a content header, got {other:?}"),
    };
    let mut body = Vec::new();
    let mut body_frames = Vec::new();
    while (body.len() as u64) < header.body_size {
        match within("content body", c.read_frame()).await {
            Some(Frame::Body { payload, .. }) => {
                body_frames.push(payload.len());
                body.extend_from_slice(&payload);
            }
            other => panic!("expected a body frame, got {other:?}"),
        }
    }
    assert_eq!(body.len() as u64, header.body_size, "body longer than announced");
    RawContent { method, header, body, body_frames }
}

/// Reads until connection.close (answering it with close-ok) and returns it.
async fn raw_connection_close(c: &mut RawClient) -> ConnectionClose {
    loop {
        match within("connection.close", c.read_frame()).await {
            Some(Frame::Method { channel: 0, method: Method::ConnectionClose(m) }) => {
                c.send_method(0, ConnectionCloseOk {}).await;
                return m;
            }
            Some(_) => continue,
            None => panic!("socket closed (or silent) without connection.close"),
        }
    }
}

/// Reads until channel.close on `channel` (answering with close-ok) and returns it.
async fn raw_channel_close(c: &mut RawClient, channel: u16) -> ChannelClose {
    loop {
        match within("channel.close", c.read_frame()).await {
            Some(Frame::Method { channel: ch, method: Method::ChannelClose(m) }) if ch == channel => {
                c.send_method(channel, ChannelCloseOk {}).await;
                return m;
            }
            Some(Frame::Method { method: Method::ConnectionClose(m), .. }) => {
                panic!("expected channel.close, got connection.close {m:?}")
            }
            Some(_) => continue,
            None => panic!("socket closed (or silent) without channel.close"),
        }
    }
}

/// basic.consume on the raw client; returns the tag from consume-ok.
async fn raw_consume(c: &mut RawClient, channel: u16, queue: &str, tag: &str, no_ack: bool) -> String {
    c.send_method(
        channel,
        BasicConsume { queue: queue.into(), consumer_tag: tag.into(), no_ack, ..Default::default() },
    )
    .await;
    match within("basic.consume-ok", c.expect_method()).await {
        Method::BasicConsumeOk(ok) => ok.consumer_tag,
        other => panic!("expected basic.consume-ok, got {other:?}"),
    }
}

// ---- acknowledgements -----------------------------------------------------

/// Acks that arrive together are settled as one run: those before an
/// unknown tag stay settled, the unknown one closes the channel (406, with
/// basic.ack's ids), and those after it are not applied.
#[tokio::test]
async fn acks_in_one_write_settle_up_to_an_unknown_tag_which_closes_the_channel() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    c.send_method(1, QueueDeclare { queue: "acks".into(), ..Default::default() }).await;
    assert!(matches!(c.expect_method().await, Method::QueueDeclareOk(_)));
    raw_consume(&mut c, 1, "acks", "w", false).await;
    for i in 0..4 {
        raw_publish(&mut c, 1, "", "acks", false, &[0, 0], format!("m{i}").as_bytes(), 131_072).await;
    }
    for _ in 0..4 {
        assert!(matches!(raw_next(&mut c).await.method, Method::BasicDeliver(_)));
    }
    let mut acks = BytesMut::new();
    for tag in [1u64, 2, 9, 3] {
        encode_method(&mut acks, 1, &BasicAck { delivery_tag: tag, multiple: false }.into());
    }
    c.send_bytes(&acks).await;
    let close = raw_channel_close(&mut c, 1).await;
    assert_eq!(
        (close.reply_code, close.reply_text.as_str(), close.class_id, close.method_id),
        (406, "PRECONDITION_FAILED - unknown delivery tag 9", 60, 80)
    );
    // m0 and m1 were acked; m2 and m3 went back to the queue with the channel.
    raw_channel(&mut c, 2).await;
    c.send_method(2, QueueDeclare { queue: "acks".into(), passive: true, ..Default::default() }).await;
    match within("queue.declare-ok", c.expect_method()).await {
        Method::QueueDeclareOk(ok) => assert_eq!(ok.message_count, 2, "two acked before the unknown tag, none after"),
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
}

// ---- mandatory ------------------------------------------------------------

#[tokio::test]
async fn mandatory_publish_to_an_unroutable_key_comes_back_as_basic_return_312() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    // Not mandatory: silently dropped, no return.
    let c = ch
        .basic_publish("".into(), "nowhere-1".into(), BasicPublishOptions::default(), b"dropped", Default::default())
        .await
        .expect("publish");
    within("confirm", c).await.expect("confirm");
    let mandatory = BasicPublishOptions { mandatory: true, ..Default::default() };
    let props = BasicProperties::default().with_message_id("m-1".into());
    let c = ch.basic_publish("amq.direct".into(), "nowhere-2".into(), mandatory, b"come back", props).await.unwrap();
    within("confirm", c).await.expect("confirm");

    let deadline = tokio::time::Instant::now() + WAIT;
    let returned = loop {
        let returned = within("wait_for_confirms", ch.wait_for_confirms()).await.expect("returns");
        if !returned.is_empty() {
            break returned;
        }
        assert!(tokio::time::Instant::now() < deadline, "no basic.return arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(returned.len(), 1, "only the mandatory message comes back: {returned:?}");
    let r = &returned[0];
    assert_eq!(r.reply_code, 312);
    assert_eq!(r.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(r.delivery.exchange.as_str(), "amq.direct");
    assert_eq!(r.delivery.routing_key.as_str(), "nowhere-2");
    assert_eq!(r.delivery.data, b"come back");
    assert_eq!(r.delivery.properties.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));

    // A routable mandatory publish is delivered, not returned.
    declare_queue(&ch, "routable").await;
    let c = ch.basic_publish("".into(), "routable".into(), mandatory, b"stays", Default::default()).await.unwrap();
    within("confirm", c).await.expect("confirm");
    wait_ready(&ch, "routable", 1).await;
    assert!(within("wait_for_confirms", ch.wait_for_confirms()).await.unwrap().is_empty());
}

#[tokio::test]
async fn raw_basic_return_carries_312_no_route_and_the_whole_body() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    raw_publish(&mut c, 1, "", "no-such-queue", true, &[0, 0], &body, 131_072).await;
    let returned = raw_next(&mut c).await;
    match &returned.method {
        Method::BasicReturn(r) => {
            assert_eq!(r.reply_code, 312);
            assert_eq!(r.exchange, "");
            assert_eq!(r.routing_key, "no-such-queue");
        }
        other => panic!("expected basic.return, got {other:?}"),
    }
    assert_eq!(returned.body, body);
}

// ---- consuming ------------------------------------------------------------

#[tokio::test]
async fn no_ack_consumer_gets_every_message_in_order_and_nothing_stays_unacked() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "noack").await;
    publish_all(&ch, "noack", &["a", "b", "c"]).await;
    let mut consumer = consume(&ch, "noack", "c-noack", true).await;
    for expected in ["a", "b", "c"] {
        let d = next(&mut consumer).await;
        assert_eq!(text(&d), expected);
        assert!(!d.redelivered);
    }
    publish(&ch, "noack", b"d").await;
    assert_eq!(text(&next(&mut consumer).await), "d");
    assert_eq!(queue_stats(&broker, "noack"), (0, 0, 1));
    // Closing the channel gives nothing back: no-ack deliveries are settled.
    within("close", ch.close(200, "bye".into())).await.expect("close");
    let ch2 = channel(&conn).await;
    assert_eq!(ready(&ch2, "noack").await, 0);
}

#[tokio::test]
async fn manual_ack_consumer_holds_messages_until_acked() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "manual").await;
    publish_all(&ch, "manual", &["one", "two"]).await;
    let mut consumer = consume(&ch, "manual", "c-manual", false).await;
    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    assert_eq!((text(&first).as_str(), text(&second).as_str()), ("one", "two"));
    assert!(second.delivery_tag > first.delivery_tag);
    assert_eq!(queue_stats(&broker, "manual"), (0, 2, 1));
    first.ack(BasicAckOptions::default()).await.expect("ack");
    let deadline = tokio::time::Instant::now() + WAIT;
    while queue_stats(&broker, "manual").1 != 1 {
        assert!(tokio::time::Instant::now() < deadline, "ack did not settle the message");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Closing the channel requeues only the unacked one.
    within("close", ch.close(200, "bye".into())).await.expect("close");
    let ch2 = channel(&conn).await;
    assert_eq!(drain_with_redelivered(&ch2, "manual").await, vec![("two".to_string(), true)]);
}

#[tokio::test]
async fn exclusive_consumer_refuses_a_second_consumer_with_403() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "excl").await;
    let opts = BasicConsumeOptions { exclusive: true, ..Default::default() };
    let mut owner =
        within("consume", ch.basic_consume("excl".into(), "owner".into(), opts, FieldTable::default())).await.unwrap();

    // A second consumer, from another connection, is refused.
    let conn2 = connect(&broker).await;
    let ch2 = channel(&conn2).await;
    let err = within(
        "consume",
        ch2.basic_consume("excl".into(), "intruder".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect_err("second consumer on an exclusively consumed queue");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
    // ...and from the same connection too.
    let ch3 = channel(&conn).await;
    let err = within(
        "consume",
        ch3.basic_consume("excl".into(), "intruder2".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect_err("second consumer on an exclusively consumed queue");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");

    // The exclusive consumer still gets the messages; the refused ones were not registered.
    publish(&ch, "excl", b"mine").await;
    assert_eq!(text(&next(&mut owner).await), "mine");
    assert_eq!(queue_stats(&broker, "excl").2, 1);

    // The other way round: an exclusive consume on a queue that has a consumer is refused.
    declare_queue(&ch, "shared").await;
    let _plain = consume(&ch, "shared", "plain", true).await;
    let ch4 = channel(&conn2).await;
    let err = within("consume", ch4.basic_consume("shared".into(), "greedy".into(), opts, FieldTable::default()))
        .await
        .expect_err("exclusive consume on a queue with consumers");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
    // The connections survive these channel errors.
    let ch5 = channel(&conn2).await;
    assert_eq!(ready(&ch5, "shared").await, 0);

    // Once the exclusive consumer is cancelled, others may consume.
    within("cancel", ch.basic_cancel("owner".into(), BasicCancelOptions::default())).await.expect("cancel");
    let mut after = consume(&ch5, "excl", "after-owner", true).await;
    publish(&ch, "excl", b"yours now").await;
    assert_eq!(text(&next(&mut after).await), "yours now");
}

#[tokio::test]
async fn consumer_tags_are_echoed_or_generated_with_the_amq_ctag_prefix() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    c.send_method(1, QueueDeclare { queue: "tags".into(), ..Default::default() }).await;
    assert!(matches!(c.expect_method().await, Method::QueueDeclareOk(_)));

    let chosen = raw_consume(&mut c, 1, "tags", "my-own-tag", true).await;
    assert_eq!(chosen, "my-own-tag");
    let generated = raw_consume(&mut c, 1, "tags", "", true).await;
    let generated2 = raw_consume(&mut c, 1, "tags", "", true).await;
    for tag in [&generated, &generated2] {
        let suffix = tag.strip_prefix("amq.ctag-").unwrap_or_else(|| panic!("generated tag {tag:?}"));
        assert!(!suffix.is_empty(), "generated tag {tag:?} has nothing after the prefix");
    }
    assert_ne!(generated, generated2, "generated tags must be unique");

    // Deliveries name the consumer that got them.
    for i in 0..3 {
        raw_publish(&mut c, 1, "", "tags", false, &[0, 0], format!("m{i}").as_bytes(), 131_072).await;
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        match raw_next(&mut c).await.method {
            Method::BasicDeliver(d) => seen.push(d.consumer_tag),
            other => panic!("expected basic.deliver, got {other:?}"),
        }
    }
    seen.sort();
    let mut expected = vec![chosen, generated, generated2];
    expected.sort();
    assert_eq!(seen, expected, "one message per consumer, each tagged with its consumer");
}

#[tokio::test]
async fn reusing_a_consumer_tag_on_one_channel_closes_the_connection_with_530() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    raw_channel(&mut c, 2).await;
    c.send_method(1, QueueDeclare { queue: "dup".into(), ..Default::default() }).await;
    assert!(matches!(c.expect_method().await, Method::QueueDeclareOk(_)));
    assert_eq!(raw_consume(&mut c, 1, "dup", "same-tag", false).await, "same-tag");
    // The same tag on another channel is a different consumer.
    assert_eq!(raw_consume(&mut c, 2, "dup", "same-tag", false).await, "same-tag");

    c.send_method(1, BasicConsume { queue: "dup".into(), consumer_tag: "same-tag".into(), ..Default::default() }).await;
    let close = raw_connection_close(&mut c).await;
    assert_eq!(close.reply_code, 530, "{close:?}");
    assert_eq!((close.class_id, close.method_id), (60, 20), "{close:?}");
    assert!(c.closed_within(WAIT).await, "broker keeps the socket open after close-ok");
}

#[tokio::test]
async fn basic_cancel_stops_deliveries() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "cancel").await;
    let mut consumer = consume(&ch, "cancel", "to-cancel", true).await;
    publish(&ch, "cancel", b"before").await;
    assert_eq!(text(&next(&mut consumer).await), "before");

    within("basic.cancel", ch.basic_cancel("to-cancel".into(), BasicCancelOptions::default())).await.expect("cancel");
    assert!(within("end of stream", consumer.next()).await.is_none(), "a cancelled consumer's stream ends");
    publish_all(&ch, "cancel", &["after-1", "after-2"]).await;
    wait_ready(&ch, "cancel", 2).await;
    assert_eq!(queue_stats(&broker, "cancel"), (2, 0, 0));
    assert_eq!(drain_with_redelivered(&ch, "cancel").await, vec![("after-1".into(), false), ("after-2".into(), false)]);
}

#[tokio::test]
async fn cancel_leaves_the_consumers_unacked_messages_ackable() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "cancel-unacked").await;
    publish_all(&ch, "cancel-unacked", &["x", "y"]).await;
    let mut consumer = consume(&ch, "cancel-unacked", "c", false).await;
    let x = next(&mut consumer).await;
    let y = next(&mut consumer).await;
    within("cancel", ch.basic_cancel("c".into(), BasicCancelOptions::default())).await.expect("cancel");
    assert_eq!(queue_stats(&broker, "cancel-unacked"), (0, 2, 0));
    x.ack(BasicAckOptions::default()).await.expect("ack after cancel");
    y.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.expect("nack after cancel");
    wait_ready(&ch, "cancel-unacked", 1).await;
    assert_eq!(drain_with_redelivered(&ch, "cancel-unacked").await, vec![("y".into(), true)]);
    assert!(ch.status().connected(), "acking after cancel must not be a channel error");
}

// ---- basic.get ------------------------------------------------------------

#[tokio::test]
async fn basic_get_is_fifo_and_reports_the_messages_left() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "get").await;
    assert!(get(&ch, "get", false).await.is_none(), "get-empty on an empty queue");
    publish_all(&ch, "get", &["1", "2", "3", "4"]).await;
    for (i, expected) in ["1", "2", "3", "4"].iter().enumerate() {
        let m = get(&ch, "get", i % 2 == 0).await.expect("a message");
        assert_eq!(text(&m.delivery), *expected);
        assert_eq!(m.message_count, 3 - i as u32, "message_count after taking '{expected}'");
        assert!(!m.delivery.redelivered);
        assert_eq!(m.delivery.routing_key.as_str(), "get");
        assert_eq!(m.delivery.exchange.as_str(), "");
        if i % 2 == 1 {
            m.delivery.ack(BasicAckOptions::default()).await.expect("ack");
        }
    }
    assert!(get(&ch, "get", false).await.is_none(), "get-empty once drained");
    assert_eq!(queue_stats(&broker, "get"), (0, 0, 0));
}

// ---- ack / nack / reject ------------------------------------------------

/// basic.get `n` messages without auto-ack; returns their delivery tags.
async fn get_unacked(ch: &Channel, queue: &str, expected: &[&str]) -> Vec<u64> {
    let mut tags = Vec::new();
    for body in expected {
        let m = get(ch, queue, false).await.expect("a message");
        assert_eq!(text(&m.delivery), *body);
        tags.push(m.delivery.delivery_tag);
    }
    tags
}

#[tokio::test]
async fn ack_multiple_settles_everything_up_to_the_tag() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "ackm").await;
    publish_all(&ch, "ackm", &["1", "2", "3", "4", "5"]).await;
    let tags = get_unacked(&ch, "ackm", &["1", "2", "3", "4", "5"]).await;
    ch.basic_ack(tags[2], BasicAckOptions { multiple: true }).await.expect("ack multiple");
    ch.basic_ack(tags[4], BasicAckOptions { multiple: false }).await.expect("ack single");
    // Round trip so both acks are processed before we look.
    assert_eq!(ready(&ch, "ackm").await, 0);
    assert_eq!(queue_stats(&broker, "ackm"), (0, 1, 0));
    within("close", ch.close(200, "bye".into())).await.expect("close");
    let ch2 = channel(&conn).await;
    assert_eq!(
        drain_with_redelivered(&ch2, "ackm").await,
        vec![("4".into(), true)],
        "only the unsettled message comes back"
    );
}

#[tokio::test]
async fn nack_multiple_with_requeue_puts_messages_back_in_order_ahead_of_later_ones() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "nackm").await;
    publish_all(&ch, "nackm", &["1", "2", "3", "4"]).await;
    let tags = get_unacked(&ch, "nackm", &["1", "2", "3"]).await;
    publish(&ch, "nackm", b"5").await;
    ch.basic_nack(tags[1], BasicNackOptions { multiple: true, requeue: true }).await.expect("nack");
    ch.basic_reject(tags[2], BasicRejectOptions { requeue: true }).await.expect("reject");
    wait_ready(&ch, "nackm", 5).await;
    assert_eq!(
        drain_with_redelivered(&ch, "nackm").await,
        vec![("1".into(), true), ("2".into(), true), ("3".into(), true), ("4".into(), false), ("5".into(), false)]
    );
}

#[tokio::test]
async fn reject_with_requeue_in_reverse_order_restores_the_original_order() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "rej").await;
    publish_all(&ch, "rej", &["a", "b", "c", "d"]).await;
    let tags = get_unacked(&ch, "rej", &["a", "b", "c"]).await;
    ch.basic_reject(tags[2], BasicRejectOptions { requeue: true }).await.expect("reject c");
    ch.basic_reject(tags[0], BasicRejectOptions { requeue: true }).await.expect("reject a");
    ch.basic_ack(tags[1], BasicAckOptions::default()).await.expect("ack b");
    wait_ready(&ch, "rej", 3).await;
    assert_eq!(
        drain_with_redelivered(&ch, "rej").await,
        vec![("a".into(), true), ("c".into(), true), ("d".into(), false)]
    );
}

#[tokio::test]
async fn nack_and_reject_without_requeue_drop_the_messages() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "drop").await;
    publish_all(&ch, "drop", &["1", "2", "3", "4", "5"]).await;
    let tags = get_unacked(&ch, "drop", &["1", "2", "3", "4"]).await;
    ch.basic_nack(tags[1], BasicNackOptions { multiple: true, requeue: false }).await.expect("nack");
    ch.basic_reject(tags[3], BasicRejectOptions { requeue: false }).await.expect("reject");
    assert_eq!(ready(&ch, "drop").await, 1);
    assert_eq!(queue_stats(&broker, "drop"), (1, 1, 0), "only '3' is still unacked");
    within("close", ch.close(200, "bye".into())).await.expect("close");
    let ch2 = channel(&conn).await;
    assert_eq!(drain_with_redelivered(&ch2, "drop").await, vec![("3".into(), true), ("5".into(), false)]);
}

#[tokio::test]
async fn nack_with_requeue_redelivers_to_the_consumer_flagged_redelivered() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "redeliver").await;
    publish_all(&ch, "redeliver", &["p", "q"]).await;
    let mut consumer = consume(&ch, "redeliver", "c", false).await;
    let p = next(&mut consumer).await;
    let q = next(&mut consumer).await;
    assert!(!p.redelivered && !q.redelivered);
    ch.basic_nack(q.delivery_tag, BasicNackOptions { multiple: true, requeue: true }).await.expect("nack");
    let p2 = next(&mut consumer).await;
    let q2 = next(&mut consumer).await;
    assert_eq!((text(&p2).as_str(), text(&q2).as_str()), ("p", "q"));
    assert!(p2.redelivered && q2.redelivered);
    assert!(p2.delivery_tag > q.delivery_tag, "a redelivery gets a fresh delivery tag");
    p2.ack(BasicAckOptions::default()).await.unwrap();
    q2.ack(BasicAckOptions::default()).await.unwrap();
    assert_quiet(&mut consumer, "after acking everything").await;
}

#[tokio::test]
async fn acking_an_unknown_delivery_tag_closes_the_channel_with_406() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    c.send_method(1, BasicAck { delivery_tag: 42, multiple: false }).await;
    let close = raw_channel_close(&mut c, 1).await;
    assert_eq!(close.reply_code, 406, "{close:?}");
    assert_eq!((close.class_id, close.method_id), (60, 80), "{close:?}");

    // The connection lives on: the channel can be reopened and used.
    raw_channel(&mut c, 1).await;
    c.send_method(1, QueueDeclare { queue: "acked-twice".into(), ..Default::default() }).await;
    assert!(matches!(c.expect_method().await, Method::QueueDeclareOk(_)));
    raw_publish(&mut c, 1, "", "acked-twice", false, &[0, 0], b"x", 131_072).await;
    c.send_method(1, BasicGet { queue: "acked-twice".into(), no_ack: false, ..Default::default() }).await;
    let tag = match raw_next(&mut c).await.method {
        Method::BasicGetOk(ok) => ok.delivery_tag,
        other => panic!("expected basic.get-ok, got {other:?}"),
    };
    // Acking the same tag twice: the second is unknown.
    c.send_method(1, BasicAck { delivery_tag: tag, multiple: false }).await;
    c.send_method(1, BasicAck { delivery_tag: tag, multiple: false }).await;
    let close = raw_channel_close(&mut c, 1).await;
    assert_eq!(close.reply_code, 406, "{close:?}");

    // nack and reject of unknown tags too.
    for (channel, method) in [
        (2u16, Method::from(BasicNack { delivery_tag: 7, multiple: false, requeue: true })),
        (3u16, Method::from(BasicReject { delivery_tag: 7, requeue: false })),
    ] {
        raw_channel(&mut c, channel).await;
        c.send_method(channel, method).await;
        let close = raw_channel_close(&mut c, channel).await;
        assert_eq!(close.reply_code, 406, "{close:?}");
    }
}

#[tokio::test]
async fn raw_basic_recover_requeues_unacked_messages_flagged_redelivered() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    c.send_method(1, QueueDeclare { queue: "recover-raw".into(), ..Default::default() }).await;
    assert!(matches!(c.expect_method().await, Method::QueueDeclareOk(_)));
    for body in ["r1", "r2", "r3"] {
        raw_publish(&mut c, 1, "", "recover-raw", false, &[0, 0], body.as_bytes(), 131_072).await;
    }
    raw_consume(&mut c, 1, "recover-raw", "c", false).await;
    let mut tags = Vec::new();
    for expected in ["r1", "r2", "r3"] {
        let d = raw_next(&mut c).await;
        assert_eq!(d.body, expected.as_bytes());
        match d.method {
            Method::BasicDeliver(m) => {
                assert!(!m.redelivered);
                tags.push(m.delivery_tag)
            }
            other => panic!("expected basic.deliver, got {other:?}"),
        }
    }
    c.send_method(1, BasicAck { delivery_tag: tags[0], multiple: false }).await;
    c.send_method(1, BasicRecover { requeue: true }).await;
    // recover-ok and the two redeliveries, in whatever order.
    let mut recover_ok = false;
    let mut redelivered = Vec::new();
    while !recover_ok || redelivered.len() < 2 {
        let method = within("recover-ok or a redelivery", c.expect_method()).await;
        match method {
            Method::BasicRecoverOk(_) => recover_ok = true,
            Method::BasicDeliver(m) => {
                let header = match c.read_frame().await {
                    Some(Frame::Header { header, .. }) => header,
                    other => panic!("expected a content header, got {other:?}"),
                };
                let body = match c.read_frame().await {
                    Some(Frame::Body { payload, .. }) => payload,
                    other => panic!("expected a body frame, got {other:?}"),
                };
                assert_eq!(header.body_size, 2);
                assert!(m.redelivered, "recovered messages are flagged redelivered");
                assert!(m.delivery_tag > tags[2], "a redelivery gets a fresh delivery tag");
                redelivered.push(String::from_utf8(body.to_vec()).unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(redelivered, ["r2", "r3"], "r1 was acked before recover");
}

/// lapin (like other clients) discards deliveries that reach it before
/// basic.recover-ok as stale prefetch, so the redeliveries must follow the
/// recover-ok, as they do with RabbitMQ.
#[tokio::test]
async fn basic_recover_requeues_unacked_messages_flagged_redelivered() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "recover").await;
    publish_all(&ch, "recover", &["r1", "r2", "r3"]).await;
    let mut consumer = consume(&ch, "recover", "c", false).await;
    let first: Vec<Delivery> = vec![next(&mut consumer).await, next(&mut consumer).await, next(&mut consumer).await];
    first[0].ack(BasicAckOptions::default()).await.expect("ack r1");
    within("basic.recover", ch.basic_recover(BasicRecoverOptions { requeue: true })).await.expect("recover");
    let again = [next(&mut consumer).await, next(&mut consumer).await];
    assert_eq!(again.iter().map(text).collect::<Vec<_>>(), ["r2", "r3"]);
    assert!(again.iter().all(|d| d.redelivered), "recovered messages are flagged redelivered");
    assert_quiet(&mut consumer, "r1 was acked before recover").await;
}

// ---- prefetch -------------------------------------------------------------

async fn wait_unacked(broker: &common::Broker, queue: &str, unacked: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = queue_stats(broker, queue);
        if stats.1 == unacked {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "queue '{queue}' stats {stats:?}, expected {unacked} unacked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn per_consumer_prefetch_limits_unacked_deliveries() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "prefetch").await;
    publish_all(&ch, "prefetch", &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]).await;
    within("qos", ch.basic_qos(2, BasicQosOptions { global: false })).await.expect("qos");
    let mut c1 = consume(&ch, "prefetch", "c1", false).await;
    let a = next(&mut c1).await;
    let b = next(&mut c1).await;
    assert_quiet(&mut c1, "prefetch 2 reached").await;
    assert_eq!(queue_stats(&broker, "prefetch"), (8, 2, 1));

    // The limit is per consumer: a second consumer on the same channel gets its own 2.
    let mut c2 = consume(&ch, "prefetch", "c2", false).await;
    let c = next(&mut c2).await;
    let d = next(&mut c2).await;
    assert_quiet(&mut c2, "second consumer's prefetch 2 reached").await;
    assert_eq!(queue_stats(&broker, "prefetch"), (6, 4, 2));
    assert_eq!([&a, &b, &c, &d].map(text), ["0", "1", "2", "3"]);

    // One ack frees exactly one slot of that consumer.
    a.ack(BasicAckOptions::default()).await.expect("ack");
    assert_eq!(text(&next(&mut c1).await), "4");
    assert_quiet(&mut c1, "back at prefetch 2").await;
    assert_quiet(&mut c2, "c2 has no free slot").await;
    assert_eq!(queue_stats(&broker, "prefetch"), (5, 4, 2));
    drop((b, c, d));
}

#[tokio::test]
async fn global_prefetch_is_shared_by_the_consumers_of_a_channel() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "global").await;
    publish_all(&ch, "global", &["0", "1", "2", "3", "4", "5", "6", "7"]).await;
    within("qos", ch.basic_qos(3, BasicQosOptions { global: true })).await.expect("qos");
    let mut c1 = consume(&ch, "global", "c1", false).await;
    let mut c2 = consume(&ch, "global", "c2", false).await;
    wait_unacked(&broker, "global", 3).await;
    let mut held = Vec::new();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(QUIET, c1.next()).await {
        held.push(d);
    }
    while let Ok(Some(Ok(d))) = tokio::time::timeout(QUIET, c2.next()).await {
        held.push(d);
    }
    assert_eq!(held.len(), 3, "the channel-wide limit of 3 covers both consumers");
    assert_eq!(queue_stats(&broker, "global"), (5, 3, 2));
    held.remove(0).ack(BasicAckOptions::default()).await.expect("ack");
    wait_ready(&ch, "global", 4).await;
    assert_eq!(queue_stats(&broker, "global"), (4, 3, 2), "one ack lets exactly one more through");
}

#[tokio::test]
async fn global_prefetch_freed_on_one_queue_lets_the_channels_consumer_of_another_queue_run() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "gq-a").await;
    declare_queue(&ch, "gq-b").await;
    publish_all(&ch, "gq-a", &["a1", "a2"]).await;
    publish_all(&ch, "gq-b", &["b1", "b2", "b3", "b4"]).await;
    within("qos", ch.basic_qos(2, BasicQosOptions { global: true })).await.expect("qos");
    let mut ca = consume(&ch, "gq-a", "ca", false).await;
    let a1 = next(&mut ca).await;
    let a2 = next(&mut ca).await;
    let mut cb = consume(&ch, "gq-b", "cb", false).await;
    assert_quiet(&mut cb, "the channel's limit of 2 is used up by queue a").await;

    // Settling queue a's messages frees the channel's limit: queue b's consumer must now get 2.
    a2.ack(BasicAckOptions { multiple: true }).await.expect("ack");
    drop(a1);
    let b1 = next(&mut cb).await;
    let b2 = next(&mut cb).await;
    assert_eq!((text(&b1).as_str(), text(&b2).as_str()), ("b1", "b2"));
    assert_quiet(&mut cb, "limit of 2 reached again").await;
}

// ---- round-robin ------------------------------------------------------------

#[tokio::test]
async fn three_consumers_on_one_queue_are_served_round_robin() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "rr").await;
    let mut consumers = [
        consume(&ch, "rr", "rr-1", true).await,
        consume(&ch, "rr", "rr-2", true).await,
        consume(&ch, "rr", "rr-3", true).await,
    ];
    let publisher = channel(&conn).await;
    for i in 0..9 {
        publish(&publisher, "rr", format!("{i}").as_bytes()).await;
    }
    let mut got: Vec<Vec<u32>> = Vec::new();
    for c in consumers.iter_mut() {
        let mut mine = Vec::new();
        for _ in 0..3 {
            mine.push(text(&next(c).await).parse::<u32>().unwrap());
        }
        assert_quiet(c, "each consumer gets exactly a third").await;
        got.push(mine);
    }
    let mut firsts: Vec<u32> = got.iter().map(|m| m[0]).collect();
    firsts.sort();
    assert_eq!(firsts, [0, 1, 2], "each of the first three messages goes to a different consumer: {got:?}");
    for mine in &got {
        assert_eq!(mine, &[mine[0], mine[0] + 3, mine[0] + 6], "round-robin order broken: {got:?}");
    }
}

// ---- requeue when the holder goes away ------------------------------------

async fn publish_numbered(ch: &Channel, queue: &str, n: usize) -> Vec<(String, bool)> {
    let mut expected = Vec::new();
    for i in 0..n {
        publish(ch, queue, format!("{queue}-{i}").as_bytes()).await;
        expected.push((format!("{queue}-{i}"), true));
    }
    expected
}

#[tokio::test]
async fn unacked_messages_are_requeued_when_their_channel_closes() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let admin = channel(&conn).await;
    declare_queue(&admin, "on-chclose").await;
    let mut expected = publish_numbered(&admin, "on-chclose", 4).await;
    publish(&admin, "on-chclose", b"later").await;
    expected.push(("later".into(), false));

    let ch = channel(&conn).await;
    within("qos", ch.basic_qos(3, BasicQosOptions::default())).await.unwrap();
    let mut consumer = consume(&ch, "on-chclose", "holder", false).await;
    for _ in 0..3 {
        next(&mut consumer).await;
    }
    // One more held through basic.get on the same channel.
    let got = get(&ch, "on-chclose", false).await.expect("a message");
    assert_eq!(text(&got.delivery), "on-chclose-3");
    assert_eq!(queue_stats(&broker, "on-chclose"), (1, 4, 1));
    within("channel.close", ch.close(200, "bye".into())).await.expect("close");
    wait_ready(&admin, "on-chclose", 5).await;
    assert_eq!(drain_with_redelivered(&admin, "on-chclose").await, expected);
}

#[tokio::test]
async fn unacked_messages_are_requeued_when_the_broker_closes_their_channel_or_connection() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let admin = channel(&conn).await;
    declare_queue(&admin, "on-error").await;

    // A channel error (404) on the channel that holds the messages.
    let expected = publish_numbered(&admin, "on-error", 2).await;
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    raw_consume(&mut c, 1, "on-error", "holder", false).await;
    for _ in 0..2 {
        assert!(matches!(raw_next(&mut c).await.method, Method::BasicDeliver(_)));
    }
    assert_eq!(queue_stats(&broker, "on-error"), (0, 2, 1));
    c.send_method(1, QueueDeclare { queue: "missing".into(), passive: true, ..Default::default() }).await;
    assert_eq!(raw_channel_close(&mut c, 1).await.reply_code, 404);
    wait_ready(&admin, "on-error", 2).await;
    assert_eq!(queue_stats(&broker, "on-error"), (2, 0, 0));
    assert_eq!(drain_with_redelivered(&admin, "on-error").await, expected);

    // A connection error (501, bad frame end) on the connection that holds them.
    let expected = publish_numbered(&admin, "on-error", 2).await;
    raw_channel(&mut c, 1).await;
    raw_consume(&mut c, 1, "on-error", "holder", false).await;
    for _ in 0..2 {
        assert!(matches!(raw_next(&mut c).await.method, Method::BasicDeliver(_)));
    }
    assert_eq!(queue_stats(&broker, "on-error"), (0, 2, 1));
    c.send_bytes(&[8, 0, 0, 0, 0, 0, 0, 0x00]).await;
    assert_eq!(raw_connection_close(&mut c).await.reply_code, 501);
    wait_ready(&admin, "on-error", 2).await;
    assert_eq!(queue_stats(&broker, "on-error"), (2, 0, 0));
    assert_eq!(drain_with_redelivered(&admin, "on-error").await, expected);
}

#[tokio::test]
async fn unacked_messages_are_requeued_when_their_connection_closes() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let admin = channel(&conn).await;
    declare_queue(&admin, "on-connclose").await;
    let expected = publish_numbered(&admin, "on-connclose", 4).await;

    let holder = connect(&broker).await;
    let ch1 = channel(&holder).await;
    let ch2 = channel(&holder).await;
    let mut consumer = consume(&ch1, "on-connclose", "holder", false).await;
    for _ in 0..4 {
        next(&mut consumer).await;
    }
    publish(&admin, "on-connclose", b"extra").await;
    // The consumer took "extra" too; take it back with a nack so ch2 can hold it by get.
    let extra = next(&mut consumer).await;
    within("cancel", ch1.basic_cancel("holder".into(), Default::default())).await.unwrap();
    extra.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.unwrap();
    let m = get(&ch2, "on-connclose", false).await.expect("extra");
    assert_eq!(text(&m.delivery), "extra");
    assert_eq!(queue_stats(&broker, "on-connclose"), (0, 5, 0));

    within("connection.close", holder.close(200, "bye".into())).await.expect("close");
    wait_ready(&admin, "on-connclose", 5).await;
    let mut all = expected;
    all.push(("extra".into(), true));
    assert_eq!(drain_with_redelivered(&admin, "on-connclose").await, all);
}

#[tokio::test]
async fn unacked_messages_are_requeued_when_the_client_socket_just_goes_away() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let admin = channel(&conn).await;
    for (queue, abort) in [("dropped-fin", false), ("dropped-rst", true)] {
        declare_queue(&admin, queue).await;
        let expected = publish_numbered(&admin, queue, 3).await;
        let mut c = RawClient::open(broker.addr, 0).await;
        raw_channel(&mut c, 1).await;
        raw_consume(&mut c, 1, queue, "raw-holder", false).await;
        for _ in 0..3 {
            assert!(matches!(raw_next(&mut c).await.method, Method::BasicDeliver(_)));
        }
        assert_eq!(queue_stats(&broker, queue), (0, 3, 1));
        if abort {
            // SO_LINGER 0: the kernel resets the connection instead of closing it.
            // (tokio deprecates it because a non-zero linger blocks on drop; zero does not.)
            #[allow(deprecated)]
            c.stream.set_linger(Some(Duration::ZERO)).expect("linger");
        }
        drop(c);
        wait_ready(&admin, queue, 3).await;
        assert_eq!(queue_stats(&broker, queue), (3, 0, 0), "{queue}");
        assert_eq!(drain_with_redelivered(&admin, queue).await, expected, "{queue}");
    }
}

const CHILD_ADDR: &str = "WARREN_BASIC_TEST_CHILD_ADDR";
const CHILD_QUEUE: &str = "held-by-child";

/// Not a test of its own: the client process that
/// `unacked_messages_are_requeued_when_the_client_process_is_killed` starts
/// (this same test binary) and kills while it holds unacked deliveries.
#[tokio::test]
#[ignore = "helper process, started by unacked_messages_are_requeued_when_the_client_process_is_killed"]
async fn child_process_holding_unacked_deliveries() {
    let addr = std::env::var(CHILD_ADDR).expect("run only as a child process").parse().expect("address");
    let mut c = RawClient::open(addr, 0).await;
    raw_channel(&mut c, 1).await;
    raw_consume(&mut c, 1, CHILD_QUEUE, "child", false).await;
    for _ in 0..3 {
        assert!(matches!(raw_next(&mut c).await.method, Method::BasicDeliver(_)));
    }
    println!("CHILD HOLDS 3");
    std::io::stdout().flush().expect("flush");
    // Wait to be killed; exit on our own if the parent goes away (stdin closes).
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(|| std::io::stdin().read(&mut [0u8; 1])),
    )
    .await;
}

#[tokio::test]
async fn unacked_messages_are_requeued_when_the_client_process_is_killed() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let admin = channel(&conn).await;
    declare_queue(&admin, CHILD_QUEUE).await;
    let expected = publish_numbered(&admin, CHILD_QUEUE, 3).await;

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["child_process_holding_unacked_deliveries", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ADDR, broker.addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the child client");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("CHILD HOLDS 3") {
                let _ = tx.send(());
            }
        }
    });
    let holding = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)).is_ok());
    let holding = holding.await.expect("join");
    if !holding {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child client never reported holding the deliveries");
    }
    assert_eq!(queue_stats(&broker, CHILD_QUEUE), (0, 3, 1));

    child.kill().expect("kill the child");
    child.wait().expect("reap the child");
    wait_ready(&admin, CHILD_QUEUE, 3).await;
    assert_eq!(queue_stats(&broker, CHILD_QUEUE), (3, 0, 0));
    assert_eq!(drain_with_redelivered(&admin, CHILD_QUEUE).await, expected);
}

// ---- properties and bodies --------------------------------------------------

fn short(s: &str) -> Vec<u8> {
    assert!(s.len() < 256);
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

fn long(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

/// A typed field value: the type octet, then the payload.
fn val(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(payload);
    v
}

/// A field table, entries in the given order (not sorted).
fn table(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut inner = Vec::new();
    for (k, v) in entries {
        inner.extend(short(k));
        inner.extend_from_slice(v);
    }
    long(&inner)
}

fn array(items: &[Vec<u8>]) -> Vec<u8> {
    long(&items.concat())
}

/// One value of every field type RabbitMQ knows, as typed values.
fn every_scalar() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("t-true", val(b't', &[1])),
        ("t-false", val(b't', &[0])),
        ("b", val(b'b', &(-100i8).to_be_bytes())),
        ("B", val(b'B', &[250])),
        ("s", val(b's', &(-30_000i16).to_be_bytes())),
        ("u", val(b'u', &60_000u16.to_be_bytes())),
        ("I", val(b'I', &(-2_000_000_000i32).to_be_bytes())),
        ("i", val(b'i', &4_000_000_000u32.to_be_bytes())),
        ("l", val(b'l', &i64::MIN.to_be_bytes())),
        ("f", val(b'f', &(-1.5f32).to_be_bytes())),
        ("d", val(b'd', &std::f64::consts::PI.to_be_bytes())),
        ("D", val(b'D', &[3, 0x00, 0x01, 0xE2, 0x40])),
        ("S", val(b'S', &long("long string with \0 and ünïcödé".as_bytes()))),
        ("S-empty", val(b'S', &long(b""))),
        ("x", val(b'x', &long(&[0, 1, 2, 0xfe, 0xff]))),
        ("T", val(b'T', &1_700_000_000u64.to_be_bytes())),
        ("V", val(b'V', &[])),
    ]
}

fn rich_properties() -> Vec<u8> {
    let scalars = every_scalar();
    let nested = table(&[(
        "level-1",
        val(
            b'F',
            &table(&[
                ("z-before-a", val(b'I', &7i32.to_be_bytes())),
                ("level-2", val(b'F', &table(&[("level-3", val(b'F', &table(&scalars)))]))),
                ("arr-in-table", val(b'A', &array(&[val(b'A', &array(&[val(b'V', &[])])), val(b'F', &table(&[]))]))),
            ]),
        ),
    )]);
    let mut headers: Vec<(&str, Vec<u8>)> = vec![("zz-first-key", val(b'S', &long(b"keys keep their order")))];
    headers.extend(scalars.iter().cloned());
    let all_scalars: Vec<Vec<u8>> = scalars.iter().map(|(_, v)| v.clone()).collect();
    headers.push(("array-of-everything", val(b'A', &array(&all_scalars))));
    headers.push(("array-empty", val(b'A', &array(&[]))));
    headers.push(("nested", val(b'F', &nested)));
    headers.push(("table-empty", val(b'F', &table(&[]))));

    let mut p = 0xFFFCu16.to_be_bytes().to_vec(); // all 14 property flags
    p.extend(short("application/x-warren-test"));
    p.extend(short("gzip"));
    p.extend(table(&headers));
    p.push(2); // delivery_mode
    p.push(9); // priority
    p.extend(short("corr-ü-1"));
    p.extend(short("amq.rabbitmq.reply-to.x"));
    p.extend(short("3600000"));
    p.extend(short("msg-0001"));
    p.extend(1_234_567_890u64.to_be_bytes());
    p.extend(short("test.type"));
    p.extend(short("guest"));
    p.extend(short("warren-tests"));
    p.extend(short(""));
    p
}

#[tokio::test]
async fn every_property_and_header_type_round_trips_byte_exact() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    c.send_method(1, QueueDeclare { queue: "props".into(), ..Default::default() }).await;
    assert!(matches!(c.expect_method().await, Method::QueueDeclareOk(_)));
    let props = rich_properties();
    raw_publish(&mut c, 1, "", "props", false, &props, b"with properties", 131_072).await;
    raw_publish(&mut c, 1, "", "props", false, &props, b"", 131_072).await;

    // Through basic.get ...
    c.send_method(1, BasicGet { queue: "props".into(), no_ack: true, ..Default::default() }).await;
    let got = raw_next(&mut c).await;
    assert!(matches!(got.method, Method::BasicGetOk(_)), "{:?}", got.method);
    assert_eq!(got.header.class_id, 60);
    assert_eq!(got.header.body_size, 15);
    assert_eq!(got.header.properties.as_ref(), props.as_slice(), "properties changed on the way through");
    assert_eq!(got.body, b"with properties");

    // ... and through basic.deliver.
    raw_consume(&mut c, 1, "props", "props-consumer", true).await;
    let got = raw_next(&mut c).await;
    assert!(matches!(got.method, Method::BasicDeliver(_)), "{:?}", got.method);
    assert_eq!(got.header.body_size, 0);
    assert_eq!(got.header.properties.as_ref(), props.as_slice(), "properties changed on the way through");
    assert!(got.body.is_empty());
}

#[tokio::test]
async fn lapin_properties_and_nested_headers_round_trip() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "lapin-props").await;

    let mut inner = FieldTable::default();
    inner.insert("deep".into(), AMQPValue::LongString(LongString::from("value")));
    inner.insert("num".into(), AMQPValue::LongLongInt(-42));
    let mut middle = FieldTable::default();
    middle.insert("inner".into(), AMQPValue::FieldTable(inner.clone()));
    middle.insert(
        "list".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::FieldTable(inner),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(false)])),
            AMQPValue::LongString(LongString::from("in array")),
        ])),
    );
    let mut headers = FieldTable::default();
    headers.insert("bool".into(), AMQPValue::Boolean(true));
    headers.insert("i8".into(), AMQPValue::ShortShortInt(-8));
    headers.insert("u8".into(), AMQPValue::ShortShortUInt(200));
    headers.insert("i16".into(), AMQPValue::ShortInt(-1600));
    headers.insert("u16".into(), AMQPValue::ShortUInt(65_000));
    headers.insert("i32".into(), AMQPValue::LongInt(-320_000));
    headers.insert("u32".into(), AMQPValue::LongUInt(3_200_000_000));
    headers.insert("i64".into(), AMQPValue::LongLongInt(i64::MAX));
    headers.insert("f32".into(), AMQPValue::Float(0.25));
    headers.insert("f64".into(), AMQPValue::Double(-1e300));
    headers.insert("decimal".into(), AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 12_345 }));
    headers.insert("string".into(), AMQPValue::LongString(LongString::from("héllo")));
    headers.insert("bytes".into(), AMQPValue::ByteArray(ByteArray::from(vec![0u8, 255, 7])));
    headers.insert("timestamp".into(), AMQPValue::Timestamp(1_600_000_000));
    headers.insert("void".into(), AMQPValue::Void);
    headers.insert("nested".into(), AMQPValue::FieldTable(middle));
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_content_encoding("identity".into())
        .with_headers(headers)
        .with_delivery_mode(1)
        .with_priority(5)
        .with_correlation_id("corr".into())
        .with_reply_to("replies".into())
        .with_expiration("600000".into())
        .with_message_id("id-1".into())
        .with_timestamp(1_700_000_001)
        .with_type("kind".into())
        .with_user_id("guest".into())
        .with_app_id("app".into())
        .with_cluster_id("cluster".into());
    publish_props(&ch, "lapin-props", b"body", props.clone()).await;
    let mut consumer = consume(&ch, "lapin-props", "c", true).await;
    let d = next(&mut consumer).await;
    assert_eq!(d.properties, props);
    assert_eq!(d.data, b"body");
}

#[tokio::test]
async fn a_body_larger_than_frame_max_round_trips() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "big").await;
    let body: Vec<u8> = (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    publish(&ch, "big", &body).await;
    publish(&ch, "big", b"small after big").await;
    let mut consumer = consume(&ch, "big", "c", true).await;
    let d = next(&mut consumer).await;
    assert_eq!(d.data.len(), body.len());
    assert!(d.data == body, "1 MiB body corrupted");
    assert_eq!(text(&next(&mut consumer).await), "small after big");

    // Through a raw client that negotiated a small frame_max: the body comes
    // back split into frames no larger than that.
    declare_queue(&ch, "big-raw").await;
    let mut c = raw_open(broker.addr, 4096).await;
    raw_channel(&mut c, 1).await;
    raw_publish(&mut c, 1, "", "big-raw", false, &[0, 0], &body, 4096).await;
    c.send_method(1, BasicGet { queue: "big-raw".into(), no_ack: true, ..Default::default() }).await;
    let got = raw_next(&mut c).await;
    assert!(matches!(got.method, Method::BasicGetOk(_)));
    assert!(got.body == body, "1 MiB body corrupted");
    let largest = got.body_frames.iter().copied().max().unwrap_or(0);
    assert!(largest <= 4096 - 8, "body frame of {largest} bytes exceeds the negotiated frame_max 4096");
    assert_eq!(got.body_frames.len(), body.len().div_ceil(4088));
}

#[tokio::test]
async fn an_empty_body_round_trips() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "empty").await;
    let props = BasicProperties::default().with_message_id("empty-1".into());
    publish_props(&ch, "empty", b"", props).await;
    publish(&ch, "empty", b"").await;
    publish(&ch, "empty", b"not empty").await;
    let m = get(&ch, "empty", true).await.expect("a message");
    assert!(m.delivery.data.is_empty());
    assert_eq!(m.delivery.properties.message_id().as_ref().map(|s| s.as_str()), Some("empty-1"));
    assert_eq!(m.message_count, 2);
    let mut consumer = consume(&ch, "empty", "c", true).await;
    assert!(next(&mut consumer).await.data.is_empty());
    assert_eq!(text(&next(&mut consumer).await), "not empty");

    // On the wire: a header announcing 0 bytes and no body frame at all.
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    let mut buf = BytesMut::new();
    encode_method(&mut buf, 1, &BasicPublish { routing_key: "empty".into(), ..Default::default() }.into());
    encode_content(&mut buf, 1, &[0, 0], b"", 131_072);
    encode_method(&mut buf, 1, &BasicGet { queue: "empty".into(), no_ack: true, ..Default::default() }.into());
    c.send_bytes(&buf).await;
    let d = next(&mut consumer).await;
    assert!(d.data.is_empty());
    match within("get reply", c.expect_method()).await {
        Method::BasicGetEmpty(_) => {}
        other => panic!("the consumer took the message, so get must be empty; got {other:?}"),
    }
}
