//! The gRPC adapter: caller from the verified token, fields parsed into
//! commands (every violation reported), the ledger called, errors mapped once.

use std::sync::Arc;

use bank_domain::{
    AccountKind, Currency, InputError, Money,
    ledger::{self as rules, Command, Posting},
    parse_amount,
};
use bank_platform::{
    auth::{Caller, caller},
    status,
};
use bank_proto::v1::{self as pb, account_command_service_server::AccountCommandService};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    Reconciler,
    error::leg_violation,
    ledger::{Ledger, Violations, check_description, check_idempotency_key, parse_id, parse_money},
};

pub struct CommandApi {
    ledger: Arc<Ledger>,
    reconciler: Arc<Reconciler>,
}

impl CommandApi {
    pub fn new(ledger: Arc<Ledger>, reconciler: Arc<Reconciler>) -> Self {
        Self { ledger, reconciler }
    }

    /// Runs a validated command under the request's idempotency key.
    async fn run<R: Message + Default>(
        &self,
        caller: &Caller,
        rpc: &'static str,
        request: &impl Message,
        key: &str,
        command: Command,
    ) -> Result<Response<R>, Status> {
        let hash = request_hash(rpc, request);
        Ok(Response::new(self.ledger.run(caller, rpc, key, &hash, command).await?))
    }
}

/// Fingerprint of a request for idempotency: the RPC and every field.
fn request_hash(rpc: &str, msg: &impl Message) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(rpc.as_bytes());
    h.update([0]);
    h.update(msg.encode_to_vec());
    h.finalize().to_vec()
}

/// Account, money, key and description of a Deposit or Withdraw.
fn money_fields(
    account_id: &str,
    money: Option<&pb::Money>,
    key: &str,
    description: &str,
    ledger: &Ledger,
) -> Result<(Uuid, Money), Status> {
    let mut v = Violations::default();
    let account_id = v.check(parse_id("account_id", account_id));
    let money = v.check_all(parse_money(money, ledger.limits().max_amount));
    v.check(check_idempotency_key(key));
    v.check(check_description(description));
    Ok(v.finish(|| Some((account_id?, money?)))?)
}

/// Source, destination (distinct) and money of a Transfer or PlaceHold.
fn movement(
    v: &mut Violations,
    from: &str,
    to: &str,
    money: Option<&pb::Money>,
    ledger: &Ledger,
) -> (Option<Uuid>, Option<Uuid>, Option<Money>) {
    let from = v.check(parse_id("from_account_id", from));
    let to = v.check(parse_id("to_account_id", to));
    if from.is_some() && from == to {
        v.add("to_account_id", "must differ from from_account_id");
    }
    (from, to, v.check_all(parse_money(money, ledger.limits().max_amount)))
}

/// The legs of a PostTransaction as postings: each leg's fields checked, then
/// the whole (count, distinct accounts, balanced per currency) by the domain.
fn postings(legs: &[pb::PostingLeg], max_amount: rust_decimal::Decimal, v: &mut Violations) -> Option<Vec<Posting>> {
    // Counted first: thousands of legs must not become thousands of violations.
    if !(2..=rules::MAX_LEGS).contains(&legs.len()) {
        v.add("legs", &format!("a transaction has 2 to {} legs", rules::MAX_LEGS));
        return None;
    }
    let mut out = Vec::with_capacity(legs.len());
    for (i, leg) in legs.iter().enumerate() {
        let account = v.check(parse_id(&format!("legs[{i}].account_id"), &leg.account_id));
        let money = match &leg.money {
            None => {
                v.add(&format!("legs[{i}].money"), "is required");
                None
            }
            Some(m) => {
                let currency = v.check(Currency::from_code(&m.currency_code).map_err(|_| {
                    InputError::new(
                        format!("legs[{i}].money.currency_code"),
                        "must be a supported ISO 4217 code such as USD",
                    )
                }));
                currency.and_then(|c| {
                    v.check(parse_amount(&format!("legs[{i}].money.amount"), &m.amount, c, max_amount)).map(|a| (c, a))
                })
            }
        };
        let sign = match pb::PostingSide::try_from(leg.side) {
            Ok(pb::PostingSide::Debit) => Some(-1),
            Ok(pb::PostingSide::Credit) => Some(1),
            _ => {
                v.add(&format!("legs[{i}].side"), "must be POSTING_SIDE_DEBIT or POSTING_SIDE_CREDIT");
                None
            }
        };
        if let (Some(account), Some((currency, amount)), Some(sign)) = (account, money, sign) {
            out.push(Posting { account, currency, amount: amount * rust_decimal::Decimal::from(sign) });
        }
    }
    if out.len() != legs.len() {
        return None;
    }
    v.check(rules::check_legs(&out).map_err(|e| leg_violation(&e))).map(|()| out)
}

