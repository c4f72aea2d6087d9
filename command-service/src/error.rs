//! Everything a command can answer besides success, mapped to gRPC in one place.

use bank_domain::{DomainError, InputError};
use bank_platform::status;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("invalid request")]
    Invalid(Vec<InputError>),
    /// Unknown, or someone else's: the caller cannot tell which.
    #[error("account not found")]
    AccountNotFound,
    /// Someone else's account: answered exactly like `AccountNotFound`, but audited.
    #[error("account not found")]
    NotOwner,
    #[error("{0}")]
    PermissionDenied(&'static str),
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

impl From<CommandError> for Status {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Invalid(violations) => status::invalid_argument(&violations),
            CommandError::AccountNotFound | CommandError::NotOwner => status::not_found("account"),
            CommandError::PermissionDenied(why) => status::permission_denied(why),
            CommandError::Refused(rule) => status::domain(&rule),
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
        }
    }
}
