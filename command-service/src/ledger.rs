//! The money path's entry: a validated command goes to the executor
//! (`batch`) — queued for a batch, or with batching off as a batch of one —
//! under its idempotency key, and comes back as the encoded response.

use std::sync::Arc;

use bank_domain::ledger::Command;
use bank_platform::auth::Caller;
use prost::Message;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::{
    batch::Batcher,
    error::CommandError,
    execute::Limits,
    queue::{Job, Queue},
    store,
    validate::IdempotencyKey,
};

pub struct Ledger {
    limits: Limits,
    executor: Executor,
    pool: PgPool,
}

/// How commands reach the batch executor.
enum Executor {
    /// Batching on: queued for the batchers.
    Queued(Queue),
    /// Batching off: each command is a batch of one, run by its caller.
    Direct(Arc<Batcher>),
}

impl Ledger {
    pub fn new(
        pool: PgPool,
        standings: Arc<crate::standing::Standings>,
        limits: Limits,
        subject_prefix: String,
        outbox_written: Arc<Notify>,
    ) -> Self {
        let direct = Arc::new(Batcher::new(pool.clone(), standings, subject_prefix, outbox_written, limits.clone()));
        Self { limits, executor: Executor::Direct(direct), pool }
    }

    /// Sends every command through `queue` (batching mode).
    pub fn with_batching(mut self, queue: Queue) -> Self {
        self.executor = Executor::Queued(queue);
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs `command` for `caller` under its idempotency key.
    #[tracing::instrument(skip_all, fields(rpc = rpc, caller = %caller.user_id), err(level = "info"))]
    pub async fn run<R: Message + Default>(
        &self,
        caller: &Caller,
        rpc: &'static str,
        key: &IdempotencyKey,
        request_hash: &[u8],
        command: Command,
    ) -> Result<R, CommandError> {
        let needs = command.needs();
        let lock_ids = store::accounts_to_lock(&self.pool, &needs).await?;
        let job = Job::new(caller, rpc, key, request_hash, command, needs, lock_ids);
        let bytes = match &self.executor {
            Executor::Queued(queue) => queue.run(job).await?,
            Executor::Direct(batcher) => batcher.run_one(job).await?,
        };
        R::decode(bytes.as_slice()).map_err(|e| CommandError::Internal(anyhow::anyhow!("response: {e}")))
    }
}
