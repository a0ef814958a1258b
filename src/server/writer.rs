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
        if buf.capacity() > 256 << 10 {
            // Do not keep a large buffer alive after a burst of big messages.
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
