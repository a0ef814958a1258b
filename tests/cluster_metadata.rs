//! The metadata group over three real `warren` nodes on loopback (each
//! with its own ports, chosen at run time, and data directory): the group
//! forms by itself; a vhost, a user with its permissions and a policy
//! made over HTTP on one node, and exchanges and
//! an exchange-to-exchange binding made over AMQP on another, reach every
//! node and route there; an inequivalent redeclare is refused on a third
//! as on the first; the group's leader killed with SIGKILL, the other two
//! go on taking changes, and the killed node restarted catches up from
//! its log and its peers; a node left alone refuses changes (no majority)
//! with INTERNAL_ERROR rather than make them on its own.

mod common;

use std::time::{Duration, Instant};

use common::amqp::{amqp_error, channel, connect, drain, within};
use common::cluster::{TestCluster, agreed_leader, until_status};
use common::{Broker, http};
use lapin::ExchangeKind;
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

const NAMES: [&str; 3] = ["alpha@localhost", "beta@localhost", "gamma@localhost"];
const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));

async fn declare(broker: &Broker, name: &str, kind: ExchangeKind) -> lapin::Result<()> {
    let conn = connect(broker).await;
    let ch = channel(&conn).await;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    // Bounded by the test's own limit: a node without a majority answers
    // only after its 10 s wait for the metadata group.
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        ch.exchange_declare(name.into(), kind, durable, FieldTable::default()),
    )
    .await
    .expect("exchange.declare answered within 30 s");
    let _ = conn.close(200, "done".into()).await;
    result
}

