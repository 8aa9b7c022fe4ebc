//! The plain data the core consumes and produces: ids, entries, membership,
//! messages, hard state. Every type here is a plain struct or enum so the wire
//! codec (`engine/src/wire`) can encode it field by field.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// Raft's logical clock.
pub type Term = u64;
/// A 1-based log position; 0 means "before the first entry".
pub type Index = u64;

/// Identifies one replica inside a group (one replica per node per group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

/// Identifies one raft group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}
impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A client command for the state machine.
    Normal,
    /// The empty entry a new leader appends (Raft §8: commit one entry of the
    /// leader's own term before serving reads or membership changes).
    Noop,
    /// A membership change; `data` is an encoded [`ConfChange`].
    ConfChange,
}

/// One log entry. `data` is shared, never copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: Index,
    pub term: Term,
    pub kind: EntryKind,
    pub data: Bytes,
}

impl Entry {
    /// Bytes this entry accounts for in batch and cache limits.
    #[inline]
    pub fn size_bytes(&self) -> usize {
        self.data.len() + 24
    }
}

/// The role a member plays in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberKind {
    /// Votes, counts for commit, may lead.
    Voter,
    /// Non-voting learner; receives the full log; may be promoted to voter.
    Observer,
    /// Votes and counts for commit but stores entry metadata only (payloads
    /// are stripped, except config changes); never becomes leader.
    Witness,
}

/// One member of a group with its opaque transport address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub kind: MemberKind,
    pub address: Bytes,
}

/// A group's membership, sorted by id. `config_index` is the index of the
/// config-change entry that produced it (0 for the bootstrap membership).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub config_index: Index,
    pub members: Vec<Member>,
}

impl Membership {
    /// A membership from members in any order (sorted here).
    pub fn new(config_index: Index, mut members: Vec<Member>) -> Self {
        members.sort_by_key(|m| m.id);
        members.dedup_by_key(|m| m.id);
        Membership {
            config_index,
            members,
        }
    }

    /// Voters only, with empty addresses (handy in tests).
    pub fn voters(ids: &[u64]) -> Self {
        Self::new(
            0,
            ids.iter()
                .map(|&i| Member {
                    id: NodeId(i),
                    kind: MemberKind::Voter,
                    address: Bytes::new(),
                })
                .collect(),
        )
    }

    /// The member with this id.
    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members
            .binary_search_by_key(&id, |m| m.id)
            .ok()
            .map(|i| &self.members[i])
    }

    /// The kind of this member, if it is one.
    pub fn kind(&self, id: NodeId) -> Option<MemberKind> {
        self.get(id).map(|m| m.kind)
    }

    /// True for voters and witnesses: they vote and count toward commit.
    pub fn is_voting(&self, id: NodeId) -> bool {
        matches!(
            self.kind(id),
            Some(MemberKind::Voter) | Some(MemberKind::Witness)
        )
    }

    /// Number of voting members (voters + witnesses).
    pub fn voting_count(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.kind != MemberKind::Observer)
            .count()
    }

    /// Majority of the voting members.
    pub fn quorum(&self) -> usize {
        self.voting_count() / 2 + 1
    }

    /// Checks that `cc` is a legal single-server change of this membership.
    pub fn validate(&self, cc: &ConfChange) -> Result<(), ConfChangeError> {
        let cur = self.kind(cc.node);
        match (cc.kind, cur) {
            (ConfChangeKind::AddVoter, None)
            | (ConfChangeKind::AddObserver, None)
            | (ConfChangeKind::AddWitness, None) => Ok(()),
            (ConfChangeKind::PromoteObserver, Some(MemberKind::Observer)) => Ok(()),
            (ConfChangeKind::RemoveNode, Some(k)) => {
                let voters_left = self
                    .members
                    .iter()
                    .filter(|m| m.kind == MemberKind::Voter && m.id != cc.node)
                    .count();
                if k == MemberKind::Voter && voters_left == 0 {
                    Err(ConfChangeError::LastVoter { node: cc.node })
                } else {
                    Ok(())
                }
            }
            _ => Err(ConfChangeError::Invalid {
                kind: cc.kind,
                node: cc.node,
                current: cur,
            }),
        }
    }

    /// Whether `cc` is already in effect here: the node is the member it
    /// would make (same kind and, when added, same address), or is absent
    /// for a removal. Proposing such a change again is a no-op.
    pub fn in_effect(&self, cc: &ConfChange) -> bool {
        let member = self.get(cc.node);
        let added =
            |kind: MemberKind| member.is_some_and(|m| m.kind == kind && m.address == cc.address);
        match cc.kind {
            ConfChangeKind::AddVoter => added(MemberKind::Voter),
            ConfChangeKind::AddObserver => added(MemberKind::Observer),
            ConfChangeKind::AddWitness => added(MemberKind::Witness),
            ConfChangeKind::PromoteObserver => member.is_some_and(|m| m.kind == MemberKind::Voter),
            ConfChangeKind::RemoveNode => member.is_none(),
        }
    }

    /// The membership after `cc`, produced by the entry at `index`.
    pub fn applied(&self, cc: &ConfChange, index: Index) -> Result<Membership, ConfChangeError> {
        self.validate(cc)?;
        let mut next = self.clone();
        next.config_index = index;
        let pos = next.members.binary_search_by_key(&cc.node, |m| m.id);
        match cc.kind {
            ConfChangeKind::AddVoter | ConfChangeKind::AddObserver | ConfChangeKind::AddWitness => {
                let kind = match cc.kind {
                    ConfChangeKind::AddVoter => MemberKind::Voter,
                    ConfChangeKind::AddObserver => MemberKind::Observer,
                    _ => MemberKind::Witness,
                };
                let at = pos.unwrap_err();
                next.members.insert(
                    at,
                    Member {
                        id: cc.node,
                        kind,
                        address: cc.address.clone(),
                    },
                );
            }
            ConfChangeKind::PromoteObserver => {
                next.members[pos.unwrap()].kind = MemberKind::Voter;
            }
            ConfChangeKind::RemoveNode => {
                next.members.remove(pos.unwrap());
            }
        }
        Ok(next)
    }
}

