use thiserror::Error;

/// A refusal by a business rule. Each variant is one rule; the gRPC layer maps
/// them to FAILED_PRECONDITION with the `reason()` as ErrorInfo reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("the account is frozen")]
    AccountFrozen,
    #[error("the account is closed")]
    AccountClosed,
    #[error("the account is in {account} but the amount is in {requested}")]
    CurrencyMismatch { account: String, requested: String },
    #[error("source and destination are the same account")]
    SameAccount,
    #[error("the balance must be zero to close the account")]
    BalanceNotZero,
    #[error("the customer is not KYC-active")]
    CustomerNotActive,
    #[error("the account is not frozen")]
    AccountNotFrozen,
    #[error("the resulting balance would exceed the maximum")]
    BalanceLimitExceeded,
}

impl DomainError {
    /// Stable machine-readable reason (google.rpc.ErrorInfo.reason).
    pub fn reason(&self) -> &'static str {
        match self {
            DomainError::InsufficientFunds => "INSUFFICIENT_FUNDS",
            DomainError::AccountFrozen => "ACCOUNT_FROZEN",
            DomainError::AccountClosed => "ACCOUNT_CLOSED",
            DomainError::CurrencyMismatch { .. } => "CURRENCY_MISMATCH",
            DomainError::SameAccount => "SAME_ACCOUNT",
            DomainError::BalanceNotZero => "BALANCE_NOT_ZERO",
            DomainError::CustomerNotActive => "CUSTOMER_NOT_ACTIVE",
            DomainError::AccountNotFrozen => "ACCOUNT_NOT_FROZEN",
            DomainError::BalanceLimitExceeded => "BALANCE_LIMIT_EXCEEDED",
        }
    }
}

/// Bad input: which field, and what is wrong with it (a BadRequest violation).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {description}")]
pub struct InputError {
    pub field: String,
    pub description: String,
}

impl InputError {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}
