//! In-pod redirection, the proxy's side: the CNI conversation and the
//! sockets the proxy opens inside each enrolled pod's network namespace.
//!
//! When kubelet creates a pod, `hawser-cni` asks this node proxy whether the
//! pod is enrolled, writes the pod's nftables rules, and hands over the pod's
//! network namespace as a descriptor (`api/proto/cni.proto`). [`InPod`]
//! answers those requests ([`hawser_api::cni::server::CniHandler`]):
//!
//! 1. `add`: enrollment is decided from the node's configuration
//!    ([`enrollment`]); the reply carries the node's addresses as kubelet
//!    probe sources.
//! 2. `handoff`: the namespace gets a dedicated thread ([`NetnsHandle`]) on
//!    which the three listeners are opened on `0.0.0.0`: 15001 (outbound
//!    capture), 15006 (inbound plaintext capture), 15008 (HBONE). The pod is
//!    persisted ([`persist`]) and handed to the data plane with its
//!    listeners ([`PodServer`], [`PodContext`], [`PodSockets`]).
//! 3. `del`: the listeners are shut down, the pod's [`DrainWatch`] fires
//!    (connections get a grace period, then are closed), the record goes.
//!
//! Sockets in a pod's namespace are only ever created on that pod's thread,
//! never on a tokio worker; upstream connections for a pod are opened there
//! with [`hawser_api::cni::PROXY_MARK`] so the pod's rules let them through
//! ([`NetnsHandle::connect_tcp`]). [`original_dst`] recovers where a
//! captured connection was going.
//!
//! Restart: [`InPod::restore`] reopens every persisted pod by its netns path,
//! checks it is still the namespace handed over (device and inode), and
//! serves it again; records of vanished pods are dropped. The list of
//! enrolled namespaces is kept in `<run dir>/enrolled-namespaces.json` so
//! the plugin holds back enrolled pods while the proxy is down.

mod drain;
pub mod enrollment;
mod handler;
mod netns;
pub mod persist;
mod pod;
pub mod probes;
#[cfg(test)]
mod tests;

pub use drain::{DrainTrigger, DrainWatch, Draining};
pub use handler::{
    DEFAULT_DRAIN_GRACE, DEFAULT_ENROLLMENT_WAIT, InPod, InPodError, InPodSettings, RestoreReport,
    ServeError,
};
pub use netns::{
    NetnsError, NetnsHandle, NetnsId, dialed_by_proxy, mark_accepted_connections, original_dst,
};
pub use pod::{ContainerId, ContainerIdError, PodContext, PodServer, PodSockets};
