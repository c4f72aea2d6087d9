//! Consistency tokens and streams as attack tools: a token naming someone
//! else's account must not make a read wait (its timing would tell how that
//! account moves), and one caller must not park or hold open enough calls to
//! starve the others.

mod common;

use std::time::{Duration, Instant};

use bank_domain::consistency::ConsistencyToken;
use bank_proto::v1 as pb;
use bank_testkit::authed;
use common::Bank;
use futures::future::join_all;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

/// A token for `account` at a version it will never reach.
fn unreachable_token(account: &str) -> String {
    ConsistencyToken::new([(Uuid::parse_str(account).unwrap(), 1_000_000)]).encode()
}

fn balance_request(
    account: &str,
    token: &str,
    caller: &str,
    timeout: Duration,
) -> tonic::Request<pb::GetBalanceRequest> {
    let mut req = authed(
        pb::GetBalanceRequest { account_id: account.into(), min_consistency_token: token.into(), as_of: None },
        caller,
    );
    req.set_timeout(timeout);
    req
}

#[tokio::test]
async fn a_token_naming_someone_elses_account_is_refused_before_any_wait() {
    let bank = Bank::start().await;
    let (alice, bob) = (bank.customer(), bank.customer());
    let opened = bank.open(&alice).await;
    let a = opened.account.unwrap().account_id;
    // Both accounts projected before the reads below, which wait on nothing.
    bank.balance(&alice, &a, &opened.consistency_token).await.unwrap();
    let opened = bank.open(&bob).await;
    let b = opened.account.unwrap().account_id;
    bank.balance(&bob, &b, &opened.consistency_token).await.unwrap();

    let started = Instant::now();
    let err = bank
        .queries
        .clone()
        .get_balance(balance_request(&b, &unreachable_token(&a), &bob, Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "the read waited {:?}", started.elapsed());
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> =
        err.get_details_bad_request().unwrap().field_violations.into_iter().map(|v| v.field).collect();
    assert_eq!(fields, vec!["min_consistency_token"]);

    // Every read that takes a token refuses it the same way.
    let list = pb::ListAccountsRequest { min_consistency_token: unreachable_token(&a), owner_id: String::new() };
    let err = bank.queries.clone().list_accounts(authed(list, &bob)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Staff may see the account, so for them the token is only a wait.
    let err = bank
        .queries
        .clone()
        .get_balance(balance_request(&b, &unreachable_token(&a), &bank.teller(), Duration::from_millis(800)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[tokio::test]
async fn one_caller_cannot_park_more_than_its_share_of_reads() {
    let bank = Bank::start().await;
    let (alice, bob) = (bank.customer(), bank.customer());
    let opened = bank.open(&alice).await;
    let a = opened.account.unwrap().account_id;
    bank.balance(&alice, &a, &opened.consistency_token).await.unwrap();
    let opened = bank.open(&bob).await;
    let b = opened.account.unwrap().account_id;
    // Projected before the reads below (they carry no token).
    bank.balance(&bob, &b, &opened.consistency_token).await.unwrap();
    let parked_token = unreachable_token(&a);

    let parked = join_all((0..query_service::api::MAX_PARKED_PER_CALLER).map(|_| {
        let (mut q, req) = (bank.queries.clone(), balance_request(&a, &parked_token, &alice, Duration::from_secs(3)));
        tokio::spawn(async move { q.get_balance(req).await })
    }));
    let probe = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let over = bank
            .queries
            .clone()
            .get_balance(balance_request(&a, &parked_token, &alice, Duration::from_secs(3)))
            .await
            .unwrap_err();
        assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // Another caller reads as usual meanwhile, and so does alice without a token.
        bank.balance(&bob, &b, "").await.unwrap();
        bank.balance(&alice, &a, "").await.unwrap();
    };
    let (parked, ()) = tokio::join!(parked, probe);
    for r in parked {
        assert_eq!(r.unwrap().unwrap_err().code(), Code::Unavailable);
    }
    // The parked slots were given back.
    let err = bank
        .queries
        .clone()
        .get_balance(balance_request(&a, &parked_token, &alice, Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
}

#[tokio::test]
async fn one_caller_cannot_hold_more_than_its_share_of_streams() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let opened = bank.open(&alice).await;
    let a = opened.account.unwrap().account_id;
    bank.balance(&alice, &a, &opened.consistency_token).await.unwrap();
    let watch = || {
        let (mut q, a, alice) = (bank.queries.clone(), a.clone(), alice.clone());
        async move {
            let req = pb::WatchBalanceRequest { account_id: a, min_consistency_token: String::new() };
            let mut stream = q.watch_balance(authed(req, &alice)).await?.into_inner();
            stream.message().await?;
            Ok::<_, tonic::Status>(stream)
        }
    };
    let mut open = Vec::new();
    for _ in 0..query_service::api::MAX_STREAMS_PER_CALLER {
        open.push(watch().await.unwrap());
    }
    let err = watch().await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match watch().await {
            Ok(s) => {
                open.push(s);
                break;
            }
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("a closed stream's slot was not given back: {e:?}"),
        }
    }
}

#[tokio::test]
async fn a_stream_ends_when_the_token_that_opened_it_expires() {
    let bank = Bank::start().await;
    let user = Uuid::now_v7();
    let long = bank.issuer.customer(user);
    let opened = bank.open(&long).await;
    let a = opened.account.unwrap().account_id;
    bank.balance(&long, &a, &opened.consistency_token).await.unwrap();
    let short = bank.issuer.token_for(user, &["customer"], "ACTIVE", Duration::from_secs(3));
    let req = pb::WatchBalanceRequest { account_id: a.clone(), min_consistency_token: String::new() };
    let mut stream = bank.queries.clone().watch_balance(authed(req, &short)).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    let started = Instant::now();
    let end =
        tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("the stream outlived its token");
    assert_eq!(end.unwrap_err().code(), Code::Unauthenticated);
    assert!(started.elapsed() < Duration::from_secs(5), "ended {:?} after opening", started.elapsed());
}

/// Publishes `user`'s standing on the feed the way auth-service does, signed
/// by the token issuer (as the NATS admin here: the test plays auth-service).
async fn publish_standing(bank: &Bank, user: Uuid, status: &str, roles: &[&str], seq: i64) {
    let standing = bank_platform::standing::Standing {
        user_id: user,
        status: status.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        seq,
        previous_status: None,
    };
    let subject = format!("{}.{user}", bank.query_config.standing_feed.subject_prefix);
    // command-service creates the stream as it starts following the feed.
    bank_testkit::publish_stored(&subject, bank.issuer.sign_standing(&standing).into_bytes()).await;
}

/// A suspension ends an open WatchBalance stream at
/// once, though the token that opened it is still valid; a standing that
/// takes nothing away does not; a new stream on the old token is refused.
#[tokio::test]
async fn a_stream_ends_at_once_when_its_caller_is_suspended() {
    let bank = Bank::start().await;
    let user = Uuid::now_v7();
    let token = bank.issuer.customer(user); // valid for 15 minutes, standing version 0
    let opened = bank.open(&token).await;
    let a = opened.account.unwrap().account_id;
    bank.balance(&token, &a, &opened.consistency_token).await.unwrap();
    let req = pb::WatchBalanceRequest { account_id: a.clone(), min_consistency_token: String::new() };
    let mut stream = bank.queries.clone().watch_balance(authed(req.clone(), &token)).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();

    // Control: a newer standing that takes nothing away leaves it open.
    publish_standing(&bank, user, "ACTIVE", &["customer"], 1).await;
    let quiet = tokio::time::timeout(Duration::from_secs(2), stream.message()).await;
    assert!(quiet.is_err(), "the stream ended on a standing that changed nothing: {quiet:?}");

    publish_standing(&bank, user, "SUSPENDED", &["customer"], 2).await;
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream outlived the suspension");
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.get_details_error_info().unwrap().reason, "STANDING_REVOKED");
    assert!(started.elapsed() < Duration::from_secs(5), "ended {:?} after the suspension", started.elapsed());

    let again = bank.queries.clone().watch_balance(authed(req, &token)).await.unwrap_err();
    assert_eq!(again.code(), Code::PermissionDenied, "a new stream on the old token: {again:?}");
}

/// With the projector's Redis password (the one user that writes the cache),
/// Mallory rewrites the owner of Alice's cached entry and publishes a
/// change notice naming herself: neither carries the projector's seal, so
/// query-service believes neither, counts them, and Mallory reads nothing.
#[tokio::test]
async fn a_cache_entry_or_change_rewritten_with_a_stolen_redis_password_reads_nobody_elses_account() {
    use redis::AsyncCommands;
    let bank = Bank::start().await;
    let mallory_id = Uuid::now_v7();
    let (alice, mallory) = (bank.customer(), bank.issuer.customer(mallory_id));
    let a = bank.open(&alice).await.account.unwrap().account_id;
    let moved = bank.deposit(&a, "250.00").await;
    bank.balance(&alice, &a, &moved.consistency_token).await.unwrap();
    let id = Uuid::parse_str(&a).unwrap();
    let read = sqlx::PgPool::connect(&bank.read_db.admin_url()).await.unwrap();
    let generation = bank_readmodel::active_generation(&read).await.unwrap();
    let key = bank_readmodel::CacheKeys::new(bank.redis_prefix.clone()).account(generation, id);
    let stolen = redis::Client::open(bank_testkit::redis_url_as(bank_testkit::Principal::Projector)).unwrap();
    let mut stolen = stolen.get_multiplexed_async_connection().await.unwrap();
    let admin = redis::Client::open(bank_testkit::redis_admin_url()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let entry: std::collections::HashMap<String, String> = admin.hgetall(&key).await.unwrap();
    assert!(entry.contains_key("seal"), "control: the projector cached and sealed Alice's account: {entry:?}");
    let mallory_reads = || async {
        let balance = bank.queries.clone().get_balance(balance_request(&a, "", &mallory, Duration::from_secs(5))).await;
        let history = pb::ListTransactionsRequest { account_id: a.clone(), ..Default::default() };
        let history = bank.queries.clone().list_transactions(authed(history, &mallory)).await;
        (balance.map(|_| ()).map_err(|s| s.code()), history.map(|_| ()).map_err(|s| s.code()))
    };
    let forgeries = bank.metric("query_cache_forgeries_total").await;

    // 1. The entry, rewritten in place (and past any version asked for).
    let mut rewrite = redis::cmd("HSET");
    rewrite.arg(&key).arg("owner_id").arg(mallory_id.to_string()).arg("version").arg(1000);
    let _: i64 = rewrite.query_async(&mut stolen).await.unwrap();
    // Past the in-memory view's age, so the read goes to Redis.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(mallory_reads().await, (Err(Code::NotFound), Err(Code::NotFound)));
    assert!(bank.metric("query_cache_forgeries_total").await > forgeries, "the forged entry was not noticed");

    // 2. A change notice naming Mallory the owner, unsealed and with a made-up seal.
    for seal in [None, Some("00".repeat(32))] {
        let mut view = bank_readmodel::from_cache(id, &entry).unwrap();
        view.owner_id = mallory_id;
        view.version += 2_000;
        let change = bank_readmodel::AccountChange {
            account: view,
            transaction_id: None,
            occurred_at: chrono::Utc::now(),
            seal,
        };
        let channel = bank_readmodel::CacheKeys::new(bank.redis_prefix.clone()).changes_channel();
        let _: i64 = stolen.publish(&channel, serde_json::to_string(&change).unwrap()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(mallory_reads().await, (Err(Code::NotFound), Err(Code::NotFound)));
    }

    // Alice still reads her own account, at its real balance.
    let balance = bank.balance(&alice, &a, "").await.unwrap();
    assert_eq!(balance.balance.unwrap().amount, "250.00");
}
