//! The exchange class: declare, delete, bind, unbind.

use super::super::channel::*;
use super::super::connection::Connection;
use crate::access::{Access, ResourceKind};
use crate::broker::{AmqpError, Destination};
use crate::protocol::Method;
use crate::protocol::method::*;

impl Connection {
    /// exchange.declare, delete, bind and unbind.
    pub(in crate::server) fn exchange_method(&mut self, channel: u16, method: Method) -> Result<(), AmqpError> {
        let id = self.id;
        let broker = self.broker.clone();
        let vhost = self.vhost.clone();
        match method {
            Method::ExchangeDeclare(m) => {
                if !m.passive && !m.exchange.is_empty() {
                    self.check_access(Access::Configure, ResourceKind::Exchange, &m.exchange)?;
                    // An alternate exchange takes what this one routes nowhere.
                    // As RabbitMQ: checked when the exchange is made.
                    if let Some(ae) = m.arguments.get("alternate-exchange").and_then(|v| v.as_str())
                        && !broker.exchange_exists(&vhost, &m.exchange)
                    {
                        self.check_access(Access::Read, ResourceKind::Exchange, &m.exchange)?;
                        self.check_access(Access::Write, ResourceKind::Exchange, ae)?;
                    }
                }
                broker.exchange_declare(&vhost, &m)?;
                if !m.no_wait {
                    self.reply_when_durable(channel, ExchangeDeclareOk {});
                }
            }
            Method::ExchangeDelete(m) => {
                if !m.exchange.is_empty() {
                    self.check_access(Access::Configure, ResourceKind::Exchange, &m.exchange)?;
                }
                broker.exchange_delete(&vhost, &m.exchange, m.if_unused)?;
                if !m.no_wait {
                    self.reply_when_durable(channel, ExchangeDeleteOk {});
                }
            }
            Method::ExchangeBind(m) => {
                self.check_binding(&m.source, ResourceKind::Exchange, &m.destination, &m.routing_key)?;
                broker.bind(
                    &vhost,
                    id,
                    &m.source,
                    Destination::Exchange(m.destination),
                    &m.routing_key,
                    &m.arguments,
                )?;
                if !m.no_wait {
                    self.reply_when_durable(channel, ExchangeBindOk {});
                }
            }
            Method::ExchangeUnbind(m) => {
                self.check_binding(&m.source, ResourceKind::Exchange, &m.destination, &m.routing_key)?;
                broker.unbind(
                    &vhost,
                    id,
                    &m.source,
                    Destination::Exchange(m.destination),
                    &m.routing_key,
                    &m.arguments,
                )?;
                if !m.no_wait {
                    self.reply_when_durable(channel, ExchangeUnbindOk {});
                }
            }
            other => return Err(not_on_a_channel(&other)),
        }
        Ok(())
    }
}
