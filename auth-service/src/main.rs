use bank_platform::{config::ProcessEnv, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("auth-service", "info,sqlx=warn");
    let config = auth_service::Config::from_env(&ProcessEnv)?;
    tracing::info!(?config, "auth-service starting");
    let running = auth_service::start(config, shutdown::on_signal()).await?;
    tracing::info!(grpc = %running.grpc_addr, http = %running.http_addr, "auth-service listening");
    let result = running.wait().await;
    telemetry::shutdown().await;
    result
}
