//! Client-side helpers shared by the integration tests: a timeout wrapper,
//! lapin connections and channels, queue declares, publishes and gets, and a
//! few raw-client steps. Every step is bounded by `WAIT`, so a broker that
//! never answers fails the test instead of hanging it.

use std::fmt::Debug;
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};

use super::Broker;
use super::raw::{self, RawClient};
use warren::protocol::method::*;
use warren::protocol::{Method, encode_content, encode_method};

/// Longest a single step may take before the test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing more arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(400);

/// Awaits `fut`, failing the test instead of hanging if the broker never answers.
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {WAIT:?}: {what}"),
    }
}

/// The AMQP reply code of a channel or connection error, if it is one.
pub fn reply_code(err: &lapin::Error) -> Option<u16> {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

/// Awaits an operation that must fail with the given AMQP reply code.
pub async fn expect_code<T: Debug>(what: &str, fut: impl Future<Output = lapin::Result<T>>, code: u16) {
    match within(what, fut).await {
        Ok(v) => panic!("{what}: succeeded ({v:?}), expected reply code {code}"),
        Err(e) => assert_eq!(reply_code(&e), Some(code), "{what}: {e:?}"),
    }
}

// ---- lapin ----------------------------------------------------------------

pub async fn connect_url(url: &str) -> Connection {
    within("connect", Connection::connect(url, ConnectionProperties::default())).await.expect("connect")
}

pub async fn connect(broker: &Broker) -> Connection {
    connect_url(&broker.url()).await
}

/// A plain channel: no confirm mode, no transaction.
pub async fn channel(conn: &Connection) -> Channel {
    within("channel.open", conn.create_channel()).await.expect("channel.open")
}

/// A channel in confirm mode, so a publish's fate (ack, nack or channel
/// error) is known before the test goes on.
pub async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = channel(conn).await;
    within("confirm.select", ch.confirm_select(ConfirmSelectOptions::default())).await.expect("confirm.select");
    ch
}

/// Declares a queue with default options and arguments.
pub async fn declare_queue(ch: &Channel, name: &str) {
    within("queue.declare", ch.queue_declare(name.into(), QueueDeclareOptions::default(), FieldTable::default()))
        .await
        .unwrap_or_else(|e| panic!("declare queue '{name}': {e:?}"));
}

/// Messages ready in `queue`, from a passive queue.declare.
pub async fn ready(ch: &Channel, queue: &str) -> u32 {
    let opts = QueueDeclareOptions { passive: true, ..Default::default() };
    within("passive queue.declare", ch.queue_declare(queue.into(), opts, FieldTable::default()))
        .await
        .expect("passive queue.declare")
        .message_count()
}

/// Publishes to the default exchange and waits for the confirm, whatever it
/// is (on a channel without confirm mode it is `NotRequested`).
pub async fn publish_props(ch: &Channel, queue: &str, body: &[u8], props: BasicProperties) {
    let confirm =
        within("basic.publish", ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, props))
            .await
            .expect("basic.publish");
    within("publish confirm", confirm).await.expect("publish");
}

/// `publish_props` with default properties.
pub async fn publish(ch: &Channel, queue: &str, body: impl AsRef<[u8]>) {
    publish_props(ch, queue, body.as_ref(), BasicProperties::default()).await
}

/// Publishes and returns the broker's confirmation.
pub async fn publish_to(ch: &Channel, exchange: &str, key: &str, body: &str) -> Confirmation {
    let confirm = within(
        "publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    within("confirm", confirm).await.expect("confirm")
}

/// Publishes to `queue` through the default exchange and requires an ack
/// (the channel must be in confirm mode).
pub async fn publish_acked(ch: &Channel, queue: &str, body: &str) {
    let confirmation = publish_to(ch, "", queue, body).await;
    assert!(matches!(confirmation, Confirmation::Ack(_)), "publish to '{queue}': {confirmation:?}");
}

pub async fn consume(ch: &Channel, queue: &str, tag: &str, no_ack: bool) -> Consumer {
    let opts = BasicConsumeOptions { no_ack, ..Default::default() };
    within("basic.consume", ch.basic_consume(queue.into(), tag.into(), opts, FieldTable::default()))
        .await
        .expect("basic.consume")
}

pub async fn next(consumer: &mut Consumer) -> Delivery {
    within("a delivery", consumer.next()).await.expect("consumer ended").expect("delivery failed")
}

/// Asserts the consumer receives nothing more for a while.
pub async fn assert_quiet(consumer: &mut Consumer, what: &str) {
    if let Ok(item) = tokio::time::timeout(QUIET, consumer.next()).await {
        let got = item.map(|d| d.map(|d| String::from_utf8_lossy(&d.data).into_owned()));
        panic!("{what}: expected no delivery, got {got:?}");
    }
}

pub fn text(d: &Delivery) -> String {
    String::from_utf8(d.data.clone()).expect("utf-8 body")
}

/// basic.get (no-ack) of one message, if any.
async fn get_no_ack(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    within("basic.get", ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap_or_else(|e| panic!("basic.get on '{queue}': {e:?}"))
}

/// Takes every ready message off a queue (no-ack) and returns the bodies in order.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(m) = get_no_ack(ch, queue).await {
        bodies.push(text(&m.delivery));
    }
    bodies
}

