//! Compiled route tables on the wire.

use hawser_api::proto::discovery as pb;

use crate::gamma::{BackendTarget, CompiledRule, RouteTable, ServiceBackend, ServiceRoutes};
use crate::model::{
    Filter, GrpcMatch, HeaderModifier, HttpMatch, PathMatch, PathModifier, RouteKind, RouteMatch,
    ValueMatch,
};

/// A Service's route tables.
pub fn service_routes(r: &ServiceRoutes) -> pb::ServiceRoutes {
    pb::ServiceRoutes {
        namespace: r.service.namespace.clone(),
        name: r.service.name.clone(),
        ports: r
            .ports
            .iter()
            .map(|p| pb::PortRoutes {
                port: u32::from(p.port),
                producer: p.producer.as_ref().map(table),
                consumers: p
                    .consumers
                    .iter()
                    .map(|(ns, t)| pb::ConsumerRoutes {
                        namespace: ns.clone(),
                        table: Some(table(t)),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn kind(k: RouteKind) -> pb::RouteKind {
    match k {
        RouteKind::Http => pb::RouteKind::Http,
        RouteKind::Grpc => pb::RouteKind::Grpc,
    }
}

fn table(t: &RouteTable) -> pb::RouteTable {
    pb::RouteTable {
        kind: kind(t.kind) as i32,
        rules: t.rules.iter().map(rule).collect(),
        matches: t
            .matches
            .iter()
            .map(|m| pb::MatchEntry {
                rule: u32::try_from(m.rule).unwrap_or(u32::MAX),
                kind: Some(match &m.condition {
                    RouteMatch::Http(h) => pb::match_entry::Kind::Http(http_match(h)),
                    RouteMatch::Grpc(g) => pb::match_entry::Kind::Grpc(grpc_match(g)),
                }),
            })
            .collect(),
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn rule(r: &CompiledRule) -> pb::Rule {
    pb::Rule {
        route: Some(pb::RouteRef {
            kind: kind(r.route.kind) as i32,
            namespace: r.route.key.namespace.clone(),
            name: r.route.key.name.clone(),
        }),
        rule_index: u32::try_from(r.rule_index).unwrap_or(u32::MAX),
        rule_name: r.name.clone().unwrap_or_default(),
        filters: r.filters.iter().map(filter).collect(),
        backends: r
            .backends
            .iter()
            .map(|b| pb::WeightedBackend {
                weight: b.weight,
                target: Some(match &b.target {
                    BackendTarget::Service(s) => {
                        pb::weighted_backend::Target::Service(service_backend(s))
                    }
                    BackendTarget::Invalid(reason) => {
                        pb::weighted_backend::Target::Invalid(pb::InvalidBackend {
                            reason: reason.clone(),
                        })
                    }
                }),
                filters: b.filters.iter().map(filter).collect(),
            })
            .collect(),
        request_timeout_ms: r.timeouts.request.map(millis),
        backend_request_timeout_ms: r.timeouts.backend_request.map(millis),
        retry: r.retry.as_ref().map(|rt| pb::Retry {
            codes: rt.codes.iter().map(|c| u32::from(*c)).collect(),
            attempts: rt.attempts,
            backoff_ms: rt.backoff.map(millis),
        }),
    }
}

fn service_backend(s: &ServiceBackend) -> pb::ServiceBackend {
    pb::ServiceBackend {
        namespace: s.key.namespace.clone(),
        name: s.key.name.clone(),
        port: u32::from(s.port),
    }
}

fn exact(v: &ValueMatch) -> String {
    // Regular expressions never reach a table (the route is not accepted).
    match v {
        ValueMatch::Exact(s) | ValueMatch::RegularExpression(s) => s.clone(),
    }
}

fn http_match(m: &HttpMatch) -> pb::HttpMatch {
    pb::HttpMatch {
        path: Some(pb::PathMatch {
            kind: Some(match &m.path {
                PathMatch::Exact(p) => pb::path_match::Kind::Exact(p.clone()),
                PathMatch::Prefix(p) | PathMatch::RegularExpression(p) => {
                    pb::path_match::Kind::Prefix(p.clone())
                }
            }),
        }),
        method: m.method.clone().unwrap_or_default(),
        headers: m
            .headers
            .iter()
            .map(|(n, v)| pb::HeaderMatch {
                name: n.clone(),
                value: exact(v),
            })
            .collect(),
        query_params: m
            .query_params
            .iter()
            .map(|(n, v)| pb::QueryParamMatch {
                name: n.clone(),
                value: exact(v),
            })
            .collect(),
    }
}

fn grpc_match(m: &GrpcMatch) -> pb::GrpcMatch {
    pb::GrpcMatch {
        service: m.service.clone().unwrap_or_default(),
        method: m.method.clone().unwrap_or_default(),
        headers: m
            .headers
            .iter()
            .map(|(n, v)| pb::HeaderMatch {
                name: n.clone(),
                value: exact(v),
            })
            .collect(),
    }
}

fn header_modifier(m: &HeaderModifier) -> pb::HeaderModifier {
    let header = |(n, v): &(String, String)| pb::Header {
        name: n.clone(),
        value: v.clone(),
    };
    pb::HeaderModifier {
        set: m.set.iter().map(header).collect(),
        add: m.add.iter().map(header).collect(),
        remove: m.remove.clone(),
    }
}

fn path_modifier(p: &PathModifier) -> pb::PathModifier {
    pb::PathModifier {
        kind: Some(match p {
            PathModifier::FullPath(s) => pb::path_modifier::Kind::ReplaceFullPath(s.clone()),
            PathModifier::PrefixMatch(s) => pb::path_modifier::Kind::ReplacePrefixMatch(s.clone()),
        }),
    }
}

fn filter(f: &Filter<ServiceBackend>) -> pb::Filter {
    use pb::filter::Kind;
    let kind = match f {
        Filter::RequestHeaderModifier(m) => Kind::RequestHeaderModifier(header_modifier(m)),
        Filter::ResponseHeaderModifier(m) => Kind::ResponseHeaderModifier(header_modifier(m)),
        Filter::RequestRedirect(r) => Kind::RequestRedirect(pb::RequestRedirect {
            scheme: r.scheme.clone().unwrap_or_default(),
            hostname: r.hostname.clone().unwrap_or_default(),
            path: r.path.as_ref().map(path_modifier),
            port: r.port.map(u32::from),
            status_code: u32::try_from(r.status_code).unwrap_or(302),
        }),
        Filter::UrlRewrite(r) => Kind::UrlRewrite(pb::UrlRewrite {
            hostname: r.hostname.clone().unwrap_or_default(),
            path: r.path.as_ref().map(path_modifier),
        }),
        Filter::RequestMirror(m) => Kind::RequestMirror(pb::RequestMirror {
            backend: Some(service_backend(&m.backend)),
            numerator: m.numerator,
            denominator: m.denominator,
        }),
        // Routes with unsupported filters are not accepted, so never reach a table.
        Filter::Unsupported(_) => return pb::Filter { kind: None },
    };
    pb::Filter { kind: Some(kind) }
}
