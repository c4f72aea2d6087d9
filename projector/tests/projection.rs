//! The projector against real NATS JetStream, Postgres and Redis, fed by a
//! real command-service: the read models must equal the fold of the event
//! store whatever the redeliveries, duplicates, restarts and rebuilds.

use std::{collections::HashMap, time::Duration};

use bank_platform::{CancellationToken, config::ProcessEnv, service::Running};
use bank_proto::v1::{self as pb, account_command_service_client::AccountCommandServiceClient};
use bank_testkit::{DbRole, Principal, TestDb, TestIssuer, assert_eventually, authed, read_cache_key};
use prost::Message;
use rust_decimal::Decimal;
use sqlx::PgPool;
use tonic::transport::Channel;
use uuid::Uuid;

struct World {
    issuer: TestIssuer,
    _command: Running,
    client: AccountCommandServiceClient<Channel>,
    write_db: PgPool,
    read_db: PgPool,
    redis: bank_platform::redis::Redis,
    command: command_service::Config,
    projector: projector::Config,
    /// The read database as command-service's role (reconcile reads it so).
    read_as_command: String,
}

fn usd(a: &str) -> Option<pb::Money> {
    Some(pb::Money { currency_code: "USD".into(), amount: a.into() })
}

/// A USD deposit event on `account` at `version`, hand-made (unsigned, its
/// hash unset): (amount, balance before, balance after).
fn deposited(
    account: &str,
    version: i64,
    (amount, before, after): (&str, &str, &str),
    description: &str,
) -> pb::EventEnvelope {
    pb::EventEnvelope {
        event_id: Uuid::now_v7().to_string(),
        account_id: account.to_owned(),
        version,
        transaction_id: Uuid::now_v7().to_string(),
        occurred_at: Some(prost_types::Timestamp { seconds: chrono::Utc::now().timestamp(), nanos: 0 }),
        actor: Uuid::now_v7().to_string(),
        payload: Some(pb::event_envelope::Payload::MoneyDeposited(pb::MoneyDeposited {
            amount: usd(amount),
            balance_before: usd(before),
            balance_after: usd(after),
            description: description.into(),
        })),
        ..Default::default()
    }
}

impl World {
    async fn start() -> Self {
        bank_platform::telemetry::init_for_tests();
        let issuer = TestIssuer::start().await.unwrap();
        let prefix = bank_testkit::unique_prefix("prj");
        let mut command = command_service::Config::from_env(&ProcessEnv).unwrap();
        command.grpc_addr = "127.0.0.1:0".parse().unwrap();
        command.http_addr = "127.0.0.1:0".parse().unwrap();
        let write = TestDb::migrated("prjw", DbRole::CommandOwner, &command_service::MIGRATOR).await;
        command.database_url = write.url_as(DbRole::Command);
        command.db_max_connections = 8;
        command.jwks_url = issuer.jwks_url.clone();
        command.jwt_issuer = bank_testkit::ISSUER.into();
        command.jwt_audience = bank_testkit::AUDIENCE.into();
        command.relay.nats_url = bank_testkit::nats_url_as(Principal::Command);
        command.standing_feed.nats_url = bank_testkit::nats_url_as(Principal::Command);
        command.relay.stream = prefix.to_uppercase();
        command.relay.subject_prefix = format!("{prefix}.events");
        command.standing_feed.stream = format!("{}_USERS", prefix.to_uppercase());
        command.standing_feed.subject_prefix = format!("{prefix}.users");
        bank_testkit::provision_prefix(&command.relay.nats_url, &prefix).await;
        let running = command_service::start(command.clone(), CancellationToken::new()).await.unwrap();
        let client = AccountCommandServiceClient::connect(format!("http://{}", running.grpc_addr)).await.unwrap();
        let mut projector = projector::Config::from_env(&ProcessEnv).unwrap();
        projector.http_addr = "127.0.0.1:0".parse().unwrap();
        let read = TestDb::migrated("prjr", DbRole::ReadOwner, &bank_readmodel::MIGRATOR).await;
        projector.database_url = read.url_as(DbRole::Projector);
        projector.redis_url = bank_testkit::redis_url_as(Principal::Projector);
        projector.redis_prefix = bank_testkit::read_model_prefix(&prefix);
        projector.cache_key = Some(read_cache_key().to_owned());
        projector.nats_url = bank_testkit::nats_url_as(Principal::Projector);
        projector.stream = command.relay.stream.clone();
        projector.subject_prefix = command.relay.subject_prefix.clone();
        // The projector verifies every event against command-service's key.
        let keys = bank_platform::signing::EventKeys::of(std::slice::from_ref(&command.event_signer));
        projector.event_keys = Some(std::sync::Arc::new(keys));
        projector.max_deliveries = 5;
        projector.event_store_url = Some(write.url_as(DbRole::Projector));
        // The tests' own checks (and tampering) run as the superuser.
        let write_db = bank_platform::db::connect(&write.admin_url(), 2).await.unwrap();
        let read_db = bank_platform::db::connect(&read.admin_url(), 2).await.unwrap();
        // The test reads and tampers with the cache as admin.
        let redis = projector::connect_redis(&bank_testkit::redis_admin_url()).await.unwrap();
        let read_as_command = read.url_as(DbRole::Command);
        Self { issuer, _command: running, client, write_db, read_db, redis, command, projector, read_as_command }
    }

