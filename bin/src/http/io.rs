//! hyper on glommio sockets: [`GlommioIo`] implements hyper's `rt::Read` and
//! `rt::Write` over a `glommio::net::TcpStream` (futures-io `AsyncRead` /
//! `AsyncWrite`). An HTTP/1 server connection needs no hyper executor (it
//! spawns nothing), so there is none: no tokio runtime anywhere.
//!
//! glommio has no real vectored write (`write_vectored` sends only the
//! first slice), so the adapter reports `is_write_vectored() == false` and
//! the server is built with `writev(false)`: hyper then flattens headers and
//! body into one buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// A glommio TCP stream as hyper I/O.
pub(crate) struct GlommioIo {
    stream: TcpStream,
}

impl GlommioIo {
    pub(crate) fn new(stream: TcpStream) -> Self {
        GlommioIo { stream }
    }
}

impl hyper::rt::Read for GlommioIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let dst = buf.initialize_unfilled();
        let n = match Pin::new(&mut self.stream).poll_read(cx, dst) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        debug_assert!(n <= dst.len(), "read {n} bytes into {}", dst.len());
        // SAFETY: `initialize_unfilled` initialized every byte of the
        // unfilled part and the read wrote `n <= dst.len()` bytes into it.
        unsafe { buf.advance(n) };
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for GlommioIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}
