//! A balanced multi-leg transaction, posted by services and staff.

use super::{Decision, Event, Posting, PostingKind, check_balanced};
use crate::{DomainError, Forbidden};

/// Most legs one posted transaction may have: as many accounts as a
/// consistency token names, so its response reads back.
pub const MAX_LEGS: usize = crate::consistency::MAX_ENTRIES;

pub(super) fn post(d: &Decision, legs: &[Posting], description: &str) -> Result<Vec<Event>, DomainError> {
    d.actor.ensure_may_cross_boundary(Forbidden::PostNotStaff)?;
    check_legs(legs)?;
    let mut events = Vec::with_capacity(legs.len());
    for (index, leg) in legs.iter().enumerate() {
        let in_leg = |cause: DomainError| DomainError::Leg { index, cause: Box::new(cause) };
        let account = d.account(&leg.account).map_err(in_leg)?;
        if account.owner_id == d.actor.id {
            return Err(in_leg(DomainError::OwnAccount));
        }
        let change = account.post(leg.currency, leg.amount, d.limits.max_balance).map_err(in_leg)?;
        if leg.amount.is_sign_negative() && !account.kind.is_system() {
            account.check_debit_limits(-leg.amount).map_err(in_leg)?;
        }
        events.push(Event::Posted {
            posting: leg.clone(),
            before: change.before,
            after: change.after,
            kind: PostingKind::Leg,
            counterparties: legs.iter().filter(|l| l.account != leg.account).cloned().collect(),
            description: description.to_owned(),
        });
    }
    Ok(events)
}

