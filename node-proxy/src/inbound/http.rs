//! The inbound HTTP server of one admitted stream to an HTTP port of a pod
//! (an HBONE CONNECT stream, or a plaintext connection captured on 15006).
//!
//! The stream is served as HTTP/1.1 or HTTP/2 with prior knowledge (h2c),
//! detected from its first bytes. Each request is authorized on its own:
//! the L4 parts of the pod's policies (peer identity, namespace, ipBlock,
//! port) and their L7 parts (method, path, after
//! [`authz::normalize`], which may also refuse it with `400`). A denied request is answered `403` with the
//! body `RBAC: access denied`, as Envoy answers (gRPC: `grpc-status` 7,
//! PERMISSION_DENIED); the reason, naming the policies, is logged at info
//! and the denial counted. An
//! allowed one is forwarded to the app in the pod's network namespace over
//! this stream's own upstream connection, opened on the first allowed
//! request with the bypass mark and reused while it stays open: HTTP/1.1
//! requests one after another (one without a body exchanged by this
//! stream's task itself, [`crate::http::h1`]; one with a body through
//! hyper's client, which then takes the connection over), HTTP/2 requests
//! multiplexed on one connection (the app speaks what the client speaks).
//! Bodies and trailers (gRPC) are streamed through; upgrades (WebSocket)
//! get a dedicated upstream connection and are spliced after the `101`.
//! Plain HTTP/1.1 requests (no body, no upgrade) are read and answered by
//! the stream's own task ([`crate::http::serve_verbatim`]); hyper's server
//! takes the stream from its first other request on. Most of them are
//! authorized from their head and passed on to the app as they came, their
//! answers back as the app wrote them (`Server::verbatim`): what the
//! client sees is what the app sent, as through an L4 relay, and no header
//! map is built on either side.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use hawser_api::SpiffeId;
use hawser_api::cni::PROXY_MARK;
use http::header::CONTENT_TYPE;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};

use hyper::body::{Body, Bytes, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::InboundStats;
use crate::authz::{self, Connection, Decision, HttpRequest};
use crate::http::h1::Answer;
use crate::http::{
    BoxError, HOP_BY_HOP, HttpBody, RawRequest, boxed, empty, full, h1, is_grpc, is_upgrade,
    strip_upgrade, upgrade_allowed,
};
use crate::inpod::NetnsHandle;
use crate::tunnel::{Io, ServeStream};

/// What a stream's HTTP server needs of its pod.
#[derive(Clone)]
pub struct PodAccess {
    /// The pod's workload uid (for the logs).
    pub uid: Arc<str>,
    /// Where the app is connected from.
    pub netns: NetnsHandle,
    /// The pod's share of the config in force (policies are read per
    /// request).
    pub(crate) view: Arc<super::PodViews>,
    /// Where decisions are counted.
    pub stats: Arc<InboundStats>,
    /// The stream's idle timeout, also once upgraded (`http/serve.rs` says
    /// what it cuts).
    pub idle_timeout: std::time::Duration,
    /// How long a request head may take once its first byte came.
    pub header_read_timeout: std::time::Duration,
    /// The protocols a client may upgrade to (the rest are served as plain
    /// HTTP/1.1).
    pub allowed_upgrades: Arc<[Box<str>]>,
    /// How paths are normalized before they are authorized and forwarded.
    pub path_normalization: authz::PathNormalization,
}

/// One admitted stream to an HTTP port, to be served as HTTP.
pub struct HttpStream {
    pod: PodAccess,
    peer: Option<SpiffeId>,
    peer_addr: SocketAddr,
    target: SocketAddr,
}

impl HttpStream {
    /// The stream from `peer` (None: plaintext) at `peer_addr` to the pod's
    /// `target`.
    pub fn new(
        pod: PodAccess,
        peer: Option<SpiffeId>,
        peer_addr: SocketAddr,
        target: SocketAddr,
    ) -> Self {
        Self {
            pod,
            peer,
            peer_addr,
            target,
        }
    }

    /// Serves `io` until the client closes it.
    pub async fn run<IO: Io>(self, io: IO) {
        let who = self
            .peer
            .as_ref()
            .map_or_else(|| "plaintext".to_owned(), ToString::to_string);
        let span = tracing::info_span!(
            "inbound_http",
            pod = %self.pod.uid,
            peer = %who,
            peer_addr = %self.peer_addr,
            target = %self.target,
        );
        // Entering the span on every poll of the stream costs a good share
        // of what a plain request costs here; it is entered only when the
        // debug events of the code below would show. This module's own
        // events name it as their parent.
        let entered = if tracing::enabled!(tracing::Level::DEBUG) {
            span.clone()
        } else {
            tracing::Span::none()
        };
        let server = Arc::new(Server {
            stream: self,
            upstream: Slot::default(),
            span,
        });
        let shared = server.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let server = shared.clone();
            async move { Ok::<_, Infallible>(server.handle(req).await) }
        });
        // Plain HTTP/1.1 requests are answered in this task, most passed on
        // to the app as they came; hyper serves the stream from its first
        // other request on.
        let lean = |req| server.handle(req);
        let verbatim = |raw: &RawRequest| server.verbatim(raw);
        let timeouts = crate::http::ServeTimeouts {
            idle: server.stream.pod.idle_timeout,
            header_read: server.stream.pod.header_read_timeout,
        };
        let ended = crate::http::serve_verbatim(io, timeouts, lean, verbatim, service)
            .instrument(entered)
            .await;
        if let Err(e) = ended {
            tracing::debug!(parent: &server.span, error = %e, "inbound HTTP stream ended with an error");
        }
    }
}

