//! Test fixtures: real hyper backends on loopback, a connector that maps
//! fake pod endpoints to them, a mesh config builder, and clients talking
//! to [`HttpOutbound::serve`] over in-memory pipes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hawser_api::proto::discovery::{
    self as pb, Resource, ResourceName, ResourceType, Snapshot, resource::Kind,
};
use http::{HeaderMap, Request, Response, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::discovery::NodeConfig;
use crate::http::{ClientContext, HttpOutbound, HttpSettings, UpstreamConnector};

/// The namespace of every test Service.
pub const NS: &str = "mesh";

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// 1-based count of requests this backend received.
    pub hit: usize,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    /// Every value of `name`, joined with ','.
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ascii header"))
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

/// How a backend answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn ok() -> Self {
        Self::status(200)
    }

    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            trailers: None,
        }
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A loopback HTTP server (HTTP/1.1 and HTTP/2, upgrades echo bytes back).
#[derive(Clone)]
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    /// The last request seen.
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .last()
            .cloned()
            .expect("backend saw a request")
    }

    /// A backend answering every request with 200.
    pub async fn ok(name: &'static str) -> Self {
        Self::start(name, |_| Reply::ok()).await
    }

    /// A listener on loopback and the backend it will serve.
    async fn bind(name: &'static str) -> (TcpListener, Self) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let backend = Self {
            name,
            addr: listener.local_addr().expect("local addr"),
            hits: Arc::default(),
            seen: Arc::default(),
        };
        (listener, backend)
    }

    /// A raw backend: `connection` serves each accepted connection in its
    /// own task, given the backend's hit counter.
    async fn serve_raw<F, Fut>(name: &'static str, connection: F) -> Self
    where
        F: Fn(TcpStream, Arc<AtomicUsize>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (listener, backend) = Self::bind(name).await;
        let hits = backend.hits.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(connection(tcp, hits.clone()));
            }
        });
        backend
    }

    /// A raw HTTP/1.1 backend that answers the first request of each
    /// connection with 200 and keep-alive, then closes the connection
    /// `linger` later without a word (as a server's idle timeout does).
    pub async fn closing_after(name: &'static str, linger: Duration) -> Self {
        Self::serve_raw(name, move |mut tcp, hits| async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            hits.fetch_add(1, Ordering::SeqCst);
            let body = name;
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(reply.as_bytes()).await;
            tokio::time::sleep(linger).await;
        })
        .await
    }

    /// A raw HTTP/1.1 backend that answers every request of a kept-alive
    /// connection with `answer`, byte for byte (it must be framed by a
    /// `Content-Length`).
    pub async fn raw(name: &'static str, answer: &'static str) -> Self {
        Self::serve_raw(name, move |mut tcp, hits| async move {
            let mut pending = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending.drain(..end + 4);
                    hits.fetch_add(1, Ordering::SeqCst);
                    if tcp.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
    }

    /// A backend answering with `f`.
    pub async fn start(
        name: &'static str,
        f: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let (listener, backend) = Self::bind(name).await;
        let handler: Arc<Handler> = Arc::new(f);
        let b = backend.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let b = b.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let b = b.clone();
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(b.answer(req, &*handler).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        backend
    }

    async fn answer(
        &self,
        mut req: Request<Incoming>,
        handler: &Handler,
    ) -> Response<
        StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
    > {
        let hit = self.hits.fetch_add(1, Ordering::SeqCst) + 1;
        if req.headers().contains_key(http::header::UPGRADE) {
            self.seen.lock().push(Seen {
                hit,
                method: req.method().to_string(),
                path: req.uri().to_string(),
                version: req.version(),
                headers: req.headers().clone(),
                body: Bytes::new(),
            });
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            return Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(StreamBody::new(tokio_stream::iter(Vec::new())))
                .expect("response");
        }
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let seen = Seen {
            hit,
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            version: parts.version,
            headers: parts.headers,
            body,
        };
        let reply = handler(&seen);
        self.seen.lock().push(seen);
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        let mut frames = vec![Ok(Frame::data(Bytes::from(format!(
            "backend={}\n",
            self.name
        ))))];
        if let Some(t) = reply.trailers {
            frames.push(Ok(Frame::trailers(t)));
        }
        let mut resp = Response::builder().status(reply.status);
        for (n, v) in reply.headers {
            resp = resp.header(n, v);
        }
        resp.body(StreamBody::new(tokio_stream::iter(frames)))
            .expect("response")
    }
}

/// Maps fake endpoint addresses to loopback backends.
#[derive(Default)]
pub struct TestConnector {
    map: HashMap<SocketAddr, SocketAddr>,
    pub connects: AtomicUsize,
    /// Refuse this many connects before succeeding again.
    pub fail_next: AtomicUsize,
}

#[async_trait]
impl UpstreamConnector for TestConnector {
    async fn connect(
        &self,
        endpoint: SocketAddr,
    ) -> std::io::Result<Box<dyn crate::tunnel::client::Io>> {
        self.connects.fetch_add(1, Ordering::SeqCst);
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(refused());
        }
        let real = self.map.get(&endpoint).ok_or_else(refused)?;
        Ok(Box::new(TcpStream::connect(real).await?))
    }
}

/// Services, endpoints and routes for one test.
#[derive(Default)]
pub struct Mesh {
    services: Vec<pb::Service>,
    routes: HashMap<String, pb::ServiceRoutes>,
    map: HashMap<SocketAddr, SocketAddr>,
    next_ip: u8,
}

impl Mesh {
    /// Adds Service `name` with `vip`:`port` over `backends` (each a fake
    /// pod endpoint at 10.1.0.N:8080). Returns the fake endpoints.
    pub fn service(
        &mut self,
        name: &str,
        vip: &str,
        port: u16,
        port_name: &str,
        app_protocol: &str,
        backends: &[&Backend],
    ) -> Vec<SocketAddr> {
        let mut fakes = Vec::new();
        let endpoints = backends
            .iter()
            .map(|b| {
                self.next_ip += 1;
                let ip = format!("10.1.0.{}", self.next_ip);
                let fake: SocketAddr = format!("{ip}:8080").parse().expect("addr");
                self.map.insert(fake, b.addr);
                fakes.push(fake);
                pb::Endpoint {
                    workload_uid: format!("{}-{}", b.name, self.next_ip),
                    addresses: vec![ip],
                    ports: [(u32::from(port), 8080)].into_iter().collect(),
                    ready: true,
                    node: "node-a".into(),
                }
            })
            .collect();
        self.services.push(pb::Service {
            namespace: NS.into(),
            name: name.into(),
            vips: vec![vip.into()],
            ports: vec![pb::ServicePort {
                name: port_name.into(),
                port: u32::from(port),
                app_protocol: app_protocol.into(),
                ..Default::default()
            }],
            endpoints,
            upgrades: None,
        });
        fakes
    }

    /// Attaches routes to `service`:`port`.
    pub fn routes(
        &mut self,
        service: &str,
        port: u16,
        producer: Option<pb::RouteTable>,
        consumers: Vec<(&str, pb::RouteTable)>,
    ) {
        let sr = self
            .routes
            .entry(service.to_owned())
            .or_insert_with(|| pb::ServiceRoutes {
                namespace: NS.into(),
                name: service.into(),
                ports: Vec::new(),
            });
        sr.ports.push(pb::PortRoutes {
            port: u32::from(port),
            producer,
            consumers: consumers
                .into_iter()
                .map(|(ns, t)| pb::ConsumerRoutes {
                    namespace: ns.into(),
                    table: Some(t),
                })
                .collect(),
        });
    }

    /// Maps an extra fake address to a backend (for non-Service destinations).
    pub fn alias(&mut self, fake: SocketAddr, backend: &Backend) {
        self.map.insert(fake, backend.addr);
    }

    pub fn config(&self, version: u64) -> NodeConfig {
        let res = |kind: ResourceType, name: String, k: Kind| Resource {
            name: Some(ResourceName {
                r#type: kind as i32,
                name,
            }),
            version,
            kind: Some(k),
        };
        let mut resources: Vec<Resource> = self
            .services
            .iter()
            .map(|s| {
                res(
                    ResourceType::Service,
                    format!("{}/{}", s.namespace, s.name),
                    Kind::Service(s.clone()),
                )
            })
            .collect();
        resources.extend(self.routes.values().map(|r| {
            res(
                ResourceType::ServiceRoutes,
                format!("{}/{}", r.namespace, r.name),
                Kind::ServiceRoutes(r.clone()),
            )
        }));
        NodeConfig::from_snapshot(Snapshot { version, resources }).expect("valid config")
    }

    pub fn connector(&self) -> Arc<TestConnector> {
        Arc::new(TestConnector {
            map: self.map.clone(),
            ..Default::default()
        })
    }
}

/// An engine over a mesh, with its connector.
pub struct Harness {
    pub outbound: HttpOutbound,
    pub connector: Arc<TestConnector>,
    pub config: watch::Sender<Arc<NodeConfig>>,
}

impl Harness {
    pub fn new(mesh: &Mesh) -> Self {
        Self::with_settings(mesh, HttpSettings::default())
    }

    pub fn with_settings(mesh: &Mesh, settings: HttpSettings) -> Self {
        let (config, rx) = watch::channel(Arc::new(mesh.config(1)));
        Self {
            outbound: HttpOutbound::new(rx, settings),
            connector: mesh.connector(),
            config,
        }
    }

    pub fn ctx(&self, namespace: &str, destination: &str) -> ClientContext {
        ClientContext {
            namespace: namespace.into(),
            destination: destination.parse().expect("destination"),
            connector: self.connector.clone(),
            allowed_upgrades: None,
        }
    }

    /// An HTTP/1.1 client connection from a pod in `namespace` to `destination`.
    pub async fn h1(&self, namespace: &str, destination: &str) -> Client {
        let (client_io, proxy_io) = tokio::io::duplex(256 * 1024);
        let outbound = self.outbound.clone();
        let ctx = self.ctx(namespace, destination);
        tokio::spawn(async move { outbound.serve(proxy_io, ctx).await });
        let (sender, conn) = http1::handshake(TokioIo::new(client_io))
            .await
            .expect("h1 handshake");
        tokio::spawn(conn.with_upgrades());
        Client::H1(sender)
    }

    /// A raw client connection from a pod in `namespace` to `destination`:
    /// the bytes the client side reads and writes.
    pub fn raw(&self, namespace: &str, destination: &str) -> tokio::io::DuplexStream {
        let (client_io, proxy_io) = tokio::io::duplex(256 * 1024);
        let outbound = self.outbound.clone();
        let ctx = self.ctx(namespace, destination);
        tokio::spawn(async move { outbound.serve(proxy_io, ctx).await });
        client_io
    }

    /// An HTTP/2 (prior knowledge) client connection.
    pub async fn h2(&self, namespace: &str, destination: &str) -> Client {
        let (client_io, proxy_io) = tokio::io::duplex(256 * 1024);
        let outbound = self.outbound.clone();
        let ctx = self.ctx(namespace, destination);
        tokio::spawn(async move { outbound.serve(proxy_io, ctx).await });
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(client_io))
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        Client::H2(sender)
    }
}

