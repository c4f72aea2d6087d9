//! query-service: answers every read from the read models only (never the
//! write database), Redis first for accounts, with read-your-writes through
//! consistency tokens and live balance streams.

pub mod api;
pub mod error;
pub mod limits;
pub mod readmodel;
pub mod standing;
pub mod statement;

use std::{net::SocketAddr, sync::Arc};

use anyhow::Result;
use bank_platform::{
    CancellationToken,
    auth::{AuthLayer, TokenVerifier},
    config::{self, Env},
    db, grpc as server, http,
    service::Running,
};
use bank_proto::v1::account_query_service_server::AccountQueryServiceServer;
use bank_readmodel::page_token::PageTokenSigner;
use rand::RngCore;

use crate::{api::QueryApi, readmodel::ReadModel};

#[derive(Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub database_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub jwks_url: String,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub page_token_secret: Option<String>,
    /// The key the projector seals cache entries and change notices with
    /// (`READ_CACHE_KEY`): nothing from Redis is believed without its seal.
    pub cache_key: Option<String>,
    /// auth-service's feed of user standings (`NATS_URL`, `USERS_STREAM`,
    /// `USERS_SUBJECT_PREFIX`): open streams end when their caller's ends.
    pub standing_feed: bank_platform::standing::Feed,
    /// TLS on both ports and for the JWKS fetch (`TLS_*_FILE`).
    pub tls: Option<std::sync::Arc<bank_platform::tls::Tls>>,
    /// Signs statements (`STATEMENT_SIGNING_KEY`, a PKCS#8 PEM file): the
    /// bank's word on them, checked offline against GetStatementKeys.
    pub statement_signer: bank_platform::auth::TokenSigner,
    /// Keys that signed statements before a rotation
    /// (`STATEMENT_PREVIOUS_KEYS`: public key PEM files, comma-separated),
    /// published beside the current one.
    pub statement_previous_keys: Option<std::sync::Arc<bank_platform::signing::EventKeys>>,
    /// Service principals (client ids, `STATEMENT_READERS`, comma-separated)
    /// that may read any account's statement: notification-service, which
    /// delivers the monthly ones. No other service and no other read.
    pub statement_readers: Vec<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field("database_url", &config::redact_url(&self.database_url))
            .field("redis_url", &config::redact_url(&self.redis_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("jwks_url", &self.jwks_url)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("page_token_secret", &self.page_token_secret.as_ref().map(|_| "***"))
            .field("cache_key", &self.cache_key.as_ref().map(|_| "***"))
            .field("standing_feed", &self.standing_feed)
            .field("tls", &self.tls.is_some())
            .field("statement_readers", &self.statement_readers)
            .field("statement_signing_kid", &self.statement_signer.kid())
            .field("statement_previous_keys", &self.statement_previous_keys.as_ref().map(|k| k.jwks().len()))
            .finish()
    }
}

