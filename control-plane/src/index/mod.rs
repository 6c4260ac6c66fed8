//! The mesh index: every object the sources know, and the per-node resources
//! derived from them.
//!
//! Sources call [`Index::apply`] / [`Index::delete`] (or [`Index::update`] for a
//! batch) with model objects; the index recomputes only what the change
//! touches (a pod: its workload and the Services selecting or listing it; a
//! Service: its view, its route tables and the routes using it as a backend;
//! a route: its compilation and the tables of its old and new parents; a
//! policy: the workloads of its namespace), bumps the version once per batch
//! and logs each changed resource. The discovery server reads
//! [`Index::snapshot`] and [`Index::delta`]; [`SharedIndex`] adds locking and
//! a version watch. Nothing here knows where objects came from.

mod endpoints;
mod policies;
mod resources;
mod shared;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

pub use endpoints::{Endpoint, ServiceView};
pub use resources::{
    NodeDelta, NodeSnapshot, Resource, ResourceKey, ResourceType, Store, Versioned,
};
pub use shared::SharedIndex;

use crate::gamma::{self, CompiledRoute, table::Binding};
use crate::model::{
    AuthorizationPolicy, EndpointSlice, Kind, Namespace, Object, ObjectKey, ObjectRef, Pod,
    PodIdentity, Route, RouteKind, RouteRef, Service, WorkloadView,
};
use crate::status::RouteStatus;

/// Settings of the index.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// The SPIFFE trust domain workloads' identities are in.
    pub trust_domain: String,
    /// How many resource changes to remember for deltas; a node further
    /// behind gets a snapshot.
    pub change_log_capacity: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            change_log_capacity: 1 << 18,
        }
    }
}

/// One change a source reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Create or replace an object.
    Apply(Object),
    /// Remove an object (no-op if unknown).
    Delete(ObjectRef),
}

#[derive(Debug, Default)]
struct Dirty {
    workloads: BTreeSet<ObjectKey>,
    services: BTreeSet<ObjectKey>,
    route_tables: BTreeSet<ObjectKey>,
    compile: BTreeSet<RouteRef>,
    statuses: BTreeSet<RouteRef>,
    policy_namespaces: BTreeSet<String>,
    policies: BTreeSet<ObjectKey>,
}

/// The mesh index (single-threaded; see [`SharedIndex`]).
#[derive(Debug)]
pub struct Index {
    config: IndexConfig,
    version: u64,
    namespaces: HashMap<String, Namespace>,
    pods: HashMap<ObjectKey, Pod>,
    pods_by_ns: HashMap<String, BTreeSet<String>>,
    services: HashMap<ObjectKey, Service>,
    services_by_ns: HashMap<String, BTreeSet<String>>,
    slices: HashMap<ObjectKey, EndpointSlice>,
    slices_by_service: HashMap<ObjectKey, BTreeSet<String>>,
    /// Pod -> Services whose slices name it.
    slice_pods: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    routes: HashMap<RouteRef, Route>,
    compiled: HashMap<RouteRef, CompiledRoute>,
    routes_by_parent: HashMap<ObjectKey, BTreeSet<RouteRef>>,
    routes_by_backend: HashMap<ObjectKey, BTreeSet<RouteRef>>,
    bindings: HashMap<ObjectKey, HashMap<RouteRef, Binding>>,
    statuses: HashMap<RouteRef, RouteStatus>,
    policies: HashMap<ObjectKey, AuthorizationPolicy>,
    policies_by_ns: HashMap<String, BTreeSet<String>>,
    /// The workload resource name (uid) each pod was published under, and
    /// the node/policies it counted toward policy audiences with.
    published: HashMap<ObjectKey, (String, Option<String>, Vec<String>)>,
    store: Store,
    dirty: Dirty,
}

