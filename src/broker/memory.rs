//! Bounded memory, as RabbitMQ's memory alarm: a high watermark on the
//! process's resident memory (a fraction of the machine's or the cgroup's
//! memory, 0.4 by default, or a number of bytes). A thread samples the
//! resident set ten times a second (fifty while paging):
//!
//! - above half the watermark (the paging ratio, as RabbitMQ's
//!   `vm_memory_high_watermark_paging_ratio`) queues page out:
//!   every body older than the newest [`PRESSURE_WINDOW`] of its queue goes
//!   to the log ([`LogStore::spill`] for transient ones; persistent ones are
//!   there already) and leaves memory; the loader reads them back, in
//!   order, ahead of the consumers;
//! - while queues page out slower than messages arrive (the disk is the
//!   limit), connections that publish wait for them, as in the log's own
//!   flow control: memory stays near the paging ratio;
//! - above the watermark the alarm is raised: connections that publish stop
//!   being read and get `connection.blocked` (see the server); consumers go
//!   on, and `connection.unblocked` follows once memory is back below.
//!
//! A watermark of 0 raises the alarm at once and so stops all publishing,
//! as in RabbitMQ.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::StateLock;
use serde::Deserialize;
use tokio::sync::watch;

use super::message::Message;
use super::queue::{HOT_WINDOW, Queue};
use crate::store::LogStore;

/// Queues page out above this fraction of the watermark by default
/// (RabbitMQ's `vm_memory_high_watermark_paging_ratio`).
pub const PAGING_RATIO: f64 = 0.5;
/// Bodies each queue level keeps in memory while paging.
pub const PRESSURE_WINDOW: usize = 64;
/// Bytes waiting for the log's writer above which no more bodies are paged
/// out until it catches up (a page-out copies the body into the log's
/// buffers until they are written).
const SPILL_BACKLOG: usize = 8 << 20;
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How often every queue is paged out while memory is above the paging ratio.
const SWEEP_EVERY: Duration = Duration::from_millis(20);
/// How often freed memory is handed back to the system while paging.
const TRIM_EVERY: Duration = Duration::from_millis(200);

/// The memory high watermark: a fraction of the memory available to the
/// process, or a number of bytes (RabbitMQ's `vm_memory_high_watermark`
/// relative and absolute forms).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "WatermarkText")]
pub enum Watermark {
    Relative(f64),
    Absolute(u64),
}

impl Default for Watermark {
    fn default() -> Self {
        Watermark::Relative(0.4)
    }
}

