//! `bench`: the whole comparison in one run (scripts/bench). Starts the
//! command-service, projector and query-service release binaries on fresh
//! databases, loads them with open- and closed-loop scenarios, measures the
//! references (pgbench on the same transfer SQL, redis-benchmark GET, a no-op
//! RPC, pg_test_fsync) on the same servers, checks that money and counts add
//! up, and writes bench/results/<date>.json and .md. The service runs in its
//! default (batching) mode; the ceilings are measured again with batching off.
//!
//! Knobs (env): BENCH_SECONDS per phase (5), BENCH_ACCOUNTS (1000),
//! BENCH_CONCURRENCY client concurrency for ceilings (32), BENCH_OUT (bench/results).

mod load;
mod refs;
mod report;
mod system;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use bank_proto::v1::{
    self as pb, account_command_service_client::AccountCommandServiceClient,
    account_query_service_client::AccountQueryServiceClient,
};
use bank_testkit::{TestIssuer, authed};
use futures::future::join_all;
use hdrhistogram::Histogram;
use load::{Outcome, closed, mix, open, round};
use serde_json::{Value, json};
use sqlx::PgPool;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use uuid::Uuid;

fn env_num<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Accounts the load runs over, each with its owner's token.
struct World {
    accounts: Vec<String>,
    tokens: Vec<String>,
    /// Deposits and withdrawals are staff's: a teller's token.
    teller: String,
    commands: AccountCommandServiceClient<Channel>,
    queries: AccountQueryServiceClient<Channel>,
    health: HealthClient<Channel>,
}

impl World {
    fn pick(&self, i: u64) -> usize {
        (mix(i) % self.accounts.len() as u64) as usize
    }

    /// A transfer of 0.01 from `src` to another account.
    async fn transfer(&self, i: u64, src: usize) -> Result<pb::MoneyMovementResponse, Code> {
        let n = self.accounts.len();
        let dst = (src + 1 + (mix(i ^ 0xA5A5) % (n as u64 - 1)) as usize) % n;
        let req = pb::TransferRequest {
            from_account_id: self.accounts[src].clone(),
            to_account_id: self.accounts[dst].clone(),
            money: usd("0.01"),
            idempotency_key: Uuid::new_v4().to_string(),
            description: String::new(),
        };
        let r = self.commands.clone().transfer(authed(req, &self.tokens[src])).await;
        r.map(|r| r.into_inner()).map_err(|s| s.code())
    }

    async fn deposit(&self, i: u64, withdraw: bool) -> Result<(), Code> {
        let a = self.pick(i);
        let req = pb::DepositRequest {
            account_id: self.accounts[a].clone(),
            money: usd("0.02"),
            idempotency_key: Uuid::new_v4().to_string(),
            description: String::new(),
        };
        let mut c = self.commands.clone();
        let r = if withdraw {
            let w = pb::WithdrawRequest {
                account_id: req.account_id,
                money: req.money,
                idempotency_key: req.idempotency_key,
                description: req.description,
            };
            c.withdraw(authed(w, &self.teller)).await.map(|_| ())
        } else {
            c.deposit(authed(req, &self.teller)).await.map(|_| ())
        };
        r.map_err(|s| s.code())
    }

    /// A hold of 0.03 from an account to another, then its capture (all of
    /// it) or its void: two commands, the second on the hold's accounts.
    async fn hold(&self, i: u64, capture: bool) -> Result<(), Code> {
        let (n, src) = (self.accounts.len(), self.pick(i));
        let dst = (src + 1 + (mix(i ^ 0x5A5A) % (n as u64 - 1)) as usize) % n;
        let req = pb::PlaceHoldRequest {
            from_account_id: self.accounts[src].clone(),
            to_account_id: self.accounts[dst].clone(),
            money: usd("0.03"),
            expires_at: None,
            ttl_seconds: 600,
            idempotency_key: Uuid::new_v4().to_string(),
            description: String::new(),
        };
        let mut c = self.commands.clone();
        let placed = c.place_hold(authed(req, &self.tokens[src])).await.map_err(|s| s.code())?.into_inner();
        let hold_id = placed.hold.map(|h| h.hold_id).unwrap_or_default();
        let key = Uuid::new_v4().to_string();
        let ended = if capture {
            let req = pb::CaptureHoldRequest { hold_id, amount: None, idempotency_key: key };
            c.capture_hold(authed(req, &self.tokens[src])).await.map(|_| ())
        } else {
            c.void_hold(authed(pb::VoidHoldRequest { hold_id, idempotency_key: key }, &self.tokens[src]))
                .await
                .map(|_| ())
        };
        ended.map_err(|s| s.code())
    }

