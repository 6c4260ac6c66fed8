//! Moving bytes between two connections: both directions at once, each with
//! a bounded buffer (a slow reader slows the writer down, nothing queues
//! without bound), half-close carried across (EOF on one side shuts the
//! other side's write half down), and an idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Buffer per direction.
pub const BUFFER: usize = 64 * 1024;

/// The idle timeout of relayed connections unless configured otherwise
/// (Envoy's TCP proxy default).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// How a relay ended.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Nothing moved in either direction for the idle timeout.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// One side failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Bytes moved, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// From `a` to `b`.
    pub a_to_b: u64,
    /// From `b` to `a`.
    pub b_to_a: u64,
}

/// Relays between `a` and `b` until both directions have ended, one side
/// fails, or nothing has moved for `idle`.
pub async fn relay<A, B>(a: &mut A, b: &mut B, idle: Duration) -> Result<Moved, RelayError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let mut a = Tracked {
        inner: a,
        start,
        last: &last,
    };
    let mut b = Tracked {
        inner: b,
        start,
        last: &last,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUFFER, BUFFER);
    tokio::pin!(copy);
    loop {
        let since_start = Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = start + since_start + idle;
        tokio::select! {
            result = &mut copy => {
                let (a_to_b, b_to_a) = result?;
                return Ok(Moved { a_to_b, b_to_a });
            }
            () = tokio::time::sleep_until(deadline) => {
                // Activity since the deadline was computed moves it on.
                if Duration::from_millis(last.load(Ordering::Relaxed)) == since_start {
                    return Err(RelayError::Idle(idle));
                }
            }
        }
    }
}

/// A stream that notes when bytes last moved through it.
struct Tracked<'a, T: ?Sized> {
    inner: &'a mut T,
    start: Instant,
    last: &'a AtomicU64,
}

impl<T: ?Sized> Tracked<'_, T> {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Tracked<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Tracked<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test]
    async fn carries_both_directions_and_half_close() {
        let (mut client, mut a) = duplex(1024);
        let (mut b, mut server) = duplex(1024);
        let relay =
            tokio::spawn(async move { relay(&mut a, &mut b, Duration::from_secs(5)).await });
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping", "the server saw the data, then EOF");
        // The other direction still works after the client's half-close.
        server.write_all(b"pong!").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong!");
        let moved = relay.await.unwrap().unwrap();
        assert_eq!(
            moved,
            Moved {
                a_to_b: 4,
                b_to_a: 5
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_but_active_ones_are_not() {
        let (mut client, mut a) = duplex(1024);
        let (mut b, _server) = duplex(1024);
        let relay =
            tokio::spawn(async move { relay(&mut a, &mut b, Duration::from_secs(10)).await });
        // Activity every 6 s keeps it open past 10 s.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(b"x").await.unwrap();
        }
        assert!(!relay.is_finished(), "active for 18 s, still open");
        tokio::time::sleep(Duration::from_secs(11)).await;
        let err = relay.await.unwrap().unwrap_err();
        assert!(matches!(err, RelayError::Idle(d) if d == Duration::from_secs(10)));
    }

    #[tokio::test]
    async fn a_slow_reader_bounds_what_is_buffered() {
        let (mut client, mut a) = duplex(4096);
        let (mut b, mut server) = duplex(4096);
        tokio::spawn(async move { relay(&mut a, &mut b, Duration::from_secs(5)).await });
        // The server reads nothing: the client can only get a bounded amount
        // in before its writes stop completing.
        let chunk = vec![0u8; 16 * 1024];
        let mut written = 0usize;
        loop {
            match tokio::time::timeout(Duration::from_millis(200), client.write(&chunk)).await {
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => panic!("write failed: {e}"),
                Err(_) => break,
            }
            assert!(
                written < 1024 * 1024,
                "{written} bytes accepted without a reader"
            );
        }
        assert!(written <= BUFFER + 2 * 4096, "buffered {written} bytes");
        // Reading drains it all.
        let mut buf = vec![0u8; written];
        server.read_exact(&mut buf).await.unwrap();
    }
}
