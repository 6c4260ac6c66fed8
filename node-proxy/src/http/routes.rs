//! The route tables of one [`NodeConfig`] version, compiled for per-request
//! use: Services indexed by VIP:port and by name, each (Service, port) with
//! its producer table and its consumer tables by client namespace. Header
//! names and values are parsed once here, timeouts turned into `Duration`s
//! (`0` meaning disabled), and match entries kept in the control plane's
//! precedence order.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hawser_api::proto::discovery as pb;
use http::{HeaderName, HeaderValue, Method};

use crate::discovery::NodeConfig;
use crate::outbound::Endpoint;

/// A Service by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
}

impl ServiceKey {
    /// The Service `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How the proxy speaks to a port's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (pooled connections, one request at a time each).
    Http1,
    /// HTTP/2 with prior knowledge (one multiplexed connection per endpoint).
    Http2,
}

impl UpstreamProtocol {
    /// The protocol of a Service port from its derived protocol, else its
    /// `appProtocol` and name ([`hawser_api::protocol::is_h2`]): HTTP/2 or
    /// HTTP/1.1.
    pub fn of_port(app_protocol: &str, protocol: pb::Protocol, port_name: &str) -> Self {
        let h2 = protocol == pb::Protocol::Http2
            || hawser_api::protocol::is_h2(Some(app_protocol), port_name);
        if h2 { Self::Http2 } else { Self::Http1 }
    }
}

/// One port of a Service with its ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortTarget {
    /// The Service.
    pub service: ServiceKey,
    /// The Service port.
    pub port: u16,
    /// The port's name (may be empty).
    pub name: String,
    /// Its `appProtocol` as written (empty when unset).
    pub app_protocol: String,
    /// How to speak to its endpoints.
    pub protocol: UpstreamProtocol,
    /// Ready endpoints only, with the target port resolved.
    pub endpoints: Vec<Endpoint>,
}

/// Which kind of route a table carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// HTTPRoute rules: unmatched requests get 404.
    Http,
    /// GRPCRoute rules: unmatched requests get gRPC UNIMPLEMENTED.
    Grpc,
}

/// The compiled rules of one (Service, port) for one audience.
#[derive(Debug)]
pub struct RouteTable {
    /// HTTP or gRPC.
    pub kind: TableKind,
    /// The rules, indexed by [`MatchEntry::rule`].
    pub rules: Vec<Rule>,
    /// Match entries in precedence order: the first that matches wins.
    pub matches: Vec<MatchEntry>,
}

/// One match entry: a condition selecting a rule.
#[derive(Debug)]
pub struct MatchEntry {
    /// Index into [`RouteTable::rules`].
    pub rule: usize,
    /// The condition.
    pub condition: Condition,
}

/// What a request must satisfy for an entry to select its rule.
#[derive(Debug)]
pub enum Condition {
    /// An HTTPRoute match.
    Http {
        /// The path condition.
        path: PathCondition,
        /// The method, if constrained.
        method: Option<Method>,
        /// Header name and exact value of its first occurrence.
        headers: Vec<(HeaderName, String)>,
        /// Query parameter name and exact value of its first occurrence.
        query: Vec<(String, String)>,
    },
    /// A GRPCRoute match on `/<service>/<method>`.
    Grpc {
        /// The fully-qualified service, if constrained.
        service: Option<String>,
        /// The method, if constrained.
        method: Option<String>,
        /// Header name and exact value of its first occurrence.
        headers: Vec<(HeaderName, String)>,
    },
    /// An entry that can never match (an unparseable header name).
    Never,
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathCondition {
    /// Any path.
    Any,
    /// The path equals this.
    Exact(String),
    /// Element-wise prefix, without trailing `/` (`/` alone matches all).
    Prefix(String),
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// `kind:namespace/name` of the route it comes from, for logs.
    pub route: String,
    /// Index of the rule in the route's `spec.rules`.
    pub rule_index: u32,
    /// Filters applied in order to every request the rule selects.
    pub filters: Vec<Filter>,
    /// Backends chosen by weight.
    pub backends: Vec<Backend>,
    /// Sum of the backends' weights.
    pub total_weight: u64,
    /// The whole transaction, retries included (`None`: no limit).
    pub request_timeout: Option<Duration>,
    /// Each attempt (`None`: no limit).
    pub backend_timeout: Option<Duration>,
    /// Retry policy (`None`: no retries).
    pub retry: Option<RetryPolicy>,
}

/// When and how often to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// HTTP status codes retried (gRPC: the mapped HTTP code).
    pub codes: Vec<u16>,
    /// Retries after the first attempt; `None`: the proxy's default.
    pub attempts: Option<u32>,
    /// Minimum wait between attempts; `None`: the proxy's default.
    pub backoff: Option<Duration>,
}

