//! A Service as node proxies see it: VIPs, ports and endpoints.
//!
//! Endpoints come from the Service's EndpointSlices when it has any;
//! otherwise, for a Service with a selector, from the pods it selects, as
//! Kubernetes' endpoint controller would build them: pods with an IP that
//! are not terminated, `ready` from the pod's Ready condition, target ports
//! resolved per pod (a named `targetPort` uses the pod's container port of
//! that name; a pod without it is no endpoint for that port).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::{EndpointSlice, ObjectKey, Pod, Service, ServicePort, ServiceType, TargetPort};

/// One backend of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// The pod's UID, when the endpoint is a known pod.
    pub workload_uid: Option<String>,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Service port -> port on the endpoint.
    pub ports: BTreeMap<u16, u16>,
    /// Ready for traffic.
    pub ready: bool,
    /// Its node, if known.
    pub node: Option<String>,
}

/// A Service with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    /// Namespace and name.
    pub key: ObjectKey,
    /// ClusterIPs (empty: headless or ExternalName).
    pub vips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Endpoints, sorted.
    pub endpoints: Vec<Endpoint>,
    /// The protocols HTTP clients may upgrade to (`None`: the node's default).
    pub allowed_upgrades: Option<Vec<String>>,
}

/// Builds the view of `service` from its `slices`, or from `pods` (the pods
/// of its namespace) when it has no slices.
pub fn service_view<'a>(
    service: &Service,
    slices: &[&EndpointSlice],
    pods: impl Iterator<Item = &'a Pod>,
    pod_by_name: impl Fn(&str) -> Option<&'a Pod>,
) -> ServiceView {
    let vips = match service.service_type {
        ServiceType::ClusterIp => service.cluster_ips.clone(),
        ServiceType::Headless | ServiceType::ExternalName(_) => Vec::new(),
    };
    let mut endpoints = if !slices.is_empty() {
        from_slices(service, slices, pod_by_name)
    } else if matches!(service.service_type, ServiceType::ExternalName(_)) {
        Vec::new()
    } else {
        match &service.selector {
            Some(sel) if !sel.is_empty() => pods
                .filter(|p| sel.iter().all(|(k, v)| p.meta.labels.get(k) == Some(v)))
                .filter_map(|p| from_pod(service, p))
                .collect(),
            _ => Vec::new(),
        }
    };
    endpoints.sort();
    ServiceView {
        key: service.meta.key.clone(),
        vips,
        ports: service.ports.clone(),
        endpoints,
        allowed_upgrades: service.allowed_upgrades.clone(),
    }
}

fn from_pod(service: &Service, pod: &Pod) -> Option<Endpoint> {
    if pod.terminated || pod.ips.is_empty() {
        return None;
    }
    let ports: BTreeMap<u16, u16> = service
        .ports
        .iter()
        .filter_map(|sp| {
            let target = match &sp.target_port {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Name(name) => pod.named_port(name),
            };
            target.map(|t| (sp.port, t))
        })
        .collect();
    if ports.is_empty() && !service.ports.is_empty() {
        return None;
    }
    Some(Endpoint {
        workload_uid: (!pod.meta.uid.is_empty()).then(|| pod.meta.uid.clone()),
        addresses: pod.ips.clone(),
        ports,
        ready: pod.ready,
        node: pod.node.clone(),
    })
}

fn from_slices<'a>(
    service: &Service,
    slices: &[&EndpointSlice],
    pod_by_name: impl Fn(&str) -> Option<&'a Pod>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for slice in slices {
        // Service port -> endpoint port, matched by port name.
        let ports: BTreeMap<u16, u16> = service
            .ports
            .iter()
            .filter_map(|sp| {
                slice
                    .ports
                    .iter()
                    .find(|p| p.name == sp.name)
                    .map(|p| (sp.port, p.port))
            })
            .collect();
        for e in &slice.endpoints {
            let pod = e.pod.as_deref().and_then(&pod_by_name);
            out.push(Endpoint {
                workload_uid: pod
                    .filter(|p| !p.meta.uid.is_empty())
                    .map(|p| p.meta.uid.clone()),
                addresses: e.addresses.clone(),
                ports: ports.clone(),
                ready: e.ready,
                node: e.node.clone().or_else(|| pod.and_then(|p| p.node.clone())),
            });
        }
    }
    out
}
