//! The confirm and tx classes: publisher confirms, and transactions that hold publishes and settlements until commit.

use super::super::channel::*;
use super::super::connection::Connection;
use crate::broker::AmqpError;
use crate::protocol::Method;
use crate::protocol::method::*;

impl Connection {
    /// confirm.select and tx.select, commit, rollback.
    pub(in crate::server) fn confirm_tx_method(&mut self, channel: u16, method: Method) -> Result<(), AmqpError> {
        let id = self.id;
        let broker = self.broker.clone();
        match method {
            Method::ConfirmSelect(m) => {
                let ch = self.channel_mut(channel)?;
                if ch.tx.is_some() {
                    return Err(AmqpError::precondition("cannot switch from tx to confirm mode"));
                }
                ch.confirm = true;
                broker.set_channel_mode(id, channel, crate::broker::ChannelMode::Confirm);
                if !m.no_wait {
                    self.handle.method(channel, ConfirmSelectOk {});
                }
            }
            Method::TxSelect(_) => {
                let ch = self.channel_mut(channel)?;
                if ch.confirm {
                    return Err(AmqpError::precondition("cannot switch from confirm to tx mode"));
                }
                ch.tx.get_or_insert_with(Vec::new);
                broker.set_channel_mode(id, channel, crate::broker::ChannelMode::Transactional);
                self.handle.method(channel, TxSelectOk {});
            }
            Method::TxCommit(_) => {
                let ch = self.channel_mut(channel)?;
                let Some(ops) = ch.tx.replace(Vec::new()) else {
                    return Err(AmqpError::precondition("channel is not transactional"));
                };
                for op in ops {
                    match op {
                        TxOp::Publish { exchange, mandatory, headers, message } => {
                            self.publish_now(channel, &exchange, mandatory, headers.as_ref(), message)?
                        }
                        TxOp::Ack { tag, multiple } => broker.ack(id, channel, tag, multiple)?,
                        TxOp::Reject { tag, multiple, requeue } => {
                            broker.reject(id, channel, tag, multiple, requeue)?
                        }
                    }
                }
                // As RabbitMQ: commit-ok once the committed messages are on disk.
                self.reply_when_durable(channel, TxCommitOk {});
            }
            Method::TxRollback(_) => {
                let ch = self.channel_mut(channel)?;
                if ch.tx.replace(Vec::new()).is_none() {
                    return Err(AmqpError::precondition("channel is not transactional"));
                }
                self.handle.method(channel, TxRollbackOk {});
            }
            other => return Err(not_on_a_channel(&other)),
        }
        Ok(())
    }
}
