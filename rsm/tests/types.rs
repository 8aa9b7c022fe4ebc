//! The Redis data types of the KV store: lists, sets, hashes, sorted sets
//! and streams. Semantics command by command (Redis' results and errors),
//! emptied collections disappearing, WRONGTYPE both ways, determinism
//! (two stores fed the same commands end byte-identical), snapshot round
//! trips with every type (and copy-on-write under a captured view),
//! malformed commands, and a random-sequence proptest against a model
//! built from std collections.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use flotilla_rsm::kv::{ITEMS_PER_RESULT_MAX, VALUE_BYTES_MAX};
use flotilla_rsm::{
    KvCommand, KvError, KvQuery, KvResult, KvStore, PutCondition, SmEntry, StateMachine,
    StreamTrim, TrimThreshold, TypedCommand as C, TypedQuery as Q, XAddId, ZAddCompare,
    ZAddCondition,
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
    // Through the encoding, as the log would carry it.
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
    // Through the log too (a read in log order).
    assert_eq!(KvCommand::decode(bytes).unwrap(), KvCommand::Read(query));
    typed
}

fn exists(kv: &KvStore, key: &str) -> bool {
    kv.read(&KvQuery::Exists { keys: vec![b(key)] }) == KvResult::Count(1)
}

fn type_of(kv: &KvStore, key: &str) -> KvResult {
    r(kv, Q::Type { key: b(key) })
}

fn push(key: &str, left: bool, values: &[&str]) -> C {
    C::ListPush {
        key: b(key),
        left,
        only_existing: false,
        values: bs(values),
    }
}

fn range(key: &str, start: i64, stop: i64) -> Q {
    Q::ListRange {
        key: b(key),
        start,
        stop,
    }
}

const WRONGTYPE: KvResult = KvResult::Error(KvError::WrongType);

fn snapshot_bytes(kv: &KvStore) -> Vec<u8> {
    let mut out = Vec::new();
    block_on(kv.capture().write_to(&mut out)).unwrap();
    out
}

fn recover(data: &[u8]) -> Result<KvStore, flotilla_rsm::SnapshotError> {
    let mut kv = KvStore::new();
    block_on(StateMachine::recover(&mut kv, &mut &data[..]))?;
    Ok(kv)
}

#[test]
fn lists() {
    let mut kv = KvStore::new();
    assert_eq!(
        w(&mut kv, push("l", true, &["a", "b", "c"])),
        KvResult::Len(3)
    );
    assert_eq!(w(&mut kv, push("l", false, &["d"])), KvResult::Len(4));
    assert_eq!(r(&kv, range("l", 0, -1)), items(&["c", "b", "a", "d"]));
    assert_eq!(r(&kv, range("l", -2, 100)), items(&["a", "d"]));
    assert_eq!(r(&kv, range("l", 3, 1)), items(&[]));
    assert_eq!(r(&kv, range("missing", 0, -1)), items(&[]));
    assert_eq!(r(&kv, Q::ListLen { key: b("l") }), KvResult::Len(4));
    assert_eq!(
        r(
            &kv,
            Q::ListIndex {
                key: b("l"),
                index: -1
            }
        ),
        KvResult::Value(Some(b("d")))
    );
    assert_eq!(
        r(
            &kv,
            Q::ListIndex {
                key: b("l"),
                index: 4
            }
        ),
        KvResult::Value(None)
    );
    assert_eq!(type_of(&kv, "l"), KvResult::Value(Some(b("list"))));
    // LPUSHX / RPUSHX only on an existing list.
    let pushx = |key: &str| C::ListPush {
        key: b(key),
        left: false,
        only_existing: true,
        values: bs(&["x"]),
    };
    assert_eq!(w(&mut kv, pushx("nope")), KvResult::Len(0));
    assert!(!exists(&kv, "nope"));
    assert_eq!(w(&mut kv, pushx("l")), KvResult::Len(5));
    // LSET.
    let lset = |key: &str, index: i64| C::ListSet {
        key: b(key),
        index,
        value: b("Z"),
    };
    assert_eq!(w(&mut kv, lset("l", 0)), KvResult::Ok);
    assert_eq!(
        w(&mut kv, lset("l", 5)),
        KvResult::Error(KvError::IndexOutOfRange)
    );
    assert_eq!(
        w(&mut kv, lset("none", 0)),
        KvResult::Error(KvError::NoSuchKey)
    );
    assert_eq!(r(&kv, range("l", 0, -1)), items(&["Z", "b", "a", "d", "x"]));
    // LREM from the head, the tail, all.
    w(&mut kv, push("r", false, &["a", "b", "a", "c", "a", "a"]));
    let lrem = |count: i64| C::ListRem {
        key: b("r"),
        count,
        value: b("a"),
    };
    assert_eq!(w(&mut kv, lrem(1)), KvResult::Count(1));
    assert_eq!(r(&kv, range("r", 0, -1)), items(&["b", "a", "c", "a", "a"]));
    assert_eq!(w(&mut kv, lrem(-2)), KvResult::Count(2));
    assert_eq!(r(&kv, range("r", 0, -1)), items(&["b", "a", "c"]));
    assert_eq!(w(&mut kv, lrem(0)), KvResult::Count(1));
    assert_eq!(r(&kv, range("r", 0, -1)), items(&["b", "c"]));
    // LTRIM; an empty range deletes the key.
    let trim = |start: i64, stop: i64| C::ListTrim {
        key: b("l"),
        start,
        stop,
    };
    assert_eq!(w(&mut kv, trim(1, -2)), KvResult::Ok);
    assert_eq!(r(&kv, range("l", 0, -1)), items(&["b", "a", "d"]));
    assert_eq!(w(&mut kv, trim(5, 10)), KvResult::Ok);
    assert!(!exists(&kv, "l"));
    // Pops: single, counted, missing, emptied.
    let pop = |left: bool, count: Option<u64>| C::ListPop {
        key: b("r"),
        left,
        count,
    };
    assert_eq!(w(&mut kv, pop(true, None)), KvResult::Value(Some(b("b"))));
    assert_eq!(w(&mut kv, pop(true, Some(0))), items(&[]));
    assert_eq!(w(&mut kv, pop(false, Some(5))), items(&["c"]));
    assert!(!exists(&kv, "r"), "the last pop deletes the list");
    assert_eq!(type_of(&kv, "r"), KvResult::Value(None));
    assert_eq!(w(&mut kv, pop(true, None)), KvResult::Value(None));
    // Missing key with a count: Redis' nil array.
    assert_eq!(w(&mut kv, pop(true, Some(2))), KvResult::Value(None));
    assert!(kv.is_empty());
    assert_eq!(kv.data_bytes(), 0);
}

