//! The connection class against the real binary: the protocol header, SASL,
//! tuning, heartbeats, the handshake timeout, and both close handshakes.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable as LapinTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::amqp::{WAIT, connect, connect_url, reply_code, within};
use common::raw::{HEADER, RawClient};
use warren::protocol::method::*;
use warren::protocol::{FieldTable, FieldValue, Frame, Method};

/// Sends the protocol header and reads connection.start.
async fn start(addr: SocketAddr) -> (RawClient, ConnectionStart) {
    let mut c = RawClient::connect(addr).await;
    c.send_bytes(HEADER).await;
    match c.expect_method().await {
        Method::ConnectionStart(s) => (c, s),
        other => panic!("expected connection.start, got {other:?}"),
    }
}

fn plain(user: &str, password: &str) -> Bytes {
    Bytes::from(format!("\0{user}\0{password}"))
}

/// An AMQPLAIN response: the entries of a field table without its length prefix.
fn amqplain(user: &str, password: &str) -> Bytes {
    let mut buf = BytesMut::new();
    for (key, value) in [("LOGIN", user), ("PASSWORD", password)] {
        buf.put_u8(key.len() as u8);
        buf.put_slice(key.as_bytes());
        buf.put_u8(b'S');
        buf.put_u32(value.len() as u32);
        buf.put_slice(value.as_bytes());
    }
    buf.freeze()
}

/// Sends start-ok and returns what the broker answers (tune, or close on refusal).
async fn start_ok(c: &mut RawClient, mechanism: &str, response: Bytes) -> Method {
    c.send_method(
        0,
        ConnectionStartOk {
            client_properties: FieldTable::new(),
            mechanism: mechanism.into(),
            response,
            locale: "en_US".into(),
        },
    )
    .await;
    c.expect_method().await
}

/// Logs in with `mechanism` and opens the connection; requires connection.open-ok.
async fn login(addr: SocketAddr, mechanism: &str, response: Bytes) {
    let (mut c, _) = start(addr).await;
    let tune = match start_ok(&mut c, mechanism, response).await {
        Method::ConnectionTune(t) => t,
        other => panic!("expected connection.tune, got {other:?}"),
    };
    c.send_method(0, ConnectionTuneOk { channel_max: tune.channel_max, frame_max: tune.frame_max, heartbeat: 0 }).await;
    c.send_method(0, ConnectionOpen { virtual_host: "/".into(), ..Default::default() }).await;
    assert!(matches!(c.expect_method().await, Method::ConnectionOpenOk(_)));
}

/// Runs the handshake up to (not including) tune-ok; returns the broker's tune.
async fn until_tune(addr: SocketAddr) -> (RawClient, ConnectionTune) {
    let (mut c, _) = start(addr).await;
    match start_ok(&mut c, "PLAIN", plain("guest", "guest")).await {
        Method::ConnectionTune(t) => (c, t),
        other => panic!("expected connection.tune, got {other:?}"),
    }
}

/// Reads until connection.close arrives; skips heartbeats.
async fn expect_connection_close(c: &mut RawClient) -> ConnectionClose {
    loop {
        match c.read_frame().await {
            Some(Frame::Method { channel: 0, method: Method::ConnectionClose(close) }) => return close,
            Some(Frame::Heartbeat) => continue,
            other => panic!("expected connection.close, got {other:?}"),
        }
    }
}

/// Answers a server-initiated close and checks the socket then closes.
async fn finish_close(c: &mut RawClient) {
    c.send_method(0, ConnectionCloseOk {}).await;
    assert!(c.closed_within(Duration::from_secs(5)).await, "socket still open after connection.close-ok");
}

fn heartbeat_frame() -> [u8; 8] {
    [8, 0, 0, 0, 0, 0, 0, 0xCE]
}

// ---- handshake ---------------------------------------------------------