impl Index {
    /// An empty index.
    pub fn new(config: IndexConfig) -> Self {
        let store = Store::new(config.change_log_capacity);
        Self {
            config,
            // Version 1 is the empty mesh: nodes read version 0 as "nothing
            // received from the control plane yet".
            version: 1,
            namespaces: HashMap::new(),
            pods: HashMap::new(),
            pods_by_ns: HashMap::new(),
            services: HashMap::new(),
            services_by_ns: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            slice_pods: HashMap::new(),
            routes: HashMap::new(),
            compiled: HashMap::new(),
            routes_by_parent: HashMap::new(),
            routes_by_backend: HashMap::new(),
            bindings: HashMap::new(),
            statuses: HashMap::new(),
            policies: HashMap::new(),
            policies_by_ns: HashMap::new(),
            published: HashMap::new(),
            store,
            dirty: Dirty::default(),
        }
    }

    /// The current version (bumped once per batch that changed a resource).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Creates or replaces one object; returns the version after it.
    pub fn apply(&mut self, object: Object) -> u64 {
        self.update([Update::Apply(object)])
    }

    /// Removes one object; returns the version after it.
    pub fn delete(&mut self, object: &ObjectRef) -> u64 {
        self.update([Update::Delete(object.clone())])
    }

    /// Applies a batch as one version; returns the version after it.
    pub fn update(&mut self, updates: impl IntoIterator<Item = Update>) -> u64 {
        for u in updates {
            match u {
                Update::Apply(o) => self.stage_apply(o),
                Update::Delete(r) => self.stage_delete(&r),
            }
        }
        self.flush()
    }

    // ----- reads -------------------------------------------------------------

    /// Everything `node` should hold now.
    pub fn snapshot(&self, node: &str) -> NodeSnapshot {
        self.store.snapshot(node, self.version)
    }

    /// What changed for `node` since `from`; None when the change log no
    /// longer reaches back that far (or `from` is from the future): send a
    /// snapshot.
    pub fn delta(&self, node: &str, from: u64) -> Option<NodeDelta> {
        self.store.delta(node, from, self.version)
    }

    /// One resource.
    pub fn resource(&self, key: &ResourceKey) -> Option<&Versioned> {
        self.store.get(key)
    }

    /// Number of resources (all nodes).
    pub fn resource_count(&self) -> usize {
        self.store.len()
    }

    /// The identity facts the CA checks a workload certificate request against.
    pub fn pod_identity(&self, namespace: &str, name: &str) -> Option<PodIdentity> {
        let pod = self.pods.get(&ObjectKey::new(namespace, name))?;
        Some(PodIdentity {
            uid: pod.meta.uid.clone(),
            node: pod.node.clone()?,
            service_account: pod.service_account.clone(),
        })
    }

    /// The status of one route (None: unknown route).
    pub fn route_status(&self, route: &RouteRef) -> Option<&RouteStatus> {
        self.statuses.get(route)
    }

    /// Every route's status, sorted by route.
    pub fn route_statuses(&self) -> Vec<&RouteStatus> {
        let mut all: Vec<_> = self.statuses.values().collect();
        all.sort_by(|a, b| a.route.cmp(&b.route));
        all
    }

    /// Whether the index holds `object`.
    pub fn contains(&self, object: &ObjectRef) -> bool {
        let k = &object.key;
        match object.kind {
            Kind::Namespace => self.namespaces.contains_key(&k.name),
            Kind::Pod => self.pods.contains_key(k),
            Kind::Service => self.services.contains_key(k),
            Kind::EndpointSlice => self.slices.contains_key(k),
            Kind::HttpRoute => self.routes.contains_key(&route_ref(RouteKind::Http, k)),
            Kind::GrpcRoute => self.routes.contains_key(&route_ref(RouteKind::Grpc, k)),
            Kind::AuthorizationPolicy => self.policies.contains_key(k),
        }
    }

    // ----- staging -----------------------------------------------------------

