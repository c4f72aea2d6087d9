//! The Postgres adapter of the write model: idempotency claims, row locks,
//! what a batch needs, and one statement that applies a decided batch. No
//! business rules here. Every statement is checked against the schema at
//! compile time (`.sqlx/`, `scripts/sqlx-prepare`).

use std::collections::{HashMap, HashSet};

use bank_domain::{
    Account, AccountKind, AccountStatus, Currency, DebitLimits, Money,
    hold::{Hold, HoldState},
    ledger::{Needs, Posting, Transaction},
};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{error::CommandError, events::NewEvent, validate::IdempotencyKey};

/// An account row as the write model holds it.
#[derive(Debug, Clone)]
pub struct AccountRow {
    pub account: Account,
    pub last_hash: Vec<u8>,
    pub opened_at: DateTime<Utc>,
}

/// The columns of `accounts`, as read.
struct AccountRecord {
    id: Uuid,
    owner_id: Uuid,
    kind: String,
    currency: String,
    balance: Decimal,
    status: String,
    version: i64,
    last_hash: Vec<u8>,
    opened_at: DateTime<Utc>,
    held: Decimal,
    max_debit: Option<Decimal>,
    daily_debit_limit: Option<Decimal>,
}

fn corrupt(what: &str) -> CommandError {
    CommandError::Internal(anyhow::anyhow!("corrupt row: {what}"))
}

fn currency(code: &str) -> Result<Currency, CommandError> {
    Currency::from_code(code.trim()).map_err(|_| corrupt("currency"))
}

impl TryFrom<AccountRecord> for AccountRow {
    type Error = CommandError;

    fn try_from(r: AccountRecord) -> Result<Self, CommandError> {
        Ok(AccountRow {
            account: Account {
                id: r.id,
                owner_id: r.owner_id,
                kind: AccountKind::parse(&r.kind).ok_or_else(|| corrupt("account kind"))?,
                currency: currency(&r.currency)?,
                balance: r.balance,
                status: AccountStatus::parse(&r.status).ok_or_else(|| corrupt("account status"))?,
                version: r.version,
                held: r.held,
                limits: DebitLimits { max_debit: r.max_debit, daily_debit: r.daily_debit_limit },
                debited_last_day: Decimal::ZERO,
            },
            last_hash: r.last_hash,
            opened_at: r.opened_at,
        })
    }
}

