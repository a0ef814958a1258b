//! Every queue type through the interface alone: commands in, effects out,
//! the time given. The log records, dead letters and deadlines a command
//! asks for are checked as data (`queue_tests` holds what a queue does with
//! its timer and its priorities).

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::broker::arguments::{QueueArgs, QueueType};
use crate::broker::queue::Queue;
use crate::broker::stream::StreamEntry;
use crate::protocol::FieldTable;

fn message(body: &str) -> Arc<Message> {
    Arc::new(Message {
        exchange: String::new(),
        routing_key: "q".into(),
        properties: Bytes::new(),
        body: Bytes::copy_from_slice(body.as_bytes()),
        persistent: true,
        expiration_ms: None,
        priority: 0,
    })
}

fn queue(args: QueueArgs) -> Queue {
    Queue::new(Arc::from("/"), "q", true, None, false, FieldTable::default(), args)
}

fn with_dlx(args: QueueArgs) -> QueueArgs {
    QueueArgs { dead_letter_exchange: Some(Arc::from("dlx")), ..args }
}

fn apply(q: &mut Queue, command: Command, now: u64) -> Effects {
    let mut fx = Effects::default();
    q.apply(command, now, &mut fx);
    fx
}

/// Enqueues messages stored under log ids 1, 2, ... (their body is the id).
fn stored(q: &mut Queue, ids: std::ops::RangeInclusive<u64>) {
    for id in ids {
        let fx = apply(q, Command::Enqueue { message: message(&id.to_string()), store_id: id, trim_later: false }, 0);
        assert!(!fx.rejected && fx.dead_letters.is_empty() && fx.log_settled.is_empty());
    }
}

fn checkout(q: &mut Queue, settled: bool) -> (Option<QueuedMessage>, Effects) {
    let mut fx = apply(q, Command::Checkout { settled }, 0);
    (fx.taken.take(), fx)
}

fn settle(q: &mut Queue, entry: QueuedMessage, how: Settle) -> Effects {
    apply(q, Command::Settle { entry, how }, 0)
}

fn ids(fx: &Effects) -> Vec<u64> {
    fx.dead_letters.iter().map(|(_, e)| e.store_id).collect()
}

const CLASSIC_AND_QUORUM: [QueueType; 2] = [QueueType::Classic, QueueType::Quorum];

#[test]
fn a_checkout_marks_a_first_delivery_and_settles_a_no_ack_one() {
    for queue_type in CLASSIC_AND_QUORUM {
        let mut q = queue(QueueArgs { queue_type, ..Default::default() });
        stored(&mut q, 1..=2);
        let (first, fx) = checkout(&mut q, false);
        let first = first.expect("1");
        assert_eq!((first.store_id, fx.log_delivered.as_slice(), q.unacked()), (1, &[1][..], 1), "{queue_type:?}");
        let fx = settle(&mut q, first, Settle::Requeue);
        assert!(fx.log_settled.is_empty() && fx.log_delivered.is_empty(), "a requeue writes nothing");
        assert_eq!(q.unacked(), 0);
        let (again, fx) = checkout(&mut q, false);
        assert!(again.expect("1 again").redelivered);
        assert!(fx.log_delivered.is_empty(), "a redelivery is marked in the log already");
        let (no_ack, fx) = checkout(&mut q, true);
        assert_eq!((no_ack.expect("2").store_id, fx.log_settled.as_slice()), (2, &[2][..]));
        assert_eq!(q.unacked(), 1, "a no-ack delivery awaits no settle");
        assert!(checkout(&mut q, false).0.is_none());
    }
}

#[test]
fn an_ack_settles_the_record_and_a_discard_dead_letters_or_settles() {
    for queue_type in CLASSIC_AND_QUORUM {
        let mut q = queue(QueueArgs { queue_type, ..Default::default() });
        stored(&mut q, 1..=2);
        let one = checkout(&mut q, false).0.expect("1");
        let fx = settle(&mut q, one, Settle::Ack);
        assert_eq!((fx.log_settled.as_slice(), fx.dead_letters.len()), (&[1][..], 0), "{queue_type:?}");
        let two = checkout(&mut q, false).0.expect("2");
        let fx = settle(&mut q, two, Settle::Discard);
        assert_eq!((fx.log_settled.as_slice(), fx.dead_letters.len()), (&[2][..], 0), "no dead-letter exchange");
        assert_eq!((q.unacked(), q.message_count()), (0, 0));

        let mut q = queue(with_dlx(QueueArgs { queue_type, ..Default::default() }));
        stored(&mut q, 1..=1);
        let one = checkout(&mut q, false).0.expect("1");
        let fx = settle(&mut q, one, Settle::Discard);
        assert!(fx.log_settled.is_empty(), "the dead-lettering moves the record");
        assert_eq!((fx.dead_letters[0].0, ids(&fx)), (Reason::Rejected, vec![1]));
    }
}

