//! HTTPRoute and GRPCRoute (experimental channel types: a superset of the
//! standard ones, so `retry` is read too). Defaults are applied as the CRDs
//! declare them; CEL rules of the CRDs are checked.

use std::collections::HashSet;
use std::time::Duration;

use gateway_api::experimental::grpcroutes::{self as grpc, GrpcRoute};
use gateway_api::experimental::httproutes::{self as http, HttpRoute};
use serde::Serialize;

use super::filters::{self, Context, backend_ref_of, is_header_name};
use super::{FieldError, done, meta, port};
use crate::model::{
    Filter, GrpcMatch, HttpMatch, ParentRef, PathMatch, PathModifier, Retry, Route, RouteKind,
    RouteMatch, RouteRule, Timeouts, ValueMatch, WeightedBackendRef,
};

/// An HTTPRoute.
pub fn http_route(r: &HttpRoute) -> Result<Route, Vec<FieldError>> {
    let mut errors = Vec::new();
    let meta = meta(&r.metadata, &mut errors);
    let parents = parent_refs(
        r.spec.parent_refs.iter().flatten().map(|p| {
            (
                p.group.clone(),
                p.kind.clone(),
                p.namespace.clone(),
                p.name.clone(),
                p.port,
                p.section_name.clone(),
            )
        }),
        &mut errors,
    );
    let default_rule = [http::HttpRouteRules::default()];
    let rules_in: &[http::HttpRouteRules] = match &r.spec.rules {
        Some(rules) if !rules.is_empty() => rules,
        _ => &default_rule,
    };
    check_rule_names(rules_in.iter().map(|r| r.name.as_deref()), &mut errors);
    let mut rules = Vec::with_capacity(rules_in.len());
    for (i, rule) in rules_in.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        let matches: Vec<RouteMatch> = match &rule.matches {
            Some(ms) if !ms.is_empty() => ms
                .iter()
                .enumerate()
                .map(|(j, m)| {
                    RouteMatch::Http(http_match(m, &format!("{field}.matches[{j}]"), &mut errors))
                })
                .collect(),
            _ => vec![RouteMatch::Http(HttpMatch::any())],
        };
        let filters = filters::filters(
            rule.filters.as_deref().unwrap_or_default(),
            &format!("{field}.filters"),
            Context::Http,
            &mut errors,
        );
        let backends = backend_refs(
            rule.backend_refs
                .iter()
                .flatten()
                .map(|b| (b, b.weight, b.filters.as_deref().unwrap_or_default())),
            &field,
            Context::Http,
            &mut errors,
        );
        check_prefix_rewrites(&matches, &filters, &backends, &field, &mut errors);
        if rule.session_persistence.is_some() {
            errors.push(FieldError::new(
                format!("{field}.sessionPersistence"),
                "is not supported by Hawser",
            ));
        }
        let timeouts = timeouts(
            rule.timeouts.as_ref(),
            &format!("{field}.timeouts"),
            &mut errors,
        );
        let retry = rule
            .retry
            .as_ref()
            .map(|rt| retry(rt, &format!("{field}.retry"), &mut errors));
        rules.push(RouteRule {
            name: rule.name.clone(),
            matches,
            filters,
            backends,
            timeouts,
            retry,
        });
    }
    done(
        Route {
            kind: RouteKind::Http,
            meta,
            parents,
            rules,
        },
        errors,
    )
}

/// A GRPCRoute.
pub fn grpc_route(r: &GrpcRoute) -> Result<Route, Vec<FieldError>> {
    let mut errors = Vec::new();
    let meta = meta(&r.metadata, &mut errors);
    let parents = parent_refs(
        r.spec.parent_refs.iter().flatten().map(|p| {
            (
                p.group.clone(),
                p.kind.clone(),
                p.namespace.clone(),
                p.name.clone(),
                p.port,
                p.section_name.clone(),
            )
        }),
        &mut errors,
    );
    let default_rule = [grpc::GrpcRouteRules::default()];
    let rules_in: &[grpc::GrpcRouteRules] = match &r.spec.rules {
        Some(rules) if !rules.is_empty() => rules,
        _ => &default_rule,
    };
    check_rule_names(rules_in.iter().map(|r| r.name.as_deref()), &mut errors);
    let mut rules = Vec::with_capacity(rules_in.len());
    for (i, rule) in rules_in.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        let matches: Vec<RouteMatch> = match &rule.matches {
            Some(ms) if !ms.is_empty() => ms
                .iter()
                .enumerate()
                .map(|(j, m)| {
                    RouteMatch::Grpc(grpc_match(m, &format!("{field}.matches[{j}]"), &mut errors))
                })
                .collect(),
            _ => vec![RouteMatch::Grpc(GrpcMatch::default())],
        };
        let filters = filters::filters(
            rule.filters.as_deref().unwrap_or_default(),
            &format!("{field}.filters"),
            Context::Grpc,
            &mut errors,
        );
        let backends = backend_refs(
            rule.backend_refs
                .iter()
                .flatten()
                .map(|b| (b, b.weight, b.filters.as_deref().unwrap_or_default())),
            &field,
            Context::Grpc,
            &mut errors,
        );
        if rule.session_persistence.is_some() {
            errors.push(FieldError::new(
                format!("{field}.sessionPersistence"),
                "is not supported by Hawser",
            ));
        }
        rules.push(RouteRule {
            name: rule.name.clone(),
            matches,
            filters,
            backends,
            timeouts: Timeouts::default(),
            retry: None,
        });
    }
    done(
        Route {
            kind: RouteKind::Grpc,
            meta,
            parents,
            rules,
        },
        errors,
    )
}

