//! The connection handshake: the protocol header, connection.start with
//! the server's properties and capabilities, authentication (PLAIN and
//! AMQPLAIN against the configured users), tune negotiation and
//! connection.open.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::connection::{CloseReason, Connection, Exit};
use crate::broker::{ConnectionInfo, Outgoing};
use crate::protocol::constants::{FRAME_MIN_SIZE, PROTOCOL_HEADER};
use crate::protocol::method::*;
use crate::protocol::{FieldTable, FieldValue, Frame, Method, reply};

/// Class and method id of connection.open, named in a refusal of it.
const CONNECTION_OPEN_IDS: (u16, u16) = (10, 40);

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::new();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "authentication_failure_close",
        "connection.blocked",
        "per_consumer_qos",
        "consumer_priorities",
        "direct_reply_to",
    ] {
        caps.insert(cap, FieldValue::Bool(true));
    }
    let mut props = FieldTable::new();
    props.insert("product", FieldValue::string("Warren"));
    props.insert("version", FieldValue::string(env!("CARGO_PKG_VERSION")));
    props.insert("platform", FieldValue::string("Rust"));
    props.insert("information", FieldValue::string("An AMQP 0-9-1 broker built around a write-ahead log"));
    props.insert("capabilities", FieldValue::Table(caps));
    props
}

