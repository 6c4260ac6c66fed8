//! A pod's network namespace as the node proxy holds it, and the sockets it
//! opens there.
//!
//! A [`NetnsHandle`] owns the namespace descriptor the CNI plugin handed over
//! and one dedicated std thread that entered the namespace once with
//! `setns(2)` and then runs socket-creation jobs for that pod. Tokio workers
//! never change namespace: async callers send a job and await its answer
//! ([`NetnsHandle::run_async`], [`NetnsHandle::connect_tcp`],
//! [`NetnsHandle::bind_tcp`]); a socket keeps the namespace it was created in,
//! so once created it is registered with tokio like any other. The thread
//! exits when the last clone of the handle is dropped.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage, bind,
    connect, getsockopt, listen, setsockopt, socket, sockopt,
};
use nix::sys::stat::{Mode, fstat};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};

/// Listen backlog of every listener opened in a pod.
const LISTEN_BACKLOG: i32 = 1024;

/// Stack size of a namespace thread: it only creates sockets.
const WORKER_STACK: usize = 256 * 1024;

/// Which namespace a descriptor refers to: the `(st_dev, st_ino)` of the
/// nsfs file. Two descriptors name the same namespace exactly when these are
/// equal; a recreated namespace at the same path gets a new inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NetnsId {
    /// `st_dev` of the namespace file.
    pub dev: u64,
    /// `st_ino` of the namespace file.
    pub ino: u64,
}

impl NetnsId {
    /// The identity of the namespace `fd` refers to.
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let st = fstat(fd)?;
        Ok(Self {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}] (dev {})", self.ino, self.dev)
    }
}

/// Why a namespace could not be taken into use.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path does not exist (the pod sandbox is gone).
    #[error("network namespace {0} does not exist")]
    NotFound(PathBuf),
    /// The path exists but cannot be opened or inspected.
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The descriptor is not a network namespace.
    #[error("{what} is not a network namespace")]
    NotNetns {
        /// The path or descriptor description.
        what: String,
    },
    /// `setns(2)` failed for another reason.
    #[error("cannot enter network namespace {what}: {source}")]
    Enter {
        /// The path or descriptor description.
        what: String,
        /// The failure.
        source: io::Error,
    },
    /// The namespace thread could not be started.
    #[error("cannot start the thread for network namespace {what}: {source}")]
    Thread {
        /// The path or descriptor description.
        what: String,
        /// The failure.
        source: io::Error,
    },
}

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Inner {
    fd: Arc<OwnedFd>,
    id: NetnsId,
    /// Dropping it ends the namespace thread.
    jobs: mpsc::Sender<Job>,
}

/// A pod's network namespace: its descriptor plus a dedicated thread inside
/// it. Cheap to clone; the thread lives as long as any clone.
#[derive(Clone)]
pub struct NetnsHandle {
    inner: Arc<Inner>,
}

impl fmt::Debug for NetnsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetnsHandle")
            .field("id", &self.inner.id)
            .finish()
    }
}

