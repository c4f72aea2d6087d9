//! Per-caller caps on what a caller can hold open: reads parked on a
//! consistency token, and WatchBalance streams. Without them one caller could
//! park enough calls (each for up to its deadline) to starve everyone.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use uuid::Uuid;

pub struct PerCaller {
    max: usize,
    held: Mutex<HashMap<Uuid, usize>>,
}

/// One slot, given back when dropped.
pub struct Slot {
    owner: Arc<PerCaller>,
    caller: Uuid,
}

impl PerCaller {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max, held: Mutex::new(HashMap::new()) })
    }

    /// A slot for `caller`, or `None` when it already holds `max`.
    pub fn acquire(self: &Arc<Self>, caller: Uuid) -> Option<Slot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(caller).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot { owner: self.clone(), caller })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.owner.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_holds_at_most_max_slots_and_dropping_one_frees_it() {
        let limit = PerCaller::new(2);
        let (me, you) = (Uuid::now_v7(), Uuid::now_v7());
        let a = limit.acquire(me).unwrap();
        let _b = limit.acquire(me).unwrap();
        assert!(limit.acquire(me).is_none());
        assert!(limit.acquire(you).is_some(), "one caller's slots are not another's");
        drop(a);
        assert!(limit.acquire(me).is_some());
    }
}