#[tokio::test]
async fn lapin_completes_the_handshake_with_the_default_tuning() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    assert!(conn.status().connected());
    // lapin accepts what the broker proposes in connection.tune.
    assert_eq!(conn.configuration().frame_max(), 131_072);
    assert_eq!(conn.configuration().channel_max(), 2047);
    assert_eq!(conn.configuration().heartbeat(), 60);
    let ch = within("channel", conn.create_channel()).await.expect("channel");
    let q = within("declare", ch.queue_declare("".into(), QueueDeclareOptions::default(), LapinTable::default()))
        .await
        .expect("declare");
    assert!(q.name().as_str().starts_with("amq.gen-"));
    within("close", conn.close(200, "bye".into())).await.expect("close");
}

#[tokio::test]
async fn mismatched_protocol_headers_get_the_supported_header_and_a_close() {
    let broker = common::Broker::start();
    for header in [&b"AMQP\x00\x00\x09\x02"[..], b"HTTP/1.1", b"AMQP\x01\x01\x00\x0a", b"AMQP\x00\x00\x08\x00"] {
        let mut s = TcpStream::connect(broker.addr).await.expect("tcp connect");
        s.write_all(header).await.expect("write");
        let mut answer = Vec::new();
        within("the broker closing the socket", s.read_to_end(&mut answer)).await.expect("read");
        assert_eq!(answer, b"AMQP\x00\x00\x09\x01", "answer to header {header:?}");
    }
}

#[tokio::test]
async fn connection_start_offers_version_0_9_mechanisms_and_capabilities() {
    let broker = common::Broker::start();
    let (_c, s) = start(broker.addr).await;
    assert_eq!((s.version_major, s.version_minor), (0, 9));
    let mechanisms = String::from_utf8(s.mechanisms.to_vec()).expect("utf-8 mechanisms");
    let mechanisms: Vec<&str> = mechanisms.split(' ').collect();
    assert!(mechanisms.contains(&"PLAIN"), "mechanisms {mechanisms:?}");
    assert!(mechanisms.contains(&"AMQPLAIN"), "mechanisms {mechanisms:?}");
    let locales = String::from_utf8(s.locales.to_vec()).expect("utf-8 locales");
    assert!(locales.split(' ').any(|l| l == "en_US"), "locales {locales:?}");
    let Some(FieldValue::Table(caps)) = s.server_properties.get("capabilities") else {
        panic!("no capabilities table in {:?}", s.server_properties);
    };
    for cap in ["publisher_confirms", "exchange_exchange_bindings", "basic.nack", "consumer_cancel_notify"] {
        assert_eq!(caps.get(cap), Some(&FieldValue::Bool(true)), "capability {cap}");
    }
    assert!(s.server_properties.get("product").and_then(FieldValue::as_str).is_some(), "no product property");
}

#[tokio::test]
async fn connection_tune_proposes_the_default_limits() {
    let broker = common::Broker::start();
    let (_c, tune) = until_tune(broker.addr).await;
    assert_eq!(tune.frame_max, 131_072);
    assert_eq!(tune.channel_max, 2047);
    assert_eq!(tune.heartbeat, 60);
}

// ---- authentication ------------------------------------------------------

#[tokio::test]
async fn plain_login_is_accepted() {
    let broker = common::Broker::start();
    login(broker.addr, "PLAIN", plain("guest", "guest")).await;
}

#[tokio::test]
async fn amqplain_login_is_accepted_from_the_raw_client() {
    let broker = common::Broker::start();
    login(broker.addr, "AMQPLAIN", amqplain("guest", "guest")).await;
}

#[tokio::test]
async fn amqplain_login_is_accepted_from_lapin() {
    let broker = common::Broker::start();
    let conn = connect_url(&format!("{}?auth_mechanism=amqplain", broker.url())).await;
    let ch = within("channel", conn.create_channel()).await.expect("channel");
    within("declare", ch.queue_declare("amqplain".into(), QueueDeclareOptions::default(), LapinTable::default()))
        .await
        .expect("declare");
    within("close", conn.close(200, "bye".into())).await.expect("close");
}

