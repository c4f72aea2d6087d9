//! Deposits and withdrawals: money crossing the bank's boundary, always
//! against the settlement account of its currency, at staff's or a
//! service's hands.

use uuid::Uuid;

use super::{Decision, Event, PostingKind, system_account_id, two_sided};
use crate::{AccountKind, DomainError, Forbidden, Money};

pub(super) fn deposit(
    d: &Decision,
    account: &Uuid,
    money: &Money,
    description: &str,
) -> Result<Vec<Event>, DomainError> {
    cross(d, account, money, description, true)
}

pub(super) fn withdraw(
    d: &Decision,
    account: &Uuid,
    money: &Money,
    description: &str,
) -> Result<Vec<Event>, DomainError> {
    cross(d, account, money, description, false)
}

fn cross(
    d: &Decision,
    account: &Uuid,
    money: &Money,
    description: &str,
    deposit: bool,
) -> Result<Vec<Event>, DomainError> {
    // Checked before the account is looked up: a customer learns nothing.
    d.actor.ensure_may_cross_boundary(Forbidden::BoundaryNotStaff)?;
    let customer = d.account(account)?;
    if customer.kind.is_system() {
        return Err(DomainError::NotPermitted(Forbidden::BoundaryOnBankAccount));
    }
    if customer.owner_id == d.actor.id {
        return Err(DomainError::OwnAccount);
    }
    let max_balance = d.limits.max_balance;
    let settlement_id = system_account_id(AccountKind::Settlement, money.currency);
    let delta = if deposit { money.amount } else { -money.amount };
    let change = if deposit { customer.deposit(money, max_balance)? } else { customer.withdraw(money)? };
    let settlement = d
        .world
        .accounts
        .get(&settlement_id)
        .ok_or_else(|| DomainError::SystemAccountMissing(money.currency.code().to_owned()))?;
    let bank_side = settlement.post(money.currency, -delta, max_balance).map_err(|cause| {
        DomainError::SettlementRefused { currency: money.currency.code().to_owned(), cause: Box::new(cause) }
    })?;
    if !deposit {
        customer.check_debit_limits(money.amount)?;
    }
    let kind = if deposit { PostingKind::Deposit } else { PostingKind::Withdrawal };
    Ok(two_sided(
        (customer, change.before, change.after, kind, delta),
        (settlement, bank_side.before, bank_side.after, PostingKind::Leg),
        money.currency,
        description,
    ))
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;
    use uuid::Uuid;

    use crate::ledger::{Actor, Command, Event, PostingKind, testing::*};
    use crate::{DomainError, Forbidden, Money, Refusal};

    fn deposit(account: Uuid, n: i64) -> Command {
        Command::Deposit { account, money: dollars(n), description: String::new() }
    }

    fn withdraw(account: Uuid, n: i64) -> Command {
        Command::Withdraw { account, money: dollars(n), description: String::new() }
    }

    #[test]
    fn a_teller_deposit_credits_the_customer_and_debits_settlement() {
        let mut g = given();
        let acc = g.account(Uuid::now_v7(), 0);
        let events = g
            .when(&teller(), Command::Deposit { account: acc, money: dollars(25), description: "cash".into() })
            .unwrap();
        assert_eq!(events.len(), 2);
        match &events[0] {
            Event::Posted { posting, kind, counterparties, .. } => {
                assert_eq!((posting.account, posting.amount, kind), (acc, Decimal::from(25), &PostingKind::Deposit));
                assert_eq!(counterparties, &vec![leg(settlement(usd()), -25)]);
            }
            other => panic!("{other:?}"),
        }
        g.then_apply(events);
        assert_eq!((g.balance(acc), g.balance(settlement(usd()))), (Decimal::from(25), Decimal::from(-25)));
    }

    #[test]
    fn a_service_principal_withdraws_into_settlement() {
        let mut g = given();
        let acc = g.account(Uuid::now_v7(), 40);
        g.then_apply(g.when(&service(), withdraw(acc, 15)).unwrap());
        assert_eq!((g.balance(acc), g.balance(settlement(usd()))), (Decimal::from(25), Decimal::from(-25)));
    }

    #[test]
    fn customers_may_not_deposit_or_withdraw_even_into_their_own_account() {
        let mut g = given();
        let me = customer();
        let acc = g.account(me.id, 10);
        let refused = Err(DomainError::NotPermitted(Forbidden::BoundaryNotStaff));
        assert_eq!(g.when(&me, deposit(acc, 1)), refused);
        assert_eq!(g.when(&me, withdraw(acc, 1)), refused);
        // Not even the existence of an account leaks to them.
        assert_eq!(g.when(&me, deposit(Uuid::now_v7(), 1)), refused);
    }

    #[test]
    fn a_suspended_teller_moves_no_money() {
        let mut g = given();
        let acc = g.account(Uuid::now_v7(), 10);
        let suspended = Actor { active: false, ..teller() };
        assert_eq!(g.when(&suspended, deposit(acc, 1)), Err(DomainError::NotPermitted(Forbidden::Suspended)));
    }

    #[test]
    fn a_withdrawal_never_takes_a_customer_below_zero() {
        let mut g = given();
        let acc = g.account(Uuid::now_v7(), 10);
        assert_eq!(g.when(&teller(), withdraw(acc, 11)), Err(DomainError::InsufficientFunds));
    }

    #[test]
    fn a_deposit_in_another_currency_is_a_mismatch() {
        let mut g = given();
        let acc = g.account(Uuid::now_v7(), 0);
        let cmd = Command::Deposit { account: acc, money: Money::new(eur(), Decimal::ONE), description: String::new() };
        assert_eq!(
            g.when(&teller(), cmd),
            Err(DomainError::CurrencyMismatch { account: "USD".into(), requested: "EUR".into() })
        );
    }

    #[test]
    fn deposits_into_system_accounts_are_not_permitted() {
        let g = given();
        assert_eq!(
            g.when(&teller(), deposit(fees(usd()), 1)),
            Err(DomainError::NotPermitted(Forbidden::BoundaryOnBankAccount))
        );
    }

    #[test]
    fn without_a_settlement_account_no_money_crosses_the_boundary() {
        let mut g = given();
        let acc = g.account(Uuid::now_v7(), 0);
        g.state.remove(&settlement(usd()));
        assert_eq!(g.when(&teller(), deposit(acc, 1)), Err(DomainError::SystemAccountMissing("USD".into())));
    }

    #[test]
    fn a_frozen_settlement_account_stops_deposits() {
        let mut g = given();
        let acc = g.account(Uuid::now_v7(), 0);
        g.record(Event::AccountFrozen { account: settlement(usd()), reason: String::new() });
        let err = g.when(&teller(), deposit(acc, 1)).unwrap_err();
        // The bank's state, not the request's: answered UNAVAILABLE, not kept under the key.
        assert_eq!(
            err,
            DomainError::SettlementRefused { currency: "USD".into(), cause: Box::new(DomainError::AccountFrozen) }
        );
        assert_eq!(err.class(), Refusal::Unavailable);
    }

    #[test]
    fn staff_do_not_move_money_on_their_own_accounts() {
        let mut g = given();
        let me = teller();
        let mine = g.account(me.id, 10);
        assert_eq!(g.when(&me, deposit(mine, 1)), Err(DomainError::OwnAccount));
        assert_eq!(DomainError::OwnAccount.class(), Refusal::PermissionDenied);
    }

    #[test]
    fn a_deposit_past_the_balance_limit_is_refused() {
        let mut g = given();
        let a = g.account(Uuid::now_v7(), 999_999);
        assert_eq!(g.when(&teller(), deposit(a, 2)), Err(DomainError::BalanceLimitExceeded));
    }

    #[test]
    fn a_frozen_customer_account_takes_no_deposit() {
        let mut g = given();
        let a = g.account(Uuid::now_v7(), 0);
        g.record(Event::AccountFrozen { account: a, reason: String::new() });
        assert_eq!(g.when(&teller(), deposit(a, 1)), Err(DomainError::AccountFrozen));
    }
}
