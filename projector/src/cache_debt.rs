//! What the projector still owes the Redis cache. A cache refresh is best
//! effort, but an entry whose write failed would stay stale until the
//! account's next event or the entry's TTL (readers without a consistency
//! token would be served the old balance), and a failover to an asynchronous
//! replica can lose writes the old master acknowledged. So the projector
//! keeps both: the entries whose write failed, and those written lately, to
//! write again once it sees the master move. Writing an entry twice is
//! harmless: the cache's version guard (`UPSERT_SCRIPT`) keeps the newest.
//!
//! The debt lives with the partition's consumer: when a partition's lease
//! moves to another projector (or the projector dies), what it owed is left
//! to the entries' TTL, as every cache write was before.
//!
//! Pure bookkeeping, no I/O: the applier asks `take` what to write, and says
//! whether the write `failed` or was `written`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bank_readmodel::AccountView;
use uuid::Uuid;

/// A write is kept this long (one to two windows) to be replayed after the
/// master moved: well past the time between a write the old master took and
/// the projector noticing the new master (Sentinel's 1 s to call the master
/// down, about 2 s to promote, then the next failed command).
pub const RECENT_WINDOW: Duration = Duration::from_secs(10);
/// Owed entries written along with one refresh: a Redis that comes back is
/// not handed one enormous pipeline (which could outlast the response
/// timeout and fail again, every time).
pub const PER_WRITE: usize = 1000;
/// Past this many owed entries (a long outage over many accounts) the debt
/// is dropped: those entries then expire by their TTL, as before.
pub const MAX_OWED: usize = 100_000;

#[derive(Clone, Default)]
pub struct CacheDebt {
    generation: i32,
    owed: HashMap<Uuid, AccountView>,
    /// Written in the current window ([0]) and the one before it ([1]).
    recent: [HashMap<Uuid, AccountView>; 2],
    window_start: Option<Instant>,
    /// The master moves already replayed (`bank_platform::redis::Redis::moves`).
    moves: u64,
}

/// Keeps the newer of two views of one account.
fn keep_newest(into: &mut HashMap<Uuid, AccountView>, view: AccountView) {
    match into.get(&view.account_id) {
        Some(have) if have.version >= view.version => {}
        _ => {
            into.insert(view.account_id, view);
        }
    }
}

impl CacheDebt {
    /// The generation the debt is in.
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// Whether a write is due with no event to carry it: entries owed, or a
    /// move of the master (`moves` so far) not yet replayed.
    pub fn due(&self, moves: u64) -> bool {
        !self.owed.is_empty() || moves != self.moves
    }

    /// How many entries are owed.
    pub fn owed(&self) -> usize {
        self.owed.len()
    }

    /// What to write now to generation `generation`, the master having moved
    /// `moves` times so far: `views` (this batch's changes), and up to
    /// `PER_WRITE` owed entries, which include, after a move, everything
    /// written lately. The newest view of each account.
    pub fn take(&mut self, generation: i32, moves: u64, views: &[&AccountView]) -> Vec<AccountView> {
        if generation != self.generation {
            // A rebuild switched generations: the old one's entries expire.
            *self = Self { generation, moves: self.moves, ..Self::default() };
        }
        if moves != self.moves {
            self.moves = moves;
            for window in &self.recent {
                for view in window.values() {
                    keep_newest(&mut self.owed, view.clone());
                }
            }
        }
        let mut due = HashMap::new();
        for view in views {
            if let Some(owed) = self.owed.remove(&view.account_id) {
                keep_newest(&mut due, owed);
            }
            keep_newest(&mut due, (*view).clone());
        }
        let more: Vec<Uuid> = self.owed.keys().take(PER_WRITE).copied().collect();
        for id in more {
            if let Some(owed) = self.owed.remove(&id) {
                keep_newest(&mut due, owed);
            }
        }
        due.into_values().collect()
    }

    /// Writing `entries` failed: they are owed. Whether the debt overflowed
    /// and was dropped.
    pub fn failed(&mut self, entries: Vec<AccountView>) -> bool {
        for view in entries {
            keep_newest(&mut self.owed, view);
        }
        let overflowed = self.owed.len() > MAX_OWED;
        if overflowed {
            self.owed.clear();
        }
        overflowed
    }

    /// `views` of generation `generation` could not even be tried (no
    /// connection): owed. Whether the debt overflowed and was dropped.
    pub fn owe(&mut self, generation: i32, views: &[&AccountView]) -> bool {
        let due = self.take(generation, self.moves, views);
        self.failed(due)
    }

