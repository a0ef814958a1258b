//! One queue through its interface (`broker::queue_type`: commands in,
//! effects out) on an injected clock: every `now` is given, nothing
//! sleeps, no socket and no log. What leaves a queue is seen as dead
//! letters (the queues here have a dead-letter exchange where it matters).

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::broker::arguments::Overflow;
use crate::broker::dead_letter::Reason;
use crate::broker::deadlines::TimerHandle;
use crate::broker::queue_type::{Command, Effects, Settle};

fn message(body: &str, expiration_ms: Option<u64>, priority: u8) -> Arc<Message> {
    Arc::new(Message {
        exchange: String::new(),
        routing_key: "q".into(),
        properties: Bytes::new(),
        body: Bytes::copy_from_slice(body.as_bytes()),
        persistent: false,
        expiration_ms,
        priority,
    })
}

fn queue(args: QueueArgs) -> Queue {
    Queue::new(Arc::from("/"), "q", false, None, false, FieldTable::default(), args)
}

/// Arguments with a dead-letter exchange, so that what leaves is seen.
fn dlx(args: QueueArgs) -> QueueArgs {
    QueueArgs { dead_letter_exchange: Some(Arc::from("dlx")), ..args }
}

fn bodies(entries: &[QueuedMessage]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.message.as_ref().expect("body in memory").body).into_owned())
        .collect()
}

fn apply(q: &mut Queue, command: Command, now: u64) -> Effects {
    let mut fx = Effects::default();
    q.apply(command, now, &mut fx);
    fx
}

fn enqueue(q: &mut Queue, message: Arc<Message>, now: u64) -> Effects {
    apply(q, Command::Enqueue { message, store_id: 0, trim_later: false }, now)
}

fn checkout(q: &mut Queue) -> Option<QueuedMessage> {
    apply(q, Command::Checkout { settled: false }, 0).taken
}

fn requeue(q: &mut Queue, entry: QueuedMessage) -> Effects {
    apply(q, Command::Settle { entry, how: Settle::Requeue }, 0)
}

/// The bodies of what left for `reason`.
fn left(fx: &Effects, reason: Reason) -> Vec<String> {
    let entries: Vec<QueuedMessage> =
        fx.dead_letters.iter().filter(|(r, _)| *r == reason).map(|(_, e)| e.clone()).collect();
    bodies(&entries)
}

fn expire(q: &mut Queue, now: u64) -> Vec<String> {
    left(&apply(q, Command::Expire, now), Reason::Expired)
}

fn pop_all(q: &mut Queue) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(e) = checkout(q) {
        out.extend(bodies(&[e]));
    }
    out
}

#[test]
fn a_message_ttl_arms_the_timer_and_expires_at_its_deadline() {
    let timers = TimerHandle::default();
    let mut q = queue(dlx(QueueArgs { message_ttl: Some(100), ..Default::default() }));
    q.attach_timer(timers.clone(), 1_000);
    assert_eq!(timers.next(), None, "nothing to expire yet");
    enqueue(&mut q, message("a", None, 0), 1_000);
    enqueue(&mut q, message("b", None, 0), 1_050);
    assert_eq!(timers.next(), Some(1_100), "armed for the head only");
    assert_eq!(timers.len(), 1);
    assert!(expire(&mut q, 1_099).is_empty());
    assert_eq!(expire(&mut q, 1_100), ["a"]);
    assert_eq!(q.next_deadline(1_100), Some(1_150));
    assert_eq!(expire(&mut q, 1_150), ["b"]);
    assert_eq!((q.ready_count(), q.next_deadline(1_150)), (0, None));
}

#[test]
fn the_shorter_of_queue_and_message_ttl_applies() {
    let mut q = queue(QueueArgs { message_ttl: Some(500), ..Default::default() });
    enqueue(&mut q, message("short", Some(20), 0), 0);
    assert_eq!(q.next_expiry(), Some(20));
    let mut q = queue(QueueArgs { message_ttl: Some(10), ..Default::default() });
    enqueue(&mut q, message("long", Some(900), 0), 0);
    assert_eq!(q.next_expiry(), Some(10));
}

