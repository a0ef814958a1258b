//! The consumer timeout, on an injected clock: the check is given the
//! time (`now`), so a test asks what happens a minute after a delivery
//! without waiting for it. The timeouts are long enough that the real
//! timer thread of the test broker never reaches them while a test runs.

use super::test_support::{TestBroker, TestClient};
use super::*;
use crate::protocol::FieldValue;

/// The time channel 1 of `client` got its oldest unacknowledged delivery.
fn oldest_delivery_at(t: &TestBroker, client: &TestClient) -> u64 {
    let st = t.broker.state.read();
    let ch = st.channel(client.handle.id, 1).expect("channel 1 is open").lock();
    ch.unacked.first_key_value().map(|(_, u)| u.delivered_at).expect("one delivery unacknowledged")
}

fn check_at(t: &TestBroker, client: &TestClient, now: u64) {
    t.broker.state.read().check_consumer_timeout((client.handle.id, 1), now);
}

/// The channel-close events raised: (channel, reply code, text).
fn closes(client: &mut TestClient) -> Vec<(u16, u16, String)> {
    client
        .events()
        .into_iter()
        .filter_map(|e| match e {
            BrokerEvent::CloseChannel { channel, error } => Some((channel, error.code, error.text)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_delivery_unacknowledged_past_the_queues_timeout_closes_its_channel() {
    let t = TestBroker::new();
    t.declare("slow", &[("x-consumer-timeout", FieldValue::I64(60_000))]);
    let mut c = t.connect(1);
    t.consume(&c, "slow", "worker", false, &[]);
    t.publish("slow", "job");
    assert_eq!(c.bodies(), ["job"]);
    let at = oldest_delivery_at(&t, &c);

    check_at(&t, &c, at + 60_000);
    assert!(closes(&mut c).is_empty(), "exactly the timeout is not past it");
    check_at(&t, &c, at + 60_001);
    let closed = closes(&mut c);
    assert_eq!(closed.len(), 1);
    assert_eq!((closed[0].0, closed[0].1), (1, 406));
    assert_eq!(
        closed[0].2,
        "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: 60000 ms. \
         This timeout value can be configured, see consumers doc guide to learn more",
        "RabbitMQ's text"
    );
    check_at(&t, &c, at + 120_000);
    assert!(closes(&mut c).is_empty(), "a channel is closed once");
}

#[test]
fn the_consumers_own_timeout_wins_over_the_queues_and_an_ack_in_time_ends_it() {
    let t = TestBroker::new();
    t.declare("slow", &[("x-consumer-timeout", FieldValue::I64(60_000))]);
    let mut c = t.connect(1);
    t.consume(&c, "slow", "patient", false, &[("x-consumer-timeout", FieldValue::I64(120_000))]);
    t.publish("slow", "first");
    t.publish("slow", "second");
    assert_eq!(c.bodies(), ["first", "second"]);
    let at = oldest_delivery_at(&t, &c);

    check_at(&t, &c, at + 60_001);
    assert!(closes(&mut c).is_empty(), "the consumer's 120 s apply, not the queue's 60 s");
    // Both acknowledged in time: nothing is left to time out.
    t.broker.ack(1, 1, 2, true).expect("ack both");
    check_at(&t, &c, at + 10_000_000);
    assert!(closes(&mut c).is_empty());
}
