//! The ring of recently published messages ([`KvCommand::Publish`]) that
//! subscribers read ([`KvQuery::Messages`]).
//!
//! Messages are not data: the ring is derived from the log as it is
//! applied, left out of snapshots (a replica that installs one starts an
//! empty ring) and bounded, so a subscriber that falls behind by more than
//! the ring holds misses messages, and learns it from
//! [`KvResult::Messages`]' `evicted`. Positions are log indexes, the same
//! on every replica, so a reader may ask one replica where new messages
//! start and read them from another.
//!
//! [`KvCommand::Publish`]: super::KvCommand::Publish
//! [`KvQuery::Messages`]: super::KvQuery::Messages
//! [`KvResult::Messages`]: super::KvResult::Messages

use std::collections::VecDeque;

use bytes::Bytes;

use super::command::{MESSAGES_KEPT_MAX, MESSAGE_BYTES_KEPT_MAX, MESSAGE_BYTES_READ_MAX};
use super::KvResult;

/// Fixed cost counted per kept message besides its bytes.
const MESSAGE_OVERHEAD_BYTES: usize = 16;

/// The published messages a replica keeps, oldest first.
#[derive(Debug, Clone, Default)]
pub(super) struct Ring {
    /// `(log index, channel, message)`, indexes non-decreasing.
    messages: VecDeque<(u64, Bytes, Bytes)>,
    /// Bytes of `messages` (with [`MESSAGE_OVERHEAD_BYTES`] each).
    bytes: usize,
    /// Highest index of a dropped message (0: none).
    evicted: u64,
    /// Index of the entry being applied (or last applied).
    pub(super) at: u64,
}

impl Ring {
    /// Keeps a message published by the entry at [`Ring::at`], dropping
    /// the oldest entries' messages past the bounds (never the newest
    /// entry's).
    pub(super) fn publish(&mut self, channel: &Bytes, message: &Bytes) {
        debug_assert!(
            self.messages.back().is_none_or(|m| m.0 <= self.at),
            "messages are published in log order"
        );
        self.bytes += MESSAGE_OVERHEAD_BYTES + channel.len() + message.len();
        // Copied: a message must not pin the entry's buffer for as long
        // as it stays in the ring.
        self.messages.push_back((
            self.at,
            Bytes::copy_from_slice(channel),
            Bytes::copy_from_slice(message),
        ));
        while self.messages.len() > MESSAGES_KEPT_MAX || self.bytes > MESSAGE_BYTES_KEPT_MAX {
            match self.messages.front() {
                Some(m) if m.0 < self.at => {}
                _ => break,
            }
            let (index, channel, message) = self.messages.pop_front().expect("checked above");
            self.bytes -= MESSAGE_OVERHEAD_BYTES + channel.len() + message.len();
            self.evicted = index;
        }
    }

    /// The messages after `after`, whole entries, at most `limit` (and
    /// [`MESSAGE_BYTES_READ_MAX`] bytes) but at least one entry unless
    /// `limit` is 0. `through` is [`Ring::at`] when nothing was left out
    /// (it may be below `after` on a replica that lags).
    pub(super) fn read(&self, after: u64, limit: u32) -> KvResult {
        let start = self.messages.partition_point(|m| m.0 <= after);
        let mut out: Vec<(u64, Bytes, Bytes)> = Vec::new();
        let mut bytes = 0usize;
        let mut through = self.at;
        let mut i = start;
        while i < self.messages.len() {
            // One entry's messages go together.
            let index = self.messages[i].0;
            let end = i + self
                .messages
                .range(i..)
                .take_while(|m| m.0 == index)
                .count();
            let entry_bytes: usize = self
                .messages
                .range(i..end)
                .map(|m| m.1.len() + m.2.len())
                .sum();
            // The first entry is read whatever its size (a reader could
            // not get past it otherwise), unless nothing is wanted.
            let full = !out.is_empty()
                && (out.len() + (end - i) > limit as usize
                    || bytes + entry_bytes > MESSAGE_BYTES_READ_MAX);
            if full || limit == 0 {
                // Stops before this entry: the next read starts with it.
                through = index - 1;
                break;
            }
            out.extend(self.messages.range(i..end).cloned());
            bytes += entry_bytes;
            i = end;
        }
        KvResult::Messages {
            through,
            evicted: self.evicted,
            messages: out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn publish(r: &mut Ring, at: u64, channel: &str, message: &str) {
        r.at = at;
        r.publish(&b(channel), &b(message));
    }

    fn indexes(res: &KvResult) -> (u64, u64, Vec<u64>) {
        match res {
            KvResult::Messages {
                through,
                evicted,
                messages,
            } => (*through, *evicted, messages.iter().map(|m| m.0).collect()),
            other => panic!("not messages: {other:?}"),
        }
    }

    #[test]
    fn reads_after_a_position_in_whole_entries() {
        let mut r = Ring::default();
        publish(&mut r, 3, "a", "1");
        publish(&mut r, 5, "b", "2");
        publish(&mut r, 5, "a", "3");
        publish(&mut r, 9, "c", "4");
        r.at = 12;
        assert_eq!(indexes(&r.read(0, 100)), (12, 0, vec![3, 5, 5, 9]));
        assert_eq!(indexes(&r.read(3, 100)), (12, 0, vec![5, 5, 9]));
        assert_eq!(indexes(&r.read(9, 100)), (12, 0, vec![]));
        // Where new messages start, none read.
        assert_eq!(indexes(&r.read(u64::MAX, 100)).0, 12);
        assert_eq!(indexes(&r.read(0, 0)), (2, 0, vec![]));
        // A limit inside an entry stops before it: continue from `through`.
        assert_eq!(indexes(&r.read(0, 2)), (4, 0, vec![3]));
        assert_eq!(indexes(&r.read(4, 2)), (8, 0, vec![5, 5]));
        assert_eq!(indexes(&r.read(8, 2)), (12, 0, vec![9]));
        // An entry larger than the limit comes whole (never split, and a
        // reader must get past it).
        assert_eq!(indexes(&r.read(3, 1)), (8, 0, vec![5, 5]));
    }

    #[test]
    fn drops_the_oldest_entries_past_the_bounds_and_says_so() {
        let mut r = Ring::default();
        for i in 1..=(MESSAGES_KEPT_MAX as u64 + 10) {
            publish(&mut r, i, "ch", "m");
        }
        let (through, evicted, got) = indexes(&r.read(0, u32::MAX));
        assert_eq!(evicted, 10);
        assert_eq!(got.len(), MESSAGES_KEPT_MAX);
        assert_eq!(got[0], 11);
        assert_eq!(through, MESSAGES_KEPT_MAX as u64 + 10);
        // Bytes: a huge newest message stays, everything older goes.
        let big = "x".repeat(MESSAGE_BYTES_KEPT_MAX);
        publish(&mut r, 100_000, "ch", &big);
        let (_, evicted, got) = indexes(&r.read(0, u32::MAX));
        assert_eq!(got, vec![100_000]);
        assert_eq!(evicted, MESSAGES_KEPT_MAX as u64 + 10);
        publish(&mut r, 100_001, "ch", "small");
        let (_, evicted, got) = indexes(&r.read(0, u32::MAX));
        assert_eq!((evicted, got), (100_000, vec![100_001]));
        assert_eq!(r.bytes, MESSAGE_OVERHEAD_BYTES + 2 + 5);
    }
}
