//! Step-up: a transfer above the bank-wide threshold, by a customer who signs
//! in with a second factor, needs one given within the last five minutes; a
//! stolen (or refreshed) session older than that moves no large amount.

mod common;

use std::time::Duration;

use bank_proto::v1 as pb;
use bank_testkit::authed;
use common::{Harness, reason, usd};
use tonic::Code;
use uuid::Uuid;

#[tokio::test]
async fn a_large_transfer_needs_a_second_factor_given_in_the_last_five_minutes() {
    let h = Harness::start().await;
    let ada = Uuid::now_v7();
    let fresh = h.issuer.customer_with_second_factor(ada, Duration::from_secs(60));
    let stale = h.issuer.customer_with_second_factor(ada, Duration::from_secs(600));
    let from = h.open(&fresh, "USD").await;
    let to = h.open(&h.customer().1, "USD").await;
    h.fund(&from, "5000.00").await;

    // Up to the threshold (1000 by default) nothing more is asked.
    h.transfer(&stale, &from, &to, "1000.00").await.unwrap();
    let refused = h.transfer(&stale, &from, &to, "1000.01").await.unwrap_err();
    assert_eq!((refused.code(), reason(&refused)), (Code::FailedPrecondition, "STEP_UP_REQUIRED".to_owned()));
    assert!(refused.message().contains("above 1000.00 USD"), "{}", refused.message());
    assert_eq!(h.balance(&from).await, "4000.00", "the refused transfer moved nothing");
    h.transfer(&fresh, &from, &to, "1000.01").await.unwrap();

    // A standing order for a large amount is asked for when it is made:
    // its occurrences run unattended.
    let schedule = |token: &str| {
        let at = chrono::Utc::now() + chrono::Duration::days(1);
        let r = pb::CreateScheduledTransferRequest {
            from_account_id: from.clone(),
            to_account_id: to.clone(),
            money: usd("2000.00"),
            cadence: pb::Cadence::Monthly.into(),
            start_at: Some(prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 }),
            idempotency_key: Uuid::new_v4().to_string(),
            ..Default::default()
        };
        authed(r, token)
    };
    let refused = h.client.clone().create_scheduled_transfer(schedule(&stale)).await.unwrap_err();
    assert_eq!(reason(&refused), "STEP_UP_REQUIRED");
    h.client.clone().create_scheduled_transfer(schedule(&fresh)).await.unwrap();

    // A customer who signs in with a password alone is not asked (the bank
    // has not required a second factor of them).
    let (_, bo) = h.customer();
    let bos = h.open(&bo, "USD").await;
    h.fund(&bos, "3000.00").await;
    h.transfer(&bo, &bos, &to, "2500.00").await.unwrap();
}