#[tokio::test]
async fn wrong_password_is_refused_with_403() {
    let broker = common::Broker::start();
    for (mechanism, response) in
        [("PLAIN", plain("guest", "wrong")), ("AMQPLAIN", amqplain("guest", "wrong")), ("PLAIN", plain("nobody", "x"))]
    {
        let (mut c, _) = start(broker.addr).await;
        match start_ok(&mut c, mechanism, response).await {
            Method::ConnectionClose(close) => assert_eq!(close.reply_code, 403, "{mechanism}: {close:?}"),
            other => panic!("{mechanism}: expected connection.close, got {other:?}"),
        }
        finish_close(&mut c).await;
    }
    let url = format!("amqp://guest:wrong@{}/%2f", broker.addr);
    let result = within("lapin connect", Connection::connect(&url, ConnectionProperties::default())).await;
    let err = result.expect_err("lapin connected with a wrong password");
    assert_eq!(reply_code(&err), Some(403), "lapin error {err:?}");
}

#[tokio::test]
async fn unsupported_mechanism_is_refused() {
    let broker = common::Broker::start();
    let (mut c, _) = start(broker.addr).await;
    match start_ok(&mut c, "EXTERNAL", Bytes::new()).await {
        Method::ConnectionClose(close) => assert_eq!(close.reply_code, 403, "{close:?}"),
        other => panic!("expected connection.close, got {other:?}"),
    }
}

#[tokio::test]
async fn unknown_vhost_is_refused_with_530() {
    let broker = common::Broker::start();
    let (mut c, tune) = until_tune(broker.addr).await;
    c.send_method(0, ConnectionTuneOk { channel_max: tune.channel_max, frame_max: tune.frame_max, heartbeat: 0 }).await;
    c.send_method(0, ConnectionOpen { virtual_host: "no-such-vhost".into(), ..Default::default() }).await;
    let close = expect_connection_close(&mut c).await;
    assert_eq!(close.reply_code, 530, "{close:?}");
    finish_close(&mut c).await;

    let url = format!("amqp://guest:guest@{}/no-such-vhost", broker.addr);
    let result = within("lapin connect", Connection::connect(&url, ConnectionProperties::default())).await;
    let err = result.expect_err("lapin connected to a missing vhost");
    assert_eq!(reply_code(&err), Some(530), "lapin error {err:?}");
}

// ---- tuning --------------------------------------------------------------

#[tokio::test]
async fn tune_ok_with_frame_max_above_the_servers_is_refused() {
    let broker = common::Broker::start();
    let (mut c, tune) = until_tune(broker.addr).await;
    c.send_method(0, ConnectionTuneOk { channel_max: tune.channel_max, frame_max: tune.frame_max + 1, heartbeat: 0 })
        .await;
    c.send_method(0, ConnectionOpen { virtual_host: "/".into(), ..Default::default() }).await;
    let close = expect_connection_close(&mut c).await;
    assert_eq!(close.reply_code, 530, "{close:?}");
    finish_close(&mut c).await;
}

#[tokio::test]
async fn tune_ok_with_frame_max_below_4096_is_refused() {
    let broker = common::Broker::start();
    let (mut c, tune) = until_tune(broker.addr).await;
    c.send_method(0, ConnectionTuneOk { channel_max: tune.channel_max, frame_max: 4095, heartbeat: 0 }).await;
    c.send_method(0, ConnectionOpen { virtual_host: "/".into(), ..Default::default() }).await;
    let close = expect_connection_close(&mut c).await;
    assert_eq!(close.reply_code, 530, "{close:?}");
    finish_close(&mut c).await;
}

