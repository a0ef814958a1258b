//! The exchange class: declare, delete, bind, unbind.

use super::super::channel::*;
use super::super::connection::Connection;
use crate::broker::{AmqpError, Destination};
use crate::protocol::Method;
use crate::protocol::method::*;

impl Connection {
    /// exchange.declare, delete, bind and unbind.
    pub(in crate::server) fn exchange_method(&mut self, channel: u16, method: Method) -> Result<(), AmqpError> {
        let id = self.id;
        let broker = self.broker.clone();
        match method {
            Method::ExchangeDeclare(m) => {
                broker.exchange_declare(&m)?;
                if !m.no_wait {
                    self.reply_when_durable(channel, ExchangeDeclareOk {});
                }
            }
            Method::ExchangeDelete(m) => {
                broker.exchange_delete(&m.exchange, m.if_unused)?;
                if !m.no_wait {
                    self.reply_when_durable(channel, ExchangeDeleteOk {});
                }
            }
            Method::ExchangeBind(m) => {
                broker.bind(id, &m.source, Destination::Exchange(m.destination), &m.routing_key, &m.arguments)?;
                if !m.no_wait {
                    self.reply_when_durable(channel, ExchangeBindOk {});
                }
            }
            Method::ExchangeUnbind(m) => {
                broker.unbind(id, &m.source, Destination::Exchange(m.destination), &m.routing_key, &m.arguments)?;
                if !m.no_wait {
                    self.reply_when_durable(channel, ExchangeUnbindOk {});
                }
            }
            other => return Err(not_on_a_channel(&other)),
        }
        Ok(())
    }
}
