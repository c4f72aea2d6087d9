//! The plain-HTTP side port of each service: /metrics, plus whatever routes a
//! service adds (auth-service serves the JWKS here).

use anyhow::Result;
use axum::{Router, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `extra` routes plus `/metrics` and `/healthz` until `shutdown`.
pub async fn serve(listener: TcpListener, extra: Router, shutdown: CancellationToken) -> Result<()> {
    let app =
        extra.route("/metrics", get(|| async { crate::metrics::render() })).route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    Ok(())
}
