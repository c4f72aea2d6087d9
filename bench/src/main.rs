//! `bench`: the whole comparison in one run (scripts/bench). Starts the
//! command-service, projector and query-service release binaries on fresh
//! databases, and measures them against references on the same servers in
//! the same run: pgbench on the same transfer SQL, a no-op RPC, redis-benchmark
//! GET, pg_test_fsync. The headline phases (mesh and pgbench ceilings,
//! projection lag at half load, GetBalance and the no-op RPC closed and at
//! one open-loop rate) run interleaved `BENCH_REPS` times, and every ratio is
//! reported as the median with its min–max, because one run of one phase on
//! a shared two-core box cannot tell a change from noise. At the uniform
//! ceiling each repetition also records what a transfer costs (CPU per
//! process, rows per table, WAL, fsyncs, NATS messages), and the same for
//! pgbench. Then money and counts must add up (reconcile clean).
//!
//! Knobs (env): BENCH_SECONDS per phase (15), BENCH_REPS (3), BENCH_ACCOUNTS
//! (1000), BENCH_CONCURRENCY client concurrency for ceilings (32),
//! BENCH_LONG=1 adds 10 minutes at half load (BENCH_LONG_MINUTES), BENCH_OUT
//! (bench/results).

mod cost;
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
use futures::{StreamExt, future::join_all};
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

/// Tokens that outlast the run (BENCH_LONG included): the bench's clients
/// do not refresh them, as a real client would every 15 minutes.
const BENCH_TOKEN_TTL: Duration = Duration::from_secs(3 * 3600);

fn customer_token(issuer: &TestIssuer) -> String {
    use bank_platform::auth::{ROLE_CUSTOMER, STATUS_ACTIVE};
    issuer.token_for(Uuid::now_v7(), &[ROLE_CUSTOMER], STATUS_ACTIVE, BENCH_TOKEN_TTL)
}

fn teller_token(issuer: &TestIssuer) -> String {
    use bank_platform::auth::{ROLE_CUSTOMER, ROLE_TELLER, STATUS_ACTIVE};
    issuer.token_for(Uuid::now_v7(), &[ROLE_CUSTOMER, ROLE_TELLER], STATUS_ACTIVE, BENCH_TOKEN_TTL)
}

async fn setup(
    issuer: &TestIssuer,
    commands: AccountCommandServiceClient<Channel>,
    n: usize,
) -> Result<(Vec<String>, Vec<String>)> {
    // Twenty accounts per customer, each funded with 1,000,000.00.
    let owners: Vec<String> = (0..n.div_ceil(20)).map(|_| customer_token(issuer)).collect();
    let teller = teller_token(issuer);
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

/// The `q` quantile of a seconds histogram between two scrapes, in ms (the
/// upper bound of its bucket).
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    bucket_value(before, after, q).map(|le| le * 1000.0)
}

/// The `q` quantile of a histogram between two scrapes (the upper bound of
/// its bucket).
fn bucket_value(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let diff: Vec<(f64, f64)> =
        after.iter().map(|(le, c)| (*le, c - before.iter().find(|(l, _)| l == le).map_or(0.0, |b| b.1))).collect();
    let total = diff.last()?.1;
    if total <= 0.0 {
        return None;
    }
    diff.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| *le)
}

