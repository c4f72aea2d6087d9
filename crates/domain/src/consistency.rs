//! Consistency tokens: the per-account versions a command wrote, so a read can
//! wait until the read model has applied them (read-your-writes). Opaque to
//! clients; readable by both sides.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::InputError;

const PREFIX: &str = "ct1.";
/// A token never names more accounts than a command touches.
/// As many as one command touches (a posted transaction's legs, `ledger::MAX_LEGS`).
pub const MAX_ENTRIES: usize = 8;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsistencyToken {
    /// account id → the minimum version the read model must have applied.
    pub versions: BTreeMap<Uuid, i64>,
}

impl ConsistencyToken {
    pub fn new(entries: impl IntoIterator<Item = (Uuid, i64)>) -> Self {
        let mut versions = BTreeMap::new();
        for (id, v) in entries {
            let e = versions.entry(id).or_insert(v);
            *e = (*e).max(v);
        }
        Self { versions }
    }

    pub fn encode(&self) -> String {
        let body: Vec<String> = self.versions.iter().map(|(id, v)| format!("{}:{v}", id.simple())).collect();
        format!("{PREFIX}{}", body.join("."))
    }

    /// Parses a client-supplied token; an empty string means "no token".
    pub fn parse(field: &str, text: &str) -> Result<Option<Self>, InputError> {
        if text.is_empty() {
            return Ok(None);
        }
        let bad = || InputError::new(field, "is not a consistency token returned by a command");
        let body = text.strip_prefix(PREFIX).ok_or_else(bad)?;
        let mut versions = BTreeMap::new();
        for part in body.split('.') {
            let (id, v) = part.split_once(':').ok_or_else(bad)?;
            let id = Uuid::try_parse(id).map_err(|_| bad())?;
            let v: i64 = v.parse().map_err(|_| bad())?;
            if v < 1 || versions.insert(id, v).is_some() || versions.len() > MAX_ENTRIES {
                return Err(bad());
            }
        }
        Ok(Some(Self { versions }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_the_highest_version() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let t = ConsistencyToken::new([(a, 3), (b, 7), (a, 5)]);
        assert_eq!(t.versions[&a], 5);
        assert_eq!(ConsistencyToken::parse("t", &t.encode()).unwrap(), Some(t));
    }

    #[test]
    fn garbage_is_refused_and_empty_is_none() {
        assert_eq!(ConsistencyToken::parse("t", "").unwrap(), None);
        for bad in ["x", "ct1.", "ct1.nope:1", "ct1.0190a0a0a0a0a0a0a0a0a0a0a0a0a0a0:0", "ct2.a:1"] {
            assert!(ConsistencyToken::parse("t", bad).is_err(), "{bad}");
        }
    }
}
