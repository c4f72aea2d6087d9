//! The read side's shared vocabulary. The projector writes these models and
//! query-service reads them; neither touches the write model.
//!
//! - Postgres (`MIGRATOR`): `account_view`, `transaction_history`,
//!   `dead_letters`, all rows tagged with a generation (see `active_generation`).
//! - Redis (`CacheKeys`): one hash per account (balance, status, version…),
//!   written only through `UPSERT_SCRIPT`, which never moves a version backwards.
//! - Change notifications (`AccountChange`) on the Redis channel
//!   `CacheKeys::changes_channel`, for WatchBalance and read-your-writes waits.

pub mod page_token;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The generation readers use now.
pub async fn active_generation(db: impl sqlx::PgExecutor<'_>) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT active_generation FROM projection_meta WHERE id = 1").fetch_one(db).await
}

/// One account as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AccountView {
    pub account_id: Uuid,
    pub owner_id: Uuid,
    pub kind: String,
    pub currency: String,
    pub balance: Decimal,
    pub status: String,
    pub version: i64,
    pub opened_at: DateTime<Utc>,
    /// Reserved by open holds: available = balance - held.
    #[serde(default)]
    pub held: Decimal,
}

pub const ACCOUNT_VIEW_COLUMNS: &str =
    "account_id, owner_id, kind, currency, balance, status, version, opened_at, held";

/// One line of history.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HistoryEntry {
    pub account_id: Uuid,
    pub version: i64,
    pub transaction_id: Uuid,
    pub kind: String,
    pub amount: Decimal,
    pub balance_before: Decimal,
    pub balance_after: Decimal,
    pub counterparty_account_id: Option<Uuid>,
    pub description: String,
    pub occurred_at: DateTime<Utc>,
    /// This entry belongs to the reversal of that transaction.
    pub reverses_transaction_id: Option<Uuid>,
    /// This entry's transaction was reversed by that one (read through
    /// `reversal_view`, never stored on the entry).
    pub reversed_by_transaction_id: Option<Uuid>,
}

/// Columns of `transaction_history` (unaliased) as a `HistoryEntry`.
pub const HISTORY_COLUMNS: &str = "account_id, version, transaction_id, kind, amount, balance_before, balance_after, counterparty_account_id, description, occurred_at, reverses_transaction_id, \
    (SELECT r.reversal_transaction_id FROM reversal_view r WHERE r.generation = transaction_history.generation AND r.original_transaction_id = transaction_history.transaction_id) AS reversed_by_transaction_id";

/// One hold as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HoldView {
    pub hold_id: Uuid,
    pub account_id: Uuid,
    pub to_account_id: Uuid,
    pub currency: String,
    pub amount: Decimal,
    pub state: String,
    pub captured: Decimal,
    pub expires_at: DateTime<Utc>,
}

pub const HOLD_VIEW_COLUMNS: &str = "hold_id, account_id, to_account_id, currency, amount, state, captured, expires_at";

/// History kinds as stored (and as the proto's TransactionKind names them).
pub mod kind {
    pub const DEPOSIT: &str = "DEPOSIT";
    pub const WITHDRAWAL: &str = "WITHDRAWAL";
    pub const TRANSFER_OUT: &str = "TRANSFER_OUT";
    pub const TRANSFER_IN: &str = "TRANSFER_IN";
    /// A posted leg that took money out (the proto's TRANSACTION_KIND_DEBIT).
    pub const DEBIT: &str = "DEBIT";
    pub const CREDIT: &str = "CREDIT";
}

/// What the projector announces after applying an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountChange {
    pub account: AccountView,
    /// Empty for status-only events.
    pub transaction_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

/// Redis key layout under a prefix (tests use a unique prefix each).
#[derive(Debug, Clone)]
pub struct CacheKeys {
    prefix: String,
}

impl CacheKeys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn account(&self, generation: i32, id: Uuid) -> String {
        format!("{}g{generation}:acct:{id}", self.prefix)
    }

    pub fn changes_channel(&self) -> String {
        format!("{}changes", self.prefix)
    }
}

