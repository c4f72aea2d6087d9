//! Accounts and the decisions a command makes about them. Each function takes
//! the current state and returns what changes, or the rule that refuses it.

use rust_decimal::Decimal;
use uuid::Uuid;

use crate::{Currency, DomainError, Money, money::at_scale};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccountKind {
    Checking,
    Savings,
    /// The bank's settlement/clearing account of a currency: the other side
    /// of every deposit and withdrawal, so negative by what customers hold.
    Settlement,
    /// The bank's fee income in a currency.
    FeeIncome,
}

impl AccountKind {
    pub const SYSTEM: [AccountKind; 2] = [AccountKind::Settlement, AccountKind::FeeIncome];

    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Checking => "CHECKING",
            AccountKind::Savings => "SAVINGS",
            AccountKind::Settlement => "SETTLEMENT",
            AccountKind::FeeIncome => "FEE_INCOME",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "CHECKING" => Some(AccountKind::Checking),
            "SAVINGS" => Some(AccountKind::Savings),
            "SETTLEMENT" => Some(AccountKind::Settlement),
            "FEE_INCOME" => Some(AccountKind::FeeIncome),
            _ => None,
        }
    }

    /// Owned by the bank, not by a customer.
    pub fn is_system(self) -> bool {
        Self::SYSTEM.contains(&self)
    }

    /// Only settlement goes negative: it mirrors money the bank owes out.
    pub fn may_go_negative(self) -> bool {
        self == AccountKind::Settlement
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    Frozen,
    Closed,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "ACTIVE",
            AccountStatus::Frozen => "FROZEN",
            AccountStatus::Closed => "CLOSED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ACTIVE" => Some(AccountStatus::Active),
            "FROZEN" => Some(AccountStatus::Frozen),
            "CLOSED" => Some(AccountStatus::Closed),
            _ => None,
        }
    }
}

/// The write-model state of one account, as locked by a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub kind: AccountKind,
    pub currency: Currency,
    pub balance: Decimal,
    pub status: AccountStatus,
    pub version: i64,
    /// Reserved by open holds: the ledger balance stays, the available drops.
    pub held: Decimal,
    /// Staff-set debit limits.
    pub limits: DebitLimits,
    /// What the account was debited in the rolling day before the command,
    /// as loaded with its row (kept only where a daily limit is set).
    pub debited_last_day: Decimal,
}

/// Per-account debit limits set by staff; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DebitLimits {
    /// Largest single debit.
    pub max_debit: Option<Decimal>,
    /// Most debited in any rolling 24 hours.
    pub daily_debit: Option<Decimal>,
}

/// A balance before and after one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceChange {
    pub before: Decimal,
    pub after: Decimal,
}

/// Largest magnitude a system account may reach: what the schema's
/// numeric(20, 3) holds, with a margin. (Customer accounts have `max_balance`.)
pub const SYSTEM_BALANCE_MAX: Decimal = Decimal::from_parts(1_874_919_424, 2_328_306, 0, false, 0); // 10^16

impl Account {
    /// Applies a signed change: a credit (positive) within the account's
    /// limit, a debit (negative) within its balance unless it may go negative.
    pub fn post(&self, currency: Currency, delta: Decimal, max_balance: Decimal) -> Result<BalanceChange, DomainError> {
        let money = Money::new(currency, delta.abs());
        if delta.is_sign_negative() && !self.kind.may_go_negative() {
            return self.withdraw(&money);
        }
        self.ensure_open_for_money()?;
        self.ensure_currency(&money)?;
        let after = self.balance + delta;
        let limit = if self.kind.is_system() { SYSTEM_BALANCE_MAX } else { max_balance };
        if after > limit || after < -limit {
            return Err(DomainError::BalanceLimitExceeded);
        }
        Ok(BalanceChange { before: self.balance, after })
    }

    /// What may be spent: the ledger balance less open holds.
    pub fn available(&self) -> Decimal {
        self.balance - self.held
    }

    /// A debit of `amount` within the account's staff-set limits (checked
    /// for debits a customer or service asks for; reversals are staff
    /// corrections and are not limited).
    pub fn check_debit_limits(&self, amount: Decimal) -> Result<(), DomainError> {
        if let Some(max) = self.limits.max_debit
            && amount > max
        {
            return Err(DomainError::LimitExceeded { limit: "single debit", max: at_scale(max, self.currency) });
        }
        if let Some(max) = self.limits.daily_debit
            && self.debited_last_day + amount > max
        {
            return Err(DomainError::LimitExceeded {
                limit: "debits per rolling day",
                max: at_scale(max, self.currency),
            });
        }
        Ok(())
    }

