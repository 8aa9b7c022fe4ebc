//! Snapshots: point-in-time capture, byte-exact round trips, every kind of
//! corruption reported (never a panic, never a half-replaced state), and a
//! round trip through a real file on a glommio executor.

use bytes::Bytes;
use flotilla_rsm::{
    encode_noop, ClientSession, KvCommand, KvQuery, KvResult, KvStore, LocalBoxFuture, QueryError,
    Rsm, SessionConfig, SmEntry, SmSnapshot, SnapshotError, StateMachine,
};
use futures_lite::future::block_on;
use futures_lite::io::AsyncRead;
use proptest::prelude::*;

/// The engine's executor watchdog (`flotilla::exec`), compiled in from the
/// same file: this crate cannot depend on the engine.
#[path = "../../engine/src/exec.rs"]
#[allow(dead_code)]
mod exec;

fn kv_rsm() -> Rsm {
    Rsm::new(Box::new(KvStore::new()), SessionConfig::default())
}

fn put(key: &str, value: &[u8]) -> Bytes {
    encode_noop(&KvCommand::put(key.to_owned(), Bytes::copy_from_slice(value)).encode())
}

fn write(rsm: &Rsm, membership: &'static [u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let info = block_on(
        rsm.capture(Bytes::from_static(membership))
            .write_to(&mut out),
    )
    .expect("write");
    assert_eq!(info.total_bytes, out.len() as u64);
    out
}

fn count(rsm: &Rsm) -> KvResult {
    KvResult::decode(rsm.query(&KvQuery::Count.encode()).unwrap()).unwrap()
}

/// A group with sessions and ~`keys` KiB of data (several 64 KiB chunks).
fn populated(keys: usize) -> Rsm {
    let mut rsm = kv_rsm();
    let mut out = Vec::new();
    let mut client = ClientSession::new(77);
    let mut entries = vec![(1, client.register())];
    for i in 0..keys {
        entries.push((
            entries.len() as u64 + 1,
            put(&format!("key/{i:05}"), &[i as u8; 1000]),
        ));
    }
    entries.push((
        entries.len() as u64 + 1,
        client.propose(
            &KvCommand::Increment {
                key: "n".into(),
                delta: 2,
            }
            .encode(),
        ),
    ));
    client.completed();
    entries.push((
        entries.len() as u64 + 1,
        client.propose(&KvCommand::get("n").encode()),
    ));
    rsm.apply(entries, &mut out);
    assert!(out.iter().all(|a| a.result.is_ok()));
    rsm
}

#[test]
fn capture_is_a_point_in_time_view() {
    let mut rsm = populated(10);
    let at = rsm.applied_index();
    let before = write(&rsm, b"m1");
    let captured = rsm.capture(Bytes::from_static(b"m1"));
    // Keep applying: overwrite, delete and add keys the view shares.
    let mut out = Vec::new();
    let next = at + 1;
    rsm.apply(
        [
            (next, put("key/00003", b"changed")),
            (
                next + 1,
                encode_noop(&KvCommand::delete("key/00004").encode()),
            ),
            (next + 2, put("zzz", b"new")),
        ],
        &mut out,
    );
    let mut later = Vec::new();
    block_on(captured.write_to(&mut later)).unwrap();
    assert_eq!(later, before, "the captured view did not move");
    let mut again = Vec::new();
    block_on(captured.write_to(&mut again)).unwrap();
    assert_eq!(again, before, "writing twice gives the same bytes");

    let mut replica = kv_rsm();
    let meta = block_on(replica.recover(&mut &later[..])).unwrap();
    assert_eq!(meta.applied_index, at);
    assert_eq!(&meta.membership[..], b"m1");
    assert_eq!(count(&replica), KvResult::Count(11)); // 10 keys + "n"
    let got = KvResult::decode(
        replica
            .query(
                &KvQuery::Get {
                    key: "key/00003".into(),
                }
                .encode(),
            )
            .unwrap(),
    )
    .unwrap();
    assert_eq!(got, KvResult::Value(Some(Bytes::from(vec![3u8; 1000]))));
    assert_eq!(replica.sessions().len(), 1);
}

