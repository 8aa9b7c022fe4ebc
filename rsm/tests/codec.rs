//! Codecs: round trips, and decoding arbitrary bytes never panics.

use bytes::Bytes;
use flotilla_rsm::{
    ApplyError, BitFieldAction, BitFieldOp, BitFieldOverflow, BitFieldType, BitOperation,
    DeadlineChange, Envelope, ExpireCondition, KvCommand, KvError, KvQuery, KvResult, KvStore,
    PutCondition, Rsm, SessionConfig, SessionTable, StreamTrim, TrimThreshold, TypedCommand,
    TypedQuery, XAddId,
};
use proptest::prelude::*;

fn bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..20).prop_map(Bytes::from)
}

fn query() -> impl Strategy<Value = KvQuery> {
    prop_oneof![
        bytes().prop_map(|key| KvQuery::Get { key }),
        proptest::collection::vec(bytes(), 0..4).prop_map(|keys| KvQuery::MultiGet { keys }),
        proptest::collection::vec(bytes(), 0..4).prop_map(|keys| KvQuery::Exists { keys }),
        (
            bytes(),
            proptest::option::of(bytes()),
            any::<u32>(),
            any::<bool>()
        )
            .prop_map(|(start, end, limit, keys_only)| KvQuery::Scan {
                start,
                end,
                limit,
                keys_only
            }),
        Just(KvQuery::Count),
        bytes().prop_map(|key| KvQuery::Deadline { key }),
        Just(KvQuery::NextDeadline),
        bytes().prop_map(|key| KvQuery::Digest { key }),
        Just(KvQuery::Stats),
        bytes().prop_map(|key| KvQuery::Describe { key }),
        any::<u64>().prop_map(|seed| KvQuery::RandomKey { seed }),
        (any::<u64>(), any::<u32>()).prop_map(|(after, limit)| KvQuery::Messages { after, limit }),
        bytes().prop_map(|payload| KvQuery::Script { payload }),
        (
            bytes(),
            any::<(bool, bool, bool)>(),
            any::<u64>(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(key, (alpha, desc, sorted), offset, count)| {
                KvQuery::Typed(TypedQuery::Sort {
                    key,
                    alpha,
                    desc,
                    sorted,
                    offset,
                    count,
                })
            }),
    ]
}

/// A range query that `ZRANGESTORE` embeds.
fn zrange() -> impl Strategy<Value = TypedQuery> {
    prop_oneof![
        (bytes(), any::<i64>(), any::<i64>(), any::<bool>()).prop_map(|(key, start, stop, rev)| {
            TypedQuery::ZRange {
                key,
                start,
                stop,
                rev,
                with_scores: false,
            }
        }),
        (bytes(), -5.0f64..5.0, any::<bool>(), any::<u64>()).prop_map(|(key, min, rev, offset)| {
            TypedQuery::ZRangeByScore {
                key,
                min,
                min_exclusive: rev,
                max: min + 1.0,
                max_exclusive: false,
                rev,
                with_scores: false,
                offset,
                count: None,
            }
        }),
        (bytes(), any::<bool>()).prop_map(|(key, rev)| TypedQuery::ZRangeByLex {
            key,
            min: Bytes::from_static(b"[a"),
            max: Bytes::from_static(b"+"),
            rev,
            offset: 0,
            count: Some(3),
        }),
    ]
}

/// A command, or a batch of commands.
fn command() -> impl Strategy<Value = KvCommand> {
    prop_oneof![
        4 => single_command(),
        1 => (
            proptest::collection::vec((bytes(), any::<u64>()), 0..3),
            proptest::collection::vec(single_command(), 0..4)
        )
            .prop_map(|(guards, commands)| KvCommand::Batch { guards, commands }),
    ]
}

fn single_command() -> impl Strategy<Value = KvCommand> {
    prop_oneof![
        (bytes(), bytes(), 0usize..3, any::<bool>()).prop_map(
            |(key, value, c, return_previous)| KvCommand::Put {
                key,
                value,
                condition: [
                    PutCondition::Always,
                    PutCondition::IfAbsent,
                    PutCondition::IfPresent
                ][c],
                return_previous
            }
        ),
        proptest::collection::vec(bytes(), 0..4).prop_map(|keys| KvCommand::Delete { keys }),
        (bytes(), bytes()).prop_map(|(key, value)| KvCommand::Append { key, value }),
        (
            bytes(),
            proptest::option::of(bytes()),
            proptest::option::of(bytes())
        )
            .prop_map(|(key, expected, new_value)| KvCommand::CompareAndSet {
                key,
                expected,
                new_value
            }),
        (bytes(), any::<i64>()).prop_map(|(key, delta)| KvCommand::Increment { key, delta }),
        proptest::collection::vec((bytes(), bytes()), 0..4)
            .prop_map(|pairs| KvCommand::MultiPut { pairs }),
        Just(KvCommand::Clear),
        bytes().prop_map(|key| KvCommand::Take { key }),
        (
            bytes(),
            bytes(),
            any::<bool>(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(key, value, return_previous, expire_at_ms)| {
                KvCommand::PutExpiring {
                    key,
                    value,
                    condition: PutCondition::IfPresent,
                    return_previous,
                    expire_at_ms,
                }
            }),
        (bytes(), any::<u64>(), any::<u64>(), 0usize..5).prop_map(|(key, at_ms, now_ms, c)| {
            KvCommand::Expire {
                key,
                at_ms,
                now_ms,
                condition: [
                    ExpireCondition::Always,
                    ExpireCondition::IfNone,
                    ExpireCondition::IfSome,
                    ExpireCondition::Later,
                    ExpireCondition::Earlier,
                ][c],
            }
        }),
        bytes().prop_map(|key| KvCommand::Persist { key }),
        any::<u64>().prop_map(|now_ms| KvCommand::ExpireDue { now_ms }),
        query().prop_map(KvCommand::Read),
        (
            bytes(),
            proptest::num::f64::NORMAL | proptest::num::f64::ZERO | proptest::num::f64::INFINITE
        )
            .prop_map(|(key, delta)| KvCommand::IncrementFloat { key, delta }),
        (bytes(), 0u8..3, any::<u64>(), any::<u64>()).prop_map(|(key, c, at, now_ms)| {
            KvCommand::GetExpiring {
                key,
                deadline: match c {
                    0 => DeadlineChange::Keep,
                    1 => DeadlineChange::Clear,
                    _ => DeadlineChange::At(at),
                },
                now_ms,
            }
        }),
        (bytes(), bytes(), any::<bool>()).prop_map(|(from, to, only_if_absent)| {
            KvCommand::Rename {
                from,
                to,
                only_if_absent,
            }
        }),
        (bytes(), bytes(), any::<bool>()).prop_map(|(from, to, replace)| KvCommand::Copy {
            from,
            to,
            replace
        }),
        (bytes(), any::<u64>(), bytes()).prop_map(|(key, offset, value)| KvCommand::SetRange {
            key,
            offset,
            value
        }),
        (bytes(), any::<u64>(), any::<bool>()).prop_map(|(key, offset, value)| KvCommand::SetBit {
            key,
            offset,
            value
        }),
        (0usize..4, bytes(), proptest::collection::vec(bytes(), 1..4)).prop_map(
            |(op, dst, mut sources)| {
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
            }
        ),
        (
            bytes(),
            proptest::collection::vec((0u16..16384, 1u8..=51), 0..8)
        )
            .prop_map(|(key, registers)| KvCommand::HllAdd { key, registers }),
        (bytes(), proptest::collection::vec(bytes(), 0..4))
            .prop_map(|(dst, sources)| KvCommand::HllMerge { dst, sources }),
        (bytes(), bytes()).prop_map(|(channel, message)| KvCommand::Publish { channel, message }),
        (bytes(), proptest::collection::vec(bitfield_op(), 0..5))
            .prop_map(|(key, ops)| KvCommand::BitField { key, ops }),
        (
            proptest::collection::vec(bytes(), 1..4),
            any::<(bool, bool)>(),
            1u64..
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
            bytes(),
            0u8..3,
            any::<(u64, u64)>(),
            proptest::option::of(stream_trim()),
            any::<bool>(),
            proptest::collection::vec(bytes(), 0..4)
        )
            .prop_map(|(key, kind, (ms, seq), trim, no_mkstream, fields)| {
                let id = match kind {
                    0 => XAddId::Auto { now_ms: ms },
                    1 => XAddId::Explicit { ms, seq },
                    _ => XAddId::AutoSeq { ms },
                };
                KvCommand::Typed(TypedCommand::XAdd {
                    key,
                    id,
                    trim,
                    no_mkstream,
                    fields,
                })
            }),
        (bytes(), stream_trim())
            .prop_map(|(key, trim)| KvCommand::Typed(TypedCommand::XTrim { key, trim })),
        (
            bytes(),
            proptest::collection::vec(any::<(u64, u64)>(), 0..4)
        )
            .prop_map(|(key, ids)| KvCommand::Typed(TypedCommand::XDel { key, ids })),
        (
            bytes(),
            any::<(u64, u64)>(),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(key, last, entries_added)| KvCommand::Typed(
                TypedCommand::XSetId {
                    key,
                    last,
                    entries_added
                }
            )),
        (bytes(), zrange())
            .prop_map(|(key, range)| KvCommand::Typed(TypedCommand::ZRangeStore { key, range })),
        (bytes(), bytes(), any::<bool>()).prop_map(|(key, src, alpha)| {
            KvCommand::Typed(TypedCommand::SortStore {
                key,
                sort: TypedQuery::Sort {
                    key: src,
                    alpha,
                    desc: !alpha,
                    sorted: true,
                    offset: 1,
                    count: Some(2),
                },
            })
        }),
    ]
}

fn stream_trim() -> impl Strategy<Value = StreamTrim> {
    (
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
        prop_oneof![Just(0u64), any::<u64>()],
    )
        .prop_map(|(by_id, a, seq, limit)| StreamTrim {
            threshold: if by_id {
                TrimThreshold::MinId { ms: a, seq }
            } else {
                TrimThreshold::MaxLen(a)
            },
            limit,
        })
}

fn bitfield_op() -> impl Strategy<Value = BitFieldOp> {
    (
        0u8..3,
        any::<i64>(),
        any::<bool>(),
        1u8..=64,
        any::<u64>(),
        0usize..3,
    )
        .prop_map(
            |(action, value, signed, bits, offset, overflow)| BitFieldOp {
                action: match action {
                    0 => BitFieldAction::Get,
                    1 => BitFieldAction::Set(value),
                    _ => BitFieldAction::IncrBy(value),
                },
                ty: BitFieldType::new(signed, bits)
                    .unwrap_or(BitFieldType::new(true, bits).expect("1..=64")),
                offset,
                overflow: [
                    BitFieldOverflow::Wrap,
                    BitFieldOverflow::Sat,
                    BitFieldOverflow::Fail,
                ][overflow],
            },
        )
}

fn result() -> impl Strategy<Value = KvResult> {
    prop_oneof![
        6 => single_result(),
        1 => proptest::collection::vec(single_result(), 0..4).prop_map(KvResult::Batch),
    ]
}

fn single_result() -> impl Strategy<Value = KvResult> {
    prop_oneof![
        Just(KvResult::Aborted),
        any::<u64>().prop_map(KvResult::Digest),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec((any::<u64>(), bytes(), bytes()), 0..4)
        )
            .prop_map(|(through, evicted, messages)| KvResult::Messages {
                through,
                evicted,
                messages
            }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(keys, expiring, data_bytes)| {
            KvResult::Stats {
                keys,
                expiring,
                data_bytes,
            }
        }),
        Just(KvResult::Ok),
        proptest::option::of(bytes()).prop_map(KvResult::Value),
        proptest::collection::vec(proptest::option::of(bytes()), 0..4).prop_map(KvResult::Values),
        any::<u64>().prop_map(KvResult::Count),
        any::<i64>().prop_map(KvResult::Int),
        proptest::collection::vec(proptest::option::of(any::<i64>()), 0..5)
            .prop_map(KvResult::Ints),
        any::<u64>().prop_map(KvResult::Len),
        (any::<bool>(), proptest::option::of(bytes()))
            .prop_map(|(written, previous)| KvResult::Put { written, previous }),
        (any::<bool>(), proptest::option::of(bytes()))
            .prop_map(|(swapped, previous)| KvResult::Cas { swapped, previous }),
        (
            proptest::collection::vec((bytes(), bytes()), 0..4),
            proptest::option::of(bytes())
        )
            .prop_map(|(entries, next)| KvResult::Entries { entries, next }),
        prop_oneof![
            Just(KvError::NotInteger),
            Just(KvError::Overflow),
            Just(KvError::KeyTooLarge),
            Just(KvError::ValueTooLarge),
            Just(KvError::Malformed),
            Just(KvError::ResultTooLarge),
            Just(KvError::XSetIdTooSmall),
            Just(KvError::XSetIdEntriesAdded),
            Just(KvError::NoScriptRunner)
        ]
        .prop_map(KvResult::Error),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    prop_oneof![
        bytes().prop_map(|payload| Envelope::NoOp { payload }),
        (any::<u64>(), bytes()).prop_map(|(tag, payload)| Envelope::Tagged { tag, payload }),
        (1u64.., 1u64.., any::<u64>(), bytes()).prop_map(
            |(client_id, series_id, responded_to, payload)| {
                Envelope::Session {
                    client_id,
                    series_id,
                    responded_to: responded_to % series_id,
                    payload,
                }
            }
        ),
        (1u64..).prop_map(|client_id| Envelope::Register { client_id }),
        (1u64..).prop_map(|client_id| Envelope::Unregister { client_id }),
    ]
}

proptest! {
    #[test]
    fn command_round_trip(c in command()) {
        let enc = c.encode();
        prop_assert_eq!(KvCommand::decode(enc.clone()).unwrap(), c.clone());
        // Every strict prefix is rejected.
        for cut in 0..enc.len() {
            prop_assert!(KvCommand::decode(enc.slice(..cut)).is_err());
        }
        if let KvCommand::Read(q) = &c {
            prop_assert_eq!(&KvQuery::decode(enc.clone()).unwrap(), q);
        }
    }

    #[test]
    fn result_round_trip(r in result()) {
        let enc = r.encode();
        prop_assert_eq!(KvResult::decode(&enc).unwrap(), r.clone());
        for cut in 0..enc.len() {
            prop_assert!(KvResult::decode(enc.slice(..cut)).is_err());
        }
    }

    #[test]
    fn envelope_round_trip(e in envelope()) {
        prop_assert_eq!(Envelope::decode(e.encode()).unwrap(), e.clone());
        prop_assert_eq!(e.encode().len(), e.encoded_len());
    }

    #[test]
    fn decoding_garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
        let b = Bytes::from(b);
        let _ = KvCommand::decode(b.clone());
        let _ = KvQuery::decode(b.clone());
        let _ = KvResult::decode(&b);
        let _ = Envelope::decode(b.clone());
        let _ = SessionTable::decode(SessionConfig::default(), b.clone());
        let kv = KvStore::new();
        let _ = flotilla_rsm::StateMachine::query(&kv, &b);
    }

    /// Any committed bytes give a result for that entry, identical on two
    /// replicas, and never a panic.
    #[test]
    fn applying_garbage_is_deterministic(entries in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..40)) {
        let mut a = Rsm::new(Box::new(KvStore::new()), SessionConfig::default());
        let mut b = Rsm::new(Box::new(KvStore::new()), SessionConfig::default());
        let entries: Vec<(u64, Bytes)> = entries.into_iter().enumerate().map(|(i, e)| (i as u64 + 1, Bytes::from(e))).collect();
        let (mut oa, mut ob) = (Vec::new(), Vec::new());
        a.apply(entries.iter().cloned(), &mut oa);
        for e in &entries {
            b.apply([e.clone()], &mut ob);
        }
        prop_assert_eq!(oa, ob);
    }
}

