//! Building the events a command appends: the bank.v1 envelope (what is
//! published), its hash chained to the account's previous event, and the
//! columns the event store keeps beside it for folding in SQL.

use bank_domain::{
    Account, Currency,
    ledger::{Event, Posting, PostingKind},
};
use bank_proto::v1::{self as pb, event_envelope::Payload};
use chrono::{DateTime, Utc};
use prost::Message;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::wire::{account_type, hold_state, limit_text, money, timestamp};

/// An event ready to be written to `events` and `outbox`.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub account_id: Uuid,
    pub currency: Currency,
    pub version: i64,
    pub transaction_id: Uuid,
    pub kind: &'static str,
    pub actor: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub delta: Decimal,
    pub balance_after: Decimal,
    pub envelope: Vec<u8>,
    pub hash: Vec<u8>,
}

/// The facts of one event before encoding.
pub struct EventDraft {
    pub account_id: Uuid,
    pub currency: Currency,
    pub version: i64,
    pub transaction_id: Uuid,
    pub actor: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub delta: Decimal,
    pub balance_after: Decimal,
    pub payload: Payload,
    /// The transaction's other postings.
    pub counterparties: Vec<pb::Posting>,
}

pub fn kind_of(payload: &Payload) -> &'static str {
    match payload {
        Payload::AccountOpened(_) => "AccountOpened",
        Payload::MoneyDeposited(_) => "MoneyDeposited",
        Payload::MoneyWithdrawn(_) => "MoneyWithdrawn",
        Payload::TransferDebited(_) => "TransferDebited",
        Payload::TransferCredited(_) => "TransferCredited",
        Payload::AccountFrozen(_) => "AccountFrozen",
        Payload::AccountUnfrozen(_) => "AccountUnfrozen",
        Payload::AccountClosed(_) => "AccountClosed",
        Payload::Posted(_) => "Posted",
        Payload::Reversed(_) => "Reversed",
        Payload::HoldPlaced(_) => "HoldPlaced",
        Payload::HoldReleased(_) => "HoldReleased",
        Payload::LimitsSet(_) => "LimitsSet",
        Payload::ScheduledTransferRefused(_) => "ScheduledTransferRefused",
    }
}

pub use bank_platform::signing::chain_hash;

/// Encodes `draft`, chaining it to `previous_hash`.
pub fn seal(
    draft: EventDraft,
    previous_hash: &[u8],
    trace_context: &std::collections::BTreeMap<String, String>,
) -> NewEvent {
    let event_id = Uuid::now_v7();
    let kind = kind_of(&draft.payload);
    let mut envelope = pb::EventEnvelope {
        event_id: event_id.to_string(),
        account_id: draft.account_id.to_string(),
        version: draft.version,
        transaction_id: draft.transaction_id.to_string(),
        occurred_at: timestamp(draft.occurred_at),
        actor: draft.actor.to_string(),
        trace_context: trace_context.clone(),
        hash: Vec::new(),
        counterparty_postings: draft.counterparties,
        payload: Some(draft.payload),
        // Added by the relay when it publishes (see `relay::signed`).
        signature: Vec::new(),
        signing_key_id: String::new(),
    };
    let hash = chain_hash(previous_hash, &envelope);
    envelope.hash = hash.clone();
    NewEvent {
        event_id,
        account_id: draft.account_id,
        currency: draft.currency,
        version: draft.version,
        transaction_id: draft.transaction_id,
        kind,
        actor: draft.actor,
        occurred_at: draft.occurred_at,
        delta: draft.delta,
        balance_after: draft.balance_after,
        envelope: envelope.encode_to_vec(),
        hash,
    }
}

/// Checks a stored envelope against the previous hash of its chain.
pub fn verify_chain_link(previous: &[u8], stored_envelope: &[u8]) -> bool {
    let Ok(envelope) = pb::EventEnvelope::decode(stored_envelope) else { return false };
    bank_platform::signing::chain_link_holds(previous, &envelope)
}

// ---- a domain event as published ----

fn posting_proto(p: &Posting) -> pb::Posting {
    pb::Posting { account_id: p.account.to_string(), amount: money(p.currency, p.amount) }
}

