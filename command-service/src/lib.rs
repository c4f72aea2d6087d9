//! command-service: the money path. `grpc` (the adapter) validates a request
//! (`validate`) into a domain command; `ledger` hands it to the executor
//! (`batch`: load what it needs, claim its key (`idempotency`), decide
//! (`execute`), write (`store`)), which answers with `views`; `events` seals
//! what is published and `relay` takes it to JetStream.

pub mod batch;
pub mod bootstrap;
pub mod error;
pub mod events;
pub mod execute;
pub mod expiry;
pub mod grpc;
pub mod idempotency;
pub mod ledger;
pub mod queue;
pub mod reconcile;
pub mod relay;
pub mod scheduler;
pub mod standing;
pub mod store;
pub mod validate;
pub mod views;
pub mod wire;

use std::{net::SocketAddr, str::FromStr, sync::Arc, time::Duration};

use anyhow::Result;
use bank_platform::{
    CancellationToken,
    auth::{AuthLayer, TokenVerifier},
    config::{self, Env},
    db, grpc as server, http,
    service::Running,
};
use bank_proto::v1::account_command_service_server::AccountCommandServiceServer;
use rust_decimal::Decimal;
use tokio::sync::Notify;

use crate::{
    execute::Limits,
    grpc::CommandApi,
    ledger::Ledger,
    relay::{OutboxRelay, RelayConfig},
};

#[derive(Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub database_url: String,
    pub db_max_connections: u32,
    pub jwks_url: String,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub limits: Limits,
    pub relay: RelayConfig,
    pub audit: AuditConfig,
    /// Batching mode (`COMMAND_BATCHING`, on by default; `off` runs one
    /// transaction per command): see `batch`.
    pub batching: Option<queue::BatchConfig>,
    /// How often due holds are looked for (`HOLD_EXPIRY_POLL_MS`).
    pub hold_expiry_poll: Duration,
    /// How often due scheduled transfers are looked for (`SCHEDULER_POLL_MS`).
    pub scheduler_poll: Duration,
    /// How a refused occurrence is tried again (`SCHEDULE_MAX_ATTEMPTS`,
    /// `SCHEDULE_RETRY_DELAY_SECS`).
    pub schedule_retry: bank_domain::schedule::RetryPolicy,
    /// auth-service's feed of user standings (suspensions, role changes).
    pub standing_feed: bank_platform::standing::Feed,
    /// Signs every published event (`EVENT_SIGNING_KEY`).
    pub event_signer: bank_platform::auth::TokenSigner,
    /// TLS on both ports and for the JWKS fetch (`TLS_*_FILE`).
    pub tls: Option<Arc<bank_platform::tls::Tls>>,
}

/// Where `reconcile` finds the read models; each is optional so the audit of
/// the write side still runs when the read side is not deployed.
#[derive(Clone)]
pub struct AuditConfig {
    pub read_database_url: Option<String>,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    /// How long a read model may stay behind an event before reconcile calls
    /// it a problem (`RECONCILE_BEHIND_BOUND_SECS`, 60).
    pub behind_bound: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field("database_url", &config::redact_url(&self.database_url))
            .field("db_max_connections", &self.db_max_connections)
            .field("jwks_url", &self.jwks_url)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("limits", &self.limits)
            .field("relay", &self.relay)
            .field("batching", &self.batching.as_ref().map(|b| (b.batchers, b.max_batch)))
            .field("event_signing_kid", &self.event_signer.kid())
            .field("tls", &self.tls.is_some())
            .field("read_database_url", &self.audit.read_database_url.as_deref().map(config::redact_url))
            .finish()
    }
}

