//! The ledger's rules as commands and events: `handle(state, actor, command)`
//! decides which events a command produces or which rule refuses it, and
//! `apply(account, event)` is how an event changes an account. No I/O: the
//! command side runs exactly these for every command, in both execution modes.
//!
//! Each command family decides in a module of its own, with its rules stated
//! as given / when / then tests (`testing` is the harness). A command also
//! says what it must see (`Command::needs`), so the executor loads that for a
//! whole batch without knowing any command by name.
//!
//! Double entry: every money movement is a set of postings (account, signed
//! amount) summing to zero per currency. Money crosses the bank's boundary
//! only through the settlement account of its currency, and only at the hands
//! of a teller (or admin) or a service principal.

mod actor;
mod boundary;
mod debit_limits;
mod holds;
mod needs;
mod open;
mod post;
mod reversal;
mod standing_order;
mod status;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod transfer;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

pub use actor::{Actor, StandingClaims, TokenClaims};
pub use needs::{Debits, Needs, debit_window_start};
pub use post::{MAX_LEGS, check_legs};
pub use standing_order::RefusedOccurrence;

use crate::{
    Account, AccountKind, AccountStatus, Currency, DebitLimits, DomainError, Money,
    hold::{Hold, HoldState},
    money::at_scale,
};

/// The owner of the bank's own accounts. No token may carry this subject.
pub const BANK: Uuid = Uuid::nil();

/// The fixed id of a system account: the same in every environment, so
/// services and staff can name it without a lookup.
pub fn system_account_id(kind: AccountKind, currency: Currency) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x6a1c_3f0e_2b4d_4c1e_9d7a_5b8e_0f3c_2a10);
    Uuid::new_v5(&NAMESPACE, format!("{}:{}", kind.as_str(), currency.code()).as_bytes())
}

/// One leg of a posted transaction: a signed change to one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub account: Uuid,
    pub currency: Currency,
    /// Negative takes money out (debit), positive puts it in (credit).
    pub amount: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    OpenAccount {
        id: Uuid,
        kind: AccountKind,
        currency: Currency,
    },
    Deposit {
        account: Uuid,
        money: Money,
        description: String,
    },
    Withdraw {
        account: Uuid,
        money: Money,
        description: String,
    },
    Transfer {
        from: Uuid,
        to: Uuid,
        money: Money,
        description: String,
    },
    /// A balanced multi-leg transaction (internal services and staff).
    Post {
        legs: Vec<Posting>,
        description: String,
    },
    Freeze {
        account: Uuid,
        reason: String,
    },
    Unfreeze {
        account: Uuid,
        reason: String,
    },
    Close {
        account: Uuid,
    },
    /// Reserves `money` on `from` for `to` until `expires_at`.
    PlaceHold {
        id: Uuid,
        from: Uuid,
        to: Uuid,
        money: Money,
        expires_at: DateTime<Utc>,
        description: String,
    },
    /// Posts the transfer of `amount` (the whole hold if `None`) and
    /// releases the rest.
    CaptureHold {
        hold: Uuid,
        amount: Option<Money>,
    },
    VoidHold {
        hold: Uuid,
    },
    /// The expiry worker's release of a hold at its deadline (the bank only).
    ExpireHold {
        hold: Uuid,
    },
    /// Posts the opposite of a transaction's postings (staff).
    Reverse {
        transaction: Uuid,
        reason: String,
    },
    /// Sets an account's debit limits (staff), in `currency` (None when
    /// both are removed).
    SetLimits {
        account: Uuid,
        limits: DebitLimits,
        currency: Option<Currency>,
    },
    /// The scheduler's record that an occurrence of a scheduled transfer
    /// from this account was refused (the bank only).
    RecordScheduleRefusal(RefusedOccurrence),
}

/// What a posting meant to the account it changed (history, payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostingKind {
    Deposit,
    Withdrawal,
    TransferOut {
        to: Uuid,
    },
    TransferIn {
        from: Uuid,
    },
    /// A leg of a posted transaction, or the bank's side of a deposit or withdrawal.
    Leg,
    /// The opposite of the named transaction's posting on this account.
    Reversal {
        original: Uuid,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    AccountOpened {
        account: Uuid,
        owner: Uuid,
        kind: AccountKind,
        currency: Currency,
    },
    Posted {
        posting: Posting,
        before: Decimal,
        after: Decimal,
        kind: PostingKind,
        /// The transaction's other postings.
        counterparties: Vec<Posting>,
        description: String,
    },
    AccountFrozen {
        account: Uuid,
        reason: String,
    },
    AccountUnfrozen {
        account: Uuid,
        reason: String,
    },
    AccountClosed {
        account: Uuid,
    },
    /// On the source account: `hold.money` is reserved.
    HoldPlaced {
        hold: Hold,
        description: String,
    },
    /// On the source account: the hold ended in `state` and its whole
    /// amount is released (a capture posts its transfer in the same
    /// transaction).
    HoldReleased {
        account: Uuid,
        hold: Uuid,
        released: Decimal,
        state: HoldState,
        captured: Decimal,
    },
    LimitsSet {
        account: Uuid,
        limits: DebitLimits,
    },
    /// On the source account: an occurrence of a scheduled transfer was
    /// refused. Changes nothing but the version; its owner is told.
    ScheduledTransferRefused(RefusedOccurrence),
}

