//! Forwarding client requests to a group's leader.
//!
//! A proposal, membership change or transfer that reaches a replica which
//! is not the leader travels to the leader's shard as a
//! [`wire::Forward`] request; the leader runs it like a local request (never
//! forwarding it again) and sends a `Forward` answer back. The origin
//! retries on a newer leader at most [`FORWARD_ATTEMPTS_MAX`] times, so a
//! request never loops; with no known leader it waits (bounded) until one
//! is elected or the caller's deadline passes.
//!
//! ```text
//!  status  error                       node          index
//!  0       ok (payload = result)
//!  1       NotLeader                   leader or 0
//!  2       GroupNotFound
//!  3       Dropped                                   index
//!  4       ReadAborted
//!  5       Busy                                      uncommitted
//!  6       TransferInProgress
//!  7       ConfChangePending                         index
//!  8       NotCommittedInTerm
//!  9       TooManyReads
//!  10      Witness
//!  11      ShuttingDown
//!  12      accepted: not an outcome  term          index
//!          (the leader appended the proposal at (index, term); its outcome
//!          follows, or the origin's own replica learns it from its log)
//!  255     any other error (payload = its text) → RequestError::Remote
//! ```
//!
//! A forwarded proposal carries its command as a tagged envelope
//! (`flotilla_rsm::Envelope::Tagged`) and, in the request's `index` field,
//! the term of the leader it is meant for; a leader of any other term
//! refuses it (`NotLeader`). So if the leader fails before its "accepted"
//! answer arrives, the entry can only be in the log at that term, and the
//! origin's own replica settles it (`GroupReplica::want_tag`): the entry's
//! result when it applies, `Dropped` (never applied: safe to retry) once an
//! entry of a later term applies without it. Every node of a cluster must
//! run a version that knows the tag (older ones fail to apply it).

use bytes::Bytes;

use crate::error::RequestError;
use crate::raft::{ConfChange, ConfChangeKind, GroupId, NodeId, ProposeError};
use crate::wire;

/// How many leaders one request is sent to before the caller gets
/// `NotLeader`.
pub(crate) const FORWARD_ATTEMPTS_MAX: u8 = 3;

/// Requests waiting for a leader to be elected, per shard.
pub(crate) const PARKED_MAX: usize = 1 << 16;

/// A request that can run on the leader.
#[derive(Debug, Clone)]
pub(crate) enum ClientOp {
    Propose(Bytes),
    ConfChange(ConfChange),
    Transfer(NodeId),
    /// A read; served locally (never forwarded), parked while no leader is
    /// known.
    Read(Bytes, crate::api::ReadConsistency),
}

pub(crate) const OP_PROPOSE: u8 = 0;
const OP_CONF_CHANGE: u8 = 1;
const OP_TRANSFER: u8 = 2;

impl ClientOp {
    /// Fills the request fields of `f`.
    pub(crate) fn encode_into(&self, f: &mut wire::Forward) {
        match self {
            ClientOp::Propose(cmd) => {
                f.op = OP_PROPOSE;
                f.payload = cmd.clone();
            }
            ClientOp::ConfChange(cc) => {
                f.op = OP_CONF_CHANGE;
                f.node = cc.node.0;
                let mut p = Vec::with_capacity(1 + cc.address.len());
                p.push(match cc.kind {
                    ConfChangeKind::AddVoter => 0,
                    ConfChangeKind::AddObserver => 1,
                    ConfChangeKind::AddWitness => 2,
                    ConfChangeKind::PromoteObserver => 3,
                    ConfChangeKind::RemoveNode => 4,
                });
                p.extend_from_slice(&cc.address);
                f.payload = Bytes::from(p);
            }
            ClientOp::Transfer(to) => {
                f.op = OP_TRANSFER;
                f.node = to.0;
            }
            ClientOp::Read(..) => {
                debug_assert!(false, "reads are never forwarded");
                f.op = u8::MAX;
            }
        }
    }

    /// The request carried by `f`, or `None` if it is malformed.
    pub(crate) fn decode(f: &wire::Forward) -> Option<ClientOp> {
        Some(match f.op {
            OP_PROPOSE => ClientOp::Propose(f.payload.clone()),
            OP_CONF_CHANGE => {
                let (&kind, address) = f.payload.split_first()?;
                let kind = match kind {
                    0 => ConfChangeKind::AddVoter,
                    1 => ConfChangeKind::AddObserver,
                    2 => ConfChangeKind::AddWitness,
                    3 => ConfChangeKind::PromoteObserver,
                    4 => ConfChangeKind::RemoveNode,
                    _ => return None,
                };
                ClientOp::ConfChange(ConfChange {
                    kind,
                    node: NodeId(f.node),
                    address: f.payload.slice_ref(address),
                })
            }
            OP_TRANSFER => ClientOp::Transfer(NodeId(f.node)),
            _ => return None,
        })
    }
}

