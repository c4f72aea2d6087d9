//! Holds: money reserved on a customer's account for a payee, then captured
//! (in whole or part), voided, or expired by the bank at its deadline.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{BANK, Decision, Event, PostingKind, apply, two_sided};
use crate::{
    DomainError, Forbidden, Money, account,
    hold::{Hold, HoldState},
    money::at_scale,
};

pub(super) fn place(
    d: &Decision,
    id: Uuid,
    from: &Uuid,
    to: &Uuid,
    money: &Money,
    expires_at: DateTime<Utc>,
    description: &str,
) -> Result<Vec<Event>, DomainError> {
    let source = d.account(from)?;
    if source.owner_id != d.actor.id {
        return Err(DomainError::NotOwner);
    }
    d.actor.ensure_customer()?;
    let destination = d.account(to)?;
    if destination.kind.is_system() {
        return Err(DomainError::NotPermitted(Forbidden::BankAccountTakesStaffPostings));
    }
    if from == to {
        return Err(DomainError::SameAccount);
    }
    source.reserve(money)?;
    destination.ensure_can_receive(money)?;
    let hold =
        Hold { id, account: *from, to: *to, money: *money, state: HoldState::Open, expires_at, placed_by: d.actor.id };
    Ok(vec![Event::HoldPlaced { hold, description: description.to_owned() }])
}

pub(super) fn capture(d: &Decision, hold: &Uuid, amount: Option<&Money>) -> Result<Vec<Event>, DomainError> {
    let actor = d.actor;
    let hold = party_to(d, hold)?;
    if !(actor.teller || actor.service) {
        // The customer who placed it: a suspended one moves no money
        // (but may still void, which moves none).
        actor.ensure_customer()?;
    }
    hold.ensure_open(d.world.now)?;
    let money = amount.copied().unwrap_or(hold.money);
    if money.currency != hold.money.currency {
        return Err(DomainError::CurrencyMismatch {
            account: hold.money.currency.code().to_owned(),
            requested: money.currency.code().to_owned(),
        });
    }
    if money.amount > hold.money.amount {
        return Err(DomainError::CaptureExceedsHold {
            requested: at_scale(money.amount, money.currency),
            held: at_scale(hold.money.amount, hold.money.currency),
        });
    }
    // Staff and services capture for others, never into their own account.
    if hold.placed_by != actor.id && d.account(&hold.to)?.owner_id == actor.id {
        return Err(DomainError::OwnAccount);
    }
    let release = released(hold, HoldState::Captured, money.amount);
    // The transfer is decided on the source as the release leaves it.
    let source = apply(Some(d.account(&hold.account)?), &release).ok_or(DomainError::AccountNotFound)?;
    let destination = d.account(&hold.to)?;
    let (debit, credit) = account::transfer(&source, destination, &money, d.limits.max_balance)?;
    source.check_debit_limits(money.amount)?;
    let mut events = vec![release];
    events.extend(two_sided(
        (&source, debit.before, debit.after, PostingKind::TransferOut { to: hold.to }, -money.amount),
        (destination, credit.before, credit.after, PostingKind::TransferIn { from: hold.account }),
        money.currency,
        &format!("capture of hold {}", hold.id),
    ));
    Ok(events)
}

pub(super) fn void(d: &Decision, hold: &Uuid) -> Result<Vec<Event>, DomainError> {
    let hold = party_to(d, hold)?;
    hold.ensure_open(d.world.now)?;
    Ok(vec![released(hold, HoldState::Voided, Decimal::ZERO)])
}

pub(super) fn expire(d: &Decision, hold: &Uuid) -> Result<Vec<Event>, DomainError> {
    if d.actor.id != BANK {
        return Err(DomainError::NotPermitted(Forbidden::ExpiryIsTheBanks));
    }
    let hold = d.world.holds.get(hold).ok_or(DomainError::HoldNotFound)?;
    if hold.state != HoldState::Open {
        return Err(DomainError::HoldEnded(hold.state));
    }
    if d.world.now < hold.expires_at {
        return Err(DomainError::HoldNotDue);
    }
    Ok(vec![released(hold, HoldState::Expired, Decimal::ZERO)])
}