/// Locks the rows in ascending id order (Sort runs below LockRows), so two
/// opposite transfers cannot deadlock. Missing ids are simply absent.
#[tracing::instrument(skip_all, fields(accounts = ids.len()), err(level = "info"))]
pub async fn lock_accounts(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<AccountRow>, CommandError> {
    sqlx::query_as!(
        AccountRecord,
        "SELECT id, owner_id, kind, currency, balance, status, version, last_hash, opened_at, held, max_debit,
                daily_debit_limit
         FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        ids
    )
    .fetch_all(conn)
    .await?
    .into_iter()
    .map(AccountRow::try_from)
    .collect()
}

/// Fills in what each locked account with a daily limit was debited since
/// `since`. A statement of its own, after the locks: its snapshot then
/// includes every debit committed before this transaction got the rows.
/// With `every`, every customer account's (`Debits::OfEvery`).
#[tracing::instrument(skip_all, err(level = "info"))]
pub async fn load_debits_since(
    conn: &mut PgConnection,
    rows: &mut [AccountRow],
    since: DateTime<Utc>,
    every: bool,
) -> Result<(), CommandError> {
    let limited: Vec<Uuid> = rows
        .iter()
        .filter(|r| r.account.limits.daily_debit.is_some() || (every && !r.account.kind.is_system()))
        .map(|r| r.account.id)
        .collect();
    if limited.is_empty() {
        return Ok(());
    }
    let sums: HashMap<Uuid, Decimal> = sqlx::query!(
        r#"SELECT account_id, -sum(delta) AS "debited!" FROM events
           WHERE account_id = ANY($1) AND delta < 0 AND occurred_at > $2 GROUP BY account_id"#,
        &limited,
        since
    )
    .fetch_all(conn)
    .await?
    .into_iter()
    .map(|r| (r.account_id, r.debited))
    .collect();
    for r in rows {
        r.account.debited_last_day = sums.get(&r.account.id).copied().unwrap_or_default();
    }
    Ok(())
}

/// The accounts a command locks: those it needs, and those of the holds and
/// transactions it names (fixed once written, so read without a lock).
#[tracing::instrument(skip_all, err(level = "info"))]
pub async fn accounts_to_lock(pool: &sqlx::PgPool, needs: &Needs) -> Result<Vec<Uuid>, CommandError> {
    let mut ids = needs.accounts.clone();
    if !needs.holds.is_empty() {
        for h in sqlx::query!("SELECT account_id, to_account_id FROM holds WHERE id = ANY($1)", &needs.holds)
            .fetch_all(pool)
            .await?
        {
            ids.extend([h.account_id, h.to_account_id]);
        }
    }
    if !needs.transactions.is_empty() {
        ids.extend(
            sqlx::query_scalar!("SELECT account_id FROM postings WHERE transaction_id = ANY($1)", &needs.transactions)
                .fetch_all(pool)
                .await?,
        );
    }
    Ok(ids)
}

/// A hold as the write model keeps it.
#[derive(Debug, Clone)]
pub struct HoldRow {
    pub hold: Hold,
    pub captured: Decimal,
    pub placed_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// The columns of `holds`, as read.
struct HoldRecord {
    id: Uuid,
    account_id: Uuid,
    to_account_id: Uuid,
    currency: String,
    amount: Decimal,
    state: String,
    captured: Decimal,
    expires_at: DateTime<Utc>,
    placed_by: Uuid,
    placed_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
}

impl TryFrom<HoldRecord> for HoldRow {
    type Error = CommandError;

    fn try_from(r: HoldRecord) -> Result<Self, CommandError> {
        Ok(HoldRow {
            hold: Hold {
                id: r.id,
                account: r.account_id,
                to: r.to_account_id,
                money: Money::new(currency(&r.currency)?, r.amount),
                state: HoldState::parse(&r.state).ok_or_else(|| corrupt("hold state"))?,
                expires_at: r.expires_at,
                placed_by: r.placed_by,
            },
            captured: r.captured,
            placed_at: r.placed_at,
            ended_at: r.ended_at,
        })
    }
}

/// The holds named (read after the locks of their accounts, under which
/// alone a hold changes).
#[tracing::instrument(skip_all, fields(holds = ids.len()), err(level = "info"))]
pub async fn load_holds(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<HoldRow>, CommandError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as!(
        HoldRecord,
        "SELECT id, account_id, to_account_id, currency, amount, state, captured, expires_at, placed_by, placed_at,
                ended_at
         FROM holds WHERE id = ANY($1)",
        ids
    )
    .fetch_all(conn)
    .await?
    .into_iter()
    .map(HoldRow::try_from)
    .collect()
}

/// The transactions named, with their postings and reversal links (read
/// after the locks of their accounts, under which alone a reversal is written).
#[tracing::instrument(skip_all, fields(transactions = ids.len()), err(level = "info"))]
pub async fn load_transactions(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Transaction>, CommandError> {
    let mut out: HashMap<Uuid, Transaction> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let postings = sqlx::query!(
        "SELECT transaction_id, account_id, currency, amount FROM postings
         WHERE transaction_id = ANY($1) ORDER BY event_id",
        ids
    )
    .fetch_all(&mut *conn)
    .await?;
    for p in postings {
        out.entry(p.transaction_id)
            .or_insert_with(|| Transaction { postings: Vec::new(), reverses: None, reversed_by: None })
            .postings
            .push(Posting { account: p.account_id, currency: currency(&p.currency)?, amount: p.amount });
    }
    let links = sqlx::query!(
        "SELECT original_transaction_id, reversal_transaction_id FROM reversals
         WHERE original_transaction_id = ANY($1) OR reversal_transaction_id = ANY($1)",
        ids
    )
    .fetch_all(conn)
    .await?;
    for link in links {
        if let Some(t) = out.get_mut(&link.original_transaction_id) {
            t.reversed_by = Some(link.reversal_transaction_id);
        }
        if let Some(t) = out.get_mut(&link.reversal_transaction_id) {
            t.reverses = Some(link.original_transaction_id);
        }
    }
    Ok(out)
}

/// What a decided command writes, all at once.
#[derive(Debug, Default)]
pub struct Writes {
    pub new_accounts: Vec<AccountRow>,
    pub changed_accounts: Vec<AccountRow>,
    pub events: Vec<NewEvent>,
    /// Holds placed or ended, in their new state.
    pub holds: Vec<HoldRow>,
    pub reversals: Vec<ReversalRow>,
}

/// The link of a reversal to its original.
#[derive(Debug, Clone)]
pub struct ReversalRow {
    pub original: Uuid,
    pub reversal: Uuid,
    pub by: Uuid,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// A command's response, kept under its key.
#[derive(Debug)]
pub struct StoredResponse {
    pub caller: Uuid,
    pub key: String,
    pub response: Vec<u8>,
}

/// A business refusal, kept under its key.
#[derive(Debug)]
pub struct StoredRefusal {
    pub caller: Uuid,
    pub key: String,
    pub reason: String,
    pub message: String,
}

/// What a command's key keeps.
#[derive(Debug)]
pub enum KeyOutcome {
    Response(StoredResponse),
    Refusal(StoredRefusal),
    /// Nothing to keep (an unknown or someone else's account, a failure):
    /// the key is given back.
    Released {
        caller: Uuid,
        key: String,
    },
}

/// A refusal filed in the audit log.
#[derive(Debug)]
pub struct Audit {
    pub actor: Uuid,
    pub command: String,
    pub account: Option<Uuid>,
    pub reason: String,
    pub detail: String,
}

/// Everything one batch writes after its locks and claims, applied by
/// `apply_batch` in one statement.
#[derive(Debug, Default)]
pub struct BatchWrites {
    /// Accounts opened in this batch, in their final state.
    pub new_accounts: Vec<AccountRow>,
    /// Existing accounts the batch changed, in their final state (once each).
    pub changed_accounts: Vec<AccountRow>,
    /// In batch order: per account, in version order.
    pub events: Vec<NewEvent>,
    pub outcomes: Vec<KeyOutcome>,
    pub audits: Vec<Audit>,
    /// Holds placed in this batch, in their final state.
    pub new_holds: Vec<HoldRow>,
    /// Existing holds the batch ended.
    pub changed_holds: Vec<HoldRow>,
    pub reversals: Vec<ReversalRow>,
}

/// A client's key as stored: (caller, key).
pub type KeyOf = (Uuid, String);

/// The first outcome stored under an idempotency key.
pub enum PriorOutcome {
    Response(Vec<u8>),
    Refusal { reason: String, message: String },
}

/// Claims every key of a batch in one statement; returns the keys that were
/// free (now claimed by this transaction).
#[tracing::instrument(skip_all, fields(keys = claims.len()), err(level = "info"))]
pub async fn claim_keys(
    conn: &mut PgConnection,
    claims: &[(Uuid, &IdempotencyKey, &[u8])],
) -> Result<HashSet<KeyOf>, CommandError> {
    // One order for every batch (sorted, each key once, the first request's
    // fingerprint kept): two batches claiming the same keys in arrival
    // order could each hold one the other waits for, a deadlock.
    let mut seen = HashSet::new();
    let mut claims: Vec<&(Uuid, &IdempotencyKey, &[u8])> =
        claims.iter().filter(|c| seen.insert((c.0, c.1.as_str()))).collect();
    claims.sort_by(|a, b| (a.0, a.1.as_str()).cmp(&(b.0, b.1.as_str())));
    let callers: Vec<Uuid> = claims.iter().map(|c| c.0).collect();
    let keys: Vec<String> = claims.iter().map(|c| c.1.as_str().to_owned()).collect();
    let hashes: Vec<Vec<u8>> = claims.iter().map(|c| c.2.to_vec()).collect();
    let rows = sqlx::query!(
        "INSERT INTO idempotency (caller_id, key, request_hash)
         SELECT c, k, h FROM UNNEST($1::uuid[], $2::text[], $3::bytea[]) WITH ORDINALITY AS u(c, k, h, n) ORDER BY n
         ON CONFLICT DO NOTHING RETURNING caller_id, key",
        &callers,
        &keys,
        &hashes
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.caller_id, r.key)).collect())
}

/// The recorded request fingerprint and outcome of keys claimed before.
#[tracing::instrument(skip_all, fields(keys = keys.len()), err(level = "info"))]
pub async fn prior_outcomes(
    conn: &mut PgConnection,
    keys: &[KeyOf],
) -> Result<HashMap<KeyOf, (Vec<u8>, PriorOutcome)>, CommandError> {
    let callers: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let names: Vec<String> = keys.iter().map(|k| k.1.clone()).collect();
    let rows = sqlx::query!(
        "SELECT i.caller_id, i.key, i.request_hash, i.response, i.refusal_reason, i.refusal_message
         FROM idempotency i JOIN UNNEST($1::uuid[], $2::text[]) AS k(caller_id, key)
           ON i.caller_id = k.caller_id AND i.key = k.key",
        &callers,
        &names
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let outcome = match r.response {
                Some(bytes) => PriorOutcome::Response(bytes),
                None => PriorOutcome::Refusal {
                    reason: r.refusal_reason.unwrap_or_default(),
                    message: r.refusal_message.unwrap_or_default(),
                },
            };
            ((r.caller_id, r.key), (r.request_hash, outcome))
        })
        .collect())
}

