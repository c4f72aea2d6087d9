//! The access-control matrix: every command and query RPC against every kind
//! of caller, checked against one table.

mod common;

use std::time::Duration;

use bank_proto::v1 as pb;
use bank_testkit::{TestIssuer, authed};
use common::{Bank, usd};
use tonic::Code;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    NoToken,
    Expired,
    UnknownKey,
    Owner,
    OtherCustomer,
    SuspendedOwner,
    Teller,
    Service,
    Admin,
}

const RPCS: &[&str] = &[
    "GetAccount",
    "GetBalance",
    "ListTransactions",
    "GetStatement",
    "GetStatementKeys",
    "GetTransaction",
    "WatchBalance",
    "ListAccounts",
    "OpenAccount",
    "Deposit",
    "Withdraw",
    "Transfer",
    "PostTransaction",
    "PlaceHold",
    "CaptureHold",
    "VoidHold",
    "ReverseTransaction",
    "SetAccountLimits",
    "FreezeAccount",
    "UnfreezeAccount",
    "CloseAccount",
    "Reconcile",
    "CreateScheduledTransfer",
];

/// The expected answer. `Ok` is Code::Ok.
fn expected(who: Who, rpc: &str) -> Code {
    use Code::*;
    let read = matches!(
        rpc,
        "GetAccount" | "GetBalance" | "ListTransactions" | "GetStatement" | "GetTransaction" | "WatchBalance"
    );
    match who {
        Who::NoToken | Who::Expired | Who::UnknownKey => Unauthenticated,
        // The bank's public statement keys: any signed-in caller.
        _ if rpc == "GetStatementKeys" => Ok,
        // Corrections and limits are staff's alone.
        _ if matches!(rpc, "ReverseTransaction" | "SetAccountLimits") && !matches!(who, Who::Teller | Who::Admin) => {
            PermissionDenied
        }
        // Customers move money only between accounts: across the bank's
        // boundary (Deposit, Withdraw) and multi-leg postings are staff's.
        _ if matches!(rpc, "Deposit" | "Withdraw" | "PostTransaction")
            && matches!(who, Who::Owner | Who::OtherCustomer | Who::SuspendedOwner) =>
        {
            PermissionDenied
        }
        Who::Owner => match rpc {
            "FreezeAccount" | "UnfreezeAccount" | "Reconcile" => PermissionDenied,
            "CloseAccount" => FailedPrecondition, // balance not zero
            _ => Ok,
        },
        Who::OtherCustomer => match rpc {
            "ListAccounts" | "OpenAccount" => Ok,
            "FreezeAccount" | "UnfreezeAccount" | "Reconcile" => PermissionDenied,
            _ => NotFound, // never reveals that the account exists
        },
        // Suspended customers keep read access to their own accounts but move no money.
        Who::SuspendedOwner => match rpc {
            // Releasing their own hold moves no money.
            _ if read || rpc == "ListAccounts" || rpc == "VoidHold" => Ok,
            "FreezeAccount" | "UnfreezeAccount" | "Reconcile" => PermissionDenied,
            _ => FailedPrecondition,
        },
        // Staff see every account and move money across the boundary, but
        // spend nobody's money in their name and freeze nothing.
        Who::Teller => match rpc {
            "FreezeAccount" | "UnfreezeAccount" | "Reconcile" => PermissionDenied,
            "Transfer" | "CloseAccount" | "PlaceHold" | "CreateScheduledTransfer" => NotFound,
            _ => Ok,
        },
        // A service posts and crosses the boundary; it reads no accounts and owns none.
        // It captures and voids holds (a merchant's acquirer does).
        Who::Service => match rpc {
            "Deposit" | "Withdraw" | "PostTransaction" | "ListAccounts" | "CaptureHold" | "VoidHold" => Ok,
            "OpenAccount" | "FreezeAccount" | "UnfreezeAccount" | "Reconcile" | "CreateScheduledTransfer" => {
                PermissionDenied
            }
            _ => NotFound,
        },
        Who::Admin => match rpc {
            // Money moves only from the owner's own session.
            "Transfer" | "CloseAccount" | "PlaceHold" | "CreateScheduledTransfer" => NotFound,
            _ => Ok,
        },
    }
}

struct Fixture {
    account: String,
    other_account: String,
    transaction: String,
    owner_token: String,
}

fn place_hold(f: &Fixture) -> pb::PlaceHoldRequest {
    pb::PlaceHoldRequest {
        from_account_id: f.account.clone(),
        to_account_id: f.other_account.clone(),
        money: usd("1.00"),
        expires_at: None,
        ttl_seconds: 600,
        idempotency_key: Uuid::new_v4().to_string(),
        description: String::new(),
    }
}