#[async_trait]
impl ServeStream for HttpStream {
    async fn serve(self: Box<Self>, stream: Box<dyn Io>) {
        self.run(stream).await;
    }
}

/// The sending half of the stream's upstream connection.
enum Sender {
    H1(http1::SendRequest<HttpBody>),
    H2(http2::SendRequest<HttpBody>),
    /// Idle, for this stream's task to exchange the next request on.
    Lean(h1::Connection<TcpStream>),
}

/// The stream's upstream connection between requests.
type Slot = Arc<tokio::sync::Mutex<Option<Sender>>>;

/// Why a request was answered here instead of by the app.
#[derive(Debug, thiserror::Error)]
enum LocalReply {
    /// The reason (naming the policies) is logged and counted; the client
    /// is told only what Envoy and Istio tell it.
    #[error("RBAC: access denied")]
    Denied(String),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("connecting to the app at {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: BoxError,
    },
    #[error("request to the app at {addr} failed: {source}")]
    Upstream {
        addr: SocketAddr,
        #[source]
        source: BoxError,
    },
}

impl LocalReply {
    /// Maps a failure to connect to the app at `addr`.
    fn connect<E: Into<BoxError>>(addr: SocketAddr) -> impl FnOnce(E) -> Self {
        move |e| Self::Connect {
            addr,
            source: e.into(),
        }
    }

