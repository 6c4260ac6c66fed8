//! Route status per Service parent: `Accepted` (attached, or why not:
//! `NoMatchingParent`, `UnsupportedValue`, `Conflicted`) and `ResolvedRefs`
//! (`BackendNotFound`, `InvalidKind`), each with the route's generation.

use std::collections::BTreeSet;

use crate::model::{ObjectKey, ParentRef, Route, Service};
use crate::status::{CONTROLLER_NAME, Condition, ConditionType, ParentStatus, Reason, RouteStatus};

use super::CompiledRoute;
use super::attach::attach;
use super::table::Binding;

/// Computes the status of `route`. `service` looks a parent Service up;
/// `binding` says how the route bound to a Service when its tables were built
/// (None: not bound there).
pub fn route_status<'a>(
    route: &Route,
    compiled: &CompiledRoute,
    service: impl Fn(&ObjectKey) -> Option<&'a Service>,
    binding: impl Fn(&ObjectKey) -> Option<&'a Binding>,
) -> RouteStatus {
    let ns = &route.meta.key.namespace;
    let generation = route.meta.generation;
    let resolved = match compiled.unresolved.first() {
        None => Condition {
            kind: ConditionType::ResolvedRefs,
            status: true,
            reason: Reason::ResolvedRefs,
            message: "all references resolved".into(),
            observed_generation: generation,
        },
        Some((reason, _)) => Condition {
            kind: ConditionType::ResolvedRefs,
            status: false,
            reason: *reason,
            message: compiled
                .unresolved
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            observed_generation: generation,
        },
    };
    let mut seen = BTreeSet::new();
    let mut parents = Vec::new();
    for parent in route.parents.iter().filter(|p| p.is_service()) {
        if !seen.insert(parent.clone()) {
            continue;
        }
        let accepted = accepted(parent, ns, compiled, &service, &binding, generation);
        parents.push(ParentStatus {
            parent_ref: parent.clone(),
            controller_name: CONTROLLER_NAME,
            conditions: vec![accepted, resolved.clone()],
        });
    }
    RouteStatus {
        route: route.route_ref(),
        parents,
    }
}

fn accepted<'a>(
    parent: &ParentRef,
    ns: &str,
    compiled: &CompiledRoute,
    service: &impl Fn(&ObjectKey) -> Option<&'a Service>,
    binding: &impl Fn(&ObjectKey) -> Option<&'a Binding>,
    generation: i64,
) -> Condition {
    let not = |reason, message: String| Condition {
        kind: ConditionType::Accepted,
        status: false,
        reason,
        message,
        observed_generation: generation,
    };
    let key = parent.key(ns);
    let ports = match attach(parent, service(&key)) {
        Ok(ports) => ports,
        Err(e) => return not(Reason::NoMatchingParent, e.to_string()),
    };
    if !compiled.unsupported.is_empty() {
        return not(Reason::UnsupportedValue, compiled.unsupported.join("; "));
    }
    if let Some(b) = binding(&key) {
        let live: Vec<u16> = ports.difference(&b.conflicted).copied().collect();
        if live.is_empty() {
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            return not(
                Reason::Conflicted,
                format!(
                    "a route of a more specific type (GRPCRoute over HTTPRoute) holds port(s) {} of service {key}",
                    ports.join(", ")
                ),
            );
        }
    }
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let audience = if key.namespace == ns {
        "producer route: all clients".to_string()
    } else {
        format!("consumer route: clients in namespace {ns}")
    };
    Condition {
        kind: ConditionType::Accepted,
        status: true,
        reason: Reason::Accepted,
        message: format!(
            "attached to service {key} port(s) {} ({audience})",
            ports.join(", ")
        ),
        observed_generation: generation,
    }
}
