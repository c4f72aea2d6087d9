//! The system as real processes: command-service, projector and
//! query-service binaries with their own databases, stream and prefixes,
//! tokens from an in-process JWKS issuer, and a load of clients that retry
//! with the same idempotency key until they get a definitive answer.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bank_proto::v1::{
    self as pb, account_command_service_client::AccountCommandServiceClient,
    account_query_service_client::AccountQueryServiceClient,
};
use bank_testkit::{TestIssuer, authed};
use rust_decimal::Decimal;
use sqlx::PgPool;
use tonic::{Code, transport::Channel};
use uuid::Uuid;

fn bin(name: &str) -> PathBuf {
    // tests run from target/<profile>/deps/; the binaries sit in target/<profile>/.
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(name)
}

pub fn stack(action: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/stack");
    let ok = Command::new("bash").arg(script).arg(action).status().unwrap().success();
    assert!(ok, "scripts/stack {action} failed");
}

pub struct Service {
    name: &'static str,
    child: Option<Child>,
}

pub struct System {
    pub issuer: TestIssuer,
    env: Vec<(String, String)>,
    dbs: (bank_testkit::TestDb, bank_testkit::TestDb),
    services: HashMap<&'static str, Service>,
    pub command_addr: SocketAddr,
    pub query_addr: SocketAddr,
    /// Second instances (the HA topology): clients balance over all.
    pub more_command_addrs: Vec<SocketAddr>,
    pub more_query_addrs: Vec<SocketAddr>,
    pub write_db: PgPool,
    pub read_db: PgPool,
    /// Transactions the test itself made outside the load (the checks count
    /// them as seen).
    pub own_transactions: Mutex<Vec<String>>,
    /// notification-service's own environment, once started.
    notify_env: Vec<(String, String)>,
}

impl System {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// With extra environment for every service (later entries win).
    pub async fn start_with(extra_env: &[(&str, String)]) -> Self {
        let issuer = TestIssuer::start().await.unwrap();
        let prefix = bank_testkit::unique_prefix("e2e");
        let (command_addr, query_addr) = (bank_testkit::free_addr(), bank_testkit::free_addr());
        let dbs = bank_testkit::migrated_by_processes("e2e", bin).await;
        bank_testkit::provision_prefix(&bank_testkit::nats_admin_url(), &prefix).await;
        let mut env = bank_testkit::service_env(&prefix, &issuer.jwks_url);
        env.extend(
            [
                ("COMMAND_GRPC_ADDR", command_addr.to_string()),
                ("COMMAND_HTTP_ADDR", bank_testkit::free_addr().to_string()),
                ("QUERY_GRPC_ADDR", query_addr.to_string()),
                ("QUERY_HTTP_ADDR", bank_testkit::free_addr().to_string()),
                ("PROJECTOR_HTTP_ADDR", bank_testkit::free_addr().to_string()),
                ("RUST_LOG", "warn".into()),
            ]
            .into_iter()
            .chain(extra_env.iter().cloned())
            .map(|(k, v)| (k.to_string(), v)),
        );
        // The tests' own checks read both databases as the superuser.
        let write_db = bank_platform::db::connect(&dbs.0.admin_url(), 2).await.unwrap();
        let read_db = bank_platform::db::connect(&dbs.1.admin_url(), 2).await.unwrap();
        let mut sys = Self {
            issuer,
            env,
            dbs,
            services: HashMap::new(),
            command_addr,
            query_addr,
            more_command_addrs: Vec::new(),
            more_query_addrs: Vec::new(),
            write_db,
            read_db,
            own_transactions: Mutex::default(),
            notify_env: Vec::new(),
        };
        for name in ["command-service", "projector", "query-service"] {
            sys.spawn(name);
        }
        sys.wait_port(command_addr).await;
        sys.wait_port(query_addr).await;
        sys
    }

    fn spawn(&mut self, name: &'static str) {
        self.spawn_as(name, name, &[]);
    }

