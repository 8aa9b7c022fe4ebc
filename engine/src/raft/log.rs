//! The replica's view of its log.
//!
//! ```text
//!   compacted    | only on disk (WAL)  | in memory (cache)        |
//! ---------------+---------------------+--------------------------+
//!  ..=snapshot_index  (snapshot_index, cache_first)  [cache_first, last_index]
//!
//!  term runs: (start_index, term) for every term change in (snapshot_index, last_index]
//!  persisted <= emitted <= last_index   (durable / handed to a Ready)
//! ```
//!
//! Terms are kept as run-length runs so `term(i)` answers for any index above
//! the snapshot synchronously, even when the payload is only on disk. Payloads
//! live in a bounded cache holding a contiguous suffix of the log.

use super::types::{Entry, Index, Term};
use std::collections::VecDeque;

/// Where a requested range of entries is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Slice {
    /// The entries, possibly fewer than asked (byte limit), at least one.
    Entries(Vec<Entry>),
    /// The range starts below the snapshot: send a snapshot instead.
    Compacted,
    /// The range starts on disk only: fetch `[lo, hi]` first.
    OnDisk { hi: Index },
}

#[derive(Debug)]
pub(crate) struct RaftLog {
    pub snapshot_index: Index,
    pub snapshot_term: Term,
    /// Invariant: sorted by start, strictly increasing starts and distinct
    /// consecutive terms, all starts in (snapshot_index, last_index].
    runs: Vec<(Index, Term)>,
    pub last_index: Index,
    /// Invariant: holds exactly the indexes `[last_index + 1 - cache.len(), last_index]`.
    cache: VecDeque<Entry>,
    cache_bytes: usize,
    /// Entries up to here are durable.
    pub persisted: Index,
    /// Entries up to here were handed to a Ready for persisting.
    pub emitted: Index,
    pub commit: Index,
}

impl RaftLog {
    pub fn new(snapshot_index: Index, snapshot_term: Term) -> Self {
        RaftLog {
            snapshot_index,
            snapshot_term,
            runs: Vec::new(),
            last_index: snapshot_index,
            cache: VecDeque::new(),
            cache_bytes: 0,
            persisted: snapshot_index,
            emitted: snapshot_index,
            commit: snapshot_index,
        }
    }

    /// Rebuilds a log from what the engine persisted. `runs` covers
    /// `(snapshot_index, last_index]`; `tail` is a contiguous suffix ending at
    /// `last_index` (possibly empty).
    pub fn restore_from(
        snapshot_index: Index,
        snapshot_term: Term,
        last_index: Index,
        runs: Vec<(Index, Term)>,
        tail: Vec<Entry>,
    ) -> Result<Self, String> {
        let mut log = RaftLog::new(snapshot_index, snapshot_term);
        if last_index < snapshot_index {
            return Err(format!(
                "last_index {last_index} < snapshot_index {snapshot_index}"
            ));
        }
        let mut prev: Option<(Index, Term)> = None;
        for &(s, t) in &runs {
            if s <= snapshot_index || s > last_index {
                return Err(format!(
                    "term run start {s} outside ({snapshot_index}, {last_index}]"
                ));
            }
            if let Some((ps, pt)) = prev {
                if s <= ps || t <= pt {
                    return Err(format!("term runs not increasing at {s}"));
                }
            } else if t < snapshot_term {
                return Err(format!("term run {t} below snapshot term"));
            }
            prev = Some((s, t));
        }
        if last_index > snapshot_index && runs.first().map(|r| r.0) != Some(snapshot_index + 1) {
            return Err("term runs must start right after the snapshot".into());
        }
        log.runs = runs;
        log.last_index = last_index;
        log.persisted = last_index;
        log.emitted = last_index;
        if let Some(first) = tail.first() {
            let lo = first.index;
            if lo <= snapshot_index || lo + tail.len() as u64 - 1 != last_index {
                return Err("tail entries must be a contiguous suffix ending at last_index".into());
            }
            for (k, e) in tail.into_iter().enumerate() {
                if e.index != lo + k as u64 || log.term(e.index) != Some(e.term) {
                    return Err(format!("tail entry {} disagrees with term runs", e.index));
                }
                log.cache_bytes += e.size_bytes();
                log.cache.push_back(e);
            }
        }
        Ok(log)
    }

    /// First index whose payload is in memory.
    #[inline]
    pub fn cache_first(&self) -> Index {
        self.last_index + 1 - self.cache.len() as u64
    }

