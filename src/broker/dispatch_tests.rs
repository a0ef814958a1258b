//! Who gets a queue's messages: single active consumer, consumer
//! priorities, and what happens to a consumer's unacknowledged messages
//! when its connection goes, through the broker's own methods with
//! in-memory connections (`test_support`): no socket, no disk, no sleep.

use super::test_support::{Delivered, TestBroker};
use crate::protocol::FieldValue;

#[test]
fn a_single_active_consumer_gets_everything_until_it_cancels() {
    let t = TestBroker::new();
    t.declare("sac", &[("x-single-active-consumer", FieldValue::Bool(true))]);
    let (mut a, mut b) = (t.connect(1), t.connect(2));
    t.consume(&a, "sac", "a", true, &[]);
    t.consume(&b, "sac", "b", true, &[]);
    for body in ["m1", "m2", "m3"] {
        t.publish("sac", body);
    }
    assert_eq!(a.bodies(), ["m1", "m2", "m3"]);
    assert!(b.bodies().is_empty(), "the waiting consumer gets nothing while the active one is there");

    assert!(t.broker.cancel(1, 1, "a"));
    t.publish("sac", "m4");
    assert!(a.bodies().is_empty());
    assert_eq!(b.bodies(), ["m4"], "the next consumer in line became the active one");
}

#[test]
fn the_active_consumers_unacked_messages_go_to_the_next_one_when_its_connection_closes() {
    let t = TestBroker::new();
    t.declare("sac", &[("x-single-active-consumer", FieldValue::Bool(true))]);
    let (mut a, mut b) = (t.connect(1), t.connect(2));
    t.consume(&a, "sac", "a", false, &[]);
    t.consume(&b, "sac", "b", false, &[]);
    t.publish("sac", "m1");
    t.publish("sac", "m2");
    let first: Vec<(u64, bool)> = a.deliveries().iter().map(|d| (d.delivery_tag, d.redelivered)).collect();
    assert_eq!(first, [(1, false), (2, false)]);
    assert!(b.deliveries().is_empty());

    t.broker.close_connection(1);
    let again = b.deliveries();
    let expect = |tag, body: &str| Delivered {
        consumer_tag: "b".into(),
        delivery_tag: tag,
        redelivered: true,
        body: body.into(),
        delivery_count: None,
    };
    assert_eq!(again, [expect(1, "m1"), expect(2, "m2")], "requeued in their order, flagged redelivered");
}

#[test]
fn a_higher_priority_consumer_is_served_first_while_it_has_room() {
    let t = TestBroker::new();
    t.declare("work", &[]);
    let (mut low, mut high) = (t.connect(1), t.connect(2));
    t.consume(&low, "work", "low", false, &[]);
    // One unacknowledged message at a time for the high-priority consumer.
    t.broker.qos(2, 1, 1, false);
    t.consume(&high, "work", "high", false, &[("x-priority", FieldValue::I32(5))]);
    for body in ["m1", "m2", "m3"] {
        t.publish("work", body);
    }
    assert_eq!(high.bodies(), ["m1"]);
    assert_eq!(low.bodies(), ["m2", "m3"], "with the high one full, the low one takes the rest");

    t.broker.ack(2, 1, 1, false).expect("ack");
    t.publish("work", "m4");
    assert_eq!(high.bodies(), ["m4"], "room again: the high one first");
    assert!(low.bodies().is_empty());
}

#[test]
fn a_quorum_queue_keeps_transient_messages_counts_deliveries_and_drops_past_its_limit() {
    let t = TestBroker::new();
    t.declare("orders", &[("x-queue-type", FieldValue::string("quorum")), ("x-delivery-limit", FieldValue::I64(1))]);
    let mut c = t.connect(1);
    t.consume(&c, "orders", "w", false, &[]);
    let routed = t.publish("orders", "o1");
    assert!(routed.durable_position.is_some(), "a quorum queue logs every message, transient or not");

    let first = c.deliveries();
    assert_eq!((first[0].body.as_str(), first[0].delivery_count), ("o1", None));
    t.broker.reject(1, 1, first[0].delivery_tag, false, true).expect("requeue");
    let second = c.deliveries();
    assert_eq!(second.len(), 1);
    assert_eq!((second[0].redelivered, second[0].delivery_count), (true, Some(1)));
    // Returned once more: past the limit of 1, it leaves the queue.
    t.broker.reject(1, 1, second[0].delivery_tag, false, true).expect("requeue");
    assert!(c.deliveries().is_empty());
    assert_eq!(t.broker.state.read().queue("/", "orders").map(|q| q.lock().message_count()), Some(0));
}

#[test]
fn a_run_of_acks_settles_up_to_an_unknown_tag_and_no_further() {
    let t = TestBroker::new();
    t.declare("work", &[]);
    let mut c = t.connect(1);
    t.consume(&c, "work", "w", false, &[]);
    for body in ["m1", "m2", "m3", "m4"] {
        t.publish("work", body);
    }
    assert_eq!(c.deliveries().len(), 4);
    let count = || t.broker.state.read().queue("/", "work").map(|q| q.lock().message_count());

    let refused = t.broker.ack_many(1, 1, &[(1, false), (2, false), (9, false), (3, false)]);
    let err = refused.expect_err("tag 9 was never delivered");
    assert_eq!((err.code, err.text.as_str()), (406, "PRECONDITION_FAILED - unknown delivery tag 9"));
    assert_eq!(count(), Some(2), "the acks before the unknown tag are settled, the one after it is not");
    t.broker.ack_many(1, 1, &[(4, true)]).expect("tags 3 and 4 are still unacknowledged");
    assert_eq!(count(), Some(0));
}
