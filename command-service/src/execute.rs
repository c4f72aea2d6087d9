//! Deciding one command: the rules pick the events on what the command
//! needs, then each event advances its account's version and hash chain and
//! becomes the rows the batch writes. No I/O.

use std::collections::HashMap;

use bank_domain::ledger::{self as rules, Actor, Command, Event, PostingKind, Transaction};
use bank_platform::signing::GENESIS_HASH;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::{
    error::CommandError,
    events,
    store::{AccountRow, HoldRow, ReversalRow, Writes},
    views,
};

/// Limits from configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest amount of one deposit, withdrawal or transfer.
    pub max_amount: Decimal,
    /// Largest balance an account may hold.
    pub max_balance: Decimal,
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
    rows: &[AccountRow],
    holds: &HashMap<Uuid, HoldRow>,
    transactions: &HashMap<Uuid, Transaction>,
) -> Result<Plan<Vec<u8>>, CommandError> {
    let at = now();
    // What the command said it needs, and nothing else.
    let needs = command.needs();
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