    async fn start_projector(&self) -> Running {
        projector::start(self.projector.clone(), CancellationToken::new()).await.unwrap()
    }

    async fn open(&self, token: &str) -> String {
        let req = pb::OpenAccountRequest {
            r#type: 1,
            currency_code: "USD".into(),
            idempotency_key: Uuid::new_v4().to_string(),
        };
        self.client.clone().open_account(authed(req, token)).await.unwrap().into_inner().account.unwrap().account_id
    }

    /// A teller's deposit (customers may not deposit).
    async fn deposit(&self, acc: &str, amount: &str) {
        let req = pb::DepositRequest {
            account_id: acc.into(),
            money: usd(amount),
            idempotency_key: Uuid::new_v4().to_string(),
            description: String::new(),
        };
        self.client.clone().deposit(authed(req, &self.issuer.teller(Uuid::now_v7()))).await.unwrap();
    }

    async fn transfer(&self, token: &str, from: &str, to: &str, amount: &str) {
        let req = pb::TransferRequest {
            from_account_id: from.into(),
            to_account_id: to.into(),
            money: usd(amount),
            idempotency_key: Uuid::new_v4().to_string(),
            description: String::new(),
        };
        let _ = self.client.clone().transfer(authed(req, token)).await;
    }

    /// A mixed workload over a few accounts; returns the account ids.
    async fn workload(&self, commands: usize) -> Vec<String> {
        let (_, token) = (Uuid::now_v7(), self.issuer.customer(Uuid::now_v7()));
        let mut accounts = Vec::new();
        for _ in 0..4 {
            accounts.push(self.open(&token).await);
        }
        for i in 0..commands {
            let a = &accounts[i % 4];
            let b = &accounts[(i * 7 + 1) % 4];
            if i % 3 == 0 || a == b {
                self.deposit(a, &format!("{}.{:02}", i % 50 + 1, i % 100)).await;
            } else {
                self.transfer(&token, a, b, "3.25").await;
            }
        }
        accounts
    }

