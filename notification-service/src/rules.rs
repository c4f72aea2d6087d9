//! What an event means to its account's owner, and when a balance alert
//! fires. Pure: unit-tested without servers.

use std::str::FromStr;

use bank_proto::v1::{self as pb, event_envelope::Payload};
use rust_decimal::Decimal;

/// A notification an event makes for the account's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    /// With the event, what makes it once: one per (event, rule).
    pub rule: String,
    pub kind: &'static str,
    pub title: String,
    pub body: String,
}

fn money(m: &Option<pb::Money>) -> String {
    m.as_ref().map(|m| format!("{} {}", m.amount, m.currency_code)).unwrap_or_default()
}

fn unsigned(m: &Option<pb::Money>) -> String {
    m.as_ref().map(|m| format!("{} {}", m.amount.trim_start_matches('-'), m.currency_code)).unwrap_or_default()
}

fn transaction(title: &str, body: String) -> Option<Made> {
    Some(Made { rule: "transaction".into(), kind: "transaction", title: title.into(), body })
}

/// The notification `env` makes for its account's owner, if any.
pub fn notification_for(env: &pb::EventEnvelope) -> Option<Made> {
    match env.payload.as_ref()? {
        Payload::AccountOpened(o) => Some(Made {
            rule: "account_opened".into(),
            kind: "account_opened",
            title: "Account opened".into(),
            body: format!("Your {} account is open.", o.currency_code),
        }),
        Payload::MoneyDeposited(m) => {
            transaction("Money in", format!("{} deposited. Balance: {}.", money(&m.amount), money(&m.balance_after)))
        }
        Payload::MoneyWithdrawn(m) => {
            transaction("Money out", format!("{} withdrawn. Balance: {}.", money(&m.amount), money(&m.balance_after)))
        }
        Payload::TransferDebited(t) => transaction(
            "Transfer sent",
            format!("{} sent to {}. Balance: {}.", money(&t.amount), t.to_account_id, money(&t.balance_after)),
        ),
        Payload::TransferCredited(t) => transaction(
            "Transfer received",
            format!("{} received from {}. Balance: {}.", money(&t.amount), t.from_account_id, money(&t.balance_after)),
        ),
        Payload::Posted(p) => {
            let signed = p.amount.as_ref().map(|m| m.amount.starts_with('-')).unwrap_or(false);
            let (title, verb) = if signed { ("Money out", "debited") } else { ("Money in", "credited") };
            transaction(title, format!("{} {verb}. Balance: {}.", unsigned(&p.amount), money(&p.balance_after)))
        }
        Payload::Reversed(r) => transaction(
            "Transaction reversed",
            format!(
                "Transaction {} was reversed ({}). Balance: {}.",
                r.reverses_transaction_id,
                r.reason,
                money(&r.balance_after)
            ),
        ),
        Payload::HoldPlaced(h) => {
            transaction("Money held", format!("{} held for {}.", money(&h.amount), h.to_account_id))
        }
        Payload::HoldReleased(h) => {
            let state = pb::HoldState::try_from(h.state).map(|s| s.as_str_name()).unwrap_or("HOLD_STATE_UNSPECIFIED");
            let how = state.trim_start_matches("HOLD_STATE_").to_lowercase();
            transaction("Hold ended", format!("The hold of {} was {how}.", money(&h.released)))
        }
        Payload::AccountFrozen(f) => Some(Made {
            rule: "account_status".into(),
            kind: "account_status",
            title: "Account frozen".into(),
            body: format!("Your account was frozen: {}.", f.reason),
        }),
        Payload::AccountUnfrozen(_) => Some(Made {
            rule: "account_status".into(),
            kind: "account_status",
            title: "Account unfrozen".into(),
            body: "Your account is usable again.".into(),
        }),
        Payload::AccountClosed(_) => Some(Made {
            rule: "account_status".into(),
            kind: "account_status",
            title: "Account closed".into(),
            body: "Your account was closed.".into(),
        }),
        Payload::LimitsSet(_) => None,
        Payload::ScheduledTransferRefused(r) => {
            let why = r.reason.to_lowercase().replace('_', " ");
            let next = match &r.retry_at {
                Some(t) => match chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32) {
                    Some(at) => format!("It will be tried again at {}.", at.format("%Y-%m-%d %H:%M UTC")),
                    None => "It will be tried again.".to_owned(),
                },
                None => "That was the last attempt: this payment will not be made.".to_owned(),
            };
            Some(Made {
                rule: "schedule_refused".into(),
                kind: "schedule_refused",
                title: "Scheduled transfer refused".into(),
                body: format!(
                    "Your scheduled transfer of {} to {} was refused ({why}, attempt {}). {next}",
                    money(&r.amount),
                    r.to_account_id,
                    r.attempt
                ),
            })
        }
    }
}

/// The notification a change of the user's standing makes, if any: the
/// statuses it moved between (auth-service's PENDING_KYC, ACTIVE,
/// SUSPENDED). A change of roles alone says nothing to the customer.
pub fn standing_notification(previous: Option<&str>, status: &str) -> Option<Made> {
    let made = |kind: &'static str, title: &str, body: &str| {
        Some(Made { rule: kind.into(), kind, title: title.into(), body: body.into() })
    };
    match (previous?, status) {
        ("PENDING_KYC", "ACTIVE") => made(
            "kyc_approved",
            "Identity verified",
            "Your identity is verified: you can now open accounts and move money.",
        ),
        ("SUSPENDED", "ACTIVE") => made("access_restored", "Access restored", "Your access to the bank is restored."),
        (before, "SUSPENDED") if before != "SUSPENDED" => made(
            "access_suspended",
            "Access suspended",
            "Your access to the bank is suspended: no money moves until it is restored. Contact us to learn why.",
        ),
        _ => None,
    }
}

