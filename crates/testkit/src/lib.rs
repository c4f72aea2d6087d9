//! Test support shared by the integration tests. The real servers (Postgres,
//! NATS JetStream, Redis) are started by `scripts/test`; each test gets its own
//! database, stream and key prefix from here so tests run in parallel.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use bank_platform::{
    CancellationToken,
    auth::{Claims, ROLE_ADMIN, ROLE_CUSTOMER, ROLE_SERVICE, ROLE_TELLER, STATUS_ACTIVE, TokenSigner},
    tls::Tls,
};
use uuid::Uuid;

pub const ISSUER: &str = "bankmesh-auth";
pub const AUDIENCE: &str = "bankmesh";

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

/// The admin URL of the test Postgres (database `postgres`).
pub fn admin_database_url() -> String {
    env_or("DATABASE_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
}

/// The stack's Postgres roles (deploy/postgres/provision.sql): per
/// database a migration role that owns the schema, and the roles the
/// services run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbRole {
    AuthOwner,
    Auth,
    CommandOwner,
    Command,
    ReadOwner,
    Projector,
    Query,
    NotifyOwner,
    Notify,
}

impl DbRole {
    pub fn name(self) -> &'static str {
        match self {
            Self::AuthOwner => "bank_auth_owner",
            Self::Auth => "bank_auth",
            Self::CommandOwner => "bank_command_owner",
            Self::Command => "bank_command",
            Self::ReadOwner => "bank_read_owner",
            Self::Projector => "bank_projector",
            Self::Query => "bank_query",
            Self::NotifyOwner => "bank_notify_owner",
            Self::Notify => "bank_notify",
        }
    }

    fn password(self) -> String {
        let var = format!("PG_{}_PASSWORD", self.name().to_uppercase());
        std::env::var(&var).unwrap_or_else(|_| panic!("{var} is not set: run the tests through scripts/test"))
    }
}

/// A database of one test's own, created by the admin the way the stack
/// provisions one: owned by its migration role.
#[derive(Debug, Clone)]
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// Creates it (empty: `migrated` runs the migrations too).
    pub async fn create(tag: &str, owner: DbRole) -> Self {
        let name = format!("t_{tag}_{}", Uuid::new_v4().simple());
        // Through the platform's connect: the HA cluster's URL names two hosts.
        let admin = bank_platform::db::connect(&admin_database_url(), 1).await.expect("the test Postgres");
        sqlx::query(&format!("CREATE DATABASE \"{name}\" OWNER {}", owner.name()))
            .execute(&admin)
            .await
            .expect("CREATE DATABASE");
        admin.close().await;
        Self { name }
    }

    /// Creates it and runs `migrator` as its migration role `owner`.
    pub async fn migrated(tag: &str, owner: DbRole, migrator: &sqlx::migrate::Migrator) -> Self {
        let db = Self::create(tag, owner).await;
        let pool = bank_platform::db::connect(&db.url_as(owner), 1).await.expect("the migration role connects");
        migrator.run(&pool).await.expect("migrations run as the migration role");
        pool.close().await;
        db
    }

    /// Its URL as `role`.
    pub fn url_as(&self, role: DbRole) -> String {
        format!("postgres://{}:{}@{}/{}", role.name(), role.password(), pg_host_port(), self.name)
    }

    /// Its URL as the superuser (the tests' own checks and tampering).
    pub fn admin_url(&self) -> String {
        let admin = admin_database_url();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        format!("{base}/{}", self.name)
    }
}

/// `host:port` of the test Postgres, from the admin URL.
fn pg_host_port() -> String {
    let admin = admin_database_url();
    let after_at = admin.rsplit_once('@').map_or(admin.as_str(), |(_, rest)| rest);
    after_at.split('/').next().unwrap_or("127.0.0.1:5432").to_owned()
}

/// Who connects to NATS or Redis: each service has a user of its own with
/// only the permissions it needs (deploy/nats/nats.conf,
/// deploy/redis/users.acl.in); `Admin` is the tests' own checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Command,
    Projector,
    Query,
    Auth,
    Notify,
}

