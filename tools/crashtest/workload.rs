//! The clients of one cycle: confirmed publishers and an acking consumer,
//! recording what the broker promised until the broker is killed under them.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use lapin::message::DeliveryResult;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind, PublisherConfirm};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::check::{CycleRecord, Fate, Observed, content_problem};
use crate::message::{EXCHANGE, Key, QUEUES, Workload};

/// Limit for one protocol operation against a live broker.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// After the kill, how long unresolved confirms may take to resolve or fail.
const CONFIRM_GRACE: Duration = Duration::from_secs(3);
/// After the kill, how long the client tasks get to wind down.
const TASK_GRACE: Duration = Duration::from_secs(10);

/// Runs a lapin operation with [`OP_TIMEOUT`], naming it in the error.
pub async fn op<T>(what: &str, fut: impl Future<Output = lapin::Result<T>>) -> anyhow::Result<T> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(result) => result.with_context(|| format!("{what} failed")),
        Err(_) => anyhow::bail!("{what} timed out after {}s", OP_TIMEOUT.as_secs()),
    }
}

pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    op(&format!("connecting to {url} ({name})"), Connection::connect(url, properties)).await
}

/// Declares the durable exchange, queues and bindings (idempotent), then
/// empties the queues. A purge that removed something is answered only once
/// its tombstones are durable, so the next crash cannot bring them back.
pub async fn prepare(url: &str) -> anyhow::Result<()> {
    let conn = connect(url, "crashtest-setup").await?;
    let ch = op("channel.open", conn.create_channel()).await?;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    op(
        &format!("exchange.declare {EXCHANGE}"),
        ch.exchange_declare(EXCHANGE.into(), ExchangeKind::Topic, durable, FieldTable::default()),
    )
    .await?;
    for (queue, binding) in QUEUES {
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        op(&format!("queue.declare {queue}"), ch.queue_declare(queue.into(), durable, FieldTable::default())).await?;
        op(
            &format!("queue.bind {queue} to {EXCHANGE} with {binding}"),
            ch.queue_bind(
                queue.into(),
                EXCHANGE.into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        op(&format!("queue.purge {queue}"), ch.queue_purge(queue.into(), QueuePurgeOptions::default())).await?;
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let left = op(
            &format!("queue.declare {queue} (passive)"),
            ch.queue_declare(queue.into(), passive, FieldTable::default()),
        )
        .await?
        .message_count();
        anyhow::ensure!(left == 0, "queue {queue} still holds {left} messages after queue.purge");
    }
    let _ = conn.close(200, "prepared".into()).await;
    Ok(())
}

#[derive(Default)]
struct ConsumerLog {
    received: HashSet<(usize, Key)>,
    acked: HashSet<(usize, Key)>,
    live_corrupt: Vec<String>,
    live_unexpected: Vec<String>,
}

/// What the client tasks record while the broker runs.
struct Shared {
    publishers: Vec<Mutex<Vec<Fate>>>,
    consumer: Mutex<ConsumerLog>,
}

impl Shared {
    fn set(&self, publisher: usize, seq: u32, fate: Fate) {
        if let Some(f) = self.publishers[publisher].lock().unwrap().get_mut(seq as usize) {
            *f = fate;
        }
    }

    fn was_published(&self, key: Key) -> bool {
        self.publishers.get(key.publisher as usize).is_some_and(|p| (key.seq as usize) < p.lock().unwrap().len())
    }
}

/// The clients of one cycle, running against the broker.
pub struct Running {
    cycle: u32,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    connections: Vec<Connection>,
}

/// Connects the consumer (one channel and consumer per queue) and the
/// publishers (one connection each, in confirm mode), and starts them all.
/// Returns once every client is set up, so the kill timer can start.
pub async fn start(url: &str, w: Workload, cycle: u32, publishers: usize, window: usize) -> anyhow::Result<Running> {
    let shared = Arc::new(Shared {
        publishers: (0..publishers).map(|_| Mutex::new(Vec::new())).collect(),
        consumer: Mutex::new(ConsumerLog::default()),
    });
    let (stop, stop_rx) = watch::channel(false);
    let mut connections = Vec::new();
    let mut tasks = Vec::new();

    let conn = connect(url, "crashtest-consumer").await?;
    let (tx, rx) = mpsc::unbounded_channel::<(usize, DeliveryResult)>();
    for (q, (queue, _)) in QUEUES.iter().enumerate() {
        let ch = op("channel.open", conn.create_channel()).await?;
        let consumer = op(
            &format!("basic.consume {queue}"),
            ch.basic_consume(
                (*queue).into(),
                format!("crashtest-{q}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        // Forward in the delegate call itself (not in the future it returns),
        // so deliveries keep their order.
        let tx = tx.clone();
        consumer.set_delegate(move |delivery: DeliveryResult| {
            let _ = tx.send((q, delivery));
            std::future::ready(())
        });
    }
    drop(tx);
    connections.push(conn);
    tasks.push(tokio::spawn(consume(w, cycle, rx, shared.clone(), stop_rx.clone())));

    let mut channels = Vec::new();
    for p in 0..publishers {
        let conn = connect(url, &format!("crashtest-publisher-{p}")).await?;
        let ch = op("channel.open", conn.create_channel()).await?;
        op("confirm.select", ch.confirm_select(ConfirmSelectOptions::default())).await?;
        channels.push(ch);
        connections.push(conn);
    }
    for (p, ch) in channels.into_iter().enumerate() {
        tasks.push(tokio::spawn(publish(w, cycle, p, ch, window, shared.clone(), stop_rx.clone())));
    }
    Ok(Running { cycle, shared, stop, tasks, connections })
}

impl Running {
    /// Call once the broker is dead: stops the clients, waits for them to
    /// settle what they can, and returns what they recorded.
    pub async fn finish(self) -> CycleRecord {
        let _ = self.stop.send(true);
        for mut task in self.tasks {
            if tokio::time::timeout(TASK_GRACE, &mut task).await.is_err() {
                task.abort();
            }
        }
        drop(self.connections);
        let shared = self.shared;
        let publishers = shared.publishers.iter().map(|p| std::mem::take(&mut *p.lock().unwrap())).collect();
        let log = std::mem::take(&mut *shared.consumer.lock().unwrap());
        CycleRecord {
            cycle: self.cycle,
            publishers,
            received: log.received,
            acked: log.acked,
            live_corrupt: log.live_corrupt,
            live_unexpected: log.live_unexpected,
        }
    }
}

/// One confirmed publisher: publishes with up to `window` confirms
/// outstanding, recording each message as sent before it goes out and as
/// confirmed when the broker's basic.ack arrives.
async fn publish(
    w: Workload,
    cycle: u32,
    p: usize,
    ch: Channel,
    window: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let settle = |seq: u32, result: lapin::Result<Confirmation>| match result {
        Ok(Confirmation::Ack(_)) => shared.set(p, seq, Fate::Confirmed),
        Ok(Confirmation::Nack(_)) => shared.set(p, seq, Fate::Nacked),
        _ => {}
    };
    let mut pending: VecDeque<(u32, PublisherConfirm)> = VecDeque::new();
    let mut seq: u32 = 0;
    loop {
        if *stop.borrow() {
            break;
        }
        if pending.len() >= window {
            let Some((s, mut confirm)) = pending.pop_front() else { break };
            tokio::select! {
                biased;
                result = &mut confirm => {
                    let failed = result.is_err();
                    settle(s, result);
                    if failed {
                        break;
                    }
                }
                _ = stop.changed() => {
                    pending.push_front((s, confirm));
                    break;
                }
            }
            continue;
        }
        let key = Key { cycle, publisher: p as u16, seq };
        let body = w.body(key);
        let properties = BasicProperties::default().with_delivery_mode(2).with_message_id(key.to_string().into());
        shared.publishers[p].lock().unwrap().push(Fate::Sent);
        let routing_key = w.routing_key(key);
        match ch
            .basic_publish(EXCHANGE.into(), routing_key.into(), BasicPublishOptions::default(), &body, properties)
            .await
        {
            Ok(confirm) => pending.push_back((seq, confirm)),
            Err(_) => break,
        }
        seq += 1;
    }
    // Confirms the client already received resolve at once; the others
    // fail as the dead connection is noticed (or time out).
    let deadline = tokio::time::Instant::now() + CONFIRM_GRACE;
    for (s, confirm) in pending {
        match tokio::time::timeout_at(deadline, confirm).await {
            Ok(result) => settle(s, result),
            Err(_) => break,
        }
    }
}

/// The consumer: checks each delivery, records it, and acks the ones the
/// workload says to ack (recorded before the ack is sent, since the broker
/// may act on it even if the client never learns it went out).
async fn consume(
    w: Workload,
    cycle: u32,
    mut rx: mpsc::UnboundedReceiver<(usize, DeliveryResult)>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (q, result) = tokio::select! {
            biased;
            _ = stop.changed() => break,
            item = rx.recv() => match item {
                Some(item) => item,
                None => break,
            },
        };
        let Ok(Some(delivery)) = result else { continue };
        let lapin::message::Delivery { exchange, routing_key, properties, data, acker, .. } = delivery;
        let queue = QUEUES[q].0;
        let id = properties.message_id().as_ref().map(|s| s.as_str().to_string());
        let Some(key) = id.as_deref().and_then(Key::parse) else {
            shared.consumer.lock().unwrap().live_corrupt.push(format!("{queue}: a delivery with message-id {id:?}"));
            continue;
        };
        if key.cycle != cycle || !shared.was_published(key) {
            shared.consumer.lock().unwrap().live_unexpected.push(format!(
                "{queue}: delivered {key}, which was not published in cycle {cycle} (a purge that did not hold?)"
            ));
            continue;
        }
        let ack = w.acks(key, q);
        let observed = Observed {
            queue: q,
            message_id: id,
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            delivery_mode: *properties.delivery_mode(),
            body: data,
        };
        let problem = content_problem(&w, key, &observed);
        {
            let mut log = shared.consumer.lock().unwrap();
            if let Some(problem) = problem {
                log.live_corrupt.push(format!("{queue}: delivered {key}: {problem}"));
            }
            log.received.insert((q, key));
            if ack {
                log.acked.insert((q, key));
            }
        }
        if ack {
            // Not awaited in line: lapin resolves an ack only once its frame
            // is flushed, and waiting for each would throttle the consumer.
            tokio::spawn(async move {
                let _ = acker.ack(BasicAckOptions::default()).await;
            });
        }
    }
}