    fn stage_apply(&mut self, object: Object) {
        match object {
            Object::Namespace(ns) => {
                let changed =
                    self.namespaces.get(&ns.name).map(Namespace::enrolled) != Some(ns.enrolled());
                let name = ns.name.clone();
                self.namespaces.insert(name.clone(), ns);
                if changed {
                    self.dirty_namespace_pods(&name);
                }
            }
            Object::Pod(pod) => {
                let key = pod.meta.key.clone();
                self.pods_by_ns
                    .entry(key.namespace.clone())
                    .or_default()
                    .insert(key.name.clone());
                let old = self.pods.insert(key.clone(), pod);
                self.pod_changed(&key, old.as_ref());
            }
            Object::Service(svc) => {
                let key = svc.meta.key.clone();
                self.services_by_ns
                    .entry(key.namespace.clone())
                    .or_default()
                    .insert(key.name.clone());
                let old = self.services.insert(key.clone(), svc);
                if old.as_ref() != self.services.get(&key) {
                    self.service_changed(&key);
                }
            }
            Object::EndpointSlice(slice) => {
                let key = slice.meta.key.clone();
                let old = self.slices.remove(&key);
                if let Some(old) = &old {
                    self.unlink_slice(old);
                }
                self.link_slice(&slice);
                self.slices.insert(key, slice);
            }
            Object::Route(route) => {
                let r = route.route_ref();
                let old = self.routes.insert(r.clone(), route);
                if let Some(old) = &old {
                    self.unlink_route_parents(old);
                }
                if let Some(new) = self.routes.get(&r) {
                    let parents = route_parents(new);
                    for p in parents {
                        self.routes_by_parent
                            .entry(p)
                            .or_default()
                            .insert(r.clone());
                    }
                }
                self.dirty.compile.insert(r);
            }
            Object::AuthorizationPolicy(policy) => {
                let key = policy.key.clone();
                self.policies_by_ns
                    .entry(key.namespace.clone())
                    .or_default()
                    .insert(key.name.clone());
                self.policies.insert(key.clone(), policy);
                self.dirty.policy_namespaces.insert(key.namespace.clone());
                self.dirty.policies.insert(key);
            }
        }
    }

    fn stage_delete(&mut self, object: &ObjectRef) {
        let key = &object.key;
        match object.kind {
            Kind::Namespace => {
                if self
                    .namespaces
                    .remove(&key.name)
                    .is_some_and(|ns| ns.enrolled())
                {
                    self.dirty_namespace_pods(&key.name);
                }
            }
            Kind::Pod => {
                if let Some(old) = self.pods.remove(key) {
                    remove_from(&mut self.pods_by_ns, &key.namespace, &key.name);
                    self.pod_changed(key, Some(&old));
                }
            }
            Kind::Service => {
                if self.services.remove(key).is_some() {
                    remove_from(&mut self.services_by_ns, &key.namespace, &key.name);
                    self.service_changed(key);
                }
            }
            Kind::EndpointSlice => {
                if let Some(old) = self.slices.remove(key) {
                    self.unlink_slice(&old);
                }
            }
            Kind::HttpRoute | Kind::GrpcRoute => {
                let kind = if object.kind == Kind::HttpRoute {
                    RouteKind::Http
                } else {
                    RouteKind::Grpc
                };
                let r = route_ref(kind, key);
                if let Some(old) = self.routes.remove(&r) {
                    self.unlink_route_parents(&old);
                    self.dirty.compile.insert(r);
                }
            }
            Kind::AuthorizationPolicy => {
                if self.policies.remove(key).is_some() {
                    remove_from(&mut self.policies_by_ns, &key.namespace, &key.name);
                    self.dirty.policy_namespaces.insert(key.namespace.clone());
                    self.dirty.policies.insert(key.clone());
                }
            }
        }
    }

    fn dirty_namespace_pods(&mut self, ns: &str) {
        if let Some(names) = self.pods_by_ns.get(ns) {
            for n in names {
                self.dirty.workloads.insert(ObjectKey::new(ns, n.clone()));
            }
        }
    }

