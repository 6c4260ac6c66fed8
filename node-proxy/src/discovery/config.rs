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
        (Some(Kind::ServiceRoutes(r)), ResourceType::ServiceRoutes) => {
            validate_routes(r).map_err(invalid)?;
        }
        (Some(Kind::AuthorizationPolicy(p)), ResourceType::AuthorizationPolicy) => {
            validate_policy(p).map_err(invalid)?;
        }
        (None, _) => return Err(invalid("resource carries no content".into())),
        (Some(_), _) => return Err(invalid("content does not match the resource type".into())),
    }
    Ok((name.r#type, name.name))
}

/// What a route table would otherwise compile to "never matches" (and so
/// be acknowledged while it does nothing): methods that are not HTTP
/// tokens, header names that are not field names.
fn validate_routes(r: &pb::ServiceRoutes) -> Result<(), String> {
    for port in &r.ports {
        let tables =
            port.producer
                .iter()
                .map(|t| ("producer".to_owned(), t))
                .chain(port.consumers.iter().filter_map(|c| {
                    Some((format!("consumers[{}]", c.namespace), c.table.as_ref()?))
                }));
        for (which, table) in tables {
            for (i, entry) in table.matches.iter().enumerate() {
                let at = |field: &str| format!("port {} {which} matches[{i}].{field}", port.port);
                let headers = match &entry.kind {
                    Some(pb::match_entry::Kind::Http(m)) => {
                        if !m.method.is_empty()
                            && http::Method::from_bytes(m.method.as_bytes()).is_err()
                        {
                            return Err(format!(
                                "{}: {:?} is not an HTTP method",
                                at("method"),
                                m.method
                            ));
                        }
                        &m.headers
                    }
                    Some(pb::match_entry::Kind::Grpc(m)) => &m.headers,
                    None => return Err(format!("{}: no condition", at("kind"))),
                };
                for (j, h) in headers.iter().enumerate() {
                    if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                        return Err(format!(
                            "{}: {:?} is not a header name",
                            at(&format!("headers[{j}].name")),
                            h.name
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// What a policy would otherwise silently never match on: an `ipBlock`
/// that is not a CIDR (a Deny that never denies), a SPIFFE ID or method
/// that cannot be one.
fn validate_policy(p: &pb::AuthorizationPolicy) -> Result<(), String> {
    for (i, rule) in p.rules.iter().enumerate() {
        for (j, from) in rule.from.iter().enumerate() {
            let at = |field: &str| format!("rules[{i}].from[{j}].{field}");
            if !from.ip_block.is_empty()
                && from
                    .ip_block
                    .parse::<hawser_api::cni::redirect::Cidr>()
                    .is_err()
            {
                return Err(format!(
                    "{}: {:?} is not a CIDR",
                    at("ipBlock"),
                    from.ip_block
                ));
            }
            if !from.spiffe_id.is_empty() {
                SpiffeId::parse(&from.spiffe_id).map_err(|e| format!("{}: {e}", at("spiffeId")))?;
            }
        }
        if let Some(to) = &rule.to {
            for (j, method) in to.methods.iter().enumerate() {
                if http::Method::from_bytes(method.as_bytes()).is_err() {
                    return Err(format!(
                        "rules[{i}].to.methods[{j}]: {method:?} is not an HTTP method"
                    ));
                }
            }
            for (j, path) in to.paths.iter().enumerate() {
                if path.kind.is_none() {
                    return Err(format!("rules[{i}].to.paths[{j}]: no path"));
                }
            }
        }
    }
    Ok(())
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

    /// A route or policy that would compile to "never matches" is refused
    /// (NACKed) with its field, and the config held stays the last good one.
    #[test]
    fn routes_and_policies_that_would_never_match_are_refused() {
        let cfg = NodeConfig::from_snapshot(Snapshot {
            version: 1,
            resources: vec![workload("u1", "10.244.1.2")],
        })
        .unwrap();
        let policy = |ip_block: &str, method: &str| Resource {
            name: Some(ResourceName {
                r#type: ResourceType::AuthorizationPolicy as i32,
                name: "shop/deny".into(),
            }),
            version: 2,
            kind: Some(Kind::AuthorizationPolicy(pb::AuthorizationPolicy {
                namespace: "shop".into(),
                name: "deny".into(),
                rules: vec![pb::AuthorizationRule {
                    from: vec![pb::Source {
                        ip_block: ip_block.into(),
                        ..Default::default()
                    }],
                    to: Some(pb::Destination {
                        methods: vec![method.into()],
                        ..Default::default()
                    }),
                }],
                ..Default::default()
            })),
        };
        let routes = |method: &str, header: &str| Resource {
            name: Some(ResourceName {
                r#type: ResourceType::ServiceRoutes as i32,
                name: "shop/api".into(),
            }),
            version: 2,
            kind: Some(Kind::ServiceRoutes(pb::ServiceRoutes {
                namespace: "shop".into(),
                name: "api".into(),
                ports: vec![pb::PortRoutes {
                    port: 80,
                    producer: Some(pb::RouteTable {
                        matches: vec![pb::MatchEntry {
                            rule: 0,
                            kind: Some(pb::match_entry::Kind::Http(pb::HttpMatch {
                                method: method.into(),
                                headers: vec![pb::HeaderMatch {
                                    name: header.into(),
                                    value: "v".into(),
                                }],
                                ..Default::default()
                            })),
                        }],
                        ..Default::default()
                    }),
                    consumers: vec![],
                }],
            })),
        };
        let delta = |r: Resource| Delta {
            from_version: 1,
            version: 2,
            upserted: vec![r],
            removed: vec![],
        };
        for (bad, reason) in [
            (
                policy("10.0.0.300/8", "GET"),
                "rules[0].from[0].ipBlock: \"10.0.0.300/8\" is not a CIDR",
            ),
            (
                policy("10.0.0.0/8", "GE T"),
                "rules[0].to.methods[0]: \"GE T\" is not an HTTP method",
            ),
            (
                routes("GE T", "x-a"),
                "port 80 producer matches[0].method: \"GE T\" is not an HTTP method",
            ),
            (
                routes("GET", "x a"),
                "port 80 producer matches[0].headers[0].name: \"x a\" is not a header name",
            ),
        ] {
            let err = cfg.with_delta(delta(bad)).unwrap_err();
            assert!(err.to_string().contains(reason), "{err}");
        }
        assert_eq!(cfg.version(), 1, "the last good config is kept");
        cfg.with_delta(delta(policy("10.0.0.0/8", "GET")))
            .expect("a valid policy");
        cfg.with_delta(delta(routes("GET", "x-a")))
            .expect("valid routes");
    }
}
