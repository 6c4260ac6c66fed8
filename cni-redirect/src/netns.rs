//! The pod's network namespace: opened once from `CNI_NETNS`, checked to be a
//! network namespace other than the plugin's own, entered on a dedicated
//! thread (so the plugin's main thread never changes namespace), and handed to
//! the node proxy as a descriptor.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sched::{CloneFlags, setns};
use nix::sys::stat::{Mode, fstat, stat};
use nix::sys::statfs::{NSFS_MAGIC, PROC_SUPER_MAGIC, fstatfs};

/// Why the netns cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path does not exist (the sandbox is gone).
    #[error("network namespace {0} does not exist")]
    NotFound(PathBuf),
    /// The path exists but cannot be opened.
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The path is not a namespace file.
    #[error("{0} is not a network namespace (expected a bind mount of /proc/<pid>/ns/net)")]
    NotNetns(PathBuf),
    /// The path is the plugin's own namespace (the host's).
    #[error("{0} is the plugin's own (host) network namespace")]
    IsOwn(PathBuf),
    /// `setns` failed.
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// The path.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The worker thread could not be started or panicked.
    #[error("netns worker thread for {0} failed")]
    Thread(PathBuf),
}

/// An open pod network namespace.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    path: PathBuf,
}

impl Netns {
    /// Opens `path` and checks it is a network namespace other than ours.
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
        let fs = fstatfs(&fd).map_err(|e| NetnsError::Open {
            path: path.into(),
            source: e.into(),
        })?;
        // Namespace files are on nsfs; older kernels report procfs for
        // /proc/<pid>/ns/* (the setns below rejects other namespace types).
        if fs.filesystem_type() != NSFS_MAGIC && fs.filesystem_type() != PROC_SUPER_MAGIC {
            return Err(NetnsError::NotNetns(path.into()));
        }
        let mine = stat("/proc/thread-self/ns/net").map_err(|e| NetnsError::Open {
            path: "/proc/thread-self/ns/net".into(),
            source: e.into(),
        })?;
        let theirs = fstat(&fd).map_err(|e| NetnsError::Open {
            path: path.into(),
            source: e.into(),
        })?;
        if (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino) {
            return Err(NetnsError::IsOwn(path.into()));
        }
        let ns = Self {
            fd,
            path: path.into(),
        };
        // Prove it is a *network* namespace now, not halfway through ADD.
        ns.run(|| ())?;
        Ok(ns)
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor (for the `SCM_RIGHTS` handoff).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Runs `f` on a fresh thread that has entered this namespace. Processes
    /// spawned by `f` (e.g. `nft`) inherit the namespace; the thread ends
    /// with `f`, so no other code ever runs in the pod's namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|s| {
            let worker = std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(s, || {
                    setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                        if e == Errno::EINVAL {
                            NetnsError::NotNetns(self.path.clone())
                        } else {
                            NetnsError::Enter {
                                path: self.path.clone(),
                                source: e.into(),
                            }
                        }
                    })?;
                    Ok(f())
                })
                .map_err(|_| NetnsError::Thread(self.path.clone()))?;
            worker
                .join()
                .map_err(|_| NetnsError::Thread(self.path.clone()))?
        })
    }
}