impl Config {
    /// Every invalid variable is reported, all in one error.
    pub fn from_env(env: &impl Env) -> Result<Self> {
        let mut problems = config::Problems::new();
        let decimal = |problems: &mut config::Problems, key: &str, default: &str| {
            let default = Decimal::from_str(default).expect("the defaults are decimals");
            problems.parse(env, key, default)
        };
        let grpc_addr = problems.parse(env, "COMMAND_GRPC_ADDR", SocketAddr::from(([127, 0, 0, 1], 50052)));
        let http_addr = problems.parse(env, "COMMAND_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 9092)));
        let db_max_connections = problems.parse(env, "DB_MAX_CONNECTIONS", 16);
        let limits = Limits {
            max_amount: decimal(&mut problems, "MAX_AMOUNT", "1000000000"),
            max_balance: decimal(&mut problems, "MAX_BALANCE", "1000000000000000"),
            step_up_above: decimal(&mut problems, "STEP_UP_TRANSFER_ABOVE", "1000"),
        };
        let outbox_batch = problems.parse(env, "OUTBOX_BATCH", 256);
        let outbox_poll = Duration::from_millis(problems.parse(env, "OUTBOX_POLL_MS", 100));
        let batching = match config::string(env, "COMMAND_BATCHING", "on").as_str() {
            "off" | "false" | "0" => None,
            _ => Some(queue::BatchConfig {
                batchers: problems.parse(env, "COMMAND_BATCHERS", 1),
                max_batch: problems.parse(env, "COMMAND_BATCH_MAX", 64),
            }),
        };
        let hold_expiry_poll = Duration::from_millis(problems.parse(env, "HOLD_EXPIRY_POLL_MS", 250));
        let scheduler_poll = Duration::from_millis(problems.parse(env, "SCHEDULER_POLL_MS", 1000));
        // Three tries an hour apart: money that is short in the morning has
        // often arrived by noon, and a day's occurrence is not pushed into the next.
        let schedule_retry = bank_domain::schedule::RetryPolicy {
            max_attempts: problems.parse(env, "SCHEDULE_MAX_ATTEMPTS", 3u32).max(1),
            delay: chrono::Duration::seconds(problems.parse(env, "SCHEDULE_RETRY_DELAY_SECS", 3600)),
        };
        let event_signer = problems.check("EVENT_SIGNING_KEY", bank_platform::signing::signer_from_env(env));
        let tls = problems.check(&bank_platform::tls::ENV_VARS.join(", "), bank_platform::tls::Tls::from_env(env));
        let behind_bound = Duration::from_secs(problems.parse(env, "RECONCILE_BEHIND_BOUND_SECS", 60));
        problems.finish()?;
        Ok(Self {
            grpc_addr,
            http_addr,
            database_url: config::string(
                env,
                "COMMAND_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/bank_command",
            ),
            db_max_connections,
            jwks_url: config::string(env, "JWKS_URL", "http://127.0.0.1:9091/.well-known/jwks.json"),
            jwt_issuer: config::string(env, "JWT_ISSUER", "bankmesh-auth"),
            jwt_audience: config::string(env, "JWT_AUDIENCE", "bankmesh"),
            limits,
            relay: RelayConfig {
                nats_url: config::string(env, "NATS_URL", "nats://127.0.0.1:4222"),
                stream: config::string(env, "NATS_STREAM", "BANK_EVENTS"),
                subject_prefix: config::string(env, "NATS_SUBJECT_PREFIX", "bank.events"),
                batch: outbox_batch,
                poll: outbox_poll,
            },
            batching,
            hold_expiry_poll,
            scheduler_poll,
            schedule_retry,
            standing_feed: bank_platform::standing::Feed::from_env(env),
            event_signer: event_signer.ok_or_else(|| anyhow::anyhow!("EVENT_SIGNING_KEY could not be read"))?,
            tls: tls.flatten(),
            audit: AuditConfig {
                read_database_url: env.var("READ_DATABASE_URL"),
                redis_url: env.var("REDIS_URL"),
                redis_prefix: config::string(env, "REDIS_PREFIX", "bank:rm:"),
                behind_bound,
            },
        })
    }
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running> {
    let pool = db::connect(&config.database_url, config.db_max_connections).await?;
    db::ensure_migrated(&pool, &MIGRATOR, "command-service").await?;
    let grpc_listener = server::bind(config.grpc_addr).await?;
    let http_listener = server::bind(config.http_addr).await?;
    let mut running = Running::new(grpc_listener.local_addr()?, http_listener.local_addr()?, shutdown.clone());

    let verifier = Arc::new(
        TokenVerifier::from_jwks_url(&config.jwks_url, &config.jwt_issuer, &config.jwt_audience, config.tls.as_deref())
            .await?,
    );

    let opened = bootstrap::open_system_accounts(&pool, &config.relay.subject_prefix).await?;
    if opened > 0 {
        tracing::info!(opened, "opened the bank's settlement and fee-income accounts");
    }
    let wake = Arc::new(Notify::new());
    let standings = Arc::new(standing::Standings::new(verifier.keys()));
    let mut ledger = Ledger::new(
        pool.clone(),
        standings.clone(),
        config.limits.clone(),
        config.relay.subject_prefix.clone(),
        wake.clone(),
    );
    let standings_for_schedules = standings.clone();
    if let Some(batching) = &config.batching {
        // The batchers end when the ledger (the queue's only sender) is dropped.
        let batcher = batch::Batcher::new(
            pool.clone(),
            standings,
            config.relay.subject_prefix.clone(),
            wake.clone(),
            config.limits.clone(),
        );
        let (queue, _batchers) = batch::start(batcher, batching);
        ledger = ledger.with_batching(queue);
    }
    let ledger = Arc::new(ledger);
    running.spawn(standing::run(pool.clone(), config.standing_feed.clone(), verifier.keys(), shutdown.clone()));
    let expiry = expiry::HoldExpiry { pool: pool.clone(), ledger: ledger.clone(), poll: config.hold_expiry_poll };
    running.spawn(expiry.run(shutdown.clone()));
    let scheduler = scheduler::Scheduler {
        pool: pool.clone(),
        ledger: ledger.clone(),
        poll: config.scheduler_poll,
        retry: config.schedule_retry,
    };
    running.spawn(scheduler.run(shutdown.clone()));
    let reconciler = Arc::new(Reconciler::new(config.clone(), pool.clone()));
    let schedules = scheduler::Schedules::new(pool.clone(), standings_for_schedules);
    let api = AccountCommandServiceServer::new(CommandApi::new(ledger, reconciler, schedules))
        .max_decoding_message_size(server::MAX_REQUEST_BYTES);
    let routes = tonic::service::Routes::new(api);
    running.spawn(server::serve(
        grpc_listener,
        routes,
        &["bank.v1.AccountCommandService"],
        AuthLayer::new(verifier, &[]),
        config.tls.clone(),
        shutdown.clone(),
    ));
    // The relay's own sessions commit without waiting for the WAL flush:
    // what it writes (outbox deletions, its lease) may be lost in a crash at
    // no cost but a republish, which JetStream drops as a duplicate (or the
    // projector skips), and its rounds no longer wait for an fsync.
    let relay_pool = db::connect_with(&config.database_url, 2, &[("synchronous_commit", "off")]).await?;
    running.spawn(OutboxRelay::new(relay_pool, config.relay, wake, config.event_signer.clone()).run(shutdown.clone()));
    running.spawn(http::serve(http_listener, axum::Router::new(), config.tls, shutdown));
    Ok(running)
}

/// Runs `reconcile` against the configured write database, and the read
/// models and stream when `READ_DATABASE_URL` / Redis / NATS are reachable.
pub async fn reconcile(config: &Config) -> Result<reconcile::Report> {
    let write_db = db::connect(&config.database_url, 2).await?;
    Reconciler::new(config.clone(), write_db).run().await
}

/// Runs reconcile passes for the operator command and the admin RPC, one at a
/// time (a pass reads the whole event store; two at once only double the load).
pub struct Reconciler {
    config: Config,
    write_db: sqlx::PgPool,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Reconciler {
    pub fn new(config: Config, write_db: sqlx::PgPool) -> Self {
        Self { config, write_db, one_at_a_time: tokio::sync::Mutex::new(()) }
    }

    /// `None` when a pass is already running.
    pub async fn try_run(&self) -> Option<Result<reconcile::Report>> {
        let _guard = self.one_at_a_time.try_lock().ok()?;
        Some(self.run().await)
    }

    async fn run(&self) -> Result<reconcile::Report> {
        let audit = &self.config.audit;
        let read_db = match &audit.read_database_url {
            Some(url) => Some(db::connect(url, 2).await?),
            None => None,
        };
        let redis = match &audit.redis_url {
            Some(url) => {
                let keys = bank_readmodel::CacheKeys::new(audit.redis_prefix.clone());
                let config = redis::aio::ConnectionManagerConfig::new();
                bank_platform::redis::connect(url, config).await.ok().map(|c| (c, keys))
            }
            None => None,
        };
        let relay = &self.config.relay;
        let stream = async {
            let client = bank_platform::nats::connect(&relay.nats_url).await.ok()?;
            async_nats::jetstream::new(client).get_stream(&relay.stream).await.ok()
        }
        .await;
        let write_db = self.write_db.clone();
        let behind_bound = self.config.audit.behind_bound;
        reconcile::run(reconcile::Sources { write_db, read_db, redis, stream, behind_bound }).await
    }
}