#[test]
fn a_message_behind_a_longer_lived_head_waits_for_it() {
    // As RabbitMQ: only heads expire.
    let mut q = queue(dlx(QueueArgs::default()));
    enqueue(&mut q, message("long", Some(1_000), 0), 0);
    enqueue(&mut q, message("short", Some(10), 0), 0);
    assert!(expire(&mut q, 500).is_empty());
    assert_eq!(expire(&mut q, 1_000), ["long", "short"]);
}

#[test]
fn a_requeued_message_with_an_earlier_expiry_arms_earlier() {
    let timers = TimerHandle::default();
    let mut q = queue(dlx(QueueArgs::default()));
    q.attach_timer(timers.clone(), 0);
    enqueue(&mut q, message("a", Some(100), 0), 0);
    let delivered = checkout(&mut q).expect("a");
    enqueue(&mut q, message("b", Some(1_000), 0), 50);
    // The timer fired at 100 with only b ready: armed again for b.
    assert!(timers.take_due(100).iter().any(|(at, _)| q.timer_fired(*at)));
    q.rearm(100);
    assert_eq!(timers.next(), Some(1_050));
    assert!(requeue(&mut q, delivered).dead_letters.is_empty());
    assert_eq!(timers.next(), Some(100), "the requeued message is due before b");
    assert_eq!(expire(&mut q, 100), ["a"]);
}

#[test]
fn a_stale_deadline_does_not_fire() {
    let timers = TimerHandle::default();
    let mut q = queue(QueueArgs::default());
    q.attach_timer(timers.clone(), 0);
    enqueue(&mut q, message("a", Some(100), 0), 0);
    let due = timers.take_due(100);
    assert_eq!(due.len(), 1);
    assert!(!q.timer_fired(due[0].0 + 1), "another deadline than the armed one");
    assert!(q.timer_fired(due[0].0));
    assert!(!q.timer_fired(due[0].0), "fires once");
}

#[test]
fn x_expires_counts_from_the_last_use_while_no_consumer_is_there() {
    let timers = TimerHandle::default();
    let mut q = queue(QueueArgs { expires: Some(1_000), ..Default::default() });
    q.last_used = 500;
    q.attach_timer(timers.clone(), 500);
    assert_eq!(timers.next(), Some(1_500));
    // Used again later: the armed deadline comes early and the queue is
    // armed at its new one.
    q.last_used = 900;
    let due = timers.take_due(1_500);
    assert_eq!(due.len(), 1);
    assert!(q.timer_fired(due[0].0));
    q.rearm(1_500);
    assert_eq!(timers.next(), Some(1_900));
}

#[test]
fn deleting_a_queue_disarms_its_timer() {
    let timers = TimerHandle::default();
    let mut q = queue(QueueArgs { expires: Some(1_000), ..Default::default() });
    q.attach_timer(timers.clone(), 0);
    assert_eq!(timers.len(), 1);
    q.disarm_timer();
    assert!(timers.is_empty());
}

#[test]
fn priorities_deliver_highest_first_and_requeued_messages_keep_their_place() {
    let mut q = queue(QueueArgs { max_priority: Some(5), ..Default::default() });
    for (body, priority) in [("low1", 0), ("high1", 5), ("low2", 0), ("over", 9), ("mid", 3)] {
        enqueue(&mut q, message(body, None, priority), 0);
    }
    // A priority above the maximum counts as the maximum.
    assert_eq!(q.level_of(9), 5);
    let first = checkout(&mut q).expect("first");
    assert_eq!(bodies(std::slice::from_ref(&first)), ["high1"]);
    assert!(requeue(&mut q, first).dead_letters.is_empty());
    assert_eq!(pop_all(&mut q), ["high1", "over", "mid", "low1", "low2"]);
}

