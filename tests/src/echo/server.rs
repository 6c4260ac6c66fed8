//! The echo server: answers any HTTP request (HTTP/1.x, and HTTP/2 cleartext
//! with prior knowledge, on the same port) with the `key=value` lines of
//! [`super::response`], applies the request's [`super::directives`]
//! (`?delay=`, `?codes=`, fail-first-N, close), upgrades `Upgrade: websocket`
//! requests and echoes their frames, and hands `application/grpc` requests to
//! the gRPC Echo service ([`super::grpc`]) on any port. A plain TCP echo is
//! there too for L4 ports.
//!
//! An `Upgrade: h2c` request is answered over HTTP/1.1 (the server may ignore
//! an upgrade offer); h2c clients use prior knowledge.
//!
//! Shutdown is explicit: [`Echo::serve_http`] and [`Echo::serve_tcp`] take a
//! future that ends the accept loop; open connections are then drained
//! gracefully (HTTP/2 GOAWAY, HTTP/1 close after the current response) for
//! [`ServerConfig::drain_timeout`], after which they are aborted.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tonic::codegen::Service as _;
use tracing::Instrument as _;

use hawser_api::proto::echo::echo_test_service_server::EchoTestServiceServer;

use super::directives::{Attempts, Directives, Failure};
use super::grpc::{Authority, GrpcEcho};
use super::response::{self, EchoBody, canonical_header_name};
use super::websocket;

/// The response body type of every answer (echo text or gRPC frames).
pub type BoxBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Who the backend is and how it shuts down.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `Hostname=`: the pod name.
    pub hostname: String,
    /// `Namespace=`, when known.
    pub namespace: Option<String>,
    /// `ServiceVersion=`, when set (the pod's `version` label).
    pub version: Option<String>,
    /// How long open connections may finish after shutdown before they are aborted.
    pub drain_timeout: Duration,
    /// The largest request body read (bigger ones get 413).
    pub max_request_body: usize,
}

impl ServerConfig {
    /// A config answering as `hostname`, no namespace or version, 5 s drain,
    /// 16 MiB request bodies.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            namespace: None,
            version: None,
            drain_timeout: Duration::from_secs(5),
            max_request_body: 16 * 1024 * 1024,
        }
    }
}

/// Counters a test or the lab can read.
#[derive(Debug, Default)]
pub struct Stats {
    connections: AtomicU64,
    requests: AtomicU64,
}

impl Stats {
    /// Connections accepted so far (all ports served by this [`Echo`]).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// HTTP and gRPC requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// State every port of one backend shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) attempts: Attempts,
    pub(crate) stats: Stats,
}

/// Where a connection came from and arrived at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnInfo {
    pub(crate) local: SocketAddr,
    pub(crate) peer: SocketAddr,
}

/// One echo backend: clones share the config, the fail-first-N counters and
/// the [`Stats`], so several ports of one pod behave as one.
#[derive(Clone)]
pub struct Echo {
    shared: Arc<Shared>,
    grpc: EchoTestServiceServer<GrpcEcho>,
}

impl std::fmt::Debug for Echo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Echo")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// Returned by the service to make hyper drop the connection (HTTP/1) or
/// reset the stream (HTTP/2) without an answer.
#[derive(Debug, thiserror::Error)]
#[error("closing the connection without a response, as the request asked")]
struct CloseWithoutResponse;

impl Echo {
    /// A backend with `config`.
    pub fn new(config: ServerConfig) -> Self {
        let shared = Arc::new(Shared {
            config,
            attempts: Attempts::default(),
            stats: Stats::default(),
        });
        let grpc = EchoTestServiceServer::new(GrpcEcho::new(shared.clone()));
        Self { shared, grpc }
    }

    /// The backend's config.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// Connection and request counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Serves HTTP (and gRPC, and WebSocket upgrades) on `listener` until
    /// `shutdown` completes, then drains.
    pub fn serve_http<S>(
        &self,
        listener: TcpListener,
        shutdown: S,
    ) -> impl Future<Output = ()> + Send + 'static + use<S>
    where
        S: Future<Output = ()> + Send + 'static,
    {
        let echo = self.clone();
        let drain_timeout = self.shared.config.drain_timeout;
        accept_loop(
            listener,
            shutdown,
            drain_timeout,
            self.shared.clone(),
            move |stream, info, drain| serve_http_connection(echo.clone(), stream, info, drain),
        )
    }

    /// Serves a plain TCP echo (bytes back as they come) on `listener` until
    /// `shutdown` completes, then drains.
    pub fn serve_tcp<S>(
        &self,
        listener: TcpListener,
        shutdown: S,
    ) -> impl Future<Output = ()> + Send + 'static + use<S>
    where
        S: Future<Output = ()> + Send + 'static,
    {
        let drain_timeout = self.shared.config.drain_timeout;
        accept_loop(
            listener,
            shutdown,
            drain_timeout,
            self.shared.clone(),
            |stream, _info, drain| serve_tcp_connection(stream, drain),
        )
    }

