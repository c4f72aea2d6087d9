//! auth-service: users, argon2id passwords, EdDSA access tokens with rotating
//! refresh tokens (reuse revokes the family), JWKS over HTTP, roles, KYC status
//! and login throttling.

pub mod api;
pub mod barrier;
pub mod credentials;
pub mod error;
pub mod feed;
pub mod second_factor;
pub mod service_clients;
pub mod store;
pub mod throttle;
pub mod validate;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use bank_platform::{
    CancellationToken,
    auth::{AuthLayer, KeyCache, TokenSigner, TokenVerifier, jwks},
    config::{self, Env},
    db, grpc as server, http,
    service::Running,
};
use bank_proto::v1::auth_service_server::AuthServiceServer;
use redis::aio::ConnectionManagerConfig;

use crate::{api::AuthApi, throttle::LoginThrottle};

#[derive(Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub database_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub issuer: String,
    pub audience: String,
    /// First key signs; all are published (rotation). Empty: a generated dev key.
    pub signers: Vec<TokenSigner>,
    pub access_ttl_secs: i64,
    pub refresh_ttl_secs: i64,
    pub bootstrap_admin: Option<(String, String)>,
    pub throttle: throttle::Limits,
    pub trust_forwarded_for: bool,
    /// The name in Envoy's client certificate (`EDGE_CERT_NAME`, "envoy").
    pub edge_cert_name: String,
    /// Service principals (client credentials); secrets as digests only.
    pub service_clients: service_clients::ServiceClients,
    /// Where every change of a user's status or roles is published.
    pub standing_feed: bank_platform::standing::Feed,
    /// TLS on both ports (`TLS_*_FILE`).
    pub tls: Option<std::sync::Arc<bank_platform::tls::Tls>>,
    /// The key second-factor seeds are sealed under (`TOTP_SECRETS_KEY`, a
    /// file); unset, they are stored as they are: a development stack only.
    pub totp_secrets: bank_platform::sealed::Secrets,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field("database_url", &config::redact_url(&self.database_url))
            .field("redis_url", &config::redact_url(&self.redis_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("signing_kids", &self.signers.iter().map(TokenSigner::kid).collect::<Vec<_>>())
            .field("access_ttl_secs", &self.access_ttl_secs)
            .field("refresh_ttl_secs", &self.refresh_ttl_secs)
            .field("bootstrap_admin", &self.bootstrap_admin.as_ref().map(|(email, _)| email))
            .field("throttle", &self.throttle)
            .field("trust_forwarded_for", &self.trust_forwarded_for)
            .field("edge_cert_name", &self.edge_cert_name)
            .field("service_clients", &self.service_clients)
            .field("standing_feed", &self.standing_feed)
            .field("tls", &self.tls.is_some())
            .field("totp_secrets", &self.totp_secrets)
            .finish()
    }
}

