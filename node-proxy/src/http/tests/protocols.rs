//! End to end: gRPC (GRPCRoute matching, HTTP/2 upstream, trailers) and
//! HTTP upgrades.

use bytes::Bytes;
use hawser_api::proto::discovery as pb;
use http::HeaderMap;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::support::*;

fn grpc_request(path: &str, headers: &[(&str, &str)]) -> http::Request<Full<Bytes>> {
    let mut req = request("POST", path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    req.body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap()
}

#[tokio::test]
async fn grpc_routes_match_and_trailers_pass_through() {
    let trailer_backend = |name: &'static str| {
        Backend::start(name, |_| {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("x-trailer", "kept".parse().unwrap());
            Reply {
                trailers: Some(trailers),
                ..Reply::ok().header("content-type", "application/grpc")
            }
        })
    };
    let (v1, v2) = (
        trailer_backend("echo-v1").await,
        trailer_backend("echo-v2").await,
    );
    let mut mesh = Mesh::default();
    mesh.service(
        "echo",
        "10.96.0.1",
        7070,
        "grpc",
        "kubernetes.io/h2c",
        &[&v1],
    );
    mesh.service("echo-v1", "10.96.0.2", 7070, "grpc", "", &[&v1]);
    mesh.service("echo-v2", "10.96.0.3", 7070, "grpc", "", &[&v2]);
    let entry = |rule: u32, method: &str, header: Option<(&str, &str)>| pb::MatchEntry {
        rule,
        kind: Some(pb::match_entry::Kind::Grpc(pb::GrpcMatch {
            service: "echo.Echo".into(),
            method: method.into(),
            headers: header
                .map(|(n, v)| pb::HeaderMatch {
                    name: n.into(),
                    value: v.into(),
                })
                .into_iter()
                .collect(),
        })),
    };
    let mut t = table(
        vec![
            filtered(
                rule(vec![to("echo-v1", 7070, 1)]),
                vec![pb::filter::Kind::RequestHeaderModifier(header_mod(
                    &[("x-header-set", "set-overwrites-values")],
                    &[("x-header-add", "add-appends-values")],
                    &["x-header-remove"],
                ))],
            ),
            rule(vec![to("echo-v2", 7070, 1)]),
        ],
        vec![
            entry(1, "", Some(("x-test-case", "multi"))),
            entry(0, "Echo", None),
        ],
    );
    t.kind = pb::RouteKind::Grpc as i32;
    mesh.routes("echo", 7070, Some(t), vec![]);
    let h = Harness::new(&mesh);
    let mut client = h.h2(NS, "10.96.0.1:7070").await;

    let answer = client
        .send(grpc_request(
            "/echo.Echo/Echo",
            &[
                ("x-header-set", "this-value-should-be-overwritten"),
                ("x-header-add", "this-value-should-be-appended"),
                ("x-header-remove", "this-should-be-removed"),
            ],
        ))
        .await;
    assert_eq!((answer.status, answer.backend()), (200, "echo-v1"));
    let trailers = answer.trailers.expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("x-trailer").unwrap(), "kept");
    let seen = v1.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(
        seen.header("x-header-set").as_deref(),
        Some("set-overwrites-values")
    );
    assert_eq!(
        seen.header("x-header-add").as_deref(),
        Some("this-value-should-be-appended,add-appends-values")
    );
    assert_eq!(seen.header("x-header-remove"), None);
    assert_eq!(seen.header("te").as_deref(), Some("trailers"));

    let answer = client
        .send(grpc_request(
            "/echo.Echo/Other",
            &[("x-test-case", "multi")],
        ))
        .await;
    assert_eq!(answer.backend(), "echo-v2");

    let answer = client.send(grpc_request("/echo.Echo/Other", &[])).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("grpc-status"), Some("12"));
}

#[tokio::test]
async fn http2_clients_reach_http1_backends() {
    let backend = Backend::ok("echo").await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&backend]);
    let h = Harness::new(&mesh);
    let answer = h.h2(NS, "10.96.0.1:80").await.get("/h2?x=y").await;
    assert_eq!((answer.status, answer.backend()), (200, "echo"));
    let seen = backend.last();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.path, "/h2?x=y");
    assert_eq!(seen.header("host").as_deref(), Some("echo"));
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let backend = Backend::ok("ws").await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&backend]);
    mesh.routes("echo", 80, Some(all_to("echo", 80)), vec![]);
    let h = Harness::new(&mesh);
    let Client::H1(mut sender) = h.h1(NS, "10.96.0.1:80").await else {
        unreachable!("h1 client")
    };
    let req = request("GET", "/chat")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    let upgraded = hyper::upgrade::on(resp).await.expect("client upgrade");
    let mut io = TokioIo::new(upgraded);
    io.write_all(b"ping over the mesh").await.unwrap();
    let mut buf = [0u8; 18];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping over the mesh");
    assert_eq!(
        backend.last().header("upgrade").as_deref(),
        Some("websocket")
    );
    assert_eq!(h.outbound.metrics().upgrades, 1);
}

/// `h2c` is not on the default allow-list: the request reaches the backend
/// without its upgrade fields and is answered as plain HTTP/1.1.
#[tokio::test]
async fn an_h2c_upgrade_goes_out_as_plain_http() {
    let backend = Backend::ok("h2c").await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&backend]);
    mesh.routes("echo", 80, Some(all_to("echo", 80)), vec![]);
    let h = Harness::new(&mesh);
    let Client::H1(mut sender) = h.h1(NS, "10.96.0.1:80").await else {
        unreachable!("h1 client")
    };
    let req = request("GET", "/x")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let last = backend.last();
    assert_eq!(last.header("upgrade"), None);
    assert_eq!(last.header("http2-settings"), None);
    assert_eq!(h.outbound.metrics().upgrades, 0);
}
