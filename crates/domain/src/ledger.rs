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

use rust_decimal::Decimal;
use uuid::Uuid;

use crate::{Account, AccountKind, AccountStatus, Currency, DomainError, Money, account::transfer};

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
}

impl Command {
    /// The accounts the command reads and may change: lock these, in any order.
    pub fn accounts(&self) -> Vec<Uuid> {
        match self {
            Command::OpenAccount { .. } => vec![],
            Command::Deposit { account, money, .. } | Command::Withdraw { account, money, .. } => {
                vec![*account, system_account_id(AccountKind::Settlement, money.currency)]
            }
            Command::Transfer { from, to, .. } => vec![*from, *to],
            Command::Post { legs, .. } => legs.iter().map(|l| l.account).collect(),
            Command::Freeze { account, .. } | Command::Unfreeze { account, .. } | Command::Close { account } => {
                vec![*account]
            }
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
}

impl Event {
    pub fn account(&self) -> Uuid {
        match self {
            Event::AccountOpened { account, .. }
            | Event::AccountFrozen { account, .. }
            | Event::AccountUnfrozen { account, .. }
            | Event::AccountClosed { account } => *account,
            Event::Posted { posting, .. } => posting.account,
        }
    }
}

/// The accounts a command may see: those it locked.
pub type Accounts = HashMap<Uuid, Account>;

/// Limits from configuration that the rules enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest balance a customer account may hold.
    pub max_balance: Decimal,
}

/// Decides `command` by `actor` against `state`: the events it produces, or
/// the rule that refuses it. Every event's postings balance per currency.
pub fn handle(state: &Accounts, actor: &Actor, command: &Command, limits: &Limits) -> Result<Vec<Event>, DomainError> {
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
            return Err(DomainError::Unbalanced { currency: currency.code().to_owned(), sum });
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
            });
        }
        (Some(a), _) => a.clone(),
        (None, _) => return None,
    };
    match event {
        Event::AccountOpened { .. } => return None, // opened twice: not an event of this account
        Event::Posted { after, .. } => next.balance = *after,
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
    }

    fn given() -> Given {
        let mut g = Given { state: Accounts::new() };
        for kind in AccountKind::SYSTEM {
            for c in [usd(), eur()] {
                g.record(Event::AccountOpened { account: system_account_id(kind, c), owner: BANK, kind, currency: c });
            }
        }
        g
    }

    impl Given {
        fn record(&mut self, e: Event) {
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
            handle(&self.state, actor, &command, &LIMITS)
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
