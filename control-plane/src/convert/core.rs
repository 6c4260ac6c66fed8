//! Namespaces, Pods, Services and EndpointSlices.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{FieldError, SERVICE_NAME_LABEL, done, meta, port};
use crate::model::{
    ContainerPort, EndpointSlice, Namespace, Pod, Service, ServicePort, ServiceType, SliceEndpoint,
    SlicePort, TargetPort,
};

fn is_tcp(protocol: &Option<String>) -> bool {
    protocol.as_deref().is_none_or(|p| p == "TCP")
}

fn ip(value: &str, field: String, errors: &mut Vec<FieldError>) -> Option<IpAddr> {
    match value.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            errors.push(FieldError::new(
                field,
                format!("{value:?} is not an IP address"),
            ));
            None
        }
    }
}

/// A Namespace.
pub fn namespace(ns: &core::Namespace) -> Result<Namespace, Vec<FieldError>> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(vec![FieldError::new("metadata.name", "is required")]);
    }
    Ok(Namespace {
        name,
        labels: ns.metadata.labels.clone().unwrap_or_default(),
    })
}

/// A Pod.
pub fn pod(p: &core::Pod) -> Result<Pod, Vec<FieldError>> {
    let mut errors = Vec::new();
    let meta = meta(&p.metadata, &mut errors);
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let mut ips = Vec::new();
    if let Some(status) = status {
        match &status.pod_ips {
            Some(list) if !list.is_empty() => {
                for (i, a) in list.iter().enumerate() {
                    ips.extend(ip(&a.ip, format!("status.podIPs[{i}].ip"), &mut errors));
                }
            }
            _ => {
                if let Some(a) = &status.pod_ip {
                    ips.extend(ip(a, "status.podIP".into(), &mut errors));
                }
            }
        }
    }
    let mut container_ports = Vec::new();
    if let Some(spec) = spec {
        for (i, c) in spec.containers.iter().enumerate() {
            for (j, cp) in c.ports.iter().flatten().enumerate() {
                if !is_tcp(&cp.protocol) {
                    continue;
                }
                let field = format!("spec.containers[{i}].ports[{j}].containerPort");
                if let Some(port) = port(cp.container_port, field, &mut errors) {
                    container_ports.push(ContainerPort {
                        name: cp.name.clone(),
                        port,
                    });
                }
            }
        }
    }
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let terminated = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    done(
        Pod {
            meta,
            node: spec
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            ips,
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            ready,
            terminated,
            container_ports,
        },
        errors,
    )
}

/// A Service (TCP ports only: the mesh carries TCP).
pub fn service(s: &core::Service) -> Result<Service, Vec<FieldError>> {
    let mut errors = Vec::new();
    let meta = meta(&s.metadata, &mut errors);
    let allowed_upgrades = allowed_upgrades(s.metadata.annotations.as_ref(), &mut errors);
    let spec = s.spec.clone().unwrap_or_default();
    let service_type = match spec.type_.as_deref() {
        Some("ExternalName") => {
            ServiceType::ExternalName(spec.external_name.clone().unwrap_or_default())
        }
        _ if spec.cluster_ip.as_deref() == Some("None") => ServiceType::Headless,
        None | Some("ClusterIP") | Some("NodePort") | Some("LoadBalancer") => {
            ServiceType::ClusterIp
        }
        Some(other) => {
            errors.push(FieldError::new(
                "spec.type",
                format!("{other:?} is not ClusterIP, NodePort, LoadBalancer or ExternalName"),
            ));
            ServiceType::ClusterIp
        }
    };
    let mut cluster_ips = Vec::new();
    if service_type == ServiceType::ClusterIp {
        match &spec.cluster_ips {
            Some(list) if !list.is_empty() => {
                for (i, a) in list.iter().enumerate() {
                    cluster_ips.extend(ip(a, format!("spec.clusterIPs[{i}]"), &mut errors));
                }
            }
            _ => {
                if let Some(a) = spec.cluster_ip.as_deref().filter(|a| !a.is_empty()) {
                    cluster_ips.extend(ip(a, "spec.clusterIP".into(), &mut errors));
                }
            }
        }
    }
    let all_ports = spec.ports.unwrap_or_default();
    let mut ports = Vec::new();
    for (i, p) in all_ports.iter().enumerate() {
        if !is_tcp(&p.protocol) {
            continue;
        }
        let name = p.name.clone().unwrap_or_default();
        if name.is_empty() && all_ports.len() > 1 {
            errors.push(FieldError::new(
                format!("spec.ports[{i}].name"),
                "is required when a Service has more than one port",
            ));
        }
        let Some(number) = port(p.port, format!("spec.ports[{i}].port"), &mut errors) else {
            continue;
        };
        let target_port = match &p.target_port {
            None => TargetPort::Number(number),
            Some(IntOrString::Int(n)) => {
                match port(*n, format!("spec.ports[{i}].targetPort"), &mut errors) {
                    Some(n) => TargetPort::Number(n),
                    None => continue,
                }
            }
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => match port(n, format!("spec.ports[{i}].targetPort"), &mut errors) {
                    Some(n) => TargetPort::Number(n),
                    None => continue,
                },
                Err(_) => TargetPort::Name(s.clone()),
            },
        };
        if ports.iter().any(|q: &ServicePort| q.port == number) {
            errors.push(FieldError::new(
                format!("spec.ports[{i}].port"),
                format!("port {number} is listed twice"),
            ));
        }
        ports.push(ServicePort {
            name,
            port: number,
            target_port,
            app_protocol: p.app_protocol.clone(),
        });
    }
    done(
        Service {
            meta,
            service_type,
            cluster_ips,
            ports,
            selector: spec.selector,
            allowed_upgrades,
        },
        errors,
    )
}

