//! Scheduled and recurring transfers: the owner's side (create, read, pause,
//! resume, cancel) and the loop every instance runs to make due occurrences.
//!
//! The schedule is the `scheduled_transfers` table, so it survives restarts.
//! A due schedule is taken under a row lock (`FOR UPDATE SKIP LOCKED`: two
//! instances never run one schedule at once), its occurrence runs as an
//! ordinary Transfer through the ledger as the owner, under the key
//! `schedule:<id>:<occurrence>:<attempt>`, and the outcome and the next run
//! are written in the lock's transaction. A crash between the transfer and
//! that write leaves the row as it was; the next scheduler asks the ledger
//! again under the same key and gets the first outcome back, so an
//! occurrence runs once and is never skipped. A refusal is kept under its
//! attempt's key, so a later attempt (after the retry delay) has a key of its
//! own and cannot be confused with it. Each refused attempt is also written,
//! by the bank, on the source account's chain (`ScheduledTransferRefused`):
//! the owner is told through the stream, like of everything else.

use std::{sync::Arc, time::Duration};

use bank_domain::{
    Currency, DomainError, Money,
    ledger::{BANK, Command, RefusedOccurrence},
    schedule::{self, Cadence, Change, Outcome, Recurrence, RetryPolicy, Schedule, ScheduleEvent, ScheduleState},
};
use bank_platform::{
    CancellationToken,
    auth::{Caller, ROLE_CUSTOMER, STATUS_ACTIVE},
};
use bank_proto::v1 as pb;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    error::CommandError,
    execute::now,
    ledger::Ledger,
    standing::Standings,
    validate::IdempotencyKey,
    wire::{money, timestamp},
};

/// A validated request for a new schedule.
pub struct NewSchedule {
    pub from: Uuid,
    pub to: Uuid,
    pub money: Money,
    pub description: String,
    pub recurrence: Recurrence,
    pub key: IdempotencyKey,
    /// The request's fingerprint, for its idempotency key.
    pub request_hash: Vec<u8>,
}