    /// Reserves `money` for a hold: the account's own side of placing one.
    pub fn reserve(&self, money: &Money) -> Result<(), DomainError> {
        self.ensure_open_for_money()?;
        self.ensure_currency(money)?;
        if money.amount > self.available() {
            return Err(DomainError::InsufficientFunds);
        }
        self.check_debit_limits(money.amount)
    }

    /// May take `money` in (a hold's destination, before the capture).
    pub fn ensure_can_receive(&self, money: &Money) -> Result<(), DomainError> {
        self.ensure_open_for_money()?;
        self.ensure_currency(money)
    }

    fn ensure_open_for_money(&self) -> Result<(), DomainError> {
        match self.status {
            AccountStatus::Active => Ok(()),
            AccountStatus::Frozen => Err(DomainError::AccountFrozen),
            AccountStatus::Closed => Err(DomainError::AccountClosed),
        }
    }

    fn ensure_currency(&self, money: &Money) -> Result<(), DomainError> {
        if self.currency == money.currency {
            Ok(())
        } else {
            Err(DomainError::CurrencyMismatch {
                account: self.currency.code().to_owned(),
                requested: money.currency.code().to_owned(),
            })
        }
    }

    /// Money in. `max_balance` keeps balances inside what the schema stores.
    pub fn deposit(&self, money: &Money, max_balance: Decimal) -> Result<BalanceChange, DomainError> {
        self.ensure_open_for_money()?;
        self.ensure_currency(money)?;
        let after = self.balance + money.amount;
        if after > max_balance {
            return Err(DomainError::BalanceLimitExceeded);
        }
        Ok(BalanceChange { before: self.balance, after })
    }

    /// Money out; never below zero, never into what holds reserve.
    pub fn withdraw(&self, money: &Money) -> Result<BalanceChange, DomainError> {
        self.ensure_open_for_money()?;
        self.ensure_currency(money)?;
        if money.amount > self.available() {
            return Err(DomainError::InsufficientFunds);
        }
        Ok(BalanceChange { before: self.balance, after: self.balance - money.amount })
    }

    pub fn freeze(&self) -> Result<(), DomainError> {
        match self.status {
            AccountStatus::Active => Ok(()),
            AccountStatus::Frozen => Err(DomainError::AccountFrozen),
            AccountStatus::Closed => Err(DomainError::AccountClosed),
        }
    }

    pub fn unfreeze(&self) -> Result<(), DomainError> {
        match self.status {
            AccountStatus::Frozen => Ok(()),
            AccountStatus::Active => Err(DomainError::AccountNotFrozen),
            AccountStatus::Closed => Err(DomainError::AccountClosed),
        }
    }

    /// Closing is final and only at a zero balance, so no money is stranded.
    pub fn close(&self) -> Result<(), DomainError> {
        self.ensure_open_for_money()?;
        if !self.balance.is_zero() {
            return Err(DomainError::BalanceNotZero);
        }
        Ok(())
    }
}

