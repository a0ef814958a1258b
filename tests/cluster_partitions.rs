//! Partitions of the metadata group, made by the test itself: three real
//! `warren` nodes on loopback, each reaching each other only through a
//! proxy of its own per link, which the test cuts. For each shape (the
//! leader isolated, a follower isolated): the majority side goes on
//! taking changes under a leader of its own; the node cut off refuses a
//! change (541 after its wait) and that change is never made anywhere,
//! not even once the partition heals; healed, the node cut off catches up
//! with what the majority made meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::amqp::{amqp_error, channel, connect};
use common::cluster::{TestCluster, metadata_status};
use common::{Broker, http};
use lapin::ExchangeKind;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;

const NAMES: [&str; 3] = ["alpha@localhost", "beta@localhost", "gamma@localhost"];
const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));

/// Polls until the nodes `among` agree on a leader that is one of them,
/// for at most 20 s; its index.
async fn leader_among(cluster: &TestCluster, among: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = Vec::new();
        for &i in among {
            seen.push(metadata_status(&cluster.nodes[i]).await);
        }
        let leader = seen[0]["leader"].as_str().map(|l| cluster.index(l));
        if let Some(leader) = leader
            && among.contains(&leader)
            && seen.iter().all(|s| s["leader"].as_str() == Some(cluster.names[leader]))
        {
            return leader;
        }
        assert!(Instant::now() < deadline, "no agreed leader among {among:?} within 20 s: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn declare(broker: &Broker, name: &str) -> lapin::Result<()> {
    let conn = connect(broker).await;
    let ch = channel(&conn).await;
    let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let declare = ch.exchange_declare(name.into(), ExchangeKind::Fanout, options, FieldTable::default());
    let result = tokio::time::timeout(Duration::from_secs(30), declare).await.expect("answered within 30 s");
    let _ = conn.close(200, "done".into()).await;
    result
}

async fn exchange_status(broker: &Broker, name: &str) -> u16 {
    let path = format!("/api/exchanges/%2F/{name}");
    http::get(broker.management.expect("management API"), &path, GUEST).await.status
}

/// Polls until `name` is on `broker`, for at most 20 s.
async fn until_made(broker: &Broker, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while exchange_status(broker, name).await != 200 {
        assert!(Instant::now() < deadline, "exchange {name} never reached {}", broker.addr);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One partition: node `cut` isolated, a change made on each side, healed.
async fn partition(cluster: &TestCluster, cut: usize, shape: &str) {
    let majority: Vec<usize> = (0..3).filter(|i| *i != cut).collect();
    cluster.isolate(cut);
    let leader = leader_among(cluster, &majority).await;
    let made = format!("{shape}-majority");
    declare(&cluster.nodes[majority[0]], &made).await.expect("a change on the majority side");
    until_made(&cluster.nodes[majority[1]], &made).await;

    let refused_name = format!("{shape}-minority");
    let refused = declare(&cluster.nodes[cut], &refused_name).await.expect_err("a change on the node cut off");
    let (code, text) = amqp_error(&refused).expect("a connection error");
    assert_eq!(code, 541, "{shape}: {text}");
    assert_eq!(exchange_status(&cluster.nodes[cut], &made).await, 404, "{shape}: the cut node saw the majority");

    cluster.heal();
    until_made(&cluster.nodes[cut], &made).await;
    let all: Vec<usize> = (0..3).collect();
    leader_among(cluster, &all).await;
    // A further change made after the heal has reached every node, so each
    // node has applied everything before it: the refused change is on none.
    let after = format!("{shape}-healed");
    declare(&cluster.nodes[leader], &after).await.expect("a change after the heal");
    for node in &cluster.nodes {
        until_made(node, &after).await;
        assert_eq!(exchange_status(node, &refused_name).await, 404, "{shape}: a minority's change was made");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_makes_no_change_and_catches_up_when_healed() {
    let cluster = TestCluster::start_with_links(&NAMES).await;
    let all: Vec<usize> = (0..3).collect();
    let leader = leader_among(&cluster, &all).await;
    partition(&cluster, leader, "leader-isolated").await;
    let leader = leader_among(&cluster, &all).await;
    let follower = (leader + 1) % 3;
    partition(&cluster, follower, "follower-isolated").await;
}
