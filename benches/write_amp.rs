//! Write amplification of the log with compaction, for steady traffic that
//! leaves 0 %, 1 % or 10 % of its messages behind (never acked), next to
//! the disk the log occupies and the live data it holds.
//!
//!     cargo bench --bench write_amp            # 400 MB of 1 KiB messages per run
//!     WRITE_AMP_MB=1000 cargo bench --bench write_amp
//!
//! Bytes written are what the writer handed to the disk (records, commit
//! groups, snapshots, compaction copies); bytes published are the message
//! records publishes appended. The log runs on files in a scratch
//! directory with fsync = never: write amplification does not depend on
//! the sync policy, and the figure should not wait on the disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use warren::store::format::Record;
use warren::store::io::FileIo;
use warren::store::{FsyncPolicy, LogOptions, LogStore};

const SEGMENT: u32 = 8 << 20;
const BODY: usize = 1024;

fn run(left_behind_per_mille: u64, total_mb: u64) {
    let dir = tempfile::tempdir().expect("scratch dir");
    let io = Arc::new(FileIo::new(dir.path()).expect("log dir"));
    let options = LogOptions { segment_size: SEGMENT, fsync: FsyncPolicy::Never, ..Default::default() };
    let (store, _) = LogStore::open(io, options).expect("open");
    let queue = store.allocate_queue_id();
    store
        .define(Record::QueueDeclare {
            queue,
            vhost: "/".into(),
            name: "q".into(),
            auto_delete: false,
            arguments: Bytes::new(),
        })
        .expect("declare");
    let body = vec![0x5au8; BODY];
    let mut rng = fastrand::Rng::with_seed(left_behind_per_mille);
    let started = Instant::now();
    let mut published = 0u64;
    let mut max_disk = 0u64;
    let target = total_mb << 20;
    while published < target {
        // A batch in flight, then acked, but for the messages left behind.
        let mut ack = Vec::with_capacity(1000);
        for _ in 0..1000 {
            let (id, _) = store.publish(&[queue], "", "k", &[], &body).expect("publish");
            if rng.u64(0..1000) >= left_behind_per_mille {
                ack.push(id);
            }
            published += BODY as u64;
        }
        store.ack(queue, &ack).expect("ack");
        // As the broker's connections do: wait while the disk is behind, or
        // while compaction is (disk use at its bound).
        while store.backlog_bytes() > 4 * SEGMENT as usize || store.compaction_behind() {
            std::thread::sleep(Duration::from_millis(1));
        }
        max_disk = max_disk.max(store.stats().disk_bytes);
    }
    // Let compaction catch up before the figures are read.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stats = store.stats();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = store.stats();
        if now.segments_deleted == stats.segments_deleted && now.written_bytes == stats.written_bytes {
            break;
        }
        stats = now;
    }
    let stats = store.stats();
    store.shutdown();
    let bound = (2 * stats.live_bytes).max(stats.live_bytes + 4 * SEGMENT as u64);
    println!(
        "left behind {:>4.1} %: published {:>6.1} MB, written {:>6.1} MB, write amplification {:.3} (compaction {:.3}), live {:>6.1} MB, disk {:>6.1} MB (bound {:.1} MB, peak {:.1} MB), {:.1} s",
        left_behind_per_mille as f64 / 10.0,
        stats.published_bytes as f64 / 1e6,
        stats.written_bytes as f64 / 1e6,
        stats.written_bytes as f64 / stats.published_bytes as f64,
        stats.compaction_bytes as f64 / stats.published_bytes as f64,
        stats.live_bytes as f64 / 1e6,
        stats.disk_bytes as f64 / 1e6,
        bound as f64 / 1e6,
        max_disk as f64 / 1e6,
        started.elapsed().as_secs_f64(),
    );
}

fn main() {
    let total_mb = std::env::var("WRITE_AMP_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    println!("write amplification, {total_mb} MB of {BODY}-byte messages, {} MiB segments", SEGMENT >> 20);
    for left_behind in [0, 10, 100] {
        run(left_behind, total_mb);
    }
}
