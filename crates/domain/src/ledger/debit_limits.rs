//! An account's debit limits, set by staff.

use uuid::Uuid;

use super::{Decision, Event};
use crate::{Currency, DebitLimits, DomainError, Forbidden};

pub(super) fn set(
    d: &Decision,
    account: &Uuid,
    limits: &DebitLimits,
    currency: Option<&Currency>,
) -> Result<Vec<Event>, DomainError> {
    d.actor.ensure_staff(Forbidden::LimitsNotStaff)?;
    let a = d.account(account)?;
    if a.kind.is_system() {
        return Err(DomainError::NotPermitted(Forbidden::BankAccountHasNoLimits));
    }
    if a.owner_id == d.actor.id {
        return Err(DomainError::OwnAccount);
    }
    if let Some(c) = currency
        && *c != a.currency
    {
        return Err(DomainError::CurrencyMismatch {
            account: a.currency.code().to_owned(),
            requested: c.code().to_owned(),
        });
    }
    Ok(vec![Event::LimitsSet { account: *account, limits: *limits }])
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;
    use uuid::Uuid;

    use crate::ledger::{Command, testing::*};
    use crate::{DebitLimits, DomainError, Forbidden};

    #[test]
    fn limits_cap_single_debits_and_the_rolling_day_across_commands() {
        let mut g = given();
        let me = customer();
        let (from, to) = (g.account(me.id, 1000), g.account(Uuid::now_v7(), 0));
        let limits = DebitLimits { max_debit: Some(Decimal::from(100)), daily_debit: Some(Decimal::from(150)) };
        let set = Command::SetLimits { account: from, limits, currency: Some(usd()) };
        g.then_apply(g.when(&teller(), set.clone()).unwrap());
        let send = |n| Command::Transfer { from, to, money: dollars(n), description: String::new() };
        let single = DomainError::LimitExceeded { limit: "single debit", max: Decimal::new(10000, 2) };
        let daily = DomainError::LimitExceeded { limit: "debits per rolling day", max: Decimal::new(15000, 2) };
        assert_eq!(g.when(&me, send(101)), Err(single));
        g.then_apply(g.when(&me, send(100)).unwrap());
        // The first debit counts toward the day, as it would within one batch.
        assert_eq!(g.when(&me, send(51)), Err(daily.clone()));
        let hold = hold_cmd(Uuid::now_v7(), from, to, 51, g.now);
        assert_eq!(g.when(&me, hold), Err(daily));
        assert!(g.when(&me, send(50)).is_ok());
        assert_eq!(g.when(&me, set), Err(DomainError::NotPermitted(Forbidden::LimitsNotStaff)));
    }

    #[test]
    fn staff_do_not_lift_their_own_limits_nor_set_the_banks() {
        let mut g = given();
        let own = teller();
        let staff_account = g.account(own.id, 0);
        let mine = Command::SetLimits { account: staff_account, limits: DebitLimits::default(), currency: None };
        assert_eq!(g.when(&own, mine), Err(DomainError::OwnAccount));
        let bank = Command::SetLimits { account: fees(usd()), limits: DebitLimits::default(), currency: None };
        assert_eq!(g.when(&teller(), bank), Err(DomainError::NotPermitted(Forbidden::BankAccountHasNoLimits)));
        let by_service = Command::SetLimits { account: staff_account, limits: DebitLimits::default(), currency: None };
        assert_eq!(g.when(&service(), by_service), Err(DomainError::NotPermitted(Forbidden::LimitsNotStaff)));
    }

    #[test]
    fn limits_in_another_currency_are_a_mismatch() {
        let mut g = given();
        let from = g.account(Uuid::now_v7(), 0);
        let in_euros = Command::SetLimits { account: from, limits: DebitLimits::default(), currency: Some(eur()) };
        assert_eq!(
            g.when(&teller(), in_euros),
            Err(DomainError::CurrencyMismatch { account: "USD".into(), requested: "EUR".into() })
        );
    }
}