/// Like `drain`, with each body's redelivered flag: (body, redelivered).
pub async fn drain_with_redelivered(ch: &Channel, queue: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(m) = get_no_ack(ch, queue).await {
        out.push((text(&m.delivery), m.delivery.redelivered));
    }
    out
}

/// (ready, unacked, consumers) of a queue, from the broker's control socket.
pub fn queue_stats(broker: &Broker, queue: &str) -> (u64, u64, u64) {
    let path = warren::config::control_socket_path(&broker.data_dir);
    let mut sock = std::os::unix::net::UnixStream::connect(&path).expect("control socket");
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    sock.write_all(b"{\"command\":\"list_queues\"}\n").expect("request");
    let mut line = String::new();
    BufReader::new(sock).read_line(&mut line).expect("response");
    let response: warren::admin::Response = serde_json::from_str(&line).expect("json");
    assert!(response.ok, "list_queues failed: {:?}", response.error);
    let row = response
        .rows
        .iter()
        .find(|r| r.get("name").and_then(|v| v.as_str()) == Some(queue))
        .unwrap_or_else(|| panic!("queue '{queue}' not listed"));
    let n = |k: &str| row.get(k).and_then(|v| v.as_u64()).unwrap_or_else(|| panic!("column {k}"));
    (n("messages_ready"), n("messages_unacknowledged"), n("consumers"))
}

/// A field table from (key, value) pairs.
pub fn table(entries: &[(&str, lapin::types::AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

pub fn long_string(s: &str) -> lapin::types::AMQPValue {
    lapin::types::AMQPValue::LongString(lapin::types::LongString::from(s))
}

/// The reply code and text of a channel or connection error.
pub fn amqp_error(err: &lapin::Error) -> Option<(u16, String)> {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some((e.get_id(), e.get_message().to_string())),
        _ => None,
    }
}

/// Awaits an operation that must fail with exactly this reply code and text.
pub async fn expect_error<T: Debug>(what: &str, fut: impl Future<Output = lapin::Result<T>>, code: u16, text: &str) {
    match within(what, fut).await {
        Ok(v) => panic!("{what}: succeeded ({v:?}), expected {code} {text:?}"),
        Err(e) => assert_eq!(amqp_error(&e), Some((code, text.to_string())), "{what}: {e:?}"),
    }
}

// ---- raw client -------------------------------------------------------------

/// Handshake with a chosen frame_max (and no heartbeats).
pub async fn raw_open(addr: SocketAddr, frame_max: u32) -> RawClient {
    raw_open_tuned(addr, Some(frame_max), None).await
}

/// Handshake answering connection.tune with these values (None: the
/// server's), no heartbeats.
pub async fn raw_open_tuned(addr: SocketAddr, frame_max: Option<u32>, channel_max: Option<u16>) -> RawClient {
    let mut c = RawClient::connect(addr).await;
    c.send_bytes(raw::HEADER).await;
    assert!(matches!(within("connection.start", c.expect_method()).await, Method::ConnectionStart(_)));
    c.send_method(
        0,
        ConnectionStartOk {
            client_properties: warren::protocol::FieldTable::new(),
            mechanism: "PLAIN".into(),
            response: Bytes::from_static(b"\0guest\0guest"),
            locale: "en_US".into(),
        },
    )
    .await;
    let tune = match within("connection.tune", c.expect_method()).await {
        Method::ConnectionTune(t) => t,
        other => panic!("expected connection.tune, got {other:?}"),
    };
    let channel_max = channel_max.unwrap_or(tune.channel_max);
    assert!(tune.channel_max >= channel_max, "{tune:?}");
    let frame_max = frame_max.unwrap_or(tune.frame_max);
    c.send_method(0, ConnectionTuneOk { channel_max, frame_max, heartbeat: 0 }).await;
    c.send_method(0, ConnectionOpen { virtual_host: "/".into(), ..Default::default() }).await;
    match within("connection.open-ok", c.expect_method()).await {
        Method::ConnectionOpenOk(_) => c,
        other => panic!("expected connection.open-ok, got {other:?}"),
    }
}

/// channel.open on the raw client, waiting for open-ok.
pub async fn raw_channel(c: &mut RawClient, channel: u16) {
    c.send_method(channel, ChannelOpen::default()).await;
    match within("channel.open-ok", c.expect_method()).await {
        Method::ChannelOpenOk(_) => {}
        other => panic!("expected channel.open-ok, got {other:?}"),
    }
}

/// basic.publish with its content, as one write.
#[allow(clippy::too_many_arguments)]
pub async fn raw_publish(
    c: &mut RawClient,
    channel: u16,
    exchange: &str,
    key: &str,
    mandatory: bool,
    properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    let mut buf = BytesMut::new();
    let publish = BasicPublish { exchange: exchange.into(), routing_key: key.into(), mandatory, ..Default::default() };
    encode_method(&mut buf, channel, &publish.into());
    encode_content(&mut buf, channel, properties, body, frame_max);
    c.send_bytes(&buf).await;
}
