use bank_platform::{config::ProcessEnv, shutdown, telemetry};

/// `auth-service` serves; `auth-service migrate` brings its schema up to
/// date as the migration role (`AUTH_MIGRATE_DATABASE_URL`).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("auth-service", "info,sqlx=warn");
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("migrate") => {
            return bank_platform::db::migrate_from_env("AUTH_MIGRATE_DATABASE_URL", &auth_service::MIGRATOR).await;
        }
        Some(other) => anyhow::bail!("unknown command {other:?}; usage: auth-service [migrate]"),
    }
    let config = auth_service::Config::from_env(&ProcessEnv)?;
    tracing::info!(?config, "auth-service starting");
    let running = auth_service::start(config, shutdown::on_signal()).await?;
    tracing::info!(grpc = %running.grpc_addr, http = %running.http_addr, "auth-service listening");
    let result = running.wait().await;
    telemetry::shutdown().await;
    result
}
