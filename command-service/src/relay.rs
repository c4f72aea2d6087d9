//! The outbox relay: publishes committed outbox rows to JetStream in id order
//! (which is per-account version order, since a later version's row is written
//! by a transaction that began after the earlier one committed), with
//! `Nats-Msg-Id` = event id, and deletes a row only after its publish ack.
//!
//! Several command-service instances may run: one Postgres advisory lock (a
//! lease held by a session) lets exactly one relay publish, which keeps the
//! stream in order; the others wait and take over when its session ends.
//! It wakes on an in-process signal after each commit, and polls as a fallback
//! (commits made by another instance are seen within the poll interval).

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use anyhow::Result;
use async_nats::jetstream::{self, context::PublishAckFuture};
use bank_platform::{CancellationToken, telemetry};
use prometheus::{IntCounter, IntGauge, register_int_counter, register_int_gauge};
use prost::Message;
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::Notify;
use uuid::Uuid;

/// Key of the advisory lock that makes one relay the publisher.
const LEASE_KEY: i64 = 0x6261_6e6b_6f75_7462; // "bankoutb"

static PUBLISHED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("outbox_published_total", "events published to JetStream").expect("registers once")
});
static BACKLOG: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("outbox_backlog", "outbox rows waiting to be published").expect("registers once")
});

#[derive(Clone)]
pub struct RelayConfig {
    pub nats_url: String,
    pub stream: String,
    pub subject_prefix: String,
    pub batch: i64,
    pub poll: Duration,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("nats_url", &bank_platform::config::redact_url(&self.nats_url))
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("batch", &self.batch)
            .field("poll", &self.poll)
            .finish()
    }
}

pub struct OutboxRelay {
    pool: PgPool,
    config: RelayConfig,
    wake: Arc<Notify>,
    signer: bank_platform::auth::TokenSigner,
}

/// The envelope as published: as stored, then its signature and key id as
/// the last fields (appending protobuf fields to an encoded message is the
/// encoding of the message with them set).
pub fn signed(envelope: &[u8], signer: &bank_platform::auth::TokenSigner) -> Vec<u8> {
    let suffix = bank_proto::v1::EventEnvelope {
        signature: signer.sign_bytes(envelope),
        signing_key_id: signer.kid().to_owned(),
        ..Default::default()
    }
    .encode_to_vec();
    [envelope, suffix.as_slice()].concat()
}

struct Backoff(Duration);

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        d
    }

    fn reset(&mut self) {
        self.0 = Self::MIN;
    }
}

/// Sleeps unless shutdown comes first; false when shutting down.
async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

impl OutboxRelay {
    pub fn new(pool: PgPool, config: RelayConfig, wake: Arc<Notify>, signer: bank_platform::auth::TokenSigner) -> Self {
        Self { pool, config, wake, signer }
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        // Connect lazily: a NATS outage must not stop commands from committing.
        let client = bank_platform::nats::connect_lazily(&self.config.nats_url).await?;
        let js = jetstream::new(client);
        let mut backoff = Backoff(Backoff::MIN);
        while !shutdown.is_cancelled() {
            if let Err(e) = self.ensure_stream(&js).await {
                tracing::warn!(error = %format!("{e:#}"), "JetStream not ready; retrying");
                if !pause(backoff.next(), &shutdown).await {
                    break;
                }
                continue;
            }
            let mut lease = match self.take_lease().await {
                Ok(Some(conn)) => conn,
                Ok(None) => {
                    if !pause(Duration::from_secs(1), &shutdown).await {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "outbox lease unavailable; retrying");
                    if !pause(backoff.next(), &shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            tracing::info!("outbox relay holds the publisher lease");
            let result = self.publish_while_leased(&mut lease, &js, &mut backoff, &shutdown).await;
            // Closing the session releases the advisory lock.
            let _ = lease.close().await;
            if let Err(e) = result {
                tracing::warn!(error = %format!("{e:#}"), "outbox relay lost its database session; retrying");
                if !pause(backoff.next(), &shutdown).await {
                    break;
                }
            }
        }
        Ok(())
    }

    async fn ensure_stream(&self, js: &jetstream::Context) -> Result<()> {
        bank_platform::nats::durable_stream(js, &self.config.stream, &self.config.subject_prefix).await?;
        Ok(())
    }

    /// A dedicated session holding the advisory lock, or None if another relay has it.
    async fn take_lease(&self) -> Result<Option<PgConnection>> {
        let mut conn = self.pool.acquire().await?.detach();
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LEASE_KEY).fetch_one(&mut conn).await?;
        if got {
            Ok(Some(conn))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Publishes batches until shutdown; returns Err only when the database
    /// session fails (the lease is then gone). NATS failures back off and retry.
    async fn publish_while_leased(
        &self,
        conn: &mut PgConnection,
        js: &jetstream::Context,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let rows = sqlx::query("SELECT id, event_id, subject, envelope FROM outbox ORDER BY id LIMIT $1")
                .bind(self.config.batch)
                .fetch_all(&mut *conn)
                .await?;
            if (rows.len() as i64) < self.config.batch {
                BACKLOG.set(rows.len() as i64);
            }
            if rows.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.config.poll) => {}
                }
                continue;
            }
            // Pipeline: send the whole batch, then collect acks in order.
            let mut pending: Vec<(i64, PublishAckFuture)> = Vec::with_capacity(rows.len());
            let mut failed = false;
            for row in &rows {
                let id: i64 = row.try_get("id")?;
                let event_id: Uuid = row.try_get("event_id")?;
                let subject: String = row.try_get("subject")?;
                let envelope: Vec<u8> = row.try_get("envelope")?;
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", event_id.to_string().as_str());
                let span = publish_span(&envelope);
                for (k, v) in span.in_scope(telemetry::current_trace_context) {
                    headers.insert(k.as_str(), v.as_str());
                }
                let payload = signed(&envelope, &self.signer);
                match tracing::Instrument::instrument(js.publish_with_headers(subject, headers, payload.into()), span)
                    .await
                {
                    Ok(ack) => pending.push((id, ack)),
                    Err(e) => {
                        tracing::warn!(error = %e, "publish failed");
                        failed = true;
                        break;
                    }
                }
            }
            let mut acked = Vec::with_capacity(pending.len());
            for (id, ack) in pending {
                match ack.await {
                    Ok(_) => acked.push(id),
                    Err(e) => {
                        tracing::warn!(error = %e, "publish not acknowledged");
                        failed = true;
                        break;
                    }
                }
            }
            if !acked.is_empty() {
                sqlx::query("DELETE FROM outbox WHERE id = ANY($1)").bind(&acked).execute(&mut *conn).await?;
                PUBLISHED.inc_by(acked.len() as u64);
            }
            if failed {
                // Unacked rows stay; the next round republishes them and
                // JetStream drops any duplicate by Nats-Msg-Id.
                if !pause(backoff.next(), shutdown).await {
                    return Ok(());
                }
            } else {
                backoff.reset();
            }
        }
    }
}

/// The relay's span for one event: a child of the command that wrote it (the
/// envelope's trace context), parent of the projector's (via NATS headers).
fn publish_span(envelope: &[u8]) -> tracing::Span {
    if !telemetry::exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("relay.publish", otel.name = "relay publish", otel.kind = "producer");
    if let Ok(env) = bank_proto::v1::EventEnvelope::decode(envelope) {
        telemetry::continue_trace(&span, &telemetry::Carrier(env.trace_context));
    }
    span
}
