//! The HTTP/2 connection of an append session to a plain-`http://` endpoint (s2-lite, a
//! private S2 endpoint), on a socket that acknowledges what it receives at once.
//!
//! Why not reqwest's connection: s2-lite does not set `TCP_NODELAY`, so a small write of its
//! (an append's ack right after a flow-control `WINDOW_UPDATE`) waits until we acknowledge
//! the previous one, and Linux delays that ACK up to 40 ms while we have nothing to send.
//! Measured on a session with one append in flight: 34 ms per 250 KB append, 6 ms once every
//! segment is acknowledged at once. Linux has no lasting per-socket switch for that, so
//! `TCP_QUICKACK` is set again after every read. Over `https://` a session gets a reqwest
//! HTTP/2 client of its own instead (see `session_http`).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The request body: frames as the session submits them.
pub(crate) struct BodyFrames(pub mpsc::UnboundedReceiver<Bytes>);

impl futures_core::Stream for BodyFrames {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|f| f.map(|b| Ok(Frame::data(b))))
    }
}

/// The body type of a session request on this connection.
pub(crate) type Body = StreamBody<BodyFrames>;

/// An open connection; dropping it closes the connection.
pub(crate) struct Connection {
    pub sender: SendRequest<Body>,
    task: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to `host:port` and performs the HTTP/2 handshake (prior knowledge). Nothing of
/// a request has been sent when this fails.
pub(crate) async fn connect(host: &str, port: u16, timeout: Duration) -> io::Result<Connection> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    let io = TokioIo::new(QuickAck(tcp));
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(io)
        .await
        .map_err(io::Error::other)?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Connection { sender, task })
}

/// A TCP stream that re-arms `TCP_QUICKACK` after each read (see the module doc).
struct QuickAck(TcpStream);

impl QuickAck {
    #[cfg(target_os = "linux")]
    fn rearm(&self) {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket fd and a c_int option value of the size passed.
        unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn rearm(&self) {}
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.rearm();
        }
        r
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