#[tokio::test]
async fn tune_ok_may_lower_frame_max_to_the_minimum() {
    let broker = common::Broker::start();
    let (mut c, tune) = until_tune(broker.addr).await;
    c.send_method(0, ConnectionTuneOk { channel_max: tune.channel_max, frame_max: 4096, heartbeat: 0 }).await;
    c.send_method(0, ConnectionOpen { virtual_host: "/".into(), ..Default::default() }).await;
    assert!(matches!(c.expect_method().await, Method::ConnectionOpenOk(_)));
    c.send_method(1, ChannelOpen::default()).await;
    assert!(matches!(c.expect_method().await, Method::ChannelOpenOk(_)));
}

#[tokio::test]
async fn tune_ok_with_channel_max_above_the_servers_is_refused() {
    let broker = common::Broker::start();
    let (mut c, tune) = until_tune(broker.addr).await;
    c.send_method(0, ConnectionTuneOk { channel_max: tune.channel_max + 1, frame_max: tune.frame_max, heartbeat: 0 })
        .await;
    c.send_method(0, ConnectionOpen { virtual_host: "/".into(), ..Default::default() }).await;
    let close = expect_connection_close(&mut c).await;
    assert_eq!(close.reply_code, 530, "{close:?}");
}

// ---- heartbeats ----------------------------------------------------------

#[tokio::test]
async fn broker_sends_heartbeats_when_one_second_is_negotiated() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 1).await;
    let started = Instant::now();
    let mut seen = 0;
    while seen < 2 && started.elapsed() < Duration::from_secs(5) {
        // Keep our side alive so only the broker's heartbeats are being observed.
        c.send_bytes(&heartbeat_frame()).await;
        match c.read_frame_within(Duration::from_millis(400)).await {
            Some(Frame::Heartbeat) => seen += 1,
            Some(other) => panic!("unexpected frame {other:?}"),
            None => {}
        }
    }
    assert_eq!(seen, 2, "broker heartbeats seen within {:?}", started.elapsed());
}

#[tokio::test]
async fn silent_client_with_one_second_heartbeat_is_dropped() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 1).await;
    let started = Instant::now();
    assert!(c.closed_within(Duration::from_secs(8)).await, "silent client still connected after 8 s");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "dropped after only {elapsed:?}");
}

#[tokio::test]
async fn client_sending_heartbeats_stays_connected() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 1).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        c.send_bytes(&heartbeat_frame()).await;
        match c.read_frame_within(Duration::from_millis(300)).await {
            Some(Frame::Heartbeat) | None => {}
            Some(other) => panic!("unexpected frame {other:?}"),
        }
    }
    c.send_method(1, ChannelOpen::default()).await;
    assert!(matches!(c.expect_method().await, Method::ChannelOpenOk(_)));
}

#[tokio::test]
async fn heartbeat_zero_disables_heartbeats() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    assert_eq!(c.read_frame_within(Duration::from_secs(3)).await, None, "a frame arrived with heartbeats disabled");
    c.send_method(1, ChannelOpen::default()).await;
    assert!(matches!(c.expect_method().await, Method::ChannelOpenOk(_)));
}

// ---- handshake timeout ---------------------------------------------------

fn broker_with_handshake_timeout() -> (tempfile::TempDir, common::Broker) {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let config = scratch.path().join("warren.toml");
    std::fs::write(&config, "handshake_timeout = 1\n").expect("write config");
    let broker = common::Broker::start_in(&scratch.path().join("data"), &["--config", config.to_str().expect("path")]);
    (scratch, broker)
}

#[tokio::test]
async fn client_sending_only_the_header_is_dropped_after_the_handshake_timeout() {
    let (_scratch, broker) = broker_with_handshake_timeout();
    let (mut c, _) = start(broker.addr).await;
    let started = Instant::now();
    assert!(c.closed_within(Duration::from_secs(6)).await, "client still connected 6 s into the handshake");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(700), "dropped after only {elapsed:?}");
}

