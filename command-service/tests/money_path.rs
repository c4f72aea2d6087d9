//! The money path against real Postgres and NATS JetStream, over real gRPC.

mod common;

use std::{collections::HashMap, time::Duration};

use bank_proto::v1 as pb;
use bank_testkit::{assert_eventually, authed};
use common::{Harness, key, reason, usd, violation_fields};
use futures::future::join_all;
use rust_decimal::Decimal;
use tonic::Code;

#[tokio::test]
async fn twenty_concurrent_transfers_never_overdraw() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let (_, bob) = h.customer();
    let src = h.open(&alice, "USD").await;
    let dst = h.open(&bob, "USD").await;
    h.deposit(&alice, &src, "100.00").await.unwrap();

    let results = join_all((0..20).map(|_| {
        let (h, alice, src, dst) = (&h, alice.clone(), src.clone(), dst.clone());
        async move {
            tokio::spawn({
                let mut client = h.client.clone();
                async move {
                    let req = pb::TransferRequest {
                        from_account_id: src,
                        to_account_id: dst,
                        money: usd("10.00"),
                        idempotency_key: key(),
                        description: String::new(),
                    };
                    client.transfer(authed(req, &alice)).await
                }
            })
            .await
            .unwrap()
        }
    }))
    .await;

    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(ok, 10);
    assert_eq!(refused.len(), 10);
    assert!(refused.iter().all(|s| s.code() == Code::FailedPrecondition && reason(s) == "INSUFFICIENT_FUNDS"));
    assert_eq!(h.balance(&src).await, "0.00");
    assert_eq!(h.balance(&dst).await, "100.00");
}

#[tokio::test]
async fn opposite_transfers_in_a_tight_loop_never_deadlock_and_conserve_money() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let a = h.open(&alice, "USD").await;
    let b = h.open(&alice, "USD").await;
    h.deposit(&alice, &a, "500.00").await.unwrap();
    h.deposit(&alice, &b, "500.00").await.unwrap();

    let tasks = (0..8).map(|i| {
        let (h_client, alice, a, b) = (h.client.clone(), alice.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            let mut client = h_client;
            let mut errors = Vec::new();
            for n in 0..15 {
                let (from, to) = if (i + n) % 2 == 0 { (&a, &b) } else { (&b, &a) };
                let req = pb::TransferRequest {
                    from_account_id: from.clone(),
                    to_account_id: to.clone(),
                    money: usd("3.00"),
                    idempotency_key: key(),
                    description: String::new(),
                };
                if let Err(s) = client.transfer(authed(req, &alice)).await {
                    errors.push(s);
                }
            }
            errors
        })
    });
    let errors: Vec<tonic::Status> = join_all(tasks).await.into_iter().flat_map(Result::unwrap).collect();
    // Balances start at 500 each and never run dry with 3.00 steps: no refusal
    // of any kind is acceptable, deadlock errors included.
    assert!(errors.is_empty(), "errors surfaced: {errors:?}");
    let total: Decimal =
        h.balance(&a).await.parse::<Decimal>().unwrap() + h.balance(&b).await.parse::<Decimal>().unwrap();
    assert_eq!(total, Decimal::from(1000));
}

#[tokio::test]
async fn the_same_transfer_sent_ten_times_concurrently_has_one_effect_and_ten_identical_answers() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let src = h.open(&alice, "USD").await;
    let dst = h.open(&alice, "USD").await;
    h.deposit(&alice, &src, "50.00").await.unwrap();
    let req = pb::TransferRequest {
        from_account_id: src.clone(),
        to_account_id: dst.clone(),
        money: usd("20.00"),
        idempotency_key: key(),
        description: "rent".into(),
    };

    let answers = join_all((0..10).map(|_| {
        let (mut client, req, alice) = (h.client.clone(), req.clone(), alice.clone());
        tokio::spawn(async move { client.transfer(authed(req, &alice)).await.map(|r| r.into_inner()) })
    }))
    .await;
    let answers: Vec<pb::MoneyMovementResponse> = answers.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert!(answers.iter().all(|a| a == &answers[0]), "answers differ");
    assert_eq!(h.balance(&src).await, "30.00");
    assert_eq!(h.balance(&dst).await, "20.00");
    let transfers: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE kind = 'TransferDebited'")
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(transfers, 1);

    // The same key with another amount is refused and changes nothing.
    let mut other = req.clone();
    other.money = usd("21.00");
    let err = h.client.clone().transfer(authed(other, &alice)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(h.balance(&src).await, "30.00");
}

