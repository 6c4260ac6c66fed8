//! The CNI plugin's side of the conversation with the node proxy.
//!
//! One [`CniClient`] per plugin invocation: connect, a request or two, drop.
//! Every call is bounded by the timeout given to [`CniClient::connect`].

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, UnixAddr, connect, setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use super::frame::{FrameError, FramedStream};
use super::{PROTOCOL_VERSION, proto};
use proto::plugin_message::Msg as Req;
use proto::proxy_message::Msg as Resp;

/// Why a request to the node proxy failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing is listening on the socket (missing file, connection refused,
    /// connect timed out): the proxy is down or not yet started.
    #[error("node proxy socket {path} is not reachable: {source}")]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// The connect failure.
        source: io::Error,
    },
    /// The proxy accepted the connection but did not answer in time.
    #[error("node proxy did not answer within {0:?}")]
    TimedOut(Duration),
    /// The proxy closed the connection without answering.
    #[error("node proxy closed the connection without answering")]
    Closed,
    /// The conversation broke (I/O error or undecodable frame).
    #[error(transparent)]
    Frame(FrameError),
    /// The proxy answered with the wrong message type.
    #[error("node proxy answered a {request} request with {answer}")]
    Unexpected {
        /// What was asked.
        request: &'static str,
        /// What came back.
        answer: &'static str,
    },
    /// The proxy answered with a protocol error.
    #[error("node proxy rejected the {request} request: {message}")]
    Rejected {
        /// What was asked.
        request: &'static str,
        /// The proxy's explanation.
        message: String,
    },
}

impl ClientError {
    /// True when the proxy could not be reached or did not answer: the
    /// condition under which the plugin falls back to the enrolled-namespaces
    /// file. False for protocol errors from a proxy that is up.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::TimedOut(_) | Self::Closed
        )
    }
}

/// A connection to the node proxy's CNI socket.
#[derive(Debug)]
pub struct CniClient {
    framed: FramedStream,
    timeout: Duration,
}

impl CniClient {
    /// Connects to the socket at `path`; `timeout` bounds the connect and
    /// every later send and receive.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let unreachable = |source: io::Error| ClientError::Unreachable {
            path: path.into(),
            source,
        };
        let addr = UnixAddr::new(path).map_err(|e| unreachable(e.into()))?;
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| unreachable(e.into()))?;
        let tv = TimeVal::new(
            i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            i64::from(timeout.subsec_micros()),
        );
        // SO_SNDTIMEO also bounds a blocking connect() on a Unix socket whose
        // listen backlog is full.
        setsockopt(&fd, sockopt::SendTimeout, &tv).map_err(|e| unreachable(e.into()))?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(|e| unreachable(e.into()))?;
        connect(fd.as_raw_fd(), &addr).map_err(|e| unreachable(e.into()))?;
        Ok(Self {
            framed: FramedStream::new(UnixStream::from(fd)),
            timeout,
        })
    }

    /// Asks whether the pod is enrolled and how to redirect it.
    pub fn add(&mut self, req: proto::AddPod) -> Result<proto::AddReply, ClientError> {
        match self.request("add", Req::Add(req), None)? {
            Resp::Add(r) => Ok(r),
            other => Err(unexpected("add", &other)),
        }
    }

    /// Hands the pod's netns to the proxy.
    pub fn handoff(
        &mut self,
        req: proto::NetnsHandoff,
        netns: BorrowedFd<'_>,
    ) -> Result<proto::HandoffReply, ClientError> {
        match self.request("handoff", Req::Handoff(req), Some(netns))? {
            Resp::Handoff(r) => Ok(r),
            other => Err(unexpected("handoff", &other)),
        }
    }

    /// Tells the proxy the attachment is gone.
    pub fn del(&mut self, req: proto::DelPod) -> Result<(), ClientError> {
        match self.request("del", Req::Del(req), None)? {
            Resp::Del(_) => Ok(()),
            other => Err(unexpected("del", &other)),
        }
    }

    /// Checks the proxy is serving.
    pub fn ping(&mut self) -> Result<proto::Pong, ClientError> {
        match self.request("ping", Req::Ping(proto::Ping {}), None)? {
            Resp::Pong(p) => Ok(p),
            other => Err(unexpected("ping", &other)),
        }
    }

    fn request(
        &mut self,
        name: &'static str,
        msg: Req,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Resp, ClientError> {
        let msg = proto::PluginMessage {
            protocol_version: PROTOCOL_VERSION,
            msg: Some(msg),
        };
        let sent = match fd {
            Some(fd) => self.framed.send_with_fd(&msg, fd),
            None => self.framed.send(&msg),
        };
        sent.map_err(|e| self.frame_error(e))?;
        let reply = self
            .framed
            .recv::<proto::ProxyMessage>()
            .map_err(|e| self.frame_error(e))?;
        match reply {
            None => Err(ClientError::Closed),
            Some((
                proto::ProxyMessage {
                    msg: Some(Resp::Error(e)),
                },
                _,
            )) => Err(ClientError::Rejected {
                request: name,
                message: e.message,
            }),
            Some((proto::ProxyMessage { msg: Some(m) }, _)) => Ok(m),
            Some((proto::ProxyMessage { msg: None }, _)) => Err(ClientError::Unexpected {
                request: name,
                answer: "an empty message",
            }),
        }
    }

    fn frame_error(&self, e: FrameError) -> ClientError {
        match e {
            FrameError::Io(io)
                if matches!(
                    io.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                ClientError::TimedOut(self.timeout)
            }
            FrameError::Io(io)
                if matches!(
                    io.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                ClientError::Closed
            }
            other => ClientError::Frame(other),
        }
    }
}

fn unexpected(request: &'static str, got: &Resp) -> ClientError {
    let answer = match got {
        Resp::Add(_) => "an add reply",
        Resp::Handoff(_) => "a handoff reply",
        Resp::Del(_) => "a del reply",
        Resp::Pong(_) => "a pong",
        Resp::Error(_) => "an error",
    };
    ClientError::Unexpected { request, answer }
}
