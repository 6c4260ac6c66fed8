//! One route compiled on its own: its rules with every backendRef resolved
//! against the known Services, and everything that keeps it from being
//! accepted (`UnsupportedValue`) or fully resolved (`BackendNotFound`,
//! `InvalidKind`). Unresolvable backends stay in the rule with their weight
//! (requests they would get receive 500), as the Gateway API requires.

use std::collections::BTreeSet;
use std::time::SystemTime;

use crate::model::{
    BackendRef, Filter, MirrorFilter, ObjectKey, PathMatch, Retry, Route, RouteMatch, RouteRef,
    RouteRule, Service, ServiceType, Timeouts, ValueMatch,
};
use crate::status::Reason;

/// A Service backend, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceBackend {
    /// The Service.
    pub key: ObjectKey,
    /// The Service port.
    pub port: u16,
}

/// Where a weighted backend sends requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendTarget {
    /// A Service that exists and has the port.
    Service(ServiceBackend),
    /// A reference that does not resolve; requests sent here get 500.
    Invalid(String),
}

/// A `backendRefs[]` entry, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledBackend {
    /// The target.
    pub target: BackendTarget,
    /// `weight` (0: never chosen).
    pub weight: u32,
    /// Backend-level filters.
    pub filters: Vec<Filter<ServiceBackend>>,
}

/// One rule, ready to be merged into a route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    /// The route it comes from.
    pub route: RouteRef,
    /// Its index in `spec.rules`.
    pub rule_index: usize,
    /// `name`.
    pub name: Option<String>,
    /// Its matches (never empty).
    pub matches: Vec<RouteMatch>,
    /// Rule-level filters (mirrors to unresolvable backends removed and reported).
    pub filters: Vec<Filter<ServiceBackend>>,
    /// Weighted backends.
    pub backends: Vec<CompiledBackend>,
    /// `timeouts`.
    pub timeouts: Timeouts,
    /// `retry`.
    pub retry: Option<Retry>,
}

/// A route compiled against the Services known now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRoute {
    /// Which route.
    pub route: RouteRef,
    /// `metadata.generation`.
    pub generation: i64,
    /// `metadata.creationTimestamp` (for precedence).
    pub created: Option<SystemTime>,
    /// One per spec rule.
    pub rules: Vec<CompiledRule>,
    /// Values Hawser does not support: the route is not accepted anywhere.
    pub unsupported: Vec<String>,
    /// References that do not resolve (`ResolvedRefs=False`), first reason first.
    pub unresolved: Vec<(Reason, String)>,
    /// Every Service named as a backend or mirror (resolved or not), so the
    /// index can recompile the route when one of them changes.
    pub backend_services: BTreeSet<ObjectKey>,
}

/// Compiles `route`, looking Services up with `service`.
pub fn compile<'a>(
    route: &Route,
    service: impl Fn(&ObjectKey) -> Option<&'a Service>,
) -> CompiledRoute {
    let route_ref = route.route_ref();
    let ns = route.meta.key.namespace.as_str();
    let mut out = CompiledRoute {
        route: route_ref.clone(),
        generation: route.meta.generation,
        created: route.meta.created,
        rules: Vec::with_capacity(route.rules.len()),
        unsupported: Vec::new(),
        unresolved: Vec::new(),
        backend_services: BTreeSet::new(),
    };
    for (i, rule) in route.rules.iter().enumerate() {
        check_matches(rule, i, &mut out.unsupported);
        let mut resolve = |b: &BackendRef, what: &str| -> BackendTarget {
            if b.is_service() {
                out.backend_services.insert(b.key(ns));
            }
            match resolve_backend(b, ns, &service) {
                Ok(sb) => BackendTarget::Service(sb),
                Err((reason, msg)) => {
                    let msg = format!("rules[{i}] {what}: {msg}");
                    out.unresolved.push((reason, msg.clone()));
                    BackendTarget::Invalid(msg)
                }
            }
        };
        let filters = compile_filters(
            &rule.filters,
            &mut resolve,
            "filter",
            &mut out.unsupported,
            i,
            false,
        );
        let mut backends = Vec::with_capacity(rule.backends.len());
        for (j, wb) in rule.backends.iter().enumerate() {
            let target = resolve(&wb.backend, &format!("backendRefs[{j}]"));
            let filters = compile_filters(
                &wb.filters,
                &mut resolve,
                &format!("backendRefs[{j}] filter"),
                &mut out.unsupported,
                i,
                true,
            );
            backends.push(CompiledBackend {
                target,
                weight: wb.weight,
                filters,
            });
        }
        out.rules.push(CompiledRule {
            route: route_ref.clone(),
            rule_index: i,
            name: rule.name.clone(),
            matches: rule.matches.clone(),
            filters,
            backends,
            timeouts: rule.timeouts.clone(),
            retry: rule.retry.clone(),
        });
    }
    out
}

