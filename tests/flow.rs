//! Flow control: when the write-ahead log falls behind the disk, the broker
//! stops reading publishers and tells clients that asked for it with
//! connection.blocked, then connection.unblocked once the log caught up.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use warren::protocol::frame::encode_content;
use warren::protocol::method::*;
use warren::protocol::{BasicProperties, FieldTable, FieldValue, Frame, Method};

use common::raw::RawClient;

fn capabilities(blocked: bool) -> FieldTable {
    let mut caps = FieldTable::new();
    caps.insert("connection.blocked", FieldValue::Bool(blocked));
    let mut props = FieldTable::new();
    props.insert("capabilities", FieldValue::Table(caps));
    props
}

/// A broker whose log syncs only every 1.5 s and blocks above 64 KiB of backlog.
fn slow_log_broker(scratch: &tempfile::TempDir) -> common::Broker {
    let config = scratch.path().join("warren.toml");
    std::fs::write(&config, "log_backlog_limit = 65536\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    common::Broker::start_in(&scratch.path().join("data"), &["--config", &config, "--fsync", "1500ms"])
}

/// Declares a durable queue and publishes `count` persistent 4 KiB messages to it.
async fn flood(client: &mut RawClient, count: usize) {
    client.send_method(1, ChannelOpen::default()).await;
    assert!(matches!(client.expect_method().await, Method::ChannelOpenOk(_)));
    client.send_method(1, QueueDeclare { queue: "flood".into(), durable: true, ..Default::default() }).await;
    let props = BasicProperties { delivery_mode: Some(2), ..Default::default() }.to_bytes();
    let body = vec![b'x'; 4096];
    let mut burst = BytesMut::new();
    for _ in 0..count {
        warren::protocol::encode_method(
            &mut burst,
            1,
            &BasicPublish { routing_key: "flood".into(), ..Default::default() }.into(),
        );
        encode_content(&mut burst, 1, &props, &body, 131_072);
    }
    client.send_bytes(&burst).await;
}

/// The connection-level methods seen within `limit`, skipping everything else.
async fn connection_methods(client: &mut RawClient, limit: Duration) -> Vec<Method> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return seen;
        }
        match client.read_frame_within(left).await {
            Some(Frame::Method { channel: 0, method }) => seen.push(method),
            Some(_) => {}
            None => return seen,
        }
    }
}

#[tokio::test]
async fn a_publisher_that_outruns_the_log_is_blocked_then_unblocked() {
    let scratch = tempfile::tempdir().unwrap();
    let broker = slow_log_broker(&scratch);
    let mut client = RawClient::open_with_properties(broker.addr, 0, capabilities(true)).await;
    flood(&mut client, 200).await;
    let seen = connection_methods(&mut client, Duration::from_secs(8)).await;
    let blocked = seen.iter().position(|m| matches!(m, Method::ConnectionBlocked(_)));
    let unblocked = seen.iter().position(|m| matches!(m, Method::ConnectionUnblocked(_)));
    assert!(blocked.is_some(), "expected connection.blocked, saw {seen:?}");
    assert!(unblocked > blocked, "expected connection.unblocked after it, saw {seen:?}");
    if let Some(Method::ConnectionBlocked(b)) = blocked.map(|i| &seen[i]) {
        assert!(!b.reason.is_empty());
    }
    // Nothing is lost while the connection is held back.
    wait_for_all(&broker, 200).await;
}

async fn wait_for_all(broker: &common::Broker, count: usize) {
    let expected = format!("flood\t{count}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let out = broker.warrenctl(&["list_queues", "-q", "--no-table-headers", "name", "messages"]);
        if String::from_utf8_lossy(&out.stdout).trim() == expected {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the publishes never all arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_client_without_the_capability_is_slowed_but_never_sent_blocked() {
    let scratch = tempfile::tempdir().unwrap();
    let broker = slow_log_broker(&scratch);
    let mut client = RawClient::open_with_properties(broker.addr, 0, capabilities(false)).await;
    flood(&mut client, 200).await;
    let seen = connection_methods(&mut client, Duration::from_secs(5)).await;
    assert!(
        !seen.iter().any(|m| matches!(m, Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_))),
        "{seen:?}"
    );
    wait_for_all(&broker, 200).await;
}