#[tokio::test]
async fn definitions_reach_every_node_survive_a_leader_kill_and_need_a_majority() {
    let mut cluster = TestCluster::start(&NAMES);
    let all: Vec<&Broker> = cluster.nodes.iter().collect();
    agreed_leader(&all, None).await;

    // A vhost made over HTTP on beta is on every node.
    let made = http::request(cluster.nodes[1].management.unwrap(), "PUT", "/api/vhosts/shop", GUEST, Some("{}")).await;
    assert_eq!(made.status, 201, "{}", made.body);
    for node in &cluster.nodes {
        until_status(node, "/api/vhosts/shop", 200).await;
    }

    // A user and its permissions made on alpha log in on gamma; a policy
    // set on beta is on alpha.
    let alpha = cluster.nodes[0].management.unwrap();
    let made = http::request(alpha, "PUT", "/api/users/carol", GUEST, Some(r#"{"password":"s3cret","tags":""}"#)).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let granted = r#"{"configure":".*","write":".*","read":".*"}"#;
    let made = http::request(alpha, "PUT", "/api/permissions/shop/carol", GUEST, Some(granted)).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let gamma_url = format!("amqp://carol:s3cret@{}/shop", cluster.nodes[2].addr);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match lapin::Connection::connect(&gamma_url, lapin::ConnectionProperties::default()).await {
            Ok(conn) => {
                let _ = conn.close(200, "done".into()).await;
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "carol cannot log in on gamma: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let policy = r#"{"pattern":"^cart","definition":{"max-length":10},"apply-to":"queues"}"#;
    let made =
        http::request(cluster.nodes[1].management.unwrap(), "PUT", "/api/policies/shop/carts", GUEST, Some(policy))
            .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let set = until_status(&cluster.nodes[0], "/api/policies/shop/carts", 200).await.json();
    assert_eq!(set["definition"]["max-length"], 10, "{set}");

    // Exchanges and a binding between them made over AMQP on gamma.
    declare(&cluster.nodes[2], "orders", ExchangeKind::Topic).await.expect("orders on gamma");
    declare(&cluster.nodes[2], "audit", ExchangeKind::Fanout).await.expect("audit on gamma");
    {
        let conn = connect(&cluster.nodes[2]).await;
        let ch = channel(&conn).await;
        within(
            "bind",
            ch.exchange_bind("audit".into(), "orders".into(), "#".into(), Default::default(), FieldTable::default()),
        )
        .await
        .expect("audit bound to orders on gamma");
    }
    for node in &cluster.nodes[..2] {
        let orders = until_status(node, "/api/exchanges/%2F/orders", 200).await.json();
        assert_eq!((orders["type"].as_str(), orders["durable"].as_bool()), (Some("topic"), Some(true)));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let bindings = http::get(node.management.unwrap(), "/api/bindings/%2F/e/orders/e/audit", GUEST).await;
            if bindings.json().as_array().is_some_and(|b| b.len() == 1 && b[0]["routing_key"] == "#") {
                break;
            }
            assert!(Instant::now() < deadline, "the binding never reached a node: {}", bindings.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The binding routes on beta: a message published to orders there
    // reaches beta's own queue bound to audit.
    {
        let conn = connect(&cluster.nodes[1]).await;
        let ch = channel(&conn).await;
        within("queue", ch.queue_declare("audit-log".into(), QueueDeclareOptions::default(), FieldTable::default()))
            .await
            .expect("a queue on beta");
        within(
            "queue bind",
            ch.queue_bind(
                "audit-log".into(),
                "audit".into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("bound to audit");
        within(
            "publish",
            ch.basic_publish(
                "orders".into(),
                "eu.paid".into(),
                BasicPublishOptions::default(),
                b"order 1",
                Default::default(),
            ),
        )
        .await
        .expect("publish");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.is_empty() && Instant::now() < deadline {
            got = drain(&ch, "audit-log").await;
        }
        assert_eq!(got, vec!["order 1".to_string()], "routed through the replicated binding on beta");
    }

    // An inequivalent redeclare is refused on alpha as it would be on gamma.
    let refused = declare(&cluster.nodes[0], "orders", ExchangeKind::Fanout).await.expect_err("orders as fanout");
    let (code, text) = amqp_error(&refused).expect("a channel error");
    assert_eq!(code, 406, "{text}");
    assert!(text.contains("inequivalent arg 'type' for exchange 'orders'"), "{text}");

    // The leader killed with SIGKILL: the other two elect another and go
    // on taking changes.
    let leader = agreed_leader(&all, None).await;
    let killed = NAMES.iter().position(|n| *n == leader).expect("the leader is one of the nodes");
    cluster.nodes[killed].kill();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != killed).collect();
    declare(&cluster.nodes[survivors[0]], "after-kill", ExchangeKind::Direct)
        .await
        .expect("a change without the old leader");
    until_status(&cluster.nodes[survivors[1]], "/api/exchanges/%2F/after-kill", 200).await;

    // Back on its data directory, the killed node catches up.
    cluster.nodes[killed] = cluster.start_node(killed);
    until_status(&cluster.nodes[killed], "/api/exchanges/%2F/after-kill", 200).await;
    until_status(&cluster.nodes[killed], "/api/vhosts/shop", 200).await;
    let all: Vec<&Broker> = cluster.nodes.iter().collect();
    agreed_leader(&all, None).await;

    // A delete made on it reaches the others.
    let deleted =
        http::request(cluster.nodes[killed].management.unwrap(), "DELETE", "/api/exchanges/%2F/orders", GUEST, None)
            .await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    for node in &cluster.nodes {
        until_status(node, "/api/exchanges/%2F/orders", 404).await;
    }

    // Alone, a node makes no change: no majority, INTERNAL_ERROR.
    let alone = survivors[0];
    for i in (0..3).filter(|i| *i != alone) {
        cluster.nodes[i].kill();
    }
    let refused =
        declare(&cluster.nodes[alone], "lonely", ExchangeKind::Direct).await.expect_err("a change without a majority");
    let (code, text) = amqp_error(&refused).expect("a connection error");
    assert_eq!(code, 541, "{text}");
    assert!(text.contains("is a majority of the nodes running?"), "{text}");
    let lonely = http::get(cluster.nodes[alone].management.unwrap(), "/api/exchanges/%2F/lonely", GUEST).await;
    assert_eq!(lonely.status, 404, "a refused change is not made on the node alone: {}", lonely.body);
}
