//! The bad inputs on the apply path: a truncated or corrupt command
//! envelope is an error result for that command, identical on every
//! replica however the entries are batched, and the state stays exactly as
//! if the entry had been a no-op. (Corrupt snapshot streams: `snapshot.rs`.)

use bytes::Bytes;
use flotilla_rsm::{
    encode_noop, Applied, ApplyError, ClientSession, DecodeError, Envelope, KvCommand, KvError,
    KvResult, KvStore, Rsm, SessionConfig, SESSION_HEADER_BYTES,
};
use futures_lite::future::block_on;

fn kv_rsm() -> Rsm {
    Rsm::new(Box::new(KvStore::new()), SessionConfig::default())
}

fn snapshot(rsm: &Rsm) -> Vec<u8> {
    let mut buf = Vec::new();
    block_on(rsm.capture(Bytes::from_static(b"m")).write_to(&mut buf)).unwrap();
    buf
}

/// Entries 1..=4: two registered sessions (clients 1 and 2), one applied
/// session command of client 1, one plain put.
fn base() -> Vec<(u64, Bytes)> {
    let mut c = ClientSession::new(1);
    let mut entries = vec![(1, c.register()), (2, ClientSession::new(2).register())];
    entries.push((3, c.propose(&KvCommand::put("a", "1").encode())));
    c.completed();
    entries.push((4, encode_noop(&KvCommand::put("b", "2").encode())));
    entries
}

/// The bad entry's index.
const BAD: u64 = 5;

/// The entry after the bad one: a session command of client 2 that reads
/// and writes, so a damaged state or session table would show in its result.
fn after() -> (u64, Bytes) {
    let c = ClientSession::new(2);
    (
        BAD + 1,
        c.propose(
            &KvCommand::Increment {
                key: "n".into(),
                delta: 1,
            }
            .encode(),
        ),
    )
}

/// Well-formed envelopes of every kind, to be truncated and corrupted.
fn valid_envelopes() -> Vec<Bytes> {
    let mut c = ClientSession::new(1);
    c.completed();
    vec![
        c.propose(&KvCommand::put("k", "value").encode()),
        encode_noop(&KvCommand::put("k", "value").encode()),
        flotilla_rsm::tag_noop(&encode_noop(&KvCommand::put("k", "value").encode()), 7).unwrap(),
        Envelope::Register { client_id: 9 }.encode(),
        Envelope::Unregister { client_id: 1 }.encode(),
    ]
}

/// Applies base + `bad` at index `BAD` + `after` three ways (one batch, one
/// entry per call, bad entry alone) and checks they agree result for result
/// and byte for byte in the snapshot. Returns the bad entry's result.
fn apply_everywhere(bad: &Bytes) -> (Result<Bytes, ApplyError>, Rsm) {
    let mut entries = base();
    entries.push((BAD, bad.clone()));
    entries.push(after());

    let mut one_batch = kv_rsm();
    let mut out_a = Vec::new();
    one_batch.apply(entries.iter().cloned(), &mut out_a);

    let mut one_by_one = kv_rsm();
    let mut out_b = Vec::new();
    for e in &entries {
        one_by_one.apply([e.clone()], &mut out_b);
    }

    let mut split = kv_rsm();
    let mut out_c = Vec::new();
    split.apply(entries[..5].iter().cloned(), &mut out_c);
    split.apply(entries[5..].iter().cloned(), &mut out_c);

    assert_eq!(out_a, out_b, "batching changed results for {bad:02x?}");
    assert_eq!(out_a, out_c, "batching changed results for {bad:02x?}");
    let snap = snapshot(&one_batch);
    assert_eq!(
        snap,
        snapshot(&one_by_one),
        "replicas diverged for {bad:02x?}"
    );
    assert_eq!(snap, snapshot(&split), "replicas diverged for {bad:02x?}");
    let result = out_a[BAD as usize - 1].result.clone();
    (result, one_batch)
}

/// The replica on which the bad entry was a raft no-op.
fn skipped() -> (Rsm, Vec<Applied>) {
    let mut rsm = kv_rsm();
    let mut out = Vec::new();
    rsm.apply(base(), &mut out);
    rsm.advance_to(BAD);
    rsm.apply([after()], &mut out);
    (rsm, out)
}

fn kv_state(rsm: &Rsm) -> KvResult {
    let q = flotilla_rsm::KvQuery::Scan {
        start: Bytes::new(),
        end: None,
        limit: 1000,
        keys_only: false,
    };
    KvResult::decode(rsm.query(&q.encode()).unwrap()).unwrap()
}

