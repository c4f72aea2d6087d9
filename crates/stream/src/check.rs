//! What to believe of a message, and where an event stands against the
//! account's stored head. Pure: unit-tested without servers.

use bank_platform::{
    nats,
    signing::{self, EventKeys, GENESIS_HASH, chain_link_holds},
};
use bank_proto::v1 as pb;
use chrono::{DateTime, Utc};
use prost::Message;
use uuid::Uuid;

/// An event of a checked message.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub envelope: pb::EventEnvelope,
    pub account: Uuid,
}

impl Event {
    pub fn version(&self) -> i64 {
        self.envelope.version
    }

    /// The head this event makes its account's.
    pub fn head(&self) -> Head {
        Head { version: self.envelope.version, hash: Some(self.envelope.hash.clone()) }
    }
}

/// Why a message is not believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It does not decode, or an envelope's identity is malformed.
    Malformed(String),
    /// Unsigned, signed by an unknown key or badly, or on another account's subject.
    Rejected(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed(why) | Refusal::Rejected(why) => f.write_str(why),
        }
    }
}

/// The events a message on `subject` carries, each under a valid signature
/// (when `keys` are given: `None` believes unsigned events, for a development
/// stack only) and each on its own account's subject under `prefix`.
pub fn events_of(subject: &str, payload: &[u8], prefix: &str, keys: Option<&EventKeys>) -> Result<Vec<Event>, Refusal> {
    let partition = nats::batch_partition(prefix, subject);
    if let (Some(_), Some(keys)) = (partition, keys) {
        let batch =
            pb::EventBatch::decode(payload).map_err(|e| Refusal::Malformed(format!("undecodable batch: {e}")))?;
        signing::verify_batch(payload, &batch, keys).map_err(Refusal::Rejected)?;
    }
    let envelopes = signing::events_of(partition.is_some(), payload).map_err(Refusal::Malformed)?;
    envelopes
        .into_iter()
        .map(|envelope| {
            let (account, _) = account_of(&envelope).map_err(Refusal::Malformed)?;
            if partition.is_none()
                && let Some(keys) = keys
            {
                signing::verify_envelope(payload, &envelope, keys).map_err(Refusal::Rejected)?;
            }
            // The unpartitioned form is what streams made before partitions
            // hold (a rebuild reads them).
            let on_its_subject = match partition {
                Some(p) => nats::event_partition(account) == p,
                None => subject == nats::event_subject(prefix, account) || subject == format!("{prefix}.{account}"),
            };
            if !on_its_subject {
                return Err(Refusal::Rejected(format!("published on {subject} but names account {account}")));
            }
            Ok(Event { envelope, account })
        })
        .collect()
}

/// Identity fields of an envelope, needed before deciding anything.
pub fn account_of(env: &pb::EventEnvelope) -> Result<(Uuid, i64), String> {
    let id = Uuid::try_parse(&env.account_id).map_err(|_| "account_id is not a UUID".to_owned())?;
    if env.version < 1 {
        return Err("version must be >= 1".into());
    }
    Ok((id, env.version))
}

pub fn occurred_at(env: &pb::EventEnvelope) -> Option<DateTime<Utc>> {
    env.occurred_at.as_ref().and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
}

/// What a consumer holds of an account: the version it applied last, and
/// that event's hash (`None` where it is not known: a store filled before it
/// kept hashes, which then accepts the next link unchecked once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub version: i64,
    pub hash: Option<Vec<u8>>,
}

/// Whether `env` chains to its account's head: the hash of the previous event
/// applied, the genesis hash for a first event, or any hash where the head's
/// is not known.
pub fn chains_to(env: &pb::EventEnvelope, head: Option<&Option<Vec<u8>>>) -> bool {
    match head {
        _ if env.version == 1 => chain_link_holds(&GENESIS_HASH, env),
        Some(Some(previous)) => chain_link_holds(previous, env),
        _ => true,
    }
}

