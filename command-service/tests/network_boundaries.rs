//! NATS and Redis let nobody in without a
//! password, and each service only as far as its work needs. Each attack of
//! the review is made here against the test stack's servers, which run with
//! the same users and permissions as compose (deploy/nats/nats.conf,
//! deploy/redis/users.acl.in); a control shows each step can succeed for the
//! one who may take it, so a refusal is the permission and not a typo.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use bank_testkit::{DbRole, Principal, assert_eventually, nats_admin_url, nats_url_as, redis_admin_url, redis_url_as};
use common::Harness;
use futures::StreamExt;
use redis::AsyncCommands;

/// A JetStream context that gives up quickly: a refused request gets no reply.
async fn js_as(url: &str) -> jetstream::Context {
    let mut js = jetstream::new(bank_platform::nats::connect(url).await.unwrap());
    js.set_timeout(Duration::from_secs(1));
    js
}

/// A harness whose relay has created its stream and published one deposit
/// (two events): the stream an attacker would go after.
async fn bank_with_a_deposit() -> (Harness, u64) {
    let h = Harness::start().await;
    let (_, ada) = h.customer();
    let account = h.open(&ada, "USD").await;
    h.fund(&account, "100.00").await;
    // Account opened, and the deposit on the account and on settlement.
    assert_eventually!(messages_in(&h).await >= 3, Duration::from_secs(10), "the relay published the deposit");
    // Everything committed so far is on the stream (the outbox is empty).
    assert_eventually!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox").fetch_one(&h.db).await.unwrap() == 0,
        Duration::from_secs(10),
        "the relay published everything"
    );
    let stored = messages_in(&h).await;
    (h, stored)
}

/// Messages stored in the harness's event stream (0 before it exists).
async fn messages_in(h: &Harness) -> u64 {
    let admin = js_as(&nats_admin_url()).await;
    match admin.get_stream(&h.config.relay.stream).await {
        Ok(mut stream) => stream.info().await.map_or(0, |i| i.state.messages),
        Err(_) => 0,
    }
}

#[tokio::test]
async fn nats_refuses_clients_without_the_right_password() {
    let addr = std::env::var("NATS_ADDR").unwrap_or_else(|_| "127.0.0.1:4222".into());
    let anonymous = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2)).connect(&addr).await;
    assert!(anonymous.is_err(), "an anonymous client was let in");
    let wrong = bank_platform::nats::connect(&format!("nats://command:not-the-password@{addr}")).await;
    assert!(wrong.is_err(), "a wrong password was let in");
    assert!(bank_platform::nats::connect(&nats_url_as(Principal::Command)).await.is_ok(), "control: the right one is");
}

#[tokio::test]
async fn only_command_service_may_publish_events() {
    let (h, before) = bank_with_a_deposit().await;
    let subject = format!("{}.{}", h.config.relay.subject_prefix, uuid::Uuid::new_v4());
    for forger in [Principal::Projector, Principal::Auth, Principal::Notify] {
        let client = bank_platform::nats::connect(&nats_url_as(forger)).await.unwrap();
        let _ = client.publish(subject.clone(), "forged MoneyDeposited".into()).await;
        // The round trip of a flush: the server has dealt with the publish.
        client.flush().await.unwrap();
        assert_eq!(messages_in(&h).await, before, "{forger:?} could publish an event");
    }
    // Control: command-service's user can, so the count above could move.
    let client = bank_platform::nats::connect(&nats_url_as(Principal::Command)).await.unwrap();
    client.publish(subject, "control".into()).await.unwrap();
    client.flush().await.unwrap();
    assert_eventually!(messages_in(&h).await == before + 1, Duration::from_secs(5), "command's publish was stored");
}

