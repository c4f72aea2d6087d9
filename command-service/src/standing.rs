//! Keeps `user_standing` current from auth-service's feed (a durable
//! JetStream consumer shared by every instance: they share the table), so the
//! money path checks each caller's newest standing in its own transaction.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use bank_platform::{
    CancellationToken,
    auth::KeyCache,
    standing::{Feed, Standing, Verdict, read_feed},
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
    read_feed(messages, keys, shutdown, |verdict, message| async move {
        let ack = match verdict {
            Verdict::Signed(s) => {
                record(pool, &s).await?;
                AckKind::Ack
            }
            Verdict::Refused => AckKind::Ack,
            // Again in a second; a key that stays unknown for a minute is
            // nobody's (a forgery must not come back for ever).
            Verdict::NotYet if message.info().is_ok_and(|i| i.delivered < 60) => {
                AckKind::Nak(Some(Duration::from_secs(1)))
            }
            Verdict::NotYet => AckKind::Ack,
        };
        message.ack_with(ack).await.map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await
}

/// Keeps the newest standing: an older one arriving late changes nothing.
async fn record(pool: &PgPool, s: &Standing) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO user_standing (user_id, status, roles, seq) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id) DO UPDATE SET status = EXCLUDED.status, roles = EXCLUDED.roles, seq = EXCLUDED.seq
         WHERE user_standing.seq < EXCLUDED.seq",
    )
    .bind(s.user_id)
    .bind(&s.status)
    .bind(&s.roles)
    .bind(s.seq)
    .execute(pool)
    .await?;
    Ok(())
}

/// The standings of `users` known here (read in the command's transaction).
pub async fn load(conn: &mut PgConnection, users: &[Uuid]) -> Result<HashMap<Uuid, Standing>, CommandError> {
    let rows: Vec<(Uuid, String, Vec<String>, i64)> =
        sqlx::query_as("SELECT user_id, status, roles, seq FROM user_standing WHERE user_id = ANY($1)")
            .bind(users)
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(user_id, status, roles, seq)| (user_id, Standing { user_id, status, roles, seq }))
        .collect())
}
