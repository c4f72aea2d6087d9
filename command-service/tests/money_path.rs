//! The money path against real Postgres and NATS JetStream, over real gRPC.

mod common;

use std::{collections::HashMap, time::Duration};

use bank_domain::{DomainError, Forbidden};
use bank_proto::v1 as pb;
use bank_testkit::{Principal, assert_eventually, authed};
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
    h.fund(&src, "100.00").await;

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
    h.fund(&a, "500.00").await;
    h.fund(&b, "500.00").await;

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
    h.fund(&src, "50.00").await;
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
    let teller = h.teller();
    let first = h.client.clone().withdraw(authed(req.clone(), &teller)).await.unwrap_err();
    assert_eq!(reason(&first), "INSUFFICIENT_FUNDS");
    h.fund(&acc, "10.00").await;
    let again = h.client.clone().withdraw(authed(req, &teller)).await.unwrap_err();
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
    h.fund(&acc, "10.00").await;
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
    let unknown = h.transfer(&mallory, &uuid::Uuid::now_v7().to_string(), &other, "1.00").await.unwrap_err();
    let foreign = h.transfer(&mallory, &acc, &other, "1.00").await.unwrap_err();
    assert_eq!((unknown.code(), foreign.code()), (Code::NotFound, Code::NotFound));
    assert_eq!(unknown.message(), foreign.message());
    let unknown_deposit = h.deposit(&h.teller(), &uuid::Uuid::now_v7().to_string(), "1.00").await.unwrap_err();
    assert_eq!(unknown_deposit.code(), Code::NotFound);
    // A customer may not take money out of the bank, not even someone else's.
    let foreign_withdrawal = h.withdraw(&mallory, &acc, "1.00").await.unwrap_err();
    common::assert_denied_by(&foreign_withdrawal, Forbidden::BoundaryNotStaff);

    let after = (h.count("events").await, h.count("idempotency").await, h.outbox_ids_issued().await);
    assert_eq!(before, after, "a refused input wrote rows");
    assert_eq!(h.balance(&acc).await, "10.00");
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE reason = 'NOT_OWNER'").fetch_one(&h.db).await.unwrap();
    assert_eq!(audited, 1, "attempts on another's account are audited");
    let denied: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE reason = 'PERMISSION_DENIED'")
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(denied, 1, "the customer's withdrawal is audited");
}

#[tokio::test]
async fn frozen_closed_and_foreign_currency_accounts_refuse_money() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let admin = h.admin();
    let acc = h.open(&alice, "USD").await;
    let eur = h.open(&alice, "EUR").await;
    h.fund(&acc, "20.00").await;

    // Customers cannot freeze; admins can.
    let freeze = |k: String| pb::FreezeAccountRequest {
        account_id: acc.clone(),
        reason: "fraud check".into(),
        idempotency_key: k,
    };
    let denied = h.client.clone().freeze_account(authed(freeze(key()), &alice)).await.unwrap_err();
    common::assert_denied_by(&denied, Forbidden::FreezeNotAdmin);
    let frozen = h.client.clone().freeze_account(authed(freeze(key()), &admin)).await.unwrap().into_inner();
    assert_eq!(frozen.account.unwrap().status, pb::AccountStatus::Frozen as i32);

    let err = h.deposit(&h.teller(), &acc, "1.00").await.unwrap_err();
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
            &h.teller(),
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
    common::assert_denied_by(&err, Forbidden::ServiceNotCustomer);
    // ...and reaches no customer's account as if it were its own.
    let other = h.open(&alice, "USD").await;
    let err = h.transfer(&service, &acc, &other, "1.00").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(h.customer_accounts().await, 2);
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
    assert_eq!(h.customer_accounts().await, 0);

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
    h.fund(&acc, "1.00").await;
    h.withdraw(&alice, &acc, "1.00").await.unwrap_err();
    for sql in [
        "UPDATE events SET delta = 1000",
        "DELETE FROM events",
        "TRUNCATE events CASCADE",
        "UPDATE postings SET amount = 1000",
        "DELETE FROM postings",
        "UPDATE audit_log SET reason = 'x'",
        "DELETE FROM audit_log",
    ] {
        assert!(sqlx::query(sql).execute(&h.db).await.is_err(), "{sql} was allowed");
    }
    assert_eq!(h.count("events").await, 3 + h.system_events().await);
    assert_eq!(h.count("postings").await, 2);
    assert_eq!(h.count("audit_log").await, 1);
}