/// What the client got back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    /// The backend that answered (from the body).
    pub fn backend(&self) -> &str {
        self.body
            .lines()
            .find_map(|l| l.strip_prefix("backend="))
            .unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }
}

pub enum Client {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Clone for Client {
    fn clone(&self) -> Self {
        match self {
            Self::H2(s) => Self::H2(s.clone()),
            Self::H1(_) => panic!("HTTP/1.1 senders cannot be cloned"),
        }
    }
}

/// A request builder with the test defaults (Host `echo`).
pub fn request(method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "echo")
}

impl Client {
    /// Whether the proxy closed the connection.
    pub fn is_closed(&self) -> bool {
        match self {
            Self::H1(s) => s.is_closed(),
            Self::H2(s) => s.is_closed(),
        }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Answer {
        let resp = match self {
            Self::H1(s) => {
                s.ready().await.expect("h1 ready");
                s.send_request(req).await.expect("h1 response")
            }
            Self::H2(s) => {
                let (mut parts, body) = req.into_parts();
                let host = parts
                    .headers
                    .remove("host")
                    .map(|h| h.to_str().expect("host").to_owned())
                    .unwrap_or_else(|| "echo".into());
                let pq = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                parts.uri = format!("http://{host}{pq}").parse().expect("uri");
                parts.version = Version::HTTP_2;
                s.ready().await.expect("h2 ready");
                s.send_request(Request::from_parts(parts, body))
                    .await
                    .expect("h2 response")
            }
        };
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.expect("response body");
        let trailers = collected.trailers().cloned();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
            trailers,
        }
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        self.send(request("GET", path).body(Full::default()).expect("request"))
            .await
    }

    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = request("GET", path);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        self.send(req.body(Full::default()).expect("request")).await
    }
}

