//! Secrets a service must read back (webhook signing secrets, TOTP seeds)
//! sealed at rest: XChaCha20-Poly1305 under a key only that service holds
//! (a file of 32 random bytes, base64), with the id of what the secret
//! belongs to (an endpoint, a user) as associated data. A copy of the
//! database (a backup, a replica, a stolen password of another role) gives
//! no secret, and a sealed secret copied onto another row does not open
//! there.
//!
//! Stored as `sealed:v1:<key id>:<base64 of nonce and ciphertext>`; the key
//! id (a digest of the key) names which key sealed it, so a new key can be
//! introduced later beside the old one.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, AeadCore, OsRng, Payload},
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const PREFIX: &str = "sealed:v1:";

/// How secrets are kept: sealed under the service's key, or (no key
/// configured: a development stack only) as they are.
#[derive(Clone)]
pub struct Secrets(Option<Arc<Sealer>>);

pub struct Sealer {
    cipher: XChaCha20Poly1305,
    kid: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(s) => write!(f, "Secrets(sealed under key {})", s.kid),
            None => write!(f, "Secrets(unsealed)"),
        }
    }
}

impl Secrets {
    /// Secrets stored as they are (development only).
    pub fn unsealed() -> Self {
        Self(None)
    }

    /// Sealed under `key` (32 bytes).
    pub fn sealed_with(key: &[u8]) -> Result<Self> {
        if key.len() != 32 {
            bail!("a secrets key must be 32 bytes, not {}", key.len());
        }
        let kid = hex(&Sha256::digest(key)[..4]);
        let cipher = XChaCha20Poly1305::new_from_slice(key).map_err(|_| anyhow::anyhow!("a 32-byte key"))?;
        Ok(Self(Some(Arc::new(Sealer { cipher, kid }))))
    }

    /// From a key file (32 bytes, base64: `openssl rand -base64 32`).
    pub fn from_file(path: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let key = B64.decode(text.trim()).with_context(|| format!("{path} is not base64"))?;
        Self::sealed_with(&key)
    }

    pub fn is_sealed(&self) -> bool {
        self.0.is_some()
    }

    /// What to store for the `secret` of `owner` (the row it belongs to).
    pub fn seal(&self, owner: Uuid, secret: &str) -> Result<String> {
        let Some(s) = &self.0 else { return Ok(secret.to_owned()) };
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = s
            .cipher
            .encrypt(&nonce, Payload { msg: secret.as_bytes(), aad: owner.as_bytes() })
            .map_err(|_| anyhow::anyhow!("sealing a secret failed"))?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}:{}", s.kid, B64.encode(bytes)))
    }

    /// The secret `stored` for `owner` holds; an error if it was sealed for
    /// another owner or under another key, or changed.
    pub fn open(&self, owner: Uuid, stored: &str) -> Result<String> {
        let Some(s) = &self.0 else {
            if stored.starts_with(PREFIX) {
                bail!("the secret is sealed and no key is configured to open it");
            }
            return Ok(stored.to_owned());
        };
        let Some((kid, body)) = stored.strip_prefix(PREFIX).and_then(|r| r.split_once(':')) else {
            bail!("the stored secret is not sealed");
        };
        if kid != s.kid {
            bail!("the secret was sealed under key {kid}, not this service's {}", s.kid);
        }
        let bytes = B64.decode(body).context("a sealed secret is not base64")?;
        if bytes.len() < 24 {
            bail!("a sealed secret is too short");
        }
        let (nonce, sealed) = bytes.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().context("a 24-byte nonce")?;
        let plain = s
            .cipher
            .decrypt(&XNonce::from(nonce), Payload { msg: sealed, aad: owner.as_bytes() })
            .map_err(|_| anyhow::anyhow!("the sealed secret does not open for this owner"))?;
        String::from_utf8(plain).context("a sealed secret is not text")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_for_its_endpoint_only_and_under_its_key_only() {
        let secrets = Secrets::sealed_with(&[7u8; 32]).unwrap();
        let (mine, theirs) = (Uuid::now_v7(), Uuid::now_v7());
        let stored = secrets.seal(mine, "whsec_abc").unwrap();
        assert!(stored.starts_with("sealed:v1:") && !stored.contains("whsec_abc"), "{stored}");
        assert_eq!(secrets.open(mine, &stored).unwrap(), "whsec_abc");
        assert_ne!(secrets.seal(mine, "whsec_abc").unwrap(), stored, "a fresh nonce each time");
        assert!(secrets.open(theirs, &stored).is_err(), "copied onto another endpoint");
        let other_key = Secrets::sealed_with(&[8u8; 32]).unwrap();
        assert!(other_key.open(mine, &stored).is_err(), "another key");
        assert!(secrets.open(mine, "whsec_abc").is_err(), "a plain secret where a sealed one belongs");
        let mut flipped = stored.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(secrets.open(mine, std::str::from_utf8(&flipped).unwrap()).is_err(), "changed");
        assert!(Secrets::unsealed().open(mine, &stored).is_err(), "sealed, and no key to open it");
        assert!(Secrets::sealed_with(&[1u8; 16]).is_err(), "a short key");
    }
}
