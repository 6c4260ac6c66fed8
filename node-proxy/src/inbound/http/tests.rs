//! The inbound HTTP path end to end in-process: an HBONE CONNECT through
//! [`serve_connection`] (h2 over an in-memory pipe, the peer identity given),
//! [`PodInbound`] deciding per request, and a real hyper app on loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use hawser_api::SpiffeId;
use hawser_api::proto::discovery::{
    self as pb, AuthorizationAction, AuthorizationPolicy, AuthorizationRule, Destination,
    PathMatch, Resource, ResourceName, ResourceType, Snapshot, Source, path_match, resource::Kind,
};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::discovery::NodeConfig;
use crate::inbound::PodInbound;
use crate::inpod::NetnsHandle;
use crate::tunnel::server::ServerConfig;
use crate::tunnel::{Admitted, H2Stream, Io, serve_connection};

/// The app: answers `<method> <path>` (and `/grpc` with trailers, `/ws`
/// with a `101` then an echo, `/api/last` then closes the connection);
/// counts the connections it accepted.
async fn app() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = l.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    let said = format!("{} {}", req.method(), req.uri().path());
                    let resp = match req.uri().path() {
                        "/grpc" => {
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            let body = Full::new(Bytes::from(said))
                                .with_trailers(async move { Some(Ok(trailers)) });
                            Response::new(body.boxed())
                        }
                        "/ws" => {
                            let upgrade = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(io) = upgrade.await {
                                    let mut io = TokioIo::new(io);
                                    let mut buf = [0u8; 64];
                                    while let Ok(n) = io.read(&mut buf).await {
                                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            });
                            let mut resp = Response::new(Empty::new().boxed());
                            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                            resp.headers_mut()
                                .insert("connection", http::HeaderValue::from_static("upgrade"));
                            resp.headers_mut()
                                .insert("upgrade", http::HeaderValue::from_static("websocket"));
                            resp
                        }
                        // The app ends the connection after this answer.
                        "/api/last" => {
                            let mut resp = Response::new(Full::new(Bytes::from(said)).boxed());
                            resp.headers_mut()
                                .insert("connection", http::HeaderValue::from_static("close"));
                            resp
                        }
                        _ => Response::new(Full::new(Bytes::from(said)).boxed()),
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

fn res(kind: ResourceType, name: &str, k: Kind) -> Resource {
    Resource {
        name: Some(ResourceName {
            r#type: kind as i32,
            name: name.into(),
        }),
        version: 1,
        kind: Some(k),
    }
}

/// Pod `uid-api` at 127.0.0.1 with `policies`, behind Service `shop/api`
/// whose port 80 (`name`, `app_protocol`) targets `app_port`.
fn config(
    policies: Vec<AuthorizationPolicy>,
    app_port: u16,
    name: &str,
    app_protocol: &str,
) -> Arc<NodeConfig> {
    config_with_upgrades(policies, app_port, name, app_protocol, None)
}

/// [`config`], the Service setting its upgrade allow-list.
fn config_with_upgrades(
    policies: Vec<AuthorizationPolicy>,
    app_port: u16,
    name: &str,
    app_protocol: &str,
    upgrades: Option<pb::UpgradePolicy>,
) -> Arc<NodeConfig> {
    let names = policies
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    let mut resources = vec![
        res(
            ResourceType::Workload,
            "uid-api",
            Kind::Workload(pb::Workload {
                uid: "uid-api".into(),
                namespace: "shop".into(),
                name: "api".into(),
                ips: vec!["127.0.0.1".into()],
                enrolled: true,
                authorization_policies: names,
                ..Default::default()
            }),
        ),
        res(
            ResourceType::Service,
            "shop/api",
            Kind::Service(pb::Service {
                namespace: "shop".into(),
                name: "api".into(),
                vips: vec!["10.96.0.10".into()],
                ports: vec![pb::ServicePort {
                    name: name.into(),
                    port: 80,
                    app_protocol: app_protocol.into(),
                    ..Default::default()
                }],
                endpoints: vec![pb::Endpoint {
                    workload_uid: "uid-api".into(),
                    addresses: vec!["127.0.0.1".into()],
                    ports: HashMap::from([(80, u32::from(app_port))]),
                    ready: true,
                    node: String::new(),
                }],
                upgrades,
            }),
        ),
    ];
    for p in policies {
        let name = format!("{}/{}", p.namespace, p.name);
        resources.push(res(
            ResourceType::AuthorizationPolicy,
            &name,
            Kind::AuthorizationPolicy(p),
        ));
    }
    Arc::new(
        NodeConfig::from_snapshot(Snapshot {
            version: 1,
            resources,
        })
        .expect("config"),
    )
}

/// Allows GET and HEAD under /api (and /grpc, /ws) from shop/web only.
fn allow_web_reads() -> AuthorizationPolicy {
    AuthorizationPolicy {
        namespace: "shop".into(),
        name: "allow-reads".into(),
        action: AuthorizationAction::Allow as i32,
        mode: 0,
        rules: vec![AuthorizationRule {
            from: vec![Source {
                namespace: "shop".into(),
                service_account: "web".into(),
                ..Default::default()
            }],
            to: Some(Destination {
                ports: vec![],
                methods: vec!["GET".into(), "HEAD".into()],
                paths: ["/api", "/grpc", "/ws"]
                    .into_iter()
                    .map(|p| PathMatch {
                        kind: Some(path_match::Kind::Prefix(p.into())),
                    })
                    .collect(),
            }),
        }],
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://cluster.local/ns/shop/sa/{sa}")).expect("id")
}

fn inbound(config: Arc<NodeConfig>) -> (Arc<PodInbound>, watch::Sender<Arc<NodeConfig>>) {
    let (tx, rx) = watch::channel(config);
    let inbound = PodInbound::new(
        "uid-api",
        vec!["127.0.0.1".parse().expect("ip")],
        NetnsHandle::current().expect("netns"),
        rx,
    );
    (Arc::new(inbound), tx)
}

/// Opens an HBONE stream from `peer` to `target` through `serve_connection`
/// (h2 over an in-memory pipe): the CONNECT status, and the stream if `200`.
async fn hbone(
    handler: Arc<PodInbound>,
    peer: SpiffeId,
    target: SocketAddr,
) -> (StatusCode, Option<H2Stream>) {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let peer_addr: SocketAddr = "10.244.1.5:40000".parse().expect("addr");
    tokio::spawn(serve_connection(
        server_io,
        peer,
        peer_addr,
        handler,
        ServerConfig::default(),
    ));
    let (client, conn) = h2::client::handshake(client_io)
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");
    let req = Request::builder()
        .method(http::Method::CONNECT)
        .uri(target.to_string())
        .body(())
        .expect("request");
    let (resp, send) = client.send_request(req, false).expect("CONNECT sent");
    let resp = resp.await.expect("CONNECT answered");
    let status = resp.status();
    let stream = (status == StatusCode::OK).then(|| H2Stream::new(send, resp.into_body()));
    (status, stream)
}

async fn http1_client<IO: Io>(io: IO) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("http1 handshake");
    tokio::spawn(conn.with_upgrades());
    sender
}

async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
) -> (StatusCode, String) {
    send_body(sender, method, path, b"").await
}

