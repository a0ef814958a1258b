//! Permission checks on a connection's operations, where RabbitMQ makes
//! them (rabbit_channel): declare and delete need configure, publish needs
//! write on the exchange (and topic permission on the routing key of a
//! topic exchange), bind needs write on the destination and read on the
//! source, consume, get and purge need read on the queue. Answers are
//! cached per connection until the access control changes.

use super::connection::Connection;
use crate::access::{self, Access, ResourceKind};
use crate::broker::AmqpError;

/// Cached answers kept per connection at most (then the cache starts over).
const CACHE_MAX: usize = 1024;

impl Connection {
    /// Fails with 403 ACCESS_REFUSED unless the user may do `access` on
    /// the named queue or exchange of the connection's vhost.
    pub(super) fn check_access(&mut self, access: Access, kind: ResourceKind, name: &str) -> Result<(), AmqpError> {
        // Permissions name the default exchange "amq.default", as RabbitMQ's do.
        let name = if kind == ResourceKind::Exchange && name.is_empty() { "amq.default" } else { name };
        let control = self.broker.access().clone();
        let generation = control.generation();
        if self.permission_cache.0 != generation || self.permission_cache.1.len() > CACHE_MAX {
            self.permission_cache = (generation, Default::default());
        }
        let slot = kind as usize * 3 + access as usize;
        let allowed = match self.permission_cache.1.get(name).and_then(|answers| answers[slot]) {
            Some(allowed) => allowed,
            None => {
                let allowed = control.permitted(&self.user, &self.vhost, access, name);
                self.permission_cache.1.entry(name.to_string()).or_default()[slot] = Some(allowed);
                allowed
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(AmqpError::access_refused(access::refusal(kind, name, &self.vhost, &self.user, access)))
        }
    }

    /// A binding needs write on its destination and read on its source
    /// exchange (and topic read permission on a topic exchange's key).
    pub(super) fn check_binding(
        &mut self,
        source: &str,
        destination_kind: ResourceKind,
        destination: &str,
        routing_key: &str,
    ) -> Result<(), AmqpError> {
        self.check_access(Access::Write, destination_kind, destination)?;
        self.check_access(Access::Read, ResourceKind::Exchange, source)?;
        self.check_topic(source, routing_key, false)
    }

    /// Topic permission on a routing key, for a topic exchange.
    pub(super) fn check_topic(&self, exchange: &str, routing_key: &str, write: bool) -> Result<(), AmqpError> {
        if !self.broker.access().any_topic_permissions() || !self.broker.is_topic_exchange(&self.vhost, exchange) {
            return Ok(());
        }
        if self.broker.access().topic_permitted(&self.user, &self.vhost, exchange, write, routing_key) {
            Ok(())
        } else {
            Err(AmqpError::access_refused(access::topic_refusal(routing_key, exchange, &self.vhost, &self.user, write)))
        }
    }
}