    fn pod_changed(&mut self, key: &ObjectKey, old: Option<&Pod>) {
        self.dirty.workloads.insert(key.clone());
        let new = self.pods.get(key);
        // Services selecting the pod before or after (endpoints from selectors).
        if let Some(names) = self.services_by_ns.get(&key.namespace) {
            for name in names {
                let skey = ObjectKey::new(key.namespace.clone(), name.clone());
                let Some(svc) = self.services.get(&skey) else {
                    continue;
                };
                let Some(sel) = svc.selector.as_ref().filter(|s| !s.is_empty()) else {
                    continue;
                };
                let selects = |p: &Pod| sel.iter().all(|(k, v)| p.meta.labels.get(k) == Some(v));
                if old.is_some_and(selects) || new.is_some_and(selects) {
                    self.dirty.services.insert(skey);
                }
            }
        }
        // Services whose slices name the pod (uid/node of their endpoints).
        if let Some(svcs) = self.slice_pods.get(key) {
            self.dirty.services.extend(svcs.iter().cloned());
        }
    }

    fn service_changed(&mut self, key: &ObjectKey) {
        self.dirty.services.insert(key.clone());
        self.dirty.route_tables.insert(key.clone());
        if let Some(routes) = self.routes_by_backend.get(key) {
            self.dirty.compile.extend(routes.iter().cloned());
        }
        // A policy targeting this Service: its pods' policy lists may change.
        if self.policy_targets(key) {
            self.dirty.policy_namespaces.insert(key.namespace.clone());
        }
    }

    /// Whether an AuthorizationPolicy names the Service `key` in `targetRefs`.
    fn policy_targets(&self, key: &ObjectKey) -> bool {
        self.policies_by_ns
            .get(&key.namespace)
            .into_iter()
            .flatten()
            .filter_map(|n| {
                self.policies
                    .get(&ObjectKey::new(key.namespace.clone(), n.clone()))
            })
            .any(|p| match &p.target {
                crate::model::AuthorizationTarget::Services(names) => names.contains(&key.name),
                crate::model::AuthorizationTarget::Selector(_) => false,
            })
    }

    fn link_slice(&mut self, slice: &EndpointSlice) {
        let svc = ObjectKey::new(slice.meta.key.namespace.clone(), slice.service.clone());
        self.slices_by_service
            .entry(svc.clone())
            .or_default()
            .insert(slice.meta.key.name.clone());
        for e in &slice.endpoints {
            if let Some(pod) = &e.pod {
                self.slice_pods
                    .entry(ObjectKey::new(svc.namespace.clone(), pod.clone()))
                    .or_default()
                    .insert(svc.clone());
            }
        }
        self.slice_touched(&svc);
    }

    fn unlink_slice(&mut self, slice: &EndpointSlice) {
        let svc = ObjectKey::new(slice.meta.key.namespace.clone(), slice.service.clone());
        if let Some(names) = self.slices_by_service.get_mut(&svc) {
            names.remove(&slice.meta.key.name);
            if names.is_empty() {
                self.slices_by_service.remove(&svc);
            }
        }
        for e in &slice.endpoints {
            if let Some(pod) = &e.pod {
                let pk = ObjectKey::new(svc.namespace.clone(), pod.clone());
                if let Some(set) = self.slice_pods.get_mut(&pk) {
                    set.remove(&svc);
                    if set.is_empty() {
                        self.slice_pods.remove(&pk);
                    }
                }
            }
        }
        self.slice_touched(&svc);
    }

    fn slice_touched(&mut self, svc: &ObjectKey) {
        self.dirty.services.insert(svc.clone());
        if self.policy_targets(svc) {
            self.dirty.policy_namespaces.insert(svc.namespace.clone());
        }
    }

    fn unlink_route_parents(&mut self, route: &Route) {
        let r = route.route_ref();
        for p in route_parents(route) {
            if let Some(set) = self.routes_by_parent.get_mut(&p) {
                set.remove(&r);
                if set.is_empty() {
                    self.routes_by_parent.remove(&p);
                }
            }
            self.dirty.route_tables.insert(p);
        }
    }

    // ----- recomputation -----------------------------------------------------

