//! How one event changes an account's read model: a pure function of the
//! current view and the event, so the version guard and every payload rule
//! are unit-tested without servers.

use std::str::FromStr;

use bank_proto::v1::{self as pb, event_envelope::Payload};
use bank_readmodel::{AccountView, HistoryEntry, HoldView, kind};
use chrono::DateTime;
use rust_decimal::Decimal;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // short-lived, one per message
pub enum Decision {
    /// Already applied (version ≤ stored): acknowledge and skip.
    Duplicate,
    /// An earlier version is missing: retry later.
    Gap { stored: i64 },
    /// The next version: the account after it, its history line if it moved
    /// money, and what it did to a hold or which transaction it reversed.
    Apply { view: AccountView, entry: Option<HistoryEntry>, side: Option<Side> },
    /// Can never be applied; goes to the dead letters.
    Poison(String),
}

/// What an event changes beside its account and history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// A hold placed or ended, in its new state.
    Hold(HoldView),
    /// (original, reversal): the original's entries are shown as reversed.
    Reversal { original: Uuid, reversal: Uuid },
}

fn hold_state(state: i32) -> Result<&'static str, String> {
    match pb::HoldState::try_from(state) {
        Ok(pb::HoldState::Open) => Ok("OPEN"),
        Ok(pb::HoldState::Captured) => Ok("CAPTURED"),
        Ok(pb::HoldState::Voided) => Ok("VOIDED"),
        Ok(pb::HoldState::Expired) => Ok("EXPIRED"),
        _ => Err("unknown hold state".into()),
    }
}

pub use bank_stream::{account_of, chains_to, occurred_at};

/// Largest magnitude the read model's `numeric(20, 3)` columns hold.
const READ_MODEL_MAX: Decimal = Decimal::from_parts(1_569_325_056, 23_283_064, 0, false, 0); // 10^17

/// An amount the read model can store. Anything else is poison: letting it
/// reach Postgres would fail the whole batch on every redelivery.
fn amount(m: &Option<pb::Money>, what: &str) -> Result<Decimal, String> {
    let m = m.as_ref().ok_or_else(|| format!("{what} missing"))?;
    let value = Decimal::from_str(&m.amount).map_err(|_| format!("{what} is not a decimal"))?;
    if value.abs() >= READ_MODEL_MAX || value.normalize().scale() > 3 {
        return Err(format!("{what} is out of the read model's range"));
    }
    Ok(value)
}

pub fn decide(env: &pb::EventEnvelope, current: Option<&AccountView>) -> Decision {
    match decide_inner(env, current) {
        Ok(d) => d,
        Err(reason) => Decision::Poison(reason),
    }
}

