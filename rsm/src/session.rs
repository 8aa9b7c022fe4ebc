//! The session table: exactly-once application of client commands across
//! retries (Raft thesis §6.3; dragonboat's sessions).
//!
//! Every registered client has a session holding the results of its recent
//! commands, keyed by series id. A retried command (same client, same series)
//! gets the cached result instead of being applied again. The client tells,
//! with every command, up to which series it has received responses
//! (`responded_to`); those results are dropped. Everything here is driven
//! only by the committed log, so every replica holds the same table.
//!
//! Bounds: at most `sessions_max` sessions (registering one more evicts the
//! least recently used session, by the log index that last touched it — a
//! deterministic choice) and at most `responses_per_session_max` cached
//! results per session (a command over that bound is rejected with
//! [`ApplyError::SessionBusy`], never applied).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{put_bytes, put_count, Reader};
use crate::error::{ApplyError, DecodeError};

/// Bounds of the session table. They shape replicated state, so every
/// replica of a group must use the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Maximum number of registered sessions (least recently used evicted).
    pub sessions_max: u32,
    /// Maximum cached, unacknowledged results per session.
    pub responses_per_session_max: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            sessions_max: 4096,
            responses_per_session_max: 1024,
        }
    }
}

/// Largest cached result the session-table decoder accepts: any (the
/// decoder only slices bytes it already holds, so a corrupt length cannot
/// make it allocate).
const RESULT_BYTES_MAX: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    /// Log index of the entry that last used this session (LRU key).
    last_used_index: u64,
    /// Every series up to this one has been answered to the client.
    responded_to: u64,
    /// Cached results by series id; `None` while the command is in the
    /// state machine's current batch (never seen outside `Rsm::apply`).
    /// Invariant: every key > `responded_to`.
    responses: Responses,
}

/// Cached results of one session, sorted by series id. Series ids almost
/// always arrive in increasing order and are acknowledged from the front,
/// so a sorted deque beats a tree here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Responses(VecDeque<(u64, Option<Bytes>)>);

impl Responses {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn find(&self, series: u64) -> Result<usize, usize> {
        // Fast path: a new series past the last one.
        match self.0.back() {
            Some(&(last, _)) if series > last => Err(self.0.len()),
            None => Err(0),
            _ => self.0.binary_search_by_key(&series, |(s, _)| *s),
        }
    }

    fn get(&self, series: u64) -> Option<&Option<Bytes>> {
        self.find(series).ok().map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, series: u64) -> Option<&mut Option<Bytes>> {
        self.find(series).ok().map(|i| &mut self.0[i].1)
    }

    fn insert(&mut self, series: u64, result: Option<Bytes>) {
        match self.find(series) {
            Ok(i) => self.0[i].1 = result,
            Err(i) => self.0.insert(i, (series, result)),
        }
    }

    /// Drops every result with series id `<= responded_to`.
    fn acknowledge(&mut self, responded_to: u64) {
        while self.0.front().is_some_and(|(s, _)| *s <= responded_to) {
            self.0.pop_front();
        }
    }

    fn iter(&self) -> impl Iterator<Item = &(u64, Option<Bytes>)> {
        self.0.iter()
    }

    fn all_settled(&self) -> bool {
        self.0.iter().all(|(_, r)| r.is_some())
    }
}

/// What to do with a session command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Apply it; a placeholder for its result is in place.
    Apply,
    /// Already applied: this is its result.
    Cached(Bytes),
    /// The same command is in the current, not yet applied, batch: apply
    /// the batch first, then check again.
    InBatch,
    /// Reject it (the acknowledgement and recency are kept).
    Reject(ApplyError),
}

/// The replicated table of client sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTable {
    config: SessionConfig,
    sessions: BTreeMap<u64, Session>,
}

