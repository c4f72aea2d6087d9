//! The AccountQueryService gRPC adapter.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bank_domain::{Currency, InputError, consistency::ConsistencyToken, format_amount};
use bank_platform::auth::{Caller, caller};
use bank_proto::v1::{self as pb, account_query_service_server::AccountQueryService};
use bank_readmodel::{
    AccountView, HistoryEntry, HoldView, kind,
    page_token::{PageCursor, PageTokenSigner},
};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{error::QueryError, limits::PerCaller, readmodel::ReadModel, statement};

pub struct QueryApi {
    pub model: Arc<ReadModel>,
    pub pages: PageTokenSigner,
    /// Reads waiting for a consistency token, per caller.
    pub parked: Arc<PerCaller>,
    /// Open WatchBalance streams, per caller.
    pub streams: Arc<PerCaller>,
    /// Each user's newest standing: a stream ends when its caller's does.
    pub standings: Arc<crate::standing::Standings>,
    /// Signs statements.
    pub statements: bank_platform::auth::TokenSigner,
    /// The public halves of keys that signed statements before the current
    /// one (a rotation): published beside it, so those still verify.
    pub previous_statement_keys: Vec<serde_json::Value>,
    /// The subjects of the service principals that may read any account's
    /// statement (`STATEMENT_READERS`).
    pub statement_readers: Vec<Uuid>,
}

/// Most reads one caller may have waiting for consistency tokens at once.
pub const MAX_PARKED_PER_CALLER: usize = 16;
/// How often an open WatchBalance stream checks the read model for a change
/// whose notification was lost.
const WATCH_RECHECK: Duration = Duration::from_secs(5);

/// Most WatchBalance streams one caller may hold open.
pub const MAX_STREAMS_PER_CALLER: usize = 8;

const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);
const MAX_DEADLINE: Duration = Duration::from_secs(30);
const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;

/// The call's deadline from `grpc-timeout` (e.g. "500m", "2S"), bounded.
fn deadline<T>(req: &Request<T>) -> Instant {
    let parsed = req.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(|v| {
        let (n, unit) = v.split_at(v.len().checked_sub(1)?);
        let n: u64 = n.parse().ok()?;
        Some(match unit {
            "H" => Duration::from_secs(n.saturating_mul(3600)),
            "M" => Duration::from_secs(n.saturating_mul(60)),
            "S" => Duration::from_secs(n),
            "m" => Duration::from_millis(n),
            "u" => Duration::from_micros(n),
            "n" => Duration::from_nanos(n),
            _ => return None,
        })
    });
    // Leave a little time to answer before the client gives up.
    let budget = parsed.map_or(DEFAULT_DEADLINE, |d| d.mul_f32(0.9)).min(MAX_DEADLINE);
    Instant::now() + budget
}

fn parse_id(field: &str, text: &str) -> Result<Uuid, InputError> {
    Uuid::try_parse(text).map_err(|_| InputError::new(field, "must be a UUID"))
}

fn money(currency: &str, amount: Decimal) -> Option<pb::Money> {
    let text = Currency::from_code(currency).map_or_else(|_| amount.to_string(), |c| format_amount(amount, c));
    Some(pb::Money { currency_code: currency.to_owned(), amount: text })
}

fn timestamp(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 })
}

fn time(field: &str, t: &Option<prost_types::Timestamp>) -> Result<Option<DateTime<Utc>>, InputError> {
    t.as_ref()
        .map(|t| {
            DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(u32::MAX))
                .ok_or_else(|| InputError::new(field, "is not a valid timestamp"))
        })
        .transpose()
}

fn status_proto(s: &str) -> i32 {
    (match s {
        "ACTIVE" => pb::AccountStatus::Active,
        "FROZEN" => pb::AccountStatus::Frozen,
        "CLOSED" => pb::AccountStatus::Closed,
        _ => pb::AccountStatus::Unspecified,
    }) as i32
}

fn kind_proto(k: &str) -> pb::TransactionKind {
    match k {
        kind::DEPOSIT => pb::TransactionKind::Deposit,
        kind::WITHDRAWAL => pb::TransactionKind::Withdrawal,
        kind::TRANSFER_OUT => pb::TransactionKind::TransferOut,
        kind::TRANSFER_IN => pb::TransactionKind::TransferIn,
        kind::DEBIT => pb::TransactionKind::Debit,
        kind::CREDIT => pb::TransactionKind::Credit,
        _ => pb::TransactionKind::Unspecified,
    }
}