#[tonic::async_trait]
impl AccountCommandService for CommandApi {
    async fn open_account(
        &self,
        req: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::OpenAccountResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let kind = match pb::AccountType::try_from(r.r#type) {
            Ok(pb::AccountType::Checking) => Some(AccountKind::Checking),
            Ok(pb::AccountType::Savings) => Some(AccountKind::Savings),
            _ => {
                v.add("type", "must be ACCOUNT_TYPE_CHECKING or ACCOUNT_TYPE_SAVINGS");
                None
            }
        };
        let currency = v.check(Currency::from_code(&r.currency_code));
        v.check(check_idempotency_key(&r.idempotency_key));
        let (kind, currency) = v.finish(|| Some((kind?, currency?)))?;
        let command = Command::OpenAccount { id: Uuid::now_v7(), kind, currency };
        self.run(&caller, "OpenAccount", &r, &r.idempotency_key, command).await
    }

    async fn deposit(&self, req: Request<pb::DepositRequest>) -> Result<Response<pb::MoneyMovementResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let (account, money) =
            money_fields(&r.account_id, r.money.as_ref(), &r.idempotency_key, &r.description, &self.ledger)?;
        let command = Command::Deposit { account, money, description: r.description.clone() };
        self.run(&caller, "Deposit", &r, &r.idempotency_key, command).await
    }

    async fn withdraw(&self, req: Request<pb::WithdrawRequest>) -> Result<Response<pb::MoneyMovementResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let (account, money) =
            money_fields(&r.account_id, r.money.as_ref(), &r.idempotency_key, &r.description, &self.ledger)?;
        let command = Command::Withdraw { account, money, description: r.description.clone() };
        self.run(&caller, "Withdraw", &r, &r.idempotency_key, command).await
    }

    async fn transfer(&self, req: Request<pb::TransferRequest>) -> Result<Response<pb::MoneyMovementResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let (from, to, money) = movement(&mut v, &r.from_account_id, &r.to_account_id, r.money.as_ref(), &self.ledger);
        v.check(check_idempotency_key(&r.idempotency_key));
        v.check(check_description(&r.description));
        let command = v.finish(|| {
            Some(Command::Transfer { from: from?, to: to?, money: money?, description: r.description.clone() })
        })?;
        self.run(&caller, "Transfer", &r, &r.idempotency_key, command).await
    }

    async fn post_transaction(
        &self,
        req: Request<pb::PostTransactionRequest>,
    ) -> Result<Response<pb::MoneyMovementResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let legs = postings(&r.legs, self.ledger.limits().max_amount, &mut v);
        v.check(check_idempotency_key(&r.idempotency_key));
        v.check(check_description(&r.description));
        let command = v.finish(|| Some(Command::Post { legs: legs?, description: r.description.clone() }))?;
        self.run(&caller, "PostTransaction", &r, &r.idempotency_key, command).await
    }

    async fn place_hold(&self, req: Request<pb::PlaceHoldRequest>) -> Result<Response<pb::HoldResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let (from, to, money) = movement(&mut v, &r.from_account_id, &r.to_account_id, r.money.as_ref(), &self.ledger);
        let expires_at = v.check(hold_deadline(r.expires_at.as_ref(), r.ttl_seconds, crate::ledger::now()));
        v.check(check_idempotency_key(&r.idempotency_key));
        v.check(check_description(&r.description));
        let command = v.finish(|| {
            Some(Command::PlaceHold {
                id: Uuid::now_v7(),
                from: from?,
                to: to?,
                money: money?,
                expires_at: expires_at?,
                description: r.description.clone(),
            })
        })?;
        self.run(&caller, "PlaceHold", &r, &r.idempotency_key, command).await
    }

    async fn capture_hold(
        &self,
        req: Request<pb::CaptureHoldRequest>,
    ) -> Result<Response<pb::MoneyMovementResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let hold = v.check(parse_id("hold_id", &r.hold_id));
        let amount = match &r.amount {
            None => Some(None),
            Some(m) => v
                .check_all(parse_money(Some(m), self.ledger.limits().max_amount).map_err(|errors| {
                    errors
                        .into_iter()
                        .map(|e| InputError::new(e.field.replacen("money", "amount", 1), e.description))
                        .collect()
                }))
                .map(Some),
        };
        v.check(check_idempotency_key(&r.idempotency_key));
        let command = v.finish(|| Some(Command::CaptureHold { hold: hold?, amount: amount? }))?;
        self.run(&caller, "CaptureHold", &r, &r.idempotency_key, command).await
    }

    async fn void_hold(&self, req: Request<pb::VoidHoldRequest>) -> Result<Response<pb::HoldResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let hold = v.check(parse_id("hold_id", &r.hold_id));
        v.check(check_idempotency_key(&r.idempotency_key));
        let command = v.finish(|| Some(Command::VoidHold { hold: hold? }))?;
        self.run(&caller, "VoidHold", &r, &r.idempotency_key, command).await
    }

    async fn reverse_transaction(
        &self,
        req: Request<pb::ReverseTransactionRequest>,
    ) -> Result<Response<pb::MoneyMovementResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let transaction = v.check(parse_id("transaction_id", &r.transaction_id));
        if r.reason.trim().is_empty() {
            v.add("reason", "is required: it is shown in both accounts' history");
        } else if r.reason.chars().count() > 140 || r.reason.chars().any(char::is_control) {
            v.add("reason", "must be at most 140 characters without control characters");
        }
        v.check(check_idempotency_key(&r.idempotency_key));
        let command = v.finish(|| Some(Command::Reverse { transaction: transaction?, reason: r.reason.clone() }))?;
        self.run(&caller, "ReverseTransaction", &r, &r.idempotency_key, command).await
    }

    async fn set_account_limits(
        &self,
        req: Request<pb::SetAccountLimitsRequest>,
    ) -> Result<Response<pb::AccountChangeResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let account = v.check(parse_id("account_id", &r.account_id));
        let max = self.ledger.limits().max_balance;
        let max_debit = v.check(limit("max_single_debit", r.max_single_debit.as_ref(), max));
        let daily = v.check(limit("daily_debit_limit", r.daily_debit_limit.as_ref(), max));
        let currency = match (max_debit.flatten(), daily.flatten()) {
            (Some(a), Some(b)) if a.currency != b.currency => {
                v.add("daily_debit_limit.currency_code", "must be the currency of max_single_debit");
                None
            }
            (a, b) => a.or(b).map(|m| m.currency),
        };
        v.check(check_idempotency_key(&r.idempotency_key));
        let command = v.finish(|| {
            Some(Command::SetLimits {
                account: account?,
                limits: bank_domain::DebitLimits {
                    max_debit: max_debit?.map(|m| m.amount),
                    daily_debit: daily?.map(|m| m.amount),
                },
                currency,
            })
        })?;
        self.run(&caller, "SetAccountLimits", &r, &r.idempotency_key, command).await
    }

    async fn freeze_account(
        &self,
        req: Request<pb::FreezeAccountRequest>,
    ) -> Result<Response<pb::AccountChangeResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let account = status_fields(&r.account_id, &r.reason, &r.idempotency_key)?;
        let command = Command::Freeze { account, reason: r.reason.clone() };
        self.run(&caller, "FreezeAccount", &r, &r.idempotency_key, command).await
    }

    async fn unfreeze_account(
        &self,
        req: Request<pb::UnfreezeAccountRequest>,
    ) -> Result<Response<pb::AccountChangeResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let account = status_fields(&r.account_id, &r.reason, &r.idempotency_key)?;
        let command = Command::Unfreeze { account, reason: r.reason.clone() };
        self.run(&caller, "UnfreezeAccount", &r, &r.idempotency_key, command).await
    }

    async fn close_account(
        &self,
        req: Request<pb::CloseAccountRequest>,
    ) -> Result<Response<pb::AccountChangeResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let account = status_fields(&r.account_id, "", &r.idempotency_key)?;
        self.run(&caller, "CloseAccount", &r, &r.idempotency_key, Command::Close { account }).await
    }

    async fn reconcile(&self, req: Request<pb::ReconcileRequest>) -> Result<Response<pb::ReconcileReport>, Status> {
        if !caller(&req)?.is_admin() {
            return Err(status::permission_denied("only an admin may run reconcile"));
        }
        let report = match self.reconciler.try_run().await {
            None => return Err(Status::aborted("a reconcile pass is already running; try again when it ends")),
            Some(Err(e)) => return Err(status::unavailable(&format!("{e:#}"))),
            Some(Ok(report)) => report,
        };
        Ok(Response::new(pb::ReconcileReport {
            clean: report.is_clean(),
            accounts_checked: report.accounts as i64,
            events_checked: report.events,
            outbox_pending: report.outbox_pending,
            currencies: report
                .currencies
                .iter()
                .map(|(c, t)| pb::CurrencyTotal {
                    currency_code: c.clone(),
                    write_model: t.write_model.normalize().to_string(),
                    event_fold: t.event_fold.normalize().to_string(),
                    read_model: t.read_model.map(|d| d.normalize().to_string()).unwrap_or_default(),
                    cache: t.cache.map(|d| d.normalize().to_string()).unwrap_or_default(),
                })
                .collect(),
            problems: report.problems,
            behind: report.behind,
        }))
    }
}

