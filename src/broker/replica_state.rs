//! A replicated quorum queue's whole state on this node, for a Raft
//! snapshot (`cluster::machine`): what a leader sends a member that needs
//! entries the group purged, and how that member takes it in place of
//! its own.

use super::queue_type::{Command, Effects};
use super::*;

/// The messages a replica holds (ready or handed out and not settled),
/// in position order, and the last position it applied.
#[derive(Debug, Default)]
pub struct ReplicaContents {
    pub applied: u64,
    pub messages: Vec<(u64, Arc<Message>)>,
}

impl Broker {
    /// This node's replica of a queue as a snapshot carries it: its ready
    /// messages and those its consumers hold, bodies read back from the
    /// log where they are paged out. None: no such replica.
    pub fn replica_contents(&self, vhost: &str, name: &str) -> Option<Result<ReplicaContents>> {
        let st = self.state.read();
        let cell = st.queue(vhost, name)?;
        let (applied, incarnation, mut held) = {
            let q = cell.lock();
            q.replica.as_ref()?;
            let held: Vec<(u64, u64, Option<Arc<Message>>)> =
                q.ready_entries().map(|e| (e.seq, e.store_id, e.message.clone())).collect();
            (q.replica_applied, q.incarnation, held)
        };
        // Handed out by this node (its leader's replica) and not settled.
        for ch in st.channels.values() {
            let ch = ch.lock();
            if *ch.vhost != *vhost {
                continue;
            }
            for u in ch.unacked.values().filter(|u| *u.queue == *name && u.incarnation == incarnation) {
                held.push((u.entry.seq, u.entry.store_id, u.entry.message.clone()));
            }
        }
        drop(st);
        held.sort_unstable_by_key(|(seq, _, _)| *seq);
        held.dedup_by_key(|(seq, _, _)| *seq);
        let mut messages = Vec::with_capacity(held.len());
        for (seq, store_id, message) in held {
            let message = match message {
                Some(message) => message,
                None => match self.store.read(store_id) {
                    Ok(record) => Arc::new(message_from_record(record)),
                    Err(e) => return Some(Err(store_failed(e))),
                },
            };
            messages.push((seq, message));
        }
        Some(Ok(ReplicaContents { applied, messages }))
    }

    /// Replaces this node's replica of a queue with a leader's: its ready
    /// messages leave (and the log), the leader's are placed at their
    /// positions, and it has applied what the leader had.
    pub fn install_replica(&self, vhost: &str, name: &str, contents: ReplicaContents) {
        {
            let st = self.state.read();
            let Some(cell) = st.queue(vhost, name) else { return };
            let mut q = cell.lock();
            let mut fx = Effects::default();
            q.apply(Command::Purge, queue::now_ms(), &mut fx);
            if let Err(e) = carry_out(&q, &mut fx, &self.store, &mut Vec::new()) {
                tracing::error!("quorum queue '{name}' in vhost '{vhost}': its old messages stay in the log: {e}");
            }
            q.replica_applied = 0;
        }
        self.apply_replicated_enqueue(vhost, name, contents.messages);
        let st = self.state.read();
        if let Some(cell) = st.queue(vhost, name) {
            let mut q = cell.lock();
            q.replica_applied = q.replica_applied.max(contents.applied);
        }
    }
}