#[test]
fn wrongtype_both_ways_and_set_replaces() {
    let mut kv = KvStore::new();
    kv.execute(&KvCommand::put("s", "1"));
    w(&mut kv, push("l", true, &["a"]));
    assert_eq!(w(&mut kv, push("s", true, &["a"])), WRONGTYPE);
    assert_eq!(
        w(
            &mut kv,
            C::SetAdd {
                key: b("l"),
                members: bs(&["m"])
            }
        ),
        WRONGTYPE
    );
    assert_eq!(r(&kv, range("s", 0, -1)), WRONGTYPE);
    assert_eq!(
        r(
            &kv,
            Q::HashGet {
                key: b("l"),
                field: b("f")
            }
        ),
        WRONGTYPE
    );
    assert_eq!(kv.read(&KvQuery::Get { key: b("l") }), WRONGTYPE);
    // The in-place GET lane says the same.
    let answer = kv.query(&KvQuery::Get { key: b("l") }.encode()).unwrap();
    assert_eq!(KvResult::decode(&answer).unwrap(), WRONGTYPE);
    assert_eq!(
        kv.execute(&KvCommand::Increment {
            key: b("l"),
            delta: 1
        }),
        WRONGTYPE
    );
    assert_eq!(
        kv.execute(&KvCommand::Append {
            key: b("l"),
            value: b("x")
        }),
        WRONGTYPE
    );
    assert_eq!(
        kv.execute(&KvCommand::CompareAndSet {
            key: b("l"),
            expected: None,
            new_value: Some(b("x"))
        }),
        WRONGTYPE
    );
    let set_get = KvCommand::Put {
        key: b("l"),
        value: b("v"),
        condition: PutCondition::Always,
        return_previous: true,
    };
    assert_eq!(kv.execute(&set_get), WRONGTYPE);
    // MGET reads a collection as nil; TYPE; SET NX leaves it.
    assert_eq!(
        kv.read(&KvQuery::MultiGet {
            keys: bs(&["s", "l"])
        }),
        KvResult::Values(vec![Some(b("1")), None])
    );
    assert_eq!(type_of(&kv, "s"), KvResult::Value(Some(b("string"))));
    let nx = KvCommand::Put {
        key: b("l"),
        value: b("v"),
        condition: PutCondition::IfAbsent,
        return_previous: false,
    };
    assert_eq!(
        kv.execute(&nx),
        KvResult::Put {
            written: false,
            previous: None
        }
    );
    assert_eq!(type_of(&kv, "l"), KvResult::Value(Some(b("list"))));
    // Plain SET replaces the list; MSET too.
    kv.execute(&KvCommand::put("l", "v"));
    assert_eq!(type_of(&kv, "l"), KvResult::Value(Some(b("string"))));
    assert_eq!(kv.get(b"l"), Some(&b"v"[..]));
    w(
        &mut kv,
        C::HashSet {
            key: b("h"),
            only_new: false,
            pairs: vec![(b("f"), b("v"))],
        },
    );
    kv.execute(&KvCommand::MultiPut {
        pairs: vec![(b("h"), b("x"))],
    });
    assert_eq!(kv.get(b"h"), Some(&b"x"[..]));
    // DEL works on any type; the byte count follows.
    w(
        &mut kv,
        C::SetAdd {
            key: b("set"),
            members: bs(&["a", "b"]),
        },
    );
    assert_eq!(
        kv.execute(&KvCommand::Delete {
            keys: bs(&["set", "s", "zz"])
        }),
        KvResult::Count(2)
    );
    assert_eq!(kv.len(), 2);
    assert_eq!(kv.read(&KvQuery::Count), KvResult::Count(2));
    assert_eq!(kv.data_bytes(), 2 + 2);
    // A scan sees collections (with an empty value).
    w(&mut kv, push("list2", true, &["a"]));
    match kv.read(&KvQuery::prefix("", 10)) {
        KvResult::Entries { entries, .. } => assert_eq!(
            entries,
            vec![
                (b("h"), b("x")),
                (b("l"), b("v")),
                (b("list2"), Bytes::new())
            ]
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sets() {
    let mut kv = KvStore::new();
    let add = |m: &[&str]| C::SetAdd {
        key: b("s"),
        members: bs(m),
    };
    assert_eq!(w(&mut kv, add(&["a", "b", "c", "a"])), KvResult::Count(3));
    assert_eq!(w(&mut kv, add(&["c", "d"])), KvResult::Count(1));
    assert_eq!(r(&kv, Q::SetCard { key: b("s") }), KvResult::Count(4));
    assert_eq!(
        r(
            &kv,
            Q::SetIsMember {
                key: b("s"),
                member: b("d")
            }
        ),
        KvResult::Count(1)
    );
    assert_eq!(
        r(
            &kv,
            Q::SetIsMember {
                key: b("x"),
                member: b("d")
            }
        ),
        KvResult::Count(0)
    );
    assert_eq!(
        r(&kv, Q::SetMembers { key: b("s") }),
        items(&["a", "b", "c", "d"])
    );
    assert_eq!(
        w(
            &mut kv,
            C::SetRem {
                key: b("s"),
                members: bs(&["a", "zz"])
            }
        ),
        KvResult::Count(1)
    );
    // The last member takes the removed one's place.
    assert_eq!(
        r(&kv, Q::SetMembers { key: b("s") }),
        items(&["d", "b", "c"])
    );
    assert_eq!(type_of(&kv, "s"), KvResult::Value(Some(b("set"))));
    // SRANDMEMBER: distinct for a positive count, repeats for a negative.
    let rand = |count: Option<i64>, seed: u64| Q::SetRandMember {
        key: b("s"),
        count,
        seed,
    };
    for seed in 0..20 {
        let KvResult::Items(two) = r(&kv, rand(Some(2), seed)) else {
            panic!()
        };
        assert_eq!(two.len(), 2);
        assert_ne!(two[0], two[1]);
        assert_eq!(
            r(&kv, rand(Some(2), seed)),
            KvResult::Items(two),
            "same seed, same picks"
        );
        let KvResult::Items(many) = r(&kv, rand(Some(-7), seed)) else {
            panic!()
        };
        assert_eq!(many.len(), 7);
        let KvResult::Value(Some(one)) = r(&kv, rand(None, seed)) else {
            panic!()
        };
        assert!(["b", "c", "d"].contains(&std::str::from_utf8(&one).unwrap()));
    }
    let KvResult::Items(all) = r(&kv, rand(Some(10), 1)) else {
        panic!()
    };
    assert_eq!(all.len(), 3);
    assert_eq!(r(&kv, rand(Some(0), 1)), items(&[]));
    assert_eq!(
        r(
            &kv,
            Q::SetRandMember {
                key: b("none"),
                count: Some(3),
                seed: 1
            }
        ),
        items(&[])
    );
    assert_eq!(
        r(
            &kv,
            Q::SetRandMember {
                key: b("none"),
                count: None,
                seed: 1
            }
        ),
        KvResult::Value(None)
    );
    // SPOP: deterministic from the seed; the set disappears when emptied.
    let spop = |count: Option<u64>, seed: u64| C::SetPop {
        key: b("s"),
        count,
        seed,
    };
    let mut twin = kv.clone();
    let a = w(&mut kv, spop(None, 42));
    assert_eq!(w(&mut twin, spop(None, 42)), a);
    let KvResult::Items(rest) = w(&mut kv, spop(Some(10), 7)) else {
        panic!()
    };
    assert_eq!(rest.len(), 2);
    assert!(!exists(&kv, "s"));
    assert_eq!(w(&mut kv, spop(None, 1)), KvResult::Value(None));
    assert_eq!(w(&mut kv, spop(Some(3), 1)), items(&[]));
    // Different seeds pick differently (over a larger set).
    let mut big = KvStore::new();
    let members: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    w(
        &mut big,
        C::SetAdd {
            key: b("s"),
            members: bs(&refs),
        },
    );
    let picks: BTreeSet<Bytes> = (0..20)
        .map(|seed| {
            match r(
                &big,
                Q::SetRandMember {
                    key: b("s"),
                    count: None,
                    seed,
                },
            ) {
                KvResult::Value(Some(v)) => v,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert!(picks.len() > 10, "{picks:?}");
}

#[test]
fn hashes() {
    let mut kv = KvStore::new();
    let hset = |pairs: &[(&str, &str)], only_new: bool| C::HashSet {
        key: b("h"),
        only_new,
        pairs: pairs.iter().map(|(f, v)| (b(f), b(v))).collect(),
    };
    assert_eq!(
        w(&mut kv, hset(&[("f1", "a"), ("f2", "b")], false)),
        KvResult::Count(2)
    );
    assert_eq!(
        w(&mut kv, hset(&[("f1", "A"), ("f3", "c")], false)),
        KvResult::Count(1)
    );
    assert_eq!(w(&mut kv, hset(&[("f1", "no")], true)), KvResult::Count(0));
    assert_eq!(w(&mut kv, hset(&[("f0", "z")], true)), KvResult::Count(1));
    assert_eq!(
        r(
            &kv,
            Q::HashGet {
                key: b("h"),
                field: b("f1")
            }
        ),
        KvResult::Value(Some(b("A")))
    );
    assert_eq!(
        r(
            &kv,
            Q::HashGet {
                key: b("h"),
                field: b("nope")
            }
        ),
        KvResult::Value(None)
    );
    assert_eq!(
        r(
            &kv,
            Q::HashMGet {
                key: b("h"),
                fields: bs(&["f2", "x", "f3"])
            }
        ),
        KvResult::Values(vec![Some(b("b")), None, Some(b("c"))])
    );
    assert_eq!(
        r(
            &kv,
            Q::HashMGet {
                key: b("none"),
                fields: bs(&["a"])
            }
        ),
        KvResult::Values(vec![None])
    );
    assert_eq!(r(&kv, Q::HashLen { key: b("h") }), KvResult::Count(4));
    assert_eq!(
        r(
            &kv,
            Q::HashExists {
                key: b("h"),
                field: b("f3")
            }
        ),
        KvResult::Count(1)
    );
    assert_eq!(
        r(&kv, Q::HashGetAll { key: b("h") }),
        items(&["f0", "z", "f1", "A", "f2", "b", "f3", "c"])
    );
    assert_eq!(
        r(&kv, Q::HashKeys { key: b("h") }),
        items(&["f0", "f1", "f2", "f3"])
    );
    assert_eq!(
        r(&kv, Q::HashVals { key: b("h") }),
        items(&["z", "A", "b", "c"])
    );
    assert_eq!(r(&kv, Q::HashGetAll { key: b("none") }), items(&[]));
    let incr = |field: &str, delta: i64| C::HashIncrBy {
        key: b("h"),
        field: b(field),
        delta,
    };
    assert_eq!(w(&mut kv, incr("n", 5)), KvResult::Int(5));
    assert_eq!(w(&mut kv, incr("n", -7)), KvResult::Int(-2));
    assert_eq!(
        w(&mut kv, incr("f1", 1)),
        KvResult::Error(KvError::HashNotInteger)
    );
    w(&mut kv, hset(&[("big", &i64::MAX.to_string())], false));
    assert_eq!(
        w(&mut kv, incr("big", 1)),
        KvResult::Error(KvError::Overflow)
    );
    // An error on a new key creates nothing.
    let mut fresh = KvStore::new();
    assert_eq!(
        w(
            &mut fresh,
            C::HashIncrBy {
                key: b("k"),
                field: b("f"),
                delta: 1
            }
        ),
        KvResult::Int(1)
    );
    assert_eq!(type_of(&kv, "h"), KvResult::Value(Some(b("hash"))));
    let del = |fields: &[&str]| C::HashDel {
        key: b("h"),
        fields: bs(fields),
    };
    assert_eq!(w(&mut kv, del(&["f0", "f0", "zz"])), KvResult::Count(1));
    assert_eq!(
        w(&mut kv, del(&["f1", "f2", "f3", "n", "big"])),
        KvResult::Count(5)
    );
    assert!(!exists(&kv, "h"));
    assert_eq!(w(&mut kv, del(&["a"])), KvResult::Count(0));
}

fn zadd(kv: &mut KvStore, pairs: &[(f64, &str)]) -> KvResult {
    w(
        kv,
        C::ZAdd {
            key: b("z"),
            condition: ZAddCondition::Always,
            compare: ZAddCompare::None,
            changed: false,
            incr: false,
            pairs: pairs.iter().map(|(s, m)| (*s, b(m))).collect(),
        },
    )
}

#[test]
fn sorted_sets() {
    let mut kv = KvStore::new();
    assert_eq!(
        zadd(&mut kv, &[(1.0, "a"), (2.5, "b"), (1.0, "c"), (-1.0, "d")]),
        KvResult::Count(4)
    );
    assert_eq!(zadd(&mut kv, &[(3.0, "a")]), KvResult::Count(0));
    let zr = |start, stop, rev, with_scores| Q::ZRange {
        key: b("z"),
        start,
        stop,
        rev,
        with_scores,
    };
    assert_eq!(
        r(&kv, zr(0, -1, false, false)),
        items(&["d", "c", "b", "a"])
    );
    assert_eq!(r(&kv, zr(0, 1, false, true)), items(&["d", "-1", "c", "1"]));
    assert_eq!(r(&kv, zr(0, 0, true, true)), items(&["a", "3"]));
    assert_eq!(r(&kv, zr(5, 9, false, false)), items(&[]));
    assert_eq!(
        r(
            &kv,
            Q::ZScore {
                key: b("z"),
                member: b("b")
            }
        ),
        KvResult::Value(Some(b("2.5")))
    );
    assert_eq!(
        r(
            &kv,
            Q::ZScore {
                key: b("z"),
                member: b("q")
            }
        ),
        KvResult::Value(None)
    );
    assert_eq!(r(&kv, Q::ZCard { key: b("z") }), KvResult::Count(4));
    let rank = |m: &str, rev: bool| Q::ZRank {
        key: b("z"),
        member: b(m),
        rev,
    };
    assert_eq!(r(&kv, rank("c", false)), KvResult::Int(1));
    assert_eq!(r(&kv, rank("c", true)), KvResult::Int(2));
    assert_eq!(r(&kv, rank("q", false)), KvResult::Value(None));
    // Options: NX, XX, GT, LT, CH, INCR.
    let opt = |condition, compare, changed, incr, pairs: &[(f64, &str)]| C::ZAdd {
        key: b("z"),
        condition,
        compare,
        changed,
        incr,
        pairs: pairs.iter().map(|(s, m)| (*s, b(m))).collect(),
    };
    use ZAddCompare as Cmp;
    use ZAddCondition as Cond;
    assert_eq!(
        w(
            &mut kv,
            opt(
                Cond::IfAbsent,
                Cmp::None,
                true,
                false,
                &[(9.0, "a"), (9.0, "e")]
            )
        ),
        KvResult::Count(1)
    );
    assert_eq!(
        w(
            &mut kv,
            opt(
                Cond::IfPresent,
                Cmp::None,
                true,
                false,
                &[(9.0, "a"), (9.0, "f")]
            )
        ),
        KvResult::Count(1)
    );
    assert_eq!(
        w(
            &mut kv,
            opt(
                Cond::Always,
                Cmp::Greater,
                true,
                false,
                &[(1.0, "a"), (10.0, "e")]
            )
        ),
        KvResult::Count(1)
    );
    assert_eq!(
        w(
            &mut kv,
            opt(Cond::Always, Cmp::Less, false, false, &[(0.0, "a")])
        ),
        KvResult::Count(0)
    );
    assert_eq!(
        r(
            &kv,
            Q::ZScore {
                key: b("z"),
                member: b("a")
            }
        ),
        KvResult::Value(Some(b("0")))
    );
    assert_eq!(
        w(
            &mut kv,
            opt(Cond::Always, Cmp::None, false, true, &[(1.5, "a")])
        ),
        KvResult::Value(Some(b("1.5")))
    );
    assert_eq!(
        w(
            &mut kv,
            opt(Cond::IfAbsent, Cmp::None, false, true, &[(1.5, "a")])
        ),
        KvResult::Value(None)
    );
    assert_eq!(
        w(
            &mut kv,
            opt(
                Cond::Always,
                Cmp::None,
                false,
                true,
                &[(f64::INFINITY, "inf")]
            )
        ),
        KvResult::Value(Some(b("inf")))
    );
    assert_eq!(
        w(
            &mut kv,
            opt(
                Cond::Always,
                Cmp::None,
                false,
                true,
                &[(f64::NEG_INFINITY, "inf")]
            )
        ),
        KvResult::Error(KvError::ScoreNaN)
    );
    assert_eq!(
        w(
            &mut kv,
            opt(Cond::Always, Cmp::None, false, false, &[(f64::NAN, "x")])
        ),
        KvResult::Error(KvError::NotFloat)
    );
    // XX never creates the key.
    let mut fresh = KvStore::new();
    assert_eq!(
        w(
            &mut fresh,
            C::ZAdd {
                key: b("z"),
                condition: ZAddCondition::IfPresent,
                compare: ZAddCompare::None,
                changed: false,
                incr: false,
                pairs: vec![(1.0, b("a"))],
            }
        ),
        KvResult::Count(0)
    );
    assert!(fresh.is_empty());
    // Pops; ZREM; emptied.
    let mut kv = KvStore::new();
    zadd(&mut kv, &[(1.0, "a"), (2.0, "b"), (3.0, "c"), (2.0, "a2")]);
    let zpop = |max: bool, count: Option<u64>| C::ZPop {
        key: b("z"),
        max,
        count,
    };
    assert_eq!(w(&mut kv, zpop(false, None)), items(&["a", "1"]));
    assert_eq!(
        w(&mut kv, zpop(true, Some(2))),
        items(&["c", "3", "b", "2"])
    );
    assert_eq!(w(&mut kv, zpop(false, Some(0))), items(&[]));
    assert_eq!(
        w(
            &mut kv,
            C::ZRem {
                key: b("z"),
                members: bs(&["a2", "zz"])
            }
        ),
        KvResult::Count(1)
    );
    assert!(!exists(&kv, "z"));
    assert_eq!(w(&mut kv, zpop(false, None)), items(&[]));
    assert_eq!(type_of(&kv, "z"), KvResult::Value(None));
}

#[test]
fn streams() {
    let mut kv = KvStore::new();
    let xadd = |id: XAddId, maxlen: Option<u64>, fields: &[&str]| C::XAdd {
        key: b("x"),
        id,
        trim: maxlen.map(StreamTrim::max_len),
        no_mkstream: false,
        fields: bs(fields),
    };
    let auto = |now_ms| XAddId::Auto { now_ms };
    assert_eq!(
        w(&mut kv, xadd(auto(1000), None, &["f", "v"])),
        KvResult::Value(Some(b("1000-0")))
    );
    // A clock that went backwards (or a slower proposer) still moves on.
    assert_eq!(
        w(&mut kv, xadd(auto(900), None, &["f", "v2"])),
        KvResult::Value(Some(b("1000-1")))
    );
    assert_eq!(
        w(
            &mut kv,
            xadd(XAddId::Explicit { ms: 1000, seq: 1 }, None, &["a", "b"])
        ),
        KvResult::Error(KvError::StreamIdTooSmall)
    );
    assert_eq!(
        w(
            &mut kv,
            xadd(XAddId::AutoSeq { ms: 1000 }, None, &["a", "b"])
        ),
        KvResult::Value(Some(b("1000-2")))
    );
    assert_eq!(
        w(
            &mut kv,
            xadd(
                XAddId::Explicit { ms: 2000, seq: 5 },
                None,
                &["a", "b", "c", "d"]
            )
        ),
        KvResult::Value(Some(b("2000-5")))
    );
    assert_eq!(r(&kv, Q::StreamLen { key: b("x") }), KvResult::Len(4));
    assert_eq!(type_of(&kv, "x"), KvResult::Value(Some(b("stream"))));
    let xr = |start: (u64, u64), end: (u64, u64), count: Option<u64>, rev: bool| Q::StreamRange {
        key: b("x"),
        start,
        end,
        count,
        rev,
    };
    let all = r(&kv, xr((0, 0), (u64::MAX, u64::MAX), None, false));
    assert_eq!(
        all,
        KvResult::Records(vec![
            (b("1000-0"), bs(&["f", "v"])),
            (b("1000-1"), bs(&["f", "v2"])),
            (b("1000-2"), bs(&["a", "b"])),
            (b("2000-5"), bs(&["a", "b", "c", "d"])),
        ])
    );
    assert_eq!(
        r(&kv, xr((1000, 1), (1000, u64::MAX), Some(1), false)),
        KvResult::Records(vec![(b("1000-1"), bs(&["f", "v2"]))])
    );
    assert_eq!(
        r(&kv, xr((0, 0), (u64::MAX, u64::MAX), Some(1), true)),
        KvResult::Records(vec![(b("2000-5"), bs(&["a", "b", "c", "d"]))])
    );
    assert_eq!(
        r(&kv, xr((5, 0), (1, 0), None, false)),
        KvResult::Records(vec![])
    );
    // MAXLEN trims the oldest; the last id survives, even at length 0.
    assert_eq!(
        w(&mut kv, xadd(auto(1500), Some(2), &["k", "v"])),
        KvResult::Value(Some(b("2000-6")))
    );
    assert_eq!(r(&kv, Q::StreamLen { key: b("x") }), KvResult::Len(2));
    w(&mut kv, xadd(auto(3000), Some(0), &["k", "v"]));
    assert_eq!(r(&kv, Q::StreamLen { key: b("x") }), KvResult::Len(0));
    assert!(exists(&kv, "x"), "an empty stream stays (as in Redis)");
    assert_eq!(
        w(
            &mut kv,
            xadd(XAddId::Explicit { ms: 3000, seq: 0 }, None, &["k", "v"])
        ),
        KvResult::Error(KvError::StreamIdTooSmall)
    );
    // 0-0 is refused; NOMKSTREAM creates nothing.
    let mut fresh = KvStore::new();
    assert_eq!(
        w(
            &mut fresh,
            xadd(XAddId::Explicit { ms: 0, seq: 0 }, None, &["k", "v"])
        ),
        KvResult::Error(KvError::StreamIdZero)
    );
    assert_eq!(
        w(
            &mut fresh,
            xadd(XAddId::AutoSeq { ms: 0 }, None, &["k", "v"])
        ),
        KvResult::Value(Some(b("0-1")))
    );
    let nomk = C::XAdd {
        key: b("y"),
        id: auto(5),
        trim: None,
        no_mkstream: true,
        fields: bs(&["k", "v"]),
    };
    assert_eq!(w(&mut fresh, nomk), KvResult::Value(None));
    assert!(!exists(&fresh, "y"));
    assert_eq!(
        r(
            &fresh,
            Q::StreamRange {
                key: b("y"),
                start: (0, 0),
                end: (9, 9),
                count: None,
                rev: false
            }
        ),
        KvResult::Records(vec![])
    );
}

/// A stream `x` with entries 1-0, 2-0, ... n-0 (field `f`, value the ms).
fn stream_of(kv: &mut KvStore, key: &str, n: u64) {
    for ms in 1..=n {
        let id = XAddId::Explicit { ms, seq: 0 };
        let r = w(
            kv,
            C::XAdd {
                key: b(key),
                id,
                trim: None,
                no_mkstream: false,
                fields: vec![b("f"), Bytes::from(ms.to_string())],
            },
        );
        assert_eq!(r, KvResult::Value(Some(Bytes::from(format!("{ms}-0")))));
    }
}

/// `XRANGE key - +`.
fn whole_stream(key: &str) -> Q {
    Q::StreamRange {
        key: b(key),
        start: (0, 0),
        end: (u64::MAX, u64::MAX),
        count: None,
        rev: false,
    }
}

fn stream_ids(kv: &KvStore, key: &str) -> Vec<Bytes> {
    match r(kv, whole_stream(key)) {
        KvResult::Records(rs) => rs.into_iter().map(|(id, _)| id).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn stream_trim_del_setid() {
    let mut kv = KvStore::new();
    let trim = |key: &str, threshold, limit| C::XTrim {
        key: b(key),
        trim: StreamTrim { threshold, limit },
    };
    let maxlen = TrimThreshold::MaxLen;
    let minid = |ms, seq| TrimThreshold::MinId { ms, seq };
    // XTRIM on no key evicts nothing and creates nothing.
    assert_eq!(w(&mut kv, trim("x", maxlen(0), 0)), KvResult::Count(0));
    assert!(!exists(&kv, "x"));
    stream_of(&mut kv, "x", 10);
    // MAXLEN: the oldest go; LIMIT caps the evictions.
    assert_eq!(w(&mut kv, trim("x", maxlen(8), 0)), KvResult::Count(2));
    assert_eq!(w(&mut kv, trim("x", maxlen(2), 3)), KvResult::Count(3));
    assert_eq!(stream_ids(&kv, "x")[0], b("6-0"));
    assert_eq!(w(&mut kv, trim("x", maxlen(5), 0)), KvResult::Count(0));
    // MINID: ids below the threshold go (the threshold itself stays).
    assert_eq!(w(&mut kv, trim("x", minid(7, 0), 0)), KvResult::Count(1));
    assert_eq!(w(&mut kv, trim("x", minid(8, 1), 1)), KvResult::Count(1));
    assert_eq!(w(&mut kv, trim("x", minid(8, 1), 0)), KvResult::Count(1));
    assert_eq!(stream_ids(&kv, "x"), bs(&["9-0", "10-0"]));
    // XDEL: present ids count once; absent ones and no key count 0.
    assert_eq!(
        w(
            &mut kv,
            C::XDel {
                key: b("x"),
                ids: vec![(9, 0), (9, 0), (4, 0), (11, 0)]
            }
        ),
        KvResult::Count(1)
    );
    assert_eq!(
        w(
            &mut kv,
            C::XDel {
                key: b("nope"),
                ids: vec![(1, 0)]
            }
        ),
        KvResult::Count(0)
    );
    assert!(!exists(&kv, "nope"));
    // Deleting the last entry keeps the stream, and its last id.
    assert_eq!(
        w(
            &mut kv,
            C::XDel {
                key: b("x"),
                ids: vec![(10, 0)]
            }
        ),
        KvResult::Count(1)
    );
    assert!(exists(&kv, "x"));
    assert_eq!(r(&kv, Q::StreamLen { key: b("x") }), KvResult::Len(0));
    let add = |ms, seq| C::XAdd {
        key: b("x"),
        id: XAddId::Explicit { ms, seq },
        trim: None,
        no_mkstream: false,
        fields: bs(&["f", "v"]),
    };
    assert_eq!(
        w(&mut kv, add(10, 0)),
        KvResult::Error(KvError::StreamIdTooSmall)
    );
    // XSETID: an empty stream takes any id (as Redis 7.0 without a max
    // deleted id); then XADD must go past it.
    let setid = |key: &str, ms, seq, entries_added| C::XSetId {
        key: b(key),
        last: (ms, seq),
        entries_added,
    };
    assert_eq!(w(&mut kv, setid("x", 3, 0, None)), KvResult::Ok);
    assert_eq!(w(&mut kv, add(3, 1)), KvResult::Value(Some(b("3-1"))));
    assert_eq!(
        w(&mut kv, setid("x", 3, 0, None)),
        KvResult::Error(KvError::XSetIdTooSmall)
    );
    assert_eq!(w(&mut kv, setid("x", 3, 1, Some(1))), KvResult::Ok);
    assert_eq!(
        w(&mut kv, setid("x", 50, 0, Some(0))),
        KvResult::Error(KvError::XSetIdEntriesAdded)
    );
    assert_eq!(w(&mut kv, setid("x", 50, 0, Some(7))), KvResult::Ok);
    assert_eq!(
        w(&mut kv, add(50, 0)),
        KvResult::Error(KvError::StreamIdTooSmall)
    );
    assert_eq!(w(&mut kv, add(50, 1)), KvResult::Value(Some(b("50-1"))));
    assert_eq!(
        w(&mut kv, setid("nope", 1, 0, None)),
        KvResult::Error(KvError::NoSuchKey)
    );
    assert!(!exists(&kv, "nope"));
    // Another type answers WRONGTYPE, and is left alone.
    w(
        &mut kv,
        C::ListPush {
            key: b("l"),
            left: true,
            only_existing: false,
            values: bs(&["a"]),
        },
    );
    for c in [
        trim("l", maxlen(0), 0),
        C::XDel {
            key: b("l"),
            ids: vec![(1, 0)],
        },
        setid("l", 1, 0, None),
    ] {
        assert_eq!(w(&mut kv, c), KvResult::Error(KvError::WrongType));
    }
    // XADD with MINID trims after adding (the new entry may go too, as in
    // Redis), LIMIT caps it.
    let mut kv = KvStore::new();
    stream_of(&mut kv, "y", 5);
    let xadd = |ms, threshold, limit| C::XAdd {
        key: b("y"),
        id: XAddId::Explicit { ms, seq: 0 },
        trim: Some(StreamTrim { threshold, limit }),
        no_mkstream: false,
        fields: bs(&["f", "v"]),
    };
    assert_eq!(
        w(&mut kv, xadd(6, minid(4, 0), 2)),
        KvResult::Value(Some(b("6-0")))
    );
    assert_eq!(stream_ids(&kv, "y"), bs(&["3-0", "4-0", "5-0", "6-0"]));
    assert_eq!(
        w(&mut kv, xadd(7, minid(100, 0), 0)),
        KvResult::Value(Some(b("7-0")))
    );
    assert_eq!(stream_ids(&kv, "y"), Vec::<Bytes>::new());
    assert_eq!(
        w(&mut kv, xadd(8, maxlen(0), 0)),
        KvResult::Value(Some(b("8-0")))
    );
    assert_eq!(r(&kv, Q::StreamLen { key: b("y") }), KvResult::Len(0));
}

#[test]
fn sizes_are_bounded() {
    let mut kv = KvStore::new();
    let big = Bytes::from(vec![7u8; VALUE_BYTES_MAX + 1]);
    assert_eq!(
        kv.execute(&KvCommand::Typed(C::ListPush {
            key: b("l"),
            left: true,
            only_existing: false,
            values: vec![big.clone()]
        })),
        KvResult::Error(KvError::ValueTooLarge)
    );
    assert_eq!(
        kv.execute(&KvCommand::Typed(C::HashSet {
            key: b("h"),
            only_new: false,
            pairs: vec![(b("f"), big)]
        })),
        KvResult::Error(KvError::ValueTooLarge)
    );
    assert!(kv.is_empty(), "a refused write creates nothing");
    let long_key = Bytes::from(vec![1u8; flotilla_rsm::kv::KEY_BYTES_MAX + 1]);
    assert_eq!(
        kv.execute(&KvCommand::Typed(C::SetAdd {
            key: long_key,
            members: bs(&["a"])
        })),
        KvResult::Error(KvError::KeyTooLarge)
    );
    // SRANDMEMBER with a huge negative count answers ResultTooLarge
    // instead of allocating without bound.
    w(
        &mut kv,
        C::SetAdd {
            key: b("s"),
            members: bs(&["a"]),
        },
    );
    assert_eq!(
        r(
            &kv,
            Q::SetRandMember {
                key: b("s"),
                count: Some(i64::MIN),
                seed: 1
            }
        ),
        KvResult::Error(KvError::ResultTooLarge)
    );
    const { assert!(ITEMS_PER_RESULT_MAX >= 1 << 20) };
}

/// Every kind, with elements around the inline limit, several snapshots
/// and copy-on-write under a captured view.
fn every_type() -> KvStore {
    let mut kv = KvStore::new();
    kv.execute(&KvCommand::put("str", "plain"));
    let long: String = "x".repeat(40);
    w(&mut kv, push("list", false, &["a", "", &long, "b"]));
    w(
        &mut kv,
        C::SetAdd {
            key: b("set"),
            members: bs(&["m1", &long, "m3", "m4"]),
        },
    );
    w(
        &mut kv,
        C::SetRem {
            key: b("set"),
            members: bs(&["m1"]),
        },
    );
    w(
        &mut kv,
        C::HashSet {
            key: b("hash"),
            only_new: false,
            pairs: vec![(b("f"), b("v")), (b(&long), b(&long)), (b(""), b(""))],
        },
    );
    zadd(
        &mut kv,
        &[(1.5, "a"), (-0.0, "b"), (f64::INFINITY, "c"), (1.5, &long)],
    );
    for (i, fields) in [["f", "v"], ["g", &long]].iter().enumerate() {
        w(
            &mut kv,
            C::XAdd {
                key: b("stream"),
                id: XAddId::Auto {
                    now_ms: 10 + i as u64,
                },
                trim: None,
                no_mkstream: false,
                fields: bs(fields),
            },
        );
    }
    w(
        &mut kv,
        C::XAdd {
            key: b("empty-stream"),
            id: XAddId::Explicit { ms: 7, seq: 7 },
            trim: Some(StreamTrim::max_len(0)),
            no_mkstream: false,
            fields: bs(&["a", "b"]),
        },
    );
    kv
}

/// Everything a client can read of a store, through the typed reads.
fn observe(kv: &KvStore) -> Vec<KvResult> {
    let mut out = vec![kv.read(&KvQuery::prefix("", 1000))];
    for key in ["str", "list", "set", "hash", "z", "stream", "empty-stream"] {
        out.push(type_of(kv, key));
        out.push(r(kv, range(key, 0, -1)));
        out.push(r(kv, Q::SetMembers { key: b(key) }));
        out.push(r(kv, Q::HashGetAll { key: b(key) }));
        out.push(r(
            kv,
            Q::ZRange {
                key: b(key),
                start: 0,
                stop: -1,
                rev: false,
                with_scores: true,
            },
        ));
        out.push(r(kv, whole_stream(key)));
    }
    out.push(KvResult::Count(kv.data_bytes()));
    out
}

#[test]
fn snapshot_round_trip_with_every_type() {
    let mut kv = every_type();
    let data = snapshot_bytes(&kv);
    let back = recover(&data).unwrap();
    assert_eq!(snapshot_bytes(&back), data, "byte-identical");
    assert_eq!(observe(&back), observe(&kv));
    assert_eq!(back.data_bytes(), kv.data_bytes());
    // The restored store behaves the same from here on (SPOP picks by
    // position: the set's order survived).
    let mut back = back;
    for seed in 0..3 {
        let c = C::SetPop {
            key: b("set"),
            count: None,
            seed,
        };
        assert_eq!(w(&mut back, c.clone()), w(&mut kv, c));
    }
    let c = C::XAdd {
        key: b("empty-stream"),
        id: XAddId::Auto { now_ms: 1 },
        trim: None,
        no_mkstream: false,
        fields: bs(&["a", "b"]),
    };
    assert_eq!(w(&mut back, c.clone()), KvResult::Value(Some(b("7-8"))));
    assert_eq!(w(&mut kv, c), KvResult::Value(Some(b("7-8"))));
    assert_eq!(snapshot_bytes(&back), snapshot_bytes(&kv));

    // Every flipped byte and every truncation is an error, never a panic
    // or a silently different store.
    for i in 0..data.len() {
        let mut bad = data.clone();
        bad[i] ^= 0x41;
        assert!(recover(&bad).is_err(), "flip at {i} accepted");
    }
    for len in 0..data.len() {
        assert!(recover(&data[..len]).is_err(), "cut at {len} accepted");
    }
}

#[test]
fn a_captured_view_does_not_move() {
    let mut kv = every_type();
    let view = kv.capture();
    let before = snapshot_bytes(&kv);
    w(&mut kv, push("list", true, &["new"]));
    w(
        &mut kv,
        C::SetPop {
            key: b("set"),
            count: Some(2),
            seed: 3,
        },
    );
    w(
        &mut kv,
        C::HashDel {
            key: b("hash"),
            fields: bs(&["f"]),
        },
    );
    w(
        &mut kv,
        C::ZPop {
            key: b("z"),
            max: false,
            count: None,
        },
    );
    w(
        &mut kv,
        C::XAdd {
            key: b("stream"),
            id: XAddId::Auto { now_ms: 99 },
            trim: Some(StreamTrim::max_len(1)),
            no_mkstream: false,
            fields: bs(&["a", "b"]),
        },
    );
    kv.execute(&KvCommand::Delete {
        keys: bs(&["list"]),
    });
    let mut out = Vec::new();
    block_on(view.write_to(&mut out)).unwrap();
    assert_eq!(out, before, "the view changed under later writes");
    assert_ne!(snapshot_bytes(&kv), before);
}

#[test]
fn corrupt_collections_in_snapshots_are_rejected() {
    // Hand-built data sections with a valid CRC: an empty list, a bad
    // marker, unsorted hash fields, a duplicate set member, a NaN score,
    // a stream id above the last.
    fn section(value: &[u8]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&1u64.to_le_bytes());
        d.extend_from_slice(&1u32.to_le_bytes());
        d.extend_from_slice(b"k");
        d.extend_from_slice(value);
        let crc = crc32fast::hash(&d);
        d.extend_from_slice(&crc.to_le_bytes());
        d
    }
    fn elem(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }
    let mark = |m: u32, n: u64| {
        let mut v = m.to_le_bytes().to_vec();
        v.extend_from_slice(&n.to_le_bytes());
        v
    };
    let good_list = [mark(0xFFFF_FF01, 1), elem(b"a")].concat();
    assert!(recover(&section(&good_list)).is_ok());
    let cases: Vec<Vec<u8>> = vec![
        mark(0xFFFF_FF01, 0),
        [mark(0xFFFF_FF09, 1), elem(b"a")].concat(),
        [
            mark(0xFFFF_FF02, 2),
            elem(b"b"),
            elem(b"1"),
            elem(b"a"),
            elem(b"1"),
        ]
        .concat(),
        [mark(0xFFFF_FF03, 2), elem(b"a"), elem(b"a")].concat(),
        [
            mark(0xFFFF_FF04, 1),
            f64::NAN.to_bits().to_le_bytes().to_vec(),
            elem(b"a"),
        ]
        .concat(),
        [
            mark(0xFFFF_FF04, 1),
            (-0.0f64).to_bits().to_le_bytes().to_vec(),
            elem(b"a"),
        ]
        .concat(),
        {
            let mut v = 0xFFFF_FF05u32.to_le_bytes().to_vec();
            for n in [1u64, 0, 1, 2, 0] {
                v.extend_from_slice(&n.to_le_bytes());
            }
            v.extend_from_slice(&0u32.to_le_bytes());
            v
        },
        0x0500_0000u32.to_le_bytes().to_vec(),
    ];
    for (i, case) in cases.iter().enumerate() {
        assert!(
            matches!(
                recover(&section(case)),
                Err(flotilla_rsm::SnapshotError::Corrupt { .. })
            ),
            "case {i} accepted"
        );
    }
}

#[test]
fn malformed_typed_commands_are_errors() {
    let cmds = vec![
        C::ListPush {
            key: b("k"),
            left: true,
            only_existing: false,
            values: bs(&["a"]),
        },
        C::ListPop {
            key: b("k"),
            left: false,
            count: Some(3),
        },
        C::SetPop {
            key: b("k"),
            count: None,
            seed: 9,
        },
        C::HashSet {
            key: b("k"),
            only_new: true,
            pairs: vec![(b("f"), b("v"))],
        },
        C::ZAdd {
            key: b("k"),
            condition: ZAddCondition::IfPresent,
            compare: ZAddCompare::Less,
            changed: true,
            incr: false,
            pairs: vec![(1.0, b("m"))],
        },
        C::XAdd {
            key: b("k"),
            id: XAddId::AutoSeq { ms: 4 },
            trim: Some(StreamTrim::max_len(1)),
            no_mkstream: true,
            fields: bs(&["f", "v"]),
        },
    ];
    for c in cmds {
        let bytes = KvCommand::Typed(c.clone()).encode();
        assert_eq!(
            KvCommand::decode(bytes.clone()).unwrap(),
            KvCommand::Typed(c)
        );
        for cut in 0..bytes.len() {
            assert!(KvCommand::decode(bytes.slice(..cut)).is_err(), "cut {cut}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(KvCommand::decode(Bytes::from(longer)).is_err());
        // Flag bytes other than 0/1 are refused.
        let mut bad_flag = bytes.to_vec();
        let flag_at = 1 + 4 + 1; // tag, key len, key "k"
        bad_flag[flag_at] = 7;
        assert!(KvCommand::decode(Bytes::from(bad_flag)).is_err());
    }
    for tag in [0x37u8, 0x3f, 0x47, 0x4e, 0x51, 0x65, 0x82, 0x91, 0xff] {
        let mut raw = vec![tag];
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.push(b'k');
        assert!(
            KvCommand::decode(Bytes::from(raw.clone())).is_err(),
            "tag {tag:#x}"
        );
        assert!(KvQuery::decode(Bytes::from(raw)).is_err(), "tag {tag:#x}");
    }
    // Through apply: a malformed command is an error result, no state.
    let mut kv = KvStore::new();
    let mut entries = vec![SmEntry {
        index: 1,
        cmd: Bytes::from_static(&[0x30, 1, 0, 0, 0, b'k', 5]),
        result: Bytes::new(),
    }];
    kv.apply(&mut entries);
    assert_eq!(
        KvResult::decode(&entries[0].result).unwrap(),
        KvResult::Error(KvError::Malformed)
    );
    assert!(kv.is_empty());
    // A typed write on the query path is refused as a write.
    assert_eq!(
        kv.query(
            &KvCommand::Typed(C::SetAdd {
                key: b("k"),
                members: bs(&["a"])
            })
            .encode()
        ),
        Err(flotilla_rsm::QueryError::Unsupported)
    );
    // Results round trip.
    for res in [
        items(&["a", "", "b"]),
        KvResult::Records(vec![(b("1-1"), bs(&["f", "v"])), (b("2-0"), vec![])]),
        KvResult::Error(KvError::WrongType),
        KvResult::Error(KvError::StreamIdExhausted),
    ] {
        assert_eq!(KvResult::decode(res.encode()).unwrap(), res);
    }
    assert!(KvResult::decode(&[0x7f, 99][..]).is_err());
}

// ------------------------------------------------------------ model test

/// The model: std collections, Redis semantics written the plain way.
#[derive(Debug, Clone, Default)]
struct Model {
    lists: BTreeMap<String, VecDeque<String>>,
    sets: BTreeMap<String, BTreeSet<String>>,
    hashes: BTreeMap<String, BTreeMap<String, String>>,
    zsets: BTreeMap<String, BTreeMap<String, f64>>,
}

impl Model {
    fn kind(&self, k: &str) -> Option<&'static str> {
        if self.lists.contains_key(k) {
            Some("list")
        } else if self.sets.contains_key(k) {
            Some("set")
        } else if self.hashes.contains_key(k) {
            Some("hash")
        } else if self.zsets.contains_key(k) {
            Some("zset")
        } else {
            None
        }
    }

    fn zorder(z: &BTreeMap<String, f64>) -> Vec<(f64, String)> {
        let mut v: Vec<(f64, String)> = z.iter().map(|(m, s)| (*s, m.clone())).collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        v
    }
}

#[derive(Debug, Clone)]
enum Op {
    Push(usize, bool, Vec<u8>),
    Pop(usize, bool, Option<u8>),
    Range(usize, i8, i8),
    Trim(usize, i8, i8),
    Rem(usize, i8, u8),
    SAdd(usize, Vec<u8>),
    SRem(usize, Vec<u8>),
    SPop(usize, Option<u8>, u64),
    HSet(usize, Vec<(u8, u8)>),
    HDel(usize, Vec<u8>),
    HIncr(usize, u8, i8),
    ZAdd(usize, Vec<(i8, u8)>),
    ZRem(usize, Vec<u8>),
    ZPop(usize, bool, Option<u8>),
    ZRange(usize, i8, i8),
    /// ZRANGEBYSCORE: bounds in quarter steps, exclusive flags, rev,
    /// LIMIT offset count.
    ZByScore(usize, (i8, bool), (i8, bool), bool, u8, Option<u8>),
    ZCount(usize, (i8, bool), (i8, bool)),
    ZRemByScore(usize, (i8, bool), (i8, bool)),
    ZRemByRank(usize, i8, i8),
    ZMScore(usize, Vec<u8>),
    LInsert(usize, bool, u8, u8),
    LMove(usize, usize, bool, bool),
    /// LPOS: element, rank (not 0), COUNT, MAXLEN.
    LPos(usize, u8, i8, Option<u8>, u8),
    SMove(usize, usize, u8),
    /// SINTER/SUNION/SDIFF (op % 3) over keys, or the STORE form into a key.
    SCombine(u8, Vec<usize>, Option<usize>),
    SInterCard(Vec<usize>, u8),
    SMIsMember(usize, Vec<u8>),
    HIncrFloat(usize, u8, i8),
    HStrLen(usize, u8),
    Del(usize),
    Type(usize),
    Snapshot,
}

const KEYS: [&str; 3] = ["k0", "k1", "k2"];

fn member(n: u8) -> String {
    format!("m{}", n % 6)
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0usize..3;
    let small = proptest::collection::vec(any::<u8>(), 1..4);
    prop_oneof![
        (k.clone(), any::<bool>(), small.clone()).prop_map(|(k, l, v)| Op::Push(k, l, v)),
        (k.clone(), any::<bool>(), proptest::option::of(0u8..4))
            .prop_map(|(k, l, c)| Op::Pop(k, l, c)),
        (k.clone(), -5i8..5, -5i8..5).prop_map(|(k, a, b)| Op::Range(k, a, b)),
        (k.clone(), -5i8..5, -5i8..5).prop_map(|(k, a, b)| Op::Trim(k, a, b)),
        (k.clone(), -3i8..3, any::<u8>()).prop_map(|(k, c, v)| Op::Rem(k, c, v)),
        (k.clone(), small.clone()).prop_map(|(k, v)| Op::SAdd(k, v)),
        (k.clone(), small.clone()).prop_map(|(k, v)| Op::SRem(k, v)),
        (k.clone(), proptest::option::of(0u8..4), any::<u64>())
            .prop_map(|(k, c, s)| Op::SPop(k, c, s)),
        (
            k.clone(),
            proptest::collection::vec((any::<u8>(), any::<u8>()), 1..4)
        )
            .prop_map(|(k, v)| Op::HSet(k, v)),
        (k.clone(), small.clone()).prop_map(|(k, v)| Op::HDel(k, v)),
        (k.clone(), any::<u8>(), any::<i8>()).prop_map(|(k, f, d)| Op::HIncr(k, f, d)),
        (
            k.clone(),
            proptest::collection::vec((any::<i8>(), any::<u8>()), 1..4)
        )
            .prop_map(|(k, v)| Op::ZAdd(k, v)),
        (k.clone(), small.clone()).prop_map(|(k, v)| Op::ZRem(k, v)),
        (k.clone(), any::<bool>(), proptest::option::of(0u8..4))
            .prop_map(|(k, m, c)| Op::ZPop(k, m, c)),
        (k.clone(), -5i8..5, -5i8..5).prop_map(|(k, a, b)| Op::ZRange(k, a, b)),
        (
            k.clone(),
            (-20i8..20, any::<bool>()),
            (-20i8..20, any::<bool>()),
            any::<bool>(),
            0u8..3,
            proptest::option::of(0u8..4)
        )
            .prop_map(|(k, lo, hi, rev, o, c)| Op::ZByScore(k, lo, hi, rev, o, c)),
        (
            k.clone(),
            (-20i8..20, any::<bool>()),
            (-20i8..20, any::<bool>())
        )
            .prop_map(|(k, lo, hi)| Op::ZCount(k, lo, hi)),
        (
            k.clone(),
            (-20i8..20, any::<bool>()),
            (-20i8..20, any::<bool>())
        )
            .prop_map(|(k, lo, hi)| Op::ZRemByScore(k, lo, hi)),
        (k.clone(), -5i8..5, -5i8..5).prop_map(|(k, a, b)| Op::ZRemByRank(k, a, b)),
        (k.clone(), small.clone()).prop_map(|(k, v)| Op::ZMScore(k, v)),
        (k.clone(), any::<bool>(), any::<u8>(), any::<u8>())
            .prop_map(|(k, a, p, v)| Op::LInsert(k, a, p, v)),
        (k.clone(), k.clone(), any::<bool>(), any::<bool>())
            .prop_map(|(k, d, f, t)| Op::LMove(k, d, f, t)),
        (
            k.clone(),
            any::<u8>(),
            prop_oneof![-3i8..0, 1i8..4],
            proptest::option::of(0u8..3),
            0u8..4
        )
            .prop_map(|(k, e, r, c, m)| Op::LPos(k, e, r, c, m)),
        (k.clone(), k.clone(), any::<u8>()).prop_map(|(k, d, mm)| Op::SMove(k, d, mm)),
        (
            any::<u8>(),
            proptest::collection::vec(k.clone(), 1..4),
            proptest::option::of(k.clone())
        )
            .prop_map(|(o, ks, st)| Op::SCombine(o, ks, st)),
        (proptest::collection::vec(k.clone(), 1..4), 0u8..3)
            .prop_map(|(ks, l)| Op::SInterCard(ks, l)),
        (k.clone(), small).prop_map(|(k, v)| Op::SMIsMember(k, v)),
        (k.clone(), any::<u8>(), any::<i8>()).prop_map(|(k, f, d)| Op::HIncrFloat(k, f, d)),
        (k.clone(), any::<u8>()).prop_map(|(k, f)| Op::HStrLen(k, f)),
        k.clone().prop_map(Op::Del),
        k.prop_map(Op::Type),
        Just(Op::Snapshot),
    ]
}

/// Redis' range of `len` elements, the plain way.
fn model_range(len: usize, a: i64, b: i64) -> std::ops::Range<usize> {
    let len = len as i64;
    let a = if a < 0 { (a + len).max(0) } else { a };
    let b = if b < 0 { b + len } else { b.min(len - 1) };
    if a > b || a >= len {
        0..0
    } else {
        a as usize..b as usize + 1
    }
}

fn check(kv: &mut KvStore, m: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let key = |k: usize| KEYS[k].to_string();
    let wrong = |m: &Model, k: usize, want: &str| m.kind(KEYS[k]).is_some_and(|t| t != want);
    let texts = |v: &[u8]| v.iter().map(|n| member(*n)).collect::<Vec<_>>();
    let bytes = |v: &[String]| v.iter().map(|s| Bytes::from(s.clone())).collect::<Vec<_>>();
    match op {
        Op::Push(k, left, vals) => {
            let vals = texts(vals);
            let got = w(
                kv,
                C::ListPush {
                    key: b(&key(*k)),
                    left: *left,
                    only_existing: false,
                    values: bytes(&vals),
                },
            );
            if wrong(m, *k, "list") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let l = m.lists.entry(key(*k)).or_default();
                for v in vals {
                    if *left {
                        l.push_front(v)
                    } else {
                        l.push_back(v)
                    }
                }
                prop_assert_eq!(got, KvResult::Len(l.len() as u64));
            }
        }
        Op::Pop(k, left, count) => {
            let got = w(
                kv,
                C::ListPop {
                    key: b(&key(*k)),
                    left: *left,
                    count: count.map(u64::from),
                },
            );
            if wrong(m, *k, "list") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let want = match m.lists.get_mut(&key(*k)) {
                    None => KvResult::Value(None),
                    Some(l) => {
                        let n = count.map_or(1, usize::from).min(l.len());
                        let popped: Vec<String> = (0..n)
                            .map(|_| if *left { l.pop_front() } else { l.pop_back() }.unwrap())
                            .collect();
                        if l.is_empty() {
                            m.lists.remove(&key(*k));
                        }
                        match count {
                            None => KvResult::Value(popped.first().map(|s| Bytes::from(s.clone()))),
                            Some(_) => KvResult::Items(bytes(&popped)),
                        }
                    }
                };
                prop_assert_eq!(got, want);
            }
        }
        Op::Range(k, a, bb) => {
            let got = r(kv, range(&key(*k), i64::from(*a), i64::from(*bb)));
            if wrong(m, *k, "list") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let l: Vec<String> = m
                    .lists
                    .get(&key(*k))
                    .map(|l| l.iter().cloned().collect())
                    .unwrap_or_default();
                let want = bytes(&l[model_range(l.len(), i64::from(*a), i64::from(*bb))]);
                prop_assert_eq!(got, KvResult::Items(want));
            }
        }
        Op::Trim(k, a, bb) => {
            let got = w(
                kv,
                C::ListTrim {
                    key: b(&key(*k)),
                    start: i64::from(*a),
                    stop: i64::from(*bb),
                },
            );
            if wrong(m, *k, "list") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                prop_assert_eq!(got, KvResult::Ok);
                if let Some(l) = m.lists.get_mut(&key(*k)) {
                    let v: Vec<String> = l.iter().cloned().collect();
                    *l = v[model_range(v.len(), i64::from(*a), i64::from(*bb))]
                        .iter()
                        .cloned()
                        .collect();
                    if l.is_empty() {
                        m.lists.remove(&key(*k));
                    }
                }
            }
        }
        Op::Rem(k, count, v) => {
            let v = member(*v);
            let got = w(
                kv,
                C::ListRem {
                    key: b(&key(*k)),
                    count: i64::from(*count),
                    value: Bytes::from(v.clone()),
                },
            );
            if wrong(m, *k, "list") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let mut removed = 0;
                if let Some(l) = m.lists.get_mut(&key(*k)) {
                    let limit = if *count == 0 {
                        usize::MAX
                    } else {
                        count.unsigned_abs() as usize
                    };
                    let mut items: Vec<String> = l.iter().cloned().collect();
                    if *count < 0 {
                        items.reverse();
                    }
                    let mut kept = Vec::new();
                    for it in items {
                        if removed < limit && it == v {
                            removed += 1
                        } else {
                            kept.push(it)
                        }
                    }
                    if *count < 0 {
                        kept.reverse();
                    }
                    *l = kept.into();
                    if l.is_empty() {
                        m.lists.remove(&key(*k));
                    }
                }
                prop_assert_eq!(got, KvResult::Count(removed as u64));
            }
        }
        Op::SAdd(k, vals) => {
            let vals = texts(vals);
            let got = w(
                kv,
                C::SetAdd {
                    key: b(&key(*k)),
                    members: bytes(&vals),
                },
            );
            if wrong(m, *k, "set") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let s = m.sets.entry(key(*k)).or_default();
                let n = vals.into_iter().filter(|v| s.insert(v.clone())).count();
                prop_assert_eq!(got, KvResult::Count(n as u64));
            }
        }
        Op::SRem(k, vals) => {
            let vals = texts(vals);
            let got = w(
                kv,
                C::SetRem {
                    key: b(&key(*k)),
                    members: bytes(&vals),
                },
            );
            if wrong(m, *k, "set") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let mut n = 0;
                if let Some(s) = m.sets.get_mut(&key(*k)) {
                    n = vals.iter().filter(|v| s.remove(*v)).count();
                    if s.is_empty() {
                        m.sets.remove(&key(*k));
                    }
                }
                prop_assert_eq!(got, KvResult::Count(n as u64));
            }
        }
        Op::SPop(k, count, seed) => {
            let got = w(
                kv,
                C::SetPop {
                    key: b(&key(*k)),
                    count: count.map(u64::from),
                    seed: *seed,
                },
            );
            if wrong(m, *k, "set") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                // Which members is the store's choice: check they were
                // members, distinct, as many as asked, and are gone.
                let popped: Vec<Bytes> = match (&got, count) {
                    (KvResult::Value(v), None) => v.iter().cloned().collect(),
                    (KvResult::Items(v), Some(_)) => v.clone(),
                    _ => return Err(TestCaseError::fail(format!("spop shape {got:?}"))),
                };
                let s = m.sets.get(&key(*k)).cloned().unwrap_or_default();
                prop_assert_eq!(popped.len(), count.map_or(1, usize::from).min(s.len()));
                let mut seen = BTreeSet::new();
                for p in &popped {
                    let p = String::from_utf8(p.to_vec()).unwrap();
                    prop_assert!(s.contains(&p), "popped {} not a member", p);
                    prop_assert!(seen.insert(p.clone()));
                    m.sets.get_mut(&key(*k)).unwrap().remove(&p);
                }
                if m.sets.get(&key(*k)).is_some_and(BTreeSet::is_empty) {
                    m.sets.remove(&key(*k));
                }
            }
        }
        Op::HSet(k, pairs) => {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(f, v)| (member(*f), format!("v{v}")))
                .collect();
            let got = w(
                kv,
                C::HashSet {
                    key: b(&key(*k)),
                    only_new: false,
                    pairs: pairs
                        .iter()
                        .map(|(f, v)| (Bytes::from(f.clone()), Bytes::from(v.clone())))
                        .collect(),
                },
            );
            if wrong(m, *k, "hash") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let h = m.hashes.entry(key(*k)).or_default();
                let n = pairs
                    .into_iter()
                    .filter(|(f, v)| h.insert(f.clone(), v.clone()).is_none())
                    .count();
                prop_assert_eq!(got, KvResult::Count(n as u64));
            }
        }
        Op::HDel(k, fields) => {
            let fields = texts(fields);
            let got = w(
                kv,
                C::HashDel {
                    key: b(&key(*k)),
                    fields: bytes(&fields),
                },
            );
            if wrong(m, *k, "hash") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let mut n = 0;
                if let Some(h) = m.hashes.get_mut(&key(*k)) {
                    n = fields.iter().filter(|f| h.remove(*f).is_some()).count();
                    if h.is_empty() {
                        m.hashes.remove(&key(*k));
                    }
                }
                prop_assert_eq!(got, KvResult::Count(n as u64));
            }
        }
        Op::HIncr(k, f, d) => {
            let f = format!("n{}", f % 3);
            let got = w(
                kv,
                C::HashIncrBy {
                    key: b(&key(*k)),
                    field: Bytes::from(f.clone()),
                    delta: i64::from(*d),
                },
            );
            if wrong(m, *k, "hash") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let h = m.hashes.entry(key(*k)).or_default();
                let n = h.get(&f).map_or(0, |v| v.parse::<i64>().unwrap()) + i64::from(*d);
                h.insert(f, n.to_string());
                prop_assert_eq!(got, KvResult::Int(n));
            }
        }
        Op::ZAdd(k, pairs) => {
            let pairs: Vec<(f64, String)> = pairs
                .iter()
                .map(|(s, mm)| (f64::from(*s) / 4.0, member(*mm)))
                .collect();
            let got = zadd_key(kv, &key(*k), &pairs);
            if wrong(m, *k, "zset") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let z = m.zsets.entry(key(*k)).or_default();
                let n = pairs
                    .into_iter()
                    .filter(|(s, mm)| z.insert(mm.clone(), *s).is_none())
                    .count();
                prop_assert_eq!(got, KvResult::Count(n as u64));
            }
        }
        Op::ZRem(k, vals) => {
            let vals = texts(vals);
            let got = w(
                kv,
                C::ZRem {
                    key: b(&key(*k)),
                    members: bytes(&vals),
                },
            );
            if wrong(m, *k, "zset") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let mut n = 0;
                if let Some(z) = m.zsets.get_mut(&key(*k)) {
                    n = vals.iter().filter(|v| z.remove(*v).is_some()).count();
                    if z.is_empty() {
                        m.zsets.remove(&key(*k));
                    }
                }
                prop_assert_eq!(got, KvResult::Count(n as u64));
            }
        }
        Op::ZPop(k, max, count) => {
            let got = w(
                kv,
                C::ZPop {
                    key: b(&key(*k)),
                    max: *max,
                    count: count.map(u64::from),
                },
            );
            if wrong(m, *k, "zset") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let mut want = Vec::new();
                if let Some(z) = m.zsets.get_mut(&key(*k)) {
                    let mut order = Model::zorder(z);
                    if *max {
                        order.reverse();
                    }
                    for (s, mm) in order.into_iter().take(count.map_or(1, usize::from)) {
                        z.remove(&mm);
                        want.push(Bytes::from(mm));
                        want.push(Bytes::from(format_f64(s)));
                    }
                    if z.is_empty() {
                        m.zsets.remove(&key(*k));
                    }
                }
                prop_assert_eq!(got, KvResult::Items(want));
            }
        }
        Op::ZRange(k, a, bb) => {
            let got = r(
                kv,
                Q::ZRange {
                    key: b(&key(*k)),
                    start: i64::from(*a),
                    stop: i64::from(*bb),
                    rev: false,
                    with_scores: false,
                },
            );
            if wrong(m, *k, "zset") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let order = m.zsets.get(&key(*k)).map(Model::zorder).unwrap_or_default();
                let want: Vec<Bytes> = order
                    [model_range(order.len(), i64::from(*a), i64::from(*bb))]
                .iter()
                .map(|(_, mm)| Bytes::from(mm.clone()))
                .collect();
                prop_assert_eq!(got, KvResult::Items(want));
            }
        }
        Op::ZByScore(k, lo, hi, rev, offset, count) => {
            let (min, max) = (f64::from(lo.0) / 4.0, f64::from(hi.0) / 4.0);
            let got = r(
                kv,
                Q::ZRangeByScore {
                    key: b(&key(*k)),
                    min,
                    min_exclusive: lo.1,
                    max,
                    max_exclusive: hi.1,
                    rev: *rev,
                    with_scores: true,
                    offset: u64::from(*offset),
                    count: count.map(u64::from),
                },
            );
            if wrong(m, *k, "zset") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let mut order = m.zsets.get(&key(*k)).map(Model::zorder).unwrap_or_default();
                if *rev {
                    order.reverse();
                }
                let want: Vec<Bytes> = order
                    .into_iter()
                    .filter(|(s, _)| in_range(*s, min, lo.1, max, hi.1))
                    .skip(usize::from(*offset))
                    .take(count.map_or(usize::MAX, usize::from))
                    .flat_map(|(s, mm)| [Bytes::from(mm), Bytes::from(format_f64(s))])
                    .collect();
                prop_assert_eq!(got, KvResult::Items(want));
            }
        }
        Op::ZCount(k, lo, hi) => {
            let (min, max) = (f64::from(lo.0) / 4.0, f64::from(hi.0) / 4.0);
            let got = r(
                kv,
                Q::ZCount {
                    key: b(&key(*k)),
                    min,
                    min_exclusive: lo.1,
                    max,
                    max_exclusive: hi.1,
                },
            );
            if wrong(m, *k, "zset") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let n = m.zsets.get(&key(*k)).map_or(0, |z| {
                    z.values()
                        .filter(|s| in_range(**s, min, lo.1, max, hi.1))
                        .count()
                });
                prop_assert_eq!(got, KvResult::Count(n as u64));
            }
        }
        Op::ZRemByScore(k, lo, hi) => {
            let (min, max) = (f64::from(lo.0) / 4.0, f64::from(hi.0) / 4.0);
            let got = w(
                kv,
                C::ZRemRangeByScore {
                    key: b(&key(*k)),
                    min,
                    min_exclusive: lo.1,
                    max,
                    max_exclusive: hi.1,
                },
            );
            if wrong(m, *k, "zset") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let mut n = 0;
                if let Some(z) = m.zsets.get_mut(&key(*k)) {
                    let before = z.len();
                    z.retain(|_, s| !in_range(*s, min, lo.1, max, hi.1));
                    n = before - z.len();
                    if z.is_empty() {
                        m.zsets.remove(&key(*k));
                    }
                }
                prop_assert_eq!(got, KvResult::Count(n as u64));
            }
        }
        Op::ZRemByRank(k, a, bb) => {
            let got = w(
                kv,
                C::ZRemRangeByRank {
                    key: b(&key(*k)),
                    start: i64::from(*a),
                    stop: i64::from(*bb),
                },
            );
            if wrong(m, *k, "zset") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let mut n = 0;
                if let Some(z) = m.zsets.get_mut(&key(*k)) {
                    let order = Model::zorder(z);
                    for (_, mm) in &order[model_range(order.len(), i64::from(*a), i64::from(*bb))] {
                        z.remove(mm);
                        n += 1;
                    }
                    if z.is_empty() {
                        m.zsets.remove(&key(*k));
                    }
                }
                prop_assert_eq!(got, KvResult::Count(n as u64));
            }
        }
        Op::ZMScore(k, vals) => {
            let vals = texts(vals);
            let got = r(
                kv,
                Q::ZMScore {
                    key: b(&key(*k)),
                    members: bytes(&vals),
                },
            );
            if wrong(m, *k, "zset") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let z = m.zsets.get(&key(*k));
                let want = vals
                    .iter()
                    .map(|v| {
                        z.and_then(|z| z.get(v))
                            .map(|s| Bytes::from(format_f64(*s)))
                    })
                    .collect();
                prop_assert_eq!(got, KvResult::Values(want));
            }
        }
        Op::LInsert(k, after, pivot, v) => {
            let (pivot, v) = (member(*pivot), member(*v));
            let got = w(
                kv,
                C::ListInsert {
                    key: b(&key(*k)),
                    after: *after,
                    pivot: b(&pivot),
                    value: b(&v),
                },
            );
            if wrong(m, *k, "list") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let want = match m.lists.get_mut(&key(*k)) {
                    None => 0,
                    Some(l) => match l.iter().position(|e| *e == pivot) {
                        None => -1,
                        Some(i) => {
                            l.insert(if *after { i + 1 } else { i }, v);
                            l.len() as i64
                        }
                    },
                };
                prop_assert_eq!(got, KvResult::Int(want));
            }
        }
        Op::LMove(k, d, from_left, to_left) => {
            let got = w(
                kv,
                C::ListMove {
                    key: b(&key(*k)),
                    dst: b(&key(*d)),
                    from_left: *from_left,
                    to_left: *to_left,
                },
            );
            if wrong(m, *k, "list") || (m.lists.contains_key(&key(*k)) && wrong(m, *d, "list")) {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let want = match m.lists.get_mut(&key(*k)) {
                    None => None,
                    Some(l) => {
                        let e = if *from_left {
                            l.pop_front()
                        } else {
                            l.pop_back()
                        }
                        .unwrap();
                        if l.is_empty() {
                            m.lists.remove(&key(*k));
                        }
                        let dl = m.lists.entry(key(*d)).or_default();
                        if *to_left {
                            dl.push_front(e.clone());
                        } else {
                            dl.push_back(e.clone());
                        }
                        Some(Bytes::from(e))
                    }
                };
                prop_assert_eq!(got, KvResult::Value(want));
            }
        }
        Op::LPos(k, e, rank, count, maxlen) => {
            let e = member(*e);
            let got = r(
                kv,
                Q::ListPos {
                    key: b(&key(*k)),
                    element: b(&e),
                    rank: i64::from(*rank),
                    count: count.map(u64::from),
                    maxlen: u64::from(*maxlen),
                },
            );
            if wrong(m, *k, "list") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let l: Vec<String> = m
                    .lists
                    .get(&key(*k))
                    .map(|l| l.iter().cloned().collect())
                    .unwrap_or_default();
                let look = if *maxlen == 0 {
                    l.len()
                } else {
                    usize::from(*maxlen).min(l.len())
                };
                let mut idx: Vec<usize> = (0..l.len()).collect();
                if *rank < 0 {
                    idx.reverse();
                }
                let found: Vec<usize> = idx
                    .into_iter()
                    .take(look)
                    .filter(|i| l[*i] == e)
                    .skip(usize::from(rank.unsigned_abs()) - 1)
                    .collect();
                let want = match count {
                    None => found
                        .first()
                        .map_or(KvResult::Value(None), |i| KvResult::Int(*i as i64)),
                    Some(c) => KvResult::Items(
                        found
                            .iter()
                            .take(if *c == 0 { usize::MAX } else { usize::from(*c) })
                            .map(|i| Bytes::from(i.to_string()))
                            .collect(),
                    ),
                };
                prop_assert_eq!(got, want);
            }
        }
        Op::SMove(k, d, mm) => {
            let mm = member(*mm);
            let got = w(
                kv,
                C::SetMove {
                    key: b(&key(*k)),
                    dst: b(&key(*d)),
                    member: b(&mm),
                },
            );
            if wrong(m, *k, "set") || (m.sets.contains_key(&key(*k)) && wrong(m, *d, "set")) {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let present = m.sets.get(&key(*k)).is_some_and(|s| s.contains(&mm));
                if present && k != d {
                    let s = m.sets.get_mut(&key(*k)).unwrap();
                    s.remove(&mm);
                    if s.is_empty() {
                        m.sets.remove(&key(*k));
                    }
                    m.sets.entry(key(*d)).or_default().insert(mm);
                }
                prop_assert_eq!(got, KvResult::Count(u64::from(present)));
            }
        }
        Op::SCombine(op, ks, store) => {
            let first = b(&key(ks[0]));
            let others: Vec<Bytes> = ks[1..].iter().map(|k| b(&key(*k))).collect();
            let sources: Vec<Bytes> = ks.iter().map(|k| b(&key(*k))).collect();
            let got = match (op % 3, store) {
                (0, None) => r(kv, Q::SetInter { key: first, others }),
                (1, None) => r(kv, Q::SetUnion { key: first, others }),
                (_, None) => r(kv, Q::SetDiff { key: first, others }),
                (0, Some(d)) => w(
                    kv,
                    C::SetInterStore {
                        key: b(&key(*d)),
                        sources,
                    },
                ),
                (1, Some(d)) => w(
                    kv,
                    C::SetUnionStore {
                        key: b(&key(*d)),
                        sources,
                    },
                ),
                (_, Some(d)) => w(
                    kv,
                    C::SetDiffStore {
                        key: b(&key(*d)),
                        sources,
                    },
                ),
            };
            if ks.iter().any(|k| wrong(m, *k, "set")) {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let set = |k: usize| m.sets.get(&key(k)).cloned().unwrap_or_default();
                let mut acc = set(ks[0]);
                for k in &ks[1..] {
                    let other = set(*k);
                    acc = match op % 3 {
                        0 => acc.intersection(&other).cloned().collect(),
                        1 => acc.union(&other).cloned().collect(),
                        _ => acc.difference(&other).cloned().collect(),
                    };
                }
                match store {
                    None => {
                        // The store's order is its own (deterministic):
                        // compare as sets, and no duplicates.
                        let KvResult::Items(mut items) = got else {
                            return Err(TestCaseError::fail(format!("{got:?}")));
                        };
                        items.sort();
                        let n = items.len();
                        items.dedup();
                        prop_assert_eq!(n, items.len());
                        prop_assert_eq!(items, acc.iter().map(|s| b(s)).collect::<Vec<_>>());
                    }
                    Some(d) => {
                        prop_assert_eq!(got, KvResult::Count(acc.len() as u64));
                        m.lists.remove(KEYS[*d]);
                        m.sets.remove(KEYS[*d]);
                        m.hashes.remove(KEYS[*d]);
                        m.zsets.remove(KEYS[*d]);
                        if !acc.is_empty() {
                            m.sets.insert(key(*d), acc);
                        }
                    }
                }
            }
        }
        Op::SInterCard(ks, limit) => {
            let got = r(
                kv,
                Q::SetInterCard {
                    key: b(&key(ks[0])),
                    others: ks[1..].iter().map(|k| b(&key(*k))).collect(),
                    limit: u64::from(*limit),
                },
            );
            if ks.iter().any(|k| wrong(m, *k, "set")) {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let set = |k: usize| m.sets.get(&key(k)).cloned().unwrap_or_default();
                let mut acc = set(ks[0]);
                for k in &ks[1..] {
                    acc = acc.intersection(&set(*k)).cloned().collect();
                }
                let n = if *limit == 0 {
                    acc.len()
                } else {
                    acc.len().min(usize::from(*limit))
                };
                prop_assert_eq!(got, KvResult::Count(n as u64));
            }
        }
        Op::SMIsMember(k, vals) => {
            let vals = texts(vals);
            let got = r(
                kv,
                Q::SetMIsMember {
                    key: b(&key(*k)),
                    members: bytes(&vals),
                },
            );
            if wrong(m, *k, "set") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let s = m.sets.get(&key(*k));
                let want = vals
                    .iter()
                    .map(|v| {
                        b(if s.is_some_and(|s| s.contains(v)) {
                            "1"
                        } else {
                            "0"
                        })
                    })
                    .collect();
                prop_assert_eq!(got, KvResult::Items(want));
            }
        }
        Op::HIncrFloat(k, f, d) => {
            // Fields of their own: HIncr's stay integers.
            let f = format!("x{}", f % 3);
            let delta = f64::from(*d) / 4.0;
            let got = w(
                kv,
                C::HashIncrByFloat {
                    key: b(&key(*k)),
                    field: Bytes::from(f.clone()),
                    delta,
                },
            );
            if wrong(m, *k, "hash") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let h = m.hashes.entry(key(*k)).or_default();
                let n = h.get(&f).map_or(0.0, |v| v.parse::<f64>().unwrap()) + delta;
                // Quarter steps: Rust's shortest text is Redis' text.
                let text = if n == 0.0 {
                    "0".to_string()
                } else {
                    format!("{n}")
                };
                h.insert(f, text.clone());
                prop_assert_eq!(got, KvResult::Value(Some(Bytes::from(text))));
            }
        }
        Op::HStrLen(k, f) => {
            let f = format!("x{}", f % 3);
            let got = r(
                kv,
                Q::HashStrLen {
                    key: b(&key(*k)),
                    field: Bytes::from(f.clone()),
                },
            );
            if wrong(m, *k, "hash") {
                prop_assert_eq!(got, WRONGTYPE);
            } else {
                let n = m
                    .hashes
                    .get(&key(*k))
                    .and_then(|h| h.get(&f))
                    .map_or(0, String::len);
                prop_assert_eq!(got, KvResult::Count(n as u64));
            }
        }
        Op::Del(k) => {
            let existed = m.kind(KEYS[*k]).is_some();
            m.lists.remove(KEYS[*k]);
            m.sets.remove(KEYS[*k]);
            m.hashes.remove(KEYS[*k]);
            m.zsets.remove(KEYS[*k]);
            prop_assert_eq!(
                kv.execute(&KvCommand::Delete {
                    keys: vec![b(KEYS[*k])]
                }),
                KvResult::Count(u64::from(existed))
            );
        }
        Op::Type(k) => {
            prop_assert_eq!(
                type_of(kv, KEYS[*k]),
                KvResult::Value(m.kind(KEYS[*k]).map(b))
            );
        }
        Op::Snapshot => {
            let data = snapshot_bytes(kv);
            let back = recover(&data).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(snapshot_bytes(&back), data);
            prop_assert_eq!(back.data_bytes(), kv.data_bytes());
            *kv = back;
        }
    }
    // Every key of the model exists in the store, nothing else.
    prop_assert_eq!(
        kv.len(),
        m.lists.len() + m.sets.len() + m.hashes.len() + m.zsets.len()
    );
    Ok(())
}