/// Decides a transfer: both sides checked before either changes.
pub fn transfer(
    from: &Account,
    to: &Account,
    money: &Money,
    max_balance: Decimal,
) -> Result<(BalanceChange, BalanceChange), DomainError> {
    if from.id == to.id {
        return Err(DomainError::SameAccount);
    }
    // The source is checked first: its state is what the caller controls.
    let debit = from.withdraw(money)?;
    to.ensure_open_for_money()?;
    to.ensure_currency(money)?;
    let credit = to.deposit(money, max_balance)?;
    Ok((debit, credit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::from_code("USD").unwrap()
    }

    fn account(balance: i64, status: AccountStatus) -> Account {
        Account {
            id: Uuid::now_v7(),
            owner_id: Uuid::now_v7(),
            kind: AccountKind::Checking,
            currency: usd(),
            balance: Decimal::from(balance),
            status,
            version: 1,
            held: Decimal::ZERO,
            limits: DebitLimits::default(),
            debited_last_day: Decimal::ZERO,
        }
    }

    fn usd_amount(n: i64) -> Money {
        Money::new(usd(), Decimal::from(n))
    }

    const MAX: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

    #[test]
    fn deposit_adds_to_the_balance() {
        let change = account(5, AccountStatus::Active).deposit(&usd_amount(10), MAX).unwrap();
        assert_eq!((change.before, change.after), (Decimal::from(5), Decimal::from(15)));
    }

    #[test]
    fn withdrawal_beyond_the_balance_is_insufficient_funds() {
        let acc = account(10, AccountStatus::Active);
        assert_eq!(acc.withdraw(&usd_amount(11)), Err(DomainError::InsufficientFunds));
        assert_eq!(acc.withdraw(&usd_amount(10)).unwrap().after, Decimal::ZERO);
    }

    #[test]
    fn frozen_and_closed_accounts_move_no_money() {
        let frozen = account(10, AccountStatus::Frozen);
        assert_eq!(frozen.deposit(&usd_amount(1), MAX), Err(DomainError::AccountFrozen));
        assert_eq!(frozen.withdraw(&usd_amount(1)), Err(DomainError::AccountFrozen));
        let closed = account(0, AccountStatus::Closed);
        assert_eq!(closed.deposit(&usd_amount(1), MAX), Err(DomainError::AccountClosed));
    }

    #[test]
    fn another_currency_is_a_mismatch() {
        let eur = Money::new(Currency::from_code("EUR").unwrap(), Decimal::ONE);
        let err = account(10, AccountStatus::Active).deposit(&eur, MAX).unwrap_err();
        assert_eq!(err.reason(), "CURRENCY_MISMATCH");
    }

    #[test]
    fn transfer_to_the_same_account_is_refused() {
        let a = account(10, AccountStatus::Active);
        assert_eq!(transfer(&a, &a, &usd_amount(1), MAX), Err(DomainError::SameAccount));
    }

    #[test]
    fn transfer_checks_the_destination_too() {
        let from = account(10, AccountStatus::Active);
        let to = account(0, AccountStatus::Frozen);
        assert_eq!(transfer(&from, &to, &usd_amount(1), MAX), Err(DomainError::AccountFrozen));
    }

    #[test]
    fn transfer_moves_exactly_the_amount() {
        let from = account(10, AccountStatus::Active);
        let to = account(3, AccountStatus::Active);
        let (d, c) = transfer(&from, &to, &usd_amount(4), MAX).unwrap();
        assert_eq!((d.after, c.after), (Decimal::from(6), Decimal::from(7)));
    }

    #[test]
    fn deposit_over_the_balance_limit_is_refused() {
        let acc = account(999_999_999, AccountStatus::Active);
        assert_eq!(acc.deposit(&usd_amount(2), MAX), Err(DomainError::BalanceLimitExceeded));
    }

    #[test]
    fn held_money_cannot_be_withdrawn_but_stays_in_the_balance() {
        let mut acc = account(10, AccountStatus::Active);
        acc.held = Decimal::from(7);
        assert_eq!(acc.available(), Decimal::from(3));
        assert_eq!(acc.withdraw(&usd_amount(4)), Err(DomainError::InsufficientFunds));
        assert_eq!(acc.reserve(&usd_amount(4)), Err(DomainError::InsufficientFunds));
        assert_eq!(acc.withdraw(&usd_amount(3)).unwrap().after, Decimal::from(7));
    }

    #[test]
    fn debit_limits_cap_one_debit_and_the_rolling_day() {
        let mut acc = account(100, AccountStatus::Active);
        acc.limits = DebitLimits { max_debit: Some(Decimal::from(30)), daily_debit: Some(Decimal::from(50)) };
        assert!(acc.check_debit_limits(Decimal::from(30)).is_ok());
        assert_eq!(acc.check_debit_limits(Decimal::from(31)).unwrap_err().reason(), "LIMIT_EXCEEDED");
        acc.debited_last_day = Decimal::from(25);
        assert!(acc.check_debit_limits(Decimal::from(25)).is_ok());
        assert_eq!(acc.check_debit_limits(Decimal::from(26)).unwrap_err().reason(), "LIMIT_EXCEEDED");
    }

    #[test]
    fn a_limit_is_told_at_the_currencys_scale_whatever_storage_kept() {
        let mut acc = account(100, AccountStatus::Active);
        // NUMERIC columns hand back three decimals for a USD limit.
        acc.limits =
            DebitLimits { max_debit: Some("30.000".parse().unwrap()), daily_debit: Some("50.000".parse().unwrap()) };
        let single = acc.check_debit_limits(Decimal::from(31)).unwrap_err().to_string();
        assert_eq!(single, "the single debit limit of 30.00 would be exceeded");
        acc.debited_last_day = Decimal::from(25);
        let daily = acc.check_debit_limits(Decimal::from(26)).unwrap_err().to_string();
        assert_eq!(daily, "the debits per rolling day limit of 50.00 would be exceeded");
    }

    #[test]
    fn close_needs_a_zero_balance() {
        assert_eq!(account(1, AccountStatus::Active).close(), Err(DomainError::BalanceNotZero));
        assert!(account(0, AccountStatus::Active).close().is_ok());
    }

    #[test]
    fn freeze_and_unfreeze_follow_the_status() {
        assert!(account(0, AccountStatus::Active).freeze().is_ok());
        assert_eq!(account(0, AccountStatus::Frozen).freeze(), Err(DomainError::AccountFrozen));
        assert!(account(0, AccountStatus::Frozen).unfreeze().is_ok());
        assert_eq!(account(0, AccountStatus::Active).unfreeze(), Err(DomainError::AccountNotFrozen));
    }
}
