//! The per-connection writer: takes [`Outgoing`] items from the connection's
//! queue, encodes as many as are waiting into one buffer and writes it with
//! one syscall, and sends heartbeats when the connection has been quiet. A
//! write the peer does not take within the send timeout (a client that
//! stopped reading) ends the connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use crate::broker::{Broker, BrokerEvent, OutboundShared, Outgoing};
use crate::protocol::frame::{encode_content, encode_heartbeat, encode_method, encode_method_with};
use crate::protocol::method::encode_deliver;

/// Settings the connection task learns during the handshake.
#[derive(Debug, Default)]
pub struct WriterTuning {
    pub frame_max: AtomicU32,
    /// Negotiated heartbeat in seconds; 0 = none.
    pub heartbeat: AtomicU16,
}

/// Most items encoded into one write.
const BATCH: usize = 256;

/// A write buffer larger than this (grown for a burst of big messages) is
/// let go after the write; one the size of an ordinary batch is kept
/// (256 deliveries of 1 KiB took a fresh allocation, its page faults and
/// a chain of copies as it grew, on every batch).
const KEPT_BUFFER: usize = 4 << 20;

/// About how many bytes an item encodes to (frame headers and a method's
/// fields over-estimated): the buffer is sized once per batch.
fn encoded_size(item: &Outgoing) -> usize {
    const FRAMING: usize = 160;
    match item {
        Outgoing::Method { .. } => FRAMING,
        Outgoing::Content { message, .. } | Outgoing::Deliver { message, .. } => {
            FRAMING + message.exchange.len() + message.routing_key.len() + message.properties.len() + message.body.len()
        }
        Outgoing::Raw(bytes) => bytes.len(),
        Outgoing::Shutdown => 0,
    }
}

/// What the writer shares with its connection.
pub struct WriterContext {
    pub shared: Arc<OutboundShared>,
    pub tuning: Arc<WriterTuning>,
    pub broker: Arc<Broker>,
    pub connection_id: u64,
    /// Where the writer tells the connection that the peer stopped reading.
    pub events: UnboundedSender<BrokerEvent>,
    /// How long one write may wait for the peer to take it.
    pub send_timeout: Duration,
}

/// Writes all of `buf`, failing if the peer takes none of it for `limit`.
async fn send<W: AsyncWrite + Unpin>(socket: &mut W, buf: &[u8], limit: Duration) -> Result<(), String> {
    match tokio::time::timeout(limit, socket.write_all(buf)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("socket error: {e}")),
        Err(_) => {
            Err(format!("the client did not read what was sent to it for {} s (send timeout)", limit.as_secs_f64()))
        }
    }
}

pub async fn run<W: AsyncWrite + Unpin>(mut socket: W, mut rx: UnboundedReceiver<Outgoing>, ctx: WriterContext) {
    let WriterContext { shared, tuning, broker, connection_id, events, send_timeout } = ctx;
    let stalled = |reason: String| {
        let _ = events.send(BrokerEvent::Dropped { reason });
    };
    let mut batch = Vec::with_capacity(BATCH);
    // Grows with what is written: an idle connection holds little.
    let mut buf = BytesMut::new();
    let mut last_write = Instant::now();
    loop {
        let heartbeat = tuning.heartbeat.load(Ordering::Relaxed);
        // Send a heartbeat when nothing went out for half the interval, as RabbitMQ does.
        let idle_deadline = if heartbeat == 0 {
            Instant::now() + Duration::from_secs(1)
        } else {
            last_write + Duration::from_millis(heartbeat as u64 * 500)
        };
        tokio::select! {
            received = rx.recv_many(&mut batch, BATCH) => {
                if received == 0 {
                    break;
                }
            }
            _ = tokio::time::sleep_until(idle_deadline) => {
                if heartbeat != 0 {
                    encode_heartbeat(&mut buf);
                    if let Err(why) = send(&mut socket, &buf, send_timeout).await {
                        stalled(why);
                        break;
                    }
                    buf.clear();
                    last_write = Instant::now();
                }
                continue;
            }
        }
        let frame_max = tuning.frame_max.load(Ordering::Relaxed);
        let mut shutdown = false;
        // Room for the whole batch at once, instead of doubling (and
        // copying what is encoded) as it fills.
        buf.reserve(batch.iter().map(encoded_size).sum());
        for item in &batch {
            match item {
                Outgoing::Method { channel, method } => encode_method(&mut buf, *channel, method),
                Outgoing::Content { channel, method, message } => {
                    encode_method(&mut buf, *channel, method);
                    encode_content(&mut buf, *channel, &message.properties, &message.body, frame_max);
                }
                Outgoing::Deliver { channel, consumer_tag, delivery_tag, redelivered, message } => {
                    encode_method_with(&mut buf, *channel, |b| {
                        encode_deliver(
                            b,
                            consumer_tag,
                            *delivery_tag,
                            *redelivered,
                            &message.exchange,
                            &message.routing_key,
                        )
                    });
                    encode_content(&mut buf, *channel, &message.properties, &message.body, frame_max);
                }
                Outgoing::Raw(bytes) => buf.extend_from_slice(bytes),
                Outgoing::Shutdown => {
                    shutdown = true;
                    break;
                }
            }
        }
        if !buf.is_empty() {
            if let Err(why) = send(&mut socket, &buf, send_timeout).await {
                stalled(why);
                break;
            }
            last_write = Instant::now();
        }
        buf.clear();
        if buf.capacity() > KEPT_BUFFER {
            buf = BytesMut::new();
        }
        if shared.written(&batch) {
            broker.resume_connection(connection_id);
        }
        batch.clear();
        if shutdown {
            let _ = socket.shutdown().await;
            break;
        }
    }
}
