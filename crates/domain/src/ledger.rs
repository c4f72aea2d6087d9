//! The ledger's rules as commands and events: `handle(state, actor, command)`
//! decides which events a command produces or which rule refuses it, and
//! `apply(account, event)` is how an event changes an account. No I/O: the
//! command side runs exactly these for every command, in both execution modes,
//! and the tests below state every rule as given / when / then.
//!
//! Double entry: every money movement is a set of postings (account, signed
//! amount) summing to zero per currency. Money crosses the bank's boundary
//! only through the settlement account of its currency, and only at the hands
//! of a teller (or admin) or a service principal.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::{
    Account, AccountKind, AccountStatus, Currency, DebitLimits, DomainError, Money,
    account::transfer,
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

/// Who is acting, as the rules need it (from a verified token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub id: Uuid,
    /// KYC-active.
    pub active: bool,
    /// Teller, or admin acting as one: staff who move money across the boundary.
    pub teller: bool,
    pub admin: bool,
    /// An internal service with credentials of its own, not a customer.
    pub service: bool,
}

impl Actor {
    /// Staff or a service, and in good standing: a suspended or unapproved
    /// teller moves no money.
    fn ensure_may_cross_boundary(&self, what: &'static str) -> Result<(), DomainError> {
        if !(self.teller || self.service) {
            return Err(DomainError::NotPermitted(what));
        }
        if !self.active {
            return Err(DomainError::NotPermitted("a suspended or unapproved user moves no money"));
        }
        Ok(())
    }

    fn ensure_customer(&self) -> Result<(), DomainError> {
        if self.service {
            return Err(DomainError::NotPermitted("a service principal is not a customer"));
        }
        if self.active { Ok(()) } else { Err(DomainError::CustomerNotActive) }
    }
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
}

impl Command {
    /// The hold a command names, whose accounts it locks.
    pub fn hold(&self) -> Option<Uuid> {
        match self {
            Command::CaptureHold { hold, .. } | Command::VoidHold { hold } | Command::ExpireHold { hold } => {
                Some(*hold)
            }
            _ => None,
        }
    }

    /// The accounts the command reads and may change: lock these, in any
    /// order. A command naming a hold or a transaction locks that one's
    /// accounts, which the executor looks up (they never change).
    pub fn accounts(&self) -> Vec<Uuid> {
        match self {
            Command::OpenAccount { .. } => vec![],
            Command::Deposit { account, money, .. } | Command::Withdraw { account, money, .. } => {
                vec![*account, system_account_id(AccountKind::Settlement, money.currency)]
            }
            Command::Transfer { from, to, .. } => vec![*from, *to],
            Command::Post { legs, .. } => legs.iter().map(|l| l.account).collect(),
            Command::Freeze { account, .. }
            | Command::Unfreeze { account, .. }
            | Command::Close { account }
            | Command::SetLimits { account, .. } => vec![*account],
            Command::PlaceHold { from, to, .. } => vec![*from, *to],
            Command::CaptureHold { .. }
            | Command::VoidHold { .. }
            | Command::ExpireHold { .. }
            | Command::Reverse { .. } => vec![],
        }
    }

