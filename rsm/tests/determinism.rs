//! Determinism and exactly-once: random workloads (sessions, retries,
//! registers, evictions, malformed entries) applied in different batchings
//! to several replicas give identical results, state and snapshot bytes.

use bytes::Bytes;
use flotilla_rsm::{
    encode_noop, Applied, ApplyError, BitFieldAction, BitFieldOp, BitFieldOverflow, BitFieldType,
    BitOperation, DeadlineChange, DecodeError, Envelope, ExpireCondition, KvCommand, KvQuery,
    KvResult, KvStore, PutCondition, Rsm, SessionConfig, StreamTrim, TrimThreshold, TypedCommand,
    TypedQuery, XAddId, ZAddCompare, ZAddCondition,
};
use futures_lite::future::block_on;
use proptest::prelude::*;

/// A command, or a batch of them with guards (digest 0: "absent", or a
/// small number that never matches, or the digest of a key holding "1").
fn kv_cmd() -> impl Strategy<Value = KvCommand> {
    let key = (0u8..6).prop_map(|k| Bytes::from(format!("k{k}")));
    let digest = prop_oneof![Just(0u64), 1u64..3, Just(digest_of_one())];
    prop_oneof![
        5 => single_kv_cmd(),
        1 => (
            proptest::collection::vec((key, digest), 0..2),
            proptest::collection::vec(single_kv_cmd(), 0..4)
        )
            .prop_map(|(guards, commands)| KvCommand::Batch { guards, commands }),
    ]
}

/// A MAXLEN `n` or MINID `n-0` trim.
fn stream_trim(by_id: bool, n: u64, limit: u64) -> StreamTrim {
    StreamTrim {
        threshold: if by_id {
            TrimThreshold::MinId { ms: n, seq: 0 }
        } else {
            TrimThreshold::MaxLen(n)
        },
        limit,
    }
}

fn digest_of_one() -> u64 {
    let mut kv = KvStore::new();
    kv.execute(&KvCommand::put("k", "1"));
    kv.digest(b"k")
}

