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

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The generation readers use now.
#[tracing::instrument(level = "debug", skip_all, err)]
pub async fn active_generation(db: impl sqlx::PgExecutor<'_>) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar!("SELECT active_generation FROM projection_meta WHERE id = 1").fetch_one(db).await
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
    /// The projector's seal (`CacheKeys::seal_change`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

/// Redis key layout under a prefix (tests use a unique prefix each), and
/// the seal that makes what the projector writes there checkable.
///
/// Redis's ACLs cannot confine a user to one script: whoever holds the
/// projector's (or any writing) password can `HSET` any field of any entry,
/// `owner_id` included, or publish a made-up change. So the projector seals
/// each entry and each change with an HMAC under a key only it and
/// query-service hold (`READ_CACHE_KEY`), bound to the entry's Redis key, and
/// query-service serves nothing from Redis whose seal does not verify.
#[derive(Clone)]
pub struct CacheKeys {
    prefix: String,
    seal: Option<std::sync::Arc<[u8]>>,
}

impl std::fmt::Debug for CacheKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheKeys").field("prefix", &self.prefix).field("sealed", &self.seal.is_some()).finish()
    }
}

/// The sealed keys of a service's configuration: the seal is required, so a
/// stack that forgot it fails at start rather than trusting or distrusting
/// every entry silently.
pub fn sealed_keys(prefix: &str, key: Option<&str>) -> anyhow::Result<CacheKeys> {
    match key {
        Some(k) if k.len() >= 16 => Ok(CacheKeys::sealed(prefix, k.as_bytes())),
        Some(_) => anyhow::bail!("READ_CACHE_KEY is too short: at least 16 characters"),
        None => anyhow::bail!(
            "READ_CACHE_KEY is not set: the projector seals the cache with it and query-service checks the seals"
        ),
    }
}

/// What an entry read back from Redis turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// Complete, and sealed by the projector (or no seal asked for).
    Valid(AccountView),
    /// Missing or incomplete: read Postgres instead.
    Absent,
    /// Complete but its seal does not verify: written by someone else.
    Forged,
}

/// The hash fields a seal covers, in the order it covers them.
const SEALED_FIELDS: [&str; 8] = ["version", "owner_id", "kind", "currency", "balance", "status", "opened_at", "held"];

