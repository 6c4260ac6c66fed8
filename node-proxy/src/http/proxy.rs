//! [`HttpOutbound`]: serves captured client connections and carries out the
//! route semantics per request (match, filters, weighted backend, endpoint
//! choice, timeouts, retries, mirrors, upgrades).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Incoming};
use hyper_util::rt::TokioIo;
use parking_lot::{Mutex, RwLock};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::body::{BoxError, HttpBody, ReplayBody, ResponseBody, Tee, boxed};
use super::filters::{RedirectSource, modify_headers, redirect_location, rewrite_path, with_query};
use super::h1::{self, Answer};
use super::matching::{RequestInfo, Selected, is_grpc, select};
use super::metrics::{HttpMetrics, MetricsSnapshot};
use super::pool::Pool;
use super::respond::{HttpError, error_response, redirect_response};
use super::retry::{RetryBudget, backoff, grpc_to_http};
use super::routes::{
    Backend, BackendTarget, Filter, HeaderModifier, Mirror, Routes, Rule, ServiceKey,
    UpstreamProtocol,
};
use super::{ClientContext, HttpSettings};
use crate::discovery::NodeConfig;
use crate::outbound::{Balancer, Endpoint, InFlight};

/// The outbound HTTP engine of one node proxy. Cheap to clone (shared state).
#[derive(Clone)]
pub struct HttpOutbound {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HttpOutbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOutbound")
            .field("metrics", &self.inner.metrics.snapshot())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: watch::Receiver<Arc<NodeConfig>>,
    /// The routes compiled from the config they were compiled from.
    compiled: RwLock<(Arc<NodeConfig>, Arc<Routes>)>,
    settings: HttpSettings,
    balancer: Arc<Balancer>,
    pool: Arc<Pool>,
    budgets: Mutex<HashMap<ServiceKey, Arc<RetryBudget>>>,
    metrics: HttpMetrics,
}

/// The request as it will be forwarded, edited by filters.
struct Outgoing {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    /// `Host` / `:authority` to send (after any hostname rewrite).
    host: Option<String>,
    /// The request's own path and query, reused as the request target
    /// while `path` and `query` still say the same.
    target: Option<PathAndQuery>,
}

impl Outgoing {
    /// The request for one attempt, in the form `protocol` needs.
    fn build(
        &self,
        protocol: UpstreamProtocol,
        endpoint: SocketAddr,
        body: HttpBody,
    ) -> Result<Request<HttpBody>, HttpError> {
        self.build_with(self.headers.clone(), protocol, endpoint, body)
    }

    /// The request of the only attempt there will be: the headers are
    /// moved into it, not copied.
    fn build_last(
        &mut self,
        protocol: UpstreamProtocol,
        endpoint: SocketAddr,
        body: HttpBody,
    ) -> Result<Request<HttpBody>, HttpError> {
        let headers = std::mem::take(&mut self.headers);
        self.build_with(headers, protocol, endpoint, body)
    }

    fn build_with(
        &self,
        mut headers: HeaderMap,
        protocol: UpstreamProtocol,
        endpoint: SocketAddr,
        body: HttpBody,
    ) -> Result<Request<HttpBody>, HttpError> {
        let (uri, version) = match protocol {
            UpstreamProtocol::Http1 => {
                if let Some(host) = &self.host
                    && !has_only_host(&headers, host)
                {
                    let value = http::HeaderValue::from_str(host)
                        .map_err(|_| HttpError::BadRequest(format!("invalid host {host:?}")))?;
                    headers.insert(HOST, value);
                }
                match self.unchanged_target() {
                    Some(target) => (Uri::from(target.clone()), Version::HTTP_11),
                    None => {
                        let uri = with_query(&self.path, &self.query)
                            .parse()
                            .map_err(|e| invalid_target(&e))?;
                        (uri, Version::HTTP_11)
                    }
                }
            }
            UpstreamProtocol::Http2 => {
                headers.remove(HOST);
                let authority = self.host.clone().unwrap_or_else(|| endpoint.to_string());
                let path_and_query = with_query(&self.path, &self.query);
                let uri = format!("http://{authority}{path_and_query}")
                    .parse()
                    .map_err(|e| invalid_target(&e))?;
                (uri, Version::HTTP_2)
            }
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;
        Ok(req)
    }
}

impl Outgoing {
    /// The request's own path and query when they are still what would be
    /// sent (no rewrite, and written the way [`with_query`] writes them).
    fn unchanged_target(&self) -> Option<&PathAndQuery> {
        let target = self.target.as_ref()?;
        let same = target.as_str().starts_with('/')
            && target.path() == self.path
            && match target.query() {
                None => self.query.is_empty(),
                Some(q) => !q.is_empty() && q == self.query,
            };
        same.then_some(target)
    }
}

fn invalid_target(e: &http::uri::InvalidUri) -> HttpError {
    HttpError::BadRequest(format!("invalid request target: {e}"))
}

/// Whether `host` is already the one `Host` header of `headers`.
fn has_only_host(headers: &HeaderMap, host: &str) -> bool {
    let mut values = headers.get_all(HOST).iter();
    values
        .next()
        .is_some_and(|v| v.as_bytes() == host.as_bytes())
        && values.next().is_none()
}

/// Where a request goes once its route (if any) is applied.
struct Plan<'a> {
    endpoints: Endpoints<'a>,
    protocol: UpstreamProtocol,
    /// The Service, for errors and the retry budget (`None`: not a Service).
    service: Option<(&'a ServiceKey, u16)>,
    rule: Option<&'a Rule>,
    response_filters: Vec<&'a HeaderModifier>,
}

/// The endpoints a request may go to.
enum Endpoints<'a> {
    /// A Service's ready endpoints, from the routes.
    Service(&'a [Endpoint]),
    /// Not a Service: the address the client asked for.
    Direct([Endpoint; 1]),
}

impl Endpoints<'_> {
    fn as_slice(&self) -> &[Endpoint] {
        match self {
            Self::Service(endpoints) => endpoints,
            Self::Direct(endpoint) => endpoint,
        }
    }
}

