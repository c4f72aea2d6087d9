//! Scheduled and recurring transfers: when each occurrence falls, and what a
//! schedule does with a change asked by its owner or with an occurrence's
//! outcome. No I/O and no clock: `now` is always given.
//!
//! An occurrence is identified by its index `n` (0 = the first), and its
//! instant is computed from the start alone, never from the previous one, so
//! "monthly on the 31st" is Feb 28 and then Mar 31 again, and a daylight-saving
//! change moves the UTC instant but not the customer's wall-clock time.

use chrono::{DateTime, Datelike, Days, Duration, LocalResult, Months, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cadence {
    Once,
    Daily,
    Weekly,
    /// On this day of every month (1-31), the month's last day when it is shorter.
    Monthly {
        day: u32,
    },
}

impl Cadence {
    pub fn as_str(self) -> &'static str {
        match self {
            Cadence::Once => "ONCE",
            Cadence::Daily => "DAILY",
            Cadence::Weekly => "WEEKLY",
            Cadence::Monthly { .. } => "MONTHLY",
        }
    }
}

/// When the occurrences of a schedule fall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recurrence {
    pub cadence: Cadence,
    /// The customer's time zone: wall-clock times are kept in it.
    pub zone: Tz,
    /// The first occurrence's wall-clock date and time in `zone`.
    start: NaiveDateTime,
    /// No occurrence after this instant.
    pub end: Option<DateTime<Utc>>,
}

impl Recurrence {
    pub fn new(cadence: Cadence, zone: Tz, start: DateTime<Utc>, end: Option<DateTime<Utc>>) -> Self {
        Self { cadence, zone, start: start.with_timezone(&zone).naive_local(), end }
    }

    /// The instant of occurrence `n`, or `None` when there is none: a one-off
    /// after its first, past the end, or past the calendar's range.
    pub fn occurrence(&self, n: u32) -> Option<DateTime<Utc>> {
        let first = self.start.date();
        let date = match self.cadence {
            Cadence::Once if n == 0 => first,
            Cadence::Once => return None,
            Cadence::Daily => first.checked_add_days(Days::new(u64::from(n)))?,
            Cadence::Weekly => first.checked_add_days(Days::new(u64::from(n) * 7))?,
            Cadence::Monthly { day } => {
                // The first month is the start's when its day is not already
                // behind the start, else the next one.
                let skip = u32::from(day_in(first, day)? < first);
                day_in(first.with_day(1)?.checked_add_months(Months::new(n.checked_add(skip)?))?, day)?
            }
        };
        let at = resolve(self.zone, date.and_time(self.start.time()))?;
        match self.end {
            Some(end) if at > end => None,
            _ => Some(at),
        }
    }

    /// The first occurrence from `from` on that falls at or after `now`:
    /// where a resumed schedule picks up.
    pub fn first_from(&self, from: u32, now: DateTime<Utc>) -> Option<(u32, DateTime<Utc>)> {
        (from..).map_while(|n| self.occurrence(n).map(|at| (n, at))).find(|(_, at)| *at >= now)
    }
}

/// `day` of the month of `date`, clamped to the month's last day.
fn day_in(date: NaiveDate, day: u32) -> Option<NaiveDate> {
    let first = date.with_day(1)?;
    let last = first.checked_add_months(Months::new(1))?.pred_opt()?.day();
    first.with_day(day.min(last))
}

/// A wall-clock time in `zone` as an instant. A time the clock shows twice
/// (the autumn change) is its first; a time it skips (the spring change) is
/// the moment the clock jumps past it, so an occurrence is never dropped.
fn resolve(zone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => Some(at.to_utc()),
        LocalResult::None => (1..=180)
            .find_map(|m| zone.from_local_datetime(&(local + Duration::minutes(m))).earliest())
            .map(|at| at.to_utc()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleState {
    Active,
    Paused,
    Cancelled,
    /// No occurrence is left.
    Completed,
}

impl ScheduleState {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleState::Active => "ACTIVE",
            ScheduleState::Paused => "PAUSED",
            ScheduleState::Cancelled => "CANCELLED",
            ScheduleState::Completed => "COMPLETED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Active, Self::Paused, Self::Cancelled, Self::Completed].into_iter().find(|v| v.as_str() == s)
    }
}

/// What the scheduler needs of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub recurrence: Recurrence,
    pub state: ScheduleState,
    /// The occurrence to run next, and which attempt at it.
    pub next: u32,
    pub attempt: u32,
    /// When it runs (`None` once nothing is left).
    pub run_at: Option<DateTime<Utc>>,
}