#[test]
fn a_requeued_message_goes_back_before_later_publishes() {
    let mut q = queue(QueueArgs::default());
    for body in ["1", "2", "3"] {
        enqueue(&mut q, message(body, None, 0), 0);
    }
    let one = checkout(&mut q).expect("1");
    let two = checkout(&mut q).expect("2");
    requeue(&mut q, two);
    requeue(&mut q, one);
    let again = checkout(&mut q).expect("1 again");
    assert!(again.redelivered);
    assert_eq!(again.delivery_count, 0, "a classic queue keeps no delivery count (quorum queues do)");
    assert_eq!(bodies(&[again]), ["1"]);
    assert_eq!(pop_all(&mut q), ["2", "3"]);
}

#[test]
fn max_length_drops_from_the_head_or_rejects() {
    let mut q = queue(dlx(QueueArgs { max_length: Some(2), ..Default::default() }));
    for body in ["1", "2"] {
        enqueue(&mut q, message(body, None, 0), 0);
    }
    let fx = enqueue(&mut q, message("3", None, 0), 0);
    assert_eq!((fx.rejected, left(&fx, Reason::Maxlen)), (false, vec!["1".to_string()]));
    assert_eq!(q.ready_count(), 2);

    let args = QueueArgs { max_length: Some(1), overflow: Some(Overflow::RejectPublish), ..Default::default() };
    let mut q = queue(dlx(args));
    enqueue(&mut q, message("1", None, 0), 0);
    let fx = enqueue(&mut q, message("2", None, 0), 0);
    assert_eq!((fx.rejected, fx.dead_letters.len()), (true, 0));
    assert_eq!(pop_all(&mut q), ["1"]);
}

#[test]
fn max_length_bytes_counts_bodies() {
    let mut q = queue(dlx(QueueArgs { max_length_bytes: Some(10), ..Default::default() }));
    enqueue(&mut q, message("12345", None, 0), 0);
    enqueue(&mut q, message("67890", None, 0), 0);
    let fx = enqueue(&mut q, message("abc", None, 0), 0);
    assert_eq!(left(&fx, Reason::Maxlen), ["12345"]);
    assert_eq!(q.ready_bytes(), 8);
    // Larger than the limit on its own: the head goes to make room, as
    // in RabbitMQ, and then the message itself.
    let fx = enqueue(&mut q, message("0123456789ab", None, 0), 0);
    assert_eq!(left(&fx, Reason::Maxlen), ["67890", "abc", "0123456789ab"]);
    assert_eq!(q.ready_count(), 0);
}

#[test]
fn a_quorum_queues_delivery_limit_returns_the_message_instead_of_requeueing_it() {
    let args = QueueArgs { queue_type: QueueType::Quorum, delivery_limit: Some(1), ..Default::default() };
    let mut q = queue(dlx(args));
    enqueue(&mut q, message("m", None, 0), 0);
    let first = checkout(&mut q).expect("m");
    assert!(requeue(&mut q, first).dead_letters.is_empty(), "returned once: within the limit");
    let second = checkout(&mut q).expect("m again");
    assert_eq!((second.redelivered, second.delivery_count), (true, 1));
    let fx = requeue(&mut q, second);
    assert_eq!(left(&fx, Reason::DeliveryLimit), ["m"], "over the limit");
    assert_eq!(fx.dead_letters[0].1.delivery_count, 2);
    assert_eq!((q.ready_count(), q.unacked()), (0, 0));
}

#[test]
fn a_classic_queue_requeues_without_counting_whatever_its_arguments_say() {
    // RabbitMQ's classic queues have no delivery limit (x-delivery-limit
    // is a quorum queue argument; the arguments never give one to a
    // classic queue, and the type would not apply one anyway).
    let mut q = queue(dlx(QueueArgs { delivery_limit: Some(0), ..Default::default() }));
    enqueue(&mut q, message("m", None, 0), 0);
    for _ in 0..3 {
        let m = checkout(&mut q).expect("m");
        assert!(requeue(&mut q, m).dead_letters.is_empty(), "a classic queue takes every message back");
    }
    let m = checkout(&mut q).expect("m");
    assert_eq!((m.redelivered, m.delivery_count), (true, 0));
}