    async fn handle(
        self,
        mut req: Request<Incoming>,
        info: ConnInfo,
        drain: watch::Receiver<bool>,
    ) -> Result<Response<BoxBody>, CloseWithoutResponse> {
        self.shared.stats.requests.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(method = %req.method(), uri = %req.uri(), version = ?req.version(), "request");
        if is_grpc(req.headers()) {
            let authority = request_authority(&req);
            req.extensions_mut().insert(info);
            req.extensions_mut().insert(Authority(authority));
            let mut grpc = self.grpc.clone();
            let response = match grpc.call(req).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            return Ok(response.map(|b| b.map_err(Into::into).boxed_unsync()));
        }
        if is_websocket(req.headers()) {
            return Ok(self.upgrade_websocket(req, drain));
        }
        self.echo_http(req, info).await
    }

    async fn echo_http(
        self,
        req: Request<Incoming>,
        info: ConnInfo,
    ) -> Result<Response<BoxBody>, CloseWithoutResponse> {
        let (parts, body) = req.into_parts();
        let lines = self.describe(&parts, info);
        let directives = match Directives::from_request(path_and_query(&parts.uri), &parts.headers)
        {
            Ok(d) => d,
            Err(e) => return Ok(refuse(StatusCode::BAD_REQUEST, &e, lines)),
        };
        // Read the whole request body so the connection can be reused.
        if let Err(e) = Limited::new(body, self.shared.config.max_request_body)
            .collect()
            .await
        {
            let status = if e.is::<http_body_util::LengthLimitError>() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return Ok(refuse(status, e.as_ref(), lines));
        }
        if let Some(sim) = &directives.simulation
            && self.shared.attempts.should_fail(sim)
        {
            tokio::time::sleep(sim.delay).await;
            return match sim.failure {
                Failure::Close => Err(CloseWithoutResponse),
                Failure::Status(status) => Ok(answer(status, &directives, lines)),
            };
        }
        if let Some(delay) = directives.delay {
            tokio::time::sleep(delay).await;
        }
        Ok(answer(directives.pick_status(), &directives, lines))
    }

    /// The echo lines for a request.
    fn describe(&self, parts: &http::request::Parts, info: ConnInfo) -> EchoBody {
        let config = &self.shared.config;
        let mut body = EchoBody::new();
        if let Some(v) = &config.version {
            body.field(response::SERVICE_VERSION, v);
        }
        body.field(response::SERVICE_PORT, &info.local.port().to_string());
        body.field(response::HOST, &request_host(parts));
        // HTTP/1 absolute-form targets are echoed whole, as received.
        let url = if parts.version < Version::HTTP_2 && parts.uri.scheme().is_some() {
            parts.uri.to_string()
        } else {
            path_and_query(&parts.uri).to_owned()
        };
        body.field(response::URL, &url);
        body.field(response::METHOD, parts.method.as_str());
        body.field(response::PROTO, proto_name(parts.version));
        body.field(response::IP, &info.peer.ip().to_string());
        write_request_headers(&mut body, &parts.headers, true);
        body.field(response::HOSTNAME, &config.hostname);
        if let Some(ns) = &config.namespace {
            body.field(response::NAMESPACE, ns);
        }
        body
    }

