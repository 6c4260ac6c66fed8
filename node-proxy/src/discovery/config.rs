//! The configuration a node holds: every resource the control plane sent, at
//! one version, each validated before it is accepted. Updates build a new
//! config and never modify the one in force; the map is persistent (shared
//! structure), so a delta costs O(changes · log n), not a copy of the mesh.

use std::net::IpAddr;
use std::sync::Arc;

use imbl::OrdMap;

use hawser_api::SpiffeId;
use hawser_api::proto::discovery::{
    self as pb, Delta, Resource, ResourceName, ResourceType, Snapshot, resource::Kind,
};

/// Why an update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The control plane sent an empty message.
    #[error("discovery response carries neither a snapshot nor a delta")]
    Empty,
    /// A delta starts from another version than the one held.
    #[error("delta from version {from} does not apply to held version {held}")]
    VersionGap {
        /// The delta's base version.
        from: u64,
        /// The version held.
        held: u64,
    },
    /// One resource is invalid.
    #[error("{kind:?} {name:?} is invalid: {reason}")]
    Invalid {
        /// Its type.
        kind: ResourceType,
        /// Its name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    /// The resource at fault, for the NACK.
    pub fn resource(&self) -> Option<ResourceName> {
        match self {
            Self::Invalid { kind, name, .. } => Some(ResourceName {
                r#type: *kind as i32,
                name: name.clone(),
            }),
            _ => None,
        }
    }
}

type Key = (i32, String);

/// The mesh as this node sees it.
#[derive(Debug, Clone, Default)]
pub struct NodeConfig {
    version: u64,
    resources: OrdMap<Key, Arc<Resource>>,
}

impl NodeConfig {
    /// The control plane version this config corresponds to (0: none yet).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// Whether no resource is held.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// A resource by type and name.
    pub fn get(&self, kind: ResourceType, name: &str) -> Option<&Resource> {
        self.resources
            .get(&(kind as i32, name.to_owned()))
            .map(|r| r.as_ref())
    }

    /// A resource by type and name, shared with this config (versions
    /// share their unchanged resources; holding one copies nothing).
    pub fn get_shared(&self, kind: ResourceType, name: &str) -> Option<Arc<Resource>> {
        self.resources.get(&(kind as i32, name.to_owned())).cloned()
    }

