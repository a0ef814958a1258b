//! What the management API refuses, as AMQP (or RabbitMQ's API) refuses
//! it, against the real binary: impersonation through `user_id`, names
//! longer than an AMQP short string (which the log could not keep), an
//! invalid expiration, another connection's exclusive queue (delete,
//! purge, get), a monitor closing someone else's connection, definitions
//! posted as a cross-site form would post them, and an unbounded get;
//! and that a management user's overview shows only its own vhosts.

mod common;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use common::Broker;
use common::amqp::*;
use common::http;

const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));

fn ctl(broker: &Broker, args: &[&str]) {
    let out = broker.warrenctl(args);
    assert!(out.status.success(), "warrenctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_what_amqp_refuses() {
    let broker = Broker::start_with_http();
    let api = broker.management.expect("management API");
    let publish = |body: String| async move {
        http::request(api, "POST", "/api/exchanges/%2F/amq.default/publish", GUEST, Some(&body)).await
    };
    let declared = http::request(api, "PUT", "/api/queues/%2F/inbox", GUEST, Some("{}")).await;
    assert_eq!(declared.status, 201, "{declared:?}");

    let as_other = publish(
        r#"{"properties":{"user_id":"someone-else"},"routing_key":"inbox","payload":"x","payload_encoding":"string"}"#
            .into(),
    )
    .await;
    assert_eq!(as_other.status, 400, "{as_other:?}");
    assert!(as_other.body.contains("user_id property set to 'someone-else'"), "{as_other:?}");
    let bad_ttl = publish(
        r#"{"properties":{"expiration":"soon"},"routing_key":"inbox","payload":"x","payload_encoding":"string"}"#
            .into(),
    )
    .await;
    assert_eq!(bad_ttl.status, 400, "{bad_ttl:?}");
    let long_key = publish(format!(
        r#"{{"properties":{{}},"routing_key":"{}","payload":"x","payload_encoding":"string"}}"#,
        "k".repeat(256)
    ))
    .await;
    assert_eq!(long_key.status, 400, "{long_key:?}");
    let long_name = http::request(api, "PUT", &format!("/api/queues/%2F/{}", "q".repeat(256)), GUEST, Some("{}")).await;
    assert_eq!(long_name.status, 400, "{long_name:?}");
    assert!(long_name.body.contains("longer than 255 bytes"), "{long_name:?}");
    let fine =
        publish(r#"{"properties":{},"routing_key":"inbox","payload":"kept","payload_encoding":"string"}"#.into()).await;
    assert_eq!((fine.status, fine.json()["routed"].as_bool()), (200, Some(true)), "{fine:?}");
    let too_many = http::request(
        api,
        "POST",
        "/api/queues/%2F/inbox/get",
        GUEST,
        Some(r#"{"count":10001,"ackmode":"ack_requeue_true","encoding":"auto"}"#),
    )
    .await;
    assert_eq!(too_many.status, 400, "{too_many:?}");
    assert_eq!(queue_stats(&broker, "inbox").0, 1, "only the accepted publish is there");

    // Another connection's exclusive queue: visible, but not to be emptied.
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    within("declare", ch.queue_declare("private".into(), exclusive, FieldTable::default())).await.expect("declare");
    publish_to(&confirm_channel(&conn).await, "", "private", "mine").await;
    let shown = http::get(api, "/api/queues/%2F/private", GUEST).await;
    assert_eq!((shown.status, shown.json()["exclusive"].as_bool()), (200, Some(true)), "{shown:?}");
    for (method, path, body) in [
        ("DELETE", "/api/queues/%2F/private", None),
        ("DELETE", "/api/queues/%2F/private/contents", None),
        ("POST", "/api/queues/%2F/private/get", Some(r#"{"count":1,"ackmode":"ack_requeue_false","encoding":"auto"}"#)),
    ] {
        let refused = http::request(api, method, path, GUEST, body).await;
        assert_eq!(refused.status, 400, "{method} {path}: {refused:?}");
        assert!(refused.body.contains("exclusive access to locked queue 'private'"), "{refused:?}");
    }
    assert_eq!(queue_stats(&broker, "private").0, 1, "the exclusive queue kept its message");

    // A monitor sees guest's connection but may not close it.
    ctl(&broker, &["add_user", "watcher", "pw"]);
    ctl(&broker, &["set_user_tags", "watcher", "monitoring"]);
    let listed = http::get(api, "/api/connections", Some(("watcher", "pw"))).await.json();
    let name = listed[0]["name"].as_str().expect("guest's connection is listed").to_string();
    let path = format!("/api/connections/{}", http_path(&name));
    let refused = http::request(api, "DELETE", &path, Some(("watcher", "pw")), None).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(conn.status().connected(), "the monitor did not close it");

    // Definitions only as JSON: a cross-site form posts text/plain.
    let form = r#"{"users":[{"name":"intruder","password_hash":"","tags":["administrator"]}]}"#;
    let posted = http::request_typed(api, "POST", "/api/definitions", GUEST, Some(form), "text/plain").await;
    assert_eq!(posted.status, 415, "{posted:?}");
    let users = http::get(api, "/api/users", GUEST).await.json();
    assert!(users.as_array().expect("users").iter().all(|u| u["name"] != "intruder"), "{users}");
}

/// Percent-encodes a path segment as a client would.
fn http_path(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test]
async fn a_management_user_s_overview_covers_its_own_vhosts_only() {
    let broker = Broker::start_with_http();
    let api = broker.management.expect("management API");
    ctl(&broker, &["add_vhost", "mine"]);
    ctl(&broker, &["add_user", "dora", "pw"]);
    ctl(&broker, &["set_user_tags", "dora", "management"]);
    ctl(&broker, &["set_permissions", "-p", "mine", "dora", ".*", ".*", ".*"]);
    ctl(&broker, &["set_permissions", "-p", "mine", "guest", ".*", ".*", ".*"]);
    for (vhost, queue) in [("%2F", "elsewhere"), ("mine", "hers")] {
        let put = http::request(api, "PUT", &format!("/api/queues/{vhost}/{queue}"), GUEST, Some("{}")).await;
        assert_eq!(put.status, 201, "{put:?}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let dora = http::get(api, "/api/overview", Some(("dora", "pw"))).await.json();
        let guest = http::get(api, "/api/overview", GUEST).await.json();
        if dora["object_totals"]["queues"] == 1 && guest["object_totals"]["queues"] == 2 {
            assert!(dora["listeners"].as_array().is_some_and(Vec::is_empty), "{dora}");
            assert!(guest["listeners"].as_array().is_some_and(|l| !l.is_empty()), "{guest}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "dora: {dora}\nguest: {guest}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
