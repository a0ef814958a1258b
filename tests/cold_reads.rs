//! A consumer draining a backlog whose bodies are on disk waits on the disk;
//! nobody else does. The broker runs in-process over a disk whose reads
//! block until the test lets them through: while a read is held, another
//! client's publish and declare must complete, which they cannot if a body
//! is read under the broker's lock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use warren::broker::{Broker, ConnectionHandle, ConnectionInfo, Message, OutboundShared, Outgoing};
use warren::protocol::method::QueueDeclare;
use warren::store::io::{LogIo, SimDisk};
use warren::store::{LogOptions, LogStore};

/// A disk whose reads wait while the gate is shut.
struct GatedDisk {
    disk: Arc<SimDisk>,
    open: Mutex<bool>,
    opened: Condvar,
    waiting: AtomicUsize,
}

impl GatedDisk {
    fn wait_for_gate(&self) {
        let mut open = self.open.lock().unwrap();
        if !*open {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
        }
    }

    fn set(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.opened.notify_all();
    }
}

impl LogIo for GatedDisk {
    fn list(&self) -> std::io::Result<Vec<u64>> {
        self.disk.list()
    }
    fn create(&self, base: u64, capacity: u32) -> std::io::Result<()> {
        self.disk.create(base, capacity)
    }
    fn write_at(&self, base: u64, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.disk.write_at(base, offset, data)
    }
    fn sync(&self, base: u64) -> std::io::Result<()> {
        self.disk.sync(base)
    }
    fn sync_dir(&self) -> std::io::Result<()> {
        self.disk.sync_dir()
    }
    fn read_all(&self, base: u64) -> std::io::Result<Bytes> {
        self.disk.read_all(base)
    }
    fn read_at(&self, base: u64, offset: u64, len: usize) -> std::io::Result<Bytes> {
        self.wait_for_gate();
        self.disk.read_at(base, offset, len)
    }
    fn remove(&self, base: u64) -> std::io::Result<()> {
        self.disk.remove(base)
    }
    fn set_aside(&self, base: u64) -> std::io::Result<std::path::PathBuf> {
        self.disk.set_aside(base)
    }
    fn describe(&self, base: u64) -> String {
        self.disk.describe(base)
    }
}

fn message(queue: &str, body: &str) -> Arc<Message> {
    Arc::new(Message {
        exchange: String::new(),
        routing_key: queue.into(),
        properties: Bytes::from_static(&[0x10, 0x00, 2]),
        body: Bytes::copy_from_slice(body.as_bytes()),
        persistent: true,
        expiration_ms: None,
        priority: 0,
    })
}

fn durable(name: &str) -> QueueDeclare {
    QueueDeclare { queue: name.into(), durable: true, ..Default::default() }
}

fn info() -> ConnectionInfo {
    ConnectionInfo {
        peer: "test".into(),
        user: "guest".into(),
        vhost: "/".into(),
        client: "test".into(),
        heartbeat: 0,
        frame_max: 131072,
        connected_at: 0,
        tls: false,
        auth_mechanism: "PLAIN".into(),
    }
}

fn poll(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_cold_backlog_read_holds_up_its_consumer_only() {
    const BACKLOG: usize = 1000;
    // A backlog written by one broker, then recovered by another: every
    // body is on disk only.
    let disk = SimDisk::new();
    let (store, recovered) = LogStore::open(disk.clone(), LogOptions::default()).unwrap();
    let first = Broker::new(store.clone());
    first.restore(&recovered).unwrap();
    first.queue_declare("/", 1, &durable("backlog")).unwrap();
    for i in 0..BACKLOG {
        first.publish("/", "", None, message("backlog", &format!("message {i}"))).unwrap();
    }
    store.shutdown();
    let gated = Arc::new(GatedDisk {
        disk: SimDisk::from_image(&disk.power_cut_image(0)),
        open: Mutex::new(false),
        opened: Condvar::new(),
        waiting: AtomicUsize::new(0),
    });
    let (store, recovered) = LogStore::open(gated.clone(), LogOptions::default()).unwrap();
    let broker = Arc::new(Broker::new(store));
    broker.restore(&recovered).unwrap();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer = ConnectionHandle::new(7, tx, Arc::new(OutboundShared::default()), false);
    broker.register_connection(consumer.clone(), info()).unwrap();
    broker.open_channel(7, 1);
    broker.consume(&consumer, 1, "backlog", "drain", true, false, true, &Default::default()).unwrap();
    // Deliveries start on another thread: with reads under the lock, this
    // call itself would hold the lock until the gate opens.
    let starter = {
        let broker = broker.clone();
        std::thread::spawn(move || broker.start_delivery("/", "backlog"))
    };
    poll("a body read to wait at the gate", || gated.waiting.load(Ordering::SeqCst) > 0);

    // Another client, while that read waits on the disk.
    let other = {
        let broker = broker.clone();
        std::thread::spawn(move || {
            broker.queue_declare("/", 2, &durable("elsewhere")).unwrap();
            broker.publish("/", "", None, message("elsewhere", "for elsewhere")).unwrap().routed
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !other.is_finished() {
        assert!(Instant::now() < deadline, "a declare and publish on another queue waited for a disk read");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(other.join().unwrap(), "the other publish was routed");

    // The gate opens: the consumer gets the whole backlog, in order.
    gated.set(true);
    starter.join().unwrap();
    let mut delivered = Vec::new();
    poll("the backlog to be delivered", || {
        while let Ok(item) = rx.try_recv() {
            if let Outgoing::Deliver { message, .. } = item {
                delivered.push(String::from_utf8(message.body.to_vec()).unwrap());
            }
        }
        delivered.len() == BACKLOG
    });
    let expected: Vec<String> = (0..BACKLOG).map(|i| format!("message {i}")).collect();
    assert_eq!(delivered, expected);
}
