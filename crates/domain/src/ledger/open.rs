//! Opening an account: customers open their own; the bank opens its own.

use uuid::Uuid;

use super::{Decision, Event};
use crate::{AccountKind, Currency, DomainError, Forbidden};

pub(super) fn open(d: &Decision, id: Uuid, kind: AccountKind, currency: Currency) -> Result<Vec<Event>, DomainError> {
    d.actor.ensure_customer()?;
    if kind.is_system() {
        return Err(DomainError::NotPermitted(Forbidden::BankOpensItsOwn));
    }
    Ok(vec![Event::AccountOpened { account: id, owner: d.actor.id, kind, currency }])
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use crate::ledger::{Command, Event, testing::*};
    use crate::{AccountKind, DomainError, Forbidden};

    #[test]
    fn a_customer_opens_an_account_of_their_own() {
        let g = given();
        let me = customer();
        let id = Uuid::now_v7();
        let events = g.when(&me, Command::OpenAccount { id, kind: AccountKind::Savings, currency: usd() });
        assert_eq!(
            events,
            Ok(vec![Event::AccountOpened { account: id, owner: me.id, kind: AccountKind::Savings, currency: usd() }])
        );
    }

    #[test]
    fn a_pending_customer_opens_nothing_a_service_owns_nothing_and_nobody_opens_the_banks() {
        let g = given();
        let pending = crate::ledger::Actor { active: false, ..customer() };
        let open = Command::OpenAccount { id: Uuid::now_v7(), kind: AccountKind::Checking, currency: usd() };
        assert_eq!(g.when(&pending, open.clone()), Err(DomainError::CustomerNotActive));
        assert_eq!(g.when(&service(), open), Err(DomainError::NotPermitted(Forbidden::ServiceNotCustomer)));
        let bank_kind = Command::OpenAccount { id: Uuid::now_v7(), kind: AccountKind::Settlement, currency: usd() };
        assert_eq!(g.when(&customer(), bank_kind), Err(DomainError::NotPermitted(Forbidden::BankOpensItsOwn)));
    }
}
