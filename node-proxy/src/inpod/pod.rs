//! What the in-pod layer hands the data plane for each enrolled pod, and the
//! trait the data plane implements to receive it.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::drain::DrainWatch;
use super::netns::NetnsHandle;
use crate::identity::WorkloadRef;

/// `CNI_CONTAINERID`: the pod sandbox, the key of everything the in-pod layer
/// keeps. Validated as the CNI spec requires (letters, digits, `_`, `.`,
/// `-`), which also makes it safe as a file name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerId(String);

/// Longest container id accepted (runtimes use 64 hex digits).
const MAX_CONTAINER_ID: usize = 256;

/// Why a string is not a [`ContainerId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "container id {0:?} is invalid: it must be 1-256 letters, digits, '_', '.' or '-' and not start with '.'"
)]
pub struct ContainerIdError(pub String);

impl ContainerId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, ContainerIdError> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= MAX_CONTAINER_ID
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(Self(id))
        } else {
            Err(ContainerIdError(id))
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One enrolled pod as the data plane sees it.
#[derive(Debug)]
pub struct PodContext {
    /// The pod (namespace, name, uid; the uid may be empty when kubelet did
    /// not pass it).
    pub workload: WorkloadRef,
    /// The pod sandbox.
    pub container_id: ContainerId,
    /// The pod's addresses, from the primary CNI.
    pub ips: Vec<IpAddr>,
    /// The pod's network namespace: upstream connections made on the pod's
    /// behalf are opened here with [`NetnsHandle::connect_tcp`] and
    /// [`hawser_api::cni::PROXY_MARK`].
    pub netns: NetnsHandle,
    /// Fires when the pod leaves the node or the proxy shuts down.
    pub drain: DrainWatch,
}

/// The pod's three listeners, opened inside its network namespace on
/// `0.0.0.0` (IPv4).
#[derive(Debug)]
pub struct PodSockets {
    /// `15001`: outbound capture. Every outbound TCP connection of the pod
    /// lands here; [`super::original_dst`] gives where it was going.
    pub outbound: TcpListener,
    /// `15006`: inbound plaintext capture (inbound TCP to any pod port but
    /// 15008, from sources that are not kubelet probes or excluded).
    pub inbound_plain: TcpListener,
    /// `15008`: HBONE (mTLS HTTP/2 CONNECT) from other node proxies.
    pub hbone: TcpListener,
}

/// The data plane: serves the listeners of each enrolled pod.
///
/// [`serve`](Self::serve) is called from a plain thread (the CNI conversation
/// or the restore at startup) inside the runtime's context, so it may
/// `tokio::spawn`, but must not block. The implementation owns the
/// listeners: it stops accepting when `pod.drain` is signaled (the in-pod
/// layer also shuts the listening sockets down, so a pending `accept` fails
/// at that moment), lets each connection finish gracefully, and closes what
/// is still open at `pod.drain.forced()`.
pub trait PodServer: Send + Sync + 'static {
    /// Starts serving `pod` on `sockets`.
    fn serve(&self, pod: Arc<PodContext>, sockets: PodSockets);
}
