//! The second factor: TOTP (RFC 6238: HMAC-SHA1, 6 digits, 30 s steps, one
//! step either side for clock drift, as authenticator apps expect) and
//! single-use recovery codes. Pure: which step a code is good for, never
//! whether it was used (the store keeps the last step taken).

use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

/// Seconds per time step.
pub const STEP: u64 = 30;
/// Recovery codes given at confirmation.
pub const RECOVERY_CODES: usize = 10;
const ISSUER: &str = "bankmesh";

/// 160 random bits, as RFC 4226 recommends.
pub fn new_seed() -> Vec<u8> {
    let mut seed = vec![0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    seed
}

pub struct Totp(TOTP);

impl Totp {
    /// `account` labels it in the authenticator app (the user's email).
    pub fn new(seed: Vec<u8>, account: &str) -> anyhow::Result<Self> {
        let label = account.replace(':', "");
        TOTP::new(Algorithm::SHA1, 6, 1, STEP, seed, Some(ISSUER.to_owned()), label)
            .map(Self)
            .map_err(|e| anyhow::anyhow!("a TOTP seed: {e}"))
    }

    /// From the base32 secret an authenticator app is given (what a client
    /// or a test computes codes from).
    pub fn from_base32(secret: &str, account: &str) -> anyhow::Result<Self> {
        let seed = totp_rs::Secret::Encoded(secret.to_owned())
            .to_bytes()
            .map_err(|e| anyhow::anyhow!("not a base32 secret: {e:?}"))?;
        Self::new(seed, account)
    }

    /// The `otpauth://totp/...` URI an authenticator app takes (as a QR code).
    pub fn uri(&self) -> String {
        self.0.get_url()
    }

    pub fn secret_base32(&self) -> String {
        self.0.get_secret_base32()
    }

    /// The code for the step `at` (Unix seconds) falls in.
    pub fn code_at(&self, at: u64) -> String {
        self.0.generate(at)
    }

    /// The time step `code` is good for at `now` (this step or one either
    /// side), if it is later than `after_step` (the last one taken): a code
    /// is good once, and never one older than the last.
    pub fn step_of(&self, code: &str, now: u64, after_step: i64) -> Option<i64> {
        if !is_totp_code(code) {
            return None;
        }
        let current = (now / STEP) as i64;
        (current - 1..=current + 1).filter(|s| *s > after_step && *s >= 0).find(|s| {
            let expected = self.0.generate(*s as u64 * STEP);
            bool::from(expected.as_bytes().ct_eq(code.as_bytes()))
        })
    }
}

pub fn is_totp_code(code: &str) -> bool {
    code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit())
}

/// Ten codes like `k7m2q-9xw4t`, each good once in place of a TOTP code.
pub fn new_recovery_codes() -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::rngs::OsRng;
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut c: String = (0..10).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect();
            c.insert(5, '-');
            c
        })
        .collect()
}

/// What is stored of a recovery code (50 random bits: a digest suffices,
/// and guessing is throttled like codes are).
pub fn recovery_hash(code: &str) -> Vec<u8> {
    let normal: String = code.trim().to_lowercase().chars().filter(|c| *c != '-' && *c != ' ').collect();
    Sha256::new_with_prefix(b"bankmesh recovery code\0").chain_update(normal.as_bytes()).finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238, appendix B: the SHA-1 seed "12345678901234567890".
    #[test]
    fn codes_are_rfc_6238s() {
        let totp = Totp::new(b"12345678901234567890".to_vec(), "ada@example.com").unwrap();
        // The RFC's 8-digit values, cut to their last 6 digits.
        for (at, code) in
            [(59, "287082"), (1_111_111_109, "081804"), (1_234_567_890, "005924"), (2_000_000_000, "279037")]
        {
            assert_eq!(totp.code_at(at), code, "at {at}");
        }
    }

    #[test]
    fn a_code_is_good_for_its_step_one_either_side_and_only_after_the_last_taken() {
        let totp = Totp::new(new_seed(), "ada@example.com").unwrap();
        let now = 1_800_000_015;
        let step = (now / STEP) as i64;
        let code = totp.code_at(now);
        assert_eq!(totp.step_of(&code, now, 0), Some(step));
        assert_eq!(totp.step_of(&code, now + STEP, 0), Some(step), "a step late: clock drift");
        assert_eq!(totp.step_of(&code, now - STEP, 0), Some(step), "a step early");
        assert_eq!(totp.step_of(&code, now + 2 * STEP, 0), None, "two steps late: the wrong window");
        assert_eq!(totp.step_of(&code, now, step), None, "taken already");
        assert_eq!(totp.step_of(&totp.code_at(now - STEP), now, step), None, "older than the last taken");
        assert_eq!(totp.step_of("12345", now, 0), None);
        assert_eq!(totp.step_of("abcdef", now, 0), None);
    }

    #[test]
    fn recovery_codes_are_distinct_and_typed_loosely() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert!(codes.iter().all(|c| c.len() == 11 && c.as_bytes()[5] == b'-'));
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), RECOVERY_CODES);
        let c = &codes[0];
        assert_eq!(recovery_hash(c), recovery_hash(&format!(" {} ", c.to_uppercase().replace('-', ""))));
        assert_ne!(recovery_hash(c), recovery_hash(&codes[1]));
    }
}