fn kind_name(k: pb::TransactionKind) -> Option<&'static str> {
    match k {
        pb::TransactionKind::Deposit => Some(kind::DEPOSIT),
        pb::TransactionKind::Withdrawal => Some(kind::WITHDRAWAL),
        pb::TransactionKind::TransferOut => Some(kind::TRANSFER_OUT),
        pb::TransactionKind::TransferIn => Some(kind::TRANSFER_IN),
        pb::TransactionKind::Debit => Some(kind::DEBIT),
        pb::TransactionKind::Credit => Some(kind::CREDIT),
        pb::TransactionKind::Unspecified => None,
    }
}

pub fn account_proto(v: &AccountView) -> pb::Account {
    pb::Account {
        account_id: v.account_id.to_string(),
        owner_id: v.owner_id.to_string(),
        r#type: pb::AccountType::from_str_name(&format!("ACCOUNT_TYPE_{}", v.kind))
            .unwrap_or(pb::AccountType::Unspecified) as i32,
        currency_code: v.currency.clone(),
        balance: money(&v.currency, v.balance),
        status: status_proto(&v.status),
        version: v.version,
        opened_at: timestamp(v.opened_at),
    }
}

fn entry_proto(e: &HistoryEntry, currency: &str) -> pb::TransactionEntry {
    pb::TransactionEntry {
        transaction_id: e.transaction_id.to_string(),
        account_id: e.account_id.to_string(),
        kind: kind_proto(&e.kind) as i32,
        amount: money(currency, e.amount),
        balance_before: money(currency, e.balance_before),
        balance_after: money(currency, e.balance_after),
        counterparty_account_id: e.counterparty_account_id.map(|c| c.to_string()).unwrap_or_default(),
        description: e.description.clone(),
        occurred_at: timestamp(e.occurred_at),
        version: e.version,
        reverses_transaction_id: e.reverses_transaction_id.map(|t| t.to_string()).unwrap_or_default(),
        reversed_by_transaction_id: e.reversed_by_transaction_id.map(|t| t.to_string()).unwrap_or_default(),
    }
}

fn hold_proto(h: &HoldView) -> pb::Hold {
    pb::Hold {
        hold_id: h.hold_id.to_string(),
        from_account_id: h.account_id.to_string(),
        to_account_id: h.to_account_id.to_string(),
        amount: money(&h.currency, h.amount),
        state: pb::HoldState::from_str_name(&format!("HOLD_STATE_{}", h.state)).unwrap_or(pb::HoldState::Unspecified)
            as i32,
        expires_at: timestamp(h.expires_at),
        captured: money(&h.currency, h.captured),
    }
}

fn update_proto(v: &AccountView, transaction_id: Option<Uuid>, at: Option<DateTime<Utc>>) -> pb::BalanceUpdate {
    pb::BalanceUpdate {
        account_id: v.account_id.to_string(),
        balance: money(&v.currency, v.balance),
        status: status_proto(&v.status),
        version: v.version,
        transaction_id: transaction_id.map(|t| t.to_string()).unwrap_or_default(),
        occurred_at: at.and_then(timestamp),
        available_balance: money(&v.currency, v.balance - v.held),
    }
}

/// History lines (`HistoryEntry`) of `transaction_history` where `$tail`
/// holds, each with the transaction that reversed it, if any; compile-checked
/// (the macros take string literals only, so the shared part is spliced here).
macro_rules! history {
    ($tail:literal, $($arg:expr),+ $(,)?) => {
        sqlx::query_as!(
            HistoryEntry,
            r#"SELECT account_id, version, transaction_id, kind, amount, balance_before, balance_after,
                      counterparty_account_id, description, occurred_at, reverses_transaction_id,
                      (SELECT r.reversal_transaction_id FROM reversal_view r
                       WHERE r.generation = transaction_history.generation
                         AND r.original_transaction_id = transaction_history.transaction_id) AS "reversed_by_transaction_id?"
               FROM transaction_history WHERE "# + $tail,
            $($arg),+
        )
    };
}

