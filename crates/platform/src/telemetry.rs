//! Structured logs with `tracing`, set up once per process.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber: `RUST_LOG` filter (default info), JSON lines
/// when `LOG_FORMAT=json`. Safe to call twice (the second call is a no-op), which
/// tests rely on.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json");
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry.with(fmt::layer().json().with_current_span(false)).try_init()
    } else {
        registry.with(fmt::layer().compact()).try_init()
    };
}

/// For tests: logs only when `TEST_LOG` is set, so parallel test output stays readable.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init("info,sqlx=warn");
    }
}
