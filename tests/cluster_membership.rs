//! Changing a quorum queue's members while it runs, as an operator does
//! with rabbitmq-queues (real nodes, ports chosen at run time): a member
//! added while publishers go on catches up and votes, and once the
//! original members are deleted it alone holds every confirmed message,
//! which a node that is no member any more still serves;
//! `shrink` and `grow` take a node out of and back into every queue;
//! `rebalance` spreads leaders that piled up on one node; a node whose
//! data directory was wiped rejoins its queues under its new Raft id and
//! carries a majority with the others.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::amqp::{channel, confirm_channel, connect, drain, publish_acked, within};
use common::cluster::TestCluster;
use common::quorum::{NAMES, durable, quorum_args};
use common::{Broker, http};
use lapin::types::AMQPValue;
use serde_json::Value;

const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));

fn status_path(queue: &str) -> String {
    format!("/api/queues/quorum/%2F/{queue}/status")
}

/// Polls `node`'s quorum_status of `queue` until `done` holds, for at most
/// `secs`; the rows.
async fn members_until(
    node: &Broker,
    queue: &str,
    secs: u64,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let reply = http::get(node.management.expect("management API"), &status_path(queue), GUEST).await;
        let rows = reply.json().as_array().cloned().unwrap_or_default();
        if reply.status == 200 && done(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "{what} within {secs} s: {} {rows:?}", reply.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn names(rows: &[Value]) -> BTreeSet<String> {
    rows.iter().filter_map(|r| r["Node Name"].as_str().map(str::to_string)).collect()
}

/// Every row a running voter, all having applied the same index.
fn all_voters_level(rows: &[Value]) -> bool {
    let applied = rows.first().map(|r| &r["Last Applied"]);
    rows.iter().all(|r| {
        r["Membership"] == "voter"
            && matches!(r["Raft State"].as_str(), Some("leader" | "follower"))
            && Some(&r["Last Applied"]) == applied
    })
}

fn leader(rows: &[Value]) -> Option<String> {
    rows.iter().find(|r| r["Raft State"] == "leader").and_then(|r| r["Node Name"].as_str().map(str::to_string))
}

/// Runs warrenctl on `node` off the runtime's thread (publishers go on
/// meanwhile); its exit code, standard output and standard error.
async fn warrenctl(node: &Broker, args: &[&str]) -> (Option<i32>, String, String) {
    let dir = node.data_dir.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_warrenctl")).arg("--data-dir").arg(dir).args(args).output()
    })
    .await
    .expect("warrenctl ran")
    .expect("run warrenctl");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_under_load_catches_up_and_then_holds_every_message_alone() {
    let cluster = TestCluster::start(&NAMES);
    common::cluster::agreed_leader(&cluster.all(), None).await;
    let conn = connect(&cluster.nodes[0]).await;
    let ch = confirm_channel(&conn).await;
    let two = quorum_args(&[("x-quorum-initial-group-size", AMQPValue::LongInt(2))]);
    within("declare", ch.queue_declare("grown".into(), durable(), two)).await.expect("declared");
    let rows =
        members_until(&cluster.nodes[0], "grown", 20, "two voters", |r| r.len() == 2 && all_voters_level(r)).await;
    let first_two = names(&rows);
    let newcomer = NAMES.iter().find(|n| !first_two.contains(**n)).expect("a node that is no member").to_string();
    // More entries than a snapshot is taken after (1,024): the group's log
    // before the last snapshot is purged, so the newcomer catches up from
    // a snapshot, then from the log.
    for i in 0..1500 {
        publish_acked(&ch, "grown", &format!("m{i}")).await;
    }

    // Publishing goes on while the newcomer is added.
    let publisher = tokio::spawn(async move {
        for i in 1500..2000 {
            publish_acked(&ch, "grown", &format!("m{i}")).await;
        }
        conn
    });
    let (code, out, err) = warrenctl(&cluster.nodes[1], &["add_member", "grown", &newcomer]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("Adding a replica for queue grown on node {newcomer}")), "{out}");
    let conn = publisher.await.expect("every publish confirmed");
    let rows =
        members_until(&cluster.nodes[2], "grown", 30, "three level voters", |r| r.len() == 3 && all_voters_level(r))
            .await;
    assert_eq!(names(&rows), NAMES.iter().map(|n| n.to_string()).collect(), "{rows:?}");

    // Refused: a member again, a node of no cluster, the last member.
    let (code, _, err) = warrenctl(&cluster.nodes[0], &["add_member", "grown", &newcomer]).await;
    assert_eq!(code, Some(70), "{err}");
    assert!(err.contains(&format!("node {newcomer} is already a member of quorum queue 'grown'")), "{err}");
    let (code, _, err) = warrenctl(&cluster.nodes[0], &["add_member", "grown", "omega@localhost"]).await;
    assert_eq!(code, Some(70), "{err}");
    assert!(err.contains("omega@localhost is not a node of this cluster"), "{err}");
    let api = cluster.nodes[0].management.expect("management API");
    let missing = http::request(
        api,
        "POST",
        "/api/queues/quorum/%2F/nothing/replicas/add",
        GUEST,
        Some(r#"{"node":"beta@localhost"}"#),
    )
    .await;
    assert_eq!(missing.status, 404, "{}", missing.body);

    // The first two members go, one through warrenctl, one through the
    // HTTP API: the newcomer alone is left, and leads.
    let mut gone = first_two.iter();
    let (first, second) = (gone.next().expect("a member"), gone.next().expect("a member"));
    let (code, out, err) = warrenctl(&cluster.nodes[2], &["delete_member", "grown", first]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let body = format!(r#"{{"node":"{second}"}}"#);
    let deleted =
        http::request(api, "DELETE", "/api/queues/quorum/%2F/grown/replicas/delete", GUEST, Some(&body)).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    let at = cluster.index(&newcomer);
    let rows = members_until(&cluster.nodes[at], "grown", 20, "the newcomer alone, leading", |r| {
        r.len() == 1 && leader(r).as_deref() == Some(newcomer.as_str())
    })
    .await;
    assert_eq!(rows[0]["Membership"], "voter");
    let (code, _, err) = warrenctl(&cluster.nodes[at], &["delete_member", "grown", &newcomer]).await;
    assert_eq!(code, Some(70), "{err}");
    assert!(err.contains("is the last member of quorum queue 'grown'"), "{err}");

    // A node that is no member any more still serves the queue's clients,
    // through the members: its API names the leader, a publish there is
    // confirmed, and a get there takes every confirmed message, in order.
    conn.close(200, "done".into()).await.expect("closed");
    let outside = &cluster.nodes[cluster.index(first)];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let queue = http::get(outside.management.expect("management API"), "/api/queues/%2F/grown", GUEST).await.json();
        if queue["leader"] == newcomer.as_str() && queue["members"] == serde_json::json!([newcomer]) {
            break;
        }
        assert!(Instant::now() < deadline, "{first} never showed the newcomer leading: {queue}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let conn = connect(outside).await;
    publish_acked(&confirm_channel(&conn).await, "grown", "from outside").await;
    let bodies = drain(&channel(&conn).await, "grown").await;
    let mut expected: Vec<String> = (0..2000).map(|i| format!("m{i}")).collect();
    expected.push("from outside".into());
    assert_eq!(bodies.len(), expected.len(), "every confirmed message, through {first}");
    assert_eq!(bodies, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shrink_grow_and_rebalance_move_members_and_leaders() {
    let cluster = TestCluster::start(&NAMES);
    common::cluster::agreed_leader(&cluster.all(), None).await;
    let conn = connect(&cluster.nodes[0]).await;
    let ch = confirm_channel(&conn).await;
    let queues = ["q1", "q2", "q3"];
    for q in queues {
        within("declare", ch.queue_declare(q.into(), durable(), quorum_args(&[]))).await.expect("declared");
        publish_acked(&ch, q, q).await;
    }
    for q in queues {
        let rows =
            members_until(&cluster.nodes[0], q, 20, "three voters", |r| r.len() == 3 && all_voters_level(r)).await;
        assert_eq!(leader(&rows).as_deref(), Some(NAMES[0]), "alpha declared {q} and leads it");
    }

    let (code, out, err) = warrenctl(&cluster.nodes[0], &["shrink", NAMES[2]]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("/\t")).collect();
    assert_eq!(lines, ["/\tq1\t2\tok", "/\tq2\t2\tok", "/\tq3\t2\tok"], "{out}");
    for q in queues {
        let rows = members_until(&cluster.nodes[2], q, 20, "gamma gone", |r| r.len() == 2).await;
        assert!(!names(&rows).contains(NAMES[2]), "{rows:?}");
    }

    let (code, out, err) = warrenctl(&cluster.nodes[1], &["grow", NAMES[2], "all"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("/\t")).collect();
    assert_eq!(lines, ["/\tq1\t3\tok", "/\tq2\t3\tok", "/\tq3\t3\tok"], "{out}");
    for q in queues {
        members_until(&cluster.nodes[2], q, 30, "gamma a voter again", |r| r.len() == 3 && all_voters_level(r)).await;
    }
    // `even` takes only queues with an even number of members: none now.
    let (code, out, _) = warrenctl(&cluster.nodes[1], &["grow", NAMES[2], "even"]).await;
    assert_eq!(code, Some(0));
    assert!(!out.lines().any(|l| l.starts_with("/\t")), "{out}");

    // Three leaders on alpha: one each afterwards.
    let (code, out, err) = warrenctl(&cluster.nodes[2], &["rebalance", "all"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    for name in NAMES {
        assert!(out.lines().any(|l| l == format!("{name}\t1")), "{name} leads one:\n{out}");
    }
    let mut leaders = BTreeSet::new();
    for q in queues {
        let rows = members_until(&cluster.nodes[1], q, 20, "a leader", |r| leader(r).is_some()).await;
        leaders.insert(leader(&rows).expect("a leader"));
    }
    assert_eq!(leaders.len(), 3, "each node leads one queue: {leaders:?}");
    // The messages stayed through it all.
    for q in queues {
        let at = cluster.index(
            &members_until(&cluster.nodes[0], q, 20, "a leader", |r| leader(r).is_some())
                .await
                .iter()
                .find(|r| r["Raft State"] == "leader")
                .and_then(|r| r["Node Name"].as_str().map(str::to_string))
                .expect("a leader"),
        );
        let conn = connect(&cluster.nodes[at]).await;
        assert_eq!(drain(&channel(&conn).await, q).await, [q], "{q} on its leader {}", NAMES[at]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_rejoins_its_queues_under_its_new_id() {
    let mut cluster = TestCluster::start(&NAMES);
    common::cluster::agreed_leader(&cluster.all(), None).await;
    let conn = connect(&cluster.nodes[0]).await;
    let ch = confirm_channel(&conn).await;
    within("declare", ch.queue_declare("kept".into(), durable(), quorum_args(&[]))).await.expect("declared");
    for i in 0..50 {
        publish_acked(&ch, "kept", &format!("m{i}")).await;
    }
    conn.close(200, "done".into()).await.expect("closed");

    // Gamma's data directory wiped: it comes back empty, under a new id.
    cluster.nodes[2].kill();
    std::fs::remove_dir_all(&cluster.dirs[2]).expect("wiped");
    cluster.nodes[2] = cluster.start_node(2);
    members_until(&cluster.nodes[0], "kept", 40, "gamma a level voter again", |r| {
        r.len() == 3 && all_voters_level(r) && names(r).contains(NAMES[2])
    })
    .await;

    // Alpha killed: beta and gamma are a majority, so gamma votes with
    // what it caught up on and the queue goes on.
    cluster.nodes[0].kill();
    let conn = connect(&cluster.nodes[2]).await;
    let ch = confirm_channel(&conn).await;
    publish_acked(&ch, "kept", "after").await;
    let rows = members_until(&cluster.nodes[1], "kept", 20, "a leader of beta and gamma", |r| {
        leader(r).is_some_and(|l| l != NAMES[0])
    })
    .await;
    let at = cluster.index(&leader(&rows).expect("a leader"));
    let conn = connect(&cluster.nodes[at]).await;
    let mut expected: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    expected.push("after".into());
    assert_eq!(drain(&channel(&conn).await, "kept").await, expected);
}
