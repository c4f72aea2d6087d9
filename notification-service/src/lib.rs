//! notification-service: consumes the event stream with a durable consumer
//! of its own (through `bank-stream`, as every internal consumer does) and
//! turns events into notifications for the accounts' owners: an in-app feed,
//! balance alerts that fire once per crossing, and webhooks signed the
//! Standard Webhooks way, delivered at least once with backoff and a
//! dead-letter state, one endpoint never holding up another.
//!
//! It also follows auth-service's standing feed (`standings`) and tells a
//! user their KYC approval, a suspension or a reinstatement.
//!
//! `rules` says what an event means (no I/O); `store` applies batches of
//! events in one transaction each; `webhook` guards and signs deliveries;
//! `api` is the gRPC adapter.

pub mod api;
pub mod email;
pub mod rules;
pub mod standings;
pub mod statements;
pub mod store;
pub mod webhook;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Result;
use bank_platform::{
    CancellationToken,
    auth::{AuthLayer, TokenVerifier},
    config::{self, Env},
    db, grpc as server, http,
    sealed::Secrets,
    service::Running,
    signing::EventKeys,
};
use bank_proto::v1::notification_service_server::NotificationServiceServer;
use tokio::sync::Notify;

use crate::{api::NotificationApi, store::Store, webhook::Guard};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The durable consumer this service reads the event stream through.
pub const CONSUMER: &str = "notification-service";

#[derive(Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub database_url: String,
    pub jwks_url: String,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub nats_url: String,
    pub stream: String,
    pub subject_prefix: String,
    /// auth-service's standing feed (`USERS_STREAM`, `USERS_SUBJECT_PREFIX`).
    pub standing_feed: bank_platform::standing::Feed,
    /// Public keys events must be signed with (`EVENT_VERIFYING_KEYS`);
    /// `None` believes unsigned events: a development stack only.
    pub event_keys: Option<Arc<EventKeys>>,
    pub webhooks: webhook::Policy,
    pub guard: Guard,
    /// The key endpoint secrets are sealed under (`WEBHOOK_SECRETS_KEY`, a
    /// file); unset, they are stored as they are: a development stack only.
    pub secrets: Secrets,
    /// The bank's mail server (`SMTP_URL`: smtp:// or smtps://, with its
    /// credentials); no email is sent without one.
    pub smtp_url: Option<String>,
    /// The sender of every email (`MAIL_FROM`).
    pub mail_from: String,
    /// TLS on both ports and for the JWKS fetch (`TLS_*_FILE`).
    pub tls: Option<Arc<bank_platform::tls::Tls>>,
    /// Monthly statements: where they come from and as whom; off unless
    /// `QUERY_GRPC_URL`, `AUTH_GRPC_URL`, `SERVICE_CLIENT_ID` and
    /// `SERVICE_CLIENT_SECRET` are all set.
    pub statements: Option<statements::Source>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field("database_url", &config::redact_url(&self.database_url))
            .field("jwks_url", &self.jwks_url)
            .field("nats_url", &config::redact_url(&self.nats_url))
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("standing_feed", &self.standing_feed)
            .field("event_keys", &self.event_keys.is_some())
            .field("webhooks", &self.webhooks)
            .field("guard", &self.guard)
            .field("secrets", &self.secrets)
            .field("smtp_url", &self.smtp_url.as_deref().map(config::redact_url))
            .field("mail_from", &self.mail_from)
            .field("tls", &self.tls.is_some())
            .field("statements", &self.statements)
            .finish()
    }
}

