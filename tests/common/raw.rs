//! A bare AMQP client over a plain TCP socket, for tests that must send what
//! no well-behaved client library would (garbage, truncated or oversized
//! frames, methods out of order) and watch the broker's exact answer.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use warren::protocol::method::*;
use warren::protocol::{FieldTable, Frame, Method, decode_frame, encode_method};

pub const HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";

pub struct RawClient {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        RawClient { stream, buf: BytesMut::new() }
    }

    /// Connects and completes the handshake as guest/guest with the given heartbeat.
    pub async fn open(addr: SocketAddr, heartbeat: u16) -> RawClient {
        RawClient::open_with_properties(addr, heartbeat, FieldTable::new()).await
    }

    /// The handshake, announcing these client properties (e.g. capabilities).
    pub async fn open_with_properties(addr: SocketAddr, heartbeat: u16, client_properties: FieldTable) -> RawClient {
        match RawClient::handshake(addr, ("guest", "guest", "/"), heartbeat, client_properties).await {
            Ok(c) => c,
            Err(close) => panic!("expected connection.open-ok, got {close:?}"),
        }
    }

    /// The handshake as `user` with `password` into `vhost`: the opened
    /// connection, or the broker's connection.close (code and text).
    pub async fn open_as(
        addr: SocketAddr,
        user: &str,
        password: &str,
        vhost: &str,
    ) -> Result<RawClient, (u16, String)> {
        RawClient::handshake(addr, (user, password, vhost), 0, FieldTable::new())
            .await
            .map_err(|close| (close.reply_code, close.reply_text))
    }

    async fn handshake(
        addr: SocketAddr,
        (user, password, vhost): (&str, &str, &str),
        heartbeat: u16,
        client_properties: FieldTable,
    ) -> Result<RawClient, ConnectionClose> {
        let mut c = RawClient::connect(addr).await;
        c.send_bytes(HEADER).await;
        let tune = loop {
            match c.expect_method().await {
                Method::ConnectionStart(_) => {
                    let response = Bytes::from(format!("\0{user}\0{password}"));
                    let mechanism = "PLAIN".into();
                    let locale = "en_US".into();
                    let client_properties = client_properties.clone();
                    c.send_method(0, ConnectionStartOk { client_properties, mechanism, response, locale }).await
                }
                Method::ConnectionTune(t) => break t,
                Method::ConnectionClose(close) => return Err(close),
                other => panic!("unexpected {other:?} during handshake"),
            }
        };
        c.send_method(0, ConnectionTuneOk { channel_max: tune.channel_max, frame_max: tune.frame_max, heartbeat })
            .await;
        c.send_method(0, ConnectionOpen { virtual_host: vhost.into(), ..Default::default() }).await;
        match c.expect_method().await {
            Method::ConnectionOpenOk(_) => Ok(c),
            Method::ConnectionClose(close) => Err(close),
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    pub async fn send_method(&mut self, channel: u16, method: impl Into<Method>) {
        let mut buf = BytesMut::new();
        encode_method(&mut buf, channel, &method.into());
        self.send_bytes(&buf).await;
    }

    /// The next frame, or None if the broker closed the socket (or 5 s passed).
    pub async fn read_frame(&mut self) -> Option<Frame> {
        self.read_frame_within(Duration::from_secs(5)).await
    }

    pub async fn read_frame_within(&mut self, limit: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(frame)) = decode_frame(&mut self.buf, 0) {
                return Some(frame);
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await;
            match read {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// The next method frame, skipping heartbeats.
    pub async fn expect_method(&mut self) -> Method {
        loop {
            match self.read_frame().await {
                Some(Frame::Method { method, .. }) => return method,
                Some(Frame::Heartbeat) => continue,
                other => panic!("expected a method frame, got {other:?}"),
            }
        }
    }

    /// Reads until the broker closes the socket; true if it did within `limit`.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let mut scratch = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut scratch)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}