#[test]
fn sessions_survive_recovery() {
    let mut rsm = kv_rsm();
    let client = ClientSession::new(5);
    let incr = KvCommand::Increment {
        key: "c".into(),
        delta: 1,
    }
    .encode();
    let mut out = Vec::new();
    rsm.apply(
        [(1, client.register()), (2, client.propose(&incr))],
        &mut out,
    );
    let snap = write(&rsm, b"");
    let mut replica = kv_rsm();
    block_on(replica.recover(&mut &snap[..])).unwrap();
    // The retry arrives after the replica was rebuilt from the snapshot.
    let mut out2 = Vec::new();
    replica.apply([(3, client.propose(&incr))], &mut out2);
    assert_eq!(out2[0].result, out[1].result);
    assert_eq!(
        KvResult::decode(out2[0].result.as_ref().unwrap()).unwrap(),
        KvResult::Int(1)
    );
}

/// Recovery into `target` must fail and leave it exactly as it was.
fn assert_rejected(target: &mut Rsm, stream: &[u8]) -> SnapshotError {
    let before = write(target, b"t");
    let applied = target.applied_index();
    let err = match block_on(target.recover(&mut &stream[..])) {
        Ok(meta) => panic!("corrupt snapshot accepted (meta {meta:?})"),
        Err(e) => e,
    };
    assert_eq!(target.applied_index(), applied);
    assert_eq!(
        write(target, b"t"),
        before,
        "state changed by a failed recovery"
    );
    err
}

#[test]
fn every_corruption_is_detected_and_state_untouched() {
    let snap = write(&populated(150), b"membership-bytes");
    assert!(snap.len() > 2 * 64 * 1024, "several chunks: {}", snap.len());
    let mut target = kv_rsm();
    let mut out = Vec::new();
    target.apply([(1, put("mine", b"keep me"))], &mut out);

    let mut positions: Vec<usize> = (0..300).collect();
    positions.extend((300..snap.len()).step_by(251));
    positions.extend(snap.len() - 64..snap.len());
    for &p in &positions {
        let mut bad = snap.clone();
        bad[p] ^= 0x20;
        assert_rejected(&mut target, &bad);
    }
    for cut in (0..snap.len())
        .step_by(997)
        .chain([snap.len() - 1, snap.len() - 9])
    {
        assert_rejected(&mut target, &snap[..cut]);
    }

    // Specific, clear errors.
    let mut bad = snap.clone();
    bad[0] = b'X';
    assert!(matches!(
        assert_rejected(&mut target, &bad),
        SnapshotError::BadMagic { .. }
    ));
    let mut bad = snap.clone();
    bad[8] = 9;
    assert!(matches!(
        assert_rejected(&mut target, &bad),
        SnapshotError::UnsupportedVersion { version: 9 }
    ));
    let mut bad = snap.clone();
    bad[40] ^= 1; // inside the kind name / membership
    assert!(matches!(
        assert_rejected(&mut target, &bad),
        SnapshotError::Checksum {
            section: "header",
            ..
        }
    ));
    let mut bad = snap.clone();
    let mid = snap.len() / 2;
    bad[mid] ^= 1;
    assert!(matches!(
        assert_rejected(&mut target, &bad),
        SnapshotError::Checksum {
            section: "chunk",
            ..
        }
    ));
    let mut bad = snap.clone();
    let n = bad.len();
    bad[n - 20] ^= 1; // data_bytes in the trailer
    assert!(matches!(
        assert_rejected(&mut target, &bad),
        SnapshotError::Checksum {
            section: "stream",
            ..
        }
    ));
    assert!(matches!(
        assert_rejected(&mut target, &snap[..snap.len() - 30]),
        SnapshotError::Truncated
    ));
    let mut trailing = snap.clone();
    trailing.extend_from_slice(b"x");
    // Bytes after the end magic are not read: the stream may go on.
    let mut fresh = kv_rsm();
    block_on(fresh.recover(&mut &trailing[..])).unwrap();

    // The intact snapshot still loads into the same target.
    block_on(target.recover(&mut &snap[..])).unwrap();
    assert_eq!(count(&target), KvResult::Count(151));
}