    async fn balance(&self, a: usize, consistency: String) -> Result<pb::GetBalanceResponse, Code> {
        let req = pb::GetBalanceRequest {
            account_id: self.accounts[a].clone(),
            min_consistency_token: consistency,
            as_of: None,
        };
        self.queries
            .clone()
            .get_balance(authed(req, &self.tokens[a]))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.code())
    }
}

fn usd(a: &str) -> Option<pb::Money> {
    Some(pb::Money { currency_code: "USD".into(), amount: a.into() })
}

async fn setup(
    issuer: &TestIssuer,
    commands: AccountCommandServiceClient<Channel>,
    n: usize,
) -> Result<(Vec<String>, Vec<String>)> {
    // Twenty accounts per customer, each funded with 1,000,000.00.
    let owners: Vec<String> = (0..n.div_ceil(20)).map(|_| issuer.customer(Uuid::now_v7())).collect();
    let teller = issuer.teller(Uuid::now_v7());
    let open_one = |k: usize| {
        let (mut c, token, teller) = (commands.clone(), owners[k / 20].clone(), teller.clone());
        async move {
            let req = pb::OpenAccountRequest {
                r#type: 1,
                currency_code: "USD".into(),
                idempotency_key: Uuid::new_v4().to_string(),
            };
            let id = c.open_account(authed(req, &token)).await?.into_inner().account.context("account")?.account_id;
            let dep = pb::DepositRequest {
                account_id: id.clone(),
                money: usd("1000000.00"),
                idempotency_key: Uuid::new_v4().to_string(),
                description: "bench funding".into(),
            };
            c.deposit(authed(dep, &teller)).await?;
            anyhow::Ok((id, token))
        }
    };
    let mut accounts = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        for r in join_all(chunk.iter().map(|k| open_one(*k))).await {
            accounts.push(r?);
        }
    }
    Ok(accounts.into_iter().unzip())
}

/// Write-model vs read-model versions: how many accounts are still behind.
async fn behind(write: &PgPool, read: &PgPool) -> Result<usize> {
    let w: Vec<(Uuid, i64)> = sqlx::query_as("SELECT id, version FROM accounts").fetch_all(write).await?;
    let r: HashMap<Uuid, i64> = sqlx::query_as(
        "SELECT account_id, version FROM account_view
         WHERE generation = (SELECT max(generation) FROM account_view)",
    )
    .fetch_all(read)
    .await?
    .into_iter()
    .collect();
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(write).await?;
    Ok(w.iter().filter(|(id, v)| r.get(id) != Some(v)).count() + outbox as usize)
}

/// Quantile from a Prometheus histogram's bucket counts (upper bound of the bucket).
async fn prometheus_quantiles(addr: std::net::SocketAddr, name: &str) -> Result<Vec<(f64, f64)>> {
    let text = bank_testkit::http_get(addr, "/metrics").await?;
    let prefix = format!("{name}_bucket{{le=\"");
    Ok(text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse().ok()?))
        })
        .collect())
}

fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let diff: Vec<(f64, f64)> =
        after.iter().map(|(le, c)| (*le, c - before.iter().find(|(l, _)| l == le).map_or(0.0, |b| b.1))).collect();
    let total = diff.last()?.1;
    if total <= 0.0 {
        return None;
    }
    diff.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| *le * 1000.0)
}

