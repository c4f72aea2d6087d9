//! The outbox relay: publishes committed outbox rows to JetStream in id order
//! (which is per-account version order, since a later version's row is written
//! by a transaction that began after the earlier one committed), and deletes a
//! row only after its publish ack. A round's rows go out as one message per
//! event partition (an `EventBatch`, signed once), so the stream, its
//! consumers and their acks pay per batch, not per event; `Nats-Msg-Id` is a
//! digest of the event ids a message carries. After a failure the relay
//! sends the unacknowledged messages again exactly as they were, before any
//! new row, so one stored whose ack was lost is dropped as a duplicate; only
//! a relay that starts afresh (a restart, a lease take-over) regroups rows
//! another may have stored, and consumers skip the versions they have.
//!
//! Publishes are pipelined, yet the stream keeps their order even when an
//! ack fails mid-pipeline: each message carries
//! `Nats-Expected-Last-Sequence`, the stream sequence it must follow, so a
//! message whose predecessor was not stored is refused rather than stored
//! ahead of it. After any failure the relay reads the stream's last sequence
//! again and republishes from the first unacknowledged message (JetStream
//! drops the ones already stored by `Nats-Msg-Id`).
//!
//! A round's messages are not one JetStream atomic batch: the server stages
//! each atomic batch of a one-replica file stream in a file store of its own
//! (a directory tree made, synced and removed per batch), which cost
//! nats-server more than one fsync per message once a round became a handful
//! of messages (one per partition) instead of one per event.
//!
//! Several command-service instances may run: a lease in Postgres
//! (`relay_lease`: holder, epoch, expiry) lets one relay publish, which keeps
//! the stream in order. The holder renews it at least every `LEASE_TTL / 3`;
//! one that hangs (SIGSTOP, a stalled host) stops renewing, and another
//! instance takes it over within `LEASE_TTL` plus a second. Each take-over
//! raises the epoch; outbox rows are deleted only under the lease at the
//! deleting relay's epoch (fencing), and a relay that finds its lease gone
//! stops publishing. A woken former leader's last in-flight publishes are
//! duplicates JetStream drops by `Nats-Msg-Id`, or, past the duplicate
//! window, versions the projector already has and skips.
//! It wakes on an in-process signal after each commit, and polls as a fallback
//! (commits made by another instance are seen within the poll interval).

use std::{
    sync::{Arc, LazyLock},
    time::{Duration, Instant},
};

use anyhow::Result;
use async_nats::jetstream::{
    self,
    context::{PublishAckFuture, PublishErrorKind},
};
use bank_platform::{CancellationToken, telemetry};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntGauge, register_histogram, register_int_counter, register_int_gauge,
};
use prost::Message;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

/// The most rows in one round (bounds the relay's memory and the ids one
/// deletion binds).
const MAX_ROUND: i64 = 1000;

/// The most events in one stream message (about 200 KiB of envelopes, well
/// under NATS's 1 MiB default payload limit).
const MAX_MESSAGE_EVENTS: usize = 256;

/// How long a lease lasts without renewal.
const LEASE_TTL: Duration = Duration::from_secs(3);

static PUBLISHED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("outbox_published_total", "events published to JetStream").expect("registers once")
});
static ROUND_EVENTS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        HistogramOpts::new("relay_round_events", "events published per relay round")
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0])
    )
    .expect("registers once")
});
static MESSAGE_EVENTS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        HistogramOpts::new("relay_message_events", "events per stream message (one partition's share of a round)")
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0])
    )
    .expect("registers once")
});
static PUBLISH_DELAY: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        HistogramOpts::new("relay_publish_delay_seconds", "event time to its publish acknowledged by JetStream")
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
    )
    .expect("registers once")
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
    /// Who this relay is in `relay_lease.holder`: process id and a random id.
    holder: String,
}

#[derive(Clone)]
struct Lease {
    holder: String,
    epoch: i64,
    renewed: Instant,
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

/// How long the relay waits for the stream to say that it exists, or its
/// last sequence: two API requests, answered in milliseconds when the stream
/// has a leader and never while it has none, so this bounds how late the
/// relay publishes again after an election.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

struct Backoff(Duration);

impl Backoff {
    const MIN: Duration = Duration::from_millis(100);
    /// Short: what the relay waits for (a stream leader being elected, a
    /// lease expiring) ends within seconds, and each try is one request.
    const MAX: Duration = Duration::from_millis(500);

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
        let holder = format!("pid {} relay {}", std::process::id(), Uuid::new_v4());
        Self { pool, config, wake, signer, holder }
    }

