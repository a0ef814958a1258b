//! Virtual hosts, managed with warrenctl at run time: each has its own
//! exchanges, queues and bindings (the same names in two vhosts are two
//! things), its own permissions, policies and limits (`max-connections`,
//! `max-queues`, refused with RabbitMQ's codes and texts); connection.open
//! to a missing vhost is 530; a deleted vhost closes its connections and
//! takes everything in it, for good (kill -9 and restart included); a
//! deletion cut short by a crash is finished at the next start.

mod common;

use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

use common::amqp::*;
use common::raw::RawClient;

fn ctl(broker: &common::Broker, args: &[&str]) -> String {
    let out = broker.warrenctl(args);
    assert!(out.status.success(), "warrenctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Rows of a listing, without headers or banners.
fn rows(broker: &common::Broker, args: &[&str]) -> Vec<String> {
    let mut all = args.to_vec();
    all.extend(["--no-table-headers", "-q"]);
    ctl(broker, &all).lines().map(str::to_string).collect()
}

fn ctl_fails(broker: &common::Broker, args: &[&str]) -> String {
    let out = broker.warrenctl(args);
    assert!(!out.status.success(), "warrenctl {args:?} should fail: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn login_to(broker: &common::Broker, user: &str, password: &str, vhost: &str) -> lapin::Result<Connection> {
    let url = format!("amqp://{user}:{password}@{}/{}", broker.addr, vhost.replace('/', "%2f"));
    within("connect", Connection::connect(&url, ConnectionProperties::default())).await
}

/// A vhost "apps" where guest has every permission.
fn add_apps(broker: &common::Broker) {
    ctl(broker, &["add_vhost", "apps", "--description", "Applications", "--tags", "prod,eu"]);
    ctl(broker, &["set_permissions", "-p", "apps", "guest", ".*", ".*", ".*"]);
}

async fn durable_queue(ch: &lapin::Channel, name: &str) {
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    within("declare", ch.queue_declare(name.into(), durable, FieldTable::default())).await.expect("declare");
}

async fn publish_persistent(ch: &lapin::Channel, exchange: &str, key: &str, body: &str) {
    let props = BasicProperties::default().with_delivery_mode(2);
    let confirm = within(
        "publish",
        ch.basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), body.as_bytes(), props),
    )
    .await
    .expect("publish");
    assert!(within("confirm", confirm).await.expect("confirm").is_ack(), "{body} not confirmed");
}

#[tokio::test]
async fn vhosts_keep_their_own_queues_exchanges_and_bindings() {
    let broker = common::Broker::start();
    add_apps(&broker);
    let vhosts = rows(&broker, &["list_vhosts", "name", "description", "tags"]);
    assert_eq!(vhosts, ["/\tDefault virtual host\t[]", "apps\tApplications\t[prod, eu]"]);

    let root = connect(&broker).await;
    let apps = login_to(&broker, "guest", "guest", "apps").await.expect("guest enters apps");
    let (rch, ach) = (confirm_channel(&root).await, confirm_channel(&apps).await);
    // The same names in both vhosts.
    durable_queue(&rch, "jobs").await;
    durable_queue(&ach, "jobs").await;
    for (ch, body) in [(&rch, "root job"), (&ach, "apps job")] {
        publish_persistent(ch, "", "jobs", body).await;
    }
    // Every vhost has its own amq.* exchanges: a binding in one routes
    // nothing in the other.
    within(
        "bind",
        ach.queue_bind("jobs".into(), "amq.topic".into(), "job.#".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("bind");
    publish_persistent(&ach, "amq.topic", "job.x", "apps topic").await;
    publish_persistent(&rch, "amq.topic", "job.x", "root topic").await;
    assert_eq!(drain(&rch, "jobs").await, ["root job"]);
    assert_eq!(drain(&ach, "jobs").await, ["apps job", "apps topic"]);

    // An exchange declared in one vhost does not exist in the other.
    within(
        "exchange",
        ach.exchange_declare("orders".into(), lapin::ExchangeKind::Direct, Default::default(), FieldTable::default()),
    )
    .await
    .expect("declare orders");
    let passive = lapin::options::ExchangeDeclareOptions { passive: true, ..Default::default() };
    let ch = confirm_channel(&root).await;
    expect_error(
        "orders is not in /",
        ch.exchange_declare("orders".into(), lapin::ExchangeKind::Direct, passive, FieldTable::default()),
        404,
        "NOT_FOUND - no exchange 'orders' in vhost '/'",
    )
    .await;
    let ch = confirm_channel(&apps).await;
    expect_error(
        "texts name the vhost",
        ch.queue_declare(
            "missing".into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        ),
        404,
        "NOT_FOUND - no queue 'missing' in vhost 'apps'",
    )
    .await;

    // Listings follow -p.
    assert_eq!(rows(&broker, &["list_exchanges", "-p", "apps", "name", "vhost"]).len(), 7);
    assert!(rows(&broker, &["list_exchanges", "-p", "apps", "name"]).contains(&"orders".to_string()));
    assert!(!rows(&broker, &["list_exchanges", "name"]).contains(&"orders".to_string()));
    let bindings = rows(&broker, &["list_bindings", "-p", "apps", "source_name", "destination_name", "routing_key"]);
    assert!(bindings.contains(&"amq.topic\tjobs\tjob.#".to_string()), "{bindings:?}");
    assert!(rows(&broker, &["list_bindings", "source_name", "routing_key"]).iter().all(|b| !b.contains("job.#")));
    let connections = rows(&broker, &["list_connections", "user", "vhost"]);
    assert_eq!(connections, ["guest\t/", "guest\tapps"]);
    let counts = rows(&broker, &["list_vhosts", "name", "--formatter", "json"]);
    assert!(counts[0].contains("\"name\":\"apps\""), "{counts:?}");
    let missing = ctl_fails(&broker, &["list_queues", "-p", "nowhere"]);
    assert!(missing.contains("Virtual host 'nowhere' does not exist"), "{missing}");
}

#[tokio::test]
async fn opening_a_missing_or_forbidden_vhost_is_refused_with_530() {
    let broker = common::Broker::start();
    add_apps(&broker);
    ctl(&broker, &["add_vhost", "private"]);
    ctl(&broker, &["add_user", "carol", "pw"]);
    ctl(&broker, &["set_permissions", "-p", "apps", "carol", "^carol-", "^carol-", "^carol-"]);

    let close = RawClient::open_as(broker.addr, "guest", "guest", "nowhere").await.err().expect("no such vhost");
    assert_eq!(close, (530, "NOT_ALLOWED - vhost nowhere not found".to_string()));
    let close = RawClient::open_as(broker.addr, "guest", "guest", "private").await.err().expect("no permissions");
    assert_eq!(close, (530, "NOT_ALLOWED - access to vhost 'private' refused for user 'guest'".to_string()));
    let close = RawClient::open_as(broker.addr, "carol", "pw", "/").await.err().expect("carol has only apps");
    assert_eq!(close, (530, "NOT_ALLOWED - access to vhost '/' refused for user 'carol'".to_string()));

    // In her vhost carol's patterns apply, and refusals name that vhost.
    let carol = login_to(&broker, "carol", "pw", "apps").await.expect("carol enters apps");
    let ch = confirm_channel(&carol).await;
    declare_queue(&ch, "carol-inbox").await;
    expect_error(
        "outside her pattern",
        ch.queue_declare("shared".into(), Default::default(), FieldTable::default()),
        403,
        "ACCESS_REFUSED - configure access to queue 'shared' in vhost 'apps' refused for user 'carol'",
    )
    .await;
    let perms = rows(&broker, &["list_user_permissions", "carol"]);
    assert_eq!(perms, ["apps\t^carol-\t^carol-\t^carol-"]);
    let err = ctl_fails(&broker, &["set_permissions", "-p", "nowhere", "carol", ".*", ".*", ".*"]);
    assert!(err.contains("Virtual host 'nowhere' does not exist"), "{err}");
}

#[tokio::test]
async fn vhost_limits_refuse_connections_and_queues_over_them() {
    let broker = common::Broker::start();
    add_apps(&broker);
    ctl(&broker, &["set_vhost_limits", "-p", "apps", r#"{"max-connections": 2, "max-queues": 2}"#]);
    assert_eq!(rows(&broker, &["list_vhost_limits", "-p", "apps"]), [r#"{"max-connections":2,"max-queues":2}"#]);
    let first = login_to(&broker, "guest", "guest", "apps").await.expect("first");
    let _second = login_to(&broker, "guest", "guest", "apps").await.expect("second");
    let close = RawClient::open_as(broker.addr, "guest", "guest", "apps").await.err().expect("third is over");
    assert_eq!(
        close,
        (530, "NOT_ALLOWED - access to vhost 'apps' refused for user 'guest': connection limit (2) is reached".into())
    );
    // Other vhosts are not counted against it.
    let root = connect(&broker).await;
    let rch = confirm_channel(&root).await;
    for name in ["a", "b", "c"] {
        declare_queue(&rch, name).await;
    }

    let ch = confirm_channel(&first).await;
    declare_queue(&ch, "one").await;
    declare_queue(&ch, "two").await;
    // Declaring one that exists is not a new queue.
    declare_queue(&ch, "two").await;
    expect_error(
        "third queue",
        ch.queue_declare("three".into(), Default::default(), FieldTable::default()),
        406,
        "PRECONDITION_FAILED - cannot declare queue 'three': queue limit in vhost 'apps' (2) is reached",
    )
    .await;
    // A connection closed frees its place.
    within("close", first.close(200, "bye".into())).await.expect("close");
    let third = login_to(&broker, "guest", "guest", "apps").await.expect("room again");
    // Raised limits apply at once; 0 allows none.
    ctl(&broker, &["set_vhost_limits", "-p", "apps", r#"{"max-queues": 3}"#]);
    let ch = confirm_channel(&third).await;
    declare_queue(&ch, "three").await;
    ctl(&broker, &["set_vhost_limits", "-p", "apps", r#"{"max-connections": 0}"#]);
    let close = RawClient::open_as(broker.addr, "guest", "guest", "apps").await.err().expect("none allowed");
    assert_eq!(close.0, 530, "{close:?}");
    ctl(&broker, &["clear_vhost_limits", "-p", "apps"]);
    assert!(rows(&broker, &["list_vhost_limits", "-p", "apps"]).is_empty());
    login_to(&broker, "guest", "guest", "apps").await.expect("no limit any more");
    let bad = ctl_fails(&broker, &["set_vhost_limits", "-p", "apps", r#"{"max-channels": 1}"#]);
    assert!(bad.contains("Unrecognised terms"), "{bad}");
}

#[tokio::test]
async fn a_policy_applies_only_in_its_vhost() {
    let broker = common::Broker::start();
    add_apps(&broker);
    ctl(&broker, &["set_policy", "-p", "apps", "--apply-to", "queues", "short", "^capped$", r#"{"max-length":1}"#]);
    let root = connect(&broker).await;
    let apps = login_to(&broker, "guest", "guest", "apps").await.expect("apps");
    let (rch, ach) = (confirm_channel(&root).await, confirm_channel(&apps).await);
    declare_queue(&rch, "capped").await;
    declare_queue(&ach, "capped").await;
    for i in 0..3 {
        publish_to(&rch, "", "capped", &format!("r{i}")).await;
        publish_to(&ach, "", "capped", &format!("a{i}")).await;
    }
    assert_eq!(drain(&rch, "capped").await, ["r0", "r1", "r2"]);
    assert_eq!(drain(&ach, "capped").await, ["a2"]);
    assert_eq!(rows(&broker, &["list_policies", "-p", "apps", "name"]), ["short"]);
    assert!(rows(&broker, &["list_policies", "name"]).is_empty());
    assert_eq!(rows(&broker, &["list_queues", "-p", "apps", "name", "policy"]), ["capped\tshort"]);
    assert_eq!(rows(&broker, &["list_queues", "name", "policy"]), ["capped\t"]);
}

#[tokio::test]
async fn a_default_queue_type_makes_durable_queues_quorum() {
    let broker = common::Broker::start();
    ctl(&broker, &["add_vhost", "replicated", "--default-queue-type", "quorum"]);
    ctl(&broker, &["set_permissions", "-p", "replicated", "guest", ".*", ".*", ".*"]);
    let conn = login_to(&broker, "guest", "guest", "replicated").await.expect("enter");
    let ch = confirm_channel(&conn).await;
    durable_queue(&ch, "orders").await;
    declare_queue(&ch, "scratch").await;
    let queues = rows(&broker, &["list_queues", "-p", "replicated", "name", "type"]);
    assert_eq!(queues, ["orders\tquorum", "scratch\tclassic"]);
    assert_eq!(rows(&broker, &["list_vhosts", "name", "default_queue_type"])[1], "replicated\tquorum");
    let bad = ctl_fails(&broker, &["add_vhost", "odd", "--default-queue-type", "fancy"]);
    assert!(bad.contains("Unsupported default queue type"), "{bad}");
}

#[tokio::test]
async fn deleting_a_vhost_closes_its_connections_and_removes_everything_for_good() {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("data");
    let mut broker = common::Broker::start_in(&dir, &[]);
    add_apps(&broker);
    ctl(&broker, &["add_user", "carol", "pw"]);
    ctl(&broker, &["set_permissions", "-p", "apps", "carol", ".*", ".*", ".*"]);
    ctl(&broker, &["set_topic_permissions", "-p", "apps", "carol", "amq.topic", ".*", ".*"]);
    ctl(&broker, &["set_policy", "-p", "apps", "ttl", ".*", r#"{"message-ttl":60000}"#]);
    ctl(&broker, &["set_vhost_limits", "-p", "apps", r#"{"max-queues": 10}"#]);
    let root = connect(&broker).await;
    let rch = confirm_channel(&root).await;
    durable_queue(&rch, "kept").await;
    publish_persistent(&rch, "", "kept", "in /").await;
    let apps = login_to(&broker, "guest", "guest", "apps").await.expect("apps");
    let ach = confirm_channel(&apps).await;
    durable_queue(&ach, "doomed").await;
    within(
        "exchange",
        ach.exchange_declare(
            "doomed-x".into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange");
    within(
        "bind",
        ach.queue_bind("doomed".into(), "doomed-x".into(), "".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("bind");
    for i in 0..5 {
        publish_persistent(&ach, "doomed-x", "", &format!("m{i}")).await;
    }
    // A raw client in the vhost sees how its connection is closed.
    let mut raw = RawClient::open_as(broker.addr, "guest", "guest", "apps").await.expect("raw");

    ctl(&broker, &["delete_vhost", "apps"]);
    match within("close", raw.expect_method()).await {
        warren::protocol::Method::ConnectionClose(close) => {
            assert_eq!(
                (close.reply_code, close.reply_text.as_str()),
                (320, "CONNECTION_FORCED - vhost 'apps' is deleted")
            )
        }
        other => panic!("expected connection.close, got {other:?}"),
    }
    let deadline = Instant::now() + WAIT;
    while apps.status().connected() {
        assert!(Instant::now() < deadline, "a deleted vhost's connection stays open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone = |broker: &common::Broker| {
        assert_eq!(rows(broker, &["list_vhosts", "name"]), ["/"]);
        assert!(rows(broker, &["list_user_permissions", "carol"]).is_empty());
        assert!(rows(broker, &["list_vhost_limits", "--global"]).is_empty());
        let err = ctl_fails(broker, &["list_queues", "-p", "apps"]);
        assert!(err.contains("does not exist"), "{err}");
    };
    gone(&broker);
    let close = RawClient::open_as(broker.addr, "guest", "guest", "apps").await.err().expect("vhost gone");
    assert_eq!(close, (530, "NOT_ALLOWED - vhost apps not found".to_string()));

    // Gone for good: kill -9, restart, and a vhost of the same name is new and empty.
    broker.kill();
    let broker = common::Broker::start_in(&dir, &[]);
    gone(&broker);
    assert_eq!(rows(&broker, &["list_queues", "name", "messages"]), ["kept\t1"]);
    add_apps(&broker);
    assert!(rows(&broker, &["list_queues", "-p", "apps", "name"]).is_empty());
    assert!(rows(&broker, &["list_policies", "-p", "apps", "name"]).is_empty());
    assert!(!rows(&broker, &["list_exchanges", "-p", "apps", "name"]).contains(&"doomed-x".to_string()));
    let err = ctl_fails(&broker, &["delete_vhost", "nowhere"]);
    assert!(err.contains("Virtual host 'nowhere' does not exist"), "{err}");
}

#[tokio::test]
async fn vhosts_and_their_contents_survive_kill_9() {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("data");
    let mut broker = common::Broker::start_in(&dir, &["--segment-size", "65536"]);
    add_apps(&broker);
    ctl(&broker, &["add_vhost", "empty", "--description", "nothing here"]);
    ctl(&broker, &["set_vhost_limits", "-p", "apps", r#"{"max-connections": 7}"#]);
    ctl(&broker, &["set_policy", "-p", "apps", "--apply-to", "queues", "cap", "^work$", r#"{"max-length":100}"#]);
    let apps = login_to(&broker, "guest", "guest", "apps").await.expect("apps");
    let ch = confirm_channel(&apps).await;
    durable_queue(&ch, "work").await;
    within(
        "exchange",
        ch.exchange_declare(
            "tasks".into(),
            lapin::ExchangeKind::Direct,
            lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange");
    within(
        "bind",
        ch.queue_bind("work".into(), "tasks".into(), "do".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("bind");
    // Enough traffic for several segments: the definitions must live on in
    // the snapshots of later ones.
    for i in 0..300 {
        publish_persistent(&ch, "tasks", "do", &format!("{i:0400}")).await;
    }
    assert_eq!(drain(&ch, "work").await.len(), 100, "the policy capped the queue");
    publish_persistent(&ch, "tasks", "do", "last").await;
    broker.kill();

    let broker = common::Broker::start_in(&dir, &["--segment-size", "65536"]);
    let vhosts = rows(&broker, &["list_vhosts", "name", "description"]);
    assert_eq!(vhosts, ["/\tDefault virtual host", "apps\tApplications", "empty\tnothing here"]);
    assert_eq!(rows(&broker, &["list_vhost_limits", "-p", "apps"]), [r#"{"max-connections":7}"#]);
    assert_eq!(rows(&broker, &["list_queues", "-p", "apps", "name", "messages", "policy"]), ["work\t1\tcap"]);
    let apps = login_to(&broker, "guest", "guest", "apps").await.expect("guest's permissions survived");
    let ch = confirm_channel(&apps).await;
    publish_persistent(&ch, "tasks", "do", "after").await;
    assert_eq!(drain(&ch, "work").await, ["last", "after"]);
}

/// The log as a crash right after a vhost's own removal leaves it (what
/// the vhost held not yet removed): the next start must not bring any of
/// it back, and must make the log forget it.
#[test]
fn a_vhost_deletion_cut_short_by_a_crash_is_finished_at_the_next_start() {
    use std::sync::Arc;
    use warren::broker::{Broker, Destination, Message, Policy, VhostInfo};
    use warren::protocol::method::{ExchangeDeclare, QueueDeclare};
    use warren::store::format::{ParameterKind, Record};
    use warren::store::io::FileIo;
    use warren::store::{LogOptions, LogStore, Recovered};

    let dir = tempfile::tempdir().expect("dir");
    let open = || -> (Arc<LogStore>, Recovered) {
        LogStore::open(Arc::new(FileIo::new(dir.path()).expect("io")), LogOptions::default()).expect("open")
    };
    let in_apps = |r: &Recovered| {
        let defs = &r.definitions;
        let queues = defs.queues.values().filter(|q| q.vhost() == Some("apps")).count();
        let exchanges = defs.exchanges.keys().filter(|(v, _)| v == "apps").count();
        let bindings = defs.bindings.iter().filter(|b| b.vhost == "apps").count();
        let policies =
            defs.parameters.keys().filter(|(k, key)| *k == ParameterKind::Policy && key.starts_with("apps\0"));
        (queues, exchanges, bindings, policies.count(), r.messages.len())
    };
    let (store, recovered) = open();
    let broker = Broker::new(store.clone());
    broker.restore(&recovered).expect("restore");
    let info = VhostInfo { name: "apps".into(), description: String::new(), tags: vec![], default_queue_type: None };
    broker.add_vhost(info).expect("add vhost");
    let queue = QueueDeclare { queue: "q".into(), durable: true, ..Default::default() };
    broker.queue_declare("apps", 1, &queue).expect("declare");
    let exchange = ExchangeDeclare { exchange: "x".into(), kind: "fanout".into(), durable: true, ..Default::default() };
    broker.exchange_declare("apps", &exchange).expect("exchange");
    broker.bind("apps", 1, "x", Destination::Queue("q".into()), "", &Default::default()).expect("bind");
    let definition = serde_json::from_str(r#"{"max-length": 5}"#).expect("json");
    let policy = Policy {
        vhost: "apps".into(),
        name: "p".into(),
        pattern: ".*".into(),
        apply_to: "all".into(),
        definition,
        priority: 0,
    };
    broker.set_policy(policy, false).expect("policy");
    let message = Arc::new(Message {
        exchange: "x".into(),
        routing_key: String::new(),
        properties: bytes::Bytes::from_static(&[0x10, 0x00, 2]),
        body: bytes::Bytes::from_static(b"kept until the vhost goes"),
        persistent: true,
        expiration_ms: None,
        priority: 0,
    });
    assert!(broker.publish("apps", "x", None, message).expect("publish").routed);
    // The crash: the vhost's own record is removed, nothing else yet.
    store.define(Record::ParameterDelete { kind: ParameterKind::Vhost, key: "apps".into() }).expect("define");
    store.shutdown();
    drop(broker);

    let (store, recovered) = open();
    assert_eq!(in_apps(&recovered), (1, 1, 1, 1, 1), "the log still holds the vhost's things");
    let broker = Broker::new(store.clone());
    broker.restore(&recovered).expect("restore");
    let names: Vec<String> = broker.list_vhosts().into_iter().map(|v| v.info.name).collect();
    assert_eq!(names, ["/"]);
    assert!(broker.list_queues(None).is_empty());
    store.shutdown();
    drop(broker);

    let (_store, recovered) = open();
    assert_eq!(in_apps(&recovered), (0, 0, 0, 0, 0), "the next start made the log forget them");
}