fn decide_inner(env: &pb::EventEnvelope, current: Option<&AccountView>) -> Result<Decision, String> {
    let (account_id, version) = account_of(env)?;
    let stored = current.map_or(0, |c| c.version);
    if version <= stored {
        return Ok(Decision::Duplicate);
    }
    if version > stored + 1 {
        return Ok(Decision::Gap { stored });
    }
    let at = occurred_at(env).ok_or("occurred_at missing")?;
    let transaction_id = Uuid::try_parse(&env.transaction_id).map_err(|_| "transaction_id is not a UUID")?;
    let payload = env.payload.as_ref().ok_or("unknown or missing payload")?;

    if let Payload::AccountOpened(o) = payload {
        if current.is_some() || version != 1 {
            return Err("AccountOpened must be version 1 of a new account".into());
        }
        let kind = match pb::AccountType::try_from(o.r#type) {
            Ok(pb::AccountType::Checking) => "CHECKING",
            Ok(pb::AccountType::Savings) => "SAVINGS",
            Ok(pb::AccountType::Settlement) => "SETTLEMENT",
            Ok(pb::AccountType::FeeIncome) => "FEE_INCOME",
            _ => return Err("unknown account type".into()),
        };
        let view = AccountView {
            account_id,
            owner_id: Uuid::try_parse(&o.owner_id).map_err(|_| "owner_id is not a UUID")?,
            kind: kind.into(),
            currency: o.currency_code.clone(),
            balance: Decimal::ZERO,
            status: "ACTIVE".into(),
            version: 1,
            opened_at: at,
            held: Decimal::ZERO,
        };
        return Ok(Decision::Apply { view, entry: None, side: None });
    }

    let current = current.ok_or("event for an account that was never opened")?;
    let mut view = current.clone();
    view.version = version;
    let mut money = |kind: &str,
                     m: &Option<pb::Money>,
                     before: &Option<pb::Money>,
                     after: &Option<pb::Money>,
                     other: Option<&str>,
                     description: &str|
     -> Result<Option<HistoryEntry>, String> {
        let before = amount(before, "balance_before")?;
        if before != current.balance {
            return Err(format!("balance_before {before} does not match the read model's {}", current.balance));
        }
        let after = amount(after, "balance_after")?;
        view.balance = after;
        let counterparty = match other {
            Some(o) => Some(Uuid::try_parse(o).map_err(|_| "counterparty is not a UUID")?),
            None => None,
        };
        Ok(Some(HistoryEntry {
            account_id,
            version,
            transaction_id,
            kind: kind.into(),
            amount: amount(m, "amount")?,
            balance_before: before,
            balance_after: after,
            counterparty_account_id: counterparty,
            description: description.into(),
            occurred_at: at,
            reverses_transaction_id: None,
            reversed_by_transaction_id: None,
        }))
    };
    let mut side = None;
    let entry = match payload {
        Payload::MoneyDeposited(e) => {
            money(kind::DEPOSIT, &e.amount, &e.balance_before, &e.balance_after, None, &e.description)?
        }
        Payload::MoneyWithdrawn(e) => {
            money(kind::WITHDRAWAL, &e.amount, &e.balance_before, &e.balance_after, None, &e.description)?
        }
        Payload::TransferDebited(e) => money(
            kind::TRANSFER_OUT,
            &e.amount,
            &e.balance_before,
            &e.balance_after,
            Some(&e.to_account_id),
            &e.description,
        )?,
        Payload::TransferCredited(e) => money(
            kind::TRANSFER_IN,
            &e.amount,
            &e.balance_before,
            &e.balance_after,
            Some(&e.from_account_id),
            &e.description,
        )?,
        Payload::Posted(e) => signed(&mut money, env, &e.amount, &e.balance_before, &e.balance_after, &e.description)?,
        Payload::Reversed(e) => {
            let original =
                Uuid::try_parse(&e.reverses_transaction_id).map_err(|_| "reverses_transaction_id is not a UUID")?;
            side = Some(Side::Reversal { original, reversal: transaction_id });
            let mut entry = signed(&mut money, env, &e.amount, &e.balance_before, &e.balance_after, &e.reason)?;
            if let Some(entry) = entry.as_mut() {
                entry.reverses_transaction_id = Some(original);
            }
            entry
        }
        Payload::HoldPlaced(e) => {
            let held = amount(&e.amount, "amount")?;
            let after = amount(&e.held_after, "held_after")?;
            if after != current.held + held {
                return Err(format!("held_after {after} is not the read model's {} + {held}", current.held));
            }
            view.held = after;
            side = Some(Side::Hold(HoldView {
                hold_id: Uuid::try_parse(&e.hold_id).map_err(|_| "hold_id is not a UUID")?,
                account_id,
                to_account_id: Uuid::try_parse(&e.to_account_id).map_err(|_| "to_account_id is not a UUID")?,
                currency: current.currency.clone(),
                amount: held,
                state: "OPEN".into(),
                captured: Decimal::ZERO,
                expires_at: e
                    .expires_at
                    .as_ref()
                    .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
                    .ok_or("expires_at missing")?,
            }));
            None
        }
        Payload::HoldReleased(e) => {
            let released = amount(&e.released, "released")?;
            let after = amount(&e.held_after, "held_after")?;
            if after != current.held - released || after.is_sign_negative() {
                return Err(format!("held_after {after} is not the read model's {} - {released}", current.held));
            }
            view.held = after;
            // Only the state changes; the projector updates the placed row.
            side = Some(Side::Hold(HoldView {
                hold_id: Uuid::try_parse(&e.hold_id).map_err(|_| "hold_id is not a UUID")?,
                account_id,
                to_account_id: Uuid::nil(),
                currency: current.currency.clone(),
                amount: released,
                state: hold_state(e.state)?.into(),
                captured: amount(&e.captured, "captured")?,
                expires_at: at,
            }));
            None
        }
        Payload::LimitsSet(_) | Payload::ScheduledTransferRefused(_) => None,
        Payload::AccountFrozen(_) => {
            view.status = "FROZEN".into();
            None
        }
        Payload::AccountUnfrozen(_) => {
            view.status = "ACTIVE".into();
            None
        }
        Payload::AccountClosed(_) => {
            view.status = "CLOSED".into();
            None
        }
        Payload::AccountOpened(_) => unreachable!("handled above"),
    };
    Ok(Decision::Apply { view, entry, side })
}

