//! `command-service reconcile`: an auditor's pass over everything. Folds the
//! event store per account and compares it with the write model and both read
//! models; checks conservation of money per currency (double entry: every
//! source sums to zero), balanced postings, gap-free versions, the hash chains,
//! that every committed event was published (outbox pending only), and that
//! the event store and audit log are still append-only. Read-only.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use bank_readmodel::{ACCOUNT_VIEW_COLUMNS, AccountView, CacheKeys};
use rust_decimal::Decimal;
use sqlx::{PgPool, Row};
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
            writeln!(f, "behind (not an error): {b}")?;
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
    pub redis: Option<(redis::aio::ConnectionManager, CacheKeys)>,
    /// Messages on the stream, when NATS was reachable.
    pub stream_messages: Option<u64>,
}

pub async fn run(mut src: Sources) -> Result<Report> {
    let mut report = Report::default();
    let db = &src.write_db;

    // Fold the event store, verifying each account's hash chain on the way.
    let rows = sqlx::query(
        "SELECT account_id, version, delta, balance_after, envelope, hash FROM events ORDER BY account_id, version",
    )
    .fetch_all(db)
    .await?;
    report.events = rows.len() as i64;
    let mut fold: BTreeMap<Uuid, State> = BTreeMap::new();
    let mut chain_head: HashMap<Uuid, Vec<u8>> = HashMap::new();
    for row in &rows {
        let id: Uuid = row.try_get("account_id")?;
        let version: i64 = row.try_get("version")?;
        let delta: Decimal = row.try_get("delta")?;
        let after: Decimal = row.try_get("balance_after")?;
        let envelope: Vec<u8> = row.try_get("envelope")?;
        let hash: Vec<u8> = row.try_get("hash")?;
        let state = fold.entry(id).or_insert(State { balance: Decimal::ZERO, version: 0 });
        if version != state.version + 1 {
            report.problems.push(format!("events: account {id} jumps from version {} to {version}", state.version));
        }
        state.balance += delta;
        state.version = version;
        if state.balance != after {
            report
                .problems
                .push(format!("events: account {id} v{version} says balance {after}, the fold says {}", state.balance));
        }
        let previous = chain_head.get(&id).cloned().unwrap_or_else(|| vec![0; 32]);
        if !verify_chain_link(&previous, &envelope) {
            report
                .problems
                .push(format!("hash chain: account {id} v{version} does not verify (edited or missing event)"));
        }
        chain_head.insert(id, hash);
    }
    report.accounts = fold.len();

    // The write model against the fold, chain heads included.
    let accounts = sqlx::query("SELECT id, currency, balance, version, last_hash FROM accounts").fetch_all(db).await?;
    let mut write: HashMap<Uuid, State> = HashMap::new();
    let mut currency_of: HashMap<Uuid, String> = HashMap::new();
    for row in &accounts {
        let id: Uuid = row.try_get("id")?;
        let balance: Decimal = row.try_get("balance")?;
        let currency: String = row.try_get("currency")?;
        let currency = currency.trim().to_owned();
        report.currencies.entry(currency.clone()).or_default().write_model += balance;
        currency_of.insert(id, currency);
        write.insert(id, State { balance, version: row.try_get("version")? });
        let head: Vec<u8> = row.try_get("last_hash")?;
        if chain_head.get(&id).is_some_and(|h| *h != head) {
            report.problems.push(format!("hash chain: account {id} head differs from its last event"));
        }
    }
    compare("write model", &fold, &write, false, &mut report);

    // Double entry: the fold per currency, and every transaction's postings.
    for (id, state) in &fold {
        match currency_of.get(id) {
            Some(c) => report.currencies.entry(c.clone()).or_default().event_fold += state.balance,
            None => report.problems.push(format!("events: account {id} is not in the write model")),
        }
    }
    let unbalanced: Vec<(Uuid, String, Decimal)> = sqlx::query_as(
        "SELECT transaction_id, currency::text, sum(amount) FROM postings GROUP BY transaction_id, currency HAVING sum(amount) <> 0 LIMIT 10",
    )
    .fetch_all(db)
    .await?;
    for (tx, currency, sum) in unbalanced {
        report
            .problems
            .push(format!("double entry: transaction {tx} has {} postings summing to {sum}", currency.trim()));
    }
    let unposted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e WHERE e.delta <> 0 AND NOT EXISTS (SELECT 1 FROM postings p WHERE p.event_id = e.event_id AND p.amount = e.delta)",
    )
    .fetch_one(db)
    .await?;
    if unposted > 0 {
        report.problems.push(format!("double entry: {unposted} money event(s) without their posting"));
    }
    // Publication: everything not pending in the outbox reached the stream.
    report.outbox_pending = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(db).await?;
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox o WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = o.event_id)",
    )
    .fetch_one(db)
    .await?;
    if orphans > 0 {
        report.problems.push(format!("outbox: {orphans} row(s) name no committed event"));
    }
    if let Some(on_stream) = src.stream_messages {
        let published = (report.events - report.outbox_pending) as u64;
        if on_stream < published {
            report.problems.push(format!("stream: {on_stream} messages but {published} events were marked published"));
        }
    }

    // Append-only guards still in place.
    let guards: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgname IN ('events_append_only','events_no_truncate','audit_append_only','audit_no_truncate','postings_append_only','postings_no_truncate','postings_balanced','holds_end_once','holds_no_delete','reversals_append_only','reversals_not_of_reversals') AND tgenabled <> 'D'",
    )
    .fetch_one(db)
    .await?;
    if guards != 11 {
        report.problems.push(
            "append-only: a trigger guarding events, postings, holds, reversals or audit_log is missing or disabled"
                .into(),
        );
    }

    // Read models: behind is fine (eventual consistency), different is not.
    if let Some(read_db) = &src.read_db {
        let generation = bank_readmodel::active_generation(read_db).await?;
        let views: Vec<AccountView> =
            sqlx::query_as(&format!("SELECT {ACCOUNT_VIEW_COLUMNS} FROM account_view WHERE generation = $1"))
                .bind(generation)
                .fetch_all(read_db)
                .await?;
        let read: HashMap<Uuid, State> =
            views.iter().map(|v| (v.account_id, State { balance: v.balance, version: v.version })).collect();
        compare("postgres read model", &fold, &read, true, &mut report);
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
            totals.read_model = caught_up_sum(&fold, &read, accounts_in(c));
        }
        if let Some((redis, keys)) = src.redis.as_mut() {
            let mut cached = HashMap::new();
            for id in fold.keys() {
                let h: HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(keys.account(generation, *id))
                    .query_async(redis)
                    .await
                    .unwrap_or_default();
                if let Some(v) = bank_readmodel::from_cache(*id, &h) {
                    cached.insert(*id, State { balance: v.balance, version: v.version });
                }
            }
            // A cache may lack accounts (evicted, expired): only what it holds must agree.
            let held: BTreeMap<Uuid, State> =
                fold.iter().filter(|(id, _)| cached.contains_key(id)).map(|(id, s)| (*id, s.clone())).collect();
            compare("redis read model", &held, &cached, true, &mut report);
            for (c, totals) in report.currencies.iter_mut() {
                totals.cache = caught_up_sum(&fold, &cached, accounts_in(c));
            }
        }
    }
    check_conservation(&mut report);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: i64, v: i64) -> State {
        State { balance: Decimal::from(b), version: v }
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
