//! Deciding one command: the rules pick the events on what the command
//! needs, then each event advances its account's version and hash chain and
//! becomes the rows the batch writes. No I/O.

use std::collections::{HashMap, HashSet};

use bank_domain::ledger::{self as rules, Actor, Command, Event, Needs, PostingKind, Transaction};
use bank_platform::signing::GENESIS_HASH;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::{
    error::CommandError,
    events,
    store::{AccountRow, BatchWrites, HoldRow, ReversalRow, Writes},
    views,
};

/// Limits from configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest amount of one deposit, withdrawal or transfer.
    pub max_amount: Decimal,
    /// Largest balance an account may hold.
    pub max_balance: Decimal,
    /// Transfers above this (in their own currency) need a step-up from a
    /// customer who signs in with a second factor: one given within
    /// `STEP_UP_WINDOW_SECS`.
    pub step_up_above: Decimal,
}

/// What a decided command writes and answers.
pub struct Plan<R> {
    pub(crate) writes: Writes,
    pub(crate) response: R,
}

pub fn now() -> DateTime<Utc> {
    // Postgres keeps microseconds: truncate so the stored row and the
    // published envelope carry the same instant.
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// Decides one command on the rows it locked (as earlier commands of its
/// batch left them): the rules pick the events, then each event advances
/// its account's version and hash chain. The one path every command takes.
pub(crate) fn decide(
    limits: &Limits,
    actor: &Actor,
    command: &Command,
    needs: &Needs,
    rows: &[AccountRow],
    holds: &HashMap<Uuid, HoldRow>,
    transactions: &HashMap<Uuid, Transaction>,
) -> Result<Plan<Vec<u8>>, CommandError> {
    let at = now();
    // What the command said it needs, and nothing else.
    let mut world = rules::State::new(rows.iter().map(|r| (r.account.id, r.account.clone())).collect(), at);
    world.holds = needs.holds.iter().filter_map(|id| holds.get(id)).map(|r| (r.hold.id, r.hold.clone())).collect();
    world.transactions =
        needs.transactions.iter().filter_map(|id| transactions.get(id).map(|t| (*id, t.clone()))).collect();
    let decided = rules::handle(&world, actor, command, &rules::Limits { max_balance: limits.max_balance })?;
    let (tx, trace) = (Uuid::now_v7(), bank_platform::telemetry::current_trace_context());
    let mut changed_holds: Vec<HoldRow> = Vec::new();
    let mut reversals: Vec<ReversalRow> = Vec::new();
    for event in &decided {
        match event {
            Event::HoldPlaced { hold, .. } => changed_holds.push(HoldRow {
                hold: hold.clone(),
                captured: Decimal::ZERO,
                placed_at: at,
                ended_at: None,
            }),
            Event::HoldReleased { hold, state, captured, .. } => {
                let mut row = holds
                    .get(hold)
                    .cloned()
                    .ok_or_else(|| CommandError::Internal(anyhow::anyhow!("released a hold it did not read")))?;
                (row.hold.state, row.captured, row.ended_at) = (*state, *captured, Some(at));
                changed_holds.push(row);
            }
            Event::Posted { kind: PostingKind::Reversal { original }, description, .. }
                if !reversals.iter().any(|r| r.original == *original) =>
            {
                reversals.push(ReversalRow {
                    original: *original,
                    reversal: tx,
                    by: actor.id,
                    reason: description.clone(),
                    at,
                })
            }
            _ => {}
        }
    }
    let mut touched: HashMap<Uuid, AccountRow> = rows.iter().map(|r| (r.account.id, r.clone())).collect();
    let (mut order, mut opened, mut sealed) = (Vec::new(), Vec::new(), Vec::new());
    for event in &decided {
        let id = event.account();
        let current = touched.get(&id).map(|r| &r.account);
        let next = rules::apply(current, event)
            .ok_or_else(|| CommandError::Internal(anyhow::anyhow!("event for an account it cannot apply to")))?;
        let row = touched.entry(id).or_insert_with(|| {
            opened.push(id);
            AccountRow { account: next.clone(), last_hash: GENESIS_HASH.to_vec(), opened_at: at }
        });
        row.account = next;
        sealed.push(events::record(&row.account, &mut row.last_hash, event, tx, actor.id, at, &trace));
        if !order.contains(&id) {
            order.push(id);
        }
    }
    let response = views::respond(actor, command, &touched, &changed_holds, &sealed, tx, at);
    let mut writes = Writes { holds: changed_holds, reversals, ..Writes::default() };
    for id in order {
        let row = touched.remove(&id).expect("every event's account is touched");
        if opened.contains(&id) { writes.new_accounts.push(row) } else { writes.changed_accounts.push(row) }
    }
    writes.events = sealed;
    Ok(Plan { writes, response })
}

/// A batch's working state: the rows it loaded, as the commands decided so
/// far left them, and which of them the batch writes.
pub struct Staged {
    accounts: HashMap<Uuid, AccountRow>,
    holds: HashMap<Uuid, HoldRow>,
    transactions: HashMap<Uuid, Transaction>,
    opened: HashSet<Uuid>,
    touched: Vec<Uuid>,
    placed: HashSet<Uuid>,
    touched_holds: Vec<Uuid>,
}

impl Staged {
    pub fn new(accounts: Vec<AccountRow>, holds: Vec<HoldRow>, transactions: HashMap<Uuid, Transaction>) -> Self {
        Self {
            accounts: accounts.into_iter().map(|r| (r.account.id, r)).collect(),
            holds: holds.into_iter().map(|h| (h.hold.id, h)).collect(),
            transactions,
            opened: HashSet::new(),
            touched: Vec::new(),
            placed: HashSet::new(),
            touched_holds: Vec::new(),
        }
    }

    /// Decides `command` on the rows of `accounts` as they stand now.
    pub fn decide(
        &self,
        limits: &Limits,
        actor: &Actor,
        command: &Command,
        needs: &Needs,
        accounts: &[Uuid],
    ) -> Result<Plan<Vec<u8>>, CommandError> {
        let mut mine: Vec<AccountRow> = accounts.iter().filter_map(|id| self.accounts.get(id).cloned()).collect();
        mine.sort_by_key(|r| r.account.id);
        mine.dedup_by_key(|r| r.account.id);
        decide(limits, actor, command, needs, &mine, &self.holds, &self.transactions)
    }

    /// Takes a decided command's rows in (later commands see them) and its
    /// events and reversals into the batch's writes; returns its response.
    pub fn absorb(&mut self, plan: Plan<Vec<u8>>, w: &mut BatchWrites) -> Vec<u8> {
        let writes = plan.writes;
        for h in writes.holds {
            if !self.holds.contains_key(&h.hold.id) {
                self.placed.insert(h.hold.id);
            }
            self.touched_holds.push(h.hold.id);
            self.holds.insert(h.hold.id, h);
        }
        for r in &writes.reversals {
            if let Some(t) = self.transactions.get_mut(&r.original) {
                t.reversed_by = Some(r.reversal);
            }
        }
        w.reversals.extend(writes.reversals);
        self.opened.extend(writes.new_accounts.iter().map(|r| r.account.id));
        for r in writes.new_accounts.into_iter().chain(writes.changed_accounts) {
            self.touched.push(r.account.id);
            self.accounts.insert(r.account.id, r);
        }
        w.events.extend(writes.events);
        plan.response
    }

    /// Every row the batch changed, in its final state, once.
    pub fn finish(mut self, w: &mut BatchWrites) {
        self.touched.sort();
        self.touched.dedup();
        for id in self.touched {
            if let Some(row) = self.accounts.remove(&id) {
                if self.opened.contains(&id) { w.new_accounts.push(row) } else { w.changed_accounts.push(row) }
            }
        }
        self.touched_holds.sort();
        self.touched_holds.dedup();
        for id in self.touched_holds {
            if let Some(row) = self.holds.remove(&id) {
                if self.placed.contains(&id) { w.new_holds.push(row) } else { w.changed_holds.push(row) }
            }
        }
    }
}