#[test]
fn a_batch_inside_a_batch_does_not_decode() {
    let inner = KvCommand::Batch {
        guards: vec![],
        commands: vec![KvCommand::put("a", "1")],
    };
    // Encoded by hand: `encode` refuses to nest (a debug assertion).
    let mut enc = vec![0x0d, 0, 0, 0, 0, 1, 0, 0, 0];
    let inner = inner.encode();
    enc.extend_from_slice(&(inner.len() as u32).to_le_bytes());
    enc.extend_from_slice(&inner);
    assert!(matches!(
        KvCommand::decode(Bytes::from(enc)),
        Err(flotilla_rsm::DecodeError::Invalid { .. })
    ));
    let inner = KvResult::Batch(vec![KvResult::Ok]).encode();
    let mut enc = vec![0x0b, 1, 0, 0, 0];
    enc.extend_from_slice(&(inner.len() as u32).to_le_bytes());
    enc.extend_from_slice(&inner);
    assert!(KvResult::decode(Bytes::from(enc)).is_err());
}

#[test]
fn garbage_command_in_noop_envelope_is_a_kv_error_result() {
    let mut rsm = Rsm::new(Box::new(KvStore::new()), SessionConfig::default());
    let mut out = Vec::new();
    rsm.apply(
        [
            (1, flotilla_rsm::encode_noop(&[0x01, 0xff])),
            (2, Bytes::from_static(&[0x00])),
        ],
        &mut out,
    );
    assert_eq!(
        KvResult::decode(out[0].result.as_ref().unwrap()).unwrap(),
        KvResult::Error(KvError::Malformed)
    );
    assert!(matches!(out[1].result, Err(ApplyError::BadEnvelope(_))));
}