#[test]
fn only_a_quorum_queue_marks_redeliveries_with_their_count() {
    let quorum = queue(QueueArgs { queue_type: QueueType::Quorum, ..Default::default() });
    let classic = queue(QueueArgs::default());
    let mut entry = QueuedMessage {
        seq: 0,
        store_id: 0,
        message: None,
        size: 1,
        redelivered: true,
        expires_at: 0,
        level: 0,
        delivery_count: 3,
    };
    // No property set: the property flags only.
    let plain = Arc::new(Message {
        exchange: String::new(),
        routing_key: "q".into(),
        properties: Bytes::from_static(&[0, 0]),
        body: Bytes::from_static(b"m"),
        persistent: false,
        expiration_ms: None,
        priority: 0,
    });
    let header = |m: &Message| {
        crate::protocol::BasicProperties::decode(m.properties.clone())
            .expect("decodable")
            .headers
            .and_then(|h| h.get("x-delivery-count").and_then(crate::protocol::FieldValue::as_i64))
    };
    assert_eq!(header(&quorum.as_delivered(&entry, plain.clone())), Some(3));
    assert_eq!(header(&classic.as_delivered(&entry, plain.clone())), None);
    entry.delivery_count = 0;
    assert!(Arc::ptr_eq(&quorum.as_delivered(&entry, plain.clone()), &plain), "a first delivery goes as it came");
}

#[test]
fn purge_empties_the_ready_list_and_its_counters() {
    let mut q = queue(QueueArgs { message_ttl: Some(10), ..Default::default() });
    for body in ["1", "2", "3"] {
        enqueue(&mut q, message(body, None, 0), 0);
    }
    assert_eq!(apply(&mut q, Command::Purge, 0).removed, 3);
    assert_eq!((q.ready_count(), q.ready_bytes(), q.next_expiry()), (0, 0, None));
}

#[test]
fn the_classic_type_returns_the_deadline_its_owner_arms() {
    // Effects as data: the message list knows no timer, it says when it
    // needs one.
    let args = QueueArgs { message_ttl: Some(100), ..Default::default() };
    let mut m = ClassicQueue::new(None);
    let mut fx = Effects::default();
    m.apply(&args, Command::Enqueue { message: message("a", None, 0), store_id: 0, trim_later: false }, 1_000, &mut fx);
    assert_eq!((fx.rejected, fx.dead_letters.len(), fx.deadline.take()), (false, 0, Some(1_100)));
    let no_ttl = QueueArgs::default();
    m.apply(
        &no_ttl,
        Command::Enqueue { message: message("b", None, 0), store_id: 0, trim_later: false },
        1_000,
        &mut fx,
    );
    assert_eq!(fx.deadline, None);
    m.apply(&args, Command::Checkout { settled: false }, 1_000, &mut fx);
    let a = fx.taken.take().expect("a");
    m.apply(&args, Command::Settle { entry: a, how: Settle::Requeue }, 1_000, &mut fx);
    assert_eq!(fx.deadline, Some(1_100), "requeued: its expiry needs the timer again");
}

#[test]
fn each_queue_type_has_its_own_state() {
    let classic = queue(QueueArgs::default());
    assert!(matches!(classic.kind(), QueueKind::Classic(_)));
    let quorum = queue(QueueArgs { queue_type: QueueType::Quorum, ..Default::default() });
    assert!(matches!(quorum.kind(), QueueKind::Quorum(_)));
    let mut stream = queue(QueueArgs { queue_type: QueueType::Stream, ..Default::default() });
    assert!(stream.is_stream() && stream.stream().is_some());
    // A stream takes messages as records of its own (`publish_to_stream`),
    // never through the classic enqueue, and checks nothing out.
    assert!(enqueue(&mut stream, message("x", None, 0), 0).rejected);
    assert_eq!((stream.ready_count(), stream.has_ready(), checkout(&mut stream).is_none()), (0, false, true));
}
