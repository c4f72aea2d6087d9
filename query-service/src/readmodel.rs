//! Access to the read models: Redis first for accounts, Postgres behind it,
//! the change feed from the projector's pub/sub channel, and waiting for a
//! consistency token by notification. query-service only reads Redis: the
//! projector is its one writer, and every entry and change must carry the
//! projector's seal (`CacheKeys::sealed`) to be believed.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock},
    time::{Duration, Instant},
};

use bank_domain::consistency::ConsistencyToken;
use bank_platform::redis::Redis;
use bank_readmodel::{AccountChange, AccountView, CacheKeys, Cached};
use futures::StreamExt;
use prometheus::{IntCounter, register_int_counter};
use redis::aio::ConnectionManagerConfig;
use sqlx::PgPool;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::error::QueryError;

static CACHE_HITS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("query_cache_hits_total", "account reads answered from Redis").expect("registers once")
});
static CACHE_MISSES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("query_cache_misses_total", "account reads answered from Postgres").expect("registers once")
});

static FORGED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "query_cache_forgeries_total",
        "Redis entries and change notices refused because the projector's seal did not verify"
    )
    .expect("registers once")
});

static RECENT_HITS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("query_recent_hits_total", "account reads answered from memory (the change feed's last view)")
        .expect("registers once")
});

/// How long an account view kept in memory may answer reads. The change
/// feed keeps the views current; the age bound is for a feed that goes
/// silent without the connection failing (a partition), so a read is never
/// staler than this beyond the projector's own lag.
const RECENT_MAX_AGE: Duration = Duration::from_secs(1);

/// Most views kept in memory; cleared when full.
const RECENT_MAX: usize = 100_000;

/// Account views as the change feed (or a read) last showed them, kept in
/// memory while the feed is subscribed, so a balance read costs a token
/// check and a map lookup. Emptied whenever the feed is not
/// subscribed, since changes published meanwhile are lost to it.
#[derive(Default)]
pub struct Recent {
    live: std::sync::atomic::AtomicBool,
    views: std::sync::RwLock<HashMap<Uuid, (AccountView, Instant)>>,
}

impl Recent {
    /// The view of `id` if the feed is live, the view fresh and at least at
    /// `min_version`.
    pub fn get(&self, id: Uuid, min_version: i64) -> Option<AccountView> {
        if !self.live.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let views = self.views.read().unwrap_or_else(|p| p.into_inner());
        let (view, seen) = views.get(&id)?;
        (view.version >= min_version && seen.elapsed() <= RECENT_MAX_AGE).then(|| view.clone())
    }

    /// Keeps `view` unless a newer version is kept (same version: fresher).
    pub fn offer(&self, view: &AccountView) {
        if !self.live.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut views = self.views.write().unwrap_or_else(|p| p.into_inner());
        if views.get(&view.account_id).is_some_and(|(kept, _)| kept.version > view.version) {
            return;
        }
        if views.len() >= RECENT_MAX {
            views.clear();
        }
        views.insert(view.account_id, (view.clone(), Instant::now()));
    }

    /// The feed (re)subscribed: start empty, then serve.
    fn subscribed(&self) {
        self.views.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.live.store(true, std::sync::atomic::Ordering::Release);
    }

    /// The feed is gone (or the generation changed): serve nothing, forget all.
    pub fn lost(&self) {
        self.live.store(false, std::sync::atomic::Ordering::Release);
        self.views.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Forget every view (a rebuild switched the generation), still live.
    fn forget(&self) {
        self.views.write().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// How often a waiter re-checks Postgres when no notification arrives
/// (lost message, Redis down): a slow safety net, not the mechanism.
const RECHECK: Duration = Duration::from_millis(250);

pub struct ReadModel {
    pub db: PgPool,
    redis: Option<Redis>,
    keys: CacheKeys,
    generation: std::sync::Mutex<(i32, Instant)>,
    pub changes: broadcast::Sender<Arc<AccountChange>>,
    /// Bumped each time the change feed (re)subscribes: notifications sent
    /// while it was away are lost, so watchers check the read model again.
    pub resyncs: tokio::sync::watch::Sender<u64>,
    /// The feed's views in memory (fed by `run_change_feed`).
    pub recent: Arc<Recent>,
}

/// Redis with short timeouts: a stopped Redis must not stall reads.
pub async fn connect_redis(url: &str) -> Option<Redis> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(200)))
        .set_response_timeout(Some(Duration::from_millis(200)))
        .set_number_of_retries(1);
    bank_platform::redis::connect(url, config).await.ok()
}

