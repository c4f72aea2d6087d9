//! Prometheus metrics: every service registers into the default registry, and
//! the HTTP port serves it at /metrics. RPC counts and latency come from one
//! tower layer on the gRPC server.

use std::{
    collections::HashSet,
    sync::{Arc, LazyLock},
    task::{Context, Poll},
    time::Instant,
};

use futures::future::BoxFuture;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, register_histogram_vec, register_int_counter_vec};
use tower::{Layer, Service};

static RPC_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        Opts::new("rpc_requests_total", "gRPC requests by method and status code"),
        &["method", "code"]
    )
    .expect("metric registers once")
});

static RPC_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        HistogramOpts::new("rpc_duration_seconds", "gRPC latency until response headers")
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        &["method"]
    )
    .expect("metric registers once")
});

/// Renders the default registry in the Prometheus text format.
pub fn render() -> String {
    let encoder = prometheus::TextEncoder::new();
    encoder.encode_to_string(&prometheus::gather()).unwrap_or_default()
}

/// Labels RPC metrics by method, from the methods the server knows only:
/// a label per raw request path would let anyone grow the registry (and the
/// process) without bound by calling made-up paths.
#[derive(Debug, Clone, Default)]
pub struct RpcMetricsLayer {
    known: Arc<HashSet<String>>,
}

/// The label of every path that names no method the server serves.
pub const UNKNOWN_METHOD: &str = "unknown";

impl RpcMetricsLayer {
    /// `methods`: the full gRPC paths (`/pkg.Service/Method`) this server serves.
    pub fn new(methods: impl IntoIterator<Item = String>) -> Self {
        Self { known: Arc::new(methods.into_iter().collect()) }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner, known: self.known.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    known: Arc<HashSet<String>>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcMetrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        let method = if self.known.contains(path) { path.to_owned() } else { UNKNOWN_METHOD.to_owned() };
        let started = Instant::now();
        // One server span per RPC, continuing the caller's trace (traceparent metadata).
        let span = tracing::info_span!("grpc.server", otel.name = %method, otel.kind = "server", rpc.system = "grpc");
        crate::telemetry::continue_trace(&span, &crate::telemetry::HttpHeaders(req.headers()));
        let fut = span.in_scope(|| self.inner.call(req));
        Box::pin(tracing::Instrument::instrument(
            async move {
                let res = fut.await;
                // Errors travel as trailers-only responses (grpc-status in the
                // headers); a success carries its status in trailers later.
                let code = match &res {
                    Ok(r) => r
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .map(|c| tonic::Code::from_bytes(c.as_bytes()))
                        .unwrap_or(tonic::Code::Ok),
                    Err(_) => tonic::Code::Unknown,
                };
                RPC_DURATION.with_label_values(&[&method]).observe(started.elapsed().as_secs_f64());
                RPC_REQUESTS.with_label_values(&[&method, &format!("{code:?}")]).inc();
                res
            },
            span,
        ))
    }
}