/// A fresh open hold of the owner's, so every caller meets one.
async fn fresh_hold(bank: &Bank, f: &Fixture) -> String {
    let placed = bank.commands.clone().place_hold(authed(place_hold(f), &f.owner_token)).await.unwrap();
    placed.into_inner().hold.unwrap().hold_id
}

async fn call(bank: &Bank, token: Option<&str>, rpc: &str, f: &Fixture) -> Code {
    fn req<T>(m: T, token: Option<&str>) -> tonic::Request<T> {
        match token {
            Some(t) => authed(m, t),
            None => tonic::Request::new(m),
        }
    }
    let key = Uuid::new_v4().to_string();
    let (q, c) = (bank.queries.clone(), bank.commands.clone());
    let acc = f.account.clone();
    let now = chrono::Utc::now();
    let ts = |t: chrono::DateTime<chrono::Utc>| Some(prost_types::Timestamp { seconds: t.timestamp(), nanos: 0 });
    fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
        r.map_or_else(|s| s.code(), |_| Code::Ok)
    }
    let (mut q, mut c) = (q, c);
    match rpc {
        "GetAccount" => {
            code(q.get_account(req(pb::GetAccountRequest { account_id: acc, ..Default::default() }, token)).await)
        }
        "GetBalance" => {
            code(q.get_balance(req(pb::GetBalanceRequest { account_id: acc, ..Default::default() }, token)).await)
        }
        "ListTransactions" => code(
            q.list_transactions(req(pb::ListTransactionsRequest { account_id: acc, ..Default::default() }, token))
                .await,
        ),
        "GetStatement" => code(
            q.get_statement(req(
                pb::GetStatementRequest {
                    account_id: acc,
                    from_time: ts(now - chrono::Duration::days(1)),
                    to_time: ts(now + chrono::Duration::days(1)),
                    ..Default::default()
                },
                token,
            ))
            .await,
        ),
        "GetStatementKeys" => code(q.get_statement_keys(req(pb::GetStatementKeysRequest {}, token)).await),
        "GetTransaction" => code(
            q.get_transaction(req(
                pb::GetTransactionRequest { transaction_id: f.transaction.clone(), ..Default::default() },
                token,
            ))
            .await,
        ),
        "WatchBalance" => {
            match q.watch_balance(req(pb::WatchBalanceRequest { account_id: acc, ..Default::default() }, token)).await {
                Ok(r) => match r.into_inner().message().await {
                    Ok(Some(_)) => Code::Ok,
                    Ok(None) => Code::Unknown,
                    Err(s) => s.code(),
                },
                Err(s) => s.code(),
            }
        }
        "ListAccounts" => code(q.list_accounts(req(pb::ListAccountsRequest::default(), token)).await),
        "OpenAccount" => code(
            c.open_account(req(
                pb::OpenAccountRequest { r#type: 1, currency_code: "USD".into(), idempotency_key: key },
                token,
            ))
            .await,
        ),
        "Deposit" => code(
            c.deposit(req(
                pb::DepositRequest {
                    account_id: acc,
                    money: usd("1.00"),
                    idempotency_key: key,
                    description: String::new(),
                },
                token,
            ))
            .await,
        ),
        "Withdraw" => code(
            c.withdraw(req(
                pb::WithdrawRequest {
                    account_id: acc,
                    money: usd("1.00"),
                    idempotency_key: key,
                    description: String::new(),
                },
                token,
            ))
            .await,
        ),
        "Transfer" => code(
            c.transfer(req(
                pb::TransferRequest {
                    from_account_id: acc,
                    to_account_id: f.other_account.clone(),
                    money: usd("1.00"),
                    idempotency_key: key,
                    description: String::new(),
                },
                token,
            ))
            .await,
        ),
        "PostTransaction" => {
            let leg = |account_id: &str, side: pb::PostingSide| pb::PostingLeg {
                account_id: account_id.into(),
                money: usd("1.00"),
                side: side as i32,
            };
            code(
                c.post_transaction(req(
                    pb::PostTransactionRequest {
                        legs: vec![leg(&acc, pb::PostingSide::Debit), leg(&f.other_account, pb::PostingSide::Credit)],
                        idempotency_key: key,
                        description: String::new(),
                    },
                    token,
                ))
                .await,
            )
        }
        "PlaceHold" => code(c.place_hold(req(place_hold(f), token)).await),
        "CaptureHold" => {
            let hold_id = fresh_hold(bank, f).await;
            code(
                c.capture_hold(req(pb::CaptureHoldRequest { hold_id, amount: None, idempotency_key: key }, token))
                    .await,
            )
        }
        "VoidHold" => {
            let hold_id = fresh_hold(bank, f).await;
            code(c.void_hold(req(pb::VoidHoldRequest { hold_id, idempotency_key: key }, token)).await)
        }
        "ReverseTransaction" => {
            // A fresh deposit each time: a transaction is reversed once.
            let transaction_id = bank.deposit(&acc, "1.00").await.transaction_id;
            code(
                c.reverse_transaction(req(
                    pb::ReverseTransactionRequest { transaction_id, reason: "matrix".into(), idempotency_key: key },
                    token,
                ))
                .await,
            )
        }
        "SetAccountLimits" => code(
            c.set_account_limits(req(
                pb::SetAccountLimitsRequest {
                    account_id: acc,
                    max_single_debit: usd("1000.00"),
                    daily_debit_limit: None,
                    idempotency_key: key,
                },
                token,
            ))
            .await,
        ),
        "FreezeAccount" => code(
            c.freeze_account(req(
                pb::FreezeAccountRequest { account_id: acc, reason: "matrix".into(), idempotency_key: key },
                token,
            ))
            .await,
        ),
        "UnfreezeAccount" => code(
            c.unfreeze_account(req(
                pb::UnfreezeAccountRequest { account_id: acc, reason: "matrix".into(), idempotency_key: key },
                token,
            ))
            .await,
        ),
        "CloseAccount" => {
            code(c.close_account(req(pb::CloseAccountRequest { account_id: acc, idempotency_key: key }, token)).await)
        }
        "Reconcile" => code(c.reconcile(req(pb::ReconcileRequest {}, token)).await),
        "CreateScheduledTransfer" => code(
            c.create_scheduled_transfer(req(
                pb::CreateScheduledTransferRequest {
                    from_account_id: acc,
                    to_account_id: f.other_account.clone(),
                    money: usd("1.00"),
                    cadence: pb::Cadence::Monthly.into(),
                    start_at: Some(prost_types::Timestamp {
                        seconds: chrono::Utc::now().timestamp() + 86_400,
                        nanos: 0,
                    }),
                    idempotency_key: key,
                    ..Default::default()
                },
                token,
            ))
            .await,
        ),
        other => panic!("no call for {other}"),
    }
}