    pub fn last_term(&self) -> Term {
        self.runs.last().map(|r| r.1).unwrap_or(self.snapshot_term)
    }

    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// Term of entry `i`; `None` if compacted (below the snapshot) or past the end.
    #[inline]
    pub fn term(&self, i: Index) -> Option<Term> {
        if i == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        if i < self.snapshot_index || i > self.last_index {
            return None;
        }
        // Fast path: the last run (terms change rarely).
        let last = *self.runs.last().expect("non-empty range has runs");
        if i >= last.0 {
            return Some(last.1);
        }
        let p = self.runs.partition_point(|r| r.0 <= i);
        Some(self.runs[p - 1].1)
    }

    pub fn match_term(&self, i: Index, t: Term) -> bool {
        self.term(i) == Some(t)
    }

    /// Thesis §5.4.1: is a log ending at (index, term) at least as up to date?
    pub fn is_up_to_date(&self, index: Index, term: Term) -> bool {
        let lt = self.last_term();
        term > lt || (term == lt && index >= self.last_index)
    }

    /// Largest index `<= index` whose term is `<= term` (fast backtracking).
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> Index {
        let mut i = index.min(self.last_index);
        loop {
            if i <= self.snapshot_index {
                return i;
            }
            let p = self.runs.partition_point(|r| r.0 <= i);
            let (start, t) = self.runs[p - 1];
            if t <= term {
                return i;
            }
            i = start - 1;
        }
    }

    /// Appends entries that continue the log (leader path).
    pub fn append(&mut self, entries: impl IntoIterator<Item = Entry>) {
        for e in entries {
            assert_eq!(e.index, self.last_index + 1, "log append out of order");
            assert!(e.term >= self.last_term(), "term goes back in append");
            if self.runs.last().map(|r| r.1) != Some(e.term) {
                self.runs.push((e.index, e.term));
            }
            self.last_index = e.index;
            self.cache_bytes += e.size_bytes();
            self.cache.push_back(e);
        }
    }

    /// Drops every entry `>= from` (a follower resolving a conflict).
    pub fn truncate_from(&mut self, from: Index) {
        debug_assert!(from > self.snapshot_index);
        if from > self.last_index {
            return;
        }
        while self.runs.last().is_some_and(|r| r.0 >= from) {
            self.runs.pop();
        }
        while self.cache.back().is_some_and(|e| e.index >= from) {
            let e = self.cache.pop_back().unwrap();
            self.cache_bytes -= e.size_bytes();
        }
        self.last_index = from - 1;
        self.persisted = self.persisted.min(from - 1);
        self.emitted = self.emitted.min(from - 1);
    }

    /// Copies of the entries `[lo, hi]`, at most `bytes_max` (but at least one).
    pub fn slice(&self, lo: Index, hi: Index, bytes_max: usize) -> Slice {
        if lo <= self.snapshot_index {
            return Slice::Compacted;
        }
        debug_assert!(
            lo <= hi && hi <= self.last_index,
            "slice [{lo}, {hi}] past {}",
            self.last_index
        );
        let cf = self.cache_first();
        if lo < cf {
            return Slice::OnDisk { hi: hi.min(cf - 1) };
        }
        let mut out = Vec::with_capacity((hi - lo + 1).min(256) as usize);
        let mut bytes = 0;
        let start = (lo - cf) as usize;
        for e in self.cache.range(start..=(hi - cf) as usize) {
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(e.clone());
        }
        Slice::Entries(out)
    }

    /// The cached entry at `i`.
    pub fn cached(&self, i: Index) -> Option<&Entry> {
        let cf = self.cache_first();
        if i < cf || i > self.last_index {
            return None;
        }
        self.cache.get((i - cf) as usize)
    }

    /// Evicts cached payloads below `keep_from` while over `bytes_max`.
    pub fn evict(&mut self, keep_from: Index, bytes_max: usize) {
        while self.cache_bytes > bytes_max {
            match self.cache.front() {
                Some(e) if e.index < keep_from && e.index <= self.persisted => {
                    let e = self.cache.pop_front().unwrap();
                    self.cache_bytes -= e.size_bytes();
                }
                _ => break,
            }
        }
    }

