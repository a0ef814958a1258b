//! The locks under load from several threads at once: publishes, deliveries,
//! acks and dead-letterings of different queues run side by side (each
//! takes the state lock shared and then its own queues' and channels'
//! locks), while declares and deletes take the state lock exclusive. What
//! must hold: every message is settled exactly once, expired messages are
//! dead-lettered in the order they expired, and nothing waits forever (a
//! lock-order mistake would deadlock here).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::test_support::{TestBroker, TestClient};
use crate::protocol::FieldValue;

const PER_PUBLISHER: usize = 2_000;
const PUBLISHERS: usize = 2;

/// Consumes from its queue until every message is settled: a body seen for
/// the first time is rejected (dead-lettered to the other queue), a body
/// seen before is acked.
fn consume_until_done(
    t: &TestBroker,
    mut client: TestClient,
    seen: &Mutex<HashSet<String>>,
    acked: &AtomicUsize,
    deadline: Instant,
) -> Result<(), String> {
    let conn = client.handle.id;
    while acked.load(Ordering::SeqCst) < PER_PUBLISHER * PUBLISHERS {
        if Instant::now() > deadline {
            return Err(format!("connection {conn}: {} acked at the deadline", acked.load(Ordering::SeqCst)));
        }
        let deliveries = client.deliveries();
        if deliveries.is_empty() {
            std::thread::yield_now();
            continue;
        }
        for d in deliveries {
            if seen.lock().insert(d.body.clone()) {
                t.broker.reject(conn, 1, d.delivery_tag, false, false).map_err(|e| e.text)?;
            } else {
                t.broker.ack(conn, 1, d.delivery_tag, false).map_err(|e| e.text)?;
                acked.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    Ok(())
}

#[test]
fn publishes_acks_and_dead_letterings_of_two_queues_from_several_threads_settle_everything_once() {
    let t = Arc::new(TestBroker::new());
    // Each queue dead-letters into the other: a rejected message crosses
    // over while the other queue's consumer rejects into this one.
    let to = |other: &str| {
        [("x-dead-letter-exchange", FieldValue::string("")), ("x-dead-letter-routing-key", FieldValue::string(other))]
    };
    t.declare("a", &to("b"));
    t.declare("b", &to("a"));
    let (ca, cb) = (t.connect(1), t.connect(2));
    t.consume(&ca, "a", "ca", false, &[]);
    t.consume(&cb, "b", "cb", false, &[]);
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let acked = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    let (done, results) = mpsc::channel::<Result<(), String>>();

    // Threads of their own, not scoped ones: on a deadlock the test must
    // fail at its deadline instead of waiting for them forever.
    for client in [ca, cb] {
        let (t, seen, acked, done) = (t.clone(), seen.clone(), acked.clone(), done.clone());
        std::thread::spawn(move || {
            let _ = done.send(consume_until_done(&t, client, &seen, &acked, deadline));
        });
    }
    for p in 0..PUBLISHERS {
        let (t, done) = (t.clone(), done.clone());
        std::thread::spawn(move || {
            for n in 0..PER_PUBLISHER {
                t.publish(if n % 2 == 0 { "a" } else { "b" }, &format!("p{p}-{n}"));
            }
            let _ = done.send(Ok(()));
        });
    }
    // Declares and deletes take the state lock exclusive meanwhile.
    let (churn, churned) = (t.clone(), done.clone());
    std::thread::spawn(move || {
        for n in 0..200 {
            let name = format!("churn-{n}");
            churn.declare(&name, &[]);
            churn.publish(&name, "x");
            churn.broker.admin_delete("/", &name);
        }
        let _ = churned.send(Ok(()));
    });
    drop(done);
    for _ in 0..(2 + PUBLISHERS + 1) {
        match results.recv_timeout(Duration::from_secs(45)) {
            Ok(outcome) => outcome.expect("a thread failed"),
            Err(e) => panic!("a thread did not finish within 45 s (a deadlock?): {e}"),
        }
    }

    assert_eq!(acked.load(Ordering::SeqCst), PER_PUBLISHER * PUBLISHERS, "every message acked once");
    assert_eq!(seen.lock().len(), PER_PUBLISHER * PUBLISHERS, "and rejected once before that");
    let st = t.broker.state.read();
    for name in ["a", "b"] {
        let q = st.queue("/", name).expect("the queue exists").lock();
        assert_eq!((q.message_count(), q.unacked()), (0, 0), "queue '{name}' is empty and settled");
    }
}

/// Messages of one queue expire on several threads at once (the publish
/// path expires a due head, a listing expires every queue, the timer
/// thread fires): they still reach the dead-letter queue in the order they
/// expired, as they would from one thread.
#[test]
fn expired_messages_are_dead_lettered_in_order_whoever_expires_them() {
    const COUNT: usize = 5_000;
    let t = Arc::new(TestBroker::new());
    t.declare("dead", &[]);
    t.declare(
        "short-lived",
        &[
            ("x-message-ttl", FieldValue::I64(1)),
            ("x-dead-letter-exchange", FieldValue::string("")),
            ("x-dead-letter-routing-key", FieldValue::string("dead")),
        ],
    );
    let published = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (done, results) = mpsc::channel::<()>();
    // A listing expires what is due in every queue, from its own thread.
    for _ in 0..2 {
        let (t, published, done) = (t.clone(), published.clone(), done.clone());
        std::thread::spawn(move || {
            while !published.load(Ordering::SeqCst) {
                t.broker.list_queues(None);
            }
            let _ = done.send(());
        });
    }
    let (publisher, finished) = (t.clone(), published.clone());
    std::thread::spawn(move || {
        for n in 0..COUNT {
            publisher.publish("short-lived", &format!("{n:05}"));
        }
        finished.store(true, Ordering::SeqCst);
        let _ = done.send(());
    });
    for _ in 0..3 {
        results.recv_timeout(Duration::from_secs(45)).expect("a thread did not finish within 45 s (a deadlock?)");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.broker.list_queues(None).iter().find(|q| q.name == "dead").map_or(0, |q| q.messages_ready) < COUNT {
        assert!(Instant::now() < deadline, "every message dead-lettered within 30 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut client = t.connect(9);
    t.consume(&client, "dead", "d", true, &[]);
    let bodies = client.bodies();
    let expected: Vec<String> = (0..COUNT).map(|n| format!("{n:05}")).collect();
    let first_out_of_order = bodies.iter().zip(&expected).position(|(got, want)| got != want);
    assert_eq!((bodies.len(), first_out_of_order), (COUNT, None), "dead-lettered in the order they expired");
}