    /// The account a refusal is filed under (audit log).
    pub fn subject(&self) -> Option<Uuid> {
        self.accounts().first().copied()
    }
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
    let state = &world.accounts;
    let find = |id: &Uuid| state.get(id).ok_or(DomainError::AccountNotFound);
    let events = match command {
        Command::OpenAccount { id, kind, currency } => {
            actor.ensure_customer()?;
            if kind.is_system() {
                return Err(DomainError::NotPermitted("only the bank opens its own accounts"));
            }
            vec![Event::AccountOpened { account: *id, owner: actor.id, kind: *kind, currency: *currency }]
        }
        Command::Deposit { account, money, description } | Command::Withdraw { account, money, description } => {
            let deposit = matches!(command, Command::Deposit { .. });
            // Checked before the account is looked up: a customer learns nothing.
            actor
                .ensure_may_cross_boundary("only tellers and service principals move money into or out of the bank")?;
            let customer = find(account)?;
            if customer.kind.is_system() {
                return Err(DomainError::NotPermitted("deposits and withdrawals are for customer accounts"));
            }
            if customer.owner_id == actor.id {
                return Err(DomainError::OwnAccount);
            }
            let settlement_id = system_account_id(AccountKind::Settlement, money.currency);
            let delta = if deposit { money.amount } else { -money.amount };
            let change =
                if deposit { customer.deposit(money, limits.max_balance)? } else { customer.withdraw(money)? };
            let settlement = state
                .get(&settlement_id)
                .ok_or_else(|| DomainError::SystemAccountMissing(money.currency.code().to_owned()))?;
            let bank_side = settlement.post(money.currency, -delta, limits.max_balance).map_err(|cause| {
                DomainError::SettlementRefused { currency: money.currency.code().to_owned(), cause: Box::new(cause) }
            })?;
            if !deposit {
                customer.check_debit_limits(money.amount)?;
            }
            let kind = if deposit { PostingKind::Deposit } else { PostingKind::Withdrawal };
            two_sided(
                (customer, change.before, change.after, kind, delta),
                (settlement, bank_side.before, bank_side.after, PostingKind::Leg),
                money.currency,
                description,
            )
        }
        Command::Transfer { from, to, money, description } => {
            let source = find(from)?;
            if source.owner_id != actor.id {
                return Err(DomainError::NotOwner);
            }
            let destination = find(to)?;
            actor.ensure_customer()?;
            if destination.kind.is_system() {
                return Err(DomainError::NotPermitted("the bank's own accounts take postings from staff only"));
            }
            let (debit, credit) = transfer(source, destination, money, limits.max_balance)?;
            source.check_debit_limits(money.amount)?;
            two_sided(
                (source, debit.before, debit.after, PostingKind::TransferOut { to: *to }, -money.amount),
                (destination, credit.before, credit.after, PostingKind::TransferIn { from: *from }),
                money.currency,
                description,
            )
        }
        Command::Post { legs, description } => {
            actor.ensure_may_cross_boundary("only service principals and staff post transactions")?;
            check_legs(legs)?;
            let mut events = Vec::with_capacity(legs.len());
            for (index, leg) in legs.iter().enumerate() {
                let in_leg = |cause: DomainError| DomainError::Leg { index, cause: Box::new(cause) };
                let account = find(&leg.account).map_err(in_leg)?;
                if account.owner_id == actor.id {
                    return Err(in_leg(DomainError::OwnAccount));
                }
                let change = account.post(leg.currency, leg.amount, limits.max_balance).map_err(in_leg)?;
                if leg.amount.is_sign_negative() && !account.kind.is_system() {
                    account.check_debit_limits(-leg.amount).map_err(in_leg)?;
                }
                events.push(Event::Posted {
                    posting: leg.clone(),
                    before: change.before,
                    after: change.after,
                    kind: PostingKind::Leg,
                    counterparties: legs.iter().filter(|l| l.account != leg.account).cloned().collect(),
                    description: description.clone(),
                });
            }
            events
        }
        Command::Freeze { account, reason } | Command::Unfreeze { account, reason } => {
            if !actor.admin {
                return Err(DomainError::NotPermitted("only an admin may freeze or unfreeze accounts"));
            }
            let a = find(account)?;
            if matches!(command, Command::Freeze { .. }) {
                a.freeze()?;
                vec![Event::AccountFrozen { account: *account, reason: reason.clone() }]
            } else {
                a.unfreeze()?;
                vec![Event::AccountUnfrozen { account: *account, reason: reason.clone() }]
            }
        }
        Command::Close { account } => {
            let a = find(account)?;
            if a.owner_id != actor.id {
                return Err(DomainError::NotOwner);
            }
            a.close()?;
            vec![Event::AccountClosed { account: *account }]
        }
        Command::PlaceHold { id, from, to, money, expires_at, description } => {
            let source = find(from)?;
            if source.owner_id != actor.id {
                return Err(DomainError::NotOwner);
            }
            actor.ensure_customer()?;
            let destination = find(to)?;
            if destination.kind.is_system() {
                return Err(DomainError::NotPermitted("the bank's own accounts take postings from staff only"));
            }
            if from == to {
                return Err(DomainError::SameAccount);
            }
            source.reserve(money)?;
            destination.ensure_can_receive(money)?;
            let hold = Hold {
                id: *id,
                account: *from,
                to: *to,
                money: *money,
                state: HoldState::Open,
                expires_at: *expires_at,
                placed_by: actor.id,
            };
            vec![Event::HoldPlaced { hold, description: description.clone() }]
        }
        Command::CaptureHold { hold, amount } => {
            let hold = party_to(world, actor, hold)?;
            if !(actor.teller || actor.service) {
                // The customer who placed it: a suspended one moves no money
                // (but may still void, which moves none).
                actor.ensure_customer()?;
            }
            hold.ensure_open(world.now)?;
            let money = amount.unwrap_or(hold.money);
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
            if hold.placed_by != actor.id && find(&hold.to)?.owner_id == actor.id {
                return Err(DomainError::OwnAccount);
            }
            let release = released(hold, HoldState::Captured, money.amount);
            // The transfer is decided on the source as the release leaves it.
            let source = apply(Some(find(&hold.account)?), &release).ok_or(DomainError::AccountNotFound)?;
            let destination = find(&hold.to)?;
            let (debit, credit) = transfer(&source, destination, &money, limits.max_balance)?;
            source.check_debit_limits(money.amount)?;
            let mut events = vec![release];
            events.extend(two_sided(
                (&source, debit.before, debit.after, PostingKind::TransferOut { to: hold.to }, -money.amount),
                (destination, credit.before, credit.after, PostingKind::TransferIn { from: hold.account }),
                money.currency,
                &format!("capture of hold {}", hold.id),
            ));
            events
        }
        Command::VoidHold { hold } => {
            let hold = party_to(world, actor, hold)?;
            hold.ensure_open(world.now)?;
            vec![released(hold, HoldState::Voided, Decimal::ZERO)]
        }
        Command::ExpireHold { hold } => {
            if actor.id != BANK {
                return Err(DomainError::NotPermitted("holds expire by themselves"));
            }
            let hold = world.holds.get(hold).ok_or(DomainError::HoldNotFound)?;
            if hold.state != HoldState::Open {
                return Err(DomainError::HoldEnded(hold.state));
            }
            if world.now < hold.expires_at {
                return Err(DomainError::HoldNotDue);
            }
            vec![released(hold, HoldState::Expired, Decimal::ZERO)]
        }
        Command::Reverse { transaction, reason } => {
            if !actor.teller {
                return Err(DomainError::NotPermitted("only staff reverse transactions"));
            }
            actor.ensure_may_cross_boundary("only staff reverse transactions")?;
            let original = world.transactions.get(transaction).ok_or(DomainError::TransactionNotFound)?;
            if let Some(original) = original.reverses {
                return Err(DomainError::ReversalNotReversible { original });
            }
            if let Some(by) = original.reversed_by {
                return Err(DomainError::AlreadyReversed { by });
            }
            let opposite: Vec<Posting> =
                original.postings.iter().map(|p| Posting { amount: -p.amount, ..p.clone() }).collect();
            let mut events = Vec::with_capacity(opposite.len());
            for posting in &opposite {
                let account = find(&posting.account)?;
                if account.owner_id == actor.id {
                    return Err(DomainError::OwnAccount);
                }
                // Policy: a reversal never overdraws a customer (nor takes
                // what holds reserve); staff settle the shortfall first.
                if posting.amount.is_sign_negative()
                    && !account.kind.may_go_negative()
                    && account.available() < -posting.amount
                {
                    return Err(DomainError::ReversalWouldOverdraw {
                        account: account.id,
                        available: at_scale(account.available(), account.currency),
                    });
                }
                let change = account.post(posting.currency, posting.amount, limits.max_balance)?;
                events.push(Event::Posted {
                    posting: posting.clone(),
                    before: change.before,
                    after: change.after,
                    kind: PostingKind::Reversal { original: *transaction },
                    counterparties: opposite.iter().filter(|p| p.account != posting.account).cloned().collect(),
                    description: reason.clone(),
                });
            }
            events
        }
        Command::SetLimits { account, limits: new, currency } => {
            if !actor.teller {
                return Err(DomainError::NotPermitted("only staff set limits"));
            }
            actor.ensure_may_cross_boundary("only staff set limits")?;
            let a = find(account)?;
            if a.kind.is_system() {
                return Err(DomainError::NotPermitted("the bank's own accounts have no customer limits"));
            }
            if a.owner_id == actor.id {
                return Err(DomainError::OwnAccount);
            }
            if let Some(c) = currency
                && *c != a.currency
            {
                return Err(DomainError::CurrencyMismatch {
                    account: a.currency.code().to_owned(),
                    requested: c.code().to_owned(),
                });
            }
            vec![Event::LimitsSet { account: *account, limits: *new }]
        }
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

/// The hold a capture or void names, if the actor is a party to it: whoever
/// placed it, or staff and services (a merchant's acquirer).
fn party_to<'a>(world: &'a State, actor: &Actor, id: &Uuid) -> Result<&'a Hold, DomainError> {
    let hold = world.holds.get(id).ok_or(DomainError::HoldNotFound)?;
    if hold.placed_by == actor.id || ((actor.teller || actor.service) && actor.active) {
        Ok(hold)
    } else {
        Err(DomainError::NotHoldParty)
    }
}