impl SessionTable {
    /// An empty table.
    ///
    /// # Panics
    /// If a bound in `config` is 0.
    pub fn new(config: SessionConfig) -> Self {
        assert!(config.sessions_max > 0 && config.responses_per_session_max > 0);
        Self {
            config,
            sessions: BTreeMap::new(),
        }
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True if no session is registered.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// True if `client_id` has a session.
    pub fn contains(&self, client_id: u64) -> bool {
        self.sessions.contains_key(&client_id)
    }

    /// The bounds in force.
    pub fn config(&self) -> SessionConfig {
        self.config
    }

    pub(crate) fn register(&mut self, client_id: u64, index: u64) -> Result<(), ApplyError> {
        if self.sessions.contains_key(&client_id) {
            return Err(ApplyError::SessionAlreadyRegistered { client_id });
        }
        if self.sessions.len() >= self.config.sessions_max as usize {
            // Least recently used: the smallest last-used index (unique, as
            // every log entry touches at most one session). O(sessions),
            // only when registering into a full table.
            let victim = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used_index)
                .map(|(c, _)| *c)
                .expect("a full table is not empty");
            self.sessions.remove(&victim);
            tracing::debug!(client_id = victim, "evicted least recently used session");
        }
        self.sessions.insert(
            client_id,
            Session {
                last_used_index: index,
                responded_to: 0,
                responses: Responses::default(),
            },
        );
        Ok(())
    }

    pub(crate) fn unregister(&mut self, client_id: u64) -> Result<(), ApplyError> {
        let s = self
            .sessions
            .remove(&client_id)
            .ok_or(ApplyError::SessionNotFound { client_id })?;
        debug_assert!(
            s.responses.all_settled(),
            "unregister with a batch in flight"
        );
        Ok(())
    }

    /// Decides what to do with command `series_id` of `client_id` at log
    /// `index`, first dropping the results the client has acknowledged.
    pub(crate) fn check(
        &mut self,
        client_id: u64,
        series_id: u64,
        responded_to: u64,
        index: u64,
    ) -> Check {
        debug_assert!(responded_to < series_id, "rejected by Envelope::decode");
        let max = self.config.responses_per_session_max;
        let Some(s) = self.sessions.get_mut(&client_id) else {
            return Check::Reject(ApplyError::SessionNotFound { client_id });
        };
        s.last_used_index = index;
        if responded_to > s.responded_to {
            s.responded_to = responded_to;
            s.responses.acknowledge(responded_to);
        }
        if series_id <= s.responded_to {
            return Check::Reject(ApplyError::ResponseDiscarded {
                client_id,
                series_id,
            });
        }
        match s.responses.get(series_id) {
            Some(Some(result)) => Check::Cached(result.clone()),
            Some(None) => Check::InBatch,
            None if s.responses.len() >= max as usize => Check::Reject(ApplyError::SessionBusy {
                client_id,
                responses_max: max,
            }),
            None => {
                s.responses.insert(series_id, None);
                Check::Apply
            }
        }
    }

    /// Stores the result of a command that [`SessionTable::check`] let
    /// through. A session evicted or a series acknowledged meanwhile keeps
    /// nothing.
    pub(crate) fn record(&mut self, client_id: u64, series_id: u64, result: Bytes) {
        if let Some(s) = self.sessions.get_mut(&client_id) {
            if let Some(slot) = s.responses.get_mut(series_id) {
                debug_assert!(slot.is_none(), "result recorded twice");
                *slot = Some(result);
            }
        }
    }

    /// True if no result placeholder is pending (between batches).
    pub(crate) fn is_settled(&self) -> bool {
        self.sessions.values().all(|s| s.responses.all_settled())
    }

    /// Encodes the table (deterministic: sessions by client id, results by
    /// series id).
    ///
    /// ```text
    /// | sessions u32 | session * |
    /// session:  | client_id u64 | last_used_index u64 | responded_to u64 |
    ///           | responses u32 | (series_id u64 | len u32 | result bytes) * |
    /// ```
    ///
    /// # Panics
    /// If called while a batch is being applied (a placeholder is pending).
    pub fn encode(&self) -> Bytes {
        assert!(self.is_settled(), "session table encoded mid-batch");
        let mut out = BytesMut::new();
        put_count(&mut out, self.sessions.len());
        for (client_id, s) in &self.sessions {
            out.put_u64_le(*client_id);
            out.put_u64_le(s.last_used_index);
            out.put_u64_le(s.responded_to);
            put_count(&mut out, s.responses.len());
            for (series, result) in s.responses.iter() {
                out.put_u64_le(*series);
                put_bytes(&mut out, result.as_ref().expect("settled"));
            }
        }
        out.freeze()
    }

