//! Which AuthorizationPolicies apply to a pod: those in its namespace whose
//! selector matches its labels (`{}`: every pod), or whose `targetRefs` name
//! a Service that selects it or lists it in an EndpointSlice.

use crate::model::{AuthorizationPolicy, AuthorizationTarget, Pod, Service};

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
