//! What holds a connection's reading back: the resource alarms (memory,
//! free disk) and the log's own flow control for connections that publish,
//! and the sizing of the read buffer (small while quiet, a read's worth
//! while busy, exactly one frame while a large frame arrives).

use std::time::Duration;

use bytes::BytesMut;

use super::connection::Connection;
use crate::protocol::method::{ConnectionBlocked, ConnectionUnblocked};

/// Room a busy connection reads into.
pub(super) const READ_CHUNK: usize = 64 * 1024;
/// A frame at least this large is read alone, into its own allocation.
pub(super) const LARGE_FRAME: usize = READ_CHUNK / 2;
/// Room a quiet connection reads into: thousands of idle connections must
/// not hold a busy one's buffer each.
pub(super) const QUIET_READ: usize = 2 * 1024;

/// Room for the next read. While a large frame is partly read the decoder
/// has reserved exactly what it still needs: reading no further keeps a
/// large body frame (a message body, kept in queues as a slice of this
/// buffer) alone in its allocation rather than pinning one shared with the
/// frames after it. A small frame partly read gets no such treatment: a
/// read that stopped at its end would take one message per syscall from a
/// connection that streams small messages (S4 did: every read asked for
/// exactly one message's 1,080 bytes). Otherwise a connection whose last
/// read filled its room gets a large buffer, and one that went quiet a
/// small one again.
pub(super) fn make_room(buf: &mut BytesMut, busy: bool) {
    if crate::protocol::frame::frame_len_at_front(buf).is_some_and(|len| len >= LARGE_FRAME) {
        return;
    }
    if !busy && buf.is_empty() && buf.capacity() > 4 * QUIET_READ {
        *buf = BytesMut::with_capacity(QUIET_READ);
        return;
    }
    let want = if busy { READ_CHUNK } else { QUIET_READ };
    if buf.capacity() - buf.len() < want / 4 {
        buf.reserve(want);
    }
}

/// Whether a read of `read` bytes into `room` bytes of room filled most of it.
pub(super) fn filled(read: usize, room: usize) -> bool {
    read * 2 >= room
}

impl Connection {
    /// Why a connection that publishes must stop being read now, if it must:
    /// the memory alarm, the free-disk alarm, or more than `log_backlog_limit` bytes waiting
    /// for the disk (publishers then slow to what the disk takes).
    pub(super) fn block_reason(&self) -> Option<&'static str> {
        if self.durability.borrow().failed {
            return None;
        }
        if *self.memory_alarm.borrow() || self.broker.memory().publishers_must_wait() {
            return Some("low on memory");
        }
        if self.disk_alarm.borrow().raised {
            return Some("low on disk");
        }
        if self.broker.store().compaction_behind() {
            return Some("the write-ahead log is compacting");
        }
        (self.broker.store().backlog_bytes() > self.config.log_backlog_limit)
            .then_some("the write-ahead log is behind the disk")
    }

    /// A connection that just published stops reading while a resource
    /// alarm holds; clients that asked for it are told with
    /// connection.blocked, and connection.unblocked once it cleared.
    /// Connections that only consume go on, so acks can free space.
    /// Returns whether it blocked.
    pub(super) async fn wait_for_the_log(&mut self) -> bool {
        if !std::mem::take(&mut self.published) {
            return false;
        }
        let Some(reason) = self.block_reason() else { return false };
        if self.blocked_notify {
            self.handle.method(0, ConnectionBlocked { reason: reason.into() });
        }
        tracing::debug!(connection = self.id, "blocking {}: {reason}", self.peer);
        while self.block_reason().is_some() {
            tokio::select! {
                changed = self.durability.changed() => if changed.is_err() { break },
                changed = self.disk_alarm.changed() => if changed.is_err() { break },
                changed = self.memory_alarm.changed() => if changed.is_err() { break },
                // Compaction catching up has no channel of its own.
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            self.release_confirms();
        }
        if self.blocked_notify {
            self.handle.method(0, ConnectionUnblocked {});
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::decode_frame;

    /// The start of a body frame of `size` payload bytes, `have` of them read.
    fn partial_body(size: usize, have: usize) -> BytesMut {
        let mut buf = BytesMut::with_capacity(QUIET_READ);
        buf.extend_from_slice(&[3, 0, 1]);
        buf.extend_from_slice(&(size as u32).to_be_bytes());
        buf.extend_from_slice(&vec![7u8; have]);
        // The decoder asks for what the frame still lacks, as in the read loop.
        assert!(decode_frame(&mut buf, 0).expect("a valid frame start").is_none());
        buf
    }

    #[test]
    fn a_small_frame_partly_read_leaves_room_for_many_messages() {
        let mut buf = partial_body(1024, 100);
        make_room(&mut buf, true);
        assert!(buf.capacity() - buf.len() >= READ_CHUNK, "room: {}", buf.capacity() - buf.len());
    }

    #[test]
    fn a_large_frame_partly_read_is_read_alone() {
        let size = 1 << 20;
        let mut buf = partial_body(size, 100);
        let lacking = size + 8 - buf.len();
        make_room(&mut buf, true);
        // Room for the rest of this frame (the allocator may round up), not
        // a read's worth of the frames after it on top.
        assert!(buf.capacity() - buf.len() < lacking + READ_CHUNK, "room: {}", buf.capacity() - buf.len());
        assert!(buf.capacity() - buf.len() >= lacking);
    }
}