#[tokio::test]
async fn client_sending_nothing_is_dropped_after_the_handshake_timeout() {
    let (_scratch, broker) = broker_with_handshake_timeout();
    let mut c = RawClient::connect(broker.addr).await;
    assert!(c.closed_within(Duration::from_secs(6)).await, "silent socket still open after 6 s");
}

#[tokio::test]
async fn handshake_timeout_does_not_apply_after_the_handshake() {
    let (_scratch, broker) = broker_with_handshake_timeout();
    let mut c = RawClient::open(broker.addr, 0).await;
    assert_eq!(c.read_frame_within(Duration::from_millis(2500)).await, None, "broker sent something or closed");
    c.send_method(1, ChannelOpen::default()).await;
    assert!(matches!(c.expect_method().await, Method::ChannelOpenOk(_)));
}

// ---- closing ---------------------------------------------------------------

#[tokio::test]
async fn client_connection_close_gets_close_ok() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    c.send_method(1, ChannelOpen::default()).await;
    assert!(matches!(c.expect_method().await, Method::ChannelOpenOk(_)));
    c.send_method(0, ConnectionClose { reply_code: 200, reply_text: "bye".into(), class_id: 0, method_id: 0 }).await;
    match c.expect_method().await {
        Method::ConnectionCloseOk(_) => {}
        other => panic!("expected connection.close-ok, got {other:?}"),
    }
    assert!(c.closed_within(Duration::from_secs(5)).await, "socket still open after close-ok");

    let conn = connect(&broker).await;
    // lapin's close resolves only once the broker's close-ok arrived.
    within("lapin close", conn.close(200, "bye".into())).await.expect("lapin close");
}

async fn ready_count(conn: &Connection, queue: &str) -> Result<u32, lapin::Error> {
    let ch = within("channel", conn.create_channel()).await?;
    let q = within(
        "passive declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            LapinTable::default(),
        ),
    )
    .await?;
    let _ = ch.close(200, "ok".into()).await;
    Ok(q.message_count())
}

