//! Structured logs with `tracing`, and traces over OTLP, set up once per process.
//!
//! Trace context crosses process boundaries as W3C `traceparent`/`tracestate`:
//! in gRPC metadata (the server layer in `grpc` continues it), in each event
//! envelope (`trace_context`, written with the event in the command's
//! transaction), and in NATS headers (the relay's publish span, which the
//! projector continues). One trace thus spans client → command-service →
//! relay → projector.

use std::{collections::BTreeMap, sync::OnceLock};

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{
    Resource, propagation::TraceContextPropagator, runtime::Tokio, trace::SdkTracerProvider,
    trace::span_processor_with_async_runtime::BatchSpanProcessor,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber: `RUST_LOG` filter (default info), JSON lines
/// when `LOG_FORMAT=json`, and OTLP/gRPC trace export when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`OTEL_SERVICE_NAME` overrides
/// `service`; `OTEL_BSP_*` tune batching). Call inside the tokio runtime. Safe
/// to call twice (the second call is a no-op), which tests rely on.
pub fn init(service: &str, default_filter: &str) {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json");
    let otel = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty()).and_then(|endpoint| {
        match exporter_provider(service, &endpoint) {
            Ok(provider) => {
                let tracer = provider.tracer(service.to_owned());
                global::set_tracer_provider(provider.clone());
                let _ = PROVIDER.set(provider);
                Some(tracing_opentelemetry::layer().with_tracer(tracer))
            }
            Err(e) => {
                eprintln!("OTLP export disabled: {e}");
                None
            }
        }
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = if json {
        registry.with(fmt::layer().json().with_current_span(false)).try_init()
    } else {
        registry.with(fmt::layer().compact()).try_init()
    };
}

fn exporter_provider(service: &str, endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?;
    let resource = Resource::builder().with_service_name(service.to_owned()).build();
    let resource = match std::env::var("OTEL_SERVICE_NAME") {
        Ok(name) if !name.is_empty() => Resource::builder().with_service_name(name).build(),
        _ => resource,
    };
    Ok(SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter, Tokio).build())
        .with_resource(resource)
        .build())
}

/// Whether spans are exported (OTLP configured): callers skip building spans
/// and decoding trace context when nobody will see them.
pub fn exporting() -> bool {
    PROVIDER.get().is_some()
}

/// Exports what is still buffered. Call once, at the end of `main`.
pub async fn shutdown() {
    if let Some(provider) = PROVIDER.get().cloned() {
        // shutdown() blocks on the export task, which runs on this runtime.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// For tests: logs only when `TEST_LOG` is set, so parallel test output stays readable.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init("test", "info,sqlx=warn");
    }
}

/// The current span's context as W3C headers, for an event envelope or a
/// message header. Empty when no trace is being recorded.
pub fn current_trace_context() -> BTreeMap<String, String> {
    let mut carrier = Carrier(BTreeMap::new());
    if !exporting() {
        return carrier.0;
    }
    global::get_text_map_propagator(|p| p.inject_context(&Span::current().context(), &mut carrier));
    carrier.0
}

/// Makes `span` a child of the trace described by `headers` (any carrier of
/// `traceparent`), when there is one.
pub fn continue_trace(span: &Span, headers: &dyn Extractor) {
    if !exporting() {
        return;
    }
    let parent = global::get_text_map_propagator(|p| p.extract(headers));
    let _ = span.set_parent(parent);
}

/// Trace headers held in a map: the envelope's `trace_context`.
pub struct Carrier(pub BTreeMap<String, String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Trace headers in gRPC metadata (HTTP/2 headers).
pub struct HttpHeaders<'a>(pub &'a http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
