//! Snapshot streams: delivery into a file sink, a connection broken mid-way
//! and retried, rejections, sink/source failures and a stalled sender.

mod common;

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::{config, run, start, wait_until};
use flotilla_transport::{
    OpenFuture, PeerId, Registry, SnapshotError, SnapshotHandler, SnapshotReceived, SnapshotSink,
};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::io::{DmaFile, DmaStreamWriterBuilder};

const SECS_10: Duration = Duration::from_secs(10);

/// A deterministic, non-repeating-per-block byte stream of `len` bytes that
/// never lives in memory: a 64 KiB random block, each 4 KiB page stamped
/// with its offset. Can fail with an error after `fail_at` bytes.
struct Source {
    block: Vec<u8>,
    pos: u64,
    len: u64,
    fail_at: Option<u64>,
    crc: crc32fast::Hasher,
}

impl Source {
    fn new(len: u64) -> Self {
        let mut x = 0x1234_5678_9ABC_DEF1u64;
        let block = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Self {
            block,
            pos: 0,
            len,
            fail_at: None,
            crc: crc32fast::Hasher::new(),
        }
    }
}

impl AsyncRead for Source {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(f) = self.fail_at {
            if self.pos >= f {
                return Poll::Ready(Err(io::Error::other("source disk failed")));
            }
        }
        let left = self.len - self.pos;
        // Stay inside one 4 KiB page per read, so the stamp is easy.
        let page_left = 4096 - (self.pos % 4096);
        let n = (buf.len() as u64).min(left).min(page_left) as usize;
        let at = (self.pos % 65536) as usize;
        buf[..n].copy_from_slice(&self.block[at..at + n]);
        if self.pos % 4096 == 0 && n >= 8 {
            buf[..8].copy_from_slice(&self.pos.to_le_bytes());
        }
        self.crc.update(&buf[..n]);
        self.pos += n as u64;
        Poll::Ready(Ok(n))
    }
}

/// Forwards to an inner sink, counting bytes; can fail after `fail_at` bytes.
struct Tap<W> {
    inner: W,
    bytes: u64,
    fail_at: Option<u64>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Tap<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.fail_at.is_some_and(|f| self.bytes >= f) {
            return Poll::Ready(Err(io::Error::other("sink disk full")));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.bytes += n as u64;
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

type Outcome = (PeerId, Bytes, Result<SnapshotReceived, String>);

/// Writes each snapshot to `dir/snap-<n>` through a DmaStreamWriter.
struct FileHandler {
    dir: PathBuf,
    reject: Option<String>,
    sink_fail_at: Option<u64>,
    opened: RefCell<Vec<PathBuf>>,
    outcomes: RefCell<Vec<Outcome>>,
}

impl FileHandler {
    fn new(dir: PathBuf) -> Rc<Self> {
        Rc::new(Self {
            dir,
            reject: None,
            sink_fail_at: None,
            opened: RefCell::new(vec![]),
            outcomes: RefCell::new(vec![]),
        })
    }
}

impl SnapshotHandler for FileHandler {
    fn open(&self, _from: PeerId, header: Bytes) -> OpenFuture {
        let path = self
            .dir
            .join(format!("snap-{}", self.opened.borrow().len()));
        self.opened.borrow_mut().push(path.clone());
        let reject = self.reject.clone();
        let fail_at = self.sink_fail_at;
        Box::pin(async move {
            if let Some(r) = reject {
                return Err(format!("{r} ({} byte header)", header.len()));
            }
            let file = DmaFile::create(&path).await.map_err(|e| e.to_string())?;
            let w = DmaStreamWriterBuilder::new(file)
                .with_buffer_size(256 << 10)
                .with_write_behind(2)
                .build();
            Ok(Box::new(Tap {
                inner: w,
                bytes: 0,
                fail_at,
            }) as SnapshotSink)
        })
    }

    fn finished(
        &self,
        from: PeerId,
        header: Bytes,
        outcome: Result<SnapshotReceived, SnapshotError>,
    ) {
        self.outcomes
            .borrow_mut()
            .push((from, header, outcome.map_err(|e| e.to_string())));
    }
}

/// A one-connection TCP proxy on its own OS thread (not an executor) that
/// forwards to `target` and cuts both directions after `cut_after` bytes
/// from the client.
fn cutting_proxy(target: SocketAddr, cut_after: u64) -> SocketAddr {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (client, _) = l.accept().unwrap();
        let upstream = TcpStream::connect(target).unwrap();
        let (mut c_in, mut u_out) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        let (mut u_in, mut c_out) = (upstream, client);
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut u_in, &mut c_out);
        });
        let mut buf = vec![0u8; 64 << 10];
        let mut forwarded = 0u64;
        loop {
            let n = match c_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let n = n.min((cut_after - forwarded) as usize);
            if u_out.write_all(&buf[..n]).is_err() {
                break;
            }
            forwarded += n as u64;
            if forwarded >= cut_after {
                break;
            }
        }
        let _ = c_in.shutdown(Shutdown::Both);
        let _ = u_out.shutdown(Shutdown::Both);
        let _ = back.join();
    });
    addr
}