#[tokio::test]
async fn a_refusal_is_replayed_for_the_same_key_even_after_funds_arrive() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let acc = h.open(&alice, "USD").await;
    let req = pb::WithdrawRequest {
        account_id: acc.clone(),
        money: usd("5.00"),
        idempotency_key: key(),
        description: String::new(),
    };
    let first = h.client.clone().withdraw(authed(req.clone(), &alice)).await.unwrap_err();
    assert_eq!(reason(&first), "INSUFFICIENT_FUNDS");
    h.deposit(&alice, &acc, "10.00").await.unwrap();
    let again = h.client.clone().withdraw(authed(req, &alice)).await.unwrap_err();
    assert_eq!((again.code(), reason(&again)), (Code::FailedPrecondition, "INSUFFICIENT_FUNDS".into()));
    assert_eq!(h.balance(&acc).await, "10.00");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE reason = 'INSUFFICIENT_FUNDS'")
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn hostile_amounts_and_ids_are_clear_errors_that_write_nothing() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let (_, mallory) = h.customer();
    let acc = h.open(&alice, "USD").await;
    let other = h.open(&alice, "USD").await;
    h.deposit(&alice, &acc, "10.00").await.unwrap();
    // Outbox rows: the highest id ever given out, not the row count, which the
    // relay lowers whenever it has published (a race with this test).
    let before = (h.count("events").await, h.count("idempotency").await, h.outbox_ids_issued().await);

    for (amount, currency) in [
        ("0", "USD"),
        ("0.00", "USD"),
        ("-5.00", "USD"),
        ("1e3", "USD"),
        ("NaN", "USD"),
        ("0.001", "USD"),
        ("1234567890123456789012345678901234567890", "USD"),
        ("", "USD"),
        (" 1", "USD"),
        ("1.00", "XYZ"),
        ("1.00", ""),
    ] {
        let req = pb::DepositRequest {
            account_id: acc.clone(),
            money: Some(pb::Money { currency_code: currency.into(), amount: amount.into() }),
            idempotency_key: key(),
            description: String::new(),
        };
        let err = h.client.clone().deposit(authed(req, &alice)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{amount:?} {currency:?}");
        assert!(violation_fields(&err).iter().any(|f| f.starts_with("money")), "{amount:?}: {err:?}");
    }

    let missing_key = pb::DepositRequest {
        account_id: acc.clone(),
        money: usd("1.00"),
        idempotency_key: String::new(),
        description: String::new(),
    };
    let err = h.client.clone().deposit(authed(missing_key, &alice)).await.unwrap_err();
    assert_eq!(violation_fields(&err), vec!["idempotency_key"]);

    let bad_id = pb::DepositRequest {
        account_id: "not-a-uuid".into(),
        money: usd("1.00"),
        idempotency_key: key(),
        description: String::new(),
    };
    assert_eq!(
        violation_fields(&h.client.clone().deposit(authed(bad_id, &alice)).await.unwrap_err()),
        vec!["account_id"]
    );

    let same = h.transfer(&alice, &acc, &acc, "1.00").await.unwrap_err();
    assert_eq!((same.code(), violation_fields(&same)), (Code::InvalidArgument, vec!["to_account_id".to_string()]));

    // Unknown and someone else's accounts look the same: NOT_FOUND.
    let unknown = h.deposit(&alice, &uuid::Uuid::now_v7().to_string(), "1.00").await.unwrap_err();
    let foreign = h.withdraw(&mallory, &acc, "1.00").await.unwrap_err();
    assert_eq!((unknown.code(), foreign.code()), (Code::NotFound, Code::NotFound));
    assert_eq!(unknown.message(), foreign.message());
    let foreign_transfer = h.transfer(&mallory, &acc, &other, "1.00").await.unwrap_err();
    assert_eq!(foreign_transfer.code(), Code::NotFound);

    let after = (h.count("events").await, h.count("idempotency").await, h.outbox_ids_issued().await);
    assert_eq!(before, after, "a refused input wrote rows");
    assert_eq!(h.balance(&acc).await, "10.00");
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE reason = 'NOT_OWNER'").fetch_one(&h.db).await.unwrap();
    assert_eq!(audited, 2, "attempts on another's account are audited");
}