#[test]
fn corrupt_chunk_length_does_not_allocate_or_panic() {
    let snap = write(&populated(3), b"");
    // Find the first chunk header: right after the header CRC. Parse the
    // header lengths as the format says.
    let kind_len = u16::from_le_bytes([snap[20], snap[21]]) as usize;
    let mut at = 22 + kind_len;
    let mlen = u32::from_le_bytes(snap[at..at + 4].try_into().unwrap()) as usize;
    at += 4 + mlen;
    let slen = u32::from_le_bytes(snap[at..at + 4].try_into().unwrap()) as usize;
    at += 4 + slen + 4;
    let mut bad = snap.clone();
    bad[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut target = kv_rsm();
    assert!(matches!(
        assert_rejected(&mut target, &bad),
        SnapshotError::TooLarge { what: "chunk", .. }
    ));
}

/// A different kind of state machine (also proves dyn-compatibility).
struct Other;

impl StateMachine for Other {
    fn kind(&self) -> &str {
        "test.other"
    }
    fn apply(&mut self, _: &mut [SmEntry]) {}
    fn query(&self, _: &[u8]) -> Result<Bytes, QueryError> {
        Err(QueryError::Unsupported)
    }
    fn capture(&self) -> Box<dyn SmSnapshot> {
        KvStore::new().capture()
    }
    fn fresh(&self) -> Box<dyn StateMachine> {
        Box::new(Other)
    }
    fn recover<'a>(
        &'a mut self,
        _: &'a mut (dyn AsyncRead + Unpin),
    ) -> LocalBoxFuture<'a, Result<(), SnapshotError>> {
        Box::pin(async { Ok(()) })
    }
}

#[test]
fn kind_mismatch_is_rejected() {
    let snap = write(&populated(2), b"");
    let mut other = Rsm::new(Box::new(Other), SessionConfig::default());
    match block_on(other.recover(&mut &snap[..])) {
        Err(SnapshotError::KindMismatch { expected, found }) => {
            assert_eq!(
                (expected.as_str(), found.as_str()),
                ("test.other", "flotilla.kv/1")
            );
        }
        other => panic!("expected a kind mismatch, got {other:?}"),
    }
}

#[test]
fn stale_snapshot_is_not_installed() {
    let old = write(&populated(2), b"");
    let mut rsm = populated(5);
    let applied = rsm.applied_index();
    let loaded = block_on(rsm.loader().load(&mut &old[..])).unwrap();
    assert!(matches!(
        rsm.install(loaded),
        Err(SnapshotError::Stale { .. })
    ));
    assert_eq!(rsm.applied_index(), applied);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut rsm = kv_rsm();
        prop_assert!(block_on(rsm.recover(&mut &bytes[..])).is_err());
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..400)) {
        let snap = write(&kv_rsm(), b"");
        // Keep the header (magic .. header CRC), replace the rest.
        let header_len = snap.len() - 8 /* terminator */ - 20 /* trailer */ - 16 /* empty kv data chunk */;
        let mut bytes = snap[..header_len].to_vec();
        bytes.extend_from_slice(&tail);
        let mut rsm = kv_rsm();
        prop_assert!(block_on(rsm.recover(&mut &bytes[..])).is_err());
    }
}

