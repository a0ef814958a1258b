//! A replicated quorum queue's group's commands applied to this node's
//! replica of the queue, and when the messages they leave there reach the
//! node's log.
//!
//! A committed entry is durable already: it is a `raft.entry` record of
//! this node's log, fdatasync'd before the group counted it. So applying
//! an enqueue writes no message record: the message is held in memory
//! ([`Held::Unlogged`]), and its Raft entry stays in the group's log.
//! Only when the group takes a snapshot (which lets openraft purge the
//! entries it covers) are the messages still held written as positioned
//! message records ([`Broker::log_replica`]), before the applied marker
//! that lets a restart skip those entries (`cluster::machine`). Under a
//! consumer that keeps up, most messages are settled before that and
//! never written a second time: a message is one record, its Raft entry,
//! as in Ra's quorum queues, yet a single unacknowledged message still
//! pins no Raft entry for longer than one snapshot.
//!
//! A restart takes the logged messages from their records and applies
//! again the entries after the marker: a position already held is skipped
//! and a settle of a position not held changes nothing, so applying twice
//! changes nothing. Records are written in position order, so a log cut
//! among them keeps a prefix, and the positions it lacks are above every
//! one it kept.

use super::effects::carry_out;
use super::queue_type::{Command, Effects};
use super::*;
use crate::store::LogStore;

/// What a replicated queue's group holds of one of its messages on this
/// node.
#[derive(Debug, Clone)]
pub enum Held {
    /// Written to this node's log as this record.
    Logged(u64),
    /// Only in the group's Raft entries (and here), until the group's
    /// next snapshot writes it.
    Unlogged(Arc<Message>),
    /// Purged here (a purge is this node's alone): neither logged by a
    /// snapshot nor sent to a member, as a logged one's record is gone.
    Purged,
}

impl Held {
    /// Its record in the log, if it has one.
    pub fn store_id(&self) -> Option<u64> {
        match self {
            Held::Logged(id) => Some(*id),
            Held::Unlogged(_) | Held::Purged => None,
        }
    }
}

impl Broker {
    /// Applies a committed enqueue to this node's replica of a queue: each
    /// message at its position (see `cluster::queue_commands`), held in
    /// memory until the group's next snapshot logs it (see the module's
    /// docs); a position already applied is skipped (an entry applied
    /// again after a restart). The leader's replica hands them to its
    /// consumers.
    pub fn apply_replicated_enqueue(&self, vhost: &str, name: &str, messages: Vec<(u64, Arc<Message>)>) {
        let st = self.state.read();
        let Some(cell) = st.queue(vhost, name) else { return };
        let mut q = cell.lock();
        let now = queue::now_ms();
        let mut fx = Effects::default();
        let mut departed = Vec::new();
        for (position, message) in messages {
            if position <= q.replica_applied {
                continue;
            }
            q.replica_applied = position;
            q.place_next(position);
            q.replica_held.insert(position, Held::Unlogged(message.clone()));
            q.apply(Command::Enqueue { message, store_id: 0, trim_later: false }, now, &mut fx);
            q.counters.publish += 1;
            let _ = carry_out(&q, &mut fx, &self.store, &mut departed);
        }
        // Length limits drop alike on every member: the group no longer
        // holds those. A dropped message logged already (requeued before
        // the drop) leaves the log here.
        let mut logged = Vec::new();
        for entry in departed.iter().flat_map(|d| d.entries.iter()) {
            let held = q.replica_held.remove(&entry.seq).and_then(|h| h.store_id());
            logged.extend(held.filter(|id| *id != entry.store_id));
        }
        if q.replica_active {
            st.deliver_ready(&mut q, &self.store, now);
        } else {
            // What length limits dropped is dead-lettered by the leader
            // only: the others' copies just leave.
            logged.extend(departed.drain(..).flat_map(|d| d.entries).map(|e| e.store_id).filter(|id| *id != 0));
        }
        if let Some(qid) = q.store_id.filter(|_| !logged.is_empty())
            && let Err(e) = self.store.ack(qid, &logged)
        {
            tracing::error!("quorum queue '{name}' in vhost '{vhost}': dropped messages stay in the log: {e}");
        }
        drop(q);
        for d in departed {
            let mut touched = Vec::new();
            st.dead_letter(d, &self.store, &mut touched);
            st.drain_all(vhost, touched, &self.store);
        }
    }

    /// Applies a committed settle to this node's replica of a queue: the
    /// messages at `positions` leave it (on the leader they were handed
    /// out and settled by their consumer already; a follower still holds
    /// them ready), and their records the log, if they were logged.
    pub fn apply_replicated_settle(&self, vhost: &str, name: &str, positions: &[u64]) {
        let st = self.state.read();
        let Some(cell) = st.queue(vhost, name) else { return };
        let mut q = cell.lock();
        let mut fx = Effects::default();
        // Records the queue's own entries do not name: logged while the
        // message was out here (its delivery carries no record) or while
        // a paged-out copy stood in for it.
        let mut logged = Vec::new();
        for &seq in positions {
            let held = q.replica_held.remove(&seq).and_then(|h| h.store_id());
            let in_queue = q.store_id_at(seq);
            if let Some(store_id) = in_queue {
                q.apply(Command::Remove { seq, store_id }, queue::now_ms(), &mut fx);
            }
            if let Some(id) = held.filter(|id| Some(*id) != in_queue && self.store.holds(*id)) {
                logged.push(id);
            }
        }
        let _ = carry_out(&q, &mut fx, &self.store, &mut Vec::new());
        if let Some(qid) = q.store_id.filter(|_| !logged.is_empty())
            && let Err(e) = self.store.ack(qid, &logged)
        {
            tracing::error!("quorum queue '{name}' in vhost '{vhost}': settled messages stay in the log: {e}");
        }
    }

    /// Writes every message this node's replica of a queue holds only in
    /// memory to the log, in position order (see the module's docs): the
    /// group's snapshot, and the applied marker after it, may then cover
    /// the entries that enqueued them. Its records are appended, not yet
    /// durable: what is appended after them (the marker) is durable only
    /// once they are.
    pub fn log_replica(&self, vhost: &str, name: &str) -> Result<()> {
        let st = self.state.read();
        let Some(cell) = st.queue(vhost, name) else { return Ok(()) };
        let mut q = cell.lock();
        log_unlogged(&mut q, &self.store).map_err(store_failed)
    }
}

/// Writes the messages `q`'s replica holds only in memory to the log, in
/// position order; a ready one's entry gets its record, so that it may be
/// paged out and its delivery marked. Stops at the first append that
/// fails (the log's failure, which its writer reports).
pub(super) fn log_unlogged(q: &mut Queue, store: &LogStore) -> std::result::Result<(), crate::store::StoreError> {
    let Some(qid) = q.store_id else { return Ok(()) };
    let from = q.replica_unlogged_from;
    let unlogged: Vec<(u64, Arc<Message>)> = q
        .replica_held
        .range(from..)
        .filter_map(|(position, held)| match held {
            Held::Unlogged(m) => Some((*position, m.clone())),
            Held::Logged(_) | Held::Purged => None,
        })
        .collect();
    for (position, m) in unlogged {
        let at = (&*m.exchange, &*m.routing_key);
        let (id, _, _) = store.publish_stream(qid, position, at, &m.properties, &m.body, None)?;
        q.replica_held.insert(position, Held::Logged(id));
        q.set_store_id_if_unlogged(position, id);
    }
    q.replica_unlogged_from = q.replica_applied + 1;
    Ok(())
}