#[test]
fn a_return_undoes_its_checkout() {
    for settled in [false, true] {
        let mut q = queue(QueueArgs::default());
        stored(&mut q, 1..=2);
        let (taken, mut fx) = checkout(&mut q, settled);
        let taken = taken.expect("1");
        q.apply(Command::Return { entry: taken, settled }, 0, &mut fx);
        assert!(fx.log_delivered.is_empty() && fx.log_settled.is_empty(), "no record for a message not handed out");
        assert_eq!((q.unacked(), q.ready_count()), (0, 2));
        let head = checkout(&mut q, false).0.expect("1 again");
        assert_eq!((head.store_id, head.redelivered), (1, false), "back at its place, as it was");
    }
}

#[test]
fn a_drop_head_limit_left_for_later_drops_only_what_no_consumer_took() {
    let mut q = queue(with_dlx(QueueArgs { max_length: Some(1), ..Default::default() }));
    for id in 1..=2 {
        let fx = apply(&mut q, Command::Enqueue { message: message("m"), store_id: id, trim_later: true }, 0);
        assert!(fx.dead_letters.is_empty(), "the drop waits for the hand-out");
    }
    // A consumer took the head meanwhile: the queue is within its limit.
    checkout(&mut q, false).0.expect("1");
    assert!(apply(&mut q, Command::Trim, 0).dead_letters.is_empty());
    for id in 3..=4 {
        apply(&mut q, Command::Enqueue { message: message("m"), store_id: id, trim_later: true }, 0);
    }
    let fx = apply(&mut q, Command::Trim, 0);
    assert_eq!((fx.dead_letters[0].0, ids(&fx)), (Reason::Maxlen, vec![2, 3]));
    assert_eq!(q.ready_count(), 1);
}

#[test]
fn expiry_follows_the_given_clock_and_settles_or_dead_letters() {
    for dlx in [false, true] {
        let args = QueueArgs { message_ttl: Some(1_000), ..Default::default() };
        let mut q = queue(if dlx { with_dlx(args) } else { args });
        apply(&mut q, Command::Enqueue { message: message("a"), store_id: 7, trim_later: false }, 5_000);
        let fx = apply(&mut q, Command::Expire, 5_999);
        assert!(fx.log_settled.is_empty() && fx.dead_letters.is_empty(), "not due yet");
        let fx = apply(&mut q, Command::Expire, 6_000);
        if dlx {
            assert_eq!((fx.dead_letters[0].0, ids(&fx)), (Reason::Expired, vec![7]));
        } else {
            assert_eq!((fx.log_settled.as_slice(), fx.dead_letters.len()), (&[7][..], 0));
        }
        assert_eq!(q.ready_count(), 0);
    }
}

#[test]
fn purge_and_remove_settle_the_stored_messages_they_drop() {
    let mut q = queue(QueueArgs::default());
    stored(&mut q, 1..=3);
    apply(&mut q, Command::Enqueue { message: message("transient"), store_id: 0, trim_later: false }, 0);
    let fx = apply(&mut q, Command::Remove { seq: 1, store_id: 2 }, 0);
    assert_eq!((fx.removed, fx.log_settled.as_slice()), (1, &[2][..]));
    let fx = apply(&mut q, Command::Remove { seq: 1, store_id: 2 }, 0);
    assert_eq!(fx.removed, 0, "removed once");
    let fx = apply(&mut q, Command::Purge, 0);
    assert_eq!((fx.removed, fx.log_settled.as_slice()), (3, &[1, 3][..]));
    assert_eq!((q.ready_count(), q.ready_bytes()), (0, 0));
}