#[tokio::test]
async fn a_randomized_workload_conserves_money_and_balances_equal_the_event_fold() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let h = Harness::start().await;
    let teller = h.teller();
    let users: Vec<_> = (0..3).map(|_| h.customer()).collect();
    let mut accounts = Vec::new();
    for (_, token) in &users {
        for _ in 0..2 {
            accounts.push((token.clone(), h.open(token, "USD").await));
        }
    }
    let tasks = (0..4u64).map(|seed| {
        let accounts = accounts.clone();
        let (h_ref, teller) = (&h, &teller);
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
                        if h_ref.deposit(teller, acc, &amount).await.is_ok() {
                            deposited += value
                        }
                    }
                    1 => {
                        if h_ref.withdraw(teller, acc, &amount).await.is_ok() {
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
    let customers: Decimal =
        sqlx::query_scalar("SELECT COALESCE(sum(balance), 0) FROM accounts WHERE kind = 'CHECKING'")
            .fetch_one(&h.db)
            .await
            .unwrap();
    assert_eq!(customers, deposited - withdrawn);
    // Double entry: settlement holds the other side, so USD sums to zero.
    assert_eq!(h.balance(&Harness::settlement("USD")).await, format!("{:.2}", withdrawn - deposited));
    assert!(h.currency_sums().await.iter().all(|(_, sum)| sum.is_zero()), "{:?}", h.currency_sums().await);
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
    h.fund(&a, "100.00").await;
    join_all((0..30).map(|i| {
        let (h, alice, a, b) = (&h, &alice, &a, &b);
        async move {
            if i % 2 == 0 { h.transfer(alice, a, b, "1.00").await } else { h.deposit(&h.teller(), b, "2.00").await }
        }
    }))
    .await;
    assert_stream_matches_event_store(&h, &bank_testkit::nats_admin_url()).await;
}

#[tokio::test]
async fn events_committed_while_nats_is_down_are_published_when_it_returns() {
    let mut nats = bank_testkit::NatsProcess::start().await.unwrap();
    let h = Harness::start_with_nats(&nats.url_as(Principal::Command)).await;
    let (_, alice) = h.customer();
    let a = h.open(&alice, "USD").await;
    let b = h.open(&alice, "USD").await;
    h.fund(&a, "100.00").await;

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
    assert_stream_matches_event_store(&h, &nats.url_as(Principal::Admin)).await;
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
    let teller = first.teller();
    for i in 0..20 {
        let req = pb::DepositRequest {
            account_id: acc.clone(),
            money: usd("1.00"),
            idempotency_key: format!("k{i}"),
            description: String::new(),
        };
        if i % 2 == 0 {
            first.client.clone().deposit(authed(req, &teller)).await.unwrap();
        } else {
            second_client.deposit(authed(req, &teller)).await.unwrap();
        }
    }
    assert_eq!(first.balance(&acc).await, "20.00");
    assert_stream_matches_event_store(&first, &bank_testkit::nats_admin_url()).await;
    first.stop().await;
    second.stop().await.unwrap();
}

#[tokio::test]
async fn reconcile_is_clean_after_a_workload_and_detects_an_edited_event() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let a = h.open(&alice, "USD").await;
    let b = h.open(&alice, "USD").await;
    h.fund(&a, "70.00").await;
    h.transfer(&alice, &a, &b, "20.00").await.unwrap();
    h.withdraw(&h.teller(), &b, "5.00").await.unwrap();
    let report = command_service::reconcile(&h.config).await.unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        report.events,
        h.system_events().await + 8,
        "two opens, then two postings each for a deposit, a transfer and a withdrawal"
    );
    assert!(report.currencies.values().all(|t| t.write_model.is_zero() && t.event_fold.is_zero()), "{report}");

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
    h.fund(&a, "12.34").await;

    let denied = h.client.clone().reconcile(authed(pb::ReconcileRequest {}, &alice)).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let anonymous = h.client.clone().reconcile(pb::ReconcileRequest {}).await.unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);

    let report = h.client.clone().reconcile(authed(pb::ReconcileRequest {}, &h.admin())).await.unwrap().into_inner();
    assert!(report.clean, "{report:?}");
    let system = h.system_events().await;
    assert_eq!((report.accounts_checked, report.events_checked), (system + 1, system + 3), "an open and a deposit");
    let usd = report.currencies.iter().find(|c| c.currency_code == "USD").unwrap();
    assert_eq!((usd.write_model.as_str(), usd.event_fold.as_str()), ("0", "0"));

    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only").execute(&h.db).await.unwrap();
    sqlx::query("ALTER TABLE postings DISABLE TRIGGER postings_append_only").execute(&h.db).await.unwrap();
    sqlx::query("DELETE FROM postings").execute(&h.db).await.unwrap();
    sqlx::query("DELETE FROM events WHERE kind = 'MoneyDeposited'").execute(&h.db).await.unwrap();
    let report = h.client.clone().reconcile(authed(pb::ReconcileRequest {}, &h.admin())).await.unwrap().into_inner();
    assert!(!report.clean);
    assert!(report.problems.iter().any(|p| p.contains("write model")), "{:?}", report.problems);
}

