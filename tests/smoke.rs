//! The smallest end-to-end check: lapin publishes and consumes through the real binary.

mod common;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[tokio::test]
async fn publish_then_consume_round_trips_a_message() {
    let broker = common::Broker::start();
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare("smoke".into(), QueueDeclareOptions::default(), FieldTable::default()).await.expect("declare");
    ch.basic_publish("".into(), "smoke".into(), BasicPublishOptions::default(), b"hello", BasicProperties::default())
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let mut consumer = ch
        .basic_consume("smoke".into(), "c1".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let delivery = consumer.next().await.expect("a delivery").expect("delivery ok");
    assert_eq!(delivery.data, b"hello");
    assert!(!delivery.redelivered);
    delivery.ack(BasicAckOptions::default()).await.expect("ack");
    conn.close(200, "bye".into()).await.expect("close");
}

#[tokio::test]
async fn raw_client_completes_the_handshake_and_opens_a_channel() {
    let broker = common::Broker::start();
    let mut client = common::raw::RawClient::open(broker.addr, 0).await;
    client.send_method(1, warren::protocol::method::ChannelOpen::default()).await;
    assert!(matches!(client.expect_method().await, warren::protocol::Method::ChannelOpenOk(_)));
}
