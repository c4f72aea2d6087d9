//! `command-service reconcile`: an auditor's pass over everything. Folds the
//! event store per account (streaming, one snapshot) and compares it with the
//! write model and both read models; checks conservation of money per
//! currency (double entry: every source sums to zero), balanced postings,
//! gap-free versions, the hash chains, every event row's columns against its
//! hashed envelope, that every committed event was published (outbox pending
//! only), that the event store and audit log are still append-only, that no
//! message was dead-lettered and no read model stays behind beyond a bound.
//! Read-only.

use std::{
    collections::{BTreeMap, HashMap},
    str::FromStr,
    time::Duration,
};

use anyhow::Result;
use bank_platform::signing::GENESIS_HASH;
use bank_proto::v1 as pb;
use bank_readmodel::{AccountView, CacheKeys};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use prost::Message;
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::events::verify_chain_link;

/// Account state from one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub balance: Decimal,
    pub version: i64,
}

#[derive(Debug, Default)]
pub struct Report {
    pub accounts: usize,
    pub events: i64,
    pub problems: Vec<String>,
    /// Read-model accounts that are merely behind (projection in progress).
    pub behind: Vec<String>,
    pub outbox_pending: i64,
    /// Per currency: the sum over all accounts in each source.
    pub currencies: BTreeMap<String, Totals>,
}

/// One currency's sum over all accounts, per source (None: not checked).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub write_model: Decimal,
    pub event_fold: Decimal,
    pub read_model: Option<Decimal>,
    pub cache: Option<Decimal>,
}

/// A source's sum over one currency's accounts, when it holds every one of
/// them exactly as the fold does (a sum over a source still catching up, or
/// missing accounts, would be a false alarm). Pure.
pub fn caught_up_sum(fold: &BTreeMap<Uuid, State>, source: &HashMap<Uuid, State>, ids: &[Uuid]) -> Option<Decimal> {
    ids.iter()
        .all(|id| source.get(id) == fold.get(id)) // ids come from the fold: Some on both sides
        .then(|| ids.iter().filter_map(|id| source.get(id)).map(|s| s.balance).sum())
}

/// Adds every source's sum that is not zero to the problems. Pure.
pub fn check_conservation(report: &mut Report) {
    let mut problems = Vec::new();
    for (currency, t) in &report.currencies {
        let sources = [
            ("write model", Some(t.write_model)),
            ("event fold", Some(t.event_fold)),
            ("postgres read model", t.read_model),
            ("redis read model", t.cache),
        ];
        for (name, sum) in sources {
            if let Some(sum) = sum.filter(|s| !s.is_zero()) {
                problems.push(format!("conservation: {currency} sums to {sum} in the {name}, not zero"));
            }
        }
    }
    report.problems.extend(problems);
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "accounts checked: {}", self.accounts)?;
        writeln!(f, "events checked:   {}", self.events)?;
        writeln!(f, "outbox pending:   {}", self.outbox_pending)?;
        for (c, t) in self.currencies.iter() {
            let opt = |v: Option<Decimal>| v.map_or("-".to_owned(), |d| d.normalize().to_string());
            writeln!(
                f,
                "{c}: write model {}, event fold {}, read model {}, cache {}",
                t.write_model.normalize(),
                t.event_fold.normalize(),
                opt(t.read_model),
                opt(t.cache)
            )?;
        }
        for b in &self.behind {
            writeln!(f, "behind (within the bound): {b}")?;
        }
        if self.problems.is_empty() {
            writeln!(f, "RESULT: clean")
        } else {
            for p in &self.problems {
                writeln!(f, "PROBLEM: {p}")?;
            }
            writeln!(f, "RESULT: {} problem(s)", self.problems.len())
        }
    }
}

/// Compares the fold (truth) with another source of account states. Pure.
pub fn compare(
    name: &str,
    fold: &BTreeMap<Uuid, State>,
    other: &HashMap<Uuid, State>,
    lag_allowed: bool,
    report: &mut Report,
) {
    for (id, truth) in fold {
        match other.get(id) {
            None if lag_allowed => report.behind.push(format!("{name}: account {id} not projected yet")),
            None => report.problems.push(format!("{name}: account {id} missing")),
            Some(s) if s == truth => {}
            Some(s) if lag_allowed && s.version < truth.version => {
                report.behind.push(format!("{name}: account {id} at version {} of {}", s.version, truth.version))
            }
            Some(s) => report.problems.push(format!(
                "{name}: account {id} has balance {} version {}, the events say {} version {}",
                s.balance, s.version, truth.balance, truth.version
            )),
        }
    }
    for id in other.keys().filter(|id| !fold.contains_key(id)) {
        report.problems.push(format!("{name}: account {id} has no events"));
    }
}

