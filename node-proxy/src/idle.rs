//! An idle timeout for a connection one task serves: [`IdleTimeout`] fails
//! the connection's reads and writes once nothing has moved either way for
//! the timeout.
//!
//! As in [`crate::relay`], each read or write that moves bytes notes the
//! time (a clock read); the timer is armed when an operation first has to
//! wait, and is only moved on when it fires early. A connection that keeps
//! moving costs a clock read per operation and one timer for its life.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `IO` whose reads and writes fail with [`io::ErrorKind::TimedOut`] when
/// they have to wait and nothing has moved either way for `idle`.
pub struct IdleTimeout<IO> {
    io: IO,
    idle: Duration,
    /// When bytes last moved (or the connection was wrapped).
    last: Instant,
    /// Armed at `last + idle` as it was when armed (made at the first wait).
    timer: Option<Pin<Box<Sleep>>>,
}

impl<IO> IdleTimeout<IO> {
    /// `io`, failing once it waits with nothing moved for `idle`.
    pub fn new(io: IO, idle: Duration) -> Self {
        Self {
            io,
            idle,
            last: Instant::now(),
            timer: None,
        }
    }

    fn moved(&mut self) {
        self.last = Instant::now();
    }

    /// Called when an operation has to wait: `Ready` with the error once
    /// nothing has moved for `idle`, else `Pending` with the timer's wake-up
    /// registered.
    fn poll_waited<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let deadline = self.last + self.idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            ready!(timer.as_mut().poll(cx));
            // Armed before the last bytes moved: not idle yet.
            if timer.deadline() >= deadline {
                break;
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("idle for {:?}", self.idle),
        )))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for IdleTimeout<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => this.poll_waited(cx),
            ready => {
                this.moved();
                ready
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Pending => this.poll_waited(cx),
            ready => {
                this.moved();
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.poll_waited(cx),
            ready => {
                this.moved();
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.poll_waited(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_shutdown(cx) {
            Poll::Pending => this.poll_waited(cx),
            ready => ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    const IDLE: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_read_that_waits_for_the_timeout_fails_and_not_before() {
        let (mut peer, io) = duplex(64);
        let mut io = IdleTimeout::new(io, IDLE);
        let started = Instant::now();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let first = io.read(&mut buf).await.unwrap();
            (first, io.read(&mut buf).await)
        });
        tokio::time::sleep(Duration::from_secs(9)).await;
        peer.write_all(b"x").await.unwrap();
        let (first, second) = reader.await.unwrap();
        assert_eq!(first, 1, "a byte 9 s in arrived");
        let err = second.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "idle for 10s");
        // The byte moved 9 s in: the second wait ended 10 s later.
        assert_eq!(started.elapsed(), Duration::from_secs(19));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_moving_either_way_keep_it_open() {
        let (mut peer, io) = duplex(64);
        let mut io = IdleTimeout::new(io, IDLE);
        // The connection waits to read throughout; every 6 s a byte goes one
        // way or the other.
        for i in 0..6 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            if i % 2 == 0 {
                peer.write_all(b"x").await.unwrap();
                let mut buf = [0u8; 1];
                io.read_exact(&mut buf).await.unwrap();
            } else {
                io.write_all(b"y").await.unwrap();
            }
            // A read that waits in between, as a served connection's would.
            let mut buf = [0u8; 1];
            let waited = tokio::time::timeout(Duration::from_millis(1), io.read(&mut buf)).await;
            assert!(waited.is_err(), "nothing to read yet");
        }
        // 36 s of activity, then silence: closed 10 s after the last byte.
        let last = Instant::now();
        let mut buf = [0u8; 1];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(last.elapsed(), IDLE - Duration::from_millis(1));
        drop(peer);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_times_out() {
        let (_peer, io) = duplex(16);
        let mut io = IdleTimeout::new(io, IDLE);
        let started = Instant::now();
        let err = io.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            started.elapsed(),
            IDLE,
            "16 bytes went at once, then it waited"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_peer_is_no_wait() {
        let (peer, io) = duplex(16);
        let mut io = IdleTimeout::new(io, IDLE);
        drop(peer);
        let mut buf = Vec::new();
        assert_eq!(io.read_to_end(&mut buf).await.unwrap(), 0);
    }
}