/// The shape of a posted transaction: 2..=MAX_LEGS legs on distinct accounts,
/// none zero, balanced per currency.
pub fn check_legs(legs: &[Posting]) -> Result<(), DomainError> {
    if legs.len() < 2 || legs.len() > MAX_LEGS {
        return Err(DomainError::LegCount { max: MAX_LEGS });
    }
    for (index, leg) in legs.iter().enumerate() {
        if leg.amount.is_zero() {
            return Err(DomainError::Leg { index, cause: Box::new(DomainError::ZeroPosting) });
        }
        if let Some(first) = legs[..index].iter().position(|l| l.account == leg.account) {
            return Err(DomainError::Leg { index, cause: Box::new(DomainError::DuplicateLeg { first }) });
        }
    }
    check_balanced(legs)
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;
    use uuid::Uuid;

    use super::MAX_LEGS;
    use crate::ledger::{Actor, Command, Event, Posting, testing::*};
    use crate::{DomainError, Forbidden};

    fn post(legs: Vec<Posting>) -> Command {
        Command::Post { legs, description: String::new() }
    }

    #[test]
    fn a_multi_leg_transaction_moves_a_transfer_and_its_fee_at_once() {
        let mut g = given();
        let (a, b) = (g.account(Uuid::now_v7(), 100), g.account(Uuid::now_v7(), 0));
        let legs = vec![leg(a, -51), leg(b, 50), leg(fees(usd()), 1)];
        let events = g.when(&service(), Command::Post { legs, description: "transfer + fee".into() }).unwrap();
        assert_eq!(events.len(), 3);
        if let Event::Posted { counterparties, .. } = &events[2] {
            assert_eq!(counterparties, &vec![leg(a, -51), leg(b, 50)], "each event names the other postings");
        }
        g.then_apply(events);
        assert_eq!(
            (g.balance(a), g.balance(b), g.balance(fees(usd()))),
            (Decimal::from(49), Decimal::from(50), Decimal::ONE)
        );
    }

    #[test]
    fn customers_and_suspended_tellers_may_not_post_transactions() {
        let mut g = given();
        let me = customer();
        let a = g.account(me.id, 10);
        let cmd = post(vec![leg(a, -1), leg(fees(usd()), 1)]);
        assert_eq!(g.when(&me, cmd.clone()), Err(DomainError::NotPermitted(Forbidden::PostNotStaff)));
        let suspended = Actor { active: false, ..teller() };
        assert_eq!(g.when(&suspended, cmd), Err(DomainError::NotPermitted(Forbidden::Suspended)));
    }

    #[test]
    fn staff_post_nothing_to_their_own_accounts() {
        let mut g = given();
        let me = teller();
        let (mine, other) = (g.account(me.id, 10), g.account(Uuid::now_v7(), 10));
        let refused = g.when(&me, post(vec![leg(other, -1), leg(mine, 1)])).unwrap_err();
        assert_eq!(leg_error(refused), (1, DomainError::OwnAccount));
    }

    #[test]
    fn an_unbalanced_transaction_is_refused() {
        let mut g = given();
        let a = g.account(Uuid::now_v7(), 10);
        assert_eq!(
            g.when(&service(), post(vec![leg(a, -2), leg(fees(usd()), 1)])),
            Err(DomainError::Unbalanced { currency: "USD".into(), sum: Decimal::from(-1) })
        );
    }

    #[test]
    fn legs_must_balance_in_each_currency_not_overall() {
        let g = given();
        let legs = vec![
            leg(settlement(usd()), -1),
            Posting { account: settlement(eur()), currency: eur(), amount: Decimal::ONE },
        ];
        assert!(matches!(g.when(&service(), post(legs)), Err(DomainError::Unbalanced { .. })));
    }

    #[test]
    fn a_duplicate_leg_is_named() {
        let mut g = given();
        let a = g.account(Uuid::now_v7(), 10);
        let refused = g.when(&service(), post(vec![leg(a, -1), leg(fees(usd()), 2), leg(a, -1)])).unwrap_err();
        assert_eq!(leg_error(refused), (2, DomainError::DuplicateLeg { first: 0 }));
    }

    #[test]
    fn a_leg_on_a_closed_account_is_named() {
        let mut g = given();
        let owner = customer();
        let (a, closed) = (g.account(Uuid::now_v7(), 10), g.account(owner.id, 0));
        g.then_apply(g.when(&owner, Command::Close { account: closed }).unwrap());
        let refused = g.when(&teller(), post(vec![leg(a, -1), leg(closed, 1)])).unwrap_err();
        assert_eq!(leg_error(refused), (1, DomainError::AccountClosed));
    }

    #[test]
    fn a_leg_in_the_wrong_currency_is_named() {
        let mut g = given();
        let a = g.account(Uuid::now_v7(), 10);
        let legs = vec![Posting { account: settlement(eur()), currency: usd(), amount: Decimal::ONE }, leg(a, -1)];
        let refused = g.when(&service(), post(legs)).unwrap_err();
        assert_eq!(
            leg_error(refused),
            (0, DomainError::CurrencyMismatch { account: "EUR".into(), requested: "USD".into() })
        );
    }

    #[test]
    fn a_leg_may_not_overdraw_a_customer_or_name_a_missing_account() {
        let mut g = given();
        let a = g.account(Uuid::now_v7(), 10);
        let refused = g.when(&service(), post(vec![leg(fees(usd()), 11), leg(a, -11)])).unwrap_err();
        assert_eq!(leg_error(refused), (1, DomainError::InsufficientFunds));
        let refused = g.when(&service(), post(vec![leg(a, -1), leg(Uuid::now_v7(), 1)])).unwrap_err();
        assert_eq!(leg_error(refused), (1, DomainError::AccountNotFound));
    }

    #[test]
    fn a_transaction_has_two_to_eight_nonzero_legs() {
        let mut g = given();
        let a = g.account(Uuid::now_v7(), 10);
        assert_eq!(g.when(&service(), post(vec![leg(a, 0)])), Err(DomainError::LegCount { max: MAX_LEGS }));
        let zero = g.when(&service(), post(vec![leg(a, 0), leg(fees(usd()), 0)])).unwrap_err();
        assert_eq!(leg_error(zero), (0, DomainError::ZeroPosting));
    }

    #[test]
    fn settlement_goes_negative_but_fee_income_does_not() {
        let mut g = given();
        let a = g.account(Uuid::now_v7(), 0);
        let refused = g.when(&teller(), post(vec![leg(fees(usd()), -1), leg(a, 1)])).unwrap_err();
        assert_eq!(leg_error(refused), (0, DomainError::InsufficientFunds));
    }
}
