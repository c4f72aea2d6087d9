//! Keeps `user_standing` current from auth-service's feed (a durable
//! JetStream consumer shared by every instance: they share the table), so the
//! money path checks each caller's newest standing in its own transaction.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_nats::jetstream::{self, consumer::pull};
use bank_platform::{
    CancellationToken,
    auth::KeyCache,
    standing::{Feed, Standing, apply_feed},
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::CommandError;

const CONSUMER: &str = "command-service-standing";

pub async fn run(pool: PgPool, feed: Feed, keys: Arc<KeyCache>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let consumed = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = consume(&pool, &feed, &keys, &shutdown) => r,
        };
        if let Err(e) = consumed {
            tracing::warn!(error = %e, "user standing feed interrupted; reconnecting");
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    Ok(())
}

async fn consume(pool: &PgPool, feed: &Feed, keys: &KeyCache, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let js = jetstream::new(bank_platform::nats::connect(&feed.nats_url).await?);
    let stream = feed.stream(&js).await?;
    let consumer = stream
        .get_or_create_consumer(CONSUMER, pull::Config { durable_name: Some(CONSUMER.into()), ..Default::default() })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let messages = consumer.messages().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    apply_feed(messages, keys, shutdown, |s, jws| async move {
        Ok(record(pool, &s, std::str::from_utf8(&jws).unwrap_or_default()).await?)
    })
    .await
}

/// Keeps the newest standing (with its signature): an older one arriving
/// late changes nothing; a row without a signature is replaced.
#[tracing::instrument(skip_all, fields(user = %s.user_id, seq = s.seq), err(level = "info"))]
async fn record(pool: &PgPool, s: &Standing, jws: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO user_standing (user_id, status, roles, seq, jws) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (user_id) DO UPDATE SET status = EXCLUDED.status, roles = EXCLUDED.roles, seq = EXCLUDED.seq,
             jws = EXCLUDED.jws
         WHERE user_standing.seq < EXCLUDED.seq OR user_standing.jws IS NULL",
        s.user_id,
        s.status,
        &s.roles,
        s.seq,
        jws
    )
    .execute(pool)
    .await?;
    Ok(())
}

static UNVERIFIED: std::sync::LazyLock<prometheus::IntCounter> = std::sync::LazyLock::new(|| {
    prometheus::register_int_counter!(
        "command_standings_unverified_total",
        "user_standing rows whose signature did not verify when a command read them (their user is refused)"
    )
    .expect("registers once")
});

/// Standings as the money path reads them: from the signed JWS of each
/// row, checked against auth-service's keys, never from the plain columns.
/// Verified JWSs are remembered, so a user's standing is checked once.
pub struct Standings {
    keys: Arc<KeyCache>,
    verified: std::sync::Mutex<HashMap<Uuid, (String, Standing)>>,
}

/// What a row that does not verify stands for: nobody active, no role, and
/// newer than any token, so the domain refuses every command of its user.
fn locked_out(user_id: Uuid) -> Standing {
    Standing { user_id, status: "UNVERIFIED".into(), roles: Vec::new(), seq: i64::MAX, previous_status: None }
}

impl Standings {
    pub fn new(keys: Arc<KeyCache>) -> Self {
        Self { keys, verified: Default::default() }
    }

    /// The standings of `users` known here (read in the command's transaction).
    #[tracing::instrument(skip_all, fields(users = users.len()), err(level = "info"))]
    pub async fn load(&self, conn: &mut PgConnection, users: &[Uuid]) -> Result<HashMap<Uuid, Standing>, CommandError> {
        let rows = sqlx::query!("SELECT user_id, jws FROM user_standing WHERE user_id = ANY($1)", users)
            .fetch_all(conn)
            .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in rows {
            out.insert(row.user_id, self.verify(row.user_id, row.jws.as_deref()).await);
        }
        Ok(out)
    }

    async fn verify(&self, user_id: Uuid, jws: Option<&str>) -> Standing {
        let Some(jws) = jws else {
            UNVERIFIED.inc();
            tracing::warn!(%user_id, "user standing without a signature: the user is refused until the feed writes it again");
            return locked_out(user_id);
        };
        {
            let known = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((k, s)) = known.get(&user_id)
                && k == jws
            {
                return s.clone();
            }
        }
        match self.keys.verify_standing(jws).await {
            Ok(s) if s.user_id == user_id => {
                let mut known = self.verified.lock().unwrap_or_else(|p| p.into_inner());
                if known.len() > MAX_REMEMBERED {
                    known.clear();
                }
                known.insert(user_id, (jws.to_owned(), s.clone()));
                s
            }
            Ok(s) => {
                UNVERIFIED.inc();
                tracing::warn!(%user_id, names = %s.user_id, "user standing signed for another user: the user is refused");
                locked_out(user_id)
            }
            Err(why) => {
                UNVERIFIED.inc();
                tracing::warn!(%user_id, reason = %why, "user standing does not verify: the user is refused");
                locked_out(user_id)
            }
        }
    }
}

/// Verified standings kept in memory (one small entry per user).
const MAX_REMEMBERED: usize = 100_000;