/// A row of `scheduled_transfers`.
struct Row {
    id: Uuid,
    owner_id: Uuid,
    standing_version: i64,
    #[allow(dead_code)]
    idempotency_key: String,
    request_hash: Vec<u8>,
    from_account_id: Uuid,
    to_account_id: Uuid,
    amount: Decimal,
    currency: String,
    description: String,
    cadence: String,
    day_of_month: Option<i32>,
    time_zone: String,
    start_at: DateTime<Utc>,
    end_at: Option<DateTime<Utc>>,
    state: String,
    next_occurrence: i32,
    next_attempt: i32,
    next_run_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl Row {
    fn corrupt(&self, what: &str) -> CommandError {
        CommandError::Internal(anyhow::anyhow!("scheduled transfer {}: stored {what} unreadable", self.id))
    }

    fn currency(&self) -> Result<Currency, CommandError> {
        Currency::from_code(&self.currency).map_err(|_| self.corrupt("currency"))
    }

    /// What the domain rules need of it.
    fn schedule(&self) -> Result<Schedule, CommandError> {
        let cadence = match (self.cadence.as_str(), self.day_of_month) {
            ("ONCE", _) => Cadence::Once,
            ("DAILY", _) => Cadence::Daily,
            ("WEEKLY", _) => Cadence::Weekly,
            ("MONTHLY", Some(day)) => Cadence::Monthly { day: day as u32 },
            _ => return Err(self.corrupt("cadence")),
        };
        let zone = self.time_zone.parse().map_err(|_| self.corrupt("time zone"))?;
        Ok(Schedule {
            recurrence: Recurrence::new(cadence, zone, self.start_at, self.end_at),
            state: ScheduleState::parse(&self.state).ok_or_else(|| self.corrupt("state"))?,
            next: self.next_occurrence as u32,
            attempt: self.next_attempt as u32,
            run_at: self.next_run_at,
        })
    }

    fn view(&self, recent: Vec<pb::ScheduleOccurrence>) -> Result<pb::ScheduledTransfer, CommandError> {
        let cadence = match self.cadence.as_str() {
            "ONCE" => pb::Cadence::Once,
            "DAILY" => pb::Cadence::Daily,
            "WEEKLY" => pb::Cadence::Weekly,
            _ => pb::Cadence::Monthly,
        };
        let state = match ScheduleState::parse(&self.state) {
            Some(ScheduleState::Active) => pb::ScheduleState::Active,
            Some(ScheduleState::Paused) => pb::ScheduleState::Paused,
            Some(ScheduleState::Cancelled) => pb::ScheduleState::Cancelled,
            Some(ScheduleState::Completed) => pb::ScheduleState::Completed,
            None => return Err(self.corrupt("state")),
        };
        Ok(pb::ScheduledTransfer {
            schedule_id: self.id.to_string(),
            from_account_id: self.from_account_id.to_string(),
            to_account_id: self.to_account_id.to_string(),
            money: money(self.currency()?, self.amount),
            description: self.description.clone(),
            cadence: cadence.into(),
            start_at: timestamp(self.start_at),
            time_zone: self.time_zone.clone(),
            day_of_month: self.day_of_month.unwrap_or_default(),
            end_at: self.end_at.and_then(timestamp),
            state: state.into(),
            next_occurrence: self.next_occurrence.into(),
            next_attempt: self.next_attempt,
            next_run_at: self.next_run_at.and_then(timestamp),
            created_at: timestamp(self.created_at),
            recent_occurrences: recent,
        })
    }

    /// Writes the schedule's new state.
    async fn save(&self, conn: &mut PgConnection, s: &Schedule) -> Result<(), CommandError> {
        sqlx::query!(
            "UPDATE scheduled_transfers SET state = $2, next_occurrence = $3, next_attempt = $4, next_run_at = $5
             WHERE id = $1",
            self.id,
            s.state.as_str(),
            s.next as i32,
            s.attempt as i32,
            s.run_at,
        )
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Attempts shown with a schedule.
const RECENT: i64 = 20;

/// The owner's side of scheduled transfers.
pub struct Schedules {
    pool: PgPool,
    standings: Arc<Standings>,
}

impl Schedules {
    pub fn new(pool: PgPool, standings: Arc<Standings>) -> Self {
        Self { pool, standings }
    }

    pub async fn create(&self, caller: &Caller, new: NewSchedule) -> Result<pb::ScheduledTransfer, CommandError> {
        // Who may make one is who may make the transfer: a customer in good
        // standing (a service, a suspended or unapproved customer may not).
        let standing = self.standings.load(&mut *self.pool.acquire().await?, &[caller.user_id]).await?;
        crate::batch::actor(caller, standing.get(&caller.user_id)).ensure_customer()?;
        let source = sqlx::query!("SELECT owner_id, currency FROM accounts WHERE id = $1", new.from)
            .fetch_optional(&self.pool)
            .await?;
        match source {
            None => return Err(DomainError::AccountNotFound.into()),
            Some(a) if a.owner_id != caller.user_id => {
                // Answered as not found, and filed like the ledger's own refusals.
                let rule = DomainError::NotOwner;
                sqlx::query!(
                    "INSERT INTO audit_log (actor, command, account_id, reason, detail) VALUES ($1, $2, $3, $4, $5)",
                    caller.user_id,
                    "CreateScheduledTransfer",
                    new.from,
                    rule.audit_reason().unwrap_or("NOT_OWNER"),
                    rule.to_string(),
                )
                .execute(&self.pool)
                .await?;
                return Err(rule.into());
            }
            Some(a) if a.currency != new.money.currency.code() => {
                return Err(DomainError::CurrencyMismatch {
                    account: a.currency,
                    requested: new.money.currency.code().to_owned(),
                }
                .into());
            }
            Some(_) => {}
        }
        let now = now();
        let s = Schedule::create(new.recurrence, now)?;
        let r = &s.recurrence;
        let day = match r.cadence {
            Cadence::Monthly { day } => Some(day as i32),
            _ => None,
        };
        let inserted = sqlx::query_as!(
            Row,
            "INSERT INTO scheduled_transfers (id, owner_id, standing_version, idempotency_key, request_hash,
                 from_account_id, to_account_id, amount, currency, description, cadence, day_of_month,
                 time_zone, start_at, end_at, state, next_occurrence, next_attempt, next_run_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
             ON CONFLICT (owner_id, idempotency_key) DO NOTHING
             RETURNING *",
            Uuid::now_v7(),
            caller.user_id,
            caller.standing_version,
            new.key.as_str(),
            &new.request_hash,
            new.from,
            new.to,
            new.money.amount,
            new.money.currency.code(),
            new.description,
            r.cadence.as_str(),
            day,
            r.zone.name(),
            s.run_at,
            r.end,
            s.state.as_str(),
            s.next as i32,
            s.attempt as i32,
            s.run_at,
            now,
        )
        .fetch_optional(&self.pool)
        .await?;
        let row = match inserted {
            Some(row) => row,
            None => {
                // The key was used before: the same request gets the same schedule.
                let row = sqlx::query_as!(
                    Row,
                    "SELECT * FROM scheduled_transfers WHERE owner_id = $1 AND idempotency_key = $2",
                    caller.user_id,
                    new.key.as_str()
                )
                .fetch_one(&self.pool)
                .await?;
                if row.request_hash != new.request_hash {
                    return Err(CommandError::IdempotencyKeyReused);
                }
                row
            }
        };
        row.view(Vec::new())
    }

    pub async fn get(&self, caller: &Caller, id: Uuid) -> Result<pb::ScheduledTransfer, CommandError> {
        // One snapshot for the schedule and its occurrences: read apart, a
        // run committing between them shows an attempt the schedule has not
        // moved past yet.
        let mut tx = self.pool.begin().await?;
        sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        let row = owned(&mut *tx, caller, id, false).await?;
        let recent = sqlx::query!(
            r#"SELECT occurrence, attempt, due_at, ran_at, outcome, reason, message, transaction_id
               FROM schedule_occurrences WHERE schedule_id = $1
               ORDER BY occurrence DESC, attempt DESC LIMIT $2"#,
            id,
            RECENT
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|o| pb::ScheduleOccurrence {
            occurrence: o.occurrence.into(),
            attempt: o.attempt,
            due_at: timestamp(o.due_at),
            ran_at: timestamp(o.ran_at),
            outcome: match o.outcome.as_str() {
                "SUCCEEDED" => pb::OccurrenceOutcome::Succeeded,
                "REFUSED" => pb::OccurrenceOutcome::Refused,
                _ => pb::OccurrenceOutcome::Failed,
            }
            .into(),
            reason: o.reason.unwrap_or_default(),
            message: o.message.unwrap_or_default(),
            transaction_id: o.transaction_id.map(|t| t.to_string()).unwrap_or_default(),
        })
        .collect();
        tx.commit().await?;
        row.view(recent)
    }

    /// The caller's schedules, newest first, after `after` (a page token).
    pub async fn list(
        &self,
        caller: &Caller,
        after: Option<Uuid>,
        size: i64,
    ) -> Result<(Vec<pb::ScheduledTransfer>, Option<Uuid>), CommandError> {
        let rows = sqlx::query_as!(
            Row,
            "SELECT * FROM scheduled_transfers WHERE owner_id = $1 AND ($2::uuid IS NULL OR id < $2)
             ORDER BY id DESC LIMIT $3",
            caller.user_id,
            after,
            size + 1
        )
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() as i64 > size;
        let page: Vec<_> = rows.into_iter().take(size as usize).collect();
        let next = if more { page.last().map(|r| r.id) } else { None };
        Ok((page.iter().map(|r| r.view(Vec::new())).collect::<Result<_, _>>()?, next))
    }

    /// Pause, resume or cancel; waits for an occurrence that is running.
    pub async fn change(
        &self,
        caller: &Caller,
        id: Uuid,
        change: Change,
    ) -> Result<pb::ScheduledTransfer, CommandError> {
        let mut tx = self.pool.begin().await?;
        let row = owned(&mut *tx, caller, id, true).await?;
        let mut s = row.schedule()?;
        if let Some(event) = schedule::handle(&s, change, now())? {
            schedule::apply(&mut s, event);
            row.save(&mut tx, &s).await?;
        }
        let changed = owned(&mut *tx, caller, id, false).await?;
        tx.commit().await?;
        changed.view(Vec::new())
    }
}

/// The caller's schedule `id` (locked when `lock`); someone else's is not found.
async fn owned<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    caller: &Caller,
    id: Uuid,
    lock: bool,
) -> Result<Row, CommandError> {
    let row = if lock {
        sqlx::query_as!(Row, "SELECT * FROM scheduled_transfers WHERE id = $1 FOR UPDATE", id)
            .fetch_optional(conn)
            .await?
    } else {
        sqlx::query_as!(Row, "SELECT * FROM scheduled_transfers WHERE id = $1", id).fetch_optional(conn).await?
    };
    row.filter(|r| r.owner_id == caller.user_id).ok_or(CommandError::ScheduleNotFound)
}

/// The loop that makes due occurrences; every instance runs one.
pub struct Scheduler {
    pub pool: PgPool,
    pub ledger: Arc<Ledger>,
    /// How often due schedules are looked for: the most an occurrence runs late.
    pub poll: Duration,
    pub retry: RetryPolicy,
}

/// Most occurrences made in one pass before the loop looks at shutdown again.
const PASS: usize = 256;

impl Scheduler {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            // Cancellable mid-occurrence: its transaction rolls back and the
            // next scheduler asks the ledger again under the same key.
            let pass = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                p = self.pass() => p,
            };
            let full = match pass {
                Ok(n) => n == PASS,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduled transfer pass failed; retrying");
                    false
                }
            };
            if !full {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(self.poll) => {}
                }
            }
        }
    }

    /// Makes the occurrences due now; returns how many ran.
    async fn pass(&self) -> Result<usize, CommandError> {
        let mut ran = 0;
        while ran < PASS && self.run_due().await? {
            ran += 1;
        }
        Ok(ran)
    }

    /// Runs one due occurrence, if any is due and not taken by another instance.
    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn run_due(&self) -> Result<bool, CommandError> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query_as!(
            Row,
            "SELECT * FROM scheduled_transfers WHERE state = 'ACTIVE' AND next_run_at <= $1
             ORDER BY next_run_at LIMIT 1 FOR UPDATE SKIP LOCKED",
            now()
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(false);
        };
        let mut s = row.schedule()?;
        let (occurrence, attempt) = (s.next, s.attempt);
        // The owner, as a customer: a standing instruction carries no staff
        // power, and a suspension after it was made refuses it.
        let owner = Caller {
            user_id: row.owner_id,
            roles: vec![ROLE_CUSTOMER.to_owned()],
            status: STATUS_ACTIVE.to_owned(),
            expires_at: None,
            standing_version: row.standing_version,
            second_factor_at: None,
        };
        let key = IdempotencyKey::scheduled(row.id, occurrence, attempt);
        let hash: Vec<u8> = Sha256::new_with_prefix(key.as_str()).chain_update(&row.request_hash).finalize().to_vec();
        let command = Command::Transfer {
            from: row.from_account_id,
            to: row.to_account_id,
            money: Money::new(row.currency()?, row.amount),
            description: row.description.clone(),
        };
        let result =
            self.ledger.run::<pb::MoneyMovementResponse>(&owner, "ScheduledTransfer", &key, &hash, command).await;
        let (outcome, reason, message, transaction) = match result {
            Ok(made) => {
                let id = Uuid::try_parse(&made.transaction_id).map_err(|_| {
                    CommandError::Internal(anyhow::anyhow!("transfer answered without a transaction id"))
                })?;
                (Outcome::Succeeded, None, None, Some(id))
            }
            Err(CommandError::Refused(rule)) => {
                (Outcome::Refused, Some(rule.reason().to_owned()), Some(rule.to_string()), None)
            }
            Err(CommandError::StoredRefusal { reason, message }) => {
                (Outcome::Refused, Some(reason), Some(message), None)
            }
            // Nothing committed (a failover, a batch that rolled back): the
            // same attempt again at the next pass.
            Err(e @ (CommandError::Db(_) | CommandError::Unavailable(_))) => return Err(e),
            Err(other) => (Outcome::Refused, Some("INTERNAL".to_owned()), Some(other.to_string()), None),
        };
        let now = now();
        let due_at = s.recurrence.occurrence(occurrence).or(s.run_at).unwrap_or(now);
        let event = schedule::settle(&s, outcome, now, self.retry);
        let recorded = match (outcome, event) {
            (Outcome::Succeeded, _) => "SUCCEEDED",
            (Outcome::Refused, ScheduleEvent::Retrying { .. }) => "REFUSED",
            (Outcome::Refused, _) => "FAILED",
        };
        if outcome == Outcome::Refused {
            let retry_at = match event {
                ScheduleEvent::Retrying { run_at, .. } => Some(run_at),
                _ => None,
            };
            self.tell_owner(&row, occurrence, attempt, reason.clone().unwrap_or_default(), retry_at).await?;
        }
        schedule::apply(&mut s, event);
        sqlx::query!(
            "INSERT INTO schedule_occurrences
                 (schedule_id, occurrence, attempt, due_at, ran_at, outcome, reason, message, transaction_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            row.id,
            occurrence as i32,
            attempt as i32,
            due_at,
            now,
            recorded,
            reason,
            message,
            transaction,
        )
        .execute(&mut *tx)
        .await?;
        row.save(&mut tx, &s).await?;
        tx.commit().await?;
        tracing::info!(schedule = %row.id, occurrence, attempt, outcome = recorded, reason, "scheduled transfer ran");
        Ok(true)
    }

    /// Records the refusal on the source account's chain, as the bank: the
    /// owner hears of it through the stream, like every other event. Under
    /// its own key, so the retry of a pass that died after it records it once.
    async fn tell_owner(
        &self,
        row: &Row,
        occurrence: u32,
        attempt: u32,
        reason: String,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), CommandError> {
        let key = IdempotencyKey::scheduled_refusal(row.id, occurrence, attempt);
        let hash: Vec<u8> = Sha256::new_with_prefix(key.as_str()).chain_update(&row.request_hash).finalize().to_vec();
        let command = Command::RecordScheduleRefusal(RefusedOccurrence {
            account: row.from_account_id,
            schedule: row.id,
            occurrence,
            attempt,
            to: row.to_account_id,
            money: Money::new(row.currency()?, row.amount),
            reason,
            retry_at,
        });
        let bank = Caller {
            user_id: BANK,
            roles: Vec::new(),
            status: STATUS_ACTIVE.to_owned(),
            expires_at: None,
            standing_version: 0,
            second_factor_at: None,
        };
        match self
            .ledger
            .run::<pb::AccountChangeResponse>(&bank, "ScheduledTransferRefused", &key, &hash, command)
            .await
        {
            Ok(_) => Ok(()),
            // The account is gone from the ledger: nobody to tell.
            Err(CommandError::Refused(DomainError::AccountNotFound)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
