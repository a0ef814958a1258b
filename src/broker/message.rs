//! Messages as the broker holds them, and the handle through which the broker
//! pushes frames (deliveries, cancel notifications) to a connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;

use crate::protocol::Method;

/// A published message. Shared (`Arc`) by every queue it was routed to; the
/// body is the slice of the publisher's read buffer it arrived in.
#[derive(Debug)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    /// Property flags and list as the publisher encoded them.
    pub properties: Bytes,
    pub body: Bytes,
    /// delivery_mode = 2.
    pub persistent: bool,
    /// The `expiration` property, in milliseconds.
    pub expiration_ms: Option<u64>,
    /// The `priority` property (0 when absent).
    pub priority: u8,
}

impl Message {
    /// Bytes the message occupies in a queue, for `x-max-length-bytes` and listings.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

/// Everything a connection's writer turns into frames.
#[derive(Debug)]
pub enum Outgoing {
    Method {
        channel: u16,
        method: Method,
    },
    /// A method followed by a message's content (basic.get-ok, basic.return).
    Content {
        channel: u16,
        method: Method,
        message: Arc<Message>,
    },
    Deliver {
        channel: u16,
        consumer_tag: Arc<str>,
        delivery_tag: u64,
        redelivered: bool,
        message: Arc<Message>,
    },
    /// Bytes written as they are: the protocol header we answer a
    /// mismatched one with.
    Raw(Bytes),
    /// Flush what is queued, then close the socket.
    Shutdown,
}

impl Outgoing {
    /// Bytes this item will put on the wire, roughly: used to stop feeding a
    /// consumer whose socket is not draining.
    fn weight(&self) -> usize {
        match self {
            Outgoing::Content { message, .. } | Outgoing::Deliver { message, .. } => message.body.len() + 128,
            _ => 64,
        }
    }
}

/// When more than this many bytes wait for a connection's socket, the broker
/// stops handing its consumers messages until the writer catches up.
pub const OUTBOUND_HIGH_WATER: usize = 4 << 20;

/// When more than this many bytes wait for a connection's socket, the
/// connection stops reading: replies, returns, confirms and basic.get-ok
/// are not held back by [`OUTBOUND_HIGH_WATER`], but a client gets no more
/// of them than it reads.
pub const OUTBOUND_READ_PAUSE: usize = 2 * OUTBOUND_HIGH_WATER;

/// State shared between the broker (producer of frames) and the connection's
/// writer (consumer of frames).
#[derive(Debug, Default)]
pub struct OutboundShared {
    pending_bytes: AtomicUsize,
    /// Set when a delivery was held back because of `pending_bytes`; the
    /// writer then asks the broker to resume once it has drained.
    stalled: AtomicBool,
    /// Woken when `pending_bytes` falls below [`OUTBOUND_READ_PAUSE`].
    drained: tokio::sync::Notify,
}

/// The broker's way to reach one connection.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    pub id: u64,
    tx: UnboundedSender<Outgoing>,
    shared: Arc<OutboundShared>,
    /// The client asked for basic.cancel when a queue it consumes is deleted.
    pub cancel_notify: bool,
    /// Where the broker tells the connection what it must do on its own.
    events: Option<UnboundedSender<super::BrokerEvent>>,
}

impl ConnectionHandle {
    pub fn new(id: u64, tx: UnboundedSender<Outgoing>, shared: Arc<OutboundShared>, cancel_notify: bool) -> Self {
        ConnectionHandle { id, tx, shared, cancel_notify, events: None }
    }

    /// Gives the handle the connection's event queue.
    pub fn with_events(mut self, events: UnboundedSender<super::BrokerEvent>) -> Self {
        self.events = Some(events);
        self
    }

    /// Tells the connection something it must act on (a gone connection
    /// has nothing left to act on).
    pub fn event(&self, event: super::BrokerEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    /// Queues an item for the writer. A closed writer means the connection is
    /// going away; its cleanup requeues what it held, so the item is dropped.
    pub fn send(&self, item: Outgoing) {
        self.shared.pending_bytes.fetch_add(item.weight(), Ordering::Relaxed);
        let _ = self.tx.send(item);
    }

    pub fn method(&self, channel: u16, method: impl Into<Method>) {
        self.send(Outgoing::Method { channel, method: method.into() });
    }

    /// Bytes queued for this connection's socket and not yet written.
    pub fn outbound_bytes(&self) -> usize {
        self.shared.pending()
    }

    /// The queue's shared state (to wait for it to drain).
    pub fn outbound(&self) -> Arc<OutboundShared> {
        self.shared.clone()
    }

    /// Whether the socket is keeping up; if not, remember to resume later.
    pub fn has_room(&self) -> bool {
        if self.shared.pending_bytes.load(Ordering::Relaxed) < OUTBOUND_HIGH_WATER {
            true
        } else {
            self.shared.stalled.store(true, Ordering::Relaxed);
            false
        }
    }
}

impl OutboundShared {
    /// Called by the writer after it wrote `items`; returns true when the
    /// broker should resume deliveries it held back.
    pub fn written(&self, items: &[Outgoing]) -> bool {
        let weight: usize = items.iter().map(Outgoing::weight).sum();
        let before = self.pending_bytes.fetch_sub(weight, Ordering::Relaxed);
        let after = before.saturating_sub(weight);
        if before >= OUTBOUND_READ_PAUSE && after < OUTBOUND_READ_PAUSE {
            self.drained.notify_one();
        }
        after < OUTBOUND_HIGH_WATER / 2 && self.stalled.swap(false, Ordering::Relaxed)
    }

    /// Bytes queued for the socket and not yet written.
    pub fn pending(&self) -> usize {
        self.pending_bytes.load(Ordering::Relaxed)
    }

    /// Resolves once the queue fell below [`OUTBOUND_READ_PAUSE`] (or at
    /// once if it did since the last wait).
    pub async fn drained(&self) {
        self.drained.notified().await
    }
}
