//! An idle timeout for a connection one task serves: [`IdleTimeout`] fails
//! the connection's reads and writes once nothing has moved either way for
//! the timeout.
//!
//! Each read or write that is done (bytes moved, or the end or an error
//! seen) notes the time, a clock read; the timer is armed when an operation
//! first has to wait, and is only moved on when it fires early. A
//! connection that keeps moving costs a clock read per operation and one
//! timer for its life.

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

    /// `poll` of the connection, noted: a read or write that is done
    /// (`moves`) restarts the idle time, one that waits arms the timer.
    fn completed<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
        moves: bool,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => self.poll_waited(cx),
            done => {
                if moves {
                    self.last = Instant::now();
                }
                done
            }
        }
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
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        this.completed(cx, poll, true)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.completed(cx, poll, true)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.completed(cx, poll, true)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.completed(cx, poll, false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_shutdown(cx);
        this.completed(cx, poll, false)
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
    async fn a_wait_one_way_lasts_while_bytes_move_the_other_way() {
        // A read waits throughout while a byte is written every 6 s.
        let (_peer, io) = duplex(64);
        let (mut rd, mut wr) = tokio::io::split(IdleTimeout::new(io, IDLE));
        let start = Instant::now();
        let reader = async {
            let mut buf = [0u8; 1];
            (rd.read(&mut buf).await, start.elapsed())
        };
        let writer = async {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                wr.write_all(b"y").await.unwrap();
            }
        };
        let ((read, at), ()) = tokio::join!(reader, writer);
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(at, Duration::from_secs(40), "10 s after the last write");

        // A write waits throughout (the peer takes nothing) while a byte is
        // read every 6 s.
        let (mut peer, io) = duplex(4);
        let (mut rd, mut wr) = tokio::io::split(IdleTimeout::new(io, IDLE));
        let start = Instant::now();
        let writer = async { (wr.write_all(&[0u8; 64]).await, start.elapsed()) };
        let reader = async {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                peer.write_all(b"x").await.unwrap();
                let mut buf = [0u8; 1];
                rd.read_exact(&mut buf).await.unwrap();
            }
        };
        let ((written, at), ()) = tokio::join!(writer, reader);
        assert_eq!(written.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(at, Duration::from_secs(40), "10 s after the last read");
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
