//! A command-service and a notification-service per test, on their own
//! databases and stream, each as its own Postgres and NATS user; tokens from
//! a test issuer; webhook receivers as real HTTP servers on loopback.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bank_platform::{CancellationToken, config::ProcessEnv, service::Running, signing::EventKeys};
use bank_proto::v1::{
    self as pb, account_command_service_client::AccountCommandServiceClient,
    notification_service_client::NotificationServiceClient,
};
use bank_testkit::{DbRole, Principal, TestDb, TestIssuer, authed};
use sqlx::PgPool;
use tonic::transport::Channel;
use uuid::Uuid;

pub struct Mesh {
    pub issuer: TestIssuer,
    pub command: AccountCommandServiceClient<Channel>,
    pub notify: NotificationServiceClient<Channel>,
    pub notify_config: notification_service::Config,
    pub notify_running: Option<Running>,
    pub command_running: Running,
    pub command_grpc: SocketAddr,
    /// notification-service's database, as the superuser (the tests' checks).
    pub db: PgPool,
    /// The projector and query-service, when started (`start_with_read_side`).
    pub read_side: Vec<Running>,
    pub query_config: Option<query_service::Config>,
    pub query_grpc: Option<SocketAddr>,
}

pub fn usd(amount: &str) -> Option<pb::Money> {
    Some(pb::Money { currency_code: "USD".into(), amount: amount.into() })
}

pub fn key() -> String {
    Uuid::new_v4().to_string()
}