fn single_kv_cmd() -> impl Strategy<Value = KvCommand> {
    let key = (0u8..6).prop_map(|k| Bytes::from(format!("k{k}")));
    let val = proptest::collection::vec(any::<u8>(), 0..6).prop_map(Bytes::from);
    prop_oneof![
        (key.clone(), val.clone(), 0u8..3, any::<bool>()).prop_map(
            |(key, value, c, return_previous)| KvCommand::Put {
                key,
                value,
                condition: [
                    PutCondition::Always,
                    PutCondition::IfAbsent,
                    PutCondition::IfPresent
                ][c as usize],
                return_previous,
            }
        ),
        proptest::collection::vec(key.clone(), 1..3).prop_map(|keys| KvCommand::Delete { keys }),
        (key.clone(), val.clone()).prop_map(|(key, value)| KvCommand::Append { key, value }),
        (key.clone(), -3i64..3).prop_map(|(key, delta)| KvCommand::Increment { key, delta }),
        (
            key.clone(),
            proptest::option::of(val.clone()),
            proptest::option::of(val.clone())
        )
            .prop_map(|(key, expected, new_value)| KvCommand::CompareAndSet {
                key,
                expected,
                new_value
            }),
        proptest::collection::vec((key.clone(), val.clone()), 0..3)
            .prop_map(|pairs| KvCommand::MultiPut { pairs }),
        key.clone()
            .prop_map(|key| KvCommand::Read(KvQuery::Get { key })),
        Just(KvCommand::Read(KvQuery::Count)),
        key.clone().prop_map(|key| KvCommand::Take { key }),
        (key.clone(), val.clone(), proptest::option::of(0u64..20)).prop_map(
            |(key, value, expire_at_ms)| KvCommand::PutExpiring {
                key,
                value,
                condition: PutCondition::Always,
                return_previous: false,
                expire_at_ms
            }
        ),
        (key.clone(), 0u64..20, 0u64..10).prop_map(|(key, at_ms, now_ms)| KvCommand::Expire {
            key,
            at_ms,
            now_ms,
            condition: ExpireCondition::Always
        }),
        key.clone().prop_map(|key| KvCommand::Persist { key }),
        (0u64..20).prop_map(|now_ms| KvCommand::ExpireDue { now_ms }),
        key.clone()
            .prop_map(|key| KvCommand::Read(KvQuery::Deadline { key })),
        key.clone()
            .prop_map(|key| KvCommand::Read(KvQuery::Digest { key })),
        Just(KvCommand::Read(KvQuery::Stats)),
        (key.clone(), -3.0f64..3.0)
            .prop_map(|(key, delta)| KvCommand::IncrementFloat { key, delta }),
        (key.clone(), proptest::option::of(0u64..20), 0u64..10).prop_map(|(key, at, now_ms)| {
            KvCommand::GetExpiring {
                key,
                deadline: at.map_or(DeadlineChange::Clear, DeadlineChange::At),
                now_ms,
            }
        }),
        (key.clone(), key.clone(), any::<bool>()).prop_map(|(from, to, only_if_absent)| {
            KvCommand::Rename {
                from,
                to,
                only_if_absent,
            }
        }),
        (key.clone(), key.clone(), any::<bool>()).prop_map(|(from, to, replace)| KvCommand::Copy {
            from,
            to,
            replace
        }),
        (key.clone(), 0u64..8, val.clone()).prop_map(|(key, offset, value)| KvCommand::SetRange {
            key,
            offset,
            value
        }),
        (key.clone(), 0u64..40, any::<bool>())
            .prop_map(|(key, offset, value)| { KvCommand::SetBit { key, offset, value } }),
        (
            0usize..4,
            key.clone(),
            proptest::collection::vec(key.clone(), 1..3)
        )
            .prop_map(|(op, dst, mut sources)| {
                let op = [
                    BitOperation::And,
                    BitOperation::Or,
                    BitOperation::Xor,
                    BitOperation::Not,
                ][op];
                if op == BitOperation::Not {
                    sources.truncate(1);
                }
                KvCommand::BitOp { op, dst, sources }
            }),
        key.clone()
            .prop_map(|key| KvCommand::Read(KvQuery::Describe { key })),
        (key.clone(), proptest::collection::vec(val.clone(), 1..4)).prop_map(|(key, elements)| {
            KvCommand::HllAdd {
                key,
                registers: elements
                    .iter()
                    .map(|e| flotilla_rsm::kv::hll::hll_register(e))
                    .collect(),
            }
        }),
        (key.clone(), proptest::collection::vec(key.clone(), 0..3))
            .prop_map(|(dst, sources)| KvCommand::HllMerge { dst, sources }),
        // Publishing changes no data (reading the messages back is not
        // deterministic across a snapshot: the ring is not in it).
        (key.clone(), val.clone())
            .prop_map(|(channel, message)| KvCommand::Publish { channel, message }),
        (
            key.clone(),
            proptest::collection::vec(
                (
                    0u8..3,
                    -300i64..300,
                    any::<bool>(),
                    1u8..=64,
                    0u64..40,
                    0u8..3
                ),
                0..4
            )
        )
            .prop_map(|(key, ops)| KvCommand::BitField {
                key,
                ops: ops
                    .into_iter()
                    .map(
                        |(action, value, signed, bits, offset, overflow)| BitFieldOp {
                            action: match action {
                                0 => BitFieldAction::Get,
                                1 => BitFieldAction::Set(value),
                                _ => BitFieldAction::IncrBy(value),
                            },
                            ty: BitFieldType::new(signed || bits == 64, bits).expect("a width"),
                            offset,
                            overflow: match overflow {
                                0 => BitFieldOverflow::Wrap,
                                1 => BitFieldOverflow::Sat,
                                _ => BitFieldOverflow::Fail,
                            },
                        }
                    )
                    .collect(),
            }),
        (
            proptest::collection::vec(key.clone(), 1..3),
            any::<(bool, bool)>(),
            1u64..4
        )
            .prop_map(|(keys, (zset, end), count)| KvCommand::Typed(
                TypedCommand::MultiPop {
                    keys,
                    zset,
                    end,
                    count
                }
            )),
        (
            key.clone(),
            proptest::collection::vec((-3i8..3, val.clone()), 1..4)
        )
            .prop_map(|(key, members)| KvCommand::Typed(TypedCommand::ZAdd {
                key,
                condition: ZAddCondition::Always,
                compare: ZAddCompare::None,
                changed: false,
                incr: false,
                pairs: members
                    .into_iter()
                    .map(|(s, m)| (f64::from(s), m))
                    .collect(),
            })),
        (key.clone(), proptest::collection::vec(val.clone(), 1..4)).prop_map(|(key, values)| {
            KvCommand::Typed(TypedCommand::ListPush {
                key,
                left: false,
                only_existing: false,
                values,
            })
        }),
        (
            key.clone(),
            0u64..6,
            proptest::option::of((any::<bool>(), 0u64..6, 0u64..3)),
            any::<bool>()
        )
            .prop_map(|(key, ms, trim, auto)| {
                KvCommand::Typed(TypedCommand::XAdd {
                    key,
                    id: if auto {
                        XAddId::Auto { now_ms: ms }
                    } else {
                        XAddId::Explicit { ms, seq: 1 }
                    },
                    trim: trim.map(|(by_id, n, limit)| stream_trim(by_id, n, limit)),
                    no_mkstream: false,
                    fields: vec![Bytes::from_static(b"f"), Bytes::from_static(b"v")],
                })
            }),
        (key.clone(), any::<bool>(), 0u64..6, 0u64..3).prop_map(|(key, by_id, n, limit)| {
            KvCommand::Typed(TypedCommand::XTrim {
                key,
                trim: stream_trim(by_id, n, limit),
            })
        }),
        (key.clone(), proptest::collection::vec(0u64..6, 1..3)).prop_map(|(key, ms)| {
            KvCommand::Typed(TypedCommand::XDel {
                key,
                ids: ms.into_iter().map(|ms| (ms, 1)).collect(),
            })
        }),
        (key.clone(), 0u64..8, proptest::option::of(0u64..4)).prop_map(
            |(key, ms, entries_added)| KvCommand::Typed(TypedCommand::XSetId {
                key,
                last: (ms, 0),
                entries_added,
            })
        ),
        (key.clone(), key.clone(), -2i64..3, any::<bool>()).prop_map(|(key, src, start, rev)| {
            KvCommand::Typed(TypedCommand::ZRangeStore {
                key,
                range: TypedQuery::ZRange {
                    key: src,
                    start,
                    stop: -1,
                    rev,
                    with_scores: false,
                },
            })
        }),
        (key.clone(), key.clone(), any::<bool>(), any::<bool>()).prop_map(
            |(key, src, alpha, desc)| KvCommand::Typed(TypedCommand::SortStore {
                key,
                sort: TypedQuery::Sort {
                    key: src,
                    alpha,
                    desc,
                    sorted: true,
                    offset: 0,
                    count: None,
                },
            })
        ),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Register(u64),
    Unregister(u64),
    Session {
        client: u64,
        series: u64,
        responded: u64,
        cmd: KvCommand,
    },
    Plain(KvCommand),
    Garbage(Vec<u8>),
    Empty,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (1u64..5).prop_map(Op::Register),
        1 => (1u64..5).prop_map(Op::Unregister),
        8 => (1u64..5, 1u64..10, 0u64..8, kv_cmd())
            .prop_map(|(client, series, responded, cmd)| Op::Session { client, series, responded, cmd }),
        3 => kv_cmd().prop_map(Op::Plain),
        1 => proptest::collection::vec(any::<u8>(), 0..12).prop_map(Op::Garbage),
        1 => Just(Op::Empty),
    ]
}

