//! The contract between the `hawser-cni` chained CNI plugin and the node proxy.
//!
//! When kubelet creates a pod sandbox, the primary CNI (bridge, Calico, …)
//! configures the pod's interface and then `hawser-cni` runs last in the
//! chain. It asks the node proxy over a Unix stream socket whether the pod is
//! enrolled ([`proto::AddPod`] → [`proto::AddReply`]); if so it writes an
//! nftables table into the pod's network namespace that sends outbound TCP to
//! [`OUTBOUND_CAPTURE_PORT`] and inbound TCP (except to [`HBONE_INBOUND_PORT`])
//! to [`INBOUND_CAPTURE_PORT`], skipping packets that carry [`PROXY_MARK`], and
//! then hands the netns itself to the proxy as a file descriptor over
//! `SCM_RIGHTS` ([`proto::NetnsHandoff`]), so the proxy can open its listeners
//! inside the pod. The wire protocol is documented in `api/proto/cni.proto`.
//!
//! - [`frame`]: varint length-delimited protobuf frames with fd passing.
//! - [`client`]: the plugin's side of the conversation.
//! - [`server`]: the proxy's side: a blocking accept loop calling a
//!   [`server::CniHandler`] (the node proxy runs it on a dedicated thread;
//!   tests run a real one on a temporary socket).
//! - [`redirect`]: the validated per-pod redirection settings and [`redirect::Cidr`].
//! - [`annotations`]: the pod annotations the proxy turns into those settings.
//! - [`enrolled`]: the enrolled-namespaces file the proxy persists so the
//!   plugin can fail closed while the proxy is down.

pub mod annotations;
pub mod client;
pub mod enrolled;
pub mod frame;
pub mod redirect;
pub mod server;

/// The generated protocol messages (`hawser.cni.v1`).
pub use crate::proto::cni as proto;

/// The protocol revision carried in [`proto::PluginMessage::protocol_version`].
pub const PROTOCOL_VERSION: u32 = 1;

/// The packet mark (`SO_MARK`) on every socket the node proxy opens inside a
/// pod netns. The pod's nftables rules never redirect packets carrying it,
/// which is what keeps the proxy's own upstream connections from looping back
/// into itself.
pub const PROXY_MARK: u32 = 0x539;

/// In-pod port of the outbound capture listener: every outbound TCP
/// connection of an enrolled pod is redirected here.
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;

/// In-pod port of the inbound plaintext capture listener: inbound TCP to any
/// other port of an enrolled pod is redirected here.
pub const INBOUND_CAPTURE_PORT: u16 = 15006;

/// In-pod port of the HBONE (mTLS HTTP/2 CONNECT) listener; inbound TCP to it
/// is never redirected.
pub const HBONE_INBOUND_PORT: u16 = 15008;

/// The source kubelet's probes to enrolled pods are SNATed to on the node
/// (the address Istio ambient uses): the only source an enrolled pod's rules
/// let through uncaptured.
pub const PROBE_SOURCE_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 7, 127);

/// [`PROBE_SOURCE_V4`] for IPv6.
pub const PROBE_SOURCE_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(
    0xfd16, 0x9254, 0x7127, 0x1337, 0xffff, 0xffff, 0xffff, 0xffff,
);

/// The node proxy's default admin API port (Prometheus metrics included);
/// it listens in the node's namespace, and the port is reserved in pods too.
pub const PROXY_ADMIN_PORT: u16 = 15000;

/// The ports the node proxy serves or reserves in every enrolled pod. A
/// connection, or an HBONE CONNECT, to one of them on the pod's own address
/// or loopback would reach the proxy itself (and, dialed again, itself once
/// more): it is refused, never forwarded.
pub const PROXY_PORTS: [u16; 4] = [
    PROXY_ADMIN_PORT,
    OUTBOUND_CAPTURE_PORT,
    INBOUND_CAPTURE_PORT,
    HBONE_INBOUND_PORT,
];

/// Whether `port` is one of [`PROXY_PORTS`].
pub fn is_proxy_port(port: u16) -> bool {
    PROXY_PORTS.contains(&port)
}

/// Default path of the node proxy's CNI socket.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/hawser/cni.sock";

/// Default run directory shared by the node proxy and the plugin (holds the
/// enrolled-namespaces file and the plugin's attachment state).
pub const DEFAULT_RUN_DIR: &str = "/var/run/hawser";

/// Largest frame either side accepts, in bytes (payload, without the length
/// prefix).
pub const MAX_FRAME_LEN: usize = 64 * 1024;
