//! Transactions (tx class) with RabbitMQ's semantics: publishes and acks
//! inside a transaction take effect at tx.commit and are discarded by
//! tx.rollback; tx.commit / tx.rollback outside a transaction are 406.

mod common;

use bytes::BytesMut;
use lapin::options::*;
use lapin::{Channel, Connection};

use common::amqp::{
    self as amqp, QUIET, assert_quiet, channel, connect, consume, declare_queue, drain_with_redelivered, next, publish,
    ready, reply_code, text, within,
};
use common::raw::RawClient;
use warren::protocol::method::*;
use warren::protocol::{Frame, Method, encode_content, encode_method};

async fn tx_channel(conn: &Connection) -> Channel {
    let ch = channel(conn).await;
    within("tx.select", ch.tx_select()).await.expect("tx.select");
    ch
}

/// (ready, unacked) of a queue, from the broker's control socket.
fn queue_stats(broker: &common::Broker, queue: &str) -> (u64, u64) {
    let (ready, unacked, _) = amqp::queue_stats(broker, queue);
    (ready, unacked)
}

/// Declares `queue` with "m1", "m2" and "m3" ready in it; returns a plain
/// (observer) channel and a transactional one.
async fn three_messages_and_a_tx_channel(conn: &Connection, queue: &str) -> (Channel, Channel) {
    let observer = channel(conn).await;
    declare_queue(&observer, queue).await;
    for body in ["m1", "m2", "m3"] {
        publish(&observer, queue, body).await;
    }
    (observer, tx_channel(conn).await)
}

async fn commit(ch: &Channel) {
    within("tx.commit", ch.tx_commit()).await.expect("tx.commit");
}

async fn rollback(ch: &Channel) {
    within("tx.rollback", ch.tx_rollback()).await.expect("tx.rollback");
}

#[tokio::test]
async fn transactional_publishes_are_invisible_until_commit() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let tx = tx_channel(&conn).await;
    let observer = channel(&conn).await;
    declare_queue(&observer, "tx-count").await;
    declare_queue(&observer, "tx-consumed").await;
    let other = connect(&broker).await;
    let consumer_ch = channel(&other).await;
    let mut consumer = consume(&consumer_ch, "tx-consumed", "", true).await;

    for body in ["a", "b", "c"] {
        publish(&tx, "tx-count", body).await;
        publish(&tx, "tx-consumed", body).await;
    }
    // Not in the queue counts, neither from another channel nor from the transaction's own.
    assert_eq!(ready(&observer, "tx-count").await, 0);
    assert_eq!(ready(&tx, "tx-count").await, 0);
    assert_eq!(queue_stats(&broker, "tx-count"), (0, 0));
    assert_quiet(&mut consumer, "uncommitted publishes are not delivered").await;

    commit(&tx).await;
    assert_eq!(ready(&observer, "tx-count").await, 3);
    for expected in ["a", "b", "c"] {
        let d = next(&mut consumer).await;
        assert_eq!(text(&d), expected);
        assert!(!d.redelivered);
    }
    assert_eq!(
        drain_with_redelivered(&observer, "tx-count").await,
        [("a", false), ("b", false), ("c", false)].map(|(b, r)| (b.into(), r))
    );

    // The channel stays transactional: the next publishes wait for the next commit.
    publish(&tx, "tx-count", "d").await;
    assert_eq!(ready(&observer, "tx-count").await, 0);
    commit(&tx).await;
    assert_eq!(ready(&observer, "tx-count").await, 1);
}

#[tokio::test]
async fn rollback_discards_uncommitted_publishes() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let tx = tx_channel(&conn).await;
    let observer = channel(&conn).await;
    declare_queue(&observer, "tx-rollback").await;
    publish(&tx, "tx-rollback", "kept-1").await;
    commit(&tx).await;
    publish(&tx, "tx-rollback", "discarded-1").await;
    publish(&tx, "tx-rollback", "discarded-2").await;
    rollback(&tx).await;
    assert_eq!(ready(&observer, "tx-rollback").await, 1);
    // A commit after the rollback has nothing left to apply.
    commit(&tx).await;
    assert_eq!(ready(&observer, "tx-rollback").await, 1);
    publish(&tx, "tx-rollback", "kept-2").await;
    commit(&tx).await;
    assert_eq!(
        drain_with_redelivered(&observer, "tx-rollback").await,
        vec![("kept-1".into(), false), ("kept-2".into(), false)]
    );
}