impl Config {
    /// Every invalid variable is reported, all in one error.
    pub fn from_env(env: &impl Env) -> Result<Self> {
        let mut problems = config::Problems::new();
        let grpc_addr = problems.parse(env, "QUERY_GRPC_ADDR", SocketAddr::from(([127, 0, 0, 1], 50053)));
        let http_addr = problems.parse(env, "QUERY_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 9093)));
        let tls = problems.check(&bank_platform::tls::ENV_VARS.join(", "), bank_platform::tls::Tls::from_env(env));
        let statement_signer = problems.check(
            "STATEMENT_SIGNING_KEY",
            bank_platform::signing::signer_from_file(env, "STATEMENT_SIGNING_KEY", "statements"),
        );
        let statement_previous_keys = problems.check(
            "STATEMENT_PREVIOUS_KEYS",
            bank_platform::signing::EventKeys::from_env_var(env, "STATEMENT_PREVIOUS_KEYS"),
        );
        problems.finish()?;
        Ok(Self {
            grpc_addr,
            http_addr,
            database_url: config::string(env, "READ_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bank_read"),
            redis_url: config::string(env, "REDIS_URL", "redis://127.0.0.1:6379"),
            redis_prefix: config::string(env, "REDIS_PREFIX", "bank:rm:"),
            jwks_url: config::string(env, "JWKS_URL", "http://127.0.0.1:9091/.well-known/jwks.json"),
            jwt_issuer: config::string(env, "JWT_ISSUER", "bankmesh-auth"),
            jwt_audience: config::string(env, "JWT_AUDIENCE", "bankmesh"),
            page_token_secret: env.var("PAGE_TOKEN_SECRET"),
            cache_key: env.var("READ_CACHE_KEY"),
            standing_feed: bank_platform::standing::Feed::from_env(env),
            tls: tls.flatten(),
            statement_signer: statement_signer
                .ok_or_else(|| anyhow::anyhow!("STATEMENT_SIGNING_KEY could not be read"))?,
            statement_previous_keys: statement_previous_keys.flatten().map(std::sync::Arc::new),
            statement_readers: config::string(env, "STATEMENT_READERS", "")
                .split(',')
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .collect(),
        })
    }
}

pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running> {
    let pool = db::connect(&config.database_url, 16).await?;
    // The read models' schema is the projector's to migrate (`projector migrate`).
    db::ensure_migrated(&pool, &bank_readmodel::MIGRATOR, "projector").await?;
    let redis = readmodel::connect_redis(&config.redis_url).await;
    if redis.is_none() {
        tracing::warn!("Redis unavailable: answering from Postgres");
    }
    let keys = bank_readmodel::sealed_keys(&config.redis_prefix, config.cache_key.as_deref())?;
    let model = Arc::new(ReadModel::new(pool, redis, keys.clone()));

    let secret = match &config.page_token_secret {
        Some(s) => s.clone().into_bytes(),
        None => {
            tracing::warn!("PAGE_TOKEN_SECRET not set: page tokens are valid for this process only");
            let mut k = vec![0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut k);
            k
        }
    };

    let grpc_listener = server::bind(config.grpc_addr).await?;
    let http_listener = server::bind(config.http_addr).await?;
    let mut running = Running::new(grpc_listener.local_addr()?, http_listener.local_addr()?, shutdown.clone());
    let verifier = Arc::new(
        TokenVerifier::from_jwks_url(&config.jwks_url, &config.jwt_issuer, &config.jwt_audience, config.tls.as_deref())
            .await?,
    );
    let standings = Arc::new(standing::Standings::default());
    running.spawn(standing::follow(config.standing_feed.clone(), verifier.keys(), standings.clone(), shutdown.clone()));
    let api = QueryApi {
        model: model.clone(),
        pages: PageTokenSigner::new(secret),
        parked: limits::PerCaller::new(api::MAX_PARKED_PER_CALLER),
        streams: limits::PerCaller::new(api::MAX_STREAMS_PER_CALLER),
        standings: standings.clone(),
        statements: config.statement_signer.clone(),
        previous_statement_keys: config.statement_previous_keys.as_ref().map(|k| k.jwks()).unwrap_or_default(),
        statement_readers: config.statement_readers.iter().map(|id| bank_platform::auth::service_subject(id)).collect(),
    };
    let routes = tonic::service::Routes::new(
        AccountQueryServiceServer::new(api).max_decoding_message_size(server::MAX_REQUEST_BYTES),
    );
    running.spawn(server::serve(
        grpc_listener,
        routes,
        &["bank.v1.AccountQueryService"],
        AuthLayer::new(verifier, &[]),
        config.tls.clone(),
        shutdown.clone(),
    ));
    running.spawn(readmodel::run_change_feed(
        config.redis_url.clone(),
        keys.clone(),
        model.changes.clone(),
        model.resyncs.clone(),
        model.recent.clone(),
        shutdown.clone(),
    ));
    running.spawn(http::serve(http_listener, axum::Router::new(), config.tls, shutdown));
    Ok(running)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn every_bad_variable_is_named_in_one_error() {
        let env: HashMap<&str, &str> =
            HashMap::from([("QUERY_GRPC_ADDR", "127.0.0.1"), ("QUERY_HTTP_ADDR", "127.0.0.1:port")]);
        let err = format!("{:#}", Config::from_env(&env).unwrap_err());
        assert!(err.contains("2 problems"), "{err}");
        assert!(err.contains("QUERY_GRPC_ADDR") && err.contains("QUERY_HTTP_ADDR"), "{err}");
    }
}
