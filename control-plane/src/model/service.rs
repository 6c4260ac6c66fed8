//! Services and EndpointSlices as input.

use std::net::IpAddr;

use super::Meta;

/// `spec.type` of a Service, as far as the mesh cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceType {
    /// ClusterIP, NodePort or LoadBalancer with one or more ClusterIPs.
    ClusterIp,
    /// `clusterIP: None`: no VIP, so no route can attach.
    Headless,
    /// `type: ExternalName`: a DNS alias, neither a parent nor a backend.
    ExternalName(String),
}

/// `spec.ports[].targetPort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// A port number on the pod.
    Number(u16),
    /// A container port name, resolved per pod.
    Name(String),
}

/// `spec.ports[].appProtocol`, interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppProtocol {
    /// Unset or unknown: opaque TCP.
    Tcp,
    /// `http`, `kubernetes.io/http`, `kubernetes.io/ws`.
    Http,
    /// `kubernetes.io/h2c`, `grpc`, `http2`: HTTP/2 with prior knowledge.
    Http2,
}

impl AppProtocol {
    /// Interprets an `appProtocol` value, by the rule the node proxies
    /// follow ([`hawser_api::protocol`]).
    pub fn from_app_protocol(value: Option<&str>) -> Self {
        use hawser_api::protocol::{is_h2, is_http};
        match value.filter(|v| !v.is_empty()) {
            Some(v) if is_h2(Some(v), "") => AppProtocol::Http2,
            Some(v) if is_http(Some(v), "") => AppProtocol::Http,
            _ => AppProtocol::Tcp,
        }
    }
}

/// One port of a Service (TCP only: the mesh carries TCP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `name` (empty on a single unnamed port).
    pub name: String,
    /// `port`.
    pub port: u16,
    /// `targetPort` (defaults to `port`).
    pub target_port: TargetPort,
    /// `appProtocol` as written.
    pub app_protocol: Option<String>,
}

/// A Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Key, uid, labels.
    pub meta: Meta,
    /// How it is addressed.
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (empty when headless or not yet allocated).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ports` with protocol TCP.
    pub ports: Vec<ServicePort>,
    /// `spec.selector`; `None` when the Service has no selector (endpoints
    /// come only from EndpointSlices).
    pub selector: Option<super::Labels>,
    /// The protocols clients may upgrade HTTP connections to on its ports
    /// (annotation [`ALLOWED_UPGRADES_ANNOTATION`]); `None`: the node's
    /// default.
    pub allowed_upgrades: Option<Vec<String>>,
}

/// The Service annotation naming the protocols clients may upgrade HTTP
/// connections to on its ports, comma separated (`websocket`, `websocket,
/// spdy/3.1`; empty: none). Without it, the node proxy's default applies
/// (`websocket`, as in Envoy and Istio).
pub const ALLOWED_UPGRADES_ANNOTATION: &str = "hawser.dev/allowed-upgrades";

impl Service {
    /// The port numbered `port`.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// One port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    /// Matches the Service port of the same name (empty: the unnamed port).
    pub name: String,
    /// The port on the endpoints.
    pub port: u16,
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// `addresses`.
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (unset counts as ready, as in Kubernetes).
    pub ready: bool,
    /// `targetRef` when it names a Pod: the pod's name (same namespace).
    pub pod: Option<String>,
    /// `nodeName`.
    pub node: Option<String>,
}

/// An EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    /// Key, uid, labels.
    pub meta: Meta,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: String,
    /// `ports` with protocol TCP.
    pub ports: Vec<SlicePort>,
    /// `endpoints`.
    pub endpoints: Vec<SliceEndpoint>,
}
