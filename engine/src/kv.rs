//! The bundled key-value store as one sharded service over many groups.
//!
//! A key belongs to the group [`KvClient::group_for`] names: a stable hash
//! of the key (FNV-1a with a murmur3 finalizer, the same on every node,
//! version and platform) mapped
//! onto the list of groups. As in Redis Cluster, a key with a hash tag
//! (`{user:7}:cart`: a non-empty part between the first `{` and the next
//! `}`) is routed by its tag alone, so keys that share a tag share a group
//! (and can be used in one transaction). Commands go through [`NodeHost::propose`],
//! queries through [`NodeHost::read_with`].
//!
//! # Examples
//! ```no_run
//! use std::sync::Arc;
//! use flotilla::{kv::KvClient, GroupId, NodeHost, NodeHostConfig};
//! # futures_lite::future::block_on(async {
//! let host = Arc::new(NodeHost::start(NodeHostConfig::new(1, "/tmp/kv-doc")).unwrap());
//! let addr = host.config().raft_addr;
//! let groups: Vec<GroupId> = (1..=4).map(GroupId).collect();
//! for g in &groups {
//!     host.start_group(*g, vec![(flotilla::NodeId(1), addr)], std::time::Duration::from_secs(5))
//!         .await
//!         .unwrap();
//! }
//! let kv = KvClient::new(host.clone(), groups).unwrap();
//! kv.put("greeting", "hello").await.unwrap();
//! assert_eq!(kv.get("greeting").await.unwrap().as_deref(), Some(&b"hello"[..]));
//! # });
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_rsm::{encode_noop, KvCommand, KvQuery, KvResult, QueryError};

use crate::api::ReadConsistency;
use crate::error::RequestError;
use crate::host::{HostError, NodeHost};
use crate::raft::GroupId;

/// Stable 64-bit hash of a key: FNV-1a, then murmur3's 64-bit finalizer
/// (FNV alone leaves the high bits, which pick the group, poorly mixed for
/// keys that differ only at the end). Part of the data layout: never change
/// it.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The part of `key` that picks its group: the bytes between the first `{`
/// and the first `}` after it if there are any (Redis Cluster's hash tag),
/// else the whole key.
///
/// # Examples
/// ```
/// use flotilla::kv::hash_tag;
/// assert_eq!(hash_tag(b"{user:7}:cart"), b"user:7");
/// assert_eq!(hash_tag(b"plain"), b"plain");
/// assert_eq!(hash_tag(b"{}x"), b"{}x"); // an empty tag does not count
/// ```
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// A client of the sharded KV store, usable from any thread or executor.
#[derive(Clone)]
pub struct KvClient {
    host: Arc<NodeHost>,
    groups: Arc<[GroupId]>,
    /// Deadline of every call.
    pub timeout: Duration,
    /// Consistency of reads.
    pub consistency: ReadConsistency,
}

impl KvClient {
    /// A client of the KV store spread over `groups` (the same list, in the
    /// same order, on every node). `None` if `groups` is empty.
    pub fn new(host: Arc<NodeHost>, groups: Vec<GroupId>) -> Option<Self> {
        if groups.is_empty() {
            return None;
        }
        Some(KvClient {
            host,
            groups: groups.into(),
            timeout: Duration::from_secs(5),
            consistency: ReadConsistency::Linearizable,
        })
    }

    /// The node this client talks to.
    pub fn host(&self) -> &Arc<NodeHost> {
        &self.host
    }

    /// The groups of the store.
    pub fn groups(&self) -> &[GroupId] {
        &self.groups
    }

    /// The group that owns `key` (by its hash tag, if it has one: see
    /// [`hash_tag`]).
    pub fn group_for(&self, key: &[u8]) -> GroupId {
        let h = key_hash(hash_tag(key));
        let i = ((u128::from(h) * self.groups.len() as u128) >> 64) as usize;
        self.groups[i]
    }

