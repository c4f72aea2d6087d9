//! A given / when / then harness for the ledger's rules: a world built by
//! applying events (the only way state changes), a command sent by an actor,
//! and the events or the refusal that come back. Each command family's tests
//! use it; other crates get it with the `testing` feature.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{Accounts, Actor, BANK, Command, Event, Limits, Posting, State, Transaction, apply, handle, sums};
use crate::{AccountKind, Currency, DomainError, Money, hold::Hold, ledger::system_account_id};

pub fn usd() -> Currency {
    Currency::from_code("USD").expect("USD is supported")
}

pub fn eur() -> Currency {
    Currency::from_code("EUR").expect("EUR is supported")
}

pub fn dollars(n: i64) -> Money {
    Money::new(usd(), Decimal::from(n))
}

pub const LIMITS: Limits = Limits { max_balance: Decimal::from_parts(1_000_000, 0, 0, false, 0) };

/// A world of accounts, holds and transactions at an instant.
pub struct Given {
    pub state: Accounts,
    pub holds: HashMap<Uuid, Hold>,
    pub transactions: HashMap<Uuid, Transaction>,
    pub now: DateTime<Utc>,
}

/// The bank's system accounts in USD and EUR, and nothing else.
pub fn given() -> Given {
    let mut g = Given {
        state: Accounts::new(),
        holds: HashMap::new(),
        transactions: HashMap::new(),
        now: DateTime::from_timestamp(1_800_000_000, 0).expect("a valid instant"),
    };
    for kind in AccountKind::SYSTEM {
        for c in [usd(), eur()] {
            g.record(Event::AccountOpened { account: system_account_id(kind, c), owner: BANK, kind, currency: c });
        }
    }
    g
}

impl Given {
    pub fn record(&mut self, e: Event) {
        match &e {
            Event::HoldPlaced { hold, .. } => {
                self.holds.insert(hold.id, hold.clone());
            }
            Event::HoldReleased { hold, state, .. } => {
                self.holds.get_mut(hold).expect("a released hold was placed").state = *state
            }
            _ => {}
        }
        let id = e.account();
        let next = apply(self.state.get(&id), &e).expect("a valid event");
        self.state.insert(id, next);
    }

    /// A customer's account holding `balance` dollars (funded from settlement).
    pub fn account(&mut self, owner: Uuid, balance: i64) -> Uuid {
        let id = Uuid::now_v7();
        self.record(Event::AccountOpened { account: id, owner, kind: AccountKind::Checking, currency: usd() });
        if balance > 0 {
            let deposit = Command::Deposit { account: id, money: dollars(balance), description: String::new() };
            let events = self.when(&teller(), deposit).expect("a teller deposit");
            events.into_iter().for_each(|e| self.record(e));
        }
        id
    }

    /// When `actor` sends `command`: what the rules decide.
    pub fn when(&self, actor: &Actor, command: Command) -> Result<Vec<Event>, DomainError> {
        let world = State {
            accounts: self.state.clone(),
            holds: self.holds.clone(),
            transactions: self.transactions.clone(),
            now: self.now,
        };
        handle(&world, actor, &command, &LIMITS)
    }

    pub fn balance(&self, id: Uuid) -> Decimal {
        self.state[&id].balance
    }

    pub fn available(&self, id: Uuid) -> Decimal {
        self.state[&id].available()
    }

    /// Then: apply the events and check every currency still sums to zero.
    pub fn then_apply(&mut self, events: Vec<Event>) {
        events.into_iter().for_each(|e| self.record(e));
        for (c, sum) in sums(self.state.values().map(|a| (a.currency, a.balance))) {
            assert!(sum.is_zero(), "{} sums to {sum}", c.code());
        }
    }

    /// A hold of `amount` from `from` (owned by `owner`) to `to`, placed.
    pub fn hold(&mut self, owner: &Actor, from: Uuid, to: Uuid, amount: i64) -> Uuid {
        let id = Uuid::now_v7();
        let events = self.when(owner, hold_cmd(id, from, to, amount, self.now)).expect("the hold is placed");
        self.then_apply(events);
        id
    }

    /// Runs a money command and files it as a transaction a reversal can name.
    pub fn transaction(&mut self, actor: &Actor, command: Command) -> Uuid {
        let events = self.when(actor, command).expect("the command succeeds");
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

pub fn actor(teller: bool, admin: bool, service: bool) -> Actor {
    Actor { id: Uuid::now_v7(), active: true, teller: teller || admin, admin, service }
}

pub fn customer() -> Actor {
    actor(false, false, false)
}

pub fn teller() -> Actor {
    actor(true, false, false)
}

pub fn admin() -> Actor {
    actor(false, true, false)
}

pub fn service() -> Actor {
    actor(false, false, true)
}

/// The bank itself (the expiry worker).
pub fn bank() -> Actor {
    Actor { id: BANK, ..service() }
}

pub fn settlement(c: Currency) -> Uuid {
    system_account_id(AccountKind::Settlement, c)
}

pub fn fees(c: Currency) -> Uuid {
    system_account_id(AccountKind::FeeIncome, c)
}

pub fn leg(account: Uuid, amount: i64) -> Posting {
    Posting { account, currency: usd(), amount: Decimal::from(amount) }
}

/// The index and cause of a refusal of one leg.
pub fn leg_error(e: DomainError) -> (usize, DomainError) {
    match e {
        DomainError::Leg { index, cause } => (index, *cause),
        other => panic!("not a leg refusal: {other:?}"),
    }
}

/// A hold of `amount` dollars for ten minutes from `now`.
pub fn hold_cmd(id: Uuid, from: Uuid, to: Uuid, amount: i64, now: DateTime<Utc>) -> Command {
    Command::PlaceHold {
        id,
        from,
        to,
        money: dollars(amount),
        expires_at: now + chrono::Duration::minutes(10),
        description: String::new(),
    }
}