impl ReadModel {
    pub fn new(db: PgPool, redis: Option<Redis>, keys: CacheKeys) -> Self {
        let (changes, _) = broadcast::channel(4096);
        let resyncs = tokio::sync::watch::Sender::new(0);
        let generation = std::sync::Mutex::new((0, Instant::now() - Duration::from_secs(10)));
        Self { db, redis, keys, generation, changes, resyncs, recent: Arc::default() }
    }

    /// The active generation, re-read at most about once a second (rebuild
    /// switches it). Every read asks, so the lock is held for a copy only,
    /// never across the query; once the value is a second old, the reads
    /// that find it so each re-read it.
    #[tracing::instrument(level = "debug", skip_all, err)]
    pub async fn generation(&self) -> Result<i32, QueryError> {
        let known = *self.generation.lock().unwrap_or_else(|p| p.into_inner());
        if known.0 != 0 && known.1.elapsed() <= Duration::from_secs(1) {
            return Ok(known.0);
        }
        let fresh = bank_readmodel::active_generation(&self.db).await?;
        if known.0 != 0 && fresh != known.0 {
            self.recent.forget();
        }
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) = (fresh, Instant::now());
        Ok(fresh)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(generation = generation, account = %id), err)]
    async fn view_in_postgres(&self, generation: i32, id: Uuid) -> Result<Option<AccountView>, QueryError> {
        Ok(sqlx::query_as!(
            AccountView,
            "SELECT account_id, owner_id, kind, currency, balance, status, version, opened_at, held
             FROM account_view WHERE generation = $1 AND account_id = $2",
            generation,
            id,
        )
        .fetch_optional(&self.db)
        .await?)
    }

    /// One account: from memory if the change feed's view is fresh and at
    /// least at `min_version`, else Redis if it holds that version under the
    /// projector's seal, else Postgres. Redis errors only cost the fallback;
    /// a forged entry is counted, logged and passed over.
    #[tracing::instrument(level = "debug", skip_all, fields(account = %id, min_version = min_version), err)]
    pub async fn account(&self, id: Uuid, min_version: i64) -> Result<Option<AccountView>, QueryError> {
        let generation = self.generation().await?;
        if let Some(view) = self.recent.get(id, min_version) {
            RECENT_HITS.inc();
            return Ok(Some(view));
        }
        if let Some(mut redis) = self.redis.clone() {
            let cached: redis::RedisResult<HashMap<String, String>> =
                redis::cmd("HGETALL").arg(self.keys.account(generation, id)).query_async(&mut redis).await;
            match cached.map(|h| self.keys.open_entry(generation, id, &h)) {
                Ok(Cached::Valid(view)) if view.version >= min_version => {
                    CACHE_HITS.inc();
                    self.recent.offer(&view);
                    return Ok(Some(view));
                }
                Ok(Cached::Forged) => {
                    FORGED.inc();
                    tracing::warn!(account = %id, "cache entry without the projector's seal ignored");
                }
                _ => {}
            }
        }
        CACHE_MISSES.inc();
        let view = self.view_in_postgres(generation, id).await?;
        if let Some(v) = &view {
            self.recent.offer(v);
        }
        Ok(view)
    }

    /// Waits until every account in `token` has reached its version in the
    /// (authoritative) Postgres read model, or the deadline passes.
    #[tracing::instrument(level = "debug", skip_all, fields(accounts = token.versions.len()), err(level = "debug"))]
    pub async fn wait_for(&self, token: &ConsistencyToken, deadline: Instant) -> Result<(), QueryError> {
        let mut notifications = self.changes.subscribe();
        let ids: Vec<Uuid> = token.versions.keys().copied().collect();
        loop {
            let generation = self.generation().await?;
            let reached: HashMap<Uuid, i64> = sqlx::query!(
                "SELECT account_id, version FROM account_view WHERE generation = $1 AND account_id = ANY($2)",
                generation,
                &ids,
            )
            .fetch_all(&self.db)
            .await?
            .into_iter()
            .map(|r| (r.account_id, r.version))
            .collect();
            if token.versions.iter().all(|(id, v)| reached.get(id).is_some_and(|r| r >= v)) {
                return Ok(());
            }
            // Sleep until a relevant change, the re-check interval, or the deadline.
            let wake = (Instant::now() + RECHECK).min(deadline);
            loop {
                let remaining = wake.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                match tokio::time::timeout(remaining, notifications.recv()).await {
                    Ok(Ok(c)) if token.versions.get(&c.account.account_id).is_some_and(|v| c.account.version >= *v) => {
                        break;
                    }
                    Ok(Ok(_)) => continue,
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => break,
                }
            }
            if Instant::now() >= deadline {
                return Err(QueryError::ConsistencyTimeout);
            }
        }
    }
}

