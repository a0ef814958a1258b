//! Clients that misbehave: each one ends closed (or bounded) while a
//! well-behaved client on the same broker is served meanwhile. A client
//! that never reads what it is sent, one that dribbles its handshake or a
//! frame a byte at a time, floods of channel open/close and of heartbeats.

mod common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use lapin::BasicProperties;
use lapin::options::*;
use tokio::io::AsyncWriteExt;
use warren::protocol::frame::encode_content;
use warren::protocol::method::*;
use warren::protocol::{Frame, Method, encode_method};

use common::amqp::*;
use common::raw::{HEADER, RawClient};

/// A broker that drops a client after 1 s without reading and gives a
/// handshake 2 s.
fn strict_broker(scratch: &tempfile::TempDir) -> common::Broker {
    let config = scratch.path().join("warren.toml");
    std::fs::write(&config, "send_timeout = 1000\nhandshake_timeout = 2\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    common::Broker::start_in(&scratch.path().join("data"), &["--config", &config])
}

/// A well-behaved client: declares, publishes with a confirm, gets the
/// message back, all within a few seconds.
async fn served(broker: &common::Broker, queue: &str) {
    let started = Instant::now();
    let conn = connect(broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, queue).await;
    publish_props(&ch, queue, b"still served", BasicProperties::default()).await;
    let got = within("basic.get", ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(got.delivery.data, b"still served");
    assert!(started.elapsed() < Duration::from_secs(5), "served in {:?}", started.elapsed());
    let _ = conn.close(200, "bye".into()).await;
}

async fn poll(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_never_reads_is_dropped_and_its_messages_requeued() {
    const COUNT: usize = 10_000;
    let scratch = tempfile::tempdir().unwrap();
    let broker = strict_broker(&scratch);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "flood").await;
    let body = vec![b'x'; 8192];
    for _ in 0..COUNT {
        ch.basic_publish("".into(), "flood".into(), BasicPublishOptions::default(), &body, BasicProperties::default())
            .await
            .expect("publish");
    }
    ch.wait_for_confirms().await.expect("confirms");

    // Consumes with no prefetch limit and never reads its socket.
    let mut sleeper = RawClient::open(broker.addr, 0).await;
    sleeper.send_method(1, ChannelOpen::default()).await;
    sleeper
        .send_method(1, BasicConsume { queue: "flood".into(), consumer_tag: "never".into(), ..Default::default() })
        .await;

    served(&broker, "meanwhile").await;
    poll("the never-reading consumer dropped", Duration::from_secs(20), || broker.log().contains("send timeout")).await;
    poll("its deliveries back in the queue", Duration::from_secs(10), || {
        common::amqp::queue_stats(&broker, "flood").0 as usize == COUNT
    })
    .await;
    served(&broker, "afterwards").await;
    drop(sleeper);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_never_reads_its_returns_is_bounded_then_dropped() {
    let scratch = tempfile::tempdir().unwrap();
    let broker = strict_broker(&scratch);
    let mut flooder = RawClient::open(broker.addr, 0).await;
    flooder.send_method(1, ChannelOpen::default()).await;
    // Mandatory publishes nobody can route: each comes back as basic.return.
    let mut burst = BytesMut::new();
    let body = vec![b'r'; 16 * 1024];
    let props = warren::protocol::BasicProperties::default().to_bytes();
    for _ in 0..256 {
        let publish = BasicPublish { routing_key: "nowhere".into(), mandatory: true, ..Default::default() };
        encode_method(&mut burst, 1, &publish.into());
        encode_content(&mut burst, 1, &props, &body, 131_072);
    }
    let burst = burst.freeze();
    let mut stream = flooder.stream;
    let writer = tokio::spawn(async move {
        // Writes until the broker stops reading (the write then waits) or
        // drops the connection (the write fails).
        let mut sent = 0usize;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), stream.write_all(&burst)).await {
                Ok(Ok(())) => sent += burst.len(),
                Ok(Err(_)) => return (sent, true),
                Err(_) => return (sent, false),
            }
        }
    });
    served(&broker, "meanwhile").await;
    let (sent, dropped) = within("the flooder's end", writer).await.expect("writer task");
    assert!(dropped, "the broker dropped the connection");
    assert!(broker.log().contains("send timeout"), "{}", broker.log());
    // The broker read only what its bound let it: tens of MB at most, not
    // the gigabytes a non-stop writer would push in 30 s.
    assert!(sent < 200 << 20, "{sent} bytes accepted");
    served(&broker, "afterwards").await;
}

