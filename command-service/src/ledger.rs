//! The money path: each command is validated, then run as one Postgres
//! transaction — claim the idempotency key, lock the touched accounts in id
//! order, decide with the pure domain rules, then write balances, events,
//! outbox rows and the outcome in one statement.

use std::sync::Arc;

use bank_domain::{
    Account, AccountKind, AccountStatus, Currency, DomainError, InputError, Money, consistency::ConsistencyToken,
    parse_amount,
};
use bank_platform::auth::Caller;
use bank_proto::v1::{self as pb, event_envelope::Payload};
use chrono::{DateTime, Utc};
use prost::Message;
use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::{
    error::CommandError,
    events::{self, EventDraft, NewEvent},
    store::{self, AccountRow, Claim, PriorOutcome, Writes},
};

/// Limits from configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest amount of one deposit, withdrawal or transfer.
    pub max_amount: Decimal,
    /// Largest balance an account may hold.
    pub max_balance: Decimal,
}

pub struct Ledger {
    pool: PgPool,
    limits: Limits,
    subject_prefix: String,
    /// Wakes the outbox relay right after a commit.
    outbox_written: Arc<Notify>,
    /// Batching mode: commands go to the batchers instead of one
    /// transaction each (see `batch`).
    batch: Option<crate::batch::Queue>,
}

/// What a decided command writes and answers.
pub struct Plan<R> {
    pub(crate) writes: Writes,
    pub(crate) response: R,
}

/// Genesis of every account's hash chain.
const GENESIS_HASH: [u8; 32] = [0; 32];

fn now() -> DateTime<Utc> {
    // Postgres keeps microseconds: truncate so the stored row and the
    // published envelope carry the same instant.
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

// ---- input validation (no I/O) ----

pub fn parse_id(field: &str, text: &str) -> Result<Uuid, InputError> {
    if text.is_empty() {
        return Err(InputError::new(field, "is required"));
    }
    Uuid::try_parse(text).map_err(|_| InputError::new(field, "must be a UUID"))
}

pub fn check_idempotency_key(key: &str) -> Result<(), InputError> {
    let field = "idempotency_key";
    if key.is_empty() {
        Err(InputError::new(field, "is required for every mutating command"))
    } else if key.chars().count() > 128 || key.chars().any(char::is_control) {
        Err(InputError::new(field, "must be 1-128 characters without control characters"))
    } else {
        Ok(())
    }
}

pub fn check_description(text: &str) -> Result<(), InputError> {
    if text.chars().count() > 140 || text.chars().any(char::is_control) {
        Err(InputError::new("description", "must be at most 140 characters without control characters"))
    } else {
        Ok(())
    }
}

pub fn parse_money(money: Option<&pb::Money>, max: Decimal) -> Result<Money, Vec<InputError>> {
    let Some(m) = money else {
        return Err(vec![InputError::new("money", "is required")]);
    };
    let currency = Currency::from_code(&m.currency_code)
        .map_err(|_| vec![InputError::new("money.currency_code", "must be a supported ISO 4217 code such as USD")])?;
    let amount = parse_amount("money.amount", &m.amount, currency, max).map_err(|e| vec![e])?;
    Ok(Money::new(currency, amount))
}

/// Collects every violation of a request, so the caller learns all at once.
#[derive(Default)]
pub struct Violations(Vec<InputError>);

impl Violations {
    pub fn check<T>(&mut self, r: Result<T, InputError>) -> Option<T> {
        r.map_err(|e| self.0.push(e)).ok()
    }

    pub fn check_all<T>(&mut self, r: Result<T, Vec<InputError>>) -> Option<T> {
        r.map_err(|e| self.0.extend(e)).ok()
    }

    pub fn add(&mut self, field: &str, description: &str) {
        self.0.push(InputError::new(field, description));
    }

    /// The built value when nothing was violated.
    pub fn finish<T>(self, build: impl FnOnce() -> Option<T>) -> Result<T, CommandError> {
        if !self.0.is_empty() {
            return Err(CommandError::Invalid(self.0));
        }
        build().ok_or_else(|| CommandError::Internal(anyhow::anyhow!("validated value missing")))
    }
}

// ---- proto views ----

pub fn account_proto(row: &AccountRow) -> pb::Account {
    let a = &row.account;
    pb::Account {
        account_id: a.id.to_string(),
        owner_id: a.owner_id.to_string(),
        r#type: match row.kind {
            AccountKind::Checking => pb::AccountType::Checking,
            AccountKind::Savings => pb::AccountType::Savings,
        } as i32,
        currency_code: a.currency.code().to_owned(),
        balance: events::money(a.currency, a.balance),
        status: match a.status {
            AccountStatus::Active => pb::AccountStatus::Active,
            AccountStatus::Frozen => pb::AccountStatus::Frozen,
            AccountStatus::Closed => pb::AccountStatus::Closed,
        } as i32,
        version: a.version,
        opened_at: events::timestamp(row.opened_at),
    }
}