/// One weighted backend.
#[derive(Debug)]
pub struct Backend {
    /// Relative weight; 0 is never chosen.
    pub weight: u32,
    /// Where its requests go.
    pub target: BackendTarget,
    /// Backend-level filters, applied after the rule's.
    pub filters: Vec<Filter>,
}

/// Where a backend's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendTarget {
    /// A Service port.
    Service {
        /// The Service.
        service: ServiceKey,
        /// The Service port.
        port: u16,
    },
    /// A backendRef that does not resolve: its requests get 500.
    Invalid(String),
}

/// A compiled filter.
#[derive(Debug)]
pub enum Filter {
    /// Modifies the request's headers.
    RequestHeaders(HeaderModifier),
    /// Modifies the response's headers.
    ResponseHeaders(HeaderModifier),
    /// Answers with a redirect.
    Redirect(Redirect),
    /// Rewrites the host and/or path.
    Rewrite(Rewrite),
    /// Copies the request to another Service port.
    Mirror(Mirror),
}

/// Header edits: set replaces, add appends, remove deletes.
#[derive(Debug, Default)]
pub struct HeaderModifier {
    /// Headers replaced.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Headers appended.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Headers removed.
    pub remove: Vec<HeaderName>,
}

/// A path change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    /// Replace the whole path.
    FullPath(String),
    /// Replace the prefix the request matched.
    PrefixMatch(String),
}

/// A redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `None`: the request's scheme.
    pub scheme: Option<String>,
    /// `None`: the request's host.
    pub hostname: Option<String>,
    /// `None`: the request's path.
    pub path: Option<PathModifier>,
    /// `None`: derived from the scheme or the request's port.
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308.
    pub status: http::StatusCode,
}

/// A URL rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// `None`: keep the host.
    pub hostname: Option<String>,
    /// `None`: keep the path.
    pub path: Option<PathModifier>,
}

/// A request mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The Service mirrored to.
    pub service: ServiceKey,
    /// Its port.
    pub port: u16,
    /// Share mirrored: numerator / denominator.
    pub numerator: u32,
    /// Denominator of the share (0 is read as "all").
    pub denominator: u32,
}

#[derive(Debug, Default)]
struct PortTables {
    producer: Option<Arc<RouteTable>>,
    consumers: HashMap<String, Arc<RouteTable>>,
}

/// Every Service port and route table of one config version.
#[derive(Debug, Default)]
pub struct Routes {
    by_vip: HashMap<SocketAddr, Arc<PortTarget>>,
    /// By Service, then port (looked up without cloning the key).
    by_name: HashMap<ServiceKey, HashMap<u16, Arc<PortTarget>>>,
    /// By Service, then port.
    tables: HashMap<ServiceKey, HashMap<u16, PortTables>>,
}

impl Routes {
    /// Compiles the Services and route tables of `config`.
    pub fn new(config: &NodeConfig) -> Self {
        let mut routes = Self::default();
        for s in config.services() {
            let key = ServiceKey::new(&s.namespace, &s.name);
            for p in &s.ports {
                let Ok(port) = u16::try_from(p.port) else {
                    continue;
                };
                let endpoints = Endpoint::ready_of(s, p.port);
                let protocol = pb::Protocol::try_from(p.protocol).unwrap_or(pb::Protocol::Tcp);
                let target = Arc::new(PortTarget {
                    service: key.clone(),
                    port,
                    name: p.name.clone(),
                    app_protocol: p.app_protocol.clone(),
                    protocol: UpstreamProtocol::of_port(&p.app_protocol, protocol, &p.name),
                    endpoints,
                });
                for vip in s.vips.iter().filter_map(|v| v.parse::<IpAddr>().ok()) {
                    routes
                        .by_vip
                        .insert(SocketAddr::new(vip, port), target.clone());
                }
                routes
                    .by_name
                    .entry(key.clone())
                    .or_default()
                    .insert(port, target);
            }
        }
        for sr in config.service_routes() {
            let key = ServiceKey::new(&sr.namespace, &sr.name);
            for p in &sr.ports {
                let Ok(port) = u16::try_from(p.port) else {
                    continue;
                };
                let tables = PortTables {
                    producer: p.producer.as_ref().map(|t| Arc::new(compile_table(t))),
                    consumers: p
                        .consumers
                        .iter()
                        .filter_map(|c| {
                            let table = c.table.as_ref()?;
                            Some((c.namespace.clone(), Arc::new(compile_table(table))))
                        })
                        .collect(),
                };
                routes
                    .tables
                    .entry(key.clone())
                    .or_default()
                    .insert(port, tables);
            }
        }
        routes
    }

