//! Batching mode (`COMMAND_BATCHING=on`): concurrent commands share one
//! Postgres transaction — one commit, one fsync — the way TigerBeetle
//! amortizes the disk over a batch. Each command keeps its own outcome and
//! idempotency:
//!
//! 1. a batcher takes every command queued while it was busy (up to
//!    `COMMAND_BATCH_MAX`), opens one transaction and locks all their accounts
//!    in one statement, in id order (so batchers cannot deadlock each other);
//! 2. per command, in arrival order: claim the idempotency key, decide with the
//!    pure rules on the rows *as the earlier commands of the batch left them*,
//!    then write — or store the refusal, or undo the claim of a command that
//!    produced no outcome (unknown or someone else's account);
//! 3. one COMMIT, then every caller gets its answer.
//!
//! If any statement or the commit fails, nothing of the batch is durable and
//! every command in it answers UNAVAILABLE: the client retries with the same
//! key and gets exactly one effect. A duplicate key still in flight in another
//! batch blocks on the key's primary key until that batch ends (claims come
//! after the batch's own row locks, so the wait cannot close a cycle).

use std::{collections::HashMap, sync::Arc};

use bank_platform::auth::Caller;
use sqlx::PgPool;
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    error::CommandError,
    ledger::Plan,
    store::{self, AccountRow, Claim, PriorOutcome},
};

type Decide = Box<dyn FnOnce(&[AccountRow]) -> Result<Plan<Vec<u8>>, CommandError> + Send>;

/// One command waiting for a batch.
pub struct Job {
    caller: Caller,
    rpc: &'static str,
    key: String,
    request_hash: Vec<u8>,
    lock_ids: Vec<Uuid>,
    decide: Decide,
    /// The caller's span, so the command's trace context and logs stay its own.
    span: tracing::Span,
    reply: Option<oneshot::Sender<Result<Vec<u8>, CommandError>>>,
}

impl Job {
    pub fn new(
        caller: &Caller,
        rpc: &'static str,
        key: &str,
        request_hash: &[u8],
        lock_ids: &[Uuid],
        decide: impl FnOnce(&[AccountRow]) -> Result<Plan<Vec<u8>>, CommandError> + Send + 'static,
    ) -> Self {
        Self {
            caller: caller.clone(),
            rpc,
            key: key.to_owned(),
            request_hash: request_hash.to_vec(),
            lock_ids: lock_ids.to_vec(),
            decide: Box::new(decide),
            span: tracing::Span::current(),
            reply: None,
        }
    }
}

/// Where commands wait for a batcher.
#[derive(Clone)]
pub struct Queue(mpsc::UnboundedSender<Job>);

impl Queue {
    pub async fn run(&self, mut job: Job) -> Result<Vec<u8>, CommandError> {
        let (tx, rx) = oneshot::channel();
        job.reply = Some(tx);
        self.0.send(job).map_err(|_| aborted())?;
        rx.await.map_err(|_| aborted())?
    }
}

fn aborted() -> CommandError {
    CommandError::Unavailable("the batch this command was in did not commit")
}

#[derive(Debug, Clone)]
pub struct BatchConfig {
    pub batchers: usize,
    pub max_batch: usize,
}

/// Starts `config.batchers` batchers sharing one queue.
pub fn start(
    pool: PgPool,
    subject_prefix: String,
    outbox_written: Arc<Notify>,
    config: &BatchConfig,
) -> (Queue, Vec<tokio::task::JoinHandle<()>>) {
    let (tx, rx) = mpsc::unbounded_channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let batcher = Arc::new(Batcher { pool, subject_prefix, outbox_written });
    let max = config.max_batch.max(1);
    let handles = (0..config.batchers.max(1))
        .map(|_| {
            let (rx, batcher) = (rx.clone(), batcher.clone());
            tokio::spawn(async move {
                loop {
                    let jobs = {
                        let mut rx = rx.lock().await;
                        let Some(first) = rx.recv().await else { return };
                        let mut jobs = vec![first];
                        while jobs.len() < max {
                            match rx.try_recv() {
                                Ok(j) => jobs.push(j),
                                Err(_) => break,
                            }
                        }
                        jobs
                    };
                    batcher.run(jobs).await;
                }
            })
        })
        .collect();
    (Queue(tx), handles)
}