    /// `entries` were written at `now`: kept for a replay after a move.
    pub fn written(&mut self, entries: Vec<AccountView>, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= RECENT_WINDOW {
            self.recent[1] = std::mem::take(&mut self.recent[0]);
            self.window_start = Some(now);
        }
        for view in entries {
            keep_newest(&mut self.recent[0], view);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn view(account_id: Uuid, version: i64) -> AccountView {
        AccountView {
            account_id,
            owner_id: Uuid::nil(),
            kind: "CHECKING".into(),
            currency: "USD".into(),
            balance: version.into(),
            status: "ACTIVE".into(),
            version,
            opened_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            held: 0.into(),
        }
    }

    fn versions(mut entries: Vec<AccountView>) -> Vec<(Uuid, i64)> {
        entries.sort_by_key(|v| v.account_id);
        entries.into_iter().map(|v| (v.account_id, v.version)).collect()
    }

    #[test]
    fn an_entry_whose_write_failed_is_written_with_the_next_refresh_at_its_newest_version() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut debt = CacheDebt::default();
        let due = debt.take(1, 0, &[&view(a, 3), &view(b, 7)]);
        debt.failed(due);
        assert!(debt.due(0));
        // The next batch changes `a` again: its newest version goes, once.
        let due = debt.take(1, 0, &[&view(a, 4)]);
        assert_eq!(versions(due), vec![(a, 4), (b, 7)]);
        assert!(!debt.due(0));
    }

    #[test]
    fn an_owed_entry_is_not_replaced_by_an_older_view() {
        let a = Uuid::from_u128(1);
        let mut debt = CacheDebt::default();
        let due = debt.take(1, 0, &[&view(a, 5)]);
        debt.failed(due);
        debt.failed(vec![view(a, 2)]);
        assert_eq!(versions(debt.take(1, 0, &[])), vec![(a, 5)]);
    }

    #[test]
    fn after_the_master_moved_what_was_written_lately_is_written_again() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let now = Instant::now();
        let mut debt = CacheDebt::default();
        let due = debt.take(1, 0, &[&view(a, 3)]);
        debt.written(due, now);
        let due = debt.take(1, 0, &[&view(b, 1)]);
        debt.written(due, now + Duration::from_secs(1));
        assert!(!debt.due(0), "nothing owed while the master stays");
        // The replica that was promoted may not have had them.
        assert!(debt.due(1));
        assert_eq!(versions(debt.take(1, 1, &[])), vec![(a, 3), (b, 1)]);
        assert!(!debt.due(1), "one replay per move");
    }

    #[test]
    fn writes_older_than_two_windows_are_not_replayed() {
        let (old, newer) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let now = Instant::now();
        let mut debt = CacheDebt::default();
        let due = debt.take(1, 0, &[&view(old, 1)]);
        debt.written(due, now);
        let due = debt.take(1, 0, &[&view(newer, 1)]);
        debt.written(due, now + RECENT_WINDOW);
        debt.written(vec![], now + RECENT_WINDOW * 2);
        assert_eq!(versions(debt.take(1, 1, &[])), vec![(newer, 1)]);
    }

    #[test]
    fn one_refresh_writes_at_most_per_write_owed_entries() {
        let mut debt = CacheDebt::default();
        assert!(debt.take(1, 0, &[]).is_empty());
        debt.failed((0..PER_WRITE as u128 + 5).map(|i| view(Uuid::from_u128(i), 1)).collect());
        assert_eq!(debt.take(1, 0, &[]).len(), PER_WRITE);
        assert_eq!(debt.owed(), 5);
    }

    #[test]
    fn changes_made_while_redis_was_never_reached_are_owed() {
        let a = Uuid::from_u128(1);
        let mut debt = CacheDebt::default();
        assert!(!debt.owe(1, &[&view(a, 2)]));
        assert!(debt.due(0));
        assert_eq!(versions(debt.take(1, 0, &[])), vec![(a, 2)]);
    }

    #[test]
    fn a_debt_past_the_bound_is_dropped() {
        let mut debt = CacheDebt::default();
        let overflowed = debt.failed((0..MAX_OWED as u128 + 1).map(|i| view(Uuid::from_u128(i), 1)).collect());
        assert!(overflowed);
        assert!(!debt.due(0));
    }

    #[test]
    fn a_new_generation_forgets_the_old_ones_debt() {
        let a = Uuid::from_u128(1);
        let mut debt = CacheDebt::default();
        let due = debt.take(1, 0, &[&view(a, 2)]);
        debt.failed(due);
        assert!(debt.due(0));
        assert!(debt.take(2, 0, &[]).is_empty());
        assert_eq!(debt.generation(), 2);
    }
}