impl Mesh {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut notification_service::Config)) -> Self {
        Self::start_inner(adjust, false).await
    }

    /// With a projector and query-service too, and notification-service
    /// fetching monthly statements from it as the principal
    /// `notification-service` (the one query-service lets read them).
    pub async fn start_with_read_side(adjust: impl FnOnce(&mut notification_service::Config)) -> Self {
        Self::start_inner(adjust, true).await
    }

    async fn start_inner(adjust: impl FnOnce(&mut notification_service::Config), read_side: bool) -> Self {
        bank_platform::telemetry::init_for_tests();
        let issuer = TestIssuer::start().await.unwrap();
        let prefix = bank_testkit::unique_prefix("ntf");
        let mut command = command_service::Config::from_env(&ProcessEnv).unwrap();
        command.grpc_addr = "127.0.0.1:0".parse().unwrap();
        command.http_addr = "127.0.0.1:0".parse().unwrap();
        let write = TestDb::migrated("ntfcmd", DbRole::CommandOwner, &command_service::MIGRATOR).await;
        command.database_url = write.url_as(DbRole::Command);
        command.db_max_connections = 8;
        command.jwks_url = issuer.jwks_url.clone();
        command.jwt_issuer = bank_testkit::ISSUER.into();
        command.jwt_audience = bank_testkit::AUDIENCE.into();
        command.relay.nats_url = bank_testkit::nats_url_as(Principal::Command);
        command.relay.stream = prefix.to_uppercase();
        command.relay.subject_prefix = format!("{prefix}.events");
        command.standing_feed.nats_url = command.relay.nats_url.clone();
        command.standing_feed.stream = format!("{}_USERS", prefix.to_uppercase());
        command.standing_feed.subject_prefix = format!("{prefix}.users");
        command.audit.read_database_url = None;
        command.audit.redis_url = None;
        // Scheduled transfers due now run at once; a refusal is tried again a second later.
        command.scheduler_poll = Duration::from_millis(50);
        command.schedule_retry.delay = chrono::Duration::seconds(1);
        bank_testkit::provision_prefix(&bank_testkit::nats_admin_url(), &prefix).await;
        let command_running = command_service::start(command.clone(), CancellationToken::new()).await.unwrap();
        let command_grpc = command_running.grpc_addr;
        let (mut read_runs, mut query_config, mut query_grpc) = (Vec::new(), None, None);
        if read_side {
            let (runs, config) = start_read_side(&command, &issuer, &prefix).await;
            query_grpc = Some(runs[0].grpc_addr);
            read_runs = runs;
            query_config = Some(config);
        }

        let mut notify = notification_service::Config::from_env(&ProcessEnv).unwrap();
        notify.grpc_addr = "127.0.0.1:0".parse().unwrap();
        notify.http_addr = "127.0.0.1:0".parse().unwrap();
        let db = TestDb::migrated("ntf", DbRole::NotifyOwner, &notification_service::MIGRATOR).await;
        notify.database_url = db.url_as(DbRole::Notify);
        notify.jwks_url = issuer.jwks_url.clone();
        notify.jwt_issuer = bank_testkit::ISSUER.into();
        notify.jwt_audience = bank_testkit::AUDIENCE.into();
        notify.nats_url = bank_testkit::nats_url_as(Principal::Notify);
        notify.stream = command.relay.stream.clone();
        notify.subject_prefix = command.relay.subject_prefix.clone();
        notify.standing_feed = command.standing_feed.clone();
        notify.standing_feed.nats_url = notify.nats_url.clone();
        notify.event_keys = Some(Arc::new(EventKeys::of(std::slice::from_ref(&command.event_signer))));
        notify.guard.allow_loopback = true;
        // Endpoint secrets sealed at rest, as in every stack (WEBHOOK_SECRETS_KEY).
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        notify.secrets = bank_platform::sealed::Secrets::sealed_with(&key).unwrap();
        notify.guard.mesh_ports = vec![command_grpc.port(), command_running.http_addr.port()];
        notify.webhooks.retry_base = Duration::from_millis(100);
        notify.webhooks.retry_max = Duration::from_millis(500);
        notify.webhooks.timeout = Duration::from_secs(1);
        notify.webhooks.max_attempts = 5;
        // The stack's development mail server (scripts/lib/devsmtp.py).
        notify.smtp_url =
            Some(format!("smtp://{}", std::env::var("SMTP_ADDR").expect("SMTP_ADDR: run through scripts/test")));
        if let Some(query) = query_grpc {
            // The month now is the month that ended: its statements are due at once.
            use chrono::{Datelike, TimeZone};
            let now = chrono::Utc::now();
            let (y, m) = if now.month() == 12 { (now.year() + 1, 1) } else { (now.year(), now.month() + 1) };
            let next_month = chrono::Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).unwrap();
            let subject = bank_platform::auth::service_subject("notification-service");
            notify.statements = Some(notification_service::statements::Source {
                query_url: format!("http://{query}"),
                credentials: notification_service::statements::Credentials::Token(issuer.service(subject)),
                poll: Duration::from_millis(200),
                grace: chrono::Duration::minutes(10),
                clock_offset: next_month - now + chrono::Duration::hours(1),
            });
        }
        adjust(&mut notify);
        let notify_running = notification_service::start(notify.clone(), CancellationToken::new()).await.unwrap();
        let notify_client =
            NotificationServiceClient::connect(format!("http://{}", notify_running.grpc_addr)).await.unwrap();
        let command_client = AccountCommandServiceClient::connect(format!("http://{command_grpc}")).await.unwrap();
        let admin = bank_platform::db::connect(&db.admin_url(), 4).await.unwrap();
        Self {
            issuer,
            command: command_client,
            notify: notify_client,
            notify_config: notify,
            notify_running: Some(notify_running),
            command_running,
            command_grpc,
            db: admin,
            read_side: read_runs,
            query_config,
            query_grpc,
        }
    }

    /// Stops notification-service (what it had not acknowledged comes again).
    pub async fn stop_notifications(&mut self) {
        if let Some(r) = self.notify_running.take() {
            r.stop().await.unwrap();
        }
    }

    /// Starts it again, on a new port.
    pub async fn start_notifications(&mut self) {
        let running = notification_service::start(self.notify_config.clone(), CancellationToken::new()).await.unwrap();
        self.notify = NotificationServiceClient::connect(format!("http://{}", running.grpc_addr)).await.unwrap();
        self.notify_running = Some(running);
    }

    /// A new customer: (id, token).
    pub fn customer(&self) -> (Uuid, String) {
        let id = Uuid::now_v7();
        (id, self.issuer.customer(id))
    }

    pub async fn open(&self, token: &str) -> String {
        let req = pb::OpenAccountRequest { r#type: 1, currency_code: "USD".into(), idempotency_key: key() };
        let res = self.command.clone().open_account(authed(req, token)).await.unwrap().into_inner();
        res.account.unwrap().account_id
    }

    pub async fn deposit(&self, account: &str, amount: &str) {
        let teller = self.issuer.teller(Uuid::now_v7());
        let req = pb::DepositRequest {
            account_id: account.into(),
            money: usd(amount),
            idempotency_key: key(),
            description: String::new(),
        };
        self.command.clone().deposit(authed(req, &teller)).await.unwrap();
    }

    pub async fn transfer(&self, token: &str, from: &str, to: &str, amount: &str) {
        let req = pb::TransferRequest {
            from_account_id: from.into(),
            to_account_id: to.into(),
            money: usd(amount),
            idempotency_key: key(),
            description: String::new(),
        };
        self.command.clone().transfer(authed(req, token)).await.unwrap();
    }

    /// Every notification of the token's holder, newest first.
    pub async fn feed(&self, token: &str) -> Vec<pb::Notification> {
        let req = pb::ListNotificationsRequest { page_size: 100, ..Default::default() };
        self.notify.clone().list_notifications(authed(req, token)).await.unwrap().into_inner().notifications
    }

    /// The feed once it holds at least `n` (within 15 s).
    pub async fn feed_of_at_least(&self, token: &str, n: usize) -> Vec<pb::Notification> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let feed = self.feed(token).await;
            if feed.len() >= n {
                return feed;
            }
            assert!(std::time::Instant::now() < deadline, "only {} of {n} notifications: {feed:?}", feed.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What a webhook receiver does with each request.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// Answers 500 to the first `n` requests, then 200.
    FailFirst(usize),
    /// Never answers.
    Hang,
}

/// A request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub timestamp: i64,
    pub signatures: Vec<String>,
    pub body: String,
    pub answered: u16,
    pub at: std::time::Instant,
}