fn released(hold: &Hold, state: HoldState, captured: Decimal) -> Event {
    Event::HoldReleased { account: hold.account, hold: hold.id, released: hold.money.amount, state, captured }
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

/// Most legs one posted transaction may have: as many accounts as a
/// consistency token names, so its response reads back.
pub const MAX_LEGS: usize = crate::consistency::MAX_ENTRIES;

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
    }
    next.version += 1;
    Some(next)
}

#[cfg(test)]
mod tests {
    //! Given accounts, when an actor sends a command, then these events (or
    //! this refusal). One test per rule.

    use super::*;

    fn usd() -> Currency {
        Currency::from_code("USD").unwrap()
    }

    fn eur() -> Currency {
        Currency::from_code("EUR").unwrap()
    }

    fn dollars(n: i64) -> Money {
        Money::new(usd(), Decimal::from(n))
    }

    const LIMITS: Limits = Limits { max_balance: Decimal::from_parts(1_000_000, 0, 0, false, 0) };

    /// A world of accounts, built by applying events (the only way state changes).
    struct Given {
        state: Accounts,
        holds: HashMap<Uuid, Hold>,
        transactions: HashMap<Uuid, Transaction>,
        now: DateTime<Utc>,
    }

    fn given() -> Given {
        let mut g = Given {
            state: Accounts::new(),
            holds: HashMap::new(),
            transactions: HashMap::new(),
            now: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        };
        for kind in AccountKind::SYSTEM {
            for c in [usd(), eur()] {
                g.record(Event::AccountOpened { account: system_account_id(kind, c), owner: BANK, kind, currency: c });
            }
        }
        g
    }