    /// A second command-service on the same databases and stream, on a port
    /// of its own; its gRPC address.
    pub async fn start_second_command_service(&mut self) -> SocketAddr {
        let addr = bank_testkit::free_addr();
        let env = [
            ("COMMAND_GRPC_ADDR".to_owned(), addr.to_string()),
            ("COMMAND_HTTP_ADDR".to_owned(), bank_testkit::free_addr().to_string()),
        ];
        self.spawn_as("command-service-2", "command-service", &env);
        self.wait_port(addr).await;
        addr
    }

    /// Two instances of every service: a second command-service,
    /// projector and query-service beside the first ones.
    pub async fn start_two_of_each(extra_env: &[(&str, String)]) -> Self {
        let mut sys = Self::start_with(extra_env).await;
        let command = sys.start_second_command_service().await;
        let query = bank_testkit::free_addr();
        sys.spawn_as(
            "projector-2",
            "projector",
            &[("PROJECTOR_HTTP_ADDR".to_owned(), bank_testkit::free_addr().to_string())],
        );
        let query_env = [
            ("QUERY_GRPC_ADDR".to_owned(), query.to_string()),
            ("QUERY_HTTP_ADDR".to_owned(), bank_testkit::free_addr().to_string()),
        ];
        sys.spawn_as("query-service-2", "query-service", &query_env);
        sys.wait_port(query).await;
        sys.more_command_addrs.push(command);
        sys.more_query_addrs.push(query);
        sys
    }

    /// notification-service as a process of its own, on a database of its
    /// own migrated by its own `migrate`; its gRPC address and that database
    /// (as the superuser, for the test's checks).
    pub async fn start_notifications(&mut self) -> (SocketAddr, PgPool) {
        let db = bank_testkit::TestDb::create("e2entf", bank_testkit::DbRole::NotifyOwner).await;
        let out = Command::new(bin("notification-service"))
            .arg("migrate")
            .env("NOTIFY_MIGRATE_DATABASE_URL", db.url_as(bank_testkit::DbRole::NotifyOwner))
            .output()
            .unwrap();
        assert!(out.status.success(), "notification-service migrate: {}", String::from_utf8_lossy(&out.stderr));
        let addr = bank_testkit::free_addr();
        self.notify_env = vec![
            ("NOTIFY_DATABASE_URL".to_owned(), db.url_as(bank_testkit::DbRole::Notify)),
            ("NOTIFY_GRPC_ADDR".to_owned(), addr.to_string()),
            ("NOTIFY_HTTP_ADDR".to_owned(), bank_testkit::free_addr().to_string()),
        ];
        let env = self.notify_env.clone();
        self.spawn_as("notification-service", "notification-service", &env);
        self.wait_port(addr).await;
        (addr, bank_platform::db::connect(&db.admin_url(), 2).await.unwrap())
    }

    /// Sends `signal` (STOP, CONT, ...) to the process with this pid.
    pub fn signal(pid: u32, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    fn spawn_as(&mut self, name: &'static str, binary: &str, extra_env: &[(String, String)]) {
        let child = Command::new(bin(binary))
            .envs(bank_testkit::service_credentials(binary, &self.dbs.0, &self.dbs.1))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(service_log(name))
            .stderr(service_log(name))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} (run cargo build --bins first): {e}"));
        self.services.insert(name, Service { name, child: Some(child) });
    }