/// Where an event stands against its account's stored head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// At or below the head: applied already; skip it.
    Duplicate,
    /// An earlier version is missing: wait for it.
    Gap { stored: i64 },
    /// The next version, linked to the head: apply it.
    Next,
    /// The next version by number, but its hash does not link to the head's:
    /// not the event the bank wrote after the head. Never applied.
    Unchained,
}

pub fn place(event: &Event, head: Option<&Head>) -> Place {
    let stored = head.map_or(0, |h| h.version);
    let version = event.version();
    if version <= stored {
        Place::Duplicate
    } else if version > stored + 1 {
        Place::Gap { stored }
    } else if !chains_to(&event.envelope, head.map(|h| &h.hash)) {
        Place::Unchained
    } else {
        Place::Next
    }
}

#[cfg(test)]
mod tests {
    use bank_platform::{auth::TokenSigner, signing::chain_hash};

    use super::*;

    const PREFIX: &str = "t.events";

    fn chain(account: Uuid, n: i64) -> Vec<pb::EventEnvelope> {
        let mut previous = GENESIS_HASH.to_vec();
        (1..=n)
            .map(|version| {
                let mut env = pb::EventEnvelope {
                    event_id: Uuid::now_v7().to_string(),
                    account_id: account.to_string(),
                    version,
                    ..Default::default()
                };
                env.hash = chain_hash(&previous, &env);
                previous = env.hash.clone();
                env
            })
            .collect()
    }

    fn message(account: Uuid, events: &[pb::EventEnvelope], signer: &TokenSigner) -> (String, Vec<u8>) {
        let subject = nats::batch_subject(PREFIX, nats::event_partition(account));
        (subject, signing::sign_batch(events.iter().map(Message::encode_to_vec).collect(), signer))
    }

    #[test]
    fn a_message_is_believed_only_under_a_known_key_and_on_its_accounts_subject() {
        let (bank, forger) = (TokenSigner::generate(), TokenSigner::generate());
        let keys = EventKeys::of(std::slice::from_ref(&bank));
        let account = Uuid::now_v7();
        let events = chain(account, 2);
        let (subject, payload) = message(account, &events, &bank);
        let got = events_of(&subject, &payload, PREFIX, Some(&keys)).unwrap();
        assert_eq!(got.iter().map(Event::version).collect::<Vec<_>>(), [1, 2]);

        let (_, forged) = message(account, &events, &forger);
        assert!(matches!(events_of(&subject, &forged, PREFIX, Some(&keys)), Err(Refusal::Rejected(_))));
        let mut tampered = payload.clone();
        tampered[10] ^= 1;
        assert!(events_of(&subject, &tampered, PREFIX, Some(&keys)).is_err());
        // Another partition's subject: the signature holds, the place does not.
        let elsewhere =
            (0..).map(|_| Uuid::now_v7()).find(|a| nats::event_partition(*a) != nats::event_partition(account));
        let wrong = nats::batch_subject(PREFIX, nats::event_partition(elsewhere.unwrap()));
        assert!(matches!(events_of(&wrong, &payload, PREFIX, Some(&keys)), Err(Refusal::Rejected(_))));
    }

    #[test]
    fn an_event_is_a_duplicate_a_gap_the_next_or_unchained() {
        let account = Uuid::now_v7();
        let events: Vec<Event> = chain(account, 3).into_iter().map(|envelope| Event { envelope, account }).collect();
        assert_eq!(place(&events[0], None), Place::Next);
        assert_eq!(place(&events[2], None), Place::Gap { stored: 0 });
        let head = events[1].head();
        assert_eq!(place(&events[0], Some(&head)), Place::Duplicate);
        assert_eq!(place(&events[1], Some(&head)), Place::Duplicate);
        assert_eq!(place(&events[2], Some(&head)), Place::Next);
        let other_branch = Head { version: 2, hash: Some(vec![7; 32]) };
        assert_eq!(place(&events[2], Some(&other_branch)), Place::Unchained);
        let mut altered = events[0].clone();
        altered.envelope.actor = "someone".into();
        assert_eq!(place(&altered, None), Place::Unchained, "a first event must chain to genesis");
    }
}