#[tokio::test]
async fn nobody_reads_the_transactions_off_the_wire_and_auth_cannot_read_the_stream() {
    let (h, _) = bank_with_a_deposit().await;
    let everything = format!("{}.>", h.config.relay.subject_prefix);
    let mut spies = Vec::new();
    for spy in [Principal::Projector, Principal::Auth, Principal::Command, Principal::Notify] {
        let client = bank_platform::nats::connect(&nats_url_as(spy)).await.unwrap();
        let sub = client.subscribe(everything.clone()).await.unwrap();
        client.flush().await.unwrap();
        spies.push((spy, client, sub));
    }
    let admin = bank_platform::nats::connect(&nats_admin_url()).await.unwrap();
    let mut control = admin.subscribe(everything).await.unwrap();
    admin.flush().await.unwrap();

    // A new transaction goes over the wire.
    let (_, bo) = h.customer();
    let account = h.open(&bo, "USD").await;
    h.fund(&account, "5.00").await;

    let seen = tokio::time::timeout(Duration::from_secs(5), control.next()).await;
    assert!(matches!(seen, Ok(Some(_))), "control: the admin's subscription sees the new events");
    for (spy, _client, mut sub) in spies {
        let got = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
        assert!(!matches!(got, Ok(Some(_))), "{spy:?} read an event off the wire");
    }

    // auth-service may not open a consumer on the event stream at all.
    let auth = js_as(&nats_url_as(Principal::Auth)).await;
    let stream = auth.get_stream(&h.config.relay.stream).await;
    let consumer = match stream {
        Ok(s) => s.create_consumer(jetstream::consumer::pull::Config::default()).await.is_ok(),
        Err(_) => false,
    };
    assert!(!consumer, "auth-service opened a consumer on the event stream");
}

#[tokio::test]
async fn no_one_purges_or_deletes_the_stream_or_a_message_in_it() {
    let (h, before) = bank_with_a_deposit().await;
    let name = h.config.relay.stream.clone();
    for who in [Principal::Command, Principal::Projector, Principal::Auth, Principal::Notify] {
        let js = js_as(&nats_url_as(who)).await;
        if let Ok(stream) = js.get_stream(&name).await {
            assert!(stream.purge().await.is_err(), "{who:?} purged the stream");
            assert!(stream.delete_message(1).await.is_err(), "{who:?} deleted an event");
        }
        assert!(js.delete_stream(&name).await.is_err(), "{who:?} deleted the stream");
    }
    // The stream itself refuses purges and deletions, even to an admin
    // (deny_purge, deny_delete: only deleting the whole stream remains).
    let admin = js_as(&nats_admin_url()).await;
    let stream = admin.get_stream(&name).await.unwrap();
    assert!(stream.purge().await.is_err(), "the admin purged the stream");
    assert!(stream.delete_message(1).await.is_err(), "the admin deleted an event");
    assert_eq!(messages_in(&h).await, before, "every event is still there");
}