/// Redis' score range predicate, the plain way.
fn in_range(s: f64, min: f64, min_exclusive: bool, max: f64, max_exclusive: bool) -> bool {
    (if min_exclusive { s > min } else { s >= min })
        && (if max_exclusive { s < max } else { s <= max })
}

fn zadd_key(kv: &mut KvStore, key: &str, pairs: &[(f64, String)]) -> KvResult {
    w(
        kv,
        C::ZAdd {
            key: b(key),
            condition: ZAddCondition::Always,
            compare: ZAddCompare::None,
            changed: false,
            incr: false,
            pairs: pairs
                .iter()
                .map(|(s, m)| (*s, Bytes::from(m.clone())))
                .collect(),
        },
    )
}

/// Quarter-step scores in the model print as Rust prints them, which is
/// Redis' text for these values.
fn format_f64(f: f64) -> String {
    format!("{f}")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Random list/set/hash/zset commands on three keys agree with the
    /// model; a twin store fed the same commands ends byte-identical
    /// (determinism, SPOP included).
    #[test]
    fn random_commands_match_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let mut kv = KvStore::new();
        let mut twin = KvStore::new();
        let mut m = Model::default();
        for op in &ops {
            let mut shadow = m.clone();
            check(&mut kv, &mut m, op)?;
            // The twin sees the same commands (its model is thrown away).
            check(&mut twin, &mut shadow, op)?;
        }
        prop_assert_eq!(snapshot_bytes(&kv), snapshot_bytes(&twin));
    }
}

#[test]
fn scan_by_type() {
    let mut kv = every_type();
    w(&mut kv, push("list-b", true, &["a"]));
    let scan = |start: &str, limit: u32, t: &str| {
        r(
            &kv,
            Q::ScanType {
                start: b(start),
                end: None,
                limit,
                type_name: b(t),
            },
        )
    };
    let keys = |res: KvResult| match res {
        KvResult::Entries { entries, next } => (
            entries.into_iter().map(|(k, _)| k).collect::<Vec<_>>(),
            next,
        ),
        other => panic!("{other:?}"),
    };
    assert_eq!(keys(scan("", 100, "list")), (bs(&["list", "list-b"]), None));
    assert_eq!(
        keys(scan("", 100, "STREAM")),
        (bs(&["empty-stream", "stream"]), None)
    );
    assert_eq!(keys(scan("", 100, "string")), (bs(&["str"]), None));
    assert_eq!(keys(scan("", 100, "nothing")), (vec![], None));
    // The limit counts examined keys: the next key says where to go on.
    assert_eq!(keys(scan("", 2, "list")), (vec![], Some(b("list"))));
    assert_eq!(
        keys(scan("list", 2, "list")),
        (bs(&["list", "list-b"]), Some(b("set")))
    );
}
