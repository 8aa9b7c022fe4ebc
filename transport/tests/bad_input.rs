//! Every malformed input closes only its own connection, is counted by
//! reason, and leaves the shard serving its good peers.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use common::{config, msg, recv_n, run, start, wait_until, CLUSTER};
use flotilla_transport::wire::{
    encode_batch_payload, encode_frame, ConnectionKind, FrameKind, Hello, HelloAck, HelloStatus,
    HELLO_ACK_BYTES,
};
use flotilla_transport::{ClusterId, PeerId, Registry, RejectMetrics, Transport};
use futures_lite::future::or;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

type Counter = fn(&RejectMetrics) -> u64;

const SECS_5: Duration = Duration::from_secs(5);

fn hello(from: PeerId, to: PeerId) -> Hello {
    Hello {
        version_min: 1,
        version_max: 1,
        kind: ConnectionKind::Messages,
        cluster: CLUSTER,
        from,
        to,
    }
}

/// Connects, sends `h`, returns the stream and the listener's verdict.
async fn handshake(addr: SocketAddr, h: Hello) -> (TcpStream, HelloStatus) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&h.encode()).await.unwrap();
    let mut ack = [0u8; HELLO_ACK_BYTES];
    s.read_exact(&mut ack).await.unwrap();
    (s, HelloAck::decode(&ack).unwrap().status)
}

/// Asserts the listener closes `s` (EOF or reset) within 5 s.
async fn assert_closed(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    let r = or(
        async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => continue,
                }
            }
        },
        async {
            glommio::timer::sleep(SECS_5).await;
            false
        },
    )
    .await;
    assert!(r, "{what}: connection was not closed within 5 s");
}

fn frame(kind: FrameKind, payload: &[u8]) -> BytesMut {
    let mut f = BytesMut::new();
    encode_frame(&mut f, kind, payload);
    f
}

fn batch(msgs: &[&[u8]]) -> BytesMut {
    let mut p = BytesMut::new();
    encode_batch_payload(&mut p, msgs.iter().copied());
    frame(FrameKind::Batch, &p)
}

/// Sends `bytes` after a good handshake from node 1 and checks the listener
/// closes the connection and counts it under `counter`.
async fn bad_frame(
    b: &Transport,
    bytes: &[u8],
    close_after: bool,
    what: &str,
    counter: fn(&RejectMetrics) -> u64,
) {
    let before = counter(&b.metrics().rejected);
    let (mut s, status) = handshake(b.local_addr(), hello(PeerId::new(1, 5), b.local())).await;
    assert_eq!(status, HelloStatus::Accepted, "{what}");
    // A good batch first: it is delivered, the bad bytes after it are not.
    s.write_all(&batch(&[b"before"])).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if close_after {
        s.close().await.unwrap();
    } else {
        assert_closed(&mut s, what).await;
    }
    wait_until(
        what,
        SECS_5,
        || counter(&b.metrics().rejected),
        |c| *c == before + 1,
    )
    .await;
    let got = recv_n(b, 1, SECS_5).await;
    assert_eq!(
        got,
        vec![(PeerId::new(1, 5), bytes::Bytes::from_static(b"before"))],
        "{what}"
    );
}

