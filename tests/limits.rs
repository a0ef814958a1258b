//! Broker-wide limits on the real binary, each refused with RabbitMQ's
//! reply code and text while well-behaved clients keep being served:
//! `connection_max` (530 `connection refused: node connection limit (N)
//! is reached`) and the user limits `max-connections` and `max-channels`
//! (set with warrenctl and the HTTP API, kept across a kill -9).

mod common;

use common::amqp::*;
use common::raw::RawClient;
use warren::protocol::Method;
use warren::protocol::method::ChannelOpen;

#[tokio::test]
async fn connections_over_connection_max_are_refused_and_the_others_served() {
    let scratch = tempfile::tempdir().expect("scratch");
    let broker = common::Broker::start_in(&scratch.path().join("data"), &["--connection-max", "2"]);
    let first = connect(&broker).await;
    let second = RawClient::open_as(broker.addr, "guest", "guest", "/").await.expect("the second fits");
    let refused = RawClient::open_as(broker.addr, "guest", "guest", "/").await.err().expect("the third is over");
    assert_eq!(refused, (530, "NOT_ALLOWED - connection refused: node connection limit (2) is reached".to_string()));
    // The connections inside the limit are served meanwhile.
    let ch = confirm_channel(&first).await;
    declare_queue(&ch, "still-served").await;
    publish_acked(&ch, "still-served", "hello").await;
    assert_eq!(drain(&ch, "still-served").await, ["hello"]);
    // A closed connection frees its place.
    drop(second);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match RawClient::open_as(broker.addr, "guest", "guest", "/").await {
            Ok(_) => break,
            Err(close) => {
                assert_eq!(close.0, 530, "{close:?}");
                assert!(std::time::Instant::now() < deadline, "the closed connection's place never freed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn ctl(broker: &common::Broker, args: &[&str]) -> String {
    let out = broker.warrenctl(args);
    assert!(out.status.success(), "warrenctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Opens channel `n` on a raw connection; the broker's answer.
async fn open_channel(c: &mut RawClient, n: u16) -> Method {
    c.send_method(n, ChannelOpen::default()).await;
    c.expect_method().await
}

#[tokio::test]
async fn user_limits_refuse_connections_and_channels_with_rabbitmqs_texts() {
    let scratch = tempfile::tempdir().expect("scratch");
    let data = scratch.path().join("data");
    let mut broker = common::Broker::start_in_with_http(&data, &[]);
    ctl(&broker, &["add_user", "app", "secret"]);
    ctl(&broker, &["set_permissions", "app", ".*", ".*", ".*"]);
    ctl(&broker, &["set_user_limits", "app", r#"{"max-connections": 2, "max-channels": 3}"#]);
    let out = broker.warrenctl(&["set_user_limits", "app", r#"{"max-queues": 1}"#]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Unrecognised terms"));

    // Connections: two fit, the third is refused; guest is not limited.
    let mut a = RawClient::open_as(broker.addr, "app", "secret", "/").await.expect("first");
    let mut b = RawClient::open_as(broker.addr, "app", "secret", "/").await.expect("second");
    let refused = RawClient::open_as(broker.addr, "app", "secret", "/").await.err().expect("third");
    assert_eq!(
        refused,
        (530, "NOT_ALLOWED - connection refused for user 'app': user connection limit (2) is reached".to_string())
    );
    let guest = connect(&broker).await;

    // Channels are counted over the user's connections: 2 + 1 fit, a fourth closes its connection.
    assert!(matches!(open_channel(&mut a, 1).await, Method::ChannelOpenOk(_)));
    assert!(matches!(open_channel(&mut a, 2).await, Method::ChannelOpenOk(_)));
    assert!(matches!(open_channel(&mut b, 1).await, Method::ChannelOpenOk(_)));
    match open_channel(&mut b, 2).await {
        Method::ConnectionClose(close) => {
            assert_eq!(close.reply_code, 530);
            assert_eq!(
                close.reply_text,
                "NOT_ALLOWED - number of channels opened for user 'app' has reached the maximum allowed user limit of (3)"
            );
        }
        other => panic!("expected connection.close 530, got {other:?}"),
    }
    // Guest's channels are not counted against app, and guest is served.
    let ch = confirm_channel(&guest).await;
    declare_queue(&ch, "served").await;
    publish_acked(&ch, "served", "hello").await;
    assert_eq!(drain(&ch, "served").await, ["hello"]);

    // The HTTP API shows and changes them.
    let auth = Some(("guest", "guest"));
    let http = broker.management.expect("management API");
    let reply = common::http::request(http, "GET", "/api/user-limits", auth, None).await;
    assert_eq!(reply.json(), serde_json::json!([{"user": "app", "value": {"max-connections": 2, "max-channels": 3}}]));
    let reply =
        common::http::request(http, "PUT", "/api/user-limits/app/max-connections", auth, Some(r#"{"value": 1}"#)).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let reply =
        common::http::request(http, "PUT", "/api/user-limits/app/max-queues", auth, Some(r#"{"value": 1}"#)).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let reply =
        common::http::request(http, "PUT", "/api/user-limits/nobody/max-channels", auth, Some(r#"{"value": 1}"#)).await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    let reply = common::http::request(http, "DELETE", "/api/user-limits/app/max-channels", auth, None).await;
    assert_eq!(reply.status, 204, "{}", reply.body);

    // Kept across a kill -9.
    broker.kill();
    drop((a, b, guest));
    let broker = common::Broker::start_in(&data, &[]);
    let listed = ctl(&broker, &["list_user_limits", "--user", "app"]);
    assert!(listed.contains(r#"{"max-connections":1}"#), "{listed}");
    let _one = RawClient::open_as(broker.addr, "app", "secret", "/").await.expect("one fits");
    let refused = RawClient::open_as(broker.addr, "app", "secret", "/").await.err().expect("the second is over");
    assert_eq!(refused.0, 530);
    ctl(&broker, &["clear_user_limits", "app", "all"]);
    let _two = RawClient::open_as(broker.addr, "app", "secret", "/").await.expect("no limit any more");
    assert_eq!(ctl(&broker, &["list_user_limits"]).lines().filter(|l| l.starts_with("app")).count(), 0);
}

#[tokio::test]
async fn a_message_over_max_message_size_closes_its_channel_from_the_header_alone() {
    let scratch = tempfile::tempdir().expect("scratch");
    let config = scratch.path().join("warren.toml");
    std::fs::write(&config, "max_message_size = 1000\n").unwrap();
    let broker = common::Broker::start_in(&scratch.path().join("data"), &["--config", config.to_str().unwrap()]);
    let mut c = RawClient::open(broker.addr, 0).await;
    raw_channel(&mut c, 1).await;
    raw_channel(&mut c, 2).await;
    // Only the method and a header announcing 2,000 bytes: no body is needed to refuse it.
    let mut buf = bytes::BytesMut::new();
    let publish = warren::protocol::method::BasicPublish { routing_key: "big".into(), ..Default::default() };
    warren::protocol::encode_method(&mut buf, 1, &publish.into());
    let mut content = bytes::BytesMut::new();
    warren::protocol::frame::encode_content(&mut content, 1, &[0, 0], &[b'x'; 2000], 131_072);
    let header_len = 7 + u32::from_be_bytes([content[3], content[4], content[5], content[6]]) as usize + 1;
    buf.extend_from_slice(&content[..header_len]);
    c.send_bytes(&buf).await;
    match c.expect_method().await {
        Method::ChannelClose(close) => {
            assert_eq!(close.reply_code, 406);
            assert_eq!(
                close.reply_text,
                "PRECONDITION_FAILED - message size 2000 is larger than configured max size 1000"
            );
        }
        other => panic!("expected channel.close 406, got {other:?}"),
    }
    c.send_method(1, warren::protocol::method::ChannelCloseOk {}).await;
    // The connection's other channel, and another client, are served.
    c.send_method(2, warren::protocol::method::QueueDeclare { queue: "small".into(), ..Default::default() }).await;
    assert!(matches!(c.expect_method().await, Method::QueueDeclareOk(_)));
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "small").await;
    publish_acked(&ch, "small", "fits").await;
    assert_eq!(drain(&ch, "small").await, ["fits"]);
}
