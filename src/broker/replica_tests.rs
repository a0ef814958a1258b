//! A replicated quorum queue's state as its group's applied commands left
//! it (`Queue::replica_held`), whatever this node handed out meanwhile:
//! what a snapshot for another member carries, and a message the group
//! settled while this node had it out does not come back. Through the
//! broker's own methods with in-memory connections (`test_support`).

use std::sync::Arc;

use super::replicas::{Member, Replica};
use super::test_support::{TestBroker, table};
use super::*;
use crate::protocol::FieldValue;
use crate::protocol::method::QueueDeclare;

/// `work`, a quorum queue replicated over three members, led here.
fn replicated_queue() -> TestBroker {
    let t = TestBroker::new();
    let members = ["a", "b", "c"].iter().enumerate().map(|(i, n)| Member::new(n.to_string(), i as u64 + 1));
    let replica = Replica { group: 77, members: members.collect() };
    let arguments = table(&[("x-queue-type", FieldValue::LongStr(bytes::Bytes::from_static(b"quorum")))]);
    let declare = QueueDeclare { queue: "work".into(), durable: true, arguments, ..Default::default() };
    t.broker.apply_queue_change("/", &Method::QueueDeclare(declare), Some(&replica)).expect("declared");
    t.broker.set_replica_active("/", "work", true);
    t
}

fn message(body: &str) -> Arc<Message> {
    Arc::new(Message {
        exchange: String::new(),
        routing_key: "work".into(),
        properties: bytes::Bytes::from_static(&[0, 0]),
        body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        persistent: true,
        expiration_ms: None,
        priority: 0,
    })
}

/// The bodies a snapshot of `work` carries, in position order.
fn snapshot_bodies(t: &TestBroker) -> Vec<String> {
    let contents = t.broker.replica_contents("/", "work").expect("a replica").expect("readable");
    contents.messages.iter().map(|(_, m)| String::from_utf8_lossy(&m.body).into_owned()).collect()
}

fn ready(t: &TestBroker) -> usize {
    t.broker.queue_row("/", "work").expect("the queue").messages_ready
}

#[test]
fn a_snapshot_holds_what_the_group_holds_ready_or_handed_out_and_not_what_a_consumer_acked() {
    let t = replicated_queue();
    let positions = [1 << 16, 2 << 16, 3 << 16];
    let bodies = ["m1", "m2", "m3"];
    let enqueued = positions.iter().zip(bodies).map(|(p, b)| (*p, message(b))).collect();
    t.broker.apply_replicated_enqueue("/", "work", enqueued);
    assert_eq!(snapshot_bodies(&t), bodies);

    // Handed out here: still the group's.
    let mut worker = t.connect(1);
    t.consume(&worker, "work", "w", false, &[]);
    let tags: Vec<u64> = worker.deliveries().iter().map(|d| d.delivery_tag).collect();
    assert_eq!(tags.len(), 3);
    assert_eq!(ready(&t), 0);
    assert_eq!(snapshot_bodies(&t), bodies, "handed out, not settled");

    // Acked here: a consumer took it for good, so a member need not get
    // it, though the group holds it until the settle is applied.
    t.broker.ack(1, 1, tags[0], false).expect("acked");
    assert_eq!(snapshot_bodies(&t), ["m2", "m3"], "acked, its settle not applied yet");
    t.broker.apply_replicated_settle("/", "work", &[positions[0]]);
    assert_eq!(snapshot_bodies(&t), ["m2", "m3"]);
    assert_eq!(t.broker.replica_contents("/", "work").unwrap().unwrap().applied, positions[2]);
}

#[test]
fn a_message_the_group_settled_while_it_was_out_here_does_not_come_back() {
    let t = replicated_queue();
    let positions = [1 << 16, 2 << 16];
    t.broker.apply_replicated_enqueue("/", "work", vec![(positions[0], message("m1")), (positions[1], message("m2"))]);
    let mut worker = t.connect(1);
    t.consume(&worker, "work", "w", false, &[]);
    assert_eq!(worker.bodies(), ["m1", "m2"]);
    // This node stops leading; the next leader hands m1 out again and its
    // consumer acks it: the group settles m1 while it is still out here.
    t.broker.set_replica_active("/", "work", false);
    t.broker.apply_replicated_settle("/", "work", &[positions[0]]);
    // The worker here goes: m2 goes back to the queue, m1 does not.
    t.broker.close_connection(1);
    assert_eq!(ready(&t), 1);
    assert_eq!(snapshot_bodies(&t), ["m2"]);

    // Also through a nack with requeue.
    let t = replicated_queue();
    t.broker.apply_replicated_enqueue("/", "work", vec![(positions[0], message("m1"))]);
    let mut worker = t.connect(1);
    t.consume(&worker, "work", "w", false, &[]);
    let tag = worker.deliveries()[0].delivery_tag;
    t.broker.set_replica_active("/", "work", false);
    t.broker.apply_replicated_settle("/", "work", &[positions[0]]);
    t.broker.reject(1, 1, tag, false, true).expect("nacked");
    assert_eq!(ready(&t), 0, "settled by the group: not requeued");
    assert!(snapshot_bodies(&t).is_empty());
}
