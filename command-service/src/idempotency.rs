//! Idempotency for a whole batch: every key claimed in one statement, and
//! each command's first outcome kept under its key (or the key given back
//! when there is no outcome to keep).

use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    error::CommandError,
    store::{self, Audit, BatchWrites, KeyOf as Key, KeyOutcome, PriorOutcome, StoredRefusal, StoredResponse},
    validate::IdempotencyKey,
};

/// The keys of one batch, claimed.
pub struct Keys {
    claimed: HashSet<Key>,
    prior: HashMap<Key, (Vec<u8>, PriorOutcome)>,
    /// The first command of this batch under each key: its request's
    /// fingerprint and its place in the batch.
    first: HashMap<Key, (Vec<u8>, usize)>,
}

/// What to do with one command of the batch.
pub enum Verdict {
    /// Its key is ours now: decide it.
    Decide,
    /// Answered already (earlier, or earlier in this batch).
    Answer(Result<Vec<u8>, CommandError>),
}

impl Keys {
    /// Claims every `(caller, key, request fingerprint)` of a batch and reads
    /// the first outcome of those claimed before.
    pub async fn claim(
        conn: &mut PgConnection,
        claims: &[(Uuid, &IdempotencyKey, &[u8])],
    ) -> Result<Self, CommandError> {
        let claimed = store::claim_keys(conn, claims).await?;
        let mut seen = HashSet::new();
        let earlier: Vec<Key> = claims
            .iter()
            .map(|(c, k, _)| (*c, k.as_str().to_owned()))
            .filter(|ck| seen.insert(ck.clone()) && !claimed.contains(ck))
            .collect();
        let prior = if earlier.is_empty() { HashMap::new() } else { store::prior_outcomes(conn, &earlier).await? };
        Ok(Self { claimed, prior, first: HashMap::new() })
    }

    /// The verdict for the command at `index` of the batch, given the
    /// outcomes of those before it.
    pub fn verdict(
        &mut self,
        caller: Uuid,
        key: &IdempotencyKey,
        request_hash: &[u8],
        earlier: &[Result<Vec<u8>, CommandError>],
    ) -> Verdict {
        let ck = (caller, key.as_str().to_owned());
        if let Some((hash, i)) = self.first.get(&ck) {
            // The same key twice in one batch: one effect, the same answer.
            return Verdict::Answer(if hash != request_hash {
                Err(CommandError::IdempotencyKeyReused)
            } else {
                replay(&earlier[*i])
            });
        }
        self.first.insert(ck.clone(), (request_hash.to_vec(), earlier.len()));
        if let Some((hash, outcome)) = self.prior.get(&ck) {
            return Verdict::Answer(match outcome {
                _ if hash != request_hash => Err(CommandError::IdempotencyKeyReused),
                PriorOutcome::Response(bytes) => Ok(bytes.clone()),
                PriorOutcome::Refusal { reason, message } => {
                    Err(CommandError::StoredRefusal { reason: reason.clone(), message: message.clone() })
                }
            });
        }
        if !self.claimed.contains(&ck) {
            // Neither ours nor recorded: never guess; the client retries.
            return Verdict::Answer(Err(CommandError::aborted()));
        }
        Verdict::Decide
    }
}

/// Records what a decided command's key keeps: its response, its refusal
/// (kept and audited per the domain's class of the rule), or nothing (the
/// key is given back, as a rolled-back transaction would have).
pub fn settle(
    w: &mut BatchWrites,
    caller: Uuid,
    key: &IdempotencyKey,
    rpc: &str,
    subject: Option<Uuid>,
    outcome: &Result<Vec<u8>, CommandError>,
) {
    let key = key.as_str().to_owned();
    match outcome {
        Ok(response) => {
            w.outcomes.push(KeyOutcome::Response(StoredResponse { caller, key, response: response.clone() }))
        }
        Err(CommandError::Refused(rule)) => {
            let message = rule.to_string();
            if let Some(reason) = rule.audit_reason() {
                w.audits.push(Audit {
                    actor: caller,
                    command: rpc.to_owned(),
                    account: subject,
                    reason: reason.to_owned(),
                    detail: message.clone(),
                });
            }
            w.outcomes.push(if rule.class().is_kept() {
                KeyOutcome::Refusal(StoredRefusal { caller, key, reason: rule.reason().to_owned(), message })
            } else {
                KeyOutcome::Released { caller, key }
            });
        }
        Err(_) => w.outcomes.push(KeyOutcome::Released { caller, key }),
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
        Err(
            CommandError::Invalid(_)
            | CommandError::Db(_)
            | CommandError::Internal(_)
            | CommandError::Unavailable(_)
            | CommandError::ScheduleNotFound
            | CommandError::Schedule(_)
            | CommandError::StepUpRequired { .. },
        ) => Err(CommandError::aborted()),
    }
}
