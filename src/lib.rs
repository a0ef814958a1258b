//! Warren: an AMQP 0-9-1 message broker whose durability comes from one
//! segmented, append-only write-ahead log.
//!
//! # Layout
//!
//! Data flows one way: socket → codec → broker (route) → store (append) →
//! broker (deliver) → codec → socket. Each layer has one job:
//!
//! - [`protocol`]: the pure AMQP 0-9-1 codec (frames, methods, field tables,
//!   content properties). No I/O.
//! - [`server`]: tokio networking: the listener, one task per connection
//!   (handshake, heartbeats, channels, content assembly) and a writer task
//!   per connection that coalesces frames into few syscalls.
//! - [`broker`]: the model: exchanges, bindings, queues, consumers, prefetch,
//!   acknowledgements and redelivery. Knows nothing about sockets or files.
//! - [`store`]: durable storage behind the [`store::LogStore`].
//! - [`admin`]: the control socket that `warrenctl` talks to.
//! - [`management`]: RabbitMQ's management HTTP API, beside [`server`],
//!   reading the broker's listings and statistics snapshot.
//! - [`metrics`]: figures about the process (memory, descriptors, uptime).
//! - [`lock_stats`]: how long the locks every message takes are held.
//! - [`definitions`]: RabbitMQ's JSON definitions file, export and import.
//! - [`access`]: users, password hashes and permissions, checked by the
//!   server where RabbitMQ checks them.
//! - [`config`]: settings from flags, a TOML file and defaults.

pub mod access;
pub mod admin;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod definitions;
pub mod lock_stats;
pub mod management;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod store;
pub mod tls;