    /// The Service port behind a VIP:port.
    pub fn by_vip(&self, addr: SocketAddr) -> Option<&Arc<PortTarget>> {
        self.by_vip.get(&addr)
    }

    /// A Service port by name and port number.
    pub fn port(&self, service: &ServiceKey, port: u16) -> Option<&Arc<PortTarget>> {
        self.by_name.get(service)?.get(&port)
    }

    /// The table a client in `client_namespace` uses for `service`:`port`:
    /// its namespace's consumer routes, else the producer routes, else none
    /// (traffic goes straight to the Service's endpoints).
    pub fn table(
        &self,
        service: &ServiceKey,
        port: u16,
        client_namespace: &str,
    ) -> Option<&Arc<RouteTable>> {
        let tables = self.tables.get(service)?.get(&port)?;
        tables
            .consumers
            .get(client_namespace)
            .or(tables.producer.as_ref())
    }
}

fn compile_table(t: &pb::RouteTable) -> RouteTable {
    let kind = match pb::RouteKind::try_from(t.kind) {
        Ok(pb::RouteKind::Grpc) => TableKind::Grpc,
        _ => TableKind::Http,
    };
    let rules: Vec<Rule> = t.rules.iter().map(compile_rule).collect();
    let matches = t
        .matches
        .iter()
        .filter_map(|m| {
            let rule = usize::try_from(m.rule).ok().filter(|r| *r < rules.len())?;
            Some(MatchEntry {
                rule,
                condition: compile_condition(m.kind.as_ref()?),
            })
        })
        .collect();
    RouteTable {
        kind,
        rules,
        matches,
    }
}

fn header_matches(headers: &[pb::HeaderMatch]) -> Option<Vec<(HeaderName, String)>> {
    headers
        .iter()
        .map(|h| {
            HeaderName::from_bytes(h.name.as_bytes())
                .ok()
                .map(|n| (n, h.value.clone()))
        })
        .collect()
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn compile_condition(kind: &pb::match_entry::Kind) -> Condition {
    match kind {
        pb::match_entry::Kind::Http(m) => {
            let path = match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
                Some(pb::path_match::Kind::Exact(e)) => PathCondition::Exact(e.clone()),
                Some(pb::path_match::Kind::Prefix(p)) => match p.trim_end_matches('/') {
                    "" => PathCondition::Any,
                    p => PathCondition::Prefix(p.to_owned()),
                },
                None => PathCondition::Any,
            };
            let method = match m.method.as_str() {
                "" => None,
                other => match Method::from_bytes(other.as_bytes()) {
                    Ok(method) => Some(method),
                    Err(_) => return Condition::Never,
                },
            };
            let Some(headers) = header_matches(&m.headers) else {
                return Condition::Never;
            };
            Condition::Http {
                path,
                method,
                headers,
                query: m
                    .query_params
                    .iter()
                    .map(|q| (q.name.clone(), q.value.clone()))
                    .collect(),
            }
        }
        pb::match_entry::Kind::Grpc(m) => {
            let Some(headers) = header_matches(&m.headers) else {
                return Condition::Never;
            };
            Condition::Grpc {
                service: non_empty(&m.service),
                method: non_empty(&m.method),
                headers,
            }
        }
    }
}

fn timeout(ms: Option<u64>) -> Option<Duration> {
    ms.filter(|ms| *ms > 0).map(Duration::from_millis)
}

