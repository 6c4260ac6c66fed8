//! HTTPRoute and GRPCRoute as input: what a route says, validated and typed.
//!
//! Whether it attaches, how it merges with other routes and what its status
//! is are [`gamma`](crate::gamma)'s business.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::{Kind, Meta, ObjectKey};

/// The two route types a mesh port can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum RouteKind {
    /// `HTTPRoute`.
    Http,
    /// `GRPCRoute`.
    Grpc,
}

impl RouteKind {
    /// The object kind.
    pub fn object_kind(self) -> Kind {
        match self {
            RouteKind::Http => Kind::HttpRoute,
            RouteKind::Grpc => Kind::GrpcRoute,
        }
    }
}

impl fmt::Display for RouteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.object_kind().fmt(f)
    }
}

/// Names one route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RouteRef {
    /// HTTPRoute or GRPCRoute.
    pub kind: RouteKind,
    /// Namespace and name.
    pub key: ObjectKey,
}

impl fmt::Display for RouteRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.key)
    }
}

/// An HTTPRoute or GRPCRoute.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Which type.
    pub kind: RouteKind,
    /// Key, generation, creation time.
    pub meta: Meta,
    /// `spec.parentRefs`.
    pub parents: Vec<ParentRef>,
    /// `spec.rules` (an empty list was defaulted to one rule matching everything).
    pub rules: Vec<RouteRule>,
}

impl Route {
    /// The route's reference.
    pub fn route_ref(&self) -> RouteRef {
        RouteRef {
            kind: self.kind,
            key: self.meta.key.clone(),
        }
    }
}

/// `spec.parentRefs[]`, with group and kind defaulted as the API does
/// (`gateway.networking.k8s.io`/`Gateway`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ParentRef {
    /// API group (`""` for the core group).
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Namespace (None: the route's).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// `port`: only this Service port.
    pub port: Option<u16>,
    /// `sectionName`: for a Service, a port name.
    pub section_name: Option<String>,
}

impl ParentRef {
    /// Whether this names a core `Service` (the only mesh parent).
    pub fn is_service(&self) -> bool {
        self.group.is_empty() && self.kind == "Service"
    }

    /// The parent's key, given the route's namespace.
    pub fn key(&self, route_namespace: &str) -> ObjectKey {
        ObjectKey::new(
            self.namespace.as_deref().unwrap_or(route_namespace),
            self.name.clone(),
        )
    }
}

impl fmt::Display for ParentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(ns) = &self.namespace {
            write!(f, " {ns}/{}", self.name)?;
        } else {
            write!(f, " {}", self.name)?;
        }
        if let Some(port) = self.port {
            write!(f, " port {port}")?;
        }
        if let Some(section) = &self.section_name {
            write!(f, " section {section}")?;
        }
        Ok(())
    }
}

/// `spec.rules[]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRule {
    /// `name`.
    pub name: Option<String>,
    /// `matches` (ORed); never empty: no matches means one match-all.
    pub matches: Vec<RouteMatch>,
    /// `filters`, in order.
    pub filters: Vec<Filter>,
    /// `backendRefs`.
    pub backends: Vec<WeightedBackendRef>,
    /// `timeouts` (HTTPRoute only).
    pub timeouts: Timeouts,
    /// `retry` (HTTPRoute, experimental channel).
    pub retry: Option<Retry>,
}

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    /// An HTTPRoute match.
    Http(HttpMatch),
    /// A GRPCRoute match.
    Grpc(GrpcMatch),
}

/// How a path is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// Element-wise prefix.
    Prefix(String),
    /// Implementation-specific: not supported by Hawser (reported as `UnsupportedValue`).
    RegularExpression(String),
}

/// How a header, query parameter or gRPC name is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// Equal.
    Exact(String),
    /// Implementation-specific: not supported by Hawser (reported as `UnsupportedValue`).
    RegularExpression(String),
}

/// An HTTPRoute match: every present condition must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpMatch {
    /// `path` (defaults to prefix `/`).
    pub path: PathMatch,
    /// `method`, upper-case.
    pub method: Option<String>,
    /// `headers`: lower-case names, first of equivalent names only.
    pub headers: Vec<(String, ValueMatch)>,
    /// `queryParams`: first of equal names only.
    pub query_params: Vec<(String, ValueMatch)>,
}

