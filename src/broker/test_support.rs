//! A broker in the test process, for unit tests of what happens between
//! queues, consumers and channels: its log on a simulated disk, each
//! connection a pair of in-memory queues (what the broker sends it, and the
//! events it must act on), no socket. Time-driven behaviour is tested by
//! giving the time to the function that checks it, never by sleeping.

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::*;
use crate::protocol::FieldValue;
use crate::protocol::method::QueueDeclare;
use crate::store::io::SimDisk;
use crate::store::{LogOptions, LogStore};

pub struct TestBroker {
    pub broker: Broker,
}

/// One client connection with channel 1 open.
pub struct TestClient {
    pub handle: ConnectionHandle,
    outbound: UnboundedReceiver<Outgoing>,
    events: UnboundedReceiver<BrokerEvent>,
}

/// A delivery as the client would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub consumer_tag: String,
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub body: String,
    /// The `x-delivery-count` header (quorum queues, from the second delivery).
    pub delivery_count: Option<i64>,
}

pub fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in pairs {
        t.insert(*k, v.clone());
    }
    t
}

impl TestBroker {
    pub fn new() -> TestBroker {
        let (store, recovered) =
            LogStore::open(SimDisk::new(), LogOptions::default()).expect("a log on an empty simulated disk opens");
        let broker = Broker::new(store);
        broker.restore(&recovered).expect("the default vhost");
        TestBroker { broker }
    }

    pub fn connect(&self, id: u64) -> TestClient {
        let (tx, outbound) = unbounded_channel();
        let (events_tx, events) = unbounded_channel();
        let handle = ConnectionHandle::new(id, tx, Arc::default(), true).with_events(events_tx);
        let info = ConnectionInfo {
            peer: format!("127.0.0.1:{id}"),
            user: "guest".into(),
            vhost: "/".into(),
            client: "unit test".into(),
            heartbeat: 0,
            frame_max: 131_072,
            connected_at: 0,
            tls: false,
            auth_mechanism: "PLAIN".into(),
        };
        self.broker.register_connection(handle.clone(), info).expect("connection registered");
        self.broker.open_channel(id, 1);
        TestClient { handle, outbound, events }
    }

    pub fn declare(&self, queue: &str, arguments: &[(&str, FieldValue)]) {
        let m = QueueDeclare { queue: queue.into(), durable: true, arguments: table(arguments), ..Default::default() };
        self.broker.queue_declare("/", 0, &m).expect("queue declared");
    }

    /// Publishes a transient message to `queue` through the default exchange.
    pub fn publish(&self, queue: &str, body: &str) -> Routed {
        let message = Arc::new(Message {
            exchange: String::new(),
            routing_key: queue.into(),
            // No property set: the property flags only.
            properties: bytes::Bytes::from_static(&[0, 0]),
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            persistent: false,
            expiration_ms: None,
            priority: 0,
        });
        let routed = self.broker.publish("/", "", None, message).expect("published");
        assert!(routed.routed, "'{queue}' exists");
        routed
    }

    /// basic.consume on channel 1, then the start of deliveries (as the
    /// connection does once consume-ok is out).
    pub fn consume(&self, client: &TestClient, queue: &str, tag: &str, no_ack: bool, args: &[(&str, FieldValue)]) {
        self.broker
            .consume(&client.handle, 1, queue, tag, no_ack, false, false, &table(args))
            .expect("consumer registered");
        self.broker.start_delivery("/", queue);
    }
}

impl TestClient {
    /// The deliveries sent to this connection since the last call.
    pub fn deliveries(&mut self) -> Vec<Delivered> {
        let mut out = Vec::new();
        while let Ok(item) = self.outbound.try_recv() {
            if let Outgoing::Deliver { consumer_tag, delivery_tag, redelivered, message, .. } = item {
                let properties = crate::protocol::BasicProperties::decode(message.properties.clone())
                    .expect("the broker sends decodable properties");
                let delivery_count =
                    properties.headers.as_ref().and_then(|h| h.get("x-delivery-count")).and_then(FieldValue::as_i64);
                out.push(Delivered {
                    consumer_tag: consumer_tag.to_string(),
                    delivery_tag,
                    redelivered,
                    body: String::from_utf8_lossy(&message.body).into_owned(),
                    delivery_count,
                });
            }
        }
        out
    }

    pub fn bodies(&mut self) -> Vec<String> {
        self.deliveries().into_iter().map(|d| d.body).collect()
    }

    /// The events the broker raised for this connection since the last call.
    pub fn events(&mut self) -> Vec<BrokerEvent> {
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            out.push(event);
        }
        out
    }
}