/// The account's balance after `env`, when the event moved money.
pub fn balance_after(env: &pb::EventEnvelope) -> Option<Decimal> {
    let after = match env.payload.as_ref()? {
        Payload::MoneyDeposited(m) => &m.balance_after,
        Payload::MoneyWithdrawn(m) => &m.balance_after,
        Payload::TransferDebited(t) => &t.balance_after,
        Payload::TransferCredited(t) => &t.balance_after,
        Payload::Posted(p) => &p.balance_after,
        Payload::Reversed(r) => &r.balance_after,
        _ => return None,
    };
    Decimal::from_str(&after.as_ref()?.amount).ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Below,
    Above,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Below => "BELOW",
            Direction::Above => "ABOVE",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "BELOW" => Some(Direction::Below),
            "ABOVE" => Some(Direction::Above),
            _ => None,
        }
    }
}

/// A balance alert as the rule needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alert {
    pub direction: Direction,
    pub threshold: Decimal,
    /// Whether the balance is past the threshold now.
    pub beyond: bool,
}

impl Alert {
    pub fn is_beyond(&self, balance: Decimal) -> bool {
        match self.direction {
            Direction::Below => balance < self.threshold,
            Direction::Above => balance > self.threshold,
        }
    }

    /// The balance became `balance`: whether the alert fires (it crossed
    /// into past the threshold), and the alert after.
    pub fn on_balance(self, balance: Decimal) -> (bool, Alert) {
        let beyond = self.is_beyond(balance);
        (beyond && !self.beyond, Alert { beyond, ..self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn a_below_alert_fires_once_per_crossing_not_once_per_event_below() {
        let mut alert = Alert { direction: Direction::Below, threshold: d("100"), beyond: false };
        let mut fired = Vec::new();
        for balance in ["150", "99.99", "50", "10", "100", "120", "80", "100"] {
            let (fires, after) = alert.on_balance(d(balance));
            fired.push(fires);
            alert = after;
        }
        assert_eq!(fired, [false, true, false, false, false, false, true, false]);
    }

    #[test]
    fn an_above_alert_fires_on_the_way_up_and_the_threshold_itself_is_not_past_it() {
        let alert = Alert { direction: Direction::Above, threshold: d("1000"), beyond: false };
        assert!(!alert.on_balance(d("1000")).0);
        let (fires, after) = alert.on_balance(d("1000.01"));
        assert!(fires && after.beyond);
        assert!(!after.on_balance(d("5000")).0, "still above: no second alert");
    }

    #[test]
    fn money_events_say_what_moved_and_the_balance_after() {
        let env = pb::EventEnvelope {
            payload: Some(Payload::TransferCredited(pb::TransferCredited {
                amount: Some(pb::Money { currency_code: "USD".into(), amount: "25.50".into() }),
                balance_after: Some(pb::Money { currency_code: "USD".into(), amount: "74.50".into() }),
                from_account_id: "a".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let made = notification_for(&env).unwrap();
        assert_eq!((made.rule.as_str(), made.title.as_str()), ("transaction", "Transfer received"));
        assert_eq!(made.body, "25.50 USD received from a. Balance: 74.50 USD.");
        assert_eq!(balance_after(&env), Some(d("74.50")));
        let limits = pb::EventEnvelope { payload: Some(Payload::LimitsSet(Default::default())), ..Default::default() };
        assert_eq!(notification_for(&limits), None);
    }

    #[test]
    fn a_kyc_approval_a_suspension_and_a_reinstatement_each_say_so_and_nothing_else_does() {
        let kind = |previous, status| standing_notification(previous, status).map(|m| m.kind);
        assert_eq!(kind(Some("PENDING_KYC"), "ACTIVE"), Some("kyc_approved"));
        assert_eq!(kind(Some("ACTIVE"), "SUSPENDED"), Some("access_suspended"));
        assert_eq!(kind(Some("PENDING_KYC"), "SUSPENDED"), Some("access_suspended"));
        assert_eq!(kind(Some("SUSPENDED"), "ACTIVE"), Some("access_restored"));
        assert_eq!(kind(Some("ACTIVE"), "ACTIVE"), None, "a change of roles");
        assert_eq!(kind(Some("SUSPENDED"), "SUSPENDED"), None);
        assert_eq!(kind(None, "ACTIVE"), None, "from a status nobody recorded: not known to be an approval");
    }

    #[test]
    fn a_refused_scheduled_transfer_says_why_and_whether_it_is_tried_again() {
        let refused = |retry_at| pb::EventEnvelope {
            payload: Some(Payload::ScheduledTransferRefused(pb::ScheduledTransferRefused {
                amount: Some(pb::Money { currency_code: "EUR".into(), amount: "800.00".into() }),
                to_account_id: "b".into(),
                reason: "INSUFFICIENT_FUNDS".into(),
                attempt: 2,
                retry_at,
                ..Default::default()
            })),
            ..Default::default()
        };
        let again = notification_for(&refused(Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 })));
        let again = again.unwrap();
        assert_eq!((again.rule.as_str(), again.title.as_str()), ("schedule_refused", "Scheduled transfer refused"));
        assert_eq!(
            again.body,
            "Your scheduled transfer of 800.00 EUR to b was refused (insufficient funds, attempt 2). \
             It will be tried again at 2027-01-15 08:00 UTC."
        );
        let last = notification_for(&refused(None)).unwrap();
        assert!(last.body.ends_with("That was the last attempt: this payment will not be made."), "{}", last.body);
        assert_eq!(balance_after(&refused(None)), None, "no money moved");
    }
}