struct Batcher {
    pool: PgPool,
    subject_prefix: String,
    outbox_written: Arc<Notify>,
}

impl Batcher {
    async fn run(&self, mut jobs: Vec<Job>) {
        let replies: Vec<_> = jobs.iter_mut().map(|j| j.reply.take()).collect();
        BATCH_SIZE.observe(jobs.len() as f64);
        match self.execute(jobs).await {
            Ok(outcomes) => {
                self.outbox_written.notify_one();
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    if let Some(r) = reply {
                        let _ = r.send(outcome);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "batch rolled back; its commands answer UNAVAILABLE");
                for r in replies.into_iter().flatten() {
                    let _ = r.send(Err(aborted()));
                }
            }
        }
    }

    async fn execute(&self, jobs: Vec<Job>) -> Result<Vec<Result<Vec<u8>, CommandError>>, CommandError> {
        let mut tx = self.pool.begin().await?;
        let mut ids: Vec<Uuid> = jobs.iter().flat_map(|j| j.lock_ids.iter().copied()).collect();
        ids.sort();
        ids.dedup();
        let mut rows: HashMap<Uuid, AccountRow> =
            store::lock_accounts(&mut tx, &ids).await?.into_iter().map(|r| (r.account.id, r)).collect();
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs {
            let user = job.caller.user_id;
            let outcome = match store::claim_key(&mut tx, user, &job.key, &job.request_hash).await? {
                Claim::Existing { request_hash, .. } if request_hash != job.request_hash => {
                    Err(CommandError::IdempotencyKeyReused)
                }
                Claim::Existing { outcome: PriorOutcome::Response(bytes), .. } => Ok(bytes),
                Claim::Existing { outcome: PriorOutcome::Refusal { reason, message }, .. } => {
                    Err(CommandError::StoredRefusal { reason, message })
                }
                Claim::New => {
                    let mut mine: Vec<AccountRow> =
                        job.lock_ids.iter().filter_map(|id| rows.get(id).cloned()).collect();
                    mine.sort_by_key(|r| r.account.id);
                    mine.dedup_by_key(|r| r.account.id);
                    let account = job.lock_ids.first().copied();
                    match job.span.in_scope(|| (job.decide)(&mine)) {
                        Ok(plan) => {
                            store::apply(&mut tx, user, &job.key, &self.subject_prefix, &plan.writes, &plan.response)
                                .instrument(job.span.clone())
                                .await?;
                            for r in plan.writes.new_accounts.iter().chain(&plan.writes.changed_accounts) {
                                rows.insert(r.account.id, r.clone());
                            }
                            Ok(plan.response)
                        }
                        Err(CommandError::Refused(rule)) => {
                            let message = rule.to_string();
                            store::save_refusal(&mut tx, user, &job.key, rule.reason(), &message).await?;
                            store::audit(&mut tx, user, job.rpc, account, rule.reason(), &message).await?;
                            Err(CommandError::Refused(rule))
                        }
                        Err(e) => {
                            // No outcome to keep: give the key back, as a rolled-back
                            // transaction would have.
                            store::release_key(&mut tx, user, &job.key).await?;
                            if matches!(e, CommandError::NotOwner) {
                                let detail = "account belongs to another customer";
                                store::audit(&mut tx, user, job.rpc, account, "NOT_OWNER", detail).await?;
                            }
                            Err(e)
                        }
                    }
                }
            };
            outcomes.push(outcome);
        }
        tx.commit().await?;
        Ok(outcomes)
    }
}

static BATCH_SIZE: std::sync::LazyLock<prometheus::Histogram> = std::sync::LazyLock::new(|| {
    prometheus::register_histogram!(
        prometheus::HistogramOpts::new("command_batch_size", "commands per transaction in batching mode")
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0])
    )
    .expect("registers once")
});