    /// Write model: id → (balance, status, version) and money-event count.
    async fn fold(&self) -> (HashMap<Uuid, (Decimal, String, i64)>, i64) {
        let rows =
            sqlx::query!("SELECT id, balance, status, version FROM accounts").fetch_all(&self.write_db).await.unwrap();
        let money: i64 = sqlx::query_scalar!(r#"SELECT count(*) AS "money!" FROM events WHERE kind NOT IN ('AccountOpened','AccountFrozen','AccountUnfrozen','AccountClosed')"#).fetch_one(&self.write_db).await.unwrap();
        (rows.into_iter().map(|r| (r.id, (r.balance, r.status, r.version))).collect(), money)
    }

    async fn read_model(&self) -> (HashMap<Uuid, (Decimal, String, i64)>, i64) {
        let g = bank_readmodel::active_generation(&self.read_db).await.unwrap();
        let rows =
            sqlx::query!("SELECT account_id, balance, status, version FROM account_view WHERE generation = $1", g)
                .fetch_all(&self.read_db)
                .await
                .unwrap();
        let entries: i64 =
            sqlx::query_scalar!(r#"SELECT count(*) AS "entries!" FROM transaction_history WHERE generation = $1"#, g)
                .fetch_one(&self.read_db)
                .await
                .unwrap();
        (rows.into_iter().map(|r| (r.account_id, (r.balance, r.status, r.version))).collect(), entries)
    }

    async fn converged(&self) -> bool {
        self.fold().await == self.read_model().await
    }

    /// Postgres read model equals the fold, and Redis equals Postgres for every account it holds.
    async fn assert_read_models_equal_the_fold(&self) {
        assert_eventually!(
            self.converged().await,
            Duration::from_secs(30),
            "read model did not converge: {:?} vs {:?}",
            self.fold().await,
            self.read_model().await
        );
        let g = bank_readmodel::active_generation(&self.read_db).await.unwrap();
        // Read as query-service reads: only under the projector's seal.
        let keys = bank_readmodel::CacheKeys::sealed(&self.projector.redis_prefix, read_cache_key().as_bytes());
        let (fold, _) = self.fold().await;
        let mut redis = self.redis.clone();
        for (id, (balance, status, version)) in fold {
            let h: HashMap<String, String> =
                redis::cmd("HGETALL").arg(keys.account(g, id)).query_async(&mut redis).await.unwrap();
            let bank_readmodel::Cached::Valid(cached) = keys.open_entry(g, id, &h) else {
                panic!("account {id} is not cached under the projector's seal: {h:?}")
            };
            assert_eq!(
                (cached.balance, cached.status, cached.version),
                (balance, status, version),
                "redis differs for {id}"
            );
        }
    }

    /// The message that carried `account`'s event at `version`, as the
    /// stream holds it, and that event.
    async fn published(&self, account: &str, version: i64) -> (Vec<u8>, pb::EventEnvelope) {
        let js = self.js().await;
        let stream = js.get_stream(&self.command.relay.stream).await.unwrap();
        for stored in bank_platform::nats::stored_events(&stream).await.unwrap() {
            if stored.envelope.account_id == account && stored.envelope.version == version {
                let message = stream.get_raw_message(stored.sequence).await.unwrap();
                return (message.payload.to_vec(), stored.envelope);
            }
        }
        panic!("no event {account} v{version} on the stream");
    }

    /// A running projector and a customer's account holding 100.00 in the
    /// read model.
    async fn projected_account_holding_100(&self) -> (Running, String) {
        let projector = self.start_projector().await;
        let a = self.open(&self.issuer.customer(Uuid::now_v7())).await;
        self.deposit(&a, "100.00").await;
        assert_eventually!(self.converged().await, Duration::from_secs(20), "the deposit was not projected");
        (projector, a)
    }

    /// `account`'s balance in the active generation of the Postgres read model.
    async fn projected_balance(&self, account: &str) -> Decimal {
        sqlx::query_scalar!(
            "SELECT balance FROM account_view WHERE account_id = $1::uuid AND generation = (SELECT active_generation FROM projection_meta)",
            account.parse::<Uuid>().unwrap(),
        )
        .fetch_one(&self.read_db)
        .await
        .unwrap()
    }

    async fn js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(bank_platform::nats::connect(&bank_testkit::nats_admin_url()).await.unwrap())
    }
}

#[tokio::test]
async fn the_read_models_equal_the_fold_despite_duplicates_redeliveries_and_a_restart() {
    let w = World::start().await;
    let first = w.start_projector().await;
    w.workload(30).await;
    // Restart mid-stream: unacked messages are redelivered to the new one.
    first.stop().await.unwrap();
    w.workload(30).await;
    // Publish every event so far a second time (no Msg-Id: really duplicated on the stream).
    let js = w.js().await;
    let mut stream = js.get_stream(&w.command.relay.stream).await.unwrap();
    assert_eventually!(
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM outbox"#).fetch_one(&w.write_db).await.unwrap() == 0,
        Duration::from_secs(20),
        "outbox did not drain"
    );
    let last = stream.info().await.unwrap().state.last_sequence;
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        js.publish(m.subject.clone(), m.payload.clone()).await.unwrap().await.unwrap();
    }
    let _second = w.start_projector().await;
    w.workload(20).await;
    w.assert_read_models_equal_the_fold().await;
    let dead: i64 =
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM dead_letters"#).fetch_one(&w.read_db).await.unwrap();
    assert_eq!(dead, 0, "duplicates are not poison");
}

