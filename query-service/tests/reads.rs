//! query-service end to end: real command-service → JetStream → projector →
//! Postgres/Redis read models → query-service, over gRPC.

mod common;

use std::{collections::HashSet, time::Duration};

use bank_proto::v1 as pb;
use bank_testkit::{assert_eventually, authed};
use common::{Bank, at, ts};
use futures::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

fn nf<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Option<Code> {
    r.err().map(|s| s.code())
}

fn reason(s: &tonic::Status) -> String {
    s.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}

#[tokio::test]
async fn the_very_first_read_with_the_consistency_token_shows_the_write() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let a = bank.open(&alice).await.account.unwrap().account_id;
    let b = bank.open(&alice).await.account.unwrap().account_id;
    bank.deposit(&a, "100.00").await;
    let moved = bank.transfer(&alice, &a, &b, "30.25").await;

    let balance = bank.balance(&alice, &a, &moved.consistency_token).await.unwrap();
    assert_eq!(balance.balance.unwrap().amount, "69.75");
    let history = pb::ListTransactionsRequest {
        account_id: b.clone(),
        min_consistency_token: moved.consistency_token.clone(),
        ..Default::default()
    };
    let page = bank.queries.clone().list_transactions(authed(history, &alice)).await.unwrap().into_inner();
    assert_eq!(page.transactions.len(), 1);
    assert_eq!(page.transactions[0].kind, pb::TransactionKind::TransferIn as i32);
    assert_eq!(page.transactions[0].counterparty_account_id, a);
    let receipt = pb::GetTransactionRequest {
        transaction_id: moved.transaction_id.clone(),
        min_consistency_token: String::new(),
    };
    let receipt = bank.queries.clone().get_transaction(authed(receipt, &alice)).await.unwrap().into_inner();
    assert_eq!(receipt.entries.len(), 2);
    let mine = pb::ListAccountsRequest::default();
    assert_eq!(bank.queries.clone().list_accounts(authed(mine, &alice)).await.unwrap().into_inner().accounts.len(), 2);
}

