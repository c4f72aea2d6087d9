//! The one execution path of every command: load what the commands need,
//! claim their keys, decide each, write everything. It never names a
//! command: each says what it needs (`Command::needs`). With batching on
//! (the default; `COMMAND_BATCHING=off` turns it off) the batch is every
//! command queued (`queue`); with it off each command is a batch of one, run
//! by its caller (`Batcher::run_one`). Either way each command keeps
//! its own outcome and idempotency:
//!
//! 1. a batcher takes every command queued while it was busy (up to
//!    `COMMAND_BATCH_MAX`), opens one transaction and locks all their accounts
//!    in one statement, in id order (so batchers cannot deadlock each other);
//! 2. claim every key in one statement (keys claimed earlier answer with
//!    their first outcome);
//! 3. per new command, in arrival order, decide with the pure rules on the rows
//!    *as the earlier commands of the batch left them* — in memory;
//! 4. one statement writes everything: final account states, events, outbox,
//!    each command's response or refusal, released keys (unknown or someone
//!    else's account: no outcome kept) and audit rows;
//! 5. one COMMIT, then every caller gets its answer. Five round trips and one
//!    fsync per batch, whatever its size.
//!
//! If any statement or the commit fails, nothing of the batch is durable and
//! every command in it answers UNAVAILABLE: the client retries with the same
//! key and gets exactly one effect. A duplicate key still in flight in another
//! batch blocks on the key's primary key until that batch ends (claims come
//! after the batch's own row locks, so the wait cannot close a cycle). The same
//! key twice in one batch: the second gets the first's answer.

use std::sync::Arc;

use bank_domain::ledger::{Actor, Debits, StandingClaims, TokenClaims, debit_window_start};
use bank_platform::{auth::Caller, standing::Standing};
use sqlx::PgPool;
use tokio::sync::{Mutex, Notify, oneshot};
use uuid::Uuid;

use crate::{
    error::CommandError,
    execute::{self, Limits, Staged},
    idempotency::{self, Keys, Verdict},
    queue::{BatchConfig, Job, Queue},
    store::{self, BatchWrites},
};

pub struct Batcher {
    pool: PgPool,
    standings: Arc<crate::standing::Standings>,
    subject_prefix: String,
    outbox_written: Arc<Notify>,
    limits: Limits,
}

impl Batcher {
    pub fn new(
        pool: PgPool,
        standings: Arc<crate::standing::Standings>,
        subject_prefix: String,
        outbox_written: Arc<Notify>,
        limits: Limits,
    ) -> Self {
        Self { pool, standings, subject_prefix, outbox_written, limits }
    }

    /// Batching off: `job` alone, in the caller's task.
    pub async fn run_one(&self, mut job: Job) -> Result<Vec<u8>, CommandError> {
        let (tx, rx) = oneshot::channel();
        job.reply = Some(tx);
        self.run(vec![job]).await;
        rx.await.map_err(|_| CommandError::aborted())?
    }

    pub(crate) async fn run(&self, mut jobs: Vec<Job>) {
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
                    let _ = r.send(Err(CommandError::aborted()));
                }
            }
        }
    }

    /// Load → claim → decide → write, in one transaction.
    #[tracing::instrument(skip_all, fields(commands = jobs.len()), err(level = "info"))]
    async fn execute(&self, jobs: Vec<Job>) -> Result<Vec<Result<Vec<u8>, CommandError>>, CommandError> {
        let mut tx = self.pool.begin().await?;
        // Each caller's newest standing, read in this transaction before any
        // row is locked: checking a signature (and, for a key not seen yet,
        // fetching the JWKS) holds no account's lock.
        let callers: Vec<Uuid> = jobs.iter().map(|j| j.caller.user_id).collect();
        let standings = self.standings.load(&mut tx, &callers).await?;

        // What the batch needs, loaded in a fixed number of statements.
        let mut ids: Vec<Uuid> = jobs.iter().flat_map(|j| j.lock_ids.iter().copied()).collect();
        ids.sort();
        ids.dedup();
        let mut rows = store::lock_accounts(&mut tx, &ids).await?;
        let every = jobs.iter().any(|j| j.needs.debits == Debits::OfEvery);
        store::load_debits_since(&mut tx, &mut rows, debit_window_start(execute::now()), every).await?;
        // Holds and transactions named, read under their accounts' locks.
        let hold_ids: Vec<Uuid> = jobs.iter().flat_map(|j| j.needs.holds.iter().copied()).collect();
        let holds = store::load_holds(&mut tx, &hold_ids).await?;
        let tx_ids: Vec<Uuid> = jobs.iter().flat_map(|j| j.needs.transactions.iter().copied()).collect();
        let transactions = store::load_transactions(&mut tx, &tx_ids).await?;
        let mut staged = Staged::new(rows, holds, transactions);

        let claims: Vec<(Uuid, &crate::validate::IdempotencyKey, &[u8])> =
            jobs.iter().map(|j| (j.caller.user_id, &j.key, j.request_hash.as_slice())).collect();
        let mut keys = Keys::claim(&mut tx, &claims).await?;

        let mut w = BatchWrites::default();
        let mut outcomes: Vec<Result<Vec<u8>, CommandError>> = Vec::with_capacity(jobs.len());
        for job in jobs {
            let user = job.caller.user_id;
            if let Verdict::Answer(answer) = keys.verdict(user, &job.key, &job.request_hash, &outcomes) {
                outcomes.push(answer);
                continue;
            }
            // Claimed now: decide on the rows as the earlier commands left them.
            let actor = actor(&job.caller, standings.get(&user));
            let decided =
                job.span.in_scope(|| staged.decide(&self.limits, &actor, &job.command, &job.needs, &job.lock_ids));
            let outcome = decided.map(|plan| staged.absorb(plan, &mut w));
            idempotency::settle(&mut w, user, &job.key, job.rpc, job.needs.subject(), &outcome);
            outcomes.push(outcome);
        }
        staged.finish(&mut w);
        store::apply_batch(&mut tx, &self.subject_prefix, &w).await?;
        tx.commit().await?;
        Ok(outcomes)
    }
}

/// Starts `config.batchers` batchers sharing one queue: each takes every
/// command queued while it was busy (up to `max_batch`).
pub fn start(batcher: Batcher, config: &BatchConfig) -> (Queue, Vec<tokio::task::JoinHandle<()>>) {
    let (queue, rx) = Queue::new();
    let rx = Arc::new(Mutex::new(rx));
    let batcher = Arc::new(batcher);
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
    (queue, handles)
}

/// The actor the rules see: the verified token, narrowed by the caller's
/// newest standing (the rule itself is the domain's).
pub(crate) fn actor(caller: &Caller, standing: Option<&Standing>) -> Actor {
    use bank_platform::auth::{ROLE_ADMIN, ROLE_TELLER};
    let token = TokenClaims {
        id: caller.user_id,
        active: caller.is_active(),
        teller: caller.is_teller(),
        admin: caller.is_admin(),
        service: caller.is_service(),
        standing_version: caller.standing_version,
    };
    let standing = standing.map(|s| StandingClaims {
        seq: s.seq,
        active: s.is_active(),
        teller: s.has(ROLE_TELLER) || s.has(ROLE_ADMIN),
        admin: s.has(ROLE_ADMIN),
    });
    Actor::narrowed(&token, standing.as_ref())
}

static BATCH_SIZE: std::sync::LazyLock<prometheus::Histogram> = std::sync::LazyLock::new(|| {
    prometheus::register_histogram!(
        prometheus::HistogramOpts::new("command_batch_size", "commands per transaction in batching mode")
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0])
    )
    .expect("registers once")
});