async fn send_body(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: &'static [u8],
) -> (StatusCode, String) {
    sender.ready().await.expect("connection ready");
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "api.shop")
        .body(Full::new(Bytes::from_static(body)))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http_port_requests_are_authorized_one_by_one_on_a_kept_alive_stream() {
    let (app, accepted) = app().await;
    let (handler, _tx) = inbound(config(vec![allow_web_reads()], app.port(), "http-api", ""));
    let (status, stream) = hbone(handler.clone(), id("web"), app).await;
    assert_eq!(status, StatusCode::OK, "an HTTP port admits the stream");
    let mut client = http1_client(stream.expect("stream")).await;

    // Plain requests first: read and answered by the stream's task, and
    // exchanged with the app by it (no body).
    assert_eq!(
        send(&mut client, "GET", "/api/x").await,
        (StatusCode::OK, "GET /api/x".into()),
        "allowed: the app answers"
    );
    let (status, _) = send(&mut client, "GET", "/admin").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "path outside the allow-list");
    let (status, _) = send(&mut client, "GET", "/api/../admin").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "dot segments do not escape /api"
    );
    assert_eq!(
        send(&mut client, "GET", "/api/%2e/y").await,
        (StatusCode::OK, "GET /api/y".into()),
        "forwarded as normalized and authorized"
    );
    // Requests without a body share the app connection; the first with one
    // hands the stream to hyper's server and the app connection to hyper's
    // client, which takes the idle connection over.
    for (body, path) in [
        (&b""[..], "/api/a"),
        (b"", "/api/b"),
        (b"x", "/api/c"),
        (b"", "/api/d"),
    ] {
        assert_eq!(
            send_body(&mut client, "GET", path, body).await,
            (StatusCode::OK, format!("GET {path}")),
        );
    }
    let (status, body) = send_body(&mut client, "POST", "/api/x", b"payload").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "method not allowed: {body}");
    assert_eq!(body, "RBAC: access denied\n", "the body names no policy");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection, reused by the stream's requests"
    );
    // The app closes its connection after an answer: the next request
    // opens another one.
    for (body, path, connections) in [(&b""[..], "/api/last", 1), (b"", "/api/e", 2)] {
        assert_eq!(
            send_body(&mut client, "GET", path, body).await,
            (StatusCode::OK, format!("GET {path}")),
        );
        assert_eq!(accepted.load(Ordering::SeqCst), connections, "after {path}");
    }
    let stats = handler.stats();
    assert_eq!(stats.requests_allowed.load(Ordering::Relaxed), 8);
    assert_eq!(stats.requests_denied.load(Ordering::Relaxed), 3);

    // Another identity: the L4 part of the rule does not match.
    let (_, stream) = hbone(handler.clone(), id("ops"), app).await;
    let mut client = http1_client(stream.expect("stream")).await;
    let (status, body) = send(&mut client, "GET", "/api/x").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[tokio::test]
