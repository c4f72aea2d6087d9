//! The whole read path in-process: command-service → JetStream → projector →
//! read models → query-service, tokens from a JWKS-serving test issuer.
#![allow(dead_code)]

use bank_platform::{CancellationToken, config::ProcessEnv, service::Running};
use bank_proto::v1::{
    self as pb, account_command_service_client::AccountCommandServiceClient,
    account_query_service_client::AccountQueryServiceClient,
};
use bank_testkit::{DbRole, Principal, TestDb, TestIssuer, authed};
use tonic::transport::Channel;
use uuid::Uuid;

pub struct Bank {
    pub issuer: TestIssuer,
    pub runs: Vec<Running>,
    pub commands: AccountCommandServiceClient<Channel>,
    pub queries: AccountQueryServiceClient<Channel>,
    pub query_http: std::net::SocketAddr,
    pub query_config: query_service::Config,
    pub redis_prefix: String,
    /// The read models' database (a test may make it refuse connections).
    pub read_db: TestDb,
}

pub fn usd(a: &str) -> Option<pb::Money> {
    Some(pb::Money { currency_code: "USD".into(), amount: a.into() })
}

/// A protobuf timestamp of `t`.
pub fn ts(t: chrono::DateTime<chrono::Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 })
}

/// `t` shifted by `micros` microseconds.
pub fn at(t: &prost_types::Timestamp, micros: i64) -> Option<prost_types::Timestamp> {
    let mut t = *t;
    let nanos = t.nanos as i64 + micros * 1000;
    t.seconds += nanos.div_euclid(1_000_000_000);
    t.nanos = nanos.rem_euclid(1_000_000_000) as i32;
    Some(t)
}

impl Bank {
    pub async fn start() -> Self {
        Self::start_with_redis(&bank_testkit::redis_url_as(Principal::Query)).await
    }

    /// `query_redis` lets a test point the query side at a dead Redis.
    pub async fn start_with_redis(query_redis: &str) -> Self {
        bank_platform::telemetry::init_for_tests();
        let issuer = TestIssuer::start().await.unwrap();
        let prefix = bank_testkit::unique_prefix("q");
        let mut command = command_service::Config::from_env(&ProcessEnv).unwrap();
        command.grpc_addr = "127.0.0.1:0".parse().unwrap();
        command.http_addr = "127.0.0.1:0".parse().unwrap();
        command.database_url =
            TestDb::migrated("qw", DbRole::CommandOwner, &command_service::MIGRATOR).await.url_as(DbRole::Command);
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
        let read = TestDb::migrated("qr", DbRole::ReadOwner, &bank_readmodel::MIGRATOR).await;
        let redis_prefix = bank_testkit::read_model_prefix(&prefix);
        command.audit.read_database_url = Some(read.url_as(DbRole::Command));
        command.audit.redis_url = Some(bank_testkit::redis_url_as(Principal::Command));
        command.audit.redis_prefix = redis_prefix.clone();
        let mut projector = projector::Config::from_env(&ProcessEnv).unwrap();
        projector.http_addr = "127.0.0.1:0".parse().unwrap();
        projector.database_url = read.url_as(DbRole::Projector);
        projector.redis_url = bank_testkit::redis_url_as(Principal::Projector);
        projector.redis_prefix = redis_prefix.clone();
        projector.cache_key = Some(bank_testkit::read_cache_key().to_owned());
        projector.nats_url = bank_testkit::nats_url_as(Principal::Projector);
        projector.stream = command.relay.stream.clone();
        projector.subject_prefix = command.relay.subject_prefix.clone();
        // The projector verifies every event against command-service's key.
        let keys = bank_platform::signing::EventKeys::of(std::slice::from_ref(&command.event_signer));
        projector.event_keys = Some(std::sync::Arc::new(keys));
        let mut query = query_service::Config::from_env(&ProcessEnv).unwrap();
        query.grpc_addr = "127.0.0.1:0".parse().unwrap();
        query.http_addr = "127.0.0.1:0".parse().unwrap();
        query.database_url = read.url_as(DbRole::Query);
        query.redis_url = query_redis.into();
        query.redis_prefix = redis_prefix.clone();
        query.cache_key = Some(bank_testkit::read_cache_key().to_owned());
        query.jwks_url = issuer.jwks_url.clone();
        query.jwt_issuer = bank_testkit::ISSUER.into();
        query.jwt_audience = bank_testkit::AUDIENCE.into();
        // The same standing feed command-service follows, as query's own NATS user.
        query.standing_feed = command.standing_feed.clone();
        query.standing_feed.nats_url = bank_testkit::nats_url_as(Principal::Query);
        bank_testkit::provision_prefix(&command.relay.nats_url, &prefix).await;
        let c = command_service::start(command, CancellationToken::new()).await.unwrap();
        let q = query_service::start(query.clone(), CancellationToken::new()).await.unwrap();
        let p = projector::start(projector, CancellationToken::new()).await.unwrap();
        let commands = AccountCommandServiceClient::connect(format!("http://{}", c.grpc_addr)).await.unwrap();
        let queries = AccountQueryServiceClient::connect(format!("http://{}", q.grpc_addr)).await.unwrap();
        let query_http = q.http_addr;
        Self {
            issuer,
            runs: vec![c, q, p],
            commands,
            queries,
            query_http,
            query_config: query,
            redis_prefix,
            read_db: read,
        }
    }