/// A webhook receiver: a real HTTP server on loopback.
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(behaviour: Behaviour) -> Self {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let seen = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let seen = seen.clone();
                async move {
                    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                    let answered = match behaviour {
                        Behaviour::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            200
                        }
                        Behaviour::FailFirst(n) if seen.lock().unwrap().len() < n => 500,
                        Behaviour::FailFirst(_) => 200,
                    };
                    seen.lock().unwrap().push(Received {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp").parse().unwrap_or_default(),
                        signatures: header("webhook-signature").split(' ').map(str::to_owned).collect(),
                        body,
                        answered,
                        at: std::time::Instant::now(),
                    });
                    axum::http::StatusCode::from_u16(answered).unwrap()
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, got }
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// Whether `r` verifies under `secret` the way a Standard Webhooks receiver
/// checks: one of its signatures matches, and its timestamp is within five
/// minutes of now (the replay window).
pub fn verifies(r: &Received, secret: &str) -> bool {
    let fresh = (chrono::Utc::now().timestamp() - r.timestamp).abs() <= 300;
    let expected = notification_service::webhook::sign(secret, &r.id, r.timestamp, &r.body).unwrap();
    fresh && r.signatures.contains(&expected)
}

/// The messages the development mail server kept for `address`, as received.
pub fn mail_to(address: &str) -> Vec<String> {
    let dir = std::env::var("MAIL_DIR").expect("MAIL_DIR: run through scripts/test");
    let mut found: Vec<(u64, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().trim_end_matches(".eml").parse().ok()?;
            Some((n, std::fs::read_to_string(e.path()).ok()?))
        })
        .filter(|(_, text)| text.lines().any(|l| l == format!("X-Rcpt-To: {address}")))
        .collect();
    found.sort();
    found.into_iter().map(|(_, text)| text).collect()
}

/// A projector and query-service on their own read database, following
/// `command`'s stream; query-service lets the principal
/// `notification-service` read statements. (query-service first.)
async fn start_read_side(
    command: &command_service::Config,
    issuer: &TestIssuer,
    prefix: &str,
) -> (Vec<Running>, query_service::Config) {
    let read = TestDb::migrated("ntfr", DbRole::ReadOwner, &bank_readmodel::MIGRATOR).await;
    let redis_prefix = bank_testkit::read_model_prefix(prefix);
    let mut projector = projector::Config::from_env(&ProcessEnv).unwrap();
    projector.http_addr = "127.0.0.1:0".parse().unwrap();
    projector.database_url = read.url_as(DbRole::Projector);
    projector.redis_url = bank_testkit::redis_url_as(Principal::Projector);
    projector.redis_prefix = redis_prefix.clone();
    projector.cache_key = Some(bank_testkit::read_cache_key().to_owned());
    projector.nats_url = bank_testkit::nats_url_as(Principal::Projector);
    projector.stream = command.relay.stream.clone();
    projector.subject_prefix = command.relay.subject_prefix.clone();
    projector.event_keys = Some(Arc::new(EventKeys::of(std::slice::from_ref(&command.event_signer))));
    let mut query = query_service::Config::from_env(&ProcessEnv).unwrap();
    query.grpc_addr = "127.0.0.1:0".parse().unwrap();
    query.http_addr = "127.0.0.1:0".parse().unwrap();
    query.database_url = read.url_as(DbRole::Query);
    query.redis_url = bank_testkit::redis_url_as(Principal::Query);
    query.redis_prefix = redis_prefix;
    query.cache_key = Some(bank_testkit::read_cache_key().to_owned());
    query.jwks_url = issuer.jwks_url.clone();
    query.jwt_issuer = bank_testkit::ISSUER.into();
    query.jwt_audience = bank_testkit::AUDIENCE.into();
    query.standing_feed = command.standing_feed.clone();
    query.standing_feed.nats_url = bank_testkit::nats_url_as(Principal::Query);
    query.statement_readers = vec!["notification-service".into()];
    let q = query_service::start(query.clone(), CancellationToken::new()).await.unwrap();
    let p = projector::start(projector, CancellationToken::new()).await.unwrap();
    (vec![q, p], query)
}
