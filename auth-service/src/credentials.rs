//! Passwords (argon2id) and tokens (EdDSA access JWTs, opaque refresh tokens
//! of which only a SHA-256 is stored).

use anyhow::Result;
use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use bank_platform::auth::{Claims, ROLE_ADMIN, ROLE_CUSTOMER, ROLE_SERVICE, ROLE_TELLER, TokenSigner};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// argon2id with the crate's defaults (m = 19 MiB, t = 2, p = 1, OWASP's minimum).
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// CPU-heavy work off the async threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| anyhow::anyhow!("hashing task failed: {e}"))
}

pub fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn refresh_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The roles a token carries: an admin is an admin; anyone else is a
/// customer, plus teller when granted (a service principal is only a service).
pub fn role_claims(roles: &[String]) -> Vec<String> {
    let has = |role: &str| roles.iter().any(|r| r == role);
    if has(ROLE_ADMIN) {
        vec![ROLE_ADMIN.into()]
    } else if has(ROLE_SERVICE) {
        vec![ROLE_SERVICE.into()]
    } else if has(ROLE_TELLER) {
        vec![ROLE_CUSTOMER.into(), ROLE_TELLER.into()]
    } else {
        vec![ROLE_CUSTOMER.into()]
    }
}

pub struct AccessToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

#[allow(clippy::too_many_arguments)]
/// How a session was started, and when: what its access tokens say (`amr`,
/// `auth_time`), from login to its last refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub amr: Vec<String>,
    pub at: DateTime<Utc>,
}

impl Authenticated {
    /// A password, and a second factor if one was given.
    pub fn now(second_factor: bool) -> Self {
        let mut amr = vec!["pwd".to_owned()];
        if second_factor {
            amr.push("otp".to_owned());
        }
        Self { amr, at: Utc::now() }
    }
}

/// Who a token is for, as its claims say.
pub struct Holder<'a> {
    pub id: Uuid,
    pub roles: &'a [String],
    pub status: &'a str,
    pub standing_seq: i64,
}

pub fn access_token(
    signer: &TokenSigner,
    issuer: &str,
    audience: &str,
    ttl: Duration,
    holder: Holder<'_>,
    how: &Authenticated,
) -> Result<AccessToken> {
    let Holder { id: user, roles, status, standing_seq } = holder;
    let now = Utc::now();
    let expires_at = now + ttl;
    let claims = Claims {
        sub: user.to_string(),
        iss: issuer.into(),
        aud: audience.into(),
        exp: expires_at.timestamp(),
        nbf: now.timestamp(),
        iat: now.timestamp(),
        jti: Uuid::now_v7().to_string(),
        roles: role_claims(roles),
        status: status.into(),
        sv: standing_seq,
        amr: how.amr.clone(),
        auth_time: how.at.timestamp(),
    };
    Ok(AccessToken { token: signer.sign(&claims)?, expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_with_the_right_secret() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterx", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn refresh_tokens_are_random_and_stored_as_digests() {
        let (a, b) = (new_refresh_token(), new_refresh_token());
        assert_ne!(a, b);
        assert_eq!(refresh_hash(&a).len(), 32);
        assert_ne!(refresh_hash(&a), a.as_bytes());
    }
}