/// Polls until the queue reports `want` ready messages, or fails after a deadline.
async fn wait_ready(conn: &Connection, queue: &str, want: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        let have = ready_count(conn, queue).await.expect("passive declare");
        if have == want {
            return;
        }
        assert!(Instant::now() < deadline, "queue '{queue}' has {have} ready messages, want {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until a passive declare of `queue` fails with 404.
async fn wait_gone(conn: &Connection, queue: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        match ready_count(conn, queue).await {
            Err(e) if reply_code(&e) == Some(404) => return,
            Err(e) => panic!("unexpected error {e:?}"),
            Ok(_) => assert!(Instant::now() < deadline, "queue '{queue}' still exists"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn closing_a_connection_requeues_unacked_messages_and_deletes_exclusive_queues() {
    let broker = common::Broker::start();
    let owner = connect(&broker).await;
    let ch = within("channel", owner.create_channel()).await.expect("channel");
    within("declare", ch.queue_declare("work".into(), QueueDeclareOptions::default(), LapinTable::default()))
        .await
        .expect("declare work");
    within(
        "declare exclusive",
        ch.queue_declare(
            "mine".into(),
            QueueDeclareOptions { exclusive: true, ..Default::default() },
            LapinTable::default(),
        ),
    )
    .await
    .expect("declare mine");
    for body in [&b"one"[..], b"two", b"three"] {
        within("publish", ch.basic_publish("".into(), "work".into(), Default::default(), body, Default::default()))
            .await
            .expect("publish");
    }
    let mut consumer = within(
        "consume",
        ch.basic_consume("work".into(), "holder".into(), BasicConsumeOptions::default(), LapinTable::default()),
    )
    .await
    .expect("consume");
    for _ in 0..3 {
        let d = within("delivery", consumer.next()).await.expect("a delivery").expect("delivery ok");
        assert!(!d.redelivered);
    }

    let observer = connect(&broker).await;
    assert_eq!(ready_count(&observer, "work").await.expect("work exists"), 0, "messages are held unacked");
    assert_eq!(ready_count(&observer, "mine").await.err().and_then(|e| reply_code(&e)), Some(405));

    within("close", owner.close(200, "bye".into())).await.expect("close");
    wait_ready(&observer, "work", 3).await;
    wait_gone(&observer, "mine").await;

    let ch = within("channel", observer.create_channel()).await.expect("channel");
    let got = within("get", ch.basic_get("work".into(), BasicGetOptions { no_ack: true })).await.expect("get");
    let got = got.expect("a message");
    assert_eq!(got.delivery.data, b"one", "requeued messages keep their order");
    assert!(got.delivery.redelivered, "a requeued message is flagged redelivered");
}

#[tokio::test]
async fn dropping_the_socket_releases_the_connections_resources() {
    let broker = common::Broker::start();
    let observer = connect(&broker).await;
    let ch = within("channel", observer.create_channel()).await.expect("channel");
    within("declare", ch.queue_declare("shared".into(), QueueDeclareOptions::default(), LapinTable::default()))
        .await
        .expect("declare");
    within(
        "publish",
        ch.basic_publish("".into(), "shared".into(), Default::default(), b"m", BasicProperties::default()),
    )
    .await
    .expect("publish");
    wait_ready(&observer, "shared", 1).await;

    let mut c = RawClient::open(broker.addr, 0).await;
    c.send_method(1, ChannelOpen::default()).await;
    assert!(matches!(c.expect_method().await, Method::ChannelOpenOk(_)));
    c.send_method(1, QueueDeclare { queue: "raw-exclusive".into(), exclusive: true, ..Default::default() }).await;
    assert!(matches!(c.expect_method().await, Method::QueueDeclareOk(_)));
    c.send_method(1, BasicGet { queue: "shared".into(), no_ack: false, ..Default::default() }).await;
    assert!(matches!(c.expect_method().await, Method::BasicGetOk(_)));
    wait_ready(&observer, "shared", 0).await;

    drop(c);
    wait_ready(&observer, "shared", 1).await;
    wait_gone(&observer, "raw-exclusive").await;
}

// ---- frame limits and channel state --------------------------------------------

#[tokio::test]
async fn frame_larger_than_the_negotiated_frame_max_is_a_frame_error() {
    let broker = common::Broker::start();
    let (mut c, tune) = until_tune(broker.addr).await;
    c.send_method(0, ConnectionTuneOk { channel_max: tune.channel_max, frame_max: 4096, heartbeat: 0 }).await;
    c.send_method(0, ConnectionOpen { virtual_host: "/".into(), ..Default::default() }).await;
    assert!(matches!(c.expect_method().await, Method::ConnectionOpenOk(_)));
    c.send_method(1, ChannelOpen::default()).await;
    assert!(matches!(c.expect_method().await, Method::ChannelOpenOk(_)));
    // A body frame of 5000 payload bytes: over the 4096 agreed on, frame header included.
    let mut frame = BytesMut::new();
    frame.put_u8(3);
    frame.put_u16(1);
    frame.put_u32(5000);
    frame.put_slice(&[0u8; 5000]);
    frame.put_u8(0xCE);
    c.send_bytes(&frame).await;
    let close = expect_connection_close(&mut c).await;
    assert_eq!(close.reply_code, 501, "{close:?}");
    finish_close(&mut c).await;
}

#[tokio::test]
async fn method_on_a_channel_that_was_never_opened_is_a_channel_error() {
    let broker = common::Broker::start();
    let mut c = RawClient::open(broker.addr, 0).await;
    c.send_method(3, QueueDeclare { queue: "q".into(), ..Default::default() }).await;
    let close = expect_connection_close(&mut c).await;
    assert_eq!(close.reply_code, 504, "{close:?}");
    finish_close(&mut c).await;
}
