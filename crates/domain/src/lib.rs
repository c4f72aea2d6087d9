//! The bank's domain: money, accounts and the rules that decide what a command
//! may do. Pure functions and types, no I/O, so every rule is unit-tested
//! without servers.

pub mod account;
pub mod consistency;
pub mod error;
pub mod hold;
pub mod ledger;
pub mod money;
pub mod schedule;

pub use account::{Account, AccountKind, AccountStatus, BalanceChange, DebitLimits, transfer};
pub use error::{DomainError, Forbidden, InputError, Refusal};
pub use money::{Currency, Money, format_amount, parse_amount};
