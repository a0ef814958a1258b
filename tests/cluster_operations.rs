//! What an operator asks a cluster about its quorum queues, over the HTTP
//! API and with warrenctl (real nodes, ports chosen at run time):
//! `quorum_status` gives each member's Raft figures (one leader, the
//! others followers, every voter, the same index applied everywhere once
//! the publishes are confirmed; a member whose node is down says so), and
//! `check_if_node_is_quorum_critical` fails on a node whose stop would
//! leave a queue without a majority, naming the queue.

mod common;

use std::time::{Duration, Instant};

use common::amqp::{confirm_channel, connect, publish_to, within};
use common::cluster::TestCluster;
use common::quorum::{NAMES, durable, queue_leader, quorum_args};
use common::{Broker, http};
use lapin::Confirmation;
use lapin::types::FieldTable;
use serde_json::Value;

const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));
const STATUS_PATH: &str = "/api/queues/quorum/%2F/ops/status";

async fn get(node: &Broker, path: &str) -> http::Reply {
    http::get(node.management.expect("management API"), path, GUEST).await
}

/// Polls `node`'s view of the queue's members until `done` holds, for at
/// most 20 s; the rows.
async fn members_until(node: &Broker, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = get(node, STATUS_PATH).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let rows = reply.json().as_array().cloned().unwrap_or_default();
        if done(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "{what} within 20 s: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn column<'a>(rows: &'a [Value], name: &str) -> Vec<&'a Value> {
    rows.iter().map(|r| &r[name]).collect()
}

#[tokio::test]
async fn operators_see_each_members_figures_and_which_node_is_quorum_critical() {
    let mut cluster = TestCluster::start(&NAMES);
    let all: Vec<&Broker> = cluster.nodes.iter().collect();
    common::cluster::agreed_leader(&all, None).await;
    let conn = connect(&cluster.nodes[0]).await;
    let ch = confirm_channel(&conn).await;
    within("declare", ch.queue_declare("ops".into(), durable(), quorum_args(&[]))).await.expect("declared");
    within("classic", ch.queue_declare("local".into(), durable(), FieldTable::default())).await.expect("declared");
    assert_eq!(queue_leader(&all, "ops", None).await, NAMES[0], "alpha declared it, and leads it");
    for i in 0..10 {
        let confirmation = publish_to(&ch, "", "ops", &format!("m{i}")).await;
        assert!(matches!(confirmation, Confirmation::Ack(_)), "m{i}: {confirmation:?}");
    }

    // Asked on gamma: every member, alpha leading, all voters, and once
    // the followers have applied what was confirmed, one index everywhere.
    let rows = members_until(&cluster.nodes[2], "every member applied the same index", |rows| {
        let applied = column(rows, "Last Applied");
        rows.len() == 3 && applied.iter().all(|a| a.as_u64().is_some() && *a == applied[0])
    })
    .await;
    assert_eq!(column(&rows, "Node Name"), NAMES.map(Value::from).iter().collect::<Vec<_>>(), "{rows:?}");
    assert_eq!(
        column(&rows, "Raft State"),
        ["leader", "follower", "follower"].map(Value::from).iter().collect::<Vec<_>>()
    );
    assert!(rows.iter().all(|r| r["Membership"] == "voter" && r["Term"] == rows[0]["Term"]), "{rows:?}");
    // The ten publishes are ten entries after the group's first.
    let applied = rows[0]["Last Applied"].as_u64().expect("an index");
    assert!(applied >= 10, "{rows:?}");
    assert!(rows.iter().all(|r| r["Commit Index"].as_u64() >= Some(applied)), "{rows:?}");

    // warrenctl on beta, through its control socket: the same table.
    let out = cluster.nodes[1].warrenctl(&["quorum_status", "ops"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().filter(|l| l.contains('\t')).collect();
    assert_eq!(
        lines.first().map(|h| h.split('\t').take(3).collect::<Vec<_>>()),
        Some(vec!["Node Name", "Raft State", "Membership"])
    );
    assert_eq!(lines.len(), 4, "a header and three members:\n{text}");
    assert!(lines[1].starts_with(&format!("{}\tleader\tvoter\t", NAMES[0])), "{text}");

    // Refusals: no such queue, not a quorum queue.
    assert_eq!(get(&cluster.nodes[1], "/api/queues/quorum/%2F/nothing/status").await.status, 404);
    let classic = get(&cluster.nodes[0], "/api/queues/quorum/%2F/local/status").await;
    assert_eq!(classic.status, 400, "{}", classic.body);
    assert!(classic.body.contains("is not a quorum queue"), "{}", classic.body);
    let missing = cluster.nodes[1].warrenctl(&["quorum_status", "nothing"]);
    assert_eq!(missing.status.code(), Some(70));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("queue 'nothing' in vhost '/' does not exist"));

    // Three members online: stopping any one leaves a majority.
    for node in &cluster.nodes {
        let check = get(node, "/api/health/checks/node-is-quorum-critical").await;
        assert_eq!((check.status, check.json()["status"].as_str()), (200, Some("ok")), "{}", check.body);
    }
    let ok = cluster.nodes[0].warrenctl(&["check_if_node_is_quorum_critical"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    // Gamma down: alpha and beta are each critical for 'ops'.
    conn.close(200, "done".into()).await.expect("closed");
    cluster.nodes[2].kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let check = get(&cluster.nodes[0], "/api/health/checks/node-is-quorum-critical").await;
        if check.status == 503 {
            break check.json();
        }
        assert!(Instant::now() < deadline, "alpha never became quorum critical: {}", check.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failed["status"], "failed", "{failed}");
    let queues: Vec<&str> =
        failed["queues"].as_array().expect("queues").iter().filter_map(|q| q["name"].as_str()).collect();
    assert_eq!(queues, ["ops"], "{failed}");
    let critical = cluster.nodes[1].warrenctl(&["check_if_node_is_quorum_critical"]);
    assert_eq!(critical.status.code(), Some(69), "{}", String::from_utf8_lossy(&critical.stdout));
    assert!(String::from_utf8_lossy(&critical.stderr).contains("'ops' in vhost '/'"));
    // Alpha's view of the members: gamma's node is down.
    let rows = members_until(&cluster.nodes[0], "gamma shown down", |rows| {
        rows.len() == 3 && rows[2]["Raft State"] == "nodedown"
    })
    .await;
    assert_eq!(rows[2]["Node Name"], NAMES[2]);
    assert!(rows[2]["Last Applied"].is_null(), "{rows:?}");
}

#[tokio::test]
async fn a_single_node_is_never_quorum_critical_and_has_no_quorum_status() {
    let broker = Broker::start_with_http();
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    within("declare", ch.queue_declare("alone".into(), durable(), quorum_args(&[]))).await.expect("declared");
    let check = get(&broker, "/api/health/checks/node-is-quorum-critical").await;
    assert_eq!((check.status, check.json()["status"].as_str()), (200, Some("ok")), "{}", check.body);
    assert!(broker.warrenctl(&["check_if_node_is_quorum_critical"]).status.success());
    let status = get(&broker, "/api/queues/quorum/%2F/alone/status").await;
    assert_eq!(status.status, 400, "{}", status.body);
    assert!(status.body.contains("not in a cluster"), "{}", status.body);
    let out = broker.warrenctl(&["quorum_status", "alone"]);
    assert_eq!(out.status.code(), Some(70));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in a cluster"));
}
