//! What a decided command answers: the proto views of accounts and holds,
//! and one response per command, naming only what the actor may see.

use std::collections::HashMap;

use bank_domain::{
    AccountStatus,
    consistency::ConsistencyToken,
    ledger::{Actor, Command},
};
use bank_proto::v1 as pb;
use chrono::{DateTime, Utc};
use prost::Message;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::{
    events::NewEvent,
    store::{AccountRow, HoldRow},
    wire::{self, account_type, hold_state},
};

pub fn account_proto(row: &AccountRow) -> pb::Account {
    let a = &row.account;
    pb::Account {
        account_id: a.id.to_string(),
        owner_id: a.owner_id.to_string(),
        r#type: account_type(a.kind) as i32,
        currency_code: a.currency.code().to_owned(),
        balance: wire::money(a.currency, a.balance),
        status: match a.status {
            AccountStatus::Active => pb::AccountStatus::Active,
            AccountStatus::Frozen => pb::AccountStatus::Frozen,
            AccountStatus::Closed => pb::AccountStatus::Closed,
        } as i32,
        version: a.version,
        opened_at: wire::timestamp(row.opened_at),
    }
}

pub fn hold_proto(row: &HoldRow) -> pb::Hold {
    let h = &row.hold;
    pb::Hold {
        hold_id: h.id.to_string(),
        from_account_id: h.account.to_string(),
        to_account_id: h.to.to_string(),
        amount: wire::money(h.money.currency, h.money.amount),
        state: hold_state(h.state) as i32,
        expires_at: wire::timestamp(h.expires_at),
        captured: wire::money(h.money.currency, row.captured),
    }
}

fn token_of(events: &[NewEvent]) -> String {
    ConsistencyToken::new(events.iter().map(|e| (e.account_id, e.version))).encode()
}

/// The response of a decided command, encoded.
pub(crate) fn respond(
    actor: &Actor,
    command: &Command,
    rows: &HashMap<Uuid, AccountRow>,
    holds: &[HoldRow],
    events: &[NewEvent],
    tx: Uuid,
    at: DateTime<Utc>,
) -> Vec<u8> {
    let account = |id: &Uuid| rows.get(id).map(account_proto);
    // The token names the accounts the caller was answered about: a teller
    // reading after a deposit waits for the customer's account, not for the
    // bank's busy settlement account.
    //
    // And only accounts the caller may see (their own; staff and services
    // any): a sender learns nothing of the payee's balance, and the token
    // stays one the query side accepts from them.
    let moved = |ids: Vec<Uuid>| {
        let ids: Vec<Uuid> =
            ids.into_iter().filter(|id| rows.get(id).is_some_and(|r| actor.may_see(&r.account))).collect();
        let named: Vec<NewEvent> = events.iter().filter(|e| ids.contains(&e.account_id)).cloned().collect();
        pb::MoneyMovementResponse {
            transaction_id: tx.to_string(),
            balances_after: ids
                .iter()
                .filter_map(|id| rows.get(id))
                .map(|r| pb::AccountBalance {
                    account_id: r.account.id.to_string(),
                    balance: wire::money(r.account.currency, r.account.balance),
                    version: r.account.version,
                })
                .collect(),
            consistency_token: token_of(&named),
            occurred_at: wire::timestamp(at),
        }
        .encode_to_vec()
    };
    match command {
        Command::OpenAccount { id, .. } => {
            pb::OpenAccountResponse { account: account(id), consistency_token: token_of(events) }.encode_to_vec()
        }
        // The teller sees the customer's account; settlement is the bank's business.
        Command::Deposit { account, .. } | Command::Withdraw { account, .. } => moved(vec![*account]),
        Command::Transfer { from, to, .. } => moved(vec![*from, *to]),
        Command::Post { legs, .. } => moved(legs.iter().map(|l| l.account).collect()),
        Command::CaptureHold { .. } | Command::Reverse { .. } => {
            let mut ids: Vec<Uuid> = Vec::new();
            for e in events.iter().filter(|e| e.delta != Decimal::ZERO) {
                if !ids.contains(&e.account_id) {
                    ids.push(e.account_id);
                }
            }
            moved(ids)
        }
        Command::PlaceHold { .. } | Command::VoidHold { .. } | Command::ExpireHold { .. } => {
            let hold = holds.first();
            let source = hold.and_then(|h| rows.get(&h.hold.account));
            pb::HoldResponse {
                hold: hold.map(hold_proto),
                available_balance: source.and_then(|r| wire::money(r.account.currency, r.account.available())),
                consistency_token: token_of(events),
            }
            .encode_to_vec()
        }
        Command::Freeze { account: id, .. }
        | Command::Unfreeze { account: id, .. }
        | Command::Close { account: id }
        | Command::SetLimits { account: id, .. }
        | Command::RecordScheduleRefusal(bank_domain::ledger::RefusedOccurrence { account: id, .. }) => {
            pb::AccountChangeResponse { account: account(id), consistency_token: token_of(events) }.encode_to_vec()
        }
    }
}