/// What [`HttpOutbound::plan`] decided.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per request and taken apart at once; boxing the common variant would allocate"
)]
enum Planned<'a> {
    /// Forward `out` with `body` as `plan` says.
    Forward {
        plan: Plan<'a>,
        out: Outgoing,
        body: HttpBody,
    },
    /// A filter answered the request itself.
    Respond(Response<HttpBody>),
}

/// Removes the connection-specific headers (RFC 9110 §7.6.1): those the
/// `Connection` header names, `Keep-Alive`, `Proxy-Connection`,
/// `Transfer-Encoding`, and `TE` other than `trailers`; an upgrade keeps
/// `Connection: upgrade` and `Upgrade`. `Host` stays even when `Connection`
/// names it: the request would have no target host without it. Also used
/// by the inbound side.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    // Most messages have none: one pass over the names instead of a lookup
    // per hop-by-hop name. (Fields listed in `Connection` need it too.)
    let hop_by_hop = |n: &HeaderName| n == CONNECTION || HOP_BY_HOP.contains(&n.as_str());
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    // The fields `Connection` names, but for the options that name none
    // (`close`, `keep-alive`, which go below anyway), `Host` (the request
    // would have no host without it) and, on an upgrade, `Upgrade`: in the
    // usual message nothing is left, and nothing is allocated.
    let kept = |t: &str| {
        ["close", "keep-alive", "host"]
            .iter()
            .any(|k| t.eq_ignore_ascii_case(k))
            || (keep_upgrade && t.eq_ignore_ascii_case("upgrade"))
    };
    let listed: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| !kept(t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(CONNECTION);
        headers.remove(UPGRADE);
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION] {
        headers.remove(name);
    }
    headers.remove(TRANSFER_ENCODING);
    if headers.get(TE).is_some_and(|te| te != "trailers") {
        headers.remove(TE);
    }
}

/// An HTTP/1.1 request asking to switch protocols (e.g. WebSocket).
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The protocols a request may upgrade to unless configured otherwise:
/// WebSocket only, as Envoy and Istio allow by default. `h2c` above all is
/// not: after the `101` every HTTP/2 request on the connection would reach
/// the app unjudged.
pub const DEFAULT_ALLOWED_UPGRADES: &[&str] = &["websocket"];

/// [`DEFAULT_ALLOWED_UPGRADES`] as the settings hold it.
pub fn default_allowed_upgrades() -> std::sync::Arc<[Box<str>]> {
    DEFAULT_ALLOWED_UPGRADES
        .iter()
        .map(|p| Box::from(*p))
        .collect()
}

/// Whether every protocol `Upgrade` names (its name before any `/version`,
/// case-insensitive) is on `allowed`.
pub(crate) fn upgrade_allowed(headers: &HeaderMap, allowed: &[Box<str>]) -> bool {
    let mut named = false;
    for value in headers.get_all(UPGRADE) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        for protocol in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let name = protocol.split('/').next().unwrap_or(protocol).trim();
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                return false;
            }
            named = true;
        }
    }
    named
}

