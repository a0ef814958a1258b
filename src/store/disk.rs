//! The free-disk alarm, as RabbitMQ's `disk_free_limit`: a thread watches
//! the free space of the log's file system; below the limit the alarm is
//! raised (connections that publish are blocked and stop being read, see
//! the server), and it clears once space is back above the limit. Consumers
//! keep going meanwhile, so acks let compaction give space back.
//!
//! The check is one `statvfs`: every second, and ten times a second once
//! free space is within twice the limit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use super::log::LogStore;

/// The alarm's state, for connections to wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskAlarm {
    pub raised: bool,
    /// Bytes free at the last check.
    pub free: u64,
}

pub(super) fn spawn(store: Arc<LogStore>, limit: u64) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("warren-disk-monitor".into())
        .spawn(move || {
            while !store.stopping.load(Ordering::Acquire) {
                let Some(free) = store.io.free_space() else {
                    tracing::warn!("cannot tell the free space of the log's file system; no free-disk alarm");
                    return;
                };
                let raised = free < limit;
                let was = store.disk_alarm.borrow().raised;
                if raised != was {
                    if raised {
                        tracing::warn!(
                            "free disk space alarm: {free} bytes free, below the limit of {limit}; publishers are blocked"
                        );
                    } else {
                        tracing::info!("free disk space alarm cleared: {free} bytes free (limit {limit})");
                    }
                }
                store.disk_alarm.send_if_modified(|a| {
                    let changed = a.raised != raised;
                    *a = DiskAlarm { raised, free };
                    changed
                });
                let near = free < limit.saturating_mul(2);
                std::thread::sleep(if near { Duration::from_millis(100) } else { Duration::from_secs(1) });
            }
        })
        .map_err(|e| format!("cannot start the disk monitor thread: {e}"))
}