/// A bulk transaction cut off mid-write: a backlog waits on the stream, the
/// projector's first transaction (many events across partitions) is held
/// after it has written the account views (the history table locked), and
/// its database session is killed there. Its messages are redelivered and
/// applied once: the read models equal the fold, with one history entry per
/// money event, nothing lost and nothing doubled.
#[tokio::test]
async fn a_bulk_write_cut_off_mid_transaction_loses_and_doubles_nothing() {
    let w = World::start().await;
    w.workload(60).await;
    assert_eventually!(
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM outbox"#).fetch_one(&w.write_db).await.unwrap() == 0,
        Duration::from_secs(20),
        "outbox did not drain"
    );
    let mut blocker = w.read_db.begin().await.unwrap();
    sqlx::query!("LOCK TABLE transaction_history IN EXCLUSIVE MODE").execute(&mut *blocker).await.unwrap();
    let running = w.start_projector().await;
    let held = || async {
        sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM pg_stat_activity
               WHERE datname = current_database() AND wait_event_type = 'Lock' AND usename <> current_user"#
        )
        .fetch_one(&w.read_db)
        .await
        .unwrap()
    };
    assert_eventually!(held().await > 0, Duration::from_secs(20), "the projector never reached its write");
    let batch_events = bank_testkit::metric(running.http_addr, "projector_batch_events_sum").await;
    assert!(batch_events > 1.0, "the held transaction carries many events, not one: {batch_events}");
    let killed = sqlx::query_scalar!(
        r#"SELECT count(pg_terminate_backend(pid)) AS "n!" FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock' AND usename <> current_user"#
    )
    .fetch_one(&w.read_db)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    blocker.commit().await.unwrap();

    w.workload(10).await;
    w.assert_read_models_equal_the_fold().await;
    let dead: i64 =
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM dead_letters"#).fetch_one(&w.read_db).await.unwrap();
    assert_eq!(dead, 0);
}

#[tokio::test]
async fn garbage_and_unknown_payloads_go_to_the_dead_letters_and_the_rest_keep_flowing() {
    let w = World::start().await;
    let _p = w.start_projector().await;
    let accounts = w.workload(3).await;
    let js = w.js().await;
    let subject = bank_platform::nats::event_subject(&w.command.relay.subject_prefix, accounts[0].parse().unwrap());
    js.publish(subject.clone(), b"\xff\x00 not protobuf".to_vec().into()).await.unwrap().await.unwrap();
    let unknown = pb::EventEnvelope {
        event_id: Uuid::now_v7().to_string(),
        account_id: accounts[0].clone(),
        version: 99,
        payload: None,
        ..Default::default()
    };
    js.publish(subject, unknown.encode_to_vec().into()).await.unwrap().await.unwrap();
    w.workload(6).await;
    w.assert_read_models_equal_the_fold().await;
    assert_eventually!(
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM dead_letters"#).fetch_one(&w.read_db).await.unwrap() == 2,
        Duration::from_secs(30),
        "poison messages did not reach the dead letters"
    );
}