/// Account rows as column arrays, for UNNEST.
#[derive(Default)]
struct AccountColumns {
    id: Vec<Uuid>,
    owner_id: Vec<Uuid>,
    kind: Vec<String>,
    currency: Vec<String>,
    balance: Vec<Decimal>,
    status: Vec<String>,
    version: Vec<i64>,
    last_hash: Vec<Vec<u8>>,
    opened_at: Vec<DateTime<Utc>>,
    held: Vec<Decimal>,
    max_debit: Vec<Option<Decimal>>,
    daily_debit: Vec<Option<Decimal>>,
}

impl AccountColumns {
    fn of(rows: &[AccountRow]) -> Self {
        let mut c = Self::default();
        for r in rows {
            c.id.push(r.account.id);
            c.owner_id.push(r.account.owner_id);
            c.kind.push(r.account.kind.as_str().to_owned());
            c.currency.push(r.account.currency.code().to_owned());
            c.balance.push(r.account.balance);
            c.status.push(r.account.status.as_str().to_owned());
            c.version.push(r.account.version);
            c.last_hash.push(r.last_hash.clone());
            c.opened_at.push(r.opened_at);
            c.held.push(r.account.held);
            c.max_debit.push(r.account.limits.max_debit);
            c.daily_debit.push(r.account.limits.daily_debit);
        }
        c
    }
}

