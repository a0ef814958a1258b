//! A replicated quorum queue's log stays within its disk bound when its
//! messages are large: each Raft entry holds a batch of them, every entry
//! a group holds is restated at the start of each new segment, and a log
//! whose new segments were mostly restated entries could never get within
//! `max(2 × live, live + 4 segments)`, so its publishers waited for
//! compaction for good (found with 1 KiB messages and 64 MiB segments at
//! about 47,000 messages; here with 4 MiB segments, so it shows sooner).

mod common;

use std::collections::VecDeque;

use common::amqp::{channel, confirm_channel, connect, drain, within};
use common::cluster::TestCluster;
use common::quorum::{NAMES, durable, quorum_args};
use lapin::BasicProperties;
use lapin::Confirmation;
use lapin::options::BasicPublishOptions;

const SEGMENT: u64 = 4 << 20;
const MESSAGES: u32 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_keep_a_replicated_queue_within_its_disk_bound() {
    let segment = SEGMENT.to_string();
    let cluster = TestCluster::start_with(&NAMES, &["--segment-size", &segment]);
    common::cluster::agreed_leader(&cluster.all(), None).await;
    let conn = connect(&cluster.nodes[0]).await;
    let ch = confirm_channel(&conn).await;
    within("declare", ch.queue_declare("big".into(), durable(), quorum_args(&[]))).await.expect("declared");

    // 10,000 persistent 1 KiB messages, 200 unconfirmed at a time (so the
    // group's entries hold batches): each must be confirmed in time.
    let properties = BasicProperties::default().with_delivery_mode(2);
    let mut waiting = VecDeque::new();
    for i in 0..MESSAGES {
        let body = format!("{i:08}{}", "x".repeat(1016)).into_bytes();
        let publish =
            ch.basic_publish("".into(), "big".into(), BasicPublishOptions::default(), &body, properties.clone());
        waiting.push_back(within("publish", publish).await.expect("published"));
        while waiting.len() > 200 || (i == MESSAGES - 1 && !waiting.is_empty()) {
            let confirm = waiting.pop_front().expect("a confirm");
            let confirmation = within(&format!("a confirm near message {i}"), confirm).await.expect("confirm");
            assert!(matches!(confirmation, Confirmation::Ack(_)), "{confirmation:?}");
        }
    }

    // Every node's log within its bound (plus the active segment and the
    // spare) once compaction has caught up, its live bytes at least the
    // messages'.
    for node in &cluster.nodes {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let out = node.warrenctl(&["status", "--formatter", "json"]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status as JSON");
            let (disk, live) = (status["log_disk_bytes"].as_u64().unwrap(), status["log_live_bytes"].as_u64().unwrap());
            assert!(live >= u64::from(MESSAGES) * 1024, "{status}");
            let bound = (2 * live).max(live + 4 * SEGMENT) + 2 * SEGMENT;
            if disk <= bound {
                break;
            }
            let dir = node.data_dir.display();
            assert!(
                std::time::Instant::now() < deadline,
                "{dir}: {disk} bytes of log over its bound {bound} ({live} live)"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    conn.close(200, "done".into()).await.expect("closed");
    let conn = connect(&cluster.nodes[0]).await;
    let bodies = drain(&channel(&conn).await, "big").await;
    let numbers: Vec<String> = bodies.iter().map(|b| b[..8].to_string()).collect();
    assert_eq!(numbers, (0..MESSAGES).map(|i| format!("{i:08}")).collect::<Vec<_>>(), "every message, in order");
}