async fn h2c_requests_keep_grpc_trailers_and_get_grpc_denials() {
    let (app, accepted) = app().await;
    let (handler, _tx) = inbound(config(vec![allow_web_reads()], app.port(), "grpc", ""));
    let (_, stream) = hbone(handler, id("web"), app).await;
    let (mut client, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(stream.expect("stream")),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    let req = |method: &str, path: &str, grpc: bool| {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://api.shop{path}"))
            .version(http::Version::HTTP_2);
        if grpc {
            b = b.header("content-type", "application/grpc");
        }
        b.body(Empty::<Bytes>::new()).expect("request")
    };
    let resp = client
        .send_request(req("GET", "/grpc", true))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers forwarded");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"GET /grpc"));

    let denied = client
        .send_request(req("POST", "/grpc", true))
        .await
        .expect("response");
    assert_eq!(
        denied.status(),
        StatusCode::OK,
        "gRPC denials are trailers-only"
    );
    assert_eq!(
        denied.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"7"[..]),
        "PERMISSION_DENIED"
    );
    let plain = client
        .send_request(req("DELETE", "/api/x", false))
        .await
        .expect("response");
    assert_eq!(plain.status(), StatusCode::FORBIDDEN);
    // Concurrent requests share the stream's one HTTP/2 upstream connection.
    let (a, b) = tokio::join!(
        client.clone().send_request(req("GET", "/api/a", false)),
        client.send_request(req("GET", "/api/b", false)),
    );
    assert_eq!(a.expect("a").status(), StatusCode::OK);
    assert_eq!(b.expect("b").status(), StatusCode::OK);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn upgrades_pass_through_once_authorized() {
    let (app, _) = app().await;
    let (handler, _tx) = inbound(config(vec![allow_web_reads()], app.port(), "http", ""));
    let upgrade = || {
        Request::builder()
            .uri("/ws")
            .header("host", "api.shop")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    // Not on the allow-list: refused before anything reaches the app.
    let (_, stream) = hbone(handler.clone(), id("ops"), app).await;
    let mut denied = http1_client(stream.expect("stream")).await;
    let resp = denied.send_request(upgrade()).await.expect("response");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    let (_, stream) = hbone(handler, id("web"), app).await;
    let mut client = http1_client(stream.expect("stream")).await;
    let resp = client.send_request(upgrade()).await.expect("response");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.expect("upgraded"));
    io.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    io.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"ping");
}

/// An app that accepts `Upgrade: h2c` (as Tomcat and Spring Boot do): it
/// answers `101` and takes whatever follows as HTTP/2; a request without
/// the upgrade is answered `200` with whether any upgrade field reached it.
async fn h2c_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 1024];
                    let n = match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    buf.drain(..end + 4);
                    if head.contains("\r\nupgrade: h2c") {
                        let _ = tcp
                            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n")
                            .await;
                        return;
                    }
                    let seen = ["upgrade:", "http2-settings:"]
                        .iter()
                        .any(|f| head.contains(&format!("\r\n{f}")));
                    let body = format!("upgrade fields reached the app: {seen}");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if tcp.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `GET /api/x` asking to upgrade to h2c (as curl --http2 does).
