//! A listener that holds at most `api.max_connections` connections open: past the cap it
//! stops accepting (new connections wait in the kernel's backlog) until one closes, so a flood
//! of clients cannot exhaust the node's sockets or memory.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections open and the times the cap made a client wait.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub open: AtomicU64,
    pub waited: AtomicU64,
}

pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    stats: Arc<ConnectionStats>,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, max: usize, stats: Arc<ConnectionStats>) -> Self {
        LimitedListener {
            inner,
            permits: Arc::new(Semaphore::new(max.max(1))),
            stats,
        }
    }
}

/// A connection holding its place under the cap until it is dropped.
pub struct Limited {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    stats: Arc<ConnectionStats>,
}

impl Drop for Limited {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Relaxed);
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = Limited;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.stats.waited.fetch_add(1, Relaxed);
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        // Records leave in small frames: with Nagle's algorithm on, a frame written while the
        // previous one is unacknowledged waits for the client's delayed ACK (up to 40 ms).
        let _ = stream.set_nodelay(true);
        self.stats.open.fetch_add(1, Relaxed);
        (
            Limited {
                stream,
                _permit: permit,
                stats: self.stats.clone(),
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
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
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every accepted connection writes without Nagle's delay, and holds a place under the cap
    /// until it is dropped.
    #[tokio::test]
    async fn accepted_connections_send_at_once_and_count_while_open() {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let stats = Arc::new(ConnectionStats::default());
        let mut listener = LimitedListener::new(inner, 4, stats.clone());
        let _client = TcpStream::connect(addr).await.unwrap();
        let (conn, _) = axum::serve::Listener::accept(&mut listener).await;
        assert!(conn.stream.nodelay().unwrap(), "TCP_NODELAY is set");
        assert_eq!(stats.open.load(Relaxed), 1);
        drop(conn);
        assert_eq!(stats.open.load(Relaxed), 0);
    }
}