fn resolve_backend<'a>(
    b: &BackendRef,
    ns: &str,
    service: &impl Fn(&ObjectKey) -> Option<&'a Service>,
) -> Result<ServiceBackend, (Reason, String)> {
    if !b.is_service() {
        let group = if b.group.is_empty() { "core" } else { &b.group };
        return Err((
            Reason::InvalidKind,
            format!(
                "kind {}/{} is not supported (only core Service)",
                group, b.kind
            ),
        ));
    }
    let key = b.key(ns);
    let Some(svc) = service(&key) else {
        return Err((Reason::BackendNotFound, format!("service {key} not found")));
    };
    if let ServiceType::ExternalName(_) = svc.service_type {
        return Err((
            Reason::BackendNotFound,
            format!("service {key} is of type ExternalName, which the mesh does not route to"),
        ));
    }
    let Some(port) = b.port else {
        return Err((
            Reason::BackendNotFound,
            format!("service {key}: port is required"),
        ));
    };
    if svc.port(port).is_none() {
        return Err((
            Reason::BackendNotFound,
            format!("service {key} has no port {port}"),
        ));
    }
    Ok(ServiceBackend { key, port })
}

fn compile_filters(
    filters: &[Filter],
    resolve: &mut impl FnMut(&BackendRef, &str) -> BackendTarget,
    what: &str,
    unsupported: &mut Vec<String>,
    rule: usize,
    backend_level: bool,
) -> Vec<Filter<ServiceBackend>> {
    let mut out = Vec::with_capacity(filters.len());
    for (k, f) in filters.iter().enumerate() {
        let compiled = match f {
            Filter::RequestHeaderModifier(m) => Filter::RequestHeaderModifier(m.clone()),
            Filter::ResponseHeaderModifier(m) => Filter::ResponseHeaderModifier(m.clone()),
            Filter::RequestRedirect(r) => {
                if backend_level {
                    unsupported.push(format!(
                        "rules[{rule}] {what}s[{k}]: RequestRedirect is not supported on a backendRef (a redirect answers before a backend is chosen)"
                    ));
                    continue;
                }
                if ![301, 302, 303, 307, 308].contains(&r.status_code) {
                    unsupported.push(format!(
                        "rules[{rule}] {what}s[{k}]: requestRedirect.statusCode {} is not supported (301, 302, 303, 307, 308)",
                        r.status_code
                    ));
                }
                Filter::RequestRedirect(r.clone())
            }
            Filter::UrlRewrite(r) => Filter::UrlRewrite(r.clone()),
            Filter::RequestMirror(m) => {
                match resolve(&m.backend, &format!("{what}s[{k}] requestMirror")) {
                    BackendTarget::Service(sb) => Filter::RequestMirror(MirrorFilter {
                        backend: sb,
                        numerator: m.numerator,
                        denominator: m.denominator,
                    }),
                    // Reported in `unresolved`; there is nothing to mirror to.
                    BackendTarget::Invalid(_) => continue,
                }
            }
            Filter::Unsupported(kind) => {
                unsupported.push(format!(
                    "rules[{rule}] {what}s[{k}]: filter type {kind} is not supported"
                ));
                continue;
            }
        };
        out.push(compiled);
    }
    out
}

fn check_matches(rule: &RouteRule, i: usize, unsupported: &mut Vec<String>) {
    for (j, m) in rule.matches.iter().enumerate() {
        let regex = match m {
            RouteMatch::Http(h) => {
                matches!(h.path, PathMatch::RegularExpression(_))
                    || h.headers
                        .iter()
                        .any(|(_, v)| matches!(v, ValueMatch::RegularExpression(_)))
                    || h.query_params
                        .iter()
                        .any(|(_, v)| matches!(v, ValueMatch::RegularExpression(_)))
            }
            RouteMatch::Grpc(g) => {
                g.method_regex
                    || g.headers
                        .iter()
                        .any(|(_, v)| matches!(v, ValueMatch::RegularExpression(_)))
            }
        };
        if regex {
            unsupported.push(format!(
                "rules[{i}].matches[{j}]: RegularExpression matches are not supported (use Exact or PathPrefix)"
            ));
        }
    }
}