    /// Decodes a table written by [`SessionTable::encode`], checking every
    /// invariant (ordering, bounds, no duplicate LRU positions).
    ///
    /// # Errors
    /// [`DecodeError`] on any malformed or inconsistent input.
    pub fn decode(config: SessionConfig, buf: Bytes) -> Result<Self, DecodeError> {
        let mut t = SessionTable::new(config);
        let mut r = Reader::new(buf);
        let n = r.count("session count", config.sessions_max, 28)?;
        let mut prev_client = 0u64;
        let mut last_used = BTreeSet::new();
        for _ in 0..n {
            let client_id = r.u64()?;
            if client_id <= prev_client {
                return Err(DecodeError::Invalid {
                    what: "session order",
                });
            }
            prev_client = client_id;
            let last_used_index = r.u64()?;
            let responded_to = r.u64()?;
            let m = r.count("session responses", config.responses_per_session_max, 12)?;
            let mut responses = Responses::default();
            let mut prev_series = responded_to;
            for _ in 0..m {
                let series = r.u64()?;
                if series <= prev_series {
                    return Err(DecodeError::Invalid {
                        what: "response order",
                    });
                }
                prev_series = series;
                responses
                    .0
                    .push_back((series, Some(r.bytes("cached result", RESULT_BYTES_MAX)?)));
            }
            if !last_used.insert(last_used_index) {
                return Err(DecodeError::Invalid {
                    what: "session lru",
                });
            }
            t.sessions.insert(
                client_id,
                Session {
                    last_used_index,
                    responded_to,
                    responses,
                },
            );
        }
        r.finish()?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(sessions_max: u32, responses: u32) -> SessionConfig {
        SessionConfig {
            sessions_max,
            responses_per_session_max: responses,
        }
    }

    #[test]
    fn dedup_and_acknowledge() {
        let mut t = SessionTable::new(cfg(4, 4));
        t.register(7, 1).unwrap();
        assert_eq!(t.check(7, 1, 0, 2), Check::Apply);
        assert_eq!(t.check(7, 1, 0, 3), Check::InBatch);
        t.record(7, 1, Bytes::from_static(b"r1"));
        assert_eq!(
            t.check(7, 1, 0, 4),
            Check::Cached(Bytes::from_static(b"r1"))
        );
        assert_eq!(t.check(7, 2, 1, 5), Check::Apply);
        t.record(7, 2, Bytes::from_static(b"r2"));
        assert_eq!(
            t.check(7, 1, 0, 6),
            Check::Reject(ApplyError::ResponseDiscarded {
                client_id: 7,
                series_id: 1
            })
        );
        assert_eq!(
            t.check(7, 2, 1, 7),
            Check::Cached(Bytes::from_static(b"r2"))
        );
        assert_eq!(
            t.check(8, 1, 0, 8),
            Check::Reject(ApplyError::SessionNotFound { client_id: 8 })
        );
    }

    #[test]
    fn busy_session_rejects() {
        let mut t = SessionTable::new(cfg(4, 2));
        t.register(1, 1).unwrap();
        for s in 1..=2 {
            assert_eq!(t.check(1, s, 0, 1 + s), Check::Apply);
            t.record(1, s, Bytes::new());
        }
        assert!(matches!(
            t.check(1, 3, 0, 9),
            Check::Reject(ApplyError::SessionBusy { .. })
        ));
        // Acknowledging frees room.
        assert_eq!(t.check(1, 3, 2, 10), Check::Apply);
    }

    #[test]
    fn lru_eviction_is_by_last_use() {
        let mut t = SessionTable::new(cfg(2, 4));
        t.register(1, 1).unwrap();
        t.register(2, 2).unwrap();
        assert_eq!(t.check(1, 1, 0, 3), Check::Apply); // 1 is now the most recent
        t.record(1, 1, Bytes::new());
        t.register(3, 4).unwrap();
        assert!(t.contains(1) && t.contains(3) && !t.contains(2));
        assert_eq!(
            t.register(3, 5),
            Err(ApplyError::SessionAlreadyRegistered { client_id: 3 })
        );
        t.unregister(3).unwrap();
        assert_eq!(
            t.unregister(3),
            Err(ApplyError::SessionNotFound { client_id: 3 })
        );
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut t = SessionTable::new(cfg(8, 8));
        t.register(5, 1).unwrap();
        t.register(3, 2).unwrap();
        assert_eq!(t.check(5, 1, 0, 3), Check::Apply);
        t.record(5, 1, Bytes::from_static(b"hello"));
        let enc = t.encode();
        let back = SessionTable::decode(t.config(), enc.clone()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.encode(), enc);
        // Every truncation is an error, never a panic.
        for cut in 0..enc.len() {
            assert!(SessionTable::decode(t.config(), enc.slice(..cut)).is_err());
        }
    }
}