/// Owners see their accounts; staff (tellers, admins) in good standing see
/// every account, the bank's own included.
fn may_see(caller: &Caller, v: &AccountView) -> bool {
    is_staff(caller) || v.owner_id == caller.user_id
}

fn is_staff(caller: &Caller) -> bool {
    caller.is_teller() && caller.is_active()
}

impl QueryApi {
    /// The caller, unless a standing newer than its token takes away what
    /// the token says (suspended, or a role revoked): every read follows the
    /// standing feed, not only streams.
    fn current_caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let caller = caller(req)?;
        match self.standings.revokes(&caller) {
            Some(why) => Err(QueryError::StandingRevoked(why).into()),
            None => Ok(caller),
        }
    }

    /// Parses and honours `min_consistency_token` before a read. A token
    /// naming an account the caller may not see is refused before any wait:
    /// waiting on it would tell them how far that account has moved. An
    /// account not in the read model yet is waited for (a new account's id
    /// cannot be guessed) and checked once it is there.
    #[tracing::instrument(level = "debug", skip_all, fields(caller = %caller.user_id), err(level = "debug"))]
    async fn settle(
        &self,
        caller: &Caller,
        token: &str,
        deadline: Instant,
    ) -> Result<Option<ConsistencyToken>, QueryError> {
        let token = ConsistencyToken::parse("min_consistency_token", token)?;
        let Some(t) = &token else { return Ok(None) };
        let unseen = self.check_token_visibility(caller, t, t.versions.keys().copied().collect()).await?;
        {
            let _slot = self.parked.acquire(caller.user_id).ok_or(QueryError::TooMany(
                "too many reads of yours are waiting for consistency tokens; retry when some have answered",
            ))?;
            self.model.wait_for(t, deadline).await?;
        }
        self.check_token_visibility(caller, t, unseen).await?;
        Ok(token)
    }

    /// Refuses `token` if any of `ids` is an account the caller may not see;
    /// returns those not in the read model yet.
    #[tracing::instrument(level = "debug", skip_all, fields(caller = %caller.user_id, accounts = ids.len()), err(level = "debug"))]
    async fn check_token_visibility(
        &self,
        caller: &Caller,
        token: &ConsistencyToken,
        ids: Vec<Uuid>,
    ) -> Result<Vec<Uuid>, QueryError> {
        if is_staff(caller) {
            return Ok(Vec::new());
        }
        let mut unseen = Vec::new();
        for id in ids.into_iter().filter(|id| token.versions.contains_key(id)) {
            match self.model.account(id, 0).await? {
                Some(v) if !may_see(caller, &v) => {
                    return Err(InputError::new("min_consistency_token", "names an account you cannot see").into());
                }
                Some(_) => {}
                None => unseen.push(id),
            }
        }
        Ok(unseen)
    }

    /// The account if the caller may see it; NOT_FOUND otherwise, whichever the reason.
    #[tracing::instrument(level = "debug", skip_all, fields(caller = %caller.user_id, account = %id), err(level = "debug"))]
    async fn visible_account(
        &self,
        caller: &Caller,
        field: &str,
        id: &str,
        token: Option<&ConsistencyToken>,
    ) -> Result<AccountView, QueryError> {
        let id = parse_id(field, id)?;
        let min = token.and_then(|t| t.versions.get(&id).copied()).unwrap_or(0);
        match self.model.account(id, min).await? {
            Some(v) if may_see(caller, &v) => Ok(v),
            _ => Err(QueryError::NotFound("account")),
        }
    }

    /// The account a statement is asked of: the caller's own (staff: any),
    /// or any at all for a statement reader (notification-service delivers
    /// every customer's monthly statement; this read only).
    async fn statement_account(
        &self,
        caller: &Caller,
        id: &str,
        token: Option<&ConsistencyToken>,
    ) -> Result<AccountView, QueryError> {
        if !(caller.is_service() && self.statement_readers.contains(&caller.user_id)) {
            return self.visible_account(caller, "account_id", id, token).await;
        }
        let id = parse_id("account_id", id)?;
        let min = token.and_then(|t| t.versions.get(&id).copied()).unwrap_or(0);
        self.model.account(id, min).await?.ok_or(QueryError::NotFound("account"))
    }

    /// `v` as it stood at `as_of` (when given): the balance after the last
    /// posting at or before that instant, and that posting's version (1, the
    /// opening, before any). The one rule GetBalance, GetAccount and
    /// statements share.
    #[tracing::instrument(level = "debug", skip_all, fields(account = %v.account_id, ?as_of), err(level = "debug"))]
    async fn at_instant(&self, mut v: AccountView, as_of: Option<DateTime<Utc>>) -> Result<AccountView, QueryError> {
        let Some(at) = as_of else { return Ok(v) };
        if at > Utc::now() {
            return Err(InputError::new("as_of", "is in the future; balances are known up to now").into());
        }
        if at < v.opened_at {
            return Err(InputError::new("as_of", "is before the account was opened").into());
        }
        let generation = self.model.generation().await?;
        let (balance, version) = balance_at(&self.model.db, generation, v.account_id, at).await?;
        (v.balance, v.version) = (balance, version);
        Ok(v)
    }
}

