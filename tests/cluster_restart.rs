//! A replicated quorum queue's confirmed messages outlive every member
//! killed with SIGKILL at once, both while they are only in the group's
//! Raft entries (a member writes a message record of its own only when
//! the group takes a snapshot) and after snapshots wrote them and the
//! entries were purged: three real `warren` nodes on loopback, restarted
//! on their data directories, each holding exactly the confirmed messages
//! not acknowledged, handed out in order by the leader.

mod common;

use std::time::{Duration, Instant};

use common::amqp::{channel, confirm_channel, connect, next, publish_to, text, within};
use common::cluster::{TestCluster, agreed_leader};
use common::quorum::{NAMES, durable, queue_leader, quorum_args};
use common::{Broker, http};
use lapin::Confirmation;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde_json::Value;

const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_outlive_every_member_killed_at_once_before_and_after_snapshots() {
    let mut cluster = TestCluster::start(&NAMES);
    agreed_leader(&cluster.all(), None).await;
    {
        let conn = connect(&cluster.nodes[0]).await;
        let ch = channel(&conn).await;
        within("declare", ch.queue_declare("work".into(), durable(), quorum_args(&[]))).await.expect("declared");
    }

    // 300 messages confirmed one by one through a follower (one entry
    // each, far fewer than a snapshot waits for), 100 of them acked.
    publish(&cluster.nodes[1], 0..300).await;
    take(&cluster, 0..100).await;
    for node in &cluster.nodes {
        until_ready(node, 200).await;
    }
    let snapshot_before = snapshot_index(&cluster).await;
    assert!(snapshot_before.is_none_or(|at| at < 300), "no snapshot covers the messages yet: {snapshot_before:?}");
    kill_all_and_restart(&mut cluster).await;
    for node in &cluster.nodes {
        until_ready(node, 200).await;
    }

    // 2,500 more, one entry each: snapshots write what is held and the
    // entries they cover are purged.
    publish(&cluster.nodes[2], 300..2_800).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while snapshot_index(&cluster).await.is_none_or(|at| at < 2_000) {
        assert!(Instant::now() < deadline, "no snapshot past entry 2,000 within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kill_all_and_restart(&mut cluster).await;
    for node in &cluster.nodes {
        until_ready(node, 2_700).await;
    }
    take(&cluster, 100..2_800).await;
    for node in &cluster.nodes {
        until_ready(node, 0).await;
    }
}

/// Publishes `task N` for each N, each confirmed before the next.
async fn publish(node: &Broker, numbers: std::ops::Range<u32>) {
    let conn = connect(node).await;
    let ch = confirm_channel(&conn).await;
    for i in numbers {
        let confirmation = publish_to(&ch, "", "work", &format!("task {i}")).await;
        assert!(matches!(confirmation, Confirmation::Ack(_)), "task {i}: {confirmation:?}");
    }
    let _ = conn.close(200, "done".into()).await;
}

/// Takes and acks `task N` for each N, in order, from the queue's leader.
async fn take(cluster: &TestCluster, numbers: std::ops::Range<u32>) {
    let leader = queue_leader(&cluster.all(), "work", None).await;
    let conn = connect(&cluster.nodes[cluster.index(&leader)]).await;
    let ch = channel(&conn).await;
    within("qos", ch.basic_qos(50, BasicQosOptions::default())).await.expect("qos");
    let consume = ch.basic_consume("work".into(), "w".into(), BasicConsumeOptions::default(), FieldTable::default());
    let mut consumer = within("consume", consume).await.expect("consume on the leader");
    for i in numbers {
        let delivery = next(&mut consumer).await;
        assert_eq!(text(&delivery), format!("task {i}"), "every confirmed, unacked message, once, in order");
        within("ack", delivery.ack(BasicAckOptions::default())).await.expect("ack");
    }
    let _ = conn.close(200, "done".into()).await;
}

/// Every node killed with SIGKILL, then each started again on its data
/// directory; returns once the queue has a leader.
async fn kill_all_and_restart(cluster: &mut TestCluster) {
    for node in &mut cluster.nodes {
        node.kill();
    }
    for i in 0..cluster.nodes.len() {
        cluster.nodes[i] = cluster.start_node(i);
    }
    agreed_leader(&cluster.all(), None).await;
    queue_leader(&cluster.all(), "work", None).await;
}

/// The queue's last snapshot on alpha's member, from its quorum status.
async fn snapshot_index(cluster: &TestCluster) -> Option<u64> {
    let path = "/api/queues/quorum/%2F/work/status";
    let reply = http::get(cluster.nodes[0].management.expect("management API"), path, GUEST).await;
    let rows = reply.json().as_array().cloned().unwrap_or_default();
    let alpha = rows.iter().find(|r| r["Node Name"].as_str() == Some(NAMES[0]))?;
    alpha["Snapshot Index"].as_u64()
}

/// Polls until `node` shows `ready` ready messages in the queue.
async fn until_ready(node: &Broker, ready: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = http::get(node.management.expect("management API"), "/api/queues/%2F/work", GUEST).await;
        let q: Value = reply.json();
        if q["messages_ready"].as_u64() == Some(ready) {
            return;
        }
        assert!(Instant::now() < deadline, "the queue never had {ready} ready messages: {q}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