    fn upgrade_websocket(
        &self,
        mut req: Request<Incoming>,
        drain: watch::Receiver<bool>,
    ) -> Response<BoxBody> {
        let headers = req.headers();
        let key = headers
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let version_ok = headers
            .get("sec-websocket-version")
            .is_some_and(|v| v.as_bytes() == b"13");
        let Some(key) = key.filter(|_| version_ok && req.method() == Method::GET) else {
            let mut body = EchoBody::new();
            body.field(
                response::ERROR,
                "websocket upgrade needs GET with Sec-WebSocket-Key and Sec-WebSocket-Version: 13",
            );
            return text_response(StatusCode::BAD_REQUEST, body.into_string());
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(
            async move {
                let upgraded = match on_upgrade.await {
                    Ok(upgraded) => upgraded,
                    Err(e) => {
                        tracing::warn!(error = %e, "websocket upgrade failed");
                        return;
                    }
                };
                tokio::select! {
                    res = websocket::serve_echo(TokioIo::new(upgraded)) => {
                        if let Err(e) = res {
                            tracing::debug!(error = %e, "websocket ended");
                        }
                    }
                    _ = draining(drain) => {}
                }
            }
            .in_current_span(),
        );
        let mut response = Response::new(empty_body());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&websocket::accept_key(&key)) {
            h.insert("sec-websocket-accept", v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.shared.config.hostname) {
            h.insert("x-echo-hostname", v);
        }
        response
    }
}

/// Writes one `RequestHeader=` line per header value, names in Go's
/// canonical form, sorted by name; values keep their arrival order. The
/// Host header is skipped when `skip_host` (it has its own `Host=` line).
pub(crate) fn write_request_headers(body: &mut EchoBody, headers: &HeaderMap, skip_host: bool) {
    let mut names: Vec<_> = headers
        .keys()
        .filter(|n| !(skip_host && *n == HOST))
        .collect();
    names.sort_by_key(|n| n.as_str());
    for name in names {
        let canonical = canonical_header_name(name.as_str());
        for value in headers.get_all(name) {
            body.request_header(&canonical, &String::from_utf8_lossy(value.as_bytes()));
        }
    }
}

fn request_host(parts: &http::request::Parts) -> String {
    host_of(parts.version, &parts.uri, &parts.headers)
}

fn request_authority<B>(req: &Request<B>) -> String {
    host_of(req.version(), req.uri(), req.headers())
}

/// The Host header (HTTP/1) or `:authority` (HTTP/2), each falling back to the other.
fn host_of(version: Version, uri: &http::Uri, headers: &HeaderMap) -> String {
    let from_header = headers
        .get(HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
    let from_uri = uri.authority().map(|a| a.as_str().to_owned());
    if version >= Version::HTTP_2 {
        from_uri.or(from_header).unwrap_or_default()
    } else {
        from_header.or(from_uri).unwrap_or_default()
    }
}

fn path_and_query(uri: &http::Uri) -> &str {
    uri.path_and_query().map_or("/", |pq| pq.as_str())
}

fn proto_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
}

fn empty_body() -> BoxBody {
    Full::new(Bytes::new())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn text_response(status: StatusCode, text: String) -> Response<BoxBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn answer(status: StatusCode, directives: &Directives, lines: EchoBody) -> Response<BoxBody> {
    let mut response = text_response(status, lines.into_string());
    for (name, value) in &directives.headers {
        response.headers_mut().append(name.clone(), value.clone());
    }
    response
}

/// A refusal: the error first, then the echo lines.
fn refuse(
    status: StatusCode,
    error: &(dyn std::error::Error + '_),
    lines: EchoBody,
) -> Response<BoxBody> {
    let mut body = EchoBody::new();
    body.field(response::ERROR, &error.to_string());
    let text = body.into_string() + lines.as_str();
    tracing::info!(%status, error = %error, "refused echo directives");
    text_response(status, text)
}

/// Completes when the drain signal is raised (or its sender is gone).
async fn draining(mut drain: watch::Receiver<bool>) {
    let _ = drain.wait_for(|draining| *draining).await;
}

async fn serve_http_connection(
    echo: Echo,
    stream: TcpStream,
    info: ConnInfo,
    drain: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let conn_drain = drain.clone();
    let service = service_fn(move |req| echo.clone().handle(req, info, conn_drain.clone()));
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        res = conn.as_mut() => res,
        _ = draining(drain) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, drain: watch::Receiver<bool>) {
    let (mut read, mut write) = stream.split();
    tokio::select! {
        res = tokio::io::copy(&mut read, &mut write) => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "tcp echo ended with an error");
            }
        }
        _ = draining(drain) => {}
    }
}

/// Accepts until `shutdown`, runs `handle` per connection, then signals the
/// drain and aborts what is still open after `drain_timeout`.
async fn accept_loop<S, F, Fut>(
    listener: TcpListener,
    shutdown: S,
    drain_timeout: Duration,
    shared: Arc<Shared>,
    handle: F,
) where
    S: Future<Output = ()> + Send + 'static,
    F: Fn(TcpStream, ConnInfo, watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Per-connection failures (aborted handshakes,
                        // fd exhaustion) must not stop the server.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let Ok(local) = stream.local_addr() else { continue };
                shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                let span = tracing::info_span!("echo_conn", %peer, %local);
                tasks.spawn(handle(stream, ConnInfo { local, peer }, drain_rx.clone()).instrument(span));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let drained = tokio::time::timeout(drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(open = tasks.len(), "drain timed out, aborting connections");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// A backend running in the background on one HTTP port (plus, optionally,
/// more HTTP, gRPC-only or TCP ports), for tests and the lab. Shuts down
/// when [`EchoServer::shutdown`] is called or when dropped.
pub struct EchoServer {
    /// The HTTP address.
    pub addr: SocketAddr,
    echo: Echo,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds `addr` (port 0 picks one) and serves HTTP, gRPC and WebSocket on it.
    pub async fn start(addr: SocketAddr, config: ServerConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let echo = Echo::new(config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(echo.serve_http(listener, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            echo,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The backend (its stats, or to serve more ports with the same state).
    pub fn echo(&self) -> &Echo {
        &self.echo
    }

    /// Stops accepting, drains, and waits until every connection is done.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `listener` with a fresh backend for `config` until `shutdown`.
pub fn serve<S>(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: S,
) -> impl Future<Output = ()> + Send + 'static + use<S>
where
    S: Future<Output = ()> + Send + 'static,
{
    Echo::new(config).serve_http(listener, shutdown)
}
