//! A replicated quorum queue's whole state on this node, for a Raft
//! snapshot (`cluster::machine`): what a leader sends a member that needs
//! entries the group purged, and how that member takes it in place of
//! its own.

use std::collections::HashMap;

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
    /// This node's replica of a queue as a snapshot carries it: every
    /// message the group's applied commands left in it (`replica_held`),
    /// whether ready here, handed out, or on its way back to the queue,
    /// bodies taken from memory where this node has them and read back
    /// from the log otherwise; but not one a consumer here acknowledged
    /// whose settle is still on its way. None: no such replica.
    pub fn replica_contents(&self, vhost: &str, name: &str) -> Option<Result<ReplicaContents>> {
        let st = self.state.read();
        let cell = st.queue(vhost, name)?;
        let (applied, incarnation, held, mut in_memory) = {
            let q = cell.lock();
            q.replica.as_ref()?;
            let held: Vec<(u64, u64)> = q.replica_held.iter().map(|(p, id)| (*p, *id)).collect();
            let in_memory: HashMap<u64, Arc<Message>> =
                q.ready_entries().filter_map(|e| Some((e.seq, e.message.clone()?))).collect();
            (q.replica_applied, q.incarnation, held, in_memory)
        };
        // Handed out by this node (as the leader's replica): their bodies.
        for ch in st.channels.values() {
            let ch = ch.lock();
            if *ch.vhost != *vhost {
                continue;
            }
            for u in ch.unacked.values().filter(|u| *u.queue == *name && u.incarnation == incarnation) {
                if let Some(message) = &u.entry.message {
                    in_memory.entry(u.entry.seq).or_insert_with(|| message.clone());
                }
            }
        }
        drop(st);
        let mut messages = Vec::with_capacity(held.len());
        for (position, store_id) in held {
            let message = match in_memory.remove(&position) {
                Some(message) => message,
                None => match self.store.read(store_id) {
                    Ok(record) => Arc::new(message_from_record(record)),
                    // Acknowledged here (its record let go), its settle not
                    // applied yet: a consumer took it for good, so the
                    // member need not have it.
                    Err(crate::store::StoreError::Missing(_)) => continue,
                    Err(e) => return Some(Err(store_failed(e))),
                },
            };
            messages.push((position, message));
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
            q.replica_held.clear();
        }
        self.apply_replicated_enqueue(vhost, name, contents.messages);
        let st = self.state.read();
        if let Some(cell) = st.queue(vhost, name) {
            let mut q = cell.lock();
            q.replica_applied = q.replica_applied.max(contents.applied);
        }
    }
}
