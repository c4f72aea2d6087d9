//! The HTTP side port of each service (HTTPS with `tls`): /metrics, plus
//! whatever routes a service adds (auth-service serves the JWKS here).

use anyhow::Result;
use axum::{Router, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::tls::Tls;

/// Serves `extra` routes plus `/metrics` and `/healthz` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    extra: Router,
    tls: Option<std::sync::Arc<Tls>>,
    shutdown: CancellationToken,
) -> Result<()> {
    let app =
        extra.route("/metrics", get(|| async { crate::metrics::render() })).route("/healthz", get(|| async { "ok" }));
    match tls {
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?,
        Some(tls) => {
            axum::serve(tls.http_listener(listener)?, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?
        }
    }
    Ok(())
}
