//! The node proxy's side of the CNI socket: a blocking accept loop that
//! hands each plugin conversation to one of [`WORKERS`] threads and calls a
//! [`CniHandler`].
//!
//! The socket is the door to enrolling pods, so it is guarded twice: the
//! file is mode 0600 from the moment it exists (bound under a temporary name,
//! narrowed, then renamed into place), and each connection's peer
//! credentials (`SO_PEERCRED`) must be root's or the proxy's own user's; any
//! other caller is closed at once and logged. At most [`WORKERS`]
//! conversations run at a time; further connections wait in the listen
//! backlog.
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

/// Plugin conversations served at once (kubelet creates pods a few at a
/// time; each conversation is short).
pub const WORKERS: usize = 4;

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
        let listener = bind_private(path)?;
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

/// Binds a Unix socket at `path` that only its owner (and root) can connect
/// to: bound under a temporary name in the same directory, narrowed to 0600,
/// then renamed into place, so it is never reachable with a wider mode.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// Whether the peer of `stream` may talk to the node proxy: root (the
/// container runtime runs CNI plugins as root) or the proxy's own user.
fn trusted_peer(stream: &UnixStream) -> Result<(), String> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let own = nix::unistd::geteuid().as_raw();
    if cred.uid() == 0 || cred.uid() == own {
        Ok(())
    } else {
        Err(format!(
            "peer pid {} runs as uid {}, not root (or uid {own})",
            cred.pid(),
            cred.uid()
        ))
    }
}

fn accept_loop(listener: UnixListener, handler: Arc<dyn CniHandler>, stop: Arc<AtomicBool>) {
    // A full queue blocks accept: the listen backlog holds the rest.
    let (queue, jobs) = std::sync::mpsc::sync_channel::<UnixStream>(WORKERS);
    let jobs = Arc::new(std::sync::Mutex::new(jobs));
    let mut workers = Vec::with_capacity(WORKERS);
    for i in 0..WORKERS {
        let (jobs, handler) = (jobs.clone(), handler.clone());
        let worker = std::thread::Builder::new()
            .name(format!("cni-worker-{i}"))
            .spawn(move || {
                loop {
                    // The lock is held only while waiting for the next job.
                    let next = jobs.lock().map(|rx| rx.recv());
                    let Ok(Ok(stream)) = next else { return };
                    let _ = serve_connection(stream, handler.as_ref());
                }
            });
        match worker {
            Ok(w) => workers.push(w),
            Err(e) => tracing::warn!(error = %e, "cannot start a CNI worker thread"),
        }
    }
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(stream) => stream,
            // Transient (EMFILE, ECONNABORTED…): back off briefly.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if let Err(reason) = trusted_peer(&stream) {
            tracing::warn!(%reason, "CNI socket connection refused");
            continue;
        }
        if queue.send(stream).is_err() {
            break;
        }
    }
    // The workers end once the queue is dropped and their conversation (at
    // most CONNECTION_IDLE_TIMEOUT of silence) is over; nothing waits for them.
    drop(queue);
    drop(workers);
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

    /// The socket is 0600 (root and the proxy's user only), and a caller of
    /// another user that gets to connect anyway (the mode widened by hand)
    /// is closed without an answer. Runs as root, as CI does.
    #[test]
    fn only_root_or_the_proxys_user_may_talk_on_the_socket() {
        use std::os::unix::fs::PermissionsExt as _;
        use std::os::unix::process::CommandExt as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("cni.sock");
        let server = CniServer::bind(&path, Arc::new(Recorder::default())).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary socket is left behind");
        assert!(
            CniClient::connect(&path, Duration::from_secs(5))
                .unwrap()
                .ping()
                .is_ok(),
            "root is served"
        );
        // As `nobody`: refused by the file mode, then (mode widened) by the
        // peer check, which closes the connection unanswered.
        let as_nobody = |path: &Path| {
            let out = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import socket,sys\n\
                     s=socket.socket(socket.AF_UNIX)\n\
                     try:\n s.connect(sys.argv[1])\nexcept OSError as e:\n print('connect:',e.strerror);sys.exit()\n\
                     s.settimeout(5)\n\
                     try:\n print('answer:',len(s.recv(100)))\nexcept OSError as e:\n print('answer:',e.strerror)",
                ])
                .arg(path)
                .uid(65534)
                .gid(65534)
                .output()
                .expect("python3 (apt-get install python3)");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        assert_eq!(as_nobody(&path), "connect: Permission denied");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(as_nobody(&path), "answer: 0");
        drop(server);
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
