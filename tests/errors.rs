//! Malformed and out-of-order input over raw TCP. Each case checks the
//! broker's exact answer (AMQP 0-9-1 section 4.2 and RabbitMQ's reply
//! codes), and then that the broker still serves a fresh, well-behaved lapin
//! client. Channel errors must leave the rest of the connection usable.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use tokio::io::AsyncWriteExt;

use common::amqp::{WAIT, confirm_channel, connect, raw_channel, raw_open, within};
use common::raw::{self, RawClient};
use warren::protocol::method::*;
use warren::protocol::{Frame, Method, encode_content, encode_method};

static QUEUE_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh lapin client can declare a queue, publish with a confirm and get the message back.
async fn assert_broker_serves(broker: &common::Broker) {
    let conn = connect(broker).await;
    let ch = confirm_channel(&conn).await;
    let queue = format!("health-{}", QUEUE_SEQ.fetch_add(1, Ordering::Relaxed));
    within("declare", ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()))
        .await
        .expect("declare");
    let confirm = within(
        "publish",
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"still alive",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
    assert_eq!(within("confirm", confirm).await.expect("confirm"), Confirmation::Ack(None));
    let got = within("get", ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("get")
        .expect("the message");
    assert_eq!(got.delivery.data, b"still alive");
    within("close", conn.close(200, "bye".into())).await.expect("close");
}

/// One frame with an explicit frame-end octet.
fn frame(kind: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend(channel.to_be_bytes());
    v.extend((payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.push(end);
    v
}

fn method_bytes(channel: u16, method: impl Into<Method>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_method(&mut buf, channel, &method.into());
    buf.to_vec()
}

/// What the broker did about a connection error.
#[derive(Debug)]
enum Outcome {
    Closed(ConnectionClose),
    /// The socket closed without a connection.close.
    Dropped,
}

/// Reads until connection.close (answers close-ok and checks the socket
/// then closes) or until the socket closes. Fails on a timeout.
async fn connection_outcome(c: &mut RawClient, limit: Duration) -> Outcome {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.read_frame_within(left).await {
            Some(Frame::Method { channel: 0, method: Method::ConnectionClose(close) }) => {
                c.send_method(0, ConnectionCloseOk {}).await;
                assert!(c.closed_within(WAIT).await, "socket still open after connection.close-ok");
                return Outcome::Closed(close);
            }
            Some(_) => continue,
            None => {
                // read_frame gives None both for a closed socket and for a timeout.
                assert!(
                    c.closed_within(Duration::from_millis(100)).await,
                    "no connection.close and no closed socket within {limit:?}"
                );
                return Outcome::Dropped;
            }
        }
    }
}

/// Expects connection.close with `code`, then the socket closing.
async fn expect_connection_close(c: &mut RawClient, code: u16) -> ConnectionClose {
    match connection_outcome(c, WAIT).await {
        Outcome::Closed(close) => {
            assert_eq!(close.reply_code, code, "{close:?}");
            close
        }
        Outcome::Dropped => panic!("socket closed without connection.close {code}"),
    }
}

/// Expects channel.close with `code` on `channel`, and answers close-ok.
async fn expect_channel_close(c: &mut RawClient, channel: u16, code: u16) -> ChannelClose {
    loop {
        match within("channel.close", c.read_frame()).await {
            Some(Frame::Method { channel: ch, method: Method::ChannelClose(close) }) if ch == channel => {
                assert_eq!(close.reply_code, code, "{close:?}");
                c.send_method(channel, ChannelCloseOk {}).await;
                return close;
            }
            Some(Frame::Heartbeat) => continue,
            other => panic!("expected channel.close {code}, got {other:?}"),
        }
    }
}

/// Reads everything until the socket closes; None if it stays open.
async fn read_to_close(c: &mut RawClient) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, c.stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

// ---- (a) protocol header ---------------------------------------------------

#[tokio::test]
async fn garbage_instead_of_the_protocol_header_is_answered_with_ours_then_closed() {
    let broker = common::Broker::start();
    for garbage in
        [&b"GET / HT"[..], b"AMQP\x01\x01\x00\x09", b"AMQP\x00\x00\x08\x00", b"\x00\x00\x00\x00\x00\x00\x00\x00"]
    {
        let mut c = RawClient::connect(broker.addr).await;
        c.send_bytes(garbage).await;
        let reply = read_to_close(&mut c).await;
        assert_eq!(reply.as_deref(), Some(raw::HEADER), "answer to {garbage:?}");
    }
    // Longer garbage: the socket still closes; whatever arrived first is our header.
    let mut c = RawClient::connect(broker.addr).await;
    c.send_bytes(b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n").await;
    let reply = read_to_close(&mut c).await.expect("broker closes a socket that speaks HTTP");
    assert!(raw::HEADER.starts_with(&reply), "unexpected answer {reply:?}");
    // Too short to be a header, then silence: the broker gives up and closes.
    let mut c = RawClient::connect(broker.addr).await;
    c.send_bytes(b"AMQ").await;
    c.stream.shutdown().await.expect("shutdown");
    assert!(read_to_close(&mut c).await.is_some(), "broker keeps a half-header connection open");
    assert_broker_serves(&broker).await;
}

// ---- (b) garbage after the handshake ------------------------------------------

#[tokio::test]
async fn garbage_after_the_handshake_is_a_frame_error() {
    let broker = common::Broker::start();
    for garbage in
        [&b"GARBAGE GARBAGE GARBAGE!"[..], b"\xff\x00\x00\x00\x00\x00\x00\xce", b"\x00\x00\x00\x00\x00\x00\x00\xce"]
    {
        let mut c = RawClient::open(broker.addr, 0).await;
        c.send_bytes(garbage).await;
        match connection_outcome(&mut c, WAIT).await {
            Outcome::Closed(close) => assert_eq!(close.reply_code, 501, "{garbage:?}: {close:?}"),
            Outcome::Dropped => {}
        }
    }
    assert_broker_serves(&broker).await;
}

// ---- (c) truncated frame --------------------------------------------------------

#[tokio::test]
async fn a_truncated_frame_then_a_closed_socket_releases_the_connection() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    c.send_method(1, QueueDeclare { queue: "truncated".into(), ..Default::default() }).await;
    assert!(matches!(c.expect_method().await, Method::QueueDeclareOk(_)));
    let mut buf = BytesMut::new();
    encode_method(&mut buf, 1, &BasicPublish { routing_key: "truncated".into(), ..Default::default() }.into());
    encode_content(&mut buf, 1, &[0, 0], b"held", 131_072);
    encode_method(&mut buf, 1, &BasicGet { queue: "truncated".into(), no_ack: false, ..Default::default() }.into());
    c.send_bytes(&buf).await;
    assert!(matches!(within("get-ok", c.expect_method()).await, Method::BasicGetOk(_)));

    // A method frame header promising 100 bytes, 20 of them, then end of stream.
    let whole = frame(1, 1, &[0u8; 100], 0xCE);
    c.send_bytes(&whole[..7 + 20]).await;
    c.stream.shutdown().await.expect("shutdown");
    assert!(read_to_close(&mut c).await.is_some(), "broker keeps the socket of a finished client open");

    // The connection was released: its unacked message is back in the queue.
    let conn = within("connect", Connection::connect(&broker.url(), ConnectionProperties::default())).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let got = loop {
        if let Some(m) =
            within("get", ch.basic_get("truncated".into(), BasicGetOptions { no_ack: true })).await.unwrap()
        {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "the unacked message was never requeued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(got.delivery.data, b"held");
    assert!(got.delivery.redelivered);
    assert_broker_serves(&broker).await;
}

// ---- (d) oversized frames -----------------------------------------------------------

#[tokio::test]
async fn a_frame_above_the_negotiated_frame_max_is_refused_from_its_header() {
    let broker = common::Broker::start();

    // Exactly frame_max (payload 4088 + 8) is fine.
    let mut c = raw_open(broker.addr, 4096).await;
    raw_channel(&mut c, 1).await;
    c.send_method(1, QueueDeclare { queue: "fm".into(), ..Default::default() }).await;
    assert!(matches!(c.expect_method().await, Method::QueueDeclareOk(_)));
    let body = vec![7u8; 4088];
    let mut buf = BytesMut::new();
    encode_method(&mut buf, 1, &BasicPublish { routing_key: "fm".into(), ..Default::default() }.into());
    encode_content(&mut buf, 1, &[0, 0], &body, 4096);
    encode_method(&mut buf, 1, &BasicGet { queue: "fm".into(), no_ack: true, ..Default::default() }.into());
    c.send_bytes(&buf).await;
    assert!(matches!(within("get-ok", c.expect_method()).await, Method::BasicGetOk(_)));
    assert!(matches!(c.read_frame().await, Some(Frame::Header { .. })));
    match c.read_frame().await {
        Some(Frame::Body { payload, .. }) => assert_eq!(payload.len(), 4088),
        other => panic!("expected one full body frame, got {other:?}"),
    }

    // As RabbitMQ, a payload of frame_max bytes (the client left the 8
    // bytes of framing out of its count) is tolerated.
    let full = vec![9u8; 4096];
    let mut buf = BytesMut::new();
    encode_method(&mut buf, 1, &BasicPublish { routing_key: "fm".into(), ..Default::default() }.into());
    encode_content(&mut buf, 1, &[0, 0], &full, 4096 + 8);
    encode_method(&mut buf, 1, &BasicGet { queue: "fm".into(), no_ack: true, ..Default::default() }.into());
    c.send_bytes(&buf).await;
    assert!(matches!(within("get-ok", c.expect_method()).await, Method::BasicGetOk(_)));
    assert!(matches!(c.read_frame().await, Some(Frame::Header { .. })));
    let mut received = 0;
    while received < full.len() {
        match c.read_frame().await {
            Some(Frame::Body { payload, .. }) => received += payload.len(),
            other => panic!("expected the body back, got {other:?}"),
        }
    }
    assert_eq!(received, full.len());

    // A payload one byte above frame_max: only the 7-byte header is sent,
    // and the answer must not wait for the payload.
    let mut buf = BytesMut::new();
    encode_method(&mut buf, 1, &BasicPublish { routing_key: "fm".into(), ..Default::default() }.into());
    encode_content(&mut buf, 1, &[0, 0], &body[..10], 4096);
    // Strip the small body frame; announce a 4097-byte one instead.
    let content_len = buf.len() - (8 + 10);
    let mut bytes = buf[..content_len].to_vec();
    bytes.extend_from_slice(&[3, 0, 1]);
    bytes.extend_from_slice(&4097u32.to_be_bytes());
    c.send_bytes(&bytes).await;
    match connection_outcome(&mut c, Duration::from_secs(3)).await {
        Outcome::Closed(close) => assert_eq!(close.reply_code, 501, "{close:?}"),
        Outcome::Dropped => panic!("expected connection.close 501, the socket just closed"),
    }

    // With the default frame_max, a header claiming 64 MiB.
    let mut c = RawClient::open(broker.addr, 0).await;
    c.send_bytes(&[1, 0, 1, 0x04, 0, 0, 0]).await;
    match connection_outcome(&mut c, Duration::from_secs(3)).await {
        Outcome::Closed(close) => assert_eq!(close.reply_code, 501, "{close:?}"),
        Outcome::Dropped => panic!("expected connection.close 501, the socket just closed"),
    }

    // Before the handshake is over (right after connection.start), too.
    let mut c = RawClient::connect(broker.addr).await;
    c.send_bytes(raw::HEADER).await;
    assert!(matches!(within("connection.start", c.expect_method()).await, Method::ConnectionStart(_)));
    c.send_bytes(&[1, 0, 0, 0x7f, 0xff, 0xff, 0xff]).await;
    match connection_outcome(&mut c, Duration::from_secs(3)).await {
        Outcome::Closed(close) => assert_eq!(close.reply_code, 501, "{close:?}"),
        Outcome::Dropped => {}
    }
    assert_broker_serves(&broker).await;
}

// ---- (e) deep nesting -------------------------------------------------------------------

/// queue.declare's payload with a hand-built arguments table.
fn queue_declare_payload(queue: &str, arguments: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend(50u16.to_be_bytes());
    p.extend(10u16.to_be_bytes());
    p.extend(0u16.to_be_bytes());
    p.push(queue.len() as u8);
    p.extend_from_slice(queue.as_bytes());
    p.push(0); // passive, durable, exclusive, auto-delete, no-wait
    p.extend_from_slice(arguments);
    p
}

fn long(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

/// {"a": {"a": ... {} ...}} with `depth` tables in all.
fn nested_tables(depth: usize) -> Vec<u8> {
    let mut table = long(&[]);
    for _ in 1..depth {
        let mut entry = vec![1, b'a', b'F'];
        entry.extend(table);
        table = long(&entry);
    }
    table
}

/// {"a": [[[ ... [] ... ]]]} with `depth` arrays.
fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut array = long(&[]);
    for _ in 1..depth {
        let mut item = vec![b'A'];
        item.extend(array);
        array = long(&item);
    }
    let mut entry = vec![1, b'a', b'A'];
    entry.extend(array);
    long(&entry)
}

#[tokio::test]
async fn arguments_nested_a_thousand_levels_deep_are_a_syntax_error() {
    let mut broker = common::Broker::start();
    // Reasonable nesting is accepted.
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    c.send_bytes(&frame(1, 1, &queue_declare_payload("nested-10", &nested_tables(10)), 0xCE)).await;
    c.send_bytes(&frame(1, 1, &queue_declare_payload("nested-arr-10", &nested_arrays(10)), 0xCE)).await;
    for _ in 0..2 {
        match within("declare-ok", c.expect_method()).await {
            Method::QueueDeclareOk(_) => {}
            other => panic!("10 levels of nesting refused: {other:?}"),
        }
    }

    for (what, arguments) in [("tables", nested_tables(1000)), ("arrays", nested_arrays(1000))] {
        let mut c = RawClient::open(broker.addr, 0).await;
        raw_channel(&mut c, 1).await;
        c.send_bytes(&frame(1, 1, &queue_declare_payload("deep", &arguments), 0xCE)).await;
        let close = expect_connection_close(&mut c, 502).await;
        assert!(close.reply_text.starts_with("SYNTAX_ERROR"), "{what}: {close:?}");
        assert!(broker.is_running(), "the broker died on {what} nested 1000 deep");
    }
    assert_broker_serves(&broker).await;
}

// ---- (f) unopened channel ----------------------------------------------------------------

#[tokio::test]
async fn a_method_on_a_channel_that_was_never_opened_is_a_channel_error_504() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    c.send_method(5, QueueDeclare { queue: "x".into(), ..Default::default() }).await;
    let close = expect_connection_close(&mut c, 504).await;
    assert_eq!((close.class_id, close.method_id), (50, 10), "{close:?}");

    // A second channel.open on an open channel is the same error.
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    c.send_method(1, ChannelOpen::default()).await;
    expect_connection_close(&mut c, 504).await;

    // So is a channel that was closed and not reopened.
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 2).await;
    c.send_method(2, ChannelClose { reply_code: 200, ..Default::default() }).await;
    assert!(matches!(within("close-ok", c.expect_method()).await, Method::ChannelCloseOk(_)));
    c.send_method(2, BasicQos { prefetch_count: 1, ..Default::default() }).await;
    expect_connection_close(&mut c, 504).await;
    assert_broker_serves(&broker).await;
}

// ---- (g) content out of place ------------------------------------------------------------

#[tokio::test]
async fn content_frames_without_a_publish_are_unexpected_frames_505() {
    let broker = common::Broker::start();
    let mut header = Vec::new();
    header.extend(60u16.to_be_bytes());
    header.extend(0u16.to_be_bytes());
    header.extend(5u64.to_be_bytes());
    header.extend([0, 0]);
    let cases: [(&str, Vec<u8>); 3] = [
        ("a content header", frame(2, 1, &header, 0xCE)),
        ("a content body", frame(3, 1, b"hello", 0xCE)),
        // A publish, then a method where its content header belongs.
        (
            "a method instead of the content header",
            [
                method_bytes(1, BasicPublish { routing_key: "q".into(), ..Default::default() }),
                method_bytes(1, BasicQos { prefetch_count: 1, ..Default::default() }),
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in cases {
        let mut c = RawClient::open(broker.addr, 0).await;
        raw_channel(&mut c, 1).await;
        c.send_bytes(&bytes).await;
        match connection_outcome(&mut c, WAIT).await {
            Outcome::Closed(close) => assert_eq!(close.reply_code, 505, "{what}: {close:?}"),
            Outcome::Dropped => panic!("{what}: socket closed without connection.close 505"),
        }
    }
    // A body frame after a complete message (header said 5 bytes, 5 arrived) is out of place too.
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    let mut buf = BytesMut::new();
    encode_method(&mut buf, 1, &BasicPublish { routing_key: "q".into(), ..Default::default() }.into());
    encode_content(&mut buf, 1, &[0, 0], b"12345", 131_072);
    buf.extend_from_slice(&frame(3, 1, b"extra", 0xCE));
    c.send_bytes(&buf).await;
    expect_connection_close(&mut c, 505).await;
    assert_broker_serves(&broker).await;
}

// ---- (h) frame end ------------------------------------------------------------------------

#[tokio::test]
async fn a_bad_frame_end_octet_is_a_frame_error_501() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    let open = method_bytes(1, ChannelOpen::default());
    let mut bad = open.clone();
    *bad.last_mut().unwrap() = 0xCD;
    c.send_bytes(&bad).await;
    expect_connection_close(&mut c, 501).await;

    // A heartbeat must be on channel 0.
    let mut c = RawClient::open(broker.addr, 0).await;
    c.send_bytes(&frame(8, 1, &[], 0xCE)).await;
    expect_connection_close(&mut c, 501).await;
    assert_broker_serves(&broker).await;
}

// ---- (i) unknown methods --------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_method_closes_the_connection() {
    let broker = common::Broker::start();
    for (class, method) in [(60u16, 999u16), (99, 10), (10, 99)] {
        let mut c = RawClient::open(broker.addr, 0).await;
        raw_channel(&mut c, 1).await;
        let mut payload = class.to_be_bytes().to_vec();
        payload.extend(method.to_be_bytes());
        let channel = if class == 10 { 0 } else { 1 };
        c.send_bytes(&frame(1, channel, &payload, 0xCE)).await;
        match connection_outcome(&mut c, WAIT).await {
            Outcome::Closed(close) => {
                assert!([503, 540].contains(&close.reply_code), "{class}.{method}: {close:?}")
            }
            Outcome::Dropped => panic!("{class}.{method}: socket closed without connection.close"),
        }
    }
    assert_broker_serves(&broker).await;
}

// ---- channel errors leave the connection usable --------------------------------------------

#[tokio::test]
async fn a_channel_error_leaves_the_other_channels_working() {
    let broker = common::Broker::start();
    let conn = within("connect", Connection::connect(&broker.url(), ConnectionProperties::default())).await.unwrap();
    let bad = conn.create_channel().await.unwrap();
    let good = conn.create_channel().await.unwrap();
    within("declare", good.queue_declare("kept".into(), QueueDeclareOptions::default(), FieldTable::default()))
        .await
        .unwrap();
    let mut consumer = within(
        "consume",
        good.basic_consume(
            "kept".into(),
            "kept-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let err = within("passive declare", bad.queue_declare("missing".into(), passive, FieldTable::default()))
        .await
        .expect_err("a passive declare of a missing queue");
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => assert_eq!(e.get_id(), 404, "{err:?}"),
        other => panic!("expected a 404 channel error, got {other:?}"),
    }
    assert!(conn.status().connected(), "a channel error must not close the connection");
    let confirm = within(
        "publish",
        good.basic_publish("".into(), "kept".into(), Default::default(), b"after 404", Default::default()),
    )
    .await
    .unwrap();
    within("confirm", confirm).await.unwrap();
    let d = within("delivery", consumer.next()).await.expect("stream").expect("delivery");
    assert_eq!(d.data, b"after 404");
    d.ack(BasicAckOptions::default()).await.unwrap();
    // A new channel on the same connection works too.
    let third = conn.create_channel().await.unwrap();
    within("declare", third.queue_declare("kept".into(), passive, FieldTable::default())).await.unwrap();

    // Raw: after channel.close 404 and close-ok, the same channel number opens again.
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    raw_channel(&mut c, 2).await;
    c.send_method(1, QueueDeclare { queue: "missing".into(), passive: true, ..Default::default() }).await;
    let close = expect_channel_close(&mut c, 1, 404).await;
    assert_eq!((close.class_id, close.method_id), (50, 10));
    c.send_method(2, QueueDeclare { queue: "kept".into(), passive: true, ..Default::default() }).await;
    assert!(matches!(within("declare-ok", c.expect_method()).await, Method::QueueDeclareOk(_)));
    raw_channel(&mut c, 1).await;
    c.send_method(1, QueueDeclare { queue: "kept".into(), passive: true, ..Default::default() }).await;
    assert!(matches!(within("declare-ok", c.expect_method()).await, Method::QueueDeclareOk(_)));
}

// ---- (j) many bad clients at once -----------------------------------------------------------

/// One bad client: misbehaves in way `kind`, then checks the broker threw it out.
async fn misbehave(addr: SocketAddr, kind: usize) {
    match kind {
        0 => {
            let mut c = RawClient::connect(addr).await;
            c.send_bytes(b"HTTP/1.").await;
            c.send_bytes(b"1").await;
            assert_eq!(read_to_close(&mut c).await.as_deref(), Some(raw::HEADER));
        }
        1 => {
            let mut c = RawClient::open(addr, 0).await;
            c.send_bytes(b"\x41\x42\x43\x44\x45\x46\x47\x48\x49").await;
            if let Outcome::Closed(close) = connection_outcome(&mut c, WAIT).await {
                assert_eq!(close.reply_code, 501);
            }
        }
        2 => {
            let mut c = RawClient::open(addr, 0).await;
            c.send_bytes(&[3, 0, 1, 0x10, 0, 0, 0]).await;
            expect_connection_close(&mut c, 501).await;
        }
        3 => {
            let mut c = RawClient::open(addr, 0).await;
            raw_channel(&mut c, 1).await;
            c.send_bytes(&frame(1, 1, &queue_declare_payload("deep", &nested_tables(1000)), 0xCE)).await;
            expect_connection_close(&mut c, 502).await;
        }
        4 => {
            let mut c = RawClient::open(addr, 0).await;
            c.send_method(9, BasicQos::default()).await;
            expect_connection_close(&mut c, 504).await;
        }
        5 => {
            let mut c = RawClient::open(addr, 0).await;
            raw_channel(&mut c, 1).await;
            c.send_bytes(&frame(3, 1, b"body", 0xCE)).await;
            expect_connection_close(&mut c, 505).await;
        }
        6 => {
            let mut c = RawClient::open(addr, 0).await;
            c.send_bytes(&frame(1, 1, &[0, 20, 0, 10, 0], 0x00)).await;
            expect_connection_close(&mut c, 501).await;
        }
        7 => {
            // Truncated frame, then gone.
            let mut c = RawClient::open(addr, 0).await;
            c.send_bytes(&[1, 0, 1, 0, 0, 1, 0, 0, 50]).await;
            c.stream.shutdown().await.expect("shutdown");
            assert!(read_to_close(&mut c).await.is_some());
        }
        8 => {
            // Many channels, then vanish without closing anything.
            let mut c = RawClient::open(addr, 0).await;
            for ch in 1..=50 {
                c.send_method(ch, ChannelOpen::default()).await;
            }
            for _ in 1..=50 {
                assert!(matches!(within("open-ok", c.expect_method()).await, Method::ChannelOpenOk(_)));
            }
        }
        _ => {
            // A half-sent protocol header, then nothing.
            let mut c = RawClient::connect(addr).await;
            c.send_bytes(b"AMQP\x00").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_client_keeps_working_while_many_bad_clients_misbehave() {
    let mut broker = common::Broker::start();
    let addr = broker.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let mut bad = Vec::new();
    for task in 0..20 {
        let stop = stop.clone();
        let rounds = rounds.clone();
        bad.push(tokio::spawn(async move {
            let mut kind = task;
            while !stop.load(Ordering::Relaxed) {
                misbehave(addr, kind % 10).await;
                rounds.fetch_add(1, Ordering::Relaxed);
                kind += 1;
            }
        }));
    }

    let conn = within("connect", Connection::connect(&broker.url(), ConnectionProperties::default())).await.unwrap();
    let publisher = conn.create_channel().await.unwrap();
    within("confirm.select", publisher.confirm_select(ConfirmSelectOptions::default())).await.unwrap();
    let consumer_ch = conn.create_channel().await.unwrap();
    within(
        "declare",
        consumer_ch.queue_declare("steady".into(), QueueDeclareOptions::default(), FieldTable::default()),
    )
    .await
    .unwrap();
    let mut consumer = within(
        "consume",
        consumer_ch.basic_consume(
            "steady".into(),
            "steady".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    for i in 0..300u32 {
        let body = i.to_be_bytes();
        let confirm = within(
            "publish",
            publisher.basic_publish("".into(), "steady".into(), Default::default(), &body, Default::default()),
        )
        .await
        .expect("publish");
        assert_eq!(within("confirm", confirm).await.expect("confirm"), Confirmation::Ack(None), "publish {i}");
        let d = within("delivery", consumer.next()).await.expect("stream").expect("delivery");
        assert_eq!(d.data, body, "message {i} out of order or corrupted");
        assert!(!d.redelivered);
        within("ack", d.ack(BasicAckOptions::default())).await.expect("ack");
        if i == 299 && started.elapsed() < Duration::from_secs(2) {
            // Keep going a little so the bad clients get plenty of rounds in.
            tokio::time::sleep(Duration::from_secs(2) - started.elapsed()).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in bad {
        within("bad client task", task).await.expect("a bad client's check failed");
    }
    assert!(rounds.load(Ordering::Relaxed) >= 40, "only {} bad rounds ran", rounds.load(Ordering::Relaxed));
    assert!(broker.is_running(), "the broker died");
    within("close", conn.close(200, "bye".into())).await.expect("close");
    assert_broker_serves(&broker).await;
}
