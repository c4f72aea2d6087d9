//! The one execution path of every command. With batching on (the default;
//! `COMMAND_BATCHING=off` turns it off) concurrent commands share one
//! Postgres transaction — one commit, one fsync — the way TigerBeetle
//! amortizes the disk over a batch; with it off each command is a batch of
//! one, run by its caller (`Batcher::run_one`). Either way each command keeps
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

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use bank_domain::{Refusal, ledger::Command};
use bank_platform::auth::Caller;
use sqlx::PgPool;
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use uuid::Uuid;

use crate::{
    error::CommandError,
    ledger::{self, Limits},
    store::{self, AccountRow, HoldRow, PriorOutcome},
};

/// One command waiting for a batch.
pub struct Job {
    caller: Caller,
    rpc: &'static str,
    key: String,
    request_hash: Vec<u8>,
    lock_ids: Vec<Uuid>,
    command: Command,
    /// The caller's span, so the command's trace context and logs stay its own.
    span: tracing::Span,
    reply: Option<oneshot::Sender<Result<Vec<u8>, CommandError>>>,
}

impl Job {
    /// `lock_ids`: the accounts the command locks (`store::accounts_to_lock`).
    pub fn new(
        caller: &Caller,
        rpc: &'static str,
        key: &str,
        request_hash: &[u8],
        command: Command,
        lock_ids: Vec<Uuid>,
    ) -> Self {
        Self {
            caller: caller.clone(),
            rpc,
            key: key.to_owned(),
            request_hash: request_hash.to_vec(),
            lock_ids,
            command,
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
pub fn start(batcher: Batcher, config: &BatchConfig) -> (Queue, Vec<tokio::task::JoinHandle<()>>) {
    let (tx, rx) = mpsc::unbounded_channel::<Job>();
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
    (Queue(tx), handles)
}

pub struct Batcher {
    pool: PgPool,
    standings: Arc<crate::standing::Standings>,
    subject_prefix: String,
    outbox_written: Arc<Notify>,
    limits: Limits,
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
        // Each caller's newest standing, read in this transaction before any
        // row is locked: checking a signature (and, for a key not seen yet,
        // fetching the JWKS) holds no account's lock.
        let callers: Vec<Uuid> = jobs.iter().map(|j| j.caller.user_id).collect();
        let standings = self.standings.load(&mut tx, &callers).await?;
        let mut ids: Vec<Uuid> = jobs.iter().flat_map(|j| j.lock_ids.iter().copied()).collect();
        ids.sort();
        ids.dedup();
        let mut rows = store::lock_accounts(&mut tx, &ids).await?;
        let sets_limits = jobs.iter().any(|j| matches!(j.command, Command::SetLimits { .. }));
        store::load_debits_since(&mut tx, &mut rows, ledger::now() - chrono::Duration::hours(24), sets_limits).await?;
        let mut state: HashMap<Uuid, AccountRow> = rows.into_iter().map(|r| (r.account.id, r)).collect();
        // Holds and transactions named, read under their accounts' locks.
        let hold_ids: Vec<Uuid> = jobs.iter().filter_map(|j| j.command.hold()).collect();
        let mut holds: HashMap<Uuid, HoldRow> =
            store::load_holds(&mut tx, &hold_ids).await?.into_iter().map(|h| (h.hold.id, h)).collect();
        let tx_ids: Vec<Uuid> = jobs
            .iter()
            .filter_map(|j| match j.command {
                Command::Reverse { transaction, .. } => Some(transaction),
                _ => None,
            })
            .collect();
        let mut transactions = store::load_transactions(&mut tx, &tx_ids).await?;
        let (mut created_holds, mut touched_holds) = (HashSet::new(), Vec::new());
        let claims: Vec<(Uuid, String, Vec<u8>)> =
            jobs.iter().map(|j| (j.caller.user_id, j.key.clone(), j.request_hash.clone())).collect();
        let claimed = store::claim_keys(&mut tx, &claims).await?;
        // Keys claimed before this batch: their first outcome is the answer.
        let mut seen = HashSet::new();
        let earlier: Vec<(Uuid, String)> = claims
            .iter()
            .map(|(c, k, _)| (*c, k.clone()))
            .filter(|ck| seen.insert(ck.clone()) && !claimed.contains(ck))
            .collect();
        let prior = if earlier.is_empty() { HashMap::new() } else { store::prior_outcomes(&mut tx, &earlier).await? };

        let mut w = store::BatchWrites::default();
        let (mut created, mut touched) = (HashSet::new(), Vec::new());
        // The first job of this batch under each key, and what it answered.
        let mut first: HashMap<(Uuid, String), (Vec<u8>, usize)> = HashMap::new();
        let mut outcomes: Vec<Result<Vec<u8>, CommandError>> = Vec::with_capacity(jobs.len());
        for job in jobs {
            let user = job.caller.user_id;
            let ck = (user, job.key.clone());
            if let Some((hash, i)) = first.get(&ck) {
                // The same key twice in one batch: one effect, the same answer.
                outcomes.push(if *hash != job.request_hash {
                    Err(CommandError::IdempotencyKeyReused)
                } else {
                    replay(&outcomes[*i])
                });
                continue;
            }
            first.insert(ck.clone(), (job.request_hash.clone(), outcomes.len()));
            if let Some((hash, outcome)) = prior.get(&ck) {
                outcomes.push(match outcome {
                    _ if *hash != job.request_hash => Err(CommandError::IdempotencyKeyReused),
                    PriorOutcome::Response(bytes) => Ok(bytes.clone()),
                    PriorOutcome::Refusal { reason, message } => {
                        Err(CommandError::StoredRefusal { reason: reason.clone(), message: message.clone() })
                    }
                });
                continue;
            }
            if !claimed.contains(&ck) {
                // Neither ours nor recorded: never guess; the client retries.
                outcomes.push(Err(aborted()));
                continue;
            }
            // Claimed now: decide on the rows as the earlier commands left them.
            let mut mine: Vec<AccountRow> = job.lock_ids.iter().filter_map(|id| state.get(id).cloned()).collect();
            mine.sort_by_key(|r| r.account.id);
            mine.dedup_by_key(|r| r.account.id);
            let account = job.command.subject();
            let decided = job.span.in_scope(|| {
                ledger::decide(
                    &self.limits,
                    &job.caller,
                    &job.command,
                    &mine,
                    &holds,
                    &transactions,
                    standings.get(&user),
                )
            });
            let outcome = match decided {
                Ok(plan) => {
                    for h in plan.writes.holds {
                        if !holds.contains_key(&h.hold.id) {
                            created_holds.insert(h.hold.id);
                        }
                        touched_holds.push(h.hold.id);
                        holds.insert(h.hold.id, h);
                    }
                    for r in &plan.writes.reversals {
                        if let Some(t) = transactions.get_mut(&r.original) {
                            t.reversed_by = Some(r.reversal);
                        }
                    }
                    w.reversals.extend(plan.writes.reversals);
                    for r in &plan.writes.new_accounts {
                        created.insert(r.account.id);
                    }
                    for r in plan.writes.new_accounts.into_iter().chain(plan.writes.changed_accounts) {
                        touched.push(r.account.id);
                        state.insert(r.account.id, r);
                    }
                    w.events.extend(plan.writes.events);
                    w.responses.push((user, job.key.clone(), plan.response.clone()));
                    Ok(plan.response)
                }
                Err(CommandError::Refused(rule)) => {
                    let (class, message) = (rule.class(), rule.to_string());
                    if class.is_kept() {
                        w.refusals.push((user, job.key.clone(), rule.reason().to_owned(), message.clone()));
                    } else {
                        // No outcome to keep: the key is given back, as a
                        // rolled-back transaction would have.
                        w.released.push((user, job.key.clone()));
                    }
                    if class.is_audited() {
                        let reason = match class {
                            Refusal::NotFound { .. } => "NOT_OWNER",
                            Refusal::PermissionDenied => "PERMISSION_DENIED",
                            _ => rule.reason(),
                        };
                        w.audits.push((user, job.rpc.to_owned(), account, reason.to_owned(), message));
                    }
                    Err(CommandError::Refused(rule))
                }
                Err(e) => {
                    w.released.push((user, job.key.clone()));
                    Err(e)
                }
            };
            outcomes.push(outcome);
        }
        touched.sort();
        touched.dedup();
        for id in touched {
            let row = state.get(&id).cloned().expect("touched rows are in the state");
            if created.contains(&id) { w.new_accounts.push(row) } else { w.changed_accounts.push(row) }
        }
        touched_holds.sort();
        touched_holds.dedup();
        for id in touched_holds {
            let row = holds.get(&id).cloned().expect("touched holds are in the state");
            if created_holds.contains(&id) { w.new_holds.push(row) } else { w.changed_holds.push(row) }
        }
        store::apply_batch(&mut tx, &self.subject_prefix, &w).await?;
        tx.commit().await?;
        Ok(outcomes)
    }
}

/// The answer of an earlier command of the batch under the same key.
fn replay(outcome: &Result<Vec<u8>, CommandError>) -> Result<Vec<u8>, CommandError> {
    match outcome {
        Ok(bytes) => Ok(bytes.clone()),
        Err(CommandError::Refused(rule)) if rule.class().is_kept() => {
            Err(CommandError::StoredRefusal { reason: rule.reason().to_owned(), message: rule.to_string() })
        }
        Err(CommandError::Refused(rule)) => Err(CommandError::Refused(rule.clone())),
        Err(CommandError::StoredRefusal { reason, message }) => {
            Err(CommandError::StoredRefusal { reason: reason.clone(), message: message.clone() })
        }
        Err(CommandError::IdempotencyKeyReused) => Err(CommandError::IdempotencyKeyReused),
        Err(_) => Err(aborted()),
    }
}

static BATCH_SIZE: std::sync::LazyLock<prometheus::Histogram> = std::sync::LazyLock::new(|| {
    prometheus::register_histogram!(
        prometheus::HistogramOpts::new("command_batch_size", "commands per transaction in batching mode")
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0])
    )
    .expect("registers once")
});