impl Schedule {
    /// A new schedule: its first occurrence, which must not be past.
    pub fn create(recurrence: Recurrence, now: DateTime<Utc>) -> Result<Self, ScheduleError> {
        match recurrence.occurrence(0) {
            Some(first) if first >= now => {
                Ok(Self { recurrence, state: ScheduleState::Active, next: 0, attempt: 1, run_at: Some(first) })
            }
            _ => Err(ScheduleError::NoOccurrence),
        }
    }
}

/// What an owner asks of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Pause,
    Resume,
    Cancel,
}

/// How an occurrence's attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The transfer was made.
    Succeeded,
    /// The ledger refused it (funds, limits, a frozen or closed account, an
    /// owner no longer in good standing).
    Refused,
}

/// What happened to a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleEvent {
    Paused,
    /// Active again from occurrence `next` (occurrences that fell while it
    /// was paused are not run: that is what pausing means).
    Resumed {
        next: u32,
        run_at: DateTime<Utc>,
    },
    Cancelled,
    /// An occurrence ended (made, or refused for the last time); the next one
    /// runs at `run_at`, or none is left.
    Advanced {
        next: u32,
        run_at: Option<DateTime<Utc>>,
    },
    /// An attempt was refused; the occurrence is tried again.
    Retrying {
        attempt: u32,
        run_at: DateTime<Utc>,
    },
}

/// How a refused occurrence is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per occurrence, the first included.
    pub max_attempts: u32,
    /// Wait between attempts.
    pub delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ScheduleError {
    #[error("the schedule was cancelled")]
    Cancelled,
    #[error("the schedule has no occurrence left")]
    Completed,
    #[error("the schedule has no occurrence at or after now")]
    NoOccurrence,
}

impl ScheduleError {
    /// Stable machine-readable reason (google.rpc.ErrorInfo.reason).
    pub fn reason(self) -> &'static str {
        match self {
            ScheduleError::Cancelled => "SCHEDULE_CANCELLED",
            ScheduleError::Completed => "SCHEDULE_COMPLETED",
            ScheduleError::NoOccurrence => "SCHEDULE_HAS_NO_OCCURRENCE",
        }
    }
}

/// An owner's change: the event it makes, or `None` when the schedule is
/// already so (pausing a paused schedule changes nothing).
pub fn handle(s: &Schedule, change: Change, now: DateTime<Utc>) -> Result<Option<ScheduleEvent>, ScheduleError> {
    use {Change::*, ScheduleState::*};
    match (s.state, change) {
        (Cancelled, Cancel) => Ok(None),
        (Cancelled, _) => Err(ScheduleError::Cancelled),
        (Completed, _) => Err(ScheduleError::Completed),
        (Active, Pause) => Ok(Some(ScheduleEvent::Paused)),
        (Paused, Pause) | (Active, Resume) => Ok(None),
        (Paused, Resume) => match s.recurrence.first_from(s.next, now) {
            Some((next, run_at)) => Ok(Some(ScheduleEvent::Resumed { next, run_at })),
            None => Ok(Some(ScheduleEvent::Advanced { next: s.next, run_at: None })),
        },
        (Active | Paused, Cancel) => Ok(Some(ScheduleEvent::Cancelled)),
    }
}