/// Checks one damaged entry: deterministic everywhere, and an error result
/// leaves the state exactly as a no-op would have.
fn check(bad: &Bytes) -> Result<Bytes, ApplyError> {
    let (result, rsm) = apply_everywhere(bad);
    let (noop, noop_out) = skipped();
    match &result {
        Err(_) => {
            assert_eq!(
                snapshot(&rsm),
                snapshot(&noop),
                "rejected entry {bad:02x?} changed the state"
            );
            let mut out = Vec::new();
            let mut again = kv_rsm();
            let mut entries = base();
            entries.push((BAD, bad.clone()));
            entries.push(after());
            again.apply(entries, &mut out);
            assert_eq!(
                out[BAD as usize],
                noop_out[BAD as usize - 1],
                "the next command saw a different state"
            );
        }
        Ok(r) => {
            if KvResult::decode(r) == Ok(KvResult::Error(KvError::Malformed)) {
                assert_eq!(
                    kv_state(&rsm),
                    kv_state(&noop),
                    "malformed command changed the map"
                );
            }
        }
    }
    result
}

#[test]
fn every_truncated_envelope_is_an_error_result_and_changes_nothing() {
    let mut checked = 0;
    for env in valid_envelopes() {
        // 0 bytes is a raft no-op entry, not a command.
        for len in 1..env.len() {
            let cut = env.slice(..len);
            let result = check(&cut);
            let header_len = match env[0] {
                0x01 => 1,
                0x02 => SESSION_HEADER_BYTES,
                _ => 9,
            };
            if len < header_len {
                assert!(
                    matches!(
                        result,
                        Err(ApplyError::BadEnvelope(DecodeError::Truncated { .. }))
                    ),
                    "{cut:02x?}: {result:?}"
                );
            } else {
                // The envelope is whole; the KV command inside is cut.
                let r = result.expect("a result");
                assert_eq!(
                    KvResult::decode(&r).unwrap(),
                    KvResult::Error(KvError::Malformed),
                    "{cut:02x?}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 60);
}

#[test]
fn every_corrupted_envelope_byte_is_deterministic_and_errors_change_nothing() {
    let mut errors = 0;
    for env in valid_envelopes() {
        for at in 0..env.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = env.to_vec();
                bad[at] ^= mask;
                if check(&Bytes::from(bad)).is_err() {
                    errors += 1;
                }
            }
        }
    }
    assert!(errors > 20, "corruptions were rejected: {errors}");
}

/// Whether an error is the expected one.
type ErrorCheck = fn(&ApplyError) -> bool;

#[test]
fn specific_envelope_errors() {
    let cases: Vec<(Bytes, ErrorCheck)> = vec![
        (Bytes::from_static(&[0x00, 1, 2]), |e| {
            matches!(
                e,
                ApplyError::BadEnvelope(DecodeError::UnknownTag { tag: 0, .. })
            )
        }),
        (Bytes::from_static(&[0xff]), |e| {
            matches!(
                e,
                ApplyError::BadEnvelope(DecodeError::UnknownTag { tag: 0xff, .. })
            )
        }),
        // Register with a trailing byte.
        (
            {
                let mut b = Envelope::Register { client_id: 9 }.encode().to_vec();
                b.push(0);
                Bytes::from(b)
            },
            |e| {
                matches!(
                    e,
                    ApplyError::BadEnvelope(DecodeError::TrailingBytes { len: 1 })
                )
            },
        ),
        // Client id 0 is reserved.
        (Envelope::Register { client_id: 0 }.encode(), |e| {
            matches!(
                e,
                ApplyError::BadEnvelope(DecodeError::Invalid { what: "client id" })
            )
        }),
        (
            {
                let mut b = ClientSession::new(1).propose(b"x").to_vec();
                b[9..17].fill(0); // series id 0
                Bytes::from(b)
            },
            |e| {
                matches!(
                    e,
                    ApplyError::BadEnvelope(DecodeError::Invalid { what: "series id" })
                )
            },
        ),
        // A client claiming to have seen the response of this very command.
        (
            {
                let mut b = ClientSession::new(1).propose(b"x").to_vec();
                b[17..25].copy_from_slice(&1u64.to_le_bytes()); // responded_to = series
                Bytes::from(b)
            },
            |e| {
                matches!(
                    e,
                    ApplyError::BadEnvelope(DecodeError::Invalid {
                        what: "responded to"
                    })
                )
            },
        ),
        // A session command of a client that never registered.
        (ClientSession::new(77).propose(b"x"), |e| {
            matches!(e, ApplyError::SessionNotFound { client_id: 77 })
        }),
    ];
    for (bad, is_expected) in cases {
        let result = check(&bad);
        match result {
            Err(e) => assert!(is_expected(&e), "{bad:02x?}: {e:?}"),
            Ok(r) => panic!("{bad:02x?} accepted: {r:02x?}"),
        }
    }
}