/// The published payload of a domain event on `account` (as the event left
/// it), and its signed balance change.
fn payload(event: &Event, account: &Account) -> (Payload, Decimal) {
    let currency = account.currency;
    let m = |d: Decimal| money(currency, d);
    match event {
        Event::AccountOpened { kind, currency, owner, .. } => (
            Payload::AccountOpened(pb::AccountOpened {
                owner_id: owner.to_string(),
                r#type: account_type(*kind) as i32,
                currency_code: currency.code().to_owned(),
            }),
            Decimal::ZERO,
        ),
        Event::Posted { posting, before, after, kind, description, .. } => {
            let (amount, before, after, description) =
                (m(posting.amount.abs()), m(*before), m(*after), description.clone());
            let p = match kind {
                PostingKind::Deposit => Payload::MoneyDeposited(pb::MoneyDeposited {
                    amount,
                    balance_before: before,
                    balance_after: after,
                    description,
                }),
                PostingKind::Withdrawal => Payload::MoneyWithdrawn(pb::MoneyWithdrawn {
                    amount,
                    balance_before: before,
                    balance_after: after,
                    description,
                }),
                PostingKind::TransferOut { to } => Payload::TransferDebited(pb::TransferDebited {
                    amount,
                    balance_before: before,
                    balance_after: after,
                    to_account_id: to.to_string(),
                    description,
                }),
                PostingKind::TransferIn { from } => Payload::TransferCredited(pb::TransferCredited {
                    amount,
                    balance_before: before,
                    balance_after: after,
                    from_account_id: from.to_string(),
                    description,
                }),
                PostingKind::Leg => Payload::Posted(pb::Posted {
                    amount: m(posting.amount),
                    balance_before: before,
                    balance_after: after,
                    description,
                }),
                PostingKind::Reversal { original } => Payload::Reversed(pb::Reversed {
                    amount: m(posting.amount),
                    balance_before: before,
                    balance_after: after,
                    reverses_transaction_id: original.to_string(),
                    reason: description,
                }),
            };
            (p, posting.amount)
        }
        Event::HoldPlaced { hold, description } => (
            Payload::HoldPlaced(pb::HoldPlaced {
                hold_id: hold.id.to_string(),
                to_account_id: hold.to.to_string(),
                amount: m(hold.money.amount),
                expires_at: timestamp(hold.expires_at),
                held_after: m(account.held),
                description: description.clone(),
            }),
            Decimal::ZERO,
        ),
        Event::HoldReleased { hold, released, state, captured, .. } => (
            Payload::HoldReleased(pb::HoldReleased {
                hold_id: hold.to_string(),
                released: m(*released),
                held_after: m(account.held),
                state: hold_state(*state) as i32,
                captured: m(*captured),
            }),
            Decimal::ZERO,
        ),
        Event::LimitsSet { limits, .. } => (
            Payload::LimitsSet(pb::LimitsSet {
                max_single_debit: limit_text(limits.max_debit),
                daily_debit_limit: limit_text(limits.daily_debit),
            }),
            Decimal::ZERO,
        ),
        Event::AccountFrozen { reason, .. } => {
            (Payload::AccountFrozen(pb::AccountFrozen { reason: reason.clone() }), Decimal::ZERO)
        }
        Event::AccountUnfrozen { reason, .. } => {
            (Payload::AccountUnfrozen(pb::AccountUnfrozen { reason: reason.clone() }), Decimal::ZERO)
        }
        Event::AccountClosed { .. } => (Payload::AccountClosed(pb::AccountClosed {}), Decimal::ZERO),
        Event::ScheduledTransferRefused(r) => (
            Payload::ScheduledTransferRefused(pb::ScheduledTransferRefused {
                schedule_id: r.schedule.to_string(),
                occurrence: r.occurrence,
                attempt: r.attempt,
                to_account_id: r.to.to_string(),
                amount: money(r.money.currency, r.money.amount),
                reason: r.reason.clone(),
                retry_at: r.retry_at.and_then(timestamp),
            }),
            Decimal::ZERO,
        ),
    }
}

/// Seals `event` (already applied to `row`) as the next link of the row's
/// hash chain.
pub(crate) fn record(
    account: &Account,
    last_hash: &mut Vec<u8>,
    event: &Event,
    tx: Uuid,
    actor: Uuid,
    at: DateTime<Utc>,
    trace: &std::collections::BTreeMap<String, String>,
) -> NewEvent {
    let (payload, delta) = payload(event, account);
    let counterparties = match event {
        Event::Posted { counterparties, .. } => counterparties.iter().map(posting_proto).collect(),
        _ => Vec::new(),
    };
    let new = seal(
        EventDraft {
            account_id: account.id,
            currency: account.currency,
            version: account.version,
            transaction_id: tx,
            actor,
            occurred_at: at,
            delta,
            balance_after: account.balance,
            payload,
            counterparties,
        },
        last_hash,
        trace,
    );
    *last_hash = new.hash.clone();
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(version: i64) -> EventDraft {
        EventDraft {
            account_id: Uuid::now_v7(),
            currency: Currency::from_code("USD").unwrap(),
            version,
            transaction_id: Uuid::now_v7(),
            actor: Uuid::now_v7(),
            occurred_at: Utc::now(),
            delta: Decimal::ONE,
            balance_after: Decimal::ONE,
            payload: Payload::AccountClosed(pb::AccountClosed {}),
            counterparties: vec![],
        }
    }

    #[test]
    fn a_sealed_event_verifies_against_its_predecessor_only() {
        let e = seal(draft(2), b"prev", &Default::default());
        assert!(verify_chain_link(b"prev", &e.envelope));
        assert!(!verify_chain_link(b"other", &e.envelope));
    }

    #[test]
    fn an_edited_envelope_breaks_the_chain() {
        let e = seal(draft(2), b"prev", &Default::default());
        let mut env = pb::EventEnvelope::decode(e.envelope.as_slice()).unwrap();
        env.version = 3;
        assert!(!verify_chain_link(b"prev", &env.encode_to_vec()));
    }
}
