//! The gRPC server every service runs: its own routes plus health checking and
//! server reflection (v1 and v1alpha, health proto included, so grpcurl 1.8
//! works without proto files), RPC metrics and the token check.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::{auth::AuthLayer, metrics::RpcMetricsLayer, tls::Tls};

/// Largest request a service decodes: far above any valid bank request,
/// far below what could exhaust memory.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Served next to every service's own: health and both reflection versions.
pub const INFRASTRUCTURE_SERVICES: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Binds a listener; port 0 picks a free port (tests).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("failed to bind {addr}"))
}

/// Serves `routes` (whose gRPC service names are `service_names`) with
/// health, reflection, metrics and `auth` (over mutual TLS with `tls`) until
/// `shutdown` is cancelled; then stops accepting and lets in-flight calls
/// finish.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    service_names: &[&str],
    auth: AuthLayer,
    tls: Option<std::sync::Arc<Tls>>,
    shutdown: CancellationToken,
) -> Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in service_names {
        reporter.set_service_status(*name, ServingStatus::Serving).await;
    }
    // Reflection advertises what this server serves, not every service in
    // the shared descriptor set (grpcurl `list` must not offer RPCs that
    // would answer UNIMPLEMENTED here).
    let reflection = || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(bank_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        service_names.iter().copied().chain(INFRASTRUCTURE_SERVICES).fold(builder, |b, name| b.with_service_name(name))
    };
    let routes =
        routes.add_service(health).add_service(reflection().build_v1()?).add_service(reflection().build_v1alpha()?);

    let infrastructure = [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];
    let methods = service_names
        .iter()
        .flat_map(|name| bank_proto::method_paths(name))
        .chain(infrastructure.into_iter().map(str::to_owned));
    let layers = tower::ServiceBuilder::new().layer(RpcMetricsLayer::new(methods)).layer(auth);
    let shutting_down = {
        let reporter = reporter.clone();
        let names: Vec<String> = service_names.iter().map(|s| s.to_string()).collect();
        async move {
            shutdown.cancelled().await;
            for name in names {
                reporter.set_service_status(name, ServingStatus::NotServing).await;
            }
        }
    };
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls.grpc_server()).context("TLS configuration refused")?;
    }
    server
        .layer(layers)
        .add_routes(routes)
        .serve_with_incoming_shutdown(nodelay(TcpListenerStream::new(listener)), shutting_down)
        .await
        .context("gRPC server failed")
}

/// Accepted connections with Nagle's algorithm off: a response larger than
/// one segment otherwise waits for the client's delayed ACK (~40 ms). tonic
/// sets this only on listeners it binds itself.
fn nodelay(incoming: TcpListenerStream) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    incoming.map(|conn| {
        conn.inspect(|c| {
            let _ = c.set_nodelay(true);
        })
    })
}
