//! Hostile input end to end: what a caller sends is either refused with a
//! clear error that changes nothing, or stored and served back verbatim.

mod common;

use bank_proto::v1 as pb;
use bank_testkit::authed;
use common::{Bank, usd};
use tonic::Code;
use uuid::Uuid;

#[tokio::test]
async fn sql_looking_and_unicode_descriptions_are_stored_and_served_verbatim() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let a = bank.open(&alice).await.account.unwrap().account_id;
    let descriptions = [
        "Robert'); DROP TABLE accounts;--",
        "' OR '1'='1",
        "%s %n {} ${jndi:ldap://x} <script>alert(1)</script>",
        "ünïcödé 💸 مرحبا \u{202e}txet",
        "\\x00 not a NUL, just text",
    ];
    let mut last = String::new();
    for d in descriptions {
        let req = pb::DepositRequest {
            account_id: a.clone(),
            money: usd("1.00"),
            idempotency_key: Uuid::new_v4().to_string(),
            description: d.into(),
        };
        last = bank.commands.clone().deposit(authed(req, &bank.teller())).await.unwrap().into_inner().consistency_token;
    }
    let balance = bank.balance(&alice, &a, &last).await.unwrap();
    assert_eq!(balance.balance.unwrap().amount, "5.00", "the accounts table is still there and counting");
    let page = bank.page(&alice, &a, 10, "").await.unwrap();
    let mut served: Vec<String> = page.transactions.iter().map(|t| t.description.clone()).collect();
    served.reverse(); // newest first
    assert_eq!(served, descriptions);
}

#[tokio::test]
async fn an_oversized_request_is_refused_by_the_size_limit_and_writes_nothing() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let opened = bank.open(&alice).await;
    let a = opened.account.unwrap().account_id;
    let huge = pb::DepositRequest {
        account_id: a.clone(),
        money: usd("1.00"),
        idempotency_key: Uuid::new_v4().to_string(),
        description: "x".repeat(256 * 1024),
    };
    let err = bank.commands.clone().deposit(authed(huge, &bank.teller())).await.unwrap_err();
    assert!(matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted), "{err:?}");
    // Just over the description limit but under the size limit: a field violation.
    let long = pb::DepositRequest {
        account_id: a.clone(),
        money: usd("1.00"),
        idempotency_key: Uuid::new_v4().to_string(),
        description: "x".repeat(141),
    };
    assert_eq!(
        bank.commands.clone().deposit(authed(long, &bank.teller())).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let balance = bank.balance(&alice, &a, &opened.consistency_token).await.unwrap();
    assert_eq!((balance.balance.unwrap().amount.as_str(), balance.version), ("0.00", 1));
    // The service is still serving after the refusal.
    bank.deposit(&a, "2.00").await;
}

#[tokio::test]
async fn page_sizes_and_page_tokens_outside_the_bounds_are_refused() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let opened = bank.open(&alice).await;
    let a = opened.account.unwrap().account_id;
    bank.balance(&alice, &a, &opened.consistency_token).await.unwrap();
    for size in [-1, 101, i32::MAX, i32::MIN] {
        let err = bank.page(&alice, &a, size, "").await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "page_size {size}");
    }
    let long_garbage = "A".repeat(10_000);
    for token in ["garbage", "ct1.", "%00%00", long_garbage.as_str()] {
        let err = bank.page(&alice, &a, 10, token).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "page_token {:?}", &token[..token.len().min(12)]);
    }
    // Zero means the default page size, as in the Google API conventions.
    assert!(bank.page(&alice, &a, 0, "").await.is_ok());
}