fn encode(op: &Op) -> Bytes {
    match op {
        Op::Register(c) => Envelope::Register { client_id: *c }.encode(),
        Op::Unregister(c) => Envelope::Unregister { client_id: *c }.encode(),
        Op::Session {
            client,
            series,
            responded,
            cmd,
        } => Envelope::Session {
            client_id: *client,
            series_id: *series,
            responded_to: *responded,
            payload: cmd.encode(),
        }
        .encode(),
        Op::Plain(cmd) => encode_noop(&cmd.encode()),
        Op::Garbage(b) => Bytes::copy_from_slice(b),
        Op::Empty => Bytes::new(),
    }
}

fn new_rsm() -> Rsm {
    // Small bounds so eviction and "busy" paths are exercised.
    Rsm::new(
        Box::new(KvStore::new()),
        SessionConfig {
            sessions_max: 3,
            responses_per_session_max: 4,
        },
    )
}

fn snapshot_bytes(rsm: &Rsm) -> Vec<u8> {
    let mut out = Vec::new();
    block_on(rsm.capture(Bytes::from_static(b"m")).write_to(&mut out)).expect("write to memory");
    out
}

fn run(rsm: &mut Rsm, entries: &[(u64, Bytes)], cuts: &[usize]) -> Vec<Applied> {
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&entries.len())) {
        let c = c.clamp(at, entries.len());
        let n = rsm.apply(entries[at..c].iter().cloned(), &mut out);
        assert_eq!(n, c - at);
        at = c;
    }
    out
}