impl NetnsHandle {
    /// Takes ownership of a namespace descriptor (as received from the CNI
    /// plugin) and starts its thread. Fails if `fd` is not a network
    /// namespace.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, NetnsError> {
        let id = NetnsId::of(fd.as_fd()).map_err(|source| NetnsError::Open {
            path: PathBuf::from(format!("fd {}", fd.as_raw_fd())),
            source,
        })?;
        Self::start(Arc::new(fd), id, &id.to_string())
    }

    /// Opens the namespace at `path` (a bind mount such as
    /// `/var/run/netns/cni-…` or `/proc/<pid>/ns/net`).
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let fd = open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| {
            if e == Errno::ENOENT {
                NetnsError::NotFound(path.into())
            } else {
                NetnsError::Open {
                    path: path.into(),
                    source: e.into(),
                }
            }
        })?;
        let id = NetnsId::of(fd.as_fd()).map_err(|source| NetnsError::Open {
            path: path.into(),
            source,
        })?;
        Self::start(Arc::new(fd), id, &path.display().to_string())
    }

    /// The namespace the calling thread is in (tests, and a proxy serving
    /// its own namespace).
    pub fn current() -> Result<Self, NetnsError> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    fn start(fd: Arc<OwnedFd>, id: NetnsId, what: &str) -> Result<Self, NetnsError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), Errno>>(1);
        let thread_fd = fd.clone();
        std::thread::Builder::new()
            .name(format!("netns-{}", id.ino))
            .stack_size(WORKER_STACK)
            .spawn(move || {
                let entered = setns(thread_fd.as_fd(), CloneFlags::CLONE_NEWNET);
                drop(thread_fd);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                // Every job runs here, inside the pod's namespace, until the
                // last handle drops the sender.
                while let Ok(job) = queue.recv() {
                    job();
                }
            })
            .map_err(|source| NetnsError::Thread {
                what: what.to_string(),
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                inner: Arc::new(Inner { fd, id, jobs }),
            }),
            Ok(Err(Errno::EINVAL)) => Err(NetnsError::NotNetns {
                what: what.to_string(),
            }),
            Ok(Err(e)) => Err(NetnsError::Enter {
                what: what.to_string(),
                source: e.into(),
            }),
            Err(_) => Err(NetnsError::Thread {
                what: what.to_string(),
                source: io::Error::other("the namespace thread exited before entering"),
            }),
        }
    }

    /// Which namespace this is.
    pub fn id(&self) -> NetnsId {
        self.inner.id
    }

    /// The namespace descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.as_fd()
    }

    fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
        done: impl FnOnce(io::Result<T>) + Send + 'static,
    ) -> io::Result<()> {
        let job: Job = Box::new(move || {
            let out = std::panic::catch_unwind(AssertUnwindSafe(f))
                .map_err(|_| io::Error::other("a job in the pod network namespace panicked"));
            done(out);
        });
        self.inner
            .jobs
            .send(job)
            .map_err(|_| io::Error::other(format!("the thread of {} has exited", self.inner.id)))
    }

    /// Runs `f` on this namespace's thread and waits for it. Blocks the
    /// caller: call it from a std thread or `spawn_blocking`, never from an
    /// async task (use [`Self::run_async`] there).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(f, move |r| {
            let _ = tx.send(r);
        })?;
        rx.recv().map_err(|_| {
            io::Error::other(format!("the thread of {} dropped a job", self.inner.id))
        })?
    }

    /// Runs `f` on this namespace's thread; the calling task waits without
    /// blocking its worker.
    pub async fn run_async<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(f, move |r| {
            let _ = tx.send(r);
        })?;
        rx.await.map_err(|_| {
            io::Error::other(format!("the thread of {} dropped a job", self.inner.id))
        })?
    }

    /// Opens a TCP connection to `addr` from inside the pod, with `SO_MARK`
    /// set to `mark` (pass [`hawser_api::cni::PROXY_MARK`] so the pod's
    /// redirection rules let it through; `0` leaves the socket unmarked).
    /// The socket is created and the non-blocking connect started on the
    /// namespace thread; the handshake is awaited here. `TCP_NODELAY` is set.
    pub async fn connect_tcp(&self, addr: SocketAddr, mark: u32) -> io::Result<TcpStream> {
        let fd = self
            .run_async(move || start_connect(addr, mark))
            .await?
            .map_err(|e| context(e, format_args!("connecting to {addr} in the pod")))?;
        let stream = TcpStream::from_std(std::net::TcpStream::from(fd))?;
        stream.writable().await?;
        if let Some(e) = stream.take_error()? {
            return Err(context(e, format_args!("connecting to {addr} in the pod")));
        }
        // A proxy forwards what it has at once: Nagle's algorithm would hold
        // small writes back for the peer's delayed ACK (a 40 ms tail).
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Binds a TCP listener on `addr` inside the pod (`SO_REUSEADDR`,
    /// non-blocking).
    pub async fn bind_tcp(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let listener = self.run_async(move || listen_std(addr)).await??;
        TcpListener::from_std(listener)
    }

    /// Binds a std TCP listener on `addr` inside the pod, blocking the caller
    /// (see [`Self::run`]). Convert it with `TcpListener::from_std` inside a
    /// runtime.
    pub fn bind_std(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        self.run(move || listen_std(addr))?
    }
}

fn context(e: io::Error, what: fmt::Arguments<'_>) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn family(addr: SocketAddr) -> AddressFamily {
    match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// Creates, marks and starts connecting a socket (in the calling thread's
/// namespace).
fn start_connect(addr: SocketAddr, mark: u32) -> io::Result<OwnedFd> {
    let fd = socket(
        family(addr),
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if mark != 0 {
        setsockopt(&fd, sockopt::Mark, &mark)
            .map_err(|e| context(e.into(), format_args!("setting SO_MARK {mark:#x}")))?;
    }
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) | Err(Errno::EINPROGRESS) => Ok(fd),
        Err(e) => Err(e.into()),
    }
}

/// Creates a listening socket (in the calling thread's namespace).
fn listen_std(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let wrap = |e: Errno| context(e.into(), format_args!("listening on {addr}"));
    let fd = socket(
        family(addr),
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(wrap)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(wrap)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(wrap)?;
    listen(&fd, Backlog::new(LISTEN_BACKLOG).map_err(wrap)?).map_err(wrap)?;
    Ok(std::net::TcpListener::from(fd))
}

/// Makes accepted TCP connections in the namespace carry the mark of the
/// connection request that opened them (`net.ipv4.tcp_fwmark_accept`, IPv4
/// and IPv6), so [`dialed_by_proxy`] can tell a connection the proxy opened
/// in this namespace from one a pod opened. Call it on the namespace's
/// thread ([`NetnsHandle::run`]): `/proc/sys/net` is the caller's namespace.
pub fn mark_accepted_connections() -> io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/tcp_fwmark_accept", "1").map_err(|e| {
        context(
            e,
            format_args!("setting net.ipv4.tcp_fwmark_accept in the pod namespace"),
        )
    })
}