    impl Given {
        fn record(&mut self, e: Event) {
            match &e {
                Event::HoldPlaced { hold, .. } => {
                    self.holds.insert(hold.id, hold.clone());
                }
                Event::HoldReleased { hold, state, .. } => self.holds.get_mut(hold).unwrap().state = *state,
                _ => {}
            }
            let id = e.account();
            let next = apply(self.state.get(&id), &e).expect("a valid event");
            self.state.insert(id, next);
        }

        /// A customer's account holding `balance` dollars (funded from settlement).
        fn account(&mut self, owner: Uuid, balance: i64) -> Uuid {
            let id = Uuid::now_v7();
            self.record(Event::AccountOpened { account: id, owner, kind: AccountKind::Checking, currency: usd() });
            if balance > 0 {
                let events = self
                    .when(
                        &teller(),
                        Command::Deposit { account: id, money: dollars(balance), description: String::new() },
                    )
                    .unwrap();
                events.into_iter().for_each(|e| self.record(e));
            }
            id
        }

        fn status(&mut self, id: Uuid, e: Event) {
            assert_eq!(e.account(), id);
            self.record(e);
        }

        fn when(&self, actor: &Actor, command: Command) -> Result<Vec<Event>, DomainError> {
            let world = State {
                accounts: self.state.clone(),
                holds: self.holds.clone(),
                transactions: self.transactions.clone(),
                now: self.now,
            };
            handle(&world, actor, &command, &LIMITS)
        }

        fn balance(&self, id: Uuid) -> Decimal {
            self.state[&id].balance
        }

        /// Then: apply the events and check every currency still sums to zero.
        fn then_apply(&mut self, events: Vec<Event>) {
            events.into_iter().for_each(|e| self.record(e));
            for (c, sum) in sums(self.state.values().map(|a| (a.currency, a.balance))) {
                assert!(sum.is_zero(), "{} sums to {sum}", c.code());
            }
        }
    }

    fn actor(teller: bool, admin: bool, service: bool) -> Actor {
        Actor { id: Uuid::now_v7(), active: true, teller: teller || admin, admin, service }
    }

    fn customer() -> Actor {
        actor(false, false, false)
    }

    fn teller() -> Actor {
        actor(true, false, false)
    }

    fn service() -> Actor {
        actor(false, false, true)
    }

    fn settlement(c: Currency) -> Uuid {
        system_account_id(AccountKind::Settlement, c)
    }

    fn fees(c: Currency) -> Uuid {
        system_account_id(AccountKind::FeeIncome, c)
    }

    fn leg(account: Uuid, amount: i64) -> Posting {
        Posting { account, currency: usd(), amount: Decimal::from(amount) }
    }

    fn leg_error(e: DomainError) -> (usize, DomainError) {
        match e {
            DomainError::Leg { index, cause } => (index, *cause),
            other => panic!("not a leg refusal: {other:?}"),
        }
    }

    #[test]
    fn a_teller_deposit_credits_the_customer_and_debits_settlement() {
        let mut g = given();
        let acc = g.account(Uuid::now_v7(), 0);
        let events = g
            .when(&teller(), Command::Deposit { account: acc, money: dollars(25), description: "cash".into() })
            .unwrap();
        assert_eq!(events.len(), 2);
        match &events[0] {
            Event::Posted { posting, kind, counterparties, .. } => {
                assert_eq!((posting.account, posting.amount, kind), (acc, Decimal::from(25), &PostingKind::Deposit));
                assert_eq!(counterparties, &vec![leg(settlement(usd()), -25)]);
            }
            other => panic!("{other:?}"),
        }
        g.then_apply(events);
        assert_eq!((g.balance(acc), g.balance(settlement(usd()))), (Decimal::from(25), Decimal::from(-25)));
    }

    #[test]
    fn a_service_principal_withdraws_into_settlement() {
        let mut g = given();
        let acc = g.account(Uuid::now_v7(), 40);
        let events =
            g.when(&service(), Command::Withdraw { account: acc, money: dollars(15), description: String::new() });
        g.then_apply(events.unwrap());
        assert_eq!((g.balance(acc), g.balance(settlement(usd()))), (Decimal::from(25), Decimal::from(-25)));
    }

