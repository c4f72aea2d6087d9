//! Everything the auth API answers besides success, mapped to gRPC once.

use bank_domain::InputError;
use bank_platform::status;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid request")]
    Invalid(Vec<InputError>),
    #[error("email already registered")]
    EmailTaken,
    /// Unknown email and wrong password look the same on purpose.
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("invalid client id or secret")]
    InvalidClientCredentials,
    #[error("too many login attempts")]
    Throttled,
    #[error("too many registrations from this address")]
    RegistrationThrottled,
    #[error("refresh token is invalid, expired or revoked")]
    InvalidRefreshToken,
    #[error("refresh token was already used; the session has been revoked")]
    RefreshTokenReused,
    #[error("user is suspended")]
    Suspended,
    #[error("user not found")]
    UserNotFound,
    #[error("a second factor code is required: this user has one enabled")]
    SecondFactorRequired,
    #[error("the second factor code is wrong, was used already, or is out of its time window")]
    SecondFactorInvalid,
    #[error("too many wrong second factor codes")]
    SecondFactorThrottled,
    #[error("a second factor is enabled already; disable it first, with a code")]
    SecondFactorEnabled,
    #[error("no second factor is enrolled")]
    SecondFactorNotEnrolled,
    #[error("a service principal has no second factor")]
    ServiceHasNoSecondFactor,
    #[error("admin role required")]
    NotAdmin,
    /// Recorded, but not every enforcing service confirmed it in time.
    #[error("the change is recorded but not yet confirmed by every service; call again to confirm it")]
    StandingNotConfirmed,
    #[error("cache: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("internal: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<InputError> for AuthError {
    fn from(e: InputError) -> Self {
        AuthError::Invalid(vec![e])
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        let message = e.to_string();
        match e {
            AuthError::Invalid(v) => status::invalid_argument(&v),
            AuthError::EmailTaken => status::with_reason(Code::AlreadyExists, "EMAIL_TAKEN", message),
            AuthError::InvalidCredentials | AuthError::InvalidClientCredentials => {
                status::with_reason(Code::Unauthenticated, "INVALID_CREDENTIALS", message)
            }
            AuthError::Throttled => status::with_reason(
                Code::ResourceExhausted,
                "LOGIN_THROTTLED",
                "too many login attempts; try again later",
            ),
            AuthError::RegistrationThrottled => status::with_reason(
                Code::ResourceExhausted,
                "REGISTER_THROTTLED",
                "too many registrations from this address; try again later",
            ),
            AuthError::InvalidRefreshToken => {
                status::with_reason(Code::Unauthenticated, "INVALID_REFRESH_TOKEN", message)
            }
            AuthError::RefreshTokenReused => {
                status::with_reason(Code::Unauthenticated, "REFRESH_TOKEN_REUSED", message)
            }
            AuthError::Suspended => status::with_reason(Code::FailedPrecondition, "USER_SUSPENDED", message),
            AuthError::UserNotFound => status::not_found("user"),
            AuthError::SecondFactorRequired => {
                status::with_reason(Code::Unauthenticated, "SECOND_FACTOR_REQUIRED", message)
            }
            AuthError::SecondFactorInvalid => {
                status::with_reason(Code::Unauthenticated, "SECOND_FACTOR_INVALID", message)
            }
            AuthError::SecondFactorThrottled => status::with_reason(
                Code::ResourceExhausted,
                "SECOND_FACTOR_THROTTLED",
                "too many wrong second factor codes; try again later",
            ),
            AuthError::SecondFactorEnabled => {
                status::with_reason(Code::FailedPrecondition, "SECOND_FACTOR_ENABLED", message)
            }
            AuthError::SecondFactorNotEnrolled => {
                status::with_reason(Code::FailedPrecondition, "SECOND_FACTOR_NOT_ENROLLED", message)
            }
            AuthError::ServiceHasNoSecondFactor => status::permission_denied(message),
            AuthError::NotAdmin => status::permission_denied(message),
            AuthError::StandingNotConfirmed => status::with_reason(Code::Unavailable, "CHANGE_NOT_CONFIRMED", message),
            AuthError::Redis(err) => status::unavailable(&err),
            AuthError::Db(err) => status::from_db(&err),
            AuthError::Internal(err) => status::internal(&format!("{err:#}")),
        }
    }
}
