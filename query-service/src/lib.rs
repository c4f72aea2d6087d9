//! query-service. Not built yet: it serves health, reflection and /metrics;
//! `bank.v1.AccountQueryService` is not registered, so every one of its RPCs
//! answers UNIMPLEMENTED (nothing pretends to work).

use std::{net::SocketAddr, sync::Arc};

use anyhow::Result;
use bank_platform::{
    CancellationToken,
    auth::{AuthLayer, KeyCache, TokenVerifier},
    config::{self, Env},
    grpc, http,
    service::Running,
};

#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub jwks_url: String,
    pub jwt_issuer: String,
    pub jwt_audience: String,
}

impl Config {
    pub fn from_env(env: &impl Env) -> Result<Self> {
        Ok(Self {
            grpc_addr: config::parse(env, "QUERY_GRPC_ADDR", SocketAddr::from(([127, 0, 0, 1], 50053)))?,
            http_addr: config::parse(env, "QUERY_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 9093)))?,
            jwks_url: config::string(env, "JWKS_URL", "http://127.0.0.1:9091/.well-known/jwks.json"),
            jwt_issuer: config::string(env, "JWT_ISSUER", "bankmesh-auth"),
            jwt_audience: config::string(env, "JWT_AUDIENCE", "bankmesh"),
        })
    }
}

pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running> {
    let grpc_listener = grpc::bind(config.grpc_addr).await?;
    let http_listener = grpc::bind(config.http_addr).await?;
    let mut running = Running::new(grpc_listener.local_addr()?, http_listener.local_addr()?, shutdown.clone());
    let verifier = Arc::new(TokenVerifier::new(
        Arc::new(KeyCache::from_jwks_url(config.jwks_url)),
        &config.jwt_issuer,
        &config.jwt_audience,
    ));
    let routes = tonic::service::Routes::default();
    running.spawn(grpc::serve(grpc_listener, routes, &[], AuthLayer::new(verifier, &[]), shutdown.clone()));
    running.spawn(http::serve(http_listener, axum::Router::new(), shutdown));
    Ok(running)
}
