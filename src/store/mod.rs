//! The boundary between the broker and durable storage.
//!
//! The broker reports every change that must survive a restart through
//! [`Store`]: durable exchanges, queues and bindings and their deletion,
//! persistent messages routed to durable queues, and their settlement. The
//! in-memory broker keeps the messages themselves in its queues;
//! [`MemoryStore`] records nothing, so a restart starts empty. The
//! write-ahead log plugs in behind this trait.

use crate::broker::{Binding, Exchange, Message, Queue, QueuedMessage};

/// What the broker tells durable storage. Every method is called with the
/// broker's state lock held, so an implementation must only enqueue work,
/// never wait for I/O.
pub trait Store: Send + Sync {
    fn exchange_declared(&self, _exchange: &Exchange) {}
    fn exchange_deleted(&self, _name: &str) {}
    fn queue_declared(&self, _queue: &Queue) {}
    fn queue_deleted(&self, _name: &str) {}
    fn queue_purged(&self, _name: &str) {}
    fn binding_added(&self, _source: &str, _binding: &Binding) {}
    fn binding_removed(&self, _source: &str, _binding: &Binding) {}
    /// A persistent message routed to these durable queues.
    fn published(&self, _message: &Message, _queues: &[&str]) {}
    /// Persistent messages of a durable queue acked, or dropped without requeue.
    fn acked(&self, _queue: &str, _entries: &[&QueuedMessage]) {}
}

/// Keeps nothing: every queue lives only in the broker's memory.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {}
