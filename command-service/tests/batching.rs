//! Batching mode: concurrent commands share a transaction, and each keeps its
//! own outcome and idempotency. Batching is the default, so every other
//! command-service test runs batched too; scripts/test runs the money-path
//! suite a second time with COMMAND_BATCHING=off.

mod common;

use bank_proto::v1 as pb;
use bank_testkit::{Principal, authed};
use command_service::queue::BatchConfig;
use common::{Harness, key, reason, usd};
use futures::future::join_all;
use tonic::Code;

async fn batching() -> Harness {
    Harness::start_with(&bank_testkit::nats_url_as(Principal::Command), |c| {
        c.batching = Some(BatchConfig { batchers: 2, max_batch: 64 })
    })
    .await
}

async fn metric(h: &Harness, name: &str) -> f64 {
    bank_testkit::metric(h.running.as_ref().unwrap().http_addr, name).await
}

#[tokio::test]
async fn concurrent_commands_share_transactions_yet_each_has_its_own_outcome() {
    let h = batching().await;
    let (_, alice) = h.customer();
    let (_, mallory) = h.customer();
    let src = h.open(&alice, "USD").await;
    let dst = h.open(&alice, "USD").await;
    h.fund(&src, "100.00").await;

    // Forty transfers of 5.00 from 100.00, a repeated key among them, and a
    // stranger's attempt on the same account, all at once.
    let repeated = key();
    let calls = (0..44).map(|i| {
        let (mut c, src, dst) = (h.client.clone(), src.clone(), dst.clone());
        let (token, k) = match i {
            40..=42 => (alice.clone(), repeated.clone()),
            43 => (mallory.clone(), key()),
            _ => (alice.clone(), key()),
        };
        tokio::spawn(async move {
            let req = pb::TransferRequest {
                from_account_id: src,
                to_account_id: dst,
                money: usd("5.00"),
                idempotency_key: k,
                description: String::new(),
            };
            c.transfer(authed(req, &token)).await.map(|r| r.into_inner())
        })
    });
    let results: Vec<_> = join_all(calls).await.into_iter().map(|r| r.unwrap()).collect();

    let ok: Vec<&pb::MoneyMovementResponse> = results[..40].iter().filter_map(|r| r.as_ref().ok()).collect();
    let repeated_answers: Vec<_> = results[40..43].iter().collect();
    let ok_count = ok.len() + usize::from(repeated_answers[0].is_ok());
    assert_eq!(ok_count, 20, "exactly the funds' worth of transfers succeed");
    for r in &results[..43] {
        if let Err(s) = r {
            assert_eq!((s.code(), reason(s).as_str()), (Code::FailedPrecondition, "INSUFFICIENT_FUNDS"), "{s:?}");
        }
    }
    // The repeated key: one effect, three identical answers.
    let first = format!("{:?}", repeated_answers[0].as_ref().map_err(|s| s.message().to_owned()));
    assert!(repeated_answers.iter().all(|a| format!("{:?}", a.as_ref().map_err(|s| s.message().to_owned())) == first));
    assert_eq!(results[43].as_ref().unwrap_err().code(), Code::NotFound);

    assert_eq!(h.balance(&src).await, "0.00");
    assert_eq!(h.balance(&dst).await, "100.00");
    let debits: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE kind = 'TransferDebited'")
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(debits, 20);
    let not_owner: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE reason = 'NOT_OWNER'").fetch_one(&h.db).await.unwrap();
    assert_eq!(not_owner, 1, "the stranger's attempt is audited and keeps no key");
    let keys = h.count("idempotency").await;
    assert_eq!(keys, 3 + 41, "two opens, a deposit, 40 transfers, one repeated key; none for the stranger");
    assert!(h.currency_sums().await.iter().all(|(_, sum)| sum.is_zero()), "{:?}", h.currency_sums().await);

    let batches = metric(&h, "command_batch_size_count").await;
    let commands = metric(&h, "command_batch_size_sum").await;
    assert!(commands > batches, "no two commands ever shared a transaction ({commands} in {batches})");
    let report = command_service::reconcile(&h.config).await.unwrap();
    assert!(report.is_clean(), "{report}");
}