/// The outcome of the current attempt at the current occurrence.
pub fn settle(s: &Schedule, outcome: Outcome, now: DateTime<Utc>, policy: RetryPolicy) -> ScheduleEvent {
    match outcome {
        Outcome::Refused if s.attempt < policy.max_attempts => {
            ScheduleEvent::Retrying { attempt: s.attempt + 1, run_at: now + policy.delay }
        }
        Outcome::Succeeded | Outcome::Refused => {
            let next = s.next + 1;
            ScheduleEvent::Advanced { next, run_at: s.recurrence.occurrence(next) }
        }
    }
}

pub fn apply(s: &mut Schedule, event: ScheduleEvent) {
    match event {
        ScheduleEvent::Paused => s.state = ScheduleState::Paused,
        ScheduleEvent::Cancelled => {
            s.state = ScheduleState::Cancelled;
            s.run_at = None;
        }
        ScheduleEvent::Resumed { next, run_at } => {
            s.state = ScheduleState::Active;
            s.next = next;
            s.attempt = 1;
            s.run_at = Some(run_at);
        }
        ScheduleEvent::Advanced { next, run_at } => {
            s.next = next;
            s.attempt = 1;
            s.run_at = run_at;
            if run_at.is_none() {
                s.state = ScheduleState::Completed;
            }
        }
        ScheduleEvent::Retrying { attempt, run_at } => {
            s.attempt = attempt;
            s.run_at = Some(run_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono_tz::{America::New_York, Europe::Berlin, UTC};

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn all(r: &Recurrence, count: u32) -> Vec<String> {
        (0..count).map_while(|n| r.occurrence(n)).map(|t| t.to_rfc3339()).collect()
    }

    #[test]
    fn monthly_on_the_31st_is_the_last_day_of_shorter_months_and_the_31st_again_after() {
        let r = Recurrence::new(Cadence::Monthly { day: 31 }, UTC, at("2027-01-31T09:00:00Z"), None);
        assert_eq!(
            all(&r, 5),
            [
                "2027-01-31T09:00:00+00:00",
                "2027-02-28T09:00:00+00:00",
                "2027-03-31T09:00:00+00:00",
                "2027-04-30T09:00:00+00:00",
                "2027-05-31T09:00:00+00:00"
            ]
        );
        // A leap year's February has a 29th.
        let leap = Recurrence::new(Cadence::Monthly { day: 31 }, UTC, at("2028-01-31T09:00:00Z"), None);
        assert_eq!(leap.occurrence(1), Some(at("2028-02-29T09:00:00Z")));
    }

    #[test]
    fn monthly_starts_in_the_next_month_when_the_day_is_already_behind_the_start() {
        let r = Recurrence::new(Cadence::Monthly { day: 5 }, UTC, at("2027-01-20T08:00:00Z"), None);
        assert_eq!(all(&r, 2), ["2027-02-05T08:00:00+00:00", "2027-03-05T08:00:00+00:00"]);
        let same = Recurrence::new(Cadence::Monthly { day: 20 }, UTC, at("2027-01-20T08:00:00Z"), None);
        assert_eq!(same.occurrence(0), Some(at("2027-01-20T08:00:00Z")));
    }

    #[test]
    fn a_daily_transfer_keeps_the_customers_wall_clock_time_across_daylight_saving() {
        // Berlin moves from UTC+1 to UTC+2 on 2027-03-28.
        let r = Recurrence::new(Cadence::Daily, Berlin, at("2027-03-27T08:00:00Z"), None);
        assert_eq!(all(&r, 2), ["2027-03-27T08:00:00+00:00", "2027-03-28T07:00:00+00:00"]);
        // And back on 2027-10-31.
        let autumn = Recurrence::new(Cadence::Weekly, Berlin, at("2027-10-24T07:00:00Z"), None);
        assert_eq!(autumn.occurrence(1), Some(at("2027-10-31T08:00:00Z")));
    }

    #[test]
    fn a_time_the_clock_skips_runs_when_the_clock_jumps_past_it_and_a_doubled_time_runs_once() {
        // 02:30 does not exist in New York on 2027-03-14 (02:00 -> 03:00 EDT).
        let r = Recurrence::new(Cadence::Daily, New_York, at("2027-03-13T07:30:00Z"), None);
        assert_eq!(r.occurrence(1), Some(at("2027-03-14T07:00:00Z")), "03:00 EDT");
        assert_eq!(r.occurrence(2), Some(at("2027-03-15T06:30:00Z")), "02:30 EDT");
        // 01:30 happens twice on 2027-11-07: the first one (EDT).
        let fall = Recurrence::new(Cadence::Daily, New_York, at("2027-11-06T05:30:00Z"), None);
        assert_eq!(fall.occurrence(1), Some(at("2027-11-07T05:30:00Z")));
    }

    #[test]
    fn nothing_falls_after_the_end_or_after_a_one_off() {
        let r = Recurrence::new(Cadence::Weekly, UTC, at("2027-01-01T10:00:00Z"), Some(at("2027-01-15T10:00:00Z")));
        assert_eq!(all(&r, 10).len(), 3);
        let once = Recurrence::new(Cadence::Once, UTC, at("2027-01-01T10:00:00Z"), None);
        assert_eq!(all(&once, 10), ["2027-01-01T10:00:00+00:00"]);
    }

    fn daily(now: DateTime<Utc>) -> Schedule {
        Schedule::create(Recurrence::new(Cadence::Daily, UTC, now, None), now).unwrap()
    }

    const POLICY: RetryPolicy = RetryPolicy { max_attempts: 3, delay: Duration::hours(1) };

    #[test]
    fn a_refused_occurrence_is_retried_per_the_policy_then_given_up_for_the_next() {
        let now = at("2027-01-01T10:00:00Z");
        let mut s = daily(now);
        for attempt in 2..=3 {
            let e = settle(&s, Outcome::Refused, now, POLICY);
            assert_eq!(e, ScheduleEvent::Retrying { attempt, run_at: now + Duration::hours(1) });
            apply(&mut s, e);
        }
        let e = settle(&s, Outcome::Refused, now, POLICY);
        assert_eq!(e, ScheduleEvent::Advanced { next: 1, run_at: Some(at("2027-01-02T10:00:00Z")) });
        apply(&mut s, e);
        assert_eq!((s.next, s.attempt), (1, 1));
    }

    #[test]
    fn a_one_off_completes_after_its_occurrence() {
        let now = at("2027-01-01T10:00:00Z");
        let mut s = Schedule::create(Recurrence::new(Cadence::Once, UTC, now, None), now).unwrap();
        let e = settle(&s, Outcome::Succeeded, now, POLICY);
        apply(&mut s, e);
        assert_eq!(s.state, ScheduleState::Completed);
        assert_eq!(handle(&s, Change::Pause, now), Err(ScheduleError::Completed));
    }

    #[test]
    fn resuming_skips_what_fell_while_paused_and_a_cancelled_schedule_stays_cancelled() {
        let now = at("2027-01-01T10:00:00Z");
        let mut s = daily(now);
        let e = handle(&s, Change::Pause, now).unwrap().unwrap();
        apply(&mut s, e);
        assert_eq!(handle(&s, Change::Pause, now), Ok(None));
        let later = at("2027-01-04T12:00:00Z");
        let resumed = handle(&s, Change::Resume, later).unwrap().unwrap();
        assert_eq!(resumed, ScheduleEvent::Resumed { next: 4, run_at: at("2027-01-05T10:00:00Z") });
        apply(&mut s, resumed);
        let e = handle(&s, Change::Cancel, later).unwrap().unwrap();
        apply(&mut s, e);
        assert_eq!(handle(&s, Change::Resume, later), Err(ScheduleError::Cancelled));
        assert_eq!(handle(&s, Change::Cancel, later), Ok(None));
    }

    #[test]
    fn a_schedule_must_have_an_occurrence_ahead() {
        let now = at("2027-01-01T10:00:00Z");
        let past = Recurrence::new(Cadence::Once, UTC, now - Duration::seconds(1), None);
        assert_eq!(Schedule::create(past, now), Err(ScheduleError::NoOccurrence));
    }
}
