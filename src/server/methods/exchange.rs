//! The exchange class: declare, delete, bind, unbind.

use super::super::channel::*;
use super::super::connection::Connection;
use crate::access::{Access, ResourceKind};
use crate::broker::AmqpError;
use crate::broker::changes::Change;
use crate::protocol::Method;
use crate::protocol::method::*;

impl Connection {
    /// exchange.declare, delete, bind and unbind.
    pub(in crate::server) fn exchange_method(&mut self, channel: u16, method: Method) -> Result<(), AmqpError> {
        let broker = self.broker.clone();
        let vhost = self.vhost.clone();
        let ids = method.ids();
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
                if m.passive {
                    broker.exchange_declare(&vhost, &m)?;
                    if !m.no_wait {
                        self.reply_when_durable(channel, ExchangeDeclareOk {});
                    }
                } else {
                    let reply = (!m.no_wait).then(|| ExchangeDeclareOk {}.into());
                    self.make_change(channel, Change::Exchange { vhost, method: m.into() }, ids, reply)?;
                }
            }
            Method::ExchangeDelete(m) => {
                if !m.exchange.is_empty() {
                    self.check_access(Access::Configure, ResourceKind::Exchange, &m.exchange)?;
                }
                let reply = (!m.no_wait).then(|| ExchangeDeleteOk {}.into());
                self.make_change(channel, Change::Exchange { vhost, method: m.into() }, ids, reply)?;
            }
            Method::ExchangeBind(m) => {
                self.check_binding(&m.source, ResourceKind::Exchange, &m.destination, &m.routing_key)?;
                let reply = (!m.no_wait).then(|| ExchangeBindOk {}.into());
                self.make_change(channel, Change::Exchange { vhost, method: m.into() }, ids, reply)?;
            }
            Method::ExchangeUnbind(m) => {
                self.check_binding(&m.source, ResourceKind::Exchange, &m.destination, &m.routing_key)?;
                let reply = (!m.no_wait).then(|| ExchangeUnbindOk {}.into());
                self.make_change(channel, Change::Exchange { vhost, method: m.into() }, ids, reply)?;
            }
            other => return Err(not_on_a_channel(&other)),
        }
        Ok(())
    }
}
