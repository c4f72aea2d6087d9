//! Applies a batch of messages in one Postgres transaction (one fsync for the
//! batch), then refreshes Redis and announces the changes. Each message gets
//! its own outcome: ack (applied or duplicate), nak with delay (gap), or term
//! after it went to the dead letters (poison only: a gap is never
//! dead-lettered; one that lasts is filled from the stream, see `lib::fill_gaps`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::LazyLock,
    time::Duration,
};

use bank_platform::telemetry;

use anyhow::Result;
use bank_proto::v1 as pb;
use bank_readmodel::{AccountChange, AccountView, CacheKeys, HistoryEntry, cache_upsert_many};
use chrono::Utc;
use prometheus::{Histogram, HistogramOpts, IntCounter, register_histogram, register_int_counter};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    cache_debt::CacheDebt,
    fold::{self, Decision, Side},
};

static APPLIED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("projector_events_applied_total", "events applied").expect("registers once")
});
static DUPLICATES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("projector_duplicates_total", "duplicate events skipped").expect("registers once")
});
static DEAD_LETTERS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("projector_dead_letters_total", "messages sent to the dead letters").expect("registers once")
});
static REJECTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "projector_rejected_events_total",
        "events refused before applying: unsigned, badly signed, or on another account's subject"
    )
    .expect("registers once")
});
static GAPS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("projector_gaps_total", "events naked because an earlier version is missing")
        .expect("registers once")
});
pub(crate) static GAP_FILLS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("projector_gap_fills_total", "gaps filled by fetching an account's events from the stream")
        .expect("registers once")
});
static BATCH_EVENTS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        HistogramOpts::new("projector_batch_events", "events per read-model transaction")
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0])
    )
    .expect("registers once")
});
static LAG: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        HistogramOpts::new("projection_lag_seconds", "event time to its read-model commit")
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
    )
    .expect("registers once")
});

/// A gap that outlasted `max_deliveries`: the account's events past `stored`
/// are fetched from `subject` (its own, or its partition's batch subject).
#[derive(Debug, Clone)]
pub struct LastingGap {
    pub subject: String,
    pub account: Uuid,
    pub stored: i64,
}

/// What applying events does: each account's view and chain head after
/// them, and the rows, cache changes and lags to write at the commit.
#[derive(Default)]
struct Effects {
    views: HashMap<Uuid, AccountView>,
    heads: HashMap<Uuid, Option<Vec<u8>>>,
    changed: Vec<Uuid>,
    entries: Vec<(Uuid, HistoryEntry)>,
    /// Each applied event's link in its account's chain (statements' heads).
    links: Vec<ChainLink>,
    changes: Vec<AccountChange>,
    sides: Vec<Side>,
    /// When each applied event happened: its lag is measured at the commit.
    occurred: Vec<chrono::DateTime<Utc>>,
    applied: u64,
    duplicates: u64,
}

impl Effects {
    fn record(
        &mut self,
        keys: &CacheKeys,
        env: &pb::EventEnvelope,
        id: Uuid,
        view: AccountView,
        entry: Option<HistoryEntry>,
        side: Option<Side>,
    ) {
        self.sides.extend(side);
        self.occurred.extend(fold::occurred_at(env));
        let mut change = AccountChange {
            account: view.clone(),
            transaction_id: entry.as_ref().map(|e| e.transaction_id),
            occurred_at: fold::occurred_at(env).unwrap_or_else(Utc::now),
            seal: None,
        };
        keys.seal_change(&mut change);
        self.changes.push(change);
        if !self.changed.contains(&id) {
            self.changed.push(id);
        }
        self.heads.insert(id, Some(env.hash.clone()));
        self.links.push(ChainLink {
            account_id: id,
            version: env.version,
            occurred_at: fold::occurred_at(env).unwrap_or_else(Utc::now),
            hash: env.hash.clone(),
        });
        let event_id = Uuid::try_parse(&env.event_id).unwrap_or_else(|_| Uuid::now_v7());
        self.entries.extend(entry.map(|e| (event_id, e)));
        self.views.insert(id, view);
        self.applied += 1;
    }

