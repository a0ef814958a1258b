//! The write-ahead log on its own: appending a 1 KiB message record (what a
//! publish costs the store, under the broker's lock), and a group commit of
//! 100 such messages made durable with one fdatasync (what S1's confirm
//! window waits for). Runs on real files in a temporary directory:
//!
//!     cargo bench --bench log

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use warren::store::format::Record;
use warren::store::io::FileIo;
use warren::store::{FsyncPolicy, LogOptions, LogStore};

const BODY: [u8; 1024] = [b'x'; 1024];
const PROPERTIES: [u8; 3] = [0x10, 0x00, 2];

fn open(fsync: FsyncPolicy) -> (tempfile::TempDir, Arc<LogStore>, u32) {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(FileIo::new(dir.path()).unwrap());
    let options = LogOptions { segment_size: 64 << 20, fsync, skip_damaged: false, ..Default::default() };
    let (store, _) = LogStore::open(io, options).unwrap();
    let queue = store.allocate_queue_id();
    store
        .define(Record::QueueDeclare {
            queue,
            vhost: "/".into(),
            name: "q".into(),
            auto_delete: false,
            arguments: Bytes::new(),
        })
        .unwrap();
    (dir, store, queue)
}

fn wait_durable(store: &LogStore, position: u64) {
    let mut rx = store.durability();
    while rx.borrow_and_update().position < position {
        std::thread::sleep(Duration::from_micros(20));
    }
}

fn log(c: &mut Criterion) {
    let mut group = c.benchmark_group("log");

    let (_dir, store, queue) = open(FsyncPolicy::Never);
    group.throughput(Throughput::Elements(1));
    group.bench_function("append 1 KiB message", |b| {
        b.iter(|| store.publish(&[queue], "", "task_queue", &PROPERTIES, &BODY).unwrap())
    });
    // Settle what was appended so the ack path is measured on live ids.
    let (first, _) = store.publish(&[queue], "", "task_queue", &PROPERTIES, &BODY).unwrap();
    let mut next = first;
    group.bench_function("ack one message", |b| {
        b.iter(|| {
            store.ack(queue, &[next]).unwrap();
            next = next.saturating_sub(1);
        })
    });
    store.shutdown();

    let (_dir, store, queue) = open(FsyncPolicy::EveryBatch);
    group.throughput(Throughput::Elements(100));
    group.sample_size(30);
    group.bench_function("100 x 1 KiB, one group commit (fdatasync)", |b| {
        b.iter(|| {
            let mut end = 0;
            for _ in 0..100 {
                end = store.publish(&[queue], "", "task_queue", &PROPERTIES, &BODY).unwrap().1;
            }
            wait_durable(&store, end);
        })
    });
    store.shutdown();
    group.finish();
}

criterion_group!(benches, log);
criterion_main!(benches);
