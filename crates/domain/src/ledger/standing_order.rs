//! What the scheduler writes on an account when an occurrence of one of its
//! scheduled transfers is refused: a fact on the account's own chain, so the
//! owner hears of it the way they hear of everything else (the stream).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{BANK, Decision, Event};
use crate::{DomainError, Forbidden, Money};

/// One refused attempt at one occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedOccurrence {
    pub account: Uuid,
    pub schedule: Uuid,
    pub occurrence: u32,
    pub attempt: u32,
    pub to: Uuid,
    pub money: Money,
    /// The rule that refused it (an ErrorInfo reason).
    pub reason: String,
    /// When it is tried again; `None` after the last attempt.
    pub retry_at: Option<DateTime<Utc>>,
}

pub(super) fn record_refusal(d: &Decision, refused: &RefusedOccurrence) -> Result<Vec<Event>, DomainError> {
    if d.actor.id != BANK {
        return Err(DomainError::NotPermitted(Forbidden::ScheduleRecordIsTheBanks));
    }
    // Whatever the account's status: a frozen or closed account is one of
    // the reasons an occurrence is refused.
    d.account(&refused.account)?;
    Ok(vec![Event::ScheduledTransferRefused(refused.clone())])
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::RefusedOccurrence;
    use crate::ledger::{Command, Event, testing::*};
    use crate::{AccountStatus, DomainError, Forbidden};

    fn refused(account: Uuid) -> RefusedOccurrence {
        RefusedOccurrence {
            account,
            schedule: Uuid::now_v7(),
            occurrence: 3,
            attempt: 1,
            to: Uuid::now_v7(),
            money: dollars(10),
            reason: "INSUFFICIENT_FUNDS".into(),
            retry_at: None,
        }
    }

    #[test]
    fn the_bank_records_a_refusal_on_a_closed_account_and_nothing_but_the_version_changes() {
        let mut g = given();
        let owner = customer();
        let a = g.account(owner.id, 0);
        g.then_apply(g.when(&owner, Command::Close { account: a }).unwrap());
        let before = g.state[&a].clone();

        let r = refused(a);
        let events = g.when(&bank(), Command::RecordScheduleRefusal(r.clone())).unwrap();
        assert_eq!(events, [Event::ScheduledTransferRefused(r)]);
        g.then_apply(events);
        let after = &g.state[&a];
        assert_eq!(
            (after.version, after.status, after.balance),
            (before.version + 1, AccountStatus::Closed, before.balance)
        );
    }

    #[test]
    fn nobody_but_the_bank_records_one() {
        let mut g = given();
        let owner = customer();
        let a = g.account(owner.id, 0);
        for who in [owner, teller(), admin(), service()] {
            assert_eq!(
                g.when(&who, Command::RecordScheduleRefusal(refused(a))),
                Err(DomainError::NotPermitted(Forbidden::ScheduleRecordIsTheBanks))
            );
        }
    }
}
