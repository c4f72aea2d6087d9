//! Holds (two-phase transfers): money reserved on a source account for a
//! destination, then captured (in full or in part), voided, or expired at its
//! deadline. A hold ends exactly once: every later command on it is refused
//! with the state it ended in.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{DomainError, Money};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldState {
    Open,
    Captured,
    Voided,
    Expired,
}

impl HoldState {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldState::Open => "OPEN",
            HoldState::Captured => "CAPTURED",
            HoldState::Voided => "VOIDED",
            HoldState::Expired => "EXPIRED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "OPEN" => Some(HoldState::Open),
            "CAPTURED" => Some(HoldState::Captured),
            "VOIDED" => Some(HoldState::Voided),
            "EXPIRED" => Some(HoldState::Expired),
            _ => None,
        }
    }

    /// The refusal reason of a command on a hold that ended in this state.
    pub fn ended_reason(self) -> &'static str {
        match self {
            HoldState::Open => "HOLD_OPEN",
            HoldState::Captured => "HOLD_CAPTURED",
            HoldState::Voided => "HOLD_VOIDED",
            HoldState::Expired => "HOLD_EXPIRED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub id: Uuid,
    /// The source: its available balance carries the reservation.
    pub account: Uuid,
    pub to: Uuid,
    pub money: Money,
    pub state: HoldState,
    pub expires_at: DateTime<Utc>,
    pub placed_by: Uuid,
}

impl Hold {
    /// Still open at `now`. An open hold past its deadline is expired, even
    /// before the expiry worker has written so: nothing captures it then.
    pub fn ensure_open(&self, now: DateTime<Utc>) -> Result<(), DomainError> {
        match self.state {
            HoldState::Open if now >= self.expires_at => Err(DomainError::HoldEnded(HoldState::Expired)),
            HoldState::Open => Ok(()),
            ended => Err(DomainError::HoldEnded(ended)),
        }
    }
}