async fn file_size(path: &PathBuf) -> u64 {
    let f = DmaFile::open(path).await.unwrap();
    let size = f.file_size().await.unwrap();
    f.close().await.unwrap();
    size
}

#[test]
fn snapshot_of_hundreds_of_mb_survives_a_broken_connection_and_a_retry() {
    let mb: u64 = std::env::var("FLOTILLA_SNAPSHOT_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    run(
        "snapshot_big",
        Duration::from_secs(120),
        move || async move {
            let dir = tempfile::tempdir().unwrap();
            let reg = Registry::new();
            let a = start(config(1, 0), &reg);
            let b = start(config(2, 0), &reg);
            let handler = FileHandler::new(dir.path().to_path_buf());
            b.set_snapshot_handler(handler.clone());
            let (pa, pb) = (a.local(), b.local());
            let len = mb << 20;
            let header = Bytes::from_static(b"group=7 index=123456 term=9");

            // First attempt through a proxy that cuts the connection mid-way.
            let proxy = cutting_proxy(b.local_addr(), len / 2);
            reg.set_shard_addr(pb, proxy);
            let err = a
                .send_snapshot(pb, header.clone(), Source::new(len))
                .await
                .unwrap_err();
            assert!(
                matches!(err, SnapshotError::Io(_) | SnapshotError::Closed),
                "sender sees the broken stream: {err}"
            );
            let outcomes = wait_until(
                "receiver told of the break",
                SECS_10,
                || handler.outcomes.borrow().len(),
                |n| *n == 1,
            )
            .await;
            assert_eq!(outcomes, 1);
            {
                let o = handler.outcomes.borrow();
                assert_eq!((o[0].0, &o[0].1), (pa, &header));
                assert!(
                    o[0].2.is_err(),
                    "receiver sees the broken stream: {:?}",
                    o[0].2
                );
            }
            assert_eq!(a.metrics().snapshots.send_failed, 1);
            assert_eq!(b.metrics().snapshots.receive_failed, 1);

            // Retry directly.
            reg.set_shard_addr(pb, b.local_addr());
            let mut source = Source::new(len);
            let sent = a
                .send_snapshot(pb, header.clone(), &mut source)
                .await
                .expect("retry succeeds");
            let source_crc = source.crc.clone().finalize();
            assert_eq!(sent.bytes, len);
            assert_eq!(sent.crc, source_crc);
            let o = handler.outcomes.borrow().clone();
            assert_eq!(o.len(), 2, "receiver told before the sender's ack");
            let received = o[1].2.clone().expect("second stream received");
            assert_eq!(
                (received.bytes, received.crc, received.chunks),
                (len, source_crc, sent.chunks)
            );
            let path = handler.opened.borrow()[1].clone();
            drop(o);
            assert_eq!(
                file_size(&path).await,
                len,
                "the file holds the whole snapshot"
            );
            let m = b.metrics().snapshots;
            assert_eq!((m.received, m.bytes_received), (1, len));
            a.shutdown().await;
            b.shutdown().await;
        },
    );
}

