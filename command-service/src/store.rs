//! The Postgres adapter of the write model: idempotency claims, row locks,
//! and one statement that applies a decided batch. No business rules here.

use std::collections::HashMap;

use bank_domain::{
    Account, AccountKind, AccountStatus, Currency, DebitLimits, Money,
    hold::{Hold, HoldState},
    ledger::{Posting, Transaction},
};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use bank_domain::ledger::Command;

use crate::{error::CommandError, events::NewEvent};

/// An account row as the write model holds it.
#[derive(Debug, Clone)]
pub struct AccountRow {
    pub account: Account,
    pub last_hash: Vec<u8>,
    pub opened_at: DateTime<Utc>,
}

/// The first outcome stored under an idempotency key.
pub enum PriorOutcome {
    Response(Vec<u8>),
    Refusal { reason: String, message: String },
}

fn account_from_row(row: &sqlx::postgres::PgRow) -> Result<AccountRow, CommandError> {
    let bad = |what: &str| CommandError::Internal(anyhow::anyhow!("corrupt account row: {what}"));
    let currency: String = row.try_get("currency")?;
    let status: String = row.try_get("status")?;
    let kind: String = row.try_get("kind")?;
    Ok(AccountRow {
        account: Account {
            id: row.try_get("id")?,
            owner_id: row.try_get("owner_id")?,
            kind: AccountKind::parse(&kind).ok_or_else(|| bad("kind"))?,
            currency: Currency::from_code(currency.trim()).map_err(|_| bad("currency"))?,
            balance: row.try_get("balance")?,
            status: AccountStatus::parse(&status).ok_or_else(|| bad("status"))?,
            version: row.try_get("version")?,
            held: row.try_get("held")?,
            limits: DebitLimits {
                max_debit: row.try_get("max_debit")?,
                daily_debit: row.try_get("daily_debit_limit")?,
            },
            debited_last_day: Decimal::ZERO,
        },
        last_hash: row.try_get("last_hash")?,
        opened_at: row.try_get("opened_at")?,
    })
}

const ACCOUNT_COLUMNS: &str =
    "id, owner_id, kind, currency, balance, status, version, last_hash, opened_at, held, max_debit, daily_debit_limit";

