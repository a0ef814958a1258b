//! The clients of a cluster run: confirmed publishers and acking consumers,
//! each on a node picked at random, moving to another node when theirs
//! fails; what each was promised and given is recorded for the verdict.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a client waits for a connection, a confirm or a delivery
/// before it counts its node as failed and moves.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// A consumer's prefetch.
const PREFETCH: u16 = 10;

/// What the clients saw, as the verdict reads it.
#[derive(Default)]
pub struct Record {
    /// Every message a publisher sent (whatever became of it).
    pub sent: HashSet<String>,
    /// Confirmed (basic.ack), with when the confirm arrived.
    pub confirmed: HashMap<String, Instant>,
    /// For each confirmed message, the node its publisher was connected
    /// to and when it was published.
    pub confirmed_via: HashMap<String, (String, Instant)>,
    pub nacked: HashSet<String>,
    /// How often each message was delivered (to consumers and the drain).
    pub delivered: HashMap<String, u32>,
}

/// The running nodes' names and AMQP URLs as they are now (a restarted
/// node has a new port).
pub type Urls = Arc<Mutex<Vec<(String, String)>>>;

fn pick(urls: &Urls) -> Option<(String, String)> {
    let urls = urls.lock().ok()?;
    (!urls.is_empty()).then(|| urls[fastrand::usize(..urls.len())].clone())
}

async fn connect(url: &str, name: &str) -> Option<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(CLIENT_TIMEOUT, Connection::connect(url, properties)).await.ok()?.ok()
}

/// A publisher: publishes `p{id}-{n}` persistent messages to `queue` one
/// at a time, each confirmed before the next, until `stop`.
pub fn publisher(
    id: usize,
    queue: String,
    urls: Urls,
    record: Arc<Mutex<Record>>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !*stop.borrow() {
            let Some((node, url)) = pick(&urls) else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Some(conn) = connect(&url, &format!("clustertest-publisher-{id}")).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let channel = async {
                let ch = conn.create_channel().await.ok()?;
                ch.confirm_select(ConfirmSelectOptions::default()).await.ok()?;
                Some(ch)
            };
            let Some(ch) = tokio::time::timeout(CLIENT_TIMEOUT, channel).await.ok().flatten() else { continue };
            while !*stop.borrow() {
                let body = format!("p{id}-{n}");
                n += 1;
                record.lock().expect("record").sent.insert(body.clone());
                let properties = BasicProperties::default().with_delivery_mode(2);
                let published = Instant::now();
                let publish = ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    properties,
                );
                let confirmed = tokio::time::timeout(CLIENT_TIMEOUT, async { publish.await?.await }).await;
                match confirmed {
                    Ok(Ok(Confirmation::Ack(_))) => {
                        let mut record = record.lock().expect("record");
                        record.confirmed.insert(body.clone(), Instant::now());
                        record.confirmed_via.insert(body, (node.clone(), published));
                    }
                    Ok(Ok(Confirmation::Nack(_))) => {
                        record.lock().expect("record").nacked.insert(body);
                    }
                    // No answer, or the connection failed: its fate is unknown; another node.
                    _ => break,
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "moving".into())).await;
        }
    })
}

/// A consumer: consumes `queue` with a prefetch, acks each delivery, and
/// moves to another node when its own fails, until `stop`.
pub fn consumer(
    id: usize,
    queue: String,
    urls: Urls,
    record: Arc<Mutex<Record>>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !*stop.borrow() {
            if consume_once(id, &queue, &urls, &record, &stop, None).await.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
}

/// Consumes on one node until `stop`, a failure, or (with `idle`) that
/// long without a delivery. None: the node could not be used at all.
pub async fn consume_once(
    id: usize,
    queue: &str,
    urls: &Urls,
    record: &Mutex<Record>,
    stop: &watch::Receiver<bool>,
    idle: Option<Duration>,
) -> Option<()> {
    let (_, url) = pick(urls)?;
    let conn = connect(&url, &format!("clustertest-consumer-{id}")).await?;
    let setup = async {
        let ch = conn.create_channel().await.ok()?;
        ch.basic_qos(PREFETCH, BasicQosOptions::default()).await.ok()?;
        let tag = format!("clustertest-{id}-{}", fastrand::u32(..));
        let consumer =
            ch.basic_consume(queue.into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default());
        consumer.await.ok()
    };
    let Some(mut consumer) = tokio::time::timeout(CLIENT_TIMEOUT, setup).await.ok().flatten() else {
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "moving".into())).await;
        return None;
    };
    while !*stop.borrow() {
        let wait = idle.unwrap_or(Duration::from_secs(1));
        let delivery = match tokio::time::timeout(wait, consumer.next()).await {
            Ok(Some(Ok(delivery))) => delivery,
            Ok(_) => break,
            Err(_) if idle.is_some() => break,
            // Nothing for a second: look at `stop` again.
            Err(_) => continue,
        };
        let body = String::from_utf8_lossy(&delivery.data).into_owned();
        *record.lock().expect("record").delivered.entry(body).or_default() += 1;
        let acked = tokio::time::timeout(CLIENT_TIMEOUT, delivery.ack(BasicAckOptions::default())).await;
        if !matches!(acked, Ok(Ok(_))) {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "done".into())).await;
    Some(())
}
