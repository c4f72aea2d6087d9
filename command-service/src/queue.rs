//! Where commands wait for a batcher: with batching on, concurrent commands
//! share one Postgres transaction (one commit, one fsync), the way
//! TigerBeetle amortizes the disk over a batch.

use bank_domain::ledger::{Command, Needs};
use bank_platform::auth::Caller;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::{error::CommandError, validate::IdempotencyKey};

/// One command waiting for a batch.
pub struct Job {
    pub(crate) caller: Caller,
    pub(crate) rpc: &'static str,
    pub(crate) key: IdempotencyKey,
    pub(crate) request_hash: Vec<u8>,
    /// Every account the command locks: those it needs, and those of the
    /// holds and transactions it names (`store::accounts_to_lock`).
    pub(crate) lock_ids: Vec<Uuid>,
    pub(crate) command: Command,
    /// What the command said it needs (asked once, when it arrived).
    pub(crate) needs: Needs,
    /// The caller's span, so the command's trace context and logs stay its own.
    pub(crate) span: tracing::Span,
    pub(crate) reply: Option<oneshot::Sender<Result<Vec<u8>, CommandError>>>,
}

impl Job {
    pub fn new(
        caller: &Caller,
        rpc: &'static str,
        key: &IdempotencyKey,
        request_hash: &[u8],
        command: Command,
        needs: Needs,
        lock_ids: Vec<Uuid>,
    ) -> Self {
        Self {
            caller: caller.clone(),
            rpc,
            key: key.clone(),
            request_hash: request_hash.to_vec(),
            lock_ids,
            command,
            needs,
            span: tracing::Span::current(),
            reply: None,
        }
    }
}

#[derive(Clone)]
pub struct Queue(mpsc::UnboundedSender<Job>);

impl Queue {
    /// A queue, and where its batchers take jobs from.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Job>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    pub async fn run(&self, mut job: Job) -> Result<Vec<u8>, CommandError> {
        let (tx, rx) = oneshot::channel();
        job.reply = Some(tx);
        self.0.send(job).map_err(|_| CommandError::aborted())?;
        rx.await.map_err(|_| CommandError::aborted())?
    }
}

#[derive(Debug, Clone)]
pub struct BatchConfig {
    pub batchers: usize,
    pub max_batch: usize,
}