#[tokio::test]
async fn rebuild_from_the_stream_restores_wiped_read_models_while_reads_keep_answering() {
    let w = World::start().await;
    let _p = w.start_projector().await;
    let accounts = w.workload(40).await;
    w.assert_read_models_equal_the_fold().await;

    // Reads keep answering during a rebuild of intact read models.
    let reader = {
        let (db, id) = (w.read_db.clone(), Uuid::parse_str(&accounts[0]).unwrap());
        tokio::spawn(async move {
            let mut reads = 0;
            for _ in 0..200 {
                let g = bank_readmodel::active_generation(&db).await.unwrap();
                let found: Option<i64> = sqlx::query_scalar!(
                    "SELECT version FROM account_view WHERE generation = $1 AND account_id = $2",
                    g,
                    id,
                )
                .fetch_optional(&db)
                .await
                .unwrap();
                assert!(found.is_some(), "a read found nothing during the rebuild");
                reads += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            reads
        })
    };
    let report = projector::rebuild(&w.projector, projector::RebuildSource::Stream).await.unwrap();
    assert_eq!(report.new_generation, report.old_generation + 1);
    assert!(reader.await.unwrap() > 0);
    w.assert_read_models_equal_the_fold().await;

    // Wipe everything, rebuild, same result; the live projector keeps up after.
    sqlx::query!("DELETE FROM account_view").execute(&w.read_db).await.unwrap();
    sqlx::query!("DELETE FROM transaction_history").execute(&w.read_db).await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(
            accounts
                .iter()
                .map(|a| {
                    bank_readmodel::CacheKeys::new(w.projector.redis_prefix.clone())
                        .account(report.new_generation, a.parse().unwrap())
                })
                .collect::<Vec<_>>(),
        )
        .query_async(&mut w.redis.clone())
        .await
        .unwrap();
    projector::rebuild(&w.projector, projector::RebuildSource::Stream).await.unwrap();
    w.workload(5).await;
    w.assert_read_models_equal_the_fold().await;
}

/// A signed change to an account's balance carried by an event, and its currency.
fn signed_change(env: &pb::EventEnvelope) -> Option<(String, Decimal)> {
    use pb::event_envelope::Payload;
    let (m, sign) = match env.payload.as_ref()? {
        Payload::MoneyDeposited(e) => (e.amount.as_ref()?, Decimal::ONE),
        Payload::TransferCredited(e) => (e.amount.as_ref()?, Decimal::ONE),
        Payload::MoneyWithdrawn(e) => (e.amount.as_ref()?, Decimal::NEGATIVE_ONE),
        Payload::TransferDebited(e) => (e.amount.as_ref()?, Decimal::NEGATIVE_ONE),
        Payload::Posted(e) => (e.amount.as_ref()?, Decimal::ONE),
        _ => return None,
    };
    Some((m.currency_code.clone(), m.amount.parse::<Decimal>().ok()? * sign))
}

fn all_zero(sums: &HashMap<String, Decimal>) -> bool {
    sums.values().all(|s| s.is_zero())
}

#[tokio::test]
async fn under_every_command_from_many_callers_each_currency_sums_to_zero_everywhere() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let w = World::start().await;
    let _p = w.start_projector().await;
    // Three customers with a USD and a EUR account each.
    let mut accounts: Vec<(String, String, &str)> = Vec::new();
    for _ in 0..3 {
        let token = w.issuer.customer(Uuid::now_v7());
        for currency in ["USD", "EUR"] {
            let req = pb::OpenAccountRequest {
                r#type: 1,
                currency_code: currency.into(),
                idempotency_key: Uuid::new_v4().to_string(),
            };
            let id = w.client.clone().open_account(authed(req, &token)).await.unwrap().into_inner().account.unwrap();
            accounts.push((token.clone(), id.account_id, currency));
        }
    }
    let fee_account = |c: &str| {
        let currency = bank_domain::Currency::from_code(c).unwrap();
        bank_domain::ledger::system_account_id(bank_domain::AccountKind::FeeIncome, currency).to_string()
    };
    let callers = (0..6u64).map(|seed| {
        let (w, accounts) = (&w, accounts.clone());
        async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let (teller, service) = (w.issuer.teller(Uuid::now_v7()), w.issuer.service(Uuid::now_v7()));
            let mut c = w.client.clone();
            for _ in 0..30 {
                let (owner, acc, currency) = &accounts[rng.gen_range(0..accounts.len())];
                let (_, other, other_currency) = &accounts[rng.gen_range(0..accounts.len())];
                let cents = rng.gen_range(1..3000u32);
                let money = |cents: u32| {
                    Some(pb::Money {
                        currency_code: currency.to_string(),
                        amount: format!("{}.{:02}", cents / 100, cents % 100),
                    })
                };
                let key = Uuid::new_v4().to_string();
                let description = String::new();
                // Refusals (funds, currency) are part of the workload; errors of any other kind are not.
                let result = match rng.gen_range(0..4) {
                    0 => c
                        .deposit(authed(
                            pb::DepositRequest {
                                account_id: acc.clone(),
                                money: money(cents),
                                idempotency_key: key,
                                description,
                            },
                            &teller,
                        ))
                        .await
                        .map(|_| ()),
                    1 => c
                        .withdraw(authed(
                            pb::WithdrawRequest {
                                account_id: acc.clone(),
                                money: money(cents),
                                idempotency_key: key,
                                description,
                            },
                            &service,
                        ))
                        .await
                        .map(|_| ()),
                    2 => c
                        .transfer(authed(
                            pb::TransferRequest {
                                from_account_id: acc.clone(),
                                to_account_id: other.clone(),
                                money: money(cents),
                                idempotency_key: key,
                                description,
                            },
                            owner,
                        ))
                        .await
                        .map(|_| ()),
                    _ => {
                        // A transfer plus its fee, as one balanced transaction.
                        let fee = cents / 10 + 1;
                        let leg = |account: &str, cents: u32, side: pb::PostingSide| pb::PostingLeg {
                            account_id: account.into(),
                            money: money(cents),
                            side: side as i32,
                        };
                        let mut legs = vec![
                            leg(acc, cents + fee, pb::PostingSide::Debit),
                            leg(&fee_account(currency), fee, pb::PostingSide::Credit),
                        ];
                        if other != acc && other_currency == currency {
                            legs.push(leg(other, cents, pb::PostingSide::Credit));
                        } else {
                            legs[0] = leg(acc, fee, pb::PostingSide::Debit);
                        }
                        c.post_transaction(authed(
                            pb::PostTransactionRequest { legs, idempotency_key: key, description },
                            &service,
                        ))
                        .await
                        .map(|_| ())
                    }
                };
                if let Err(s) = result {
                    assert!(
                        matches!(s.code(), tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument),
                        "{s:?}"
                    );
                }
            }
        }
    });
    futures::future::join_all(callers).await;
    w.assert_read_models_equal_the_fold().await;

    // The write model: each currency sums to zero, each account equals the fold of its postings.
    let write: Vec<(String, Decimal)> =
        sqlx::query!(r#"SELECT currency::text AS "currency!", sum(balance) AS "sum!" FROM accounts GROUP BY currency"#)
            .fetch_all(&w.write_db)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.currency, r.sum))
            .collect();
    assert!(write.iter().all(|(_, s)| s.is_zero()), "write model: {write:?}");
    let moved: Decimal = sqlx::query_scalar!(r#"SELECT sum(abs(amount)) AS "moved!" FROM postings"#)
        .fetch_one(&w.write_db)
        .await
        .unwrap();
    assert!(moved > Decimal::ZERO, "the workload moved no money");
    let unfolded: i64 = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM accounts a LEFT JOIN (SELECT account_id, sum(amount) AS s FROM postings GROUP BY account_id) p ON p.account_id = a.id WHERE COALESCE(p.s, 0) <> a.balance"#,
    )
    .fetch_one(&w.write_db)
    .await
    .unwrap();
    assert_eq!(unfolded, 0, "an account differs from the fold of its postings");

    // The Postgres read model.
    let g = bank_readmodel::active_generation(&w.read_db).await.unwrap();
    let read: Vec<(String, Decimal)> = sqlx::query!(
        r#"SELECT currency, sum(balance) AS "sum!" FROM account_view WHERE generation = $1 GROUP BY currency"#,
        g,
    )
    .fetch_all(&w.read_db)
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.currency, r.sum))
    .collect();
    assert_eq!(read.len(), write.len(), "every currency is projected");
    assert!(read.iter().all(|(_, s)| s.is_zero()), "postgres read model: {read:?}");

    // Redis: every account, system ones included, cached; per currency zero.
    let ids: Vec<(Uuid, String)> = sqlx::query!(r#"SELECT id, currency::text AS "currency!" FROM accounts"#)
        .fetch_all(&w.write_db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.currency))
        .collect();
    let keys = bank_readmodel::CacheKeys::new(w.projector.redis_prefix.clone());
    let mut redis = w.redis.clone();
    let mut cached: HashMap<String, Decimal> = HashMap::new();
    for (id, currency) in &ids {
        let h: HashMap<String, String> =
            redis::cmd("HGETALL").arg(keys.account(g, *id)).query_async(&mut redis).await.unwrap();
        let view = bank_readmodel::from_cache(*id, &h).expect("every account is cached");
        *cached.entry(currency.clone()).or_default() += view.balance;
    }
    assert!(all_zero(&cached), "redis: {cached:?}");

    // The stream's fold: per currency zero, per account the write model's balance.
    let js = w.js().await;
    let stream = js.get_stream(&w.command.relay.stream).await.unwrap();
    let (mut per_currency, mut per_account) = (HashMap::<String, Decimal>::new(), HashMap::<String, Decimal>::new());
    for stored in bank_platform::nats::stored_events(&stream).await.unwrap() {
        let env = stored.envelope;
        if let Some((currency, delta)) = signed_change(&env) {
            *per_currency.entry(currency).or_default() += delta;
            *per_account.entry(env.account_id.clone()).or_default() += delta;
        }
    }
    assert!(all_zero(&per_currency), "stream fold: {per_currency:?}");
    let (fold, _) = w.fold().await;
    for (id, (balance, _, _)) in fold {
        assert_eq!(per_account.get(&id.to_string()).copied().unwrap_or_default(), balance, "stream fold of {id}");
    }
}

