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
    #[error("account not found")]
    AccountNotFound,
    /// Someone else's account: answered like `AccountNotFound`, but audited.
    #[error("account not found")]
    NotOwner,
    /// The caller's role may not do this (audited); which rule says so.
    #[error("{0}")]
    NotPermitted(Forbidden),
    /// One leg of a posted transaction, by its index in the request.
    #[error("legs[{index}]: {cause}")]
    Leg { index: usize, cause: Box<DomainError> },
    #[error("a transaction has 2 to {max} legs")]
    LegCount { max: usize },
    #[error("a posting must move a non-zero amount")]
    ZeroPosting,
    #[error("the account is already posted to by legs[{first}]")]
    DuplicateLeg { first: usize },
    #[error("the {currency} postings sum to {sum}, not zero")]
    Unbalanced { currency: String, sum: rust_decimal::Decimal },
    #[error("the bank has no settlement account in {0}")]
    SystemAccountMissing(String),
    /// The bank's own side refused (settlement frozen, at its bound): the
    /// bank's state, not the caller's request, so nothing is kept under the
    /// key and a retry may succeed later.
    #[error("the bank's {currency} settlement account cannot take this now: {cause}")]
    SettlementRefused { currency: String, cause: Box<DomainError> },
    /// Staff do not move money on their own accounts (separation of duties).
    #[error("staff do not move money into or out of their own accounts")]
    OwnAccount,
    #[error("hold not found")]
    HoldNotFound,
    /// A hold the caller is no party to: answered like `HoldNotFound`, audited.
    #[error("hold not found")]
    NotHoldParty,
    /// The hold already ended; the state is the reason.
    #[error("the hold is already {}", .0.as_str().to_lowercase())]
    HoldEnded(crate::hold::HoldState),
    #[error("the capture of {requested} exceeds the {held} held")]
    CaptureExceedsHold { requested: rust_decimal::Decimal, held: rust_decimal::Decimal },
    /// Expiry asked for before the deadline (the expiry worker's clock ran
    /// ahead): nothing is kept, it asks again later.
    #[error("the hold is not due to expire yet")]
    HoldNotDue,
    #[error("the {limit} limit of {max} would be exceeded")]
    LimitExceeded { limit: &'static str, max: rust_decimal::Decimal },
    #[error("transaction not found")]
    TransactionNotFound,
    #[error("the transaction was already reversed by {by}")]
    AlreadyReversed { by: uuid::Uuid },
    #[error("the transaction is itself a reversal of {original}; post a new transaction instead")]
    ReversalNotReversible { original: uuid::Uuid },
    #[error("the reversal would overdraw account {account}, which holds only {available} available")]
    ReversalWouldOverdraw { account: uuid::Uuid, available: rust_decimal::Decimal },
}

