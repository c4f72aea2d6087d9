//! Request validation, no I/O: each field parsed into a value that is valid
//! by construction, every violation of a request reported at once, and each
//! rule (and its message) written once.

use bank_domain::{
    Currency, DebitLimits, InputError, Money,
    ledger::Posting,
    parse_amount,
    schedule::{Cadence, Recurrence},
};
use bank_proto::v1 as pb;
use chrono::{DateTime, Datelike, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::error::{CommandError, leg_violation};

/// Keys the bank's scheduler claims for its owners.
const SCHEDULE_KEY_PREFIX: &str = "schedule:";

/// A client's idempotency key: 1–128 characters, none a control character.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(key: &str) -> Result<Self, InputError> {
        let field = "idempotency_key";
        if key.is_empty() {
            Err(InputError::new(field, "is required for every mutating command"))
        } else if key.chars().count() > 128 || key.chars().any(char::is_control) {
            Err(InputError::new(field, "must be 1-128 characters without control characters"))
        } else if key.starts_with(SCHEDULE_KEY_PREFIX) {
            // The scheduler runs occurrences under the owner's identity and
            // these keys: a client's own key must not pre-empt one.
            Err(InputError::new(
                field,
                format!("must not start with \"{SCHEDULE_KEY_PREFIX}\" (the bank's scheduled transfers use it)"),
            ))
        } else {
            Ok(Self(key.to_owned()))
        }
    }

    /// The key of one attempt at one occurrence of a scheduled transfer.
    pub fn scheduled(schedule: Uuid, occurrence: u32, attempt: u32) -> Self {
        Self(format!("{SCHEDULE_KEY_PREFIX}{schedule}:{occurrence}:{attempt}"))
    }

    /// The key of the record that one attempt was refused.
    pub fn scheduled_refusal(schedule: Uuid, occurrence: u32, attempt: u32) -> Self {
        Self(format!("{SCHEDULE_KEY_PREFIX}{schedule}:{occurrence}:{attempt}:refused"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub fn parse_id(field: &str, text: &str) -> Result<Uuid, InputError> {
    if text.is_empty() {
        return Err(InputError::new(field, "is required"));
    }
    Uuid::try_parse(text).map_err(|_| InputError::new(field, "must be a UUID"))
}

/// Free text shown to people (a description, a reason): at most `max`
/// characters, none a control character.
pub fn text(field: &str, value: &str, max: usize) -> Result<String, InputError> {
    if value.chars().count() > max || value.chars().any(char::is_control) {
        Err(InputError::new(field, format!("must be at most {max} characters without control characters")))
    } else {
        Ok(value.to_owned())
    }
}

/// A transaction's description, shown in history.
pub fn description(value: &str) -> Result<String, InputError> {
    text("description", value, 140)
}

/// A reversal's reason: required, shown in both accounts' history.
pub fn reversal_reason(value: &str) -> Result<String, InputError> {
    if value.trim().is_empty() {
        return Err(InputError::new("reason", "is required: it is shown in both accounts' history"));
    }
    text("reason", value, 140)
}

/// A freeze's or unfreeze's reason.
pub fn status_reason(value: &str) -> Result<String, InputError> {
    text("reason", value, 200)
}

pub fn currency(field: &str, code: &str) -> Result<Currency, InputError> {
    Currency::from_code(code).map_err(|e| InputError::new(field, e.description))
}

/// A `Money` field named `field` (`money`, `amount`, `legs[2].money`).
pub fn money(field: &str, money: Option<&pb::Money>, max: Decimal) -> Result<Money, Vec<InputError>> {
    let Some(m) = money else {
        return Err(vec![InputError::new(field, "is required")]);
    };
    let currency = currency(&format!("{field}.currency_code"), &m.currency_code).map_err(|e| vec![e])?;
    let amount = parse_amount(&format!("{field}.amount"), &m.amount, currency, max).map_err(|e| vec![e])?;
    Ok(Money::new(currency, amount))
}

/// An optional limit: absent, or an empty amount, is no limit.
pub fn limit(field: &str, money: Option<&pb::Money>, max: Decimal) -> Result<Option<Money>, InputError> {
    let Some(m) = money.filter(|m| !m.amount.is_empty() || !m.currency_code.is_empty()) else { return Ok(None) };
    let currency = currency(&format!("{field}.currency_code"), &m.currency_code)?;
    if m.amount.is_empty() {
        return Ok(None);
    }
    let amount = parse_amount(&format!("{field}.amount"), &m.amount, currency, max)?;
    Ok(Some(Money::new(currency, amount)))
}

/// Both limits of an account, in one currency (None when both are removed).
pub fn limits(
    v: &mut Violations,
    max_single_debit: Option<&pb::Money>,
    daily_debit_limit: Option<&pb::Money>,
    max: Decimal,
) -> Option<(DebitLimits, Option<Currency>)> {
    let max_debit = v.check(limit("max_single_debit", max_single_debit, max));
    let daily = v.check(limit("daily_debit_limit", daily_debit_limit, max));
    let (max_debit, daily) = (max_debit?, daily?);
    let currency = match (max_debit, daily) {
        (Some(a), Some(b)) if a.currency != b.currency => {
            v.add("daily_debit_limit.currency_code", "must be the currency of max_single_debit");
            return None;
        }
        (a, b) => a.or(b).map(|m| m.currency),
    };
    Some((DebitLimits { max_debit: max_debit.map(|m| m.amount), daily_debit: daily.map(|m| m.amount) }, currency))
}

/// Source and destination (distinct) of a transfer or a hold.
pub fn movement(v: &mut Violations, from: &str, to: &str) -> (Option<Uuid>, Option<Uuid>) {
    let from = v.check(parse_id("from_account_id", from));
    let to = v.check(parse_id("to_account_id", to));
    if from.is_some() && from == to {
        v.add("to_account_id", "must differ from from_account_id");
    }
    (from, to)
}

/// The legs of a posted transaction: each leg's fields checked, then the
/// whole (count, distinct accounts, balanced per currency) by the domain.
pub fn legs(legs: &[pb::PostingLeg], max_amount: Decimal, v: &mut Violations) -> Option<Vec<Posting>> {
    use bank_domain::ledger::{MAX_LEGS, check_legs};
    // Counted first: thousands of legs must not become thousands of violations.
    if !(2..=MAX_LEGS).contains(&legs.len()) {
        v.add("legs", &format!("a transaction has 2 to {MAX_LEGS} legs"));
        return None;
    }
    let mut out = Vec::with_capacity(legs.len());
    for (i, leg) in legs.iter().enumerate() {
        let account = v.check(parse_id(&format!("legs[{i}].account_id"), &leg.account_id));
        let money = v.check_all(money(&format!("legs[{i}].money"), leg.money.as_ref(), max_amount));
        let sign = match pb::PostingSide::try_from(leg.side) {
            Ok(pb::PostingSide::Debit) => Some(-Decimal::ONE),
            Ok(pb::PostingSide::Credit) => Some(Decimal::ONE),
            _ => {
                v.add(&format!("legs[{i}].side"), "must be POSTING_SIDE_DEBIT or POSTING_SIDE_CREDIT");
                None
            }
        };
        if let (Some(account), Some(m), Some(sign)) = (account, money, sign) {
            out.push(Posting { account, currency: m.currency, amount: m.amount * sign });
        }
    }
    if out.len() != legs.len() {
        return None;
    }
    v.check(check_legs(&out).map_err(|e| leg_violation(&e))).map(|()| out)
}

/// Longest a hold may last.
const MAX_HOLD_SECONDS: i64 = 30 * 24 * 3600;

/// A hold's deadline from exactly one of `expires_at` or `ttl_seconds`.
pub fn hold_deadline(
    expires_at: Option<&prost_types::Timestamp>,
    ttl_seconds: i64,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, InputError> {
    let latest = now + chrono::Duration::seconds(MAX_HOLD_SECONDS);
    match (expires_at, ttl_seconds) {
        (Some(_), t) if t != 0 => Err(InputError::new("ttl_seconds", "give expires_at or ttl_seconds, not both")),
        (None, 0) => Err(InputError::new("expires_at", "expires_at or ttl_seconds is required")),
        (None, t) if !(1..=MAX_HOLD_SECONDS).contains(&t) => {
            Err(InputError::new("ttl_seconds", format!("must be 1 to {MAX_HOLD_SECONDS}")))
        }
        (None, t) => Ok(now + chrono::Duration::seconds(t)),
        (Some(ts), _) => {
            let at = timestamp("expires_at", ts)?;
            if at <= now || at > latest {
                return Err(InputError::new("expires_at", "must be in the future and at most 30 days away"));
            }
            Ok(at)
        }
    }
}

/// A timestamp field, to the microsecond: Postgres keeps microseconds, so
/// the instant stored is the one answered.
pub fn timestamp(field: &str, ts: &prost_types::Timestamp) -> Result<DateTime<Utc>, InputError> {
    let at = u32::try_from(ts.nanos)
        .ok()
        .and_then(|n| DateTime::from_timestamp(ts.seconds, n))
        .ok_or_else(|| InputError::new(field, "is not a valid timestamp"))?;
    Ok(DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at))
}

/// Furthest ahead a schedule's first occurrence may be.
const MAX_SCHEDULE_START_DAYS: i64 = 366;

/// The when of a new scheduled transfer: cadence, start, zone, day, end.
pub fn recurrence(
    v: &mut Violations,
    r: &pb::CreateScheduledTransferRequest,
    now: DateTime<Utc>,
) -> Option<Recurrence> {
    let zone = if r.time_zone.is_empty() {
        Some(chrono_tz::UTC)
    } else {
        v.check(
            r.time_zone
                .parse::<chrono_tz::Tz>()
                .map_err(|_| InputError::new("time_zone", "must be an IANA time zone, such as Europe/Berlin")),
        )
    };
    let start = match &r.start_at {
        None => v.check(Err(InputError::new("start_at", "is required"))),
        Some(ts) => v.check(timestamp("start_at", ts).and_then(|at| {
            if at <= now || at > now + chrono::Duration::days(MAX_SCHEDULE_START_DAYS) {
                Err(InputError::new(
                    "start_at",
                    format!("must be in the future and at most {MAX_SCHEDULE_START_DAYS} days away"),
                ))
            } else {
                Ok(at)
            }
        })),
    };
    let end = match &r.end_at {
        None => Some(None),
        Some(ts) => v.check(timestamp("end_at", ts).and_then(|end| match start {
            Some(start) if end < start => Err(InputError::new("end_at", "must not be before start_at")),
            _ => Ok(Some(end)),
        })),
    };
    let monthly = pb::Cadence::try_from(r.cadence) == Ok(pb::Cadence::Monthly);
    let day = match r.day_of_month {
        0 => Some(None),
        d if !monthly => v.check(Err(InputError::new("day_of_month", format!("{d}: is for CADENCE_MONTHLY only")))),
        d @ 1..=31 => Some(Some(d as u32)),
        _ => v.check(Err(InputError::new("day_of_month", "must be 1-31, or 0 for start_at's day"))),
    };
    let cadence = match pb::Cadence::try_from(r.cadence) {
        Ok(pb::Cadence::Once) => Some(Cadence::Once),
        Ok(pb::Cadence::Daily) => Some(Cadence::Daily),
        Ok(pb::Cadence::Weekly) => Some(Cadence::Weekly),
        Ok(pb::Cadence::Monthly) => {
            // The day defaults to start_at's, in the customer's zone.
            let start_day = start.zip(zone).map(|(at, zone)| at.with_timezone(&zone).day());
            day.and_then(|d| d.or(start_day)).map(|day| Cadence::Monthly { day })
        }
        _ => {
            v.add("cadence", "must be CADENCE_ONCE, CADENCE_DAILY, CADENCE_WEEKLY or CADENCE_MONTHLY");
            None
        }
    };
    Some(Recurrence::new(cadence?, zone?, start?, end?))
}

/// Collects every violation of a request, so the caller learns all at once.
#[derive(Default)]
pub struct Violations(Vec<InputError>);

impl Violations {
    pub fn check<T>(&mut self, r: Result<T, InputError>) -> Option<T> {
        r.map_err(|e| self.0.push(e)).ok()
    }

    pub fn check_all<T>(&mut self, r: Result<T, Vec<InputError>>) -> Option<T> {
        r.map_err(|e| self.0.extend(e)).ok()
    }

    pub fn add(&mut self, field: &str, description: &str) {
        self.0.push(InputError::new(field, description));
    }

    /// The built value when nothing was violated.
    pub fn finish<T>(self, build: impl FnOnce() -> Option<T>) -> Result<T, CommandError> {
        if !self.0.is_empty() {
            return Err(CommandError::Invalid(self.0));
        }
        build().ok_or_else(|| CommandError::Internal(anyhow::anyhow!("validated value missing")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idempotency_key_is_one_to_128_printable_characters() {
        assert!(IdempotencyKey::parse("k-1").is_ok());
        assert_eq!(IdempotencyKey::parse("").unwrap_err().description, "is required for every mutating command");
        assert!(IdempotencyKey::parse(&"x".repeat(129)).is_err());
        assert!(IdempotencyKey::parse("a\nb").is_err());
    }

    #[test]
    fn every_violation_of_a_leg_is_named_by_its_field() {
        let mut v = Violations::default();
        let bad = pb::PostingLeg { account_id: "nope".into(), money: None, side: 0 };
        let good = pb::PostingLeg {
            account_id: Uuid::now_v7().to_string(),
            money: Some(pb::Money { currency_code: "XXX".into(), amount: "1".into() }),
            side: pb::PostingSide::Credit as i32,
        };
        assert_eq!(legs(&[bad, good], Decimal::from(100), &mut v), None);
        let fields: Vec<String> = v.0.iter().map(|e| e.field.clone()).collect();
        assert_eq!(fields, ["legs[0].account_id", "legs[0].money", "legs[0].side", "legs[1].money.currency_code"]);
    }

    #[test]
    fn limits_in_two_currencies_are_refused() {
        let mut v = Violations::default();
        let usd = pb::Money { currency_code: "USD".into(), amount: "10".into() };
        let eur = pb::Money { currency_code: "EUR".into(), amount: "10".into() };
        assert_eq!(limits(&mut v, Some(&usd), Some(&eur), Decimal::from(100)), None);
        assert_eq!(v.0[0].field, "daily_debit_limit.currency_code");
    }

    #[test]
    fn free_text_rules_are_one_rule_with_its_bound() {
        assert!(description(&"d".repeat(140)).is_ok());
        assert_eq!(
            description(&"d".repeat(141)).unwrap_err().description,
            "must be at most 140 characters without control characters"
        );
        assert!(status_reason(&"r".repeat(200)).is_ok());
        assert_eq!(reversal_reason(" ").unwrap_err().field, "reason");
    }
}
