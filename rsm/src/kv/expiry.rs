//! Key deadlines (Redis `EXPIRE`, `SET ... EX`): when each key expires, by
//! key and by time, both copy-on-write so a snapshot capture stays cheap.
//!
//! Expiry is part of the log, never of a replica's clock: a deadline is an
//! absolute Unix time in milliseconds that the proposing node computed and
//! put in the command, and keys are deleted only by a
//! [`KvCommand::ExpireDue`](super::KvCommand::ExpireDue) entry (proposed by
//! the group's leader once the earliest deadline has passed on its clock)
//! or by an `Expire` whose deadline is already past when proposed. So every
//! replica deletes the same keys at the same log position, and a key is
//! readable until its expiry entry applies: a read never sees a key come
//! back, and a write never races a replica-local timer.
//!
//! ```text
//!  by_key:  key                      -> deadline ms
//!  by_time: deadline ms (BE u64) ++ key -> ()        ordered by deadline
//! ```
//! Invariant: the two hold the same (key, deadline) pairs.

use bytes::Bytes;

use super::key::Key;
use super::tree::CowTree;

#[derive(Clone, Debug, Default)]
pub(crate) struct Deadlines {
    by_key: CowTree<u64>,
    by_time: CowTree<()>,
}

fn time_key(at: u64, key: &[u8]) -> Key {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(key);
    Key::new(&k)
}

impl Deadlines {
    /// Keys with a deadline.
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// The deadline of `key`, if it has one.
    pub(crate) fn get(&self, key: &[u8]) -> Option<u64> {
        if self.by_key.len() == 0 {
            return None;
        }
        self.by_key.get(&Key::new(key)).copied()
    }

    /// Sets (or moves) the deadline of `key`.
    pub(crate) fn set(&mut self, key: &[u8], at: u64) {
        if let Some(old) = self.by_key.insert(Key::new(key), at) {
            self.by_time.remove(&time_key(old, key));
        }
        self.by_time.insert(time_key(at, key), ());
        debug_assert_eq!(self.by_key.len(), self.by_time.len());
    }

    /// Removes the deadline of `key`; returns it. Costs nothing while no key
    /// has a deadline (the common case of a store that never uses them).
    pub(crate) fn clear(&mut self, key: &[u8]) -> Option<u64> {
        if self.by_key.len() == 0 {
            return None;
        }
        let old = self.by_key.remove(&Key::new(key))?;
        self.by_time.remove(&time_key(old, key));
        debug_assert_eq!(self.by_key.len(), self.by_time.len());
        Some(old)
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<u64> {
        self.by_time.iter().next().map(|(k, ())| deadline_of(k))
    }

    /// Up to `max` keys whose deadline is at most `now`, earliest first.
    pub(crate) fn due(&self, now: u64, max: usize) -> Vec<Bytes> {
        self.by_time
            .iter()
            .take_while(|(k, ())| deadline_of(k) <= now)
            .take(max)
            .map(|(k, ())| Bytes::copy_from_slice(&k.as_slice()[8..]))
            .collect()
    }

    /// Forgets every deadline.
    pub(crate) fn reset(&mut self) {
        *self = Deadlines::default();
    }

    /// Builds from (key, deadline) pairs in strictly increasing key order.
    pub(crate) fn from_sorted(pairs: Vec<(Key, u64)>) -> Self {
        let mut by_time: Vec<(Key, ())> = pairs
            .iter()
            .map(|(k, at)| (time_key(*at, k.as_slice()), ()))
            .collect();
        by_time.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Deadlines {
            by_key: CowTree::from_sorted(pairs),
            by_time: CowTree::from_sorted(by_time),
        }
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        assert_eq!(self.by_key.len(), self.by_time.len());
        for (k, at) in self.by_key.iter() {
            assert!(
                self.by_time.get(&time_key(*at, k.as_slice())).is_some(),
                "{:?} at {at} missing by time",
                k.as_slice()
            );
        }
    }
}

fn deadline_of(time_key: &Key) -> u64 {
    let b = time_key.as_slice();
    u64::from_be_bytes(b[..8].try_into().expect("a time key starts with 8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_move_clear_and_come_due_in_time_order() {
        let mut d = Deadlines::default();
        assert_eq!(d.next(), None);
        d.set(b"b", 20);
        d.set(b"a", 30);
        d.set(b"c", 10);
        d.set(b"a", 5); // moved earlier
        d.check_invariants();
        assert_eq!(d.len(), 3);
        assert_eq!(d.get(b"a"), Some(5));
        assert_eq!(d.next(), Some(5));
        assert_eq!(d.due(10, 10), vec![Bytes::from("a"), Bytes::from("c")]);
        assert_eq!(d.due(100, 1), vec![Bytes::from("a")]);
        assert_eq!(d.clear(b"a"), Some(5));
        assert_eq!(d.clear(b"a"), None);
        assert_eq!(d.next(), Some(10));
        d.check_invariants();
        let copy = d.clone();
        d.reset();
        assert_eq!((d.len(), copy.len()), (0, 2));
        let rebuilt = Deadlines::from_sorted(vec![(Key::new(b"b"), 20), (Key::new(b"c"), 10)]);
        rebuilt.check_invariants();
        assert_eq!(rebuilt.due(u64::MAX, 10), copy.due(u64::MAX, 10));
    }
}
