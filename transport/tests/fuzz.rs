//! A proptest-based fuzzer for everything that parses bytes from the
//! network: the frame header, the CRC check, the batch decoder, the framed
//! stream splitter and the handshake parsers. Decoding arbitrary or mutated
//! bytes must return an error or a value, never panic; valid input must
//! round-trip exactly.
//!
//! Run it longer with `PROPTEST_CASES=1000000 cargo test -p flotilla-transport --test fuzz --release`.

use bytes::{Bytes, BytesMut};
use flotilla_transport::wire::{
    decode_batch, encode_batch_payload, encode_frame, parse_frame_header, take_frame,
    ConnectionKind, FrameKind, Hello, HelloAck, FRAME_HEADER_BYTES, HELLO_ACK_BYTES, HELLO_BYTES,
};
use flotilla_transport::{ClusterId, PeerId};
use proptest::prelude::*;

const FRAME_BYTES_MAX: u32 = 1 << 16;

/// Feeds `bytes` to the stream splitter in pieces, as a connection would,
/// decoding every frame it yields, until an error or the end.
fn drive_stream(bytes: &[u8], piece: usize) -> Result<Vec<Vec<Bytes>>, String> {
    let mut buf = BytesMut::new();
    let mut batches = vec![];
    for chunk in bytes.chunks(piece.max(1)) {
        buf.extend_from_slice(chunk);
        loop {
            match take_frame(&mut buf, FRAME_BYTES_MAX) {
                Ok(Some((h, payload))) => {
                    assert_eq!(payload.len(), h.payload_len as usize);
                    if h.kind == FrameKind::Batch {
                        batches.push(decode_batch(&payload).map_err(|e| e.to_string())?);
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    Ok(batches)
}

fn arb_messages() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..32)
}

fn encode_stream(batches: &[Vec<Vec<u8>>]) -> BytesMut {
    let mut out = BytesMut::new();
    for b in batches {
        let mut p = BytesMut::new();
        encode_batch_payload(&mut p, b.iter().map(|m| m.as_slice()));
        encode_frame(&mut out, FrameKind::Batch, &p);
    }
    out
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_frame_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512), piece in 1usize..64) {
        let _ = drive_stream(&bytes, piece);
        if bytes.len() >= FRAME_HEADER_BYTES {
            let _ = parse_frame_header(&bytes, FRAME_BYTES_MAX);
        }
        let _ = decode_batch(&Bytes::from(bytes));
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_header_never_panic(payload in prop::collection::vec(any::<u8>(), 0..512), kind in 1u8..8) {
        // A correct header and CRC over garbage: reaches the payload decoders.
        let mut out = BytesMut::new();
        encode_frame(&mut out, FrameKind::Batch, &payload);
        out[5] = kind;
        let _ = drive_stream(&out, 7);
    }

    #[test]
    fn batches_round_trip(batches in prop::collection::vec(arb_messages(), 0..8), piece in 1usize..200) {
        let stream = encode_stream(&batches);
        let decoded = drive_stream(&stream, piece).expect("valid stream decodes");
        let decoded: Vec<Vec<Vec<u8>>> = decoded
            .into_iter()
            .map(|b| b.into_iter().map(|m| m.to_vec()).collect())
            .collect();
        prop_assert_eq!(decoded, batches);
    }

    #[test]
    fn mutated_streams_fail_cleanly(batches in prop::collection::vec(arb_messages(), 1..4), at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let mut stream = encode_stream(&batches);
        let i = at.index(stream.len());
        stream[i] ^= xor;
        // Any single-byte corruption is detected (magic, version, kind,
        // flags, length or CRC) or leaves an incomplete frame; it is never
        // accepted as the original data.
        if let Ok(decoded) = drive_stream(&stream, 13) {
            let decoded: Vec<Vec<Vec<u8>>> = decoded
                .into_iter()
                .map(|b| b.into_iter().map(|m| m.to_vec()).collect())
                .collect();
            prop_assert_ne!(decoded, batches);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_handshake_parsers(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = Hello::decode(&bytes);
        let _ = HelloAck::decode(&bytes);
    }

    #[test]
    fn hello_round_trips_and_rejects_corruption(
        vmin in any::<u8>(), vspan in 0u8..4, snapshot in any::<bool>(), cluster in any::<u64>(),
        fnode in any::<u64>(), fshard in any::<u32>(), tnode in any::<u64>(), tshard in any::<u32>(),
        at in 0usize..HELLO_BYTES, xor in 1u8..=255,
    ) {
        let h = Hello {
            version_min: vmin,
            version_max: vmin.saturating_add(vspan),
            kind: if snapshot { ConnectionKind::Snapshot } else { ConnectionKind::Messages },
            cluster: ClusterId(cluster),
            from: PeerId::new(fnode, fshard),
            to: PeerId::new(tnode, tshard),
        };
        let mut b = h.encode();
        prop_assert_eq!(Hello::decode(&b), Ok(h));
        b[at] ^= xor;
        prop_assert!(Hello::decode(&b).is_err());
        let ack = HelloAck { version: vmin, status: flotilla_transport::wire::HelloStatus::Accepted };
        let mut a = ack.encode();
        prop_assert_eq!(HelloAck::decode(&a), Ok(ack));
        a[at % HELLO_ACK_BYTES] ^= xor;
        prop_assert!(HelloAck::decode(&a).is_err());
    }
}