    /// Takes in what a later message applied on top of this.
    fn absorb(&mut self, later: Effects) {
        self.views.extend(later.views);
        self.heads.extend(later.heads);
        for id in later.changed {
            if !self.changed.contains(&id) {
                self.changed.push(id);
            }
        }
        self.entries.extend(later.entries);
        self.links.extend(later.links);
        self.changes.extend(later.changes);
        self.sides.extend(later.sides);
        self.occurred.extend(later.occurred);
    }
}

/// An event's place in its account's hash chain.
struct ChainLink {
    account_id: Uuid,
    version: i64,
    occurred_at: chrono::DateTime<Utc>,
    hash: Vec<u8>,
}

/// A message as the batch sees it, independent of the JetStream client.
pub struct Incoming {
    pub subject: String,
    pub payload: Vec<u8>,
    pub stream_sequence: u64,
    pub delivered: i64,
    /// W3C trace headers the relay published, one set per event it carries.
    pub traces: Vec<BTreeMap<String, String>>,
    /// Fetched again to fill a gap: poison here was dead-lettered when the
    /// consumer first delivered it, so it is not recorded twice.
    pub refetched: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ack,
    /// Redeliver after a delay (a gap that may still fill).
    Retry,
    /// Dead-lettered: never redeliver.
    Terminate,
}

#[derive(Clone)]
pub struct Applier {
    pub pool: PgPool,
    /// None while Redis was unreachable at start; retried every few seconds.
    /// (Once connected, the manager reconnects by itself.)
    pub redis: Option<bank_platform::redis::Redis>,
    pub redis_url: String,
    pub last_redis_attempt: std::time::Instant,
    pub keys: CacheKeys,
    /// Cache entries to write (again): see `cache_debt`.
    pub cache_debt: CacheDebt,
    /// After this many deliveries of a gap, the projector fetches the
    /// account's missing events from the stream itself.
    pub max_deliveries: i64,
    /// Gaps to fill after this batch.
    pub lasting_gaps: Vec<LastingGap>,
    /// Keys every event must be signed with; `None`: not checked (dev).
    pub event_keys: Option<std::sync::Arc<bank_platform::signing::EventKeys>>,
    /// Events of account A must arrive on its subject or its partition's
    /// batch subject.
    pub subject_prefix: String,
}

/// Delay before a gap is retried: doubling from 100 ms to 2 s. The missing
/// version is usually a message another (killed) consumer held unacked, which
/// JetStream redelivers after the ack wait; the delays must outlast that.
pub fn gap_retry_delay(delivered: i64) -> Duration {
    let exp = delivered.clamp(1, 6) as u32 - 1;
    (Duration::from_millis(100) * 2u32.pow(exp)).min(Duration::from_secs(2))
}

impl Applier {
    /// Whether the cache is owed a write with no event to carry it.
    pub fn cache_owed(&self) -> bool {
        self.redis.as_ref().is_some_and(|r| self.cache_debt.due(r.moves()))
    }

    /// Writes what the cache is owed (a quiet partition's failed writes, or
    /// the replay after the master moved).
    #[tracing::instrument(level = "debug", skip_all, fields(generation = self.cache_debt.generation()))]
    pub async fn settle_cache(&mut self) {
        let generation = self.cache_debt.generation();
        self.refresh_cache(generation, &[], &[]).await;
    }

    pub async fn reconnect_cache_if_due(&mut self) {
        if self.redis.is_none() && self.last_redis_attempt.elapsed() > Duration::from_secs(5) {
            self.last_redis_attempt = std::time::Instant::now();
            self.redis = crate::connect_redis(&self.redis_url).await;
        }
    }