type ParentTuple = (
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Option<i32>,
    Option<String>,
);

fn parent_refs(
    refs: impl Iterator<Item = ParentTuple>,
    errors: &mut Vec<FieldError>,
) -> Vec<ParentRef> {
    let mut out = Vec::new();
    for (i, (group, kind, namespace, name, p, section)) in refs.enumerate() {
        let field = format!("spec.parentRefs[{i}]");
        if name.is_empty() {
            errors.push(FieldError::new(format!("{field}.name"), "is required"));
            continue;
        }
        let port = match p {
            Some(p) => match port(p, format!("{field}.port"), errors) {
                Some(p) => Some(p),
                None => continue,
            },
            None => None,
        };
        out.push(ParentRef {
            group: group.unwrap_or_else(|| "gateway.networking.k8s.io".into()),
            kind: kind.unwrap_or_else(|| "Gateway".into()),
            namespace,
            name,
            port,
            section_name: section,
        });
    }
    out
}

fn check_rule_names<'a>(
    names: impl Iterator<Item = Option<&'a str>>,
    errors: &mut Vec<FieldError>,
) {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if let Some(name) = name
            && !seen.insert(name)
        {
            errors.push(FieldError::new(
                format!("spec.rules[{i}].name"),
                format!("{name:?} is not unique within the route"),
            ));
        }
    }
}

fn backend_refs<'a, B: Serialize + 'a, F: Serialize + 'a>(
    refs: impl Iterator<Item = (&'a B, Option<i32>, &'a [F])>,
    rule_field: &str,
    context: Context,
    errors: &mut Vec<FieldError>,
) -> Vec<WeightedBackendRef> {
    let mut out = Vec::new();
    for (j, (b, weight, filters)) in refs.enumerate() {
        let field = format!("{rule_field}.backendRefs[{j}]");
        let weight = match weight {
            None => 1,
            Some(w) if (0..=1_000_000).contains(&w) => w.unsigned_abs(),
            Some(w) => {
                errors.push(FieldError::new(
                    format!("{field}.weight"),
                    format!("{w} is not 0-1000000"),
                ));
                continue;
            }
        };
        let filters = filters::filters(filters, &format!("{field}.filters"), context, errors);
        if let Some(backend) = backend_ref_of(b, &field, errors) {
            out.push(WeightedBackendRef {
                backend,
                weight,
                filters,
            });
        }
    }
    out
}

/// ReplacePrefixMatch needs exactly one PathPrefix match in the rule (CEL).
fn check_prefix_rewrites(
    matches: &[RouteMatch],
    filters: &[Filter],
    backends: &[WeightedBackendRef],
    field: &str,
    errors: &mut Vec<FieldError>,
) {
    let uses_prefix = |f: &Filter| match f {
        Filter::RequestRedirect(r) => matches!(r.path, Some(PathModifier::PrefixMatch(_))),
        Filter::UrlRewrite(r) => matches!(r.path, Some(PathModifier::PrefixMatch(_))),
        _ => false,
    };
    let used = filters.iter().any(uses_prefix)
        || backends.iter().any(|b| b.filters.iter().any(uses_prefix));
    let one_prefix = matches!(
        matches,
        [RouteMatch::Http(HttpMatch {
            path: PathMatch::Prefix(_),
            ..
        })]
    );
    if used && !one_prefix {
        errors.push(FieldError::new(
            format!("{field}.matches"),
            "a ReplacePrefixMatch path modifier requires exactly one match, of type PathPrefix",
        ));
    }
}

fn http_match(
    m: &http::HttpRouteRulesMatches,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> HttpMatch {
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            match p.r#type {
                Some(http::HttpRouteRulesMatchesPathType::RegularExpression) => {
                    PathMatch::RegularExpression(value)
                }
                ref t => {
                    check_path(&value, &format!("{field}.path.value"), errors);
                    if matches!(t, Some(http::HttpRouteRulesMatchesPathType::Exact)) {
                        PathMatch::Exact(value)
                    } else {
                        PathMatch::Prefix(value)
                    }
                }
            }
        }
    };
    let method = m.method.as_ref().map(|m| {
        serde_json::to_value(m)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    });
    let headers = dedup(
        m.headers.iter().flatten().map(|h| {
            let regex = matches!(
                h.r#type,
                Some(http::HttpRouteRulesMatchesHeadersType::RegularExpression)
            );
            (h.name.clone(), h.value.clone(), regex)
        }),
        true,
        &format!("{field}.headers"),
        errors,
    );
    let query_params = dedup(
        m.query_params.iter().flatten().map(|q| {
            let regex = matches!(
                q.r#type,
                Some(http::HttpRouteRulesMatchesQueryParamsType::RegularExpression)
            );
            (q.name.clone(), q.value.clone(), regex)
        }),
        false,
        &format!("{field}.queryParams"),
        errors,
    );
    HttpMatch {
        path,
        method,
        headers,
        query_params,
    }
}