/// Subscribes to the projector's change channel and fans every change out
/// in-process; reconnects with backoff while Redis is away.
#[tracing::instrument(skip_all, err)]
pub async fn run_change_feed(
    redis_url: String,
    keys: CacheKeys,
    out: broadcast::Sender<Arc<AccountChange>>,
    resyncs: tokio::sync::watch::Sender<u64>,
    recent: Arc<Recent>,
    shutdown: bank_platform::CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let subscribed = async {
            let client = bank_platform::redis::client(&redis_url).await?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(keys.changes_channel()).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        match subscribed {
            Ok(mut pubsub) => {
                backoff = Duration::from_millis(100);
                recent.subscribed();
                resyncs.send_modify(|n| *n += 1);
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        m = messages.next() => match m {
                            Some(m) => {
                                let payload: String = m.get_payload().unwrap_or_default();
                                let change = serde_json::from_str::<AccountChange>(&payload);
                                if let Ok(change) = &change && !keys.change_is_sealed(change) {
                                    FORGED.inc();
                                    tracing::warn!(account = %change.account.account_id, "change notice without the projector's seal ignored");
                                } else if let Ok(change) = change {
                                    recent.offer(&change.account);
                                    let _ = out.send(Arc::new(change));
                                }
                            }
                            None => {
                                recent.lost();
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "change feed unavailable"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: Uuid, version: i64, balance: i64) -> AccountView {
        AccountView {
            account_id: id,
            owner_id: Uuid::nil(),
            kind: "CHECKING".into(),
            currency: "USD".into(),
            balance: balance.into(),
            status: "ACTIVE".into(),
            version,
            opened_at: chrono::Utc::now(),
            held: 0.into(),
        }
    }

    #[test]
    fn nothing_is_kept_or_served_while_the_feed_is_not_subscribed() {
        let recent = Recent::default();
        let id = Uuid::now_v7();
        recent.offer(&view(id, 2, 10));
        assert!(recent.get(id, 0).is_none());
        recent.subscribed();
        assert!(recent.get(id, 0).is_none(), "offered before the feed was live");
    }

    #[test]
    fn an_older_view_never_replaces_a_newer_one_and_a_token_asks_for_its_version() {
        let recent = Recent::default();
        recent.subscribed();
        let id = Uuid::now_v7();
        recent.offer(&view(id, 3, 30));
        recent.offer(&view(id, 2, 20)); // a read that raced the feed
        assert_eq!(recent.get(id, 0).map(|v| v.version), Some(3));
        assert!(recent.get(id, 4).is_none(), "a consistency token for version 4 goes past memory");
    }

    #[test]
    fn losing_the_feed_forgets_everything() {
        let recent = Recent::default();
        recent.subscribed();
        let id = Uuid::now_v7();
        recent.offer(&view(id, 1, 1));
        recent.lost();
        assert!(recent.get(id, 0).is_none());
        recent.subscribed();
        assert!(recent.get(id, 0).is_none(), "views from before the loss are gone");
    }
}