/// Kinds of single-server membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfChangeKind {
    AddVoter,
    AddObserver,
    AddWitness,
    PromoteObserver,
    RemoveNode,
}

/// One membership change. In the log it is encoded together with the whole
/// membership it produces, so a replica that joins late (or restarts) learns
/// the full membership from the entry alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfChange {
    pub kind: ConfChangeKind,
    pub node: NodeId,
    /// Transport address of an added node (ignored for promote/remove).
    pub address: Bytes,
}

/// Errors about membership changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfChangeError {
    #[error("{kind:?} of {node} is not valid when it is {current:?}")]
    Invalid {
        kind: ConfChangeKind,
        node: NodeId,
        current: Option<MemberKind>,
    },
    #[error("cannot remove {node}: it is the last voter")]
    LastVoter { node: NodeId },
    #[error("config-change entry is malformed at byte {offset}")]
    Malformed { offset: usize },
}

impl ConfChange {
    /// Encodes the change and the membership it produces.
    ///
    /// ```text
    /// u8 kind | u64 node | u32 addr_len | addr
    /// u32 member_count | member_count × ( u64 id | u8 kind | u32 addr_len | addr )
    /// (integers little-endian)
    /// ```
    pub fn encode(&self, result: &Membership) -> Bytes {
        let mut b = BytesMut::with_capacity(64 + 32 * result.members.len());
        b.put_u8(match self.kind {
            ConfChangeKind::AddVoter => 0,
            ConfChangeKind::AddObserver => 1,
            ConfChangeKind::AddWitness => 2,
            ConfChangeKind::PromoteObserver => 3,
            ConfChangeKind::RemoveNode => 4,
        });
        b.put_u64_le(self.node.0);
        b.put_u32_le(self.address.len() as u32);
        b.put_slice(&self.address);
        b.put_u32_le(result.members.len() as u32);
        for m in &result.members {
            b.put_u64_le(m.id.0);
            b.put_u8(match m.kind {
                MemberKind::Voter => 0,
                MemberKind::Observer => 1,
                MemberKind::Witness => 2,
            });
            b.put_u32_le(m.address.len() as u32);
            b.put_slice(&m.address);
        }
        b.freeze()
    }

    /// Decodes what [`ConfChange::encode`] wrote; the membership's
    /// `config_index` is set to `index`.
    ///
    /// # Errors
    /// [`ConfChangeError::Malformed`] on any truncated or invalid field.
    pub fn decode(data: &Bytes, index: Index) -> Result<(ConfChange, Membership), ConfChangeError> {
        let total = data.len();
        let mut d = data.clone();
        let off = |d: &Bytes| total - d.remaining();
        let need = |d: &Bytes, n: usize| {
            if d.remaining() < n {
                Err(ConfChangeError::Malformed { offset: off(d) })
            } else {
                Ok(())
            }
        };
        need(&d, 13)?;
        let kind = match d.get_u8() {
            0 => ConfChangeKind::AddVoter,
            1 => ConfChangeKind::AddObserver,
            2 => ConfChangeKind::AddWitness,
            3 => ConfChangeKind::PromoteObserver,
            4 => ConfChangeKind::RemoveNode,
            _ => return Err(ConfChangeError::Malformed { offset: 0 }),
        };
        let node = NodeId(d.get_u64_le());
        let alen = d.get_u32_le() as usize;
        need(&d, alen)?;
        let address = d.split_to(alen);
        need(&d, 4)?;
        let count = d.get_u32_le() as usize;
        if count > d.remaining() / 13 {
            return Err(ConfChangeError::Malformed { offset: off(&d) });
        }
        let mut members = Vec::with_capacity(count);
        for _ in 0..count {
            need(&d, 13)?;
            let id = NodeId(d.get_u64_le());
            let k = match d.get_u8() {
                0 => MemberKind::Voter,
                1 => MemberKind::Observer,
                2 => MemberKind::Witness,
                _ => {
                    return Err(ConfChangeError::Malformed {
                        offset: off(&d) - 1,
                    })
                }
            };
            let alen = d.get_u32_le() as usize;
            need(&d, alen)?;
            members.push(Member {
                id,
                kind: k,
                address: d.split_to(alen),
            });
        }
        if d.has_remaining() {
            return Err(ConfChangeError::Malformed { offset: off(&d) });
        }
        Ok((
            ConfChange {
                kind,
                node,
                address,
            },
            Membership::new(index, members),
        ))
    }
}

