//! Building the events a command appends: the bank.v1 envelope (what is
//! published), its hash chained to the account's previous event, and the
//! columns the event store keeps beside it for folding in SQL.

use bank_domain::{Currency, format_amount};
use bank_proto::v1::{self as pb, event_envelope::Payload};
use chrono::{DateTime, Utc};
use prost::Message;
use rust_decimal::Decimal;
use uuid::Uuid;

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

pub fn money(currency: Currency, amount: Decimal) -> Option<pb::Money> {
    Some(pb::Money { currency_code: currency.code().to_owned(), amount: format_amount(amount, currency) })
}

pub fn timestamp(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 })
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