pub struct Sources {
    pub write_db: PgPool,
    pub read_db: Option<PgPool>,
    pub redis: Option<(bank_platform::redis::Redis, CacheKeys)>,
    /// The event stream, when NATS was reachable (its events are counted
    /// after the write side's snapshot is taken, so there can only be more).
    pub stream: Option<async_nats::jetstream::stream::Stream>,
    /// How long the Postgres read model may stay behind an event before that
    /// is a problem (`RECONCILE_BEHIND_BOUND_SECS`).
    pub behind_bound: Duration,
}

/// What the read side holds, taken before the write side's snapshot.
struct ReadSide {
    generation: i32,
    views: HashMap<Uuid, State>,
    cached: HashMap<Uuid, State>,
    dead_letters: i64,
}

/// One row of the event store, as the fold reads it.
pub struct EventRow {
    pub event_id: Uuid,
    pub account_id: Uuid,
    pub version: i64,
    pub transaction_id: Uuid,
    pub kind: String,
    pub actor: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub delta: Decimal,
    pub balance_after: Decimal,
    pub envelope: Vec<u8>,
    pub hash: Vec<u8>,
}

/// Every column of an event row the fold or a reader relies on, checked
/// against the envelope the hash chain covers: a column edited by hand (with
/// the guard turned off) no longer matches it. Pure.
pub fn row_against_envelope(row: &EventRow) -> Vec<String> {
    let at = format!("events: account {} v{}", row.account_id, row.version);
    let Ok(env) = pb::EventEnvelope::decode(row.envelope.as_slice()) else {
        return vec![format!("{at}: the envelope does not decode")];
    };
    let mut wrong = Vec::new();
    let mut check = |ok: bool, column: &str| {
        if !ok {
            wrong.push(format!("{at}: column {column} differs from the hashed envelope"));
        }
    };
    check(env.event_id == row.event_id.to_string(), "event_id");
    check(env.account_id == row.account_id.to_string(), "account_id");
    check(env.version == row.version, "version");
    check(env.transaction_id == row.transaction_id.to_string(), "transaction_id");
    check(env.actor == row.actor.to_string(), "actor");
    check(env.occurred_at == crate::wire::timestamp(row.occurred_at), "occurred_at");
    check(env.payload.as_ref().map(crate::events::kind_of) == Some(row.kind.as_str()), "kind");
    check(env.hash == row.hash, "hash");
    match balance_change(&env) {
        Some((before, after)) => {
            check(row.delta == after - before, "delta");
            check(row.balance_after == after, "balance_after");
        }
        None => check(row.delta.is_zero(), "delta"),
    }
    wrong
}

/// The balance before and after a money event, as its envelope says.
fn balance_change(env: &pb::EventEnvelope) -> Option<(Decimal, Decimal)> {
    use pb::event_envelope::Payload;
    let (before, after) = match env.payload.as_ref()? {
        Payload::MoneyDeposited(e) => (&e.balance_before, &e.balance_after),
        Payload::MoneyWithdrawn(e) => (&e.balance_before, &e.balance_after),
        Payload::TransferDebited(e) => (&e.balance_before, &e.balance_after),
        Payload::TransferCredited(e) => (&e.balance_before, &e.balance_after),
        Payload::Posted(e) => (&e.balance_before, &e.balance_after),
        Payload::Reversed(e) => (&e.balance_before, &e.balance_after),
        _ => return None,
    };
    let amount = |m: &Option<pb::Money>| m.as_ref().and_then(|m| Decimal::from_str(&m.amount).ok());
    Some((amount(before)?, amount(after)?))
}

/// One row of the write model, as reconcile compares it.
struct AccountRow {
    id: Uuid,
    currency: String,
    balance: Decimal,
    version: i64,
    last_hash: Vec<u8>,
}

/// A transaction whose postings in one currency do not sum to zero.
struct Unbalanced {
    transaction_id: Uuid,
    currency: String,
    sum: Decimal,
}

