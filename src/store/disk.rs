//! The free-disk alarm, as RabbitMQ's `disk_free_limit`: a thread watches
//! the free space of the log's file system; below the limit the alarm is
//! raised (connections that publish are blocked and stop being read, see
//! the server), and it clears once space is back above the limit. Consumers
//! keep going meanwhile, so acks let compaction give space back.
//!
//! The check is one `statvfs`: after every MiB the log's writer writes (a
//! fast publisher must not fill the disk between two checks), and from a
//! thread every second, ten times a second once free space is within twice
//! the limit (so the alarm clears while the log is idle).

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

pub(super) fn spawn(store: Arc<LogStore>) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("warren-disk-monitor".into())
        .spawn(move || {
            while !store.stopping.load(Ordering::Acquire) {
                let Some(near) = store.check_disk() else {
                    tracing::warn!("cannot tell the free space of the log's file system; no free-disk alarm");
                    return;
                };
                std::thread::sleep(if near { Duration::from_millis(100) } else { Duration::from_secs(1) });
            }
        })
        .map_err(|e| format!("cannot start the disk monitor thread: {e}"))
}

impl LogStore {
    /// Compares free space with the limit and raises or clears the alarm.
    /// Called by the monitor thread and by the writer after every pass, so
    /// a fast publisher cannot fill the disk between two checks. Returns
    /// whether free space is within twice the limit; `None` when the free
    /// space cannot be read (or there is no limit).
    pub(super) fn check_disk(&self) -> Option<bool> {
        let limit = self.options.disk_free_limit;
        if limit == 0 {
            return None;
        }
        let free = self.io.free_space()?;
        let raised = free < limit;
        let was = self.disk_alarm.borrow().raised;
        if raised != was {
            if raised {
                tracing::warn!(
                    "free disk space alarm: {free} bytes free, below the limit of {limit}; publishers are blocked"
                );
            } else {
                tracing::info!("free disk space alarm cleared: {free} bytes free (limit {limit})");
            }
        }
        self.disk_alarm.send_if_modified(|a| {
            let changed = a.raised != raised;
            *a = DiskAlarm { raised, free };
            changed
        });
        Some(free < limit.saturating_mul(2))
    }
}