/// The balance at `at`: after the last posting at or before it (and that
/// posting's version).
#[tracing::instrument(level = "debug", skip_all, fields(generation = generation, account = %account, %at), err)]
async fn balance_at(
    db: impl sqlx::PgExecutor<'_>,
    generation: i32,
    account: Uuid,
    at: DateTime<Utc>,
) -> Result<(Decimal, i64), QueryError> {
    let last = sqlx::query!(
        "SELECT balance_after, version FROM transaction_history
         WHERE generation = $1 AND account_id = $2 AND occurred_at <= $3 ORDER BY version DESC LIMIT 1",
        generation,
        account,
        at,
    )
    .fetch_optional(db)
    .await?;
    Ok(last.map_or((Decimal::ZERO, 1), |l| (l.balance_after, l.version)))
}

/// The account's chain head at `at`: the version and hash of its last event
/// at or before it (version 0 and the genesis hash before any).
async fn chain_head(
    db: impl sqlx::PgExecutor<'_>,
    generation: i32,
    account: Uuid,
    at: DateTime<Utc>,
) -> Result<(i64, Vec<u8>), QueryError> {
    let head = sqlx::query!(
        "SELECT version, hash FROM account_chain
         WHERE generation = $1 AND account_id = $2 AND occurred_at <= $3 ORDER BY version DESC LIMIT 1",
        generation,
        account,
        at,
    )
    .fetch_optional(db)
    .await?;
    Ok(head.map_or_else(|| (0, bank_statement::GENESIS_HASH.to_vec()), |h| (h.version, h.hash)))
}

type QueryResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl AccountQueryService for QueryApi {
    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id), err(level = "debug"))]
    async fn get_account(&self, req: Request<pb::GetAccountRequest>) -> QueryResult<pb::Account> {
        let (caller, deadline) = (self.current_caller(&req)?, deadline(&req));
        let r = req.into_inner();
        let as_of = time("as_of", &r.as_of).map_err(QueryError::from)?;
        let token = self.settle(&caller, &r.min_consistency_token, deadline).await?;
        let v = self.visible_account(&caller, "account_id", &r.account_id, token.as_ref()).await?;
        let v = self.at_instant(v, as_of).await?;
        Ok(Response::new(account_proto(&v)))
    }

    #[tracing::instrument(skip_all, fields(owner = %req.get_ref().owner_id), err(level = "debug"))]
    async fn list_accounts(&self, req: Request<pb::ListAccountsRequest>) -> QueryResult<pb::ListAccountsResponse> {
        let (caller, deadline) = (self.current_caller(&req)?, deadline(&req));
        let r = req.into_inner();
        self.settle(&caller, &r.min_consistency_token, deadline).await?;
        let owner = if r.owner_id.is_empty() {
            caller.user_id
        } else {
            let owner = parse_id("owner_id", &r.owner_id).map_err(QueryError::from)?;
            if owner != caller.user_id && !is_staff(&caller) {
                return Err(QueryError::PermissionDenied("only staff may list another user's accounts").into());
            }
            owner
        };
        let generation = self.model.generation().await?;
        let views: Vec<AccountView> = sqlx::query_as!(
            AccountView,
            "SELECT account_id, owner_id, kind, currency, balance, status, version, opened_at, held
             FROM account_view WHERE generation = $1 AND owner_id = $2 ORDER BY opened_at, account_id",
            generation,
            owner,
        )
        .fetch_all(&self.model.db)
        .await
        .map_err(QueryError::from)?;
        Ok(Response::new(pb::ListAccountsResponse { accounts: views.iter().map(account_proto).collect() }))
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id), err(level = "debug"))]
    async fn get_balance(&self, req: Request<pb::GetBalanceRequest>) -> QueryResult<pb::GetBalanceResponse> {
        let (caller, deadline) = (self.current_caller(&req)?, deadline(&req));
        let r = req.into_inner();
        let as_of = time("as_of", &r.as_of).map_err(QueryError::from)?;
        let token = self.settle(&caller, &r.min_consistency_token, deadline).await?;
        let v = self.visible_account(&caller, "account_id", &r.account_id, token.as_ref()).await?;
        // Holds are of the present: an answer as of an instant has none.
        let (available, open_holds) = match as_of {
            Some(_) => (None, Vec::new()),
            // Nothing held: no open hold to list, and no Postgres round trip
            // (the cached view's `held` is the sum of its open holds).
            None if v.held.is_zero() => (money(&v.currency, v.balance), Vec::new()),
            None => {
                let generation = self.model.generation().await?;
                let holds: Vec<HoldView> = sqlx::query_as!(
                    HoldView,
                    "SELECT hold_id, account_id, to_account_id, currency, amount, state, captured, expires_at
                     FROM hold_view
                     WHERE generation = $1 AND account_id = $2 AND state = 'OPEN' ORDER BY expires_at, hold_id",
                    generation,
                    v.account_id,
                )
                .fetch_all(&self.model.db)
                .await
                .map_err(QueryError::from)?;
                (money(&v.currency, v.balance - v.held), holds.iter().map(hold_proto).collect())
            }
        };
        let v = self.at_instant(v, as_of).await?;
        Ok(Response::new(pb::GetBalanceResponse {
            account_id: v.account_id.to_string(),
            balance: money(&v.currency, v.balance),
            status: status_proto(&v.status),
            version: v.version,
            available_balance: available,
            open_holds,
        }))
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id), err(level = "debug"))]
    async fn list_transactions(
        &self,
        req: Request<pb::ListTransactionsRequest>,
    ) -> QueryResult<pb::ListTransactionsResponse> {
        let (caller, deadline) = (self.current_caller(&req)?, deadline(&req));
        let r = req.into_inner();
        let mut violations = Vec::new();
        let page_size = match r.page_size {
            0 => DEFAULT_PAGE,
            n if (1..=MAX_PAGE as i32).contains(&n) => i64::from(n),
            _ => {
                violations.push(InputError::new("page_size", "must be between 1 and 100"));
                DEFAULT_PAGE
            }
        };
        let from = time("from_time", &r.from_time).unwrap_or_else(|e| {
            violations.push(e);
            None
        });
        let to = time("to_time", &r.to_time).unwrap_or_else(|e| {
            violations.push(e);
            None
        });
        let mut kinds = Vec::new();
        for k in &r.kinds {
            match pb::TransactionKind::try_from(*k).ok().and_then(kind_name) {
                Some(name) => kinds.push(name.to_owned()),
                None => violations.push(InputError::new("kinds", "contains an unknown transaction kind")),
            }
        }
        kinds.sort();
        kinds.dedup();
        if !violations.is_empty() {
            return Err(QueryError::Invalid(violations).into());
        }
        let token = self.settle(&caller, &r.min_consistency_token, deadline).await?;
        let account = self.visible_account(&caller, "account_id", &r.account_id, token.as_ref()).await?;
        // The filters are part of the cursor: a token only continues the listing it came from.
        let filters = format!(
            "{:?}|{:?}|{}",
            from.map(|t| t.timestamp_micros()),
            to.map(|t| t.timestamp_micros()),
            kinds.join(",")
        );
        let before = if r.page_token.is_empty() {
            i64::MAX
        } else {
            match self.pages.verify(&r.page_token) {
                Some(c) if c.account_id == account.account_id && c.filters == filters => c.before_version,
                _ => {
                    return Err(QueryError::Invalid(vec![InputError::new(
                        "page_token",
                        "is not a page token of this listing (tampered, or from another account or filters)",
                    )])
                    .into());
                }
            }
        };
        let generation = self.model.generation().await?;
        let mut rows = history!(
            "generation = $1 AND account_id = $2 AND version < $3
             AND ($4::timestamptz IS NULL OR occurred_at >= $4) AND ($5::timestamptz IS NULL OR occurred_at < $5)
             AND (cardinality($6::text[]) = 0 OR kind = ANY($6))
             ORDER BY version DESC LIMIT $7",
            generation,
            account.account_id,
            before,
            from,
            to,
            &kinds,
            page_size + 1,
        )
        .fetch_all(&self.model.db)
        .await
        .map_err(QueryError::from)?;
        let next_page_token = if rows.len() as i64 > page_size {
            rows.truncate(page_size as usize);
            let last = rows.last().map_or(0, |e| e.version);
            self.pages.sign(&PageCursor { account_id: account.account_id, before_version: last, filters })
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListTransactionsResponse {
            transactions: rows.iter().map(|e| entry_proto(e, &account.currency)).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(transaction = %req.get_ref().transaction_id), err(level = "debug"))]
    async fn get_transaction(
        &self,
        req: Request<pb::GetTransactionRequest>,
    ) -> QueryResult<pb::GetTransactionResponse> {
        let (caller, deadline) = (self.current_caller(&req)?, deadline(&req));
        let r = req.into_inner();
        let id = parse_id("transaction_id", &r.transaction_id).map_err(QueryError::from)?;
        self.settle(&caller, &r.min_consistency_token, deadline).await?;
        let generation = self.model.generation().await?;
        let rows = history!("generation = $1 AND transaction_id = $2 ORDER BY account_id, version", generation, id)
            .fetch_all(&self.model.db)
            .await
            .map_err(QueryError::from)?;
        let mut entries = Vec::new();
        for e in &rows {
            if let Some(v) = self.model.account(e.account_id, 0).await?.filter(|v| may_see(&caller, v)) {
                entries.push(entry_proto(e, &v.currency));
            }
        }
        if entries.is_empty() {
            return Err(QueryError::NotFound("transaction").into());
        }
        Ok(Response::new(pb::GetTransactionResponse { transaction_id: id.to_string(), entries }))
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id), err(level = "debug"))]
    async fn get_statement(&self, req: Request<pb::GetStatementRequest>) -> QueryResult<pb::Statement> {
        let (caller, deadline) = (self.current_caller(&req)?, deadline(&req));
        let r = req.into_inner();
        let (from, to) = match (time("from_time", &r.from_time), time("to_time", &r.to_time)) {
            (Ok(Some(f)), Ok(Some(t))) if f < t && t - f <= chrono::Duration::days(366) => (f, t),
            (Ok(Some(_)), Ok(Some(_))) => {
                return Err(QueryError::from(InputError::new(
                    "to_time",
                    "must be after from_time, at most 366 days later",
                ))
                .into());
            }
            _ => {
                return Err(QueryError::from(InputError::new("from_time", "from_time and to_time are required")).into());
            }
        };
        let token = self.settle(&caller, &r.min_consistency_token, deadline).await?;
        let account = self.statement_account(&caller, &r.account_id, token.as_ref()).await?;
        let generation = self.model.generation().await?;
        // The as_of rule at both ends: opening = the balance at from_time,
        // the entries after it up to and including to_time.
        // One generation for the opening and the entries, even during a
        // rebuild; one snapshot for every figure and both chain heads, so a
        // batch the projector commits meanwhile is in all of them or none.
        let mut snapshot = self.model.db.begin().await.map_err(QueryError::from)?;
        sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *snapshot)
            .await
            .map_err(QueryError::from)?;
        let (opening, opening_version) = balance_at(&mut *snapshot, generation, account.account_id, from).await?;
        let opening_version = Some(opening_version).filter(|_| opening != Decimal::ZERO || opening_version > 1);
        let entries = history!(
            "generation = $1 AND account_id = $2 AND occurred_at > $3 AND occurred_at <= $4 ORDER BY version",
            generation,
            account.account_id,
            from,
            to,
        )
        .fetch_all(&mut *snapshot)
        .await
        .map_err(QueryError::from)?;
        let totals = statement::summarize(opening, &entries).map_err(|e| QueryError::Internal(anyhow::anyhow!(e)))?;
        let opening_head = chain_head(&mut *snapshot, generation, account.account_id, from).await?;
        let closing_head = chain_head(&mut *snapshot, generation, account.account_id, to).await?;
        snapshot.commit().await.map_err(QueryError::from)?;
        // A head behind the postings it should cover: the account's links
        // predate the chain table (until a rebuild), and no head is better
        // than a wrong one under the bank's signature.
        let covered = |head: &(i64, Vec<u8>), version: Option<i64>| version.is_none_or(|v| head.0 >= v);
        if !covered(&opening_head, opening_version) || !covered(&closing_head, entries.last().map(|e| e.version)) {
            return Err(QueryError::ChainNotProjected.into());
        }
        let c = &account.currency;
        let document = statement::document(
            &account,
            from,
            to,
            opening,
            &totals,
            &entries,
            bank_statement::ChainHead::new(opening_head.0, &opening_head.1),
            bank_statement::ChainHead::new(closing_head.0, &closing_head.1),
        )
        .map_err(|e| QueryError::Internal(anyhow::anyhow!(e)))?;
        let signed_statement =
            self.statements.sign_jws(&bank_statement::Claims::new(document)).map_err(QueryError::Internal)?;
        Ok(Response::new(pb::Statement {
            account_id: account.account_id.to_string(),
            from_time: timestamp(from),
            to_time: timestamp(to),
            opening_balance: money(c, opening),
            closing_balance: money(c, totals.closing),
            total_credits: money(c, totals.credits),
            total_debits: money(c, totals.debits),
            entries: entries.iter().map(|e| entry_proto(e, c)).collect(),
            opening_chain_head: Some(pb::ChainHead { version: opening_head.0, hash: opening_head.1 }),
            closing_chain_head: Some(pb::ChainHead { version: closing_head.0, hash: closing_head.1 }),
            signed_statement,
        }))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn get_statement_keys(
        &self,
        req: Request<pb::GetStatementKeysRequest>,
    ) -> QueryResult<pb::GetStatementKeysResponse> {
        self.current_caller(&req)?;
        let current = self.statements.jwk();
        let kid = |jwk: &serde_json::Value| jwk.get("kid").cloned();
        let previous = self.previous_statement_keys.iter().filter(|k| kid(k) != kid(&current));
        let keys = std::iter::once(&current)
            .chain(previous)
            .map(|jwk| {
                let text = |k: &str| jwk.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                pb::StatementKey {
                    kty: text("kty"),
                    crv: text("crv"),
                    alg: text("alg"),
                    r#use: text("use"),
                    kid: text("kid"),
                    x: text("x"),
                }
            })
            .collect();
        Ok(Response::new(pb::GetStatementKeysResponse { keys }))
    }

    type WatchBalanceStream = ReceiverStream<Result<pb::BalanceUpdate, Status>>;

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id), err(level = "debug"))]
    async fn watch_balance(&self, req: Request<pb::WatchBalanceRequest>) -> QueryResult<Self::WatchBalanceStream> {
        let (caller, deadline) = (caller(&req)?, deadline(&req));
        let r = req.into_inner();
        // Subscribe before checking, so no suspension slips in between (a
        // change after this wakes the loop below).
        let mut standing_changes = self.standings.subscribe();
        if let Some(why) = self.standings.revokes(&caller) {
            return Err(QueryError::StandingRevoked(why).into());
        }
        let token = self.settle(&caller, &r.min_consistency_token, deadline).await?;
        // Subscribe before reading the current state, so no change slips between.
        let mut changes = self.model.changes.subscribe();
        let standings = self.standings.clone();
        let current = self.visible_account(&caller, "account_id", &r.account_id, token.as_ref()).await?;
        let slot = self
            .streams
            .acquire(caller.user_id)
            .ok_or(QueryError::TooMany("too many WatchBalance streams of yours are open; close one first"))?;
        let (tx, rx) = mpsc::channel(64);
        let model = self.model.clone();
        let mut resyncs = model.resyncs.subscribe();
        tokio::spawn(async move {
            let (_active, _slot) = (WatchGuard::new(), slot);
            let id = current.account_id;
            let mut last = current.version;
            if tx.send(Ok(update_proto(&current, None, None))).await.is_err() {
                return;
            }
            // The stream lives no longer than the token that opened it.
            let token_ends = caller_expiry(&caller);
            // A notification can be lost (the projector's cache write failed,
            // the feed was reconnecting): the read model is checked again
            // whenever the feed resubscribes, and every WATCH_RECHECK.
            let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + WATCH_RECHECK, WATCH_RECHECK);
            recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let change = tokio::select! {
                    _ = tx.closed() => return, // the client went away
                    () = tokio::time::sleep_until(token_ends) => {
                        let _ = tx.send(Err(Status::unauthenticated("the access token expired; open a new stream with a fresh one"))).await;
                        return;
                    }
                    Ok(()) = standing_changes.changed() => {
                        if let Some(why) = standings.revokes(&caller) {
                            let _ = tx.send(Err(QueryError::StandingRevoked(why).into())).await;
                            return;
                        }
                        continue;
                    }
                    Ok(()) = resyncs.changed() => Err(broadcast::error::RecvError::Lagged(0)),
                    _ = recheck.tick() => Err(broadcast::error::RecvError::Lagged(0)),
                    c = changes.recv() => c,
                };
                let behind = match change {
                    Ok(c) if c.account.account_id != id || c.account.version <= last => continue,
                    Ok(c) if c.account.version == last + 1 => {
                        last = c.account.version;
                        if tx.send(Ok(update_proto(&c.account, c.transaction_id, Some(c.occurred_at)))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if behind {
                    // Missed notifications: replay the versions in between from history.
                    match catch_up(&model, id, last).await {
                        Ok(updates) => {
                            for u in updates {
                                last = u.version;
                                if tx.send(Ok(u)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(Status::from(e))).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// When the caller's token runs out, as a tokio instant (far away for a
/// caller without one).
fn caller_expiry(caller: &Caller) -> tokio::time::Instant {
    let now = Utc::now().timestamp();
    let left = caller.expires_at.map_or(i64::from(u32::MAX), |exp| exp - now).max(0) as u64;
    tokio::time::Instant::now() + Duration::from_secs(left)
}

static WATCHERS: std::sync::LazyLock<prometheus::IntGauge> = std::sync::LazyLock::new(|| {
    prometheus::register_int_gauge!("query_watch_streams", "open WatchBalance streams").expect("registers once")
});

/// Counts an open WatchBalance stream for as long as its task lives.
struct WatchGuard;

impl WatchGuard {
    fn new() -> Self {
        WATCHERS.inc();
        WatchGuard
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        WATCHERS.dec();
    }
}

/// Updates for every version after `last`, from the Postgres read model.
#[tracing::instrument(level = "debug", skip_all, fields(account = %id, last = last), err(level = "debug"))]
async fn catch_up(model: &ReadModel, id: Uuid, last: i64) -> Result<Vec<pb::BalanceUpdate>, QueryError> {
    let generation = model.generation().await?;
    // The cache if it is past `last`, else Postgres (the cache may be what
    // missed the change).
    let current = model.account(id, last + 1).await?.ok_or(QueryError::NotFound("account"))?;
    if current.version <= last {
        return Ok(Vec::new());
    }
    let entries: Vec<HistoryEntry> =
        history!("generation = $1 AND account_id = $2 AND version > $3 ORDER BY version", generation, id, last)
            .fetch_all(&model.db)
            .await?;
    let mut updates: Vec<pb::BalanceUpdate> = entries
        .iter()
        .filter(|e| e.version <= current.version)
        .map(|e| {
            let at_version = AccountView { balance: e.balance_after, version: e.version, ..current.clone() };
            // What was held at a past version is not in history: unknown, not guessed.
            pb::BalanceUpdate {
                available_balance: None,
                ..update_proto(&at_version, Some(e.transaction_id), Some(e.occurred_at))
            }
        })
        .collect();
    // Status-only versions have no history line: end on the current state.
    if updates.last().is_none_or(|u| u.version < current.version) && current.version > last {
        updates.push(update_proto(&current, None, None));
    }
    Ok(updates)
}
