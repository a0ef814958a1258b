//! Figures about the process itself, for the management API's node and
//! the Prometheus endpoint: resident memory and the memory available to
//! the process, file descriptors, uptime.

use std::sync::OnceLock;
use std::time::Instant;

static STARTED: OnceLock<Instant> = OnceLock::new();

/// Marks the process start (called early in `main`; later calls change nothing).
pub fn mark_start() {
    STARTED.get_or_init(Instant::now);
}

pub fn uptime_ms() -> u64 {
    STARTED.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// (resident memory, memory available to the process), in bytes: the
/// cgroup's limit when one is set, else the machine's memory.
pub fn memory() -> (u64, u64) {
    (resident_memory(), total_memory())
}

/// The process's resident memory, in bytes: one small read of
/// `/proc/self/statm` (the memory monitor samples it 50 times a second).
pub fn resident_memory() -> u64 {
    // SAFETY: sysconf reads a system setting and touches no memory of ours.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map_or(0, |pages| pages * page)
}

fn total_memory() -> u64 {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|s| s.trim().parse::<u64>().ok());
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    match cgroup {
        Some(limit) if machine == 0 || limit < machine => limit,
        _ => machine,
    }
}

static NODE_NAME: OnceLock<String> = OnceLock::new();

/// Names this node (`--node-name`), before anything reads the name; false
/// if it was named already.
pub fn set_node_name(name: &str) -> bool {
    NODE_NAME.set(name.to_string()).is_ok()
}

/// The node name shown where RabbitMQ shows its node: the one set with
/// [`set_node_name`], else `warren@HOST`. Read once.
pub fn node_name() -> String {
    NODE_NAME
        .get_or_init(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("warren@{}", host.trim())
        })
        .clone()
}

/// File descriptors open in this process.
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// The process's limit on open file descriptors.
pub fn fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if ok { limit.rlim_cur } else { 0 }
}