/// Hold rows as column arrays, for UNNEST.
#[derive(Default)]
struct HoldColumns {
    id: Vec<Uuid>,
    account: Vec<Uuid>,
    to: Vec<Uuid>,
    currency: Vec<String>,
    amount: Vec<Decimal>,
    state: Vec<String>,
    captured: Vec<Decimal>,
    expires_at: Vec<DateTime<Utc>>,
    placed_by: Vec<Uuid>,
    placed_at: Vec<DateTime<Utc>>,
    ended_at: Vec<Option<DateTime<Utc>>>,
}

impl HoldColumns {
    fn of(rows: &[HoldRow]) -> Self {
        let mut c = Self::default();
        for r in rows {
            c.id.push(r.hold.id);
            c.account.push(r.hold.account);
            c.to.push(r.hold.to);
            c.currency.push(r.hold.money.currency.code().to_owned());
            c.amount.push(r.hold.money.amount);
            c.state.push(r.hold.state.as_str().to_owned());
            c.captured.push(r.captured);
            c.expires_at.push(r.hold.expires_at);
            c.placed_by.push(r.hold.placed_by);
            c.placed_at.push(r.placed_at);
            c.ended_at.push(r.ended_at);
        }
        c
    }
}

/// Event rows as column arrays, for UNNEST.
#[derive(Default)]
struct EventColumns {
    id: Vec<Uuid>,
    account: Vec<Uuid>,
    version: Vec<i64>,
    transaction: Vec<Uuid>,
    kind: Vec<String>,
    actor: Vec<Uuid>,
    occurred_at: Vec<DateTime<Utc>>,
    delta: Vec<Decimal>,
    balance_after: Vec<Decimal>,
    envelope: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
    currency: Vec<String>,
    subject: Vec<String>,
}

impl EventColumns {
    fn of(events: &[NewEvent], subject_prefix: &str) -> Self {
        let mut c = Self::default();
        for e in events {
            c.id.push(e.event_id);
            c.account.push(e.account_id);
            c.version.push(e.version);
            c.transaction.push(e.transaction_id);
            c.kind.push(e.kind.to_owned());
            c.actor.push(e.actor);
            c.occurred_at.push(e.occurred_at);
            c.delta.push(e.delta);
            c.balance_after.push(e.balance_after);
            c.envelope.push(e.envelope.clone());
            c.hash.push(e.hash.clone());
            c.currency.push(e.currency.code().to_owned());
            c.subject.push(bank_platform::nats::event_subject(subject_prefix, e.account_id));
        }
        c
    }
}