    #[test]
    fn customers_may_not_deposit_or_withdraw_even_into_their_own_account() {
        let mut g = given();
        let me = customer();
        let acc = g.account(me.id, 10);
        let deposit = Command::Deposit { account: acc, money: dollars(1), description: String::new() };
        let withdraw = Command::Withdraw { account: acc, money: dollars(1), description: String::new() };
        assert!(matches!(g.when(&me, deposit), Err(DomainError::NotPermitted(_))));
        assert!(matches!(g.when(&me, withdraw), Err(DomainError::NotPermitted(_))));
        // Not even the existence of an account leaks to them.
        let unknown = Command::Deposit { account: Uuid::now_v7(), money: dollars(1), description: String::new() };
        assert!(matches!(g.when(&me, unknown), Err(DomainError::NotPermitted(_))));
    }

    #[test]
    fn a_suspended_teller_moves_no_money() {
        let mut g = given();
        let acc = g.account(Uuid::now_v7(), 10);
        let mut suspended = teller();
        suspended.active = false;
        let deposit = Command::Deposit { account: acc, money: dollars(1), description: String::new() };
        assert!(matches!(g.when(&suspended, deposit), Err(DomainError::NotPermitted(_))));
        let post = Command::Post { legs: vec![leg(acc, -1), leg(fees(usd()), 1)], description: String::new() };
        assert!(matches!(g.when(&suspended, post), Err(DomainError::NotPermitted(_))));
    }

    #[test]
    fn a_withdrawal_never_takes_a_customer_below_zero() {
        let mut g = given();
        let acc = g.account(Uuid::now_v7(), 10);
        let cmd = Command::Withdraw { account: acc, money: dollars(11), description: String::new() };
        assert_eq!(g.when(&teller(), cmd), Err(DomainError::InsufficientFunds));
    }

    #[test]
    fn a_deposit_in_another_currency_is_a_mismatch() {
        let mut g = given();
        let acc = g.account(Uuid::now_v7(), 0);
        let cmd = Command::Deposit { account: acc, money: Money::new(eur(), Decimal::ONE), description: String::new() };
        assert_eq!(g.when(&teller(), cmd).unwrap_err().reason(), "CURRENCY_MISMATCH");
    }

    #[test]
    fn deposits_into_system_accounts_are_not_permitted() {
        let g = given();
        let cmd = Command::Deposit { account: fees(usd()), money: dollars(1), description: String::new() };
        assert!(matches!(g.when(&teller(), cmd), Err(DomainError::NotPermitted(_))));
    }

    #[test]
    fn without_a_settlement_account_no_money_crosses_the_boundary() {
        let mut g = given();
        let acc = g.account(Uuid::now_v7(), 0);
        g.state.remove(&settlement(usd()));
        let cmd = Command::Deposit { account: acc, money: dollars(1), description: String::new() };
        assert_eq!(g.when(&teller(), cmd), Err(DomainError::SystemAccountMissing("USD".into())));
    }

    #[test]
    fn a_frozen_settlement_account_stops_deposits() {
        let mut g = given();
        let acc = g.account(Uuid::now_v7(), 0);
        g.status(settlement(usd()), Event::AccountFrozen { account: settlement(usd()), reason: String::new() });
        let cmd = Command::Deposit { account: acc, money: dollars(1), description: String::new() };
        let err = g.when(&teller(), cmd).unwrap_err();
        // The bank's state, not the request's: answered UNAVAILABLE, not kept under the key.
        assert_eq!(
            err,
            DomainError::SettlementRefused { currency: "USD".into(), cause: Box::new(DomainError::AccountFrozen) }
        );
        assert_eq!(err.class(), crate::Refusal::Unavailable);
    }

    #[test]
    fn staff_do_not_move_money_on_their_own_accounts() {
        let mut g = given();
        let me = teller();
        let mine = g.account(me.id, 10);
        let deposit = Command::Deposit { account: mine, money: dollars(1), description: String::new() };
        assert_eq!(g.when(&me, deposit), Err(DomainError::OwnAccount));
        let other = g.account(Uuid::now_v7(), 10);
        let post = Command::Post { legs: vec![leg(other, -1), leg(mine, 1)], description: String::new() };
        assert_eq!(g.when(&me, post).unwrap_err().reason(), "OWN_ACCOUNT");
        assert_eq!(DomainError::OwnAccount.class(), crate::Refusal::PermissionDenied);
    }

    #[test]
    fn a_transfer_debits_the_source_and_credits_the_destination() {
        let mut g = given();
        let me = customer();
        let (a, b) = (g.account(me.id, 30), g.account(Uuid::now_v7(), 0));
        let events = g.when(&me, Command::Transfer { from: a, to: b, money: dollars(12), description: String::new() });
        g.then_apply(events.unwrap());
        assert_eq!((g.balance(a), g.balance(b)), (Decimal::from(18), Decimal::from(12)));
    }

    #[test]
    fn a_transfer_from_someone_elses_account_is_not_owner() {
        let mut g = given();
        let (a, b) = (g.account(Uuid::now_v7(), 30), g.account(Uuid::now_v7(), 0));
        let cmd = Command::Transfer { from: a, to: b, money: dollars(1), description: String::new() };
        assert_eq!(g.when(&customer(), cmd), Err(DomainError::NotOwner));
    }