// ---- route table builders (the control plane's wire form) ----

pub fn to(service: &str, port: u16, weight: u32) -> pb::WeightedBackend {
    pb::WeightedBackend {
        weight,
        target: Some(pb::weighted_backend::Target::Service(pb::ServiceBackend {
            namespace: NS.into(),
            name: service.into(),
            port: u32::from(port),
        })),
        filters: Vec::new(),
    }
}

pub fn invalid(weight: u32) -> pb::WeightedBackend {
    pb::WeightedBackend {
        weight,
        target: Some(pb::weighted_backend::Target::Invalid(pb::InvalidBackend {
            reason: "service mesh/missing not found".into(),
        })),
        filters: Vec::new(),
    }
}

pub fn rule(backends: Vec<pb::WeightedBackend>) -> pb::Rule {
    pb::Rule {
        route: Some(pb::RouteRef {
            kind: pb::RouteKind::Http as i32,
            namespace: NS.into(),
            name: "route".into(),
        }),
        backends,
        ..Default::default()
    }
}

pub fn filtered(mut r: pb::Rule, filters: Vec<pb::filter::Kind>) -> pb::Rule {
    r.filters = filters
        .into_iter()
        .map(|k| pb::Filter { kind: Some(k) })
        .collect();
    r
}

pub fn http_match(rule: u32, path: pb::path_match::Kind) -> pb::MatchEntry {
    pb::MatchEntry {
        rule,
        kind: Some(pb::match_entry::Kind::Http(pb::HttpMatch {
            path: Some(pb::PathMatch { kind: Some(path) }),
            ..Default::default()
        })),
    }
}

pub fn prefix(rule: u32, p: &str) -> pb::MatchEntry {
    http_match(rule, pb::path_match::Kind::Prefix(p.into()))
}

pub fn exact(rule: u32, p: &str) -> pb::MatchEntry {
    http_match(rule, pb::path_match::Kind::Exact(p.into()))
}

pub fn table(rules: Vec<pb::Rule>, matches: Vec<pb::MatchEntry>) -> pb::RouteTable {
    pb::RouteTable {
        kind: pb::RouteKind::Http as i32,
        rules,
        matches,
    }
}

/// One rule to `service`:`port` for every path.
pub fn all_to(service: &str, port: u16) -> pb::RouteTable {
    table(vec![rule(vec![to(service, port, 1)])], vec![prefix(0, "/")])
}

pub fn header_mod(
    set: &[(&str, &str)],
    add: &[(&str, &str)],
    remove: &[&str],
) -> pb::HeaderModifier {
    let h = |l: &[(&str, &str)]| {
        l.iter()
            .map(|(n, v)| pb::Header {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect()
    };
    pb::HeaderModifier {
        set: h(set),
        add: h(add),
        remove: remove.iter().map(|r| (*r).into()).collect(),
    }
}