impl Event {
    pub fn account(&self) -> Uuid {
        match self {
            Event::AccountOpened { account, .. }
            | Event::AccountFrozen { account, .. }
            | Event::AccountUnfrozen { account, .. }
            | Event::AccountClosed { account }
            | Event::HoldReleased { account, .. }
            | Event::LimitsSet { account, .. } => *account,
            Event::Posted { posting, .. } => posting.account,
            Event::HoldPlaced { hold, .. } => hold.account,
            Event::ScheduledTransferRefused(r) => r.account,
        }
    }
}

/// The accounts a command may see: those it locked.
pub type Accounts = HashMap<Uuid, Account>;

/// A posted transaction as a reversal needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub postings: Vec<Posting>,
    /// This transaction is the reversal of that one.
    pub reverses: Option<Uuid>,
    /// This transaction was reversed by that one.
    pub reversed_by: Option<Uuid>,
}

/// What a command decides on: the accounts it locked, the holds and
/// transactions it names (read under those locks), and the clock.
#[derive(Debug, Clone)]
pub struct State {
    pub accounts: Accounts,
    pub holds: HashMap<Uuid, Hold>,
    pub transactions: HashMap<Uuid, Transaction>,
    pub now: DateTime<Utc>,
}

impl State {
    pub fn new(accounts: Accounts, now: DateTime<Utc>) -> Self {
        Self { accounts, holds: HashMap::new(), transactions: HashMap::new(), now }
    }
}

/// Limits from configuration that the rules enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest balance a customer account may hold.
    pub max_balance: Decimal,
}

/// Decides `command` by `actor` against `state`: the events it produces, or
/// the rule that refuses it. Every event's postings balance per currency.
pub fn handle(world: &State, actor: &Actor, command: &Command, limits: &Limits) -> Result<Vec<Event>, DomainError> {
    let d = Decision { world, actor, limits };
    let events = match command {
        Command::OpenAccount { id, kind, currency } => open::open(&d, *id, *kind, *currency)?,
        Command::Deposit { account, money, description } => boundary::deposit(&d, account, money, description)?,
        Command::Withdraw { account, money, description } => boundary::withdraw(&d, account, money, description)?,
        Command::Transfer { from, to, money, description } => transfer::transfer(&d, from, to, money, description)?,
        Command::Post { legs, description } => post::post(&d, legs, description)?,
        Command::Freeze { account, reason } => status::freeze(&d, account, reason)?,
        Command::Unfreeze { account, reason } => status::unfreeze(&d, account, reason)?,
        Command::Close { account } => status::close(&d, account)?,
        Command::PlaceHold { id, from, to, money, expires_at, description } => {
            holds::place(&d, *id, from, to, money, *expires_at, description)?
        }
        Command::CaptureHold { hold, amount } => holds::capture(&d, hold, amount.as_ref())?,
        Command::VoidHold { hold } => holds::void(&d, hold)?,
        Command::ExpireHold { hold } => holds::expire(&d, hold)?,
        Command::Reverse { transaction, reason } => reversal::reverse(&d, transaction, reason)?,
        Command::SetLimits { account, limits: new, currency } => {
            debit_limits::set(&d, account, new, currency.as_ref())?
        }
        Command::RecordScheduleRefusal(refused) => standing_order::record_refusal(&d, refused)?,
    };
    // Whatever the command, what it posts nets to zero per currency.
    let postings: Vec<Posting> = events
        .iter()
        .filter_map(|e| match e {
            Event::Posted { posting, .. } => Some(posting.clone()),
            _ => None,
        })
        .collect();
    check_balanced(&postings)?;
    Ok(events)
}

/// What every command family decides with.
struct Decision<'a> {
    world: &'a State,
    actor: &'a Actor,
    limits: &'a Limits,
}

impl Decision<'_> {
    fn account(&self, id: &Uuid) -> Result<&Account, DomainError> {
        self.world.accounts.get(id).ok_or(DomainError::AccountNotFound)
    }
}

/// The two postings of a deposit, withdrawal or transfer.
fn two_sided(
    (first, first_before, first_after, first_kind, delta): (&Account, Decimal, Decimal, PostingKind, Decimal),
    (second, second_before, second_after, second_kind): (&Account, Decimal, Decimal, PostingKind),
    currency: Currency,
    description: &str,
) -> Vec<Event> {
    let a = Posting { account: first.id, currency, amount: delta };
    let b = Posting { account: second.id, currency, amount: -delta };
    vec![
        Event::Posted {
            posting: a.clone(),
            before: first_before,
            after: first_after,
            kind: first_kind,
            counterparties: vec![b.clone()],
            description: description.to_owned(),
        },
        Event::Posted {
            posting: b,
            before: second_before,
            after: second_after,
            kind: second_kind,
            counterparties: vec![a],
            description: description.to_owned(),
        },
    ]
}