// ---- double entry ----

fn leg(account: &str, amount: &str, side: pb::PostingSide) -> pb::PostingLeg {
    pb::PostingLeg { account_id: account.into(), money: usd(amount), side: side as i32 }
}

use pb::PostingSide::{Credit, Debit};

#[tokio::test]
async fn only_tellers_and_services_cross_the_boundary_and_a_customers_attempt_writes_only_the_audit_row() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let acc = h.open(&alice, "USD").await;
    h.fund(&acc, "30.00").await;
    let before = (h.count("events").await, h.count("idempotency").await, h.outbox_ids_issued().await);

    for (err, rule) in [
        (h.deposit(&alice, &acc, "1000.00").await.unwrap_err(), Forbidden::BoundaryNotStaff),
        (h.withdraw(&alice, &acc, "1.00").await.unwrap_err(), Forbidden::BoundaryNotStaff),
        (
            h.deposit(&h.service(), &Harness::fee_income("USD"), "1.00").await.unwrap_err(),
            Forbidden::BoundaryOnBankAccount,
        ),
    ] {
        common::assert_denied_by(&err, rule);
    }
    let after = (h.count("events").await, h.count("idempotency").await, h.outbox_ids_issued().await);
    assert_eq!(before, after, "a denied attempt wrote more than the audit row");
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE reason = 'PERMISSION_DENIED' AND command IN ('Deposit', 'Withdraw')",
    )
    .fetch_one(&h.db)
    .await
    .unwrap();
    assert_eq!(audited, 3);
    assert_eq!(h.balance(&acc).await, "30.00");

    // A service principal and a teller (an admin may act as one) succeed.
    h.deposit(&h.service(), &acc, "5.00").await.unwrap();
    h.withdraw(&h.teller(), &acc, "10.00").await.unwrap();
    h.deposit(&h.admin(), &acc, "1.00").await.unwrap();
    assert_eq!(h.balance(&acc).await, "26.00");
    assert_eq!(h.balance(&Harness::settlement("USD")).await, "-26.00");
    assert!(h.currency_sums().await.iter().all(|(_, sum)| sum.is_zero()));
}