/// Postgres wait events seen while `phase` runs, sampled every 50 ms.
async fn with_wait_events<T>(admin: &PgPool, phase: impl std::future::Future<Output = T>) -> (T, Value) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (admin, stop) = (admin.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen: HashMap<String, u64> = HashMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU'), count(*) FROM pg_stat_activity
                     WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1",
                )
                .fetch_all(&admin)
                .await
                .unwrap_or_default();
                for (k, n) in rows {
                    *seen.entry(k).or_default() += n as u64;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    };
    let out = phase.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = sampler.await.unwrap_or_default();
    let total: u64 = seen.values().sum::<u64>().max(1);
    let mut top: Vec<(String, u64)> = seen.into_iter().collect();
    top.sort_by_key(|t| std::cmp::Reverse(t.1));
    let shares: serde_json::Map<String, Value> =
        top.into_iter().take(6).map(|(k, n)| (k, json!(round(n as f64 / total as f64)))).collect();
    (out, Value::Object(shares))
}

fn code_of<T>(r: Result<T, Code>) -> Result<(), Code> {
    r.map(|_| ())
}

#[tokio::main]
async fn main() -> Result<()> {
    let secs = Duration::from_secs(env_num("BENCH_SECONDS", 5));
    let sweep_secs = Duration::from_secs(env_num("BENCH_SWEEP_SECONDS", 3));
    let n: usize = env_num("BENCH_ACCOUNTS", 1000);
    let conc: usize = env_num("BENCH_CONCURRENCY", 32);
    let pool_size: usize = env_num("DB_MAX_CONNECTIONS", 16);
    let out_dir = PathBuf::from(std::env::var("BENCH_OUT").unwrap_or_else(|_| "bench/results".into()));
    let script = std::fs::canonicalize("bench/transfer.sql").context("run from the repository root")?;
    let state = std::fs::canonicalize(std::env::var("STATE_DIR").unwrap_or_else(|_| ".state".into()))?;

    let issuer = TestIssuer::start().await?;
    let prefix = bank_testkit::unique_prefix("bench");
    let dbs = bank_testkit::migrated_by_processes("bench", |name| system::sibling(name).expect("binary path")).await;
    let (write_url, read_url) = (dbs.0.admin_url(), dbs.1.admin_url());
    // The reference runs as the superuser on a database of its own.
    let pg_url = bank_testkit::TestDb::create("benchpg", bank_testkit::DbRole::CommandOwner).await.admin_url();
    let mut base_env = bank_testkit::service_env(&prefix, &issuer.jwks_url);
    base_env.push(("DB_MAX_CONNECTIONS".into(), pool_size.to_string()));
    let mut services = system::Services::start(base_env, dbs).await?;
    let channel = |addr| Channel::from_shared(format!("http://{addr}")).expect("uri").connect_lazy();
    let (cmd_ch, q_ch) = (channel(services.command), channel(services.query));
    let commands = AccountCommandServiceClient::new(cmd_ch);
    let started = Instant::now();
    let (accounts, tokens) = setup(&issuer, commands.clone(), n).await?;
    eprintln!("bench: {n} accounts funded in {:.1} s", started.elapsed().as_secs_f64());
    let world = Arc::new(World {
        accounts,
        tokens,
        teller: issuer.teller(Uuid::now_v7()),
        commands,
        queries: AccountQueryServiceClient::new(q_ch.clone()),
        health: HealthClient::new(q_ch),
    });
    let write_db = bank_platform::db::connect(&write_url, 2).await?;
    let read_db = bank_platform::db::connect(&read_url, 2).await?;
    let admin = bank_platform::db::connect(&bank_testkit::admin_database_url(), 2).await?;
    let mut phases = serde_json::Map::new();
    let mut record = |name: &str, o: &Outcome| {
        eprintln!(
            "bench: {name:<28} {:>9.1}/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {:?}",
            o.per_second(),
            o.ms(0.5),
            o.ms(0.99),
            o.errors
        );
        phases.insert(name.to_owned(), o.json());
    };

    // --- The money path: ceilings (closed loop) ---
    let w = world.clone();
    let uniform_op = move |i: u64| {
        let w = w.clone();
        async move { code_of(w.transfer(i, w.pick(i)).await) }
    };
    let w = world.clone();
    let hot_op = move |i: u64| {
        let w = w.clone();
        async move { code_of(w.transfer(i, 0).await) }
    };
    record("warmup", &closed(conc, Duration::from_secs(2), uniform_op.clone()).await);
    let cpu = system::CpuSample::start(&services);
    let (uniform, waits) = with_wait_events(&admin, closed(conc, secs, uniform_op.clone())).await;
    let uniform_cpu = cpu.finish();
    record("transfers_uniform_max", &uniform);
    let cpu = system::CpuSample::start(&services);
    let (hot, hot_waits) = with_wait_events(&admin, closed(conc, secs, hot_op)).await;
    let hot_cpu = cpu.finish();
    record("transfers_hot_max", &hot);

    // --- pgbench on the same SQL, same servers ---
    refs::prepare_pgbench_db(&pg_url, n).await?;
    let pgbench = refs::Pgbench { url: &pg_url, script: &script, clients: pool_size, accounts: n, workdir: &state };
    let pg_uniform = pgbench.run(false, secs, None)?;
    let pg_hot = pgbench.run(true, secs, None)?;
    eprintln!(
        "bench: pgbench uniform {:.1}/s p99 {:.3} ms; hot {:.1}/s",
        pg_uniform.tps,
        pg_uniform.ms(0.99),
        pg_hot.tps
    );

    // --- Latency against offered rate, service and pgbench side by side ---
    let mut sweep = Vec::new();
    for f in [0.3, 0.5, 0.7, 0.9] {
        let s = open(f * uniform.per_second(), sweep_secs, 4096, uniform_op.clone()).await;
        let p = pgbench.run(false, sweep_secs, Some(f * pg_uniform.tps))?;
        record(&format!("transfers_open_{:.0}pct", f * 100.0), &s);
        sweep.push(json!({"fraction": f, "service": s.json(), "pgbench": p.json()}));
    }
    let at70 = |side: &str| sweep[2][side]["p99_ms"].as_f64().unwrap_or(f64::NAN);
    let (command_p99_ms, pgbench_p99_ms) = (at70("service"), at70("pgbench"));

    // --- Projection lag at half the ceiling, both ways, then the drain ---
    let lag_before = prometheus_quantiles(services.projector_http, "projection_lag_seconds").await?;
    let blackbox = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let w = world.clone();
    let bb = blackbox.clone();
    let lag_op = move |i: u64| {
        let (w, bb) = (w.clone(), bb.clone());
        async move {
            let src = w.pick(i);
            let r = w.transfer(i, src).await?;
            if i.is_multiple_of(10) {
                // Black box: poll the query side (no token) until the write shows.
                let done = Instant::now();
                let version = r.balances_after.first().map_or(0, |b| b.version);
                tokio::spawn(async move {
                    let deadline = done + Duration::from_secs(10);
                    while Instant::now() < deadline {
                        if w.balance(src, String::new()).await.is_ok_and(|b| b.version >= version) {
                            let _ = bb.lock().expect("lock").record(done.elapsed().as_micros() as u64 + 1);
                            return;
                        }
                        tokio::time::sleep(Duration::from_micros(500)).await;
                    }
                });
            }
            Ok(())
        }
    };
    let lag_load = open(0.5 * uniform.per_second(), secs, 4096, lag_op).await;
    record("transfers_open_50pct_lag", &lag_load);
    let load_stopped = Instant::now();
    let mut drain_s = f64::NAN;
    while load_stopped.elapsed() < Duration::from_secs(60) {
        if behind(&write_db, &read_db).await? == 0 {
            drain_s = load_stopped.elapsed().as_secs_f64();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // the last pollers finish
    let lag_after = prometheus_quantiles(services.projector_http, "projection_lag_seconds").await?;
    let inside_p50 = bucket_quantile(&lag_before, &lag_after, 0.5);
    let inside_p99 = bucket_quantile(&lag_before, &lag_after, 0.99);
    let bb = blackbox.lock().expect("lock").clone();
    let bb_ms = |q: f64| round(bb.value_at_quantile(q) as f64 / 1000.0);
    let projection_lag_p99_ms = bb_ms(0.99);
    eprintln!("bench: projection lag black-box p50 {} ms p99 {} ms; drain {drain_s:.3} s", bb_ms(0.5), bb_ms(0.99));

    // --- Reads ---
    let w = world.clone();
    let get_balance_op = move |i: u64| {
        let w = w.clone();
        async move { code_of(w.balance(w.pick(i), String::new()).await) }
    };
    let w = world.clone();
    let noop_op = move |_i: u64| {
        let mut h = w.health.clone();
        async move {
            let req = HealthCheckRequest { service: "bank.v1.AccountQueryService".into() };
            h.check(req).await.map(|_| ()).map_err(|s| s.code())
        }
    };
    let cpu = system::CpuSample::start(&services);
    let get_balance = closed(conc, secs, get_balance_op.clone()).await;
    let read_cpu = cpu.finish();
    record("get_balance_max", &get_balance);
    let noop = closed(conc, secs, noop_op).await;
    record("noop_rpc_max", &noop);
    let get_balance_half = open(0.5 * get_balance.per_second(), secs, 4096, get_balance_op).await;
    record("get_balance_open_50pct", &get_balance_half);
    let w = world.clone();
    let list = closed(conc / 2, secs, move |i: u64| {
        let w = w.clone();
        async move {
            let a = w.pick(i);
            let req =
                pb::ListTransactionsRequest { account_id: w.accounts[a].clone(), page_size: 20, ..Default::default() };
            w.queries.clone().list_transactions(authed(req, &w.tokens[a])).await.map(|_| ()).map_err(|s| s.code())
        }
    })
    .await;
    record("list_transactions_max", &list);
    let w = world.clone();
    let mix_run = closed(conc, secs, move |i: u64| {
        let w = w.clone();
        async move {
            // Operations, not commands: a hold is placed then captured or voided.
            match i % 5 {
                0 => w.deposit(i, false).await,
                1 => w.deposit(i, true).await,
                2 => code_of(w.transfer(i, w.pick(i)).await),
                3 => w.hold(i, true).await,
                _ => w.hold(i, false).await,
            }
        }
    })
    .await;
    record("money_mix_with_holds_max", &mix_run);
    let w = world.clone();
    let ryw = closed(conc / 2, secs, move |i: u64| {
        let w = w.clone();
        async move {
            let src = w.pick(i);
            let r = w.transfer(i, src).await?;
            code_of(w.balance(src, r.consistency_token).await)
        }
    })
    .await;
    record("read_your_writes_max", &ryw);

    // --- One transaction per command: the same ceilings with batching off ---
    let batched_rss = services.peak_rss_mb("command-service");
    services.restart_with("command-service", &[("COMMAND_BATCHING", "off")]).await?;
    record("unbatched_warmup", &closed(conc, Duration::from_secs(2), uniform_op.clone()).await);
    let cpu = system::CpuSample::start(&services);
    let (unbatched, unbatched_waits) = with_wait_events(&admin, closed(conc, secs, uniform_op.clone())).await;
    let unbatched_cpu = cpu.finish();
    record("unbatched_transfers_uniform_max", &unbatched);
    let w = world.clone();
    let unbatched_hot = closed(conc, secs, move |i: u64| {
        let w = w.clone();
        async move { code_of(w.transfer(i, 0).await) }
    })
    .await;
    record("unbatched_transfers_hot_max", &unbatched_hot);
    let unbatched_open = open(0.7 * unbatched.per_second(), sweep_secs, 4096, uniform_op.clone()).await;
    record("unbatched_transfers_open_70pct", &unbatched_open);

    // --- The rest of the references ---
    let redis_get = refs::redis_get(&bank_testkit::redis_admin_url(), conc).unwrap_or(f64::NAN);
    let fsync = refs::pg_test_fsync(&state).unwrap_or(Value::Null);

    // --- Money and counts ---
    while behind(&write_db, &read_db).await? != 0 && load_stopped.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reconcile = std::process::Command::new(system::sibling("command-service")?)
        .arg("reconcile")
        .envs(bank_testkit::service_credentials("command-service", &services.dbs.0, &services.dbs.1))
        .envs(services.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "error")
        .output()?;
    let report_text = String::from_utf8_lossy(&reconcile.stdout).to_string();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&write_db).await?;
    let read_versions: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(version), 0)::int8 FROM account_view WHERE generation = (SELECT max(generation) FROM account_view)",
    )
    .fetch_one(&read_db)
    .await?;
    let js = async_nats::jetstream::new(bank_platform::nats::connect(&bank_testkit::nats_admin_url()).await?);
    let published = js.get_stream(prefix.to_uppercase()).await?.info().await?.state.messages as i64;
    let conserved = reconcile.status.success()
        && report_text.contains("RESULT: clean")
        && events == published
        && events == read_versions;
    eprintln!(
        "bench: reconcile {}; events {events}, published {published}, projected {read_versions}",
        if reconcile.status.success() { "clean" } else { "FAILED" }
    );

    let rss = json!({
        "command-service": round(batched_rss.max(services.peak_rss_mb("command-service"))),
        "projector": round(services.peak_rss_mb("projector")),
        "query-service": round(services.peak_rss_mb("query-service")),
    });
    services.stop();

    let result = json!({
        "date": chrono::Utc::now().to_rfc3339(),
        "machine": report::machine(),
        "uniform_ratio": round(uniform.per_second() / pg_uniform.tps),
        "hot_ratio": round(hot.per_second() / pg_hot.tps),
        // The service runs batched by default: the headline ratios are batched.
        "batched_ratio": round(uniform.per_second() / pg_uniform.tps),
        "unbatched_uniform_ratio": round(unbatched.per_second() / pg_uniform.tps),
        "unbatched_hot_ratio": round(unbatched_hot.per_second() / pg_hot.tps),
        "unbatched_command_p99_ms_at_70pct": round(unbatched_open.ms(0.99)),
        "command_p99_ms": command_p99_ms,
        "pgbench_p99_ms": pgbench_p99_ms,
        "projection_lag_p99_ms": projection_lag_p99_ms,
        "drain_s": round(drain_s),
        "get_balance_ratio": round(get_balance.per_second() / noop.per_second()),
        "get_balance_p99_ms": round(get_balance_half.ms(0.99)),
        "conserved": conserved,
        "rss_mb": rss,
        "references": {
            "pgbench_uniform": pg_uniform.json(),
            "pgbench_hot": pg_hot.json(),
            "noop_rpc": noop.json(),
            "redis_benchmark_get_per_second": redis_get,
            "pg_test_fsync_ops_per_second": fsync,
            "pgbench_clients": pool_size,
        },
        "projection_lag": {
            "blackbox_p50_ms": bb_ms(0.5), "blackbox_p99_ms": bb_ms(0.99), "blackbox_max_ms": bb_ms(1.0),
            "inside_p50_ms_bucket": inside_p50, "inside_p99_ms_bucket": inside_p99,
        },
        "sweep": sweep,
        "phases": Value::Object(phases),
        "saturation": {
            "cpu_percent_uniform_max": uniform_cpu,
            "cpu_percent_hot_max": hot_cpu,
            "cpu_percent_get_balance_max": read_cpu,
            "postgres_wait_events_uniform_max": waits,
            "postgres_wait_events_hot_max": hot_waits,
            "cpu_percent_unbatched_uniform_max": unbatched_cpu,
            "postgres_wait_events_unbatched_uniform_max": unbatched_waits,
        },
        "counts": { "events": events, "published": published, "projected_versions": read_versions },
        "reconcile": report_text,
        "settings": { "seconds_per_phase": secs.as_secs(), "accounts": n, "concurrency": conc, "db_pool": pool_size },
    });
    report::write(&out_dir, &result)?;
    for url in [&write_url, &read_url, &pg_url] {
        let db = url.rsplit('/').next().unwrap_or_default();
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")).execute(&admin).await;
    }
    Ok(())
}
