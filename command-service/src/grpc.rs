//! The gRPC adapter: caller from the verified token, fields parsed into
//! commands (every violation reported), the ledger called, errors mapped once.

use std::sync::Arc;

use bank_domain::{AccountKind, Money, format_amount, ledger::Command, schedule::Change};
use bank_platform::{
    auth::{Caller, STEP_UP_WINDOW_SECS, caller},
    status,
};
use bank_proto::v1::{self as pb, account_command_service_server::AccountCommandService};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    Reconciler,
    error::CommandError,
    execute::now,
    ledger::Ledger,
    scheduler::{NewSchedule, Schedules},
    validate::{self, IdempotencyKey, Violations, parse_id},
};

pub struct CommandApi {
    ledger: Arc<Ledger>,
    reconciler: Arc<Reconciler>,
    schedules: Schedules,
}

impl CommandApi {
    pub fn new(ledger: Arc<Ledger>, reconciler: Arc<Reconciler>, schedules: Schedules) -> Self {
        Self { ledger, reconciler, schedules }
    }

    async fn change_schedule(
        &self,
        caller: &Caller,
        schedule_id: &str,
        change: Change,
    ) -> Result<Response<pb::ScheduledTransfer>, Status> {
        let id = parse_id("schedule_id", schedule_id).map_err(CommandError::from)?;
        Ok(Response::new(self.schedules.change(caller, id, change).await?))
    }

    /// A large transfer by a caller who signs in with a second factor needs
    /// one given recently: a stolen session (or a refreshed one) is not enough.
    fn ensure_stepped_up(&self, caller: &Caller, money: &Money) -> Result<(), CommandError> {
        let threshold = self.ledger.limits().step_up_above;
        if money.amount <= threshold || caller.stepped_up(now().timestamp()) {
            return Ok(());
        }
        Err(CommandError::StepUpRequired {
            threshold: format!("{} {}", format_amount(threshold, money.currency), money.currency.code()),
            minutes: STEP_UP_WINDOW_SECS / 60,
        })
    }

    /// Runs a validated command under the request's idempotency key.
    async fn run<R: Message + Default>(
        &self,
        caller: &Caller,
        rpc: &'static str,
        request: &impl Message,
        key: IdempotencyKey,
        command: Command,
    ) -> Result<Response<R>, Status> {
        let hash = request_hash(rpc, request);
        Ok(Response::new(self.ledger.run(caller, rpc, &key, &hash, command).await?))
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
) -> Result<(Uuid, Money, IdempotencyKey, String), Status> {
    let mut v = Violations::default();
    let account_id = v.check(parse_id("account_id", account_id));
    let money = v.check_all(validate::money("money", money, ledger.limits().max_amount));
    let key = v.check(IdempotencyKey::parse(key));
    let description = v.check(validate::description(description));
    Ok(v.finish(|| Some((account_id?, money?, key?, description?)))?)
}

/// Account, reason and key of a status change.
fn status_fields(account_id: &str, reason: &str, key: &str) -> Result<(Uuid, String, IdempotencyKey), Status> {
    let mut v = Violations::default();
    let id = v.check(parse_id("account_id", account_id));
    let key = v.check(IdempotencyKey::parse(key));
    let reason = v.check(validate::status_reason(reason));
    Ok(v.finish(|| Some((id?, reason?, key?)))?)
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
        let currency = v.check(validate::currency("currency_code", &r.currency_code));
        let key = v.check(IdempotencyKey::parse(&r.idempotency_key));
        let (kind, currency, key) = v.finish(|| Some((kind?, currency?, key?)))?;
        let command = Command::OpenAccount { id: Uuid::now_v7(), kind, currency };
        self.run(&caller, "OpenAccount", &r, key, command).await
    }