/// The attack of the security review: a `MoneyDeposited` published straight
/// on NATS at the account's next version. Unsigned, signed with another key,
/// a real event replayed on another account's subject, or signed with the
/// real key but not chaining to the account's last event: each is refused
/// before it is applied, and the real events keep flowing.
#[tokio::test]
async fn a_forged_event_published_on_nats_is_refused_and_moves_nothing() {
    let w = World::start().await;
    let (_p, a) = w.projected_account_holding_100().await;

    let forged = |version: i64| deposited(&a, version, ("5000.00", "100.00", "5100.00"), "forged");
    let js = w.js().await;
    let subject =
        |account: &str| bank_platform::nats::event_subject(&w.command.relay.subject_prefix, account.parse().unwrap());
    let batch_subject = |partition: u32| bank_platform::nats::batch_subject(&w.command.relay.subject_prefix, partition);
    // 1. Unsigned.
    js.publish(subject(&a), forged(3).encode_to_vec().into()).await.unwrap().await.unwrap();
    // 2. Signed, but by a key the projector does not hold.
    let stranger = bank_platform::auth::TokenSigner::generate();
    let signed_by_stranger = command_service::relay::signed(&forged(3).encode_to_vec(), &stranger);
    js.publish(subject(&a), signed_by_stranger.into()).await.unwrap().await.unwrap();
    // 3. A genuine, correctly signed message carrying `a`'s event, replayed
    //    on another partition's subject.
    let (genuine, _) = w.published(&a, 2).await;
    let elsewhere =
        (bank_platform::nats::event_partition(a.parse().unwrap()) + 1) % bank_platform::nats::EVENT_PARTITIONS;
    js.publish(batch_subject(elsewhere), genuine.into()).await.unwrap().await.unwrap();
    // 4. Signed with the real key, at the next version, but chained to a
    //    history other than the account's (a rewritten past).
    let mut forked = forged(3);
    forked.hash = bank_platform::signing::chain_hash(b"not the account's history", &forked);
    let forked = command_service::relay::signed(&forked.encode_to_vec(), &w.command.event_signer);
    js.publish(subject(&a), forked.into()).await.unwrap().await.unwrap();

    assert_eventually!(
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM dead_letters"#).fetch_one(&w.read_db).await.unwrap() == 4,
        Duration::from_secs(30),
        "the forged events did not all reach the dead letters"
    );
    let reasons: Vec<String> =
        // In publication order: the accounts' partitions are consumed apart.
        sqlx::query_scalar!("SELECT reason FROM dead_letters ORDER BY stream_sequence").fetch_all(&w.read_db).await.unwrap();
    assert!(reasons[0].contains("unsigned"), "{reasons:?}");
    assert!(reasons[1].contains("unknown key"), "{reasons:?}");
    assert!(reasons[2].contains("names account"), "{reasons:?}");
    assert!(reasons[3].contains("does not chain"), "{reasons:?}");
    // The real next event still applies: the forgery took no version.
    w.deposit(&a, "10.00").await;
    w.assert_read_models_equal_the_fold().await;
    assert_eq!(w.projected_balance(&a).await, Decimal::from(110));
    let rejected = bank_testkit::metric(_p.http_addr, "projector_rejected_events_total").await;
    assert!(rejected >= 4.0, "rejections are counted: {rejected}");
}

