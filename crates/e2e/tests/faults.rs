//! Faults under a steady command load: a broker outage, a killed projector,
//! a killed command-service, Redis stopped, Postgres restarted, the
//! projector's read database out of reach for 30 s. After each,
//! every command a client saw succeed is in the event store exactly once,
//! retried commands had one effect, the read models converge to the fold,
//! reconcile is clean, and everything recovered by itself. Reconcile also
//! runs in a loop throughout: every report it finishes
//! under the load and the fault is clean (a pass that cannot reach a server
//! reports nothing).

mod system;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use system::{System, assert_nothing_lost_nothing_doubled, load, stack};

/// Runs the load, applies `fault` in the middle, lets it run on, then checks.
async fn under_load<F, Fut>(fault: F) -> System
where
    F: FnOnce(System) -> Fut,
    Fut: std::future::Future<Output = System>,
{
    under_load_on(System::start().await, fault).await
}

async fn under_load_on<F, Fut>(sys: System, fault: F) -> System
where
    F: FnOnce(System) -> Fut,
    Fut: std::future::Future<Output = System>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = load(&sys, 6, stop.clone()).await;
    let auditor = {
        let (mut command, stop) = (sys.reconcile_command(), stop.clone());
        std::thread::spawn(move || {
            let (mut finished, mut unclean) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let out = command.output().unwrap();
                let report = String::from_utf8_lossy(&out.stdout).into_owned();
                if report.contains("RESULT:") {
                    finished += 1;
                }
                if report.contains("PROBLEM:") {
                    unclean.push(report);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            (finished, unclean)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sys = fault(sys).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    // Let in-flight retries settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (finished, unclean) = auditor.join().unwrap();
    assert!(unclean.is_empty(), "reconcile under load reported problems:\n{}", unclean.join("\n---\n"));
    assert!(finished > 0, "no reconcile pass finished under the load");
    eprintln!("{finished} reconcile passes under the load, all clean");
    assert_nothing_lost_nothing_doubled(&sys, &ledger).await;
    sys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_and_restarted_under_load() {
    under_load(|sys| async {
        stack("stop-nats");
        tokio::time::sleep(Duration::from_secs(2)).await;
        stack("start-nats");
        sys
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_killed_with_sigkill_and_restarted() {
    under_load(|mut sys| async {
        sys.kill9("projector");
        tokio::time::sleep(Duration::from_secs(1)).await;
        sys.restart("projector").await;
        sys
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_service_killed_mid_burst_and_restarted() {
    under_load(|mut sys| async {
        sys.kill9("command-service");
        tokio::time::sleep(Duration::from_millis(500)).await;
        sys.restart("command-service").await;
        sys
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_under_load() {
    under_load(|sys| async {
        stack("stop-redis");
        tokio::time::sleep(Duration::from_secs(2)).await;
        stack("start-redis");
        sys
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load() {
    under_load(|sys| async {
        stack("restart-postgres");
        sys
    })
    .await;
}

/// Postgres crashes (immediate shutdown: no checkpoint, WAL not
/// yet flushed is gone) under load. The relay's and the projector's
/// sessions commit without waiting for the flush, so their last writes may
/// be lost: an outbox deletion (the event is republished; JetStream drops it
/// by message id or the projector skips the version) or a read-model batch
/// (acknowledged to NATS only once flushed, so it is redelivered). Every
/// check of the fault suite holds afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashed_under_load() {
    under_load(|sys| async {
        stack("crash-postgres");
        sys
    })
    .await;
}

/// The projector commits without waiting for the WAL flush and
/// acknowledges a batch only once the flush has passed its commit. Postgres
/// crashes the moment a deposit shows in the read model, before the WAL
/// writer's next flush (up to 200 ms): the batch may be gone, but its
/// message was not acknowledged, so it is redelivered and the read model
/// converges. (Acknowledging at commit instead fails this test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashed_the_moment_the_read_model_shows_a_deposit() {
    use bank_proto::v1 as pb;
    let sys = System::start().await;
    let (customer, teller) = (sys.issuer.customer(uuid::Uuid::now_v7()), sys.issuer.teller(uuid::Uuid::now_v7()));
    let mut commands = sys.command_client().await;
    let open = pb::OpenAccountRequest {
        r#type: 1,
        currency_code: "USD".into(),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
    };
    let account =
        commands.open_account(bank_testkit::authed(open, &customer)).await.unwrap().into_inner().account.unwrap();
    let id: uuid::Uuid = account.account_id.parse().unwrap();
    assert!(sys.converged(Duration::from_secs(30)).await, "the opening did not project");
    for round in 1..=3 {
        let deposit = pb::DepositRequest {
            account_id: account.account_id.clone(),
            money: Some(pb::Money { currency_code: "USD".into(), amount: "1.00".into() }),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
            description: String::new(),
        };
        let written = commands.deposit(bank_testkit::authed(deposit, &teller)).await.unwrap().into_inner();
        let version = written.balances_after[0].version;
        let shown = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let v: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM account_view WHERE account_id = $1 AND generation = (SELECT active_generation FROM projection_meta)",
            )
            .bind(id)
            .fetch_optional(&sys.read_db)
            .await
            .unwrap();
            if v.is_some_and(|v| v >= version) {
                break;
            }
            assert!(std::time::Instant::now() < shown, "round {round}: the deposit never showed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stack("crash-postgres");
        assert!(
            sys.converged(Duration::from_secs(30)).await,
            "round {round}: the read model lost the deposit in the crash and never got it back"
        );
    }
    let (clean, report) = sys.reconcile();
    assert!(clean, "{report}");
}

/// The projector's read database out of reach for 30 s
/// (no new connections, its backends terminated) under load, with only 3
/// deliveries before a gap is filled from the stream. Deliveries pile up on
/// every message meanwhile; afterwards no gap may be dead-lettered, the read
/// models converge, and a later deposit is readable with its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projectors_read_database_blocked_for_30_s_under_load() {
    let sys = System::start_with(&[("PROJECTOR_MAX_DELIVERIES", "3".into())]).await;
    let sys = under_load_on(sys, |sys| async {
        let db = sys.read_db_name().to_owned();
        let admin = &sys.write_db;
        sqlx::query(&format!("ALTER DATABASE \"{db}\" CONNECTION LIMIT 0")).execute(admin).await.unwrap();
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND usename = 'bank_projector'",
        )
        .bind(&db)
        .execute(admin)
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        sqlx::query(&format!("ALTER DATABASE \"{db}\" CONNECTION LIMIT -1")).execute(admin).await.unwrap();
        sys
    })
    .await;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(&sys.read_db).await.unwrap();
    assert_eq!(dead, 0, "a gap was dead-lettered");
    system::deposit_and_read_back(&sys).await;
}

/// The relay leader of two command-service instances
/// hangs (SIGSTOP) under load. Its lease expires and the other instance's
/// relay takes over: a deposit sent to that instance is readable with its
/// consistency token within 10 s. Woken (SIGCONT), the former leader finds
/// its lease gone; nothing is applied twice and every account's versions
/// apply in order (the checks after every fault).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_leader_hung_with_sigstop_loses_its_lease_within_seconds() {
    let mut sys = System::start().await;
    let second = sys.start_second_command_service().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let leader: u32 = loop {
        let holder: String = sqlx::query_scalar("SELECT holder FROM relay_lease WHERE expires_at > now()")
            .fetch_optional(&sys.write_db)
            .await
            .unwrap()
            .unwrap_or_default();
        if let Some(pid) = holder.strip_prefix("pid ").and_then(|h| h.split(' ').next()) {
            break pid.parse().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no relay took the lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let other = if leader == sys.pid("command-service") { second } else { sys.command_addr };
    under_load_on(sys, |sys| async move {
        System::signal(leader, "STOP");
        let hung = std::time::Instant::now();
        system::deposit_and_read_back_via(&sys, other, Duration::from_secs(10)).await;
        eprintln!("the other relay published within {:?} of the leader hanging", hung.elapsed());
        System::signal(leader, "CONT");
        sys
    })
    .await;
}

/// A change whose notification is lost (Redis stopped
/// while the projector applied it; restarted afterwards) still reaches an
/// open WatchBalance stream, without any further event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_a_change_whose_notification_redis_lost() {
    use bank_proto::v1 as pb;
    use futures::StreamExt;
    let sys = System::start().await;
    let (customer, teller) = (sys.issuer.customer(uuid::Uuid::now_v7()), sys.issuer.teller(uuid::Uuid::now_v7()));
    let mut commands = sys.command_client().await;
    let open = pb::OpenAccountRequest {
        r#type: 1,
        currency_code: "USD".into(),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
    };
    let account = commands
        .open_account(bank_testkit::authed(open, &customer))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap()
        .account_id;
    let deposit = |amount: &str| pb::DepositRequest {
        account_id: account.clone(),
        money: Some(pb::Money { currency_code: "USD".into(), amount: amount.into() }),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
        description: String::new(),
    };
    let first = commands.deposit(bank_testkit::authed(deposit("10.00"), &teller)).await.unwrap().into_inner();
    let watch = pb::WatchBalanceRequest { account_id: account.clone(), min_consistency_token: first.consistency_token };
    let mut updates =
        sys.query_client().await.watch_balance(bank_testkit::authed(watch, &customer)).await.unwrap().into_inner();
    let opening = updates.next().await.unwrap().unwrap();
    assert_eq!(opening.balance.unwrap().amount, "10.00");
    // A plain balance read (no token), as query-service answers it now: the
    // change feed's view in memory, Redis, or Postgres.
    let read = || {
        let req = pb::GetBalanceRequest { account_id: account.clone(), ..Default::default() };
        let (sys, customer) = (&sys, customer.clone());
        async move {
            let r = sys.query_client().await.get_balance(bank_testkit::authed(req, &customer)).await;
            r.unwrap().into_inner().balance.unwrap().amount
        }
    };
    assert_eq!(read().await, "10.00");

    stack("stop-redis");
    let second = commands.deposit(bank_testkit::authed(deposit("5.00"), &teller)).await.unwrap().into_inner();
    // Applied in Postgres while Redis (and its change channel) was away.
    assert!(sys.converged(Duration::from_secs(20)).await, "projected");
    // With the feed gone, memory answers nothing: the read goes to Postgres.
    assert_eq!(read().await, "15.00", "a balance read while Redis is away");
    stack("start-redis");
    let seen = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(u) = updates.next().await {
            let u = u.expect("the stream stays open");
            if u.balance.as_ref().is_some_and(|b| b.amount == "15.00") {
                return u;
            }
        }
        panic!("the stream ended");
    })
    .await
    .expect("the watch never saw the change whose notification was lost");
    let second_version = second.balances_after.iter().find(|b| b.account_id == account).unwrap().version;
    assert_eq!(seen.version, second_version);
    assert_eq!(read().await, "15.00", "a balance read after Redis is back");
}
