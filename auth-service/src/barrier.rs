//! A change that takes something away (a suspension, a revoked role) answers
//! only once the services that enforce it hold it: the call's answer is the
//! moment after which no command and no read succeeds on the old token.
//!
//! The change is in the stream once the feed has published it (its
//! `user_changes` row is deleted only after JetStream's acknowledgement).
//! From there, every consumer of the standing stream must be past it:
//! command-service's durable consumer by its acknowledgement floor (it
//! acknowledges after the standing is committed to the table every command
//! reads in its own transaction), query-service's instances by what was
//! delivered to them (each applies a standing in memory as it arrives). A
//! consumer nobody pulls from (an instance that died) holds nothing back,
//! nor does a durable reader that enforces nothing (notification-service).

use std::time::Duration;

use async_nats::jetstream;
use bank_platform::standing::Feed;
use futures::TryStreamExt;
use sqlx::PgPool;
use tokio::sync::OnceCell;

use crate::error::AuthError;

/// command-service's durable consumer of the standing feed.
const COMMAND_CONSUMER: &str = "command-service-standing";
const POLL: Duration = Duration::from_millis(10);

pub struct StandingBarrier {
    db: PgPool,
    feed: Feed,
    timeout: Duration,
    js: OnceCell<jetstream::Context>,
}

impl StandingBarrier {
    pub fn new(db: PgPool, feed: Feed, timeout: Duration) -> Self {
        Self { db, feed, timeout, js: OnceCell::new() }
    }

    /// Waits until the standing change `seq` is published and every live
    /// consumer of the feed is past it; `StandingNotConfirmed` after the
    /// timeout (the change stays recorded and takes effect when they catch up).
    #[tracing::instrument(skip_all, fields(seq))]
    pub async fn wait(&self, seq: i64) -> Result<(), AuthError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        match tokio::time::timeout_at(deadline, self.confirmed(seq)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), seq, "standing change not confirmed");
                Err(AuthError::StandingNotConfirmed)
            }
            Err(_) => {
                tracing::warn!(seq, timeout = ?self.timeout, "standing change not confirmed in time");
                Err(AuthError::StandingNotConfirmed)
            }
        }
    }

    async fn confirmed(&self, seq: i64) -> anyhow::Result<()> {
        while sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM user_changes WHERE seq <= $1) AS "pending!""#, seq)
            .fetch_one(&self.db)
            .await?
        {
            tokio::time::sleep(POLL).await;
        }
        let js = self
            .js
            .get_or_try_init(|| async {
                anyhow::Ok(jetstream::new(bank_platform::nats::connect(&self.feed.nats_url).await?))
            })
            .await?;
        // Looked up now, after the change was published: it is at or below
        // the stream's last sequence in this answer.
        let stream = js.get_stream(&self.feed.stream).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let published = stream.cached_info().state.last_sequence;
        loop {
            let consumers: Vec<_> = stream.consumers().try_collect().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let behind = consumers.iter().any(|c| match c.config.durable_name.as_deref() {
                Some(COMMAND_CONSUMER) => c.ack_floor.stream_sequence < published,
                // Another durable reader (notification-service's) enforces
                // nothing: a suspension does not wait for its email.
                Some(_) => false,
                None => c.num_waiting > 0 && c.delivered.stream_sequence < published,
            });
            if !behind {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
