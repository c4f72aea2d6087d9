//! The newest standing of each user, followed from auth-service's feed, so a
//! WatchBalance stream ends as soon as its caller is suspended or loses a
//! role the token carried, not when the token runs out.
//!
//! Each instance reads the feed itself with an ordered consumer that starts
//! from each user's last standing (nothing to acknowledge, nothing shared),
//! and keeps them in memory: one small entry per user whose standing changed.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull},
};
use bank_platform::{
    CancellationToken,
    auth::{Caller, KeyCache},
    standing::{Feed, Standing, Verdict, read_feed, verified},
};
use tokio::sync::watch;
use uuid::Uuid;

pub struct Standings {
    latest: RwLock<HashMap<Uuid, Standing>>,
    /// Bumped on every recorded change, so open streams re-check their caller.
    changed: watch::Sender<u64>,
}

impl Default for Standings {
    fn default() -> Self {
        Self { latest: RwLock::default(), changed: watch::channel(0).0 }
    }
}

impl Standings {
    /// Why `caller` may no longer read on the strength of its token: a
    /// standing newer than the token that is not active, or that lacks a
    /// role the token carries. None while the token still stands.
    pub fn revokes(&self, caller: &Caller) -> Option<&'static str> {
        let latest = self.latest.read().unwrap_or_else(|p| p.into_inner());
        let s = latest.get(&caller.user_id).filter(|s| s.seq > caller.standing_version)?;
        if !s.is_active() {
            Some("your account is no longer active")
        } else if caller.roles.iter().any(|r| !s.has(r)) {
            Some("a role this token carries was revoked")
        } else {
            None
        }
    }

    /// Keeps `s` unless a newer standing of the user is known.
    pub fn record(&self, s: Standing) {
        let mut latest = self.latest.write().unwrap_or_else(|p| p.into_inner());
        if latest.get(&s.user_id).is_none_or(|known| known.seq < s.seq) {
            latest.insert(s.user_id, s);
            drop(latest);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Follows the feed until shutdown, reconnecting with backoff.
#[tracing::instrument(skip_all, fields(stream = %feed.stream))]
pub async fn follow(
    feed: Feed,
    keys: Arc<KeyCache>,
    standings: Arc<Standings>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        if let Err(e) = consume(&feed, &keys, &standings, &shutdown).await {
            tracing::warn!(error = %format!("{e:#}"), "user standing feed unavailable; retrying");
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    Ok(())
}

#[tracing::instrument(skip_all, fields(stream = %feed.stream), err(level = "debug"))]
async fn consume(
    feed: &Feed,
    keys: &KeyCache,
    standings: &Standings,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let js = jetstream::new(bank_platform::nats::connect(&feed.nats_url).await?);
    // auth-service and command-service create the stream; we only read it.
    let stream = js.get_stream(&feed.stream).await.map_err(|e| anyhow::anyhow!("stream {}: {e}", feed.stream))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            // Named, so the server sees the filter in the subject it checks
            // permissions on (deploy/nats/nats.conf: standings only).
            name: Some(format!("query-standings-{}", Uuid::new_v4().simple())),
            filter_subject: format!("{}.>", feed.subject_prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let messages = consumer.messages().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    // Ordered: nothing to acknowledge. A standing signed with a key not
    // known yet is tried again for a few seconds (the JWKS may be a moment
    // out of reach), then passed over: it must not hold up the rest.
    read_feed(messages, keys, shutdown, |verdict, message| async move {
        match verdict {
            Verdict::Signed(s) => standings.record(s),
            Verdict::Refused => {}
            Verdict::NotYet => {
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Ok(s) = verified(keys, &message.subject, &message.payload).await {
                        standings.record(s);
                        break;
                    }
                }
            }
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(roles: &[&str], sv: i64) -> Caller {
        Caller {
            user_id: Uuid::from_u128(7),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            status: "ACTIVE".into(),
            expires_at: None,
            standing_version: sv,
            second_factor_at: None,
        }
    }

    fn standing(status: &str, roles: &[&str], seq: i64) -> Standing {
        Standing {
            previous_status: None,
            user_id: Uuid::from_u128(7),
            status: status.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            seq,
        }
    }

    #[test]
    fn a_newer_suspension_or_a_revoked_role_ends_what_the_token_allowed() {
        let s = Standings::default();
        assert_eq!(s.revokes(&caller(&["customer"], 3)), None, "nothing known");
        s.record(standing("SUSPENDED", &["customer"], 3));
        assert_eq!(s.revokes(&caller(&["customer"], 3)), None, "a standing the token already reflects");
        s.record(standing("SUSPENDED", &["customer"], 4));
        assert!(s.revokes(&caller(&["customer"], 3)).is_some(), "suspended after the token");
        s.record(standing("ACTIVE", &["customer"], 5));
        assert_eq!(s.revokes(&caller(&["customer"], 3)), None, "reinstated");
        assert!(s.revokes(&caller(&["customer", "teller"], 3)).is_some(), "the teller role is gone");
    }

    #[test]
    fn an_older_standing_arriving_late_changes_nothing() {
        let s = Standings::default();
        s.record(standing("ACTIVE", &["customer"], 9));
        s.record(standing("SUSPENDED", &["customer"], 8));
        assert_eq!(s.revokes(&caller(&["customer"], 1)), None);
    }
}