impl Config {
    /// Every invalid variable is reported, all in one error.
    pub fn from_env(env: &impl Env) -> Result<Self> {
        let mut problems = config::Problems::new();
        let mut signers = Vec::new();
        let mut unreadable_keys = false;
        if let Some(paths) = env.var("JWT_SIGNING_KEYS") {
            for path in paths.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let signer = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read signing key {path}"))
                    .and_then(|pem| TokenSigner::from_pem(&pem).with_context(|| format!("signing key {path}")));
                match problems.check("JWT_SIGNING_KEYS", signer) {
                    Some(signer) => signers.push(signer),
                    None => unreadable_keys = true,
                }
            }
        }
        if signers.is_empty() && !unreadable_keys {
            tracing::warn!("JWT_SIGNING_KEYS not set: using a generated dev key (tokens die with this process)");
            signers.push(TokenSigner::generate());
        }
        let mut service_clients = service_clients::ServiceClients::default();
        if let Some(text) = env.var("SERVICE_CLIENTS") {
            problems.check("SERVICE_CLIENTS", service_clients.add(&text, ',', "SERVICE_CLIENTS"));
        }
        if let Some(path) = env.var("SERVICE_CLIENTS_FILE") {
            let added = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read SERVICE_CLIENTS_FILE {path}"))
                .and_then(|text| service_clients.add(&text, '\n', &path));
            problems.check("SERVICE_CLIENTS_FILE", added);
        }
        let grpc_addr = problems.parse(env, "AUTH_GRPC_ADDR", SocketAddr::from(([127, 0, 0, 1], 50051)));
        let http_addr = problems.parse(env, "AUTH_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 9091)));
        let access_ttl_secs = problems.parse(env, "ACCESS_TOKEN_TTL_SECS", 900);
        let refresh_ttl_secs = problems.parse(env, "REFRESH_TOKEN_TTL_SECS", 604_800);
        let throttle = throttle::Limits {
            failures_per_email: problems.parse(env, "LOGIN_MAX_FAILURES_PER_EMAIL", 5),
            attempts_per_address: problems.parse(env, "LOGIN_MAX_ATTEMPTS_PER_ADDRESS", 20),
            window: Duration::from_secs(problems.parse(env, "LOGIN_THROTTLE_WINDOW_SECS", 900)),
        };
        let trust_forwarded_for = problems.parse(env, "TRUST_X_FORWARDED_FOR", false);
        let tls = problems.check(&bank_platform::tls::ENV_VARS.join(", "), bank_platform::tls::Tls::from_env(env));
        let totp_secrets = match env.var("TOTP_SECRETS_KEY").filter(|p| !p.is_empty()) {
            Some(path) => problems.check("TOTP_SECRETS_KEY", bank_platform::sealed::Secrets::from_file(&path)),
            None => Some(bank_platform::sealed::Secrets::unsealed()),
        };
        problems.finish()?;
        let bootstrap_admin = match (env.var("BOOTSTRAP_ADMIN_EMAIL"), env.var("BOOTSTRAP_ADMIN_PASSWORD")) {
            (Some(e), Some(p)) => Some((e, p)),
            _ => None,
        };
        Ok(Self {
            grpc_addr,
            http_addr,
            database_url: config::string(env, "AUTH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bank_auth"),
            redis_url: config::string(env, "REDIS_URL", "redis://127.0.0.1:6379"),
            redis_prefix: config::string(env, "AUTH_REDIS_PREFIX", "bank:auth:"),
            issuer: config::string(env, "JWT_ISSUER", "bankmesh-auth"),
            audience: config::string(env, "JWT_AUDIENCE", "bankmesh"),
            signers,
            access_ttl_secs,
            refresh_ttl_secs,
            bootstrap_admin,
            throttle,
            trust_forwarded_for,
            edge_cert_name: config::string(env, "EDGE_CERT_NAME", "envoy"),
            standing_feed: bank_platform::standing::Feed::from_env(env),
            service_clients,
            tls: tls.flatten(),
            totp_secrets: totp_secrets.unwrap_or_else(bank_platform::sealed::Secrets::unsealed),
        })
    }
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Methods reachable without an access token.
/// How long a suspension or revocation waits for the enforcing services to
/// confirm it before answering CHANGE_NOT_CONFIRMED (a retry confirms it).
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

pub const PUBLIC_METHODS: &[&str] = &[
    "/bank.v1.AuthService/Register",
    "/bank.v1.AuthService/Login",
    "/bank.v1.AuthService/Refresh",
    "/bank.v1.AuthService/Logout",
    "/bank.v1.AuthService/IssueServiceToken",
];

pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running> {
    if !config.totp_secrets.is_sealed() {
        tracing::warn!("TOTP_SECRETS_KEY not set: second-factor seeds are stored unsealed (development only)");
    }
    let pool = db::connect(&config.database_url, 8).await?;
    db::ensure_migrated(&pool, &MIGRATOR, "auth-service").await?;
    if let Some((email, password)) = &config.bootstrap_admin {
        ensure_bootstrap_admin(&pool, email, password).await?;
    }
    // Short timeouts: a stopped Redis must turn into UNAVAILABLE quickly.
    let redis = bank_platform::redis::connect(
        &config.redis_url,
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1),
    )
    .await
    .context("failed to connect to Redis")?;

    let grpc_listener = server::bind(config.grpc_addr).await?;
    let http_listener = server::bind(config.http_addr).await?;
    let mut running = Running::new(grpc_listener.local_addr()?, http_listener.local_addr()?, shutdown.clone());