type MoneyFold<'a> = dyn FnMut(
        &str,
        &Option<pb::Money>,
        &Option<pb::Money>,
        &Option<pb::Money>,
        Option<&str>,
        &str,
    ) -> Result<Option<HistoryEntry>, String>
    + 'a;

/// A signed posting (a leg, or a reversal's): history keeps the magnitude
/// with the direction as the kind, and the one other posting, when there is
/// exactly one, as the counterparty.
fn signed(
    money: &mut MoneyFold<'_>,
    env: &pb::EventEnvelope,
    amount_signed: &Option<pb::Money>,
    before: &Option<pb::Money>,
    after: &Option<pb::Money>,
    description: &str,
) -> Result<Option<HistoryEntry>, String> {
    let signed = amount(amount_signed, "amount")?;
    let kind = if signed.is_sign_negative() { kind::DEBIT } else { kind::CREDIT };
    let magnitude = amount_signed.as_ref().map(|m| pb::Money {
        currency_code: m.currency_code.clone(),
        amount: m.amount.trim_start_matches('-').to_owned(),
    });
    let other = match env.counterparty_postings.as_slice() {
        [only] => Some(only.account_id.as_str()),
        _ => None,
    };
    money(kind, &magnitude, before, after, other, description)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_the_read_model_cannot_store_are_poison_not_a_failing_batch() {
        assert_eq!(READ_MODEL_MAX, Decimal::from(10u64.pow(17)));
        let id = Uuid::now_v7();
        let view = opened(id);
        for after in ["100000000000000000", "-100000000000000000", "0.0001", "79228162514264337593543950335"] {
            let d = decide(&envelope(id, 2, deposit("0", after)), Some(&view));
            assert!(matches!(d, Decision::Poison(_)), "{after}: {d:?}");
        }
        let ok = decide(&envelope(id, 2, deposit("0", "99999999999999999.999")), Some(&view));
        assert!(matches!(ok, Decision::Apply { .. }), "{ok:?}");
    }

    #[test]
    fn an_event_applies_only_if_it_chains_to_the_last_one_applied() {
        use bank_platform::signing::{GENESIS_HASH, chain_hash};
        let id = Uuid::now_v7();
        let sealed = |version, previous: &[u8]| {
            let mut e = envelope(id, version, deposit("0", "1"));
            e.hash = chain_hash(previous, &e);
            e
        };
        let first = sealed(1, &GENESIS_HASH);
        assert!(chains_to(&first, None));
        assert!(!chains_to(&sealed(1, b"anything else"), None), "a first event chains to genesis");
        let second = sealed(2, &first.hash);
        assert!(chains_to(&second, Some(&Some(first.hash.clone()))));
        let forked = sealed(2, b"another history");
        assert!(!chains_to(&forked, Some(&Some(first.hash.clone()))));
        // A head from before heads were kept: the event starts the check.
        assert!(chains_to(&forked, Some(&None)));
        // The signature fields are not part of the link.
        let signed = pb::EventEnvelope { signature: vec![1; 64], signing_key_id: "k".into(), ..second.clone() };
        assert!(chains_to(&signed, Some(&Some(first.hash))));
    }

    fn usd(a: &str) -> Option<pb::Money> {
        Some(pb::Money { currency_code: "USD".into(), amount: a.into() })
    }

    fn envelope(account: Uuid, version: i64, payload: Payload) -> pb::EventEnvelope {
        pb::EventEnvelope {
            event_id: Uuid::now_v7().to_string(),
            account_id: account.to_string(),
            version,
            transaction_id: Uuid::now_v7().to_string(),
            occurred_at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            payload: Some(payload),
            ..Default::default()
        }
    }

    fn opened(account: Uuid) -> AccountView {
        let e = envelope(
            account,
            1,
            Payload::AccountOpened(pb::AccountOpened {
                owner_id: Uuid::now_v7().to_string(),
                r#type: 1,
                currency_code: "USD".into(),
            }),
        );
        match decide(&e, None) {
            Decision::Apply { view, .. } => view,
            other => panic!("{other:?}"),
        }
    }

    fn deposit(before: &str, after: &str) -> Payload {
        Payload::MoneyDeposited(pb::MoneyDeposited {
            amount: usd("5.00"),
            balance_before: usd(before),
            balance_after: usd(after),
            description: String::new(),
        })
    }

    #[test]
    fn the_next_version_applies_and_records_history() {
        let id = Uuid::now_v7();
        let view = opened(id);
        match decide(&envelope(id, 2, deposit("0.00", "5.00")), Some(&view)) {
            Decision::Apply { view, entry, .. } => {
                assert_eq!((view.version, view.balance), (2, Decimal::from(5)));
                assert_eq!(entry.unwrap().kind, kind::DEPOSIT);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn duplicates_are_skipped_and_gaps_wait() {
        let id = Uuid::now_v7();
        let view = opened(id);
        assert_eq!(decide(&envelope(id, 1, deposit("0", "5")), Some(&view)), Decision::Duplicate);
        assert_eq!(decide(&envelope(id, 3, deposit("0", "5")), Some(&view)), Decision::Gap { stored: 1 });
        assert_eq!(decide(&envelope(id, 2, deposit("0", "5")), None), Decision::Gap { stored: 0 });
    }

    #[test]
    fn garbage_and_unknown_payloads_are_poison() {
        let id = Uuid::now_v7();
        let view = opened(id);
        let mut unknown = envelope(id, 2, deposit("0", "5"));
        unknown.payload = None;
        assert!(matches!(decide(&unknown, Some(&view)), Decision::Poison(_)));
        let mut bad_id = envelope(id, 2, deposit("0", "5"));
        bad_id.account_id = "x".into();
        assert!(matches!(decide(&bad_id, Some(&view)), Decision::Poison(_)));
        assert!(
            matches!(decide(&envelope(id, 2, deposit("1.00", "6.00")), Some(&view)), Decision::Poison(_)),
            "balance_before mismatch"
        );
    }

    #[test]
    fn status_events_change_status_only() {
        let id = Uuid::now_v7();
        let view = opened(id);
        match decide(&envelope(id, 2, Payload::AccountFrozen(pb::AccountFrozen { reason: "x".into() })), Some(&view)) {
            Decision::Apply { view, entry, .. } => assert_eq!((view.status.as_str(), entry), ("FROZEN", None)),
            other => panic!("{other:?}"),
        }
    }

    fn hold_placed(amount: &str, held_after: &str) -> Payload {
        Payload::HoldPlaced(pb::HoldPlaced {
            hold_id: Uuid::now_v7().to_string(),
            to_account_id: Uuid::now_v7().to_string(),
            amount: usd(amount),
            expires_at: Some(prost_types::Timestamp { seconds: 1_700_000_600, nanos: 0 }),
            held_after: usd(held_after),
            description: String::new(),
        })
    }

    #[test]
    fn a_hold_changes_what_is_held_and_records_the_hold_but_no_history() {
        let id = Uuid::now_v7();
        let view = opened(id);
        match decide(&envelope(id, 2, hold_placed("5.00", "5.00")), Some(&view)) {
            Decision::Apply { view, entry, side: Some(Side::Hold(h)) } => {
                assert_eq!((view.balance, view.held, entry), (Decimal::ZERO, Decimal::from(5), None));
                assert_eq!((h.state.as_str(), h.amount), ("OPEN", Decimal::from(5)));
            }
            other => panic!("{other:?}"),
        }
        // A held total that does not follow from the read model is poison.
        let d = decide(&envelope(id, 2, hold_placed("5.00", "7.00")), Some(&view));
        assert!(matches!(d, Decision::Poison(_)), "{d:?}");
    }

    #[test]
    fn a_reversal_entry_names_the_transaction_it_reverses() {
        let id = Uuid::now_v7();
        let view = opened(id);
        let original = Uuid::now_v7();
        let e = envelope(
            id,
            2,
            Payload::Reversed(pb::Reversed {
                amount: usd("3.00"),
                balance_before: usd("0"),
                balance_after: usd("3.00"),
                reverses_transaction_id: original.to_string(),
                reason: "error".into(),
            }),
        );
        match decide(&e, Some(&view)) {
            Decision::Apply { entry: Some(entry), side: Some(Side::Reversal { original: o, .. }), .. } => {
                assert_eq!((entry.kind.as_str(), entry.reverses_transaction_id), (kind::CREDIT, Some(original)));
                assert_eq!(o, original);
            }
            other => panic!("{other:?}"),
        }
    }
}