/// Postings sum to zero in each currency.
pub fn check_balanced(postings: &[Posting]) -> Result<(), DomainError> {
    for (currency, sum) in sums(postings.iter().map(|p| (p.currency, p.amount))) {
        if !sum.is_zero() {
            return Err(DomainError::Unbalanced { currency: currency.code().to_owned(), sum: at_scale(sum, currency) });
        }
    }
    Ok(())
}

/// Sum per currency (ordered by code, for stable reports).
pub fn sums(amounts: impl IntoIterator<Item = (Currency, Decimal)>) -> BTreeMap<Currency, Decimal> {
    let mut out = BTreeMap::new();
    for (c, a) in amounts {
        *out.entry(c).or_insert(Decimal::ZERO) += a;
    }
    out
}

/// How `event` changes its account (`None` before it was opened): the
/// account after it, one version later.
pub fn apply(account: Option<&Account>, event: &Event) -> Option<Account> {
    let mut next = match (account, event) {
        (None, Event::AccountOpened { account, owner, kind, currency }) => {
            return Some(Account {
                id: *account,
                owner_id: *owner,
                kind: *kind,
                currency: *currency,
                balance: Decimal::ZERO,
                status: AccountStatus::Active,
                version: 1,
                held: Decimal::ZERO,
                limits: DebitLimits::default(),
                debited_last_day: Decimal::ZERO,
            });
        }
        (Some(a), _) => a.clone(),
        (None, _) => return None,
    };
    match event {
        Event::AccountOpened { .. } => return None, // opened twice: not an event of this account
        Event::Posted { after, posting, .. } => {
            next.balance = *after;
            if posting.amount.is_sign_negative() {
                next.debited_last_day += -posting.amount;
            }
        }
        Event::HoldPlaced { hold, .. } => next.held += hold.money.amount,
        Event::HoldReleased { released, .. } => next.held -= *released,
        Event::LimitsSet { limits, .. } => next.limits = *limits,
        Event::AccountFrozen { .. } => next.status = AccountStatus::Frozen,
        Event::AccountUnfrozen { .. } => next.status = AccountStatus::Active,
        Event::AccountClosed { .. } => next.status = AccountStatus::Closed,
        Event::ScheduledTransferRefused(_) => {}
    }
    next.version += 1;
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn apply_bumps_the_version_and_ignores_events_of_unopened_accounts() {
        let mut g = given();
        let a = g.account(Uuid::now_v7(), 7);
        assert_eq!(g.state[&a].version, 2);
        let stray = Event::AccountClosed { account: Uuid::now_v7() };
        assert_eq!(apply(None, &stray), None);
        let reopen = Event::AccountOpened { account: a, owner: BANK, kind: AccountKind::Checking, currency: usd() };
        assert_eq!(apply(g.state.get(&a), &reopen), None);
    }

    mod properties {
        use super::*;
        use crate::Money;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Deposit(usize, i64),
            Withdraw(usize, i64),
            Transfer(usize, usize, i64),
            Fee(usize, i64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0..3usize, 1..10_000i64).prop_map(|(a, c)| Op::Deposit(a, c)),
                (0..3usize, 1..10_000i64).prop_map(|(a, c)| Op::Withdraw(a, c)),
                (0..3usize, 0..3usize, 1..10_000i64).prop_map(|(a, b, c)| Op::Transfer(a, b, c)),
                (0..3usize, 1..500i64).prop_map(|(a, c)| Op::Fee(a, c)),
            ]
        }

        proptest! {
            /// Whatever the commands, each currency sums to zero over all
            /// accounts and no customer balance goes negative.
            #[test]
            fn any_sequence_of_commands_conserves_money(ops in proptest::collection::vec(op(), 0..200)) {
                let mut g = given();
                let owner = customer();
                let accounts: Vec<Uuid> = (0..3).map(|_| g.account(owner.id, 0)).collect();
                let cents = |c: i64| Money::new(usd(), Decimal::new(c, 2));
                for op in ops {
                    let (actor, cmd) = match op {
                        Op::Deposit(a, c) => (teller(), Command::Deposit { account: accounts[a], money: cents(c), description: String::new() }),
                        Op::Withdraw(a, c) => (teller(), Command::Withdraw { account: accounts[a], money: cents(c), description: String::new() }),
                        Op::Transfer(a, b, c) => (owner.clone(), Command::Transfer { from: accounts[a], to: accounts[b], money: cents(c), description: String::new() }),
                        Op::Fee(a, c) => (service(), Command::Post {
                            legs: vec![
                                Posting { account: accounts[a], currency: usd(), amount: -Decimal::new(c, 2) },
                                Posting { account: fees(usd()), currency: usd(), amount: Decimal::new(c, 2) },
                            ],
                            description: String::new(),
                        }),
                    };
                    if let Ok(events) = g.when(&actor, cmd) {
                        g.then_apply(events);
                    }
                    prop_assert!(accounts.iter().all(|a| g.balance(*a) >= Decimal::ZERO));
                }
            }
        }
    }
}