    /// Maps a failure of an exchange with the app at `addr`.
    fn upstream<E: Into<BoxError>>(addr: SocketAddr) -> impl FnOnce(E) -> Self {
        move |e| Self::Upstream {
            addr,
            source: e.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Denied(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Connect { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// gRPC status codes: PERMISSION_DENIED, INTERNAL, UNAVAILABLE.
    fn grpc_status(&self) -> u32 {
        match self {
            Self::Denied(_) => 7,
            Self::BadRequest(_) => 13,
            Self::Connect { .. } | Self::Upstream { .. } => 14,
        }
    }

    /// The response: a short text body, or for gRPC a trailers-only `200`.
    fn response(&self, grpc: bool) -> Response<HttpBody> {
        let message = self.to_string();
        if grpc {
            let mut resp = Response::new(empty());
            let headers = resp.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("grpc-status", HeaderValue::from(self.grpc_status()));
            let printable: String = message
                .chars()
                .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
                .collect();
            if let Ok(v) = HeaderValue::from_str(&printable.replace('%', "%25")) {
                headers.insert("grpc-message", v);
            }
            self.mark(&mut resp);
            return resp;
        }
        let mut resp = Response::new(full(format!("{message}\n")));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        self.mark(&mut resp);
        resp
    }

    /// Tells the client's node proxy that this reply is a connection error
    /// (the app refused or dropped the connection), which a route's retry
    /// policy retries like a failed connection of its own.
    fn mark(&self, resp: &mut Response<HttpBody>) {
        let kind = match self {
            Self::Connect { .. } => "connect",
            Self::Upstream { .. } => "reset",
            Self::Denied(_) | Self::BadRequest(_) => return,
        };
        resp.headers_mut().insert(
            crate::http::UPSTREAM_ERROR_HEADER,
            HeaderValue::from_static(kind),
        );
    }
}

/// The state of one served stream.
struct Server {
    stream: HttpStream,
    /// The upstream connection reused by this stream's requests. A tokio
    /// mutex: it is held while a connection is opened, so concurrent HTTP/2
    /// requests share the one they wait for.
    upstream: Slot,
    /// The stream's span (pod, peer, target), the parent of its events.
    span: tracing::Span,
}

impl Server {
    /// Authorizes, then forwards; every failure becomes a response.
    async fn handle<B>(&self, req: Request<B>) -> Response<HttpBody>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let grpc = is_grpc(req.headers());
        let span = self.request_span(req.method().as_str(), req.uri().path());
        let result = async {
            let req = self.authorize(req)?;
            self.forward(req).await
        }
        .instrument(span.clone())
        .await;
        result.unwrap_or_else(|reply| self.local_reply(&span, &reply, grpc))
    }

    /// The span of one request (debug).
    fn request_span(&self, method: &str, path: &str) -> tracing::Span {
        tracing::debug_span!(parent: &self.span, "request", %method, %path)
    }

    /// The answer to a request answered here, logged unless it was denied
    /// (the denial was).
    fn local_reply(
        &self,
        span: &tracing::Span,
        reply: &LocalReply,
        grpc: bool,
    ) -> Response<HttpBody> {
        if !matches!(reply, LocalReply::Denied(_)) {
            // Under the request's span when debug events show.
            let parent = if span.is_disabled() { &self.span } else { span };
            tracing::info!(parent: parent, error = %reply, "request failed");
        }
        reply.response(grpc)
    }

    /// Takes a plain HTTP/1.1 request as it came, to pass it on to the app
    /// unchanged, when the app cannot read it otherwise than this proxy
    /// authorizes it and nothing in it is for this hop only: its head is
    /// canonical ([`RawRequest::is_canonical`]), its target has no fragment
    /// (`http` drops one, the app might not) and a normal path
    /// ([`authz::normalize`]), it does not ask for the connection to
    /// close, and it has no hop-by-hop field, no field of the node proxies'
    /// own, and no gRPC content type (a denial is then a gRPC status). The
    /// answer is passed on as it came too when it can be
    /// ([`h1::Connection::exchange_verbatim`]). Every other request is built
    /// and goes through [`Self::handle`].
    fn verbatim<'s>(&'s self, raw: &RawRequest) -> Option<impl Future<Output = Answer> + use<'s>> {
        let not_passed_on = |(name, value): (&[u8], &[u8])| {
            name.eq_ignore_ascii_case(crate::http::UPSTREAM_ERROR_HEADER.as_bytes())
                || HOP_BY_HOP
                    .iter()
                    .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
                || (name.eq_ignore_ascii_case(b"content-type")
                    && value
                        .get(..16)
                        .is_some_and(|v| v.eq_ignore_ascii_case(b"application/grpc")))
        };
        if raw.asks_close() || !raw.is_canonical() || raw.fields().any(not_passed_on) {
            return None;
        }
        let target = raw.target();
        if target.contains(&b'#') {
            return None;
        }
        // As `http` reads it (hyper answers what it refuses), and normal.
        let target = PathAndQuery::from_maybe_shared(target).ok()?;
        if authz::normalize(target.path(), &self.stream.pod.path_normalization)
            != authz::Normalized::Unchanged
        {
            return None;
        }
        let head = raw.head().clone();
        let method = raw.method().clone();
        Some(async move {
            let span = self.request_span(method.as_str(), target.path());
            let result = async {
                self.decide(&method, target.path())?;
                self.forward_verbatim(&head, method == Method::HEAD).await
            }
            .instrument(span.clone())
            .await;
            result.unwrap_or_else(|reply| Answer::Parsed(self.local_reply(&span, &reply, false)))
        })
    }

    /// Passes an authorized request on to the app as it came.
    async fn forward_verbatim(
        &self,
        head: &[u8],
        head_request: bool,
    ) -> Result<Answer, LocalReply> {
        let conn = self.lean_connection().await?;
        let answer = conn
            .exchange_verbatim(head, head_request, self.give_back())
            .await
            .map_err(LocalReply::upstream(self.stream.target))?;
        Ok(match answer {
            Answer::Parsed(mut resp) => {
                strip_hop_by_hop(resp.headers_mut(), false);
                Answer::Parsed(resp)
            }
            verbatim => verbatim,
        })
    }

    /// The request if the pod's policies allow it, its path normalized.
    fn authorize<B>(&self, req: Request<B>) -> Result<Request<B>, LocalReply> {
        let normalized =
            match authz::normalize(req.uri().path(), &self.stream.pod.path_normalization) {
                authz::Normalized::Unchanged => None,
                authz::Normalized::Changed(path) => Some(path),
                authz::Normalized::Rejected(why) => {
                    return Err(LocalReply::BadRequest(format!(
                        "{why}: {}",
                        req.uri().path()
                    )));
                }
            };
        let path = normalized.as_deref().unwrap_or(req.uri().path());
        self.decide(req.method(), path)?;
        match normalized {
            // Forwarded as authorized, so the app cannot read it differently.
            Some(path) => with_path(req, &path),
            None => Ok(req),
        }
    }

    /// Whether the pod's policies allow `method` on `path` (normalized):
    /// counted, and logged when denied (or an audit policy would deny).
    fn decide(&self, method: &Method, path: &str) -> Result<(), LocalReply> {
        let s = &self.stream;
        let path = &*authz::policy_path(path);
        // The policy in force is the one the latest config carries.
        let eval = authz::evaluate(
            &s.pod.view.current().policies,
            &Connection {
                peer: s.peer.as_ref(),
                peer_ip: s.peer_addr.ip(),
                port: s.target.port(),
                request: Some(HttpRequest {
                    method: method.as_str(),
                    path,
                }),
            },
        );
        for audit in &eval.audit_denials {
            tracing::info!(parent: &self.span, %method, %path, reason = %audit, "audit: would deny");
        }
        if let Decision::Deny { reason } = eval.decision {
            s.pod.stats.requests_denied.fetch_add(1, Ordering::Relaxed);
            tracing::info!(parent: &self.span, %method, %path, %reason, "request denied");
            return Err(LocalReply::Denied(reason));
        }
        s.pod.stats.requests_allowed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn forward<B>(&self, mut req: Request<B>) -> Result<Response<HttpBody>, LocalReply>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        if is_upgrade(&req) {
            if upgrade_allowed(req.headers(), &self.stream.pod.allowed_upgrades) {
                return self.forward_upgrade(req).await;
            }
            // Not on the allow-list (h2c, …): the app gets a plain request,
            // so everything on this connection stays judged request by request.
            tracing::debug!(parent: &self.span, upgrade = ?req.headers().get(http::header::UPGRADE), "upgrade not on the allow-list: served as plain HTTP/1.1");
            strip_upgrade(req.headers_mut());
        }
        strip_hop_by_hop(req.headers_mut(), false);
        let addr = self.stream.target;
        let h2 = req.version() == Version::HTTP_2;
        let lean = h1::fits(&req);
        let mut resp = match self.sender(h2, lean).await? {
            Sender::H2(mut sender) => sender
                .send_request(req.map(boxed))
                .await
                .map_err(LocalReply::upstream(addr))?,
            Sender::H1(mut sender) => {
                let resp = sender
                    .send_request(req.map(boxed))
                    .await
                    .map_err(LocalReply::upstream(addr))?;
                // Back for the next request once this response is read (an
                // HTTP/1.1 client sends it only then).
                *self.upstream.lock().await = Some(Sender::H1(sender));
                resp
            }
            Sender::Lean(conn) => {
                let (parts, _) = req.into_parts();
                let mut resp = conn
                    .exchange(&parts, self.give_back())
                    .await
                    .map_err(LocalReply::upstream(addr))?;
                strip_hop_by_hop(resp.headers_mut(), false);
                return Ok(resp);
            }
        };
        strip_hop_by_hop(resp.headers_mut(), false);
        Ok(resp.map(boxed))
    }

    /// Where a connection of this task's own exchange goes once its answer
    /// is read (an HTTP/1.1 client sends the next request only then).
    fn give_back(&self) -> h1::OnReusable<TcpStream> {
        let slot = self.upstream.clone();
        Box::new(move |conn| {
            if let Ok(mut slot) = slot.try_lock()
                && slot.is_none()
            {
                *slot = Some(Sender::Lean(conn));
            }
        })
    }

    /// The stream's app connection for an exchange of this task's own: the
    /// idle one if it is still usable, else a new one.
    async fn lean_connection(&self) -> Result<h1::Connection<TcpStream>, LocalReply> {
        match self.sender(false, true).await? {
            Sender::Lean(conn) => Ok(conn),
            // Not reached: hyper's client has the app connection only after
            // hyper's server took the stream over, and then no request
            // comes here. Were it, that connection is closed for a new one.
            Sender::H1(_) | Sender::H2(_) => {
                Ok(h1::Connection::new(self.connect().await?.into_inner()))
            }
        }
    }

    /// A sender for the next request: the stream's connection if it is
    /// still usable, else a new one.
    async fn sender(&self, h2: bool, lean: bool) -> Result<Sender, LocalReply> {
        let mut slot = self.upstream.lock().await;
        let io = match reusable(slot.take(), h2).await {
            Some(Sender::H2(shared)) => {
                *slot = Some(Sender::H2(shared.clone()));
                return Ok(Sender::H2(shared));
            }
            // hyper takes the idle connection over: it writes the body
            // while the response may already arrive.
            Some(Sender::Lean(conn)) if !lean => TokioIo::new(conn.into_io()),
            Some(sender) => return Ok(sender),
            None => self.connect().await?,
        };
        let addr = self.stream.target;
        if h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(LocalReply::connect(addr))?;
            tokio::spawn(conn.in_current_span());
            *slot = Some(Sender::H2(sender.clone()));
            Ok(Sender::H2(sender))
        } else if lean {
            Ok(Sender::Lean(h1::Connection::new(io.into_inner())))
        } else {
            let (sender, conn) = http1::handshake(io)
                .await
                .map_err(LocalReply::connect(addr))?;
            tokio::spawn(conn.in_current_span());
            Ok(Sender::H1(sender))
        }
    }

