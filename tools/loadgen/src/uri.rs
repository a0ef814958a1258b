//! The `amqp://user:pass@host:port/vhost` URI: parsing and percent-decoding.
//!
//! Owns nothing but the address and credentials a connection needs; only the
//! plain `amqp` scheme is accepted (the load generator has no TLS).

use anyhow::{Context, Result, bail};

/// Where to connect and as whom.
#[derive(Debug, Clone, PartialEq)]
pub struct AmqpUri {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
}

impl AmqpUri {
    /// Parses `amqp://[user[:pass]@]host[:port][/vhost]`. Defaults follow the
    /// AMQP URI spec as RabbitMQ reads it: guest/guest, port 5672, vhost `/`
    /// (an empty path), with `%2f` in the path decoding to `/`.
    pub fn parse(text: &str) -> Result<AmqpUri> {
        let rest = text.strip_prefix("amqp://").with_context(|| format!("'{text}' is not an amqp:// URI"))?;
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((name, pass)) => (decode(name)?, decode(pass)?),
                None => (decode(u)?, String::new()),
            },
            None => ("guest".to_string(), "guest".to_string()),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').with_context(|| format!("unclosed '[' in '{text}'"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().with_context(|| format!("bad port '{p}' in '{text}'"))?,
            None => 5672,
        };
        if host.is_empty() {
            bail!("no host in '{text}'");
        }
        let vhost = match path {
            None | Some("") => "/".to_string(),
            Some(p) => decode(p)?,
        };
        Ok(AmqpUri { host: decode(&host)?, port, user, password, vhost })
    }

    /// `host:port`, bracketed for IPv6, for `TcpStream::connect`.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn decode(s: &str) -> Result<String> {
    let raw = s.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
            match byte {
                Some(b) => out.push(b),
                None => bail!("bad percent escape in '{s}'"),
            }
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).with_context(|| format!("'{s}' is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_uri() {
        let u = AmqpUri::parse("amqp://app:s%40cret@127.0.0.1:5680/%2f").unwrap();
        assert_eq!(u.user, "app");
        assert_eq!(u.password, "s@cret");
        assert_eq!(u.address(), "127.0.0.1:5680");
        assert_eq!(u.vhost, "/");
    }

    #[test]
    fn defaults() {
        let u = AmqpUri::parse("amqp://localhost").unwrap();
        assert_eq!((u.user.as_str(), u.password.as_str(), u.port, u.vhost.as_str()), ("guest", "guest", 5672, "/"));
        assert_eq!(AmqpUri::parse("amqp://[::1]:5673/v").unwrap().address(), "[::1]:5673");
    }

    #[test]
    fn refuses_garbage() {
        assert!(AmqpUri::parse("http://x").is_err());
        assert!(AmqpUri::parse("amqp://h:notaport/").is_err());
        assert!(AmqpUri::parse("amqp://h/%zz").is_err());
    }
}
