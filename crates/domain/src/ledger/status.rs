//! An account's status: admins freeze and unfreeze, owners close.

use uuid::Uuid;

use super::{Decision, Event};
use crate::{DomainError, Forbidden};

pub(super) fn freeze(d: &Decision, account: &Uuid, reason: &str) -> Result<Vec<Event>, DomainError> {
    ensure_admin(d)?;
    d.account(account)?.freeze()?;
    Ok(vec![Event::AccountFrozen { account: *account, reason: reason.to_owned() }])
}

pub(super) fn unfreeze(d: &Decision, account: &Uuid, reason: &str) -> Result<Vec<Event>, DomainError> {
    ensure_admin(d)?;
    d.account(account)?.unfreeze()?;
    Ok(vec![Event::AccountUnfrozen { account: *account, reason: reason.to_owned() }])
}

pub(super) fn close(d: &Decision, account: &Uuid) -> Result<Vec<Event>, DomainError> {
    let a = d.account(account)?;
    if a.owner_id != d.actor.id {
        return Err(DomainError::NotOwner);
    }
    a.close()?;
    Ok(vec![Event::AccountClosed { account: *account }])
}

fn ensure_admin(d: &Decision) -> Result<(), DomainError> {
    if d.actor.admin { Ok(()) } else { Err(DomainError::NotPermitted(Forbidden::FreezeNotAdmin)) }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use crate::ledger::{Command, testing::*};
    use crate::{AccountStatus, DomainError, Forbidden};

    #[test]
    fn only_admins_freeze_and_only_owners_close() {
        let mut g = given();
        let owner = customer();
        let a = g.account(owner.id, 0);
        let freeze = Command::Freeze { account: a, reason: "review".into() };
        assert_eq!(g.when(&teller(), freeze.clone()), Err(DomainError::NotPermitted(Forbidden::FreezeNotAdmin)));
        let admin = admin();
        g.then_apply(g.when(&admin, freeze.clone()).unwrap());
        assert_eq!(g.when(&admin, freeze), Err(DomainError::AccountFrozen));
        let deposit = Command::Deposit { account: a, money: dollars(1), description: String::new() };
        assert_eq!(g.when(&teller(), deposit), Err(DomainError::AccountFrozen));
        let unfreeze = Command::Unfreeze { account: a, reason: String::new() };
        g.then_apply(g.when(&admin, unfreeze.clone()).unwrap());
        assert_eq!(g.when(&admin, unfreeze), Err(DomainError::AccountNotFrozen));
        assert_eq!(g.when(&admin, Command::Close { account: a }), Err(DomainError::NotOwner));
        g.then_apply(g.when(&owner, Command::Close { account: a }).unwrap());
        assert_eq!(g.state[&a].status, AccountStatus::Closed);
    }

    #[test]
    fn an_account_with_money_does_not_close() {
        let mut g = given();
        let owner = customer();
        let a = g.account(owner.id, 5);
        assert_eq!(g.when(&owner, Command::Close { account: a }), Err(DomainError::BalanceNotZero));
    }

    #[test]
    fn nobody_closes_the_banks_accounts() {
        let g = given();
        assert_eq!(g.when(&customer(), Command::Close { account: settlement(usd()) }), Err(DomainError::NotOwner));
        let unknown = Command::Freeze { account: Uuid::now_v7(), reason: String::new() };
        assert_eq!(g.when(&admin(), unknown), Err(DomainError::AccountNotFound));
    }
}
