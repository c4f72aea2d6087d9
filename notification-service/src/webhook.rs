//! Webhooks: where they may go (the SSRF guard), how they are signed
//! (Standard Webhooks), and the deliverer that works through the delivery
//! outbox — at least once, with exponential backoff and jitter, dead after
//! the last attempt, one delivery in flight per endpoint and a cap on all of
//! them, so an endpoint that is slow or down never delays another.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use bank_platform::CancellationToken;
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use chrono::Utc;
use hmac::{Hmac, Mac};
use rand::{Rng, RngCore};
use sha2::Sha256;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use bank_platform::sealed::Secrets;

/// Where webhooks may go.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Plain http to loopback receivers (a development stack only,
    /// `WEBHOOK_ALLOW_LOOPBACK`).
    pub allow_loopback: bool,
    /// The mesh's own ports (`WEBHOOK_DENY_PORTS`): never a webhook's, even
    /// on loopback in development.
    pub mesh_ports: Vec<u16>,
}

impl Guard {
    /// Whether a webhook may connect to `ip`: public unicast addresses only
    /// (loopback too in development).
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        if ip.is_loopback() {
            return self.allow_loopback;
        }
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, ..] = v4.octets();
                !(v4.is_private()
                    || v4.is_link_local()
                    || v4.is_unspecified()
                    || v4.is_broadcast()
                    || v4.is_multicast()
                    || v4.is_documentation()
                    || a == 0
                    || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                    || (a == 198 && (18..20).contains(&b)) // benchmarking
                    || a >= 240)
            }
            IpAddr::V6(v6) => {
                let first = v6.segments()[0];
                !(v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00 // unique local
                    || (first & 0xffc0) == 0xfe80 // link-local
                    || (first & 0xffc0) == 0xfec0) // site-local (deprecated)
            }
        }
    }

    /// Checks `url` for a webhook: https (or http to loopback in
    /// development), no credentials, not a mesh port, and every address its
    /// host resolves to allowed. Returns the parsed URL or why not.
    pub async fn check(&self, url: &str) -> Result<url::Url, String> {
        let parsed = url::Url::parse(url).map_err(|_| "is not a URL".to_owned())?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("must not carry credentials".into());
        }
        let host = parsed.host_str().ok_or("has no host")?.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = parsed.port_or_known_default().ok_or("has no port")?;
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|_| "does not resolve".to_owned())?
                .collect(),
        };
        if addrs.is_empty() {
            return Err("does not resolve".into());
        }
        if let Some(bad) = addrs.iter().find(|a| !self.ip_allowed(a.ip())) {
            return Err(format!("resolves to {}, which webhooks may not reach", bad.ip()));
        }
        let loopback = addrs.iter().all(|a| a.ip().is_loopback());
        match parsed.scheme() {
            "https" => {}
            "http" if loopback && self.allow_loopback => {}
            _ => return Err("must be https".into()),
        }
        if self.mesh_ports.contains(&port) && (loopback || self.allow_loopback) {
            return Err(format!("port {port} is the bank's own"));
        }
        Ok(parsed)
    }
}

/// Resolves names for the webhook client through the guard, so an address
/// a name points to at delivery time (not only when it was registered) is
/// checked before anything connects to it.
struct GuardedResolver(Guard);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| guard.ip_allowed(a.ip())).collect();
            if allowed.is_empty() {
                return Err("the webhook's host resolves to no address webhooks may reach".into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A new endpoint secret: `whsec_` and 24 random bytes, base64.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("whsec_{}", B64.encode(bytes))
}

/// `v1,<signature>` of one message under `secret`, as Standard Webhooks
/// signs: HMAC-SHA256 over `id.timestamp.body` with the secret's bytes.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Result<String> {
    let key = B64.decode(secret.trim_start_matches("whsec_")).context("a stored webhook secret is not base64")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).context("HMAC key")?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

/// How deliveries are tried.
#[derive(Debug, Clone)]
pub struct Policy {
    pub max_attempts: u32,
    /// The wait after the first failure, doubled after each next one...
    pub retry_base: Duration,
    /// ...up to this.
    pub retry_max: Duration,
    /// Longest an attempt may take.
    pub timeout: Duration,
    /// Most deliveries in flight at once (one per endpoint).
    pub concurrency: usize,
}