/// The hold a capture or void names, if the actor is a party to it: whoever
/// placed it, or staff and services (a merchant's acquirer).
fn party_to<'a>(d: &Decision<'a>, id: &Uuid) -> Result<&'a Hold, DomainError> {
    let actor = d.actor;
    let hold = d.world.holds.get(id).ok_or(DomainError::HoldNotFound)?;
    if hold.placed_by == actor.id || ((actor.teller || actor.service) && actor.active) {
        Ok(hold)
    } else {
        Err(DomainError::NotHoldParty)
    }
}

fn released(hold: &Hold, state: HoldState, captured: Decimal) -> Event {
    Event::HoldReleased { account: hold.account, hold: hold.id, released: hold.money.amount, state, captured }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;
    use uuid::Uuid;

    use crate::ledger::{Actor, Command, Event, testing::*};
    use crate::{DomainError, Forbidden, Refusal, hold::HoldState};

    #[test]
    fn a_hold_lowers_the_available_balance_but_not_the_ledger_balance() {
        let mut g = given();
        let me = customer();
        let (from, to) = (g.account(me.id, 100), g.account(Uuid::now_v7(), 0));
        g.hold(&me, from, to, 30);
        assert_eq!((g.balance(from), g.available(from)), (Decimal::from(100), Decimal::from(70)));
        // Held money is spent neither by a transfer nor by a second hold.
        let transfer = Command::Transfer { from, to, money: dollars(71), description: String::new() };
        assert_eq!(g.when(&me, transfer), Err(DomainError::InsufficientFunds));
        assert_eq!(g.when(&me, hold_cmd(Uuid::now_v7(), from, to, 71, g.now)), Err(DomainError::InsufficientFunds));
    }

    #[test]
    fn a_capture_posts_the_transfer_and_releases_the_whole_hold() {
        let mut g = given();
        let me = customer();
        let (from, to) = (g.account(me.id, 100), g.account(Uuid::now_v7(), 0));
        let hold = g.hold(&me, from, to, 30);
        let events = g.when(&me, Command::CaptureHold { hold, amount: Some(dollars(20)) }).unwrap();
        assert!(matches!(
            events[0],
            Event::HoldReleased { state: HoldState::Captured, released, captured, .. }
                if released == Decimal::from(30) && captured == Decimal::from(20)
        ));
        g.then_apply(events);
        // The partial capture released the other 10.
        assert_eq!((g.balance(from), g.available(from), g.balance(to)), (80.into(), 80.into(), 20.into()));
        assert_eq!(g.state[&from].version, 5, "opened, deposit, hold placed, released, debited");
    }

    #[test]
    fn a_void_releases_the_hold_and_moves_no_money() {
        let mut g = given();
        let me = customer();
        let (from, to) = (g.account(me.id, 100), g.account(Uuid::now_v7(), 0));
        let hold = g.hold(&me, from, to, 30);
        g.then_apply(g.when(&me, Command::VoidHold { hold }).unwrap());
        assert_eq!((g.balance(from), g.available(from), g.balance(to)), (100.into(), 100.into(), 0.into()));
    }

    #[test]
    fn every_command_after_the_end_of_a_hold_answers_its_state() {
        for end in [HoldState::Captured, HoldState::Voided, HoldState::Expired] {
            let mut g = given();
            let me = customer();
            let (from, to) = (g.account(me.id, 100), g.account(Uuid::now_v7(), 0));
            let hold = g.hold(&me, from, to, 30);
            let ending = match end {
                HoldState::Captured => (me.clone(), Command::CaptureHold { hold, amount: None }),
                HoldState::Voided => (me.clone(), Command::VoidHold { hold }),
                _ => {
                    g.now += chrono::Duration::minutes(10);
                    (bank(), Command::ExpireHold { hold })
                }
            };
            g.then_apply(g.when(&ending.0, ending.1).unwrap());
            for again in [Command::CaptureHold { hold, amount: None }, Command::VoidHold { hold }] {
                let refusal = g.when(&me, again).unwrap_err();
                assert_eq!(refusal, DomainError::HoldEnded(end));
                assert_eq!(refusal.reason(), end.ended_reason());
            }
            assert_eq!(g.when(&bank(), Command::ExpireHold { hold }), Err(DomainError::HoldEnded(end)));
        }
    }

    #[test]
    fn a_hold_past_its_deadline_is_expired_before_the_worker_writes_so() {
        let mut g = given();
        let me = customer();
        let (from, to) = (g.account(me.id, 100), g.account(Uuid::now_v7(), 0));
        let hold = g.hold(&me, from, to, 30);
        assert_eq!(g.when(&bank(), Command::ExpireHold { hold }), Err(DomainError::HoldNotDue));
        assert_eq!(DomainError::HoldNotDue.class(), Refusal::Unavailable, "not kept: the worker asks again");
        g.now += chrono::Duration::minutes(10);
        let capture = g.when(&me, Command::CaptureHold { hold, amount: None });
        assert_eq!(capture, Err(DomainError::HoldEnded(HoldState::Expired)));
        // Nobody but the bank expires a hold.
        assert_eq!(
            g.when(&teller(), Command::ExpireHold { hold }),
            Err(DomainError::NotPermitted(Forbidden::ExpiryIsTheBanks))
        );
        g.then_apply(g.when(&bank(), Command::ExpireHold { hold }).unwrap());
        assert_eq!(g.available(from), Decimal::from(100));
    }

    #[test]
    fn strangers_do_not_learn_of_a_hold_and_captures_stay_within_it() {
        let mut g = given();
        let me = customer();
        let (from, to) = (g.account(me.id, 100), g.account(Uuid::now_v7(), 0));
        let hold = g.hold(&me, from, to, 30);
        assert_eq!(g.when(&customer(), Command::VoidHold { hold }), Err(DomainError::NotHoldParty));
        assert_eq!(DomainError::NotHoldParty.class(), Refusal::NotFound { audited: true });
        let refused = g.when(&me, Command::CaptureHold { hold, amount: Some(dollars(31)) }).unwrap_err();
        assert_eq!(
            refused,
            DomainError::CaptureExceedsHold { requested: Decimal::new(3100, 2), held: Decimal::new(3000, 2) }
        );
        assert_eq!(refused.to_string(), "the capture of 31.00 exceeds the 30.00 held");
        // Staff and services may capture (a merchant's acquirer does), but not into their own account.
        assert!(g.when(&service(), Command::CaptureHold { hold, amount: None }).is_ok());
        let payee = Actor { id: g.state[&to].owner_id, teller: true, ..customer() };
        assert_eq!(g.when(&payee, Command::CaptureHold { hold, amount: None }), Err(DomainError::OwnAccount));
        assert_eq!(g.when(&me, Command::VoidHold { hold: Uuid::now_v7() }), Err(DomainError::HoldNotFound));
    }

    #[test]
    fn a_suspended_customer_may_void_their_hold_but_not_capture_it() {
        let mut g = given();
        let me = customer();
        let (from, to) = (g.account(me.id, 100), g.account(Uuid::now_v7(), 0));
        let hold = g.hold(&me, from, to, 30);
        let suspended = Actor { active: false, ..me.clone() };
        let capture = g.when(&suspended, Command::CaptureHold { hold, amount: None });
        assert_eq!(capture, Err(DomainError::CustomerNotActive));
        assert!(g.when(&suspended, Command::VoidHold { hold }).is_ok());
    }

    #[test]
    fn a_hold_is_placed_only_by_the_owner_on_money_they_have() {
        let mut g = given();
        let me = customer();
        let (from, to) = (g.account(me.id, 10), g.account(Uuid::now_v7(), 0));
        let now = g.now;
        assert_eq!(g.when(&customer(), hold_cmd(Uuid::now_v7(), from, to, 5, now)), Err(DomainError::NotOwner));
        assert_eq!(g.when(&me, hold_cmd(Uuid::now_v7(), from, to, 11, now)), Err(DomainError::InsufficientFunds));
        assert_eq!(g.when(&me, hold_cmd(Uuid::now_v7(), from, from, 1, now)), Err(DomainError::SameAccount));
        let to_bank = hold_cmd(Uuid::now_v7(), from, settlement(usd()), 1, now);
        assert_eq!(g.when(&me, to_bank), Err(DomainError::NotPermitted(Forbidden::BankAccountTakesStaffPostings)));
    }
}