/// Locks the rows in ascending id order (Sort runs below LockRows), so two
/// opposite transfers cannot deadlock. Missing ids are simply absent.
pub async fn lock_accounts(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<AccountRow>, CommandError> {
    let rows =
        sqlx::query(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE"))
            .bind(ids)
            .fetch_all(conn)
            .await?;
    rows.iter().map(account_from_row).collect()
}

/// Fills in what each locked account with a daily limit was debited since
/// `since`. A statement of its own, after the locks: its snapshot then
/// includes every debit committed before this transaction got the rows.
/// With `all`, every customer account's (a batch that sets limits may give
/// one a daily limit before a later command of the batch debits it).
pub async fn load_debits_since(
    conn: &mut PgConnection,
    rows: &mut [AccountRow],
    since: DateTime<Utc>,
    all: bool,
) -> Result<(), CommandError> {
    let limited: Vec<Uuid> = rows
        .iter()
        .filter(|r| r.account.limits.daily_debit.is_some() || (all && !r.account.kind.is_system()))
        .map(|r| r.account.id)
        .collect();
    if limited.is_empty() {
        return Ok(());
    }
    let sums: HashMap<Uuid, Decimal> = sqlx::query_as(
        "SELECT account_id, -sum(delta) FROM events
         WHERE account_id = ANY($1) AND delta < 0 AND occurred_at > $2 GROUP BY account_id",
    )
    .bind(&limited)
    .bind(since)
    .fetch_all(conn)
    .await?
    .into_iter()
    .collect();
    for r in rows {
        r.account.debited_last_day = sums.get(&r.account.id).copied().unwrap_or_default();
    }
    Ok(())
}

/// The accounts a command locks: its own, or those of the hold or the
/// transaction it names (fixed once written, so read without a lock).
pub async fn accounts_to_lock(pool: &sqlx::PgPool, command: &Command) -> Result<Vec<Uuid>, CommandError> {
    if let Some(hold) = command.hold() {
        let row: Option<(Uuid, Uuid)> = sqlx::query_as("SELECT account_id, to_account_id FROM holds WHERE id = $1")
            .bind(hold)
            .fetch_optional(pool)
            .await?;
        return Ok(row.map(|(a, b)| vec![a, b]).unwrap_or_default());
    }
    if let Command::Reverse { transaction, .. } = command {
        return Ok(sqlx::query_scalar("SELECT account_id FROM postings WHERE transaction_id = $1")
            .bind(transaction)
            .fetch_all(pool)
            .await?);
    }
    Ok(command.accounts())
}

/// A hold as the write model keeps it.
#[derive(Debug, Clone)]
pub struct HoldRow {
    pub hold: Hold,
    pub captured: Decimal,
    pub placed_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// The holds named (read after the locks of their accounts, under which
/// alone a hold changes).
pub async fn load_holds(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<HoldRow>, CommandError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT id, account_id, to_account_id, currency, amount, state, captured, expires_at, placed_by, placed_at, ended_at
         FROM holds WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    let bad = |what: &str| CommandError::Internal(anyhow::anyhow!("corrupt hold row: {what}"));
    rows.iter()
        .map(|row| {
            let currency: String = row.try_get("currency")?;
            let state: String = row.try_get("state")?;
            Ok(HoldRow {
                hold: Hold {
                    id: row.try_get("id")?,
                    account: row.try_get("account_id")?,
                    to: row.try_get("to_account_id")?,
                    money: Money::new(
                        Currency::from_code(currency.trim()).map_err(|_| bad("currency"))?,
                        row.try_get("amount")?,
                    ),
                    state: HoldState::parse(&state).ok_or_else(|| bad("state"))?,
                    expires_at: row.try_get("expires_at")?,
                    placed_by: row.try_get("placed_by")?,
                },
                captured: row.try_get("captured")?,
                placed_at: row.try_get("placed_at")?,
                ended_at: row.try_get("ended_at")?,
            })
        })
        .collect()
}

/// The transactions named, with their postings and reversal links (read
/// after the locks of their accounts, under which alone a reversal is written).
pub async fn load_transactions(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Transaction>, CommandError> {
    let mut out: HashMap<Uuid, Transaction> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let postings: Vec<(Uuid, Uuid, String, Decimal)> = sqlx::query_as(
        "SELECT transaction_id, account_id, currency, amount FROM postings
         WHERE transaction_id = ANY($1) ORDER BY event_id",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    for (tx, account, currency, amount) in postings {
        let currency = Currency::from_code(currency.trim())
            .map_err(|_| CommandError::Internal(anyhow::anyhow!("corrupt posting currency")))?;
        out.entry(tx)
            .or_insert_with(|| Transaction { postings: Vec::new(), reverses: None, reversed_by: None })
            .postings
            .push(Posting { account, currency, amount });
    }
    let links: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT original_transaction_id, reversal_transaction_id FROM reversals
         WHERE original_transaction_id = ANY($1) OR reversal_transaction_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    for (original, reversal) in links {
        if let Some(t) = out.get_mut(&original) {
            t.reversed_by = Some(reversal);
        }
        if let Some(t) = out.get_mut(&reversal) {
            t.reverses = Some(original);
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

/// Account rows as column arrays, for UNNEST.
#[derive(Default)]
struct AccountColumns {
    id: Vec<Uuid>,
    owner_id: Vec<Uuid>,
    kind: Vec<&'static str>,
    currency: Vec<&'static str>,
    balance: Vec<Decimal>,
    status: Vec<&'static str>,
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
            c.kind.push(r.account.kind.as_str());
            c.currency.push(r.account.currency.code());
            c.balance.push(r.account.balance);
            c.status.push(r.account.status.as_str());
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
    currency: Vec<&'static str>,
    amount: Vec<Decimal>,
    state: Vec<&'static str>,
    captured: Vec<Decimal>,
    expires_at: Vec<DateTime<Utc>>,
    placed_by: Vec<Uuid>,
    placed_at: Vec<DateTime<Utc>>,
    ended_at: Vec<Option<DateTime<Utc>>>,
}

impl HoldColumns {
    fn of<'a>(rows: impl Iterator<Item = &'a HoldRow>) -> Self {
        let mut c = Self::default();
        for r in rows {
            c.id.push(r.hold.id);
            c.account.push(r.hold.account);
            c.to.push(r.hold.to);
            c.currency.push(r.hold.money.currency.code());
            c.amount.push(r.hold.money.amount);
            c.state.push(r.hold.state.as_str());
            c.captured.push(r.captured);
            c.expires_at.push(r.hold.expires_at);
            c.placed_by.push(r.hold.placed_by);
            c.placed_at.push(r.placed_at);
            c.ended_at.push(r.ended_at);
        }
        c
    }
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
    /// (caller, key, encoded response) of each command that succeeded.
    pub responses: Vec<(Uuid, String, Vec<u8>)>,
    /// (caller, key, reason, message) of each business refusal.
    pub refusals: Vec<(Uuid, String, String, String)>,
    /// Keys of commands without an outcome to keep (unknown or foreign account).
    pub released: Vec<(Uuid, String)>,
    /// (actor, command, account, reason, detail)
    pub audits: Vec<(Uuid, String, Option<Uuid>, String, String)>,
    /// Holds placed in this batch, in their final state.
    pub new_holds: Vec<HoldRow>,
    /// Existing holds the batch ended.
    pub changed_holds: Vec<HoldRow>,
    pub reversals: Vec<ReversalRow>,
}

/// Claims every key of a batch in one statement; returns the keys that were
/// free (now claimed by this transaction).
pub async fn claim_keys(
    conn: &mut PgConnection,
    claims: &[(Uuid, String, Vec<u8>)],
) -> Result<std::collections::HashSet<(Uuid, String)>, CommandError> {
    // One order for every batch (sorted, each key once, the first request's
    // fingerprint kept): two batches claiming the same keys in arrival
    // order could each hold one the other waits for, a deadlock.
    let mut seen = std::collections::HashSet::new();
    let mut claims: Vec<&(Uuid, String, Vec<u8>)> = claims.iter().filter(|c| seen.insert((c.0, &c.1))).collect();
    claims.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "INSERT INTO idempotency (caller_id, key, request_hash)
         SELECT c, k, h FROM UNNEST($1::uuid[], $2::text[], $3::bytea[]) WITH ORDINALITY AS u(c, k, h, n) ORDER BY n
         ON CONFLICT DO NOTHING RETURNING caller_id, key",
    )
    .bind(claims.iter().map(|c| c.0).collect::<Vec<_>>())
    .bind(claims.iter().map(|c| c.1.clone()).collect::<Vec<_>>())
    .bind(claims.iter().map(|c| c.2.clone()).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The recorded request fingerprint and outcome of keys claimed before.
pub async fn prior_outcomes(
    conn: &mut PgConnection,
    keys: &[(Uuid, String)],
) -> Result<std::collections::HashMap<(Uuid, String), (Vec<u8>, PriorOutcome)>, CommandError> {
    let rows = sqlx::query(
        "SELECT i.caller_id, i.key, i.request_hash, i.response, i.refusal_reason, i.refusal_message
         FROM idempotency i JOIN UNNEST($1::uuid[], $2::text[]) AS k(caller_id, key)
           ON i.caller_id = k.caller_id AND i.key = k.key",
    )
    .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1.clone()).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    let mut out = std::collections::HashMap::new();
    for row in rows {
        let outcome = match row.try_get::<Option<Vec<u8>>, _>("response")? {
            Some(bytes) => PriorOutcome::Response(bytes),
            None => PriorOutcome::Refusal {
                reason: row.try_get::<Option<String>, _>("refusal_reason")?.unwrap_or_default(),
                message: row.try_get::<Option<String>, _>("refusal_message")?.unwrap_or_default(),
            },
        };
        out.insert((row.try_get("caller_id")?, row.try_get("key")?), (row.try_get("request_hash")?, outcome));
    }
    Ok(out)
}

/// Applies a whole batch in one statement: accounts, events, outbox, every
/// command's stored outcome, released keys and audit rows.
pub async fn apply_batch(conn: &mut PgConnection, subject_prefix: &str, w: &BatchWrites) -> Result<(), CommandError> {
    let n = AccountColumns::of(&w.new_accounts);
    let u = AccountColumns::of(&w.changed_accounts);
    let ev = &w.events;
    let nh = HoldColumns::of(w.new_holds.iter());
    let ch = HoldColumns::of(w.changed_holds.iter());
    let rv = &w.reversals;
    sqlx::query(
        "WITH new_accounts AS (
            INSERT INTO accounts (id, owner_id, kind, currency, balance, status, version, last_hash, opened_at, held, max_debit, daily_debit_limit)
            SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::numeric[], $6::text[], $7::int8[], $8::bytea[], $9::timestamptz[], $42::numeric[], $43::numeric[], $44::numeric[])
        ), changed AS (
            UPDATE accounts a SET balance = u.balance, status = u.status, version = u.version, last_hash = u.last_hash,
                held = u.held, max_debit = u.max_debit, daily_debit_limit = u.daily_debit_limit
            FROM UNNEST($10::uuid[], $11::numeric[], $12::text[], $13::int8[], $14::bytea[], $45::numeric[], $46::numeric[], $47::numeric[])
                AS u(id, balance, status, version, last_hash, held, max_debit, daily_debit_limit)
            WHERE a.id = u.id
        ), new_holds AS (
            INSERT INTO holds (id, account_id, to_account_id, currency, amount, state, captured, expires_at, placed_by, placed_at, ended_at)
            SELECT * FROM UNNEST($48::uuid[], $49::uuid[], $50::uuid[], $51::text[], $52::numeric[], $53::text[], $54::numeric[], $55::timestamptz[], $56::uuid[], $57::timestamptz[], $58::timestamptz[])
        ), ended_holds AS (
            UPDATE holds h SET state = e.state, captured = e.captured, ended_at = e.ended_at
            FROM UNNEST($59::uuid[], $60::text[], $61::numeric[], $62::timestamptz[]) AS e(id, state, captured, ended_at)
            WHERE h.id = e.id
        ), new_reversals AS (
            INSERT INTO reversals (original_transaction_id, reversal_transaction_id, reversed_by, reason, reversed_at)
            SELECT * FROM UNNEST($63::uuid[], $64::uuid[], $65::uuid[], $66::text[], $67::timestamptz[])
        ), new_events AS (
            INSERT INTO events (event_id, account_id, version, transaction_id, kind, actor, occurred_at, delta, balance_after, envelope, hash)
            SELECT * FROM UNNEST($15::uuid[], $16::uuid[], $17::int8[], $18::uuid[], $19::text[], $20::uuid[], $21::timestamptz[], $22::numeric[], $23::numeric[], $24::bytea[], $25::bytea[])
        ), new_postings AS (
            -- Double entry: the money events' changes, checked to net to zero
            -- per transaction and currency when the transaction commits.
            INSERT INTO postings (event_id, transaction_id, account_id, currency, amount)
            SELECT p.id, p.tx, p.account_id, p.currency, p.delta
            FROM UNNEST($15::uuid[], $18::uuid[], $16::uuid[], $41::text[], $22::numeric[]) AS p(id, tx, account_id, currency, delta)
            WHERE p.delta <> 0
        ), new_outbox AS (
            -- A reference to the event: the relay reads the envelope from events.
            INSERT INTO outbox (event_id, subject)
            SELECT e.id, e.subject
            FROM UNNEST($15::uuid[], $26::text[]) WITH ORDINALITY AS e(id, subject, n) ORDER BY e.n
        ), responses AS (
            UPDATE idempotency i SET response = r.response
            FROM UNNEST($27::uuid[], $28::text[], $29::bytea[]) AS r(caller_id, key, response)
            WHERE i.caller_id = r.caller_id AND i.key = r.key
        ), refusals AS (
            UPDATE idempotency i SET refusal_reason = r.reason, refusal_message = r.message
            FROM UNNEST($30::uuid[], $31::text[], $32::text[], $33::text[]) AS r(caller_id, key, reason, message)
            WHERE i.caller_id = r.caller_id AND i.key = r.key
        ), released AS (
            DELETE FROM idempotency i USING UNNEST($34::uuid[], $35::text[]) AS r(caller_id, key)
            WHERE i.caller_id = r.caller_id AND i.key = r.key
        )
        INSERT INTO audit_log (actor, command, account_id, reason, detail)
        SELECT * FROM UNNEST($36::uuid[], $37::text[], $38::uuid[], $39::text[], $40::text[])",
    )
    .bind(&n.id)
    .bind(&n.owner_id)
    .bind(&n.kind)
    .bind(&n.currency)
    .bind(&n.balance)
    .bind(&n.status)
    .bind(&n.version)
    .bind(&n.last_hash)
    .bind(&n.opened_at)
    .bind(&u.id)
    .bind(&u.balance)
    .bind(&u.status)
    .bind(&u.version)
    .bind(&u.last_hash)
    .bind(ev.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .bind(ev.iter().map(|e| e.account_id).collect::<Vec<_>>())
    .bind(ev.iter().map(|e| e.version).collect::<Vec<_>>())
    .bind(ev.iter().map(|e| e.transaction_id).collect::<Vec<_>>())
    .bind(ev.iter().map(|e| e.kind.to_owned()).collect::<Vec<_>>())
    .bind(ev.iter().map(|e| e.actor).collect::<Vec<_>>())
    .bind(ev.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(ev.iter().map(|e| e.delta).collect::<Vec<_>>())
    .bind(ev.iter().map(|e| e.balance_after).collect::<Vec<_>>())
    .bind(ev.iter().map(|e| e.envelope.clone()).collect::<Vec<_>>())
    .bind(ev.iter().map(|e| e.hash.clone()).collect::<Vec<_>>())
    .bind(ev.iter().map(|e| bank_platform::nats::event_subject(subject_prefix, e.account_id)).collect::<Vec<_>>())
    .bind(w.responses.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(w.responses.iter().map(|r| r.1.clone()).collect::<Vec<_>>())
    .bind(w.responses.iter().map(|r| r.2.clone()).collect::<Vec<_>>())
    .bind(w.refusals.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(w.refusals.iter().map(|r| r.1.clone()).collect::<Vec<_>>())
    .bind(w.refusals.iter().map(|r| r.2.clone()).collect::<Vec<_>>())
    .bind(w.refusals.iter().map(|r| r.3.clone()).collect::<Vec<_>>())
    .bind(w.released.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(w.released.iter().map(|r| r.1.clone()).collect::<Vec<_>>())
    .bind(w.audits.iter().map(|a| a.0).collect::<Vec<_>>())
    .bind(w.audits.iter().map(|a| a.1.clone()).collect::<Vec<_>>())
    .bind(w.audits.iter().map(|a| a.2).collect::<Vec<_>>())
    .bind(w.audits.iter().map(|a| a.3.clone()).collect::<Vec<_>>())
    .bind(w.audits.iter().map(|a| a.4.clone()).collect::<Vec<_>>())
    .bind(ev.iter().map(|e| e.currency.code()).collect::<Vec<_>>())
    .bind(&n.held)
    .bind(&n.max_debit)
    .bind(&n.daily_debit)
    .bind(&u.held)
    .bind(&u.max_debit)
    .bind(&u.daily_debit)
    .bind(&nh.id)
    .bind(&nh.account)
    .bind(&nh.to)
    .bind(&nh.currency)
    .bind(&nh.amount)
    .bind(&nh.state)
    .bind(&nh.captured)
    .bind(&nh.expires_at)
    .bind(&nh.placed_by)
    .bind(&nh.placed_at)
    .bind(&nh.ended_at)
    .bind(&ch.id)
    .bind(&ch.state)
    .bind(&ch.captured)
    .bind(&ch.ended_at)
    .bind(rv.iter().map(|r| r.original).collect::<Vec<_>>())
    .bind(rv.iter().map(|r| r.reversal).collect::<Vec<_>>())
    .bind(rv.iter().map(|r| r.by).collect::<Vec<_>>())
    .bind(rv.iter().map(|r| r.reason.clone()).collect::<Vec<_>>())
    .bind(rv.iter().map(|r| r.at).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}
