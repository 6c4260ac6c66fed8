//! The index's output: per-node resources with versions, and the change log
//! that lets a node at version `v` get only what changed since.
//!
//! Workloads, Services and route tables go to every node; an
//! AuthorizationPolicy goes only to the nodes hosting a workload it applies
//! to. Every change is logged with its audience (all nodes or one node), so a
//! delta for one node is a scan of the log's tail, never of every resource.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use crate::gamma::ServiceRoutes;
use crate::model::{AuthorizationPolicy, WorkloadView};

use super::ServiceView;

/// The kinds of per-node resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// A pod ([`WorkloadView`]), named by UID.
    Workload,
    /// A Service with its endpoints ([`ServiceView`]), named `namespace/name`.
    Service,
    /// The routes attached to a Service ([`ServiceRoutes`]), named like the Service.
    ServiceRoutes,
    /// An [`AuthorizationPolicy`], named `namespace/name`.
    AuthorizationPolicy,
}

/// Names one resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// Its type.
    pub kind: ResourceType,
    /// Its name (unique per type).
    pub name: String,
}

impl ResourceKey {
    /// A key.
    pub fn new(kind: ResourceType, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}", self.kind, self.name)
    }
}

/// One per-node resource (shared, cheap to clone).
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// A workload.
    Workload(Arc<WorkloadView>),
    /// A Service.
    Service(Arc<ServiceView>),
    /// A Service's routes.
    ServiceRoutes(Arc<ServiceRoutes>),
    /// An authorization policy.
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
}

/// A resource with the version at which it last changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    /// The resource.
    pub resource: Resource,
    /// When it last changed.
    pub version: u64,
}

/// Everything one node should hold at one version.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnapshot {
    /// The index version.
    pub version: u64,
    /// Every resource visible to the node, by key.
    pub resources: BTreeMap<ResourceKey, Versioned>,
}

/// What changed for one node between two versions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeDelta {
    /// The version the node held.
    pub from_version: u64,
    /// The version it holds after applying this.
    pub version: u64,
    /// Added or changed.
    pub upserted: BTreeMap<ResourceKey, Versioned>,
    /// Removed (or no longer visible to the node).
    pub removed: Vec<ResourceKey>,
}

impl NodeDelta {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }
}

#[derive(Debug, Clone)]
struct LogEntry {
    version: u64,
    key: ResourceKey,
    /// None: every node; Some: this node only.
    node: Option<Arc<str>>,
}

/// The resources, their node audiences and the change log.
#[derive(Debug)]
pub struct Store {
    resources: HashMap<ResourceKey, Versioned>,
    /// For node-scoped resources: how many workloads on each node need it.
    audiences: HashMap<ResourceKey, HashMap<Arc<str>, usize>>,
    log: VecDeque<LogEntry>,
    log_capacity: usize,
    /// Versions up to this one are no longer complete in the log.
    log_floor: u64,
    /// Entries ever logged.
    logged: u64,
}

impl Store {
    /// An empty store keeping at most `log_capacity` change entries.
    pub fn new(log_capacity: usize) -> Self {
        Self {
            resources: HashMap::new(),
            audiences: HashMap::new(),
            log: VecDeque::new(),
            log_capacity: log_capacity.max(1),
            log_floor: 0,
            logged: 0,
        }
    }

    /// The resource named `key`.
    pub fn get(&self, key: &ResourceKey) -> Option<&Versioned> {
        self.resources.get(key)
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// No resources.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Sets (Some) or removes (None) a resource at `version`; returns whether
    /// anything changed.
    pub fn put(&mut self, key: ResourceKey, resource: Option<Resource>, version: u64) -> bool {
        let changed = match (&resource, self.resources.get(&key)) {
            (None, None) => false,
            (Some(new), Some(old)) => *new != old.resource,
            _ => true,
        };
        if !changed {
            return false;
        }
        match resource {
            Some(resource) => {
                self.resources
                    .insert(key.clone(), Versioned { resource, version });
            }
            None => {
                self.resources.remove(&key);
            }
        }
        if Self::node_scoped(key.kind) {
            let nodes: Vec<Arc<str>> = self
                .audiences
                .get(&key)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for node in nodes {
                self.log_entry(version, key.clone(), Some(node));
            }
        } else {
            self.log_entry(version, key, None);
        }
        true
    }

    /// Adds (`delta` = +1) or removes (-1) one reason for `node` to hold `key`.
    pub fn count_audience(&mut self, key: &ResourceKey, node: &str, delta: isize, version: u64) {
        let nodes = self.audiences.entry(key.clone()).or_default();
        let node: Arc<str> = match nodes.get_key_value(node) {
            Some((k, _)) => k.clone(),
            None => Arc::from(node),
        };
        let count = nodes.entry(node.clone()).or_insert(0);
        let before = *count;
        *count = count.saturating_add_signed(delta);
        let after = *count;
        if after == 0 {
            nodes.remove(&node);
            if nodes.is_empty() {
                self.audiences.remove(key);
            }
        }
        if (before == 0) != (after == 0) && self.resources.contains_key(key) {
            self.log_entry(version, key.clone(), Some(node));
        }
    }

    fn node_scoped(kind: ResourceType) -> bool {
        kind == ResourceType::AuthorizationPolicy
    }

    fn visible(&self, key: &ResourceKey, node: &str) -> bool {
        !Self::node_scoped(key.kind)
            || self
                .audiences
                .get(key)
                .is_some_and(|nodes| nodes.contains_key(node))
    }

    /// How many change entries were ever logged (to tell whether a batch changed anything).
    pub fn logged(&self) -> u64 {
        self.logged
    }

    fn log_entry(&mut self, version: u64, key: ResourceKey, node: Option<Arc<str>>) {
        self.logged += 1;
        self.log.push_back(LogEntry { version, key, node });
        while self.log.len() > self.log_capacity {
            if let Some(e) = self.log.pop_front() {
                self.log_floor = self.log_floor.max(e.version);
            }
        }
    }

    /// Everything visible to `node`.
    pub fn snapshot(&self, node: &str, version: u64) -> NodeSnapshot {
        let resources = self
            .resources
            .iter()
            .filter(|(k, _)| self.visible(k, node))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        NodeSnapshot { version, resources }
    }

    /// What changed for `node` since `from` up to `version`; None when the
    /// log no longer covers `from` (send a snapshot instead).
    pub fn delta(&self, node: &str, from: u64, version: u64) -> Option<NodeDelta> {
        if from > version || from < self.log_floor {
            return None;
        }
        let start = self.log.partition_point(|e| e.version <= from);
        let mut touched: HashSet<&ResourceKey> = HashSet::new();
        for e in self.log.range(start..) {
            if e.node.as_deref().is_none_or(|n| n == node) {
                touched.insert(&e.key);
            }
        }
        let mut delta = NodeDelta {
            from_version: from,
            version,
            ..NodeDelta::default()
        };
        for key in touched {
            match self.resources.get(key) {
                Some(v) if self.visible(key, node) => {
                    delta.upserted.insert(key.clone(), v.clone());
                }
                _ => delta.removed.push(key.clone()),
            }
        }
        delta.removed.sort();
        Some(delta)
    }
}