impl Config {
    /// Every invalid variable is reported, all in one error.
    pub fn from_env(env: &impl Env) -> Result<Self> {
        let mut problems = config::Problems::new();
        let grpc_addr = problems.parse(env, "NOTIFY_GRPC_ADDR", SocketAddr::from(([127, 0, 0, 1], 50054)));
        let http_addr = problems.parse(env, "NOTIFY_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 9095)));
        let tls = problems.check(&bank_platform::tls::ENV_VARS.join(", "), bank_platform::tls::Tls::from_env(env));
        let event_keys = problems.check("EVENT_VERIFYING_KEYS", EventKeys::from_env(env));
        let webhooks = webhook::Policy {
            max_attempts: problems.parse(env, "WEBHOOK_MAX_ATTEMPTS", 8u32).max(1),
            retry_base: Duration::from_millis(problems.parse(env, "WEBHOOK_RETRY_BASE_MS", 1000)),
            retry_max: Duration::from_secs(problems.parse(env, "WEBHOOK_RETRY_MAX_SECS", 3600)),
            timeout: Duration::from_millis(problems.parse(env, "WEBHOOK_TIMEOUT_MS", 5000)),
            concurrency: problems.parse(env, "WEBHOOK_CONCURRENCY", 16usize).max(1),
        };
        let deny_ports = config::string(env, "WEBHOOK_DENY_PORTS", "");
        let mesh_ports = deny_ports
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<u16>().map_err(|_| p.to_owned()))
            .collect::<Result<Vec<u16>, String>>();
        let mesh_ports =
            problems.check("WEBHOOK_DENY_PORTS", mesh_ports.map_err(|p| anyhow::anyhow!("{p} is not a port")));
        let secrets = match env.var("WEBHOOK_SECRETS_KEY").filter(|p| !p.is_empty()) {
            Some(path) => problems.check("WEBHOOK_SECRETS_KEY", Secrets::from_file(&path)),
            None => Some(Secrets::unsealed()),
        };
        let statement_poll = Duration::from_secs(problems.parse(env, "STATEMENT_POLL_SECS", 60u64).max(1));
        let statements = match (
            env.var("QUERY_GRPC_URL").filter(|v| !v.is_empty()),
            env.var("AUTH_GRPC_URL").filter(|v| !v.is_empty()),
            env.var("SERVICE_CLIENT_ID").filter(|v| !v.is_empty()),
            env.var("SERVICE_CLIENT_SECRET").filter(|v| !v.is_empty()),
        ) {
            (Some(query_url), Some(auth_url), Some(client_id), Some(secret)) => Some(statements::Source {
                query_url,
                credentials: statements::Credentials::Client { auth_url, client_id, secret },
                poll: statement_poll,
                grace: chrono::Duration::seconds(problems.parse(env, "STATEMENT_GRACE_SECS", 600)),
                clock_offset: chrono::Duration::zero(),
            }),
            _ => None,
        };
        let allow_loopback = matches!(config::string(env, "WEBHOOK_ALLOW_LOOPBACK", "false").as_str(), "true" | "1");
        problems.finish()?;
        Ok(Self {
            grpc_addr,
            http_addr,
            database_url: config::string(env, "NOTIFY_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bank_notify"),
            jwks_url: config::string(env, "JWKS_URL", "http://127.0.0.1:9091/.well-known/jwks.json"),
            jwt_issuer: config::string(env, "JWT_ISSUER", "bankmesh-auth"),
            jwt_audience: config::string(env, "JWT_AUDIENCE", "bankmesh"),
            nats_url: config::string(env, "NATS_URL", "nats://127.0.0.1:4222"),
            stream: config::string(env, "NATS_STREAM", "BANK_EVENTS"),
            subject_prefix: config::string(env, "NATS_SUBJECT_PREFIX", "bank.events"),
            standing_feed: bank_platform::standing::Feed::from_env(env),
            event_keys: event_keys.flatten().map(Arc::new),
            webhooks,
            guard: Guard { allow_loopback, mesh_ports: mesh_ports.unwrap_or_default() },
            secrets: secrets.unwrap_or_else(Secrets::unsealed),
            smtp_url: env.var("SMTP_URL").filter(|u| !u.is_empty()),
            mail_from: config::string(env, "MAIL_FROM", "bankmesh <notifications@bankmesh.local>"),
            tls: tls.flatten(),
            statements,
        })
    }
}

pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running> {
    let pool = db::connect(&config.database_url, 8).await?;
    db::ensure_migrated(&pool, &MIGRATOR, "notification-service").await?;
    let grpc_listener = server::bind(config.grpc_addr).await?;
    let http_listener = server::bind(config.http_addr).await?;
    let mut running = Running::new(grpc_listener.local_addr()?, http_listener.local_addr()?, shutdown.clone());
    let verifier = Arc::new(
        TokenVerifier::from_jwks_url(&config.jwks_url, &config.jwt_issuer, &config.jwt_audience, config.tls.as_deref())
            .await?,
    );

    let (made, mailed) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let store = Arc::new(Store::new(pool.clone(), vec![made.clone(), mailed.clone()]));
    running.spawn(consume(config.clone(), store.clone(), shutdown.clone()));
    running.spawn(standings::run(store.clone(), config.standing_feed.clone(), verifier.keys(), shutdown.clone()));
    match &config.statements {
        Some(source) => {
            let statements = statements::Statements::new(source.clone(), store, config.tls.clone());
            running.spawn(statements.run(shutdown.clone()));
        }
        None => tracing::warn!(
            "QUERY_GRPC_URL, AUTH_GRPC_URL, SERVICE_CLIENT_ID or SERVICE_CLIENT_SECRET not set: no monthly statements"
        ),
    }
    if !config.secrets.is_sealed() {
        tracing::warn!("WEBHOOK_SECRETS_KEY not set: webhook secrets are stored unsealed (development only)");
    }
    let deliverer = webhook::Deliverer::new(
        pool.clone(),
        config.guard.clone(),
        config.webhooks.clone(),
        config.secrets.clone(),
        made,
    )?;
    running.spawn(deliverer.run(shutdown.clone()));
    match &config.smtp_url {
        Some(url) => {
            let mailer = email::Mailer::new(pool.clone(), url, &config.mail_from, config.webhooks.clone(), mailed)?;
            running.spawn(mailer.run(shutdown.clone()));
        }
        None => tracing::warn!("SMTP_URL not set: emails wait in the outbox until a mail server is configured"),
    }
    let (news, _) = tokio::sync::broadcast::channel(1024);
    running.spawn(api::listen_for_news(pool.clone(), news.clone(), shutdown.clone()));

    let api = NotificationApi::new(pool, config.guard.clone(), config.secrets.clone(), news);
    let routes = tonic::service::Routes::new(
        NotificationServiceServer::new(api).max_decoding_message_size(server::MAX_REQUEST_BYTES),
    );
    running.spawn(server::serve(
        grpc_listener,
        routes,
        &["bank.v1.NotificationService"],
        AuthLayer::new(verifier, &[]),
        config.tls.clone(),
        shutdown.clone(),
    ));
    running.spawn(http::serve(http_listener, axum::Router::new(), config.tls, shutdown));
    Ok(running)
}

/// Follows the event stream until shutdown, reconnecting after a pause when
/// the stream goes away.
async fn consume(config: Config, store: Arc<Store>, shutdown: CancellationToken) -> Result<()> {
    let options = bank_stream::Options {
        subject_prefix: config.subject_prefix.clone(),
        keys: config.event_keys.clone(),
        batch: 256,
        gap_delay: Duration::from_millis(200),
    };
    if options.keys.is_none() {
        tracing::warn!("EVENT_VERIFYING_KEYS not set: unsigned events are believed (development only)");
    }
    let mut pause = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let attempt = async {
            let js = async_nats::jetstream::new(bank_platform::nats::connect(&config.nats_url).await?);
            let stream =
                js.get_stream(&config.stream).await.map_err(|e| anyhow::anyhow!("stream {}: {e}", config.stream))?;
            let consumer = bank_stream::durable_consumer(&stream, CONSUMER, &config.subject_prefix).await?;
            bank_stream::run(&consumer, store.as_ref(), &options, &shutdown).await
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) => tracing::warn!(error = %e, "event stream unavailable; again shortly"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
    Ok(())
}
