//! Login throttling in Redis: failures per email and attempts per client
//! address, each in a fixed window. Redis down means UNAVAILABLE, never an
//! unthrottled login.

use std::time::Duration;

use bank_platform::redis::Redis;

#[derive(Debug, Clone)]
pub struct Limits {
    pub failures_per_email: u32,
    pub attempts_per_address: u32,
    pub window: Duration,
}

/// Whether counts already seen forbid another attempt. Pure. An address the
/// email's owner has logged in from before is not locked out by failures
/// elsewhere (a stranger's guesses must not lock the owner out); it keeps its
/// own per-address limit.
pub fn is_throttled(limits: &Limits, email_failures: u32, address_attempts: u32, known_address: bool) -> bool {
    (email_failures >= limits.failures_per_email && !known_address) || address_attempts >= limits.attempts_per_address
}

/// How long an address stays known for an email after a successful login.
const KNOWN_ADDRESS_SECS: i64 = 30 * 24 * 3600;

pub struct LoginThrottle {
    redis: Redis,
    prefix: String,
    limits: Limits,
}

impl LoginThrottle {
    pub fn new(redis: Redis, prefix: String, limits: Limits) -> Self {
        Self { redis, prefix, limits }
    }

    /// The same limits over keys of their own (no login key can name them).
    pub fn namespaced(&self, namespace: &str) -> Self {
        Self { redis: self.redis.clone(), prefix: format!("{}{namespace}:", self.prefix), limits: self.limits.clone() }
    }

    fn email_key(&self, email: &str) -> String {
        format!("{}login:email:{email}", self.prefix)
    }

    fn address_key(&self, address: &str) -> String {
        format!("{}login:addr:{address}", self.prefix)
    }

    fn known_key(&self, email: &str) -> String {
        format!("{}login:known:{email}", self.prefix)
    }

    /// Counts this attempt against the address and says whether to refuse it.
    pub async fn check(&self, email: &str, address: &str) -> redis::RedisResult<bool> {
        let mut r = self.redis.clone();
        let window = self.limits.window.as_secs().max(1) as i64;
        let (failures, attempts, known): (Option<u32>, u32, bool) = redis::pipe()
            .get(self.email_key(email))
            .incr(self.address_key(address), 1)
            .cmd("EXPIRE")
            .arg(self.address_key(address))
            .arg(window)
            .arg("NX")
            .ignore()
            .sismember(self.known_key(email), address)
            .query_async(&mut r)
            .await?;
        // The attempt just counted is allowed up to and including the limit.
        Ok(is_throttled(&self.limits, failures.unwrap_or(0), attempts.saturating_sub(1), known))
    }

    pub async fn record_failure(&self, email: &str) -> redis::RedisResult<()> {
        let mut r = self.redis.clone();
        let window = self.limits.window.as_secs().max(1) as i64;
        redis::pipe()
            .incr(self.email_key(email), 1)
            .ignore()
            .cmd("EXPIRE")
            .arg(self.email_key(email))
            .arg(window)
            .arg("NX")
            .ignore()
            .query_async::<()>(&mut r)
            .await
    }

    /// Clears the email's failures and, given an address, remembers it as
    /// one the owner logs in from. (Client credentials are throttled per
    /// address already: they remember none.)
    pub async fn record_success(&self, email: &str, known: Option<&str>) -> redis::RedisResult<()> {
        let mut r = self.redis.clone();
        let mut pipe = redis::pipe();
        pipe.del(self.email_key(email)).ignore();
        if let Some(address) = known {
            pipe.sadd(self.known_key(email), address).ignore();
            pipe.expire(self.known_key(email), KNOWN_ADDRESS_SECS).ignore();
        }
        pipe.query_async::<()>(&mut r).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_inclusive_per_email_and_per_address() {
        let l = Limits { failures_per_email: 5, attempts_per_address: 20, window: Duration::from_secs(900) };
        assert!(!is_throttled(&l, 4, 0, false));
        assert!(is_throttled(&l, 5, 0, false));
        assert!(!is_throttled(&l, 0, 19, false));
        assert!(is_throttled(&l, 0, 20, false));
    }

    #[test]
    fn failures_elsewhere_do_not_lock_the_owner_out_of_a_known_address() {
        let l = Limits { failures_per_email: 5, attempts_per_address: 20, window: Duration::from_secs(900) };
        assert!(!is_throttled(&l, 50, 0, true));
        assert!(is_throttled(&l, 50, 20, true), "a known address keeps its own limit");
    }
}