/// A stream message carries a partition's events of a relay round, and
/// applies whole or not at all: signed by a stranger, none of it applies;
/// signed with the real key but with one event that cannot apply (its chain
/// is broken), the valid event before it in the same message does not apply
/// either, and the message goes to the dead letters as one.
#[tokio::test]
async fn a_stream_message_carrying_many_events_is_applied_all_or_nothing() {
    let w = World::start().await;
    let (_p, a) = w.projected_account_holding_100().await;
    let (_, v2) = w.published(&a, 2).await;

    // The next two versions of `a`: v3 chains to v2, v4 chains to nothing.
    let deposit = |version: i64, previous: &[u8]| {
        let (before, after) = (format!("{}.00", 97 + version), format!("{}.00", 98 + version));
        let mut env = deposited(&a, version, ("1.00", &before, &after), "in a batch");
        env.hash = bank_platform::signing::chain_hash(previous, &env);
        env
    };
    let v3 = deposit(3, &v2.hash);
    let v4 = deposit(4, b"not the account's history");
    let events = vec![v3.encode_to_vec(), v4.encode_to_vec()];
    let partition = bank_platform::nats::event_partition(a.parse().unwrap());
    let subject = bank_platform::nats::batch_subject(&w.command.relay.subject_prefix, partition);
    let js = w.js().await;
    let stranger = bank_platform::auth::TokenSigner::generate();
    let by_stranger = bank_platform::signing::sign_batch(vec![v3.encode_to_vec()], &stranger);
    js.publish(subject.clone(), by_stranger.into()).await.unwrap().await.unwrap();
    let genuine = bank_platform::signing::sign_batch(events, &w.command.event_signer);
    js.publish(subject, genuine.into()).await.unwrap().await.unwrap();

    assert_eventually!(
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM dead_letters"#).fetch_one(&w.read_db).await.unwrap() == 2,
        Duration::from_secs(30),
        "the two messages did not reach the dead letters"
    );
    let reasons: Vec<String> = sqlx::query_scalar!("SELECT reason FROM dead_letters ORDER BY stream_sequence")
        .fetch_all(&w.read_db)
        .await
        .unwrap();
    assert!(reasons[0].contains("unknown key"), "{reasons:?}");
    assert!(reasons[1].contains("version 4 does not chain"), "{reasons:?}");
    assert_eq!(w.projected_balance(&a).await, Decimal::from(100), "v3 applied although its message was refused");

    // The real next event still applies at v3: the refused message took no version.
    w.deposit(&a, "10.00").await;
    w.assert_read_models_equal_the_fold().await;
    assert_eq!(w.projected_balance(&a).await, Decimal::from(110));
}