/// Longest a hold may last.
const MAX_HOLD_SECONDS: i64 = 30 * 24 * 3600;

/// A hold's deadline from exactly one of `expires_at` or `ttl_seconds`.
fn hold_deadline(
    expires_at: Option<&prost_types::Timestamp>,
    ttl_seconds: i64,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>, InputError> {
    let latest = now + chrono::Duration::seconds(MAX_HOLD_SECONDS);
    match (expires_at, ttl_seconds) {
        (Some(_), t) if t != 0 => Err(InputError::new("ttl_seconds", "give expires_at or ttl_seconds, not both")),
        (None, 0) => Err(InputError::new("expires_at", "expires_at or ttl_seconds is required")),
        (None, t) if !(1..=MAX_HOLD_SECONDS).contains(&t) => {
            Err(InputError::new("ttl_seconds", format!("must be 1 to {MAX_HOLD_SECONDS}")))
        }
        (None, t) => Ok(now + chrono::Duration::seconds(t)),
        (Some(ts), _) => {
            let at = u32::try_from(ts.nanos)
                .ok()
                .and_then(|n| chrono::DateTime::from_timestamp(ts.seconds, n))
                .ok_or_else(|| InputError::new("expires_at", "is not a valid timestamp"))?;
            if at <= now || at > latest {
                return Err(InputError::new("expires_at", "must be in the future and at most 30 days away"));
            }
            // Postgres keeps microseconds: the deadline stored is the one answered.
            Ok(chrono::DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at))
        }
    }
}

/// An optional limit: absent or an empty amount is no limit.
fn limit(field: &str, money: Option<&pb::Money>, max: rust_decimal::Decimal) -> Result<Option<Money>, InputError> {
    let Some(m) = money.filter(|m| !m.amount.is_empty() || !m.currency_code.is_empty()) else { return Ok(None) };
    let currency = Currency::from_code(&m.currency_code).map_err(|_| {
        InputError::new(format!("{field}.currency_code"), "must be a supported ISO 4217 code such as USD")
    })?;
    if m.amount.is_empty() {
        return Ok(None);
    }
    let amount = parse_amount(&format!("{field}.amount"), &m.amount, currency, max)?;
    Ok(Some(Money::new(currency, amount)))
}

/// Account, reason and key of a status change.
fn status_fields(account_id: &str, reason: &str, key: &str) -> Result<Uuid, Status> {
    let mut v = Violations::default();
    let id = v.check(parse_id("account_id", account_id));
    v.check(check_idempotency_key(key));
    if reason.chars().count() > 200 || reason.chars().any(char::is_control) {
        v.add("reason", "must be at most 200 characters without control characters");
    }
    Ok(v.finish(|| id)?)
}
