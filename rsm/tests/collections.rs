//! The collection commands of session 11: sorted sets by score
//! (`ZRANGEBYSCORE`, `ZCOUNT`, `ZREMRANGEBYSCORE`, `ZREMRANGEBYRANK`,
//! `ZMSCORE`), hashes (`HINCRBYFLOAT`, `HSTRLEN`, `HRANDFIELD`), lists
//! (`LPOS`, `LINSERT`, `LMOVE`), sets (`SMISMEMBER`, `SMOVE`, `SINTER`,
//! `SUNION`, `SDIFF`, `SINTERCARD`, the STORE forms).
//!
//! Each command's encoding round trips, every strict prefix and any
//! trailing byte is refused, arbitrary bytes after its tag never panic
//! (decoding nor applying); then Redis' semantics command by command
//! (the examples of the redis.io pages among them), and determinism: two
//! stores fed the same commands, one of them through a snapshot, end
//! byte-identical. The model proptest of `types.rs` covers them too.

use bytes::Bytes;
use flotilla_rsm::kv::ITEMS_PER_RESULT_MAX;
use flotilla_rsm::{
    KvCommand, KvError, KvQuery, KvResult, KvStore, SmEntry, StateMachine, TypedCommand as C,
    TypedQuery as Q, ZAddCompare, ZAddCondition,
};
use futures_lite::future::block_on;
use proptest::prelude::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn bs(items: &[&str]) -> Vec<Bytes> {
    items.iter().map(|s| b(s)).collect()
}

fn items(items: &[&str]) -> KvResult {
    KvResult::Items(bs(items))
}

fn w(kv: &mut KvStore, c: C) -> KvResult {
    let cmd = KvCommand::Typed(c);
    let decoded = KvCommand::decode(cmd.encode()).expect("round trip");
    assert_eq!(decoded.encode(), cmd.encode());
    kv.execute(&decoded)
}

fn r(kv: &KvStore, q: Q) -> KvResult {
    let query = KvQuery::Typed(q);
    let bytes = query.encode();
    let answer = kv.query(&bytes).expect("query");
    let typed = kv.read(&query);
    assert_eq!(KvResult::decode(&answer).unwrap(), typed);
    assert_eq!(KvCommand::decode(bytes).unwrap(), KvCommand::Read(query));
    typed
}

fn snapshot_bytes(kv: &KvStore) -> Vec<u8> {
    let mut out = Vec::new();
    block_on(kv.capture().write_to(&mut out)).unwrap();
    out
}

fn recover(data: &[u8]) -> KvStore {
    let mut kv = KvStore::new();
    block_on(StateMachine::recover(&mut kv, &mut &data[..])).unwrap();
    kv
}

const WRONGTYPE: KvResult = KvResult::Error(KvError::WrongType);

fn rpush(kv: &mut KvStore, key: &str, values: &[&str]) -> KvResult {
    w(
        kv,
        C::ListPush {
            key: b(key),
            left: false,
            only_existing: false,
            values: bs(values),
        },
    )
}

fn list(kv: &KvStore, key: &str) -> KvResult {
    r(
        kv,
        Q::ListRange {
            key: b(key),
            start: 0,
            stop: -1,
        },
    )
}

fn sadd(kv: &mut KvStore, key: &str, members: &[&str]) -> KvResult {
    w(
        kv,
        C::SetAdd {
            key: b(key),
            members: bs(members),
        },
    )
}

/// A set's members, sorted (a set's own order is deterministic but not
/// what these tests are about).
fn members(kv: &KvStore, key: &str) -> Vec<Bytes> {
    match r(kv, Q::SetMembers { key: b(key) }) {
        KvResult::Items(mut v) => {
            v.sort();
            v
        }
        other => panic!("{other:?}"),
    }
}

fn sorted(r: KvResult) -> KvResult {
    match r {
        KvResult::Items(mut v) => {
            v.sort();
            KvResult::Items(v)
        }
        other => other,
    }
}

fn zadd(kv: &mut KvStore, key: &str, pairs: &[(f64, &str)]) -> KvResult {
    w(
        kv,
        C::ZAdd {
            key: b(key),
            condition: ZAddCondition::Always,
            compare: ZAddCompare::None,
            changed: false,
            incr: false,
            pairs: pairs.iter().map(|(s, m)| (*s, b(m))).collect(),
        },
    )
}

fn hset(kv: &mut KvStore, key: &str, pairs: &[(&str, &str)]) -> KvResult {
    w(
        kv,
        C::HashSet {
            key: b(key),
            only_new: false,
            pairs: pairs.iter().map(|(f, v)| (b(f), b(v))).collect(),
        },
    )
}

/// `ZRANGEBYSCORE key min max WITHSCORES` with `(` bounds as text.
fn by_score(key: &str, min: &str, max: &str) -> Q {
    let bound = |t: &str| match t.strip_prefix('(') {
        Some(rest) => (rest.parse::<f64>().unwrap(), true),
        None => (t.parse::<f64>().unwrap(), false),
    };
    let (min, min_exclusive) = bound(min);
    let (max, max_exclusive) = bound(max);
    Q::ZRangeByScore {
        key: b(key),
        min,
        min_exclusive,
        max,
        max_exclusive,
        rev: false,
        with_scores: true,
        offset: 0,
        count: None,
    }
}

fn new_commands() -> Vec<C> {
    vec![
        C::MultiPop {
            keys: bs(&["a", "b"]),
            zset: true,
            end: false,
            count: 2,
        },
        C::ListInsert {
            key: b("l"),
            after: true,
            pivot: b("p"),
            value: b("v"),
        },
        C::ListMove {
            key: b("l"),
            dst: b("m"),
            from_left: false,
            to_left: true,
        },
        C::SetMove {
            key: b("s"),
            dst: b("t"),
            member: b("x"),
        },
        C::SetInterStore {
            key: b("d"),
            sources: bs(&["s", "t"]),
        },
        C::SetUnionStore {
            key: b("d"),
            sources: bs(&["s"]),
        },
        C::SetDiffStore {
            key: b("d"),
            sources: bs(&["s", "t", "u"]),
        },
        C::HashIncrByFloat {
            key: b("h"),
            field: b("f"),
            delta: -1.5,
        },
        C::ZRemRangeByScore {
            key: b("z"),
            min: f64::NEG_INFINITY,
            min_exclusive: false,
            max: 2.5,
            max_exclusive: true,
        },
        C::ZRemRangeByRank {
            key: b("z"),
            start: -3,
            stop: -1,
        },
        C::ZRemRangeByLex {
            key: b("z"),
            min: b("[a"),
            max: b("(c"),
        },
        C::ZUnionStore {
            key: b("zu"),
            sources: bs(&["z", "s"]),
            weights: vec![2.0, 0.5],
            aggregate: 2,
        },
        C::ZInterStore {
            key: b("zi"),
            sources: bs(&["z", "zu"]),
            weights: vec![],
            aggregate: 0,
        },
        C::ZDiffStore {
            key: b("zd"),
            sources: bs(&["zu", "z"]),
        },
    ]
}