fn grpc_match(
    m: &grpc::GrpcRouteRulesMatches,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> GrpcMatch {
    let (service, method, method_regex) = match &m.method {
        None => (None, None, false),
        Some(mm) => {
            if mm.service.is_none() && mm.method.is_none() {
                errors.push(FieldError::new(
                    format!("{field}.method"),
                    "one or both of service and method must be specified",
                ));
            }
            let regex = matches!(
                mm.r#type,
                Some(grpc::GrpcRouteRulesMatchesMethodType::RegularExpression)
            );
            (mm.service.clone(), mm.method.clone(), regex)
        }
    };
    let headers = dedup(
        m.headers.iter().flatten().map(|h| {
            let regex = matches!(
                h.r#type,
                Some(grpc::GrpcRouteRulesMatchesHeadersType::RegularExpression)
            );
            (h.name.clone(), h.value.clone(), regex)
        }),
        true,
        &format!("{field}.headers"),
        errors,
    );
    GrpcMatch {
        service,
        method,
        method_regex,
        headers,
    }
}

/// Keeps the first of equivalent names (headers: case-insensitive, lower-cased).
fn dedup(
    items: impl Iterator<Item = (String, String, bool)>,
    headers: bool,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Vec<(String, ValueMatch)> {
    let mut out: Vec<(String, ValueMatch)> = Vec::new();
    for (i, (name, value, regex)) in items.enumerate() {
        if name.is_empty() || (headers && !is_header_name(&name)) {
            errors.push(FieldError::new(
                format!("{field}[{i}].name"),
                format!("{name:?} is not a valid name"),
            ));
            continue;
        }
        let name = if headers {
            name.to_ascii_lowercase()
        } else {
            name
        };
        if out.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let v = if regex {
            ValueMatch::RegularExpression(value)
        } else {
            ValueMatch::Exact(value)
        };
        out.push((name, v));
    }
    out
}

fn check_path(value: &str, field: &str, errors: &mut Vec<FieldError>) {
    let reason = if !value.starts_with('/') {
        Some("must start with /")
    } else if value.contains("//") {
        Some("must not contain //")
    } else if value.contains('#') {
        Some("must not contain #")
    } else if value.contains("/./")
        || value.contains("/../")
        || value.ends_with("/.")
        || value.ends_with("/..")
    {
        Some("must not contain . or .. segments")
    } else if value.to_ascii_lowercase().contains("%2f") {
        Some("must not contain an encoded /")
    } else {
        None
    };
    if let Some(reason) = reason {
        errors.push(FieldError::new(
            field.to_string(),
            format!("{value:?} {reason}"),
        ));
    }
}

fn duration(value: &str, field: String, errors: &mut Vec<FieldError>) -> Option<Duration> {
    match value.parse::<gateway_api::Duration>() {
        Ok(d) => Some(Duration::from_nanos(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        )),
        Err(e) => {
            errors.push(FieldError::new(
                field,
                format!(
                    "{value:?} is not a Gateway API duration (GEP-2257, e.g. 10s, 500ms, 1h): {e}"
                ),
            ));
            None
        }
    }
}

fn timeouts(
    t: Option<&http::HttpRouteRulesTimeouts>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Timeouts {
    let Some(t) = t else {
        return Timeouts::default();
    };
    let request = t
        .request
        .as_deref()
        .and_then(|v| duration(v, format!("{field}.request"), errors));
    let backend_request = t
        .backend_request
        .as_deref()
        .and_then(|v| duration(v, format!("{field}.backendRequest"), errors));
    if let (Some(r), Some(b)) = (request, backend_request)
        && !r.is_zero()
        && b > r
    {
        errors.push(FieldError::new(
            format!("{field}.backendRequest"),
            format!("{b:?} must not be longer than request ({r:?})"),
        ));
    }
    Timeouts {
        request,
        backend_request,
    }
}

fn retry(r: &http::HttpRouteRulesRetry, field: &str, errors: &mut Vec<FieldError>) -> Retry {
    let mut codes = Vec::new();
    for (i, c) in r.codes.iter().flatten().enumerate() {
        match u16::try_from(*c) {
            Ok(c) if (400..=599).contains(&c) => codes.push(c),
            _ => errors.push(FieldError::new(
                format!("{field}.codes[{i}]"),
                format!("{c} is not an HTTP error status (400-599)"),
            )),
        }
    }
    let attempts = r.attempts.and_then(|a| match u32::try_from(a) {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(FieldError::new(
                format!("{field}.attempts"),
                format!("{a} is not a count (>= 0)"),
            ));
            None
        }
    });
    let backoff = r
        .backoff
        .as_deref()
        .and_then(|v| duration(v, format!("{field}.backoff"), errors));
    Retry {
        codes,
        attempts,
        backoff,
    }
}
