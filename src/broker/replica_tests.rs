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

/// Each message's record in the log, in position order (None: held in
/// memory only), and whether the log still holds the record.
fn logged(t: &TestBroker) -> Vec<Option<(u64, bool)>> {
    let st = t.broker.state.read();
    let q = st.queue("/", "work").expect("the queue").lock();
    q.replica_held.values().map(|h| h.store_id().map(|id| (id, t.broker.store.holds(id)))).collect()
}

#[test]
fn an_applied_message_is_logged_by_the_groups_snapshot_and_its_record_leaves_with_the_settle() {
    let t = replicated_queue();
    let positions = [1 << 16, 2 << 16, 3 << 16];
    let enqueued = positions.iter().zip(["m1", "m2", "m3"]).map(|(p, b)| (*p, message(b))).collect();
    t.broker.apply_replicated_enqueue("/", "work", enqueued);
    assert_eq!(logged(&t), [None, None, None], "the Raft entry is the message's only record");

    // m1 and m2 out here, m3 ready when the snapshot logs them all.
    let mut worker = t.connect(1);
    t.broker.qos(1, 1, 2, false);
    t.consume(&worker, "work", "w", false, &[]);
    let tags: Vec<u64> = worker.deliveries().iter().map(|d| d.delivery_tag).collect();
    assert_eq!(tags.len(), 2);
    t.broker.log_replica("/", "work").expect("logged");
    let records = logged(&t);
    assert!(records.iter().all(|r| matches!(r, Some((_, true)))), "{records:?}");
    assert_eq!(snapshot_bodies(&t), ["m1", "m2", "m3"]);

    // m1 acked here (its delivery named no record), then settled by the
    // group: its record leaves the log.
    t.broker.ack(1, 1, tags[0], false).expect("acked");
    assert!(matches!(logged(&t)[0], Some((_, true))), "still the group's until the settle");
    let m1 = records[0].expect("logged").0;
    t.broker.apply_replicated_settle("/", "work", &[positions[0]]);
    assert!(!t.broker.store.holds(m1), "m1's record left with its settle");

    // m3, ready here, settled by the group (as on a follower): its record goes too.
    let m3 = records[2].expect("logged").0;
    t.broker.apply_replicated_settle("/", "work", &[positions[2]]);
    assert!(!t.broker.store.holds(m3), "m3's record left with its settle");
    assert_eq!(snapshot_bodies(&t), ["m2"]);

    // An entry applied again (a restart) adds nothing; a later one is held in memory.
    t.broker.apply_replicated_enqueue("/", "work", vec![(positions[2], message("m3")), (4 << 16, message("m4"))]);
    let records = logged(&t);
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(matches!(records[0], Some((_, true))) && records[1].is_none(), "{records:?}");
}

#[test]
fn under_memory_pressure_a_replica_logs_what_it_holds_rather_than_spilling_it() {
    let t = replicated_queue();
    let enqueued = (1..=300u64).map(|i| (i << 16, message(&format!("m{i}")))).collect();
    t.broker.apply_replicated_enqueue("/", "work", enqueued);
    let monitor = memory::MemoryMonitor::default();
    {
        let st = t.broker.state.read();
        let mut q = st.queue("/", "work").expect("the queue").lock();
        assert!(memory::page_out(&mut q, None, &t.broker.store, Some(&monitor)), "kept up");
        // Each ready message's record is the one its replica logged (a
        // spill would have given it a record of its own).
        let held: Vec<u64> = q.replica_held.values().filter_map(|h| h.store_id()).collect();
        let ready: Vec<u64> = q.ready_entries().map(|e| e.store_id).collect();
        assert_eq!(held.len(), 300);
        assert_eq!(ready, held);
    }
    assert_eq!(logged(&t).iter().filter(|r| matches!(r, Some((_, true)))).count(), 300);
}

#[test]
fn a_purge_here_is_neither_logged_by_a_snapshot_nor_sent_to_a_member() {
    let t = replicated_queue();
    t.broker.apply_replicated_enqueue("/", "work", vec![(1 << 16, message("m1"))]);
    t.broker.log_replica("/", "work").expect("logged");
    let m1 = logged(&t)[0].expect("m1 logged").0;
    t.broker.apply_replicated_enqueue("/", "work", vec![(2 << 16, message("m2"))]);
    assert_eq!(t.broker.queue_purge("/", 1, "work").expect("purged"), 2);

    t.broker.log_replica("/", "work").expect("logged");
    assert_eq!(logged(&t), [None, None], "neither is (or stays) in the log");
    assert!(!t.broker.store.holds(m1), "m1's record left with the purge");
    assert!(snapshot_bodies(&t).is_empty());
    // The group's settles of them later change nothing here.
    t.broker.apply_replicated_settle("/", "work", &[1 << 16, 2 << 16]);
    assert!(logged(&t).is_empty());
}