fn new_queries() -> Vec<Q> {
    vec![
        Q::ListPos {
            key: b("l"),
            element: b("e"),
            rank: -2,
            count: Some(0),
            maxlen: 10,
        },
        Q::SetMIsMember {
            key: b("s"),
            members: bs(&["a", "b"]),
        },
        Q::SetInter {
            key: b("s"),
            others: bs(&["t"]),
        },
        Q::SetUnion {
            key: b("s"),
            others: vec![],
        },
        Q::SetDiff {
            key: b("s"),
            others: bs(&["t", "u"]),
        },
        Q::SetInterCard {
            key: b("s"),
            others: bs(&["t"]),
            limit: 3,
        },
        Q::HashStrLen {
            key: b("h"),
            field: b("f"),
        },
        Q::HashRandField {
            key: b("h"),
            count: Some(-4),
            with_values: true,
            seed: 77,
        },
        Q::ZRangeByScore {
            key: b("z"),
            min: 1.0,
            min_exclusive: true,
            max: f64::INFINITY,
            max_exclusive: false,
            rev: true,
            with_scores: true,
            offset: 1,
            count: Some(2),
        },
        Q::ZCount {
            key: b("z"),
            min: -1.0,
            min_exclusive: false,
            max: 1.0,
            max_exclusive: true,
        },
        Q::ZMScore {
            key: b("z"),
            members: bs(&["a", "zz"]),
        },
        Q::ZRangeByLex {
            key: b("z"),
            min: b("-"),
            max: b("(zz"),
            rev: true,
            offset: 0,
            count: Some(5),
        },
        Q::ZLexCount {
            key: b("z"),
            min: b("[b"),
            max: b("+"),
        },
        Q::ZRandMember {
            key: b("z"),
            count: Some(3),
            with_scores: true,
            seed: 5,
        },
        Q::ZUnion {
            key: b("z"),
            others: bs(&["zu"]),
            weights: vec![1.0, -1.0],
            aggregate: 1,
            with_scores: true,
        },
        Q::ZInter {
            key: b("z"),
            others: bs(&["zu", "s"]),
            weights: vec![],
            aggregate: 0,
            with_scores: false,
        },
        Q::ZDiff {
            key: b("zu"),
            others: bs(&["z"]),
            with_scores: true,
        },
        Q::ZInterCard {
            key: b("z"),
            others: bs(&["zu"]),
            limit: 1,
        },
    ]
}

