//! Reading paged-out bodies back from the log, ahead of the consumers that
//! need them and never under the broker's lock.
//!
//! A queue whose next messages hold no body in memory (a backlog paged out,
//! or recovered after a restart) asks the loader for the next few hundred
//! of them and stops delivering until they come back; the loader thread
//! reads them from the log without any broker lock, then takes the lock
//! only to attach the bodies and hand them to consumers. So a consumer
//! draining a cold backlog waits on the disk, and nobody else does. A body
//! that cannot be read back is reported (segment and offset) and dropped
//! with a tombstone in the log, so it does not come back after a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};

use super::StateLock;

use super::queue::now_ms;
use super::queue_type::{Command, Effects};
use super::{carry_out, message_from_record};
use crate::store::LogStore;

/// Messages read per request, at most.
pub const LOAD_BATCH: usize = 1024;
/// Body bytes read per request, at most.
pub const LOAD_BATCH_BYTES: usize = 4 << 20;
/// No read-ahead while this many messages with a body wait at the head:
/// the next batch is read while consumers work through these.
pub const WARM_ENOUGH: usize = 512;

/// Bodies of one queue to read back: (seq, store id) each.
pub struct LoadRequest {
    pub vhost: Arc<str>,
    pub queue: Arc<str>,
    pub incarnation: u64,
    /// (seq or stream offset, store id) each.
    pub items: Vec<(u64, u64)>,
    /// For a stream: the items are (offset, store id) and the bodies are
    /// kept for all of its readers.
    pub stream: bool,
}

/// Where queues send their requests.
#[derive(Debug, Clone)]
pub struct Loader {
    requests: Sender<LoadRequest>,
    /// Cleared if the thread ever ends (a bug): queues then read in line
    /// rather than wait for a loader that is gone.
    alive: Arc<AtomicBool>,
}

/// Clears `alive` however the loader thread ends, panics included.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Loader {
    /// Starts the loader thread over the broker's state and log.
    pub fn spawn(state: Arc<StateLock>, store: Arc<LogStore>) -> std::io::Result<Loader> {
        let (requests, inbox) = std::sync::mpsc::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(alive.clone());
        std::thread::Builder::new().name("warren-body-loader".into()).spawn(move || {
            let _guard = guard;
            run(inbox, &state, &store);
        })?;
        Ok(Loader { requests, alive })
    }

    /// Whether the loader thread is running.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// False when the loader is gone (the broker is shutting down).
    pub fn request(&self, request: LoadRequest) -> bool {
        self.requests.send(request).is_ok()
    }
}

fn run(inbox: Receiver<LoadRequest>, state: &StateLock, store: &LogStore) {
    while let Ok(request) = inbox.recv() {
        let ids: Vec<u64> = request.items.iter().map(|(_, id)| *id).collect();
        let read: Vec<_> =
            request.items.iter().zip(store.read_many(&ids)).map(|((seq, id), result)| (*seq, *id, result)).collect();
        let st = state.read();
        if request.stream {
            st.stream_loaded(&request, read, store);
            continue;
        }
        let Some(cell) = st.queue(&request.vhost, &request.queue) else { continue };
        let mut q = cell.lock();
        if q.incarnation != request.incarnation {
            continue;
        }
        q.loading = false;
        let mut fx = Effects::default();
        let now = now_ms();
        for (seq, id, result) in read {
            match result {
                Ok(record) => q.attach(seq, id, Arc::new(message_from_record(record))),
                Err(e) => {
                    tracing::error!(
                        "queue '{}' in vhost '{}': a message cannot be read back from the log, dropping it: {e}",
                        q.name,
                        q.vhost
                    );
                    q.apply(Command::Remove { seq, store_id: id }, now, &mut fx);
                }
            }
        }
        // A failure here is the log's own failure, already reported.
        let _ = carry_out(&q, &mut fx, store, &mut Vec::new());
        drop(q);
        st.drain_queue(cell, store);
    }
}