/// Fills the answer fields of `f` from `result`.
pub(crate) fn encode_result(result: Result<Bytes, RequestError>, f: &mut wire::Forward) {
    let (status, node, index, payload) = match result {
        Ok(bytes) => (0, 0, 0, bytes),
        Err(e) => match e {
            RequestError::NotLeader { leader, .. }
            | RequestError::Rejected(ProposeError::NotLeader { leader, .. }) => {
                (1, leader.map_or(0, |l| l.0), 0, Bytes::new())
            }
            RequestError::GroupNotFound { .. } => (2, 0, 0, Bytes::new()),
            RequestError::Dropped { index, .. } => (3, 0, index, Bytes::new()),
            RequestError::ReadAborted { .. } => (4, 0, 0, Bytes::new()),
            RequestError::Rejected(ProposeError::Busy { uncommitted, .. }) => {
                (5, 0, uncommitted, Bytes::new())
            }
            RequestError::Rejected(ProposeError::TransferInProgress { .. }) => {
                (6, 0, 0, Bytes::new())
            }
            RequestError::Rejected(ProposeError::ConfChangePending { index, .. }) => {
                (7, 0, index, Bytes::new())
            }
            RequestError::Rejected(ProposeError::NotCommittedInTerm { .. }) => {
                (8, 0, 0, Bytes::new())
            }
            RequestError::Rejected(ProposeError::TooManyReads { .. }) => (9, 0, 0, Bytes::new()),
            RequestError::Witness { .. } => (10, 0, 0, Bytes::new()),
            RequestError::ShuttingDown { .. } => (11, 0, 0, Bytes::new()),
            other => (255, 0, 0, Bytes::from(other.to_string())),
        },
    };
    f.status = status;
    f.node = node;
    f.index = index;
    f.payload = payload;
}

const STATUS_ACCEPTED: u8 = 12;

/// Fills `f` as the "accepted" answer: the leader appended the forwarded
/// proposal at (`index`, `term`).
pub(crate) fn encode_accepted(index: u64, term: u64, f: &mut wire::Forward) {
    f.status = STATUS_ACCEPTED;
    f.node = term;
    f.index = index;
    f.payload = Bytes::new();
}

/// The (index, term) of an "accepted" answer; `None` for any other.
pub(crate) fn decode_accepted(f: &wire::Forward) -> Option<(u64, u64)> {
    (f.status == STATUS_ACCEPTED && f.index > 0).then_some((f.index, f.node))
}

/// The result an answer carries.
pub(crate) fn decode_result(f: &wire::Forward) -> Result<Bytes, RequestError> {
    let group: GroupId = f.group;
    let leader = (f.node != 0).then_some(NodeId(f.node));
    Err(match f.status {
        0 => return Ok(f.payload.clone()),
        1 => RequestError::NotLeader { group, leader },
        2 => RequestError::GroupNotFound { group },
        3 => RequestError::Dropped {
            group,
            index: f.index,
        },
        4 => RequestError::ReadAborted { group },
        5 => RequestError::Rejected(ProposeError::Busy {
            group,
            uncommitted: f.index,
        }),
        6 => RequestError::Rejected(ProposeError::TransferInProgress { group }),
        7 => RequestError::Rejected(ProposeError::ConfChangePending {
            group,
            index: f.index,
        }),
        8 => RequestError::Rejected(ProposeError::NotCommittedInTerm { group }),
        9 => RequestError::Rejected(ProposeError::TooManyReads { group }),
        10 => RequestError::Witness { group },
        11 => RequestError::ShuttingDown { group },
        _ => RequestError::Remote {
            group,
            message: String::from_utf8_lossy(&f.payload).into_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank() -> wire::Forward {
        wire::Forward {
            group: GroupId(4),
            from: NodeId(1),
            to: NodeId(2),
            reply: false,
            id: 1,
            op: 0,
            status: 0,
            node: 0,
            index: 0,
            payload: Bytes::new(),
        }
    }

    #[test]
    fn accepted_answers_carry_index_and_term_and_are_no_outcome() {
        let mut f = blank();
        encode_accepted(41, 3, &mut f);
        assert_eq!(decode_accepted(&f), Some((41, 3)));
        encode_result(Ok(Bytes::from("x")), &mut f);
        assert_eq!(decode_accepted(&f), None);
        encode_result(
            Err(RequestError::ShuttingDown { group: GroupId(4) }),
            &mut f,
        );
        assert_eq!(decode_accepted(&f), None);
    }

    #[test]
    fn ops_round_trip() {
        let ops = [
            ClientOp::Propose(Bytes::from_static(b"x")),
            ClientOp::ConfChange(ConfChange {
                kind: ConfChangeKind::AddWitness,
                node: NodeId(9),
                address: Bytes::from_static(b"127.0.0.1:1"),
            }),
            ClientOp::Transfer(NodeId(3)),
        ];
        for op in ops {
            let mut f = blank();
            op.encode_into(&mut f);
            let back = ClientOp::decode(&f).expect("decodes");
            assert_eq!(format!("{back:?}"), format!("{op:?}"));
        }
        let mut f = blank();
        f.op = 9;
        assert!(ClientOp::decode(&f).is_none());
        f.op = OP_CONF_CHANGE;
        assert!(ClientOp::decode(&f).is_none(), "empty change payload");
    }

    #[test]
    fn results_round_trip() {
        let g = GroupId(4);
        let cases = vec![
            Ok(Bytes::from_static(b"result")),
            Err(RequestError::NotLeader {
                group: g,
                leader: Some(NodeId(3)),
            }),
            Err(RequestError::NotLeader {
                group: g,
                leader: None,
            }),
            Err(RequestError::GroupNotFound { group: g }),
            Err(RequestError::Dropped { group: g, index: 7 }),
            Err(RequestError::ReadAborted { group: g }),
            Err(RequestError::Rejected(ProposeError::Busy {
                group: g,
                uncommitted: 9,
            })),
            Err(RequestError::Rejected(ProposeError::ConfChangePending {
                group: g,
                index: 5,
            })),
            Err(RequestError::Witness { group: g }),
            Err(RequestError::ShuttingDown { group: g }),
        ];
        for r in cases {
            let mut f = blank();
            encode_result(r.clone(), &mut f);
            assert_eq!(decode_result(&f), r);
        }
        let mut f = blank();
        encode_result(
            Err(RequestError::Rejected(ProposeError::InvalidTarget {
                node: NodeId(2),
            })),
            &mut f,
        );
        assert!(matches!(
            decode_result(&f),
            Err(RequestError::Remote { .. })
        ));
    }
}
