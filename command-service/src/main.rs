use bank_platform::{config::ProcessEnv, shutdown, telemetry};

/// `command-service` serves; `command-service reconcile` audits everything
/// and exits non-zero on any difference; `command-service migrate` brings the
/// write model's schema up to date as the migration role
/// (`COMMAND_MIGRATE_DATABASE_URL`); `command-service provision-streams` makes
/// the event and standing streams as the NATS administrator
/// (`NATS_PROVISION_URL`), which no service may.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("command-service", "info,sqlx=warn");
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        return bank_platform::db::migrate_from_env("COMMAND_MIGRATE_DATABASE_URL", &command_service::MIGRATOR).await;
    }
    if std::env::args().nth(1).as_deref() == Some("provision-streams") {
        return bank_platform::nats::provision_from_env(&ProcessEnv).await;
    }
    let config = command_service::Config::from_env(&ProcessEnv)?;
    match std::env::args().nth(1).as_deref() {
        None => {
            tracing::info!(?config, "command-service starting");
            let running = command_service::start(config, shutdown::on_signal()).await?;
            tracing::info!(grpc = %running.grpc_addr, http = %running.http_addr, "command-service listening");
            let result = running.wait().await;
            telemetry::shutdown().await;
            result
        }
        Some("reconcile") => {
            let report = command_service::reconcile(&config).await?;
            print!("{report}");
            if !report.is_clean() {
                std::process::exit(1);
            }
            Ok(())
        }
        Some(other) => {
            anyhow::bail!("unknown command {other:?}; usage: command-service [reconcile|migrate|provision-streams]")
        }
    }
}