/// Takes an upgrade the allow-list does not name out of a request, which
/// is then served as plain HTTP/1.1 (what Envoy does with an upgrade it is
/// not configured for): `HTTP2-Settings` goes here, even unnamed by
/// `Connection`; `Upgrade` and `Connection` go with the hop-by-hop fields
/// every request forwarded as plain loses ([`strip_hop_by_hop`]).
pub(crate) fn strip_upgrade(headers: &mut HeaderMap) {
    headers.remove("http2-settings");
}

/// The connection-specific fields besides `Connection` (RFC 9110 §7.6.1,
/// and the obsolete `Keep-Alive` and `Proxy-Connection`), lowercase: never
/// passed on by a proxy. `TE: trailers` is the one exception
/// [`strip_hop_by_hop`] keeps.
pub(crate) const HOP_BY_HOP: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// What a `Connection` field with only the options that name no field says:
/// `Some(true)` for `close`, `Some(false)` for `keep-alive` (or nothing);
/// `None` when it has another token (`upgrade`, or a field name).
pub(crate) fn close_or_keep_alive(value: &[u8]) -> Option<bool> {
    let value = std::str::from_utf8(value).ok()?;
    let mut close = false;
    for token in value.split(',').map(str::trim) {
        if token.eq_ignore_ascii_case("close") {
            close = true;
        } else if !token.is_empty() && !token.eq_ignore_ascii_case("keep-alive") {
            return None;
        }
    }
    Some(close)
}

/// The tokens of the `Connection` fields (comma-separated, trimmed).
pub(crate) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// A backend by weight; `None` when every weight is 0.
fn choose_backend(backends: &[Backend], total: u64) -> Option<&Backend> {
    if total == 0 {
        return None;
    }
    let mut n = rand::random_range(0..total);
    backends.iter().find(|b| {
        let w = u64::from(b.weight);
        if n < w {
            true
        } else {
            n -= w;
            false
        }
    })
}

fn sampled(m: &Mirror) -> bool {
    if m.denominator == 0 || m.numerator >= m.denominator {
        return true;
    }
    rand::random_range(0..m.denominator) < m.numerator
}

/// The status retry codes are compared with: the HTTP status, or for a
/// trailers-only gRPC response the HTTP code its `grpc-status` maps to.
fn retry_status<B>(resp: &Response<B>) -> u16 {
    resp.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .map(grpc_to_http)
        .unwrap_or_else(|| resp.status().as_u16())
}

impl HttpOutbound {
    /// An engine following `config` (the routes are recompiled when a new
    /// config is published).
    pub fn new(config: watch::Receiver<Arc<NodeConfig>>, settings: HttpSettings) -> Self {
        Self::with_balancer(config, settings, Arc::default())
    }

    /// Like [`Self::new`], counting requests in flight in `balancer`
    /// (shared with the L4 path, which prunes it when endpoints go).
    pub fn with_balancer(
        config: watch::Receiver<Arc<NodeConfig>>,
        settings: HttpSettings,
        balancer: Arc<Balancer>,
    ) -> Self {
        let current = config.borrow().clone();
        let routes = Arc::new(Routes::new(&current));
        let this = Self {
            inner: Arc::new(Inner {
                config,
                compiled: RwLock::new((current, routes)),
                pool: Pool::new(settings.max_idle_per_endpoint, settings.idle_timeout),
                settings,
                balancer,
                budgets: Mutex::new(HashMap::new()),
                metrics: HttpMetrics::default(),
            }),
        };
        this.spawn_compiler();
        this
    }