async fn redis_as(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

fn refused(result: redis::RedisResult<redis::Value>, what: &str) {
    let error = result.expect_err(what).to_string().to_lowercase();
    assert!(error.contains("noperm") || error.contains("noauth"), "{what}: refused for another reason: {error}");
}

#[tokio::test]
async fn redis_lets_nobody_tamper_with_the_cache_the_change_channel_or_the_throttle() {
    let test = bank_testkit::unique_prefix("acl");
    let account = bank_testkit::read_model_prefix(&test) + "g1:acct:" + &uuid::Uuid::new_v4().to_string();
    let changes = bank_testkit::read_model_prefix(&test) + "changes";
    let throttle = format!("bank:auth:{test}:login:email:ada@example.com");
    let mut admin = redis_as(&redis_admin_url()).await;
    let _: () = admin.hset(&account, "owner_id", "ada").await.unwrap();
    let _: () = admin.set(&throttle, 5).await.unwrap();

    // Without a password, nothing at all.
    let addr = std::env::var("REDIS_ADDR").unwrap_or_else(|_| "127.0.0.1:6379".into());
    let mut anonymous = redis_as(&format!("redis://{addr}")).await;
    refused(anonymous.hset(&account, "owner_id", "mallory").await, "anonymous HSET");
    refused(anonymous.hgetall(&account).await, "anonymous HGETALL");

    // query-service reads the cache and writes nothing at all: no entry
    // (not even through the projector's script), no change, no throttle.
    let mut query = redis_as(&redis_url_as(Principal::Query)).await;
    let _: std::collections::HashMap<String, String> = query.hgetall(&account).await.expect("control: query reads");
    refused(query.hset(&account, "owner_id", "mallory").await, "query HSET owner_id");
    let script = redis::cmd("EVAL")
        .arg(bank_readmodel::UPSERT_SCRIPT)
        .arg(1)
        .arg(&account)
        .arg(99)
        .arg(60)
        .arg("owner_id")
        .arg("mallory")
        .query_async::<redis::Value>(&mut query)
        .await;
    refused(script, "query EVAL of the cache's own script");
    refused(query.publish(&changes, "{\"false\":\"update\"}").await, "query PUBLISH on the change channel");
    refused(query.del(&throttle).await, "query DEL of a throttle key");
    refused(query.incr(&throttle, -5).await, "query lowering a throttle count");
    refused(query.del(&account).await, "query DEL of a cache entry");

    // command-service reads the cache for reconcile, and nothing more.
    let mut command = redis_as(&redis_url_as(Principal::Command)).await;
    refused(command.hset(&account, "owner_id", "mallory").await, "command HSET owner_id");
    refused(command.del(&throttle).await, "command DEL of a throttle key");

    // The projector writes read models only: not the throttle, not the key list.
    let mut projector = redis_as(&redis_url_as(Principal::Projector)).await;
    let _: () = projector.publish(&changes, "{}").await.expect("control: the projector announces changes");
    refused(projector.del(&throttle).await, "projector DEL of a throttle key");
    refused(projector.hgetall(&throttle).await, "projector reading the throttle");
    refused(redis::cmd("KEYS").arg("*").query_async(&mut projector).await, "projector KEYS");

    // auth-service keeps its throttle and touches no read model.
    let mut auth = redis_as(&redis_url_as(Principal::Auth)).await;
    let _: i64 = auth.incr(&throttle, 1).await.expect("control: auth counts failures");
    refused(auth.hset(&account, "owner_id", "mallory").await, "auth HSET owner_id");
    refused(auth.publish(&changes, "{}").await, "auth PUBLISH on the change channel");

    let owner: String = admin.hget(&account, "owner_id").await.unwrap();
    assert_eq!(owner, "ada", "the cache entry is untouched");
    let failures: i64 = admin.get(&throttle).await.unwrap();
    assert_eq!(failures, 6, "the throttle still counts (only auth's own increment)");
    let _: () = admin.del(&[&account, &throttle]).await.unwrap();
}

/// Connects to `url`; the error text when refused.
async fn pg_refuses(url: &str) -> Option<String> {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url).await.err().map(|e| e.to_string())
}

/// Runs `sql` on `conn`; the error text, which must be a refusal of privilege.
async fn refused_sql(conn: &mut sqlx::PgConnection, sql: &str) {
    let error = sqlx::query(sql).execute(&mut *conn).await.expect_err(sql).to_string();
    assert!(
        error.contains("permission denied") || error.contains("must be owner") || error.contains("must be superuser"),
        "{sql}: refused for another reason: {error}"
    );
}

#[tokio::test]
async fn postgres_asks_everyone_for_a_password() {
    let admin = bank_testkit::admin_database_url();
    let host_port = admin.rsplit_once('@').map_or(admin.as_str(), |(_, r)| r).split('/').next().unwrap().to_owned();
    for user in ["postgres", "bank_command", "bank_command_owner"] {
        let refusal = pg_refuses(&format!("postgres://{user}@{host_port}/postgres")).await;
        assert!(refusal.is_some(), "{user} got in without a password");
        let refusal = pg_refuses(&format!("postgres://{user}:wrong@{host_port}/postgres")).await;
        assert!(refusal.unwrap_or_default().contains("password authentication failed"), "{user}: wrong password");
    }
}

#[tokio::test]
async fn command_services_role_can_neither_rewrite_history_nor_turn_off_its_guards() {
    use sqlx::Connection;
    let (h, _) = bank_with_a_deposit().await;
    let url = h.config.database_url.clone();
    assert!(url.starts_with("postgres://bank_command:"), "the service runs as its runtime role");
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    // The attack of the review: replica mode (triggers off), then rewrite.
    refused_sql(&mut conn, "SET session_replication_role = replica").await;
    refused_sql(&mut conn, "ALTER TABLE events DISABLE TRIGGER USER").await;
    for (table, column) in
        [("events", "account_id"), ("postings", "account_id"), ("audit_log", "actor"), ("reversals", "reason")]
    {
        refused_sql(&mut conn, &format!("UPDATE {table} SET {column} = {column}")).await;
        refused_sql(&mut conn, &format!("DELETE FROM {table}")).await;
        refused_sql(&mut conn, &format!("TRUNCATE {table}")).await;
    }
    refused_sql(&mut conn, "DELETE FROM holds").await;
    refused_sql(&mut conn, "DROP TABLE events").await;
    refused_sql(&mut conn, "CREATE TABLE mine (x int)").await;
    refused_sql(&mut conn, "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'").await;
    refused_sql(&mut conn, "CREATE DATABASE mine").await;
    refused_sql(&mut conn, "CREATE ROLE mine").await;
    // Control: what the service does, it may.
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut conn).await.unwrap();
    assert!(events >= 3);
    let _ = conn.close().await;
}

