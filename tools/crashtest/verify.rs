//! Reading back what survived a crash: the durable definitions, a probe
//! routed through the exchange, and every message in the queues.

use std::future::Future;
use std::time::Duration;

use lapin::message::DeliveryResult;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};
use tokio::sync::mpsc;

use crate::check::Observed;
use crate::message::{EXCHANGE, PROBE_ROUTING_KEY, QUEUES, Workload, probe_id};
use crate::workload::{OP_TIMEOUT, connect, op};

/// How long reading one queue may take before what is missing counts as gone.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What the broker held after the restart.
#[derive(Debug, Default)]
pub struct Observation {
    /// Every message found, per queue in delivery (queue) order.
    pub observed: Vec<Observed>,
    /// A probe was published through the exchange and confirmed.
    pub probe_sent: bool,
    /// Broken promises other than message contents: durable definitions
    /// that did not survive, counts that do not match what could be read.
    pub problems: Vec<String>,
    /// Messages per queue as passive queue.declare reported them before the probe.
    pub counts: [Option<u32>; QUEUES.len()],
}

/// Checks the definitions, publishes the probe, and reads every message
/// of every queue without acking it: the channel that read them is closed
/// at the end, which puts them back for [`crate::workload::prepare`] to purge.
pub async fn observe(url: &str, w: &Workload, cycle: u32) -> anyhow::Result<Observation> {
    let mut result = Observation::default();
    let conn = connect(url, "crashtest-check").await?;

    let ch = op("channel.open", conn.create_channel()).await?;
    let passive = ExchangeDeclareOptions { passive: true, durable: true, ..Default::default() };
    let exchange_ok = bounded(
        "passive exchange.declare",
        ch.exchange_declare(EXCHANGE.into(), ExchangeKind::Topic, passive, FieldTable::default()),
    )
    .await?;
    let exchange_exists = exchange_ok.is_ok();
    let mut ch = match exchange_ok {
        Ok(()) => ch,
        Err(e) => {
            result.problems.push(format!("exchange {EXCHANGE} did not survive the restart: {e}"));
            op("channel.open", conn.create_channel()).await?
        }
    };
    for (q, (queue, _)) in QUEUES.iter().enumerate() {
        let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
        match bounded("passive queue.declare", ch.queue_declare((*queue).into(), passive, FieldTable::default()))
            .await?
        {
            Ok(declared) => result.counts[q] = Some(declared.message_count()),
            Err(e) => {
                result.problems.push(format!("queue {queue} did not survive the restart: {e}"));
                ch = op("channel.open", conn.create_channel()).await?;
            }
        }
    }

    if exchange_exists {
        result.probe_sent = publish_probe(&conn, w, cycle, &mut result.problems).await?;
    }

    for (q, (queue, _)) in QUEUES.iter().enumerate() {
        let Some(count) = result.counts[q] else { continue };
        let want = count as usize + usize::from(result.probe_sent);
        let messages = read_queue(&conn, q, want).await?;
        if messages.len() != want {
            // A failure even if the copies in question were never promised:
            // the broker's own count is wrong, or messages vanished or
            // appeared while nothing else used the queue.
            result.problems.push(format!(
                "{queue}: queue.declare-ok announced {count} messages{}, but {} were read",
                if result.probe_sent { " (plus the probe)" } else { "" },
                messages.len()
            ));
        }
        result.observed.extend(messages);
    }
    let _ = conn.close(200, "checked".into()).await;
    Ok(result)
}

/// Like [`op`], but hands back the protocol outcome: a refusal here is a
/// finding, not an error of the driver.
async fn bounded<T>(what: &str, fut: impl Future<Output = lapin::Result<T>>) -> anyhow::Result<lapin::Result<T>> {
    tokio::time::timeout(OP_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow::anyhow!("{what} timed out after {}s", OP_TIMEOUT.as_secs()))
}