impl Principal {
    pub fn user(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Command => "command",
            Self::Projector => "projector",
            Self::Query => "query",
            Self::Auth => "auth",
            Self::Notify => "notify",
        }
    }

    /// The principal a service binary runs as.
    pub fn of_service(binary: &str) -> Option<Self> {
        match binary {
            "command-service" => Some(Self::Command),
            "projector" => Some(Self::Projector),
            "query-service" => Some(Self::Query),
            "auth-service" => Some(Self::Auth),
            "notification-service" => Some(Self::Notify),
            _ => None,
        }
    }

    /// Its password on `server` ("NATS" or "REDIS"), from the environment
    /// `scripts/test` sets (`<SERVER>_<USER>_PASSWORD`).
    fn password(self, server: &str) -> String {
        let var = format!("{server}_{}_PASSWORD", self.user().to_uppercase());
        std::env::var(&var).unwrap_or_else(|_| panic!("{var} is not set: run the tests through scripts/test"))
    }
}

/// The test NATS server as `who` (host and port from `NATS_ADDR`).
pub fn nats_url_as(who: Principal) -> String {
    nats_url_at(&env_or("NATS_ADDR", "127.0.0.1:4222"), who)
}

fn nats_url_at(addr: &str, who: Principal) -> String {
    format!("nats://{}:{}@{addr}", who.user(), who.password("NATS"))
}

/// The test NATS server as the tests themselves (admin).
pub fn nats_admin_url() -> String {
    nats_url_as(Principal::Admin)
}

/// `url` (one NATS server or several) with the administrator's credentials
/// instead of its own: a test's own server uses the same users.
pub fn as_nats_admin(url: &str) -> String {
    let endpoint = bank_platform::nats::Endpoint::parse(url).expect("a NATS URL");
    let admin = Principal::Admin;
    endpoint.url.replacen("://", &format!("://{}:{}@", admin.user(), admin.password("NATS")), 1)
}

/// Makes `streams` (name, subject prefix) on the server of `nats_url` as the
/// administrator, the way the stack provisions them: no service may.
pub async fn provision_streams(nats_url: &str, streams: &[(&str, &str)]) {
    let client = bank_platform::nats::connect(&as_nats_admin(nats_url)).await.expect("NATS as the administrator");
    let js = async_nats::jetstream::new(client);
    for (name, prefix) in streams {
        bank_platform::nats::provision_stream(&js, name, prefix, bank_platform::nats::stream_replicas())
            .await
            .expect("the stream is provisioned");
    }
}

/// The event and standing streams `service_env(prefix, …)` names.
pub async fn provision_prefix(nats_url: &str, prefix: &str) {
    let (events, users) = (prefix.to_uppercase(), format!("{}_USERS", prefix.to_uppercase()));
    provision_streams(nats_url, &[(&events, &format!("{prefix}.events")), (&users, &format!("{prefix}.users"))]).await;
}

/// Publishes `payload` on `subject` as the NATS admin and waits for
/// JetStream to store it (retrying while the stream is yet to be created by
/// the service that owns it).
pub async fn publish_stored(subject: &str, payload: Vec<u8>) {
    let client = bank_platform::nats::connect(&nats_admin_url()).await.expect("the test NATS");
    let js = async_nats::jetstream::new(client);
    assert_eventually!(
        match js.publish(subject.to_owned(), payload.clone().into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        },
        Duration::from_secs(10),
        "JetStream did not store the message on {subject}"
    );
}

/// The test Redis as `who` (host and port from `REDIS_ADDR`).
pub fn redis_url_as(who: Principal) -> String {
    format!("redis://{}:{}@{}", who.user(), who.password("REDIS"), env_or("REDIS_ADDR", "127.0.0.1:6379"))
}

/// What a service process is given: through the sentinels when the tests
/// run on the HA cluster (`REDIS_SENTINELS`), else the test Redis.
pub fn redis_service_url(who: Principal) -> String {
    match std::env::var("REDIS_SENTINELS") {
        Ok(sentinels) if !sentinels.is_empty() => {
            let master = env_or("REDIS_MASTER_NAME", "bank");
            format!("redis+sentinel://{}:{}@{sentinels}/{master}", who.user(), who.password("REDIS"))
        }
        _ => redis_url_as(who),
    }
}

/// The test Redis as the tests themselves (admin).
pub fn redis_admin_url() -> String {
    redis_url_as(Principal::Admin)
}

