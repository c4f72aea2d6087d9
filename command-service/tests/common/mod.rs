//! A command-service per test: its own database, its own JetStream stream and
//! subject prefix, tokens from a test issuer verified through a real JWKS.
#![allow(dead_code)]

use std::time::Duration;

use bank_platform::{CancellationToken, auth::STATUS_ACTIVE, config::ProcessEnv, service::Running};
use bank_proto::v1::{self as pb, account_command_service_client::AccountCommandServiceClient};
use bank_testkit::{DbRole, Principal, TestDb, TestIssuer, authed};
use sqlx::PgPool;
use tonic::transport::Channel;
use uuid::Uuid;

pub struct Harness {
    pub issuer: TestIssuer,
    pub running: Option<Running>,
    pub client: AccountCommandServiceClient<Channel>,
    pub db: PgPool,
    pub config: command_service::Config,
}

pub fn usd(amount: &str) -> Option<pb::Money> {
    Some(pb::Money { currency_code: "USD".into(), amount: amount.into() })
}

pub fn key() -> String {
    Uuid::new_v4().to_string()
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with_nats(&bank_testkit::nats_url_as(Principal::Command)).await
    }

    pub async fn start_with_nats(nats_url: &str) -> Self {
        Self::start_with(nats_url, |_| {}).await
    }

    /// With `adjust` applied to the configuration before start.
    pub async fn start_with(nats_url: &str, adjust: impl FnOnce(&mut command_service::Config)) -> Self {
        Self::start_with_issuer(TestIssuer::start().await.unwrap(), nats_url, adjust).await
    }

    /// With tokens from `issuer`. When `adjust` turns TLS on, the harness's
    /// own client connects over mutual TLS with the service's certificate.
    pub async fn start_with_issuer(
        issuer: TestIssuer,
        nats_url: &str,
        adjust: impl FnOnce(&mut command_service::Config),
    ) -> Self {
        bank_platform::telemetry::init_for_tests();
        let prefix = bank_testkit::unique_prefix("cmd");
        let mut config = command_service::Config::from_env(&ProcessEnv).unwrap();
        config.grpc_addr = "127.0.0.1:0".parse().unwrap();
        config.http_addr = "127.0.0.1:0".parse().unwrap();
        let database = TestDb::migrated("cmd", DbRole::CommandOwner, &command_service::MIGRATOR).await;
        config.database_url = database.url_as(DbRole::Command);
        config.db_max_connections = 10;
        config.jwks_url = issuer.jwks_url.clone();
        config.jwt_issuer = bank_testkit::ISSUER.into();
        config.jwt_audience = bank_testkit::AUDIENCE.into();
        config.relay.nats_url = nats_url.to_owned();
        config.relay.stream = prefix.to_uppercase();
        config.relay.subject_prefix = format!("{prefix}.events");
        config.standing_feed.nats_url = nats_url.to_owned();
        config.standing_feed.stream = format!("{}_USERS", prefix.to_uppercase());
        config.standing_feed.subject_prefix = format!("{prefix}.users");
        // No read side here: reconcile audits the write side and the stream.
        config.audit.read_database_url = None;
        config.audit.redis_url = None;
        adjust(&mut config);
        let (events, users) = (&config.relay, &config.standing_feed);
        bank_testkit::provision_streams(
            &config.relay.nats_url,
            &[(&events.stream, &events.subject_prefix), (&users.stream, &users.subject_prefix)],
        )
        .await;
        let running = command_service::start(config.clone(), CancellationToken::new()).await.unwrap();
        let client = match &config.tls {
            None => AccountCommandServiceClient::connect(format!("http://{}", running.grpc_addr)).await.unwrap(),
            Some(tls) => AccountCommandServiceClient::new(bank_testkit::mtls_channel(running.grpc_addr, tls).await),
        };
        // The tests' own checks (and tampering) run as the superuser.
        let db = bank_platform::db::connect(&database.admin_url(), 4).await.unwrap();
        Self { issuer, running: Some(running), client, db, config }
    }

    /// A new KYC-active customer: (user id, access token).
    pub fn customer(&self) -> (Uuid, String) {
        let id = Uuid::now_v7();
        (id, self.issuer.customer(id))
    }

    pub fn pending_customer(&self) -> (Uuid, String) {
        let id = Uuid::now_v7();
        (id, self.issuer.token_for(id, &["customer"], "PENDING_KYC", Duration::from_secs(600)))
    }

    /// A service principal's token (as auth-service's IssueServiceToken makes it).
    pub fn service(&self) -> String {
        self.issuer.service(Uuid::now_v7())
    }

    /// Staff who may move money across the bank's boundary.
    pub fn teller(&self) -> String {
        self.issuer.teller(Uuid::now_v7())
    }

    /// Puts `amount` USD into `account` the way money enters the bank: a teller's deposit.
    pub async fn fund(&self, account: &str, amount: &str) -> pb::MoneyMovementResponse {
        self.deposit(&self.teller(), account, amount).await.expect("a teller's deposit")
    }

    /// Sum of every account's balance per currency in the write model.
    pub async fn currency_sums(&self) -> Vec<(String, rust_decimal::Decimal)> {
        sqlx::query_as("SELECT currency::text, sum(balance) FROM accounts GROUP BY currency ORDER BY currency")
            .fetch_all(&self.db)
            .await
            .unwrap()
    }

    /// The bank's settlement account in `currency`.
    pub fn settlement(currency: &str) -> String {
        let c = bank_domain::Currency::from_code(currency).unwrap();
        bank_domain::ledger::system_account_id(bank_domain::AccountKind::Settlement, c).to_string()
    }

    pub fn fee_income(currency: &str) -> String {
        let c = bank_domain::Currency::from_code(currency).unwrap();
        bank_domain::ledger::system_account_id(bank_domain::AccountKind::FeeIncome, c).to_string()
    }

    pub fn admin(&self) -> String {
        self.issuer.admin(Uuid::now_v7())
    }

    pub async fn open(&self, token: &str, currency: &str) -> String {
        let req = pb::OpenAccountRequest {
            r#type: pb::AccountType::Checking as i32,
            currency_code: currency.into(),
            idempotency_key: key(),
        };
        let res = self.client.clone().open_account(authed(req, token)).await.unwrap().into_inner();
        res.account.unwrap().account_id
    }

    pub async fn deposit(
        &self,
        token: &str,
        account: &str,
        amount: &str,
    ) -> Result<pb::MoneyMovementResponse, tonic::Status> {
        let req = pb::DepositRequest {
            account_id: account.into(),
            money: usd(amount),
            idempotency_key: key(),
            description: "test".into(),
        };
        self.client.clone().deposit(authed(req, token)).await.map(|r| r.into_inner())
    }

    pub async fn withdraw(
        &self,
        token: &str,
        account: &str,
        amount: &str,
    ) -> Result<pb::MoneyMovementResponse, tonic::Status> {
        let req = pb::WithdrawRequest {
            account_id: account.into(),
            money: usd(amount),
            idempotency_key: key(),
            description: String::new(),
        };
        self.client.clone().withdraw(authed(req, token)).await.map(|r| r.into_inner())
    }

    pub async fn transfer(
        &self,
        token: &str,
        from: &str,
        to: &str,
        amount: &str,
    ) -> Result<pb::MoneyMovementResponse, tonic::Status> {
        let req = pb::TransferRequest {
            from_account_id: from.into(),
            to_account_id: to.into(),
            money: usd(amount),
            idempotency_key: key(),
            description: String::new(),
        };
        self.client.clone().transfer(authed(req, token)).await.map(|r| r.into_inner())
    }

    /// The write-model balance, as text at scale 2.
    pub async fn balance(&self, account: &str) -> String {
        let b: rust_decimal::Decimal = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1::uuid")
            .bind(account)
            .fetch_one(&self.db)
            .await
            .unwrap();
        format!("{:.2}", b)
    }

    /// Accounts owned by customers (the bank's own excluded).
    pub async fn customer_accounts(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM accounts WHERE kind IN ('CHECKING', 'SAVINGS')")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Events of the bank's own accounts being opened (one per system account).
    pub async fn system_events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM accounts WHERE kind IN ('SETTLEMENT', 'FEE_INCOME')")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&self.db).await.unwrap()
    }

    /// How many outbox ids were ever issued (rows the relay deleted included).
    pub async fn outbox_ids_issued(&self) -> i64 {
        sqlx::query_scalar("SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('outbox', 'id')), 0)")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Every envelope on this test's stream, in stream order.
    pub async fn published(&self, nats_url: &str) -> Vec<pb::EventEnvelope> {
        let client = bank_platform::nats::connect(nats_url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(&self.config.relay.stream).await.unwrap();
        bank_platform::nats::stored_events(&stream).await.unwrap().into_iter().map(|e| e.envelope).collect()
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
    }
}

pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}

pub fn violation_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

pub const ACTIVE: &str = STATUS_ACTIVE;

/// A PERMISSION_DENIED answer, and which rule gave it (its text is the
/// message): a test stays red if another rule fires instead.
#[track_caller]
pub fn assert_denied_by(status: &tonic::Status, rule: impl std::fmt::Display) {
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::PermissionDenied, rule.to_string().as_str()),
        "{status:?}"
    );
}
