//! Namespaces and pods as input; workloads as the per-node resource derived from them.

use std::net::IpAddr;

use super::{Labels, Meta};

/// A namespace. Pods in it are enrolled in the mesh when its labels carry
/// `hawser.dev/mesh=enabled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// The namespace's name.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
}

impl Namespace {
    /// The opt-in label.
    pub const MESH_LABEL: &'static str = "hawser.dev/mesh";
    /// The opt-in label's value.
    pub const MESH_ENABLED: &'static str = "enabled";

    /// Whether the namespace opted into the mesh.
    pub fn enrolled(&self) -> bool {
        self.labels.get(Self::MESH_LABEL).map(String::as_str) == Some(Self::MESH_ENABLED)
    }
}

/// A named container port (what a Service's named `targetPort` resolves to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    /// `ports[].name`, if set.
    pub name: Option<String>,
    /// `ports[].containerPort`.
    pub port: u16,
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Key, uid, labels.
    pub meta: Meta,
    /// `spec.nodeName` (None while unscheduled).
    pub node: Option<String>,
    /// `status.podIPs`.
    pub ips: Vec<IpAddr>,
    /// `spec.serviceAccountName` (`default` when unset).
    pub service_account: String,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// `status.phase` is `Succeeded` or `Failed`: the pod will never run again.
    pub terminated: bool,
    /// Every container's ports.
    pub container_ports: Vec<ContainerPort>,
}

impl Pod {
    /// The container port named `name`.
    pub fn named_port(&self, name: &str) -> Option<u16> {
        self.container_ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }
}

/// What the CA needs to know to check that a node may obtain a pod's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod's UID.
    pub uid: String,
    /// The node it is scheduled on.
    pub node: String,
    /// Its ServiceAccount.
    pub service_account: String,
}

/// One workload as node proxies see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadView {
    /// The pod's UID.
    pub uid: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// Its node, if scheduled.
    pub node: Option<String>,
    /// Its IPs.
    pub ips: Vec<IpAddr>,
    /// Its ServiceAccount.
    pub service_account: String,
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub spiffe_id: String,
    /// Its namespace opted into the mesh.
    pub enrolled: bool,
    /// The pod is Ready.
    pub ready: bool,
    /// `namespace/name` of every AuthorizationPolicy applying to it, sorted.
    pub authorization_policies: Vec<String>,
}
