//! The node proxy's side of the CNI socket: a blocking accept loop that runs
//! each plugin conversation on its own thread and calls a [`CniHandler`].
//!
//! The node proxy runs [`CniServer`] on dedicated threads (the plugin talks
//! to it during pod creation, never on the data path); tests run a real one
//! on a temporary socket. [`serve_connection`] is exposed for a proxy that
//! wants its own accept loop.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::frame::{FrameError, FramedStream};
use super::{PROTOCOL_VERSION, proto};
use proto::plugin_message::Msg as Req;
use proto::proxy_message::Msg as Resp;

/// How long a plugin may stay silent in the middle of a conversation.
pub const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the node proxy does with each plugin request.
pub trait CniHandler: Send + Sync + 'static {
    /// Decides whether the pod is captured and how.
    fn add(&self, req: proto::AddPod) -> proto::AddReply;
    /// Takes ownership of the pod's netns descriptor.
    fn handoff(&self, req: proto::NetnsHandoff, netns: OwnedFd) -> proto::HandoffReply;
    /// Forgets the attachment (idempotent: unknown attachments are fine).
    fn del(&self, req: proto::DelPod);
    /// Liveness answer for CNI STATUS.
    fn ping(&self) -> proto::Pong {
        proto::Pong::default()
    }
}

/// A running accept loop on a Unix socket; stops and removes the socket file
/// when dropped.
#[derive(Debug)]
pub struct CniServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// A second handle on the listening socket, to wake the accept loop.
    wake: UnixListener,
    thread: Option<JoinHandle<()>>,
}

impl CniServer {
    /// Binds `path` (replacing a stale socket file left by a previous run)
    /// and starts serving `handler`.
    pub fn bind(path: &Path, handler: Arc<dyn CniHandler>) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let listener = UnixListener::bind(path)?;
        let wake = listener.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("cni-accept".into())
                .spawn(move || accept_loop(listener, handler, stop))?
        };
        Ok(Self {
            path: path.into(),
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CniServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // shutdown(2) on a listening socket makes the blocked accept(2)
        // return (this works even if the socket file was already removed);
        // the loop then sees the flag and exits.
        let _ = nix::sys::socket::shutdown(self.wake.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, handler: Arc<dyn CniHandler>, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match conn {
            Ok(stream) => stream,
            // Transient (EMFILE, ECONNABORTED…): back off briefly.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let handler = handler.clone();
        let _ = std::thread::Builder::new()
            .name("cni-conn".into())
            .spawn(move || {
                let _ = serve_connection(stream, handler.as_ref());
            });
    }
}

/// Serves one plugin connection until it closes.
pub fn serve_connection(stream: UnixStream, handler: &dyn CniHandler) -> Result<(), FrameError> {
    stream.set_read_timeout(Some(CONNECTION_IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(CONNECTION_IDLE_TIMEOUT))?;
    let mut framed = FramedStream::new(stream);
    while let Some((msg, mut fds)) = framed.recv::<proto::PluginMessage>()? {
        let reply = if msg.protocol_version != PROTOCOL_VERSION {
            error(format!(
                "protocol version {} is not supported; this node proxy speaks version {PROTOCOL_VERSION}",
                msg.protocol_version
            ))
        } else {
            match msg.msg {
                Some(Req::Handoff(req)) => {
                    if fds.len() == 1 {
                        let fd = fds.remove(0);
                        Resp::Handoff(handler.handoff(req, fd))
                    } else {
                        error(format!(
                            "a handoff must carry exactly one netns descriptor, got {}",
                            fds.len()
                        ))
                    }
                }
                _ if !fds.is_empty() => {
                    error("only a handoff may carry file descriptors".to_string())
                }
                Some(Req::Add(req)) => Resp::Add(handler.add(req)),
                Some(Req::Del(req)) => {
                    handler.del(req);
                    Resp::Del(proto::DelReply {})
                }
                Some(Req::Ping(_)) => Resp::Pong(handler.ping()),
                None => error("empty request".to_string()),
            }
        };
        // Unexpected descriptors are closed here, not leaked.
        drop(fds);
        framed.send(&proto::ProxyMessage { msg: Some(reply) })?;
    }
    Ok(())
}

fn error(message: String) -> Resp {
    Resp::Error(proto::ProtocolError { message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::client::{ClientError, CniClient};
    use std::os::fd::AsFd;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        handoffs: Mutex<Vec<(String, u64)>>,
        dels: Mutex<Vec<String>>,
    }

    impl CniHandler for Recorder {
        fn add(&self, req: proto::AddPod) -> proto::AddReply {
            let ns = req.pod.unwrap_or_default().namespace;
            proto::AddReply {
                enrolled: ns == "mesh",
                redirection: Some(proto::Redirection {
                    exclude_inbound_ports: vec![9090],
                    ..Default::default()
                }),
                reason: format!("namespace {ns}"),
            }
        }
        fn handoff(&self, req: proto::NetnsHandoff, netns: OwnedFd) -> proto::HandoffReply {
            let ino = nix::sys::stat::fstat(netns.as_fd()).unwrap().st_ino;
            let id = req.attachment.unwrap_or_default().container_id;
            self.handoffs.lock().unwrap().push((id, ino));
            proto::HandoffReply {
                accepted: true,
                message: String::new(),
            }
        }
        fn del(&self, req: proto::DelPod) {
            let id = req.attachment.unwrap_or_default().container_id;
            self.dels.lock().unwrap().push(id);
        }
    }

    #[test]
    fn full_conversation_over_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.sock");
        let rec = Arc::new(Recorder::default());
        let server = CniServer::bind(&path, rec.clone()).unwrap();
        let timeout = Duration::from_secs(5);

        let mut c = CniClient::connect(&path, timeout).unwrap();
        let reply = c
            .add(proto::AddPod {
                pod: Some(proto::PodRef {
                    namespace: "mesh".into(),
                    name: "web-0".into(),
                    uid: "u1".into(),
                }),
                ..Default::default()
            })
            .unwrap();
        assert!(reply.enrolled);
        let file = tempfile::tempfile().unwrap();
        let ino = nix::sys::stat::fstat(file.as_fd()).unwrap().st_ino;
        let hand = c
            .handoff(
                proto::NetnsHandoff {
                    attachment: Some(proto::Attachment {
                        container_id: "c1".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                file.as_fd(),
            )
            .unwrap();
        assert!(hand.accepted);
        assert_eq!(*rec.handoffs.lock().unwrap(), vec![("c1".to_string(), ino)]);
        c.del(proto::DelPod {
            attachment: Some(proto::Attachment {
                container_id: "c1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(*rec.dels.lock().unwrap(), vec!["c1".to_string()]);
        c.ping().unwrap();

        drop(server);
        assert!(!path.exists(), "the socket file is removed on shutdown");
        let err = CniClient::connect(&path, timeout).unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(matches!(err, ClientError::Unreachable { .. }));
    }

    #[test]
    fn unsupported_protocol_version_is_rejected_with_a_reason() {
        let (a, b) = UnixStream::pair().unwrap();
        let rec = Recorder::default();
        let t = std::thread::spawn(move || {
            let mut f = FramedStream::new(a);
            f.send(&proto::PluginMessage {
                protocol_version: 99,
                msg: Some(Req::Ping(proto::Ping {})),
            })
            .unwrap();
            f.recv::<proto::ProxyMessage>().unwrap().unwrap().0
        });
        serve_connection(b, &rec).unwrap();
        let reply = t.join().unwrap();
        match reply.msg {
            Some(Resp::Error(e)) => {
                assert!(e.message.contains("protocol version 99"), "{}", e.message)
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
}
