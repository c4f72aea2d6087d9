//! Publishes each recorded change of a user's standing (`user_changes`, filled
//! by a trigger in the changing transaction) to JetStream, in order, deleting
//! a row only after JetStream acknowledged it; the message id makes a
//! republish after a crash a duplicate JetStream drops. Each standing is
//! signed with the token signing key (`TokenSigner::sign_standing`): its
//! readers check it against the JWKS they already trust for tokens, so a
//! standing nobody signed cannot mask a suspension.

use std::time::Duration;

use async_nats::{HeaderMap, jetstream};
use bank_platform::{
    CancellationToken,
    auth::TokenSigner,
    standing::{Feed, Standing},
};
use sqlx::PgPool;

const BATCH: i64 = 256;

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
            Err(e) => tracing::warn!(error = %e, "user standing feed interrupted; retrying"),
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
        let rows = sqlx::query_as!(
            Standing,
            "SELECT seq, user_id, status, roles FROM user_changes ORDER BY seq LIMIT $1",
            BATCH
        )
        .fetch_all(pool)
        .await?;
        for standing in &rows {
            let (seq, user_id) = (standing.seq, standing.user_id);
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("user-change-{seq}").as_str());
            let subject = format!("{}.{user_id}", feed.subject_prefix);
            js.publish_with_headers(subject, headers, signer.sign_standing(standing)?.into_bytes().into())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            sqlx::query!("DELETE FROM user_changes WHERE seq = $1", seq).execute(pool).await?;
        }
        if rows.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}