/// A Prometheus histogram's `_sum` and `_count`.
async fn prometheus_sum_count(addr: std::net::SocketAddr, name: &str) -> Result<(f64, f64)> {
    let text = bank_testkit::http_get(addr, "/metrics").await?;
    let value = |suffix: &str| {
        let prefix = format!("{name}_{suffix} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    Ok((value("sum"), value("count")))
}

/// The batch sizes of each stage of the pipeline over a phase: commands per
/// command transaction, events per relay round, events
/// per stream message (a partition's share of a round), events per projector
/// transaction.
struct BatchSizes {
    probes: Vec<(&'static str, std::net::SocketAddr, &'static str)>,
    before: Vec<Scrape>,
}

/// A histogram as scraped: its buckets (upper bound, count), and its sum and count.
type Scrape = (Vec<(f64, f64)>, (f64, f64));

impl BatchSizes {
    async fn start(services: &system::Services) -> Result<Self> {
        let probes = vec![
            ("command_batch", services.command_http, "command_batch_size"),
            ("relay_round", services.command_http, "relay_round_events"),
            ("stream_message", services.command_http, "relay_message_events"),
            ("projector_transaction", services.projector_http, "projector_batch_events"),
        ];
        let mut before = Vec::new();
        for (_, addr, name) in &probes {
            before.push((prometheus_quantiles(*addr, name).await?, prometheus_sum_count(*addr, name).await?));
        }
        Ok(Self { probes, before })
    }

    /// Per stage: mean, p50 and p99 (bucket upper bounds) since `start`.
    async fn finish(self) -> Result<Value> {
        let mut out = serde_json::Map::new();
        for ((stage, addr, name), (buckets, (sum, count))) in self.probes.into_iter().zip(self.before) {
            let after = prometheus_quantiles(addr, name).await?;
            let (sum2, count2) = prometheus_sum_count(addr, name).await?;
            let n = count2 - count;
            out.insert(
                stage.to_owned(),
                json!({
                    "mean": if n > 0.0 { round((sum2 - sum) / n) } else { f64::NAN },
                    "p50": bucket_value(&buckets, &after, 0.5),
                    "p99": bucket_value(&buckets, &after, 0.99),
                    "batches": n,
                }),
            );
        }
        Ok(Value::Object(out))
    }
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

/// Starts a measured phase from the same state for the mesh and pgbench
/// alike: a checkpoint now, rather than one triggered by the previous
/// phase's WAL in the middle of this one.
async fn settle(admin: &PgPool) {
    let _ = sqlx::query("CHECKPOINT").execute(admin).await;
}

/// Median of `xs` (NaN when empty).
fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

/// {median, min, max} of `xs`.
fn spread(xs: &[f64]) -> Value {
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    json!({"median": round(median(xs)), "min": round(min), "max": round(max), "each": xs.iter().map(|x| round(*x)).collect::<Vec<_>>()})
}

/// The element-wise median of JSON documents of the same shape (numbers are
/// replaced by their median, other values taken from the first).
fn median_json(docs: &[Value]) -> Value {
    match docs.first() {
        Some(Value::Object(first)) => Value::Object(
            first
                .keys()
                .map(|k| (k.clone(), median_json(&docs.iter().map(|d| d[k].clone()).collect::<Vec<_>>())))
                .collect(),
        ),
        Some(Value::Number(_)) => json!(round(median(&docs.iter().filter_map(Value::as_f64).collect::<Vec<_>>()))),
        Some(other) => other.clone(),
        None => Value::Null,
    }
}

/// Projection lag at `rate` transfers/s: black box (a live balance stream
/// shows the write), the projector's own histogram, and
/// the time the backlog takes to drain once the load stops.
struct Lag {
    load: Outcome,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    inside_p50_ms: Option<f64>,
    inside_p99_ms: Option<f64>,
    /// Event time to the relay's publish acknowledged.
    publish_p50_ms: Option<f64>,
    publish_p99_ms: Option<f64>,
    drain_s: f64,
    /// Transfers the black box saw reach the read side.
    samples: u64,
}

async fn projection_lag(
    world: &Arc<World>,
    services: &system::Services,
    (write_db, read_db): (&PgPool, &PgPool),
    rate: f64,
    secs: Duration,
) -> Result<Lag> {
    let lag_before = prometheus_quantiles(services.projector_http, "projection_lag_seconds").await?;
    let publish_before = prometheus_quantiles(services.command_http, "relay_publish_delay_seconds").await?;
    let blackbox = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let (w, bb) = (world.clone(), blackbox.clone());
    let lag_op = move |i: u64| {
        let (w, bb) = (w.clone(), bb.clone());
        async move {
            let src = w.pick(i);
            let r = w.transfer(i, src).await?;
            if i.is_multiple_of(10) {
                // Black box: the account owner's live balance stream, opened
                // when the transfer answers, until it shows the write (its
                // first message is the read model's state, then changes).
                // Watching costs the query side little; polling it every
                // half millisecond, as this once did, loaded it with
                // thousands of reads a second and measured that load.
                let done = Instant::now();
                let version = r.balances_after.first().map_or(0, |b| b.version);
                tokio::spawn(async move {
                    let req = pb::WatchBalanceRequest { account_id: w.accounts[src].clone(), ..Default::default() };
                    let Ok(stream) = w.queries.clone().watch_balance(authed(req, &w.tokens[src])).await else {
                        return;
                    };
                    let mut stream = stream.into_inner();
                    let deadline = tokio::time::sleep(Duration::from_secs(10));
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            _ = &mut deadline => return,
                            u = stream.next() => match u {
                                Some(Ok(u)) if u.version >= version => {
                                    let _ = bb.lock().expect("lock").record(done.elapsed().as_micros() as u64 + 1);
                                    return;
                                }
                                Some(Ok(_)) => {}
                                _ => return,
                            },
                        }
                    }
                });
            }
            Ok(())
        }
    };
    let load = open(rate, secs, 4096, lag_op).await;
    let load_stopped = Instant::now();
    let mut drain_s = f64::NAN;
    while load_stopped.elapsed() < Duration::from_secs(60) {
        if behind(write_db, read_db).await? == 0 {
            drain_s = load_stopped.elapsed().as_secs_f64();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // the last pollers finish
    let lag_after = prometheus_quantiles(services.projector_http, "projection_lag_seconds").await?;
    let publish_after = prometheus_quantiles(services.command_http, "relay_publish_delay_seconds").await?;
    let bb = blackbox.lock().expect("lock").clone();
    let bb_ms = |q: f64| round(bb.value_at_quantile(q) as f64 / 1000.0);
    Ok(Lag {
        load,
        p50_ms: bb_ms(0.5),
        p99_ms: bb_ms(0.99),
        max_ms: bb_ms(1.0),
        inside_p50_ms: bucket_quantile(&lag_before, &lag_after, 0.5),
        inside_p99_ms: bucket_quantile(&lag_before, &lag_after, 0.99),
        publish_p50_ms: bucket_quantile(&publish_before, &publish_after, 0.5),
        publish_p99_ms: bucket_quantile(&publish_before, &publish_after, 0.99),
        drain_s,
        samples: bb.len(),
    })
}

/// Bytes on disk of the mesh's stores: both databases and the stream.
async fn disk_bytes(admin: &PgPool, dbs: [&str; 2], stream: &mut async_nats::jetstream::stream::Stream) -> Result<i64> {
    let pg: i64 = sqlx::query_scalar("SELECT sum(pg_database_size(d))::int8 FROM unnest($1::text[]) d")
        .bind(dbs.map(str::to_owned).to_vec())
        .fetch_one(admin)
        .await?;
    let nats = stream.info().await.map_err(|e| anyhow::anyhow!("stream info: {e}"))?.state.bytes;
    Ok(pg + nats as i64)
}

#[tokio::main]
async fn main() -> Result<()> {
    let secs = Duration::from_secs(env_num("BENCH_SECONDS", 15));
    let reps: usize = env_num("BENCH_REPS", 3).max(1);
    let sweep_secs = Duration::from_secs(env_num("BENCH_SWEEP_SECONDS", 3));
    let n: usize = env_num("BENCH_ACCOUNTS", 1000);
    let conc: usize = env_num("BENCH_CONCURRENCY", 32);
    let pool_size: usize = env_num("DB_MAX_CONNECTIONS", 16);
    let long_minutes: u64 =
        if std::env::var("BENCH_LONG").is_ok_and(|v| v == "1") { env_num("BENCH_LONG_MINUTES", 10) } else { 0 };
    let out_dir = PathBuf::from(std::env::var("BENCH_OUT").unwrap_or_else(|_| "bench/results".into()));
    let script = std::fs::canonicalize("bench/transfer.sql").context("run from the repository root")?;
    let state = std::fs::canonicalize(std::env::var("STATE_DIR").unwrap_or_else(|_| ".state".into()))?;

    let issuer = TestIssuer::start().await?;
    let prefix = bank_testkit::unique_prefix("bench");
    let dbs = bank_testkit::migrated_by_processes("bench", |name| system::sibling(name).expect("binary path")).await;
    let (write_url, read_url) = (dbs.0.admin_url(), dbs.1.admin_url());
    // The reference runs as the superuser on a database of its own.
    let pg_url = bank_testkit::TestDb::create("benchpg", bank_testkit::DbRole::CommandOwner).await.admin_url();
    bank_testkit::provision_prefix(&bank_testkit::nats_admin_url(), &prefix).await;
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
        teller: teller_token(&issuer),
        commands,
        queries: AccountQueryServiceClient::new(q_ch.clone()),
        health: HealthClient::new(q_ch),
    });
    let write_db = bank_platform::db::connect(&write_url, 2).await?;
    let read_db = bank_platform::db::connect(&read_url, 2).await?;
    let admin = bank_platform::db::connect(&bank_testkit::admin_database_url(), 2).await?;
    let pg_db = refs::prepare_pgbench_db(&pg_url, n).await?;
    let js = async_nats::jetstream::new(bank_platform::nats::connect(&bank_testkit::nats_admin_url()).await?);
    let stream_name = prefix.to_uppercase();
    let stream = || async { js.get_stream(&stream_name).await.map_err(|e| anyhow::anyhow!("stream: {e}")) };
    let mut phases = serde_json::Map::new();
    let mut record = |name: &str, o: &Outcome| {
        eprintln!(
            "bench: {name:<32} {:>9.1}/s  p50 {:>8.3} ms  p99 {:>8.3} ms  errors {:?}",
            o.per_second(),
            o.ms(0.5),
            o.ms(0.99),
            o.errors
        );
        phases.insert(name.to_owned(), o.json());
    };

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
    let pgbench = refs::Pgbench {
        url: &pg_url,
        script: &script,
        clients: pool_size,
        accounts: n,
        workdir: &state,
        pgoptions: None,
    };
    record("warmup", &closed(conc, Duration::from_secs(3), uniform_op.clone()).await);

    // `scripts/bench --ha`: one topology's transfers only (the script runs
    // each topology in turn, interleaved, and compares them).
    if let Ok(topology) = std::env::var("BENCH_TOPOLOGY") {
        settle(&admin).await;
        let mesh = closed(conc, secs, uniform_op.clone()).await;
        record("transfers_uniform_max", &mesh);
        settle(&admin).await;
        let pg = tokio::task::block_in_place(|| pgbench.run(false, secs, None))?;
        eprintln!("bench: pgbench uniform {:.1}/s p99 {:.3} ms", pg.tps, pg.ms(0.99));
        // The same SQL committing without waiting for the standby: what
        // synchronous replication costs (on one Postgres it is the same run).
        let local = refs::Pgbench { pgoptions: Some("-c synchronous_commit=local"), ..pgbench };
        settle(&admin).await;
        let pg_local = tokio::task::block_in_place(|| local.run(false, secs, None))?;
        eprintln!("bench: pgbench uniform, local commit {:.1}/s p99 {:.3} ms", pg_local.tps, pg_local.ms(0.99));
        let out = std::env::var("BENCH_TOPOLOGY_OUT").context("BENCH_TOPOLOGY_OUT")?;
        let doc = json!({
            "topology": topology,
            "stream_replicas": stream().await?.cached_info().config.num_replicas,
            "mesh": mesh.json(),
            "pgbench": pg.json(),
            "pgbench_local_commit": pg_local.json(),
        });
        std::fs::write(&out, serde_json::to_string_pretty(&doc)?)?;
        services.stop();
        return Ok(());
    }

    // --- The headline phases, interleaved `reps` times ---
    let mut each: Vec<Value> = Vec::new();
    let (mut uniform_max, mut pg_uniform_max) = (Vec::new(), Vec::new());
    let mut last_waits = (Value::Null, Value::Null);
    for rep in 1..=reps {
        eprintln!("bench: repetition {rep} of {reps}");
        // The mesh at its uniform ceiling, with what each transfer costs.
        let mut probe =
            cost::Probe { dbs: vec![("write", &write_db), ("read", &read_db)], stream: Some(stream().await?) };
        settle(&admin).await;
        let before = probe.read().await?;
        let cpu = system::CpuSample::start(&services);
        let sizes = BatchSizes::start(&services).await?;
        let (uniform, waits) = with_wait_events(&admin, closed(conc, secs, uniform_op.clone())).await;
        let uniform_cpu = cpu.finish();
        let batch_sizes = sizes.finish().await?;
        let after = probe.read().await?;
        let mesh_cost = cost::per_transfer(&before, &after, uniform.ok, uniform_cpu.per_op_us(uniform.ok));
        record(&format!("r{rep}_transfers_uniform_max"), &uniform);

        // pgbench on the same SQL, same servers, right after.
        let mut probe = cost::Probe { dbs: vec![("pgbench", &pg_db)], stream: None };
        settle(&admin).await;
        let before = probe.read().await?;
        let cpu = system::CpuSample::start(&services);
        let (pg_uniform, pg_waits) =
            with_wait_events(&admin, async { tokio::task::block_in_place(|| pgbench.run(false, secs, None)) }).await;
        let pg_uniform = pg_uniform?;
        let pg_cpu = cpu.finish();
        let after = probe.read().await?;
        let pg_cost = cost::per_transfer(&before, &after, pg_uniform.count(), pg_cpu.per_op_us(pg_uniform.count()));
        eprintln!("bench: pgbench uniform {:.1}/s p99 {:.3} ms", pg_uniform.tps, pg_uniform.ms(0.99));

        settle(&admin).await;
        let cpu = system::CpuSample::start(&services);
        let sizes = BatchSizes::start(&services).await?;
        let hot = closed(conc, secs, hot_op.clone()).await;
        let hot_cpu = cpu.finish();
        let hot_batch_sizes = sizes.finish().await?;
        record(&format!("r{rep}_transfers_hot_max"), &hot);
        settle(&admin).await;
        let pg_hot = pgbench.run(true, secs, None)?;
        eprintln!("bench: pgbench hot {:.1}/s", pg_hot.tps);

        settle(&admin).await;
        let lag = projection_lag(&world, &services, (&write_db, &read_db), 0.5 * uniform.per_second(), secs).await?;
        record(&format!("r{rep}_transfers_open_50pct_lag"), &lag.load);
        eprintln!(
            "bench: projection lag black-box p50 {} ms p99 {} ms ({} samples), inside p50 ≤ {:?} ms; drain {:.3} s",
            lag.p50_ms, lag.p99_ms, lag.samples, lag.inside_p50_ms, lag.drain_s
        );

        settle(&admin).await;
        let cpu = system::CpuSample::start(&services);
        let get_balance = closed(conc, secs, get_balance_op.clone()).await;
        let read_cpu = cpu.finish();
        record(&format!("r{rep}_get_balance_max"), &get_balance);
        let cpu = system::CpuSample::start(&services);
        let noop = closed(conc, secs, noop_op.clone()).await;
        let noop_cpu = cpu.finish();
        record(&format!("r{rep}_noop_rpc_max"), &noop);
        // Both at the same open-loop rate, so their p99s compare.
        let half = 0.5 * get_balance.per_second();
        let get_balance_half = open(half, secs, 4096, get_balance_op.clone()).await;
        record(&format!("r{rep}_get_balance_open_50pct"), &get_balance_half);
        let noop_half = open(half, secs, 4096, noop_op.clone()).await;
        record(&format!("r{rep}_noop_rpc_open_same_rate"), &noop_half);

        uniform_max.push(uniform.per_second());
        pg_uniform_max.push(pg_uniform.tps);
        last_waits = (waits.clone(), pg_waits.clone());
        each.push(json!({
            "uniform_ratio": uniform.per_second() / pg_uniform.tps,
            "cpu_ratio": mesh_cost["cpu_us"]["total"].as_f64().unwrap_or(f64::NAN)
                / pg_cost["cpu_us"]["total"].as_f64().unwrap_or(f64::NAN),
            "hot_ratio": hot.per_second() / pg_hot.tps,
            "projection_lag_p99_ms": lag.p99_ms,
            "get_balance_ratio": get_balance.per_second() / noop.per_second(),
            "get_balance_p99_ratio": get_balance_half.ms(0.99) / noop_half.ms(0.99),
            "transfers_uniform_per_second": uniform.per_second(),
            "pgbench_uniform_per_second": pg_uniform.tps,
            "transfers_hot_per_second": hot.per_second(),
            "pgbench_hot_per_second": pg_hot.tps,
            "pgbench_uniform_p99_ms": pg_uniform.ms(0.99),
            "projection_lag_p50_ms": lag.p50_ms,
            "projection_lag_max_ms": lag.max_ms,
            "projection_lag_inside_p50_ms_bucket": lag.inside_p50_ms,
            "projection_lag_inside_p99_ms_bucket": lag.inside_p99_ms,
            "stage_latency_ms": {
                "relay_publish_acked": {"p50": lag.publish_p50_ms, "p99": lag.publish_p99_ms},
                "projector_committed": {"p50": lag.inside_p50_ms, "p99": lag.inside_p99_ms},
                "feed_visible_after_answer": {"p50": lag.p50_ms, "p99": lag.p99_ms},
            },
            "batch_sizes": {"uniform_max": batch_sizes, "hot_max": hot_batch_sizes},
            "drain_s": lag.drain_s,
            "projection_lag_samples": lag.samples,
            "get_balance_per_second": get_balance.per_second(),
            "noop_rpc_per_second": noop.per_second(),
            "open_rate_reads_per_second": half,
            "get_balance_p99_ms_open": get_balance_half.ms(0.99),
            "noop_rpc_p99_ms_open": noop_half.ms(0.99),
            "cost_per_transfer": {"mesh": mesh_cost, "pgbench": pg_cost},
            // CPU µs per call at the ceilings: what a balance read costs beyond the no-op.
            "cost_per_read": {
                "get_balance_cpu_us": read_cpu.per_op_us(get_balance.ok),
                "noop_rpc_cpu_us": noop_cpu.per_op_us(noop.ok),
            },
            "cpu_percent": {
                "uniform_max": uniform_cpu.percent(),
                "pgbench_uniform": pg_cpu.percent(),
                "hot_max": hot_cpu.percent(),
                "get_balance_max": read_cpu.percent(),
            },
        }));
    }
    let series = |key: &str| -> Vec<f64> { each.iter().map(|r| r[key].as_f64().unwrap_or(f64::NAN)).collect() };
    let spreads: serde_json::Map<String, Value> = [
        "uniform_ratio",
        "hot_ratio",
        "cpu_ratio",
        "projection_lag_p99_ms",
        "get_balance_ratio",
        "get_balance_p99_ratio",
        "transfers_uniform_per_second",
        "pgbench_uniform_per_second",
        "transfers_hot_per_second",
        "pgbench_hot_per_second",
        "projection_lag_p50_ms",
        "drain_s",
        "get_balance_per_second",
        "noop_rpc_per_second",
        "get_balance_p99_ms_open",
        "noop_rpc_p99_ms_open",
    ]
    .into_iter()
    .map(|k| (k.to_owned(), spread(&series(k))))
    .collect();
    let costs: Vec<Value> = each.iter().map(|r| r["cost_per_transfer"].clone()).collect();
    let cpus: Vec<Value> = each.iter().map(|r| r["cpu_percent"].clone()).collect();
    let reads: Vec<Value> = each.iter().map(|r| r["cost_per_read"].clone()).collect();
    let uniform_ceiling = median(&uniform_max);

    // --- Once: latency against offered rate, service and pgbench side by side ---
    let mut sweep = Vec::new();
    let pg_ceiling = median(&pg_uniform_max);
    for f in [0.3, 0.5, 0.7, 0.9] {
        let s = open(f * uniform_ceiling, sweep_secs, 4096, uniform_op.clone()).await;
        let p = pgbench.run(false, sweep_secs, Some(f * pg_ceiling))?;
        record(&format!("transfers_open_{:.0}pct", f * 100.0), &s);
        sweep.push(json!({"fraction": f, "service": s.json(), "pgbench": p.json()}));
    }
    let at70 = |side: &str| sweep[2][side]["p99_ms"].as_f64().unwrap_or(f64::NAN);
    let (command_p99_ms, pgbench_p99_ms) = (at70("service"), at70("pgbench"));

    // --- Once: the other reads and the money mix ---
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

    // --- BENCH_LONG: minutes at half load; how cost grows with the store ---
    let mut long = Vec::new();
    if long_minutes > 0 {
        let names = [write_url.rsplit('/').next().unwrap_or_default(), read_url.rsplit('/').next().unwrap_or_default()];
        let mut s = stream().await?;
        for minute in 1..=long_minutes {
            let bytes_before = disk_bytes(&admin, names, &mut s).await?;
            let o = open(0.5 * uniform_ceiling, Duration::from_secs(60), 4096, uniform_op.clone()).await;
            let bytes_after = disk_bytes(&admin, names, &mut s).await?;
            record(&format!("long_minute_{minute}"), &o);
            long.push(json!({
                "minute": minute,
                "per_second": round(o.per_second()),
                "p99_ms": round(o.ms(0.99)),
                "errors": o.errors,
                "disk_bytes_per_transfer": round((bytes_after - bytes_before) as f64 / o.ok.max(1) as f64),
                "disk_bytes_total": bytes_after,
            }));
        }
    }

    // --- Once: one transaction per command, the same ceilings with batching off ---
    let batched_rss = services.peak_rss_mb("command-service");
    services.restart_with("command-service", &[("COMMAND_BATCHING", "off")]).await?;
    record("unbatched_warmup", &closed(conc, Duration::from_secs(2), uniform_op.clone()).await);
    let (unbatched, unbatched_waits) = with_wait_events(&admin, closed(conc, secs, uniform_op.clone())).await;
    record("unbatched_transfers_uniform_max", &unbatched);
    let unbatched_hot = closed(conc, secs, hot_op.clone()).await;
    record("unbatched_transfers_hot_max", &unbatched_hot);

    // --- The rest of the references ---
    let redis_get = refs::redis_get(&bank_testkit::redis_admin_url(), conc).unwrap_or(f64::NAN);
    let fsync = refs::pg_test_fsync(&state).unwrap_or(Value::Null);

    // --- Money and counts ---
    let drained = Instant::now();
    while behind(&write_db, &read_db).await? != 0 && drained.elapsed() < Duration::from_secs(120) {
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
    let published = bank_platform::nats::stored_events(&stream().await?).await?.len() as i64;
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

    let med = |k: &str| spreads[k]["median"].clone();
    let result = json!({
        "date": chrono::Utc::now().to_rfc3339(),
        "machine": report::machine(),
        // The medians of the interleaved repetitions.
        "uniform_ratio": med("uniform_ratio"),
        "hot_ratio": med("hot_ratio"),
        "cpu_ratio": med("cpu_ratio"),
        "projection_lag_p99_ms": med("projection_lag_p99_ms"),
        "get_balance_ratio": med("get_balance_ratio"),
        "get_balance_p99_ratio": med("get_balance_p99_ratio"),
        "conserved": conserved,
        "spread": spreads,
        "repetitions": each,
        "cost_per_transfer": median_json(&costs),
        "stage_latency_ms": median_json(&each.iter().map(|r| r["stage_latency_ms"].clone()).collect::<Vec<_>>()),
        "batch_sizes": median_json(&each.iter().map(|r| r["batch_sizes"].clone()).collect::<Vec<_>>()),
        "cost_per_read": median_json(&reads),
        "cpu_percent": median_json(&cpus),
        "postgres_wait_events": {"mesh_uniform_max": last_waits.0, "pgbench_uniform": last_waits.1, "mesh_unbatched_uniform_max": unbatched_waits},
        "command_p99_ms_at_70pct": command_p99_ms,
        "pgbench_p99_ms_at_70pct": pgbench_p99_ms,
        "unbatched_uniform_ratio": round(unbatched.per_second() / pg_ceiling),
        "unbatched_hot_ratio": round(unbatched_hot.per_second() / median(&series("pgbench_hot_per_second"))),
        "rss_mb": rss,
        "long": long,
        "references": {
            "redis_benchmark_get_per_second": redis_get,
            "pg_test_fsync_ops_per_second": fsync,
            "pgbench_clients": pool_size,
        },
        "sweep": sweep,
        "phases": Value::Object(phases),
        "counts": { "events": events, "published": published, "projected_versions": read_versions },
        "reconcile": report_text,
        "settings": {
            "seconds_per_phase": secs.as_secs(), "repetitions": reps, "accounts": n, "concurrency": conc,
            "db_pool": pool_size, "long_minutes": long_minutes,
        },
    });
    report::write(&out_dir, &result)?;
    for url in [&write_url, &read_url, &pg_url] {
        let db = url.rsplit('/').next().unwrap_or_default();
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")).execute(&admin).await;
    }
    Ok(())
}
