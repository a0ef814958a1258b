//! Quorum queues of a cluster of three real `warren` nodes on loopback:
//! a quorum queue declared over AMQP on one node is on every node, with
//! the same members and the same leader (its own Raft group's, the
//! declaring node first under `client-local`); a binding to it made on
//! another node is on every node; its leader killed with SIGKILL, the
//! other two elect another, and the killed node comes back with the queue
//! and its members from its own log; deleted over HTTP on a third node,
//! it is gone from every node. A classic queue stays on its node.
//!
//! And its messages: published with confirms on a follower, each is
//! confirmed once the group committed it, every member holds it, and an
//! ack on the leader takes it off every member; the leader killed with
//! SIGKILL, the new leader hands out exactly the confirmed messages not
//! yet acknowledged, in order; a node left without a majority confirms
//! nothing (its publish is nacked).
//!
//! And its clients on any node: a consumer and a basic.get on followers
//! get the leader's messages in order (prefetch honoured), their acks take
//! messages off every member, a closed channel's deliveries go back, and
//! a consumer whose leader is killed goes on with the new leader and sees
//! every message left; a member down while thousands of entries were
//! committed catches up; a leader cut off from the majority hands nothing
//! more out.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::amqp::{amqp_error, channel, confirm_channel, connect, next, publish_to, text, within};
use common::cluster::{TestCluster, agreed_leader, until_status};
use common::quorum::{NAMES, durable, queue_leader, quorum_args};
use common::{Broker, http};
use futures_lite::StreamExt;
use lapin::Confirmation;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));
const QUEUE_PATH: &str = "/api/queues/%2F/orders";

