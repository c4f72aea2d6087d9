//! A customer's transfer from their own account to another customer account.

use uuid::Uuid;

use super::{Decision, Event, PostingKind, two_sided};
use crate::{DomainError, Forbidden, Money, account};

pub(super) fn transfer(
    d: &Decision,
    from: &Uuid,
    to: &Uuid,
    money: &Money,
    description: &str,
) -> Result<Vec<Event>, DomainError> {
    let source = d.account(from)?;
    if source.owner_id != d.actor.id {
        return Err(DomainError::NotOwner);
    }
    let destination = d.account(to)?;
    d.actor.ensure_customer()?;
    if destination.kind.is_system() {
        return Err(DomainError::NotPermitted(Forbidden::BankAccountTakesStaffPostings));
    }
    let (debit, credit) = account::transfer(source, destination, money, d.limits.max_balance)?;
    source.check_debit_limits(money.amount)?;
    Ok(two_sided(
        (source, debit.before, debit.after, PostingKind::TransferOut { to: *to }, -money.amount),
        (destination, credit.before, credit.after, PostingKind::TransferIn { from: *from }),
        money.currency,
        description,
    ))
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;
    use uuid::Uuid;

    use crate::ledger::{Actor, Command, testing::*};
    use crate::{DomainError, Forbidden};

    fn send(from: Uuid, to: Uuid, n: i64) -> Command {
        Command::Transfer { from, to, money: dollars(n), description: String::new() }
    }

    #[test]
    fn a_transfer_debits_the_source_and_credits_the_destination() {
        let mut g = given();
        let me = customer();
        let (a, b) = (g.account(me.id, 30), g.account(Uuid::now_v7(), 0));
        g.then_apply(g.when(&me, send(a, b, 12)).unwrap());
        assert_eq!((g.balance(a), g.balance(b)), (Decimal::from(18), Decimal::from(12)));
    }

    #[test]
    fn a_transfer_from_someone_elses_account_is_not_owner() {
        let mut g = given();
        let (a, b) = (g.account(Uuid::now_v7(), 30), g.account(Uuid::now_v7(), 0));
        assert_eq!(g.when(&customer(), send(a, b, 1)), Err(DomainError::NotOwner));
    }

    #[test]
    fn customers_cannot_post_to_the_banks_accounts() {
        let mut g = given();
        let me = customer();
        let a = g.account(me.id, 30);
        assert_eq!(
            g.when(&me, send(a, fees(usd()), 1)),
            Err(DomainError::NotPermitted(Forbidden::BankAccountTakesStaffPostings))
        );
    }

    #[test]
    fn a_pending_customer_moves_nothing() {
        let mut g = given();
        let pending = Actor { active: false, ..customer() };
        let (a, b) = (g.account(pending.id, 30), g.account(Uuid::now_v7(), 0));
        assert_eq!(g.when(&pending, send(a, b, 1)), Err(DomainError::CustomerNotActive));
    }

    #[test]
    fn a_transfer_to_an_unknown_account_is_not_found() {
        let mut g = given();
        let me = customer();
        let a = g.account(me.id, 30);
        assert_eq!(g.when(&me, send(a, Uuid::now_v7(), 1)), Err(DomainError::AccountNotFound));
    }

    #[test]
    fn a_transfer_to_the_same_account_and_past_the_balance_are_refused() {
        let mut g = given();
        let me = customer();
        let (a, b) = (g.account(me.id, 30), g.account(Uuid::now_v7(), 0));
        assert_eq!(g.when(&me, send(a, a, 1)), Err(DomainError::SameAccount));
        assert_eq!(g.when(&me, send(a, b, 31)), Err(DomainError::InsufficientFunds));
    }
}