/// Writes an account hash unless the cache already holds that version or a
/// newer one, so late or duplicate writers never move it backwards.
/// Entries also expire, which bounds how long a missed update (Redis briefly
/// unreachable for the projector) can leave a stale balance behind.
/// KEYS[1] = account key; ARGV = version, ttl seconds, then field/value pairs.
pub const UPSERT_SCRIPT: &str = r"
local cur = redis.call('HGET', KEYS[1], 'version')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
";

/// Lifetime of a cached account without updates.
pub const CACHE_TTL_SECS: u64 = 300;

/// The account as Redis hash fields (version excluded; it is ARGV[1]).
pub fn cache_fields(a: &AccountView) -> Vec<(String, String)> {
    vec![
        ("owner_id".into(), a.owner_id.to_string()),
        ("kind".into(), a.kind.clone()),
        ("currency".into(), a.currency.clone()),
        ("balance".into(), a.balance.to_string()),
        ("status".into(), a.status.clone()),
        ("opened_at".into(), a.opened_at.to_rfc3339()),
        ("held".into(), a.held.to_string()),
    ]
}

/// Builds an account from its Redis hash; None if incomplete or malformed.
pub fn from_cache(id: Uuid, h: &HashMap<String, String>) -> Option<AccountView> {
    Some(AccountView {
        account_id: id,
        owner_id: h.get("owner_id")?.parse().ok()?,
        kind: h.get("kind")?.clone(),
        currency: h.get("currency")?.clone(),
        balance: h.get("balance")?.parse().ok()?,
        status: h.get("status")?.clone(),
        version: h.get("version")?.parse().ok()?,
        opened_at: DateTime::parse_from_rfc3339(h.get("opened_at")?).ok()?.with_timezone(&Utc),
        // Entries written before holds existed lack it: refilled from Postgres.
        held: h.get("held")?.parse().ok()?,
    })
}

/// Writes `account` to the cache through the version guard.
pub async fn cache_upsert(
    redis: &mut impl redis::aio::ConnectionLike,
    keys: &CacheKeys,
    generation: i32,
    account: &AccountView,
) -> redis::RedisResult<()> {
    let script = redis::Script::new(UPSERT_SCRIPT);
    let mut call = script.key(keys.account(generation, account.account_id));
    call.arg(account.version).arg(CACHE_TTL_SECS);
    for (k, v) in cache_fields(account) {
        call.arg(k).arg(v);
    }
    let _: i64 = call.invoke_async(redis).await?;
    Ok(())
}

/// `cache_upsert` for many accounts in one round trip (a pipeline of EVALs;
/// Redis caches the script by its hash, so only the text travels again).
pub async fn cache_upsert_many(
    redis: &mut impl redis::aio::ConnectionLike,
    keys: &CacheKeys,
    generation: i32,
    accounts: &[&AccountView],
) -> redis::RedisResult<()> {
    if accounts.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for account in accounts {
        let cmd = pipe.cmd("EVAL").arg(UPSERT_SCRIPT).arg(1).arg(keys.account(generation, account.account_id));
        cmd.arg(account.version).arg(CACHE_TTL_SECS);
        for (k, v) in cache_fields(account) {
            cmd.arg(k).arg(v);
        }
        cmd.ignore();
    }
    pipe.query_async::<()>(redis).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_fields_round_trip() {
        let a = AccountView {
            account_id: Uuid::now_v7(),
            owner_id: Uuid::now_v7(),
            kind: "CHECKING".into(),
            currency: "USD".into(),
            balance: "12.50".parse().unwrap(),
            status: "ACTIVE".into(),
            version: 3,
            opened_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            held: "2.50".parse().unwrap(),
        };
        let mut h: HashMap<String, String> = cache_fields(&a).into_iter().collect();
        h.insert("version".into(), "3".into());
        assert_eq!(from_cache(a.account_id, &h), Some(a.clone()));
        h.remove("balance");
        assert_eq!(from_cache(a.account_id, &h), None);
    }
}
