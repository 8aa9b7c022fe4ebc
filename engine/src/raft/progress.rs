//! The leader's view of one follower's log (etcd-raft's Progress, with every
//! state transition in this file).
//!
//! ```text
//!            reject / unreachable              snapshot needed
//!   Replicate ------------------> Probe -------------------------> Snapshot
//!       ^  <----- accepted append ---|  <-- snapshot acked / failed ---|
//! ```
//! Probe: one append in flight at a time. Replicate: optimistic pipelining
//! with at most `inflight_max` appends in flight. Snapshot: nothing sent until
//! the snapshot is reported.

use super::types::{Index, MemberKind};
use std::collections::VecDeque;

/// Replication state of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
    Snapshot { index: Index },
}

/// Public, read-only statistics of one follower's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressStats {
    pub match_index: Index,
    pub next_index: Index,
    pub state: ProgressState,
    pub inflight: usize,
    pub kind: MemberKind,
}

#[derive(Debug, Clone)]
pub(crate) struct Progress {
    /// Invariant: match_index < next_index.
    pub match_index: Index,
    pub next_index: Index,
    pub state: ProgressState,
    /// Probe: an append is outstanding; wait for its answer or a heartbeat.
    pub probe_sent: bool,
    /// Replicate: last index of each in-flight append, ascending.
    inflight: VecDeque<Index>,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Highest heartbeat sequence acknowledged.
    pub hb_seq_acked: u64,
    pub kind: MemberKind,
    /// A fetch of on-disk entries is outstanding for this follower.
    pub fetching: bool,
}

impl Progress {
    pub fn new(next_index: Index, kind: MemberKind) -> Self {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            hb_seq_acked: 0,
            kind,
            fetching: false,
        }
    }

    pub fn stats(&self) -> ProgressStats {
        ProgressStats {
            match_index: self.match_index,
            next_index: self.next_index,
            state: self.state,
            inflight: self.inflight.len(),
            kind: self.kind,
        }
    }

    pub fn is_paused(&self, inflight_max: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= inflight_max,
            ProgressState::Snapshot { .. } => true,
        }
    }

    pub fn become_probe(&mut self) {
        if let ProgressState::Snapshot { index } = self.state {
            self.next_index = (self.match_index + 1).max(index + 1);
        } else {
            self.next_index = self.match_index + 1;
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_snapshot(&mut self, index: Index) {
        self.state = ProgressState::Snapshot { index };
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// An append ending at `last` was sent.
    pub fn sent(&mut self, last: Index, entries: bool) {
        match self.state {
            ProgressState::Replicate => {
                if entries {
                    debug_assert!(last >= self.next_index);
                    self.next_index = last + 1;
                    self.inflight.push_back(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => unreachable!("append sent in snapshot state"),
        }
    }

    /// A heartbeat answer came back: if the window is full, free one slot
    /// so a lost append cannot stall replication forever (the next append
    /// then reveals the gap and the follower falls back to probing).
    pub fn on_heartbeat_response(&mut self, inflight_max: usize) {
        self.probe_sent = false;
        if self.state == ProgressState::Replicate && self.inflight.len() >= inflight_max {
            self.inflight.pop_front();
        }
    }

    /// An acknowledgement up to `index`; false if stale.
    pub fn maybe_update(&mut self, index: Index) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        while self.inflight.front().is_some_and(|&l| l <= index) {
            self.inflight.pop_front();
        }
        updated
    }

    /// A rejection of the append whose prev index was `rejected`, with the
    /// follower's hint. False if the rejection is stale.
    pub fn maybe_decr_to(&mut self, rejected: Index, probe_from: Index) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.match_index {
                return false;
            }
            self.next_index = self.match_index + 1;
            return true;
        }
        if self.next_index == 0 || self.next_index - 1 != rejected {
            return false;
        }
        self.next_index = (rejected.min(probe_from + 1)).max(self.match_index + 1);
        self.probe_sent = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelining_window_and_stale_rejects() {
        let mut p = Progress::new(5, MemberKind::Voter);
        assert!(!p.is_paused(2));
        p.sent(5, true);
        assert!(p.is_paused(2), "probe allows one append in flight");
        assert!(p.maybe_update(5));
        p.become_replicate();
        p.sent(7, true);
        p.sent(9, true);
        assert!(p.is_paused(2));
        p.maybe_update(7);
        assert!(!p.is_paused(2));
        assert!(!p.maybe_decr_to(6, 0), "rejection below match is stale");
        assert!(p.maybe_decr_to(9, 3));
        assert_eq!(p.next_index, 8);
    }
}