fn compile_rule(r: &pb::Rule) -> Rule {
    let route = r
        .route
        .as_ref()
        .map(|rr| {
            let kind = match pb::RouteKind::try_from(rr.kind) {
                Ok(pb::RouteKind::Grpc) => "grpcroute",
                _ => "httproute",
            };
            format!("{kind}:{}/{}", rr.namespace, rr.name)
        })
        .unwrap_or_default();
    let backends: Vec<Backend> = r
        .backends
        .iter()
        .map(|b| Backend {
            weight: b.weight,
            target: match &b.target {
                Some(pb::weighted_backend::Target::Service(s)) => match u16::try_from(s.port) {
                    Ok(port) => BackendTarget::Service {
                        service: ServiceKey::new(&s.namespace, &s.name),
                        port,
                    },
                    Err(_) => BackendTarget::Invalid(format!(
                        "service {}/{} port {} is out of range",
                        s.namespace, s.name, s.port
                    )),
                },
                Some(pb::weighted_backend::Target::Invalid(i)) => {
                    BackendTarget::Invalid(i.reason.clone())
                }
                None => BackendTarget::Invalid("backend has no target".into()),
            },
            filters: compile_filters(&b.filters),
        })
        .collect();
    Rule {
        route,
        rule_index: r.rule_index,
        filters: compile_filters(&r.filters),
        total_weight: backends.iter().map(|b| u64::from(b.weight)).sum(),
        backends,
        request_timeout: timeout(r.request_timeout_ms),
        backend_timeout: timeout(r.backend_request_timeout_ms),
        retry: r.retry.as_ref().map(|rt| RetryPolicy {
            codes: rt
                .codes
                .iter()
                .filter_map(|c| u16::try_from(*c).ok())
                .collect(),
            attempts: rt.attempts,
            backoff: rt.backoff_ms.map(Duration::from_millis),
        }),
    }
}

fn header_pairs(headers: &[pb::Header]) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .filter_map(|h| {
            let parsed = HeaderName::from_bytes(h.name.as_bytes())
                .ok()
                .zip(HeaderValue::from_str(&h.value).ok());
            if parsed.is_none() {
                tracing::info!(header = %h.name, "skipping unparseable header in a route filter");
            }
            parsed
        })
        .collect()
}

fn header_modifier(m: &pb::HeaderModifier) -> HeaderModifier {
    HeaderModifier {
        set: header_pairs(&m.set),
        add: header_pairs(&m.add),
        remove: m
            .remove
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect(),
    }
}

fn path_modifier(p: &pb::PathModifier) -> Option<PathModifier> {
    match p.kind.as_ref()? {
        pb::path_modifier::Kind::ReplaceFullPath(s) => Some(PathModifier::FullPath(s.clone())),
        pb::path_modifier::Kind::ReplacePrefixMatch(s) => {
            Some(PathModifier::PrefixMatch(s.clone()))
        }
    }
}

fn compile_filters(filters: &[pb::Filter]) -> Vec<Filter> {
    filters
        .iter()
        .filter_map(|f| {
            Some(match f.kind.as_ref()? {
                pb::filter::Kind::RequestHeaderModifier(m) => {
                    Filter::RequestHeaders(header_modifier(m))
                }
                pb::filter::Kind::ResponseHeaderModifier(m) => {
                    Filter::ResponseHeaders(header_modifier(m))
                }
                pb::filter::Kind::RequestRedirect(r) => Filter::Redirect(Redirect {
                    scheme: non_empty(&r.scheme),
                    hostname: non_empty(&r.hostname),
                    path: r.path.as_ref().and_then(path_modifier),
                    port: r.port.and_then(|p| u16::try_from(p).ok()),
                    status: u16::try_from(r.status_code)
                        .ok()
                        .and_then(|c| http::StatusCode::from_u16(c).ok())
                        .filter(|c| c.is_redirection())
                        .unwrap_or(http::StatusCode::FOUND),
                }),
                pb::filter::Kind::UrlRewrite(r) => Filter::Rewrite(Rewrite {
                    hostname: non_empty(&r.hostname),
                    path: r.path.as_ref().and_then(path_modifier),
                }),
                pb::filter::Kind::RequestMirror(m) => {
                    let b = m.backend.as_ref()?;
                    Filter::Mirror(Mirror {
                        service: ServiceKey::new(&b.namespace, &b.name),
                        port: u16::try_from(b.port).ok()?,
                        numerator: m.numerator,
                        denominator: m.denominator,
                    })
                }
            })
        })
        .collect()
}