    fn flush(&mut self) -> u64 {
        let version = self.version + 1;
        let logged_before = self.store.logged();
        let mut changed = false;
        let dirty = std::mem::take(&mut self.dirty);

        // 1. Routes: compile against current Services.
        let mut route_tables = dirty.route_tables;
        for r in &dirty.compile {
            if let Some(old) = self.compiled.remove(r) {
                for b in &old.backend_services {
                    remove_from_set(&mut self.routes_by_backend, b, r);
                }
            }
            let Some(route) = self.routes.get(r) else {
                self.statuses.remove(r);
                continue;
            };
            let services = &self.services;
            let compiled = gamma::compile::compile(route, |k| services.get(k));
            for b in &compiled.backend_services {
                self.routes_by_backend
                    .entry(b.clone())
                    .or_default()
                    .insert(r.clone());
            }
            route_tables.extend(route_parents(route));
            self.compiled.insert(r.clone(), compiled);
        }

        // 2. Route tables of every touched parent Service.
        let mut statuses = dirty.statuses;
        statuses.extend(
            dirty
                .compile
                .iter()
                .filter(|r| self.routes.contains_key(r))
                .cloned(),
        );
        for svc_key in &route_tables {
            let attached: Vec<(&Route, &CompiledRoute)> = self
                .routes_by_parent
                .get(svc_key)
                .into_iter()
                .flatten()
                .filter_map(|r| Some((self.routes.get(r)?, self.compiled.get(r)?)))
                .collect();
            statuses.extend(attached.iter().map(|(r, _)| r.route_ref()));
            let build = self
                .services
                .get(svc_key)
                .map(|svc| gamma::table::build(svc, &attached));
            let (tables, bindings) = match build {
                Some(b) => (b.routes, b.bindings),
                None => (None, HashMap::new()),
            };
            if bindings.is_empty() {
                self.bindings.remove(svc_key);
            } else {
                self.bindings.insert(svc_key.clone(), bindings);
            }
            changed |= self.store.put(
                ResourceKey::new(ResourceType::ServiceRoutes, svc_key.to_string()),
                tables.map(|t| Resource::ServiceRoutes(Arc::new(t))),
                version,
            );
        }

        // 3. Route statuses.
        for r in &statuses {
            let (Some(route), Some(compiled)) = (self.routes.get(r), self.compiled.get(r)) else {
                self.statuses.remove(r);
                continue;
            };
            let services = &self.services;
            let bindings = &self.bindings;
            let status = gamma::conditions::route_status(
                route,
                compiled,
                |k| services.get(k),
                |k| bindings.get(k).and_then(|b| b.get(r)),
            );
            self.statuses.insert(r.clone(), status);
        }

        // 4. Service views.
        for key in &dirty.services {
            let view = self.services.get(key).map(|svc| {
                let slices: Vec<&EndpointSlice> = self
                    .slices_by_service
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter_map(|n| {
                        self.slices
                            .get(&ObjectKey::new(key.namespace.clone(), n.clone()))
                    })
                    .collect();
                let ns = key.namespace.clone();
                let pods = self
                    .pods_by_ns
                    .get(&key.namespace)
                    .into_iter()
                    .flatten()
                    .filter_map(|n| self.pods.get(&ObjectKey::new(ns.clone(), n.clone())));
                endpoints::service_view(svc, &slices, pods, |name| {
                    self.pods.get(&ObjectKey::new(key.namespace.clone(), name))
                })
            });
            changed |= self.store.put(
                ResourceKey::new(ResourceType::Service, key.to_string()),
                view.map(|v| Resource::Service(Arc::new(v))),
                version,
            );
        }

        // 5. Policies.
        for key in &dirty.policies {
            let resource = self
                .policies
                .get(key)
                .map(|p| Resource::AuthorizationPolicy(Arc::new(p.clone())));
            changed |= self.store.put(
                ResourceKey::new(ResourceType::AuthorizationPolicy, key.to_string()),
                resource,
                version,
            );
        }

        // 6. Workloads (policy lists, enrollment, identity) and policy audiences.
        let mut workloads = dirty.workloads;
        for ns in &dirty.policy_namespaces {
            if let Some(names) = self.pods_by_ns.get(ns) {
                workloads.extend(names.iter().map(|n| ObjectKey::new(ns.clone(), n.clone())));
            }
        }
        for key in &workloads {
            changed |= self.publish_workload(key, version);
        }

        // `changed` covers resources; the log also covers policy audiences.
        if changed || self.store.logged() != logged_before {
            self.version = version;
        }
        self.version
    }

