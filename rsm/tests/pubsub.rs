//! PUBLISH's message ring through the state machine interface: messages
//! carry their entry's log index, a reader continues where it stopped, a
//! `MULTI` publishes as one entry, the ring is bounded and says what it
//! dropped, and it is not data (no key, not in snapshots).

use bytes::Bytes;
use flotilla_rsm::kv::{MESSAGES_KEPT_MAX, VALUE_BYTES_MAX};
use flotilla_rsm::{KvCommand, KvError, KvQuery, KvResult, KvStore, SmEntry, StateMachine};
use futures_lite::future::block_on;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn publish(channel: &str, message: &str) -> KvCommand {
    KvCommand::Publish {
        channel: b(channel),
        message: b(message),
    }
}

/// Applies `cmds` as entries `first..`, in one call; their results.
fn apply(kv: &mut KvStore, first: u64, cmds: &[KvCommand]) -> Vec<KvResult> {
    let mut entries: Vec<SmEntry> = cmds
        .iter()
        .enumerate()
        .map(|(i, c)| SmEntry {
            index: first + i as u64,
            cmd: c.encode(),
            result: Bytes::new(),
        })
        .collect();
    kv.apply(&mut entries);
    entries
        .iter()
        .map(|e| KvResult::decode(e.result.clone()).expect("result decodes"))
        .collect()
}

/// `(through, evicted, [(index, channel, message)])` through the query
/// interface (as a node reads it).
fn messages(kv: &KvStore, after: u64, limit: u32) -> (u64, u64, Vec<(u64, String, String)>) {
    let q = KvQuery::Messages { after, limit };
    let raw = kv.query(&q.encode()).expect("query");
    match KvResult::decode(raw).expect("decodes") {
        KvResult::Messages {
            through,
            evicted,
            messages,
        } => (
            through,
            evicted,
            messages
                .into_iter()
                .map(|(i, c, m)| {
                    (
                        i,
                        String::from_utf8(c.to_vec()).unwrap(),
                        String::from_utf8(m.to_vec()).unwrap(),
                    )
                })
                .collect(),
        ),
        other => panic!("not messages: {other:?}"),
    }
}

fn snapshot(kv: &KvStore) -> Vec<u8> {
    let mut out = Vec::new();
    block_on(kv.capture().write_to(&mut out)).expect("write");
    out
}

fn m(i: u64, c: &str, msg: &str) -> (u64, String, String) {
    (i, c.into(), msg.into())
}

#[test]
fn messages_carry_their_log_index_and_readers_continue() {
    let mut kv = KvStore::new();
    let results = apply(
        &mut kv,
        10,
        &[
            publish("news", "a"),
            KvCommand::put("k", "v"),
            publish("sport", "b"),
        ],
    );
    assert_eq!(results[0], KvResult::Ok);
    assert_eq!(results[2], KvResult::Ok);
    // Where new messages start: after everything applied.
    assert_eq!(messages(&kv, u64::MAX, 100).0, 12);
    assert_eq!(
        messages(&kv, 0, 100),
        (12, 0, vec![m(10, "news", "a"), m(12, "sport", "b")])
    );
    assert_eq!(messages(&kv, 10, 100), (12, 0, vec![m(12, "sport", "b")]));
    // A limit stops before an entry; the next read starts with it.
    assert_eq!(messages(&kv, 0, 1), (11, 0, vec![m(10, "news", "a")]));
    apply(&mut kv, 13, &[publish("news", "c")]);
    assert_eq!(messages(&kv, 12, 100), (13, 0, vec![m(13, "news", "c")]));
    // Publishing is not a key.
    assert_eq!(kv.len(), 1);
}

#[test]
fn a_transaction_publishes_as_one_entry() {
    let mut kv = KvStore::new();
    let multi = KvCommand::Batch {
        guards: vec![],
        commands: vec![
            publish("a", "1"),
            KvCommand::put("k", "v"),
            publish("b", "2"),
        ],
    };
    let r = apply(&mut kv, 7, &[multi]);
    assert_eq!(
        r[0],
        KvResult::Batch(vec![
            KvResult::Ok,
            KvResult::Put {
                written: true,
                previous: None
            },
            KvResult::Ok
        ])
    );
    // Never split, even by a limit of one.
    assert_eq!(
        messages(&kv, 0, 1),
        (7, 0, vec![m(7, "a", "1"), m(7, "b", "2")])
    );
}

#[test]
fn the_ring_is_bounded_and_tells_a_late_reader() {
    let mut kv = KvStore::new();
    let cmds: Vec<KvCommand> = (0..MESSAGES_KEPT_MAX + 5)
        .map(|i| publish("c", &i.to_string()))
        .collect();
    apply(&mut kv, 1, &cmds);
    let (through, evicted, got) = messages(&kv, 0, u32::MAX);
    assert_eq!(evicted, 5, "the five oldest went");
    assert_eq!(got.len(), MESSAGES_KEPT_MAX);
    assert_eq!(got[0], m(6, "c", "5"));
    assert_eq!(through, MESSAGES_KEPT_MAX as u64 + 5);
}

#[test]
fn messages_are_not_data() {
    let mut kv = KvStore::new();
    apply(&mut kv, 1, &[KvCommand::put("k", "v")]);
    let before = snapshot(&kv);
    apply(&mut kv, 2, &[publish("c", "hello")]);
    assert_eq!(snapshot(&kv), before, "a snapshot leaves messages out");
    // A replica recovered from it has the data and no messages.
    let mut other = KvStore::new();
    block_on(other.recover(&mut &before[..])).expect("recover");
    assert_eq!(other.get(b"k"), Some(&b"v"[..]));
    assert_eq!(messages(&other, 0, 100).2, vec![]);
}

#[test]
fn oversized_messages_and_channels_are_refused() {
    let mut kv = KvStore::new();
    let big = Bytes::from(vec![b'x'; VALUE_BYTES_MAX + 1]);
    // Built in process (the log's decoder refuses such a length before).
    let message = KvCommand::Publish {
        channel: b("c"),
        message: big.clone(),
    };
    assert_eq!(
        kv.execute(&message),
        KvResult::Error(KvError::ValueTooLarge)
    );
    let channel = KvCommand::Publish {
        channel: big,
        message: b("m"),
    };
    assert_eq!(kv.execute(&channel), KvResult::Error(KvError::KeyTooLarge));
    assert_eq!(messages(&kv, 0, 100).2, vec![]);
}
