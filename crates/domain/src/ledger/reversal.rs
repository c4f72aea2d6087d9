//! Reversals: staff post the opposite of a transaction's postings, once.

use uuid::Uuid;

use super::{Decision, Event, Posting, PostingKind};
use crate::{DomainError, Forbidden, money::at_scale};

pub(super) fn reverse(d: &Decision, transaction: &Uuid, reason: &str) -> Result<Vec<Event>, DomainError> {
    d.actor.ensure_staff(Forbidden::ReverseNotStaff)?;
    let original = d.world.transactions.get(transaction).ok_or(DomainError::TransactionNotFound)?;
    if let Some(original) = original.reverses {
        return Err(DomainError::ReversalNotReversible { original });
    }
    if let Some(by) = original.reversed_by {
        return Err(DomainError::AlreadyReversed { by });
    }
    let opposite: Vec<Posting> = original.postings.iter().map(|p| Posting { amount: -p.amount, ..p.clone() }).collect();
    let mut events = Vec::with_capacity(opposite.len());
    for posting in &opposite {
        let account = d.account(&posting.account)?;
        if account.owner_id == d.actor.id {
            return Err(DomainError::OwnAccount);
        }
        // Policy: a reversal never overdraws a customer (nor takes what
        // holds reserve); staff settle the shortfall first.
        if posting.amount.is_sign_negative() && !account.kind.may_go_negative() && account.available() < -posting.amount
        {
            return Err(DomainError::ReversalWouldOverdraw {
                account: account.id,
                available: at_scale(account.available(), account.currency),
            });
        }
        let change = account.post(posting.currency, posting.amount, d.limits.max_balance)?;
        events.push(Event::Posted {
            posting: posting.clone(),
            before: change.before,
            after: change.after,
            kind: PostingKind::Reversal { original: *transaction },
            counterparties: opposite.iter().filter(|p| p.account != posting.account).cloned().collect(),
            description: reason.to_owned(),
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;
    use uuid::Uuid;

    use crate::ledger::{Command, Event, PostingKind, Transaction, testing::*};
    use crate::{DomainError, Forbidden};

    fn send(from: Uuid, to: Uuid, n: i64) -> Command {
        Command::Transfer { from, to, money: dollars(n), description: String::new() }
    }

    #[test]
    fn a_reversal_restores_both_balances_and_links_to_the_original() {
        let mut g = given();
        let me = customer();
        let (from, to) = (g.account(me.id, 100), g.account(Uuid::now_v7(), 0));
        let original = g.transaction(&me, send(from, to, 40));
        let events = g.when(&teller(), Command::Reverse { transaction: original, reason: "error".into() }).unwrap();
        assert!(
            events.iter().all(
                |e| matches!(e, Event::Posted { kind: PostingKind::Reversal { original: o }, .. } if *o == original)
            )
        );
        g.then_apply(events);
        assert_eq!((g.balance(from), g.balance(to)), (Decimal::from(100), Decimal::ZERO));
    }

    #[test]
    fn a_second_reversal_and_a_reversal_of_a_reversal_are_refused() {
        let mut g = given();
        let (reversal, original) = (Uuid::now_v7(), Uuid::now_v7());
        g.transactions.insert(original, Transaction { postings: vec![], reverses: None, reversed_by: Some(reversal) });
        g.transactions.insert(reversal, Transaction { postings: vec![], reverses: Some(original), reversed_by: None });
        let again = g.when(&teller(), Command::Reverse { transaction: original, reason: String::new() });
        assert_eq!(again, Err(DomainError::AlreadyReversed { by: reversal }));
        let undo = g.when(&teller(), Command::Reverse { transaction: reversal, reason: String::new() });
        assert_eq!(undo, Err(DomainError::ReversalNotReversible { original }));
        let unknown = g.when(&teller(), Command::Reverse { transaction: Uuid::now_v7(), reason: String::new() });
        assert_eq!(unknown, Err(DomainError::TransactionNotFound));
    }

    #[test]
    fn a_reversal_that_would_overdraw_a_customer_is_refused_and_customers_reverse_nothing() {
        let mut g = given();
        let me = customer();
        let (from, to) = (g.account(me.id, 100), g.account(me.id, 0));
        let original = g.transaction(&me, send(from, to, 40));
        // The destination spent part of it: taking 40 back would overdraw it.
        g.transaction(&me, send(to, from, 15));
        let refused = g.when(&teller(), Command::Reverse { transaction: original, reason: String::new() });
        assert_eq!(refused, Err(DomainError::ReversalWouldOverdraw { account: to, available: Decimal::from(25) }));
        let by_customer = g.when(&me, Command::Reverse { transaction: original, reason: String::new() });
        assert_eq!(by_customer, Err(DomainError::NotPermitted(Forbidden::ReverseNotStaff)));
        let by_service = g.when(&service(), Command::Reverse { transaction: original, reason: String::new() });
        assert_eq!(by_service, Err(DomainError::NotPermitted(Forbidden::ReverseNotStaff)));
    }
}
