//! Secrets at rest: broker passwords are sealed with ChaCha20-Poly1305 (an AEAD) under a 32-byte
//! key from `FLEETFLOW_SECRET_KEY` (64 hex digits) or `FLEETFLOW_SECRET_KEY_FILE`. A sealed value
//! is `version (1) || nonce (12) || ciphertext+tag`; the product id is the associated data, so a
//! sealed password cannot be moved to another product's row.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

const VERSION: u8 = 1;

/// Secret-handling errors.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// No key configured.
    #[error("no secret key: set FLEETFLOW_SECRET_KEY (64 hex digits) or FLEETFLOW_SECRET_KEY_FILE to store or use broker passwords")]
    NoKey,
    /// The key is not 32 bytes of hex.
    #[error("the secret key must be 64 hex digits (32 bytes)")]
    BadKey,
    /// Key file unreadable.
    #[error("secret key file {0}: {1}")]
    KeyFile(String, std::io::Error),
    /// Wrong key or tampered value.
    #[error(
        "cannot decrypt the stored password: wrong FLEETFLOW_SECRET_KEY, or the value was altered"
    )]
    Decrypt,
    /// Unknown format.
    #[error("stored password has an unknown format")]
    Format,
}

/// A sealing key.
#[derive(Clone)]
pub struct SecretKey(Key);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl SecretKey {
    /// Parses 64 hex digits.
    pub fn from_hex(hex_key: &str) -> Result<Self, SecretError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| SecretError::BadKey)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| SecretError::BadKey)?;
        Ok(Self(arr.into()))
    }

    /// From `FLEETFLOW_SECRET_KEY` or `FLEETFLOW_SECRET_KEY_FILE`; `None` when neither is set.
    pub fn from_env() -> Result<Option<Self>, SecretError> {
        if let Ok(k) = std::env::var("FLEETFLOW_SECRET_KEY") {
            return Self::from_hex(&k).map(Some);
        }
        if let Ok(f) = std::env::var("FLEETFLOW_SECRET_KEY_FILE") {
            let k = std::fs::read_to_string(&f).map_err(|e| SecretError::KeyFile(f.clone(), e))?;
            return Self::from_hex(&k).map(Some);
        }
        Ok(None)
    }

    /// Seals `plain` for the row identified by `context`.
    pub fn seal(&self, plain: &str, context: &str) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(&self.0);
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 encryption of a short password cannot fail");
        let mut out = Vec::with_capacity(1 + 12 + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a sealed value.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<String, SecretError> {
        if sealed.len() < 1 + 12 + 16 || sealed[0] != VERSION {
            return Err(SecretError::Format);
        }
        let cipher = ChaCha20Poly1305::new(&self.0);
        let nonce: [u8; 12] = sealed[1..13].try_into().map_err(|_| SecretError::Format)?;
        let plain = cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &sealed[13..],
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Decrypt)?;
        String::from_utf8(plain).map_err(|_| SecretError::Format)
    }
}

impl fleetflow_actors::source_manager::PasswordOpener for SecretKey {
    fn open(
        &self,
        sealed: &[u8],
        context: &str,
    ) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        SecretKey::open(self, sealed, context).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_hex(&hex::encode([b; 32])).unwrap()
    }

    #[test]
    fn sealed_passwords_open_only_with_the_same_key_and_row() {
        let k = key(7);
        let sealed = k.seal("hunter2", "product:1");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"), "not plaintext");
        assert_eq!(k.open(&sealed, "product:1").unwrap(), "hunter2");
        assert!(matches!(
            k.open(&sealed, "product:2"),
            Err(SecretError::Decrypt)
        ));
        assert!(matches!(
            key(8).open(&sealed, "product:1"),
            Err(SecretError::Decrypt)
        ));
        assert_ne!(
            k.seal("hunter2", "product:1"),
            sealed,
            "a fresh nonce every time"
        );
    }

    #[test]
    fn keys_must_be_64_hex_digits() {
        assert!(SecretKey::from_hex("abcd").is_err());
        assert!(SecretKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(format!("{:?}", key(1)).contains("***"));
    }
}