#[tokio::test]
async fn two_hundred_fifty_transactions_page_by_twenty_exactly_once_newest_first() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let a = bank.open(&alice).await.account.unwrap().account_id;
    let mut last = String::new();
    for i in 1..=250 {
        last = bank.deposit(&a, &format!("{i}.00")).await.consistency_token;
    }
    bank.balance(&alice, &a, &last).await.unwrap();

    let (mut seen, mut versions, mut token, mut pages) = (HashSet::new(), Vec::new(), String::new(), 0);
    loop {
        let page = bank.page(&alice, &a, 20, &token).await.unwrap();
        pages += 1;
        for t in &page.transactions {
            assert!(seen.insert(t.version), "version {} listed twice", t.version);
            versions.push(t.version);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!((seen.len(), pages), (250, 13));
    assert!(versions.windows(2).all(|w| w[0] > w[1]), "not newest first");

    // A tampered token, and a token replayed against another account, are refused.
    let first = bank.page(&alice, &a, 20, "").await.unwrap().next_page_token;
    let mut tampered = first.clone();
    tampered.insert(3, 'x');
    let err = bank.page(&alice, &a, 20, &tampered).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let opened = bank.open(&alice).await;
    let other = opened.account.unwrap().account_id;
    bank.balance(&alice, &other, &opened.consistency_token).await.unwrap();
    assert_eq!(bank.page(&alice, &other, 20, &first).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(bank.page(&alice, &a, 101, "").await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_statement_adds_up_over_its_period() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let a = bank.open(&alice).await.account.unwrap().account_id;
    let b = bank.open(&alice).await.account.unwrap().account_id;
    bank.deposit(&a, "10.00").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let from = chrono::Utc::now();
    bank.deposit(&a, "50.00").await;
    let t = bank.transfer(&alice, &a, &b, "15.50").await;
    let to = chrono::Utc::now() + chrono::Duration::seconds(1);
    let req = pb::GetStatementRequest {
        account_id: a.clone(),
        from_time: ts(from),
        to_time: ts(to),
        min_consistency_token: t.consistency_token,
    };
    let s = bank.queries.clone().get_statement(authed(req, &alice)).await.unwrap().into_inner();
    let amount = |m: Option<pb::Money>| m.unwrap().amount;
    assert_eq!(amount(s.opening_balance), "10.00");
    assert_eq!(amount(s.total_credits), "50.00");
    assert_eq!(amount(s.total_debits), "15.50");
    assert_eq!(amount(s.closing_balance), "44.50");
    assert_eq!(s.entries.len(), 2);
    let bad = pb::GetStatementRequest {
        account_id: a,
        from_time: ts(to),
        to_time: ts(from),
        min_consistency_token: String::new(),
    };
    assert_eq!(
        bank.queries.clone().get_statement(authed(bad, &alice)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn another_customers_account_is_not_found_on_every_read_but_an_admin_sees_it() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let mallory = bank.customer();
    let a = bank.open(&alice).await.account.unwrap().account_id;
    let d = bank.deposit(&a, "5.00").await;
    bank.balance(&alice, &a, &d.consistency_token).await.unwrap();

    let q = || bank.queries.clone();
    assert_eq!(
        nf(q()
            .get_account(authed(pb::GetAccountRequest { account_id: a.clone(), ..Default::default() }, &mallory))
            .await),
        Some(Code::NotFound)
    );
    assert_eq!(bank.balance(&mallory, &a, "").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(bank.page(&mallory, &a, 10, "").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        nf(q()
            .get_transaction(authed(
                pb::GetTransactionRequest { transaction_id: d.transaction_id.clone(), ..Default::default() },
                &mallory
            ))
            .await),
        Some(Code::NotFound)
    );
    assert_eq!(
        nf(q()
            .watch_balance(authed(pb::WatchBalanceRequest { account_id: a.clone(), ..Default::default() }, &mallory))
            .await),
        Some(Code::NotFound)
    );
    let unknown = bank.balance(&mallory, &Uuid::now_v7().to_string(), "").await.unwrap_err();
    assert_eq!(unknown.message(), bank.balance(&mallory, &a, "").await.unwrap_err().message());

    let admin = bank.issuer.admin(Uuid::now_v7());
    assert_eq!(bank.balance(&admin, &a, "").await.unwrap().balance.unwrap().amount, "5.00");
}

#[tokio::test]
async fn watch_balance_sees_every_change_in_order_and_ends_when_the_client_leaves() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let opened = bank.open(&alice).await;
    let a = opened.account.unwrap().account_id;
    let req = pb::WatchBalanceRequest { account_id: a.clone(), min_consistency_token: opened.consistency_token };
    let mut stream = bank.queries.clone().watch_balance(authed(req, &alice)).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(bank.metric("query_watch_streams").await, 1.0);

    let writer = async {
        for _ in 0..50 {
            bank.deposit(&a, "1.00").await;
        }
    };
    let reader = async {
        let mut got = Vec::new();
        while got.len() < 50 {
            let u = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .expect("update in time")
                .unwrap()
                .unwrap();
            got.push((u.version, u.balance.unwrap().amount));
        }
        got
    };
    let ((), got) = tokio::join!(writer, reader);
    let expected: Vec<(i64, String)> = (2..=51).map(|v| (v, format!("{}.00", v - 1))).collect();
    assert_eq!(got, expected);

    drop(stream);
    assert_eventually!(
        bank.metric("query_watch_streams").await == 0.0,
        Duration::from_secs(5),
        "the server kept the stream after the client left"
    );
}

#[tokio::test]
async fn balance_reads_survive_a_flushed_cache_which_the_projectors_next_write_fills_again() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let a = bank.open(&alice).await.account.unwrap().account_id;
    let d = bank.deposit(&a, "12.34").await;
    bank.balance(&alice, &a, &d.consistency_token).await.unwrap();

    let mut redis =
        redis::Client::open(bank_testkit::redis_admin_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}*", bank.redis_prefix)).query_async(&mut redis).await.unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut redis).await.unwrap();

    // Past the age at which the view held in memory answers.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let misses = bank.metric("query_cache_misses_total").await;
    assert_eq!(bank.balance(&alice, &a, "").await.unwrap().balance.unwrap().amount, "12.34");
    assert_eq!(bank.metric("query_cache_misses_total").await, misses + 1.0);
    // query-service only reads Redis: the projector is the cache's one writer.
    let refilled: i64 = redis::cmd("EXISTS").arg(&keys).query_async(&mut redis).await.unwrap();
    assert_eq!(refilled, 0, "query-service wrote the cache");
    let d = bank.deposit(&a, "1.00").await;
    // The next read is answered from memory (the change feed), then, once
    // that view is old, from the entry the projector wrote.
    bank.balance(&alice, &a, &d.consistency_token).await.unwrap();
    let recent = bank.metric("query_recent_hits_total").await;
    assert_eq!(bank.balance(&alice, &a, "").await.unwrap().balance.unwrap().amount, "13.34");
    assert_eq!(bank.metric("query_recent_hits_total").await, recent + 1.0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hits = bank.metric("query_cache_hits_total").await;
    assert_eq!(bank.balance(&alice, &a, "").await.unwrap().balance.unwrap().amount, "13.34");
    assert_eq!(bank.metric("query_cache_hits_total").await, hits + 1.0);
}

/// A balance read without a token is answered from the change
/// feed's view in memory, and the feed keeps that view current: once a live
/// stream (fed by the same feed) shows a deposit, the very next plain read
/// shows it too, from memory, without Redis or Postgres.
#[tokio::test]
async fn balance_reads_from_memory_follow_every_change() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let opened = bank.open(&alice).await;
    let a = opened.account.unwrap().account_id;
    let req = pb::WatchBalanceRequest { account_id: a.clone(), min_consistency_token: opened.consistency_token };
    let mut stream = bank.queries.clone().watch_balance(authed(req, &alice)).await.unwrap().into_inner();
    stream.next().await.unwrap().unwrap();
    bank.balance(&alice, &a, "").await.unwrap(); // held in memory from here
    let mut expected = rust_decimal::Decimal::ZERO;
    for round in 1..=3 {
        bank.deposit(&a, "1.25").await;
        expected += rust_decimal::Decimal::new(125, 2);
        let shown = format!("{expected:.2}");
        while stream.next().await.unwrap().unwrap().balance.unwrap().amount != shown {}
        let before = (
            bank.metric("query_recent_hits_total").await,
            bank.metric("query_cache_hits_total").await + bank.metric("query_cache_misses_total").await,
        );
        let plain = bank.balance(&alice, &a, "").await.unwrap();
        assert_eq!(plain.balance.unwrap().amount, shown, "round {round}: memory served an old balance");
        let after = (
            bank.metric("query_recent_hits_total").await,
            bank.metric("query_cache_hits_total").await + bank.metric("query_cache_misses_total").await,
        );
        assert_eq!(after, (before.0 + 1.0, before.1), "round {round}: answered from memory alone");
    }
}

#[tokio::test]
async fn balance_reads_answer_from_postgres_when_redis_is_down() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let bank = Bank::start_with_redis(&format!("redis://{dead}")).await;
    let alice = bank.customer();
    let a = bank.open(&alice).await.account.unwrap().account_id;
    let d = bank.deposit(&a, "7.00").await;
    let b = bank.balance(&alice, &a, &d.consistency_token).await.unwrap();
    assert_eq!(b.balance.unwrap().amount, "7.00");
    assert!(bank.query_config.redis_url.contains(&dead.port().to_string()));
}

#[tokio::test]
async fn a_consistency_token_the_read_model_never_reaches_is_unavailable_within_the_deadline() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let opened = bank.open(&alice).await;
    let a = opened.account.unwrap().account_id;
    let future = bank_domain::consistency::ConsistencyToken::new([(a.parse().unwrap(), 99)]).encode();
    let mut req =
        authed(pb::GetBalanceRequest { account_id: a.clone(), min_consistency_token: future, as_of: None }, &alice);
    // Long enough that the server's tenth of it to answer in is not eaten by
    // a loaded machine (the client would give up first: CANCELLED).
    req.set_timeout(Duration::from_millis(2_000));
    let started = std::time::Instant::now();
    let err = bank.queries.clone().get_balance(req).await.unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::Unavailable, "CONSISTENCY_TIMEOUT".into()));
    assert!(started.elapsed() < Duration::from_secs(3));
    let bad = bank.balance(&alice, &a, "garbage").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn balances_at_an_instant_are_exact_at_just_before_and_just_after_each_posting() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let a = bank.open(&alice).await.account.unwrap().account_id;
    let b = bank.open(&alice).await.account.unwrap().account_id;
    let first = bank.deposit(&a, "10.00").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = bank.transfer(&alice, &a, &b, "3.25").await;
    let (t1, t2) = (first.occurred_at.unwrap(), second.occurred_at.unwrap());
    let balance_at = |as_of: Option<prost_types::Timestamp>| {
        let (mut q, alice, a, ct) = (bank.queries.clone(), alice.clone(), a.clone(), second.consistency_token.clone());
        async move {
            let req = pb::GetBalanceRequest { account_id: a, min_consistency_token: ct, as_of };
            q.get_balance(authed(req, &alice)).await.map(|r| {
                let r = r.into_inner();
                (r.balance.unwrap().amount, r.version)
            })
        }
    };
    // Versions: 1 opened, 2 deposited, 3 transferred out.
    assert_eq!(balance_at(at(&t1, -1)).await.unwrap(), ("0.00".into(), 1), "just before the deposit");
    assert_eq!(balance_at(at(&t1, 0)).await.unwrap(), ("10.00".into(), 2), "at the deposit's instant");
    assert_eq!(balance_at(at(&t1, 1)).await.unwrap(), ("10.00".into(), 2), "just after it");
    assert_eq!(balance_at(at(&t2, -1)).await.unwrap(), ("10.00".into(), 2), "just before the transfer");
    assert_eq!(balance_at(at(&t2, 0)).await.unwrap(), ("6.75".into(), 3), "at the transfer's instant");
    assert_eq!(balance_at(None).await.unwrap(), ("6.75".into(), 3), "now");

    // GetAccount follows the same rule.
    let req = pb::GetAccountRequest { account_id: a.clone(), min_consistency_token: String::new(), as_of: at(&t2, -1) };
    let acc = bank.queries.clone().get_account(authed(req, &alice)).await.unwrap().into_inner();
    assert_eq!((acc.balance.unwrap().amount, acc.version), ("10.00".into(), 2));

    // Before the account existed, or in the future: a clear error naming as_of.
    let opened = bank
        .queries
        .clone()
        .get_account(authed(pb::GetAccountRequest { account_id: a.clone(), ..Default::default() }, &alice))
        .await
        .unwrap()
        .into_inner()
        .opened_at
        .unwrap();
    for as_of in [at(&opened, -1_000_000), at(&t2, 3_600_000_000)] {
        let err = balance_at(as_of).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.get_details_bad_request().unwrap().field_violations.iter().any(|v| v.field == "as_of"));
    }

    // Statements use the rule at both ends: (t1, t2] holds the transfer only,
    // opening at the deposit's balance, closing at the transfer's.
    let req = pb::GetStatementRequest {
        account_id: a.clone(),
        from_time: Some(t1),
        to_time: Some(t2),
        min_consistency_token: second.consistency_token.clone(),
    };
    let s = bank.queries.clone().get_statement(authed(req, &alice)).await.unwrap().into_inner();
    let amount = |m: Option<pb::Money>| m.unwrap().amount;
    assert_eq!((amount(s.opening_balance), amount(s.closing_balance)), ("10.00".into(), "6.75".into()));
    assert_eq!(s.entries.len(), 1);
    assert_eq!(s.entries[0].kind, pb::TransactionKind::TransferOut as i32);
}