#[test]
fn round_trip_through_a_glommio_file() {
    use glommio::io::ImmutableFileBuilder;
    use glommio::{LocalExecutorBuilder, Placement};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap-1");
    let probe = dir.path().join("probe");
    let builder = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .preempt_timer(std::time::Duration::from_millis(2));
    let handle = exec::spawn(builder, "rsm-snapshot-test".into(), move || async move {
        // GLOMMIO.md bug 2: keep a timer armed so that a missed wake-up
        // costs at most a millisecond instead of hanging the test.
        glommio::spawn_local(async {
            loop {
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
        })
        .detach();
        let rsm = populated(200);
        let expected = write(&rsm, b"members");
        let writer = rsm.capture(Bytes::from_static(b"members"));
        // GLOMMIO.md bug 1: the first DMA file an executor opens must not
        // be a readable empty file (the sink below is one), so open a
        // write-only file first.
        glommio::io::DmaFile::create(&probe)
            .await
            .expect("probe")
            .close()
            .await
            .expect("close probe");
        let mut sink = ImmutableFileBuilder::new(&path)
            .build_sink()
            .await
            .expect("create");
        let info = writer.write_to(&mut sink).await.expect("write snapshot");
        let file = sink.seal().await.expect("seal");
        let mut reader = file.stream_reader().build();
        let mut replica = kv_rsm();
        let meta = replica
            .recover(&mut reader)
            .await
            .expect("recover from file");
        reader.close().await.expect("close reader");
        file.close().await.expect("close file");
        (info, meta, write(&replica, b"members"), expected)
    })
    .expect("spawn executor");
    let (info, meta, rewritten, expected) = handle.join().expect("executor panicked");
    assert_eq!(info.total_bytes, expected.len() as u64);
    assert_eq!(&meta.membership[..], b"members");
    assert_eq!(rewritten, expected, "file round trip is byte-identical");
}

/// Writes and reads at most a few bytes per call and returns `Pending`
/// every other call: the chunk writer and reader must cope.
struct Trickle<T> {
    inner: T,
    calls: usize,
}

impl<T> Trickle<T> {
    fn new(inner: T) -> Self {
        Self { inner, calls: 0 }
    }

    fn step(&mut self, cx: &mut std::task::Context<'_>) -> Option<usize> {
        self.calls += 1;
        if self.calls % 2 == 0 {
            cx.waker().wake_by_ref();
            None
        } else {
            Some(1 + self.calls % 7)
        }
    }
}

impl futures_lite::io::AsyncWrite for Trickle<Vec<u8>> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.step(cx) {
            None => std::task::Poll::Pending,
            Some(n) => {
                let n = n.min(buf.len());
                self.inner.extend_from_slice(&buf[..n]);
                std::task::Poll::Ready(Ok(n))
            }
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Trickle<&[u8]> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.step(cx) {
            None => std::task::Poll::Pending,
            Some(n) => {
                let n = n.min(buf.len()).min(self.inner.len());
                buf[..n].copy_from_slice(&self.inner[..n]);
                self.inner = &self.inner[n..];
                std::task::Poll::Ready(Ok(n))
            }
        }
    }
}

#[test]
fn short_writes_short_reads_and_pending_are_handled() {
    let rsm = populated(70); // > 64 KiB: several chunks
    let expected = write(&rsm, b"m");
    let mut sink = Trickle::new(Vec::new());
    let info = block_on(rsm.capture(Bytes::from_static(b"m")).write_to(&mut sink)).unwrap();
    assert_eq!(sink.inner, expected);
    assert_eq!(info.total_bytes, expected.len() as u64);
    let mut replica = kv_rsm();
    let mut src = Trickle::new(&expected[..]);
    block_on(replica.recover(&mut src)).unwrap();
    assert_eq!(write(&replica, b"m"), expected);
}

/// A state machine of the KV kind that stops reading early.
struct ReadsTooLittle;

impl StateMachine for ReadsTooLittle {
    fn kind(&self) -> &str {
        flotilla_rsm::kv::KV_KIND
    }
    fn apply(&mut self, _: &mut [SmEntry]) {}
    fn query(&self, _: &[u8]) -> Result<Bytes, QueryError> {
        Err(QueryError::Unsupported)
    }
    fn capture(&self) -> Box<dyn SmSnapshot> {
        KvStore::new().capture()
    }
    fn fresh(&self) -> Box<dyn StateMachine> {
        Box::new(ReadsTooLittle)
    }
    fn recover<'a>(
        &'a mut self,
        src: &'a mut (dyn AsyncRead + Unpin),
    ) -> LocalBoxFuture<'a, Result<(), SnapshotError>> {
        Box::pin(async move {
            let mut count = [0u8; 8];
            futures_lite::io::AsyncReadExt::read_exact(src, &mut count).await?;
            Ok(())
        })
    }
}

#[test]
fn unread_state_machine_data_is_an_error() {
    let snap = write(&populated(3), b"");
    let mut rsm = Rsm::new(Box::new(ReadsTooLittle), SessionConfig::default());
    match block_on(rsm.recover(&mut &snap[..])) {
        Err(SnapshotError::TrailingData { len }) => assert!(len > 3000, "{len}"),
        other => panic!("expected trailing data, got {other:?}"),
    }
}