impl Policy {
    /// The wait after `attempts` failed attempts: exponential, capped, and
    /// jittered (50-100%) so retries of many deliveries do not arrive together.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = self.retry_base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        exp.min(self.retry_max).mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

pub struct Deliverer {
    pool: PgPool,
    guard: Guard,
    policy: Policy,
    secrets: Secrets,
    client: reqwest::Client,
    /// Woken when deliveries were written or one finished.
    wake: Arc<Notify>,
    /// Endpoints with a delivery in flight from this instance.
    busy: Mutex<HashSet<Uuid>>,
}

/// How long a claimed delivery stays this instance's beyond its timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

struct Claimed {
    id: Uuid,
    endpoint_id: Uuid,
    message_id: String,
    payload: String,
    attempts: i32,
}

impl Deliverer {
    pub fn new(pool: PgPool, guard: Guard, policy: Policy, secrets: Secrets, wake: Arc<Notify>) -> Result<Arc<Self>> {
        let mut builder = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver(guard.clone())))
            // A redirect could lead anywhere: a webhook is answered where it was sent.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(policy.timeout)
            .connect_timeout(policy.timeout)
            .tls_built_in_root_certs(false);
        for cert in rustls_native_certs::load_native_certs().certs {
            if let Ok(cert) = reqwest::Certificate::from_der(&cert) {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().context("the webhook HTTP client")?;
        Ok(Arc::new(Self { pool, guard, policy, secrets, client, wake, busy: Mutex::new(HashSet::new()) }))
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<()> {
        let slots = Arc::new(Semaphore::new(self.policy.concurrency));
        loop {
            let free = slots.available_permits();
            if free > 0 {
                match self.claim(free).await {
                    Ok(claimed) => {
                        for d in claimed {
                            let Ok(permit) = slots.clone().try_acquire_owned() else { break };
                            let me = self.clone();
                            tokio::spawn(async move {
                                let endpoint = d.endpoint_id;
                                if let Err(e) = me.deliver(d).await {
                                    tracing::warn!(error = %e, "recording a webhook attempt failed; it is tried again");
                                }
                                me.busy.lock().expect("not poisoned").remove(&endpoint);
                                drop(permit);
                                me.wake.notify_one();
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming webhook deliveries failed"),
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Takes up to `n` due deliveries, at most one per endpoint and none of
    /// an endpoint this instance is already delivering to.
    async fn claim(&self, n: usize) -> Result<Vec<Claimed>> {
        let busy: Vec<Uuid> = self.busy.lock().expect("not poisoned").iter().copied().collect();
        let lease = self.policy.timeout + LEASE_MARGIN;
        let until = Utc::now() + chrono::Duration::from_std(lease)?;
        let rows = sqlx::query!(
            "WITH due AS (
                 SELECT DISTINCT ON (endpoint_id) id FROM webhook_deliveries
                 WHERE state = 'PENDING' AND next_attempt_at <= now()
                   AND (leased_until IS NULL OR leased_until < now()) AND NOT (endpoint_id = ANY($1))
                 ORDER BY endpoint_id, next_attempt_at, created_at
                 LIMIT $2)
             UPDATE webhook_deliveries d SET leased_until = $3
             FROM due
             WHERE d.id = due.id AND d.state = 'PENDING' AND (d.leased_until IS NULL OR d.leased_until < now())
             RETURNING d.id, d.endpoint_id, d.notification_id, d.payload, d.attempts",
            &busy,
            n as i64,
            until
        )
        .fetch_all(&self.pool)
        .await?;
        let mut taken = self.busy.lock().expect("not poisoned");
        Ok(rows
            .into_iter()
            .filter(|r| taken.insert(r.endpoint_id))
            .map(|r| Claimed {
                id: r.id,
                endpoint_id: r.endpoint_id,
                message_id: format!("msg_{}", r.notification_id.simple()),
                payload: r.payload,
                attempts: r.attempts,
            })
            .collect())
    }

    /// The `webhook-signature` header: under the secret, and under the
    /// previous one while a rotation overlaps.
    fn signatures(
        &self,
        endpoint: Uuid,
        secret: &str,
        previous: &Option<String>,
        until: Option<chrono::DateTime<Utc>>,
        d: &Claimed,
        now: chrono::DateTime<Utc>,
    ) -> Result<String> {
        let mut signatures =
            vec![sign(&self.secrets.open(endpoint, secret)?, &d.message_id, now.timestamp(), &d.payload)?];
        if let (Some(previous), Some(until)) = (previous, until)
            && until > now
        {
            signatures.push(sign(&self.secrets.open(endpoint, previous)?, &d.message_id, now.timestamp(), &d.payload)?);
        }
        Ok(signatures.join(" "))
    }

    /// One attempt, and what it leaves: delivered, tried again later, or dead.
    async fn deliver(&self, d: Claimed) -> Result<()> {
        let endpoint = sqlx::query!(
            "SELECT url, secret, previous_secret, previous_until, deleted_at FROM webhook_endpoints WHERE id = $1",
            d.endpoint_id
        )
        .fetch_one(&self.pool)
        .await?;
        let now = Utc::now();
        let outcome: Result<u16, String> = if endpoint.deleted_at.is_some() {
            Err("the endpoint was deleted".into())
        } else {
            match self.signatures(
                d.endpoint_id,
                &endpoint.secret,
                &endpoint.previous_secret,
                endpoint.previous_until,
                &d,
                now,
            ) {
                Ok(signatures) => self.post(&endpoint.url, &d, now.timestamp(), &signatures).await,
                // Sent unsigned, it would be worthless to the receiver; a
                // secret that does not open is tampering, logged, and tried
                // again like a failure (a key put back lets it through).
                Err(e) => {
                    tracing::error!(endpoint = %d.endpoint_id, error = %e, "a webhook secret does not open");
                    Err("the endpoint's secret could not be read".to_owned())
                }
            }
        };
        let attempts = d.attempts + 1;
        let (state, status, error, next) = match outcome {
            Ok(status) if (200..300).contains(&status) => ("DELIVERED", i32::from(status), None, now),
            failed => {
                let (status, error) = match failed {
                    Ok(status) => (i32::from(status), format!("answered HTTP {status}")),
                    Err(e) => (0, e),
                };
                let dead = attempts as u32 >= self.policy.max_attempts || endpoint.deleted_at.is_some();
                let next = now + chrono::Duration::from_std(self.policy.backoff(attempts as u32))?;
                (if dead { "DEAD" } else { "PENDING" }, status, Some(error), next)
            }
        };
        sqlx::query!(
            "UPDATE webhook_deliveries
             SET state = $2, attempts = $3, last_status = $4, last_error = $5, next_attempt_at = $6,
                 leased_until = NULL, delivered_at = CASE WHEN $2 = 'DELIVERED' THEN $7 ELSE delivered_at END
             WHERE id = $1",
            d.id,
            state,
            attempts,
            status,
            error,
            next,
            now
        )
        .execute(&self.pool)
        .await?;
        tracing::info!(delivery = %d.id, endpoint = %d.endpoint_id, attempts, state, status, "webhook attempt");
        Ok(())
    }

    /// POSTs the delivery: the answer's status, or why there was none.
    async fn post(&self, url: &str, d: &Claimed, timestamp: i64, signature: &str) -> Result<u16, String> {
        // Again at each attempt: where the name points now is what counts.
        let url = self.guard.check(url).await?;
        let answer = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &d.message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(d.payload.clone())
            .send()
            .await;
        match answer {
            Ok(response) => Ok(response.status().as_u16()),
            Err(e) if e.is_timeout() => Err("timed out".into()),
            Err(e) if e.is_connect() => Err("could not connect".into()),
            Err(_) => Err("the request failed".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn webhooks_go_to_public_https_only_and_never_to_the_mesh() {
        let production = Guard { allow_loopback: false, mesh_ports: vec![50052] };
        for bad in [
            "http://93.184.216.34/hook",
            "https://127.0.0.1/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.8/hook",
            "https://192.168.1.1/hook",
            "https://[::1]/hook",
            "https://[fe80::1]/hook",
            "https://[::ffff:127.0.0.1]/hook",
            "https://user:pw@93.184.216.34/hook",
            "ftp://93.184.216.34/hook",
        ] {
            assert!(production.check(bad).await.is_err(), "{bad} was allowed");
        }
        assert!(production.check("https://93.184.216.34/hook").await.is_ok());
        let development = Guard { allow_loopback: true, mesh_ports: vec![50052, 5432] };
        assert!(development.check("http://127.0.0.1:8000/hook").await.is_ok());
        assert!(development.check("http://127.0.0.1:50052/").await.is_err(), "the mesh's own port");
        assert!(development.check("http://127.0.0.1:5432/").await.is_err());
        assert!(development.check("http://10.1.2.3:8000/").await.is_err());
    }

    #[test]
    fn signatures_are_standard_webhooks_v1() {
        // The example of the Standard Webhooks specification's reference libraries.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        let signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let p = Policy {
            max_attempts: 8,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
            concurrency: 4,
        };
        for _ in 0..50 {
            let third = p.backoff(3);
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4), "{third:?}");
            assert!(p.backoff(30) <= Duration::from_secs(60));
        }
    }
}