    /// Opens a connection to the app from inside the pod.
    async fn connect(&self) -> Result<TokioIo<TcpStream>, LocalReply> {
        let s = &self.stream;
        let tcp = s
            .pod
            .netns
            .connect_tcp(s.target, PROXY_MARK)
            .await
            .map_err(LocalReply::connect(s.target))?;
        let _ = tcp.set_nodelay(true);
        tracing::debug!("connected to the app");
        Ok(TokioIo::new(tcp))
    }

    /// Forwards an upgrade request over its own connection and, on `101`,
    /// splices the client's and the app's connections together.
    async fn forward_upgrade<B>(
        &self,
        mut req: Request<B>,
    ) -> Result<Response<HttpBody>, LocalReply>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let client_upgrade = hyper::upgrade::on(&mut req);
        strip_hop_by_hop(req.headers_mut(), true);
        let addr = self.stream.target;
        let (mut sender, conn) = http1::handshake::<_, HttpBody>(self.connect().await?)
            .await
            .map_err(LocalReply::connect(addr))?;
        tokio::spawn(conn.with_upgrades().in_current_span());
        let mut resp = sender
            .send_request(req.map(boxed))
            .await
            .map_err(LocalReply::upstream(addr))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_by_hop(resp.headers_mut(), false);
            return Ok(resp.map(boxed));
        }
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let idle = self.stream.pod.idle_timeout;
        tokio::spawn(
            async move {
                let (client, app) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok(ios) => ios,
                    Err(e) => {
                        tracing::debug!(error = %e, "upgrade failed");
                        return;
                    }
                };
                let (mut client, mut app) = (TokioIo::new(client), TokioIo::new(app));
                // The client's side still has the stream's idle timeout
                // inside; the relay's own also covers a half-closed client.
                match crate::relay::relay(&mut client, &mut app, idle).await {
                    Ok(crate::relay::Moved {
                        a_to_b: up,
                        b_to_a: down,
                    }) => tracing::debug!(up, down, "upgraded connection closed"),
                    Err(e) => tracing::debug!(error = %e, "upgraded connection failed"),
                }
            }
            .in_current_span(),
        );
        Ok(resp.map(|_| empty()))
    }
}