/// The Redis prefix of one test's read models: under the read-model prefix
/// that the services' Redis users are limited to.
pub fn read_model_prefix(test_prefix: &str) -> String {
    format!("bank:rm:{test_prefix}:")
}

/// The environment that connects service `binary` to NATS and Redis as its
/// own user (processes started by the fault tests and the benchmark).
/// and to the write and read databases as its own Postgres role.
pub fn service_credentials(binary: &str, write: &TestDb, read: &TestDb) -> Vec<(String, String)> {
    let who = Principal::of_service(binary).unwrap_or_else(|| panic!("{binary} is not a service"));
    if who == Principal::Notify {
        // Its own database is its caller's to give (NOTIFY_DATABASE_URL); no Redis.
        return vec![("NATS_URL".to_owned(), nats_url_as(who))];
    }
    let mut env = vec![("REDIS_URL".to_owned(), redis_service_url(who)), ("NATS_URL".to_owned(), nats_url_as(who))];
    let role = match who {
        Principal::Projector => DbRole::Projector,
        Principal::Query => DbRole::Query,
        _ => DbRole::Command,
    };
    env.push(("READ_DATABASE_URL".to_owned(), read.url_as(role)));
    if who == Principal::Command {
        env.push(("COMMAND_DATABASE_URL".to_owned(), write.url_as(DbRole::Command)));
    }
    env
}

/// A write and a read database for service processes, migrated by the
/// services' own `migrate` commands (`bin` gives a binary's path).
pub async fn migrated_by_processes(tag: &str, bin: impl Fn(&str) -> std::path::PathBuf) -> (TestDb, TestDb) {
    let write = TestDb::create(&format!("{tag}w"), DbRole::CommandOwner).await;
    let read = TestDb::create(&format!("{tag}r"), DbRole::ReadOwner).await;
    for (binary, var, url) in [
        ("command-service", "COMMAND_MIGRATE_DATABASE_URL", write.url_as(DbRole::CommandOwner)),
        ("projector", "READ_MIGRATE_DATABASE_URL", read.url_as(DbRole::ReadOwner)),
    ] {
        let out = std::process::Command::new(bin(binary)).arg("migrate").env(var, url).output().expect("migrate");
        assert!(out.status.success(), "{binary} migrate: {}", String::from_utf8_lossy(&out.stderr));
    }
    (write, read)
}

/// The environment that points command-service, projector and query-service
/// processes at their own stream, consumer and Redis prefix, with
/// tokens from `jwks_url`: what the fault tests and the benchmark start them
/// with (each also with its own `service_credentials`).
pub fn service_env(prefix: &str, jwks_url: &str) -> Vec<(String, String)> {
    [
        ("NATS_STREAM", prefix.to_uppercase()),
        ("NATS_SUBJECT_PREFIX", format!("{prefix}.events")),
        ("USERS_STREAM", format!("{}_USERS", prefix.to_uppercase())),
        ("USERS_SUBJECT_PREFIX", format!("{prefix}.users")),
        ("PROJECTOR_DURABLE", prefix.to_owned()),
        ("REDIS_PREFIX", read_model_prefix(prefix)),
        ("JWKS_URL", jwks_url.to_owned()),
        ("JWT_ISSUER", ISSUER.to_owned()),
        ("JWT_AUDIENCE", AUDIENCE.to_owned()),
        ("PAGE_TOKEN_SECRET", prefix.to_owned()),
        ("READ_CACHE_KEY", read_cache_key().to_owned()),
        ("EVENT_SIGNING_KEY", event_key_files().0.display().to_string()),
        ("EVENT_VERIFYING_KEYS", event_key_files().1.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The key the projector seals cache entries with and query-service checks
/// them with: one per test process, made at random.
pub fn read_cache_key() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| format!("test-cache-{}", Uuid::new_v4().simple()))
}

/// Key files (signing, verifying) for the events of processes this test
/// process starts: one pair per test process, in a private temp directory.
pub fn event_key_files() -> &'static (std::path::PathBuf, std::path::PathBuf) {
    static FILES: std::sync::OnceLock<(std::path::PathBuf, std::path::PathBuf)> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bankmesh-event-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (private, public) = bank_platform::auth::TokenSigner::generate().to_pems();
        let (signing, verifying) = (dir.join("signing.pem"), dir.join("verifying.pem"));
        std::fs::write(&signing, private).expect("key file");
        std::fs::write(&verifying, public).expect("key file");
        (signing, verifying)
    })
}

