//! What every bankmesh service shares, set up once: configuration from the
//! environment, telemetry, the gRPC server (health, reflection, metrics, the
//! token check), JWT verification, Status mapping and Postgres connections.

pub mod auth;
pub mod config;
pub mod db;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod nats;
pub mod redis;
pub mod sealed;
pub mod service;
pub mod shutdown;
pub mod signing;
pub mod standing;
pub mod status;
pub mod telemetry;
pub mod tls;

pub use tokio_util::sync::CancellationToken;

/// A URL authority's `user:password@` (kept whole, with its `@`, or empty)
/// and the host list after it. Multi-host URLs (Postgres, Sentinel) are
/// split per host around it.
fn split_credentials(authority: &str) -> (&str, &str) {
    match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    }
}
