//! Everything a command can answer besides success, mapped to gRPC in one place.

use bank_domain::{DomainError, InputError, Refusal, schedule::ScheduleError};
use bank_platform::status;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("invalid request")]
    Invalid(Vec<InputError>),
    /// A rule of the domain said no; its `class()` says how it is answered
    /// and what is kept.
    #[error("refused: {0}")]
    Refused(DomainError),
    /// A refusal recorded under this idempotency key, answered again.
    #[error("refused: {message}")]
    StoredRefusal { reason: String, message: String },
    #[error("idempotency key reused with a different request")]
    IdempotencyKeyReused,
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("internal: {0:#}")]
    Internal(#[from] anyhow::Error),
    /// Nothing was committed; retrying with the same key is safe.
    #[error("unavailable: {0}")]
    Unavailable(&'static str),
    /// No such scheduled transfer, or someone else's.
    #[error("scheduled transfer not found")]
    ScheduleNotFound,
    /// A scheduled transfer's rule said no.
    #[error("{0}")]
    Schedule(#[from] ScheduleError),
    /// Above the step-up threshold, a second factor given within the window is needed.
    #[error(
        "a transfer above {threshold} needs a second factor code given within the last {minutes} minutes: sign in again with one"
    )]
    StepUpRequired { threshold: String, minutes: i64 },
}

impl CommandError {
    /// The batch a command was in did not commit: nothing of it is durable.
    pub fn aborted() -> Self {
        CommandError::Unavailable("the batch this command was in did not commit")
    }
}

impl From<InputError> for CommandError {
    fn from(e: InputError) -> Self {
        CommandError::Invalid(vec![e])
    }
}

impl From<DomainError> for CommandError {
    fn from(e: DomainError) -> Self {
        CommandError::Refused(e)
    }
}

/// A posted transaction's shape error as the field it is about: the leg
/// (`legs[2].account_id` for a duplicate account), or `legs` for the whole.
pub fn leg_violation(rule: &DomainError) -> InputError {
    match rule {
        DomainError::Leg { index, cause } => {
            let field = match **cause {
                DomainError::DuplicateLeg { .. } => format!("legs[{index}].account_id"),
                _ => format!("legs[{index}]"),
            };
            InputError::new(field, cause.to_string())
        }
        other => InputError::new("legs", other.to_string()),
    }
}

/// A leg's refusal names the leg (`legs[i]`); others name what they are about.
fn refusal(rule: &DomainError) -> Status {
    match rule.class() {
        Refusal::BusinessRule => status::domain(rule),
        Refusal::NotFound { .. } => match rule {
            DomainError::Leg { .. } => status::with_reason(Code::NotFound, "NOT_FOUND", rule.to_string()),
            _ => status::not_found(rule.missing()),
        },
        Refusal::PermissionDenied => status::permission_denied(rule.to_string()),
        Refusal::InvalidArgument => status::invalid_argument(&[leg_violation(rule)]),
        Refusal::Unavailable => status::unavailable(rule),
    }
}

impl From<CommandError> for Status {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Invalid(violations) => status::invalid_argument(&violations),
            CommandError::Refused(rule) => refusal(&rule),
            CommandError::StoredRefusal { reason, message } => {
                status::with_reason(Code::FailedPrecondition, &reason, message)
            }
            CommandError::IdempotencyKeyReused => status::with_reason(
                Code::FailedPrecondition,
                "IDEMPOTENCY_KEY_REUSED",
                "this idempotency key was already used for a different request",
            ),
            CommandError::Db(err) => status::from_db(&err),
            CommandError::Internal(err) => status::internal(&format!("{err:#}")),
            CommandError::Unavailable(why) => status::unavailable(&why),
            CommandError::ScheduleNotFound => status::not_found("scheduled transfer"),
            CommandError::Schedule(rule) => {
                status::with_reason(Code::FailedPrecondition, rule.reason(), rule.to_string())
            }
            e @ CommandError::StepUpRequired { .. } => {
                status::with_reason(Code::FailedPrecondition, "STEP_UP_REQUIRED", e.to_string())
            }
        }
    }
}
