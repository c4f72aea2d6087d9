//! Building `tonic::Status` with google.rpc details. Services map their typed
//! errors to these in one `From` impl each; internal faults are logged with a
//! reference id and never described to the caller.

use std::{collections::HashMap, fmt::Display};

use bank_domain::{DomainError, InputError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// ErrorInfo.domain for every reason this system emits.
pub const ERROR_DOMAIN: &str = "bankmesh";

/// INVALID_ARGUMENT with one BadRequest field violation per problem.
pub fn invalid_argument(violations: &[InputError]) -> Status {
    let mut details = ErrorDetails::new();
    for v in violations {
        details.add_bad_request_violation(v.field.clone(), v.description.clone());
    }
    let summary: Vec<String> = violations.iter().map(ToString::to_string).collect();
    Status::with_error_details(Code::InvalidArgument, format!("invalid request: {}", summary.join("; ")), details)
}

/// A status with an ErrorInfo reason such as `INSUFFICIENT_FUNDS`.
pub fn with_reason(code: Code, reason: &str, message: impl Into<String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::<String, String>::new()),
    )
}

/// Business-rule refusals are FAILED_PRECONDITION with the rule as reason.
pub fn domain(err: &DomainError) -> Status {
    with_reason(Code::FailedPrecondition, err.reason(), err.to_string())
}

pub fn not_found(what: &str) -> Status {
    with_reason(Code::NotFound, "NOT_FOUND", format!("{what} not found"))
}

pub fn unauthenticated(message: impl Into<String>) -> Status {
    with_reason(Code::Unauthenticated, "UNAUTHENTICATED", message)
}

pub fn permission_denied(message: impl Into<String>) -> Status {
    with_reason(Code::PermissionDenied, "PERMISSION_DENIED", message)
}

/// A retryable infrastructure fault: logged in full, told as "try again".
pub fn unavailable(err: &dyn Display) -> Status {
    let reference = uuid::Uuid::now_v7();
    tracing::warn!(%reference, error = %err, "dependency unavailable");
    let mut details = ErrorDetails::with_retry_info(Some(RETRY_AFTER));
    details.set_error_info("TEMPORARILY_UNAVAILABLE", ERROR_DOMAIN, HashMap::<String, String>::new());
    Status::with_error_details(
        Code::Unavailable,
        format!("temporarily unavailable, retry with the same idempotency key (ref {reference})"),
        details,
    )
}

/// The RetryInfo hint UNAVAILABLE carries: long enough for a pool to
/// reconnect or a standby to be promoted, short enough to keep a client close.
pub const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// An unexpected fault: logged in full with a reference the caller can quote.
pub fn internal(err: &dyn Display) -> Status {
    let reference = uuid::Uuid::now_v7();
    tracing::error!(%reference, error = %err, "internal error");
    Status::new(Code::Internal, format!("internal error (ref {reference})"))
}

/// Whether a sqlx error is a lost connection or pool exhaustion, i.e. worth
/// UNAVAILABLE (retry) rather than INTERNAL.
pub fn is_transient_db_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Protocol(_) => true,
        // 40001 serialization, 40P01 deadlock, 55P03 lock wait timed out,
        // 25P03 idle transaction ended, 57P01 admin shutdown, 08xxx connection,
        // 25006 read-only transaction (a connection that reached a standby,
        // or a primary demoted under it: the next try finds the new primary),
        // 55000 a database not accepting connections right now, 53xxx
        // insufficient resources (53300 too many connections).
        sqlx::Error::Database(e) => e.code().is_some_and(|c| {
            ["40001", "40P01", "55P03", "25P03", "25006", "55000"].contains(&c.as_ref())
                || c.starts_with("57P")
                || c.starts_with("08")
                || c.starts_with("53")
        }),
        _ => false,
    }
}

/// Maps an infrastructure (database) error: transient → UNAVAILABLE, else INTERNAL.
pub fn from_db(err: &sqlx::Error) -> Status {
    if is_transient_db_error(err) { unavailable(err) } else { internal(err) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak_their_text() {
        let s = internal(&"connection to 10.0.0.5 refused: password=hunter2");
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("hunter2") && !s.message().contains("10.0.0.5"));
    }

    #[test]
    fn unavailable_says_when_to_retry_and_why() {
        let s = unavailable(&"pool timed out");
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.get_details_retry_info().unwrap().retry_delay, Some(RETRY_AFTER));
        assert_eq!(s.get_details_error_info().unwrap().reason, "TEMPORARILY_UNAVAILABLE");
        assert!(!s.message().contains("pool"));
    }

    #[test]
    fn domain_errors_carry_their_reason() {
        let s = domain(&DomainError::InsufficientFunds);
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.get_details_error_info().unwrap().reason, "INSUFFICIENT_FUNDS");
    }

    #[test]
    fn bad_input_lists_every_field() {
        let s = invalid_argument(&[InputError::new("email", "is empty"), InputError::new("password", "too short")]);
        let br = s.get_details_bad_request().unwrap();
        assert_eq!(br.field_violations.len(), 2);
        assert_eq!(br.field_violations[0].field, "email");
    }
}