    /// Within a runtime: compiles the routes of each config as it is
    /// published, so that requests find them ready instead of the first
    /// request after a change compiling every Service's (one that comes
    /// before the task still compiles them itself). Ends with the engine.
    fn spawn_compiler(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut config = self.inner.config.clone();
        let engine = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            while config.changed().await.is_ok() {
                let Some(inner) = engine.upgrade() else {
                    return;
                };
                Self { inner }.routes();
            }
        });
    }

    /// The config version the compiled routes are of.
    #[cfg(test)]
    pub(crate) fn compiled_version(&self) -> u64 {
        self.inner.compiled.read().0.version()
    }

    /// The counters.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// Upstream connections opened so far.
    pub fn upstream_connects(&self) -> u64 {
        self.inner.pool.connects()
    }

    /// Idle upstream HTTP/1.1 connections pooled now.
    pub fn upstream_idle(&self) -> usize {
        self.inner.pool.idle()
    }

    /// Closes the pooled upstream connections of a client that is gone (the
    /// pod's [`super::UpstreamConnector`]).
    pub fn forget_client(&self, connector: &Arc<dyn super::UpstreamConnector>) {
        self.inner.pool.forget(connector);
    }

    /// The routes of the current config (compiled once per config).
    pub fn routes(&self) -> Arc<Routes> {
        let config = self.inner.config.borrow().clone();
        {
            let compiled = self.inner.compiled.read();
            if Arc::ptr_eq(&compiled.0, &config) {
                return compiled.1.clone();
            }
        }
        let routes = Arc::new(Routes::new(&config));
        tracing::debug!(version = config.version(), "compiled HTTP routes");
        *self.inner.compiled.write() = (config, routes.clone());
        routes
    }

    fn budget(&self, service: &ServiceKey) -> Arc<RetryBudget> {
        let mut budgets = self.inner.budgets.lock();
        // The key is copied only the first time the Service is seen.
        if let Some(budget) = budgets.get(service) {
            return budget.clone();
        }
        budgets
            .entry(service.clone())
            .or_insert_with(|| Arc::new(RetryBudget::new(self.inner.settings.retry_budget)))
            .clone()
    }

    /// Serves one captured client connection (HTTP/1.1 or HTTP/2 with
    /// prior knowledge) until it closes. Dropping the future closes it.
    /// Plain HTTP/1.1 requests are answered in this task; the connection
    /// goes to hyper's server from its first other request on (see
    /// [`super::serve`]).
    pub async fn serve<IO>(&self, io: IO, client: ClientContext)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        let client = Arc::new(client);
        let destination = client.destination;
        let shared = client.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let this = this.clone();
            let client = shared.clone();
            async move { Ok::<_, Infallible>(this.handle(req, &client).await) }
        });
        // Plain requests served in this task may get their answer as the
        // upstream wrote it.
        let lean = |req| self.respond(req, &client, true);
        let timeouts = super::serve::ServeTimeouts {
            idle: self.inner.settings.client_idle_timeout,
            header_read: self.inner.settings.header_read_timeout,
        };
        if let Err(e) = super::serve::serve(io, timeouts, lean, service).await {
            tracing::debug!(%destination, error = %e, "client HTTP connection ended");
        }
    }

    /// Routes and forwards one request; every failure becomes a response.
    pub async fn handle<B>(&self, req: Request<B>, client: &ClientContext) -> Response<HttpBody>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        match self.respond(req, client, false).await {
            Answer::Parsed(resp) => resp,
            Answer::Verbatim(_) => unreachable!("no answer as it came was asked for"),
        }
    }

    /// [`Self::handle`]; `verbatim`: the answer may come back as the
    /// upstream wrote it, for a client that takes it so (see
    /// [`Self::forward`]).
    async fn respond<B>(&self, req: Request<B>, client: &ClientContext, verbatim: bool) -> Answer
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let grpc = is_grpc(req.headers());
        let span = tracing::debug_span!(
            "request",
            method = %req.method(),
            path = %req.uri().path(),
            destination = %client.destination,
            client_ns = %client.namespace,
        );
        let result = self
            .route(req, client, grpc, verbatim)
            .instrument(span.clone())
            .await;
        let answer = match result {
            Ok(answer) => answer,
            Err(e) => {
                if matches!(
                    e,
                    HttpError::RequestTimeout(_) | HttpError::BackendTimeout(_)
                ) {
                    self.inner.metrics.timeout();
                }
                span.in_scope(
                    || tracing::info!(error = %e, status = %e.status(), "request failed"),
                );
                Answer::Parsed(error_response(&e, grpc))
            }
        };
        let status = answer.status();
        self.inner.metrics.response(status);
        span.in_scope(|| {
            tracing::debug!(
                status = status.as_u16(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "response"
            )
        });
        answer
    }

    async fn route<B>(
        &self,
        mut req: Request<B>,
        client: &ClientContext,
        grpc: bool,
        verbatim: bool,
    ) -> Result<Answer, HttpError>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let upgrade = if !is_upgrade(&req) {
            None
        } else if upgrade_allowed(
            req.headers(),
            client
                .allowed_upgrades
                .as_deref()
                .unwrap_or(&self.inner.settings.allowed_upgrades),
        ) {
            Some(hyper::upgrade::on(&mut req))
        } else {
            tracing::debug!(upgrade = ?req.headers().get(UPGRADE), "upgrade not on the allow-list: served as plain HTTP/1.1");
            strip_upgrade(req.headers_mut());
            None
        };
        let routes = self.routes();
        let (parts, body) = req.into_parts();
        let upgrading = upgrade.is_some();
        let (plan, out, body) =
            match self.plan(&routes, parts, boxed(body), upgrading, client, grpc)? {
                Planned::Forward { plan, out, body } => (plan, out, body),
                Planned::Respond(resp) => return Ok(Answer::Parsed(resp)),
            };
        // gRPC answers are parsed: a trailers-only one's status is in its
        // fields, for the retry codes.
        let verbatim = verbatim && !grpc;
        // The one place a request is forwarded from: each `.await` of a
        // future makes room for it in this future, which hyper moves per
        // request.
        self.forward(out, body, plan, client, upgrade, verbatim)
            .await
    }

    /// Where the request goes: the route's rule and backend, with the
    /// rule's and the backend's filters applied to `out`, or the answer a
    /// filter gives itself (a redirect). Returns the body to forward (a tee
    /// when the request is mirrored). `upgrading`: the request asks for an
    /// upgrade (its `Connection: upgrade` and `Upgrade` are kept).
    fn plan<'r>(
        &self,
        routes: &'r Routes,
        mut parts: http::request::Parts,
        mut body: HttpBody,
        upgrading: bool,
        client: &ClientContext,
        grpc: bool,
    ) -> Result<Planned<'r>, HttpError> {
        let original_host = parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()));
        strip_hop_by_hop(&mut parts.headers, upgrading);
        let path = match parts.uri.path() {
            "" => "/",
            p => p,
        };
        let query = parts.uri.query().unwrap_or("");
        let mut out = Outgoing {
            method: parts.method.clone(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers: std::mem::take(&mut parts.headers),
            host: original_host.clone(),
            target: parts.uri.path_and_query().cloned(),
        };

        let Some(target) = routes.by_vip(client.destination) else {
            // Not a Service: straight to the address the client asked for.
            let protocol = if parts.version == Version::HTTP_2 {
                UpstreamProtocol::Http2
            } else {
                UpstreamProtocol::Http1
            };
            let plan = Plan {
                endpoints: Endpoints::Direct([Endpoint {
                    addr: client.destination,
                    workload_uid: String::new(),
                }]),
                protocol,
                service: None,
                rule: None,
                response_filters: Vec::new(),
            };
            return Ok(Planned::Forward { plan, out, body });
        };
        let Some(table) = routes.table(&target.service, target.port, &client.namespace) else {
            let plan = Plan {
                endpoints: Endpoints::Service(&target.endpoints),
                protocol: target.protocol,
                service: Some((&target.service, target.port)),
                rule: None,
                response_filters: Vec::new(),
            };
            return Ok(Planned::Forward { plan, out, body });
        };

        let info = RequestInfo {
            method: &parts.method,
            path,
            query,
            // The request's headers (hop-by-hop ones stripped), not yet edited.
            headers: &out.headers,
            grpc,
        };
        let Some(selected) = select(table, &info) else {
            return Err(HttpError::NoRoute {
                method: parts.method.to_string(),
                path: path.to_owned(),
            });
        };
        let rule = &table.rules[selected.rule];
        tracing::debug!(route = %rule.route, rule = rule.rule_index, "matched");
        let source = RedirectSource {
            scheme: "http",
            host: original_host.as_deref().unwrap_or(""),
            port: target.port,
            path,
            query,
            prefix: selected.prefix,
        };
        let mut response_filters = Vec::new();
        let mut mirrors = Vec::new();
        if let Some(resp) = apply_filters(
            &rule.filters,
            &mut out,
            &selected,
            &source,
            &mut response_filters,
            &mut mirrors,
        ) {
            return Ok(Planned::Respond(resp));
        }
        let backend = choose_backend(&rule.backends, rule.total_weight).ok_or_else(|| {
            HttpError::NoBackends {
                rule: format!("{}#{}", rule.route, rule.rule_index),
            }
        })?;
        let (service, port) = match &backend.target {
            BackendTarget::Invalid(reason) => {
                return Err(HttpError::InvalidBackend(reason.clone()));
            }
            BackendTarget::Service { service, port } => (service, *port),
        };
        if let Some(resp) = apply_filters(
            &backend.filters,
            &mut out,
            &selected,
            &source,
            &mut response_filters,
            &mut mirrors,
        ) {
            return Ok(Planned::Respond(resp));
        }
        let backend_target =
            routes
                .port(service, port)
                .ok_or_else(|| HttpError::UnknownBackend {
                    service: service.clone(),
                    port,
                })?;
        for m in mirrors.into_iter().filter(|m| sampled(m)) {
            body = self.mirror(m, &out, body, routes, client);
        }
        let plan = Plan {
            endpoints: Endpoints::Service(&backend_target.endpoints),
            protocol: backend_target.protocol,
            service: Some((&backend_target.service, backend_target.port)),
            rule: Some(rule),
            response_filters,
        };
        Ok(Planned::Forward { plan, out, body })
    }

    /// Sends a copy of `out` to the mirror's Service, fire and forget;
    /// returns the body to forward (a tee when the request has a body).
    fn mirror(
        &self,
        m: &Mirror,
        out: &Outgoing,
        body: HttpBody,
        routes: &Routes,
        client: &ClientContext,
    ) -> HttpBody {
        let Some(target) = routes.port(&m.service, m.port).cloned() else {
            tracing::debug!(service = %m.service, port = m.port, "mirror target unknown");
            return body;
        };
        let (body, copy) = if body.is_end_stream() {
            (body, super::body::empty())
        } else {
            let (tee, copy) = Tee::split(body, self.inner.settings.max_mirror_body);
            (boxed(tee), copy)
        };
        let Some((endpoint, in_flight)) = self
            .inner
            .balancer
            .pick(&target.endpoints)
            .map(|(e, f)| (e.addr, f))
        else {
            tracing::debug!(service = %m.service, port = m.port, "mirror has no ready endpoint");
            return body;
        };
        let req = match out.build(target.protocol, endpoint, copy) {
            Ok(req) => req,
            Err(e) => {
                tracing::debug!(error = %e, "mirror request not built");
                return body;
            }
        };
        self.inner.metrics.mirror();
        let pool = self.inner.pool.clone();
        let connector = client.connector.clone();
        let timeout = self.inner.settings.mirror_timeout;
        tokio::spawn(
            async move {
                let _in_flight = in_flight;
                let exchange = async {
                    let answer = pool
                        .send(&connector, endpoint, target.protocol, req, true)
                        .await?;
                    let status = answer.status();
                    // Read the answer so the connection can be reused.
                    let _ = answer.into_body().collect().await;
                    Ok::<_, super::pool::UpstreamError>(status)
                };
                match tokio::time::timeout(timeout, exchange).await {
                    Ok(Ok(status)) => tracing::debug!(%status, "mirrored"),
                    Ok(Err(e)) => tracing::debug!(error = %e, "mirror failed"),
                    Err(_) => tracing::debug!("mirror timed out"),
                }
            }
            .in_current_span(),
        );
        body
    }

    /// Forwards the request per `plan`, with its timeouts and retries.
    /// `verbatim`: an answer the route has nothing to change in (no
    /// response filter) may be passed on as the upstream wrote it, when
    /// this task's own HTTP/1.1 exchange finds it plain enough
    /// ([`h1::Connection::exchange_answer`]: no connection-specific field
    /// but `Connection: keep-alive`, a `Date`). Retries then go by its
    /// status alone (a `grpc-status` field of an answer to a request that is
    /// not gRPC is not mapped).
    async fn forward(
        &self,
        out: Outgoing,
        body: HttpBody,
        plan: Plan<'_>,
        client: &ClientContext,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
        verbatim: bool,
    ) -> Result<Answer, HttpError> {
        if let Some(upgrade) = upgrade {
            return self
                .forward_upgrade(&out, body, &plan, client, upgrade)
                .await
                .map(Answer::Parsed);
        }
        let verbatim = verbatim && plan.response_filters.is_empty();
        let timeout = plan.rule.and_then(|r| r.request_timeout);
        let deadline = timeout.map(|t| (Instant::now() + t, t));
        // Each branch makes its own future: one named and then awaited
        // would take room twice in this future, which is moved per request.
        let (answer, in_flight) = match deadline {
            Some((at, t)) => tokio::time::timeout_at(
                at,
                self.attempts(out, body, &plan, client, deadline, verbatim),
            )
            .await
            .map_err(|_| HttpError::RequestTimeout(t))??,
            None => {
                self.attempts(out, body, &plan, client, deadline, verbatim)
                    .await?
            }
        };
        // The body holds the request timeout and the request's place in
        // the balancer until it is read.
        let finish = |b| boxed(ResponseBody::new(b, deadline, Some(in_flight)));
        Ok(match answer {
            Answer::Verbatim(answer) => Answer::Verbatim(h1::Verbatim {
                body: finish(answer.body),
                ..answer
            }),
            Answer::Parsed(mut resp) => {
                strip_hop_by_hop(resp.headers_mut(), false);
                for m in &plan.response_filters {
                    modify_headers(resp.headers_mut(), m);
                }
                Answer::Parsed(resp.map(finish))
            }
        })
    }

    fn no_endpoints(plan: &Plan<'_>) -> HttpError {
        match plan.service {
            Some((service, port)) => HttpError::NoEndpoints {
                service: service.clone(),
                port,
            },
            None => HttpError::BadRequest("no destination".into()),
        }
    }

    /// Tries, and retries per the rule, until a response to return.
    /// `deadline` is the request timeout's: when the wait before the next
    /// retry would pass it, the answer is the 504 of the timeout, at the
    /// deadline (as if the retry had been waited for), not the last failure.
    async fn attempts(
        &self,
        mut out: Outgoing,
        body: HttpBody,
        plan: &Plan<'_>,
        client: &ClientContext,
        deadline: Option<(Instant, std::time::Duration)>,
        verbatim: bool,
    ) -> Result<(Answer, InFlight), HttpError> {
        let settings = &self.inner.settings;
        let policy = plan.rule.and_then(|r| r.retry.as_ref());
        let backend_timeout = plan.rule.and_then(|r| r.backend_timeout);
        let max_retries =
            policy.map_or(0, |p| p.attempts.unwrap_or(settings.default_retry_attempts));
        let budget = match (policy, plan.service) {
            (Some(_), Some((service, _))) if max_retries > 0 => {
                let budget = self.budget(service);
                budget.deposit();
                Some(budget)
            }
            _ => None,
        };
        let (mut first, replay) = match budget {
            Some(_) => match ReplayBody::new(body, settings.max_replay_body) {
                Ok(replay) => (None, Some(replay)),
                Err(body) => (Some(body), None),
            },
            None => (Some(body), None),
        };
        let mut retries = 0u32;
        let mut last_failed: Option<std::net::SocketAddr> = None;
        loop {
            let body = match (first.take(), &replay) {
                (Some(body), _) => body,
                (None, Some(replay)) => match replay.replay() {
                    Some(copy) => boxed(copy),
                    None => return Err(HttpError::BadRequest("request body lost".into())),
                },
                (None, None) => return Err(HttpError::BadRequest("request body lost".into())),
            };
            // A retry goes to another endpoint than the one that just failed.
            let (endpoint, in_flight) = self
                .inner
                .balancer
                .pick_excluding(plan.endpoints.as_slice(), last_failed)
                .ok_or_else(|| Self::no_endpoints(plan))?;
            // Without a retry policy (or a replayable body) this attempt is
            // the only one.
            let req = if replay.is_none() {
                out.build_last(plan.protocol, endpoint.addr, body)?
            } else {
                out.build(plan.protocol, endpoint.addr, body)?
            };
            let pool = &self.inner.pool;
            let (connector, addr) = (&client.connector, endpoint.addr);
            // As in `forward`: one future per branch, not one named future.
            let mut outcome = match backend_timeout {
                Some(t) => {
                    let send = pool.send(connector, addr, plan.protocol, req, verbatim);
                    match tokio::time::timeout(t, send).await {
                        Ok(r) => r.map_err(HttpError::from),
                        Err(_) => Err(HttpError::BackendTimeout(t)),
                    }
                }
                None => pool
                    .send(connector, addr, plan.protocol, req, verbatim)
                    .await
                    .map_err(HttpError::from),
            };
            // The destination proxy could not reach the app: a connection
            // error, as if this proxy's own connection had failed.
            // (An answer passed on as it came never has the field.)
            let app_unreachable = outcome.as_mut().is_ok_and(|answer| match answer {
                Answer::Parsed(resp) => resp
                    .headers_mut()
                    .remove(super::UPSTREAM_ERROR_HEADER)
                    .is_some(),
                Answer::Verbatim(_) => false,
            });
            let Some(policy) = policy else {
                return outcome.map(|r| (r, in_flight));
            };
            let retryable = match &outcome {
                Ok(_) if app_unreachable => true,
                Ok(Answer::Parsed(resp)) => policy.codes.contains(&retry_status(resp)),
                Ok(Answer::Verbatim(answer)) => policy.codes.contains(&answer.status.as_u16()),
                // A timed-out attempt is a connection error: retried whenever
                // the rule retries at all, 504 listed or not (Gateway API:
                // "retry on connection errors (disconnect, reset, timeout,
                // TCP failure) if a retry stanza is configured").
                Err(HttpError::BackendTimeout(_)) => true,
                Err(HttpError::Upstream(e)) => e.is_retryable(),
                Err(_) => false,
            };
            if !retryable || retries >= max_retries {
                return outcome.map(|r| (r, in_flight));
            }
            if !replay.as_ref().is_some_and(ReplayBody::is_replayable) {
                tracing::debug!("not retrying: request body cannot be replayed");
                return outcome.map(|r| (r, in_flight));
            }
            let base = policy.backoff.unwrap_or(settings.default_retry_backoff);
            let wait = backoff(base, settings.max_retry_backoff, retries + 1);
            if let Some((at, timeout)) = deadline
                && Instant::now() + wait >= at
            {
                tracing::debug!("not retrying: the request timeout passes first");
                drop(outcome);
                drop(in_flight);
                tokio::time::sleep_until(at).await;
                return Err(HttpError::RequestTimeout(timeout));
            }
            if !budget.as_ref().is_some_and(|b| b.withdraw()) {
                self.inner.metrics.retry_denied();
                tracing::debug!("not retrying: retry budget spent");
                return outcome.map(|r| (r, in_flight));
            }
            retries += 1;
            last_failed = Some(endpoint.addr);
            self.inner.metrics.retry();
            match &outcome {
                Ok(answer) => tracing::debug!(
                    retry = retries,
                    endpoint = %endpoint.addr,
                    status = answer.status().as_u16(),
                    "retrying"
                ),
                Err(e) => {
                    tracing::debug!(retry = retries, endpoint = %endpoint.addr, error = %e, "retrying")
                }
            }
            drop(outcome);
            drop(in_flight);
            tokio::time::sleep(wait).await;
        }
    }

    /// Forwards an upgrade request over its own connection and, on `101`,
    /// splices the client's and the upstream's connections together.
    async fn forward_upgrade(
        &self,
        out: &Outgoing,
        body: HttpBody,
        plan: &Plan<'_>,
        client: &ClientContext,
        client_upgrade: hyper::upgrade::OnUpgrade,
    ) -> Result<Response<HttpBody>, HttpError> {
        let (endpoint, in_flight) = self
            .inner
            .balancer
            .pick(plan.endpoints.as_slice())
            .ok_or_else(|| Self::no_endpoints(plan))?;
        let req = out.build(UpstreamProtocol::Http1, endpoint.addr, body)?;
        let mut resp = self
            .inner
            .pool
            .send_upgrade(&client.connector, endpoint.addr, req)
            .await?;
        for m in &plan.response_filters {
            modify_headers(resp.headers_mut(), m);
        }
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_by_hop(resp.headers_mut(), false);
            return Ok(resp.map(|b| boxed(ResponseBody::new(boxed(b), None, Some(in_flight)))));
        }
        self.inner.metrics.upgrade();
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let addr = endpoint.addr;
        let idle = self.inner.settings.client_idle_timeout;
        tokio::spawn(
            async move {
                let _in_flight = in_flight;
                let (client_io, upstream_io) =
                    match tokio::try_join!(client_upgrade, upstream_upgrade) {
                        Ok(ios) => ios,
                        Err(e) => {
                            tracing::debug!(error = %e, "upgrade failed");
                            return;
                        }
                    };
                let mut client_io = TokioIo::new(client_io);
                let mut upstream_io = TokioIo::new(upstream_io);
                // The client's side still has its connection's idle timeout
                // inside; the relay's own also covers a half-closed client.
                match crate::relay::relay(&mut client_io, &mut upstream_io, idle).await {
                    Ok(crate::relay::Moved {
                        a_to_b: up,
                        b_to_a: down,
                    }) => {
                        tracing::debug!(%addr, up, down, "upgraded connection closed")
                    }
                    Err(e) => tracing::debug!(%addr, error = %e, "upgraded connection failed"),
                }
            }
            .in_current_span(),
        );
        Ok(resp.map(|_| super::body::empty()))
    }
}

/// Applies `filters` to `out`; a redirect ends the request with its response.
fn apply_filters<'a>(
    filters: &'a [Filter],
    out: &mut Outgoing,
    selected: &Selected<'_>,
    source: &RedirectSource<'_>,
    response_filters: &mut Vec<&'a HeaderModifier>,
    mirrors: &mut Vec<&'a Mirror>,
) -> Option<Response<HttpBody>> {
    for f in filters {
        match f {
            Filter::RequestHeaders(m) => modify_headers(&mut out.headers, m),
            Filter::ResponseHeaders(m) => response_filters.push(m),
            Filter::Redirect(r) => {
                let location = redirect_location(r, source);
                tracing::debug!(%location, status = r.status.as_u16(), "redirect");
                return Some(redirect_response(r.status, &location));
            }
            Filter::Rewrite(r) => {
                if let Some(host) = &r.hostname {
                    out.host = Some(host.clone());
                }
                if let Some(m) = &r.path {
                    out.path = rewrite_path(&out.path, m, selected.prefix);
                }
            }
            Filter::Mirror(m) => mirrors.push(m),
        }
    }
    None
}