    async fn deposit(&self, req: Request<pb::DepositRequest>) -> Result<Response<pb::MoneyMovementResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let (account, money, key, description) =
            money_fields(&r.account_id, r.money.as_ref(), &r.idempotency_key, &r.description, &self.ledger)?;
        self.run(&caller, "Deposit", &r, key, Command::Deposit { account, money, description }).await
    }

    async fn withdraw(&self, req: Request<pb::WithdrawRequest>) -> Result<Response<pb::MoneyMovementResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let (account, money, key, description) =
            money_fields(&r.account_id, r.money.as_ref(), &r.idempotency_key, &r.description, &self.ledger)?;
        self.run(&caller, "Withdraw", &r, key, Command::Withdraw { account, money, description }).await
    }

    async fn transfer(&self, req: Request<pb::TransferRequest>) -> Result<Response<pb::MoneyMovementResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let (from, to) = validate::movement(&mut v, &r.from_account_id, &r.to_account_id);
        let money = v.check_all(validate::money("money", r.money.as_ref(), self.ledger.limits().max_amount));
        let key = v.check(IdempotencyKey::parse(&r.idempotency_key));
        let description = v.check(validate::description(&r.description));
        let (command, key) = v.finish(|| {
            Some((Command::Transfer { from: from?, to: to?, money: money?, description: description? }, key?))
        })?;
        if let Command::Transfer { money, .. } = &command {
            self.ensure_stepped_up(&caller, money)?;
        }
        self.run(&caller, "Transfer", &r, key, command).await
    }

    async fn post_transaction(
        &self,
        req: Request<pb::PostTransactionRequest>,
    ) -> Result<Response<pb::MoneyMovementResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let legs = validate::legs(&r.legs, self.ledger.limits().max_amount, &mut v);
        let key = v.check(IdempotencyKey::parse(&r.idempotency_key));
        let description = v.check(validate::description(&r.description));
        let (command, key) = v.finish(|| Some((Command::Post { legs: legs?, description: description? }, key?)))?;
        self.run(&caller, "PostTransaction", &r, key, command).await
    }

    async fn place_hold(&self, req: Request<pb::PlaceHoldRequest>) -> Result<Response<pb::HoldResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let (from, to) = validate::movement(&mut v, &r.from_account_id, &r.to_account_id);
        let money = v.check_all(validate::money("money", r.money.as_ref(), self.ledger.limits().max_amount));
        let expires_at = v.check(validate::hold_deadline(r.expires_at.as_ref(), r.ttl_seconds, now()));
        let key = v.check(IdempotencyKey::parse(&r.idempotency_key));
        let description = v.check(validate::description(&r.description));
        let (command, key) = v.finish(|| {
            let hold = Command::PlaceHold {
                id: Uuid::now_v7(),
                from: from?,
                to: to?,
                money: money?,
                expires_at: expires_at?,
                description: description?,
            };
            Some((hold, key?))
        })?;
        self.run(&caller, "PlaceHold", &r, key, command).await
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
            Some(m) => v.check_all(validate::money("amount", Some(m), self.ledger.limits().max_amount)).map(Some),
        };
        let key = v.check(IdempotencyKey::parse(&r.idempotency_key));
        let (command, key) = v.finish(|| Some((Command::CaptureHold { hold: hold?, amount: amount? }, key?)))?;
        self.run(&caller, "CaptureHold", &r, key, command).await
    }

    async fn void_hold(&self, req: Request<pb::VoidHoldRequest>) -> Result<Response<pb::HoldResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let hold = v.check(parse_id("hold_id", &r.hold_id));
        let key = v.check(IdempotencyKey::parse(&r.idempotency_key));
        let (command, key) = v.finish(|| Some((Command::VoidHold { hold: hold? }, key?)))?;
        self.run(&caller, "VoidHold", &r, key, command).await
    }

    async fn reverse_transaction(
        &self,
        req: Request<pb::ReverseTransactionRequest>,
    ) -> Result<Response<pb::MoneyMovementResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let transaction = v.check(parse_id("transaction_id", &r.transaction_id));
        let reason = v.check(validate::reversal_reason(&r.reason));
        let key = v.check(IdempotencyKey::parse(&r.idempotency_key));
        let (command, key) =
            v.finish(|| Some((Command::Reverse { transaction: transaction?, reason: reason? }, key?)))?;
        self.run(&caller, "ReverseTransaction", &r, key, command).await
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
        let limits = validate::limits(&mut v, r.max_single_debit.as_ref(), r.daily_debit_limit.as_ref(), max);
        let key = v.check(IdempotencyKey::parse(&r.idempotency_key));
        let (command, key) = v.finish(|| {
            let (limits, currency) = limits?;
            Some((Command::SetLimits { account: account?, limits, currency }, key?))
        })?;
        self.run(&caller, "SetAccountLimits", &r, key, command).await
    }

    async fn freeze_account(
        &self,
        req: Request<pb::FreezeAccountRequest>,
    ) -> Result<Response<pb::AccountChangeResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let (account, reason, key) = status_fields(&r.account_id, &r.reason, &r.idempotency_key)?;
        self.run(&caller, "FreezeAccount", &r, key, Command::Freeze { account, reason }).await
    }

    async fn unfreeze_account(
        &self,
        req: Request<pb::UnfreezeAccountRequest>,
    ) -> Result<Response<pb::AccountChangeResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let (account, reason, key) = status_fields(&r.account_id, &r.reason, &r.idempotency_key)?;
        self.run(&caller, "UnfreezeAccount", &r, key, Command::Unfreeze { account, reason }).await
    }

    async fn close_account(
        &self,
        req: Request<pb::CloseAccountRequest>,
    ) -> Result<Response<pb::AccountChangeResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let (account, _, key) = status_fields(&r.account_id, "", &r.idempotency_key)?;
        self.run(&caller, "CloseAccount", &r, key, Command::Close { account }).await
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

    async fn create_scheduled_transfer(
        &self,
        req: Request<pb::CreateScheduledTransferRequest>,
    ) -> Result<Response<pb::ScheduledTransfer>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let (from, to) = validate::movement(&mut v, &r.from_account_id, &r.to_account_id);
        let money = v.check_all(validate::money("money", r.money.as_ref(), self.ledger.limits().max_amount));
        let description = v.check(validate::description(&r.description));
        let recurrence = validate::recurrence(&mut v, &r, now());
        let key = v.check(IdempotencyKey::parse(&r.idempotency_key));
        let new = v.finish(|| {
            Some(NewSchedule {
                from: from?,
                to: to?,
                money: money?,
                description: description?,
                recurrence: recurrence?,
                key: key?,
                request_hash: request_hash("CreateScheduledTransfer", &r),
            })
        })?;
        // Each occurrence runs unattended: the step-up is asked when it is made.
        self.ensure_stepped_up(&caller, &new.money)?;
        Ok(Response::new(self.schedules.create(&caller, new).await?))
    }

    async fn list_scheduled_transfers(
        &self,
        req: Request<pb::ListScheduledTransfersRequest>,
    ) -> Result<Response<pb::ListScheduledTransfersResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let size = match r.page_size {
            0 => Some(20),
            s @ 1..=100 => Some(i64::from(s)),
            _ => v.check(Err(bank_domain::InputError::new("page_size", "must be 0-100"))),
        };
        let after = match r.page_token.as_str() {
            "" => Some(None),
            t => v.check(parse_id("page_token", t).map(Some)),
        };
        let (size, after) = v.finish(|| Some((size?, after?)))?;
        let (schedules, next) = self.schedules.list(&caller, after, size).await?;
        let next_page_token = next.map(|id| id.to_string()).unwrap_or_default();
        Ok(Response::new(pb::ListScheduledTransfersResponse { schedules, next_page_token }))
    }

    async fn get_scheduled_transfer(
        &self,
        req: Request<pb::GetScheduledTransferRequest>,
    ) -> Result<Response<pb::ScheduledTransfer>, Status> {
        let caller = caller(&req)?;
        let id = parse_id("schedule_id", &req.get_ref().schedule_id).map_err(CommandError::from)?;
        Ok(Response::new(self.schedules.get(&caller, id).await?))
    }

    async fn pause_scheduled_transfer(
        &self,
        req: Request<pb::PauseScheduledTransferRequest>,
    ) -> Result<Response<pb::ScheduledTransfer>, Status> {
        self.change_schedule(&caller(&req)?, &req.get_ref().schedule_id, Change::Pause).await
    }

    async fn resume_scheduled_transfer(
        &self,
        req: Request<pb::ResumeScheduledTransferRequest>,
    ) -> Result<Response<pb::ScheduledTransfer>, Status> {
        self.change_schedule(&caller(&req)?, &req.get_ref().schedule_id, Change::Resume).await
    }

    async fn cancel_scheduled_transfer(
        &self,
        req: Request<pb::CancelScheduledTransferRequest>,
    ) -> Result<Response<pb::ScheduledTransfer>, Status> {
        self.change_schedule(&caller(&req)?, &req.get_ref().schedule_id, Change::Cancel).await
    }
}