/// Whether an accepted connection was opened by the node proxy itself from
/// this namespace (its `SO_MARK` is [`hawser_api::cni::PROXY_MARK`]; see
/// [`mark_accepted_connections`]): the hop marker that cuts a loop of the
/// proxy dialling its own listeners. Marks do not cross namespaces, so a
/// connection from another pod or node never carries it.
pub fn dialed_by_proxy(stream: &TcpStream) -> bool {
    getsockopt(stream, sockopt::Mark).is_ok_and(|mark| mark == hawser_api::cni::PROXY_MARK)
}

/// The destination a redirected connection was originally sent to
/// (`SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST` for IPv6), read from the
/// connection tracking of the socket's own namespace.
///
/// A connection that reached the listener directly (not through the pod's
/// `redirect` rules) reports the listener's own address, or an error of kind
/// `NotFound` when the namespace does not track connections at all.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let explain = |e: Errno| {
        let err = io::Error::from(e);
        if e == Errno::ENOENT {
            io::Error::new(
                err.kind(),
                format!(
                    "no original destination for the connection to {local}: it was not redirected ({err})"
                ),
            )
        } else {
            context(
                err,
                format_args!("reading the original destination of {local}"),
            )
        }
    };
    match local {
        SocketAddr::V4(_) => getsockopt(stream, sockopt::OriginalDst)
            .map(|sa| SocketAddr::from(SockaddrIn::from(sa)))
            .map_err(explain),
        SocketAddr::V6(_) => getsockopt(stream, sockopt::Ip6tOriginalDst)
            .map(|sa| SocketAddr::from(SockaddrIn6::from(sa)))
            .map_err(explain),
    }
}
