//! RabbitMQ's definitions file: an export made by RabbitMQ 3.10.8
//! (tests/fixtures/rabbitmq-definitions.json, made by
//! tests/fixtures/make-rabbitmq-definitions.sh) imports into Warren with
//! working logins, permissions, policies and topology; Warren's own export
//! imports into a fresh Warren with the same result; `load_definitions`
//! imports at start-up.

mod common;

use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

use common::amqp::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rabbitmq-definitions.json");

fn ctl(broker: &common::Broker, args: &[&str]) -> String {
    let out = broker.warrenctl(args);
    assert!(out.status.success(), "warrenctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn login(broker: &common::Broker, user: &str, password: &str) -> lapin::Result<Connection> {
    login_to(broker, user, password, "%2f").await
}

async fn login_to(broker: &common::Broker, user: &str, password: &str, vhost: &str) -> lapin::Result<Connection> {
    let url = format!("amqp://{user}:{password}@{}/{vhost}", broker.addr);
    within("connect", Connection::connect(&url, ConnectionProperties::default())).await
}

/// What the fixture defines, checked on a broker that imported it.
async fn has_the_fixture_s_definitions(broker: &common::Broker) {
    let alice = login(broker, "alice", "alice-secret").await.expect("alice logs in with her RabbitMQ password");
    let ch = confirm_channel(&alice).await;
    // Topology: alice-events (topic) routes jobs.# to alice-jobs and # to alice-audit.
    let confirm = within(
        "publish",
        ch.basic_publish(
            "alice-events".into(),
            "jobs.build".into(),
            Default::default(),
            b"build",
            BasicProperties::default().with_priority(3),
        ),
    )
    .await
    .expect("publish");
    within("confirm", confirm).await.expect("confirm");
    assert_eq!(drain(&ch, "alice-jobs").await, ["build"]);
    assert_eq!(drain(&ch, "alice-audit").await, ["build"]);
    let queues = ctl(broker, &["list_queues", "name", "type", "policy", "arguments", "--no-table-headers", "-q"]);
    assert!(queues.lines().any(|l| l.starts_with("alice-audit\tquorum\talice-limits\t")), "{queues}");
    assert!(
        queues.lines().any(|l| l.starts_with("alice-jobs\tclassic\talice-limits\t") && l.contains("x-max-priority")),
        "{queues}"
    );
    let users = ctl(broker, &["list_users", "--no-table-headers", "-q"]);
    assert!(users.lines().any(|l| l == "alice\t[monitoring]"), "{users}");
    // Her permissions and topic permissions came along.
    let ch = confirm_channel(&alice).await;
    expect_error(
        "declare outside her pattern",
        ch.queue_declare("other".into(), Default::default(), FieldTable::default()),
        403,
        "ACCESS_REFUSED - configure access to queue 'other' in vhost '/' refused for user 'alice'",
    )
    .await;
    let ch = confirm_channel(&alice).await;
    let publish = async {
        ch.basic_publish("amq.topic".into(), "bob.x".into(), Default::default(), b"no", BasicProperties::default())
            .await?
            .await
    };
    expect_error(
        "topic key outside her pattern",
        publish,
        403,
        "ACCESS_REFUSED - write access to topic 'bob.x' in exchange 'amq.topic' in vhost '/' refused for user 'alice'",
    )
    .await;
    // The second vhost: its metadata, limits, policy, topology and permissions.
    let vhosts = ctl(broker, &["list_vhosts", "name", "description", "tags", "--no-table-headers", "-q"]);
    assert!(vhosts.lines().any(|l| l == "staging\tStaging apps\t[qa, blue]"), "{vhosts}");
    let limits = ctl(broker, &["list_vhost_limits", "-p", "staging", "--no-table-headers", "-q"]);
    assert_eq!(limits.trim(), r#"{"max-connections":5,"max-queues":10}"#);
    let staging = login_to(broker, "alice", "alice-secret", "staging").await.expect("alice may enter staging");
    let ch = confirm_channel(&staging).await;
    let confirm = within(
        "publish",
        ch.basic_publish("orders".into(), "new".into(), Default::default(), b"order 1", BasicProperties::default()),
    )
    .await
    .expect("publish");
    within("confirm", confirm).await.expect("confirm");
    assert_eq!(drain(&ch, "orders-in").await, ["order 1"]);
    let queues = ctl(broker, &["list_queues", "-p", "staging", "name", "policy", "--no-table-headers", "-q"]);
    assert_eq!(queues.trim(), "orders-in\tstaging-ttl");
    let refused = login_to(broker, "guest", "guest", "staging").await.expect_err("guest has no permissions there");
    assert_eq!(reply_code(&refused), Some(530), "{refused:?}");
}

#[tokio::test]
async fn a_rabbitmq_export_imports_with_working_logins_and_the_same_topology() {
    let broker = common::Broker::start();
    let out = ctl(&broker, &["import_definitions", FIXTURE]);
    for count in ["\"queues\":3", "\"users\":2", "\"vhosts\":2", "\"vhost_limits\":1", "\"policies\":2"] {
        assert!(out.contains(count), "{count} missing from the report: {out}");
    }
    has_the_fixture_s_definitions(&broker).await;
}

#[tokio::test]
async fn warren_s_export_imports_into_another_warren() {
    let first = common::Broker::start();
    ctl(&first, &["import_definitions", FIXTURE]);
    let scratch = tempfile::tempdir().expect("scratch");
    let exported = scratch.path().join("warren.json");
    ctl(&first, &["export_definitions", exported.to_str().expect("path")]);
    let text = std::fs::read_to_string(&exported).expect("export written");
    let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    for key in ["users", "vhosts", "permissions", "topic_permissions", "policies", "queues", "exchanges", "bindings"] {
        assert!(value[key].is_array(), "{key} missing from the export: {text}");
    }
    let second = common::Broker::start();
    ctl(&second, &["import_definitions", exported.to_str().expect("path")]);
    has_the_fixture_s_definitions(&second).await;
}

#[tokio::test]
async fn load_definitions_imports_at_start_up() {
    let scratch = tempfile::tempdir().expect("scratch");
    let config = scratch.path().join("warren.toml");
    std::fs::write(&config, format!("load_definitions = {FIXTURE:?}\n")).expect("config");
    let broker = common::Broker::start_in(&scratch.path().join("data"), &["--config", config.to_str().expect("path")]);
    has_the_fixture_s_definitions(&broker).await;
}

#[tokio::test]
async fn a_file_that_is_not_definitions_is_refused_and_changes_nothing() {
    let broker = common::Broker::start();
    let scratch = tempfile::tempdir().expect("scratch");
    let bad = scratch.path().join("bad.json");
    std::fs::write(&bad, "{\"queues\": 42}").expect("write");
    let out = broker.warrenctl(&["import_definitions", bad.to_str().expect("path")]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a definitions file"), "{out:?}");
    let users = ctl(&broker, &["list_users", "--no-table-headers", "-q"]);
    assert_eq!(users.trim(), "guest\t[administrator]");
}

#[tokio::test]
async fn warren_s_export_imports_into_rabbitmq() {
    let broker = common::Broker::start();
    ctl(&broker, &["import_definitions", FIXTURE]);
    ctl(&broker, &["add_user", "bob", "bob-secret"]);
    ctl(&broker, &["set_permissions", "bob", "^bob-", "^bob-", "^bob-"]);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    within("declare", ch.queue_declare("bob-inbox".into(), durable, FieldTable::default())).await.expect("declare");
    let scratch = tempfile::tempdir().expect("scratch");
    let exported = scratch.path().join("warren.json");
    ctl(&broker, &["export_definitions", exported.to_str().expect("path")]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/import-into-rabbitmq.sh");
    let out = std::process::Command::new(script)
        .arg(&exported)
        .args(["alice=alice-secret", "bob=bob-secret", "bob=wrong"])
        .output()
        .expect("run import-into-rabbitmq.sh");
    if out.status.code() == Some(3) {
        println!("SKIPPED: no RabbitMQ to import into: {}", String::from_utf8_lossy(&out.stderr).trim());
        return;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..3], ["alice\tauthenticated", "bob\tauthenticated", "bob\trefused"], "{text}");
    for expected in [
        "alice-jobs\tclassic\talice-limits",
        "alice-audit\tquorum\talice-limits",
        "bob-inbox\tclassic\t",
        "alice-events\ttopic",
        "alice-events\talice-jobs\tjobs.#",
        "/\talice-limits\t^alice-\tqueues",
        "staging\tStaging apps",
        "staging\t{\"max-connections\":5,\"max-queues\":10}",
        "staging\torders-in\tclassic\tstaging-ttl",
        "staging\torders\torders-in\tnew",
        "staging\talice\t.*\t.*\t.*",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(expected)), "RabbitMQ lacks {expected:?}:\n{text}");
    }
}
