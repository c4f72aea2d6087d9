//! What a command must see to be decided: the executor loads exactly this,
//! for a whole batch, in a fixed number of statements.

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use super::{Command, system_account_id};
use crate::AccountKind;

/// What one command reads. The accounts of the holds and transactions it
/// names are locked with its own (they never change once written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// The accounts it reads and may change.
    pub accounts: Vec<Uuid>,
    /// The holds it names.
    pub holds: Vec<Uuid>,
    /// The posted transactions it names.
    pub transactions: Vec<Uuid>,
    pub debits: Debits,
}

impl Needs {
    /// The account a refusal is filed under (audit log).
    pub fn subject(&self) -> Option<Uuid> {
        self.accounts.first().copied()
    }
}

/// Whose debits over the rolling day (`debit_window_start`) it must see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Debits {
    /// Those of its accounts with a daily limit (a debit checks it).
    #[default]
    OfLimited,
    /// Those of every customer account it locks: it may give one a daily
    /// limit that a later command of the same batch checks.
    OfEvery,
}

/// Where the rolling day of the daily debit limit starts.
pub fn debit_window_start(now: DateTime<Utc>) -> DateTime<Utc> {
    now - TimeDelta::hours(24)
}

impl Command {
    pub fn needs(&self) -> Needs {
        let accounts = |ids: Vec<Uuid>| Needs { accounts: ids, ..Needs::default() };
        match self {
            Command::OpenAccount { .. } => Needs::default(),
            Command::Deposit { account, money, .. } | Command::Withdraw { account, money, .. } => {
                accounts(vec![*account, system_account_id(AccountKind::Settlement, money.currency)])
            }
            Command::Transfer { from, to, .. } | Command::PlaceHold { from, to, .. } => accounts(vec![*from, *to]),
            Command::Post { legs, .. } => accounts(legs.iter().map(|l| l.account).collect()),
            Command::Freeze { account, .. } | Command::Unfreeze { account, .. } | Command::Close { account } => {
                accounts(vec![*account])
            }
            Command::RecordScheduleRefusal(r) => accounts(vec![r.account]),
            Command::SetLimits { account, .. } => Needs { debits: Debits::OfEvery, ..accounts(vec![*account]) },
            Command::CaptureHold { hold, .. } | Command::VoidHold { hold } | Command::ExpireHold { hold } => {
                Needs { holds: vec![*hold], ..Needs::default() }
            }
            Command::Reverse { transaction, .. } => Needs { transactions: vec![*transaction], ..Needs::default() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::testing::*;

    #[test]
    fn a_deposit_needs_the_settlement_account_of_its_currency() {
        let account = Uuid::now_v7();
        let needs = Command::Deposit { account, money: dollars(1), description: String::new() }.needs();
        assert_eq!(needs.accounts, vec![account, settlement(usd())]);
        assert_eq!(needs.debits, Debits::OfLimited);
    }

    #[test]
    fn hold_and_reversal_commands_name_what_they_read() {
        let id = Uuid::now_v7();
        assert_eq!(Command::VoidHold { hold: id }.needs().holds, vec![id]);
        let reverse = Command::Reverse { transaction: id, reason: String::new() }.needs();
        assert_eq!((reverse.transactions, reverse.accounts), (vec![id], vec![]));
    }

    #[test]
    fn setting_limits_needs_every_debit_of_the_day() {
        let set = Command::SetLimits { account: Uuid::now_v7(), limits: Default::default(), currency: None }.needs();
        assert_eq!(set.debits, Debits::OfEvery);
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(now - debit_window_start(now), TimeDelta::hours(24));
    }
}