fn token_of(events: &[NewEvent]) -> String {
    ConsistencyToken::new(events.iter().map(|e| (e.account_id, e.version))).encode()
}

/// Appends one event to `row`: bumps its version and advances its hash chain.
fn append(
    row: &mut AccountRow,
    out: &mut Vec<NewEvent>,
    tx: Uuid,
    actor: Uuid,
    at: DateTime<Utc>,
    delta: Decimal,
    payload: Payload,
) {
    row.account.version += 1;
    let event = events::seal(
        EventDraft {
            account_id: row.account.id,
            version: row.account.version,
            transaction_id: tx,
            actor,
            occurred_at: at,
            delta,
            balance_after: row.account.balance,
            payload,
        },
        &row.last_hash,
        &bank_platform::telemetry::current_trace_context(),
    );
    row.last_hash = event.hash.clone();
    out.push(event);
}

/// The caller's own account among the locked rows. Someone else's answers
/// like a missing one (no existence leak), but is audited.
fn owned(rows: &[AccountRow], id: Uuid, caller: &Caller) -> Result<AccountRow, CommandError> {
    let row = rows.iter().find(|r| r.account.id == id).ok_or(CommandError::AccountNotFound)?;
    if row.account.owner_id != caller.user_id {
        return Err(CommandError::NotOwner);
    }
    Ok(row.clone())
}

fn existing(rows: &[AccountRow], id: Uuid) -> Result<AccountRow, CommandError> {
    rows.iter().find(|r| r.account.id == id).cloned().ok_or(CommandError::AccountNotFound)
}

fn ensure_active_customer(caller: &Caller) -> Result<(), CommandError> {
    // A service principal's token says ACTIVE, but it has passed no KYC and
    // holds no accounts of its own.
    if caller.is_service() {
        return Err(CommandError::PermissionDenied("a service principal is not a customer"));
    }
    if caller.is_active() { Ok(()) } else { Err(DomainError::CustomerNotActive.into()) }
}

fn movement(tx: Uuid, at: DateTime<Utc>, rows: &[&AccountRow], events: &[NewEvent]) -> pb::MoneyMovementResponse {
    pb::MoneyMovementResponse {
        transaction_id: tx.to_string(),
        balances_after: rows
            .iter()
            .map(|r| pb::AccountBalance {
                account_id: r.account.id.to_string(),
                balance: events::money(r.account.currency, r.account.balance),
                version: r.account.version,
            })
            .collect(),
        consistency_token: token_of(events),
        occurred_at: events::timestamp(at),
    }
}

/// A parsed money command.
#[derive(Clone)]
pub struct MoneyCommand {
    pub account_id: Uuid,
    pub money: Money,
    pub key: String,
    pub description: String,
}

#[derive(Clone)]
pub struct TransferCommand {
    pub from: Uuid,
    pub to: Uuid,
    pub money: Money,
    pub key: String,
    pub description: String,
}