/// Reconcile called a read model clean while an account
/// stayed behind for good and messages sat in the dead letters. Behind for a
/// moment is fine; behind beyond the bound, or any dead letter, is a problem.
#[tokio::test]
async fn reconcile_counts_accounts_behind_beyond_the_bound_and_dead_letters_as_problems() {
    let w = World::start().await;
    let mut audit = w.command.clone();
    audit.audit.read_database_url = Some(w.read_as_command.clone());
    audit.audit.behind_bound = Duration::from_secs(2);
    let reconcile = || async { command_service::reconcile(&audit).await.unwrap() };
    let p = w.start_projector().await;
    let token = w.issuer.customer(Uuid::now_v7());
    let a = w.open(&token).await;
    w.deposit(&a, "10.00").await;
    assert_eventually!(w.converged().await, Duration::from_secs(20), "projected");
    let report = reconcile().await;
    assert!(report.is_clean(), "{report}");

    // The projector stops; a deposit is behind: fine at first, a problem
    // once it has been behind for longer than the bound.
    p.stop().await.unwrap();
    w.deposit(&a, "5.00").await;
    let report = reconcile().await;
    assert!(report.is_clean() && !report.behind.is_empty(), "{report}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = reconcile().await;
    assert!(report.problems.iter().any(|p| p.contains("behind for")), "{report}");

    // Caught up again: clean. Then a message the projector refuses.
    let _p = w.start_projector().await;
    assert_eventually!(w.converged().await, Duration::from_secs(20), "caught up");
    assert!(reconcile().await.is_clean());
    let js = w.js().await;
    let subject = bank_platform::nats::event_subject(&w.command.relay.subject_prefix, a.parse().unwrap());
    js.publish(subject, b"not an envelope".to_vec().into()).await.unwrap().await.unwrap();
    assert_eventually!(
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM dead_letters"#).fetch_one(&w.read_db).await.unwrap() == 1,
        Duration::from_secs(20),
        "dead-lettered"
    );
    let report = reconcile().await;
    assert!(report.problems.iter().any(|p| p.starts_with("dead letters: 1")), "{report}");
}

/// With the stream lost (deleted) and the read models wiped, a
/// rebuild from the event store restores both read models, Postgres and
/// Redis, to the fold of the write model.
#[tokio::test]
async fn with_the_stream_lost_a_rebuild_from_the_event_store_restores_both_read_models() {
    let w = World::start().await;
    let p = w.start_projector().await;
    let accounts = w.workload(30).await;
    w.assert_read_models_equal_the_fold().await;
    p.stop().await.unwrap();
    w.js().await.delete_stream(&w.command.relay.stream).await.unwrap();
    sqlx::query!("DELETE FROM account_view").execute(&w.read_db).await.unwrap();
    sqlx::query!("DELETE FROM transaction_history").execute(&w.read_db).await.unwrap();
    sqlx::query!("DELETE FROM hold_view").execute(&w.read_db).await.unwrap();
    sqlx::query!("DELETE FROM reversal_view").execute(&w.read_db).await.unwrap();
    let report = projector::rebuild(&w.projector, projector::RebuildSource::EventStore).await.unwrap();
    assert!(report.accounts >= accounts.len() as i64, "{report:?}");
    w.assert_read_models_equal_the_fold().await;
    let dead: i64 =
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM dead_letters"#).fetch_one(&w.read_db).await.unwrap();
    assert_eq!(dead, 0);
}
