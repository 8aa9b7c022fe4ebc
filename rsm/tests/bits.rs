//! SETBIT, BITOP, DESCRIBE (OBJECT ENCODING / MEMORY USAGE), ZRANGESTORE
//! and SORT on the store: Redis' answers, through the codecs, and what a
//! snapshot keeps.

use bytes::Bytes;
use flotilla_rsm::{
    BitFieldAction, BitFieldOp, BitFieldOverflow, BitFieldType, BitOperation, KvCommand, KvError,
    KvQuery, KvResult, KvStore, TypedCommand as C, TypedQuery as Q, ZAddCompare, ZAddCondition,
};

/// Executes `cmd` after a trip through its encoding.
fn run(kv: &mut KvStore, cmd: KvCommand) -> KvResult {
    let decoded = KvCommand::decode(cmd.encode()).expect("decodes");
    assert_eq!(decoded, cmd);
    let r = kv.execute(&decoded);
    KvResult::decode(r.encode()).expect("result decodes")
}

fn read(kv: &KvStore, q: KvQuery) -> KvResult {
    assert_eq!(KvQuery::decode(q.encode()).expect("decodes"), q);
    kv.read(&q)
}

fn get(kv: &KvStore, key: &str) -> Option<Bytes> {
    match kv.read(&KvQuery::Get { key: b(key) }) {
        KvResult::Value(v) => v,
        other => panic!("GET {key}: {other:?}"),
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn setbit(key: &str, offset: u64, value: bool) -> KvCommand {
    KvCommand::SetBit {
        key: b(key),
        offset,
        value,
    }
}

fn describe(kv: &KvStore, key: &str) -> Vec<String> {
    match read(kv, KvQuery::Describe { key: b(key) }) {
        KvResult::Items(items) => items
            .iter()
            .map(|i| String::from_utf8_lossy(i).into_owned())
            .collect(),
        other => panic!("DESCRIBE {key}: {other:?}"),
    }
}

fn zadd(kv: &mut KvStore, key: &str, pairs: &[(f64, &str)]) {
    let cmd = KvCommand::Typed(C::ZAdd {
        key: b(key),
        condition: ZAddCondition::Always,
        compare: ZAddCompare::None,
        changed: false,
        incr: false,
        pairs: pairs.iter().map(|(s, m)| (*s, b(m))).collect(),
    });
    assert!(matches!(run(kv, cmd), KvResult::Count(_)));
}

fn push(kv: &mut KvStore, key: &str, values: &[&str]) {
    let cmd = KvCommand::Typed(C::ListPush {
        key: b(key),
        left: false,
        only_existing: false,
        values: values.iter().map(|v| b(v)).collect(),
    });
    assert!(matches!(run(kv, cmd), KvResult::Len(_)));
}

fn items(r: KvResult) -> Vec<String> {
    match r {
        KvResult::Items(items) => items
            .iter()
            .map(|i| String::from_utf8_lossy(i).into_owned())
            .collect(),
        other => panic!("not items: {other:?}"),
    }
}

#[test]
fn setbit_answers_the_old_bit_and_pads_with_zeros() {
    let mut kv = KvStore::new();
    // Redis: SETBIT k 7 1 on a missing key makes "\x01".
    assert_eq!(run(&mut kv, setbit("k", 7, true)), KvResult::Int(0));
    assert_eq!(get(&kv, "k").unwrap(), Bytes::from_static(b"\x01"));
    assert_eq!(run(&mut kv, setbit("k", 7, true)), KvResult::Int(1));
    assert_eq!(run(&mut kv, setbit("k", 0, true)), KvResult::Int(0));
    assert_eq!(get(&kv, "k").unwrap(), Bytes::from_static(b"\x81"));
    assert_eq!(run(&mut kv, setbit("k", 7, false)), KvResult::Int(1));
    assert_eq!(get(&kv, "k").unwrap(), Bytes::from_static(b"\x80"));
    // Past the end: zero bytes in between.
    assert_eq!(run(&mut kv, setbit("k", 25, true)), KvResult::Int(0));
    assert_eq!(get(&kv, "k").unwrap(), Bytes::from_static(b"\x80\0\0\x40"));
    // Clearing a bit of a missing key still creates it (Redis: "\0").
    assert_eq!(run(&mut kv, setbit("z", 3, false)), KvResult::Int(0));
    assert_eq!(get(&kv, "z").unwrap(), Bytes::from_static(b"\0"));
    // And clearing a clear bit past the end pads an existing string.
    assert_eq!(run(&mut kv, setbit("z", 17, false)), KvResult::Int(0));
    assert_eq!(get(&kv, "z").unwrap(), Bytes::from_static(b"\0\0\0"));
    assert_eq!(run(&mut kv, setbit("z", 17, false)), KvResult::Int(0));
    assert_eq!(get(&kv, "z").unwrap(), Bytes::from_static(b"\0\0\0"));
    // Too far, and the wrong type.
    assert_eq!(
        run(&mut kv, setbit("k", 64 << 23, true)),
        KvResult::Error(KvError::ValueTooLarge)
    );
    push(&mut kv, "l", &["a"]);
    assert_eq!(
        run(&mut kv, setbit("l", 1, true)),
        KvResult::Error(KvError::WrongType)
    );
}

/// A BITFIELD operation from Redis' words: `("incrby", "u2", 100, 1)`
/// under `overflow`.
fn op(action: &str, ty: &str, offset: u64, value: i64, overflow: BitFieldOverflow) -> BitFieldOp {
    let bits = ty[1..].parse().expect("a width");
    BitFieldOp {
        action: match action {
            "get" => BitFieldAction::Get,
            "set" => BitFieldAction::Set(value),
            _ => BitFieldAction::IncrBy(value),
        },
        ty: BitFieldType::new(ty.starts_with('i'), bits).expect("a type"),
        offset,
        overflow,
    }
}

fn bitfield(key: &str, ops: Vec<BitFieldOp>) -> KvCommand {
    KvCommand::BitField { key: b(key), ops }
}

fn ints(v: &[Option<i64>]) -> KvResult {
    KvResult::Ints(v.to_vec())
}

#[test]
fn bitfield_answers_redis_io_examples() {
    use BitFieldOverflow::{Sat, Wrap};
    let mut kv = KvStore::new();
    // BITFIELD mykey INCRBY i5 100 1 GET u4 0 → 1, 0.
    let cmd = bitfield(
        "mykey",
        vec![
            op("incrby", "i5", 100, 1, Wrap),
            op("get", "u4", 0, 0, Wrap),
        ],
    );
    assert_eq!(run(&mut kv, cmd), ints(&[Some(1), Some(0)]));
    // Zero-padded to hold bit 104: 14 bytes, 00001 at bits 100..105.
    let mut want = vec![0u8; 14];
    want[13] = 0b1000_0000;
    assert_eq!(get(&kv, "mykey").unwrap(), Bytes::from(want));
    // BITFIELD mykey incrby u2 100 1 OVERFLOW SAT incrby u2 102 1, four times.
    let cmd = || {
        bitfield(
            "ov",
            vec![
                op("incrby", "u2", 100, 1, Wrap),
                op("incrby", "u2", 102, 1, Sat),
            ],
        )
    };
    for want in [[1, 1], [2, 2], [3, 3], [0, 3]] {
        assert_eq!(run(&mut kv, cmd()), ints(&[Some(want[0]), Some(want[1])]));
    }
}

#[test]
fn bitfield_sets_across_bytes_and_answers_old_values() {
    use BitFieldOverflow::{Fail, Sat, Wrap};
    let mut kv = KvStore::new();
    kv.execute(&KvCommand::put("k", Bytes::from_static(b"\xff")));
    // SET returns the old value, INCRBY the new one, GET sees earlier
    // writes of the same command.
    let cmd = bitfield(
        "k",
        vec![
            op("set", "u8", 4, 0xab, Wrap),
            op("get", "u8", 4, 0, Wrap),
            op("get", "i4", 0, 0, Wrap),
            op("incrby", "i8", 4, -1, Wrap),
            op("set", "i16", 12, -2, Wrap),
        ],
    );
    assert_eq!(
        run(&mut kv, cmd),
        ints(&[Some(0xf0), Some(0xab), Some(-1), Some(0xaa - 256), Some(0)])
    );
    assert_eq!(
        get(&kv, "k").unwrap(),
        Bytes::from_static(b"\xfa\xaf\xff\xe0")
    );
    // Overflow rules, each for the SET / INCRBY it precedes.
    let cmd = bitfield(
        "k",
        vec![
            op("set", "u8", 0, 256, Fail),
            op("set", "u8", 0, 256, Sat),
            op("incrby", "u8", 0, 1, Fail),
            op("incrby", "u8", 0, 1, Wrap),
            op("set", "i8", 8, -129, Sat),
            op("get", "i8", 8, 0, Fail),
        ],
    );
    assert_eq!(
        run(&mut kv, cmd),
        ints(&[
            None,
            Some(0xfa),
            None,
            Some(0),
            Some(0xaf - 256),
            Some(-128)
        ])
    );
    assert_eq!(
        get(&kv, "k").unwrap(),
        Bytes::from_static(b"\x00\x80\xff\xe0")
    );
    // i64 at an odd offset, grows the string by 9 bytes.
    let cmd = bitfield(
        "k",
        vec![
            op("set", "i64", 35, i64::MIN, Wrap),
            op("get", "i64", 35, 0, Wrap),
            op("incrby", "i64", 35, -1, Sat),
            op("incrby", "i64", 35, i64::MAX, Wrap),
        ],
    );
    assert_eq!(
        run(&mut kv, cmd),
        ints(&[Some(0), Some(i64::MIN), Some(i64::MIN), Some(-1)])
    );
    assert_eq!(
        get(&kv, "k").unwrap().len(),
        13,
        "bits 35..99 end in byte 12"
    );
}

#[test]
fn bitfield_creates_keeps_deadlines_and_refuses_cleanly() {
    use BitFieldOverflow::{Fail, Wrap};
    let mut kv = KvStore::new();
    // Only GETs: a missing key reads as zeros and stays missing.
    let cmd = bitfield(
        "g",
        vec![
            op("get", "u63", 1000, 0, Wrap),
            op("get", "i64", 0, 0, Wrap),
        ],
    );
    assert_eq!(run(&mut kv, cmd), ints(&[Some(0), Some(0)]));
    assert_eq!(get(&kv, "g"), None);
    assert_eq!(run(&mut kv, bitfield("g", vec![])), ints(&[]));
    assert_eq!(get(&kv, "g"), None);
    // A write that FAIL refuses still creates the key, zero-padded to the
    // write's last bit (Redis does).
    let cmd = bitfield("f", vec![op("set", "u8", 20, -1, Fail)]);
    assert_eq!(run(&mut kv, cmd), ints(&[None]));
    assert_eq!(get(&kv, "f").unwrap(), Bytes::from_static(b"\0\0\0\0"));
    // An existing key keeps its deadline and grows with zeros.
    kv.execute(&KvCommand::Expire {
        key: b("f"),
        at_ms: 100,
        now_ms: 1,
        condition: flotilla_rsm::ExpireCondition::Always,
    });
    let cmd = bitfield("f", vec![op("incrby", "u1", 47, 1, Fail)]);
    assert_eq!(run(&mut kv, cmd), ints(&[Some(1)]));
    assert_eq!(
        get(&kv, "f").unwrap(),
        Bytes::from_static(b"\0\0\0\0\0\x01")
    );
    assert_eq!(
        kv.read(&KvQuery::Deadline { key: b("f") }),
        KvResult::Int(100)
    );
    // Past the largest value, a collection: errors, nothing changes.
    let last = (64u64 << 23) - 8;
    let cmd = bitfield("f", vec![op("set", "u8", last, 7, Wrap)]);
    assert_eq!(run(&mut kv, cmd), ints(&[Some(0)]));
    assert_eq!(get(&kv, "f").unwrap().len(), 64 << 20);
    for offset in [last + 1, u64::MAX - 3, u64::MAX] {
        let cmd = bitfield(
            "f",
            vec![
                op("set", "u8", 0, 1, Wrap),
                op("set", "u8", offset, 7, Wrap),
            ],
        );
        assert_eq!(run(&mut kv, cmd), KvResult::Error(KvError::ValueTooLarge));
    }
    assert_eq!(&get(&kv, "f").unwrap()[..1], b"\0");
    // A GET far away reads zeros.
    let cmd = bitfield("f", vec![op("get", "i64", u64::MAX - 1, 0, Wrap)]);
    assert_eq!(run(&mut kv, cmd), ints(&[Some(0)]));
    push(&mut kv, "l", &["a"]);
    for action in ["get", "set"] {
        let cmd = bitfield("l", vec![op(action, "u8", 0, 1, Wrap)]);
        assert_eq!(run(&mut kv, cmd), KvResult::Error(KvError::WrongType));
    }
}

#[test]
fn bitfield_of_a_bad_type_or_tag_does_not_decode() {
    let cmd = bitfield("k", vec![op("incrby", "u8", 1, 1, BitFieldOverflow::Sat)]);
    let enc = cmd.encode().to_vec();
    assert_eq!(KvCommand::decode(Bytes::from(enc.clone())).unwrap(), cmd);
    // key "k": tag, len u32, 'k', count u32, then the operation.
    let at = 1 + 4 + 1 + 4;
    let bad = |i: usize, byte: u8| {
        let mut bad = enc.clone();
        bad[at + i] = byte;
        KvCommand::decode(Bytes::from(bad))
    };
    assert!(bad(0, 3).is_err(), "no such action");
    assert!(bad(1, 2).is_err(), "signed is a bool");
    assert!(bad(2, 64).is_err(), "u64 is not a type");
    assert!(bad(2, 0).is_err(), "u0 is not a type");
    assert!(bad(1, 1).is_ok() && bad(2, 63).is_ok());
    assert!(bad(11, 3).is_err(), "no such overflow");
    assert!(bad(0, 0).is_err(), "a GET carries no value");
    let mut get = enc.clone();
    get[at] = 0;
    get[at + 12..].fill(0);
    assert!(KvCommand::decode(Bytes::from(get)).is_ok());
    let mut signed65 = enc.clone();
    signed65[at + 1] = 1;
    signed65[at + 2] = 65;
    assert!(KvCommand::decode(Bytes::from(signed65)).is_err());
    // More operations than the bytes hold.
    let mut many = enc.clone();
    many[6..10].copy_from_slice(&1000u32.to_le_bytes());
    assert!(KvCommand::decode(Bytes::from(many)).is_err());
    let r = KvResult::Ints(vec![Some(-1), None, Some(i64::MAX)]);
    assert_eq!(KvResult::decode(r.encode()).unwrap(), r);
    let mut bad = r.encode().to_vec();
    bad[5] = 2; // an option flag
    assert!(KvResult::decode(Bytes::from(bad)).is_err());
}

#[test]
fn bitop_pads_replaces_and_deletes() {
    let mut kv = KvStore::new();
    kv.execute(&KvCommand::put("a", "foobar"));
    kv.execute(&KvCommand::put("b", "abcdef"));
    kv.execute(&KvCommand::put("s", "\u{1}"));
    let op = |op, dst: &str, src: &[&str]| KvCommand::BitOp {
        op,
        dst: b(dst),
        sources: src.iter().map(|s| b(s)).collect(),
    };
    // The example of Redis' BITOP page: AND of foobar and abcdef is `bc`ab`.
    assert_eq!(
        run(&mut kv, op(BitOperation::And, "d", &["a", "b"])),
        KvResult::Len(6)
    );
    assert_eq!(get(&kv, "d").unwrap(), Bytes::from_static(b"`bc`ab"));
    // A shorter source (and a missing one) is zero-padded.
    assert_eq!(
        run(&mut kv, op(BitOperation::Or, "d", &["s", "a", "nope"])),
        KvResult::Len(6)
    );
    assert_eq!(get(&kv, "d").unwrap(), Bytes::from_static(b"goobar"));
    assert_eq!(
        run(&mut kv, op(BitOperation::And, "d", &["s", "a"])),
        KvResult::Len(6)
    );
    assert_eq!(get(&kv, "d").unwrap(), Bytes::from_static(b"\0\0\0\0\0\0"));
    assert_eq!(
        run(&mut kv, op(BitOperation::Xor, "d", &["a", "a"])),
        KvResult::Len(6)
    );
    assert_eq!(get(&kv, "d").unwrap(), Bytes::from_static(&[0; 6]));
    assert_eq!(
        run(&mut kv, op(BitOperation::Not, "d", &["s"])),
        KvResult::Len(1)
    );
    assert_eq!(get(&kv, "d").unwrap(), Bytes::from_static(b"\xfe"));
    // A collection destination is replaced, with its deadline.
    push(&mut kv, "l", &["x"]);
    kv.execute(&KvCommand::Expire {
        key: b("l"),
        at_ms: 100,
        now_ms: 1,
        condition: flotilla_rsm::ExpireCondition::Always,
    });
    assert_eq!(
        run(&mut kv, op(BitOperation::Or, "l", &["s"])),
        KvResult::Len(1)
    );
    assert_eq!(get(&kv, "l").unwrap(), Bytes::from_static(b"\x01"));
    assert_eq!(
        kv.read(&KvQuery::Deadline { key: b("l") }),
        KvResult::Int(-1)
    );
    // An empty result deletes the destination.
    assert_eq!(
        run(&mut kv, op(BitOperation::Or, "l", &["nope"])),
        KvResult::Len(0)
    );
    assert_eq!(get(&kv, "l"), None);
    assert_eq!(
        kv.read(&KvQuery::Exists { keys: vec![b("l")] }),
        KvResult::Count(0)
    );
    // A collection source: nothing changes.
    push(&mut kv, "l", &["x"]);
    assert_eq!(
        run(&mut kv, op(BitOperation::Or, "d", &["a", "l"])),
        KvResult::Error(KvError::WrongType)
    );
    assert_eq!(get(&kv, "d").unwrap(), Bytes::from_static(b"\xfe"));
}

#[test]
fn bitop_not_of_two_sources_does_not_decode() {
    let cmd = KvCommand::BitOp {
        op: BitOperation::Not,
        dst: b("d"),
        sources: vec![b("a"), b("b")],
    };
    assert!(KvCommand::decode(cmd.encode()).is_err());
    let mut bad = cmd.encode().to_vec();
    bad[1] = 9; // no such operation
    assert!(KvCommand::decode(Bytes::from(bad)).is_err());
}

#[test]
fn describe_reports_redis_encodings_and_a_size() {
    let mut kv = KvStore::new();
    assert!(describe(&kv, "none").is_empty());
    kv.execute(&KvCommand::put("i", "12345"));
    kv.execute(&KvCommand::put("e", "hello"));
    kv.execute(&KvCommand::put("r", "x".repeat(45)));
    kv.execute(&KvCommand::put("lead0", "012"));
    assert_eq!(describe(&kv, "i")[..2], ["string", "int"]);
    assert_eq!(describe(&kv, "e")[..2], ["string", "embstr"]);
    assert_eq!(describe(&kv, "r")[..2], ["string", "raw"]);
    assert_eq!(describe(&kv, "lead0")[..2], ["string", "embstr"]);
    push(&mut kv, "l", &["a", "b"]);
    assert_eq!(describe(&kv, "l")[..2], ["list", "listpack"]);
    let big = "y".repeat(1000);
    push(&mut kv, "ql", &[big.as_str(); 9]);
    assert_eq!(describe(&kv, "ql")[..2], ["list", "quicklist"]);
    kv.execute(&KvCommand::Typed(C::SetAdd {
        key: b("si"),
        members: vec![b("1"), b("2")],
    }));
    assert_eq!(describe(&kv, "si")[..2], ["set", "intset"]);
    kv.execute(&KvCommand::Typed(C::SetAdd {
        key: b("si"),
        members: vec![b("x")],
    }));
    assert_eq!(describe(&kv, "si")[..2], ["set", "listpack"]);
    kv.execute(&KvCommand::Typed(C::SetAdd {
        key: b("si"),
        members: vec![Bytes::from("z".repeat(65))],
    }));
    assert_eq!(describe(&kv, "si")[..2], ["set", "hashtable"]);
    kv.execute(&KvCommand::Typed(C::HashSet {
        key: b("h"),
        only_new: false,
        pairs: vec![(b("f"), b("v"))],
    }));
    assert_eq!(describe(&kv, "h")[..2], ["hash", "listpack"]);
    zadd(&mut kv, "z", &[(1.0, "a")]);
    assert_eq!(describe(&kv, "z")[..2], ["zset", "listpack"]);
    let many: Vec<(f64, String)> = (0..129).map(|i| (i as f64, format!("m{i}"))).collect();
    let many: Vec<(f64, &str)> = many.iter().map(|(s, m)| (*s, m.as_str())).collect();
    zadd(&mut kv, "z", &many);
    assert_eq!(describe(&kv, "z")[..2], ["zset", "skiplist"]);
    // Sizes grow with the value.
    let size = |kv: &KvStore, k: &str| describe(kv, k)[2].parse::<u64>().unwrap();
    assert!(
        size(&kv, "r") > size(&kv, "e"),
        "a 45-byte value outweighs a 5-byte one"
    );
    assert!(size(&kv, "ql") > 9000, "the list's elements count");
    assert!(size(&kv, "e") >= 64);
}

#[test]
fn zrangestore_copies_a_range_with_its_scores() {
    let mut kv = KvStore::new();
    zadd(
        &mut kv,
        "src",
        &[(1.0, "a"), (2.0, "b"), (3.0, "c"), (4.0, "d")],
    );
    kv.execute(&KvCommand::put("dst", "a string"));
    let store = |range| {
        KvCommand::Typed(C::ZRangeStore {
            key: b("dst"),
            range,
        })
    };
    let r = run(
        &mut kv,
        store(Q::ZRange {
            key: b("src"),
            start: 1,
            stop: 2,
            rev: true,
            with_scores: false,
        }),
    );
    assert_eq!(r, KvResult::Count(2));
    let all = Q::ZRange {
        key: b("dst"),
        start: 0,
        stop: -1,
        rev: false,
        with_scores: true,
    };
    assert_eq!(
        items(kv.read(&KvQuery::Typed(all.clone()))),
        ["b", "2", "c", "3"]
    );
    let r = run(
        &mut kv,
        store(Q::ZRangeByLex {
            key: b("src"),
            min: b("(a"),
            max: b("+"),
            rev: false,
            offset: 1,
            count: Some(5),
        }),
    );
    assert_eq!(r, KvResult::Count(2));
    assert_eq!(
        items(kv.read(&KvQuery::Typed(all.clone()))),
        ["c", "3", "d", "4"]
    );
    // An empty range deletes the destination; a string source is refused.
    let r = run(
        &mut kv,
        store(Q::ZRange {
            key: b("src"),
            start: 9,
            stop: 10,
            rev: false,
            with_scores: false,
        }),
    );
    assert_eq!(r, KvResult::Count(0));
    assert_eq!(
        kv.read(&KvQuery::Exists {
            keys: vec![b("dst")]
        }),
        KvResult::Count(0)
    );
    kv.execute(&KvCommand::put("str", "x"));
    let r = run(
        &mut kv,
        store(Q::ZRange {
            key: b("str"),
            start: 0,
            stop: -1,
            rev: false,
            with_scores: false,
        }),
    );
    assert_eq!(r, KvResult::Error(KvError::WrongType));
}

fn sort(key: &str, alpha: bool, desc: bool, offset: u64, count: Option<u64>) -> Q {
    Q::Sort {
        key: b(key),
        alpha,
        desc,
        sorted: true,
        offset,
        count,
    }
}

#[test]
fn sort_orders_numbers_and_bytes_and_stores_a_list() {
    let mut kv = KvStore::new();
    push(&mut kv, "l", &["10", "9", "1.5", "-2", "9"]);
    assert_eq!(
        items(read(&kv, KvQuery::Typed(sort("l", false, false, 0, None)))),
        ["-2", "1.5", "9", "9", "10"]
    );
    assert_eq!(
        items(read(&kv, KvQuery::Typed(sort("l", true, false, 0, None)))),
        ["-2", "1.5", "10", "9", "9"]
    );
    assert_eq!(
        items(read(
            &kv,
            KvQuery::Typed(sort("l", false, true, 1, Some(2)))
        )),
        ["9", "9"]
    );
    assert_eq!(
        items(read(&kv, KvQuery::Typed(sort("l", false, false, 9, None)))),
        Vec::<String>::new()
    );
    push(&mut kv, "w", &["b", "a", "1"]);
    assert_eq!(
        read(&kv, KvQuery::Typed(sort("w", false, false, 0, None))),
        KvResult::Error(KvError::NotSortable)
    );
    // BY nosort: a sorted set by score, reversed by DESC.
    zadd(&mut kv, "z", &[(3.0, "x"), (1.0, "y"), (2.0, "w")]);
    let nosort = Q::Sort {
        key: b("z"),
        alpha: false,
        desc: true,
        sorted: false,
        offset: 0,
        count: None,
    };
    assert_eq!(items(read(&kv, KvQuery::Typed(nosort))), ["x", "w", "y"]);
    kv.execute(&KvCommand::put("s", "x"));
    assert_eq!(
        read(&kv, KvQuery::Typed(sort("s", false, false, 0, None))),
        KvResult::Error(KvError::WrongType)
    );
    assert_eq!(
        items(read(
            &kv,
            KvQuery::Typed(sort("missing", false, false, 0, None))
        )),
        Vec::<String>::new()
    );
    // STORE: a list, replacing the string; empty deletes.
    let r = run(
        &mut kv,
        KvCommand::Typed(C::SortStore {
            key: b("s"),
            sort: sort("l", false, true, 0, None),
        }),
    );
    assert_eq!(r, KvResult::Count(5));
    let all = Q::ListRange {
        key: b("s"),
        start: 0,
        stop: -1,
    };
    assert_eq!(
        items(kv.read(&KvQuery::Typed(all))),
        ["10", "9", "9", "1.5", "-2"]
    );
    let r = run(
        &mut kv,
        KvCommand::Typed(C::SortStore {
            key: b("s"),
            sort: sort("missing", false, false, 0, None),
        }),
    );
    assert_eq!(r, KvResult::Count(0));
    assert_eq!(
        kv.read(&KvQuery::Exists { keys: vec![b("s")] }),
        KvResult::Count(0)
    );
}

#[test]
fn a_nested_query_of_the_wrong_kind_does_not_decode() {
    // A SortStore whose nested query is a ZRange, built by hand.
    let good = KvCommand::Typed(C::ZRangeStore {
        key: b("d"),
        range: Q::ZRange {
            key: b("s"),
            start: 0,
            stop: 1,
            rev: false,
            with_scores: false,
        },
    })
    .encode();
    let mut bad = good.to_vec();
    assert_eq!(bad[0], 0x47);
    bad[0] = 0x4e;
    assert!(KvCommand::decode(Bytes::from(bad)).is_err());
    // Truncations never decode (and never panic).
    for n in 0..good.len() {
        assert!(KvCommand::decode(good.slice(..n)).is_err());
    }
}

#[test]
fn randomkey_picks_every_key_and_nothing_from_an_empty_store() {
    for n in [0usize, 1, 5, 3000] {
        let mut kv = KvStore::new();
        for i in 0..n {
            kv.execute(&KvCommand::put(format!("key:{i:05}"), "v"));
        }
        // Delete some (pending deletions must never be picked).
        for i in (0..n).step_by(3) {
            kv.execute(&KvCommand::Delete {
                keys: vec![Bytes::from(format!("key:{i:05}"))],
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..4000u64 {
            match read(&kv, KvQuery::RandomKey { seed }) {
                KvResult::Value(None) => assert_eq!(kv.len(), 0, "nil only when empty"),
                KvResult::Value(Some(k)) => {
                    assert!(
                        get(&kv, std::str::from_utf8(&k).unwrap()).is_some(),
                        "{k:?} exists"
                    );
                    seen.insert(k);
                }
                other => panic!("{other:?}"),
            }
        }
        if (1..=5).contains(&n) {
            assert_eq!(seen.len(), kv.len(), "a small store: every key comes up");
        }
        if n == 3000 {
            assert!(
                seen.len() > 1000,
                "spread over the keys: {} distinct",
                seen.len()
            );
        }
    }
}

fn pfadd(key: &str, elements: &[&str]) -> KvCommand {
    KvCommand::HllAdd {
        key: b(key),
        registers: elements
            .iter()
            .map(|e| flotilla_rsm::kv::hll::hll_register(e.as_bytes()))
            .collect(),
    }
}

fn pfcount(kv: &KvStore, keys: &[&str]) -> u64 {
    let values: Vec<Bytes> = keys.iter().filter_map(|k| get(kv, k)).collect();
    let sets: Vec<&[u8]> = values
        .iter()
        .map(|v| flotilla_rsm::kv::hll::hll_registers(v).expect("a HyperLogLog"))
        .collect();
    flotilla_rsm::kv::hll::hll_estimate(&sets)
}

/// PFADD / PFMERGE's writes as Redis documents them: adding answers 1
/// only when a register changes (or the key is created), counts are
/// Redis' for the same elements, a merge is the union, and a string that
/// is not a HyperLogLog or a collection is refused without change.
#[test]
fn hyperloglogs_add_count_and_merge() {
    let mut kv = KvStore::new();
    assert_eq!(
        run(&mut kv, pfadd("hll", &["a", "b", "c", "d", "e", "f", "g"])),
        KvResult::Int(1)
    );
    assert_eq!(pfcount(&kv, &["hll"]), 7);
    assert_eq!(
        run(&mut kv, pfadd("h", &["foo", "bar", "zap"])),
        KvResult::Int(1)
    );
    assert_eq!(
        run(&mut kv, pfadd("h", &["zap", "zap", "zap"])),
        KvResult::Int(0)
    );
    assert_eq!(run(&mut kv, pfadd("h", &["foo", "bar"])), KvResult::Int(0));
    assert_eq!(pfcount(&kv, &["h"]), 3);
    assert_eq!(
        run(&mut kv, pfadd("other", &["1", "2", "3"])),
        KvResult::Int(1)
    );
    assert_eq!(pfcount(&kv, &["h", "other"]), 6);
    // PFADD with no element creates an empty one, once.
    assert_eq!(run(&mut kv, pfadd("empty", &[])), KvResult::Int(1));
    assert_eq!(run(&mut kv, pfadd("empty", &[])), KvResult::Int(0));
    assert_eq!(pfcount(&kv, &["empty"]), 0);
    // PFMERGE: the union into the destination (which counts too).
    let merge = |dst: &str, sources: &[&str]| KvCommand::HllMerge {
        dst: b(dst),
        sources: sources.iter().map(|s| b(s)).collect(),
    };
    assert_eq!(
        run(&mut kv, merge("u", &["h", "other", "absent"])),
        KvResult::Ok
    );
    assert_eq!(pfcount(&kv, &["u"]), 6);
    assert_eq!(run(&mut kv, merge("hll", &["u"])), KvResult::Ok);
    assert_eq!(pfcount(&kv, &["hll"]), 13);
    // Wrong kinds of keys change nothing.
    run(&mut kv, KvCommand::put(b("s"), b("plain")));
    assert_eq!(
        run(&mut kv, pfadd("s", &["x"])),
        KvResult::Error(KvError::NotHyperLogLog)
    );
    assert_eq!(
        run(&mut kv, merge("u", &["s"])),
        KvResult::Error(KvError::NotHyperLogLog)
    );
    assert_eq!(pfcount(&kv, &["u"]), 6);
    assert_eq!(get(&kv, "s"), Some(b("plain")));
    run(
        &mut kv,
        KvCommand::Typed(C::ListPush {
            key: b("l"),
            left: true,
            values: vec![b("x")],
            only_existing: false,
        }),
    );
    assert_eq!(
        run(&mut kv, pfadd("l", &["x"])),
        KvResult::Error(KvError::WrongType)
    );
    // Built in process past the decoder's checks: refused, not a panic.
    let bad = KvCommand::HllAdd {
        key: b("hll"),
        registers: vec![(16_384, 1)],
    };
    assert_eq!(kv.execute(&bad), KvResult::Error(KvError::Malformed));
    // The registers travel in the log, not the elements: a register or
    // rank out of range does not decode.
    let mut bad = pfadd("k", &["x"]).encode().to_vec();
    let last = bad.len() - 1;
    bad[last] = 52;
    assert!(KvCommand::decode(Bytes::from(bad)).is_err());
}