/// The Postgres read model (one snapshot), the cache entries of its
/// accounts, and the dead letters.
#[tracing::instrument(skip_all, err)]
async fn read_side(read_db: &PgPool, redis: Option<&mut (bank_platform::redis::Redis, CacheKeys)>) -> Result<ReadSide> {
    let mut tx = read_db.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let generation: i32 =
        sqlx::query_scalar!("SELECT active_generation FROM projection_meta WHERE id = 1").fetch_one(&mut *tx).await?;
    let mut views = HashMap::new();
    let mut rows = sqlx::query_as!(
        AccountView,
        "SELECT account_id, owner_id, kind, currency, balance, status, version, opened_at, held
         FROM account_view WHERE generation = $1",
        generation,
    )
    .fetch(&mut *tx);
    while let Some(v) = rows.try_next().await? {
        views.insert(v.account_id, State { balance: v.balance, version: v.version });
    }
    drop(rows);
    let dead_letters =
        sqlx::query_scalar!(r#"SELECT count(*) AS "dead_letters!" FROM dead_letters"#).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    let mut cached = HashMap::new();
    if let Some((redis, keys)) = redis {
        for id in views.keys() {
            let h: HashMap<String, String> =
                redis::cmd("HGETALL").arg(keys.account(generation, *id)).query_async(redis).await.unwrap_or_default();
            if let Some(v) = bank_readmodel::from_cache(*id, &h) {
                cached.insert(*id, State { balance: v.balance, version: v.version });
            }
        }
    }
    Ok(ReadSide { generation, views, cached, dead_letters })
}

#[tracing::instrument(skip_all, fields(behind_bound_secs = src.behind_bound.as_secs()), err)]
pub async fn run(mut src: Sources) -> Result<Report> {
    let mut report = Report::default();
    // The read side first: whatever it holds was committed on the write side
    // before, so the write side's snapshot, taken after, includes it. A read
    // model can then only be behind the snapshot, never ahead of it.
    let read = match &src.read_db {
        Some(read_db) => Some(read_side(read_db, src.redis.as_mut()).await?),
        None => None,
    };

    // The write side in one snapshot: a commit meanwhile changes nothing seen.
    let mut tx = src.write_db.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
    let now: DateTime<Utc> = sqlx::query_scalar!(r#"SELECT now() AS "now!""#).fetch_one(&mut *tx).await?;
    let folded = fold_events(&mut tx, read.as_ref(), &mut report).await?;
    let currency_of = check_write_model(&mut tx, &folded, &mut report).await?;
    check_double_entry(&mut tx, &mut report).await?;
    check_outbox(&mut tx, &mut report).await?;
    check_guards(&mut tx, &mut report).await?;
    tx.commit().await?;
    // The stream after the snapshot (it can only hold more), read outside
    // the transaction: message by message, it takes a while.
    if let Some(stream) = src.stream.as_ref() {
        check_stream(stream, &mut report).await;
    }

    if let Some(read) = read {
        check_read_models(&read, &folded, &currency_of, now, src.behind_bound, src.redis.is_some(), &mut report);
    }
    check_conservation(&mut report);
    Ok(report)
}

/// The event store folded per account, with each account's chain head and,
/// per account the read model is behind, when its first unprojected event
/// happened.
struct Folded {
    fold: BTreeMap<Uuid, State>,
    chain_head: HashMap<Uuid, Vec<u8>>,
    behind_since: HashMap<Uuid, DateTime<Utc>>,
}

/// Folds the event store, streaming, verifying each row against its
/// envelope and each account's hash chain on the way.
#[tracing::instrument(skip_all, err)]
async fn fold_events(conn: &mut PgConnection, read: Option<&ReadSide>, report: &mut Report) -> Result<Folded> {
    let mut folded = Folded { fold: BTreeMap::new(), chain_head: HashMap::new(), behind_since: HashMap::new() };
    let mut rows = sqlx::query_as!(
        EventRow,
        "SELECT event_id, account_id, version, transaction_id, kind, actor, occurred_at, delta, balance_after, envelope, hash
         FROM events ORDER BY account_id, version",
    )
    .fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        report.events += 1;
        let id = row.account_id;
        report.problems.extend(row_against_envelope(&row));
        let state = folded.fold.entry(id).or_insert(State { balance: Decimal::ZERO, version: 0 });
        if row.version != state.version + 1 {
            report
                .problems
                .push(format!("events: account {id} jumps from version {} to {}", state.version, row.version));
        }
        state.balance += row.delta;
        state.version = row.version;
        if state.balance != row.balance_after {
            report.problems.push(format!(
                "events: account {id} v{} says balance {}, the fold says {}",
                row.version, row.balance_after, state.balance
            ));
        }
        let previous = folded.chain_head.get(&id).cloned().unwrap_or_else(|| GENESIS_HASH.to_vec());
        if !verify_chain_link(&previous, &row.envelope) {
            report
                .problems
                .push(format!("hash chain: account {id} v{} does not verify (edited or missing event)", row.version));
        }
        folded.chain_head.insert(id, row.hash);
        if let Some(read) = read {
            let projected = read.views.get(&id).map_or(0, |v| v.version);
            if row.version == projected + 1 {
                folded.behind_since.insert(id, row.occurred_at);
            }
        }
    }
    drop(rows);
    report.accounts = folded.fold.len();
    Ok(folded)
}

/// The write model against the fold, chain heads included, and the fold's
/// total per currency; returns each account's currency.
#[tracing::instrument(skip_all, err)]
async fn check_write_model(
    conn: &mut PgConnection,
    folded: &Folded,
    report: &mut Report,
) -> Result<HashMap<Uuid, String>> {
    let accounts = sqlx::query_as!(AccountRow, "SELECT id, currency, balance, version, last_hash FROM accounts")
        .fetch_all(&mut *conn)
        .await?;
    let mut write: HashMap<Uuid, State> = HashMap::new();
    let mut currency_of: HashMap<Uuid, String> = HashMap::new();
    for AccountRow { id, currency, balance, version, last_hash: head } in accounts {
        let currency = currency.trim().to_owned();
        report.currencies.entry(currency.clone()).or_default().write_model += balance;
        currency_of.insert(id, currency);
        write.insert(id, State { balance, version });
        if folded.chain_head.get(&id).is_some_and(|h| *h != head) {
            report.problems.push(format!("hash chain: account {id} head differs from its last event"));
        }
    }
    compare("write model", &folded.fold, &write, false, report);
    for (id, state) in &folded.fold {
        match currency_of.get(id) {
            Some(c) => report.currencies.entry(c.clone()).or_default().event_fold += state.balance,
            None => report.problems.push(format!("events: account {id} is not in the write model")),
        }
    }
    Ok(currency_of)
}

/// Double entry: every transaction's postings net to zero per currency, and
/// every money event has its posting.
#[tracing::instrument(skip_all, err)]
async fn check_double_entry(conn: &mut PgConnection, report: &mut Report) -> Result<()> {
    let unbalanced: Vec<Unbalanced> = sqlx::query_as!(
        Unbalanced,
        r#"SELECT transaction_id, currency::text AS "currency!", sum(amount) AS "sum!" FROM postings GROUP BY transaction_id, currency HAVING sum(amount) <> 0 LIMIT 10"#,
    )
    .fetch_all(&mut *conn)
    .await?;
    for Unbalanced { transaction_id: t, currency, sum } in unbalanced {
        report
            .problems
            .push(format!("double entry: transaction {t} has {} postings summing to {sum}", currency.trim()));
    }
    let unposted: i64 = sqlx::query_scalar!(
        r#"SELECT count(*) AS "unposted!" FROM events e WHERE e.delta <> 0 AND NOT EXISTS (SELECT 1 FROM postings p WHERE p.event_id = e.event_id AND p.amount = e.delta)"#,
    )
    .fetch_one(&mut *conn)
    .await?;
    if unposted > 0 {
        report.problems.push(format!("double entry: {unposted} money event(s) without their posting"));
    }
    Ok(())
}

/// The outbox: what is pending publication, and no row without its event.
#[tracing::instrument(skip_all, err)]
async fn check_outbox(conn: &mut PgConnection, report: &mut Report) -> Result<()> {
    report.outbox_pending =
        sqlx::query_scalar!(r#"SELECT count(*) AS "pending!" FROM outbox"#).fetch_one(&mut *conn).await?;
    let orphans: i64 = sqlx::query_scalar!(
        r#"SELECT count(*) AS "orphans!" FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = o.event_id)"#,
    )
    .fetch_one(&mut *conn)
    .await?;
    if orphans > 0 {
        report.problems.push(format!("outbox: {orphans} row(s) name no committed event"));
    }
    Ok(())
}

/// Every event the snapshot marks published is on the stream: counted in
/// events, not messages (a message carries a partition's share of a round).
async fn check_stream(stream: &async_nats::jetstream::stream::Stream, report: &mut Report) {
    let published = (report.events - report.outbox_pending) as u64;
    match bank_platform::nats::stored_events(stream).await {
        Ok(events) if (events.len() as u64) < published => {
            report.problems.push(format!("stream: {} events but {published} were marked published", events.len()))
        }
        Ok(_) => {}
        // As when NATS was unreachable: the stream is not checked.
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "the stream could not be read; not checked"),
    }
}

/// The append-only guards are still in place.
#[tracing::instrument(skip_all, err)]
async fn check_guards(conn: &mut PgConnection, report: &mut Report) -> Result<()> {
    let guards: i64 = sqlx::query_scalar!(
        r#"SELECT count(*) AS "guards!" FROM pg_trigger WHERE tgname IN ('events_append_only','events_no_truncate','audit_append_only','audit_no_truncate','postings_append_only','postings_no_truncate','postings_balanced','holds_end_once','holds_no_delete','reversals_append_only','reversals_not_of_reversals') AND tgenabled <> 'D'"#,
    )
    .fetch_one(&mut *conn)
    .await?;
    if guards != 11 {
        report.problems.push(
            "append-only: a trigger guarding events, postings, holds, reversals or audit_log is missing or disabled"
                .into(),
        );
    }
    Ok(())
}

/// Read models: behind for a moment is fine (eventual consistency);
/// different, behind for longer than the bound, or dead letters are not.
fn check_read_models(
    read: &ReadSide,
    folded: &Folded,
    currency_of: &HashMap<Uuid, String>,
    now: DateTime<Utc>,
    behind_bound: Duration,
    with_cache: bool,
    report: &mut Report,
) {
    let fold = &folded.fold;
    compare("postgres read model", fold, &read.views, true, report);
    for (id, since) in &folded.behind_since {
        let behind = (now - *since).to_std().unwrap_or_default();
        if behind > behind_bound {
            report.problems.push(format!(
                "postgres read model: account {id} has been behind for {} s, beyond the bound of {} s",
                behind.as_secs(),
                behind_bound.as_secs()
            ));
        }
    }
    if read.dead_letters > 0 {
        report.problems.push(format!(
            "dead letters: {} message(s) the projector refused (table dead_letters of the read database)",
            read.dead_letters
        ));
    }
    // The fold's accounts per currency, grouped once for both read models.
    let mut in_currency: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for id in fold.keys() {
        if let Some(c) = currency_of.get(id) {
            in_currency.entry(c.as_str()).or_default().push(*id);
        }
    }
    let no_accounts = Vec::new();
    let accounts_in = |c: &str| in_currency.get(c).unwrap_or(&no_accounts);
    for (c, totals) in report.currencies.iter_mut() {
        totals.read_model = caught_up_sum(fold, &read.views, accounts_in(c));
    }
    if with_cache {
        // A cache may lack accounts (evicted, expired): only what it holds must agree.
        let held: BTreeMap<Uuid, State> =
            fold.iter().filter(|(id, _)| read.cached.contains_key(id)).map(|(id, s)| (*id, s.clone())).collect();
        compare("redis read model", &held, &read.cached, true, report);
        for (c, totals) in report.currencies.iter_mut() {
            totals.cache = caught_up_sum(fold, &read.cached, accounts_in(c));
        }
    }
    tracing::debug!(generation = read.generation, "read models checked");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: i64, v: i64) -> State {
        State { balance: Decimal::from(b), version: v }
    }

    /// A deposit's row as the ledger writes it.
    fn deposit_row() -> EventRow {
        let usd = bank_domain::Currency::from_code("USD").unwrap();
        let draft = crate::events::EventDraft {
            account_id: Uuid::now_v7(),
            currency: usd,
            version: 2,
            transaction_id: Uuid::now_v7(),
            actor: Uuid::now_v7(),
            occurred_at: DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap(),
            delta: Decimal::new(1250, 2),
            balance_after: Decimal::new(1250, 2),
            payload: pb::event_envelope::Payload::MoneyDeposited(pb::MoneyDeposited {
                amount: crate::wire::money(usd, Decimal::new(1250, 2)),
                balance_before: crate::wire::money(usd, Decimal::ZERO),
                balance_after: crate::wire::money(usd, Decimal::new(1250, 2)),
                description: String::new(),
            }),
            counterparties: vec![],
        };
        let e = crate::events::seal(draft, &GENESIS_HASH, &Default::default());
        EventRow {
            event_id: e.event_id,
            account_id: e.account_id,
            version: e.version,
            transaction_id: e.transaction_id,
            kind: e.kind.to_owned(),
            actor: e.actor,
            occurred_at: e.occurred_at,
            delta: e.delta,
            balance_after: e.balance_after,
            envelope: e.envelope,
            hash: e.hash,
        }
    }

    #[test]
    fn every_column_of_an_event_row_must_match_its_hashed_envelope() {
        assert_eq!(row_against_envelope(&deposit_row()), Vec::<String>::new());
        type Edit = Box<dyn Fn(&mut EventRow)>;
        let edits: Vec<(&str, Edit)> = vec![
            ("event_id", Box::new(|r| r.event_id = Uuid::now_v7())),
            ("account_id", Box::new(|r| r.account_id = Uuid::now_v7())),
            ("version", Box::new(|r| r.version += 1)),
            ("transaction_id", Box::new(|r| r.transaction_id = Uuid::now_v7())),
            ("actor", Box::new(|r| r.actor = Uuid::now_v7())),
            ("occurred_at", Box::new(|r| r.occurred_at += chrono::Duration::microseconds(1))),
            ("kind", Box::new(|r| r.kind = "MoneyWithdrawn".into())),
            ("hash", Box::new(|r| r.hash[0] ^= 1)),
            ("delta", Box::new(|r| r.delta += Decimal::ONE)),
            ("balance_after", Box::new(|r| r.balance_after += Decimal::ONE)),
        ];
        for (column, edit) in edits {
            let mut row = deposit_row();
            edit(&mut row);
            let problems = row_against_envelope(&row);
            assert!(problems.iter().any(|p| p.contains(&format!("column {column} "))), "{column}: {problems:?}");
        }
        let mut row = deposit_row();
        row.envelope.push(0xff);
        assert!(!row_against_envelope(&row).is_empty(), "a garbled envelope");
    }

    #[test]
    fn behind_is_reported_apart_from_differences() {
        let id = Uuid::now_v7();
        let fold = BTreeMap::from([(id, s(10, 3))]);
        let mut r = Report::default();
        compare("rm", &fold, &HashMap::from([(id, s(5, 2))]), true, &mut r);
        assert!(r.is_clean() && r.behind.len() == 1);
        let mut r = Report::default();
        compare("wm", &fold, &HashMap::from([(id, s(11, 3))]), false, &mut r);
        assert!(!r.is_clean());
        let mut r = Report::default();
        compare("wm", &fold, &HashMap::from([(id, s(5, 2))]), false, &mut r);
        assert!(!r.is_clean(), "the write model may never lag");
    }

    #[test]
    fn a_currency_that_does_not_sum_to_zero_is_a_problem_per_source() {
        let mut r = Report::default();
        r.currencies.insert("USD".into(), Totals { read_model: Some(Decimal::ZERO), ..Totals::default() });
        r.currencies.insert(
            "EUR".into(),
            Totals {
                write_model: Decimal::ONE,
                event_fold: Decimal::ZERO,
                read_model: None,
                cache: Some(Decimal::TEN),
            },
        );
        check_conservation(&mut r);
        assert_eq!(
            r.problems,
            vec![
                "conservation: EUR sums to 1 in the write model, not zero",
                "conservation: EUR sums to 10 in the redis read model, not zero"
            ]
        );
    }

    #[test]
    fn a_source_is_summed_only_when_it_holds_every_account_as_the_fold_does() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let fold = BTreeMap::from([(a, s(10, 2)), (b, s(-10, 2))]);
        let ids = [a, b];
        assert_eq!(caught_up_sum(&fold, &HashMap::from([(a, s(10, 2)), (b, s(-10, 2))]), &ids), Some(Decimal::ZERO));
        assert_eq!(caught_up_sum(&fold, &HashMap::from([(a, s(10, 2))]), &ids), None, "missing an account");
        assert_eq!(caught_up_sum(&fold, &HashMap::from([(a, s(10, 2)), (b, s(0, 1))]), &ids), None, "behind");
    }

    #[test]
    fn accounts_without_events_are_problems() {
        let mut r = Report::default();
        compare("wm", &BTreeMap::new(), &HashMap::from([(Uuid::now_v7(), s(0, 1))]), false, &mut r);
        assert!(!r.is_clean());
    }
}
