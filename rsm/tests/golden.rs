//! Golden bytes of the snapshot format: a change to the encoding must be a
//! deliberate format change (bump `SNAPSHOT_VERSION`), never an accident.

use bytes::Bytes;
use flotilla_rsm::{ClientSession, KvCommand, KvStore, Rsm, SessionConfig};
use futures_lite::future::block_on;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn snapshot_golden_bytes() {
    let mut rsm = Rsm::new(Box::new(KvStore::new()), SessionConfig::default());
    let mut client = ClientSession::new(2);
    let mut out = Vec::new();
    rsm.apply(
        [
            (1, client.register()),
            (2, client.propose(&KvCommand::put("k", "v").encode())),
        ],
        &mut out,
    );
    client.completed();
    let mut snap = Vec::new();
    block_on(rsm.capture(Bytes::from_static(b"M")).write_to(&mut snap)).unwrap();
    let want = concat!(
        "464c4f54534e4150",           // "FLOTSNAP"
        "0100",                       // version 1
        "0000",                       // flags
        "0200000000000000",           // applied index 2
        "0d00",                       // kind length 13
        "666c6f74696c6c612e6b762f31", // "flotilla.kv/1"
        "01000000",                   // membership length 1
        "4d",                         // "M"
        "2f000000",                   // session table length 47
        "01000000",                   // 1 session
        "0200000000000000",           // client 2
        "0200000000000000",           // last used at index 2
        "0000000000000000",           // responded to 0
        "01000000",                   // 1 cached result
        "0100000000000000",           // series 1
        "03000000",
        "050100", // result: Put { written: true, previous: None }
    );
    let h = hex(&snap);
    assert!(
        h.starts_with(want),
        "header changed:\n got {h}\nwant {want}..."
    );
    // The header CRC, then one data chunk and the trailer.
    let data = concat!(
        "0100000000000000", // 1 pair
        "01000000",
        "6b", // "k"
        "01000000",
        "76", // "v"
    );
    // The KV data ends with the CRC32 of its pairs section.
    let kv_crc = hex(&crc32fast::hash(&hex_decode(data)).to_le_bytes());
    let rest = &h[want.len() + 8..];
    assert!(rest.starts_with("16000000"), "chunk length 22: {rest}");
    assert_eq!(&rest[16..16 + data.len()], data);
    assert_eq!(&rest[16 + data.len()..16 + data.len() + 8], kv_crc);
    let after = &rest[16 + data.len() + 8..];
    assert!(after.starts_with("0000000000000000"), "terminator: {after}");
    assert!(
        after[16..].starts_with("1600000000000000"),
        "data bytes 22: {after}"
    );
    assert!(after.ends_with(&hex(b"FLOTEND\n")));
    assert_eq!(snap.len(), want.len() / 2 + 4 + 8 + 22 + 8 + 8 + 4 + 8);
    // Stable across runs: the CRCs are functions of the bytes above.
    let crc = u32::from_le_bytes(snap[snap.len() - 12..snap.len() - 8].try_into().unwrap());
    assert_eq!(crc, crc32fast::hash(&snap[..snap.len() - 12]));
}
