//! Match precedence across every rule of every route merged into one table.
//!
//! HTTPRoute (Gateway API `HTTPRouteRule.matches`): an Exact path beats any
//! prefix; a longer prefix beats a shorter one (prefixes match whole path
//! elements); then a method match; then more header matches; then more
//! query-parameter matches. GRPCRoute: more characters in the service, then
//! in the method, then more header matches. Ties go to the oldest route
//! (creation timestamp), then `namespace/name` alphabetically, then rule
//! order, then match order within the rule. Hostnames play no part in a
//! mesh (GEP-1294).

use std::cmp::{Ordering, Reverse};
use std::time::SystemTime;

use crate::model::{GrpcMatch, HttpMatch, PathMatch, RouteMatch};

use super::CompiledRule;

/// Sort key of one match; smaller sorts first (wins).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MatchKey {
    specificity: Specificity,
    created: CreatedKey,
    namespace: String,
    name: String,
    rule_index: usize,
    match_index: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Specificity {
    Http {
        exact: Reverse<bool>,
        prefix_len: Reverse<usize>,
        method: Reverse<bool>,
        headers: Reverse<usize>,
        query_params: Reverse<usize>,
    },
    Grpc {
        service_len: Reverse<usize>,
        method_len: Reverse<usize>,
        headers: Reverse<usize>,
    },
}

/// Older first; routes without a creation time after all others.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CreatedKey(Option<SystemTime>);

impl PartialOrd for CreatedKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CreatedKey {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.0, other.0) {
            (Some(a), Some(b)) => a.cmp(&b),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
}

/// The key of `rule.matches[match_index]` in a route created at `created`.
pub fn match_key(rule: &CompiledRule, created: Option<SystemTime>, match_index: usize) -> MatchKey {
    let specificity = match &rule.matches[match_index] {
        RouteMatch::Http(m) => http_specificity(m),
        RouteMatch::Grpc(m) => grpc_specificity(m),
    };
    MatchKey {
        specificity,
        created: CreatedKey(created),
        namespace: rule.route.key.namespace.clone(),
        name: rule.route.key.name.clone(),
        rule_index: rule.rule_index,
        match_index,
    }
}

/// A prefix without its trailing `/` (except the root): `/v2/` and `/v2`
/// are the same prefix.
pub fn normalize_prefix(prefix: &str) -> &str {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

fn http_specificity(m: &HttpMatch) -> Specificity {
    let (exact, prefix_len) = match &m.path {
        PathMatch::Exact(p) => (true, p.len()),
        PathMatch::Prefix(p) => (false, normalize_prefix(p).len()),
        PathMatch::RegularExpression(_) => (false, 0),
    };
    Specificity::Http {
        exact: Reverse(exact),
        prefix_len: Reverse(prefix_len),
        method: Reverse(m.method.is_some()),
        headers: Reverse(m.headers.len()),
        query_params: Reverse(m.query_params.len()),
    }
}

fn grpc_specificity(m: &GrpcMatch) -> Specificity {
    Specificity::Grpc {
        service_len: Reverse(m.service.as_deref().map_or(0, str::len)),
        method_len: Reverse(m.method.as_deref().map_or(0, str::len)),
        headers: Reverse(m.headers.len()),
    }
}