    #[test]
    fn customers_cannot_post_to_the_banks_accounts() {
        let mut g = given();
        let me = customer();
        let a = g.account(me.id, 30);
        let cmd = Command::Transfer { from: a, to: fees(usd()), money: dollars(1), description: String::new() };
        assert!(matches!(g.when(&me, cmd), Err(DomainError::NotPermitted(_))));
        let close = Command::Close { account: settlement(usd()) };
        assert_eq!(g.when(&me, close), Err(DomainError::NotOwner));
        let open = Command::OpenAccount { id: Uuid::now_v7(), kind: AccountKind::Settlement, currency: usd() };
        assert!(matches!(g.when(&me, open), Err(DomainError::NotPermitted(_))));
    }

    #[test]
    fn a_pending_customer_moves_nothing_and_a_service_owns_nothing() {
        let mut g = given();
        let mut pending = customer();
        pending.active = false;
        let (a, b) = (g.account(pending.id, 30), g.account(Uuid::now_v7(), 0));
        let cmd = Command::Transfer { from: a, to: b, money: dollars(1), description: String::new() };
        assert_eq!(g.when(&pending, cmd), Err(DomainError::CustomerNotActive));
        let open = Command::OpenAccount { id: Uuid::now_v7(), kind: AccountKind::Checking, currency: usd() };
        assert_eq!(g.when(&pending, open.clone()), Err(DomainError::CustomerNotActive));
        assert!(matches!(g.when(&service(), open), Err(DomainError::NotPermitted(_))));
    }