#[tokio::test]
async fn a_handshake_dribbled_a_byte_at_a_time_is_dropped_at_the_handshake_timeout() {
    let scratch = tempfile::tempdir().unwrap();
    let broker = strict_broker(&scratch);
    let mut slow = RawClient::connect(broker.addr).await;
    let started = Instant::now();
    let dribble = tokio::spawn(async move {
        for byte in HEADER.iter().chain(b"\x01\x00\x00\x00\x00\x01\x00".iter()) {
            if slow.stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        slow
    });
    served(&broker, "meanwhile").await;
    let mut slow = dribble.await.expect("dribble");
    assert!(slow.closed_within(Duration::from_secs(4)).await, "dropped after the 2 s handshake timeout");
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[tokio::test]
async fn a_frame_dribbled_a_byte_at_a_time_is_dropped() {
    let scratch = tempfile::tempdir().unwrap();
    let broker = strict_broker(&scratch);
    // Heartbeat 1 s: a frame must arrive whole within 2 s.
    let mut slow = RawClient::open(broker.addr, 1).await;
    let mut frame = BytesMut::new();
    encode_method(&mut frame, 1, &ChannelOpen::default().into());
    let started = Instant::now();
    let mut dropped = false;
    for byte in frame.iter().take(frame.len() - 1).cycle().take(40) {
        if slow.stream.write_all(&[*byte]).await.is_err() {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    assert!(dropped || slow.closed_within(Duration::from_secs(3)).await, "the dribbler was dropped");
    poll("the reason in the log", Duration::from_secs(3), || {
        broker.log().contains("a frame was not received whole within 2 s")
    })
    .await;
    served(&broker, "afterwards").await;
}

#[tokio::test]
async fn opening_more_channels_than_channel_max_closes_the_connection_with_530() {
    let scratch = tempfile::tempdir().unwrap();
    let config = scratch.path().join("warren.toml");
    std::fs::write(&config, "channel_max = 16\n").unwrap();
    let broker = common::Broker::start_in(&scratch.path().join("data"), &["--config", config.to_str().unwrap()]);
    let mut c = RawClient::open(broker.addr, 0).await;
    let mut burst = BytesMut::new();
    for channel in 1..=17u16 {
        encode_method(&mut burst, channel, &ChannelOpen::default().into());
    }
    c.send_bytes(&burst).await;
    let mut opened = 0;
    let close = loop {
        match c.read_frame().await {
            Some(Frame::Method { method: Method::ChannelOpenOk(_), .. }) => opened += 1,
            Some(Frame::Method { method: Method::ConnectionClose(close), .. }) => break close,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(opened, 16);
    assert_eq!(close.reply_code, 530);
    assert_eq!(
        close.reply_text,
        "NOT_ALLOWED - number of channels opened (16) has reached the negotiated channel_max (16)"
    );
    served(&broker, "meanwhile").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_channel_churn_and_heartbeats_leave_everyone_served() {
    let broker = common::Broker::start();
    let mut churner = RawClient::open(broker.addr, 0).await;
    const CYCLES: usize = 20_000;
    let mut burst = BytesMut::new();
    for i in 0..CYCLES {
        let channel = (i % 2000) as u16 + 1;
        encode_method(&mut burst, channel, &ChannelOpen::default().into());
        encode_method(&mut burst, channel, &ChannelClose { reply_code: 200, ..Default::default() }.into());
    }
    // A million heartbeats on top.
    for _ in 0..1_000_000 {
        burst.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0xCE]);
    }
    let flood = tokio::spawn(async move {
        churner.send_bytes(&burst).await;
        let (mut open_ok, mut close_ok) = (0, 0);
        while open_ok + close_ok < 2 * CYCLES {
            match churner.read_frame_within(Duration::from_secs(30)).await {
                Some(Frame::Method { method: Method::ChannelOpenOk(_), .. }) => open_ok += 1,
                Some(Frame::Method { method: Method::ChannelCloseOk(_), .. }) => close_ok += 1,
                Some(Frame::Heartbeat) => {}
                other => panic!("unexpected {other:?} after {open_ok} open-ok and {close_ok} close-ok"),
            }
        }
        (open_ok, close_ok, churner)
    });
    served(&broker, "meanwhile").await;
    let (open_ok, close_ok, mut churner) = within("the churn", flood).await.expect("churn task");
    assert_eq!((open_ok, close_ok), (CYCLES, CYCLES));
    // Still a working connection; a heartbeat on a channel is a frame error.
    churner.send_method(7, ChannelOpen::default()).await;
    assert!(matches!(churner.expect_method().await, Method::ChannelOpenOk(_)));
    churner.send_bytes(&[8, 0, 7, 0, 0, 0, 0, 0xCE]).await;
    match churner.expect_method().await {
        Method::ConnectionClose(close) => assert_eq!(close.reply_code, 501, "{close:?}"),
        other => panic!("expected connection.close 501, got {other:?}"),
    }
    served(&broker, "afterwards").await;
}

/// The per-frame time limit is per frame: a client that streams frames back
/// to back for longer than it (each read ending mid-frame) stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_streaming_frames_for_longer_than_the_frame_limit_stays() {
    let broker = common::Broker::start();
    // Heartbeat 1 s: a frame must arrive whole within 2 s.
    let mut c = RawClient::open(broker.addr, 1).await;
    c.send_method(1, ChannelOpen::default()).await;
    assert!(matches!(c.expect_method().await, Method::ChannelOpenOk(_)));
    let mut burst = BytesMut::new();
    let props = warren::protocol::BasicProperties::default().to_bytes();
    let body = vec![b's'; 50_000];
    for _ in 0..40 {
        // Routed nowhere: dropped, so nothing piles up.
        encode_method(&mut burst, 1, &BasicPublish { routing_key: "nowhere".into(), ..Default::default() }.into());
        encode_content(&mut burst, 1, &props, &body, 131_072);
    }
    let started = Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_secs(5) {
        // Chunks that end mid-frame.
        for chunk in burst.chunks(9_999) {
            c.send_bytes(chunk).await;
            sent += chunk.len();
        }
    }
    c.send_method(1, QueueDeclare { queue: "after-the-stream".into(), ..Default::default() }).await;
    loop {
        match c.read_frame().await {
            Some(Frame::Method { method: Method::QueueDeclareOk(_), .. }) => break,
            Some(Frame::Method { method: Method::ConnectionClose(close), .. }) => {
                panic!("closed after {sent} bytes: {close:?}")
            }
            Some(_) => {}
            None => panic!("dropped after {sent} bytes:\n{}", broker.log()),
        }
    }
    assert!(sent > 10 << 20, "{sent} bytes streamed");
}
