//! A running service: its bound addresses and its tasks, stopped together.
//! `main` waits on it; tests start services on port 0 and stop them.

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::{Result, anyhow};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<Result<()>>,
}

/// How long in-flight work gets to finish after a stop request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

impl Running {
    pub fn new(grpc_addr: SocketAddr, http_addr: SocketAddr, shutdown: CancellationToken) -> Self {
        Self { grpc_addr, http_addr, shutdown, tasks: JoinSet::new() }
    }

    pub fn spawn(&mut self, task: impl Future<Output = Result<()>> + Send + 'static) {
        self.tasks.spawn(task);
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every task ends. The first failure stops the others and
    /// is returned, so a dead component takes the process down visibly.
    pub async fn wait(mut self) -> Result<()> {
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let result = joined.map_err(|e| anyhow!("task panicked: {e}")).and_then(|r| r);
            if let Err(e) = result {
                tracing::error!(error = %format!("{e:#}"), "service task failed");
                self.shutdown.cancel();
                first_error.get_or_insert(e);
            } else if !self.shutdown.is_cancelled() {
                // A task that ends on its own while we run is a stop request too.
                self.shutdown.cancel();
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Asks every task to stop and waits for them, bounded by a drain timeout.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(DRAIN_TIMEOUT, self.wait())
            .await
            .map_err(|_| anyhow!("service did not stop within {DRAIN_TIMEOUT:?}"))?
    }
}