    #[test]
    fn a_transfer_to_an_unknown_account_is_not_found() {
        let mut g = given();
        let me = customer();
        let a = g.account(me.id, 30);
        let cmd = Command::Transfer { from: a, to: Uuid::now_v7(), money: dollars(1), description: String::new() };
        assert_eq!(g.when(&me, cmd), Err(DomainError::AccountNotFound));
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
    fn customers_may_not_post_transactions() {
        let mut g = given();
        let me = customer();
        let a = g.account(me.id, 10);
        let cmd = Command::Post { legs: vec![leg(a, -1), leg(fees(usd()), 1)], description: String::new() };
        assert!(matches!(g.when(&me, cmd), Err(DomainError::NotPermitted(_))));
    }

    #[test]
    fn an_unbalanced_transaction_is_refused() {
        let mut g = given();
        let a = g.account(Uuid::now_v7(), 10);
        let cmd = Command::Post { legs: vec![leg(a, -2), leg(fees(usd()), 1)], description: String::new() };
        assert_eq!(
            g.when(&service(), cmd),
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
        let err = g.when(&service(), Command::Post { legs, description: String::new() }).unwrap_err();
        assert_eq!(err.reason(), "UNBALANCED");
    }

    #[test]
    fn a_duplicate_leg_is_named() {
        let mut g = given();
        let a = g.account(Uuid::now_v7(), 10);
        let legs = vec![leg(a, -1), leg(fees(usd()), 2), leg(a, -1)];
        let (index, cause) =
            leg_error(g.when(&service(), Command::Post { legs, description: String::new() }).unwrap_err());
        assert_eq!((index, cause), (2, DomainError::DuplicateLeg { first: 0 }));
    }

    #[test]
    fn a_leg_on_a_closed_account_is_named() {
        let mut g = given();
        let owner = customer();
        let (a, closed) = (g.account(Uuid::now_v7(), 10), g.account(owner.id, 0));
        g.then_apply(g.when(&owner, Command::Close { account: closed }).unwrap());
        let legs = vec![leg(a, -1), leg(closed, 1)];
        let (index, cause) =
            leg_error(g.when(&teller(), Command::Post { legs, description: String::new() }).unwrap_err());
        assert_eq!((index, cause), (1, DomainError::AccountClosed));
    }

    #[test]
    fn a_leg_in_the_wrong_currency_is_named() {
        let mut g = given();
        let a = g.account(Uuid::now_v7(), 10);
        let legs = vec![Posting { account: settlement(eur()), currency: usd(), amount: Decimal::ONE }, leg(a, -1)];
        let (index, cause) =
            leg_error(g.when(&service(), Command::Post { legs, description: String::new() }).unwrap_err());
        assert_eq!((index, cause.reason()), (0, "CURRENCY_MISMATCH"));
    }

    #[test]
    fn a_leg_may_not_overdraw_a_customer_or_name_a_missing_account() {
        let mut g = given();
        let a = g.account(Uuid::now_v7(), 10);
        let over = vec![leg(fees(usd()), 11), leg(a, -11)];
        let (index, cause) =
            leg_error(g.when(&service(), Command::Post { legs: over, description: String::new() }).unwrap_err());
        assert_eq!((index, cause), (1, DomainError::InsufficientFunds));
        let missing = vec![leg(a, -1), leg(Uuid::now_v7(), 1)];
        let (index, cause) =
            leg_error(g.when(&service(), Command::Post { legs: missing, description: String::new() }).unwrap_err());
        assert_eq!((index, cause), (1, DomainError::AccountNotFound));
    }

    #[test]
    fn a_transaction_has_two_to_eight_nonzero_legs() {
        let mut g = given();
        let a = g.account(Uuid::now_v7(), 10);
        let one = Command::Post { legs: vec![leg(a, 0)], description: String::new() };
        assert_eq!(g.when(&service(), one), Err(DomainError::LegCount { max: MAX_LEGS }));
        let zero = Command::Post { legs: vec![leg(a, 0), leg(fees(usd()), 0)], description: String::new() };
        assert_eq!(leg_error(g.when(&service(), zero).unwrap_err()), (0, DomainError::ZeroPosting));
    }

    #[test]
    fn settlement_goes_negative_but_fee_income_does_not() {
        let mut g = given();
        let a = g.account(Uuid::now_v7(), 0);
        let legs = vec![leg(fees(usd()), -1), leg(a, 1)];
        let (index, cause) =
            leg_error(g.when(&teller(), Command::Post { legs, description: String::new() }).unwrap_err());
        assert_eq!((index, cause), (0, DomainError::InsufficientFunds));
    }

    #[test]
    fn only_admins_freeze_and_only_owners_close() {
        let mut g = given();
        let owner = customer();
        let a = g.account(owner.id, 0);
        let freeze = Command::Freeze { account: a, reason: "review".into() };
        assert!(matches!(g.when(&teller(), freeze.clone()), Err(DomainError::NotPermitted(_))));
        let admin = actor(false, true, false);
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
    fn a_deposit_past_the_balance_limit_is_refused() {
        let mut g = given();
        let a = g.account(Uuid::now_v7(), 999_999);
        let cmd = Command::Deposit { account: a, money: dollars(2), description: String::new() };
        assert_eq!(g.when(&teller(), cmd), Err(DomainError::BalanceLimitExceeded));
    }

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

    // ---- holds ----

    fn hold_cmd(id: Uuid, from: Uuid, to: Uuid, amount: i64, now: DateTime<Utc>) -> Command {
        Command::PlaceHold {
            id,
            from,
            to,
            money: dollars(amount),
            expires_at: now + chrono::Duration::minutes(10),
            description: String::new(),
        }
    }

    impl Given {
        fn available(&self, id: Uuid) -> Decimal {
            self.state[&id].available()
        }

        /// A hold of `amount` from `from` (owned by `owner`) to `to`, placed.
        fn hold(&mut self, owner: &Actor, from: Uuid, to: Uuid, amount: i64) -> Uuid {
            let id = Uuid::now_v7();
            let events = self.when(owner, hold_cmd(id, from, to, amount, self.now)).unwrap();
            self.then_apply(events);
            id
        }

        /// Runs a money command and files it as a transaction a reversal can name.
        fn transaction(&mut self, actor: &Actor, command: Command) -> Uuid {
            let events = self.when(actor, command).unwrap();
            let postings = events
                .iter()
                .filter_map(|e| match e {
                    Event::Posted { posting, .. } => Some(posting.clone()),
                    _ => None,
                })
                .collect();
            self.then_apply(events);
            let id = Uuid::now_v7();
            self.transactions.insert(id, Transaction { postings, reverses: None, reversed_by: None });
            id
        }
    }

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
        let events = g.when(&me, Command::VoidHold { hold }).unwrap();
        g.then_apply(events);
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
                    (Actor { id: BANK, ..service() }, Command::ExpireHold { hold })
                }
            };
            let events = g.when(&ending.0, ending.1).unwrap();
            g.then_apply(events);
            for again in [Command::CaptureHold { hold, amount: None }, Command::VoidHold { hold }] {
                let refusal = g.when(&me, again).unwrap_err();
                assert_eq!(refusal, DomainError::HoldEnded(end));
                assert_eq!(refusal.reason(), end.ended_reason());
            }
            let expire = g.when(&Actor { id: BANK, ..service() }, Command::ExpireHold { hold });
            assert_eq!(expire, Err(DomainError::HoldEnded(end)));
        }
    }

    #[test]
    fn a_hold_past_its_deadline_is_expired_before_the_worker_writes_so() {
        let mut g = given();
        let me = customer();
        let (from, to) = (g.account(me.id, 100), g.account(Uuid::now_v7(), 0));
        let hold = g.hold(&me, from, to, 30);
        let bank = Actor { id: BANK, ..service() };
        assert_eq!(g.when(&bank, Command::ExpireHold { hold }), Err(DomainError::HoldNotDue));
        assert_eq!(DomainError::HoldNotDue.class(), crate::Refusal::Unavailable, "not kept: the worker asks again");
        g.now += chrono::Duration::minutes(10);
        let capture = g.when(&me, Command::CaptureHold { hold, amount: None });
        assert_eq!(capture, Err(DomainError::HoldEnded(HoldState::Expired)));
        // Nobody but the bank expires a hold.
        assert!(matches!(g.when(&teller(), Command::ExpireHold { hold }), Err(DomainError::NotPermitted(_))));
        let events = g.when(&bank, Command::ExpireHold { hold }).unwrap();
        g.then_apply(events);
        assert_eq!(g.available(from), Decimal::from(100));
    }

    #[test]
    fn strangers_do_not_learn_of_a_hold_and_captures_stay_within_it() {
        let mut g = given();
        let me = customer();
        let (from, to) = (g.account(me.id, 100), g.account(Uuid::now_v7(), 0));
        let hold = g.hold(&me, from, to, 30);
        assert_eq!(g.when(&customer(), Command::VoidHold { hold }), Err(DomainError::NotHoldParty));
        assert_eq!(DomainError::NotHoldParty.class(), crate::Refusal::NotFound { audited: true });
        let more = Command::CaptureHold { hold, amount: Some(dollars(31)) };
        let refused = g.when(&me, more).unwrap_err();
        assert!(matches!(refused, DomainError::CaptureExceedsHold { .. }));
        assert_eq!(refused.to_string(), "the capture of 31.00 exceeds the 30.00 held");
        // Staff and services may capture (a merchant's acquirer does), but not into their own account.
        assert!(g.when(&service(), Command::CaptureHold { hold, amount: None }).is_ok());
        let payee = Actor { id: g.state[&to].owner_id, teller: true, ..customer() };
        assert_eq!(g.when(&payee, Command::CaptureHold { hold, amount: None }), Err(DomainError::OwnAccount));
        let unknown = Command::VoidHold { hold: Uuid::now_v7() };
        assert_eq!(g.when(&me, unknown), Err(DomainError::HoldNotFound));
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
        assert!(matches!(g.when(&me, to_bank), Err(DomainError::NotPermitted(_))));
    }

    // ---- reversals ----

    #[test]
    fn a_reversal_restores_both_balances_and_links_to_the_original() {
        let mut g = given();
        let me = customer();
        let (from, to) = (g.account(me.id, 100), g.account(Uuid::now_v7(), 0));
        let original =
            g.transaction(&me, Command::Transfer { from, to, money: dollars(40), description: String::new() });
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
    fn a_reversal_that_would_overdraw_a_customer_is_refused() {
        let mut g = given();
        let me = customer();
        let (from, to) = (g.account(me.id, 100), g.account(me.id, 0));
        let original =
            g.transaction(&me, Command::Transfer { from, to, money: dollars(40), description: String::new() });
        // The destination spent part of it: taking 40 back would overdraw it.
        g.transaction(&me, Command::Transfer { from: to, to: from, money: dollars(15), description: String::new() });
        let refused = g.when(&teller(), Command::Reverse { transaction: original, reason: String::new() });
        assert_eq!(refused, Err(DomainError::ReversalWouldOverdraw { account: to, available: Decimal::from(25) }));
        assert_eq!(refused.unwrap_err().reason(), "REVERSAL_WOULD_OVERDRAW");
        // Customers reverse nothing.
        let by_customer = g.when(&me, Command::Reverse { transaction: original, reason: String::new() });
        assert!(matches!(by_customer, Err(DomainError::NotPermitted(_))));
    }

    // ---- limits ----

    #[test]
    fn limits_cap_single_debits_and_the_rolling_day_across_commands() {
        let mut g = given();
        let me = customer();
        let (from, to) = (g.account(me.id, 1000), g.account(Uuid::now_v7(), 0));
        let limits = DebitLimits { max_debit: Some(Decimal::from(100)), daily_debit: Some(Decimal::from(150)) };
        let set = Command::SetLimits { account: from, limits, currency: Some(usd()) };
        let events = g.when(&teller(), set.clone()).unwrap();
        g.then_apply(events);
        let send = |n| Command::Transfer { from, to, money: dollars(n), description: String::new() };
        assert!(matches!(g.when(&me, send(101)), Err(DomainError::LimitExceeded { .. })));
        let events = g.when(&me, send(100)).unwrap();
        g.then_apply(events);
        // The first debit counts toward the day, as it would within one batch.
        assert!(matches!(g.when(&me, send(51)), Err(DomainError::LimitExceeded { .. })));
        let hold = hold_cmd(Uuid::now_v7(), from, to, 51, g.now);
        assert!(matches!(g.when(&me, hold), Err(DomainError::LimitExceeded { .. })));
        assert!(g.when(&me, send(50)).is_ok());
        assert!(matches!(g.when(&me, set), Err(DomainError::NotPermitted(_))));
        let own = teller();
        let staff_account = g.account(own.id, 0);
        let mine = Command::SetLimits { account: staff_account, limits: DebitLimits::default(), currency: None };
        assert_eq!(g.when(&own, mine), Err(DomainError::OwnAccount), "staff do not lift their own limits");
        let in_euros = Command::SetLimits { account: from, limits, currency: Some(eur()) };
        assert_eq!(g.when(&teller(), in_euros).unwrap_err().reason(), "CURRENCY_MISMATCH");
    }

    mod properties {
        use super::*;
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
