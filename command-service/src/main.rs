use bank_platform::{config::ProcessEnv, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("info,sqlx=warn");
    let config = command_service::Config::from_env(&ProcessEnv)?;
    tracing::info!(?config, "command-service starting");
    let running = command_service::start(config, shutdown::on_signal()).await?;
    tracing::info!(grpc = %running.grpc_addr, http = %running.http_addr, "command-service listening");
    running.wait().await
}