#[tokio::test]
async fn a_quorum_queue_is_on_every_node_with_one_group_that_fails_over() {
    let mut cluster = TestCluster::start(&NAMES);
    let all: Vec<&Broker> = cluster.nodes.iter().collect();
    agreed_leader(&all, None).await;

    // Declared over AMQP on beta: on every node, beta leading (client-local).
    {
        let conn = connect(&cluster.nodes[1]).await;
        let ch = channel(&conn).await;
        let declared = within("declare", ch.queue_declare("orders".into(), durable(), quorum_args(&[]))).await;
        declared.expect("a quorum queue declared on beta");
    }
    let leader = queue_leader(&all, "orders", None).await;
    assert_eq!(leader, NAMES[1], "the declaring node leads its queue under client-local");

    // The queue's group is not the metadata group: their leaders may differ,
    // and each node holds the queue (a passive declare on gamma finds it).
    {
        let conn = connect(&cluster.nodes[2]).await;
        let ch = channel(&conn).await;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        within("passive", ch.queue_declare("orders".into(), passive, FieldTable::default()))
            .await
            .expect("the queue exists on gamma");
        // An inequivalent redeclare is refused there as on beta.
        let other = quorum_args(&[("x-max-length", AMQPValue::LongLongInt(5))]);
        let refused = within("redeclare", ch.queue_declare("orders".into(), durable(), other)).await;
        let (code, text) = amqp_error(&refused.expect_err("inequivalent")).expect("a channel error");
        assert_eq!(code, 406, "{text}");
        assert!(text.contains("inequivalent arg 'x-max-length'"), "{text}");
    }

    // A binding made on alpha is on gamma.
    {
        let conn = connect(&cluster.nodes[0]).await;
        let ch = channel(&conn).await;
        let bind = ch.queue_bind(
            "orders".into(),
            "amq.topic".into(),
            "eu.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        );
        within("bind", bind).await.expect("bound on alpha");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let bindings = http::get(cluster.nodes[2].management.unwrap(), "/api/queues/%2F/orders/bindings", GUEST).await;
        let keys: Vec<String> = bindings.json().as_array().map_or_else(Vec::new, |b| {
            b.iter()
                .filter(|b| b["source"] == "amq.topic")
                .filter_map(|b| b["routing_key"].as_str().map(str::to_string))
                .collect()
        });
        if keys == ["eu.#"] {
            break;
        }
        assert!(Instant::now() < deadline, "the binding never reached gamma: {}", bindings.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A classic queue stays on the node that declared it.
    {
        let conn = connect(&cluster.nodes[0]).await;
        let ch = channel(&conn).await;
        within("classic", ch.queue_declare("local-work".into(), durable(), FieldTable::default()))
            .await
            .expect("a classic queue on alpha");
    }
    until_status(&cluster.nodes[0], "/api/queues/%2F/local-work", 200).await;
    let elsewhere = http::get(cluster.nodes[1].management.unwrap(), "/api/queues/%2F/local-work", GUEST).await;
    assert_eq!(elsewhere.status, 404, "a classic queue is not replicated: {}", elsewhere.body);

    // The queue's leader killed: the other two elect another.
    let killed = NAMES.iter().position(|n| *n == leader).expect("a node leads");
    cluster.nodes[killed].kill();
    let killed_at = Instant::now();
    let survivors: Vec<&Broker> = (0..3).filter(|i| *i != killed).map(|i| &cluster.nodes[i]).collect();
    let new_leader = queue_leader(&survivors, "orders", Some(&leader)).await;
    println!("the queue's new leader {new_leader} is known on both survivors {:?} after the kill", killed_at.elapsed());
    // They did not wait out the dead leader's lease: its cluster port
    // refused, so one of them called the election at once.
    let called = format!("its leader {leader} is gone; calling an election");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !survivors.iter().any(|b| b.log().contains(&called)) {
        let logs: Vec<String> = survivors.iter().map(|b| b.log()).collect();
        assert!(Instant::now() < deadline, "no survivor called an election for the gone leader: {logs:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The killed node is soon shown offline, still a member.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let q = http::get(survivors[0].management.unwrap(), QUEUE_PATH, GUEST).await.json();
        let online: Vec<&str> =
            q["online"].as_array().map_or_else(Vec::new, |o| o.iter().filter_map(|n| n.as_str()).collect());
        if online.len() == 2 && !online.contains(&leader.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "the killed node is still shown online: {q}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back on its data directory, it has the queue and its members again.
    cluster.nodes[killed] = cluster.start_node(killed);
    let all: Vec<&Broker> = cluster.nodes.iter().collect();
    queue_leader(&all, "orders", None).await;

    // Deleted over HTTP on gamma: gone from every node.
    let deleted = http::request(cluster.nodes[2].management.unwrap(), "DELETE", QUEUE_PATH, GUEST, None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    for node in &cluster.nodes {
        until_status(node, QUEUE_PATH, 404).await;
    }
    // The name is free for a new queue, with a group of its own.
    {
        let conn = connect(&cluster.nodes[0]).await;
        let ch = channel(&conn).await;
        let declared = within("declare again", ch.queue_declare("orders".into(), durable(), quorum_args(&[]))).await;
        declared.expect("declared again on alpha");
    }
    assert_eq!(queue_leader(&all, "orders", None).await, NAMES[0], "alpha declared it, and leads it");
}

/// Polls until `node` shows `ready` ready messages in `queue`.
async fn until_ready(node: &Broker, queue: &str, ready: u64) {
    let path = format!("/api/queues/%2F/{queue}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let q = http::get(node.management.expect("management API"), &path, GUEST).await.json();
        if q["messages_ready"].as_u64() == Some(ready) {
            return;
        }
        assert!(Instant::now() < deadline, "{queue} never had {ready} ready messages: {q}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn confirmed_messages_are_on_every_member_and_outlive_the_leader() {
    let mut cluster = TestCluster::start(&NAMES);
    let all: Vec<&Broker> = cluster.nodes.iter().collect();
    agreed_leader(&all, None).await;
    {
        let conn = connect(&cluster.nodes[0]).await;
        let ch = channel(&conn).await;
        let declared = within("declare", ch.queue_declare("work".into(), durable(), quorum_args(&[]))).await;
        declared.expect("a quorum queue declared on alpha");
    }
    assert_eq!(queue_leader(&all, "work", None).await, NAMES[0], "alpha declared it, and leads it");

    // 200 persistent messages with confirms on gamma, a follower.
    let publisher = connect(&cluster.nodes[2]).await;
    let pch = confirm_channel(&publisher).await;
    for i in 0..200 {
        let confirmation = publish_to(&pch, "", "work", &format!("task {i}")).await;
        assert!(matches!(confirmation, Confirmation::Ack(_)), "task {i}: {confirmation:?}");
    }
    for node in &cluster.nodes {
        until_ready(node, "work", 200).await;
    }

    // A consumer on the leader takes 50 and acks them: every member drops them.
    {
        let conn = connect(&cluster.nodes[0]).await;
        let ch = channel(&conn).await;
        within("qos", ch.basic_qos(10, BasicQosOptions::default())).await.expect("qos");
        let mut consumer = within(
            "consume",
            ch.basic_consume("work".into(), "w".into(), BasicConsumeOptions::default(), FieldTable::default()),
        )
        .await
        .expect("consume on alpha");
        for i in 0..50 {
            let delivery = next(&mut consumer).await;
            assert_eq!(text(&delivery), format!("task {i}"), "in publish order from the leader");
            within("ack", delivery.ack(BasicAckOptions::default())).await.expect("ack");
        }
        let _ = conn.close(200, "done".into()).await;
    }
    for node in &cluster.nodes {
        until_ready(node, "work", 150).await;
    }

    // The leader killed: the new one hands out exactly the other 150, in order.
    cluster.nodes[0].kill();
    let survivors: Vec<&Broker> = cluster.nodes[1..].iter().collect();
    let new_leader = queue_leader(&survivors, "work", Some(NAMES[0])).await;
    let at = NAMES.iter().position(|n| *n == new_leader).expect("a node leads");
    {
        let conn = connect(&cluster.nodes[at]).await;
        let ch = channel(&conn).await;
        within("qos", ch.basic_qos(50, BasicQosOptions::default())).await.expect("qos");
        let mut consumer = within(
            "consume",
            ch.basic_consume("work".into(), "w2".into(), BasicConsumeOptions::default(), FieldTable::default()),
        )
        .await
        .expect("consume on the new leader");
        for i in 50..200 {
            let delivery = next(&mut consumer).await;
            assert_eq!(text(&delivery), format!("task {i}"), "every confirmed, unacked message, once, in order");
            within("ack", delivery.ack(BasicAckOptions::default())).await.expect("ack");
        }
        common::amqp::assert_quiet(&mut consumer, "nothing more than was confirmed").await;
        let _ = conn.close(200, "done".into()).await;
    }

    // Alone, a node confirms nothing: its publish is nacked.
    let alone = if at == 1 { 2 } else { 1 };
    cluster.nodes[at].kill();
    let conn = connect(&cluster.nodes[alone]).await;
    let ch = confirm_channel(&conn).await;
    let sent = within(
        "publish",
        ch.basic_publish("".into(), "work".into(), Default::default(), b"lonely", Default::default()),
    )
    .await
    .expect("publish on the node alone");
    let confirmation = tokio::time::timeout(Duration::from_secs(30), sent).await.expect("an answer within 30 s");
    assert!(matches!(confirmation, Ok(Confirmation::Nack(_))), "a minority confirms nothing: {confirmation:?}");
}

/// Polls until `node` shows `ready` ready and `unacked` unacknowledged messages in `queue`.
async fn until_counts(node: &Broker, queue: &str, ready: u64, unacked: u64) {
    let path = format!("/api/queues/%2F/{queue}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let q = http::get(node.management.expect("management API"), &path, GUEST).await.json();
        if q["messages_ready"].as_u64() == Some(ready) && q["messages_unacknowledged"].as_u64() == Some(unacked) {
            return;
        }
        assert!(Instant::now() < deadline, "{queue} never had {ready} ready and {unacked} unacked: {q}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn clients_of_any_node_consume_and_get_through_the_leader() {
    let mut cluster = TestCluster::start(&NAMES);
    let all: Vec<&Broker> = cluster.nodes.iter().collect();
    agreed_leader(&all, None).await;
    let publisher = connect(&cluster.nodes[0]).await;
    let pch = confirm_channel(&publisher).await;
    let declared = within("declare", pch.queue_declare("jobs".into(), durable(), quorum_args(&[]))).await;
    declared.expect("a quorum queue declared on alpha");
    assert_eq!(queue_leader(&all, "jobs", None).await, NAMES[0], "alpha declared it, and leads it");
    for i in 0..100 {
        let confirmation = publish_to(&pch, "", "jobs", &format!("job {i}")).await;
        assert!(matches!(confirmation, Confirmation::Ack(_)), "job {i}: {confirmation:?}");
    }
    let _ = publisher.close(200, "done".into()).await;

    // A worker on gamma, a follower: the leader's messages, in order, prefetch honoured.
    let worker = connect(&cluster.nodes[2]).await;
    let wch = channel(&worker).await;
    within("qos", wch.basic_qos(5, BasicQosOptions::default())).await.expect("qos");
    let mut jobs = within(
        "consume",
        wch.basic_consume("jobs".into(), "worker".into(), BasicConsumeOptions::default(), FieldTable::default()),
    )
    .await
    .expect("consume on gamma");
    let mut held = Vec::new();
    for i in 0..5 {
        let delivery = next(&mut jobs).await;
        assert_eq!(text(&delivery), format!("job {i}"), "in publish order from the leader");
        held.push(delivery);
    }
    common::amqp::assert_quiet(&mut jobs, "no more than the prefetch of 5 unacked").await;
    until_counts(&cluster.nodes[0], "jobs", 95, 5).await;
    for delivery in held.drain(..) {
        within("ack", delivery.ack(BasicAckOptions::default())).await.expect("ack on gamma");
    }
    for i in 5..30 {
        let delivery = next(&mut jobs).await;
        assert_eq!(text(&delivery), format!("job {i}"), "in publish order from the leader");
        within("ack", delivery.ack(BasicAckOptions::default())).await.expect("ack on gamma");
    }
    // The channel closed: what the leader handed it beyond job 29 goes back;
    // what was acked on gamma is gone from every member.
    within("close", wch.close(200, "done".into())).await.expect("channel closed on gamma");
    for node in &cluster.nodes {
        until_counts(node, "jobs", 70, 0).await;
    }

    // basic.get on beta, another follower: the next message, acked there.
    let getter = connect(&cluster.nodes[1]).await;
    let gch = channel(&getter).await;
    let got = within("get", gch.basic_get("jobs".into(), Default::default())).await.expect("get on beta");
    let got = got.expect("a message for basic.get");
    assert_eq!(String::from_utf8_lossy(&got.delivery.data), "job 30");
    until_counts(&cluster.nodes[0], "jobs", 69, 1).await;
    within("ack", got.delivery.ack(BasicAckOptions::default())).await.expect("ack on beta");
    for node in &cluster.nodes {
        until_counts(node, "jobs", 69, 0).await;
    }

    // A channel closed with deliveries unacked: they go back, redelivered.
    let held_on_beta = within(
        "consume",
        gch.basic_consume("jobs".into(), "held".into(), BasicConsumeOptions::default(), FieldTable::default()),
    )
    .await;
    let mut held_on_beta = held_on_beta.expect("consume on beta");
    for i in 31..100 {
        assert_eq!(text(&next(&mut held_on_beta).await), format!("job {i}"));
    }
    until_counts(&cluster.nodes[0], "jobs", 0, 69).await;
    let _ = getter.close(200, "gone with its deliveries".into()).await;
    until_counts(&cluster.nodes[0], "jobs", 69, 0).await;

    // The leader killed under a worker on gamma: it goes on with the new
    // leader and sees every message left, acks them all, and nothing is left.
    let wch = channel(&worker).await;
    within("qos", wch.basic_qos(5, BasicQosOptions::default())).await.expect("qos");
    let mut again = within(
        "consume",
        wch.basic_consume("jobs".into(), "again".into(), BasicConsumeOptions::default(), FieldTable::default()),
    )
    .await
    .expect("consume on gamma again");
    let first = next(&mut again).await;
    assert_eq!(text(&first), "job 31");
    assert!(first.redelivered, "handed to beta's closed channel before");
    cluster.nodes[0].kill();
    let mut seen = BTreeSet::new();
    seen.insert(text(&first));
    while seen.len() < 69 {
        let delivery = next(&mut again).await;
        seen.insert(text(&delivery));
        within("ack", delivery.ack(BasicAckOptions::default())).await.expect("ack on gamma after failover");
    }
    let expected: BTreeSet<String> = (31..100).map(|i| format!("job {i}")).collect();
    assert_eq!(seen, expected, "every message left, none other");
    let survivors: Vec<&Broker> = cluster.nodes[1..].iter().collect();
    queue_leader(&survivors, "jobs", Some(NAMES[0])).await;
    // What the old leader had handed out comes again from the new one
    // (its acks were lost with it): acked too, and nothing else comes.
    while let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_secs(2), again.next()).await {
        let delivery = delivery.expect("a delivery");
        assert!(expected.contains(&text(&delivery)), "only messages that were published");
        within("ack", delivery.ack(BasicAckOptions::default())).await.expect("ack on gamma after failover");
    }
    for node in &survivors {
        until_counts(node, "jobs", 0, 0).await;
    }
}

#[tokio::test]
async fn a_member_down_while_thousands_of_entries_were_committed_catches_up() {
    let mut cluster = TestCluster::start(&NAMES);
    let all: Vec<&Broker> = cluster.nodes.iter().collect();
    agreed_leader(&all, None).await;
    {
        let conn = connect(&cluster.nodes[0]).await;
        let ch = channel(&conn).await;
        let declared = within("declare", ch.queue_declare("backlog".into(), durable(), quorum_args(&[]))).await;
        declared.expect("a quorum queue declared on alpha");
    }
    assert_eq!(queue_leader(&all, "backlog", None).await, NAMES[0], "alpha declared it, and leads it");

    // gamma is down while the group commits far more entries than its
    // members keep: 4 publishers, each publish confirmed before the next
    // (one entry each).
    cluster.nodes[2].kill();
    let mut publishers = Vec::new();
    for p in 0..4 {
        let node = if p % 2 == 0 { &cluster.nodes[0] } else { &cluster.nodes[1] };
        let conn = connect(node).await;
        publishers.push(tokio::spawn(async move {
            let ch = confirm_channel(&conn).await;
            for i in 0..700 {
                let confirmation = publish_to(&ch, "", "backlog", &format!("p{p} m{i}")).await;
                assert!(matches!(confirmation, Confirmation::Ack(_)), "p{p} m{i}: {confirmation:?}");
            }
            let _ = conn.close(200, "done".into()).await;
        }));
    }
    for publisher in publishers {
        publisher.await.expect("a publisher");
    }
    until_counts(&cluster.nodes[0], "backlog", 2800, 0).await;

    // Back, gamma catches up (from the entries, or from the leader's whole
    // queue if the others purged what it needs: openraft purges nothing a
    // down member's replication still holds, so which one is timing) and
    // holds every message.
    cluster.restart(2);
    until_counts(&cluster.nodes[2], "backlog", 2800, 0).await;
    // And it goes on from there: a consumer on gamma sees each publisher's
    // messages in order, and its acks leave every member.
    let conn = connect(&cluster.nodes[2]).await;
    let ch = channel(&conn).await;
    within("qos", ch.basic_qos(100, BasicQosOptions::default())).await.expect("qos");
    let consumer =
        ch.basic_consume("backlog".into(), "c".into(), BasicConsumeOptions::default(), FieldTable::default());
    let mut consumer = within("consume", consumer).await.expect("consume on gamma");
    let mut next_of = [0usize; 4];
    for _ in 0..2800 {
        let delivery = next(&mut consumer).await;
        let body = text(&delivery);
        let (p, i) = body.split_once(' ').expect("'pN mI'");
        let p: usize = p[1..].parse().expect("a publisher");
        assert_eq!(i, format!("m{}", next_of[p]), "each publisher's messages in order");
        next_of[p] += 1;
        within("ack", delivery.ack(BasicAckOptions::default())).await.expect("ack");
    }
    for node in &cluster.nodes {
        until_counts(node, "backlog", 0, 0).await;
    }
}

#[tokio::test]
async fn a_leader_cut_off_from_the_majority_hands_out_nothing_more() {
    let cluster = TestCluster::start_with_links(&NAMES).await;
    let all: Vec<&Broker> = cluster.nodes.iter().collect();
    agreed_leader(&all, None).await;
    let publisher = connect(&cluster.nodes[0]).await;
    let pch = confirm_channel(&publisher).await;
    let declared = within("declare", pch.queue_declare("split".into(), durable(), quorum_args(&[]))).await;
    declared.expect("a quorum queue declared on alpha");
    assert_eq!(queue_leader(&all, "split", None).await, NAMES[0], "alpha declared it, and leads it");
    for i in 0..20 {
        let confirmation = publish_to(&pch, "", "split", &format!("job {i}")).await;
        assert!(matches!(confirmation, Confirmation::Ack(_)), "job {i}: {confirmation:?}");
    }

    // A worker on alpha holds job 0 when alpha is cut off from both peers.
    let worker = connect(&cluster.nodes[0]).await;
    let wch = channel(&worker).await;
    within("qos", wch.basic_qos(1, BasicQosOptions::default())).await.expect("qos");
    let consumer = wch.basic_consume("split".into(), "w".into(), BasicConsumeOptions::default(), FieldTable::default());
    let mut on_alpha = within("consume", consumer).await.expect("consume on alpha");
    let held = next(&mut on_alpha).await;
    assert_eq!(text(&held), "job 0");
    cluster.isolate(0);
    let majority: Vec<&Broker> = cluster.nodes[1..].iter().collect();
    queue_leader(&majority, "split", Some(NAMES[0])).await;

    // Its ack frees its prefetch, but alpha no longer hears a majority:
    // it hands out nothing more (the majority's leader has them all).
    within("ack", held.ack(BasicAckOptions::default())).await.expect("ack on alpha");
    common::amqp::assert_quiet(&mut on_alpha, "a leader without a majority hands nothing out").await;
    let conn = connect(&cluster.nodes[1]).await;
    let ch = channel(&conn).await;
    let consumer = ch.basic_consume("split".into(), "m".into(), BasicConsumeOptions::default(), FieldTable::default());
    let mut on_beta = within("consume", consumer).await.expect("consume on beta");
    for i in 0..20 {
        let delivery = next(&mut on_beta).await;
        assert_eq!(text(&delivery), format!("job {i}"), "the majority's leader hands out every message");
        within("ack", delivery.ack(BasicAckOptions::default())).await.expect("ack on beta");
    }
}