#[tokio::test]
async fn a_posted_transaction_moves_a_transfer_and_its_fee_at_once_and_only_once() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let (_, bob) = h.customer();
    let a = h.open(&alice, "USD").await;
    let b = h.open(&bob, "USD").await;
    h.fund(&a, "20.00").await;
    let fees = Harness::fee_income("USD");
    let req = pb::PostTransactionRequest {
        legs: vec![leg(&a, "10.50", Debit), leg(&b, "10.00", Credit), leg(&fees, "0.50", Credit)],
        idempotency_key: key(),
        description: "transfer with fee".into(),
    };
    let service = h.service();
    let first = h.client.clone().post_transaction(authed(req.clone(), &service)).await.unwrap().into_inner();
    let again = h.client.clone().post_transaction(authed(req.clone(), &service)).await.unwrap().into_inner();
    assert_eq!(first, again, "a repeated key answers the first outcome");
    let balances: Vec<_> = first.balances_after.iter().map(|b| b.balance.as_ref().unwrap().amount.clone()).collect();
    assert_eq!(balances, ["9.50", "10.00", "0.50"]);
    assert_eq!(
        (h.balance(&a).await, h.balance(&b).await, h.balance(&fees).await),
        ("9.50".into(), "10.00".into(), "0.50".into())
    );

    // Every event of the transaction names it and the other postings.
    let envelopes: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT envelope FROM events WHERE transaction_id = $1::uuid ORDER BY seq")
            .bind(&first.transaction_id)
            .fetch_all(&h.db)
            .await
            .unwrap();
    assert_eq!(envelopes.len(), 3);
    for bytes in envelopes {
        let e = <pb::EventEnvelope as prost::Message>::decode(bytes.as_slice()).unwrap();
        let others: Vec<_> = e.counterparty_postings.iter().map(|p| p.account_id.clone()).collect();
        assert_eq!(others.len(), 2);
        assert!(!others.contains(&e.account_id));
    }

    // Customers may not post, not even to move their own money.
    let err = h
        .client
        .clone()
        .post_transaction(authed(
            pb::PostTransactionRequest {
                legs: vec![leg(&a, "1.00", Debit), leg(&fees, "1.00", Credit)],
                idempotency_key: key(),
                description: String::new(),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    common::assert_denied_by(&err, Forbidden::PostNotStaff);
    assert_eq!(h.balance(&a).await, "9.50");
}

#[tokio::test]
async fn bad_legs_are_named_and_move_nothing() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let a = h.open(&alice, "USD").await;
    let closed = h.open(&alice, "USD").await;
    let euros = h.open(&alice, "EUR").await;
    h.fund(&a, "20.00").await;
    let close = pb::CloseAccountRequest { account_id: closed.clone(), idempotency_key: key() };
    h.client.clone().close_account(authed(close, &alice)).await.unwrap();
    let fees = Harness::fee_income("USD");
    let service = h.service();
    let post = |legs: Vec<pb::PostingLeg>| {
        let mut c = h.client.clone();
        let service = service.clone();
        async move {
            let req = pb::PostTransactionRequest { legs, idempotency_key: key(), description: String::new() };
            c.post_transaction(authed(req, &service)).await.unwrap_err()
        }
    };
    let before = (h.count("events").await, h.count("postings").await, h.outbox_ids_issued().await);

    let unbalanced = post(vec![leg(&a, "2.00", Debit), leg(&fees, "1.00", Credit)]).await;
    assert_eq!((unbalanced.code(), violation_fields(&unbalanced)), (Code::InvalidArgument, vec!["legs".to_string()]));
    assert!(unbalanced.message().contains("USD") || format!("{unbalanced:?}").contains("USD"), "{unbalanced:?}");

    let duplicate = post(vec![leg(&a, "1.00", Debit), leg(&fees, "2.00", Credit), leg(&a, "1.00", Debit)]).await;
    assert_eq!(
        (duplicate.code(), violation_fields(&duplicate)),
        (Code::InvalidArgument, vec!["legs[2].account_id".to_string()])
    );

    let one_sided = post(vec![leg(&a, "1.00", Debit), pb::PostingLeg { side: 0, ..leg(&fees, "1.00", Credit) }]).await;
    assert_eq!(violation_fields(&one_sided), vec!["legs[1].side".to_string()]);

    let wrong_currency = post(vec![leg(&a, "1.00", Debit), leg(&euros, "1.00", Credit)]).await;
    assert_eq!(
        (wrong_currency.code(), reason(&wrong_currency)),
        (Code::FailedPrecondition, "CURRENCY_MISMATCH".into())
    );
    assert!(wrong_currency.message().starts_with("legs[1]"), "{}", wrong_currency.message());

    let on_closed = post(vec![leg(&a, "1.00", Debit), leg(&closed, "1.00", Credit)]).await;
    assert_eq!((on_closed.code(), reason(&on_closed)), (Code::FailedPrecondition, "ACCOUNT_CLOSED".into()));
    assert!(on_closed.message().starts_with("legs[1]"), "{}", on_closed.message());

    let overdraw = post(vec![leg(&fees, "21.00", Credit), leg(&a, "21.00", Debit)]).await;
    assert_eq!(reason(&overdraw), "INSUFFICIENT_FUNDS");
    assert!(overdraw.message().starts_with("legs[1]"), "{}", overdraw.message());

    let missing = post(vec![leg(&a, "1.00", Debit), leg(&uuid::Uuid::now_v7().to_string(), "1.00", Credit)]).await;
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().starts_with("legs[1]"), "{}", missing.message());

    let after = (h.count("events").await, h.count("postings").await, h.outbox_ids_issued().await);
    assert_eq!(before, after, "a refused transaction moved money");
    assert_eq!((h.balance(&a).await, h.balance(&fees).await), ("20.00".into(), "0.00".into()));
}