    async fn wait_port(&self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "{addr} did not open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill9(&mut self, name: &'static str) {
        if let Some(mut c) = self.services.get_mut(name).and_then(|s| s.child.take()) {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub async fn restart(&mut self, name: &'static str) {
        self.kill9(name);
        if name == "notification-service" {
            let env = self.notify_env.clone();
            self.spawn_as(name, name, &env);
            return;
        }
        self.spawn(name);
        if name == "command-service" {
            self.wait_port(self.command_addr).await;
        }
    }

    pub fn pid(&self, name: &str) -> u32 {
        self.services[name].child.as_ref().unwrap().id()
    }

    /// The read models' database.
    pub fn read_db_name(&self) -> &str {
        &self.dbs.1.name
    }

    pub fn env(&self) -> Vec<(String, String)> {
        self.env.clone()
    }

    pub async fn command_client(&self) -> AccountCommandServiceClient<Channel> {
        AccountCommandServiceClient::new(balanced(self.command_addr, &self.more_command_addrs))
    }

    pub async fn query_client(&self) -> AccountQueryServiceClient<Channel> {
        AccountQueryServiceClient::new(balanced(self.query_addr, &self.more_query_addrs))
    }

    /// Runs `command-service reconcile` against this system; its report and whether it was clean.
    pub fn reconcile(&self) -> (bool, String) {
        let out = self.reconcile_command().output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `command-service reconcile` process for this system, to run later.
    pub fn reconcile_command(&self) -> Command {
        let mut command = Command::new(bin("command-service"));
        command
            .arg("reconcile")
            .envs(bank_testkit::service_credentials("command-service", &self.dbs.0, &self.dbs.1))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    /// Waits until the Postgres read model equals the write model, account by account.
    pub async fn converged(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let write: Vec<(Uuid, Decimal, i64)> =
                sqlx::query_as("SELECT id, balance, version FROM accounts ORDER BY id")
                    .fetch_all(&self.write_db)
                    .await
                    .unwrap_or_default();
            let read: Vec<(Uuid, Decimal, i64)> = sqlx::query_as(
                "SELECT account_id, balance, version FROM account_view WHERE generation = (SELECT active_generation FROM projection_meta) ORDER BY account_id",
            )
            .fetch_all(&self.read_db)
            .await
            .unwrap_or_default();
            if !write.is_empty() && write == read {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Where a service's output goes: nowhere, or with `E2E_LOGS=<folder>` set
/// (to read what a failing run's services said), to `<folder>/<name>.log`.
fn service_log(name: &str) -> Stdio {
    let Ok(dir) = std::env::var("E2E_LOGS") else { return Stdio::null() };
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("E2E_LOGS={dir}: {e}"));
    let path = format!("{dir}/{name}.log");
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
    Stdio::from(file.unwrap_or_else(|e| panic!("{path}: {e}")))
}

/// One instance's channel, or one balanced over every instance (a killed
/// one's calls fail, are retried, and land on another).
fn balanced(first: SocketAddr, more: &[SocketAddr]) -> Channel {
    let endpoint = |a: &SocketAddr| {
        Channel::from_shared(format!("http://{a}")).unwrap().connect_timeout(Duration::from_millis(500))
    };
    if more.is_empty() {
        return endpoint(&first).connect_lazy();
    }
    Channel::balance_list(std::iter::once(&first).chain(more).map(endpoint))
}

impl Drop for System {
    fn drop(&mut self) {
        for s in self.services.values_mut() {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// What the clients saw.
#[derive(Default)]
pub struct Ledger {
    /// Transaction ids of every command a client saw succeed.
    pub succeeded: Vec<String>,
    pub refused: usize,
    pub retries: usize,
    /// Answers that are neither success, a business refusal nor retryable.
    pub wrong: Vec<String>,
    /// Read-your-writes balance reads that showed the write, and those that
    /// still answered a retryable error after a minute of retries.
    pub reads_ok: usize,
    pub reads_unavailable: usize,
    /// For each write read back: when its answer came, and how long until a
    /// read with its consistency token showed it (time until reads are fresh).
    pub read_waits: Vec<(Instant, Duration)>,
    /// Reads still retrying.
    pub reads_pending: usize,
    /// When each success came back: the longest gap is the time without service.
    pub success_times: Vec<Instant>,
}

impl Ledger {
    /// The longest time without a successful command between `from` and `to`.
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = self.success_times.iter().copied().filter(|t| *t >= from && *t <= to).collect();
        times.sort();
        let mut last = from;
        let mut gap = Duration::ZERO;
        for t in times.into_iter().chain(std::iter::once(to)) {
            gap = gap.max(t.duration_since(last));
            last = t;
        }
        gap
    }

    /// The longest wait for a read-your-writes read of a write answered
    /// between `from` and `to`.
    pub fn longest_read_wait(&self, from: Instant, to: Instant) -> Duration {
        self.read_waits.iter().filter(|(t, _)| *t >= from && *t <= to).map(|(_, w)| *w).max().unwrap_or_default()
    }
}

fn retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Internal)
}

/// `tasks` customers, each with two funded accounts, moving money until `stop`.
pub async fn load(sys: &System, tasks: usize, stop: Arc<AtomicBool>) -> Arc<Mutex<Ledger>> {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for t in 0..tasks {
        let token = sys.issuer.customer(Uuid::now_v7());
        let teller = sys.issuer.teller(Uuid::now_v7());
        let client = sys.command_client().await;
        let queries = sys.query_client().await;
        let (ledger, stop) = (ledger.clone(), stop.clone());
        let mut accounts = Vec::new();
        for _ in 0..2 {
            let req = pb::OpenAccountRequest {
                r#type: 1,
                currency_code: "USD".into(),
                idempotency_key: Uuid::new_v4().to_string(),
            };
            let res = retry(
                || {
                    let (mut c, r, t) = (client.clone(), req.clone(), token.clone());
                    async move { c.open_account(authed(r, &t)).await }
                },
                &ledger,
            )
            .await;
            accounts.push(res.expect("open").into_inner().account.unwrap().account_id);
        }
        let reading = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = Uuid::new_v4().to_string();
                let money = Some(pb::Money {
                    currency_code: "USD".into(),
                    amount: format!("{}.{:02}", n % 7 + 1, (n * 13 + t as u64) % 100),
                });
                let result = if n.is_multiple_of(3) {
                    let from = (n / 3 % 2) as usize;
                    let req = pb::TransferRequest {
                        from_account_id: accounts[from].clone(),
                        to_account_id: accounts[1 - from].clone(),
                        money,
                        idempotency_key: key,
                        description: String::new(),
                    };
                    retry(
                        || {
                            let (mut c, r, t) = (client.clone(), req.clone(), token.clone());
                            async move { c.transfer(authed(r, &t)).await }
                        },
                        &ledger,
                    )
                    .await
                } else {
                    let req = pb::DepositRequest {
                        account_id: accounts[(n % 2) as usize].clone(),
                        money,
                        idempotency_key: key,
                        description: String::new(),
                    };
                    retry(
                        || {
                            let (mut c, r, t) = (client.clone(), req.clone(), teller.clone());
                            async move { c.deposit(authed(r, &t)).await }
                        },
                        &ledger,
                    )
                    .await
                };
                let written = {
                    let mut l = ledger.lock().unwrap();
                    match result {
                        Ok(r) => {
                            let r = r.into_inner();
                            l.succeeded.push(r.transaction_id);
                            l.success_times.push(Instant::now());
                            r.balances_after.into_iter().next().map(|a| (a.account_id, a.version, r.consistency_token))
                        }
                        Err(s) if s.code() == Code::FailedPrecondition => {
                            l.refused += 1;
                            None
                        }
                        Err(s) => {
                            l.wrong.push(format!("{:?}: {}", s.code(), s.message()));
                            None
                        }
                    }
                };
                // Every fourth write is read back with its consistency token,
                // beside the writes (a read side behind a fault must not slow
                // them, nor hide how long it was behind); one read at a time
                // per customer, as a client waiting for its balance would.
                if let Some((account_id, version, token_ct)) =
                    written.filter(|_| n.is_multiple_of(4) && !reading.swap(true, Ordering::Relaxed))
                {
                    let (queries, token, ledger, reading) =
                        (queries.clone(), token.clone(), ledger.clone(), reading.clone());
                    ledger.lock().unwrap().reads_pending += 1;
                    tokio::spawn(async move {
                        let answered = Instant::now();
                        let give_up = answered + Duration::from_secs(60);
                        loop {
                            let mut req = authed(
                                pb::GetBalanceRequest {
                                    account_id: account_id.clone(),
                                    min_consistency_token: token_ct.clone(),
                                    as_of: None,
                                },
                                &token,
                            );
                            req.set_timeout(Duration::from_secs(2));
                            let read = queries.clone().get_balance(req).await;
                            // Too many of this customer's reads waiting is an answer to
                            // retry too (when the read side is behind, they pile up).
                            let again = |c: Code| retryable(c) || c == Code::ResourceExhausted;
                            if matches!(&read, Err(s) if again(s.code())) && Instant::now() < give_up {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                            reading.store(false, Ordering::Relaxed);
                            let mut l = ledger.lock().unwrap();
                            l.reads_pending -= 1;
                            match read {
                                Ok(b) if b.get_ref().version >= version => {
                                    l.reads_ok += 1;
                                    l.read_waits.push((answered, answered.elapsed()));
                                }
                                Ok(b) => l
                                    .wrong
                                    .push(format!("read version {} before its write {version}", b.get_ref().version)),
                                Err(s) if again(s.code()) => l.reads_unavailable += 1,
                                Err(s) => l.wrong.push(format!("read {:?}: {}", s.code(), s.message())),
                            }
                            break;
                        }
                    });
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    ledger
}

/// Retries a command with the same request (same idempotency key) while the
/// answer is retryable, for up to a minute.
async fn retry<T, F, Fut>(mut call: F, ledger: &Mutex<Ledger>) -> Result<tonic::Response<T>, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Err(s) if retryable(s.code()) && Instant::now() < deadline => {
                ledger.lock().unwrap().retries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// The checks every fault must pass afterwards.
pub async fn assert_nothing_lost_nothing_doubled(sys: &System, ledger: &Mutex<Ledger>) {
    // Reads still retrying end within their minute.
    let waiting = Instant::now();
    while ledger.lock().unwrap().reads_pending > 0 && waiting.elapsed() < Duration::from_secs(65) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut succeeded, wrong, retries, reads_ok, reads_unavailable) = {
        let l = ledger.lock().unwrap();
        (l.succeeded.clone(), l.wrong.clone(), l.retries, l.reads_ok, l.reads_unavailable)
    };
    succeeded.extend(sys.own_transactions.lock().unwrap().iter().cloned());
    assert!(wrong.is_empty(), "clients saw wrong answers: {wrong:?}");
    assert!(succeeded.len() > 20, "too little load got through: {}", succeeded.len());
    // Every success is in the event store exactly once: its two postings
    // (double entry: a deposit's other side is the bank's settlement account).
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT transaction_id::text, count(*) FROM postings GROUP BY transaction_id")
            .fetch_all(&sys.write_db)
            .await
            .unwrap();
    let in_store: HashMap<String, i64> = rows.into_iter().collect();
    for tx in &succeeded {
        let n = in_store.get(tx).copied().unwrap_or(0);
        assert_eq!(n, 2, "transaction {tx} has {n} postings in the event store, not 2");
    }
    // And nothing is in the store that no client saw succeed (retries had one effect).
    let seen: std::collections::HashSet<&String> = succeeded.iter().collect();
    let unseen: Vec<&String> = in_store.keys().filter(|t| !seen.contains(t)).collect();
    assert!(unseen.is_empty(), "effects no client saw: {unseen:?}");
    assert!(sys.converged(Duration::from_secs(60)).await, "the read model did not converge to the write model");
    let (clean, report) = sys.reconcile();
    assert!(clean, "reconcile found problems:\n{report}");
    assert_stream_in_version_order(sys).await;
    assert!(reads_ok > 0, "no read-your-writes read succeeded");
    eprintln!(
        "{} commands succeeded, {retries} retries; {reads_ok} reads saw their write, {reads_unavailable} unavailable",
        succeeded.len()
    );
}

/// A teller's deposit into a new account, then the balance read with the
/// deposit's consistency token: the first read shows it.
pub async fn deposit_and_read_back(sys: &System) {
    deposit_and_read_back_via(sys, sys.command_addr, Duration::from_secs(5)).await;
}

/// The same through the command-service at `command_addr`, the read retried
/// while it answers UNAVAILABLE for up to `within`.
pub async fn deposit_and_read_back_via(sys: &System, command_addr: SocketAddr, within: Duration) {
    let (customer, teller) = (sys.issuer.customer(Uuid::now_v7()), sys.issuer.teller(Uuid::now_v7()));
    let channel = Channel::from_shared(format!("http://{command_addr}")).unwrap().connect_lazy();
    let mut commands = AccountCommandServiceClient::new(channel);
    let deadline = Instant::now() + within;
    let open =
        pb::OpenAccountRequest { r#type: 1, currency_code: "USD".into(), idempotency_key: Uuid::new_v4().to_string() };
    let account =
        commands.open_account(authed(open, &customer)).await.unwrap().into_inner().account.unwrap().account_id;
    let deposit = pb::DepositRequest {
        account_id: account.clone(),
        money: Some(pb::Money { currency_code: "USD".into(), amount: "12.34".into() }),
        idempotency_key: Uuid::new_v4().to_string(),
        description: String::new(),
    };
    // A hung process may hold the settlement account's lock for up to the
    // lock timeout: the answer is then UNAVAILABLE, and the client retries
    // with the same idempotency key, as any client would.
    let written = loop {
        match commands.deposit(authed(deposit.clone(), &teller)).await {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("deposit via {command_addr}: {s:?}"),
        }
    };
    sys.own_transactions.lock().unwrap().push(written.transaction_id.clone());
    let balance = loop {
        let mut read = authed(
            pb::GetBalanceRequest {
                account_id: account.clone(),
                min_consistency_token: written.consistency_token.clone(),
                as_of: None,
            },
            &customer,
        );
        read.set_timeout(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100)));
        match sys.query_client().await.get_balance(read).await {
            Ok(b) => break b.into_inner(),
            Err(s) if retryable(s.code()) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!("the deposit was not readable with its token within {within:?}: {s:?}"),
        }
    };
    assert_eq!(balance.balance.unwrap().amount, "12.34");
}

/// Every account's events are on the stream in version order (an ack
/// failing mid-pipeline must not let a later version be stored ahead of an
/// earlier one): each version's first appearance comes after the one before
/// it. A version seen before is a duplicate the projector skips (a relay
/// restarted or taking over the lease regroups rows its predecessor may have
/// stored).
pub async fn assert_stream_in_version_order(sys: &System) {
    let name = sys.env.iter().find(|(k, _)| k == "NATS_STREAM").map(|(_, v)| v.clone()).expect("NATS_STREAM");
    let client = bank_platform::nats::connect(&bank_testkit::nats_admin_url()).await.unwrap();
    let stream = async_nats::jetstream::new(client).get_stream(&name).await.unwrap();
    let mut highest: HashMap<String, i64> = HashMap::new();
    for stored in bank_platform::nats::stored_events(&stream).await.unwrap() {
        let env = stored.envelope;
        let highest = highest.entry(env.account_id.clone()).or_insert(0);
        assert!(
            env.version <= *highest + 1,
            "account {} has version {} first on the stream after {} (message {})",
            env.account_id,
            env.version,
            highest,
            stored.sequence
        );
        *highest = env.version.max(*highest);
    }
}
