//! `warrenctl` against a live broker: listings match what AMQP clients did,
//! and its operator actions change what AMQP clients see.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::amqp::{WAIT, confirm_channel, connect, declare_queue, publish_acked, reply_code, within};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ExchangeKind};

/// Runs warrenctl (a blocking child process) without stalling the runtime's other tasks.
fn ctl(broker: &common::Broker, args: &[&str]) -> Output {
    let mut full = vec!["--timeout", "10"];
    full.extend_from_slice(args);
    tokio::task::block_in_place(|| broker.warrenctl(&full))
}

/// Runs warrenctl, requires success, and returns stdout's lines.
fn ctl_lines(broker: &common::Broker, args: &[&str]) -> Vec<String> {
    let out = ctl(broker, args);
    assert!(
        out.status.success(),
        "warrenctl {args:?} exited with {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout").lines().map(str::to_string).collect()
}

/// Tab-separated rows only: quiet and without the header line.
fn rows(broker: &common::Broker, command: &str, columns: &[&str]) -> Vec<String> {
    let mut args = vec!["-q", "--no-table-headers", command];
    args.extend_from_slice(columns);
    ctl_lines(broker, &args)
}

/// Polls a listing until `check` accepts it.
async fn wait_rows(broker: &common::Broker, command: &str, columns: &[&str], check: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let listing = rows(broker, command, columns);
        if check(&listing) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{command} {columns:?} never got as expected; last:\n{}",
            listing.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// (ready, consumers) through a passive declare on a fresh channel.
async fn amqp_counts(conn: &Connection, queue: &str) -> lapin::Result<(u32, u32)> {
    let ch = within("channel", conn.create_channel()).await?;
    let q = within(
        "passive declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        ),
    )
    .await?;
    let _ = within("channel.close", ch.close(200, "ok".into())).await;
    Ok((q.message_count(), q.consumer_count()))
}

// ---- list_queues ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_queues_counts_follow_publish_get_and_ack() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "orders").await;
    declare_queue(&ch, "empty").await;
    for i in 0..3 {
        publish_acked(&ch, "orders", &format!("o{i}")).await;
    }
    let columns = ["name", "messages_ready", "messages_unacknowledged", "messages"];
    assert_eq!(sorted(rows(&broker, "list_queues", &columns)), ["empty\t0\t0\t0", "orders\t3\t0\t3"]);

    let got = within("get", ch.basic_get("orders".into(), BasicGetOptions { no_ack: false }))
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(sorted(rows(&broker, "list_queues", &columns)), ["empty\t0\t0\t0", "orders\t2\t1\t3"]);

    within("ack", got.delivery.ack(BasicAckOptions::default())).await.expect("ack");
    wait_rows(&broker, "list_queues", &columns, |r| r.contains(&"orders\t2\t0\t2".to_string())).await;

    // A consumer shows in the consumers column.
    let cch = confirm_channel(&conn).await;
    within("qos", cch.basic_qos(1, BasicQosOptions::default())).await.expect("qos");
    let _consumer =
        within("consume", cch.basic_consume("orders".into(), "c".into(), Default::default(), FieldTable::default()))
            .await
            .expect("consume");
    wait_rows(&broker, "list_queues", &["name", "messages_ready", "messages_unacknowledged", "consumers"], |r| {
        r.contains(&"orders\t1\t1\t1".to_string())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_queues_default_columns_and_headers() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "alpha").await;
    publish_acked(&ch, "alpha", "a").await;
    publish_acked(&ch, "alpha", "b").await;

    let quiet = ctl_lines(&broker, &["-q", "list_queues"]);
    assert_eq!(quiet, ["name\tmessages", "alpha\t2"]);

    let chatty = ctl_lines(&broker, &["list_queues"]);
    let header = chatty.iter().position(|l| l == "name\tmessages").expect("header line");
    assert_eq!(chatty[header + 1..], ["alpha\t2"]);
    assert!(chatty[..header].iter().any(|l| l.starts_with("Listing queues")), "no informational line in {chatty:?}");

    let bare = ctl_lines(&broker, &["-q", "--no-table-headers", "list_queues"]);
    assert_eq!(bare, ["alpha\t2"]);
}

// ---- other listings ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_exchanges_shows_standard_and_declared_exchanges() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    within(
        "exchange.declare",
        ch.exchange_declare(
            "events".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare");
    let listing = ctl_lines(&broker, &["-q", "list_exchanges"]);
    assert_eq!(listing.first().map(String::as_str), Some("name\ttype"));
    for row in [
        "\tdirect",
        "amq.direct\tdirect",
        "amq.fanout\tfanout",
        "amq.topic\ttopic",
        "amq.headers\theaders",
        "amq.match\theaders",
        "events\ttopic",
    ] {
        assert!(listing.iter().any(|l| l == row), "no row {row:?} in {listing:?}");
    }
    assert_eq!(listing.len(), 8, "{listing:?}");
    let detail = rows(&broker, "list_exchanges", &["name", "durable", "auto_delete", "internal"]);
    assert!(detail.contains(&"events\ttrue\tfalse\tfalse".to_string()), "{detail:?}");

    within("exchange.delete", ch.exchange_delete("events".into(), Default::default())).await.expect("delete");
    let after = rows(&broker, "list_exchanges", &["name"]);
    assert!(!after.contains(&"events".to_string()), "deleted exchange still listed: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_bindings_shows_a_queue_bind_until_unbind() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "audit").await;
    within(
        "bind",
        ch.queue_bind("audit".into(), "amq.topic".into(), "audit.#".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("bind");
    let columns = ["source_name", "source_kind", "destination_name", "destination_kind", "routing_key"];
    let listing = rows(&broker, "list_bindings", &columns);
    let bound = "amq.topic\texchange\taudit\tqueue\taudit.#".to_string();
    // Every queue is bound to the default exchange by its name.
    let implicit = "\texchange\taudit\tqueue\taudit".to_string();
    assert!(listing.contains(&bound), "no {bound:?} in {listing:?}");
    assert!(listing.contains(&implicit), "no {implicit:?} in {listing:?}");
    assert_eq!(listing.len(), 2, "{listing:?}");

    within("unbind", ch.queue_unbind("audit".into(), "amq.topic".into(), "audit.#".into(), FieldTable::default()))
        .await
        .expect("unbind");
    assert_eq!(rows(&broker, "list_bindings", &columns), [implicit]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_connections_follows_connects_and_closes() {
    let broker = common::Broker::start();
    assert_eq!(rows(&broker, "list_connections", &["user"]), Vec::<String>::new());
    let first = connect(&broker).await;
    let listing = rows(&broker, "list_connections", &["user", "peer", "state", "vhost"]);
    assert_eq!(listing.len(), 1, "{listing:?}");
    let fields: Vec<&str> = listing[0].split('\t').collect();
    assert_eq!(fields[0], "guest");
    assert!(fields[1].starts_with("127.0.0.1:"), "peer {:?}", fields[1]);
    assert_eq!(fields[2], "running");
    assert_eq!(fields[3], "/");

    let second = connect(&broker).await;
    let _ch = within("channel", second.create_channel()).await.expect("channel");
    wait_rows(&broker, "list_connections", &["user", "channels"], |r| sorted(r.to_vec()) == ["guest\t0", "guest\t1"])
        .await;

    within("close", first.close(200, "bye".into())).await.expect("close first");
    wait_rows(&broker, "list_connections", &["user", "channels"], |r| r == ["guest\t1"]).await;
    within("close", second.close(200, "bye".into())).await.expect("close second");
    wait_rows(&broker, "list_connections", &["user"], |r| r.is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_consumers_shows_consumer_tags() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "tasks").await;
    within("qos", ch.basic_qos(7, BasicQosOptions::default())).await.expect("qos");
    let _acking = within(
        "consume",
        ch.basic_consume("tasks".into(), "worker-1".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("consume");
    let _auto = within(
        "consume",
        ch.basic_consume(
            "tasks".into(),
            "worker-2".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    let columns = ["queue_name", "consumer_tag", "ack_required", "prefetch_count"];
    assert_eq!(
        sorted(rows(&broker, "list_consumers", &columns)),
        ["tasks\tworker-1\ttrue\t7", "tasks\tworker-2\tfalse\t7"]
    );
    let defaults = ctl_lines(&broker, &["-q", "list_consumers"]);
    assert!(defaults[0].split('\t').any(|c| c == "consumer_tag"), "header {:?}", defaults[0]);
    assert_eq!(defaults.len(), 3, "{defaults:?}");

    within("cancel", ch.basic_cancel("worker-1".into(), Default::default())).await.expect("cancel");
    assert_eq!(rows(&broker, "list_consumers", &["consumer_tag"]), ["worker-2"]);
}

// ---- operator actions --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_queue_empties_the_queue_for_amqp_clients() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "backlog").await;
    for i in 0..4 {
        publish_acked(&ch, "backlog", &format!("m{i}")).await;
    }
    let held = within("get", ch.basic_get("backlog".into(), BasicGetOptions { no_ack: false }))
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(amqp_counts(&conn, "backlog").await.expect("counts"), (3, 0));

    ctl_lines(&broker, &["purge_queue", "backlog"]);
    assert_eq!(amqp_counts(&conn, "backlog").await.expect("counts"), (0, 0));
    let got = within("get", ch.basic_get("backlog".into(), BasicGetOptions { no_ack: true })).await.expect("get");
    assert!(got.is_none(), "a message survived the purge");
    // The unacked message is not purged: rejecting it puts it back.
    within("reject", held.delivery.reject(BasicRejectOptions { requeue: true })).await.expect("reject");
    let back = within("get", ch.basic_get("backlog".into(), BasicGetOptions { no_ack: true }))
        .await
        .expect("get")
        .expect("the unacked message came back");
    assert_eq!(back.delivery.data, b"m0");
    assert_eq!(rows(&broker, "list_queues", &["name", "messages"]), ["backlog\t0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_queue_removes_it_for_amqp_clients_and_cancels_its_consumers() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "retired").await;
    publish_acked(&ch, "retired", "a").await;
    publish_acked(&ch, "retired", "b").await;
    let cch = confirm_channel(&conn).await;
    within(
        "bind",
        ch.queue_bind("retired".into(), "amq.fanout".into(), "".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("bind");
    let out = ctl_lines(&broker, &["delete_queue", "retired"]);
    assert!(out.iter().any(|l| l.contains("2 ready messages")), "delete_queue output {out:?}");
    match amqp_counts(&conn, "retired").await {
        Err(e) => assert_eq!(reply_code(&e), Some(404), "{e:?}"),
        Ok(c) => panic!("queue still declared after delete_queue: {c:?}"),
    }
    assert_eq!(rows(&broker, "list_queues", &["name"]), Vec::<String>::new());
    assert_eq!(rows(&broker, "list_bindings", &["destination_name"]), Vec::<String>::new());

    // A consumer of a queue deleted by the operator is told so.
    declare_queue(&ch, "watched").await;
    let mut consumer =
        within("consume", cch.basic_consume("watched".into(), "w".into(), Default::default(), FieldTable::default()))
            .await
            .expect("consume");
    ctl_lines(&broker, &["delete_queue", "watched"]);
    match within("the consumer to be cancelled", consumer.next()).await {
        None => {}
        Some(other) => panic!("expected the consumer stream to end, got {other:?}"),
    }

    // An exclusive queue can be deleted by the operator too.
    within(
        "declare exclusive",
        ch.queue_declare(
            "mine".into(),
            QueueDeclareOptions { exclusive: true, ..Default::default() },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare");
    ctl_lines(&broker, &["delete_queue", "mine"]);
    assert_eq!(amqp_counts(&conn, "mine").await.err().and_then(|e| reply_code(&e)), Some(404));
}

// ---- errors --------------------------------------------------------------------------

fn assert_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got {:?} with stdout {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains(needle), "stderr does not mention {needle:?}: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_column_is_an_error() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "present").await;
    assert_failure(&ctl(&broker, &["list_queues", "name", "bogus_column"]), "bogus_column");
    assert_failure(&ctl(&broker, &["list_exchanges", "colour"]), "colour");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_column_is_an_error_even_when_nothing_is_listed() {
    let broker = common::Broker::start();
    assert_failure(&ctl(&broker, &["list_queues", "name", "bogus_column"]), "bogus_column");
    assert_failure(&ctl(&broker, &["list_consumers", "bogus_column"]), "bogus_column");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_or_delete_of_a_missing_queue_is_an_error() {
    let broker = common::Broker::start();
    assert_failure(&ctl(&broker, &["purge_queue", "ghost"]), "ghost");
    assert_failure(&ctl(&broker, &["delete_queue", "ghost"]), "ghost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_a_readable_error() {
    let broker = common::Broker::start();
    let elsewhere = tempfile::tempdir().expect("scratch dir");
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_warrenctl"))
            .arg("--data-dir")
            .arg(elsewhere.path())
            .arg("list_queues")
            .output()
            .expect("run warrenctl")
    });
    assert_failure(&out, &elsewhere.path().display().to_string());
    assert!(out.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&out.stdout));

    // A broker that is gone (its socket file left behind by SIGKILL) is reported the same way.
    let mut broker = broker;
    assert!(ctl(&broker, &["list_queues"]).status.success());
    broker.kill();
    assert_failure(&ctl(&broker, &["list_queues"]), &broker.data_dir.display().to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn close_connection_forces_a_client_off() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "still-here").await;
    let names = rows(&broker, "list_connections", &["name"]);
    assert_eq!(names.len(), 1, "{names:?}");
    ctl_lines(&broker, &["close_connection", &names[0], "maintenance window"]);
    let deadline = Instant::now() + WAIT;
    while conn.status().connected() {
        assert!(Instant::now() < deadline, "the connection is still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_rows(&broker, "list_connections", &["name"], |r| r.is_empty()).await;
    let unknown = ctl(&broker, &["close_connection", "no such connection"]);
    assert!(!unknown.status.success(), "{unknown:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_the_json_formatter() {
    let broker = common::Broker::start();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "counted").await;
    publish_acked(&ch, "counted", "one").await;
    let status = ctl_lines(&broker, &["status"]);
    for line in ["product: Warren", "connections: 1", "messages_ready: 1"] {
        assert!(status.iter().any(|l| l == line), "{line} not in {status:?}");
    }
    let json = ctl_lines(&broker, &["--formatter", "json", "list_queues", "name", "messages"]);
    let value: serde_json::Value = serde_json::from_str(&json.join("\n")).expect("JSON");
    assert_eq!(value, serde_json::json!([{"name": "counted", "messages": 1}]));
    let json = ctl_lines(&broker, &["--formatter", "json", "status"]);
    let value: serde_json::Value = serde_json::from_str(&json.join("\n")).expect("JSON");
    assert_eq!(value["queues"], 1);
    assert!(value["pid"].as_u64().is_some_and(|p| p > 0));
}