#[tokio::test]
async fn every_rpc_answers_every_kind_of_caller_as_the_table_says() {
    let bank = Bank::start().await;
    let owner = Uuid::now_v7();
    let owner_token = bank.issuer.customer(owner);
    let opened = bank.open(&owner_token).await;
    let account = opened.account.unwrap().account_id;
    let other_account = bank.open(&bank.customer()).await.account.unwrap().account_id;
    let d = bank.deposit(&account, "100.00").await;
    bank.balance(&owner_token, &account, &d.consistency_token).await.unwrap();
    let f = Fixture { account, other_account, transaction: d.transaction_id, owner_token: owner_token.clone() };

    let stranger = TestIssuer::start().await.unwrap();
    let tokens: Vec<(Who, Option<String>)> = vec![
        (Who::NoToken, None),
        (Who::Expired, Some(bank.issuer.token_for(owner, &["customer"], "ACTIVE", Duration::ZERO))),
        (Who::UnknownKey, Some(stranger.customer(owner))),
        (Who::Owner, Some(owner_token.clone())),
        (Who::OtherCustomer, Some(bank.customer())),
        (Who::SuspendedOwner, Some(bank.issuer.token_for(owner, &["customer"], "SUSPENDED", Duration::from_secs(600)))),
        (Who::Teller, Some(bank.teller())),
        (Who::Service, Some(bank.issuer.service(Uuid::now_v7()))),
        // Last: its freeze/unfreeze pair must not disturb the rows above.
        (Who::Admin, Some(bank.issuer.admin(Uuid::now_v7()))),
    ];
    // An expired token: issued with zero lifetime, checked past the 5 s leeway.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let mut mismatches = Vec::new();
    for (who, token) in &tokens {
        for rpc in RPCS {
            let got = call(&bank, token.as_deref(), rpc, &f).await;
            let want = expected(*who, rpc);
            if got != want {
                mismatches.push(format!("{who:?} {rpc}: expected {want:?}, got {got:?}"));
            }
        }
    }
    assert!(mismatches.is_empty(), "access matrix mismatches:\n{}", mismatches.join("\n"));
}
