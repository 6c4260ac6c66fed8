//! Frames on the CNI socket: one protobuf message preceded by its length as a
//! varint (the standard delimited encoding), optionally with file descriptors
//! attached as `SCM_RIGHTS` ancillary data to the frame's first byte.
//!
//! Blocking I/O on a [`UnixStream`]: both ends are short conversations (the
//! plugin is a short-lived process, the proxy serves the socket from a
//! dedicated thread), and the socket's read/write timeouts bound every call.

use std::io::{self, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, sendmsg};
use prost::Message;

use super::MAX_FRAME_LEN;

/// Most descriptors accepted on one read; extra ones are closed by the kernel
/// (`MSG_CTRUNC`) and reported as an error.
const MAX_FDS_PER_READ: usize = 4;

/// Why a frame could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed (including read/write timeouts).
    #[error("cni socket i/o failed: {0}")]
    Io(#[from] io::Error),
    /// The peer announced a frame larger than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// [`MAX_FRAME_LEN`].
        max: usize,
    },
    /// The length prefix is not a valid varint.
    #[error("invalid frame length prefix")]
    BadLength,
    /// The payload is not the expected protobuf message.
    #[error("cannot decode frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({have} of {want} bytes)")]
    Truncated {
        /// Bytes received so far.
        have: usize,
        /// Bytes the frame needs.
        want: usize,
    },
    /// More descriptors arrived than fit the control buffer.
    #[error("peer sent more than {MAX_FDS_PER_READ} file descriptors at once")]
    TooManyFds,
}

/// A Unix stream socket speaking delimited protobuf frames.
#[derive(Debug)]
pub struct FramedStream {
    stream: UnixStream,
    /// Bytes read past the end of the previous frame.
    buf: Vec<u8>,
    /// Descriptors received with bytes still in `buf`.
    fds: Vec<OwnedFd>,
}

impl FramedStream {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// The underlying stream (e.g. to change its timeouts).
    pub fn get_ref(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends one frame.
    pub fn send<M: Message>(&mut self, msg: &M) -> Result<(), FrameError> {
        let bytes = encode(msg)?;
        self.stream.write_all(&bytes)?;
        Ok(())
    }

    /// Sends one frame with `fd` attached as `SCM_RIGHTS` (the receiver gets
    /// its own descriptor for the same open file).
    pub fn send_with_fd<M: Message>(
        &mut self,
        msg: &M,
        fd: BorrowedFd<'_>,
    ) -> Result<(), FrameError> {
        let bytes = encode(msg)?;
        let fds: [RawFd; 1] = [fd.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let sent = loop {
            match sendmsg::<UnixAddr>(
                self.stream.as_raw_fd(),
                &[IoSlice::new(&bytes)],
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(FrameError::Io(e.into())),
            }
        };
        // The descriptor went with the first byte; the rest is plain data.
        if sent < bytes.len() {
            self.stream.write_all(&bytes[sent..])?;
        }
        Ok(())
    }

    /// Receives one frame and the descriptors that arrived with it.
    ///
    /// Returns `Ok(None)` when the peer closed the connection cleanly between
    /// frames.
    pub fn recv<M: Message + Default>(&mut self) -> Result<Option<(M, Vec<OwnedFd>)>, FrameError> {
        loop {
            if let Some((prefix, len)) = parse_prefix(&self.buf)? {
                if len > MAX_FRAME_LEN {
                    return Err(FrameError::TooLarge {
                        len,
                        max: MAX_FRAME_LEN,
                    });
                }
                if self.buf.len() >= prefix + len {
                    let msg = M::decode(&self.buf[prefix..prefix + len])?;
                    self.buf.drain(..prefix + len);
                    let fds = std::mem::take(&mut self.fds);
                    return Ok(Some((msg, fds)));
                }
            }
            if self.fill()? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let want = parse_prefix(&self.buf)?
                    .map_or(self.buf.len() + 1, |(prefix, len)| prefix + len);
                return Err(FrameError::Truncated {
                    have: self.buf.len(),
                    want,
                });
            }
        }
    }

    /// Reads whatever is available (blocking), keeping any descriptors.
    fn fill(&mut self) -> Result<usize, FrameError> {
        let mut chunk = [0u8; 4096];
        let mut cmsg_buf = nix::cmsg_space!([RawFd; MAX_FDS_PER_READ]);
        let (n, received) = loop {
            let mut iov = [IoSliceMut::new(&mut chunk)];
            match recvmsg::<UnixAddr>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_buf),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut received = Vec::new();
                    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for cmsg in cmsgs {
                            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                                received.extend(fds);
                            }
                        }
                    }
                    let owned = received.into_iter().map(own_fd).collect::<Vec<_>>();
                    if truncated {
                        return Err(FrameError::TooManyFds);
                    }
                    break (msg.bytes, owned);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(FrameError::Io(e.into())),
            }
        };
        self.buf.extend_from_slice(&chunk[..n]);
        self.fds.extend(received);
        Ok(n)
    }
}