#[tokio::test]
async fn the_database_refuses_to_commit_an_unbalanced_transaction() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let acc = h.open(&alice, "USD").await;
    h.fund(&acc, "5.00").await;
    // Bypassing the application: a lone posting of an event written by hand.
    let mut tx = h.db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (event_id, account_id, version, transaction_id, kind, actor, occurred_at, delta, balance_after, envelope, hash)
         VALUES ($1, $2::uuid, 99, $3, 'MoneyDeposited', $4, now(), 7, 12, ''::bytea, ''::bytea)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(&acc)
    .bind(uuid::Uuid::now_v7())
    .bind(uuid::Uuid::now_v7())
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO postings (event_id, transaction_id, account_id, currency, amount)
         SELECT event_id, transaction_id, account_id, 'USD', delta FROM events WHERE version = 99",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let err = tx.commit().await.unwrap_err();
    assert!(err.to_string().contains("does not balance"), "{err}");
    assert_eq!(h.count("events").await, h.system_events().await + 3);
}

#[tokio::test]
async fn a_frozen_settlement_account_makes_deposits_unavailable_without_spending_the_key() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let acc = h.open(&alice, "USD").await;
    let admin = h.admin();
    let settlement = Harness::settlement("USD");
    let freeze =
        pb::FreezeAccountRequest { account_id: settlement.clone(), reason: "audit".into(), idempotency_key: key() };
    h.client.clone().freeze_account(authed(freeze, &admin)).await.unwrap();
    let teller = h.teller();
    let req = pb::DepositRequest {
        account_id: acc.clone(),
        money: usd("3.00"),
        idempotency_key: key(),
        description: String::new(),
    };
    let err = h.client.clone().deposit(authed(req.clone(), &teller)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let unfreeze = pb::UnfreezeAccountRequest { account_id: settlement, reason: "done".into(), idempotency_key: key() };
    h.client.clone().unfreeze_account(authed(unfreeze, &admin)).await.unwrap();
    // The bank's state was the problem, not the request: the same key now succeeds.
    h.client.clone().deposit(authed(req, &teller)).await.unwrap();
    assert_eq!(h.balance(&acc).await, "3.00");
}