proptest! {
    // FLOTILLA_SOAK=1 runs 4,096 cases instead of 256.
    #![proptest_config(ProptestConfig {
        cases: if std::env::var_os("FLOTILLA_SOAK").is_some() { 4096 } else { 256 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn same_entries_same_everything(ops in proptest::collection::vec(op(), 1..120),
                                    mut cuts in proptest::collection::vec(0usize..120, 0..8)) {
        let entries: Vec<(u64, Bytes)> = ops.iter().enumerate().map(|(i, o)| (i as u64 + 1, encode(o))).collect();
        cuts.sort_unstable();
        let mut one_batch = new_rsm();
        let mut split = new_rsm();
        let mut single = new_rsm();
        let a = run(&mut one_batch, &entries, &[]);
        let b = run(&mut split, &entries, &cuts);
        let singles: Vec<usize> = (1..entries.len()).collect();
        let c = run(&mut single, &entries, &singles);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(&a, &c);
        prop_assert_eq!(a.len(), entries.len());
        for (applied, (index, _)) in a.iter().zip(&entries) {
            prop_assert_eq!(applied.index, *index);
        }
        let snap = snapshot_bytes(&one_batch);
        prop_assert_eq!(&snap, &snapshot_bytes(&split));
        prop_assert_eq!(&snap, &snapshot_bytes(&single));

        // A replica recovered from the snapshot is byte-identical and goes
        // on identically (sessions included).
        let mut recovered = new_rsm();
        block_on(recovered.recover(&mut &snap[..])).expect("recover");
        prop_assert_eq!(&snapshot_bytes(&recovered), &snap);
        let more: Vec<(u64, Bytes)> = ops.iter().enumerate()
            .map(|(i, o)| (entries.len() as u64 + 1 + i as u64, encode(o))).collect();
        let x = run(&mut one_batch, &more, &[]);
        let y = run(&mut recovered, &more, &cuts);
        prop_assert_eq!(x, y);
        prop_assert_eq!(snapshot_bytes(&one_batch), snapshot_bytes(&recovered));
    }
}

/// A state machine that records every command it applies, to count
/// applications exactly.
mod counting {
    use super::*;
    use flotilla_rsm::{
        LocalBoxFuture, QueryError, SmEntry, SmSnapshot, SnapshotError, StateMachine,
    };
    use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    #[derive(Default)]
    pub struct Log {
        pub applied: Vec<(u64, Bytes)>,
    }

    struct LogSnap(u64);

    impl SmSnapshot for LogSnap {
        fn write_to<'a>(
            &'a self,
            sink: &'a mut (dyn AsyncWrite + Unpin),
        ) -> LocalBoxFuture<'a, Result<(), SnapshotError>> {
            Box::pin(async move { Ok(sink.write_all(&self.0.to_le_bytes()).await?) })
        }
    }

    impl StateMachine for Log {
        fn kind(&self) -> &str {
            "test.log"
        }
        fn apply(&mut self, entries: &mut [SmEntry]) {
            for e in entries {
                self.applied.push((e.index, e.cmd.clone()));
                e.result = Bytes::from(format!("applied at {}", e.index));
            }
        }
        fn query(&self, _: &[u8]) -> Result<Bytes, QueryError> {
            Ok(Bytes::from(self.applied.len().to_string()))
        }
        fn capture(&self) -> Box<dyn SmSnapshot> {
            Box::new(LogSnap(self.applied.len() as u64))
        }
        fn fresh(&self) -> Box<dyn StateMachine> {
            Box::new(Log::default())
        }
        fn recover<'a>(
            &'a mut self,
            src: &'a mut (dyn AsyncRead + Unpin),
        ) -> LocalBoxFuture<'a, Result<(), SnapshotError>> {
            Box::pin(async move {
                let mut b = [0u8; 8];
                src.read_exact(&mut b).await?;
                Ok(())
            })
        }
    }
}