#[tokio::test]
async fn frozen_closed_and_foreign_currency_accounts_refuse_money() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let admin = h.admin();
    let acc = h.open(&alice, "USD").await;
    let eur = h.open(&alice, "EUR").await;
    h.deposit(&alice, &acc, "20.00").await.unwrap();

    // Customers cannot freeze; admins can.
    let freeze = |k: String| pb::FreezeAccountRequest {
        account_id: acc.clone(),
        reason: "fraud check".into(),
        idempotency_key: k,
    };
    let denied = h.client.clone().freeze_account(authed(freeze(key()), &alice)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let frozen = h.client.clone().freeze_account(authed(freeze(key()), &admin)).await.unwrap().into_inner();
    assert_eq!(frozen.account.unwrap().status, pb::AccountStatus::Frozen as i32);

    let err = h.deposit(&alice, &acc, "1.00").await.unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "ACCOUNT_FROZEN".into()));
    let err = h.transfer(&alice, &acc, &eur, "1.00").await.unwrap_err();
    assert_eq!(reason(&err), "ACCOUNT_FROZEN");

    let unfreeze =
        pb::UnfreezeAccountRequest { account_id: acc.clone(), reason: "cleared".into(), idempotency_key: key() };
    h.client.clone().unfreeze_account(authed(unfreeze, &admin)).await.unwrap();

    let err = h.transfer(&alice, &acc, &eur, "1.00").await.unwrap_err();
    assert_eq!(reason(&err), "CURRENCY_MISMATCH");

    let close = |id: &str| pb::CloseAccountRequest { account_id: id.into(), idempotency_key: key() };
    let err = h.client.clone().close_account(authed(close(&acc), &alice)).await.unwrap_err();
    assert_eq!(reason(&err), "BALANCE_NOT_ZERO");
    h.client.clone().close_account(authed(close(&eur), &alice)).await.unwrap();
    let err = h
        .client
        .clone()
        .deposit(authed(
            pb::DepositRequest {
                account_id: eur.clone(),
                money: Some(pb::Money { currency_code: "EUR".into(), amount: "1.00".into() }),
                idempotency_key: key(),
                description: String::new(),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ACCOUNT_CLOSED");
    assert_eq!(h.balance(&acc).await, "20.00");
}

#[tokio::test]
async fn a_service_principal_is_not_a_customer() {
    let h = Harness::start().await;
    let service = h.service();
    let (_, alice) = h.customer();
    let acc = h.open(&alice, "USD").await;
    let req = pb::OpenAccountRequest {
        r#type: pb::AccountType::Checking as i32,
        currency_code: "USD".into(),
        idempotency_key: key(),
    };
    // Its token says ACTIVE, but it passed no KYC: it opens no account...
    let err = h.client.clone().open_account(authed(req, &service)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // ...and reaches no customer's account as if it were its own.
    let err = h.withdraw(&service, &acc, "1.00").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(h.count("accounts").await, 1);
}

#[tokio::test]
async fn customers_waiting_for_kyc_move_no_money() {
    let h = Harness::start().await;
    let (_, pending) = h.pending_customer();
    let req = pb::OpenAccountRequest {
        r#type: pb::AccountType::Savings as i32,
        currency_code: "USD".into(),
        idempotency_key: key(),
    };
    let err = h.client.clone().open_account(authed(req, &pending)).await.unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "CUSTOMER_NOT_ACTIVE".into()));
    assert_eq!(h.count("accounts").await, 0);

    let anonymous = h
        .client
        .clone()
        .open_account(pb::OpenAccountRequest { r#type: 1, currency_code: "USD".into(), idempotency_key: key() })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn the_event_store_and_audit_log_refuse_update_and_delete() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let acc = h.open(&alice, "USD").await;
    h.withdraw(&alice, &acc, "1.00").await.unwrap_err();
    for sql in [
        "UPDATE events SET delta = 1000",
        "DELETE FROM events",
        "TRUNCATE events CASCADE",
        "UPDATE audit_log SET reason = 'x'",
        "DELETE FROM audit_log",
    ] {
        assert!(sqlx::query(sql).execute(&h.db).await.is_err(), "{sql} was allowed");
    }
    assert_eq!(h.count("events").await, 1);
    assert_eq!(h.count("audit_log").await, 1);
}

#[tokio::test]
async fn a_randomized_workload_conserves_money_and_balances_equal_the_event_fold() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let h = Harness::start().await;
    let users: Vec<_> = (0..3).map(|_| h.customer()).collect();
    let mut accounts = Vec::new();
    for (_, token) in &users {
        for _ in 0..2 {
            accounts.push((token.clone(), h.open(token, "USD").await));
        }
    }
    let tasks = (0..4u64).map(|seed| {
        let accounts = accounts.clone();
        let h_ref = &h;
        async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let (mut deposited, mut withdrawn) = (Decimal::ZERO, Decimal::ZERO);
            for _ in 0..40 {
                let (token, acc) = &accounts[rng.gen_range(0..accounts.len())];
                let cents = rng.gen_range(1..5000u32);
                let amount = format!("{}.{:02}", cents / 100, cents % 100);
                let value: Decimal = amount.parse().unwrap();
                match rng.gen_range(0..3) {
                    0 => {
                        if h_ref.deposit(token, acc, &amount).await.is_ok() {
                            deposited += value
                        }
                    }
                    1 => {
                        if h_ref.withdraw(token, acc, &amount).await.is_ok() {
                            withdrawn += value
                        }
                    }
                    _ => {
                        let (_, to) = &accounts[rng.gen_range(0..accounts.len())];
                        if to != acc {
                            let _ = h_ref.transfer(token, acc, to, &amount).await;
                        }
                    }
                }
            }
            (deposited, withdrawn)
        }
    });
    let totals = join_all(tasks).await;
    let deposited: Decimal = totals.iter().map(|t| t.0).sum();
    let withdrawn: Decimal = totals.iter().map(|t| t.1).sum();
    let sum: Decimal =
        sqlx::query_scalar("SELECT COALESCE(sum(balance), 0) FROM accounts").fetch_one(&h.db).await.unwrap();
    assert_eq!(sum, deposited - withdrawn);
    let mismatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM accounts a JOIN (SELECT account_id, sum(delta) AS folded, max(version) AS v, count(*) AS n FROM events GROUP BY account_id) e ON e.account_id = a.id
         WHERE e.folded <> a.balance OR e.v <> a.version OR e.n <> a.version",
    )
    .fetch_one(&h.db)
    .await
    .unwrap();
    assert_eq!(mismatched, 0, "an account differs from the fold of its events");
    assert!(deposited > Decimal::ZERO);
}

