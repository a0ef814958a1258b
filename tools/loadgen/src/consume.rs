//! The consumer loop: one connection consuming one queue, acking each
//! message (or every N with `multiple`) unless the server auto-acks.
//!
//! Messages are reassembled from basic.deliver, content header and body
//! frames; the first 8 body bytes carry the publisher's wall clock, so each
//! complete message yields a publish-to-delivery latency. All acks produced
//! by one read go out in one write.

use std::rc::Rc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use hdrhistogram::Histogram;
use warren::protocol::method::BasicAck;
use warren::protocol::{Frame, Method};

use crate::conn::Conn;
use crate::stats::{Shared, new_histogram, wall_ns};

const IDLE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub struct ConsumePlan {
    /// The server acks on delivery (basic.consume no-ack).
    pub autoack: bool,
    /// Ack every N messages with `multiple`; 1 = each message.
    pub multi_ack: u64,
}

pub struct ConsumeReport {
    /// Publish-to-delivery times in microseconds, while measuring.
    pub latency: Histogram<u64>,
}

/// The message being reassembled.
#[derive(Default)]
struct Incoming {
    delivery_tag: u64,
    /// Body bytes still to come; None until the content header arrived.
    remaining: Option<u64>,
    /// The publisher's timestamp, from the first body frame.
    stamp: Option<u64>,
}

/// Runs until the run stops or the consume target is met. `conn` must
/// already be consuming (basic.consume-ok received).
pub async fn consume(mut conn: Conn, plan: ConsumePlan, shared: Rc<Shared>) -> Result<ConsumeReport> {
    let mut latency = new_histogram();
    let mut msg: Option<Incoming> = None;
    let mut unacked = 0u64;
    let mut last_tag = 0u64;
    'run: while !shared.stop.get() && !shared.consumed_all() {
        let progress = conn.read_available()? > 0;
        while let Some(frame) = conn.next_frame()? {
            let done = match frame {
                Frame::Method { method: Method::BasicDeliver(d), .. } => {
                    msg = Some(Incoming { delivery_tag: d.delivery_tag, ..Default::default() });
                    false
                }
                Frame::Method { method: Method::BasicCancel(c), .. } => {
                    return Err(anyhow!("consumer '{}' cancelled by the server (queue deleted?)", c.consumer_tag));
                }
                Frame::Method { method, .. } => match conn.closed_by_server(&method) {
                    Some(err) => return Err(err),
                    None => false,
                },
                Frame::Header { header, .. } => match msg.as_mut() {
                    Some(m) if m.remaining.is_none() => {
                        m.remaining = Some(header.body_size);
                        header.body_size == 0
                    }
                    _ => false,
                },
                Frame::Body { payload, .. } => match msg.as_mut() {
                    Some(Incoming { remaining: Some(left), stamp, .. }) => {
                        if stamp.is_none() && payload.len() >= 8 {
                            let mut ns = [0u8; 8];
                            ns.copy_from_slice(&payload[..8]);
                            *stamp = Some(u64::from_le_bytes(ns));
                        }
                        *left = left.saturating_sub(payload.len() as u64);
                        *left == 0
                    }
                    _ => false,
                },
                Frame::Heartbeat => false,
            };
            if !done {
                continue;
            }
            let Some(m) = msg.take() else { continue };
            if let Some(sent_at) = m.stamp.filter(|_| shared.measuring.get()) {
                latency.saturating_record((wall_ns().saturating_sub(sent_at) / 1000).max(1));
            }
            if !plan.autoack {
                last_tag = m.delivery_tag;
                unacked += 1;
                if unacked >= plan.multi_ack {
                    conn.push(BasicAck { delivery_tag: m.delivery_tag, multiple: plan.multi_ack > 1 });
                    unacked = 0;
                }
            }
            if shared.count_consumed() {
                break 'run;
            }
        }
        conn.write_available()?;
        if progress {
            tokio::task::yield_now().await;
        } else {
            conn.wait_io(IDLE).await?;
        }
    }
    if unacked > 0 {
        conn.push(BasicAck { delivery_tag: last_tag, multiple: true });
    }
    conn.flush().await?;
    conn.close().await;
    Ok(ConsumeReport { latency })
}
