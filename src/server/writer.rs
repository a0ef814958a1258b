//! The per-connection writer: takes [`Outgoing`] items from the connection's
//! queue, encodes as many as are waiting into one buffer and writes it with
//! one syscall, and sends heartbeats when the connection has been quiet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use crate::broker::{Broker, OutboundShared, Outgoing};
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

pub async fn run(
    mut socket: OwnedWriteHalf,
    mut rx: UnboundedReceiver<Outgoing>,
    shared: Arc<OutboundShared>,
    tuning: Arc<WriterTuning>,
    broker: Arc<Broker>,
    connection_id: u64,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut buf = BytesMut::with_capacity(64 * 1024);
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
                    if socket.write_all(&buf).await.is_err() {
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
            if socket.write_all(&buf).await.is_err() {
                break;
            }
            last_write = Instant::now();
        }
        buf.clear();
        if buf.capacity() > 1 << 20 {
            // Do not keep a large buffer alive after a burst of big messages.
            buf = BytesMut::with_capacity(64 * 1024);
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
