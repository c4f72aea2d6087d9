//! Statement arithmetic, pure: opening + credits − debits = closing; and
//! the document the bank signs.

use bank_domain::{Currency, money::at_scale};
use bank_readmodel::{AccountView, HistoryEntry, kind};
use bank_statement::{ChainHead, Direction};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    pub credits: Decimal,
    pub debits: Decimal,
    pub closing: Decimal,
}

/// Which way an entry of this kind moves the balance.
pub fn direction(entry_kind: &str) -> Option<Direction> {
    match entry_kind {
        kind::DEPOSIT | kind::TRANSFER_IN | kind::CREDIT => Some(Direction::Credit),
        kind::WITHDRAWAL | kind::TRANSFER_OUT | kind::DEBIT => Some(Direction::Debit),
        _ => None,
    }
}

/// Totals over `entries` (oldest first) starting from `opening`. The closing
/// balance is the fold; `Err` if it disagrees with the entries' own
/// balance_after (a read model that does not add up is not shown as a statement).
pub fn summarize(opening: Decimal, entries: &[HistoryEntry]) -> Result<Totals, String> {
    let (mut credits, mut debits, mut balance) = (Decimal::ZERO, Decimal::ZERO, opening);
    for e in entries {
        match direction(&e.kind) {
            Some(Direction::Credit) => {
                credits += e.amount;
                balance += e.amount;
            }
            Some(Direction::Debit) => {
                debits += e.amount;
                balance -= e.amount;
            }
            None => return Err(format!("unknown entry kind {}", e.kind)),
        }
        if balance != e.balance_after {
            return Err(format!("entry v{} says {}, the fold says {balance}", e.version, e.balance_after));
        }
    }
    Ok(Totals { credits, debits, closing: balance })
}

/// The statement as the bank signs it: every amount at the currency's scale,
/// as the answer shows it.
#[allow(clippy::too_many_arguments)]
pub fn document(
    account: &AccountView,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    opening: Decimal,
    totals: &Totals,
    entries: &[HistoryEntry],
    opening_chain_head: ChainHead,
    closing_chain_head: ChainHead,
) -> Result<bank_statement::Statement, String> {
    let currency = Currency::from_code(&account.currency).map_err(|e| format!("account currency: {e:?}"))?;
    let scaled = |a: Decimal| at_scale(a, currency);
    let entries = entries
        .iter()
        .map(|e| {
            Ok(bank_statement::Entry {
                version: e.version,
                transaction_id: e.transaction_id,
                kind: e.kind.clone(),
                direction: direction(&e.kind).ok_or_else(|| format!("unknown entry kind {}", e.kind))?,
                amount: scaled(e.amount),
                balance_after: scaled(e.balance_after),
                counterparty_account_id: e.counterparty_account_id,
                description: e.description.clone(),
                occurred_at: e.occurred_at,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(bank_statement::Statement {
        account_id: account.account_id,
        currency: account.currency.clone(),
        from_time: from,
        to_time: to,
        opening_balance: scaled(opening),
        closing_balance: scaled(totals.closing),
        total_credits: scaled(totals.credits),
        total_debits: scaled(totals.debits),
        opening_chain_head,
        closing_chain_head,
        entries,
        issued_at: Utc::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use uuid::Uuid;

    fn entry(kind: &str, amount: i64, after: i64) -> HistoryEntry {
        HistoryEntry {
            account_id: Uuid::nil(),
            version: 1,
            transaction_id: Uuid::nil(),
            kind: kind.into(),
            amount: Decimal::from(amount),
            balance_before: Decimal::ZERO,
            balance_after: Decimal::from(after),
            counterparty_account_id: None,
            description: String::new(),
            occurred_at: Utc::now(),
            reverses_transaction_id: None,
            reversed_by_transaction_id: None,
        }
    }

    #[test]
    fn opening_plus_credits_minus_debits_is_closing() {
        let entries = [
            entry(kind::DEPOSIT, 50, 60),
            entry(kind::TRANSFER_OUT, 20, 40),
            entry(kind::TRANSFER_IN, 5, 45),
            entry(kind::DEBIT, 3, 42),
            entry(kind::CREDIT, 1, 43),
        ];
        let t = summarize(Decimal::from(10), &entries).unwrap();
        assert_eq!((t.credits, t.debits, t.closing), (Decimal::from(56), Decimal::from(23), Decimal::from(43)));
    }

    #[test]
    fn entries_that_do_not_add_up_are_refused() {
        assert!(summarize(Decimal::ZERO, &[entry(kind::DEPOSIT, 5, 6)]).is_err());
    }
}