fn h2c_upgrade() -> Request<Full<Bytes>> {
    Request::builder()
        .uri("/api/x")
        .header("host", "api.shop")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// `h2c` is not on the upgrade allow-list: the app gets the request without
/// its upgrade fields, answers it as plain HTTP/1.1, and every later request
/// on the connection is still judged (the denied path stays denied).
#[tokio::test]
async fn an_h2c_upgrade_is_served_as_plain_http_and_nothing_escapes_authorization() {
    let app = h2c_app().await;
    let (handler, _tx) = inbound(config(vec![allow_web_reads()], app.port(), "http", ""));
    let (_, stream) = hbone(handler, id("web"), app).await;
    let mut client = http1_client(stream.expect("stream")).await;
    let resp = client.send_request(h2c_upgrade()).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK, "no switch to h2c");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, "upgrade fields reached the app: false");
    let (status, _) = send(&mut client, "POST", "/api/x").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the next request is judged");
    assert!(
        !upgrade_allowed_for(&["h2c"]),
        "h2c is not allowed by default"
    );
    assert!(upgrade_allowed_for(&["websocket"]));
    assert!(upgrade_allowed_for(&["WebSocket/13"]));
    assert!(!upgrade_allowed_for(&["websocket, h2c"]));
    assert!(!upgrade_allowed_for(&[]));
}

/// A Service's allow-list (`hawser.dev/allowed-upgrades`) replaces the
/// node's for its ports: one that names `h2c` lets the upgrade through, one
/// that names nothing refuses WebSocket too.
#[tokio::test]
async fn a_services_upgrade_allow_list_replaces_the_nodes() {
    let app = h2c_app().await;
    let allow_h2c = Some(pb::UpgradePolicy {
        protocols: vec!["h2c".into()],
    });
    let (handler, _tx) = inbound(config_with_upgrades(
        vec![allow_web_reads()],
        app.port(),
        "http",
        "",
        allow_h2c,
    ));
    let (_, stream) = hbone(handler, id("web"), app).await;
    let mut client = http1_client(stream.expect("stream")).await;
    let resp = client.send_request(h2c_upgrade()).await.expect("response");
    assert_eq!(
        resp.status(),
        StatusCode::SWITCHING_PROTOCOLS,
        "h2c is on this Service's list"
    );

    let none = Some(pb::UpgradePolicy { protocols: vec![] });
    let (handler, _tx) = inbound(config_with_upgrades(
        vec![allow_web_reads()],
        app.port(),
        "http",
        "",
        none,
    ));
    let (_, stream) = hbone(handler, id("web"), app).await;
    let mut client = http1_client(stream.expect("stream")).await;
    let ws = Request::builder()
        .uri("/api/ws")
        .header("host", "api.shop")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = client.send_request(ws).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK, "served as plain HTTP/1.1");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, "upgrade fields reached the app: false");
}

fn upgrade_allowed_for(values: &[&str]) -> bool {
    let mut headers = http::HeaderMap::new();
    for v in values {
        headers.append("upgrade", http::HeaderValue::from_str(v).expect("value"));
    }
    crate::http::upgrade_allowed(&headers, &crate::http::default_allowed_upgrades())
}

#[tokio::test]
async fn plaintext_on_an_http_port_gets_403_not_a_reset() {
    let (app, _) = app().await;
    let (handler, _tx) = inbound(config(vec![allow_web_reads()], app.port(), "", "http"));
    let outside: SocketAddr = "10.244.1.7:5000".parse().expect("addr");
    let Ok(Admitted::Serve(service)) = handler.admit_plaintext(outside, app).await else {
        panic!("an HTTP port is served as HTTP");
    };
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(service.serve(Box::new(server_io)));
    let mut client = http1_client(client_io).await;
    let (status, body) = send(&mut client, "GET", "/api/x").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no identity: {body}");
    assert_eq!(body, "RBAC: access denied\n");
}

#[tokio::test]
async fn l7_rules_on_a_tcp_port_fail_closed() {
    let (app, _) = app().await;
    // The port is named "tcp-api": bytes are relayed, the request is unknown.
    let (handler, tx) = inbound(config(vec![allow_web_reads()], app.port(), "tcp-api", ""));
    let (status, _) = hbone(handler.clone(), id("web"), app).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an Allow with methods does not admit it"
    );
    assert_eq!(handler.stats().denied.load(Ordering::Relaxed), 1);

    let mut deny_admin = allow_web_reads();
    deny_admin.name = "deny-admin".into();
    deny_admin.action = AuthorizationAction::Deny as i32;
    tx.send_replace(config(vec![deny_admin], app.port(), "tcp-api", ""));
    let (status, _) = hbone(handler.clone(), id("web"), app).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a Deny with paths denies it");
    let (status, _) = hbone(handler, id("ops"), app).await;
    assert_eq!(status, StatusCode::OK, "unless its sources do not match");
}