    /// Forgets everything up to `index` (a snapshot was taken there).
    pub fn compact(&mut self, index: Index) {
        assert!(index <= self.last_index && index > self.snapshot_index);
        let term = self.term(index).expect("compact index in log");
        let p = self.runs.partition_point(|r| r.0 <= index);
        // Keep the run containing index+1, restarting it at index+1.
        let mut rest: Vec<(Index, Term)> = Vec::with_capacity(self.runs.len() - p + 1);
        if index < self.last_index {
            let t_next = self.term(index + 1).unwrap();
            rest.push((index + 1, t_next));
            for &r in &self.runs[p..] {
                if r.0 > index + 1 {
                    rest.push(r);
                }
            }
        }
        self.runs = rest;
        while self.cache.front().is_some_and(|e| e.index <= index) {
            let e = self.cache.pop_front().unwrap();
            self.cache_bytes -= e.size_bytes();
        }
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Replaces the whole log by a snapshot's position.
    pub fn restore_snapshot(&mut self, index: Index, term: Term) {
        self.runs.clear();
        self.cache.clear();
        self.cache_bytes = 0;
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.last_index = index;
        self.persisted = index;
        self.emitted = index;
        self.commit = index;
    }

    /// The unpersisted entries not yet handed out, marking them handed out.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        if self.emitted >= self.last_index {
            return Vec::new();
        }
        let cf = self.cache_first();
        assert!(self.emitted + 1 >= cf, "unpersisted entry evicted");
        let out: Vec<Entry> = self
            .cache
            .range((self.emitted + 1 - cf) as usize..)
            .cloned()
            .collect();
        self.emitted = self.last_index;
        out
    }

    /// Checks the structural invariants (O(runs + cache)).
    pub fn check(&self) -> Result<(), String> {
        if self.persisted > self.emitted || self.emitted > self.last_index {
            return Err(format!(
                "persisted {} emitted {} last {}",
                self.persisted, self.emitted, self.last_index
            ));
        }
        if self.last_index > self.snapshot_index
            && self.runs.first().map(|r| r.0) != Some(self.snapshot_index + 1)
        {
            return Err("term runs do not start after the snapshot".into());
        }
        for w in self.runs.windows(2) {
            if w[0].0 >= w[1].0 || w[0].1 >= w[1].1 {
                return Err(format!("bad term runs {:?}", self.runs));
            }
        }
        for (k, e) in self.cache.iter().enumerate() {
            if e.index != self.cache_first() + k as u64 || self.term(e.index) != Some(e.term) {
                return Err(format!("cache entry {} inconsistent", e.index));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::types::EntryKind;
    use super::*;
    use bytes::Bytes;

    fn ent(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn term_runs_follow_appends_truncates_and_compaction() {
        let mut log = RaftLog::new(0, 0);
        log.append([ent(1, 1), ent(2, 1), ent(3, 2), ent(4, 2), ent(5, 4)]);
        assert_eq!(log.term(0), Some(0));
        assert_eq!(log.term(2), Some(1));
        assert_eq!(log.term(4), Some(2));
        assert_eq!(log.term(5), Some(4));
        assert_eq!(log.term(6), None);
        assert_eq!(log.find_conflict_by_term(5, 3), 4);
        assert_eq!(log.find_conflict_by_term(5, 1), 2);
        assert_eq!(log.find_conflict_by_term(9, 0), 0);
        log.truncate_from(4);
        assert_eq!(log.last_index, 3);
        assert_eq!(log.last_term(), 2);
        log.append([ent(4, 3)]);
        log.compact(2);
        assert_eq!(log.term(1), None);
        assert_eq!(log.term(2), Some(1));
        assert_eq!(log.term(3), Some(2));
        assert_eq!(log.slice(2, 3, 100), Slice::Compacted);
        log.check().unwrap();
        log.persisted = 4;
        log.evict(4, 0);
        assert_eq!(log.cache_first(), 4);
        assert_eq!(log.slice(3, 4, 100), Slice::OnDisk { hi: 3 });
        match log.slice(4, 4, 100) {
            Slice::Entries(v) => assert_eq!(v[0].term, 3),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn restore_rejects_inconsistent_state() {
        assert!(RaftLog::restore_from(5, 2, 4, vec![], vec![]).is_err());
        assert!(RaftLog::restore_from(5, 2, 7, vec![(7, 3)], vec![]).is_err());
        assert!(RaftLog::restore_from(5, 2, 7, vec![(6, 3)], vec![ent(7, 2)]).is_err());
        let log = RaftLog::restore_from(5, 2, 7, vec![(6, 3)], vec![ent(7, 3)]).unwrap();
        assert_eq!(log.term(6), Some(3));
        assert_eq!(log.cache_first(), 7);
    }
}
