//! Per-request matching against a [`RouteTable`]: the first entry (tables
//! come in Gateway API precedence order) whose every condition holds selects
//! its rule. Paths match exactly or element-wise by prefix; header names are
//! case-insensitive and the first value is compared; query parameters are
//! case-sensitive and the first value is compared; gRPC requests match on
//! `/<service>/<method>`.

use http::{HeaderMap, Method};

use super::routes::{Condition, PathCondition, RouteTable, TableKind};

/// The parts of a request that matching reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path without query (`/` when empty).
    pub path: &'a str,
    /// The raw query (empty when none).
    pub query: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// Whether it is a gRPC request (`content-type: application/grpc*`).
    pub grpc: bool,
}

/// A selected rule and the path prefix its entry matched (for
/// `ReplacePrefixMatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected<'t> {
    /// Index into [`RouteTable::rules`].
    pub rule: usize,
    /// The matched prefix (`/` for non-prefix matches), borrowed from the
    /// table.
    pub prefix: &'t str,
}

/// Whether `headers` mark a gRPC request.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Element-wise prefix match: `/v2` matches `/v2`, `/v2/` and `/v2/x`, not `/v2x`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn first_query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn headers_match(headers: &HeaderMap, wanted: &[(http::HeaderName, String)]) -> bool {
    wanted.iter().all(|(name, value)| {
        headers
            .get(name)
            .is_some_and(|v| v.as_bytes() == value.as_bytes())
    })
}

/// The rule `req` selects in `table`, if any.
pub fn select<'t>(table: &'t RouteTable, req: &RequestInfo<'_>) -> Option<Selected<'t>> {
    // A gRPC table only answers gRPC requests; an HTTP table answers both
    // (gRPC is HTTP, and an HTTPRoute may route it by path).
    if table.kind == TableKind::Grpc && !req.grpc {
        return None;
    }
    table.matches.iter().find_map(|entry| {
        let prefix = match &entry.condition {
            Condition::Never => return None,
            Condition::Http {
                path,
                method,
                headers,
                query,
            } => {
                let prefix = match path {
                    PathCondition::Any => "/",
                    PathCondition::Exact(e) if e == req.path => e.as_str(),
                    PathCondition::Prefix(p) if prefix_matches(p, req.path) => p.as_str(),
                    PathCondition::Exact(_) | PathCondition::Prefix(_) => return None,
                };
                if method.as_ref().is_some_and(|m| m != req.method)
                    || !headers_match(req.headers, headers)
                    || !query
                        .iter()
                        .all(|(n, v)| first_query_value(req.query, n) == Some(v.as_str()))
                {
                    return None;
                }
                prefix
            }
            Condition::Grpc {
                service,
                method,
                headers,
            } => {
                let (svc, meth) = req
                    .path
                    .trim_start_matches('/')
                    .split_once('/')
                    .unwrap_or((req.path.trim_start_matches('/'), ""));
                if service.as_deref().is_some_and(|s| s != svc)
                    || method.as_deref().is_some_and(|m| m != meth)
                    || !headers_match(req.headers, headers)
                {
                    return None;
                }
                "/"
            }
        };
        Some(Selected {
            rule: entry.rule,
            prefix,
        })
    })
}
