//! A minimal HTTP/1.1 client over a plain TCP stream, for the tests that
//! must see exact status codes, headers and bodies (the management API's
//! errors, KEDA's requests, Prometheus scrapes): one request per
//! connection (`Connection: close`), bounded by `WAIT`.

use std::net::SocketAddr;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::amqp::{WAIT, within};

/// A reply: status code, header lines (names lower-cased) and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends one request; `auth` is (user, password) for basic auth; a body
/// goes as application/json.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<&str>,
) -> Reply {
    request_typed(addr, method, path, auth, body, "application/json").await
}

/// As [`request`], with the body's content type given.
pub async fn request_typed(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<&str>,
    content_type: &str,
) -> Reply {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((user, password)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        text.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        text.push_str(&format!("Content-Type: {content_type}\r\nContent-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    let raw = within(&format!("{method} {path}"), async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the HTTP port");
        stream.write_all(text.as_bytes()).await.expect("send the request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read the reply");
        raw
    })
    .await;
    parse(&raw).unwrap_or_else(|| panic!("not an HTTP reply (within {WAIT:?}): {:?}", String::from_utf8_lossy(&raw)))
}

/// GET with basic auth.
pub async fn get(addr: SocketAddr, path: &str, auth: Option<(&str, &str)>) -> Reply {
    request(addr, "GET", path, auth, None).await
}

fn parse(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body)?;
    }
    Some(Reply { status, headers, body: String::from_utf8(body).ok()? })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = data.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&data[..end]).ok()?.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(end + 2..end + 2 + size)?);
        data = data.get(end + 4 + size..)?;
    }
}
