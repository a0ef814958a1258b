//! Who may talk on the cluster port: nodes that share the cluster's
//! cookie, a secret every node reads from a file, as Erlang nodes (and so
//! RabbitMQ's) share `.erlang.cookie`.
//!
//! Every connection starts with a mutual challenge before any frame:
//!
//! 1. the connecting node sends `WRNC`, a version byte (1) and a fresh
//!    32-byte nonce;
//! 2. the accepting node answers with its own fresh nonce and the
//!    HMAC-SHA256, keyed by the cookie, of a server label and both nonces;
//! 3. the connecting node checks it and answers with the HMAC of a client
//!    label and both nonces, which the accepting node checks.
//!
//! So each side proves it holds the cookie without sending it, and a
//! recorded handshake cannot be replayed (the other side's nonce is new).
//! It authenticates; it does not encrypt (TLS on the cluster port is a
//! later step). A connection that fails the handshake is closed before
//! anything of it is read as a request.

use std::io;
use std::path::Path;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAGIC: &[u8; 4] = b"WRNC";
const VERSION: u8 = 1;
const NONCE: usize = 32;
const TAG: usize = 32;
const SERVER_LABEL: &[u8] = b"warren cluster: accepting node";
const CLIENT_LABEL: &[u8] = b"warren cluster: connecting node";

/// The cluster's shared secret, ready to sign with.
pub struct Cookie(hmac::Key);

impl Cookie {
    pub fn from_secret(secret: &[u8]) -> Cookie {
        Cookie(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// Reads the cookie file, or makes it (64 random hex digits, readable
    /// by its owner only) when there is none. A file others may read is
    /// refused, as Erlang refuses its cookie then: the secret would not be
    /// one.
    pub fn load_or_create(path: &Path) -> Result<Cookie, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                check_private(path)?;
                let secret = text.trim();
                if secret.is_empty() {
                    return Err(format!("the cluster cookie file {} is empty", path.display()));
                }
                Ok(Cookie::from_secret(secret.as_bytes()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut secret)
                    .map_err(|_| "no random bytes for a cluster cookie".to_string())?;
                let text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
                match write_private(path, &text) {
                    Ok(()) => {
                        tracing::info!(
                            "made a new cluster cookie in {}: every node of the cluster needs this file",
                            path.display()
                        );
                        Ok(Cookie::from_secret(text.as_bytes()))
                    }
                    // Another node on this machine made it first: theirs.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Cookie::load_or_create(path),
                    Err(e) => Err(format!("cannot write the cluster cookie file {}: {e}", path.display())),
                }
            }
            Err(e) => Err(format!("cannot read the cluster cookie file {}: {e}", path.display())),
        }
    }

    fn tag(&self, label: &[u8], first: &[u8], second: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(label);
        ctx.update(first);
        ctx.update(second);
        ctx.sign()
    }

    fn verify(&self, label: &[u8], first: &[u8], second: &[u8], tag: &[u8]) -> io::Result<()> {
        let mut message = Vec::with_capacity(label.len() + first.len() + second.len());
        message.extend_from_slice(label);
        message.extend_from_slice(first);
        message.extend_from_slice(second);
        hmac::verify(&self.0, &message, tag).map_err(|_| refused("the other node does not hold this cluster's cookie"))
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "the cluster cookie file {} may be read by others (mode {:o}): make it readable by its owner only (chmod 600)",
            path.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), String> {
    Ok(())
}

fn write_private(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

fn refused(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why.to_string())
}

fn nonce() -> io::Result<[u8; NONCE]> {
    let mut nonce = [0u8; NONCE];
    SystemRandom::new().fill(&mut nonce).map_err(|_| io::Error::other("no random bytes for a nonce"))?;
    Ok(nonce)
}

/// The connecting side of the handshake.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, cookie: &Cookie) -> io::Result<()> {
    let mine = nonce()?;
    let mut hello = Vec::with_capacity(MAGIC.len() + 1 + NONCE);
    hello.extend_from_slice(MAGIC);
    hello.push(VERSION);
    hello.extend_from_slice(&mine);
    stream.write_all(&hello).await?;
    let mut answer = [0u8; NONCE + TAG];
    stream.read_exact(&mut answer).await?;
    let (theirs, tag) = answer.split_at(NONCE);
    cookie.verify(SERVER_LABEL, &mine, theirs, tag)?;
    stream.write_all(cookie.tag(CLIENT_LABEL, theirs, &mine).as_ref()).await?;
    Ok(())
}

/// The accepting side of the handshake.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, cookie: &Cookie) -> io::Result<()> {
    let mut hello = [0u8; 4 + 1 + NONCE];
    stream.read_exact(&mut hello).await?;
    if &hello[..4] != MAGIC {
        return Err(refused("not a Warren node (no cluster handshake)"));
    }
    if hello[4] != VERSION {
        return Err(refused(&format!("cluster handshake version {} (this node speaks {VERSION})", hello[4])));
    }
    let theirs = &hello[5..];
    let mine = nonce()?;
    let mut answer = Vec::with_capacity(NONCE + TAG);
    answer.extend_from_slice(&mine);
    answer.extend_from_slice(cookie.tag(SERVER_LABEL, theirs, &mine).as_ref());
    stream.write_all(&answer).await?;
    let mut tag = [0u8; TAG];
    stream.read_exact(&mut tag).await?;
    cookie.verify(CLIENT_LABEL, &mine, theirs, &tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn handshake(client: &Cookie, server: &Cookie) -> (io::Result<()>, io::Result<()>) {
        let (mut a, mut b) = tokio::io::duplex(256);
        tokio::join!(connect(&mut a, client), accept(&mut b, server))
    }

    #[tokio::test]
    async fn nodes_with_the_same_cookie_pass_and_others_are_refused_both_ways() {
        let (a, b) = handshake(&Cookie::from_secret(b"k"), &Cookie::from_secret(b"k")).await;
        assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
        // The accepting node cannot prove the cookie: the connecting one
        // refuses it before it says anything signed.
        let (mut a, mut b) = tokio::io::duplex(256);
        let (mine, other) = (Cookie::from_secret(b"k"), Cookie::from_secret(b"other"));
        let (client, server) = tokio::join!(
            async move {
                let result = connect(&mut a, &mine).await;
                drop(a);
                result
            },
            async move { accept(&mut b, &other).await }
        );
        // And the accepting node never hears the connecting one's proof.
        assert!(server.is_err());
        assert_eq!(client.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    }

    #[tokio::test]
    async fn bytes_that_are_not_the_handshake_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(256);
        a.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
        a.write_all(&[0u8; 29]).await.unwrap();
        let refused = accept(&mut b, &Cookie::from_secret(b"k")).await.unwrap_err();
        assert!(refused.to_string().contains("not a Warren node"), "{refused}");
    }

    #[test]
    fn a_cookie_file_is_made_private_and_one_others_may_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookie");
        Cookie::load_or_create(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 64);
        Cookie::load_or_create(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "an existing cookie is kept");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = Cookie::load_or_create(&path).err().unwrap();
            assert!(err.contains("chmod 600"), "{err}");
        }
    }
}