    /// Applies `batch` to generation `generation` (None: the active one).
    #[tracing::instrument(level = "debug", skip_all, fields(messages = batch.len(), ?generation), err(level = "debug"))]
    pub async fn apply(&mut self, batch: &[Incoming], generation: Option<i32>) -> Result<Vec<Outcome>> {
        let mut tx = self.pool.begin().await?;
        // FOR SHARE: a rebuild's switch waits for in-flight batches, so none
        // commits to the old generation after the switch.
        let generation = match generation {
            Some(g) => g,
            None => {
                sqlx::query_scalar!("SELECT active_generation FROM projection_meta WHERE id = 1 FOR SHARE")
                    .fetch_one(&mut *tx)
                    .await?
            }
        };
        let decoded: Vec<Result<Vec<(pb::EventEnvelope, Uuid)>, String>> =
            batch.iter().map(|m| self.events_of(m)).collect();
        let ids: Vec<Uuid> = decoded.iter().flatten().flatten().map(|(_, id)| *id).collect();
        BATCH_EVENTS.observe(ids.len() as f64);
        let rows: Vec<ViewRow> = sqlx::query_as!(
            ViewRow,
            "SELECT account_id, owner_id, kind, currency, balance, status, version, opened_at, held, last_hash
             FROM account_view WHERE generation = $1 AND account_id = ANY($2) ORDER BY account_id FOR UPDATE",
            generation,
            &ids,
        )
        .fetch_all(&mut *tx)
        .await?;
        // What the batch has applied so far: each account's view and chain
        // head (the hash its next event must chain to), and what to write.
        let mut done = Effects::default();
        for row in rows {
            let (view, last_hash) = row.split();
            done.heads.insert(view.account_id, last_hash);
            done.views.insert(view.account_id, view);
        }
        let mut outcomes = Vec::with_capacity(batch.len());

        // One span per event, continuing its relay span, closed when the
        // batch commits: the projector's part of a command's trace.
        let mut spans = Vec::new();
        for (msg, d) in batch.iter().zip(decoded) {
            if telemetry::exporting() {
                for trace in &msg.traces {
                    let span = tracing::info_span!(
                        "projector.apply",
                        otel.name = "projector apply",
                        seq = msg.stream_sequence
                    );
                    telemetry::continue_trace(&span, &telemetry::Carrier(trace.clone()));
                    spans.push(span);
                }
            }
            // A message applies whole or not at all: its events are decided
            // against what the batch has applied, into a staging area that
            // joins the batch only if every event applies or is a duplicate.
            let verdict = d.and_then(|events| {
                let mut staged = Effects::default();
                for (env, id) in &events {
                    let view = staged.views.get(id).or_else(|| done.views.get(id));
                    let head = staged.heads.get(id).or_else(|| done.heads.get(id));
                    match fold::decide(env, view) {
                        Decision::Apply { .. } if !fold::chains_to(env, head) => {
                            REJECTED.inc();
                            return Err(format!(
                                "version {} does not chain to the hash of the account's previous event",
                                env.version
                            ));
                        }
                        Decision::Duplicate => staged.duplicates += 1,
                        Decision::Apply { view, entry, side } => staged.record(&self.keys, env, *id, view, entry, side),
                        Decision::Gap { stored } => return Ok(Err((*id, stored))),
                        Decision::Poison(reason) => return Err(reason),
                    }
                }
                Ok(Ok(staged))
            });
            let outcome = match verdict {
                Ok(Ok(staged)) => {
                    DUPLICATES.inc_by(staged.duplicates);
                    APPLIED.inc_by(staged.applied);
                    done.absorb(staged);
                    Outcome::Ack
                }
                Ok(Err((account, stored))) => {
                    // Never dead-lettered: the missing versions are in the
                    // stream. Usually they arrive by themselves (redelivered
                    // after the ack wait); a gap that outlasts
                    // `max_deliveries` is filled by fetching them.
                    GAPS.inc();
                    tracing::debug!(stored, seq = msg.stream_sequence, "gap: will retry");
                    if msg.delivered >= self.max_deliveries && !self.lasting_gaps.iter().any(|g| g.account == account) {
                        self.lasting_gaps.push(LastingGap { subject: msg.subject.clone(), account, stored });
                    }
                    Outcome::Retry
                }
                Err(_) if msg.refetched => Outcome::Ack,
                Err(reason) => {
                    self.dead_letter(&mut tx, msg, &reason).await?;
                    Outcome::Terminate
                }
            };
            outcomes.push(outcome);
        }
        let Effects { views, heads, changed, entries, links, changes, sides, occurred, .. } = done;

        let changed_views: Vec<&AccountView> = changed.iter().filter_map(|id| views.get(id)).collect();
        write_views(&mut tx, generation, &changed_views, &heads).await?;
        write_history(&mut tx, generation, &entries).await?;
        write_chain(&mut tx, generation, &links).await?;
        write_sides(&mut tx, generation, &sides).await?;
        tx.commit().await?;
        drop(spans);
        let committed = Utc::now();
        for at in occurred {
            LAG.observe((committed - at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
        }

        self.refresh_cache(generation, &changed_views, &changes).await;
        Ok(outcomes)
    }

    /// The events a message carries, each on its partition's subject and
    /// (when keys are configured) under a valid signature; or why the
    /// message as a whole is refused (the shared consumer's checks).
    fn events_of(&self, m: &Incoming) -> Result<Vec<(pb::EventEnvelope, Uuid)>, String> {
        match bank_stream::events_of(&m.subject, &m.payload, &self.subject_prefix, self.event_keys.as_deref()) {
            Ok(events) => Ok(events.into_iter().map(|e| (e.envelope, e.account)).collect()),
            Err(refusal) => {
                if matches!(refusal, bank_stream::Refusal::Rejected(_)) {
                    REJECTED.inc();
                }
                Err(refusal.to_string())
            }
        }
    }

    #[tracing::instrument(skip_all, fields(seq = msg.stream_sequence, subject = %msg.subject), err)]
    async fn dead_letter(&self, tx: &mut sqlx::PgConnection, msg: &Incoming, reason: &str) -> Result<()> {
        tracing::warn!(seq = msg.stream_sequence, subject = %msg.subject, reason, "dead letter");
        DEAD_LETTERS.inc();
        sqlx::query!(
            "INSERT INTO dead_letters (stream_sequence, subject, reason, payload) VALUES ($1, $2, $3, $4)",
            msg.stream_sequence as i64,
            msg.subject,
            reason,
            msg.payload,
        )
        .execute(tx)
        .await?;
        Ok(())
    }

    /// Best effort: Redis is a cache, and projection never waits for it. An
    /// entry whose write failed is owed and goes again with the next refresh
    /// (`cache_debt`); readers fill missing entries from Postgres.
    #[tracing::instrument(level = "debug", skip_all, fields(generation = generation, views = views.len()))]
    async fn refresh_cache(&mut self, generation: i32, views: &[&AccountView], changes: &[AccountChange]) {
        let Some(redis) = self.redis.as_mut() else {
            // Not connected since the start: the entries Redis still holds
            // from before would stay behind these changes.
            if self.cache_debt.owe(generation, views) {
                tracing::warn!("cache debt dropped: too many entries owed; they expire by their TTL");
            }
            return;
        };
        let due = self.cache_debt.take(generation, redis.moves(), views);
        let entries: Vec<&AccountView> = due.iter().collect();
        if let Err(e) = cache_upsert_many(redis, &self.keys, generation, &entries).await {
            tracing::warn!(error = %e, entries = due.len(), "cache update failed; owed until Redis takes it");
            if self.cache_debt.failed(due) {
                tracing::warn!("cache debt dropped: too many entries owed; they expire by their TTL");
            }
            return;
        }
        self.cache_debt.written(due, std::time::Instant::now());
        if changes.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for c in changes {
            pipe.publish(self.keys.changes_channel(), serde_json::to_string(c).unwrap_or_default()).ignore();
        }
        if let Err(e) = pipe.query_async::<()>(redis).await {
            tracing::warn!(error = %e, "change notification failed");
        }
    }
}

/// An account's row with the hash of its last applied event.
struct ViewRow {
    account_id: Uuid,
    owner_id: Uuid,
    kind: String,
    currency: String,
    balance: rust_decimal::Decimal,
    status: String,
    version: i64,
    opened_at: chrono::DateTime<Utc>,
    held: rust_decimal::Decimal,
    last_hash: Option<Vec<u8>>,
}

impl ViewRow {
    /// The account, and its chain head.
    fn split(self) -> (AccountView, Option<Vec<u8>>) {
        let view = AccountView {
            account_id: self.account_id,
            owner_id: self.owner_id,
            kind: self.kind,
            currency: self.currency,
            balance: self.balance,
            status: self.status,
            version: self.version,
            opened_at: self.opened_at,
            held: self.held,
        };
        (view, self.last_hash)
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(generation = generation, views = views.len()), err)]
async fn write_views(
    tx: &mut sqlx::PgConnection,
    generation: i32,
    views: &[&AccountView],
    heads: &HashMap<Uuid, Option<Vec<u8>>>,
) -> Result<()> {
    if views.is_empty() {
        return Ok(());
    }
    let last_hashes: Vec<Option<Vec<u8>>> = views.iter().map(|v| heads.get(&v.account_id).cloned().flatten()).collect();
    sqlx::query!(
        "INSERT INTO account_view (generation, account_id, owner_id, kind, currency, balance, status, version, opened_at, held, last_hash, updated_at)
         SELECT $1, * , now() FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::numeric[], $7::text[], $8::int8[], $9::timestamptz[], $10::numeric[], $11::bytea[])
         ON CONFLICT (generation, account_id) DO UPDATE SET balance = EXCLUDED.balance, status = EXCLUDED.status,
             version = EXCLUDED.version, held = EXCLUDED.held, last_hash = EXCLUDED.last_hash, updated_at = now()",
        generation,
        &views.iter().map(|v| v.account_id).collect::<Vec<_>>(),
        &views.iter().map(|v| v.owner_id).collect::<Vec<_>>(),
        &views.iter().map(|v| v.kind.clone()).collect::<Vec<_>>(),
        &views.iter().map(|v| v.currency.clone()).collect::<Vec<_>>(),
        &views.iter().map(|v| v.balance).collect::<Vec<_>>(),
        &views.iter().map(|v| v.status.clone()).collect::<Vec<_>>(),
        &views.iter().map(|v| v.version).collect::<Vec<_>>(),
        &views.iter().map(|v| v.opened_at).collect::<Vec<_>>(),
        &views.iter().map(|v| v.held).collect::<Vec<_>>(),
        // NULL heads (rows from before chain heads were kept) stay NULL.
        &last_hashes as &[Option<Vec<u8>>],
    )
    .execute(tx)
    .await?;
    Ok(())
}

#[tracing::instrument(level = "debug", skip_all, fields(generation = generation, entries = entries.len()), err)]
async fn write_history(tx: &mut sqlx::PgConnection, generation: i32, entries: &[(Uuid, HistoryEntry)]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let counterparties: Vec<Option<Uuid>> = entries.iter().map(|(_, e)| e.counterparty_account_id).collect();
    let reverses: Vec<Option<Uuid>> = entries.iter().map(|(_, e)| e.reverses_transaction_id).collect();
    sqlx::query!(
        "INSERT INTO transaction_history (generation, account_id, version, event_id, transaction_id, kind, amount, balance_before, balance_after, counterparty_account_id, description, occurred_at, reverses_transaction_id)
         SELECT $1, a, v, ev, t, k, am, bb, ba, c, d, o, r
         FROM UNNEST($2::uuid[], $3::int8[], $4::uuid[], $5::text[], $6::numeric[], $7::numeric[], $8::numeric[], $9::uuid[], $10::text[], $11::timestamptz[], $12::uuid[], $13::uuid[])
              AS x(a, v, t, k, am, bb, ba, c, d, o, ev, r)
         ON CONFLICT DO NOTHING",
        generation,
        &entries.iter().map(|(_, e)| e.account_id).collect::<Vec<_>>(),
        &entries.iter().map(|(_, e)| e.version).collect::<Vec<_>>(),
        &entries.iter().map(|(_, e)| e.transaction_id).collect::<Vec<_>>(),
        &entries.iter().map(|(_, e)| e.kind.clone()).collect::<Vec<_>>(),
        &entries.iter().map(|(_, e)| e.amount).collect::<Vec<_>>(),
        &entries.iter().map(|(_, e)| e.balance_before).collect::<Vec<_>>(),
        &entries.iter().map(|(_, e)| e.balance_after).collect::<Vec<_>>(),
        // Arrays with NULL elements: the macro's check knows only arrays of non-null values.
        &counterparties as &[Option<Uuid>],
        &entries.iter().map(|(_, e)| e.description.clone()).collect::<Vec<_>>(),
        &entries.iter().map(|(_, e)| e.occurred_at).collect::<Vec<_>>(),
        &entries.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        &reverses as &[Option<Uuid>],
    )
    .execute(tx)
    .await?;
    Ok(())
}

#[tracing::instrument(level = "debug", skip_all, fields(generation = generation, links = links.len()), err)]
async fn write_chain(tx: &mut sqlx::PgConnection, generation: i32, links: &[ChainLink]) -> Result<()> {
    if links.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "INSERT INTO account_chain (generation, account_id, version, occurred_at, hash)
         SELECT $1, * FROM UNNEST($2::uuid[], $3::int8[], $4::timestamptz[], $5::bytea[])
         ON CONFLICT DO NOTHING",
        generation,
        &links.iter().map(|l| l.account_id).collect::<Vec<_>>(),
        &links.iter().map(|l| l.version).collect::<Vec<_>>(),
        &links.iter().map(|l| l.occurred_at).collect::<Vec<_>>(),
        &links.iter().map(|l| l.hash.clone()).collect::<Vec<_>>(),
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Holds placed (inserted) then ended (state updated), and reversal links;
/// each idempotent, so a redelivered batch changes nothing.
#[tracing::instrument(level = "debug", skip_all, fields(generation = generation, sides = sides.len()), err)]
async fn write_sides(tx: &mut sqlx::PgConnection, generation: i32, sides: &[Side]) -> Result<()> {
    if sides.is_empty() {
        return Ok(());
    }
    let holds: Vec<&bank_readmodel::HoldView> = sides
        .iter()
        .filter_map(|s| match s {
            Side::Hold(h) => Some(h),
            Side::Reversal { .. } => None,
        })
        .collect();
    let (placed, ended): (Vec<_>, Vec<_>) = holds.into_iter().partition(|h| h.state == "OPEN");
    sqlx::query!(
        "INSERT INTO hold_view (generation, hold_id, account_id, to_account_id, currency, amount, state, captured, expires_at)
         SELECT $1, * FROM UNNEST($2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::numeric[], $7::text[], $8::numeric[], $9::timestamptz[])
         ON CONFLICT DO NOTHING",
        generation,
        &placed.iter().map(|h| h.hold_id).collect::<Vec<_>>(),
        &placed.iter().map(|h| h.account_id).collect::<Vec<_>>(),
        &placed.iter().map(|h| h.to_account_id).collect::<Vec<_>>(),
        &placed.iter().map(|h| h.currency.clone()).collect::<Vec<_>>(),
        &placed.iter().map(|h| h.amount).collect::<Vec<_>>(),
        &placed.iter().map(|h| h.state.clone()).collect::<Vec<_>>(),
        &placed.iter().map(|h| h.captured).collect::<Vec<_>>(),
        &placed.iter().map(|h| h.expires_at).collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE hold_view h SET state = e.state, captured = e.captured
         FROM UNNEST($2::uuid[], $3::text[], $4::numeric[]) AS e(id, state, captured)
         WHERE h.generation = $1 AND h.hold_id = e.id",
        generation,
        &ended.iter().map(|h| h.hold_id).collect::<Vec<_>>(),
        &ended.iter().map(|h| h.state.clone()).collect::<Vec<_>>(),
        &ended.iter().map(|h| h.captured).collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    let links: Vec<(Uuid, Uuid)> = sides
        .iter()
        .filter_map(|s| match s {
            Side::Reversal { original, reversal } => Some((*original, *reversal)),
            Side::Hold(_) => None,
        })
        .collect();
    sqlx::query!(
        "INSERT INTO reversal_view (generation, original_transaction_id, reversal_transaction_id)
         SELECT $1, * FROM UNNEST($2::uuid[], $3::uuid[]) ON CONFLICT DO NOTHING",
        generation,
        &links.iter().map(|l| l.0).collect::<Vec<_>>(),
        &links.iter().map(|l| l.1).collect::<Vec<_>>(),
    )
    .execute(tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_retries_back_off_to_a_ceiling() {
        assert_eq!(gap_retry_delay(1), Duration::from_millis(100));
        assert_eq!(gap_retry_delay(3), Duration::from_millis(400));
        assert_eq!(gap_retry_delay(50), Duration::from_secs(2));
        // Total patience over the default 100 deliveries far exceeds the 5 s ack wait.
        let total: Duration = (1..=100).map(gap_retry_delay).sum();
        assert!(total > Duration::from_secs(60));
    }
}