#[test]
fn rejections_and_failures_reach_both_sides() {
    run("snapshot_failures", Duration::from_secs(60), || async {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new();
        let mut ca = config(1, 0);
        ca.snapshot_chunk_bytes = 64 << 10;
        ca.snapshot_window_chunks = 2;
        let a = start(ca, &reg);
        let b = start(config(2, 0), &reg);
        let pb = b.local();
        let h = Bytes::from_static(b"hdr");

        // No handler registered.
        let e = a
            .send_snapshot(pb, h.clone(), Source::new(1000))
            .await
            .unwrap_err();
        assert!(
            matches!(e, SnapshotError::Rejected(ref r) if r.contains("no snapshot handler")),
            "{e}"
        );

        // The handler says no.
        let mut no = FileHandler::new(dir.path().to_path_buf());
        Rc::get_mut(&mut no).unwrap().reject = Some("already have a newer one".into());
        b.set_snapshot_handler(no.clone());
        let e = a
            .send_snapshot(pb, h.clone(), Source::new(1000))
            .await
            .unwrap_err();
        assert!(
            matches!(e, SnapshotError::Rejected(ref r) if r.contains("newer")),
            "{e}"
        );
        assert!(
            no.outcomes.borrow().is_empty(),
            "a rejected stream is never 'finished'"
        );

        // An empty snapshot is fine.
        let ok = FileHandler::new(dir.path().to_path_buf());
        b.set_snapshot_handler(ok.clone());
        let sent = a
            .send_snapshot(pb, h.clone(), Source::new(0))
            .await
            .unwrap();
        assert_eq!((sent.bytes, sent.chunks), (0, 0));
        assert!(ok.outcomes.borrow()[0].2.is_ok());

        // The receiver's sink fails mid-way: both sides hear of it.
        let mut bad_sink = FileHandler::new(dir.path().to_path_buf());
        Rc::get_mut(&mut bad_sink).unwrap().sink_fail_at = Some(300 << 10);
        b.set_snapshot_handler(bad_sink.clone());
        let e = a
            .send_snapshot(pb, h.clone(), Source::new(4 << 20))
            .await
            .unwrap_err();
        assert!(
            matches!(e, SnapshotError::Remote(ref r) if r.contains("disk full")),
            "{e}"
        );
        let o = bad_sink.outcomes.borrow().clone();
        assert!(
            matches!(&o[0].2, Err(r) if r.contains("disk full")),
            "{:?}",
            o[0].2
        );
        drop(o);

        // The sender's source fails mid-way: both sides hear of it.
        b.set_snapshot_handler(ok.clone());
        let mut src = Source::new(4 << 20);
        src.fail_at = Some(1 << 20);
        let e = a.send_snapshot(pb, h.clone(), src).await.unwrap_err();
        assert!(matches!(e, SnapshotError::Source(_)), "{e}");
        wait_until(
            "receiver told",
            SECS_10,
            || ok.outcomes.borrow().len(),
            |n| *n == 2,
        )
        .await;
        assert!(ok.outcomes.borrow()[1].2.is_err());

        // Unknown peer: no address.
        let e = a
            .send_snapshot(PeerId::new(99, 0), h.clone(), Source::new(1))
            .await
            .unwrap_err();
        assert!(matches!(e, SnapshotError::Dial(_)), "{e}");

        // And the path still works afterwards.
        let sent = a
            .send_snapshot(pb, h.clone(), Source::new(3 << 20))
            .await
            .unwrap();
        assert_eq!(sent.bytes, 3 << 20);
        assert_eq!(a.metrics().snapshots.sent, 2);
        assert_eq!(a.metrics().snapshots.send_failed, 5);
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn a_stalled_sender_times_out_at_the_receiver() {
    use flotilla_transport::wire::{
        encode_frame, ConnectionKind, FrameKind, Hello, HELLO_ACK_BYTES,
    };
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    run("snapshot_stall", Duration::from_secs(30), || async {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new();
        let mut cb = config(2, 0);
        cb.snapshot_idle_timeout = Duration::from_millis(300);
        let b = start(cb, &reg);
        reg.set_shard_addr(PeerId::new(1, 0), "127.0.0.1:1".parse().unwrap());
        let handler = FileHandler::new(dir.path().to_path_buf());
        b.set_snapshot_handler(handler.clone());
        let mut s = glommio::net::TcpStream::connect(b.local_addr())
            .await
            .unwrap();
        let hello = Hello {
            version_min: 1,
            version_max: 1,
            kind: ConnectionKind::Snapshot,
            cluster: common::CLUSTER,
            from: PeerId::new(1, 0),
            to: b.local(),
        };
        s.write_all(&hello.encode()).await.unwrap();
        let mut ack = [0u8; HELLO_ACK_BYTES];
        s.read_exact(&mut ack).await.unwrap();
        let mut f = bytes::BytesMut::new();
        encode_frame(&mut f, FrameKind::SnapshotBegin, b"hdr");
        s.write_all(&f).await.unwrap();
        // ... and then nothing.
        wait_until(
            "stall detected",
            SECS_10,
            || handler.outcomes.borrow().len(),
            |n| *n == 1,
        )
        .await;
        let o = handler.outcomes.borrow().clone();
        assert!(
            matches!(&o[0].2, Err(e) if e.contains("stalled")),
            "{:?}",
            o[0].2
        );
        drop(o);
        b.shutdown().await;
    });
}