impl CacheKeys {
    /// Keys only: entries are written unsealed and read without a check
    /// (reconcile compares them with the write model instead).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), seal: None }
    }

    /// Keys whose entries and changes are sealed with `key` (the projector)
    /// or must carry its seal (query-service).
    pub fn sealed(prefix: impl Into<String>, key: &[u8]) -> Self {
        Self { prefix: prefix.into(), seal: Some(key.into()) }
    }

    /// The HMAC over `parts`, ready to finalize or verify; None without a seal.
    fn mac(&self, parts: &[&str]) -> Option<Hmac<Sha256>> {
        let key = self.seal.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        for part in parts {
            // Length-prefixed, so no two different lists give the same input.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        Some(mac)
    }

    fn seal_of(&self, parts: &[&str]) -> Option<String> {
        self.mac(parts).map(|mac| URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// Whether `seal` is the seal of `parts` (compared in constant time).
    fn seals(&self, parts: &[&str], seal: Option<&String>) -> bool {
        match (self.mac(parts), seal.and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())) {
            (None, _) => true,
            (Some(mac), Some(seal)) => mac.verify_slice(&seal).is_ok(),
            (Some(_), None) => false,
        }
    }

    fn entry_parts<'a>(key: &'a str, values: &[&'a str]) -> Vec<&'a str> {
        let mut parts = vec!["entry", key];
        parts.extend_from_slice(values);
        parts
    }

    /// The fields to write for `account` (version excluded; it is ARGV[1]),
    /// with its seal when the keys have one.
    pub fn entry_fields(&self, generation: i32, account: &AccountView) -> Vec<(String, String)> {
        let mut fields = cache_fields(account);
        let version = account.version.to_string();
        let mut values = vec![version.as_str()];
        values.extend(fields.iter().map(|(_, v)| v.as_str()));
        let key = self.account(generation, account.account_id);
        if let Some(seal) = self.seal_of(&Self::entry_parts(&key, &values)) {
            fields.push(("seal".into(), seal));
        }
        fields
    }

    /// Reads an entry back: valid only if complete and, when the keys have a
    /// seal, sealed for exactly this key and these values.
    pub fn open_entry(&self, generation: i32, id: Uuid, h: &HashMap<String, String>) -> Cached {
        let Some(view) = from_cache(id, h) else { return Cached::Absent };
        if self.seal.is_none() {
            return Cached::Valid(view);
        }
        let values: Vec<&str> = SEALED_FIELDS.iter().map(|f| h.get(*f).map_or("", String::as_str)).collect();
        let key = self.account(generation, id);
        if self.seals(&Self::entry_parts(&key, &values), h.get("seal")) { Cached::Valid(view) } else { Cached::Forged }
    }

    /// What a change's seal covers: the channel, the account, its version,
    /// the transaction, the instant and every cached field.
    fn change_parts(&self, change: &AccountChange) -> Vec<String> {
        let a = &change.account;
        let mut parts = vec![
            "change".to_owned(),
            self.changes_channel(),
            a.account_id.to_string(),
            a.version.to_string(),
            change.transaction_id.map(|t| t.to_string()).unwrap_or_default(),
            change.occurred_at.to_rfc3339(),
        ];
        parts.extend(cache_fields(a).into_iter().map(|(_, v)| v));
        parts
    }

    /// Seals a change before it is published.
    pub fn seal_change(&self, change: &mut AccountChange) {
        let parts = self.change_parts(change);
        change.seal = self.seal_of(&parts.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// Whether a received change was sealed by the projector (always, when
    /// the keys have no seal).
    pub fn change_is_sealed(&self, change: &AccountChange) -> bool {
        let parts = self.change_parts(change);
        self.seals(&parts.iter().map(String::as_str).collect::<Vec<_>>(), change.seal.as_ref())
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

/// Writes `accounts` to the cache through the version guard, in one round trip (a pipeline of EVALs;
/// Redis caches the script by its hash, so only the text travels again).
#[tracing::instrument(level = "debug", skip_all, fields(generation = generation, accounts = accounts.len()), err)]
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
        for (k, v) in keys.entry_fields(generation, account) {
            cmd.arg(k).arg(v);
        }
        cmd.ignore();
    }
    pipe.query_async::<()>(redis).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checking account's view holding 12.50, `held` of it on hold.
    fn view(held: &str) -> AccountView {
        AccountView {
            account_id: Uuid::now_v7(),
            owner_id: Uuid::now_v7(),
            kind: "CHECKING".into(),
            currency: "USD".into(),
            balance: "12.50".parse().unwrap(),
            status: "ACTIVE".into(),
            version: 3,
            opened_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            held: held.parse().unwrap(),
        }
    }

    #[test]
    fn a_sealed_entry_opens_and_any_change_to_it_or_its_key_does_not() {
        let keys = CacheKeys::sealed("p:", b"0123456789abcdef");
        let a = view("0");
        let mut h: HashMap<String, String> = keys.entry_fields(1, &a).into_iter().collect();
        h.insert("version".into(), "3".into());
        assert_eq!(keys.open_entry(1, a.account_id, &h), Cached::Valid(a.clone()));
        assert_eq!(keys.open_entry(2, a.account_id, &h), Cached::Forged, "another generation's key");
        assert_eq!(CacheKeys::sealed("p:", b"another key 0123").open_entry(1, a.account_id, &h), Cached::Forged);
        h.insert("owner_id".into(), Uuid::now_v7().to_string());
        assert_eq!(keys.open_entry(1, a.account_id, &h), Cached::Forged);
        let mut change = AccountChange { account: a, transaction_id: None, occurred_at: Utc::now(), seal: None };
        assert!(!keys.change_is_sealed(&change));
        keys.seal_change(&mut change);
        assert!(keys.change_is_sealed(&change));
        change.account.balance += Decimal::ONE;
        assert!(!keys.change_is_sealed(&change));
    }

    #[test]
    fn cache_fields_round_trip() {
        let a = view("2.50");
        let mut h: HashMap<String, String> = cache_fields(&a).into_iter().collect();
        h.insert("version".into(), "3".into());
        assert_eq!(from_cache(a.account_id, &h), Some(a.clone()));
        h.remove("balance");
        assert_eq!(from_cache(a.account_id, &h), None);
    }
}
