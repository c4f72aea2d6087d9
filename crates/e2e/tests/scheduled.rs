//! Scheduled transfers across crashes and between instances, with the
//! services as real processes: an occurrence is made exactly once whether
//! its scheduler is killed mid-run or two schedulers race for it.

mod system;

use std::time::{Duration, Instant};

use bank_proto::v1 as pb;
use bank_testkit::authed;
use chrono::Utc;
use system::System;
use uuid::Uuid;

/// How many one-off transfers fall due at the same instant.
const DUE: usize = 300;

/// An owner's funded account, a payee's, and `DUE` one-offs of 1.00 between
/// them, all due a few seconds from now; the schedule ids.
async fn due_together(sys: &System) -> (String, String, Vec<Uuid>) {
    let mut c = sys.command_client().await;
    let owner = sys.issuer.customer(Uuid::now_v7());
    let open = |token: String| {
        let mut c = c.clone();
        async move {
            let r = pb::OpenAccountRequest {
                r#type: 1,
                currency_code: "USD".into(),
                idempotency_key: Uuid::new_v4().to_string(),
            };
            c.open_account(authed(r, &token)).await.unwrap().into_inner().account.unwrap().account_id
        }
    };
    let from = open(owner.clone()).await;
    let to = open(sys.issuer.customer(Uuid::now_v7())).await;
    let deposit = pb::DepositRequest {
        account_id: from.clone(),
        money: Some(pb::Money { currency_code: "USD".into(), amount: "1000.00".into() }),
        idempotency_key: Uuid::new_v4().to_string(),
        description: String::new(),
    };
    c.deposit(authed(deposit, &sys.issuer.teller(Uuid::now_v7()))).await.unwrap();
    let start = Utc::now() + chrono::Duration::seconds(8);
    let mut ids = Vec::new();
    for _ in 0..DUE {
        let r = pb::CreateScheduledTransferRequest {
            from_account_id: from.clone(),
            to_account_id: to.clone(),
            money: Some(pb::Money { currency_code: "USD".into(), amount: "1.00".into() }),
            cadence: pb::Cadence::Once.into(),
            start_at: Some(prost_types::Timestamp { seconds: start.timestamp(), nanos: 0 }),
            idempotency_key: Uuid::new_v4().to_string(),
            ..Default::default()
        };
        let s = c.create_scheduled_transfer(authed(r, &owner)).await.unwrap().into_inner();
        ids.push(Uuid::try_parse(&s.schedule_id).unwrap());
    }
    assert!(Utc::now() < start, "the schedules were made before they fell due");
    (from, to, ids)
}

async fn made(sys: &System) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM schedule_occurrences WHERE outcome = 'SUCCEEDED'")
        .fetch_one(&sys.write_db)
        .await
        .unwrap()
}

/// Waits until every schedule is completed, then checks that each
/// occurrence was made exactly once: one success recorded per schedule, one
/// transfer per schedule in the ledger, and the money moved once.
async fn assert_each_made_once(sys: &System, from: &str, to: &str, ids: &[Uuid]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let completed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM scheduled_transfers WHERE state = 'COMPLETED' AND id = ANY($1)")
                .bind(ids)
                .fetch_one(&sys.write_db)
                .await
                .unwrap();
        if completed as usize == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{completed} of {} schedules completed", ids.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (successes, schedules): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT schedule_id) FROM schedule_occurrences WHERE outcome = 'SUCCEEDED' AND schedule_id = ANY($1)",
    )
    .bind(ids)
    .fetch_one(&sys.write_db)
    .await
    .unwrap();
    assert_eq!((successes, schedules), (ids.len() as i64, ids.len() as i64));
    let refusals: i64 = sqlx::query_scalar("SELECT count(*) FROM schedule_occurrences WHERE outcome <> 'SUCCEEDED'")
        .fetch_one(&sys.write_db)
        .await
        .unwrap();
    assert_eq!(refusals, 0, "the money was there for every occurrence");
    let transfers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE account_id = $1::uuid AND kind = 'TransferDebited'")
            .bind(from)
            .fetch_one(&sys.write_db)
            .await
            .unwrap();
    assert_eq!(transfers, ids.len() as i64, "one transfer per occurrence in the event store");
    let balances: Vec<(String,)> = sqlx::query_as(
        "SELECT balance::text FROM accounts WHERE id = ANY(ARRAY[$1::uuid, $2::uuid]) ORDER BY id = $2::uuid",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&sys.write_db)
    .await
    .unwrap();
    let expected_from = format!("{}.000", 1000 - ids.len());
    let expected_to = format!("{}.000", ids.len());
    assert_eq!(balances, [(expected_from,), (expected_to,)]);
    let (clean, report) = sys.reconcile();
    assert!(clean, "reconcile after the run:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occurrences_survive_a_kill_9_of_their_scheduler_mid_run_and_are_made_once() {
    let mut sys = System::start_with(&[("SCHEDULER_POLL_MS", "50".into())]).await;
    let (from, to, ids) = due_together(&sys).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while made(&sys).await < 20 {
        assert!(Instant::now() < deadline, "no occurrence was made");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sys.kill9("command-service");
    let at_kill = made(&sys).await;
    eprintln!("killed with {at_kill} of {DUE} occurrences made");
    assert!((at_kill as usize) < DUE, "the kill landed after the run: it tested nothing");
    tokio::time::sleep(Duration::from_millis(500)).await;
    sys.restart("command-service").await;
    assert_each_made_once(&sys, &from, &to, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_racing_for_the_same_occurrences_make_each_once() {
    let mut sys = System::start_with(&[("SCHEDULER_POLL_MS", "20".into())]).await;
    sys.start_second_command_service().await;
    let (from, to, ids) = due_together(&sys).await;
    assert_each_made_once(&sys, &from, &to, &ids).await;
}
