//! The producer loop: one connection publishing to one queue through the
//! default exchange, as fast as allowed by its confirm window and its rate.
//!
//! A message is written from a pre-encoded template (basic.publish, content
//! header, body frames) with the first 8 body bytes overwritten by the wall
//! clock in ns, which the consumers turn into publish-to-delivery latency.
//! Publisher confirms are tracked per delivery tag, so the confirm latency
//! (publish to basic.ack) is measured too.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use warren::protocol::method::BasicPublish;
use warren::protocol::{BasicProperties, Frame, Method, encode_content, encode_method};

use crate::conn::{CHANNEL, Conn, WRITE_HIGH};
use crate::stats::{Shared, new_histogram, wall_ns};

/// Longest sleep when there is nothing to do, so a stop is noticed quickly.
const IDLE: Duration = Duration::from_millis(20);

/// What one producer does.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    pub queue: String,
    pub size: usize,
    pub persistent: bool,
    /// Unconfirmed messages allowed in flight; 0 = no publisher confirms.
    pub confirm_window: usize,
    /// Messages per second; 0 = unthrottled.
    pub rate: f64,
    /// Messages to publish; 0 = until told to stop.
    pub count: u64,
    /// Publish with a random priority in 0..=N.
    pub priorities: Option<u8>,
    /// The exchange to publish to ("" = the default exchange, to `queue`).
    pub exchange: String,
}

/// What a producer hands back when it is done.
pub struct PublishReport {
    /// Publish-to-confirm times in microseconds, while measuring.
    pub confirm_latency: Histogram<u64>,
}

/// One pre-encoded message and where its timestamp goes.
struct Template {
    frames: Vec<u8>,
    stamp_at: usize,
}

fn templates(plan: &PublishPlan, frame_max: u32) -> Vec<Template> {
    let levels: Vec<Option<u8>> = match plan.priorities {
        Some(max) => (0..=max).map(Some).collect(),
        None => vec![None],
    };
    let body = vec![0u8; plan.size];
    levels
        .into_iter()
        .map(|priority| {
            let props = BasicProperties {
                delivery_mode: Some(if plan.persistent { 2 } else { 1 }),
                priority,
                ..Default::default()
            };
            let mut buf = BytesMut::new();
            let publish =
                BasicPublish { exchange: plan.exchange.clone(), routing_key: plan.queue.clone(), ..Default::default() };
            encode_method(&mut buf, CHANNEL, &Method::BasicPublish(publish));
            encode_content(&mut buf, CHANNEL, &props.to_bytes(), &body, frame_max);
            // The first body frame starts 7 header bytes after the content
            // header frame, whose payload is 14 bytes plus the properties.
            let first_body = buf.len() - body_frames_len(plan.size, frame_max);
            Template { frames: buf.to_vec(), stamp_at: first_body + 7 }
        })
        .collect()
}

/// Bytes taken by the body frames of a `size`-byte body.
fn body_frames_len(size: usize, frame_max: u32) -> usize {
    let chunk = (frame_max as usize).saturating_sub(8).max(1);
    size + size.div_ceil(chunk) * 8
}

/// Delivery tags not yet confirmed, oldest first: tag `base + i` was
/// published at `sent_ns[i]` (0 once confirmed out of order).
struct Unconfirmed {
    base: u64,
    sent_ns: VecDeque<u64>,
    outstanding: usize,
}

impl Unconfirmed {
    fn push(&mut self, ns: u64) {
        self.sent_ns.push_back(ns.max(1));
        self.outstanding += 1;
    }

    /// Settles `tag` (and every earlier one when `multiple`); calls `each`
    /// with the publish time of every message newly settled.
    fn settle(&mut self, tag: u64, multiple: bool, mut each: impl FnMut(u64)) {
        if tag < self.base {
            return;
        }
        let last = (tag - self.base) as usize;
        if last >= self.sent_ns.len() {
            return;
        }
        let first = if multiple { 0 } else { last };
        for slot in self.sent_ns.range_mut(first..=last) {
            if *slot != 0 {
                each(*slot);
                *slot = 0;
                self.outstanding -= 1;
            }
        }
        while self.sent_ns.front() == Some(&0) {
            self.sent_ns.pop_front();
            self.base += 1;
        }
    }
}

/// A small xorshift generator: random priorities need no quality, only speed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

