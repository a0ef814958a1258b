//! Consecutive basic.acks of one channel in the frames of one read are
//! settled together (`Broker::ack_many`): one hold of the broker's lock,
//! one log record per queue and one hand-out of the freed prefetch for the
//! run, where acking one by one took each of those per ack. A consumer
//! acking every message (the work-queue pattern) sends dozens per read.
//!
//! The run is settled before any other frame is handled and when the read
//! is used up, so nothing a client sends after an ack sees it unsettled,
//! and an unknown tag closes the channel at that ack, as it would alone.

use super::connection::{CloseReason, Connection};
use crate::protocol::method::BasicAck;
use crate::protocol::{Frame, Method};

/// basic.ack's class and method ids, for the channel.close an unknown tag causes.
const BASIC_ACK_IDS: (u16, u16) = (60, 80);

/// The acks waiting to be settled: their channel and (tag, multiple) each.
#[derive(Debug, Default)]
pub(super) struct PendingAcks {
    channel: u16,
    acks: Vec<(u64, bool)>,
}

impl Connection {
    /// Takes a basic.ack into the pending run when it can wait there (an
    /// open channel outside a transaction, with no content under way);
    /// gives any other frame back. A run on another channel is settled
    /// first.
    pub(super) fn defer_ack(&mut self, frame: Frame) -> Result<Option<Frame>, CloseReason> {
        let Frame::Method { channel, method: Method::BasicAck(BasicAck { delivery_tag, multiple }) } = &frame else {
            return Ok(Some(frame));
        };
        let (channel, delivery_tag, multiple) = (*channel, *delivery_tag, *multiple);
        let plain =
            self.channels.get(&channel).is_some_and(|ch| !ch.is_closing() && ch.tx.is_none() && ch.content.is_none());
        if !plain {
            return Ok(Some(frame));
        }
        if !self.pending_acks.acks.is_empty() && self.pending_acks.channel != channel {
            self.settle_acks()?;
        }
        self.pending_acks.channel = channel;
        self.pending_acks.acks.push((delivery_tag, multiple));
        Ok(None)
    }

    /// Settles the pending run, if any.
    pub(super) fn settle_acks(&mut self) -> Result<(), CloseReason> {
        if self.pending_acks.acks.is_empty() {
            return Ok(());
        }
        let channel = self.pending_acks.channel;
        let result = self.broker.ack_many(self.id, channel, &self.pending_acks.acks);
        self.pending_acks.acks.clear();
        match result {
            Ok(()) => Ok(()),
            Err(err) => self.close_channel_with(channel, err, BASIC_ACK_IDS),
        }
    }
}