    #[tracing::instrument(skip_all, fields(holder = %self.holder, stream = %self.config.stream), err)]
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        // Connect lazily: a NATS outage must not stop commands from committing.
        let client = bank_platform::nats::connect_lazily(&self.config.nats_url).await?;
        let js = jetstream::new(client);
        let mut backoff = Backoff(Backoff::MIN);
        // Messages sent but not acknowledged, and the lease epoch they were
        // sent under: they go again exactly as they were (same Nats-Msg-Id),
        // before any new row, so one stored whose ack was lost is dropped as a
        // duplicate rather than stored again inside a message regrouped with
        // rows committed since. Kept across a lapse of this relay's own lease
        // (a publish that outwaited it), dropped if another relay held it in
        // between (it published those rows its own way).
        let mut unacked: Vec<Outgoing> = Vec::new();
        let mut last_epoch: Option<i64> = None;
        // Warned once per outage, not at every try.
        let mut not_ready = false;
        while !shutdown.is_cancelled() {
            let probe = Instant::now();
            if let Err(e) = self.ensure_stream(&js).await {
                if not_ready {
                    tracing::debug!(error = %format!("{e:#}"), "JetStream still not ready");
                } else {
                    tracing::warn!(error = %format!("{e:#}"), "JetStream not ready; retrying");
                }
                not_ready = true;
                // A probe that waited out its timeout has spent the pause.
                if !pause(backoff.next().saturating_sub(probe.elapsed()), &shutdown).await {
                    break;
                }
                continue;
            }
            not_ready = false;
            let lease = match self.take_lease().await {
                Ok(Some(lease)) => lease,
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
            tracing::info!(epoch = lease.epoch, holder = %lease.holder, "outbox relay holds the publisher lease");
            if last_epoch.is_some_and(|epoch| epoch + 1 != lease.epoch) {
                unacked.clear();
            }
            last_epoch = Some(lease.epoch);
            let result = self.publish_while_leased(lease.clone(), &js, &mut unacked, &mut backoff, &shutdown).await;
            if result.is_ok() && shutdown.is_cancelled() {
                // Hand over at once rather than after the expiry.
                let _ = self.release(&lease).await;
            }
            if let Err(e) = result {
                tracing::warn!(error = %format!("{e:#}"), "outbox relay lost its lease; retrying");
                if !pause(backoff.next(), &shutdown).await {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The (provisioned) stream, as the relay needs it.
    #[tracing::instrument(level = "debug", skip_all, fields(stream = %self.config.stream), err(level = "debug"))]
    async fn ensure_stream(&self, js: &jetstream::Context) -> Result<()> {
        let stream = bank_platform::nats::durable_stream(js, &self.config.stream);
        bank_platform::nats::answered_within(PROBE_TIMEOUT, &format!("stream {}", self.config.stream), stream).await?;
        Ok(())
    }

    /// The lease, if it is free or expired (or already ours); a new epoch.
    #[tracing::instrument(level = "debug", skip_all, fields(holder = %self.holder), err(level = "debug"))]
    async fn take_lease(&self) -> Result<Option<Lease>> {
        // The lease's length binds as an interval (`as Duration`: the macro
        // would otherwise expect its own interval type).
        let epoch: Option<i64> = sqlx::query_scalar!(
            "UPDATE relay_lease SET holder = $1, epoch = epoch + 1, expires_at = now() + $2
             WHERE id = 1 AND (expires_at < now() OR holder = $1) RETURNING epoch",
            self.holder,
            LEASE_TTL as Duration,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(epoch.map(|epoch| Lease { holder: self.holder.clone(), epoch, renewed: Instant::now() }))
    }

    /// Extends the lease; an error when it is no longer ours at this epoch.
    #[tracing::instrument(level = "debug", skip_all, fields(epoch = lease.epoch), err(level = "debug"))]
    async fn renew(&self, lease: &mut Lease) -> Result<()> {
        let renewed = sqlx::query!(
            "UPDATE relay_lease SET expires_at = now() + $3 WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > now()",
            lease.holder,
            lease.epoch,
            LEASE_TTL as Duration,
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        anyhow::ensure!(renewed == 1, "the publisher lease (epoch {}) expired or was taken over", lease.epoch);
        lease.renewed = Instant::now();
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(epoch = lease.epoch), err)]
    async fn release(&self, lease: &Lease) -> Result<()> {
        sqlx::query!(
            "UPDATE relay_lease SET expires_at = '-infinity' WHERE id = 1 AND holder = $1 AND epoch = $2",
            lease.holder,
            lease.epoch,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Publishes batches until shutdown; returns Err only when the database
    /// session fails (the lease is then gone). NATS failures back off and retry.
    #[tracing::instrument(skip_all, fields(epoch = lease.epoch), err(level = "debug"))]
    async fn publish_while_leased(
        &self,
        mut lease: Lease,
        js: &jetstream::Context,
        unacked: &mut Vec<Outgoing>,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        // The stream's last sequence as far as this relay knows; None: ask.
        let mut last_seq: Option<u64> = None;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            // Renewed before every round that would publish on an old
            // renewal: a relay woken from a hang finds out here.
            if lease.renewed.elapsed() > LEASE_TTL / 3 {
                self.renew(&mut lease).await?;
            }
            let mut messages = if unacked.is_empty() {
                let rows = self.next_rows().await?;
                if rows.is_empty() {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(self.config.poll.min(LEASE_TTL / 3)) => {}
                    }
                    continue;
                }
                Outgoing::of_round(&rows, &self.config.subject_prefix, &self.signer)
            } else {
                std::mem::take(unacked)
            };
            // Pauses count from here: a try that waited out a timeout has
            // spent its pause already.
            let attempt = Instant::now();
            let last = match last_seq {
                Some(seq) => seq,
                None => match stream_last_sequence(js, &self.config.stream).await {
                    Ok(seq) => seq,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "stream unavailable");
                        *unacked = messages;
                        if !pause(backoff.next().saturating_sub(attempt.elapsed()), shutdown).await {
                            return Ok(());
                        }
                        continue;
                    }
                },
            };
            let round = self.publish_each(js, &messages, last).await;
            let Round { stored, last, failed, out_of_step } = round;
            last_seq = (!failed && !out_of_step).then_some(last);
            *unacked = messages.split_off(stored);
            let acked: Vec<i64> = messages.iter().flat_map(|m| m.ids.iter().copied()).collect();
            if !acked.is_empty() {
                // Fenced: only under the lease at this epoch.
                let deleted = sqlx::query!(
                    "DELETE FROM outbox WHERE id = ANY($1)
                       AND EXISTS (SELECT 1 FROM relay_lease WHERE id = 1 AND holder = $2 AND epoch = $3)",
                    &acked,
                    lease.holder,
                    lease.epoch,
                )
                .execute(&self.pool)
                .await?
                .rows_affected();
                anyhow::ensure!(deleted > 0, "the publisher lease (epoch {}) was taken over", lease.epoch);
                PUBLISHED.inc_by(acked.len() as u64);
                ROUND_EVENTS.observe(acked.len() as f64);
                let now = chrono::Utc::now();
                for m in &messages {
                    MESSAGE_EVENTS.observe(m.ids.len() as f64);
                    for at in &m.occurred {
                        PUBLISH_DELAY.observe((now - *at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
                    }
                }
            }
            if failed {
                // The unacknowledged messages go again after the pause.
                if !pause(backoff.next().saturating_sub(attempt.elapsed()), shutdown).await {
                    return Ok(());
                }
            } else {
                backoff.reset();
            }
        }
    }

    /// The oldest outbox rows, a round's worth. The envelope is the event's
    /// (rows from before migration 0008 carry their own copy).
    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"))]
    async fn next_rows(&self) -> Result<Vec<Row>> {
        let rows: Vec<Row> = sqlx::query_as!(
            Row,
            r#"SELECT o.id, o.event_id, o.subject, coalesce(o.envelope, e.envelope) AS "envelope!", e.occurred_at
                   FROM outbox o JOIN events e ON e.event_id = o.event_id ORDER BY o.id LIMIT $1"#,
            self.config.batch.min(MAX_ROUND),
        )
        .fetch_all(&self.pool)
        .await?;
        if (rows.len() as i64) < self.config.batch {
            BACKLOG.set(rows.len() as i64);
        }
        Ok(rows)
    }

    /// Every message of the round pipelined, each expecting its predecessor's
    /// stream sequence; acks collected in order up to the first that fails.
    #[tracing::instrument(level = "debug", skip_all, fields(messages = messages.len(), last = last))]
    async fn publish_each(&self, js: &jetstream::Context, messages: &[Outgoing], mut last: u64) -> Round {
        let mut pending: Vec<PublishAckFuture> = Vec::with_capacity(messages.len());
        let mut failed = false;
        for (i, m) in messages.iter().enumerate() {
            let (mut headers, span) = m.headers();
            // Stored only right after the previous message of this round.
            headers.insert("Nats-Expected-Last-Sequence", (last + i as u64).to_string().as_str());
            let publish = js.publish_with_headers(m.subject.clone(), headers, m.payload.clone().into());
            match tracing::Instrument::instrument(publish, span).await {
                Ok(ack) => pending.push(ack),
                Err(e) => {
                    tracing::warn!(error = %e, "publish failed");
                    failed = true;
                    break;
                }
            }
        }
        let mut stored = 0;
        // Out of step with the stream (a duplicate, another publisher):
        // not an outage, so no backoff, only a fresh last sequence.
        let mut out_of_step = false;
        for ack in pending {
            match ack.await {
                Ok(ack) if ack.duplicate => {
                    // Already stored: done, but the stream did not move,
                    // so what follows in this round expected wrongly.
                    stored += 1;
                    out_of_step = true;
                    break;
                }
                Ok(ack) => {
                    last = ack.sequence;
                    stored += 1;
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    out_of_step = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "publish not acknowledged");
                    failed = true;
                    break;
                }
            }
        }
        Round { stored, last, failed, out_of_step }
    }
}

/// One outbox row: an event on its way to the stream.
struct Row {
    id: i64,
    event_id: Uuid,
    /// The account's subject, `<prefix>.<partition>.<account>` (or
    /// `<prefix>.<account>`, written before partitions).
    subject: String,
    envelope: Vec<u8>,
    occurred_at: chrono::DateTime<chrono::Utc>,
}

/// One stream message: a partition's events of a round, in outbox order.
struct Outgoing {
    /// The outbox rows it carries.
    ids: Vec<i64>,
    subject: String,
    /// A digest of the event ids it carries.
    msg_id: String,
    payload: Vec<u8>,
    /// A publish span per event, continuing the trace of the command that
    /// wrote it (none unless traces are exported).
    spans: Vec<tracing::Span>,
    occurred: Vec<chrono::DateTime<chrono::Utc>>,
}

impl Outgoing {
    /// The round's rows as messages, one per partition in the order the
    /// partitions first appear (at most `MAX_MESSAGE_EVENTS` events each).
    fn of_round(rows: &[Row], prefix: &str, signer: &bank_platform::auth::TokenSigner) -> Vec<Self> {
        let mut groups: Vec<(String, Vec<&Row>)> = Vec::new();
        for row in rows {
            // The account is the subject's last token, in the partitioned
            // form and in the one rows written before partitions carry.
            let account = row.subject.rsplit('.').next().and_then(|a| Uuid::try_parse(a).ok());
            let subject = match account {
                Some(account) => {
                    bank_platform::nats::batch_subject(prefix, bank_platform::nats::event_partition(account))
                }
                None => row.subject.clone(),
            };
            match groups.iter_mut().rev().find(|(s, g)| *s == subject && g.len() < MAX_MESSAGE_EVENTS) {
                Some((_, group)) => group.push(row),
                None => groups.push((subject, vec![row])),
            }
        }
        groups
            .into_iter()
            .map(|(subject, group)| {
                use sha2::{Digest, Sha256};
                let mut digest = Sha256::new();
                for row in &group {
                    digest.update(row.event_id.as_bytes());
                }
                let msg_id = digest.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect();
                let payload =
                    bank_platform::signing::sign_batch(group.iter().map(|r| r.envelope.clone()).collect(), signer);
                Self {
                    ids: group.iter().map(|r| r.id).collect(),
                    subject,
                    msg_id,
                    payload,
                    spans: if telemetry::exporting() {
                        group.iter().map(|r| publish_span(&r.envelope)).collect()
                    } else {
                        Vec::new()
                    },
                    occurred: group.iter().map(|r| r.occurred_at).collect(),
                }
            })
            .collect()
    }

    /// `Nats-Msg-Id` (deduplication) and a `traceparent` per event (its
    /// publish span's), with the span the publish runs in (the first's).
    fn headers(&self) -> (async_nats::HeaderMap, tracing::Span) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", self.msg_id.as_str());
        for span in &self.spans {
            let context = span.in_scope(telemetry::current_trace_context);
            headers.append("traceparent", context.get("traceparent").map_or("", String::as_str));
        }
        (headers, self.spans.first().cloned().unwrap_or_else(tracing::Span::none))
    }
}

/// What a round of publishing did: how many of its messages, from the
/// first, are now in the stream, the stream's last sequence after them, and
/// why it stopped early, if it did.
struct Round {
    stored: usize,
    last: u64,
    failed: bool,
    out_of_step: bool,
}

/// The stream's last sequence, as the server has it now.
#[tracing::instrument(level = "debug", skip_all, fields(stream = name), err(level = "debug"))]
async fn stream_last_sequence(js: &jetstream::Context, name: &str) -> Result<u64> {
    let info = async {
        let mut stream = js.get_stream(name).await.map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?;
        Ok(stream.info().await.map_err(|e| anyhow::anyhow!("stream {name} info: {e}"))?.state.last_sequence)
    };
    bank_platform::nats::answered_within(PROBE_TIMEOUT, &format!("stream {name}"), info).await
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

#[cfg(test)]
mod tests {
    use bank_platform::nats::{batch_subject, event_partition, event_subject};

    use super::*;

    fn row(id: i64, subject: String) -> Row {
        Row { id, event_id: Uuid::now_v7(), subject, envelope: vec![id as u8], occurred_at: chrono::Utc::now() }
    }

    /// Accounts in two different partitions.
    fn two_partitions() -> (Uuid, Uuid) {
        let a = Uuid::now_v7();
        loop {
            let b = Uuid::now_v7();
            if event_partition(b) != event_partition(a) {
                return (a, b);
            }
        }
    }

    #[test]
    fn a_round_becomes_one_message_per_partition_with_each_partitions_rows_in_order() {
        let (a, b) = two_partitions();
        let rows = vec![
            row(1, event_subject("ev", a)),
            row(2, event_subject("ev", b)),
            row(3, event_subject("ev", a)),
            // Written before partitions: the account's own subject.
            row(4, format!("ev.{b}")),
        ];
        let messages = Outgoing::of_round(&rows, "ev", &bank_platform::auth::TokenSigner::generate());
        let shape: Vec<(String, Vec<i64>)> = messages.iter().map(|m| (m.subject.clone(), m.ids.clone())).collect();
        assert_eq!(
            shape,
            vec![
                (batch_subject("ev", event_partition(a)), vec![1, 3]),
                (batch_subject("ev", event_partition(b)), vec![2, 4]),
            ]
        );
        let batch = bank_proto::v1::EventBatch::decode(messages[0].payload.as_slice()).unwrap();
        assert_eq!(batch.events, vec![vec![1u8], vec![3u8]], "the envelopes as stored, in outbox order");
    }

    #[test]
    fn the_same_events_make_the_same_message_id_and_any_other_set_another() {
        let (a, _) = two_partitions();
        let rows: Vec<Row> = (1..=3).map(|i| row(i, event_subject("ev", a))).collect();
        let signer = bank_platform::auth::TokenSigner::generate();
        let id_of = |rows: &[Row]| Outgoing::of_round(rows, "ev", &signer)[0].msg_id.clone();
        assert_eq!(id_of(&rows), id_of(&rows));
        assert_ne!(id_of(&rows), id_of(&rows[..2]), "a late row joining a regrouped message changes its id");
    }

    #[test]
    fn a_partition_with_more_rows_than_a_message_holds_fills_messages_in_order() {
        let (a, _) = two_partitions();
        let n = MAX_MESSAGE_EVENTS as i64 + 3;
        let rows: Vec<Row> = (1..=n).map(|i| row(i, event_subject("ev", a))).collect();
        let messages = Outgoing::of_round(&rows, "ev", &bank_platform::auth::TokenSigner::generate());
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].ids, (1..=MAX_MESSAGE_EVENTS as i64).collect::<Vec<_>>());
        assert_eq!(messages[1].ids, (MAX_MESSAGE_EVENTS as i64 + 1..=n).collect::<Vec<_>>());
    }
}