/// An XADD written before MINID and LIMIT (tag 0x50, `maxlen ou64`) still
/// decodes, and an XADD that the first encoding can say is still written
/// with it, byte for byte; the others take tag 0x52.
#[test]
fn xadd_first_encoding_is_kept() {
    let old = KvCommand::Typed(TypedCommand::XAdd {
        key: Bytes::from_static(b"s"),
        id: XAddId::Explicit { ms: 5, seq: 1 },
        trim: Some(StreamTrim::max_len(3)),
        no_mkstream: true,
        fields: vec![Bytes::from_static(b"f"), Bytes::from_static(b"v")],
    });
    let mut want = vec![0x50u8, 1, 0, 0, 0, b's', 1];
    want.extend(5u64.to_le_bytes());
    want.extend(1u64.to_le_bytes());
    want.push(1);
    want.extend(3u64.to_le_bytes());
    want.push(1);
    want.extend([2, 0, 0, 0, 1, 0, 0, 0, b'f', 1, 0, 0, 0, b'v']);
    assert_eq!(old.encode()[..], want[..]);
    assert_eq!(KvCommand::decode(Bytes::from(want.clone())).unwrap(), old);
    // No trim: `maxlen` 0u8.
    let mut none = want.clone();
    none.splice(23..32, [0u8]);
    match KvCommand::decode(Bytes::from(none)).unwrap() {
        KvCommand::Typed(TypedCommand::XAdd { trim, .. }) => assert_eq!(trim, None),
        other => panic!("{other:?}"),
    }
    // MINID (or a LIMIT) needs the second encoding.
    let KvCommand::Typed(TypedCommand::XAdd {
        key,
        id,
        no_mkstream,
        fields,
        ..
    }) = old
    else {
        unreachable!()
    };
    let new = KvCommand::Typed(TypedCommand::XAdd {
        key,
        id,
        trim: Some(StreamTrim {
            threshold: TrimThreshold::MaxLen(3),
            limit: 2,
        }),
        no_mkstream,
        fields,
    });
    let enc = new.encode();
    assert_eq!(enc[0], 0x52);
    assert_eq!(KvCommand::decode(enc).unwrap(), new);
    // A MAXLEN without LIMIT in the second encoding has one encoding
    // only: refused.
    let mut dup = new.encode().to_vec();
    let limit_at = 1 + 4 + 1 + 1 + 8 + 8 + 1 + 8 + 8;
    dup[limit_at..limit_at + 8].copy_from_slice(&0u64.to_le_bytes());
    assert!(KvCommand::decode(Bytes::from(dup)).is_err());
}
