//! What the quorum queue tests share: three nodes' names, a quorum
//! queue's declare arguments, and its leader as every node shows it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};

use super::{Broker, http};

pub const NAMES: [&str; 3] = ["alpha@localhost", "beta@localhost", "gamma@localhost"];
const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));

/// `x-queue-type: quorum` and `extra`.
pub fn quorum_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    for (key, value) in extra {
        args.insert((*key).into(), value.clone());
    }
    args
}

pub fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..Default::default() }
}

/// Polls until every node shows `queue` with all three members and the
/// same leader (not `not`); that leader's name.
pub async fn queue_leader(nodes: &[&Broker], queue: &str, not: Option<&str>) -> String {
    let path = format!("/api/queues/%2F/{queue}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let everyone: BTreeSet<&str> = NAMES.into_iter().collect();
    loop {
        let mut seen = Vec::new();
        for node in nodes {
            seen.push(http::get(node.management.expect("management API"), &path, GUEST).await.json());
        }
        let leader = seen[0]["leader"].as_str().map(str::to_string);
        let agreed = seen.iter().all(|q| {
            let members: Option<BTreeSet<&str>> =
                q["members"].as_array().map(|m| m.iter().filter_map(|n| n.as_str()).collect());
            q["type"] == "quorum" && members.as_ref() == Some(&everyone) && q["leader"].as_str() == leader.as_deref()
        });
        if let Some(leader) = leader.filter(|l| agreed && Some(l.as_str()) != not) {
            return leader;
        }
        assert!(Instant::now() < deadline, "no agreed queue leader within 20 s: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