/// With command-service's own password, money is added by hand: to the
/// balance alone, with a version bump, on a new account, or by moving the
/// version back so old postings count again. Postgres refuses each at
/// commit; the customer spends only what the postings explain.
#[tokio::test]
async fn a_stolen_command_password_cannot_move_a_balance_without_postings() {
    use sqlx::Connection;
    let (h, _) = bank_with_a_deposit().await;
    let (_, ada) = h.customer();
    let account = h.open(&ada, "USD").await;
    h.fund(&account, "100.00").await;
    let mut conn = sqlx::PgConnection::connect(&h.config.database_url).await.unwrap();
    let id = uuid::Uuid::parse_str(&account).unwrap();
    let forgeries = [
        format!("UPDATE accounts SET balance = balance + 1000 WHERE id = '{id}'"),
        format!("UPDATE accounts SET balance = balance + 1000, version = version + 1 WHERE id = '{id}'"),
        format!("UPDATE accounts SET version = 1 WHERE id = '{id}'"),
        format!(
            "INSERT INTO accounts (id, owner_id, kind, currency, balance, status, version, last_hash, opened_at)
             SELECT gen_random_uuid(), owner_id, kind, currency, 1000, status, 1, last_hash, now()
             FROM accounts WHERE id = '{id}'"
        ),
    ];
    for forgery in &forgeries {
        let mut tx = conn.begin().await.unwrap();
        sqlx::query(forgery).execute(&mut *tx).await.expect("the statement itself is allowed");
        let error = tx.commit().await.expect_err(forgery).to_string();
        assert!(
            error.contains("postings") || error.contains("went back"),
            "{forgery}: refused for another reason: {error}"
        );
    }
    let balance: rust_decimal::Decimal =
        sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1").bind(id).fetch_one(&mut conn).await.unwrap();
    assert_eq!(balance, rust_decimal::Decimal::from(100));
    // Control: the money path itself still moves it.
    h.fund(&account, "1.00").await;
    let _ = conn.close().await;
}

#[tokio::test]
async fn the_read_side_roles_reach_only_the_read_models_and_query_service_writes_nothing() {
    use sqlx::Connection;
    let write = bank_testkit::TestDb::migrated("pgw", DbRole::CommandOwner, &command_service::MIGRATOR).await;
    let read = bank_testkit::TestDb::migrated("pgr", DbRole::ReadOwner, &bank_readmodel::MIGRATOR).await;
    // The write model is command-service's alone.
    for role in [DbRole::Query, DbRole::ReadOwner, DbRole::AuthOwner, DbRole::Auth] {
        let refusal = pg_refuses(&write.url_as(role)).await;
        assert!(refusal.unwrap_or_default().contains("permission denied"), "{role:?} reached the write model");
    }
    // The projector reads the events' envelopes (a rebuild from the event
    // store), what it receives on the stream anyway, and nothing else.
    let mut replay = sqlx::PgConnection::connect(&write.url_as(DbRole::Projector)).await.unwrap();
    let _: i64 =
        sqlx::query_scalar("SELECT count(envelope) FROM events").fetch_one(&mut replay).await.expect("control");
    for sql in [
        "SELECT count(actor) FROM events",
        "SELECT count(balance_after) FROM events",
        "SELECT count(*) FROM accounts",
        "SELECT count(*) FROM idempotency",
        "SELECT count(*) FROM audit_log",
        "SELECT count(*) FROM outbox",
        "INSERT INTO outbox DEFAULT VALUES",
    ] {
        refused_sql(&mut replay, sql).await;
    }
    let mut query = sqlx::PgConnection::connect(&read.url_as(DbRole::Query)).await.unwrap();
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM account_view").fetch_one(&mut query).await.expect("control");
    refused_sql(&mut query, "UPDATE account_view SET owner_id = owner_id").await;
    refused_sql(&mut query, "DELETE FROM transaction_history").await;
    refused_sql(&mut query, "INSERT INTO dead_letters (subject, reason, payload) VALUES ('x', 'y', '')").await;
    let mut projector = sqlx::PgConnection::connect(&read.url_as(DbRole::Projector)).await.unwrap();
    refused_sql(&mut projector, "ALTER TABLE account_view ADD COLUMN x int").await;
    refused_sql(&mut projector, "SET session_replication_role = replica").await;
}