#[tokio::test]
async fn closing_a_channel_or_connection_abandons_its_open_transaction() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let observer = channel(&conn).await;
    declare_queue(&observer, "tx-abandoned").await;

    let tx = tx_channel(&conn).await;
    publish(&tx, "tx-abandoned", "from-closed-channel").await;
    within("channel.close", tx.close(200, "bye".into())).await.expect("close");

    let conn2 = connect(&broker).await;
    let tx2 = tx_channel(&conn2).await;
    publish(&tx2, "tx-abandoned", "from-closed-connection").await;
    within("connection.close", conn2.close(200, "bye".into())).await.expect("close");

    assert_eq!(ready(&observer, "tx-abandoned").await, 0);
    assert_eq!(queue_stats(&broker, "tx-abandoned"), (0, 0));
}

#[tokio::test]
async fn acks_in_a_transaction_take_effect_at_commit() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let (_observer, tx) = three_messages_and_a_tx_channel(&conn, "tx-acks").await;
    let mut consumer = consume(&tx, "tx-acks", "", false).await;
    let m1 = next(&mut consumer).await;
    let m2 = next(&mut consumer).await;
    let m3 = next(&mut consumer).await;
    assert_eq!(queue_stats(&broker, "tx-acks"), (0, 3));

    m1.ack(BasicAckOptions::default()).await.expect("ack m1");
    m2.reject(BasicRejectOptions { requeue: true }).await.expect("reject m2");
    // A round trip on the channel so both were processed.
    assert_eq!(ready(&tx, "tx-acks").await, 0);
    assert_eq!(queue_stats(&broker, "tx-acks"), (0, 3), "an uncommitted ack or reject settles nothing");
    assert_quiet(&mut consumer, "an uncommitted reject does not requeue").await;

    commit(&tx).await;
    let again = next(&mut consumer).await;
    assert_eq!(text(&again), "m2");
    assert!(again.redelivered);
    assert_eq!(queue_stats(&broker, "tx-acks"), (0, 2), "m1 acked, m2 redelivered, m3 still held");

    // Settle the rest in one committed transaction.
    tx.basic_ack(again.delivery_tag, BasicAckOptions { multiple: true }).await.expect("ack all");
    commit(&tx).await;
    assert_eq!(queue_stats(&broker, "tx-acks"), (0, 0));
    drop(m3);
}

#[tokio::test]
async fn rollback_leaves_messages_acked_in_the_transaction_unacked() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let (observer, tx) = three_messages_and_a_tx_channel(&conn, "tx-unacked").await;
    let mut tags = Vec::new();
    for expected in ["m1", "m2", "m3"] {
        let m = within("basic.get", tx.basic_get("tx-unacked".into(), BasicGetOptions { no_ack: false }))
            .await
            .expect("basic.get")
            .expect("a message");
        assert_eq!(text(&m.delivery), expected);
        tags.push(m.delivery.delivery_tag);
    }

    tx.basic_ack(tags[1], BasicAckOptions { multiple: true }).await.expect("ack m1+m2");
    tx.basic_nack(tags[2], BasicNackOptions { multiple: false, requeue: true }).await.expect("nack m3");
    rollback(&tx).await;
    // Nothing was settled and nothing requeued: all three are still unacked.
    assert_eq!(ready(&observer, "tx-unacked").await, 0);
    assert_eq!(queue_stats(&broker, "tx-unacked"), (0, 3));

    // The rolled-back acks can be made again, and committed.
    tx.basic_ack(tags[0], BasicAckOptions::default()).await.expect("ack m1 again");
    commit(&tx).await;
    assert_eq!(queue_stats(&broker, "tx-unacked"), (0, 2));

    // What is still unacked comes back when the channel closes.
    within("channel.close", tx.close(200, "bye".into())).await.expect("close");
    assert_eq!(drain_with_redelivered(&observer, "tx-unacked").await, vec![("m2".into(), true), ("m3".into(), true)]);
}

#[tokio::test]
async fn commit_or_rollback_on_a_non_transactional_channel_is_406() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let err = within("tx.commit", ch.tx_commit()).await.expect_err("tx.commit without tx.select");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    let ch = channel(&conn).await;
    let err = within("tx.rollback", ch.tx_rollback()).await.expect_err("tx.rollback without tx.select");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    // Channel errors only: the connection still works.
    let ch = tx_channel(&conn).await;
    declare_queue(&ch, "after-406").await;
    publish(&ch, "after-406", "x").await;
    commit(&ch).await;
    assert_eq!(ready(&ch, "after-406").await, 1);
}