#[test]
fn retries_are_applied_exactly_once() {
    let mut rsm = Rsm::new(Box::<counting::Log>::default(), SessionConfig::default());
    let mut out = Vec::new();
    let session = |series, responded, p: &'static [u8]| {
        Envelope::Session {
            client_id: 7,
            series_id: series,
            responded_to: responded,
            payload: Bytes::from_static(p),
        }
        .encode()
    };
    rsm.apply(
        [
            (1, Envelope::Register { client_id: 7 }.encode()),
            (2, session(1, 0, b"a")),
            (3, session(1, 0, b"a")), // retry in the same batch
            (4, session(2, 0, b"b")),
            (5, session(1, 0, b"a")), // retry again
        ],
        &mut out,
    );
    rsm.apply(
        [
            (6, session(2, 1, b"b")),
            (7, session(3, 2, b"c")),
            (8, session(1, 0, b"a")), // a late retry of series 1
        ],
        &mut out,
    );
    let results: Vec<_> = out.iter().map(|a| a.result.clone()).collect();
    assert_eq!(results[0], Ok(Bytes::new()));
    assert_eq!(results[1], Ok(Bytes::from("applied at 2")));
    assert_eq!(
        results[2],
        Ok(Bytes::from("applied at 2")),
        "retry gets the first result"
    );
    assert_eq!(results[3], Ok(Bytes::from("applied at 4")));
    assert_eq!(results[4], Ok(Bytes::from("applied at 2")));
    assert_eq!(results[5], Ok(Bytes::from("applied at 4")));
    assert_eq!(results[6], Ok(Bytes::from("applied at 7")));
    assert_eq!(
        results[7],
        Err(ApplyError::ResponseDiscarded {
            client_id: 7,
            series_id: 1
        })
    );
    assert_eq!(rsm.query(b"").unwrap(), "3", "a, b and c applied once each");
    assert_eq!(rsm.stats().duplicates, 3);
    assert_eq!(rsm.applied_index(), 8);
}