#[test]
fn encodings_round_trip_and_refuse_every_prefix() {
    let mut encodings: Vec<(Bytes, KvCommand)> = new_commands()
        .into_iter()
        .map(|c| (KvCommand::Typed(c.clone()).encode(), KvCommand::Typed(c)))
        .collect();
    for q in new_queries() {
        let query = KvQuery::Typed(q.clone());
        let bytes = query.encode();
        assert_eq!(KvQuery::decode(bytes.clone()).unwrap(), query);
        encodings.push((bytes, KvCommand::Read(KvQuery::Typed(q))));
    }
    let mut tags = std::collections::BTreeSet::new();
    for (bytes, cmd) in encodings {
        assert!(tags.insert(bytes[0]), "tag {:#x} used twice", bytes[0]);
        assert_eq!(KvCommand::decode(bytes.clone()).unwrap(), cmd);
        assert_eq!(cmd.encode(), bytes);
        for cut in 0..bytes.len() {
            assert!(
                KvCommand::decode(bytes.slice(..cut)).is_err(),
                "{cmd:?} cut at {cut}"
            );
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(KvCommand::decode(Bytes::from(longer)).is_err(), "{cmd:?}");
    }
    // A STORE without sources is refused (its key would be its own
    // result's only input otherwise).
    let mut raw = vec![0x3c];
    raw.extend_from_slice(&1u32.to_le_bytes());
    raw.push(b'd');
    raw.extend_from_slice(&0u32.to_le_bytes());
    assert!(KvCommand::decode(Bytes::from(raw)).is_err());
    // A lex bound not in Redis' syntax is refused.
    for bad in ["", "a", "--", "+x"] {
        let q = KvQuery::Typed(Q::ZLexCount {
            key: b("z"),
            min: b(bad),
            max: b("+"),
        });
        assert!(KvQuery::decode(q.encode()).is_err(), "{bad:?}");
    }
    // Flags other than 0/1 are refused: LINSERT's `after` follows its key.
    let mut bad = KvCommand::Typed(new_commands()[0].clone())
        .encode()
        .to_vec();
    bad[1 + 4 + 1] = 2;
    assert!(KvCommand::decode(Bytes::from(bad)).is_err());
}

proptest! {
    /// Whatever follows a new tag, decoding and applying never panic, and
    /// a garbage command changes nothing.
    #[test]
    fn garbage_after_a_new_tag_never_panics(
        tag in prop::sample::select(vec![
            0x35u8, 0x36, 0x3b, 0x3c, 0x3d, 0x3e, 0x43, 0x4b, 0x4c, 0x4d,
            0x64, 0x6c, 0x6d, 0x6e, 0x6f, 0x77, 0x7c, 0x7d, 0x7e, 0x7f, 0x89, 0x8a, 0x8b, 0x8c, 0x8d, 0x8e, 0x8f, 0x90, 0x44, 0x45, 0x46,
        ]),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut raw = vec![tag];
        raw.extend_from_slice(&body);
        let raw = Bytes::from(raw);
        let _ = KvQuery::decode(raw.clone());
        let mut kv = KvStore::new();
        sadd(&mut kv, "s", &["a"]);
        let before = snapshot_bytes(&kv);
        let decoded = KvCommand::decode(raw.clone());
        let mut entries = vec![SmEntry { index: 1, cmd: raw, result: Bytes::new() }];
        kv.apply(&mut entries);
        let result = KvResult::decode(&entries[0].result).unwrap();
        if decoded.is_err() {
            prop_assert_eq!(result, KvResult::Error(KvError::Malformed));
            prop_assert_eq!(snapshot_bytes(&kv), before);
        }
    }

    /// Score ranges with any bounds (NaN, infinities, -0.0) answer what
    /// the plain predicate says, in both directions, with any LIMIT.
    #[test]
    fn score_ranges_match_a_filter(
        scores in proptest::collection::vec(-8i8..8, 0..12),
        min in prop_oneof![(-9i8..9).prop_map(|n| f64::from(n) / 2.0), Just(f64::NAN),
                           Just(f64::INFINITY), Just(f64::NEG_INFINITY), Just(-0.0)],
        max in prop_oneof![(-9i8..9).prop_map(|n| f64::from(n) / 2.0), Just(f64::NAN),
                           Just(f64::INFINITY), Just(f64::NEG_INFINITY), Just(-0.0)],
        min_exclusive in any::<bool>(),
        max_exclusive in any::<bool>(),
        rev in any::<bool>(),
        offset in 0u64..4,
        count in proptest::option::of(0u64..4),
    ) {
        let mut kv = KvStore::new();
        let pairs: Vec<(f64, String)> = scores
            .iter()
            .enumerate()
            .map(|(i, s)| (f64::from(*s) / 2.0, format!("m{}", i % 7)))
            .collect();
        if !pairs.is_empty() {
            let refs: Vec<(f64, &str)> = pairs.iter().map(|(s, m)| (*s, m.as_str())).collect();
            zadd(&mut kv, "z", &refs);
        }
        let all = r(&kv, Q::ZRange { key: b("z"), start: 0, stop: -1, rev, with_scores: true });
        let KvResult::Items(all) = all else { panic!() };
        let inside = |s: f64| {
            (if min_exclusive { s > min } else { s >= min })
                && (if max_exclusive { s < max } else { s <= max })
        };
        let want: Vec<Bytes> = all
            .chunks(2)
            .filter(|p| inside(std::str::from_utf8(&p[1]).unwrap().parse().unwrap()))
            .skip(offset as usize)
            .take(count.map_or(usize::MAX, |c| c as usize))
            .flat_map(|p| p.to_vec())
            .collect();
        let got = r(&kv, Q::ZRangeByScore {
            key: b("z"), min, min_exclusive, max, max_exclusive, rev,
            with_scores: true, offset, count,
        });
        prop_assert_eq!(got, KvResult::Items(want));
    }
}

#[test]
fn sorted_sets_by_score() {
    // The examples of redis.io's ZRANGEBYSCORE and ZCOUNT pages.
    let mut kv = KvStore::new();
    zadd(
        &mut kv,
        "myzset",
        &[(1.0, "one"), (2.0, "two"), (3.0, "three")],
    );
    let plain = |q: Q| match q {
        Q::ZRangeByScore {
            key,
            min,
            min_exclusive,
            max,
            max_exclusive,
            ..
        } => Q::ZRangeByScore {
            key,
            min,
            min_exclusive,
            max,
            max_exclusive,
            rev: false,
            with_scores: false,
            offset: 0,
            count: None,
        },
        q => q,
    };
    assert_eq!(
        r(&kv, plain(by_score("myzset", "-inf", "inf"))),
        items(&["one", "two", "three"])
    );
    assert_eq!(
        r(&kv, plain(by_score("myzset", "1", "2"))),
        items(&["one", "two"])
    );
    assert_eq!(
        r(&kv, plain(by_score("myzset", "(1", "2"))),
        items(&["two"])
    );
    assert_eq!(r(&kv, plain(by_score("myzset", "(1", "(2"))), items(&[]));
    assert_eq!(
        r(&kv, by_score("myzset", "2", "inf")),
        items(&["two", "2", "three", "3"])
    );
    let count = |min: f64, min_exclusive: bool, max: f64| Q::ZCount {
        key: b("myzset"),
        min,
        min_exclusive,
        max,
        max_exclusive: false,
    };
    assert_eq!(
        r(&kv, count(f64::NEG_INFINITY, false, f64::INFINITY)),
        KvResult::Count(3)
    );
    assert_eq!(r(&kv, count(1.0, true, 3.0)), KvResult::Count(2));
    // ZREVRANGEBYSCORE myzset (2 -inf LIMIT 0 1, and an absent key.
    assert_eq!(
        r(
            &kv,
            Q::ZRangeByScore {
                key: b("myzset"),
                min: f64::NEG_INFINITY,
                min_exclusive: false,
                max: 2.0,
                max_exclusive: true,
                rev: true,
                with_scores: false,
                offset: 0,
                count: Some(1),
            }
        ),
        items(&["one"])
    );
    assert_eq!(r(&kv, by_score("nope", "-inf", "inf")), items(&[]));
    assert_eq!(r(&kv, count(0.0, false, 1.0)), KvResult::Count(1));
    // ZMSCORE.
    assert_eq!(
        r(
            &kv,
            Q::ZMScore {
                key: b("myzset"),
                members: bs(&["one", "nofield", "three"])
            }
        ),
        KvResult::Values(vec![Some(b("1")), None, Some(b("3"))])
    );
    assert_eq!(
        r(
            &kv,
            Q::ZMScore {
                key: b("nope"),
                members: bs(&["a"])
            }
        ),
        KvResult::Values(vec![None])
    );
    // ZREMRANGEBYSCORE myzset -inf (2, then ZREMRANGEBYRANK.
    assert_eq!(
        w(
            &mut kv,
            C::ZRemRangeByScore {
                key: b("myzset"),
                min: f64::NEG_INFINITY,
                min_exclusive: false,
                max: 2.0,
                max_exclusive: true,
            }
        ),
        KvResult::Count(1)
    );
    assert_eq!(
        r(&kv, by_score("myzset", "-inf", "inf")),
        items(&["two", "2", "three", "3"])
    );
    zadd(&mut kv, "myzset", &[(1.0, "one"), (4.0, "four")]);
    assert_eq!(
        w(
            &mut kv,
            C::ZRemRangeByRank {
                key: b("myzset"),
                start: 0,
                stop: 1
            }
        ),
        KvResult::Count(2)
    );
    assert_eq!(
        r(&kv, by_score("myzset", "-inf", "inf")),
        items(&["three", "3", "four", "4"])
    );
    // Removing everything removes the key; an absent key removes 0.
    assert_eq!(
        w(
            &mut kv,
            C::ZRemRangeByRank {
                key: b("myzset"),
                start: 0,
                stop: -1
            }
        ),
        KvResult::Count(2)
    );
    assert_eq!(r(&kv, Q::Type { key: b("myzset") }), KvResult::Value(None));
    assert_eq!(
        w(
            &mut kv,
            C::ZRemRangeByRank {
                key: b("myzset"),
                start: 0,
                stop: -1
            }
        ),
        KvResult::Count(0)
    );
    // Wrong types.
    rpush(&mut kv, "l", &["a"]);
    assert_eq!(r(&kv, by_score("l", "-inf", "inf")), WRONGTYPE);
    assert_eq!(r(&kv, count_of("l")), WRONGTYPE);
    assert_eq!(
        w(
            &mut kv,
            C::ZRemRangeByRank {
                key: b("l"),
                start: 0,
                stop: -1
            }
        ),
        WRONGTYPE
    );
}

#[test]
fn sorted_sets_by_lex() {
    let lex = |min: &str, max: &str, rev: bool| Q::ZRangeByLex {
        key: b("myzset"),
        min: b(min),
        max: b(max),
        rev,
        offset: 0,
        count: None,
    };
    let count = |min: &str, max: &str| Q::ZLexCount {
        key: b("myzset"),
        min: b(min),
        max: b(max),
    };
    // The examples of redis.io's ZRANGEBYLEX, ZREVRANGEBYLEX, ZLEXCOUNT
    // and ZREMRANGEBYLEX pages.
    let mut kv = KvStore::new();
    let all: Vec<(f64, &str)> = ["a", "b", "c", "d", "e", "f", "g"]
        .iter()
        .map(|m| (0.0, *m))
        .collect();
    zadd(&mut kv, "myzset", &all);
    assert_eq!(r(&kv, lex("-", "[c", false)), items(&["a", "b", "c"]));
    assert_eq!(r(&kv, lex("-", "(c", false)), items(&["a", "b"]));
    assert_eq!(
        r(&kv, lex("[aaa", "(g", false)),
        items(&["b", "c", "d", "e", "f"])
    );
    assert_eq!(r(&kv, lex("-", "[c", true)), items(&["c", "b", "a"]));
    assert_eq!(
        r(
            &kv,
            Q::ZRangeByLex {
                key: b("myzset"),
                min: b("-"),
                max: b("+"),
                rev: true,
                offset: 1,
                count: Some(2),
            }
        ),
        items(&["f", "e"])
    );
    assert_eq!(r(&kv, count("-", "+")), KvResult::Count(7));
    assert_eq!(r(&kv, count("[b", "[f")), KvResult::Count(5));
    assert_eq!(r(&kv, count("+", "-")), KvResult::Count(0));
    assert_eq!(r(&kv, count("(c", "(c")), KvResult::Count(0));
    assert_eq!(r(&kv, count("[c", "[c")), KvResult::Count(1));
    let mut kv = KvStore::new();
    zadd(
        &mut kv,
        "myzset",
        &[
            (0.0, "aaaa"),
            (0.0, "b"),
            (0.0, "c"),
            (0.0, "d"),
            (0.0, "e"),
            (0.0, "foo"),
            (0.0, "zap"),
            (0.0, "zip"),
            (0.0, "ALPHA"),
            (0.0, "alpha"),
        ],
    );
    assert_eq!(
        w(
            &mut kv,
            C::ZRemRangeByLex {
                key: b("myzset"),
                min: b("[alpha"),
                max: b("[omega"),
            }
        ),
        KvResult::Count(6)
    );
    assert_eq!(
        r(&kv, lex("-", "+", false)),
        items(&["ALPHA", "aaaa", "zap", "zip"])
    );
    // Mixed scores: every member in the range, in the set's order.
    zadd(&mut kv, "mixed", &[(2.0, "a"), (1.0, "b"), (3.0, "c")]);
    assert_eq!(
        r(
            &kv,
            Q::ZRangeByLex {
                key: b("mixed"),
                min: b("[a"),
                max: b("[b"),
                rev: false,
                offset: 0,
                count: None,
            }
        ),
        items(&["b", "a"])
    );
    assert_eq!(r(&kv, count("-", "+")), KvResult::Count(4));
    rpush(&mut kv, "l", &["a"]);
    assert_eq!(
        r(
            &kv,
            Q::ZLexCount {
                key: b("l"),
                min: b("-"),
                max: b("+"),
            }
        ),
        WRONGTYPE
    );
}

#[test]
fn random_members_of_sorted_sets() {
    let mut kv = KvStore::new();
    zadd(
        &mut kv,
        "dice",
        &[(1.0, "one"), (2.0, "two"), (3.0, "three")],
    );
    let rand = |kv: &KvStore, count: Option<i64>, with_scores: bool, seed: u64| {
        r(
            kv,
            Q::ZRandMember {
                key: b("dice"),
                count,
                with_scores,
                seed,
            },
        )
    };
    let names = [b("one"), b("two"), b("three")];
    for seed in 0..20 {
        assert_eq!(
            rand(&kv, Some(2), true, seed),
            rand(&kv, Some(2), true, seed)
        );
        let KvResult::Value(Some(m)) = rand(&kv, None, false, seed) else {
            panic!()
        };
        assert!(names.contains(&m));
        let KvResult::Items(two) = rand(&kv, Some(2), false, seed) else {
            panic!()
        };
        assert_eq!(two.len(), 2);
        assert_ne!(two[0], two[1]);
        let KvResult::Items(many) = rand(&kv, Some(-7), true, seed) else {
            panic!()
        };
        assert_eq!(many.len(), 14);
        for p in many.chunks(2) {
            let want = r(
                &kv,
                Q::ZScore {
                    key: b("dice"),
                    member: p[0].clone(),
                },
            );
            assert_eq!(KvResult::Value(Some(p[1].clone())), want);
        }
    }
    // Past the size: every member, in score order.
    assert_eq!(
        rand(&kv, Some(9), true, 1),
        items(&["one", "1", "two", "2", "three", "3"])
    );
    assert_eq!(
        r(
            &kv,
            Q::ZRandMember {
                key: b("nope"),
                count: None,
                with_scores: false,
                seed: 1
            }
        ),
        KvResult::Value(None)
    );
    rpush(&mut kv, "l", &["a"]);
    assert_eq!(
        r(
            &kv,
            Q::ZRandMember {
                key: b("l"),
                count: Some(1),
                with_scores: false,
                seed: 1
            }
        ),
        WRONGTYPE
    );
}

#[test]
fn sorted_set_algebra() {
    // The examples of redis.io's ZUNIONSTORE / ZINTERSTORE / ZDIFF pages.
    let mut kv = KvStore::new();
    zadd(&mut kv, "zset1", &[(1.0, "one"), (2.0, "two")]);
    zadd(
        &mut kv,
        "zset2",
        &[(1.0, "one"), (2.0, "two"), (3.0, "three")],
    );
    let union = |kv: &mut KvStore, weights: Vec<f64>, aggregate: u8| {
        w(
            kv,
            C::ZUnionStore {
                key: b("out"),
                sources: bs(&["zset1", "zset2"]),
                weights,
                aggregate,
            },
        )
    };
    let all = |kv: &KvStore| {
        r(
            kv,
            Q::ZRange {
                key: b("out"),
                start: 0,
                stop: -1,
                rev: false,
                with_scores: true,
            },
        )
    };
    assert_eq!(union(&mut kv, vec![2.0, 3.0], 0), KvResult::Count(3));
    assert_eq!(all(&kv), items(&["one", "5", "three", "9", "two", "10"]));
    assert_eq!(
        w(
            &mut kv,
            C::ZInterStore {
                key: b("out"),
                sources: bs(&["zset1", "zset2"]),
                weights: vec![2.0, 3.0],
                aggregate: 0,
            }
        ),
        KvResult::Count(2)
    );
    assert_eq!(all(&kv), items(&["one", "5", "two", "10"]));
    assert_eq!(union(&mut kv, vec![], 1), KvResult::Count(3));
    assert_eq!(all(&kv), items(&["one", "1", "two", "2", "three", "3"]));
    assert_eq!(union(&mut kv, vec![1.0, -1.0], 2), KvResult::Count(3));
    assert_eq!(all(&kv), items(&["three", "-3", "one", "1", "two", "2"]));
    assert_eq!(
        r(
            &kv,
            Q::ZDiff {
                key: b("zset2"),
                others: bs(&["zset1"]),
                with_scores: true,
            }
        ),
        items(&["three", "3"])
    );
    assert_eq!(
        r(
            &kv,
            Q::ZInter {
                key: b("zset1"),
                others: bs(&["zset2"]),
                weights: vec![],
                aggregate: 0,
                with_scores: true,
            }
        ),
        items(&["one", "2", "two", "4"])
    );
    assert_eq!(
        r(
            &kv,
            Q::ZInterCard {
                key: b("zset1"),
                others: bs(&["zset2"]),
                limit: 0,
            }
        ),
        KvResult::Count(2)
    );
    assert_eq!(
        r(
            &kv,
            Q::ZInterCard {
                key: b("zset1"),
                others: bs(&["zset2"]),
                limit: 1,
            }
        ),
        KvResult::Count(1)
    );
    // Sets take part with score 1; inf + -inf sums to 0, 0 * inf is 0.
    sadd(&mut kv, "plain", &["one", "four"]);
    zadd(&mut kv, "pos", &[(f64::INFINITY, "one")]);
    zadd(&mut kv, "neg", &[(f64::NEG_INFINITY, "one")]);
    assert_eq!(
        r(
            &kv,
            Q::ZUnion {
                key: b("zset1"),
                others: bs(&["plain"]),
                weights: vec![],
                aggregate: 0,
                with_scores: true,
            }
        ),
        items(&["four", "1", "one", "2", "two", "2"])
    );
    assert_eq!(
        r(
            &kv,
            Q::ZUnion {
                key: b("pos"),
                others: bs(&["neg"]),
                weights: vec![],
                aggregate: 0,
                with_scores: true,
            }
        ),
        items(&["one", "0"])
    );
    assert_eq!(
        r(
            &kv,
            Q::ZUnion {
                key: b("pos"),
                others: vec![],
                weights: vec![0.0],
                aggregate: 0,
                with_scores: true,
            }
        ),
        items(&["one", "0"])
    );
    // Absent sources are empty; an empty result deletes the destination,
    // which is replaced whatever its type.
    kv.execute(&KvCommand::put("str", "x"));
    assert_eq!(
        w(
            &mut kv,
            C::ZUnionStore {
                key: b("str"),
                sources: bs(&["zset1", "nope"]),
                weights: vec![],
                aggregate: 0,
            }
        ),
        KvResult::Count(2)
    );
    assert_eq!(
        r(&kv, Q::Type { key: b("str") }),
        KvResult::Value(Some(b("zset")))
    );
    assert_eq!(
        w(
            &mut kv,
            C::ZInterStore {
                key: b("str"),
                sources: bs(&["zset1", "nope"]),
                weights: vec![],
                aggregate: 0,
            }
        ),
        KvResult::Count(0)
    );
    assert_eq!(r(&kv, Q::Type { key: b("str") }), KvResult::Value(None));
    assert_eq!(
        w(
            &mut kv,
            C::ZDiffStore {
                key: b("d"),
                sources: bs(&["zset2", "zset1"]),
            }
        ),
        KvResult::Count(1)
    );
    // Any other type among the sources refuses.
    rpush(&mut kv, "l", &["a"]);
    assert_eq!(
        r(
            &kv,
            Q::ZDiff {
                key: b("nope"),
                others: bs(&["l"]),
                with_scores: false,
            }
        ),
        WRONGTYPE
    );
    // Weights other than one per source, or an unknown aggregate, do not
    // decode.
    for (weights, aggregate) in [(vec![1.0], 0u8), (vec![], 3)] {
        let q = KvQuery::Typed(Q::ZUnion {
            key: b("a"),
            others: bs(&["b"]),
            weights,
            aggregate,
            with_scores: false,
        });
        assert!(KvQuery::decode(q.encode()).is_err());
    }
}

fn count_of(key: &str) -> Q {
    Q::ZCount {
        key: b(key),
        min: f64::NEG_INFINITY,
        min_exclusive: false,
        max: f64::INFINITY,
        max_exclusive: false,
    }
}

#[test]
fn hash_floats_lengths_and_random_fields() {
    let mut kv = KvStore::new();
    // The example of redis.io's HINCRBYFLOAT page.
    hset(&mut kv, "mykey", &[("field", "10.50")]);
    let incr = |kv: &mut KvStore, key: &str, field: &str, delta: f64| {
        w(
            kv,
            C::HashIncrByFloat {
                key: b(key),
                field: b(field),
                delta,
            },
        )
    };
    assert_eq!(
        incr(&mut kv, "mykey", "field", 0.1),
        KvResult::Value(Some(b("10.6")))
    );
    assert_eq!(
        incr(&mut kv, "mykey", "field", -5.0),
        KvResult::Value(Some(b("5.6")))
    );
    hset(&mut kv, "mykey", &[("field", "5.0e3")]);
    assert_eq!(
        incr(&mut kv, "mykey", "field", 2.0e2),
        KvResult::Value(Some(b("5200")))
    );
    // The stored text is the reply's; 0.1 + 0.2 is 0.3, as in Redis.
    assert_eq!(
        incr(&mut kv, "new", "f", 0.1),
        KvResult::Value(Some(b("0.1")))
    );
    assert_eq!(
        incr(&mut kv, "new", "f", 0.2),
        KvResult::Value(Some(b("0.3")))
    );
    assert_eq!(
        r(
            &kv,
            Q::HashGet {
                key: b("new"),
                field: b("f")
            }
        ),
        KvResult::Value(Some(b("0.3")))
    );
    // Refusals (codes 1: not a float, 2: NaN or infinite) change nothing
    // and create nothing.
    hset(
        &mut kv,
        "mykey",
        &[("text", "abc"), ("big", "1e308"), ("inf", "inf")],
    );
    let before = snapshot_bytes(&kv);
    let not_float = KvResult::Error(KvError::HashNotFloat);
    let nan_inf = KvResult::Error(KvError::NanOrInfinity);
    assert_eq!(incr(&mut kv, "mykey", "text", 1.0), not_float);
    assert_eq!(incr(&mut kv, "mykey", "big", 1e308), nan_inf);
    assert_eq!(incr(&mut kv, "mykey", "inf", 1.0), nan_inf);
    assert_eq!(incr(&mut kv, "absent", "f", f64::NAN), nan_inf);
    assert_eq!(snapshot_bytes(&kv), before);
    rpush(&mut kv, "l", &["a"]);
    assert_eq!(incr(&mut kv, "l", "f", 1.0), WRONGTYPE);
    // HSTRLEN.
    let strlen = |kv: &KvStore, key: &str, field: &str| {
        r(
            kv,
            Q::HashStrLen {
                key: b(key),
                field: b(field),
            },
        )
    };
    assert_eq!(strlen(&kv, "mykey", "text"), KvResult::Count(3));
    assert_eq!(strlen(&kv, "mykey", "nope"), KvResult::Count(0));
    assert_eq!(strlen(&kv, "absent", "f"), KvResult::Count(0));
    assert_eq!(strlen(&kv, "l", "f"), WRONGTYPE);
    // HRANDFIELD: the same seed picks the same fields; distinct for a
    // positive count; all of them (in field order) past the size; repeats
    // for a negative count; values interleaved.
    hset(
        &mut kv,
        "coin",
        &[("heads", "obverse"), ("tails", "reverse"), ("edge", "null")],
    );
    let rand = |kv: &KvStore, count: Option<i64>, with_values: bool, seed: u64| {
        r(
            kv,
            Q::HashRandField {
                key: b("coin"),
                count,
                with_values,
                seed,
            },
        )
    };
    for seed in 0..20 {
        assert_eq!(rand(&kv, None, false, seed), rand(&kv, None, false, seed));
        let KvResult::Value(Some(f)) = rand(&kv, None, false, seed) else {
            panic!()
        };
        assert!([b("heads"), b("tails"), b("edge")].contains(&f));
        let KvResult::Items(two) = rand(&kv, Some(2), false, seed) else {
            panic!()
        };
        assert_eq!(two.len(), 2);
        assert_ne!(two[0], two[1]);
        let KvResult::Items(five) = rand(&kv, Some(-5), true, seed) else {
            panic!()
        };
        assert_eq!(five.len(), 10);
        for p in five.chunks(2) {
            let want = r(
                &kv,
                Q::HashGet {
                    key: b("coin"),
                    field: p[0].clone(),
                },
            );
            assert_eq!(KvResult::Value(Some(p[1].clone())), want);
        }
    }
    assert_eq!(
        rand(&kv, Some(5), true, 1),
        items(&["edge", "null", "heads", "obverse", "tails", "reverse"])
    );
    assert_eq!(rand(&kv, Some(0), false, 1), items(&[]));
    assert_eq!(
        r(
            &kv,
            Q::HashRandField {
                key: b("absent"),
                count: None,
                with_values: false,
                seed: 1
            }
        ),
        KvResult::Value(None)
    );
    assert_eq!(
        r(
            &kv,
            Q::HashRandField {
                key: b("absent"),
                count: Some(-3),
                with_values: false,
                seed: 1
            }
        ),
        items(&[])
    );
    // A negative count past the result bound is refused, not allocated.
    assert_eq!(
        rand(&kv, Some(i64::MIN), true, 1),
        KvResult::Error(KvError::ResultTooLarge)
    );
    const { assert!(ITEMS_PER_RESULT_MAX < u32::MAX) };
}

#[test]
fn list_positions_inserts_and_moves() {
    let mut kv = KvStore::new();
    // The examples of redis.io's LPOS page.
    rpush(
        &mut kv,
        "mylist",
        &["a", "b", "c", "d", "1", "2", "3", "4", "3", "3", "3"],
    );
    let pos = |kv: &KvStore, rank: i64, count: Option<u64>, maxlen: u64| {
        r(
            kv,
            Q::ListPos {
                key: b("mylist"),
                element: b("3"),
                rank,
                count,
                maxlen,
            },
        )
    };
    assert_eq!(pos(&kv, 1, None, 0), KvResult::Int(6));
    assert_eq!(pos(&kv, 1, Some(0), 0), items(&["6", "8", "9", "10"]));
    assert_eq!(pos(&kv, 2, None, 0), KvResult::Int(8));
    assert_eq!(pos(&kv, -1, None, 0), KvResult::Int(10));
    assert_eq!(pos(&kv, -1, Some(2), 0), items(&["10", "9"]));
    assert_eq!(pos(&kv, 1, Some(0), 9), items(&["6", "8"]));
    assert_eq!(pos(&kv, 1, None, 6), KvResult::Value(None));
    assert_eq!(pos(&kv, 5, None, 0), KvResult::Value(None));
    assert_eq!(pos(&kv, 5, Some(0), 0), items(&[]));
    assert_eq!(
        r(
            &kv,
            Q::ListPos {
                key: b("absent"),
                element: b("3"),
                rank: 1,
                count: None,
                maxlen: 0
            }
        ),
        KvResult::Value(None)
    );
    assert_eq!(
        r(
            &kv,
            Q::ListPos {
                key: b("absent"),
                element: b("3"),
                rank: 1,
                count: Some(1),
                maxlen: 0
            }
        ),
        items(&[])
    );
    // LINSERT, as redis.io's example, then a missing pivot and key.
    rpush(&mut kv, "ins", &["Hello", "World"]);
    let insert = |kv: &mut KvStore, key: &str, after: bool, pivot: &str, value: &str| {
        w(
            kv,
            C::ListInsert {
                key: b(key),
                after,
                pivot: b(pivot),
                value: b(value),
            },
        )
    };
    assert_eq!(
        insert(&mut kv, "ins", false, "World", "There"),
        KvResult::Int(3)
    );
    assert_eq!(list(&kv, "ins"), items(&["Hello", "There", "World"]));
    assert_eq!(insert(&mut kv, "ins", true, "World", "!"), KvResult::Int(4));
    assert_eq!(insert(&mut kv, "ins", true, "nope", "x"), KvResult::Int(-1));
    assert_eq!(insert(&mut kv, "absent", true, "a", "x"), KvResult::Int(0));
    assert_eq!(r(&kv, Q::Type { key: b("absent") }), KvResult::Value(None));
    assert_eq!(list(&kv, "ins"), items(&["Hello", "There", "World", "!"]));
    // LMOVE / RPOPLPUSH, as redis.io's example.
    rpush(&mut kv, "src", &["one", "two", "three"]);
    let mv = |kv: &mut KvStore, src: &str, dst: &str, from_left: bool, to_left: bool| {
        w(
            kv,
            C::ListMove {
                key: b(src),
                dst: b(dst),
                from_left,
                to_left,
            },
        )
    };
    assert_eq!(
        mv(&mut kv, "src", "dst", false, true),
        KvResult::Value(Some(b("three")))
    );
    assert_eq!(
        mv(&mut kv, "src", "dst", true, false),
        KvResult::Value(Some(b("one")))
    );
    assert_eq!(list(&kv, "src"), items(&["two"]));
    assert_eq!(list(&kv, "dst"), items(&["three", "one"]));
    // Same key: a rotation; a one-element list stays.
    rpush(&mut kv, "rot", &["a", "b", "c"]);
    assert_eq!(
        mv(&mut kv, "rot", "rot", false, true),
        KvResult::Value(Some(b("c")))
    );
    assert_eq!(list(&kv, "rot"), items(&["c", "a", "b"]));
    assert_eq!(
        mv(&mut kv, "src", "src", true, false),
        KvResult::Value(Some(b("two")))
    );
    assert_eq!(list(&kv, "src"), items(&["two"]));
    // The last element moved: the source disappears.
    assert_eq!(
        mv(&mut kv, "src", "dst", true, true),
        KvResult::Value(Some(b("two")))
    );
    assert_eq!(r(&kv, Q::Type { key: b("src") }), KvResult::Value(None));
    // Absent source: nil, even onto a key of another type; a wrong-type
    // destination otherwise refuses and moves nothing.
    sadd(&mut kv, "set", &["m"]);
    assert_eq!(mv(&mut kv, "src", "set", true, true), KvResult::Value(None));
    assert_eq!(mv(&mut kv, "dst", "set", true, true), WRONGTYPE);
    assert_eq!(mv(&mut kv, "set", "dst", true, true), WRONGTYPE);
    assert_eq!(list(&kv, "dst"), items(&["two", "three", "one"]));
    assert_eq!(
        r(
            &kv,
            Q::ListPos {
                key: b("set"),
                element: b("m"),
                rank: 1,
                count: None,
                maxlen: 0
            }
        ),
        WRONGTYPE
    );
}

#[test]
fn set_algebra_and_moves() {
    let mut kv = KvStore::new();
    // The examples of redis.io's SINTER / SUNION / SDIFF pages.
    sadd(&mut kv, "key1", &["a", "b", "c", "d"]);
    sadd(&mut kv, "key2", &["c"]);
    sadd(&mut kv, "key3", &["a", "c", "e"]);
    let three = bs(&["key2", "key3"]);
    assert_eq!(
        r(
            &kv,
            Q::SetInter {
                key: b("key1"),
                others: three.clone()
            }
        ),
        items(&["c"])
    );
    assert_eq!(
        sorted(r(
            &kv,
            Q::SetUnion {
                key: b("key1"),
                others: three.clone()
            }
        )),
        items(&["a", "b", "c", "d", "e"])
    );
    assert_eq!(
        sorted(r(
            &kv,
            Q::SetDiff {
                key: b("key1"),
                others: three.clone()
            }
        )),
        items(&["b", "d"])
    );
    // The orders are the documented ones: the first set's, then new ones.
    assert_eq!(
        r(
            &kv,
            Q::SetUnion {
                key: b("key3"),
                others: bs(&["key1"])
            }
        ),
        items(&["a", "c", "e", "b", "d"])
    );
    // An absent key is an empty set.
    assert_eq!(
        r(
            &kv,
            Q::SetInter {
                key: b("key1"),
                others: bs(&["nope"])
            }
        ),
        items(&[])
    );
    assert_eq!(
        r(
            &kv,
            Q::SetDiff {
                key: b("nope"),
                others: bs(&["key1"])
            }
        ),
        items(&[])
    );
    // SINTERCARD with and without a limit.
    let card = |kv: &KvStore, limit: u64| {
        r(
            kv,
            Q::SetInterCard {
                key: b("key1"),
                others: bs(&["key3"]),
                limit,
            },
        )
    };
    assert_eq!(card(&kv, 0), KvResult::Count(2));
    assert_eq!(card(&kv, 1), KvResult::Count(1));
    assert_eq!(card(&kv, 5), KvResult::Count(2));
    // SMISMEMBER.
    assert_eq!(
        r(
            &kv,
            Q::SetMIsMember {
                key: b("key1"),
                members: bs(&["a", "z", "d"])
            }
        ),
        items(&["1", "0", "1"])
    );
    assert_eq!(
        r(
            &kv,
            Q::SetMIsMember {
                key: b("nope"),
                members: bs(&["a"])
            }
        ),
        items(&["0"])
    );
    // STORE forms: a string with a deadline is replaced (deadline gone),
    // an empty result deletes the destination, a source may be the
    // destination.
    kv.execute(&KvCommand::put("dest", "string"));
    kv.execute(&KvCommand::Expire {
        key: b("dest"),
        at_ms: 1_000_000,
        now_ms: 1,
        condition: flotilla_rsm::ExpireCondition::Always,
    });
    assert_eq!(
        w(
            &mut kv,
            C::SetUnionStore {
                key: b("dest"),
                sources: bs(&["key1", "key3"])
            }
        ),
        KvResult::Count(5)
    );
    assert_eq!(members(&kv, "dest"), bs(&["a", "b", "c", "d", "e"]));
    assert_eq!(
        kv.read(&KvQuery::Deadline { key: b("dest") }),
        KvResult::Int(-1),
        "no deadline"
    );
    assert_eq!(
        w(
            &mut kv,
            C::SetDiffStore {
                key: b("dest"),
                sources: bs(&["dest", "key1"])
            }
        ),
        KvResult::Count(1)
    );
    assert_eq!(members(&kv, "dest"), bs(&["e"]));
    assert_eq!(
        w(
            &mut kv,
            C::SetInterStore {
                key: b("dest"),
                sources: bs(&["key1", "nope"])
            }
        ),
        KvResult::Count(0)
    );
    assert_eq!(r(&kv, Q::Type { key: b("dest") }), KvResult::Value(None));
    // A wrong type among the sources refuses, whatever the position.
    rpush(&mut kv, "list", &["a"]);
    assert_eq!(
        r(
            &kv,
            Q::SetInter {
                key: b("nope"),
                others: bs(&["list"])
            }
        ),
        WRONGTYPE
    );
    assert_eq!(
        w(
            &mut kv,
            C::SetUnionStore {
                key: b("key2"),
                sources: bs(&["key1", "list"])
            }
        ),
        WRONGTYPE
    );
    assert_eq!(members(&kv, "key2"), bs(&["c"]));
    // SMOVE, as redis.io's example.
    sadd(&mut kv, "myset", &["one", "two"]);
    sadd(&mut kv, "myotherset", &["three"]);
    let smove = |kv: &mut KvStore, src: &str, dst: &str, m: &str| {
        w(
            kv,
            C::SetMove {
                key: b(src),
                dst: b(dst),
                member: b(m),
            },
        )
    };
    assert_eq!(
        smove(&mut kv, "myset", "myotherset", "two"),
        KvResult::Count(1)
    );
    assert_eq!(members(&kv, "myset"), bs(&["one"]));
    assert_eq!(members(&kv, "myotherset"), bs(&["three", "two"]));
    assert_eq!(
        smove(&mut kv, "myset", "myotherset", "nope"),
        KvResult::Count(0)
    );
    assert_eq!(smove(&mut kv, "myset", "myset", "one"), KvResult::Count(1));
    assert_eq!(smove(&mut kv, "myset", "myset", "two"), KvResult::Count(0));
    // The last member moves: the source disappears, the destination is
    // created.
    assert_eq!(smove(&mut kv, "myset", "fresh", "one"), KvResult::Count(1));
    assert_eq!(r(&kv, Q::Type { key: b("myset") }), KvResult::Value(None));
    assert_eq!(members(&kv, "fresh"), bs(&["one"]));
    // Absent source: 0 even onto another type; else the type is checked.
    assert_eq!(smove(&mut kv, "myset", "list", "one"), KvResult::Count(0));
    assert_eq!(smove(&mut kv, "fresh", "list", "one"), WRONGTYPE);
    assert_eq!(smove(&mut kv, "list", "fresh", "a"), WRONGTYPE);
    assert_eq!(members(&kv, "fresh"), bs(&["one"]));
}

/// Every new command, on a store with every type, in a fixed order.
fn script() -> Vec<KvCommand> {
    let mut out: Vec<KvCommand> = Vec::new();
    let mut c = |x: C| out.push(KvCommand::Typed(x));
    c(C::ListPush {
        key: b("l"),
        left: false,
        only_existing: false,
        values: bs(&["a", "b", "c", "a", "p"]),
    });
    c(C::SetAdd {
        key: b("s"),
        members: bs(&["x", "y", "z", "w"]),
    });
    c(C::SetAdd {
        key: b("t"),
        members: bs(&["y", "w", "v"]),
    });
    c(C::HashSet {
        key: b("h"),
        only_new: false,
        pairs: vec![(b("f"), b("1.5")), (b("g"), b("x"))],
    });
    c(C::ZAdd {
        key: b("z"),
        condition: ZAddCondition::Always,
        compare: ZAddCompare::None,
        changed: false,
        incr: false,
        pairs: vec![(1.0, b("a")), (2.0, b("b")), (3.0, b("c")), (4.0, b("d"))],
    });
    for cmd in new_commands() {
        c(cmd);
    }
    for q in new_queries() {
        out.push(KvCommand::Read(KvQuery::Typed(q)));
    }
    out
}

#[test]
fn replicas_agree_through_snapshots() {
    let cmds = script();
    let mut a = KvStore::new();
    let mut results_a = Vec::new();
    for c in &cmds {
        results_a.push(a.execute(c));
    }
    // The twin takes a snapshot (and recovers from it) between every two
    // commands.
    let mut bb = KvStore::new();
    let mut results_b = Vec::new();
    for c in &cmds {
        bb = recover(&snapshot_bytes(&bb));
        results_b.push(bb.execute(c));
    }
    assert_eq!(results_a, results_b);
    assert_eq!(snapshot_bytes(&a), snapshot_bytes(&bb));
    assert!(
        results_a.iter().all(|r| !matches!(r, KvResult::Error(_))),
        "{results_a:?}"
    );
}

/// LMPOP / ZMPOP: the first key that holds anything, up to `count` of it,
/// as Redis' examples answer; the wrong type on the way is an error.
#[test]
fn multi_key_pops() {
    let mut kv = KvStore::new();
    let lmpop = |kv: &mut KvStore, keys: &[&str], left: bool, count: u64| {
        w(
            kv,
            C::MultiPop {
                keys: bs(keys),
                zset: false,
                end: left,
                count,
            },
        )
    };
    assert_eq!(lmpop(&mut kv, &["mylist", "mylist2"], true, 10), items(&[]));
    rpush(&mut kv, "mylist", &["one", "two", "three", "four", "five"]);
    assert_eq!(
        lmpop(&mut kv, &["mylist"], true, 1),
        items(&["mylist", "one"])
    );
    assert_eq!(
        lmpop(&mut kv, &["mylist"], false, 10),
        items(&["mylist", "five", "four", "three", "two"])
    );
    assert_eq!(
        kv.read(&KvQuery::Exists {
            keys: bs(&["mylist"])
        }),
        KvResult::Count(0),
        "emptied lists go"
    );
    rpush(&mut kv, "mylist2", &["a", "b"]);
    assert_eq!(
        lmpop(&mut kv, &["mylist", "mylist2"], true, 1),
        items(&["mylist2", "a"])
    );
    sadd(&mut kv, "set", &["x"]);
    assert_eq!(
        lmpop(&mut kv, &["set", "mylist2"], true, 1),
        KvResult::Error(KvError::WrongType)
    );
    assert_eq!(
        lmpop(&mut kv, &["mylist2", "set"], true, 1),
        items(&["mylist2", "b"]),
        "a key past the first non-empty one is not looked at"
    );
    zadd(&mut kv, "z", &[(1.0, "a"), (2.0, "b"), (3.0, "c")]);
    let zmpop = |kv: &mut KvStore, max: bool, count: u64| {
        w(
            kv,
            C::MultiPop {
                keys: bs(&["nope", "z"]),
                zset: true,
                end: max,
                count,
            },
        )
    };
    assert_eq!(zmpop(&mut kv, false, 1), items(&["z", "a", "1"]));
    assert_eq!(zmpop(&mut kv, true, 10), items(&["z", "c", "3", "b", "2"]));
    assert_eq!(zmpop(&mut kv, true, 10), items(&[]));
}