    pub fn customer(&self) -> String {
        self.issuer.customer(Uuid::now_v7())
    }

    pub async fn open(&self, token: &str) -> pb::OpenAccountResponse {
        let req = pb::OpenAccountRequest {
            r#type: 1,
            currency_code: "USD".into(),
            idempotency_key: Uuid::new_v4().to_string(),
        };
        self.commands.clone().open_account(authed(req, token)).await.unwrap().into_inner()
    }

    /// Staff who may move money across the bank's boundary.
    pub fn teller(&self) -> String {
        self.issuer.teller(Uuid::now_v7())
    }

    /// A teller's deposit: how money enters the bank.
    pub async fn deposit(&self, acc: &str, amount: &str) -> pb::MoneyMovementResponse {
        let token = &self.teller();
        let req = pb::DepositRequest {
            account_id: acc.into(),
            money: usd(amount),
            idempotency_key: Uuid::new_v4().to_string(),
            description: "pay".into(),
        };
        self.commands.clone().deposit(authed(req, token)).await.unwrap().into_inner()
    }

    pub async fn transfer(&self, token: &str, from: &str, to: &str, amount: &str) -> pb::MoneyMovementResponse {
        let req = pb::TransferRequest {
            from_account_id: from.into(),
            to_account_id: to.into(),
            money: usd(amount),
            idempotency_key: Uuid::new_v4().to_string(),
            description: "rent".into(),
        };
        self.commands.clone().transfer(authed(req, token)).await.unwrap().into_inner()
    }

    pub async fn balance(
        &self,
        token: &str,
        acc: &str,
        consistency: &str,
    ) -> Result<pb::GetBalanceResponse, tonic::Status> {
        let req =
            pb::GetBalanceRequest { account_id: acc.into(), min_consistency_token: consistency.into(), as_of: None };
        self.queries.clone().get_balance(authed(req, token)).await.map(|r| r.into_inner())
    }

    pub async fn page(
        &self,
        token: &str,
        acc: &str,
        size: i32,
        page_token: &str,
    ) -> Result<pb::ListTransactionsResponse, tonic::Status> {
        let req = pb::ListTransactionsRequest {
            account_id: acc.into(),
            page_size: size,
            page_token: page_token.into(),
            ..Default::default()
        };
        self.queries.clone().list_transactions(authed(req, token)).await.map(|r| r.into_inner())
    }

    pub async fn metric(&self, name: &str) -> f64 {
        bank_testkit::metric(self.query_http, name).await
    }
}