impl Connection {
    /// The next method on channel 0 during the handshake.
    async fn handshake_method(&mut self, deadline: tokio::time::Instant) -> Result<Method, Exit> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, self.read_frame(None)).await {
            Err(_) => Err(Exit::Dropped("handshake timeout".into())),
            Ok(Err(e)) => Err(e),
            Ok(Ok(None)) => Err(Exit::Dropped("client closed the socket during the handshake".into())),
            Ok(Ok(Some(Frame::Method { channel: 0, method }))) => Ok(method),
            Ok(Ok(Some(_))) => {
                Err(CloseReason::new(reply::UNEXPECTED_FRAME, "expected a connection method during the handshake")
                    .into())
            }
        }
    }

    pub(super) async fn handshake(&mut self) -> Result<(), Exit> {
        let deadline = tokio::time::Instant::now() + self.config.handshake_timeout();
        let mut header = [0u8; 8];
        let read = self.reader.read_exact(&mut header);
        match tokio::time::timeout_at(deadline, read).await {
            Err(_) => return Err(Exit::Dropped("handshake timeout".into())),
            Ok(Err(_)) => return Err(Exit::Dropped("client closed the socket before the protocol header".into())),
            Ok(Ok(_)) => {}
        }
        if &header != PROTOCOL_HEADER {
            // The spec: answer with the header we do speak, then close.
            self.handle.send(Outgoing::Raw(Bytes::from_static(PROTOCOL_HEADER)));
            return Err(Exit::Dropped(format!("unsupported protocol header {header:?}")));
        }
        self.handle.method(
            0,
            ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(),
                // EXTERNAL (the client certificate's common name, as
                // RabbitMQ's rabbitmq_auth_mechanism_ssl) only where there
                // is a verified certificate.
                mechanisms: if self.transport.peer_common_name.is_some() {
                    Bytes::from_static(b"PLAIN AMQPLAIN EXTERNAL")
                } else {
                    Bytes::from_static(b"PLAIN AMQPLAIN")
                },
                locales: Bytes::from_static(b"en_US"),
            },
        );
        let start_ok = match self.handshake_method(deadline).await? {
            Method::ConnectionStartOk(m) => m,
            other => {
                return Err(CloseReason::new(
                    reply::COMMAND_INVALID,
                    format!("expected connection.start-ok, got {}", other.name()),
                )
                .into());
            }
        };
        let client_caps = match start_ok.client_properties.get("capabilities") {
            Some(FieldValue::Table(t)) => t.clone(),
            _ => FieldTable::new(),
        };
        self.user = self.authenticate(&start_ok)?;
        self.auth_mechanism = start_ok.mechanism.clone();
        self.handle.method(
            0,
            ConnectionTune {
                channel_max: self.config.channel_max,
                frame_max: self.config.frame_max,
                heartbeat: self.config.heartbeat,
            },
        );
        let tune_ok = match self.handshake_method(deadline).await? {
            Method::ConnectionTuneOk(m) => m,
            other => {
                return Err(CloseReason::new(
                    reply::COMMAND_INVALID,
                    format!("expected connection.tune-ok, got {}", other.name()),
                )
                .into());
            }
        };
        self.negotiate(&tune_ok)?;
        let open = match self.handshake_method(deadline).await? {
            Method::ConnectionOpen(m) => m,
            other => {
                return Err(CloseReason::new(
                    reply::COMMAND_INVALID,
                    format!("expected connection.open, got {}", other.name()),
                )
                .into());
            }
        };
        let vhost = open.virtual_host.as_str();
        let client = ["product", "version"]
            .iter()
            .filter_map(|k| start_ok.client_properties.get(k).and_then(FieldValue::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        let info = ConnectionInfo {
            peer: self.peer.to_string(),
            user: self.user.clone(),
            vhost: vhost.to_string(),
            client,
            heartbeat: self.heartbeat,
            frame_max: self.frame_max,
            connected_at: crate::store::wall_ms(),
            tls: self.transport.tls,
            auth_mechanism: self.auth_mechanism.clone(),
        };
        // As RabbitMQ: the vhost and its connection limit first, then the
        // user's access to it; registering checks the limit again, atomically.
        self.broker
            .check_vhost_entry(vhost, &self.user)
            .map_err(|e| CloseReason::from_error(e, CONNECTION_OPEN_IDS))?;
        if !self.broker.access().may_enter(&self.user, vhost) {
            return Err(CloseReason::new(
                reply::NOT_ALLOWED,
                format!("access to vhost '{}' refused for user '{}'", open.virtual_host, self.user),
            )
            .into());
        }
        self.broker
            .register_connection(self.handle.clone(), info)
            .map_err(|e| CloseReason::from_error(e, CONNECTION_OPEN_IDS))?;
        self.registered = true;
        self.vhost = open.virtual_host.clone();
        self.handle.cancel_notify =
            client_caps.get("consumer_cancel_notify").and_then(FieldValue::as_bool).unwrap_or(false);
        self.blocked_notify = client_caps.get("connection.blocked").and_then(FieldValue::as_bool).unwrap_or(false);
        self.handle.method(0, ConnectionOpenOk::default());
        tracing::info!(
            connection = self.id,
            "connection {} accepted (user '{}', vhost '{}')",
            self.peer,
            self.user,
            self.vhost
        );
        Ok(())
    }

    /// EXTERNAL: the user is the common name of the client's verified
    /// certificate, and must exist; no password.
    fn authenticate_external(&self) -> Result<String, CloseReason> {
        let refused = |why: String| {
            tracing::warn!(connection = self.id, "EXTERNAL login refused for {}: {why}", self.peer);
            CloseReason::new(
                reply::ACCESS_REFUSED,
                "Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile.",
            )
        };
        let Some(user) = self.transport.peer_common_name.clone() else {
            return Err(refused("no verified client certificate".into()));
        };
        if self.broker.access().user(&user).is_none() {
            return Err(refused(format!("no user '{user}' (the certificate's common name)")));
        }
        if self.broker.access().loopback_only(&user) && !super::is_loopback(&self.peer) {
            return Err(refused(format!("user '{user}' can only connect via localhost")));
        }
        Ok(user)
    }

    fn authenticate(&self, m: &ConnectionStartOk) -> Result<String, CloseReason> {
        let (user, password) = match m.mechanism.as_str() {
            "PLAIN" => {
                // [authzid] NUL authcid NUL passwd
                let mut parts = m.response.split(|b| *b == 0);
                let _authzid = parts.next();
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(u), Some(p), None) => {
                        (String::from_utf8_lossy(u).into_owned(), String::from_utf8_lossy(p).into_owned())
                    }
                    _ => return Err(CloseReason::new(reply::ACCESS_REFUSED, "malformed PLAIN response")),
                }
            }
            "AMQPLAIN" => {
                let table = FieldTable::decode_entries(m.response.clone()).map_err(|e| {
                    CloseReason::new(reply::ACCESS_REFUSED, format!("malformed AMQPLAIN response: {e}"))
                })?;
                let field = |k: &str| table.get(k).and_then(FieldValue::as_str).map(str::to_string);
                match (field("LOGIN"), field("PASSWORD")) {
                    (Some(u), Some(p)) => (u, p),
                    _ => {
                        return Err(CloseReason::new(
                            reply::ACCESS_REFUSED,
                            "AMQPLAIN response lacks LOGIN or PASSWORD",
                        ));
                    }
                }
            }
            "EXTERNAL" => return self.authenticate_external(),
            other => {
                return Err(CloseReason::new(
                    reply::ACCESS_REFUSED,
                    format!("unsupported authentication mechanism '{other}'"),
                ));
            }
        };
        let refused = || {
            CloseReason::new(
                reply::ACCESS_REFUSED,
                format!(
                    "Login was refused using authentication mechanism {}. For details see the broker logfile.",
                    m.mechanism
                ),
            )
        };
        let access = self.broker.access();
        if !access.authenticate(&user, &password) {
            tracing::warn!(
                connection = self.id,
                "login refused for {}: unknown user '{user}' or wrong password",
                self.peer
            );
            return Err(refused());
        }
        if access.loopback_only(&user) && !super::is_loopback(&self.peer) {
            tracing::warn!(
                connection = self.id,
                "login refused for {}: user '{user}' can only connect via localhost",
                self.peer
            );
            return Err(refused());
        }
        Ok(user)
    }

    /// Applies connection.tune-ok the way RabbitMQ does: the client may
    /// lower channel_max and frame_max (0 means "no limit", i.e. ours) but not
    /// exceed them, and its heartbeat value is the one used.
    fn negotiate(&mut self, m: &ConnectionTuneOk) -> Result<(), CloseReason> {
        let server_frame_max = self.config.frame_max;
        let frame_max = if m.frame_max == 0 { server_frame_max } else { m.frame_max };
        if frame_max > server_frame_max || frame_max < FRAME_MIN_SIZE {
            return Err(CloseReason::new(
                reply::NOT_ALLOWED,
                format!(
                    "failed to negotiate connection parameters: frame_max={} not in {FRAME_MIN_SIZE}..={server_frame_max}",
                    m.frame_max
                ),
            ));
        }
        let server_channel_max = self.config.channel_max;
        let channel_max = if m.channel_max == 0 { server_channel_max } else { m.channel_max };
        if channel_max > server_channel_max {
            return Err(CloseReason::new(
                reply::NOT_ALLOWED,
                format!(
                    "failed to negotiate connection parameters: channel_max={} > {server_channel_max}",
                    m.channel_max
                ),
            ));
        }
        self.frame_max = frame_max;
        self.channel_max = channel_max;
        self.heartbeat = m.heartbeat;
        self.tuning.frame_max.store(frame_max, Ordering::Relaxed);
        self.tuning.heartbeat.store(m.heartbeat, Ordering::Relaxed);
        Ok(())
    }
}