#[test]
fn session_errors_are_results_and_change_nothing() {
    let mut rsm = new_rsm();
    let mut out = Vec::new();
    let put = KvCommand::put("k", "v").encode();
    let sess = |c, s, r| {
        Envelope::Session {
            client_id: c,
            series_id: s,
            responded_to: r,
            payload: put.clone(),
        }
        .encode()
    };
    rsm.apply(
        [
            (1, sess(1, 1, 0)),                     // not registered
            (2, Bytes::from_static(&[0xee, 1, 2])), // bad envelope
            (3, Envelope::Register { client_id: 1 }.encode()),
            (4, Envelope::Register { client_id: 1 }.encode()), // twice
            (5, sess(1, 1, 0)),
            (6, sess(1, 2, 0)),
            (7, sess(1, 3, 0)),
            (8, sess(1, 4, 0)),
            (9, sess(1, 5, 0)),  // 4 unacknowledged: busy
            (10, sess(1, 5, 4)), // acknowledged: fine
            (11, Envelope::Unregister { client_id: 1 }.encode()),
            (12, sess(1, 6, 5)),
        ],
        &mut out,
    );
    assert_eq!(
        out[0].result,
        Err(ApplyError::SessionNotFound { client_id: 1 })
    );
    assert!(matches!(out[1].result, Err(ApplyError::BadEnvelope(_))));
    assert_eq!(
        out[3].result,
        Err(ApplyError::SessionAlreadyRegistered { client_id: 1 })
    );
    assert_eq!(
        out[8].result,
        Err(ApplyError::SessionBusy {
            client_id: 1,
            responses_max: 4
        })
    );
    assert!(out[9].result.is_ok());
    assert_eq!(
        out[11].result,
        Err(ApplyError::SessionNotFound { client_id: 1 })
    );
    assert_eq!(rsm.stats().rejected, 5);
    assert!(rsm.sessions().is_empty());
    let n = KvResult::decode(rsm.query(&KvQuery::Count.encode()).unwrap()).unwrap();
    assert_eq!(n, KvResult::Count(1));
}

#[test]
fn least_recently_used_session_is_evicted() {
    let mut rsm = new_rsm(); // sessions_max = 3
    let mut out = Vec::new();
    let get = KvCommand::get("x").encode();
    let sess = |c| {
        Envelope::Session {
            client_id: c,
            series_id: 1,
            responded_to: 0,
            payload: get.clone(),
        }
        .encode()
    };
    rsm.apply(
        [
            (1, Envelope::Register { client_id: 1 }.encode()),
            (2, Envelope::Register { client_id: 2 }.encode()),
            (3, Envelope::Register { client_id: 3 }.encode()),
            (4, sess(1)), // 2 is now least recently used
            (5, Envelope::Register { client_id: 4 }.encode()),
            (6, sess(2)),
            (7, sess(1)),
        ],
        &mut out,
    );
    assert_eq!(
        out[5].result,
        Err(ApplyError::SessionNotFound { client_id: 2 })
    );
    assert_eq!(
        out[6].result, out[3].result,
        "session 1 survived with its cache"
    );
    assert!(rsm.sessions().contains(1) && rsm.sessions().contains(3) && rsm.sessions().contains(4));
}

#[test]
fn advance_to_moves_applied_index_only_forward() {
    let mut rsm = new_rsm();
    rsm.advance_to(5);
    rsm.advance_to(3);
    assert_eq!(rsm.applied_index(), 5);
    let mut out = Vec::new();
    rsm.apply(
        [(6, encode_noop(&KvCommand::put("a", "b").encode()))],
        &mut out,
    );
    assert_eq!(rsm.applied_index(), 6);
}

#[test]
#[should_panic(expected = "applied at or below")]
fn applying_an_index_twice_panics() {
    let mut rsm = new_rsm();
    let mut out = Vec::new();
    rsm.apply([(1, Bytes::new())], &mut out);
    rsm.apply([(1, Bytes::new())], &mut out);
}