#[tokio::test]
async fn an_http_port_no_policy_looks_into_is_relayed_until_one_does() {
    let (app, _) = app().await;
    // Allows shop/web at L4 only: no rule names methods or paths.
    let mut allow_web = allow_web_reads();
    allow_web.name = "allow-web".into();
    allow_web.rules[0].to = None;
    let (handler, tx) = inbound(config(vec![allow_web.clone()], app.port(), "http-api", ""));
    assert!(handler.is_http_port(app.port()));
    assert!(!handler.serves_requests(app.port()));
    let (status, stream) = hbone(handler.clone(), id("web"), app).await;
    assert_eq!(status, StatusCode::OK);
    let mut relayed = http1_client(stream.expect("stream")).await;
    assert_eq!(
        send(&mut relayed, "POST", "/admin").await,
        (StatusCode::OK, "POST /admin".into()),
        "relayed: the app answers"
    );
    let stats = handler.stats();
    assert_eq!(
        stats.requests_allowed.load(Ordering::Relaxed),
        0,
        "not parsed"
    );
    // A denied peer is still answered per request, with the policy's 403.
    let (status, stream) = hbone(handler.clone(), id("ops"), app).await;
    assert_eq!(status, StatusCode::OK);
    let mut denied = http1_client(stream.expect("stream")).await;
    let (status, body) = send(&mut denied, "GET", "/x").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(stats.requests_denied.load(Ordering::Relaxed), 1);

    // A Deny on POST for shop/web: the relayed stream could carry a denied
    // request, so it is closed; new streams are served request by request.
    let mut deny_posts = allow_web_reads();
    deny_posts.name = "deny-posts".into();
    deny_posts.action = AuthorizationAction::Deny as i32;
    deny_posts.rules[0].to = Some(Destination {
        ports: vec![],
        methods: vec!["POST".into()],
        paths: vec![],
    });
    tx.send_replace(config(
        vec![allow_web, deny_posts],
        app.port(),
        "http-api",
        "",
    ));
    assert!(handler.serves_requests(app.port()));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while !relayed.is_closed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relayed stream stayed open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (status, stream) = hbone(handler.clone(), id("web"), app).await;
    assert_eq!(status, StatusCode::OK);
    let mut client = http1_client(stream.expect("stream")).await;
    assert_eq!(send(&mut client, "GET", "/x").await.0, StatusCode::OK);
    assert_eq!(
        send(&mut client, "POST", "/x").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(stats.requests_allowed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.requests_denied.load(Ordering::Relaxed), 2);
}

/// A raw HTTP/1.1 app: reads request heads (no bodies), records each, and
/// answers with the bytes `answer` gives for its path, closing after an
/// answer with `Connection: close`. Counts its connections.
async fn raw_app(
    answer: fn(&str) -> &'static str,
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    Arc<std::sync::Mutex<Vec<String>>>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = l.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (count, log) = (accepted.clone(), heads.clone());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let log = log.clone();
            tokio::spawn(async move {
                while let Some(head) = read_head(&mut tcp).await {
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    log.lock().expect("log").push(head);
                    let reply = answer(&path);
                    if tcp.write_all(reply.as_bytes()).await.is_err()
                        || reply.contains("Connection: close")
                    {
                        break;
                    }
                }
            });
        }
    });
    (addr, accepted, heads)
}

/// Reads up to the end of a head, byte by byte (nothing after it is taken).
async fn read_head<IO: tokio::io::AsyncRead + Unpin>(io: &mut IO) -> Option<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        if io.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8(head).expect("ASCII head"))
}

/// Reads one whole response (not to a HEAD): its head, then its body by
/// `Content-Length` or up to the last chunk.
async fn read_response<IO: tokio::io::AsyncRead + Unpin>(io: &mut IO) -> String {
    let mut resp = read_head(io).await.expect("a response head");
    let lower = resp.to_ascii_lowercase();
    if let Some(length) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
    {
        let mut body = vec![0u8; length.trim().parse().expect("length")];
        io.read_exact(&mut body).await.expect("body");
        resp.push_str(std::str::from_utf8(&body).expect("text body"));
    } else if lower.contains("transfer-encoding: chunked") {
        let mut body = Vec::new();
        while !body.ends_with(b"0\r\n\r\n") {
            let mut byte = [0u8];
            assert_eq!(
                io.read(&mut byte).await.expect("body"),
                1,
                "chunked body cut"
            );
            body.push(byte[0]);
        }
        resp.push_str(std::str::from_utf8(&body).expect("text body"));
    }
    resp
}