/// The outcomes of a batch's keys as column arrays, one set per kind.
#[derive(Default)]
struct OutcomeColumns {
    response_caller: Vec<Uuid>,
    response_key: Vec<String>,
    response: Vec<Vec<u8>>,
    refusal_caller: Vec<Uuid>,
    refusal_key: Vec<String>,
    refusal_reason: Vec<String>,
    refusal_message: Vec<String>,
    released_caller: Vec<Uuid>,
    released_key: Vec<String>,
}

impl OutcomeColumns {
    fn of(outcomes: &[KeyOutcome]) -> Self {
        let mut c = Self::default();
        for o in outcomes {
            match o {
                KeyOutcome::Response(r) => {
                    c.response_caller.push(r.caller);
                    c.response_key.push(r.key.clone());
                    c.response.push(r.response.clone());
                }
                KeyOutcome::Refusal(r) => {
                    c.refusal_caller.push(r.caller);
                    c.refusal_key.push(r.key.clone());
                    c.refusal_reason.push(r.reason.clone());
                    c.refusal_message.push(r.message.clone());
                }
                KeyOutcome::Released { caller, key } => {
                    c.released_caller.push(*caller);
                    c.released_key.push(key.clone());
                }
            }
        }
        c
    }
}

/// Applies a whole batch in one statement: accounts, holds, reversals,
/// events, postings, outbox, every command's stored outcome, released keys
/// and audit rows.
#[tracing::instrument(skip_all, fields(events = w.events.len(), commands = w.outcomes.len()), err(level = "info"))]
pub async fn apply_batch(conn: &mut PgConnection, subject_prefix: &str, w: &BatchWrites) -> Result<(), CommandError> {
    let n = AccountColumns::of(&w.new_accounts);
    let u = AccountColumns::of(&w.changed_accounts);
    let nh = HoldColumns::of(&w.new_holds);
    let ch = HoldColumns::of(&w.changed_holds);
    let ev = EventColumns::of(&w.events, subject_prefix);
    let out = OutcomeColumns::of(&w.outcomes);
    let rv = &w.reversals;
    let audits = &w.audits;
    // Parameters are numbered in the order they appear; nullable columns
    // (`as _`) skip the macro's type check, which has no Vec<Option<T>>.
    sqlx::query!(
        "WITH new_accounts AS (
            INSERT INTO accounts (id, owner_id, kind, currency, balance, status, version, last_hash, opened_at, held,
                                  max_debit, daily_debit_limit)
            SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::numeric[], $6::text[],
                                 $7::int8[], $8::bytea[], $9::timestamptz[], $10::numeric[], $11::numeric[],
                                 $12::numeric[])
        ), changed AS (
            UPDATE accounts a SET balance = u.balance, status = u.status, version = u.version,
                last_hash = u.last_hash, held = u.held, max_debit = u.max_debit,
                daily_debit_limit = u.daily_debit_limit
            FROM UNNEST($13::uuid[], $14::numeric[], $15::text[], $16::int8[], $17::bytea[], $18::numeric[],
                        $19::numeric[], $20::numeric[])
                AS u(id, balance, status, version, last_hash, held, max_debit, daily_debit_limit)
            WHERE a.id = u.id
        ), new_holds AS (
            INSERT INTO holds (id, account_id, to_account_id, currency, amount, state, captured, expires_at,
                               placed_by, placed_at, ended_at)
            SELECT * FROM UNNEST($21::uuid[], $22::uuid[], $23::uuid[], $24::text[], $25::numeric[], $26::text[],
                                 $27::numeric[], $28::timestamptz[], $29::uuid[], $30::timestamptz[],
                                 $31::timestamptz[])
        ), ended_holds AS (
            UPDATE holds h SET state = e.state, captured = e.captured, ended_at = e.ended_at
            FROM UNNEST($32::uuid[], $33::text[], $34::numeric[], $35::timestamptz[])
                AS e(id, state, captured, ended_at)
            WHERE h.id = e.id
        ), new_reversals AS (
            INSERT INTO reversals (original_transaction_id, reversal_transaction_id, reversed_by, reason, reversed_at)
            SELECT * FROM UNNEST($36::uuid[], $37::uuid[], $38::uuid[], $39::text[], $40::timestamptz[])
        ), new_events AS (
            INSERT INTO events (event_id, account_id, version, transaction_id, kind, actor, occurred_at, delta,
                                balance_after, envelope, hash)
            SELECT * FROM UNNEST($41::uuid[], $42::uuid[], $43::int8[], $44::uuid[], $45::text[], $46::uuid[],
                                 $47::timestamptz[], $48::numeric[], $49::numeric[], $50::bytea[], $51::bytea[])
        ), new_postings AS (
            -- Double entry: the money events' changes, checked to net to zero
            -- per transaction and currency when the transaction commits.
            INSERT INTO postings (event_id, transaction_id, account_id, currency, amount)
            SELECT p.id, p.tx, p.account_id, p.currency, p.delta
            FROM UNNEST($41::uuid[], $44::uuid[], $42::uuid[], $52::text[], $48::numeric[])
                AS p(id, tx, account_id, currency, delta)
            WHERE p.delta <> 0
        ), new_outbox AS (
            -- A reference to the event: the relay reads the envelope from events.
            INSERT INTO outbox (event_id, subject)
            SELECT e.id, e.subject
            FROM UNNEST($41::uuid[], $53::text[]) WITH ORDINALITY AS e(id, subject, n) ORDER BY e.n
        ), responses AS (
            UPDATE idempotency i SET response = r.response
            FROM UNNEST($54::uuid[], $55::text[], $56::bytea[]) AS r(caller_id, key, response)
            WHERE i.caller_id = r.caller_id AND i.key = r.key
        ), refusals AS (
            UPDATE idempotency i SET refusal_reason = r.reason, refusal_message = r.message
            FROM UNNEST($57::uuid[], $58::text[], $59::text[], $60::text[]) AS r(caller_id, key, reason, message)
            WHERE i.caller_id = r.caller_id AND i.key = r.key
        ), released AS (
            DELETE FROM idempotency i USING UNNEST($61::uuid[], $62::text[]) AS r(caller_id, key)
            WHERE i.caller_id = r.caller_id AND i.key = r.key
        )
        INSERT INTO audit_log (actor, command, account_id, reason, detail)
        SELECT * FROM UNNEST($63::uuid[], $64::text[], $65::uuid[], $66::text[], $67::text[])",
        &n.id,
        &n.owner_id,
        &n.kind,
        &n.currency,
        &n.balance,
        &n.status,
        &n.version,
        &n.last_hash,
        &n.opened_at,
        &n.held,
        &n.max_debit as _,
        &n.daily_debit as _,
        &u.id,
        &u.balance,
        &u.status,
        &u.version,
        &u.last_hash,
        &u.held,
        &u.max_debit as _,
        &u.daily_debit as _,
        &nh.id,
        &nh.account,
        &nh.to,
        &nh.currency,
        &nh.amount,
        &nh.state,
        &nh.captured,
        &nh.expires_at,
        &nh.placed_by,
        &nh.placed_at,
        &nh.ended_at as _,
        &ch.id,
        &ch.state,
        &ch.captured,
        &ch.ended_at as _,
        &rv.iter().map(|r| r.original).collect::<Vec<_>>(),
        &rv.iter().map(|r| r.reversal).collect::<Vec<_>>(),
        &rv.iter().map(|r| r.by).collect::<Vec<_>>(),
        &rv.iter().map(|r| r.reason.clone()).collect::<Vec<_>>(),
        &rv.iter().map(|r| r.at).collect::<Vec<_>>(),
        &ev.id,
        &ev.account,
        &ev.version,
        &ev.transaction,
        &ev.kind,
        &ev.actor,
        &ev.occurred_at,
        &ev.delta,
        &ev.balance_after,
        &ev.envelope,
        &ev.hash,
        &ev.currency,
        &ev.subject,
        &out.response_caller,
        &out.response_key,
        &out.response,
        &out.refusal_caller,
        &out.refusal_key,
        &out.refusal_reason,
        &out.refusal_message,
        &out.released_caller,
        &out.released_key,
        &audits.iter().map(|a| a.actor).collect::<Vec<_>>(),
        &audits.iter().map(|a| a.command.clone()).collect::<Vec<_>>(),
        &audits.iter().map(|a| a.account).collect::<Vec<_>>() as _,
        &audits.iter().map(|a| a.reason.clone()).collect::<Vec<_>>(),
        &audits.iter().map(|a| a.detail.clone()).collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}