/// The protocols of the allowed-upgrades annotation, lowercase, each an
/// RFC 9110 token (with an optional `/version`).
fn allowed_upgrades(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
    errors: &mut Vec<FieldError>,
) -> Option<Vec<String>> {
    let value = annotations?.get(crate::model::ALLOWED_UPGRADES_ANNOTATION)?;
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let mut protocols = Vec::new();
    for protocol in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, version) = protocol.split_once('/').unwrap_or((protocol, "x"));
        if !token(name) || !token(version) {
            errors.push(FieldError::new(
                format!(
                    "metadata.annotations[{}]",
                    crate::model::ALLOWED_UPGRADES_ANNOTATION
                ),
                format!("{protocol:?} is not a protocol name (a token, optionally with /version)"),
            ));
            continue;
        }
        protocols.push(protocol.to_ascii_lowercase());
    }
    Some(protocols)
}

/// An EndpointSlice (IPv4/IPv6, TCP ports).
pub fn endpoint_slice(s: &discovery::EndpointSlice) -> Result<EndpointSlice, Vec<FieldError>> {
    let mut errors = Vec::new();
    let meta = meta(&s.metadata, &mut errors);
    let service = meta
        .labels
        .get(SERVICE_NAME_LABEL)
        .cloned()
        .unwrap_or_default();
    if service.is_empty() {
        errors.push(FieldError::new(
            format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
            "is required: it names the Service the slice belongs to",
        ));
    }
    if s.address_type != "IPv4" && s.address_type != "IPv6" {
        errors.push(FieldError::new(
            "addressType",
            format!("{:?} is not supported (IPv4 or IPv6)", s.address_type),
        ));
    }
    let mut ports = Vec::new();
    for (i, p) in s.ports.iter().flatten().enumerate() {
        if !is_tcp(&p.protocol) {
            continue;
        }
        let Some(number) = p.port else {
            errors.push(FieldError::new(format!("ports[{i}].port"), "is required"));
            continue;
        };
        if let Some(number) = port(number, format!("ports[{i}].port"), &mut errors) {
            ports.push(SlicePort {
                name: p.name.clone().unwrap_or_default(),
                port: number,
            });
        }
    }
    let mut endpoints = Vec::new();
    for (i, e) in s.endpoints.iter().enumerate() {
        let mut addresses = Vec::new();
        for (j, a) in e.addresses.iter().enumerate() {
            addresses.extend(ip(a, format!("endpoints[{i}].addresses[{j}]"), &mut errors));
        }
        let pod = e
            .target_ref
            .as_ref()
            .filter(|t| t.kind.as_deref() == Some("Pod"))
            .and_then(|t| t.name.clone());
        endpoints.push(SliceEndpoint {
            addresses,
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            pod,
            node: e.node_name.clone(),
        });
    }
    done(
        EndpointSlice {
            meta,
            service,
            ports,
            endpoints,
        },
        errors,
    )
}