#[test]
fn handshake_mismatches_are_refused_with_a_reason() {
    run("handshake_mismatch", Duration::from_secs(30), || async {
        let reg = Registry::new();
        let b = start(config(2, 0), &reg);
        reg.set_shard_addr(PeerId::new(1, 0), "127.0.0.1:1".parse().unwrap()); // node 1 is known
        let addr = b.local_addr();
        let me = b.local();
        let from = PeerId::new(1, 0);

        let cases: Vec<(Hello, HelloStatus, Counter)> = vec![
            (
                Hello {
                    cluster: ClusterId(999),
                    ..hello(from, me)
                },
                HelloStatus::ClusterMismatch,
                |r| r.cluster_mismatch,
            ),
            (
                hello(PeerId::new(42, 0), me),
                HelloStatus::UnknownNode,
                |r| r.unknown_node,
            ),
            (
                hello(from, PeerId::new(2, 1)),
                HelloStatus::WrongTarget,
                |r| r.wrong_target,
            ),
            (
                hello(from, PeerId::new(3, 0)),
                HelloStatus::WrongTarget,
                |r| r.wrong_target,
            ),
            (
                Hello {
                    version_min: 2,
                    version_max: 9,
                    ..hello(from, me)
                },
                HelloStatus::UnsupportedVersion,
                |r| r.unsupported_version,
            ),
        ];
        for (h, want, counter) in cases {
            let before = counter(&b.metrics().rejected);
            let (mut s, status) = handshake(addr, h).await;
            assert_eq!(status, want, "hello {h:?}");
            assert_closed(&mut s, &format!("{want:?}")).await;
            assert_eq!(
                counter(&b.metrics().rejected),
                before + 1,
                "{want:?} counted"
            );
        }
        assert_eq!(b.metrics().connections_accepted, 0);

        // A real transport of another cluster: its dials fail, nothing arrives.
        let mut other = config(1, 0);
        other.cluster = ClusterId(999);
        let o = start(other, &reg);
        o.send(me, msg(1)).unwrap();
        let m = wait_until(
            "dial refused",
            SECS_5,
            || o.metrics().peer(me),
            |m| m.dial_failures >= 2,
        )
        .await;
        assert_eq!(m.messages_sent, 0);
        assert!(recv_n(&b, 1, Duration::from_millis(50)).await.is_empty());
        o.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn garbage_and_silent_handshakes_close_only_that_connection() {
    run("handshake_garbage", Duration::from_secs(30), || async {
        let reg = Registry::new();
        let a = start(config(1, 0), &reg);
        let b = start(config(2, 0), &reg);
        // A good peer connected before, throughout and after.
        a.send(b.local(), msg(0)).unwrap();
        assert_eq!(recv_n(&b, 1, SECS_5).await.len(), 1);

        let mut s = TcpStream::connect(b.local_addr()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_closed(&mut s, "http request").await;
        assert_eq!(b.metrics().rejected.handshake_garbage, 1);

        let mut bad_crc = hello(a.local(), b.local()).encode();
        bad_crc[30] ^= 1;
        let mut s = TcpStream::connect(b.local_addr()).await.unwrap();
        s.write_all(&bad_crc).await.unwrap();
        assert_closed(&mut s, "hello with a bad crc").await;
        assert_eq!(b.metrics().rejected.handshake_garbage, 2);

        // Half a hello, then the peer hangs up.
        let mut s = TcpStream::connect(b.local_addr()).await.unwrap();
        s.write_all(&hello(a.local(), b.local()).encode()[..20])
            .await
            .unwrap();
        s.close().await.unwrap();
        wait_until(
            "truncated hello counted",
            SECS_5,
            || b.metrics().rejected.handshake_garbage,
            |n| *n == 3,
        )
        .await;

        // Connects and says nothing: closed after handshake_timeout (300 ms).
        let mut silent = TcpStream::connect(b.local_addr()).await.unwrap();
        let mut partial = TcpStream::connect(b.local_addr()).await.unwrap();
        partial
            .write_all(&hello(a.local(), b.local()).encode()[..10])
            .await
            .unwrap();
        // Meanwhile the good peer is served.
        a.send(b.local(), msg(1)).unwrap();
        assert_eq!(recv_n(&b, 1, SECS_5).await, vec![(a.local(), msg(1))]);
        assert_closed(&mut silent, "silent peer").await;
        assert_closed(&mut partial, "stalled hello").await;
        assert_eq!(b.metrics().rejected.handshake_timeout, 2);

        a.send(b.local(), msg(2)).unwrap();
        assert_eq!(recv_n(&b, 1, SECS_5).await, vec![(a.local(), msg(2))]);
        assert_eq!(
            a.metrics().peer(b.local()).reconnects,
            0,
            "the good connection never broke"
        );
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn every_bad_frame_closes_its_connection_and_is_counted() {
    run("bad_frames", Duration::from_secs(60), || async {
        let reg = Registry::new();
        let a = start(config(1, 0), &reg);
        let mut cb = config(2, 0);
        cb.frame_bytes_max = 4096;
        cb.snapshot_chunk_bytes = 1024;
        let b = start(cb, &reg);
        a.send(b.local(), msg(0)).unwrap();
        assert_eq!(recv_n(&b, 1, SECS_5).await.len(), 1);

        let good = batch(&[b"hello"]);

        let mut wrong_magic = good.clone();
        wrong_magic[0] = b'X';
        bad_frame(&b, &wrong_magic, false, "wrong magic", |r| r.bad_magic).await;

        let mut wrong_version = good.clone();
        wrong_version[4] = 7;
        bad_frame(&b, &wrong_version, false, "unknown version", |r| {
            r.bad_version
        })
        .await;

        let mut huge = good.clone();
        huge[8..12].copy_from_slice(&4097u32.to_le_bytes());
        bad_frame(&b, &huge, false, "length over the limit", |r| r.too_large).await;
        bad_frame(&b, &huge[..16], false, "oversized header alone", |r| {
            r.too_large
        })
        .await;

        let mut bad_crc = good.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xFF;
        bad_frame(&b, &bad_crc, false, "bad crc", |r| r.bad_crc).await;

        // A message whose length runs past its batch; the CRC is valid.
        let mut p = BytesMut::new();
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&100u32.to_le_bytes());
        p.extend_from_slice(b"short");
        bad_frame(
            &b,
            &frame(FrameKind::Batch, &p),
            false,
            "truncated message",
            |r| r.malformed,
        )
        .await;
        bad_frame(
            &b,
            &frame(FrameKind::Batch, &[]),
            false,
            "empty batch payload",
            |r| r.malformed,
        )
        .await;

        // A snapshot frame on a message connection.
        bad_frame(
            &b,
            &frame(FrameKind::SnapshotChunk, b"12345678x"),
            false,
            "wrong kind",
            |r| r.bad_kind,
        )
        .await;
        let mut unknown_kind = good.clone();
        unknown_kind[5] = 200;
        bad_frame(&b, &unknown_kind, false, "unknown kind", |r| r.bad_kind).await;

        // The peer hangs up in the middle of a frame.
        bad_frame(&b, &good[..good.len() - 2], true, "truncated frame", |r| {
            r.truncated
        })
        .await;
        bad_frame(&b, &good[..7], true, "truncated header", |r| r.truncated).await;

        // The good peer's connection was never disturbed.
        a.send(b.local(), msg(1)).unwrap();
        assert_eq!(recv_n(&b, 1, SECS_5).await, vec![(a.local(), msg(1))]);
        assert_eq!(a.metrics().peer(b.local()).reconnects, 0);
        let r = b.metrics().rejected;
        assert_eq!(r.total(), 11, "{r:?}");
        wait_until(
            "bad connections closed",
            SECS_5,
            || b.metrics().connections_open,
            |n| *n == 1,
        )
        .await;
        a.shutdown().await;
        b.shutdown().await;
    });
}