/// Two batches claiming the same keys in opposite orders
/// must not deadlock (claims are taken in one sorted order). The same 64
/// OpenAccounts are sent forwards and backwards at once, round after round:
/// every call succeeds, and both calls under a key name the same account.
#[tokio::test]
async fn the_same_keys_in_opposite_orders_at_once_never_fail() {
    let h = Harness::start_with(&bank_testkit::nats_url_as(Principal::Command), |c| {
        c.batching = Some(BatchConfig { batchers: 8, max_batch: 16 })
    })
    .await;
    let (_, ada) = h.customer();
    for round in 0..10 {
        let keys: Vec<String> = (0..64).map(|_| key()).collect();
        let order = |forwards: bool| {
            let mut ks = keys.clone();
            if !forwards {
                ks.reverse();
            }
            ks
        };
        let calls = [order(true), order(false)].into_iter().flat_map(|ks| {
            let (client, ada) = (h.client.clone(), ada.clone());
            ks.into_iter().map(move |k| {
                let (mut c, token) = (client.clone(), ada.clone());
                tokio::spawn(async move {
                    let req = pb::OpenAccountRequest {
                        r#type: pb::AccountType::Checking as i32,
                        currency_code: "USD".into(),
                        idempotency_key: k.clone(),
                    };
                    (k, c.open_account(authed(req, &token)).await.map(|r| r.into_inner().account.unwrap().account_id))
                })
            })
        });
        let mut opened: std::collections::HashMap<String, String> = Default::default();
        for joined in join_all(calls).await {
            let (k, result) = joined.unwrap();
            let account = result.unwrap_or_else(|s| panic!("round {round}: {:?} {}", s.code(), s.message()));
            let first = opened.entry(k).or_insert_with(|| account.clone());
            assert_eq!(*first, account, "one key, one account");
        }
        assert_eq!(opened.len(), 64);
    }
}

/// A batch whose write fails commits nothing of any of its commands, and
/// every caller still gets an answer: the batch's transactions are held at
/// their write (the event store locked), their database sessions are then
/// killed, and each caller hears UNAVAILABLE or, for a batch formed after,
/// success. Retried with the same keys, every transfer then has exactly one
/// effect.
#[tokio::test]
async fn a_batch_whose_commit_fails_keeps_no_outcome_and_every_caller_gets_an_answer() {
    let h = batching().await;
    let (_, alice) = h.customer();
    let src = h.open(&alice, "USD").await;
    let dst = h.open(&alice, "USD").await;
    h.fund(&src, "100.00").await;
    let keys_before = h.count("idempotency").await;

    // Writes to the event store wait behind this lock, after the batch has
    // locked its accounts and claimed its keys.
    let mut blocker = h.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE").execute(&mut *blocker).await.unwrap();
    let transfer = |k: String| {
        let (mut c, src, dst, token) = (h.client.clone(), src.clone(), dst.clone(), alice.clone());
        async move {
            let req = pb::TransferRequest {
                from_account_id: src,
                to_account_id: dst,
                money: usd("1.00"),
                idempotency_key: k,
                description: String::new(),
            };
            c.transfer(authed(req, &token)).await.map(|r| r.into_inner())
        }
    };
    let keys: Vec<String> = (0..20).map(|_| key()).collect();
    let calls: Vec<_> = keys.iter().map(|k| tokio::spawn(transfer(k.clone()))).collect();
    let waiting = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock' AND usename <> current_user",
        )
        .fetch_one(&h.db)
        .await
        .unwrap()
    };
    bank_testkit::assert_eventually!(
        waiting().await > 0,
        std::time::Duration::from_secs(10),
        "no batch reached its write"
    );
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock' AND usename <> current_user",
    )
    .fetch_one(&h.db)
    .await
    .unwrap();
    assert!(killed > 0);
    blocker.commit().await.unwrap();

    let results: Vec<_> = join_all(calls).await.into_iter().map(|r| r.unwrap()).collect();
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert!(failed > 0, "the killed batch's commands must fail");
    for r in &results {
        if let Err(s) = r {
            assert_eq!(s.code(), Code::Unavailable, "{s:?}");
        }
    }
    let succeeded = results.len() - failed;
    assert_eq!(h.count("idempotency").await, keys_before + succeeded as i64, "a failed batch keeps no key");
    let expected_before_retry = format!("{}.00", 100 - succeeded);
    assert_eq!(h.balance(&src).await, expected_before_retry, "nothing of the failed batch is durable");

    // The callers retry with their keys: each transfer happens exactly once.
    let retried: Vec<_> = join_all(keys.iter().map(|k| transfer(k.clone()))).await;
    assert!(retried.iter().all(Result::is_ok), "{retried:?}");
    assert_eq!(h.balance(&src).await, "80.00");
    assert_eq!(h.balance(&dst).await, "20.00");
    assert!(h.currency_sums().await.iter().all(|(_, sum)| sum.is_zero()));
}
