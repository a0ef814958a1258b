//! Password hashes as RabbitMQ stores them (`rabbit_password_hashing_sha256`):
//! base64 of a 4-byte random salt followed by SHA-256(salt ++ password), so
//! that users exported from RabbitMQ log in to Warren and back.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// The hashing algorithm name RabbitMQ writes next to the hash.
pub const SHA256: &str = "rabbit_password_hashing_sha256";

/// A fresh salted hash of `password`.
pub fn hash(password: &str) -> String {
    let salt: [u8; 4] = fastrand::u32(..).to_be_bytes();
    encode(&salt, password)
}

fn encode(salt: &[u8], password: &str) -> String {
    let mut bytes = salt.to_vec();
    bytes.extend_from_slice(&Sha256::new().chain_update(salt).chain_update(password.as_bytes()).finalize());
    STANDARD.encode(bytes)
}

/// Whether `password` matches a stored hash; an empty hash (a user with no
/// password, as RabbitMQ allows) matches nothing.
pub fn verify(stored: &str, password: &str) -> bool {
    let Ok(bytes) = STANDARD.decode(stored) else { return false };
    if bytes.len() != 4 + 32 {
        return false;
    }
    encode(&bytes[..4], password) == stored
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = super::hash("s3cret");
        assert!(super::verify(&h, "s3cret"));
        assert!(!super::verify(&h, "s3cret "));
        assert!(!super::verify("", ""));
    }

    #[test]
    fn a_hash_made_by_rabbitmq_verifies() {
        // alice / alice-secret in tests/fixtures/rabbitmq-definitions.json,
        // exported by RabbitMQ 3.10.8.
        assert!(super::verify("9yBN4jdGLv/7i39sUpMV0OauAWzKN07PJ+/dwndAGYJDKTcz", "alice-secret"));
        assert!(!super::verify("9yBN4jdGLv/7i39sUpMV0OauAWzKN07PJ+/dwndAGYJDKTcz", "alice"));
    }

    #[test]
    fn the_hash_is_the_salt_then_the_digest_of_salt_and_password() {
        use base64::Engine;
        use sha2::Digest;
        let stored = super::hash("guest");
        let bytes = base64::engine::general_purpose::STANDARD.decode(&stored).expect("base64");
        assert_eq!(bytes.len(), 36);
        let digest = sha2::Sha256::digest([&bytes[..4], b"guest"].concat());
        assert_eq!(&bytes[4..], &digest[..]);
    }
}