impl DomainError {
    /// What a NOT_FOUND refusal is about (the resource named to the caller).
    pub fn missing(&self) -> &'static str {
        match self {
            DomainError::HoldNotFound | DomainError::NotHoldParty => "hold",
            DomainError::TransactionNotFound => "transaction",
            DomainError::Leg { cause, .. } => cause.missing(),
            DomainError::AccountNotFound
            | DomainError::NotOwner
            | DomainError::InsufficientFunds
            | DomainError::AccountFrozen
            | DomainError::AccountClosed
            | DomainError::CurrencyMismatch { .. }
            | DomainError::SameAccount
            | DomainError::BalanceNotZero
            | DomainError::CustomerNotActive
            | DomainError::AccountNotFrozen
            | DomainError::BalanceLimitExceeded
            | DomainError::NotPermitted(_)
            | DomainError::LegCount { .. }
            | DomainError::ZeroPosting
            | DomainError::DuplicateLeg { .. }
            | DomainError::Unbalanced { .. }
            | DomainError::SystemAccountMissing(_)
            | DomainError::SettlementRefused { .. }
            | DomainError::OwnAccount
            | DomainError::HoldEnded(_)
            | DomainError::CaptureExceedsHold { .. }
            | DomainError::HoldNotDue
            | DomainError::LimitExceeded { .. }
            | DomainError::AlreadyReversed { .. }
            | DomainError::ReversalNotReversible { .. }
            | DomainError::ReversalWouldOverdraw { .. } => "account",
        }
    }

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
            DomainError::AccountNotFound | DomainError::NotOwner => "ACCOUNT_NOT_FOUND",
            DomainError::NotPermitted(_) => "NOT_PERMITTED",
            DomainError::Leg { cause, .. } => cause.reason(),
            DomainError::LegCount { .. } => "LEG_COUNT",
            DomainError::ZeroPosting => "ZERO_POSTING",
            DomainError::DuplicateLeg { .. } => "DUPLICATE_LEG",
            DomainError::Unbalanced { .. } => "UNBALANCED",
            DomainError::SystemAccountMissing(_) => "SYSTEM_ACCOUNT_MISSING",
            DomainError::SettlementRefused { .. } => "SETTLEMENT_UNAVAILABLE",
            DomainError::OwnAccount => "OWN_ACCOUNT",
            DomainError::HoldNotFound | DomainError::NotHoldParty => "HOLD_NOT_FOUND",
            DomainError::HoldEnded(state) => state.ended_reason(),
            DomainError::CaptureExceedsHold { .. } => "CAPTURE_EXCEEDS_HOLD",
            DomainError::HoldNotDue => "HOLD_NOT_DUE",
            DomainError::LimitExceeded { .. } => "LIMIT_EXCEEDED",
            DomainError::TransactionNotFound => "TRANSACTION_NOT_FOUND",
            DomainError::AlreadyReversed { .. } => "ALREADY_REVERSED",
            DomainError::ReversalNotReversible { .. } => "REVERSAL_NOT_REVERSIBLE",
            DomainError::ReversalWouldOverdraw { .. } => "REVERSAL_WOULD_OVERDRAW",
        }
    }

    /// What kind of answer this is, which decides what the command side
    /// keeps: a business refusal is an outcome (kept under the idempotency
    /// key, audited); the rest leave the key free.
    pub fn class(&self) -> Refusal {
        match self {
            DomainError::AccountNotFound | DomainError::HoldNotFound | DomainError::TransactionNotFound => {
                Refusal::NotFound { audited: false }
            }
            DomainError::NotOwner | DomainError::NotHoldParty => Refusal::NotFound { audited: true },
            DomainError::HoldNotDue => Refusal::Unavailable,
            DomainError::NotPermitted(_) => Refusal::PermissionDenied,
            DomainError::LegCount { .. } | DomainError::ZeroPosting | DomainError::DuplicateLeg { .. } => {
                Refusal::InvalidArgument
            }
            DomainError::SystemAccountMissing(_) | DomainError::SettlementRefused { .. } => Refusal::Unavailable,
            DomainError::OwnAccount => Refusal::PermissionDenied,
            DomainError::Leg { cause, .. } => cause.class(),
            DomainError::InsufficientFunds
            | DomainError::AccountFrozen
            | DomainError::AccountClosed
            | DomainError::CurrencyMismatch { .. }
            | DomainError::SameAccount
            | DomainError::BalanceNotZero
            | DomainError::CustomerNotActive
            | DomainError::AccountNotFrozen
            | DomainError::BalanceLimitExceeded
            | DomainError::Unbalanced { .. }
            | DomainError::HoldEnded(_)
            | DomainError::CaptureExceedsHold { .. }
            | DomainError::LimitExceeded { .. }
            | DomainError::AlreadyReversed { .. }
            | DomainError::ReversalNotReversible { .. }
            | DomainError::ReversalWouldOverdraw { .. } => Refusal::BusinessRule,
        }
    }

    /// The reason an audited refusal is filed under, or `None` when the
    /// refusal is not audited. Someone else's account or hold is filed as
    /// NOT_OWNER though answered NOT_FOUND; every role refusal as
    /// PERMISSION_DENIED (the detail says which rule).
    pub fn audit_reason(&self) -> Option<&'static str> {
        match self.class() {
            Refusal::NotFound { audited: true } => Some("NOT_OWNER"),
            Refusal::PermissionDenied => Some("PERMISSION_DENIED"),
            Refusal::BusinessRule => Some(self.reason()),
            Refusal::NotFound { audited: false } | Refusal::InvalidArgument | Refusal::Unavailable => None,
        }
    }
}

/// The rules about who may do what: each is its own refusal, so a test (and
/// an auditor) can tell which one fired. Answered PERMISSION_DENIED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Forbidden {
    #[error("only tellers and service principals move money into or out of the bank")]
    BoundaryNotStaff,
    #[error("only service principals and staff post transactions")]
    PostNotStaff,
    #[error("only staff reverse transactions")]
    ReverseNotStaff,
    #[error("only staff set limits")]
    LimitsNotStaff,
    #[error("a suspended or unapproved user moves no money")]
    Suspended,
    #[error("a service principal is not a customer")]
    ServiceNotCustomer,
    #[error("only the bank opens its own accounts")]
    BankOpensItsOwn,
    #[error("deposits and withdrawals are for customer accounts")]
    BoundaryOnBankAccount,
    #[error("the bank's own accounts take postings from staff only")]
    BankAccountTakesStaffPostings,
    #[error("only an admin may freeze or unfreeze accounts")]
    FreezeNotAdmin,
    #[error("holds expire by themselves")]
    ExpiryIsTheBanks,
    #[error("the bank's own accounts have no customer limits")]
    BankAccountHasNoLimits,
    #[error("only the scheduler records a refused scheduled transfer")]
    ScheduleRecordIsTheBanks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// FAILED_PRECONDITION: kept under the idempotency key and audited.
    BusinessRule,
    /// NOT_FOUND (someone else's account is audited, answered the same).
    NotFound { audited: bool },
    /// PERMISSION_DENIED, audited.
    PermissionDenied,
    /// INVALID_ARGUMENT: the request's shape (normally caught before the ledger).
    InvalidArgument,
    /// The bank's own setup is incomplete; retry later.
    Unavailable,
}

impl Refusal {
    pub fn is_kept(self) -> bool {
        self == Refusal::BusinessRule
    }

    pub fn is_audited(self) -> bool {
        matches!(self, Refusal::BusinessRule | Refusal::PermissionDenied | Refusal::NotFound { audited: true })
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