#[tokio::test]
async fn staff_do_not_move_money_on_their_own_accounts_and_transactions_have_at_most_eight_legs() {
    let h = Harness::start().await;
    let teller_id = uuid::Uuid::now_v7();
    let teller = h.issuer.token_for(teller_id, &["customer", "teller"], "ACTIVE", Duration::from_secs(600));
    let own = h.open(&teller, "USD").await;
    let err = h.deposit(&teller, &own, "100.00").await.unwrap_err();
    common::assert_denied_by(&err, DomainError::OwnAccount);
    assert_eq!(h.balance(&own).await, "0.00");

    let legs: Vec<_> = (0..9).map(|_| leg(&uuid::Uuid::now_v7().to_string(), "1.00", Debit)).collect();
    let req = pb::PostTransactionRequest { legs, idempotency_key: key(), description: String::new() };
    let err = h.client.clone().post_transaction(authed(req, &h.service())).await.unwrap_err();
    assert_eq!((err.code(), violation_fields(&err)), (Code::InvalidArgument, vec!["legs".to_string()]));
}

/// Reconcile checked each envelope against its own hash
/// but folded the columns: an event row edited in any single column (the
/// guard turned off by a superuser) went unnoticed. Each edit is reported,
/// naming the column, and reverting it makes the event store whole again.
#[tokio::test]
async fn an_event_row_edited_in_any_single_column_is_reported() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let (a, b) = (h.open(&alice, "USD").await, h.open(&alice, "USD").await);
    h.fund(&a, "70.00").await;
    let event_problems = |report: &command_service::reconcile::Report| -> Vec<String> {
        report.problems.iter().filter(|p| !p.starts_with("append-only")).cloned().collect()
    };
    assert!(command_service::reconcile(&h.config).await.unwrap().is_clean());
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only").execute(&h.db).await.unwrap();
    let target = format!("account_id = '{a}' AND kind = 'MoneyDeposited'");
    let (actor, transaction): (uuid::Uuid, uuid::Uuid) =
        sqlx::query_as(&format!("SELECT actor, transaction_id FROM events WHERE {target}"))
            .fetch_one(&h.db)
            .await
            .unwrap();
    // (column, the edit, its undo)
    let edits = [
        ("account_id", format!("account_id = '{b}'"), format!("account_id = '{a}'")),
        ("version", "version = version + 100".into(), "version = version - 100".into()),
        ("delta", "delta = delta + 1".into(), "delta = delta - 1".into()),
        ("balance_after", "balance_after = balance_after + 1".into(), "balance_after = balance_after - 1".into()),
        ("hash", "hash = hash || '\\x00'::bytea".into(), "hash = substring(hash from 1 for 32)".into()),
        ("actor", format!("actor = '{}'", uuid::Uuid::now_v7()), format!("actor = '{actor}'")),
        (
            "transaction_id",
            format!("transaction_id = '{}'", uuid::Uuid::now_v7()),
            format!("transaction_id = '{transaction}'"),
        ),
        (
            "occurred_at",
            "occurred_at = occurred_at + interval '1 ms'".into(),
            "occurred_at = occurred_at - interval '1 ms'".into(),
        ),
        ("kind", "kind = 'MoneyWithdrawn'".into(), "kind = 'MoneyDeposited'".into()),
    ];
    for (column, edit, undo) in edits {
        let (edited_where, undo_where) = match column {
            // The edit moves the row: find it again where it went.
            "account_id" => (target.clone(), format!("account_id = '{b}' AND kind = 'MoneyDeposited'")),
            "kind" => (target.clone(), format!("account_id = '{a}' AND kind = 'MoneyWithdrawn'")),
            _ => (target.clone(), target.clone()),
        };
        sqlx::query(&format!("UPDATE events SET {edit} WHERE {edited_where}")).execute(&h.db).await.unwrap();
        let report = command_service::reconcile(&h.config).await.unwrap();
        assert!(
            report.problems.iter().any(|p| p.contains(&format!("column {column} "))),
            "{column} edited, not reported:\n{report}"
        );
        sqlx::query(&format!("UPDATE events SET {undo} WHERE {undo_where}")).execute(&h.db).await.unwrap();
        let report = command_service::reconcile(&h.config).await.unwrap();
        assert_eq!(event_problems(&report), Vec::<String>::new(), "after undoing the {column} edit");
    }
}