/// An independent, one-entry-at-a-time model of the session rules (Raft
/// thesis §6.3 / dragonboat), to check the batched, optimized manager against.
#[derive(Default)]
struct SessionModel {
    /// client -> (last used index, responded_to, series -> result)
    sessions: std::collections::BTreeMap<u64, (u64, u64, std::collections::BTreeMap<u64, Bytes>)>,
    applied: usize,
}

impl SessionModel {
    fn step(&mut self, index: u64, op: &Op, cfg: SessionConfig) -> Result<Bytes, ApplyError> {
        let applied = |m: &mut Self| {
            m.applied += 1;
            Bytes::from(format!("applied at {index}"))
        };
        match op {
            Op::Empty => Ok(Bytes::new()),
            Op::Garbage(_) => unreachable!("not generated for the model"),
            Op::Plain(_) => Ok(applied(self)),
            Op::Register(c) => {
                if self.sessions.contains_key(c) {
                    return Err(ApplyError::SessionAlreadyRegistered { client_id: *c });
                }
                if self.sessions.len() >= cfg.sessions_max as usize {
                    let victim = *self.sessions.iter().min_by_key(|(_, s)| s.0).unwrap().0;
                    self.sessions.remove(&victim);
                }
                self.sessions.insert(*c, (index, 0, Default::default()));
                Ok(Bytes::new())
            }
            Op::Unregister(c) => match self.sessions.remove(c) {
                Some(_) => Ok(Bytes::new()),
                None => Err(ApplyError::SessionNotFound { client_id: *c }),
            },
            Op::Session {
                client,
                series,
                responded,
                ..
            } => {
                if responded >= series {
                    return Err(ApplyError::BadEnvelope(DecodeError::Invalid {
                        what: "responded to",
                    }));
                }
                let Some(s) = self.sessions.get_mut(client) else {
                    return Err(ApplyError::SessionNotFound { client_id: *client });
                };
                s.0 = index;
                if *responded > s.1 {
                    s.1 = *responded;
                    s.2.retain(|k, _| k > responded);
                }
                if *series <= s.1 {
                    return Err(ApplyError::ResponseDiscarded {
                        client_id: *client,
                        series_id: *series,
                    });
                }
                if let Some(r) = s.2.get(series) {
                    return Ok(r.clone());
                }
                if s.2.len() >= cfg.responses_per_session_max as usize {
                    return Err(ApplyError::SessionBusy {
                        client_id: *client,
                        responses_max: cfg.responses_per_session_max,
                    });
                }
                let r = Bytes::from(format!("applied at {index}"));
                self.applied += 1;
                self.sessions
                    .get_mut(client)
                    .unwrap()
                    .2
                    .insert(*series, r.clone());
                Ok(r)
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if std::env::var_os("FLOTILLA_SOAK").is_some() { 4096 } else { 256 },
        ..ProptestConfig::default()
    })]

    #[test]
    fn sessions_match_an_independent_model(
        ops in proptest::collection::vec(op().prop_filter("no garbage", |o| !matches!(o, Op::Garbage(_))), 1..150),
        mut cuts in proptest::collection::vec(0usize..150, 0..10),
    ) {
        let cfg = SessionConfig { sessions_max: 3, responses_per_session_max: 4 };
        let entries: Vec<(u64, Bytes)> = ops.iter().enumerate().map(|(i, o)| (i as u64 + 1, encode(o))).collect();
        cuts.sort_unstable();
        let mut rsm = Rsm::new(Box::<counting::Log>::default(), cfg);
        let got = run(&mut rsm, &entries, &cuts);
        let mut model = SessionModel::default();
        for ((index, _), (op, applied)) in entries.iter().zip(ops.iter().zip(&got)) {
            let want = model.step(*index, op, cfg);
            prop_assert_eq!(&applied.result, &want, "entry {} {:?}", index, op);
        }
        let count: usize = String::from_utf8(rsm.query(b"").unwrap().to_vec()).unwrap().parse().unwrap();
        prop_assert_eq!(count, model.applied, "state machine applications");
    }
}
