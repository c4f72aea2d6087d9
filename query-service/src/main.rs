use bank_platform::{config::ProcessEnv, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("query-service", "info");
    let config = query_service::Config::from_env(&ProcessEnv)?;
    tracing::info!(?config, "query-service starting");
    let running = query_service::start(config, shutdown::on_signal()).await?;
    tracing::info!(grpc = %running.grpc_addr, http = %running.http_addr, "query-service listening");
    let result = running.wait().await;
    telemetry::shutdown().await;
    result
}