/// Checks the stream holds each committed event exactly once, per account in
/// version order, and nothing that was not committed.
async fn assert_stream_matches_event_store(h: &Harness, nats_url: &str) {
    let committed: i64 = h.count("events").await;
    assert_eventually!(h.count("outbox").await == 0, Duration::from_secs(30), "outbox did not drain");
    let published = h.published(nats_url).await;
    let mut seen = std::collections::HashSet::new();
    let mut last_version: HashMap<String, i64> = HashMap::new();
    for e in &published {
        assert!(seen.insert(e.event_id.clone()), "event {} published twice", e.event_id);
        let last = last_version.entry(e.account_id.clone()).or_insert(0);
        assert_eq!(e.version, *last + 1, "account {} out of order", e.account_id);
        *last = e.version;
    }
    assert_eq!(published.len() as i64, committed);
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM events").fetch_all(&h.db).await.unwrap();
    assert!(ids.iter().all(|id| seen.contains(&id.to_string())));
}

#[tokio::test]
async fn every_committed_event_reaches_jetstream_once_in_version_order() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let a = h.open(&alice, "USD").await;
    let b = h.open(&alice, "USD").await;
    h.deposit(&alice, &a, "100.00").await.unwrap();
    join_all((0..30).map(|i| {
        let (h, alice, a, b) = (&h, &alice, &a, &b);
        async move { if i % 2 == 0 { h.transfer(alice, a, b, "1.00").await } else { h.deposit(alice, b, "2.00").await } }
    }))
    .await;
    assert_stream_matches_event_store(&h, &bank_testkit::nats_url()).await;
}

