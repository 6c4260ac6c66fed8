//! Which AuthorizationPolicies apply to a pod: those in its namespace whose
//! selector matches its labels (`{}`: every pod), or whose `targetRefs` name
//! a Service that selects it or lists it in an EndpointSlice. And each
//! policy's status: which of its HTTP fields cannot be enforced on the
//! ports of those pods ([`crate::authz::status`]).

use std::collections::BTreeMap;

use crate::authz::status::{self, WorkloadPorts};
use crate::model::{AuthorizationPolicy, AuthorizationTarget, ObjectKey, Pod, Service, TargetPort};
use crate::status::PolicyStatus;

/// Whether `policy` applies to `pod`. `service` looks a Service of the
/// pod's namespace up; `in_slices` says whether a Service's EndpointSlices
/// name the pod.
pub fn applies<'a>(
    policy: &AuthorizationPolicy,
    pod: &Pod,
    service: impl Fn(&str) -> Option<&'a Service>,
    in_slices: impl Fn(&str) -> bool,
) -> bool {
    if policy.key.namespace != pod.meta.key.namespace {
        return false;
    }
    match &policy.target {
        AuthorizationTarget::Selector(sel) => sel.matches(&pod.meta.labels),
        AuthorizationTarget::Services(names) => names.iter().any(|name| {
            service(name).is_some_and(|svc| {
                let by_selector = svc.selector.as_ref().is_some_and(|sel| {
                    !sel.is_empty() && sel.iter().all(|(k, v)| pod.meta.labels.get(k) == Some(v))
                });
                by_selector || in_slices(name)
            })
        }),
    }
}

/// Policy status: computed when asked (the admin API), from the index as it is.
impl super::Index {
    /// Every AuthorizationPolicy's status, sorted by policy.
    pub fn policy_statuses(&self) -> Vec<PolicyStatus> {
        let mut keys: Vec<&ObjectKey> = self.policies.keys().collect();
        keys.sort();
        keys.into_iter()
            .filter_map(|k| self.policy_status(k))
            .collect()
    }

    /// The status of one policy (None: unknown policy).
    pub fn policy_status(&self, key: &ObjectKey) -> Option<PolicyStatus> {
        let policy = self.policies.get(key)?;
        Some(status::policy_status(policy, &self.workload_ports(policy)))
    }

    /// The ports of the pods `policy` applies to, by whether they carry
    /// HTTP: per pod, every Service that selects it or lists it in an
    /// EndpointSlice maps its ports to target ports, HTTP when every such
    /// mapping says so (as the node proxy decides).
    fn workload_ports(&self, policy: &AuthorizationPolicy) -> WorkloadPorts {
        let ns = &policy.key.namespace;
        let service = |name: &str| self.services.get(&ObjectKey::new(ns.clone(), name));
        let mut out = WorkloadPorts::default();
        for pod in self
            .pods_by_ns
            .get(ns)
            .into_iter()
            .flatten()
            .filter_map(|n| self.pods.get(&ObjectKey::new(ns.clone(), n.clone())))
            .filter(|p| !p.terminated)
        {
            let in_slices = |svc: &str| {
                self.slice_pods
                    .get(&pod.meta.key)
                    .is_some_and(|s| s.contains(&ObjectKey::new(ns.clone(), svc)))
            };
            if !applies(policy, pod, service, in_slices) {
                continue;
            }
            let mut ports = BTreeMap::new();
            for name in self.services_by_ns.get(ns).into_iter().flatten() {
                let Some(svc) = service(name) else { continue };
                let selects = svc.selector.as_ref().is_some_and(|sel| {
                    !sel.is_empty() && sel.iter().all(|(k, v)| pod.meta.labels.get(k) == Some(v))
                });
                if !selects && !in_slices(name) {
                    continue;
                }
                for sp in &svc.ports {
                    let target = match &sp.target_port {
                        TargetPort::Number(n) => Some(*n),
                        TargetPort::Name(n) => pod.named_port(n),
                    };
                    if let Some(target) = target {
                        let http = status::is_http_port(sp.app_protocol.as_deref(), &sp.name);
                        *ports.entry(target).or_insert(http) &= http;
                    }
                }
            }
            out.add_workload(&ports);
        }
        out
    }
}
