//! Statement arithmetic, pure: opening + credits − debits = closing.

use bank_readmodel::{HistoryEntry, kind};
use rust_decimal::Decimal;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    pub credits: Decimal,
    pub debits: Decimal,
    pub closing: Decimal,
}

/// Totals over `entries` (oldest first) starting from `opening`. The closing
/// balance is the fold; `Err` if it disagrees with the entries' own
/// balance_after (a read model that does not add up is not shown as a statement).
pub fn summarize(opening: Decimal, entries: &[HistoryEntry]) -> Result<Totals, String> {
    let (mut credits, mut debits, mut balance) = (Decimal::ZERO, Decimal::ZERO, opening);
    for e in entries {
        match e.kind.as_str() {
            kind::DEPOSIT | kind::TRANSFER_IN | kind::CREDIT => {
                credits += e.amount;
                balance += e.amount;
            }
            kind::WITHDRAWAL | kind::TRANSFER_OUT | kind::DEBIT => {
                debits += e.amount;
                balance -= e.amount;
            }
            other => return Err(format!("unknown entry kind {other}")),
        }
        if balance != e.balance_after {
            return Err(format!("entry v{} says {}, the fold says {balance}", e.version, e.balance_after));
        }
    }
    Ok(Totals { credits, debits, closing: balance })
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