impl Watermark {
    /// The watermark in bytes, given the memory available to the process.
    pub fn bytes(self, available: u64) -> u64 {
        match self {
            Watermark::Relative(f) => (available as f64 * f) as u64,
            Watermark::Absolute(b) => b,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WatermarkText {
    Integer(u64),
    Fraction(f64),
    Text(String),
}

impl TryFrom<WatermarkText> for Watermark {
    type Error = String;
    fn try_from(v: WatermarkText) -> Result<Watermark, String> {
        match v {
            WatermarkText::Integer(n) => Ok(Watermark::Absolute(n)),
            WatermarkText::Fraction(f) => relative(f, &f.to_string()),
            WatermarkText::Text(t) => t.parse(),
        }
    }
}

fn relative(f: f64, text: &str) -> Result<Watermark, String> {
    if f.is_finite() && f >= 0.0 {
        Ok(Watermark::Relative(f))
    } else {
        Err(format!("invalid memory high watermark '{text}': a fraction must be 0 or more"))
    }
}

impl std::str::FromStr for Watermark {
    type Err = String;
    /// `0.4` (a fraction: it has a decimal point) or a size: `536870912`,
    /// `512MiB`, `2GB`.
    fn from_str(text: &str) -> Result<Watermark, String> {
        let text = text.trim();
        if text.contains('.') {
            let f: f64 = text.parse().map_err(|_| {
                format!("invalid memory high watermark '{text}': expected a fraction such as 0.4 or a size such as 2GB")
            })?;
            return relative(f, text);
        }
        let size: crate::config::Size = text.parse().map_err(|_| {
            format!("invalid memory high watermark '{text}': expected a fraction such as 0.4 or a size such as 2GB")
        })?;
        Ok(Watermark::Absolute(size.0))
    }
}

/// The alarm's state and the latest sample, shared with connections, the
/// API and the publish path.
#[derive(Debug)]
pub struct MemoryMonitor {
    /// The watermark in bytes; `u64::MAX` while no monitor runs.
    limit: AtomicU64,
    /// Paging starts above `limit` times this (f64 bits).
    paging_ratio: AtomicU64,
    resident: AtomicU64,
    paging: AtomicBool,
    /// While paging, bodies arrive faster than the log takes them: queues
    /// could not page out all they should.
    spill_behind: AtomicBool,
    alarm: watch::Sender<bool>,
}

impl Default for MemoryMonitor {
    fn default() -> Self {
        MemoryMonitor {
            limit: AtomicU64::new(u64::MAX),
            paging_ratio: AtomicU64::new(PAGING_RATIO.to_bits()),
            resident: AtomicU64::new(0),
            paging: AtomicBool::new(false),
            spill_behind: AtomicBool::new(false),
            alarm: watch::channel(false).0,
        }
    }
}

impl MemoryMonitor {
    /// Changes to the alarm (true: raised), for connections to wait on.
    pub fn alarm(&self) -> watch::Receiver<bool> {
        self.alarm.subscribe()
    }

    pub fn alarm_raised(&self) -> bool {
        *self.alarm.borrow()
    }

    /// Queues page their bodies out (memory above the paging ratio).
    pub fn paging(&self) -> bool {
        self.paging.load(Ordering::Relaxed)
    }

    pub(super) fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Publishers should wait: memory is above the paging ratio and queues
    /// page out slower than messages arrive (the disk is the limit), so
    /// they are held to the disk's pace well before the watermark.
    pub fn publishers_must_wait(&self) -> bool {
        self.paging() && self.spill_behind.load(Ordering::Relaxed)
    }

    /// The watermark in bytes (`u64::MAX`: no monitor).
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Resident memory at the last sample, in bytes.
    pub fn resident(&self) -> u64 {
        self.resident.load(Ordering::Relaxed)
    }

    /// Takes a sample: updates the alarm and the paging flag.
    fn sample(&self) {
        let resident = crate::metrics::resident_memory();
        let limit = self.limit();
        self.resident.store(resident, Ordering::Relaxed);
        let raised = limit == 0 || resident > limit;
        let ratio = f64::from_bits(self.paging_ratio.load(Ordering::Relaxed));
        self.paging.store(raised || resident as f64 > limit as f64 * ratio, Ordering::Relaxed);
        self.alarm.send_if_modified(|was| {
            if *was == raised {
                return false;
            }
            if raised {
                tracing::warn!(
                    "memory alarm set: {resident} bytes resident, above the high watermark of {limit}; publishers are blocked"
                );
            } else {
                tracing::info!("memory alarm cleared: {resident} bytes resident (high watermark {limit})");
            }
            *was = raised;
            true
        });
    }
}

/// Starts the monitor thread with a watermark of `limit` bytes, paging
/// above `limit * paging_ratio`. It ends with the broker's state.
pub(super) fn spawn(
    monitor: Arc<MemoryMonitor>,
    (limit, paging_ratio): (u64, f64),
    state: Weak<StateLock>,
    store: Arc<LogStore>,
) -> std::io::Result<()> {
    monitor.limit.store(limit, Ordering::Relaxed);
    monitor.paging_ratio.store(paging_ratio.to_bits(), Ordering::Relaxed);
    monitor.sample();
    std::thread::Builder::new().name("warren-memory".into()).spawn(move || {
        let mut last_trim = Instant::now();
        let mut last_sweep = Instant::now();
        loop {
            if store.is_stopping() {
                return;
            }
            monitor.sample();
            if monitor.paging() {
                if last_sweep.elapsed() >= SWEEP_EVERY {
                    last_sweep = Instant::now();
                    let Some(state) = state.upgrade() else { return };
                    page_out_everywhere(&state, &store, &monitor);
                }
                if last_trim.elapsed() >= TRIM_EVERY {
                    last_trim = Instant::now();
                    give_back_freed_memory();
                }
                // Near the watermark a fast publisher moves memory quickly.
                std::thread::sleep(CHECK_EVERY / 5);
            } else {
                if state.strong_count() == 0 {
                    return;
                }
                std::thread::sleep(CHECK_EVERY);
            }
        }
    })?;
    Ok(())
}

/// Drops what the hot window allows of a queue's bodies (the level just
/// published to, or every level). Under memory pressure (`pressure` is the
/// monitor, when paging) transient bodies are paged out to the log first
/// and the window is smaller; returns false when the log's writer was too
/// far behind to take them all.
pub(super) fn page_out(q: &mut Queue, level: Option<u8>, store: &LogStore, pressure: Option<&MemoryMonitor>) -> bool {
    if let Some(stream) = q.stream_mut() {
        // Every message of a stream is in the log already.
        let window = if pressure.is_some() { PRESSURE_WINDOW } else { super::stream::STREAM_HOT_WINDOW };
        stream.page_out(window, |id| store.is_written(id));
        return true;
    }
    let Some(monitor) = pressure else {
        if q.store_id.is_some() {
            q.page_out(level, HOT_WINDOW, |id| store.is_written(id), None);
        }
        return true;
    };
    let mut kept_up = true;
    let mut spill = |m: &Message| -> Option<u64> {
        if store.backlog_bytes() > SPILL_BACKLOG {
            kept_up = false;
            return None;
        }
        store.spill(&m.exchange, &m.routing_key, &m.properties, &m.body).ok()
    };
    q.page_out(level, PRESSURE_WINDOW, |id| store.is_written(id), Some(&mut spill));
    if !kept_up {
        monitor.spill_behind.store(true, Ordering::Relaxed);
    }
    kept_up
}

fn page_out_everywhere(state: &StateLock, store: &LogStore, monitor: &MemoryMonitor) {
    let st = state.read();
    let mut kept_up = true;
    for v in st.vhosts.values() {
        for q in v.queues.values() {
            kept_up &= page_out(&mut q.lock(), None, store, Some(monitor));
        }
    }
    if kept_up {
        monitor.spill_behind.store(false, Ordering::Relaxed);
    }
}

/// Returns the allocator's free pages to the system, so that resident
/// memory falls once paged-out bodies were freed (glibc keeps them
/// otherwise, and the alarm would never clear).
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::Watermark;

    #[test]
    fn a_watermark_is_a_fraction_with_a_point_or_a_size() {
        assert_eq!("0.4".parse::<Watermark>(), Ok(Watermark::Relative(0.4)));
        assert_eq!("512MiB".parse::<Watermark>(), Ok(Watermark::Absolute(512 << 20)));
        assert_eq!("2GB".parse::<Watermark>(), Ok(Watermark::Absolute(2_000_000_000)));
        assert_eq!("0".parse::<Watermark>(), Ok(Watermark::Absolute(0)));
        assert!("lots".parse::<Watermark>().unwrap_err().contains("invalid memory high watermark 'lots'"));
        assert!("-0.5".parse::<Watermark>().is_err());
        assert_eq!(Watermark::Relative(0.5).bytes(1000), 500);
        assert_eq!(Watermark::Absolute(77).bytes(1000), 77);
        let config: crate::config::Config = toml::from_str("memory_high_watermark = 0.25").expect("fraction");
        assert_eq!(config.memory_high_watermark, Watermark::Relative(0.25));
        let config: crate::config::Config = toml::from_str("memory_high_watermark = \"1GiB\"").expect("size");
        assert_eq!(config.memory_high_watermark, Watermark::Absolute(1 << 30));
        let config: crate::config::Config = toml::from_str("memory_high_watermark = 1048576").expect("bytes");
        assert_eq!(config.memory_high_watermark, Watermark::Absolute(1 << 20));
    }
}
