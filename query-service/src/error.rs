//! Everything a read answers besides success, mapped to gRPC once.

use bank_domain::InputError;
use bank_platform::status;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("invalid request")]
    Invalid(Vec<InputError>),
    /// Unknown, or not the caller's: indistinguishable on purpose.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    PermissionDenied(&'static str),
    #[error("the read model has not caught up with the requested consistency token yet")]
    ConsistencyTimeout,
    /// The caller's standing changed after its token was issued (suspended,
    /// or a role revoked): a new token decides what it may read.
    #[error("{0}")]
    StandingRevoked(&'static str),
    /// A per-caller cap on parked reads or open streams.
    #[error("{0}")]
    TooMany(&'static str),
    /// The account's event-chain links for the period are not in the read
    /// model (projected before they were kept): a statement cannot be headed.
    #[error("the chain heads of this account's statement are not projected yet")]
    ChainNotProjected,
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("internal: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<InputError> for QueryError {
    fn from(e: InputError) -> Self {
        QueryError::Invalid(vec![e])
    }
}

impl From<QueryError> for Status {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Invalid(v) => status::invalid_argument(&v),
            QueryError::NotFound(what) => status::not_found(what),
            QueryError::PermissionDenied(why) => status::permission_denied(why),
            QueryError::ConsistencyTimeout => status::with_reason(
                Code::Unavailable,
                "CONSISTENCY_TIMEOUT",
                "the read model has not reached the requested consistency token within the deadline; retry",
            ),
            QueryError::StandingRevoked(why) => status::with_reason(
                Code::PermissionDenied,
                "STANDING_REVOKED",
                format!("{why}; sign in again for a token that reflects it"),
            ),
            QueryError::TooMany(why) => status::with_reason(Code::ResourceExhausted, "TOO_MANY_OPEN_CALLS", why),
            QueryError::ChainNotProjected => status::with_reason(
                Code::FailedPrecondition,
                "STATEMENT_CHAIN_NOT_PROJECTED",
                "this account's event-chain heads for the period are not in the read model yet \
                 (it was projected before they were kept; a read-model rebuild adds them)",
            ),
            QueryError::Db(err) => status::from_db(&err),
            QueryError::Internal(err) => status::internal(&format!("{err:#}")),
        }
    }
}