/// Publishes `payload` on the standing subject of `user` (as the NATS admin:
/// whoever stole a way to publish there).
async fn publish_on_feed(h: &Harness, user: uuid::Uuid, payload: Vec<u8>) {
    bank_testkit::publish_stored(&format!("{}.{user}", h.config.standing_feed.subject_prefix), payload).await;
}

/// A customer's standing as auth-service would publish it.
fn standing(user: uuid::Uuid, status: &str, seq: i64) -> bank_platform::standing::Standing {
    bank_platform::standing::Standing {
        user_id: user,
        status: status.into(),
        roles: vec!["customer".into()],
        seq,
        previous_status: None,
    }
}

/// A standing nobody signed (or signed with
/// another key, or for another user) cannot mask a later suspension with a
/// huge sequence number; the real suspension stops the customer's money.
#[tokio::test]
async fn a_standing_nobody_signed_cannot_mask_a_suspension() {
    let h = Harness::start().await;
    let (ada, ada_token) = h.customer();
    let (_, bo_token) = h.customer();
    let from = h.open(&ada_token, "USD").await;
    let to = h.open(&bo_token, "USD").await;
    h.fund(&from, "100.00").await;
    let mask = standing(ada, "ACTIVE", 1_000_000);
    let stranger = bank_platform::auth::TokenSigner::generate();
    publish_on_feed(&h, ada, serde_json::to_vec(&mask).unwrap()).await;
    publish_on_feed(&h, ada, stranger.sign_standing(&mask).unwrap().into_bytes()).await;
    // Signed by the real key, but about someone else, on Ada's subject.
    let other = standing(uuid::Uuid::now_v7(), "ACTIVE", 1_000_000);
    publish_on_feed(&h, ada, h.issuer.sign_standing(&other).into_bytes()).await;
    h.transfer(&ada_token, &from, &to, "1.00").await.expect("control: none of those changed anything");

    publish_on_feed(&h, ada, h.issuer.sign_standing(&standing(ada, "SUSPENDED", 5)).into_bytes()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match h.transfer(&ada_token, &from, &to, "1.00").await {
            Err(e) => break e,
            Ok(_) => assert!(std::time::Instant::now() < deadline, "the suspension was masked"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (refused.code(), common::reason(&refused)),
        (tonic::Code::FailedPrecondition, "CUSTOMER_NOT_ACTIVE".into())
    );
    let refusals = bank_testkit::metric(h.running.as_ref().unwrap().http_addr, "user_standings_refused_total").await;
    assert!(refusals >= 3.0, "the three forgeries were counted: {refusals}");
}

/// The projector's durable consumers are its own: no other service's user
/// pulls the events they hold (they would never reach the read models). And
/// no service makes a stream: one over the projector's inbox subjects kept
/// copies of what the projector received.
#[tokio::test]
async fn no_service_pulls_the_projectors_events_or_makes_a_stream() {
    use jetstream::{consumer::pull, stream};
    let (h, stored) = bank_with_a_deposit().await;
    let stream_name = h.config.relay.stream.clone();
    let admin = js_as(&nats_admin_url()).await;
    let events = admin.get_stream(&stream_name).await.unwrap();
    // The projector's durable for a partition, as the projector makes it.
    let durable = "projector-p0";
    events.create_consumer(pull::Config { durable_name: Some(durable.into()), ..Default::default() }).await.unwrap();
    for who in [Principal::Query, Principal::Auth, Principal::Command, Principal::Notify] {
        let client = bank_platform::nats::connect(&nats_url_as(who)).await.unwrap();
        let next = format!("$JS.API.CONSUMER.MSG.NEXT.{stream_name}.{durable}");
        let pulled =
            tokio::time::timeout(Duration::from_secs(1), client.request(next, r#"{"batch":10,"no_wait":true}"#.into()))
                .await;
        assert!(!matches!(pulled, Ok(Ok(_))), "{who:?} pulled the projector's events: {pulled:?}");
        let js = js_as(&nats_url_as(who)).await;
        if let Ok(s) = js.get_stream(&stream_name).await {
            assert!(s.delete_consumer(durable).await.is_err(), "{who:?} deleted the projector's consumer");
        }
    }
    let info = events.consumer_info(durable).await.unwrap();
    assert_eq!((info.delivered.stream_sequence, info.num_pending), (0, stored), "nothing was taken from the projector");
    // The projector makes consumers on event subjects only: none that reads the standings.
    let projector = js_as(&nats_url_as(Principal::Projector)).await;
    let feed = &h.config.standing_feed;
    if let Ok(users) = projector.get_stream(&feed.stream).await {
        let reader = pull::Config {
            name: Some(format!("peek-{}", uuid::Uuid::new_v4().simple())),
            filter_subject: format!("{}.>", feed.subject_prefix),
            ..Default::default()
        };
        assert!(users.create_consumer(reader).await.is_err(), "the projector opened a consumer on the standings");
    }

    let unique = uuid::Uuid::new_v4().simple().to_string();
    for who in [Principal::Auth, Principal::Command, Principal::Query, Principal::Projector, Principal::Notify] {
        let name = format!("STEAL_{}_{unique}", who.user().to_uppercase());
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("_INBOX_projector.{name}.>")],
            ..Default::default()
        };
        let js = js_as(&nats_url_as(who)).await;
        assert!(js.create_stream(config).await.is_err(), "{who:?} made a stream");
        assert!(admin.get_stream(&name).await.is_err(), "{who:?}'s stream exists");
    }
}

/// With command-service's own database password, a suspended customer is
/// made active again by hand: the columns rewritten, the signed standing
/// swapped for another user's, or taken away. A standing takes effect only
/// from a signature that verifies for its user, so none of that lets her
/// move money; each tampered row is refused and counted.
#[tokio::test]
async fn a_standing_rewritten_in_the_database_does_not_lift_a_suspension() {
    use sqlx::Connection;
    let h = Harness::start().await;
    let (ada, ada_token) = h.customer();
    let (bo, bo_token) = h.customer();
    let from = h.open(&ada_token, "USD").await;
    let to = h.open(&bo_token, "USD").await;
    h.fund(&from, "100.00").await;
    publish_on_feed(&h, bo, h.issuer.sign_standing(&standing(bo, "ACTIVE", 4)).into_bytes()).await;
    publish_on_feed(&h, ada, h.issuer.sign_standing(&standing(ada, "SUSPENDED", 5)).into_bytes()).await;
    assert_eventually!(
        h.transfer(&ada_token, &from, &to, "1.00").await.is_err(),
        Duration::from_secs(10),
        "control: the suspension reached the money path"
    );
    let mut conn = sqlx::PgConnection::connect(&h.config.database_url).await.unwrap();
    let counted = || async {
        bank_testkit::metric(h.running.as_ref().unwrap().http_addr, "command_standings_unverified_total").await
    };
    let tamperings = [
        "UPDATE user_standing SET status = 'ACTIVE' WHERE user_id = $1".to_owned(),
        "UPDATE user_standing SET status = 'ACTIVE', jws = (SELECT jws FROM user_standing WHERE user_id = $2) WHERE user_id = $1"
            .to_owned(),
        "UPDATE user_standing SET status = 'ACTIVE', jws = NULL WHERE user_id = $1".to_owned(),
    ];
    for tampering in &tamperings {
        sqlx::query(tampering).bind(ada).bind(bo).execute(&mut conn).await.expect("the statement itself is allowed");
        let before = counted().await;
        let refused = h.transfer(&ada_token, &from, &to, "1.00").await.expect_err(tampering);
        assert_eq!(
            (refused.code(), common::reason(&refused)),
            (tonic::Code::FailedPrecondition, "CUSTOMER_NOT_ACTIVE".into()),
            "{tampering}"
        );
        if !tampering.contains("SET status = 'ACTIVE' WHERE") {
            assert!(counted().await > before, "{tampering}: not reported");
        }
    }
    // Bo, whose row nobody touched, still moves money.
    h.fund(&to, "5.00").await;
    let back = h.open(&bo_token, "USD").await;
    h.transfer(&bo_token, &to, &back, "1.00").await.expect("control: an untouched standing still stands");
    let _ = conn.close().await;
}

/// No other service can silence the standing consumer through which
/// suspensions reach the money path: not change its filter, not delete it,
/// not pull its messages.
#[tokio::test]
async fn no_other_service_can_touch_command_services_standing_consumer() {
    use jetstream::consumer::pull;
    let h = Harness::start().await;
    let stream_name = h.config.standing_feed.stream.clone();
    let admin = js_as(&nats_admin_url()).await;
    assert_eventually!(
        match admin.get_stream(&stream_name).await {
            Ok(s) => s.consumer_info("command-service-standing").await.is_ok(),
            Err(_) => false,
        },
        Duration::from_secs(10),
        "command-service opened its standing consumer"
    );
    let name = "command-service-standing";
    for who in [Principal::Projector, Principal::Query, Principal::Auth, Principal::Notify] {
        let js = js_as(&nats_url_as(who)).await;
        let Ok(stream) = js.get_stream(&stream_name).await else { continue };
        let narrowed = pull::Config {
            durable_name: Some(name.into()),
            filter_subject: format!("{}.00000000-0000-0000-0000-000000000000", h.config.standing_feed.subject_prefix),
            ..Default::default()
        };
        assert!(stream.create_consumer(narrowed).await.is_err(), "{who:?} changed the consumer's filter");
        assert!(stream.delete_consumer(name).await.is_err(), "{who:?} deleted the consumer");
        assert!(stream.consumer_info(name).await.is_err(), "{who:?} read the consumer's state");
        // A pull request straight to the consumer gets no answer.
        let client = bank_platform::nats::connect(&nats_url_as(who)).await.unwrap();
        let next = format!("$JS.API.CONSUMER.MSG.NEXT.{stream_name}.{name}");
        let pulled =
            tokio::time::timeout(Duration::from_secs(1), client.request(next, r#"{"batch":1,"no_wait":true}"#.into()))
                .await;
        assert!(!matches!(pulled, Ok(Ok(_))), "{who:?} pulled the consumer's messages: {pulled:?}");
    }
    let info = admin.get_stream(&stream_name).await.unwrap().consumer_info(name).await.unwrap();
    assert_eq!(info.config.filter_subject, "", "the consumer still reads every standing");
}

/// A teller's role revoked after the token was issued: the token still says
/// teller, but the answer to their own transfer no longer shows them the
/// payee's balance (what the caller may see follows the newest standing,
/// as what they may do does).
#[tokio::test]
async fn a_revoked_teller_no_longer_sees_the_payees_balance_in_an_answer() {
    let h = Harness::start().await;
    let teller = uuid::Uuid::now_v7();
    let teller_token = h.issuer.teller(teller);
    let (_, payee_token) = h.customer();
    let mine = h.open(&teller_token, "USD").await;
    let payee = h.open(&payee_token, "USD").await;
    h.fund(&mine, "500.00").await;
    let named = |r: &bank_proto::v1::MoneyMovementResponse| -> Vec<String> {
        let mut ids: Vec<String> = r.balances_after.iter().map(|b| b.account_id.clone()).collect();
        ids.sort();
        ids
    };
    let before = h.transfer(&teller_token, &mine, &payee, "1.00").await.unwrap();
    let mut both = vec![mine.clone(), payee.clone()];
    both.sort();
    assert_eq!(named(&before), both, "control: staff see every account in an answer");

    let revoked = bank_platform::standing::Standing {
        user_id: teller,
        status: "ACTIVE".into(),
        roles: vec!["customer".into()],
        seq: 1_000,
        previous_status: Some("ACTIVE".into()),
    };
    publish_on_feed(&h, teller, h.issuer.sign_standing(&revoked).into_bytes()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let after = h.transfer(&teller_token, &mine, &payee, "0.01").await.unwrap();
        if named(&after) == vec![mine.clone()] {
            break;
        }
        assert_eq!(named(&after), both, "an answer names the caller's account and maybe the payee's, nothing else");
        assert!(std::time::Instant::now() < deadline, "the revoked teller still sees the payee's balance");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