#[test]
fn a_quorum_queue_past_its_delivery_limit_settles_or_dead_letters() {
    for dlx in [false, true] {
        let args = QueueArgs { queue_type: QueueType::Quorum, delivery_limit: Some(0), ..Default::default() };
        let mut q = queue(if dlx { with_dlx(args) } else { args });
        stored(&mut q, 1..=1);
        let one = checkout(&mut q, false).0.expect("1");
        let fx = settle(&mut q, one, Settle::Requeue);
        if dlx {
            assert_eq!((fx.dead_letters[0].0, ids(&fx)), (Reason::DeliveryLimit, vec![1]));
            assert!(fx.dead_letters[0].1.redelivered);
        } else {
            assert_eq!((fx.log_settled.as_slice(), fx.dead_letters.len()), (&[1][..], 0));
        }
        assert_eq!((q.ready_count(), q.unacked()), (0, 0));
    }
}

#[test]
fn a_quorum_queue_counts_each_return_as_a_delivery() {
    let mut q = queue(QueueArgs { queue_type: QueueType::Quorum, delivery_limit: Some(5), ..Default::default() });
    stored(&mut q, 1..=1);
    for expected in 1..=3 {
        let m = checkout(&mut q, false).0.expect("m");
        settle(&mut q, m, Settle::Requeue);
        let head = q.peek_ready().expect("back");
        assert_eq!((head.delivery_count, head.redelivered), (expected, true));
    }
    // A return of a message never handed out is no delivery.
    let (m, mut fx) = checkout(&mut q, false);
    q.apply(Command::Return { entry: m.expect("m"), settled: false }, 0, &mut fx);
    assert_eq!(q.peek_ready().map(|e| e.delivery_count), Some(3));
}

fn stream_with(sizes: &[u32]) -> Queue {
    let mut q = queue(QueueArgs { queue_type: QueueType::Stream, max_length_bytes: Some(250), ..Default::default() });
    let stream = q.stream_mut().expect("a stream");
    for (offset, &size) in sizes.iter().enumerate() {
        let offset = offset as u64;
        let entry =
            StreamEntry { offset, store_id: 100 + offset, size, record_len: size + 50, published_ms: 0, message: None };
        stream.restore(entry);
    }
    q
}

#[test]
fn a_stream_keeps_what_its_readers_settle() {
    let mut q = stream_with(&[100, 100]);
    q.delivered(3);
    let entry = |offset| QueuedMessage {
        seq: offset,
        store_id: 100 + offset,
        message: None,
        size: 100,
        redelivered: false,
        expires_at: 0,
        level: 0,
        delivery_count: 0,
    };
    for (offset, how) in [(0, Settle::Ack), (1, Settle::Requeue), (0, Settle::Discard)] {
        let fx = settle(&mut q, entry(offset), how);
        assert!(fx.log_settled.is_empty() && fx.dead_letters.is_empty() && fx.deadline.is_none(), "{how:?}");
    }
    assert_eq!((q.unacked(), q.message_count()), (0, 2), "only the readers' count changed");
    for command in [Command::Expire, Command::Purge, Command::Checkout { settled: false }] {
        let fx = apply(&mut q, command, u64::MAX / 2);
        assert!(fx.taken.is_none() && fx.removed == 0 && fx.log_settled.is_empty());
    }
    assert_eq!(q.message_count(), 2);
}

#[test]
fn a_streams_trim_applies_its_size_retention() {
    let mut q = stream_with(&[100, 100, 100, 100, 100]);
    let fx = apply(&mut q, Command::Trim, 0);
    assert_eq!((fx.removed, fx.log_settled.as_slice()), (3, &[100, 101, 102][..]));
    assert_eq!(q.stream().map(|s| (s.first_offset(), s.bytes())), Some((3, 200)));
}

#[test]
fn dead_letters_come_out_grouped_by_reason() {
    let entry = |store_id| QueuedMessage {
        seq: 0,
        store_id,
        message: None,
        size: 0,
        redelivered: false,
        expires_at: 0,
        level: 0,
        delivery_count: 0,
    };
    let mut fx = Effects::default();
    fx.departed(true, vec![entry(1), entry(2)], Reason::Expired);
    fx.departed_one(true, entry(3), Reason::Maxlen);
    fx.departed_one(true, entry(4), Reason::Expired);
    let groups: Vec<(Reason, Vec<u64>)> =
        fx.take_dead_letters().into_iter().map(|(r, es)| (r, es.iter().map(|e| e.store_id).collect())).collect();
    assert_eq!(groups, [(Reason::Expired, vec![1, 2, 4]), (Reason::Maxlen, vec![3])]);
    assert!(fx.dead_letters.is_empty());
}
