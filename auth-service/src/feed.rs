//! Publishes each recorded change of a user's standing (`user_changes`, filled
//! by a trigger in the changing transaction) to JetStream, in order, deleting
//! a row only after JetStream acknowledged it; the message id makes a
//! republish after a crash a duplicate JetStream drops. Each standing is
//! signed with the token signing key (`TokenSigner::sign_standing`): its
//! readers check it against the JWKS they already trust for tokens, so a
//! standing nobody signed cannot mask a suspension.
//!
//! Every instance runs the feed, one at a time: a round holds a transaction
//! advisory lock, so two instances never publish the same rows (JetStream
//! would drop the second copy, or refuse it while it replicates the first:
//! "duplicate message id is in process"). A holder that dies releases it
//! with its connection.

use std::{sync::LazyLock, time::Duration};

use async_nats::{HeaderMap, jetstream};
use bank_platform::{
    CancellationToken,
    auth::TokenSigner,
    standing::{Feed, Standing},
};
use sqlx::PgPool;

const BATCH: i64 = 256;

/// Standings JetStream already held when the feed published them: sent
/// again after a crash (rare), or by two instances at once (never, with the
/// lock).
static DUPLICATES: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "user_standings_published_twice_total",
        "standings the stream already held when the feed published them"
    )
    .expect("registers once")
});

/// Rounds of the feed interrupted by an error (NATS away, a publish refused).
static INTERRUPTED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!("user_standing_feed_interrupted_total", "rounds of the standing feed interrupted")
        .expect("registers once")
});

pub async fn run(pool: PgPool, feed: Feed, signer: TokenSigner, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        // Cancellable at any await: an interrupted publish is published
        // again at the next start, and JetStream drops the duplicate.
        let published = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = publish_all(&pool, &feed, &signer, &shutdown) => r,
        };
        match published {
            Ok(()) => return Ok(()),
            Err(e) => {
                INTERRUPTED.inc();
                tracing::warn!(error = %e, "user standing feed interrupted; retrying");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    Ok(())
}

async fn publish_all(
    pool: &PgPool,
    feed: &Feed,
    signer: &TokenSigner,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let client = bank_platform::nats::connect(&feed.nats_url).await?;
    let js = jetstream::new(client);
    feed.stream(&js).await?;
    loop {
        let mut tx = pool.begin().await?;
        let ours = sqlx::query_scalar!("SELECT pg_try_advisory_xact_lock(hashtext('bankmesh.user_standing_feed'))")
            .fetch_one(&mut *tx)
            .await?
            .unwrap_or(false);
        let rows = if ours {
            sqlx::query_as!(
                Standing,
                "SELECT seq, user_id, status, roles, previous_status FROM user_changes ORDER BY seq LIMIT $1",
                BATCH
            )
            .fetch_all(&mut *tx)
            .await?
        } else {
            Vec::new()
        };
        for standing in &rows {
            let (seq, user_id) = (standing.seq, standing.user_id);
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("user-change-{seq}").as_str());
            let subject = format!("{}.{user_id}", feed.subject_prefix);
            let ack = js
                .publish_with_headers(subject, headers, signer.sign_standing(standing)?.into_bytes().into())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if ack.duplicate {
                DUPLICATES.inc();
            }
        }
        // Deleted as the round commits: the rows of a round cut short stay
        // and go again (JetStream drops the copies).
        if !rows.is_empty() {
            let published: Vec<i64> = rows.iter().map(|r| r.seq).collect();
            sqlx::query!("DELETE FROM user_changes WHERE seq = ANY($1)", &published).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        if rows.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}