impl HttpMatch {
    /// The match-everything match (prefix `/`).
    pub fn any() -> Self {
        Self {
            path: PathMatch::Prefix("/".into()),
            method: None,
            headers: Vec::new(),
            query_params: Vec::new(),
        }
    }
}

/// A GRPCRoute match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrpcMatch {
    /// `method.service`.
    pub service: Option<String>,
    /// `method.method`.
    pub method: Option<String>,
    /// `method.type` is `RegularExpression` (not supported).
    pub method_regex: bool,
    /// `headers`: lower-case names.
    pub headers: Vec<(String, ValueMatch)>,
}

/// `set` replaces, `add` appends, `remove` deletes (names lower-case).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderModifier {
    /// `set`.
    pub set: Vec<(String, String)>,
    /// `add`.
    pub add: Vec<(String, String)>,
    /// `remove`.
    pub remove: Vec<String>,
}

/// A path rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    /// `ReplaceFullPath`.
    FullPath(String),
    /// `ReplacePrefixMatch`.
    PrefixMatch(String),
}

/// `requestRedirect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectFilter {
    /// `scheme` (`http` or `https`).
    pub scheme: Option<String>,
    /// `hostname`.
    pub hostname: Option<String>,
    /// `path`.
    pub path: Option<PathModifier>,
    /// `port`.
    pub port: Option<u16>,
    /// `statusCode` as written (default 302); values other than 301, 302,
    /// 303, 307, 308 are reported as `UnsupportedValue`.
    pub status_code: i64,
}

/// `urlRewrite`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlRewriteFilter {
    /// `hostname`.
    pub hostname: Option<String>,
    /// `path`.
    pub path: Option<PathModifier>,
}

/// `requestMirror`: `B` is the backend, a reference in the input and a
/// resolved Service once compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorFilter<B = BackendRef> {
    /// `backendRef`.
    pub backend: B,
    /// Share mirrored: numerator/denominator (from `percent` or `fraction`).
    pub numerator: u32,
    /// See `numerator`.
    pub denominator: u32,
}

/// A rule- or backend-level filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter<B = BackendRef> {
    /// `RequestHeaderModifier`.
    RequestHeaderModifier(HeaderModifier),
    /// `ResponseHeaderModifier`.
    ResponseHeaderModifier(HeaderModifier),
    /// `RequestRedirect`.
    RequestRedirect(RedirectFilter),
    /// `URLRewrite`.
    UrlRewrite(UrlRewriteFilter),
    /// `RequestMirror`.
    RequestMirror(MirrorFilter<B>),
    /// A filter type Hawser does not implement (`CORS`, `ExternalAuth`,
    /// `ExtensionRef`): reported as `UnsupportedValue`, never ignored.
    Unsupported(String),
}

/// A `backendRef` (or a mirror's), group and kind defaulted to core `Service`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendRef {
    /// API group (`""`: core).
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Namespace (None: the route's).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Service port.
    pub port: Option<u16>,
}

impl BackendRef {
    /// Whether this names a core `Service`.
    pub fn is_service(&self) -> bool {
        self.group.is_empty() && self.kind == "Service"
    }

    /// The referent's key, given the route's namespace.
    pub fn key(&self, route_namespace: &str) -> ObjectKey {
        ObjectKey::new(
            self.namespace.as_deref().unwrap_or(route_namespace),
            self.name.clone(),
        )
    }
}

/// A `backendRefs[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedBackendRef {
    /// The referent.
    pub backend: BackendRef,
    /// `weight` (default 1).
    pub weight: u32,
    /// Backend-level `filters`.
    pub filters: Vec<Filter>,
}

/// `timeouts`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Timeouts {
    /// `request`: the whole transaction (zero: disabled).
    pub request: Option<Duration>,
    /// `backendRequest`: one attempt.
    pub backend_request: Option<Duration>,
}

/// `retry`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Retry {
    /// `codes`.
    pub codes: Vec<u16>,
    /// `attempts`.
    pub attempts: Option<u32>,
    /// `backoff`.
    pub backoff: Option<Duration>,
}