impl Ledger {
    pub fn new(pool: PgPool, limits: Limits, subject_prefix: String, outbox_written: Arc<Notify>) -> Self {
        Self { pool, limits, subject_prefix, outbox_written, batch: None }
    }

    /// Sends every command through `queue` (batching mode).
    pub fn with_batching(mut self, queue: crate::batch::Queue) -> Self {
        self.batch = Some(queue);
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The transaction every command runs in; see the module doc.
    #[tracing::instrument(skip_all, fields(rpc = rpc, caller = %caller.user_id), err(level = "info"))]
    async fn execute<R: Message + Default>(
        &self,
        caller: &Caller,
        rpc: &'static str,
        key: &str,
        request_hash: &[u8],
        lock_ids: &[Uuid],
        decide: impl FnOnce(&[AccountRow]) -> Result<Plan<R>, CommandError> + Send + 'static,
    ) -> Result<R, CommandError> {
        if let Some(queue) = &self.batch {
            let job = crate::batch::Job::new(caller, rpc, key, request_hash, lock_ids, move |rows: &[AccountRow]| {
                decide(rows).map(|p| Plan { writes: p.writes, response: p.response.encode_to_vec() })
            });
            let bytes = queue.run(job).await?;
            return R::decode(bytes.as_slice()).map_err(|e| CommandError::Internal(anyhow::anyhow!("response: {e}")));
        }
        let mut tx = self.pool.begin().await?;
        if let Claim::Existing { request_hash: first, outcome } =
            store::claim_key(&mut tx, caller.user_id, key, request_hash).await?
        {
            tx.rollback().await?;
            if first != request_hash {
                return Err(CommandError::IdempotencyKeyReused);
            }
            return match outcome {
                PriorOutcome::Response(bytes) => R::decode(bytes.as_slice())
                    .map_err(|e| CommandError::Internal(anyhow::anyhow!("stored response: {e}"))),
                PriorOutcome::Refusal { reason, message } => Err(CommandError::StoredRefusal { reason, message }),
            };
        }
        let mut ids = lock_ids.to_vec();
        ids.sort();
        ids.dedup();
        let rows = store::lock_accounts(&mut tx, &ids).await?;
        let account = lock_ids.first().copied();
        match decide(&rows) {
            Ok(plan) => {
                let response = plan.response.encode_to_vec();
                store::apply(&mut tx, caller.user_id, key, &self.subject_prefix, plan.writes, &response).await?;
                tx.commit().await?;
                self.outbox_written.notify_one();
                Ok(plan.response)
            }
            Err(CommandError::Refused(rule)) => {
                // A refusal is an outcome: stored for replays, audited, committed.
                let message = rule.to_string();
                store::save_refusal(&mut tx, caller.user_id, key, rule.reason(), &message).await?;
                store::audit(&mut tx, caller.user_id, rpc, account, rule.reason(), &message).await?;
                tx.commit().await?;
                Err(CommandError::Refused(rule))
            }
            Err(CommandError::NotOwner) => {
                // Nothing is kept under the key; only the attempt is audited.
                tx.rollback().await?;
                let mut conn = self.pool.acquire().await?;
                store::audit(
                    &mut conn,
                    caller.user_id,
                    rpc,
                    account,
                    "NOT_OWNER",
                    "account belongs to another customer",
                )
                .await?;
                Err(CommandError::NotOwner)
            }
            Err(other) => Err(other), // dropping `tx` rolls back
        }
    }

    pub async fn open_account(
        &self,
        caller: &Caller,
        kind: AccountKind,
        currency: Currency,
        key: &str,
        request_hash: &[u8],
    ) -> Result<pb::OpenAccountResponse, CommandError> {
        let owned_caller = caller.clone();
        self.execute(caller, "OpenAccount", key, request_hash, &[], move |_| {
            let caller = &owned_caller;
            ensure_active_customer(caller)?;
            let at = now();
            let mut row = AccountRow {
                account: Account {
                    id: Uuid::now_v7(),
                    owner_id: caller.user_id,
                    currency,
                    balance: Decimal::ZERO,
                    status: AccountStatus::Active,
                    version: 0,
                },
                kind,
                last_hash: GENESIS_HASH.to_vec(),
                opened_at: at,
            };
            let mut events = Vec::new();
            let opened = Payload::AccountOpened(pb::AccountOpened {
                owner_id: caller.user_id.to_string(),
                r#type: account_proto(&row).r#type,
                currency_code: currency.code().to_owned(),
            });
            append(&mut row, &mut events, Uuid::now_v7(), caller.user_id, at, Decimal::ZERO, opened);
            let response =
                pb::OpenAccountResponse { account: Some(account_proto(&row)), consistency_token: token_of(&events) };
            Ok(Plan { writes: Writes { new_accounts: vec![row], changed_accounts: vec![], events }, response })
        })
        .await
    }

    pub async fn deposit(
        &self,
        caller: &Caller,
        cmd: &MoneyCommand,
        request_hash: &[u8],
    ) -> Result<pb::MoneyMovementResponse, CommandError> {
        let max_balance = self.limits.max_balance;
        let (owned_caller, owned_cmd) = (caller.clone(), cmd.clone());
        self.execute(caller, "Deposit", &cmd.key, request_hash, &[cmd.account_id], move |rows| {
            let (caller, cmd) = (&owned_caller, &owned_cmd);
            let mut row = owned(rows, cmd.account_id, caller)?;
            ensure_active_customer(caller)?;
            let change = row.account.deposit(&cmd.money, max_balance)?;
            let (tx, at, mut events) = (Uuid::now_v7(), now(), Vec::new());
            row.account.balance = change.after;
            let payload = Payload::MoneyDeposited(pb::MoneyDeposited {
                amount: events::money(cmd.money.currency, cmd.money.amount),
                balance_before: events::money(cmd.money.currency, change.before),
                balance_after: events::money(cmd.money.currency, change.after),
                description: cmd.description.clone(),
            });
            append(&mut row, &mut events, tx, caller.user_id, at, cmd.money.amount, payload);
            let response = movement(tx, at, &[&row], &events);
            Ok(Plan { writes: Writes { changed_accounts: vec![row], events, ..Writes::default() }, response })
        })
        .await
    }

    pub async fn withdraw(
        &self,
        caller: &Caller,
        cmd: &MoneyCommand,
        request_hash: &[u8],
    ) -> Result<pb::MoneyMovementResponse, CommandError> {
        let (owned_caller, owned_cmd) = (caller.clone(), cmd.clone());
        self.execute(caller, "Withdraw", &cmd.key, request_hash, &[cmd.account_id], move |rows| {
            let (caller, cmd) = (&owned_caller, &owned_cmd);
            let mut row = owned(rows, cmd.account_id, caller)?;
            ensure_active_customer(caller)?;
            let change = row.account.withdraw(&cmd.money)?;
            let (tx, at, mut events) = (Uuid::now_v7(), now(), Vec::new());
            row.account.balance = change.after;
            let payload = Payload::MoneyWithdrawn(pb::MoneyWithdrawn {
                amount: events::money(cmd.money.currency, cmd.money.amount),
                balance_before: events::money(cmd.money.currency, change.before),
                balance_after: events::money(cmd.money.currency, change.after),
                description: cmd.description.clone(),
            });
            append(&mut row, &mut events, tx, caller.user_id, at, -cmd.money.amount, payload);
            let response = movement(tx, at, &[&row], &events);
            Ok(Plan { writes: Writes { changed_accounts: vec![row], events, ..Writes::default() }, response })
        })
        .await
    }

    pub async fn transfer(
        &self,
        caller: &Caller,
        cmd: &TransferCommand,
        request_hash: &[u8],
    ) -> Result<pb::MoneyMovementResponse, CommandError> {
        let max_balance = self.limits.max_balance;
        let (owned_caller, owned_cmd) = (caller.clone(), cmd.clone());
        self.execute(caller, "Transfer", &cmd.key, request_hash, &[cmd.from, cmd.to], move |rows| {
            let (caller, cmd) = (&owned_caller, &owned_cmd);
            let mut from = owned(rows, cmd.from, caller)?;
            let mut to = existing(rows, cmd.to)?;
            ensure_active_customer(caller)?;
            let (debit, credit) = bank_domain::transfer(&from.account, &to.account, &cmd.money, max_balance)?;
            let (tx, at, mut events) = (Uuid::now_v7(), now(), Vec::new());
            let c = cmd.money.currency;
            from.account.balance = debit.after;
            to.account.balance = credit.after;
            let debited = Payload::TransferDebited(pb::TransferDebited {
                amount: events::money(c, cmd.money.amount),
                balance_before: events::money(c, debit.before),
                balance_after: events::money(c, debit.after),
                to_account_id: cmd.to.to_string(),
                description: cmd.description.clone(),
            });
            append(&mut from, &mut events, tx, caller.user_id, at, -cmd.money.amount, debited);
            let credited = Payload::TransferCredited(pb::TransferCredited {
                amount: events::money(c, cmd.money.amount),
                balance_before: events::money(c, credit.before),
                balance_after: events::money(c, credit.after),
                from_account_id: cmd.from.to_string(),
                description: cmd.description.clone(),
            });
            append(&mut to, &mut events, tx, caller.user_id, at, cmd.money.amount, credited);
            let response = movement(tx, at, &[&from, &to], &events);
            Ok(Plan { writes: Writes { changed_accounts: vec![from, to], events, ..Writes::default() }, response })
        })
        .await
    }

    /// Freeze, unfreeze (admin) and close (owner): status changes.
    pub async fn change_status(
        &self,
        caller: &Caller,
        change: StatusChange,
        account_id: Uuid,
        reason: &str,
        key: &str,
        request_hash: &[u8],
    ) -> Result<pb::AccountChangeResponse, CommandError> {
        let rpc = match change {
            StatusChange::Freeze => "FreezeAccount",
            StatusChange::Unfreeze => "UnfreezeAccount",
            StatusChange::Close => "CloseAccount",
        };
        if matches!(change, StatusChange::Freeze | StatusChange::Unfreeze) && !caller.is_admin() {
            return Err(CommandError::PermissionDenied("only an admin may freeze or unfreeze accounts"));
        }
        let (owned_caller, reason) = (caller.clone(), reason.to_owned());
        self.execute(caller, rpc, key, request_hash, &[account_id], move |rows| {
            let caller = &owned_caller;
            let mut row = match change {
                StatusChange::Close => owned(rows, account_id, caller)?,
                _ => existing(rows, account_id)?,
            };
            let (status, payload) = match change {
                StatusChange::Freeze => {
                    row.account.freeze()?;
                    (AccountStatus::Frozen, Payload::AccountFrozen(pb::AccountFrozen { reason: reason.to_owned() }))
                }
                StatusChange::Unfreeze => {
                    row.account.unfreeze()?;
                    (AccountStatus::Active, Payload::AccountUnfrozen(pb::AccountUnfrozen { reason: reason.to_owned() }))
                }
                StatusChange::Close => {
                    row.account.close()?;
                    (AccountStatus::Closed, Payload::AccountClosed(pb::AccountClosed {}))
                }
            };
            row.account.status = status;
            let mut events = Vec::new();
            append(&mut row, &mut events, Uuid::now_v7(), caller.user_id, now(), Decimal::ZERO, payload);
            let response =
                pb::AccountChangeResponse { account: Some(account_proto(&row)), consistency_token: token_of(&events) };
            Ok(Plan { writes: Writes { changed_accounts: vec![row], events, ..Writes::default() }, response })
        })
        .await
    }
}

#[derive(Debug, Clone, Copy)]
pub enum StatusChange {
    Freeze,
    Unfreeze,
    Close,
}
