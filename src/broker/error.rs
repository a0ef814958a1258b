//! The broker's error type: an AMQP reply code, a readable text, and whether
//! the error closes the channel or the whole connection.

use crate::protocol::reply;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Channel,
    Connection,
}

/// A client mistake or a refused operation, reported with `channel.close` or
/// `connection.close`. The text is prefixed with the code's name, as RabbitMQ
/// does ("NOT_FOUND - no queue 'x' in vhost '/'").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct AmqpError {
    pub code: u16,
    pub text: String,
    pub scope: Scope,
}

impl AmqpError {
    pub fn new(code: u16, scope: Scope, detail: impl std::fmt::Display) -> Self {
        AmqpError { code, text: format!("{} - {}", reply::name(code), detail), scope }
    }

    pub fn channel(code: u16, detail: impl std::fmt::Display) -> Self {
        Self::new(code, Scope::Channel, detail)
    }

    pub fn connection(code: u16, detail: impl std::fmt::Display) -> Self {
        Self::new(code, Scope::Connection, detail)
    }

    pub fn not_found(detail: impl std::fmt::Display) -> Self {
        Self::channel(reply::NOT_FOUND, detail)
    }

    pub fn precondition(detail: impl std::fmt::Display) -> Self {
        Self::channel(reply::PRECONDITION_FAILED, detail)
    }

    pub fn locked(detail: impl std::fmt::Display) -> Self {
        Self::channel(reply::RESOURCE_LOCKED, detail)
    }

    pub fn access_refused(detail: impl std::fmt::Display) -> Self {
        Self::channel(reply::ACCESS_REFUSED, detail)
    }

    pub fn not_implemented(detail: impl std::fmt::Display) -> Self {
        Self::connection(reply::NOT_IMPLEMENTED, detail)
    }

    pub fn command_invalid(detail: impl std::fmt::Display) -> Self {
        Self::connection(reply::COMMAND_INVALID, detail)
    }
}

pub type Result<T, E = AmqpError> = std::result::Result<T, E>;