    fn publish_workload(&mut self, key: &ObjectKey, version: u64) -> bool {
        let view = self
            .pods
            .get(key)
            .filter(|p| !p.terminated)
            .map(|pod| self.workload_view(pod));
        let old = self.published.remove(key);
        let mut changed = false;
        // Withdraw the old publication when the uid changed or the pod left.
        if let Some((uid, node, policies)) = &old {
            let same_uid = view.as_ref().is_some_and(|v| &v.uid == uid);
            if !same_uid {
                changed |= self.store.put(
                    ResourceKey::new(ResourceType::Workload, uid.clone()),
                    None,
                    version,
                );
            }
            if let Some(node) = node {
                for p in policies {
                    let pk = ResourceKey::new(ResourceType::AuthorizationPolicy, p.clone());
                    self.store.count_audience(&pk, node, -1, version);
                }
            }
        }
        if let Some(view) = view {
            if let Some(node) = &view.node {
                for p in &view.authorization_policies {
                    let pk = ResourceKey::new(ResourceType::AuthorizationPolicy, p.clone());
                    self.store.count_audience(&pk, node, 1, version);
                }
            }
            self.published.insert(
                key.clone(),
                (
                    view.uid.clone(),
                    view.node.clone(),
                    view.authorization_policies.clone(),
                ),
            );
            changed |= self.store.put(
                ResourceKey::new(ResourceType::Workload, view.uid.clone()),
                Some(Resource::Workload(Arc::new(view))),
                version,
            );
        }
        changed
    }

    fn workload_view(&self, pod: &Pod) -> WorkloadView {
        let ns = &pod.meta.key.namespace;
        let enrolled = self.namespaces.get(ns).is_some_and(Namespace::enrolled);
        let mut policies: Vec<String> = self
            .policies_by_ns
            .get(ns)
            .into_iter()
            .flatten()
            .filter_map(|name| self.policies.get(&ObjectKey::new(ns.clone(), name.clone())))
            .filter(|policy| {
                policies::applies(
                    policy,
                    pod,
                    |svc| self.services.get(&ObjectKey::new(ns.clone(), svc)),
                    |svc| {
                        self.slice_pods
                            .get(&pod.meta.key)
                            .is_some_and(|s| s.contains(&ObjectKey::new(ns.clone(), svc)))
                    },
                )
            })
            .map(|p| p.key.to_string())
            .collect();
        policies.sort();
        let uid = if pod.meta.uid.is_empty() {
            pod.meta.key.to_string()
        } else {
            pod.meta.uid.clone()
        };
        WorkloadView {
            uid,
            namespace: ns.clone(),
            name: pod.meta.key.name.clone(),
            node: pod.node.clone(),
            ips: pod.ips.clone(),
            service_account: pod.service_account.clone(),
            spiffe_id: format!(
                "spiffe://{}/ns/{}/sa/{}",
                self.config.trust_domain, ns, pod.service_account
            ),
            enrolled,
            ready: pod.ready,
            authorization_policies: policies,
        }
    }
}

fn route_ref(kind: RouteKind, key: &ObjectKey) -> RouteRef {
    RouteRef {
        kind,
        key: key.clone(),
    }
}

/// Every Service a route names as a parent.
fn route_parents(route: &Route) -> HashSet<ObjectKey> {
    route
        .parents
        .iter()
        .filter(|p| p.is_service())
        .map(|p| p.key(&route.meta.key.namespace))
        .collect()
}

fn remove_from(map: &mut HashMap<String, BTreeSet<String>>, ns: &str, name: &str) {
    if let Some(set) = map.get_mut(ns) {
        set.remove(name);
        if set.is_empty() {
            map.remove(ns);
        }
    }
}

fn remove_from_set(
    map: &mut HashMap<ObjectKey, BTreeSet<RouteRef>>,
    key: &ObjectKey,
    r: &RouteRef,
) {
    if let Some(set) = map.get_mut(key) {
        set.remove(r);
        if set.is_empty() {
            map.remove(key);
        }
    }
}