pub async fn publish(mut conn: Conn, plan: PublishPlan, shared: Rc<Shared>, seed: u64) -> Result<PublishReport> {
    let templates = templates(&plan, conn.frame_max);
    let mut rng = Rng(seed | 1);
    let mut confirm_latency = new_histogram();
    let confirms = plan.confirm_window > 0;
    let mut unconfirmed = Unconfirmed { base: 1, sent_ns: VecDeque::new(), outstanding: 0 };
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let mut progress = conn.read_available()? > 0;
        while let Some(frame) = conn.next_frame()? {
            let Frame::Method { method, .. } = frame else { continue };
            if let Some(err) = conn.closed_by_server(&method) {
                return Err(err);
            }
            let (tag, multiple, ok) = match method {
                Method::BasicAck(a) => (a.delivery_tag, a.multiple, true),
                Method::BasicNack(n) => (n.delivery_tag, n.multiple, false),
                _ => continue,
            };
            let (now, measuring) = (wall_ns(), shared.measuring.get());
            let mut settled = 0;
            unconfirmed.settle(tag, multiple, |sent_at| {
                settled += 1;
                if measuring {
                    confirm_latency.saturating_record((now.saturating_sub(sent_at) / 1000).max(1));
                }
            });
            let counter = if ok { &shared.confirmed } else { &shared.nacked };
            counter.set(counter.get() + settled);
        }

        let stopping = shared.stop.get() || (plan.count > 0 && sent >= plan.count);
        if stopping && unconfirmed.outstanding == 0 && !conn.pending_write() {
            break;
        }
        let mut wait = IDLE;
        if !stopping {
            let mut budget = if plan.count > 0 { plan.count - sent } else { u64::MAX };
            if confirms {
                budget = budget.min(plan.confirm_window.saturating_sub(unconfirmed.outstanding) as u64);
            }
            if plan.rate > 0.0 {
                let due = (start.elapsed().as_secs_f64() * plan.rate) as u64 + 1;
                budget = budget.min(due.saturating_sub(sent));
                let next = start + Duration::from_secs_f64(sent as f64 / plan.rate);
                wait = wait.min(next.saturating_duration_since(Instant::now()).max(Duration::from_micros(200)));
            }
            let mut n = 0;
            while n < budget && conn.wbuf.len() < WRITE_HIGH {
                let t = &templates[if templates.len() > 1 { rng.below(templates.len()) } else { 0 }];
                let at = conn.wbuf.len() + t.stamp_at;
                conn.wbuf.extend_from_slice(&t.frames);
                let now = wall_ns();
                conn.wbuf[at..at + 8].copy_from_slice(&now.to_le_bytes());
                if confirms {
                    unconfirmed.push(now);
                }
                n += 1;
            }
            if n > 0 {
                sent += n;
                shared.sent.set(shared.sent.get() + n);
                progress = true;
            }
        }
        conn.write_available()?;
        if progress {
            tokio::task::yield_now().await;
        } else {
            conn.wait_io(wait).await?;
        }
        if stopping && shared.drain_deadline.get().is_some_and(|d| Instant::now() >= d) {
            bail!("{} publishes still unconfirmed when the run ended", unconfirmed.outstanding);
        }
    }
    shared.producer_finished();
    conn.close().await;
    Ok(PublishReport { confirm_latency })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_stamp_lands_on_the_body() {
        let plan = PublishPlan {
            queue: "q".into(),
            size: 1024,
            persistent: true,
            confirm_window: 0,
            rate: 0.0,
            count: 0,
            priorities: None,
            exchange: String::new(),
        };
        let t = &templates(&plan, 131_072)[0];
        // frame type 3 (body), channel 1, size 1024, then the body
        assert_eq!(&t.frames[t.stamp_at - 7..t.stamp_at], &[3, 0, 1, 0, 0, 4, 0]);
        assert_eq!(t.frames.len() - t.stamp_at, 1024 + 1);
    }

    #[test]
    fn confirms_single_multiple_and_out_of_order() {
        let mut u = Unconfirmed { base: 1, sent_ns: VecDeque::new(), outstanding: 0 };
        for ns in 1..=5 {
            u.push(ns);
        }
        let mut seen = vec![];
        u.settle(3, false, |t| seen.push(t));
        assert_eq!((u.outstanding, u.base), (4, 1));
        u.settle(4, true, |t| seen.push(t));
        assert_eq!((u.outstanding, u.base), (1, 5));
        u.settle(9, false, |t| seen.push(t));
        u.settle(5, false, |t| seen.push(t));
        assert_eq!(seen, vec![3, 1, 2, 4, 5]);
        assert_eq!(u.outstanding, 0);
    }
}