/// `previous` if it can carry the next request: still open, and for
/// HTTP/1.1 ready (the app may have closed it after the last response).
async fn reusable(previous: Option<Sender>, h2: bool) -> Option<Sender> {
    match previous? {
        Sender::H2(sender) if h2 && !sender.is_closed() => Some(Sender::H2(sender)),
        Sender::H1(mut sender) if !h2 => sender.ready().await.ok().map(|()| Sender::H1(sender)),
        Sender::Lean(mut conn) if !h2 => conn.is_usable().then_some(Sender::Lean(conn)),
        _ => None,
    }
}

/// `req` with its path replaced by `path` (query, scheme, authority kept).
fn with_path<B>(req: Request<B>, path: &str) -> Result<Request<B>, LocalReply> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = Some(
        PathAndQuery::from_maybe_shared(path_and_query)
            .map_err(|e| LocalReply::BadRequest(format!("normalized path {path:?}: {e}")))?,
    );
    parts.uri = Uri::from_parts(uri)
        .map_err(|e| LocalReply::BadRequest(format!("normalized path {path:?}: {e}")))?;
    Ok(Request::from_parts(parts, body))
}

/// Removes the connection-specific headers (see
/// `crate::http::strip_hop_by_hop`) and the header only this proxy's
/// own replies may carry (the app was unreachable).
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    headers.remove(crate::http::UPSTREAM_ERROR_HEADER);
    crate::http::strip_hop_by_hop(headers, keep_upgrade);
}

#[cfg(test)]
mod tests;