/// What a client following the README retries is UNAVAILABLE: a read
/// database that refuses connections (closed to new ones, or at its
/// connection limit) must answer that, with a retry hint, never INTERNAL.
#[tokio::test]
async fn a_read_database_that_refuses_connections_answers_unavailable_with_a_retry_hint() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let a = bank.open(&alice).await.account.unwrap().account_id;
    let moved = bank.deposit(&a, "10.00").await;
    bank.balance(&alice, &a, &moved.consistency_token).await.unwrap();
    let admin = sqlx::PgPool::connect(&bank_testkit::admin_database_url()).await.unwrap();
    let db = &bank.read_db.name;
    let drop_connections = || {
        sqlx::query!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", db).fetch_all(&admin)
    };
    let list = || async {
        let req = pb::ListAccountsRequest::default();
        bank.queries.clone().list_accounts(authed(req, &alice)).await.map(|r| r.into_inner())
    };
    let refused = |refusal: &'static str| {
        move |r: Result<pb::ListAccountsResponse, tonic::Status>| {
            let s = r.expect_err(refusal);
            assert_eq!(s.code(), Code::Unavailable, "{refusal}: {s:?}");
            assert_eq!(reason(&s), "TEMPORARILY_UNAVAILABLE", "{refusal}");
            assert!(s.get_details_retry_info().and_then(|r| r.retry_delay).is_some(), "{refusal}: no retry hint");
        }
    };

    // 55000: the database takes no new connections. (ALTER DATABASE names
    // the database as an identifier, which no bind parameter can be: runtime SQL.)
    sqlx::query(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false")).execute(&admin).await.unwrap();
    drop_connections().await.unwrap();
    // The first read may meet a pooled connection that was just ended; the
    // next ones open new connections and meet the refusal itself.
    for _ in 0..3 {
        refused("closed to new connections")(list().await);
    }
    // 53300: the database is at its connection limit.
    sqlx::query(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true CONNECTION LIMIT 0"))
        .execute(&admin)
        .await
        .unwrap();
    drop_connections().await.unwrap();
    for _ in 0..2 {
        refused("at its connection limit")(list().await);
    }

    sqlx::query(&format!("ALTER DATABASE \"{db}\" CONNECTION LIMIT -1")).execute(&admin).await.unwrap();
    assert_eventually!(
        list().await.is_ok_and(|r| r.accounts.len() == 1),
        Duration::from_secs(10),
        "reads did not come back once the database took connections again"
    );
}
