use bank_platform::{config::ProcessEnv, shutdown, telemetry};

/// `projector` runs the live consumer; `projector rebuild [--from
/// stream|event-store]` rebuilds the read models from the start of the
/// stream (or of the event store) while reads keep being answered;
/// `projector migrate` brings the read models' schema up to date as the
/// migration role (`READ_MIGRATE_DATABASE_URL`).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("projector", "info,sqlx=warn");
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        return bank_platform::db::migrate_from_env("READ_MIGRATE_DATABASE_URL", &bank_readmodel::MIGRATOR).await;
    }
    let config = projector::Config::from_env(&ProcessEnv)?;
    tracing::info!(?config, "projector starting");
    match std::env::args().nth(1).as_deref() {
        None => {
            let result = projector::start(config, shutdown::on_signal()).await?.wait().await;
            telemetry::shutdown().await;
            result
        }
        Some("rebuild") => {
            let source = match (std::env::args().nth(2).as_deref(), std::env::args().nth(3).as_deref()) {
                (None, _) | (Some("--from"), Some("stream")) => projector::RebuildSource::Stream,
                (Some("--from"), Some("event-store")) => projector::RebuildSource::EventStore,
                _ => anyhow::bail!("usage: projector rebuild [--from stream|event-store]"),
            };
            let report = projector::rebuild(&config, source).await?;
            println!(
                "rebuilt generation {} (was {}): {} accounts, {} history entries",
                report.new_generation, report.old_generation, report.accounts, report.entries
            );
            Ok(())
        }
        Some(other) => anyhow::bail!("unknown command {other:?}; usage: projector [rebuild|migrate]"),
    }
}
