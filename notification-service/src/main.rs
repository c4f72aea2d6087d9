use bank_platform::{config::ProcessEnv, shutdown, telemetry};

/// `notification-service` serves; `notification-service migrate` brings its
/// schema up to date as the migration role (`NOTIFY_MIGRATE_DATABASE_URL`).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("notification-service", "info,sqlx=warn");
    match std::env::args().nth(1).as_deref() {
        Some("migrate") => {
            bank_platform::db::migrate_from_env("NOTIFY_MIGRATE_DATABASE_URL", &notification_service::MIGRATOR).await
        }
        Some(other) => anyhow::bail!("unknown command {other:?}; usage: notification-service [migrate]"),
        None => {
            let config = notification_service::Config::from_env(&ProcessEnv)?;
            tracing::info!(?config, "notification-service starting");
            let running = notification_service::start(config, shutdown::on_signal()).await?;
            tracing::info!(grpc = %running.grpc_addr, http = %running.http_addr, "notification-service listening");
            let result = running.wait().await;
            telemetry::shutdown().await;
            result
        }
    }
}