/// Takes ownership of a descriptor the kernel just installed for us.
#[allow(unsafe_code)]
fn own_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` comes from an SCM_RIGHTS control message returned by
    // recvmsg: the kernel installed it in our descriptor table for this call
    // and nothing else refers to it, so we are its sole owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn encode<M: Message>(msg: &M) -> Result<Vec<u8>, FrameError> {
    let len = msg.encoded_len();
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(msg.encode_length_delimited_to_vec())
}

/// Parses the varint length prefix: `Some((prefix_len, payload_len))` once
/// it is complete, `None` while more bytes are needed.
fn parse_prefix(buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
    // A u64 varint is at most 10 bytes; its last byte has the high bit clear.
    let Some(end) = buf.iter().take(10).position(|b| b & 0x80 == 0) else {
        return if buf.len() >= 10 {
            Err(FrameError::BadLength)
        } else {
            Ok(None)
        };
    };
    let len = prost::decode_length_delimiter(&buf[..=end]).map_err(|_| FrameError::BadLength)?;
    Ok(Some((end + 1, len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::proto;
    use std::io::Read;
    use std::os::fd::AsFd;

    fn ping() -> proto::PluginMessage {
        proto::PluginMessage {
            protocol_version: 1,
            msg: Some(proto::plugin_message::Msg::Ping(proto::Ping {})),
        }
    }

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut rx = FramedStream::new(a);
        let frame = ping().encode_length_delimited_to_vec();
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        let writer = std::thread::spawn(move || {
            for byte in two {
                b.write_all(&[byte]).unwrap();
            }
        });
        for _ in 0..2 {
            let (msg, fds) = rx.recv::<proto::PluginMessage>().unwrap().unwrap();
            assert_eq!(msg, ping());
            assert!(fds.is_empty());
        }
        writer.join().unwrap();
        assert!(rx.recv::<proto::PluginMessage>().unwrap().is_none());
    }

    #[test]
    fn fd_travels_with_its_frame() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut tx, mut rx) = (FramedStream::new(a), FramedStream::new(b));
        let file = tempfile::tempfile().unwrap();
        let mut file2 = file.try_clone().unwrap();
        file2.write_all(b"netns stand-in").unwrap();
        tx.send_with_fd(&ping(), file.as_fd()).unwrap();
        tx.send(&ping()).unwrap();
        let (_, fds) = rx.recv::<proto::PluginMessage>().unwrap().unwrap();
        assert_eq!(fds.len(), 1);
        let mut got = std::fs::File::from(fds.into_iter().next().unwrap());
        let mut text = String::new();
        use std::io::Seek;
        got.rewind().unwrap();
        got.read_to_string(&mut text).unwrap();
        assert_eq!(text, "netns stand-in");
        let (_, fds) = rx.recv::<proto::PluginMessage>().unwrap().unwrap();
        assert!(fds.is_empty(), "the second frame carries no descriptor");
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut rx = FramedStream::new(a);
        let mut prefix = Vec::new();
        prost::encode_length_delimiter(MAX_FRAME_LEN + 1, &mut prefix).unwrap();
        b.write_all(&prefix).unwrap();
        assert!(matches!(
            rx.recv::<proto::PluginMessage>(),
            Err(FrameError::TooLarge { .. })
        ));

        let (a, mut b) = UnixStream::pair().unwrap();
        let mut rx = FramedStream::new(a);
        let frame = ping().encode_length_delimited_to_vec();
        b.write_all(&frame[..frame.len() - 1]).unwrap();
        drop(b);
        assert!(matches!(
            rx.recv::<proto::PluginMessage>(),
            Err(FrameError::Truncated { .. })
        ));

        let (a, mut b) = UnixStream::pair().unwrap();
        let mut rx = FramedStream::new(a);
        b.write_all(&[0xff; 11]).unwrap();
        assert!(matches!(
            rx.recv::<proto::PluginMessage>(),
            Err(FrameError::BadLength)
        ));
    }
}