    /// Every resource, ordered by type and name.
    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.resources.values().map(|r| r.as_ref())
    }

    /// Every workload.
    pub fn workloads(&self) -> impl Iterator<Item = &pb::Workload> {
        self.resources.values().filter_map(|r| match &r.kind {
            Some(Kind::Workload(w)) => Some(w),
            _ => None,
        })
    }

    /// Every Service.
    pub fn services(&self) -> impl Iterator<Item = &pb::Service> {
        self.resources.values().filter_map(|r| match &r.kind {
            Some(Kind::Service(s)) => Some(s),
            _ => None,
        })
    }

    /// Every Service's routes.
    pub fn service_routes(&self) -> impl Iterator<Item = &pb::ServiceRoutes> {
        self.resources.values().filter_map(|r| match &r.kind {
            Some(Kind::ServiceRoutes(s)) => Some(s),
            _ => None,
        })
    }

    /// Every authorization policy.
    pub fn authorization_policies(&self) -> impl Iterator<Item = &pb::AuthorizationPolicy> {
        self.resources.values().filter_map(|r| match &r.kind {
            Some(Kind::AuthorizationPolicy(p)) => Some(p),
            _ => None,
        })
    }

    /// A config holding exactly the snapshot's resources.
    pub fn from_snapshot(snapshot: Snapshot) -> Result<Self, ConfigError> {
        let mut resources = OrdMap::new();
        for r in snapshot.resources {
            let key = validate(&r)?;
            resources.insert(key, Arc::new(r));
        }
        Ok(Self {
            version: snapshot.version,
            resources,
        })
    }

    /// This config with `delta` applied, or why it cannot be.
    pub fn with_delta(&self, delta: Delta) -> Result<Self, ConfigError> {
        if delta.from_version != self.version {
            return Err(ConfigError::VersionGap {
                from: delta.from_version,
                held: self.version,
            });
        }
        let mut next = self.clone();
        for name in delta.removed {
            next.resources.remove(&(name.r#type, name.name));
        }
        for r in delta.upserted {
            let key = validate(&r)?;
            next.resources.insert(key, Arc::new(r));
        }
        next.version = delta.version;
        Ok(next)
    }
}

/// Checks a resource is usable; returns its key.
fn validate(r: &Resource) -> Result<Key, ConfigError> {
    let name = r.name.clone().unwrap_or_default();
    let kind = ResourceType::try_from(name.r#type).unwrap_or(ResourceType::Unspecified);
    let invalid = |reason: String| ConfigError::Invalid {
        kind,
        name: name.name.clone(),
        reason,
    };
    if name.name.is_empty() {
        return Err(invalid("resource has no name".into()));
    }
    let ips = |what: &str, list: &[String]| -> Result<(), ConfigError> {
        for ip in list {
            ip.parse::<IpAddr>()
                .map_err(|_| invalid(format!("{what} {ip:?} is not an IP address")))?;
        }
        Ok(())
    };
    match (&r.kind, kind) {
        (Some(Kind::Workload(w)), ResourceType::Workload) => {
            if w.uid != name.name {
                return Err(invalid(format!(
                    "workload uid {:?} differs from its resource name",
                    w.uid
                )));
            }
            ips("workload address", &w.ips)?;
            if !w.spiffe_id.is_empty() {
                SpiffeId::parse_workload(&w.spiffe_id)
                    .map_err(|e| invalid(format!("identity: {e}")))?;
            }
        }
        (Some(Kind::Service(s)), ResourceType::Service) => {
            ips("service VIP", &s.vips)?;
            for p in &s.ports {
                if p.port == 0 || p.port > 65535 {
                    return Err(invalid(format!("port {} is out of range", p.port)));
                }
            }
            for e in &s.endpoints {
                ips("endpoint address", &e.addresses)?;
                if let Some((from, to)) = e.ports.iter().find(|(_, t)| **t == 0 || **t > 65535) {
                    return Err(invalid(format!(
                        "endpoint target port {to} for port {from} is out of range"
                    )));
                }
            }
        }
        (Some(Kind::ServiceRoutes(_)), ResourceType::ServiceRoutes)
        | (Some(Kind::AuthorizationPolicy(_)), ResourceType::AuthorizationPolicy) => {}
        (None, _) => return Err(invalid("resource carries no content".into())),
        (Some(_), _) => return Err(invalid("content does not match the resource type".into())),
    }
    Ok((name.r#type, name.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(uid: &str, ip: &str) -> Resource {
        Resource {
            name: Some(ResourceName {
                r#type: ResourceType::Workload as i32,
                name: uid.into(),
            }),
            version: 1,
            kind: Some(Kind::Workload(pb::Workload {
                uid: uid.into(),
                namespace: "default".into(),
                name: "web".into(),
                ips: vec![ip.into()],
                ..Default::default()
            })),
        }
    }

    #[test]
    fn snapshot_then_deltas() {
        let cfg = NodeConfig::from_snapshot(Snapshot {
            version: 3,
            resources: vec![workload("u1", "10.244.1.2"), workload("u2", "10.244.1.3")],
        })
        .unwrap();
        assert_eq!((cfg.version(), cfg.len()), (3, 2));
        let next = cfg
            .with_delta(Delta {
                from_version: 3,
                version: 5,
                upserted: vec![workload("u3", "10.244.1.4")],
                removed: vec![ResourceName {
                    r#type: ResourceType::Workload as i32,
                    name: "u1".into(),
                }],
            })
            .unwrap();
        assert_eq!(next.version(), 5);
        let uids: Vec<_> = next.workloads().map(|w| w.uid.as_str()).collect();
        assert_eq!(uids, ["u2", "u3"]);
        // The original is untouched.
        assert_eq!(cfg.len(), 2);
    }

    #[test]
    fn invalid_updates_are_refused_whole() {
        let cfg = NodeConfig::from_snapshot(Snapshot {
            version: 1,
            resources: vec![workload("u1", "10.244.1.2")],
        })
        .unwrap();
        let err = cfg
            .with_delta(Delta {
                from_version: 1,
                version: 2,
                upserted: vec![workload("u2", "10.244.1.3"), workload("u3", "not-an-ip")],
                removed: vec![],
            })
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("\"not-an-ip\" is not an IP address"),
            "{err}"
        );
        assert_eq!(err.resource().unwrap().name, "u3");
        let gap = cfg
            .with_delta(Delta {
                from_version: 7,
                version: 8,
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(gap, ConfigError::VersionGap { from: 7, held: 1 });
        let mut mismatched = workload("u9", "10.0.0.1");
        mismatched.name.as_mut().unwrap().r#type = ResourceType::Service as i32;
        assert!(
            NodeConfig::from_snapshot(Snapshot {
                version: 1,
                resources: vec![mismatched],
            })
            .unwrap_err()
            .to_string()
            .contains("does not match")
        );
    }
}
