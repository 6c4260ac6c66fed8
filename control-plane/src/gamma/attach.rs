//! Parent attachment: a route binds to a Service by its ClusterIP and port.
//! `parentRef.port` scopes the route to one Service port, `sectionName` to
//! the port of that name; neither means every port. Headless and
//! ExternalName Services have no ClusterIP and cannot be parents.

use std::collections::BTreeSet;

use crate::model::{ParentRef, Service, ServiceType};

/// Why a Service `parentRef` does not bind (`Accepted=False`, `NoMatchingParent`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The Service does not exist.
    #[error("service {0} not found")]
    ServiceNotFound(String),
    /// Headless Service.
    #[error("service {0} is headless (clusterIP: None) and has no ClusterIP to route")]
    Headless(String),
    /// ExternalName Service.
    #[error("service {0} is of type ExternalName and has no ClusterIP to route")]
    ExternalName(String),
    /// No ClusterIP allocated.
    #[error("service {0} has no ClusterIP")]
    NoClusterIp(String),
    /// `parentRef.port` names no port of the Service.
    #[error("service {0} has no port {1}")]
    NoSuchPort(String, u16),
    /// `sectionName` names no port of the Service.
    #[error("service {0} has no port named {1:?}")]
    NoSuchSection(String, String),
}

/// The Service ports `parent` binds to on `service` (None: the Service does
/// not exist).
pub fn attach(parent: &ParentRef, service: Option<&Service>) -> Result<BTreeSet<u16>, AttachError> {
    let Some(service) = service else {
        let ns = parent.namespace.as_deref().unwrap_or("<route namespace>");
        return Err(AttachError::ServiceNotFound(format!(
            "{ns}/{}",
            parent.name
        )));
    };
    let name = service.meta.key.to_string();
    match &service.service_type {
        ServiceType::Headless => return Err(AttachError::Headless(name)),
        ServiceType::ExternalName(_) => return Err(AttachError::ExternalName(name)),
        ServiceType::ClusterIp if service.cluster_ips.is_empty() => {
            return Err(AttachError::NoClusterIp(name));
        }
        ServiceType::ClusterIp => {}
    }
    let mut ports: BTreeSet<u16> = service.ports.iter().map(|p| p.port).collect();
    if let Some(port) = parent.port {
        if !ports.contains(&port) {
            return Err(AttachError::NoSuchPort(name, port));
        }
        ports = BTreeSet::from([port]);
    }
    if let Some(section) = &parent.section_name {
        let Some(p) = service
            .ports
            .iter()
            .find(|p| &p.name == section && ports.contains(&p.port))
        else {
            return Err(AttachError::NoSuchSection(name, section.clone()));
        };
        ports = BTreeSet::from([p.port]);
    }
    Ok(ports)
}