#[tokio::test]
async fn transactional_publish_to_a_missing_exchange_is_404_at_once() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    c.send_method(1, ChannelOpen::default()).await;
    assert!(matches!(c.expect_method().await, Method::ChannelOpenOk(_)));
    c.send_method(1, TxSelect {}).await;
    assert!(matches!(c.expect_method().await, Method::TxSelectOk(_)));
    let mut buf = BytesMut::new();
    encode_method(&mut buf, 1, &BasicPublish { exchange: "missing".into(), ..Default::default() }.into());
    encode_content(&mut buf, 1, &[0, 0], b"x", 131_072);
    c.send_bytes(&buf).await;
    match within("channel.close", c.expect_method()).await {
        Method::ChannelClose(close) => {
            assert_eq!(close.reply_code, 404, "{close:?}");
            assert_eq!((close.class_id, close.method_id), (60, 40));
        }
        other => panic!("expected channel.close 404 before any commit, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unroutable_mandatory_publish_in_a_transaction_is_returned_at_commit() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    c.send_method(1, ChannelOpen::default()).await;
    assert!(matches!(c.expect_method().await, Method::ChannelOpenOk(_)));
    c.send_method(1, TxSelect {}).await;
    assert!(matches!(c.expect_method().await, Method::TxSelectOk(_)));
    let mut buf = BytesMut::new();
    let publish = BasicPublish { routing_key: "no-queue".into(), mandatory: true, ..Default::default() };
    encode_method(&mut buf, 1, &publish.into());
    encode_content(&mut buf, 1, &[0, 0], b"bounce", 131_072);
    c.send_bytes(&buf).await;
    let early = c.read_frame_within(QUIET).await;
    assert!(early.is_none(), "nothing is routed (or returned) before commit, got {early:?}");

    c.send_method(1, TxCommit {}).await;
    match within("basic.return", c.expect_method()).await {
        Method::BasicReturn(r) => assert_eq!((r.reply_code, r.routing_key.as_str()), (312, "no-queue")),
        other => panic!("expected basic.return at commit, got {other:?}"),
    }
    assert!(matches!(c.read_frame().await, Some(Frame::Header { .. })));
    match c.read_frame().await {
        Some(Frame::Body { payload, .. }) => assert_eq!(payload.as_ref(), b"bounce"),
        other => panic!("expected the returned body, got {other:?}"),
    }
    assert!(matches!(within("tx.commit-ok", c.expect_method()).await, Method::TxCommitOk(_)));
}

/// RabbitMQ checks a delivery tag when the ack arrives, inside a transaction
/// too: an unknown tag closes the channel with 406 at once, and the open
/// transaction (with its publishes) is abandoned, never half-committed.
#[tokio::test]
async fn an_unknown_delivery_tag_in_a_transaction_fails_at_once_and_commits_nothing() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let observer = channel(&conn).await;
    declare_queue(&observer, "tx-bad-ack").await;

    let mut c = RawClient::open(broker.addr, 0).await;
    c.send_method(1, ChannelOpen::default()).await;
    assert!(matches!(c.expect_method().await, Method::ChannelOpenOk(_)));
    c.send_method(1, TxSelect {}).await;
    assert!(matches!(c.expect_method().await, Method::TxSelectOk(_)));
    let mut buf = BytesMut::new();
    encode_method(&mut buf, 1, &BasicPublish { routing_key: "tx-bad-ack".into(), ..Default::default() }.into());
    encode_content(&mut buf, 1, &[0, 0], b"must not be committed", 131_072);
    c.send_bytes(&buf).await;
    c.send_method(1, BasicAck { delivery_tag: 99, multiple: false }).await;

    let closed_at_ack = match c.read_frame_within(QUIET).await {
        Some(Frame::Method { method: Method::ChannelClose(close), .. }) => Some(close),
        Some(other) => panic!("unexpected {other:?}"),
        None => None,
    };
    let close = match closed_at_ack.clone() {
        Some(close) => close,
        None => {
            // Not refused at once: see what the commit does.
            c.send_method(1, TxCommit {}).await;
            match within("channel.close", c.expect_method()).await {
                Method::ChannelClose(close) => close,
                other => panic!("expected channel.close 406 for the unknown tag, got {other:?}"),
            }
        }
    };
    assert_eq!(close.reply_code, 406, "{close:?}");
    c.send_method(1, ChannelCloseOk {}).await;
    let committed = ready(&observer, "tx-bad-ack").await;
    assert!(
        closed_at_ack.is_some() && committed == 0,
        "expected channel.close 406 right after the bad ack and no message committed; \
         got the close {} and {committed} message(s) in the queue",
        if closed_at_ack.is_some() { "at the ack" } else { "only at tx.commit" },
    );
}
