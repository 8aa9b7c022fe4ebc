//! The leader's view of one follower's log (etcd-raft's Progress, with every
//! state transition in this file).
//!
//! ```text
//!            reject / unreachable              snapshot needed
//!   Replicate ------------------> Probe -------------------------> Snapshot
//!       ^  <----- accepted append ---|  <-- snapshot acked / failed ---|
//! ```
//! Probe: one append in flight at a time. Replicate: optimistic pipelining
//! with at most `Window::appends` appends and `Window::bytes` entry bytes in
//! flight. Snapshot: nothing sent until the snapshot is reported.

use super::types::{Index, MemberKind};
use std::collections::VecDeque;

/// How much a leader may have in flight to one follower in the replicate
/// state. The byte bound keeps a follower that is far behind (or not
/// reading) from costing the leader `appends` full-size messages at every
/// acknowledgement: 256 appends of 1 MiB each were encoded and then dropped
/// by a full transport queue, again and again, and stalled the shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub appends: usize,
    pub bytes: u64,
}

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
    pub inflight_bytes: u64,
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
    /// Replicate: last index and entry bytes of each in-flight append,
    /// ascending by index.
    inflight: VecDeque<(Index, u64)>,
    /// Sum of the bytes in `inflight`.
    inflight_bytes: u64,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Highest heartbeat sequence acknowledged.
    pub hb_seq_acked: u64,
    /// The leader's heartbeat sequence when the last append was sent: only
    /// the answer to a later heartbeat releases a probe or a window slot.
    sent_hb_seq: u64,
    /// An append went to this follower since the last heartbeat round...
    pub appended_since_round: bool,
    /// ...and it accepted an append since then: it is alive and following,
    /// so the next periodic heartbeat may skip it (see
    /// `Raft::broadcast_heartbeat`).
    pub accepted_since_round: bool,
    /// Highest commit index sent to this follower in an append.
    pub sent_commit: Index,
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
            inflight_bytes: 0,
            recent_active: false,
            hb_seq_acked: 0,
            sent_hb_seq: 0,
            appended_since_round: false,
            accepted_since_round: false,
            sent_commit: 0,
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
            inflight_bytes: self.inflight_bytes,
            kind: self.kind,
        }
    }

    pub fn is_paused(&self, w: Window) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.window_full(w),
            ProgressState::Snapshot { .. } => true,
        }
    }

    fn window_full(&self, w: Window) -> bool {
        self.inflight.len() >= w.appends || self.inflight_bytes >= w.bytes
    }

    fn clear_inflight(&mut self) {
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    fn pop_inflight(&mut self) {
        if let Some((_, b)) = self.inflight.pop_front() {
            self.inflight_bytes -= b;
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
        self.clear_inflight();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.clear_inflight();
    }

    pub fn become_snapshot(&mut self, index: Index) {
        self.state = ProgressState::Snapshot { index };
        self.probe_sent = false;
        self.clear_inflight();
    }

    /// An append ending at `last`, carrying `bytes` of entries, was sent
    /// while the leader's heartbeat sequence was `hb_seq`.
    pub fn sent(&mut self, last: Index, entries: bool, bytes: u64, hb_seq: u64) {
        self.sent_hb_seq = hb_seq;
        match self.state {
            ProgressState::Replicate => {
                if entries {
                    debug_assert!(last >= self.next_index);
                    debug_assert!(self.inflight.back().is_none_or(|&(l, _)| l < last));
                    self.next_index = last + 1;
                    self.inflight.push_back((last, bytes));
                    self.inflight_bytes += bytes;
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => unreachable!("append sent in snapshot state"),
        }
    }

    /// The answer to heartbeat `seq` came back. If that heartbeat left after
    /// the last append, the follower has seen (or lost) that append: a probe
    /// may go again, and a full window frees one slot so that a lost append
    /// cannot stall replication forever (the next append then reveals the
    /// gap and the follower falls back to probing). Returns whether it did.
    ///
    /// Answers to older heartbeats release nothing: a follower that was
    /// paused answers its whole backlog of heartbeats at once, and each of
    /// those answers used to send another full-size append (thousands of
    /// them, gigabytes encoded in one turn of the shard).
    pub fn on_heartbeat_response(&mut self, w: Window, seq: u64) -> bool {
        if seq <= self.sent_hb_seq {
            return false;
        }
        self.probe_sent = false;
        if self.state == ProgressState::Replicate && self.window_full(w) {
            self.pop_inflight();
        }
        true
    }

    /// An acknowledgement up to `index`; false if stale.
    pub fn maybe_update(&mut self, index: Index) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        while self.inflight.front().is_some_and(|&(l, _)| l <= index) {
            self.pop_inflight();
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

    const W2: Window = Window {
        appends: 2,
        bytes: u64::MAX,
    };

    #[test]
    fn pipelining_window_and_stale_rejects() {
        let mut p = Progress::new(5, MemberKind::Voter);
        assert!(!p.is_paused(W2));
        p.sent(5, true, 10, 0);
        assert!(p.is_paused(W2), "probe allows one append in flight");
        assert!(p.maybe_update(5));
        p.become_replicate();
        p.sent(7, true, 10, 0);
        p.sent(9, true, 10, 0);
        assert!(p.is_paused(W2));
        p.maybe_update(7);
        assert!(!p.is_paused(W2));
        assert!(!p.maybe_decr_to(6, 0), "rejection below match is stale");
        assert!(p.maybe_decr_to(9, 3));
        assert_eq!(p.next_index, 8);
    }

    #[test]
    fn the_window_is_bounded_in_bytes_too() {
        let w = Window {
            appends: 256,
            bytes: 100,
        };
        let mut p = Progress::new(1, MemberKind::Voter);
        p.become_replicate();
        p.sent(10, true, 60, 0);
        assert!(!p.is_paused(w));
        p.sent(20, true, 60, 0);
        assert!(p.is_paused(w), "120 bytes in flight");
        assert_eq!(p.stats().inflight_bytes, 120);
        p.maybe_update(10);
        assert!(!p.is_paused(w), "the first append's bytes are released");
        assert_eq!(p.stats().inflight_bytes, 60);
        p.sent(30, true, 60, 7);
        assert!(p.is_paused(w));
        assert!(
            !p.on_heartbeat_response(w, 7),
            "heartbeat 7 left before the append"
        );
        assert!(p.is_paused(w));
        assert!(p.on_heartbeat_response(w, 8));
        assert!(
            !p.is_paused(w),
            "a later heartbeat's answer frees the oldest slot"
        );
        assert_eq!(p.stats().inflight_bytes, 60);
        p.become_probe();
        assert_eq!(p.stats().inflight_bytes, 0);
    }

    #[test]
    fn a_backlog_of_heartbeat_answers_releases_one_probe() {
        let w = Window {
            appends: 4,
            bytes: u64::MAX,
        };
        let mut p = Progress::new(10, MemberKind::Voter);
        p.sent(12, true, 100, 50);
        assert!(p.is_paused(w));
        // Answers to heartbeats 1..=50 were queued while the follower was
        // paused: none of them releases the probe sent after heartbeat 50.
        for seq in 1..=50 {
            assert!(!p.on_heartbeat_response(w, seq));
            assert!(p.is_paused(w), "answer {seq} released the probe");
        }
        assert!(p.on_heartbeat_response(w, 51));
        assert!(!p.is_paused(w));
        p.sent(12, true, 100, 51);
        assert!(!p.on_heartbeat_response(w, 51), "a duplicate answer");
        assert!(p.is_paused(w));
    }
}