/// Writes `req` on `stream` and reads the answer (only its head when
/// `bodiless`: a HEAD's, a 304's); fails after 5 s without one.
async fn exchange_raw<IO: Io>(stream: &mut IO, req: &str, bodiless: bool) -> String {
    stream.write_all(req.as_bytes()).await.expect("write");
    let answer = async {
        if bodiless {
            read_head(stream).await.expect("a response head")
        } else {
            read_response(stream).await
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), answer)
        .await
        .unwrap_or_else(|_| panic!("no answer to {req:?}"))
}

const PLAIN_ANSWER: &str = "HTTP/1.1 200 OK\r\nX-Odd-Case: yes\r\nContent-Length: 5\r\n\r\nhello";

#[tokio::test]
async fn plain_requests_and_their_answers_pass_through_unchanged() {
    let (app, accepted, heads) = raw_app(|path| match path {
        "/api/chunked" => {
            "HTTP/1.1 200 OK\r\nX-Odd-Case: yes\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        }
        "/api/spoof" => "HTTP/1.1 502 Bad Gateway\r\nhawser-upstream-error: reset\r\nContent-Length: 0\r\n\r\n",
        "/api/head" => "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",
        "/api/cached" => "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 12\r\n\r\n",
        "/api/bye" => "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye",
        _ => PLAIN_ANSWER,
    })
    .await;
    let (handler, _tx) = inbound(config(vec![allow_web_reads()], app.port(), "http-api", ""));
    let (_, stream) = hbone(handler.clone(), id("web"), app).await;
    let mut stream = stream.expect("stream");

    // Both ways as written: the field names' case, their order, a field
    // no proxy knows, `Connection: keep-alive`.
    let plain = "GET /api/plain?q=1 HTTP/1.1\r\nHost: api.shop\r\nX-Trace-ID: a1\r\nConnection: keep-alive\r\n\r\n";
    assert_eq!(exchange_raw(&mut stream, plain, false).await, PLAIN_ANSWER);
    // Denied in between: answered here, the app sees nothing.
    let denied = exchange_raw(
        &mut stream,
        "GET /admin HTTP/1.1\r\nHost: api.shop\r\n\r\n",
        false,
    )
    .await;
    assert!(denied.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{denied}");
    // The body says no more than Envoy's would: the policy is in the log.
    assert!(
        denied.ends_with("\r\n\r\nRBAC: access denied\n"),
        "{denied}"
    );
    assert!(!denied.contains("shop/allow-reads"), "{denied}");
    // A chunked answer is parsed and framed again (its request went as it
    // came).
    let chunked = "GET /api/chunked HTTP/1.1\r\nHost: api.shop\r\n\r\n";
    let got = exchange_raw(&mut stream, chunked, false).await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("x-odd-case: yes\r\n"), "parsed: {got}");
    assert!(got.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{got}");
    // The field only a node proxy's own answers carry never comes from the
    // app: that answer is parsed, and the field removed.
    let spoof = "GET /api/spoof HTTP/1.1\r\nHost: api.shop\r\n\r\n";
    let got = exchange_raw(&mut stream, spoof, false).await;
    assert!(got.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{got}");
    assert!(!got.contains("hawser-upstream-error"), "{got}");
    // A 304 has no body, whatever its length says.
    let cached = "GET /api/cached HTTP/1.1\r\nHost: api.shop\r\nIf-None-Match: \"v1\"\r\n\r\n";
    let got = exchange_raw(&mut stream, cached, true).await;
    assert_eq!(
        got,
        "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 12\r\n\r\n"
    );
    // A HEAD's answer: its length is the GET's, no body follows.
    let head = "HEAD /api/head HTTP/1.1\r\nHost: api.shop\r\n\r\n";
    let got = exchange_raw(&mut stream, head, true).await;
    assert_eq!(got, "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
    // The app closes its connection after this answer: passed on as it
    // came, `Connection: close` and all, and the stream closes after it.
    let bye = "GET /api/bye HTTP/1.1\r\nHost: api.shop\r\n\r\n";
    let got = exchange_raw(&mut stream, bye, false).await;
    assert_eq!(
        got,
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye"
    );
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("the close");
    assert!(rest.is_empty(), "nothing after the last answer");

    // Not plain here (it asks to close): built, its hop-by-hop fields
    // removed, the answer parsed; the stream closes after it.
    let (_, stream) = hbone(handler.clone(), id("web"), app).await;
    let mut stream = stream.expect("stream");
    let last = "GET /api/plain HTTP/1.1\r\nHost: api.shop\r\nConnection: close\r\n\r\n";
    stream.write_all(last.as_bytes()).await.expect("write");
    let got = read_response(&mut stream).await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(
        got.contains("x-odd-case: yes\r\n") && got.contains("connection: close\r\n"),
        "{got}"
    );
    assert!(got.ends_with("\r\n\r\nhello"), "{got}");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("the close");
    assert!(rest.is_empty(), "nothing after the last answer");

    let heads = heads.lock().expect("log").clone();
    assert_eq!(heads.len(), 7, "{heads:?}");
    assert_eq!(
        heads[..6],
        [plain, chunked, spoof, cached, head, bye],
        "as they came"
    );
    assert!(
        heads[6].starts_with("GET /api/plain HTTP/1.1\r\n") && !heads[6].contains("onnection"),
        "built: {:?}",
        heads[6]
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "one app connection per stream"
    );
    let stats = handler.stats();
    assert_eq!(stats.requests_allowed.load(Ordering::Relaxed), 7);
    assert_eq!(stats.requests_denied.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn only_requests_every_parser_reads_alike_pass_on_as_they_came() {
    let (app, accepted, heads) = raw_app(|path| match path {
        // Bytes after the body nobody asked for: that connection is not
        // used again.
        "/api/extra" => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK",
        _ => PLAIN_ANSWER,
    })
    .await;
    let (handler, _tx) = inbound(config(vec![allow_web_reads()], app.port(), "http-api", ""));
    let (_, stream) = hbone(handler.clone(), id("web"), app).await;
    let mut stream = stream.expect("stream");
    let built = |got: &str| got.contains("x-odd-case: yes\r\n") && got.ends_with("hello");

    // A fragment: authorized as `http` reads the target (without it), so
    // the app gets the target without it too, not the bytes as they came.
    let got = exchange_raw(
        &mut stream,
        "GET /api/x#/../../admin HTTP/1.1\r\nHost: api.shop\r\n\r\n",
        false,
    )
    .await;
    assert!(built(&got), "{got}");
    // Bare LF line ends (httparse takes them, not every app does): built.
    let got = exchange_raw(
        &mut stream,
        "GET /api/lf HTTP/1.1\nHost: api.shop\n\n",
        false,
    )
    .await;
    assert!(built(&got), "{got}");
    // Hop-by-hop fields are this hop's: built, and removed.
    let hop_by_hop = "GET /api/ka HTTP/1.1\r\nHost: api.shop\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\n\r\n";
    let got = exchange_raw(&mut stream, hop_by_hop, false).await;
    assert!(built(&got), "{got}");
    // Two requests in one write, the first passed on, the second denied:
    // answered in order.
    let two = "GET /api/one HTTP/1.1\r\nHost: api.shop\r\n\r\nGET /admin HTTP/1.1\r\nHost: api.shop\r\n\r\n";
    let got = exchange_raw(&mut stream, two, false).await;
    assert_eq!(got, PLAIN_ANSWER, "the first answer first");
    let got = read_response(&mut stream).await;
    assert!(got.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{got}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "so far one app connection"
    );
    // Extra bytes after an answer's body never reach the client, and that
    // app connection is not reused.
    let got = exchange_raw(
        &mut stream,
        "GET /api/extra HTTP/1.1\r\nHost: api.shop\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(got, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let got = exchange_raw(
        &mut stream,
        "GET /api/after HTTP/1.1\r\nHost: api.shop\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(got, PLAIN_ANSWER);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new app connection");

    let heads = heads.lock().expect("log").clone();
    let expected = [
        "GET /api/x HTTP/1.1\r\nhost: api.shop\r\n\r\n",
        "GET /api/lf HTTP/1.1\r\nhost: api.shop\r\n\r\n",
        "GET /api/ka HTTP/1.1\r\nhost: api.shop\r\n\r\n",
        "GET /api/one HTTP/1.1\r\nHost: api.shop\r\n\r\n",
        "GET /api/extra HTTP/1.1\r\nHost: api.shop\r\n\r\n",
        "GET /api/after HTTP/1.1\r\nHost: api.shop\r\n\r\n",
    ];
    assert_eq!(heads, expected);
}

#[tokio::test]
async fn a_stream_idle_for_the_pods_idle_timeout_is_closed() {
    let (app, _) = app().await;
    let (tx, rx) = watch::channel(config(vec![allow_web_reads()], app.port(), "", "http"));
    // Long enough against a loaded machine's late wake-ups.
    let idle = std::time::Duration::from_secs(1);
    let handler = Arc::new(
        PodInbound::new(
            "uid-api",
            vec!["127.0.0.1".parse().expect("ip")],
            NetnsHandle::current().expect("netns"),
            rx,
        )
        .with_idle_timeout(idle),
    );
    let (status, stream) = hbone(handler, id("web"), app).await;
    assert_eq!(status, StatusCode::OK);
    let mut stream = stream.expect("stream");
    let req = "GET /api/x HTTP/1.1\r\nHost: api.shop\r\n\r\n";
    // Requests less than the timeout apart keep it open.
    let mut last = tokio::time::Instant::now();
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(idle / 4).await;
        }
        let answer = exchange_raw(&mut stream, req, false).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        last = tokio::time::Instant::now();
    }
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(idle * 10, stream.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "still open {:?} after the last answer",
        idle * 10
    );
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    // Closed once the timeout had run from the last answer (written just
    // before it was read here), not at the first chance.
    assert!(
        last.elapsed() >= idle * 3 / 4,
        "closed {:?} after the last answer",
        last.elapsed()
    );
    drop(tx);
}

/// A Deny on `/admin` (prefix) against what apps route as `/admin`: each
/// spelling is judged after normalization, refused (`400`) where it cannot
/// be judged safely, and what is allowed reaches the app with the path that
/// was judged. The columns are the modes, with Istio's names.
#[tokio::test]
async fn spellings_of_a_denied_path_stay_denied() {
    use crate::authz::{EscapedSlashes, PathNormalization};
    let (app, _, heads) = raw_app(|_| PLAIN_ANSWER).await;
    let mut deny_admin = allow_web_reads();
    deny_admin.name = "deny-admin".into();
    deny_admin.action = AuthorizationAction::Deny as i32;
    deny_admin.rules[0].from.clear();
    deny_admin.rules[0].to = Some(Destination {
        ports: vec![],
        methods: vec![],
        paths: vec![PathMatch {
            kind: Some(path_match::Kind::Prefix("/admin".into())),
        }],
    });
    let base = PathNormalization::default();
    let modes = [
        ("BASE", base),
        (
            "MERGE_SLASHES",
            PathNormalization {
                merge_slashes: true,
                ..base
            },
        ),
        (
            "BASE, escaped slashes refused",
            PathNormalization {
                escaped_slashes: EscapedSlashes::Reject,
                ..base
            },
        ),
        (
            "DECODE_AND_MERGE_SLASHES",
            PathNormalization {
                merge_slashes: true,
                escaped_slashes: EscapedSlashes::DecodeAndMerge,
            },
        ),
    ];
    // (target, status per mode, what the app sees when allowed)
    let cases: &[(&str, [u16; 4], &str)] = &[
        ("/admin", [403, 403, 403, 403], ""),
        ("/admin/x", [403, 403, 403, 403], ""),
        ("/api/../admin", [403, 403, 403, 403], ""),
        ("/api/%2e%2e/admin", [403, 403, 403, 403], ""),
        ("/%61dmin", [403, 403, 403, 403], ""),
        ("/admin;x", [403, 403, 403, 403], ""),
        ("/api/..;/admin", [400, 400, 400, 400], ""),
        ("/admin%00", [400, 400, 400, 400], ""),
        ("//admin", [200, 403, 200, 403], "//admin"),
        ("/admin%2Fx", [200, 200, 400, 403], "/admin%2Fx"),
        ("/ADMIN", [200, 200, 200, 200], "/ADMIN"),
        // A fragment is not part of a request target: dropped, and the app
        // gets the path that was judged.
        ("/api/x#frag", [200, 200, 200, 200], "/api/x"),
        ("/admin#frag", [403, 403, 403, 403], ""),
        ("/api/x", [200, 200, 200, 200], "/api/x"),
    ];
    for (i, (mode, how)) in modes.iter().enumerate() {
        let (handler, _tx) = inbound(config(vec![deny_admin.clone()], app.port(), "http", ""));
        let handler = Arc::new(
            Arc::into_inner(handler)
                .expect("one handle")
                .with_path_normalization(*how),
        );
        for (target, statuses, seen) in cases {
            heads.lock().expect("heads").clear();
            let (_, stream) = hbone(handler.clone(), id("web"), app).await;
            let mut stream = stream.expect("stream");
            let answer = exchange_raw(
                &mut stream,
                &format!("GET {target} HTTP/1.1\r\nHost: api.shop\r\n\r\n"),
                true,
            )
            .await;
            let status: u16 = answer
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            assert_eq!(status, statuses[i], "{target} under {mode}: {answer}");
            let forwarded: Vec<String> = heads
                .lock()
                .expect("heads")
                .iter()
                .map(|h| h.split(' ').nth(1).unwrap_or("").to_owned())
                .collect();
            if status == 200 {
                assert_eq!(forwarded, [*seen], "{target} under {mode}");
            } else {
                assert!(forwarded.is_empty(), "{target} under {mode}: {forwarded:?}");
            }
        }
    }
}