    /// Proposes `cmd` to `group` and decodes its result.
    ///
    /// # Errors
    /// The engine's error ([`HostError`]).
    pub async fn execute(&self, group: GroupId, cmd: &KvCommand) -> Result<KvResult, HostError> {
        let answer = self
            .host
            .propose(group, encode_noop(&cmd.encode()), self.timeout)
            .await?;
        decode(group, answer)
    }

    /// Runs `query` against `group` with this client's consistency.
    ///
    /// # Errors
    /// The engine's error ([`HostError`]).
    pub async fn query(&self, group: GroupId, query: &KvQuery) -> Result<KvResult, HostError> {
        let answer = self
            .host
            .read_with(group, query.encode(), self.consistency, self.timeout)
            .await?;
        decode(group, answer)
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// The engine's error ([`HostError`]).
    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), HostError> {
        let key = key.into();
        let group = self.group_for(&key);
        match self.execute(group, &KvCommand::put(key, value)).await? {
            KvResult::Put { .. } | KvResult::Ok => Ok(()),
            other => Err(unexpected(group, &other)),
        }
    }

    /// The value of `key`.
    ///
    /// # Errors
    /// The engine's error ([`HostError`]).
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, HostError> {
        let key = key.into();
        let group = self.group_for(&key);
        match self.query(group, &KvQuery::Get { key }).await? {
            KvResult::Value(v) => Ok(v),
            other => Err(unexpected(group, &other)),
        }
    }

    /// Deletes `key`; true if it existed.
    ///
    /// # Errors
    /// The engine's error ([`HostError`]).
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool, HostError> {
        let key = key.into();
        let group = self.group_for(&key);
        match self.execute(group, &KvCommand::delete(key)).await? {
            KvResult::Count(n) => Ok(n > 0),
            other => Err(unexpected(group, &other)),
        }
    }
}

fn decode(group: GroupId, answer: Bytes) -> Result<KvResult, HostError> {
    KvResult::decode(answer).map_err(|e| {
        HostError::Request(RequestError::Query {
            group,
            error: QueryError::Malformed(e),
        })
    })
}

/// A result of the wrong kind: the state machine's own error as
/// [`RequestError::Kv`]; any other kind is a bug (logged).
fn unexpected(group: GroupId, got: &KvResult) -> HostError {
    if let KvResult::Error(error) = got {
        return HostError::Request(RequestError::Kv {
            group,
            error: *error,
        });
    }
    tracing::error!(group = group.0, ?got, "unexpected KV result kind");
    HostError::Request(RequestError::Query {
        group,
        error: QueryError::Unsupported,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_fnv1a_and_spreads_keys() {
        // Reference values: the layout must never change.
        assert_eq!(key_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(key_hash(b"a"), 0x82a2_a958_a9be_ce5b);
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            let h = key_hash(format!("key:{i}").as_bytes());
            counts[((u128::from(h) * 8) >> 64) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (900..1100).contains(c)), "{counts:?}");
    }

    #[test]
    fn keys_with_one_hash_tag_share_a_group() {
        assert_eq!(hash_tag(b"a{b}c{d}"), b"b");
        assert_eq!(hash_tag(b"a{{b}"), b"{b");
        assert_eq!(hash_tag(b"a{b"), b"a{b");
        assert_eq!(hash_tag(b"}{"), b"}{");
        assert_eq!(hash_tag(b"{}{b}"), b"{}{b}");
        // The routing rule itself (no host needed): tagged keys of one tag
        // land together, and tags spread like keys.
        let pick = |key: &[u8]| ((u128::from(key_hash(hash_tag(key))) * 64) >> 64) as usize;
        let mut groups = std::collections::HashSet::new();
        for i in 0..1000 {
            let g = pick(format!("{{user:{i}}}:a").as_bytes());
            assert_eq!(g, pick(format!("x{{user:{i}}}:b").as_bytes()));
            assert_eq!(g, pick(format!("user:{i}").as_bytes()));
            groups.insert(g);
        }
        assert_eq!(groups.len(), 64, "tags spread over every group");
    }
}