/// GET `path` over a plain HTTP/1.0 connection: the response body (the
/// services' /metrics and JWKS endpoints; no client crate needed).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    s.read_to_string(&mut response).await?;
    Ok(response.split_once("\r\n\r\n").map_or(response.clone(), |(_, body)| body.to_owned()))
}

/// The value of the Prometheus sample `name` (with its labels, if any) at
/// `addr`'s /metrics; 0 when absent.
pub async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let body = http_get(addr, "/metrics").await.expect("metrics endpoint answers");
    body.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0)
}

/// A short prefix unique to one test, for stream names and Redis keys.
pub fn unique_prefix(tag: &str) -> String {
    format!("t{}{}", tag, &Uuid::new_v4().simple().to_string()[..12])
}

/// Retries `$check` (an expression returning bool, may `.await`) until it holds
/// or `$timeout` passes, then panics with `$msg`.
#[macro_export]
macro_rules! assert_eventually {
    ($check:expr, $timeout:expr, $($msg:tt)+) => {{
        let deadline = ::std::time::Instant::now() + $timeout;
        loop {
            if $check {
                break;
            }
            if ::std::time::Instant::now() > deadline {
                panic!($($msg)+);
            }
            ::tokio::time::sleep(::std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// Issues access tokens with its own key and serves the JWKS over HTTP, the
/// way auth-service does, for tests of the other services.
pub struct TestIssuer {
    signer: TokenSigner,
    pub jwks_url: String,
    shutdown: CancellationToken,
}

impl TestIssuer {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_tls(None).await
    }

    /// Serving its JWKS over HTTPS with `tls` (its URL then says https).
    pub async fn start_with_tls(tls: Option<Arc<Tls>>) -> anyhow::Result<Self> {
        let signer = TokenSigner::generate();
        let jwks = bank_platform::auth::jwks(std::slice::from_ref(&signer));
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let router = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        );
        let scheme = if tls.is_some() { "https" } else { "http" };
        tokio::spawn(bank_platform::http::serve(listener, router, tls, shutdown.clone()));
        Ok(Self { signer, jwks_url: format!("{scheme}://{addr}/.well-known/jwks.json"), shutdown })
    }

    pub fn token_for(&self, user_id: Uuid, roles: &[&str], status: &str, ttl: Duration) -> String {
        self.token_with(user_id, roles, status, ttl, None)
    }

    /// A customer who signed in with a second factor `ago` ago (the token
    /// itself is new: a refresh keeps the login's time).
    pub fn customer_with_second_factor(&self, user_id: Uuid, ago: Duration) -> String {
        let at = chrono::Utc::now().timestamp() - ago.as_secs() as i64;
        self.token_with(user_id, &[ROLE_CUSTOMER], STATUS_ACTIVE, Duration::from_secs(900), Some(at))
    }

    fn token_with(
        &self,
        user_id: Uuid,
        roles: &[&str],
        status: &str,
        ttl: Duration,
        second_factor_at: Option<i64>,
    ) -> String {
        let now = chrono::Utc::now().timestamp();
        let amr = if second_factor_at.is_some() { vec!["pwd".into(), "otp".into()] } else { vec!["pwd".into()] };
        let claims = Claims {
            sub: user_id.to_string(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            exp: now + ttl.as_secs() as i64,
            nbf: now,
            iat: now,
            jti: Uuid::now_v7().to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            status: status.into(),
            sv: 0,
            amr,
            auth_time: second_factor_at.unwrap_or(now),
        };
        self.signer.sign(&claims).expect("test token signs")
    }

    /// `standing` signed as auth-service signs its feed (with this issuer's
    /// key, which the services trust through its JWKS).
    pub fn sign_standing(&self, standing: &bank_platform::standing::Standing) -> String {
        self.signer.sign_standing(standing).expect("a standing signs")
    }

    /// A KYC-active customer's token.
    pub fn customer(&self, user_id: Uuid) -> String {
        self.token_for(user_id, &[ROLE_CUSTOMER], STATUS_ACTIVE, Duration::from_secs(900))
    }

    pub fn admin(&self, user_id: Uuid) -> String {
        self.token_for(user_id, &[ROLE_ADMIN], STATUS_ACTIVE, Duration::from_secs(900))
    }

    /// Staff who move money across the bank's boundary (as auth-service
    /// issues it: a teller is also a customer).
    pub fn teller(&self, user_id: Uuid) -> String {
        self.token_for(user_id, &[ROLE_CUSTOMER, ROLE_TELLER], STATUS_ACTIVE, Duration::from_secs(900))
    }

    /// An internal service principal.
    pub fn service(&self, user_id: Uuid) -> String {
        self.token_for(user_id, &[ROLE_SERVICE], STATUS_ACTIVE, Duration::from_secs(900))
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Puts `authorization: Bearer <token>` on a request.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii token"));
    req
}

/// A loopback port that is free now and lies below the kernel's ephemeral
/// range (32768-60999): a child process can listen on it, and listen on it
/// again after a restart, without an outgoing connection taking it meanwhile
/// (port 0 hands out ephemeral ports, which is only safe for a listener the
/// test keeps bound itself).
pub fn free_port() -> u16 {
    // Start at a random point so parallel tests rarely probe the same ports.
    let start = 10_000 + (Uuid::new_v4().as_u128() % 22_000) as u16;
    (0..22_000u16)
        .map(|i| 10_000 + (start - 10_000 + i) % 22_000)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("no free port between 10000 and 31999")
}

/// `127.0.0.1:<free_port()>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A NATS JetStream server of one test's own, as a real child process, for
/// tests that stop and restart the broker without disturbing other tests.
pub struct NatsProcess {
    pub port: u16,
    store: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl NatsProcess {
    pub async fn start() -> anyhow::Result<Self> {
        let port = free_port();
        let store = std::env::temp_dir().join(format!("bankmesh-nats-{}", Uuid::new_v4().simple()));
        let mut me = Self { port, store, child: None };
        me.resume().await?;
        Ok(me)
    }

    /// Its URL as `who`: the server has the users and permissions of
    /// deploy/nats/nats.conf, with the passwords of the shared test server.
    pub fn url_as(&self, who: Principal) -> String {
        nats_url_at(&format!("127.0.0.1:{}", self.port), who)
    }

    /// Starts the server again on the same port and store.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/nats.conf");
        let who = [Principal::Admin, Principal::Command, Principal::Projector, Principal::Auth, Principal::Query];
        let child = std::process::Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store)
            .envs(who.map(|w| (format!("NATS_{}_PASSWORD", w.user().to_uppercase()), w.password("NATS"))))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("failed to start nats-server (is it on PATH?): {e}"))?;
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            anyhow::ensure!(std::time::Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Kills the server (SIGKILL): a broker outage.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A mesh CA of its own and a certificate for each of `names`, made by the
/// stack's own script (deploy/tls/make-certs.sh) in a new folder.
pub struct MeshCerts {
    pub dir: PathBuf,
}

impl MeshCerts {
    pub fn make(names: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("bankmesh-tls-{}", Uuid::new_v4()));
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/tls/make-certs.sh");
        let status = std::process::Command::new("sh").arg(&script).arg(&dir).args(names).status().expect("sh runs");
        assert!(status.success(), "make-certs.sh failed");
        Self { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    /// `name`'s certificate and key, trusting this CA.
    pub fn tls(&self, name: &str) -> Arc<Tls> {
        let (cert, key) = (self.path(&format!("{name}.pem")), self.path(&format!("{name}.key")));
        Arc::new(Tls::from_files(&cert, &key, &self.path("ca.pem")).expect("usable certificates"))
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("ca.pem")).expect("ca.pem")
    }
}

/// A channel to `addr` over mutual TLS, presenting `tls`'s certificate and
/// expecting the server's for `localhost`.
pub async fn mtls_channel(addr: SocketAddr, tls: &Tls) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("https://{addr}"))
        .expect("an address is a URI")
        .tls_config(tls.grpc_client("localhost"))
        .expect("TLS configuration")
        .connect()
        .await
        .expect("connects over mutual TLS")
}

impl Drop for MeshCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