#[tokio::test]
async fn events_committed_while_nats_is_down_are_published_when_it_returns() {
    let mut nats = bank_testkit::NatsProcess::start().await.unwrap();
    let h = Harness::start_with_nats(&nats.url()).await;
    let (_, alice) = h.customer();
    let a = h.open(&alice, "USD").await;
    let b = h.open(&alice, "USD").await;
    h.deposit(&alice, &a, "100.00").await.unwrap();

    let burst = async {
        for i in 0..40 {
            // Commands keep committing whatever the broker does.
            h.transfer(&alice, if i % 2 == 0 { &a } else { &b }, if i % 2 == 0 { &b } else { &a }, "1.00")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let outage = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        nats.kill();
        tokio::time::sleep(Duration::from_millis(600)).await;
        nats.resume().await.unwrap();
    };
    tokio::join!(burst, outage);
    assert_stream_matches_event_store(&h, &nats.url()).await;
}

#[tokio::test]
async fn two_instances_share_one_database_and_publish_each_event_once() {
    let mut first = Harness::start().await;
    let mut config = first.config.clone();
    config.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    let second = command_service::start(config, bank_platform::CancellationToken::new()).await.unwrap();
    let mut second_client = pb::account_command_service_client::AccountCommandServiceClient::connect(format!(
        "http://{}",
        second.grpc_addr
    ))
    .await
    .unwrap();
    let (_, alice) = first.customer();
    let acc = first.open(&alice, "USD").await;
    for i in 0..20 {
        let req = pb::DepositRequest {
            account_id: acc.clone(),
            money: usd("1.00"),
            idempotency_key: format!("k{i}"),
            description: String::new(),
        };
        if i % 2 == 0 {
            first.client.clone().deposit(authed(req, &alice)).await.unwrap();
        } else {
            second_client.deposit(authed(req, &alice)).await.unwrap();
        }
    }
    assert_eq!(first.balance(&acc).await, "20.00");
    assert_stream_matches_event_store(&first, &bank_testkit::nats_url()).await;
    first.stop().await;
    second.stop().await.unwrap();
}

#[tokio::test]
async fn reconcile_is_clean_after_a_workload_and_detects_an_edited_event() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let a = h.open(&alice, "USD").await;
    let b = h.open(&alice, "USD").await;
    h.deposit(&alice, &a, "70.00").await.unwrap();
    h.transfer(&alice, &a, &b, "20.00").await.unwrap();
    h.withdraw(&alice, &b, "5.00").await.unwrap();
    let report = command_service::reconcile(&h.config).await.unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.events, 6, "two opens, a deposit, two transfer legs, a withdrawal");

    // An operator with superuser rights bypasses the guard and edits history.
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only").execute(&h.db).await.unwrap();
    sqlx::query("UPDATE events SET envelope = envelope || '\\x00'::bytea WHERE kind = 'MoneyDeposited'")
        .execute(&h.db)
        .await
        .unwrap();
    let report = command_service::reconcile(&h.config).await.unwrap();
    assert!(report.problems.iter().any(|p| p.contains("hash chain")), "{report}");
    assert!(report.problems.iter().any(|p| p.contains("append-only")), "{report}");
}

#[tokio::test]
async fn reconcile_is_an_admin_rpc_reporting_what_the_operator_command_reports() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let a = h.open(&alice, "USD").await;
    h.deposit(&alice, &a, "12.34").await.unwrap();

    let denied = h.client.clone().reconcile(authed(pb::ReconcileRequest {}, &alice)).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let anonymous = h.client.clone().reconcile(pb::ReconcileRequest {}).await.unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);

    let report = h.client.clone().reconcile(authed(pb::ReconcileRequest {}, &h.admin())).await.unwrap().into_inner();
    assert!(report.clean, "{report:?}");
    assert_eq!((report.accounts_checked, report.events_checked), (1, 2), "an open and a deposit");

    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only").execute(&h.db).await.unwrap();
    sqlx::query("DELETE FROM events WHERE kind = 'MoneyDeposited'").execute(&h.db).await.unwrap();
    let report = h.client.clone().reconcile(authed(pb::ReconcileRequest {}, &h.admin())).await.unwrap().into_inner();
    assert!(!report.clean);
    assert!(report.problems.iter().any(|p| p.contains("write model")), "{:?}", report.problems);
}
