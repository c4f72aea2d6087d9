//! The gRPC adapter: caller from the verified token, fields parsed into
//! commands (every violation reported), the ledger called, errors mapped once.

use std::sync::Arc;

use bank_domain::{AccountKind, Currency};
use bank_platform::{auth::caller, status};
use bank_proto::v1::{self as pb, account_command_service_server::AccountCommandService};
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::{
    Reconciler,
    ledger::{
        Ledger, MoneyCommand, StatusChange, TransferCommand, Violations, check_description, check_idempotency_key,
        parse_id, parse_money,
    },
};

pub struct CommandApi {
    ledger: Arc<Ledger>,
    reconciler: Arc<Reconciler>,
}

impl CommandApi {
    pub fn new(ledger: Arc<Ledger>, reconciler: Arc<Reconciler>) -> Self {
        Self { ledger, reconciler }
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

fn money_command(
    account_id: &str,
    money: Option<&pb::Money>,
    key: &str,
    description: &str,
    ledger: &Ledger,
) -> Result<MoneyCommand, Status> {
    let mut v = Violations::default();
    let account_id = v.check(parse_id("account_id", account_id));
    let money = v.check_all(parse_money(money, ledger.limits().max_amount));
    v.check(check_idempotency_key(key));
    v.check(check_description(description));
    Ok(v.finish(|| {
        Some(MoneyCommand {
            account_id: account_id?,
            money: money?,
            key: key.to_owned(),
            description: description.to_owned(),
        })
    })?)
}

#[tonic::async_trait]
impl AccountCommandService for CommandApi {
    async fn open_account(
        &self,
        req: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::OpenAccountResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let hash = request_hash("OpenAccount", &r);
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
        let res = self.ledger.open_account(&caller, kind, currency, &r.idempotency_key, &hash).await?;
        Ok(Response::new(res))
    }

    async fn deposit(&self, req: Request<pb::DepositRequest>) -> Result<Response<pb::MoneyMovementResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let hash = request_hash("Deposit", &r);
        let cmd = money_command(&r.account_id, r.money.as_ref(), &r.idempotency_key, &r.description, &self.ledger)?;
        Ok(Response::new(self.ledger.deposit(&caller, &cmd, &hash).await?))
    }

    async fn withdraw(&self, req: Request<pb::WithdrawRequest>) -> Result<Response<pb::MoneyMovementResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let hash = request_hash("Withdraw", &r);
        let cmd = money_command(&r.account_id, r.money.as_ref(), &r.idempotency_key, &r.description, &self.ledger)?;
        Ok(Response::new(self.ledger.withdraw(&caller, &cmd, &hash).await?))
    }

    async fn transfer(&self, req: Request<pb::TransferRequest>) -> Result<Response<pb::MoneyMovementResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let hash = request_hash("Transfer", &r);
        let mut v = Violations::default();
        let from = v.check(parse_id("from_account_id", &r.from_account_id));
        let to = v.check(parse_id("to_account_id", &r.to_account_id));
        if from.is_some() && from == to {
            v.add("to_account_id", "must differ from from_account_id");
        }
        let money = v.check_all(parse_money(r.money.as_ref(), self.ledger.limits().max_amount));
        v.check(check_idempotency_key(&r.idempotency_key));
        v.check(check_description(&r.description));
        let cmd = v.finish(|| {
            Some(TransferCommand {
                from: from?,
                to: to?,
                money: money?,
                key: r.idempotency_key.clone(),
                description: r.description.clone(),
            })
        })?;
        Ok(Response::new(self.ledger.transfer(&caller, &cmd, &hash).await?))
    }

    async fn freeze_account(
        &self,
        req: Request<pb::FreezeAccountRequest>,
    ) -> Result<Response<pb::AccountChangeResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let hash = request_hash("FreezeAccount", &r);
        self.status_change(&caller, StatusChange::Freeze, &r.account_id, &r.reason, &r.idempotency_key, &hash).await
    }

    async fn unfreeze_account(
        &self,
        req: Request<pb::UnfreezeAccountRequest>,
    ) -> Result<Response<pb::AccountChangeResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let hash = request_hash("UnfreezeAccount", &r);
        self.status_change(&caller, StatusChange::Unfreeze, &r.account_id, &r.reason, &r.idempotency_key, &hash).await
    }

    async fn close_account(
        &self,
        req: Request<pb::CloseAccountRequest>,
    ) -> Result<Response<pb::AccountChangeResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let hash = request_hash("CloseAccount", &r);
        self.status_change(&caller, StatusChange::Close, &r.account_id, "", &r.idempotency_key, &hash).await
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
            problems: report.problems,
            behind: report.behind,
        }))
    }
}

impl CommandApi {
    async fn status_change(
        &self,
        caller: &bank_platform::auth::Caller,
        change: StatusChange,
        account_id: &str,
        reason: &str,
        key: &str,
        hash: &[u8],
    ) -> Result<Response<pb::AccountChangeResponse>, Status> {
        let mut v = Violations::default();
        let id = v.check(parse_id("account_id", account_id));
        v.check(check_idempotency_key(key));
        if reason.chars().count() > 200 || reason.chars().any(char::is_control) {
            v.add("reason", "must be at most 200 characters without control characters");
        }
        let id = v.finish(|| id)?;
        Ok(Response::new(self.ledger.change_status(caller, change, id, reason, key, hash).await?))
    }
}