    let verifier =
        Arc::new(TokenVerifier::new(Arc::new(KeyCache::fixed(&config.signers)?), &config.issuer, &config.audience));
    let dummy_hash =
        credentials::blocking(|| credentials::hash_password("not a real password, only for timing")).await??;
    let throttle = LoginThrottle::new(redis, config.redis_prefix.clone(), config.throttle.clone());
    let barrier = Arc::new(barrier::StandingBarrier::new(pool.clone(), config.standing_feed.clone(), BARRIER_TIMEOUT));
    let api = AuthApi {
        db: pool,
        signer: config.signers[0].clone(),
        client_throttle: throttle.namespaced("client"),
        register_throttle: throttle.namespaced("register"),
        code_throttle: throttle.namespaced("second-factor"),
        totp_secrets: config.totp_secrets.clone(),
        throttle,
        settings: api::Settings {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            access_ttl: chrono::Duration::seconds(config.access_ttl_secs),
            refresh_ttl: chrono::Duration::seconds(config.refresh_ttl_secs),
            trust_forwarded_for: config.trust_forwarded_for,
            edge_cert_name: config.edge_cert_name.clone(),
        },
        dummy_hash: Arc::new(dummy_hash),
        service_clients: Arc::new(config.service_clients.clone()),
        barrier,
    };
    running.spawn(feed::run(api.db.clone(), config.standing_feed.clone(), config.signers[0].clone(), shutdown.clone()));
    let routes =
        tonic::service::Routes::new(AuthServiceServer::new(api).max_decoding_message_size(server::MAX_REQUEST_BYTES));
    running.spawn(server::serve(
        grpc_listener,
        routes,
        &["bank.v1.AuthService"],
        AuthLayer::new(verifier, PUBLIC_METHODS),
        config.tls.clone(),
        shutdown.clone(),
    ));

    let document = jwks(&config.signers);
    let rest_schema = Arc::new(bank_proto::rest::RestSchema::load());
    let router = axum::Router::new()
        .route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let document = document.clone();
                async move { axum::Json(document) }
            }),
        )
        // The edge's strict REST body check (Envoy ext_authz): auth-service
        // already serves the edge its keys; the check needs no state.
        .route(
            "/edge/check/{*path}",
            axum::routing::any(move |method: axum::http::Method, uri: axum::http::Uri, body: axum::body::Bytes| {
                let schema = rest_schema.clone();
                async move { edge_check(&schema, &method, &uri, &body) }
            }),
        );
    running.spawn(http::serve(http_listener, router, config.tls.clone(), shutdown));
    Ok(running)
}

/// 200 lets the request through; 400 refuses it with the same
/// google.rpc.Status JSON a service's INVALID_ARGUMENT becomes at the edge.
fn edge_check(
    schema: &bank_proto::rest::RestSchema,
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    body: &[u8],
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = uri.path().strip_prefix("/edge/check").unwrap_or_default();
    match schema.check(method.as_str(), path, body) {
        Ok(()) => axum::http::StatusCode::OK.into_response(),
        Err(e) => {
            let status = serde_json::json!({
                "code": tonic::Code::InvalidArgument as i32,
                "message": format!("invalid request: {}: {}", e.field, e.description),
                "details": [{
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{ "field": e.field, "description": e.description }],
                }],
            });
            (axum::http::StatusCode::BAD_REQUEST, axum::Json(status)).into_response()
        }
    }
}

async fn ensure_bootstrap_admin(pool: &sqlx::PgPool, email: &str, password: &str) -> Result<()> {
    let email = validate::email(email).map_err(|e| anyhow::anyhow!("BOOTSTRAP_ADMIN_EMAIL {e}"))?;
    let pw = password.to_owned();
    let hash = credentials::blocking(move || credentials::hash_password(&pw)).await??;
    let admin = store::User {
        id: uuid::Uuid::now_v7(),
        email: email.clone(),
        full_name: "Administrator".into(),
        password_hash: hash,
        status: "ACTIVE".into(),
        roles: vec!["admin".into()],
        created_at: chrono::Utc::now(),
        standing_seq: 0,
        second_factor: false,
    };
    let is_admin = store::ensure_admin(pool, &admin).await.map_err(|e| anyhow::anyhow!("bootstrap admin: {e}"))?;
    if !is_admin {
        anyhow::bail!(
            "BOOTSTRAP_ADMIN_EMAIL {email} belongs to an existing user who is not an admin; \
             refusing to promote it (set BOOTSTRAP_ADMIN_EMAIL to an address nobody has registered)"
        );
    }
    tracing::info!(%email, "bootstrap admin ensured");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn every_bad_variable_is_named_in_one_error() {
        let env: HashMap<&str, &str> = HashMap::from([
            ("ACCESS_TOKEN_TTL_SECS", "15m"),
            ("TRUST_X_FORWARDED_FOR", "maybe"),
            ("JWT_SIGNING_KEYS", "/nonexistent/signing-key.pem"),
        ]);
        let err = format!("{:#}", Config::from_env(&env).unwrap_err());
        assert!(err.contains("3 problems"), "{err}");
        for var in ["ACCESS_TOKEN_TTL_SECS", "TRUST_X_FORWARDED_FOR", "JWT_SIGNING_KEYS"] {
            assert!(err.contains(var), "{var} missing from: {err}");
        }
    }
}
