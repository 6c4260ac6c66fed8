//! Per-node config on the wire: turns index resources, snapshots and deltas
//! into `hawser.discovery.v1` messages. Pure functions; the discovery server
//! calls them when it sends.

mod authz;
mod routes;

use hawser_api::proto::discovery as pb;

use crate::index::{
    Endpoint, NodeDelta, NodeSnapshot, Resource, ResourceKey, ResourceType, ServiceView, Versioned,
};
use crate::model::{AppProtocol, TargetPort, WorkloadView};

pub use routes::service_routes;

/// The wire name of a resource.
pub fn resource_name(key: &ResourceKey) -> pb::ResourceName {
    let kind = match key.kind {
        ResourceType::Workload => pb::ResourceType::Workload,
        ResourceType::Service => pb::ResourceType::Service,
        ResourceType::ServiceRoutes => pb::ResourceType::ServiceRoutes,
        ResourceType::AuthorizationPolicy => pb::ResourceType::AuthorizationPolicy,
    };
    pb::ResourceName {
        r#type: kind as i32,
        name: key.name.clone(),
    }
}

/// One resource in its envelope.
pub fn resource(key: &ResourceKey, versioned: &Versioned) -> pb::Resource {
    let kind = match &versioned.resource {
        Resource::Workload(w) => pb::resource::Kind::Workload(workload(w)),
        Resource::Service(s) => pb::resource::Kind::Service(service(s)),
        Resource::ServiceRoutes(r) => pb::resource::Kind::ServiceRoutes(service_routes(r)),
        Resource::AuthorizationPolicy(p) => {
            pb::resource::Kind::AuthorizationPolicy(authz::policy(p))
        }
    };
    pb::Resource {
        name: Some(resource_name(key)),
        version: versioned.version,
        kind: Some(kind),
    }
}

/// A node's snapshot.
pub fn snapshot(s: &NodeSnapshot) -> pb::Snapshot {
    pb::Snapshot {
        version: s.version,
        resources: s.resources.iter().map(|(k, v)| resource(k, v)).collect(),
    }
}

/// A node's delta.
pub fn delta(d: &NodeDelta) -> pb::Delta {
    pb::Delta {
        from_version: d.from_version,
        version: d.version,
        upserted: d.upserted.iter().map(|(k, v)| resource(k, v)).collect(),
        removed: d.removed.iter().map(resource_name).collect(),
    }
}

/// A workload.
pub fn workload(w: &WorkloadView) -> pb::Workload {
    pb::Workload {
        uid: w.uid.clone(),
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        node: w.node.clone().unwrap_or_default(),
        ips: w.ips.iter().map(ToString::to_string).collect(),
        service_account: w.service_account.clone(),
        spiffe_id: w.spiffe_id.clone(),
        enrolled: w.enrolled,
        ready: w.ready,
        authorization_policies: w.authorization_policies.clone(),
    }
}

/// A Service with its endpoints.
pub fn service(s: &ServiceView) -> pb::Service {
    pb::Service {
        namespace: s.key.namespace.clone(),
        name: s.key.name.clone(),
        vips: s.vips.iter().map(ToString::to_string).collect(),
        ports: s
            .ports
            .iter()
            .map(|p| pb::ServicePort {
                name: p.name.clone(),
                port: u32::from(p.port),
                app_protocol: p.app_protocol.clone().unwrap_or_default(),
                protocol: match AppProtocol::from_app_protocol(p.app_protocol.as_deref()) {
                    AppProtocol::Tcp => pb::Protocol::Tcp,
                    AppProtocol::Http => pb::Protocol::Http,
                    AppProtocol::Http2 => pb::Protocol::Http2,
                } as i32,
                target_port: Some(match &p.target_port {
                    TargetPort::Number(n) => {
                        pb::service_port::TargetPort::TargetPortNumber(u32::from(*n))
                    }
                    TargetPort::Name(name) => {
                        pb::service_port::TargetPort::TargetPortName(name.clone())
                    }
                }),
            })
            .collect(),
        endpoints: s.endpoints.iter().map(endpoint).collect(),
        upgrades: s
            .allowed_upgrades
            .as_ref()
            .map(|protocols| pb::UpgradePolicy {
                protocols: protocols.clone(),
            }),
    }
}

fn endpoint(e: &Endpoint) -> pb::Endpoint {
    pb::Endpoint {
        workload_uid: e.workload_uid.clone().unwrap_or_default(),
        addresses: e.addresses.iter().map(ToString::to_string).collect(),
        ports: e
            .ports
            .iter()
            .map(|(k, v)| (u32::from(*k), u32::from(*v)))
            .collect(),
        ready: e.ready,
        node: e.node.clone().unwrap_or_default(),
    }
}