/// Publishes the probe (persistent, mandatory) through the exchange and
/// waits for its confirm; false if it could not be routed.
async fn publish_probe(
    conn: &Connection,
    w: &Workload,
    cycle: u32,
    problems: &mut Vec<String>,
) -> anyhow::Result<bool> {
    let ch = op("channel.open", conn.create_channel()).await?;
    op("confirm.select", ch.confirm_select(ConfirmSelectOptions::default())).await?;
    let properties = BasicProperties::default().with_delivery_mode(2).with_message_id(probe_id(cycle).into());
    let options = BasicPublishOptions { mandatory: true, ..Default::default() };
    let body = w.probe_body(cycle);
    let confirm = op(
        "publishing the probe",
        ch.basic_publish(EXCHANGE.into(), PROBE_ROUTING_KEY.into(), options, &body, properties),
    )
    .await?;
    let confirmation = op("the probe's confirm", confirm).await?;
    let _ = ch.close(200, "probe sent".into()).await;
    match confirmation {
        Confirmation::Ack(None) => Ok(true),
        Confirmation::Ack(Some(_)) => {
            problems.push(format!(
                "the probe published through {EXCHANGE} with key {PROBE_ROUTING_KEY} was returned unroutable: \
                 no binding survived"
            ));
            Ok(false)
        }
        Confirmation::Nack(_) => anyhow::bail!("the broker nacked the probe message"),
        Confirmation::NotRequested => anyhow::bail!("no confirm for the probe message"),
    }
}

/// Reads queue `q` with a consumer until `want` messages arrived (or the
/// time is up), then cancels and picks up anything beyond with basic.get,
/// so the read is exact even if the announced count was wrong.
async fn read_queue(conn: &Connection, q: usize, want: usize) -> anyhow::Result<Vec<Observed>> {
    let queue = QUEUES[q].0;
    let ch = op("channel.open", conn.create_channel()).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<DeliveryResult>();
    let consumer = op(
        &format!("basic.consume {queue}"),
        ch.basic_consume(queue.into(), "crashtest-check".into(), BasicConsumeOptions::default(), FieldTable::default()),
    )
    .await?;
    consumer.set_delegate(move |delivery: DeliveryResult| {
        let _ = tx.send(delivery);
        std::future::ready(())
    });

    let mut out = Vec::with_capacity(want);
    let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    let mut ended = false;
    while out.len() < want {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(Some(delivery)))) => out.push(observed(q, delivery)),
            Ok(Some(Err(e))) => anyhow::bail!("reading {queue}: {e}"),
            Ok(Some(Ok(None))) | Ok(None) => {
                ended = true;
                break;
            }
            Err(_) => break,
        }
    }
    if !ended {
        op(
            &format!("basic.cancel on {queue}"),
            ch.basic_cancel("crashtest-check".into(), BasicCancelOptions::default()),
        )
        .await?;
        // Deliveries already on the wire arrive before cancel-ok; then the
        // consumer ends.
        while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            match item {
                Ok(Some(delivery)) => out.push(observed(q, delivery)),
                Ok(None) => break,
                Err(e) => anyhow::bail!("reading {queue}: {e}"),
            }
        }
    }
    out.extend(drain_with_get(&ch, q).await?);
    // Closing the channel requeues everything read, unacked.
    let _ = ch.close(200, "read".into()).await;
    Ok(out)
}

async fn drain_with_get(ch: &Channel, q: usize) -> anyhow::Result<Vec<Observed>> {
    let queue = QUEUES[q].0;
    let mut out = Vec::new();
    while let Some(message) =
        op(&format!("basic.get {queue}"), ch.basic_get(queue.into(), BasicGetOptions::default())).await?
    {
        out.push(observed(q, message.delivery));
    }
    Ok(out)
}

fn observed(q: usize, delivery: lapin::message::Delivery) -> Observed {
    Observed {
        queue: q,
        message_id: delivery.properties.message_id().as_ref().map(|s| s.as_str().to_string()),
        exchange: delivery.exchange.to_string(),
        routing_key: delivery.routing_key.to_string(),
        delivery_mode: *delivery.properties.delivery_mode(),
        body: delivery.data,
    }
}