/// Snapshot metadata. The snapshot's data travels out of band.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    pub membership: Membership,
}

/// What must be durable before votes and acknowledgements leave the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    pub commit: Index,
}

/// Raft message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// `index`/`log_term`: the entry preceding `entries`; `commit`: leader commit.
    Append,
    /// Accept: `index` = last index now matching. Reject: `index` = the
    /// rejected prev index, `reject_hint`/`log_term` = the follower's hint.
    AppendResponse,
    /// `index`/`log_term`: candidate's last entry; flag [`FLAG_TRANSFER`].
    RequestVote,
    RequestVoteResponse,
    /// Sent with `term` = the term the sender would campaign in.
    RequestPreVote,
    RequestPreVoteResponse,
    /// `commit`: min(leader commit, follower match); `context`: heartbeat
    /// sequence; flag [`FLAG_QUIESCE`] asks the follower to quiesce.
    Heartbeat,
    /// Echoes `context`.
    HeartbeatResponse,
    /// `snapshot`: the metadata; delivered only once the data is local.
    InstallSnapshot,
    /// Tells the transfer target to campaign now.
    TimeoutNow,
    /// A follower asks the leader for a read index; `context` = batch id.
    ReadIndex,
    /// `index`: the read index for batch `context` (`reject` if refused).
    ReadIndexResponse,
}

/// [`Message::flags`]: a vote request from a leadership transfer (voters
/// ignore their leader lease for it).
pub const FLAG_TRANSFER: u32 = 1;
/// [`Message::flags`]: a heartbeat telling the follower to quiesce.
pub const FLAG_QUIESCE: u32 = 2;

/// One raft message; a plain struct for the wire codec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub group: GroupId,
    pub kind: MessageType,
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub log_term: Term,
    pub index: Index,
    pub entries: Vec<Entry>,
    pub commit: Index,
    pub reject: bool,
    pub reject_hint: Index,
    pub snapshot: Option<SnapshotMeta>,
    pub context: u64,
    pub flags: u32,
}

impl Message {
    /// A message with every optional field empty.
    pub fn new(group: GroupId, kind: MessageType, from: NodeId, to: NodeId, term: Term) -> Self {
        Message {
            group,
            kind,
            from,
            to,
            term,
            log_term: 0,
            index: 0,
            entries: Vec::new(),
            commit: 0,
            reject: false,
            reject_hint: 0,
            snapshot: None,
            context: 0,
            flags: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_change_round_trip_and_garbage() {
        let m = Membership::voters(&[1, 2, 3]);
        let cc = ConfChange {
            kind: ConfChangeKind::AddWitness,
            node: NodeId(9),
            address: Bytes::from_static(b"127.0.0.1:9"),
        };
        let next = m.applied(&cc, 7).unwrap();
        let enc = cc.encode(&next);
        let (cc2, m2) = ConfChange::decode(&enc, 7).unwrap();
        assert_eq!(cc2, cc);
        assert_eq!(m2, next);
        assert_eq!(m2.kind(NodeId(9)), Some(MemberKind::Witness));
        for cut in 0..enc.len() {
            assert!(ConfChange::decode(&enc.slice(..cut), 7).is_err());
        }
        let mut bad = enc.to_vec();
        bad[0] = 77;
        assert!(ConfChange::decode(&Bytes::from(bad), 7).is_err());
    }

    #[test]
    fn membership_rules() {
        let m = Membership::voters(&[1]);
        let rm = ConfChange {
            kind: ConfChangeKind::RemoveNode,
            node: NodeId(1),
            address: Bytes::new(),
        };
        assert!(matches!(
            m.validate(&rm),
            Err(ConfChangeError::LastVoter { .. })
        ));
        let promote = ConfChange {
            kind: ConfChangeKind::PromoteObserver,
            node: NodeId(1),
            address: Bytes::new(),
        };
        assert!(m.validate(&promote).is_err());
        assert_eq!(Membership::voters(&[1, 2, 3, 4]).quorum(), 3);
    }
}
