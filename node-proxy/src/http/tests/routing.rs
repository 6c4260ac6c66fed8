//! End to end: routes applied per request (no route, matches, weights,
//! consumer routes, filters, redirects, rewrites, mirrors, errors).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hawser_api::proto::discovery as pb;
use http_body_util::Full;

use super::support::*;

const VIP: &str = "10.96.0.1:80";

#[tokio::test]
async fn without_routes_requests_go_to_the_service_endpoints_per_request() {
    let (a, b) = (Backend::ok("echo-a").await, Backend::ok("echo-b").await);
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&a, &b]);
    let h = Harness::new(&mesh);
    let mut client = h.h1(NS, VIP).await;
    for _ in 0..40 {
        let answer = client.get("/anything?x=1").await;
        assert_eq!(answer.status, 200);
    }
    // One kept-alive client connection, spread over both endpoints.
    assert!(
        a.hits() >= 5 && b.hits() >= 5,
        "{} / {}",
        a.hits(),
        b.hits()
    );
    assert_eq!(a.hits() + b.hits(), 40);
    assert_eq!(a.seen()[0].path, "/anything?x=1");
    assert_eq!(a.seen()[0].header("host").as_deref(), Some("echo"));
}

#[tokio::test]
async fn weights_split_each_request_on_a_kept_alive_connection() {
    let (v1, v2) = (Backend::ok("echo-v1").await, Backend::ok("echo-v2").await);
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&v1]);
    mesh.service("echo-v1", "10.96.0.2", 80, "http", "http", &[&v1]);
    mesh.service("echo-v2", "10.96.0.3", 80, "http", "http", &[&v2]);
    mesh.routes(
        "echo",
        80,
        Some(table(
            vec![rule(vec![
                to("echo-v1", 80, 80),
                to("echo-v2", 80, 20),
                to("echo-v2", 80, 0),
            ])],
            vec![prefix(0, "/")],
        )),
        vec![],
    );
    let h = Harness::new(&mesh);
    let mut client = h.h2(NS, VIP).await;
    for _ in 0..1000 {
        assert_eq!(client.get("/").await.status, 200);
    }
    let share = v1.hits() as f64 / 1000.0;
    assert!((share - 0.8).abs() < 0.05, "echo-v1 got {share}");
    // Upstream connections were reused across the requests.
    assert!(
        h.outbound.upstream_connects() <= 6,
        "{}",
        h.outbound.upstream_connects()
    );
}

#[tokio::test]
async fn consumer_routes_replace_producer_routes_for_their_namespace() {
    let (v1, v2) = (Backend::ok("echo-v1").await, Backend::ok("echo-v2").await);
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&v1]);
    mesh.service("echo-v1", "10.96.0.2", 80, "http", "http", &[&v1]);
    mesh.service("echo-v2", "10.96.0.3", 80, "http", "http", &[&v2]);
    let consumer = table(
        vec![filtered(
            rule(vec![to("echo-v2", 80, 1)]),
            vec![pb::filter::Kind::ResponseHeaderModifier(header_mod(
                &[("x-header-set", "set")],
                &[],
                &[],
            ))],
        )],
        vec![prefix(0, "/")],
    );
    mesh.routes(
        "echo",
        80,
        Some(all_to("echo-v1", 80)),
        vec![("consumer", consumer)],
    );
    let h = Harness::new(&mesh);

    let answer = h.h1("consumer", VIP).await.get("/").await;
    assert_eq!((answer.status, answer.backend()), (200, "echo-v2"));
    assert_eq!(answer.header("x-header-set"), Some("set"));

    let answer = h.h1(NS, VIP).await.get("/").await;
    assert_eq!((answer.status, answer.backend()), (200, "echo-v1"));
    assert_eq!(answer.header("x-header-set"), None);
}

#[tokio::test]
async fn unmatched_requests_get_404_and_grpc_unimplemented() {
    let v1 = Backend::ok("echo-v1").await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&v1]);
    mesh.routes(
        "echo",
        80,
        Some(table(
            vec![rule(vec![to("echo", 80, 1)])],
            vec![exact(0, "/v1")],
        )),
        vec![],
    );
    let h = Harness::new(&mesh);
    let mut client = h.h2(NS, VIP).await;
    assert_eq!(client.get("/v1").await.status, 200);
    assert_eq!(client.get("/v2").await.status, 404);
    let grpc = client
        .send(
            request("POST", "/echo.Echo/Ping")
                .header("content-type", "application/grpc")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(grpc.status, 200);
    assert_eq!(grpc.header("grpc-status"), Some("12"));
    assert_eq!(v1.hits(), 1);
    let metrics = h.outbound.metrics();
    assert_eq!(metrics.responses(4), 1);
}

#[tokio::test]
async fn invalid_backends_get_500_for_their_weight_share() {
    let v1 = Backend::ok("echo-v1").await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&v1]);
    mesh.routes(
        "echo",
        80,
        Some(table(
            vec![
                rule(vec![to("echo", 80, 1), invalid(1)]),
                rule(vec![to("echo", 80, 0)]),
            ],
            vec![prefix(1, "/zero"), prefix(0, "/")],
        )),
        vec![],
    );
    let h = Harness::new(&mesh);
    let mut client = h.h1(NS, VIP).await;
    let mut errors = 0;
    for _ in 0..400 {
        match client.get("/").await.status {
            200 => {}
            500 => errors += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!((140..=260).contains(&errors), "{errors} of 400 got 500");
    assert_eq!(client.get("/zero").await.status, 500);
}

#[tokio::test]
async fn no_ready_endpoint_gets_503() {
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[]);
    mesh.service("other", "10.96.0.2", 80, "http", "http", &[]);
    mesh.routes("other", 80, Some(all_to("echo", 80)), vec![]);
    let h = Harness::new(&mesh);
    assert_eq!(h.h1(NS, VIP).await.get("/").await.status, 503);
    assert_eq!(h.h1(NS, "10.96.0.2:80").await.get("/").await.status, 503);
}

/// MeshHTTPRouteRequestHeaderModifier `/multiple` and `/case-insensitivity`,
/// plus response header modifiers, at rule and backend level.
#[tokio::test]
async fn header_modifiers_set_add_and_remove() {
    let v1 = Backend::start("echo-v1", |_| {
        Reply::ok()
            .header("x-resp-remove", "gone")
            .header("x-resp-set", "original")
            .header("x-resp-add", "original")
    })
    .await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&v1]);
    let mut backend = to("echo", 80, 1);
    backend.filters.push(pb::Filter {
        kind: Some(pb::filter::Kind::RequestHeaderModifier(header_mod(
            &[],
            &[("x-header-add-3", "header-add-3")],
            &[],
        ))),
    });
    let r = filtered(
        rule(vec![backend]),
        vec![
            pb::filter::Kind::RequestHeaderModifier(header_mod(
                &[
                    ("X-Header-Set-1", "header-set-1"),
                    ("X-Header-Set-2", "header-set-2"),
                ],
                &[
                    ("X-Header-Add-1", "header-add-1"),
                    ("X-Header-Add-2", "header-add-2"),
                ],
                &["x-header-remove-1", "x-header-remove-2"],
            )),
            pb::filter::Kind::ResponseHeaderModifier(header_mod(
                &[("x-resp-set", "set")],
                &[("x-resp-add", "added")],
                &["x-resp-remove"],
            )),
        ],
    );
    mesh.routes(
        "echo",
        80,
        Some(table(vec![r], vec![prefix(0, "/")])),
        vec![],
    );
    let h = Harness::new(&mesh);
    let answer = h
        .h1(NS, VIP)
        .await
        .get_with(
            "/multiple",
            &[
                ("X-Header-Set-2", "set-val-2"),
                ("x-header-add-2", "add-val-2"),
                ("X-Header-Remove-2", "remove-val-2"),
                ("Another-Header", "another-header-val"),
            ],
        )
        .await;
    assert_eq!(answer.status, 200);
    let seen = v1.last();
    for (name, want) in [
        ("x-header-set-1", Some("header-set-1")),
        ("x-header-set-2", Some("header-set-2")),
        ("x-header-add-1", Some("header-add-1")),
        ("x-header-add-2", Some("add-val-2,header-add-2")),
        ("x-header-add-3", Some("header-add-3")),
        ("another-header", Some("another-header-val")),
        ("x-header-remove-2", None),
    ] {
        assert_eq!(seen.header(name).as_deref(), want, "{name}");
    }
    assert_eq!(answer.header("x-resp-set"), Some("set"));
    let added: Vec<_> = answer.headers.get_all("x-resp-add").iter().collect();
    assert_eq!(added, ["original", "added"]);
    assert_eq!(answer.header("x-resp-remove"), None);
}

/// MeshHTTPRouteRewritePath and a hostname rewrite.
#[tokio::test]
async fn url_rewrites_change_path_and_host() {
    let v1 = Backend::ok("echo-v1").await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&v1]);
    let rewrite = |hostname: &str, path: Option<pb::path_modifier::Kind>| {
        pb::filter::Kind::UrlRewrite(pb::UrlRewrite {
            hostname: hostname.into(),
            path: path.map(|k| pb::PathModifier { kind: Some(k) }),
        })
    };
    mesh.routes(
        "echo",
        80,
        Some(table(
            vec![
                filtered(
                    rule(vec![to("echo", 80, 1)]),
                    vec![rewrite(
                        "",
                        Some(pb::path_modifier::Kind::ReplacePrefixMatch("/".into())),
                    )],
                ),
                filtered(
                    rule(vec![to("echo", 80, 1)]),
                    vec![rewrite(
                        "",
                        Some(pb::path_modifier::Kind::ReplaceFullPath("/one".into())),
                    )],
                ),
                filtered(
                    rule(vec![to("echo", 80, 1)]),
                    vec![rewrite("example.org", None)],
                ),
            ],
            vec![
                prefix(0, "/strip-prefix"),
                prefix(1, "/full"),
                prefix(2, "/"),
            ],
        )),
        vec![],
    );
    let h = Harness::new(&mesh);
    let mut client = h.h1(NS, VIP).await;
    for (path, want) in [
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/strip-prefix/a?q=1", "/a?q=1"),
        ("/full/one/two", "/one"),
    ] {
        assert_eq!(client.get(path).await.status, 200);
        let seen = v1.last();
        assert_eq!(seen.path, want, "{path}");
        assert_eq!(seen.header("host").as_deref(), Some("echo"));
    }
    assert_eq!(client.get("/host").await.status, 200);
    assert_eq!(v1.last().header("host").as_deref(), Some("example.org"));
    assert_eq!(v1.last().path, "/host");
}

#[tokio::test]
async fn redirects_answer_without_forwarding() {
    let v1 = Backend::ok("echo-v1").await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&v1]);
    let redirect = |status: u32, port: Option<u32>, path: Option<pb::path_modifier::Kind>| {
        filtered(
            rule(vec![to("echo", 80, 1)]),
            vec![pb::filter::Kind::RequestRedirect(pb::RequestRedirect {
                scheme: String::new(),
                hostname: "example.org".into(),
                path: path.map(|k| pb::PathModifier { kind: Some(k) }),
                port,
                status_code: status,
            })],
        )
    };
    mesh.routes(
        "echo",
        80,
        Some(table(
            vec![
                redirect(301, None, None),
                redirect(
                    302,
                    Some(8083),
                    Some(pb::path_modifier::Kind::ReplacePrefixMatch("/new".into())),
                ),
            ],
            vec![prefix(1, "/old"), prefix(0, "/")],
        )),
        vec![],
    );
    let h = Harness::new(&mesh);
    let mut client = h.h1(NS, VIP).await;
    let answer = client.get("/host-and-status").await;
    assert_eq!(answer.status, 301);
    assert_eq!(
        answer.header("location"),
        Some("http://example.org/host-and-status")
    );
    let answer = client.get("/old/lemon?x=1").await;
    assert_eq!(answer.status, 302);
    assert_eq!(
        answer.header("location"),
        Some("http://example.org:8083/new/lemon?x=1")
    );
    assert_eq!(v1.hits(), 0);
}

#[tokio::test]
async fn mirrors_copy_the_request_without_delaying_it() {
    let v1 = Backend::ok("echo-v1").await;
    let slow_mirror = Backend::start("mirror", |_| Reply::ok().delay(Duration::from_secs(3))).await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&v1]);
    mesh.service("mirror", "10.96.0.2", 80, "http", "http", &[&slow_mirror]);
    mesh.service("dead", "10.96.0.3", 80, "http", "http", &[]);
    let mirror = |service: &str, numerator: u32| {
        pb::filter::Kind::RequestMirror(pb::RequestMirror {
            backend: Some(pb::ServiceBackend {
                namespace: NS.into(),
                name: service.into(),
                port: 80,
            }),
            numerator,
            denominator: 100,
        })
    };
    mesh.routes(
        "echo",
        80,
        Some(table(
            vec![
                filtered(
                    rule(vec![to("echo", 80, 1)]),
                    vec![
                        pb::filter::Kind::RequestHeaderModifier(header_mod(
                            &[("x-header-set", "mirrored-too")],
                            &[],
                            &[],
                        )),
                        mirror("mirror", 100),
                        mirror("dead", 100),
                    ],
                ),
                filtered(rule(vec![to("echo", 80, 1)]), vec![mirror("mirror", 0)]),
            ],
            vec![prefix(1, "/never"), prefix(0, "/")],
        )),
        vec![],
    );
    let h = Harness::new(&mesh);
    let mut client = h.h1(NS, VIP).await;
    let started = tokio::time::Instant::now();
    let answer = client
        .send(
            request("POST", "/mirror")
                .body(Full::new(Bytes::from_static(b"payload")))
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(v1.last().body, "payload");
    // The mirror got the same request, edits and body included.
    tokio::time::timeout(Duration::from_secs(2), async {
        while slow_mirror.hits() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("mirror received the request");
    let seen = slow_mirror.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/mirror")
    );
    assert_eq!(seen.body, "payload");
    assert_eq!(seen.header("x-header-set").as_deref(), Some("mirrored-too"));
    // A 0 % mirror is never sent.
    for _ in 0..20 {
        assert_eq!(client.get("/never").await.status, 200);
    }
    assert_eq!(slow_mirror.hits(), 1);
}

#[tokio::test]
async fn new_config_versions_take_effect_on_open_connections() {
    let (v1, v2) = (Backend::ok("echo-v1").await, Backend::ok("echo-v2").await);
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&v1]);
    mesh.service("echo-v2", "10.96.0.2", 80, "http", "http", &[&v2]);
    let h = Harness::new(&mesh);
    let mut client = h.h1(NS, VIP).await;
    assert_eq!(client.get("/").await.backend(), "echo-v1");
    mesh.routes("echo", 80, Some(all_to("echo-v2", 80)), vec![]);
    h.config.send_replace(Arc::new(mesh.config(2)));
    assert_eq!(client.get("/").await.backend(), "echo-v2");
    let first = h.outbound.routes();
    assert!(
        Arc::ptr_eq(&first, &h.outbound.routes()),
        "compiled once per version"
    );
    // A version no request has seen yet is compiled as it is published.
    mesh.routes("echo", 80, None, vec![]);
    h.config.send_replace(Arc::new(mesh.config(3)));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while h.outbound.compiled_version() != 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "version 3 not compiled before a request"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(client.get("/").await.backend(), "echo-v1");
}

#[tokio::test]
async fn other_destinations_pass_through_unrouted() {
    let pod = Backend::ok("pod").await;
    let mut mesh = Mesh::default();
    mesh.alias("10.1.9.9:8080".parse().unwrap(), &pod);
    let h = Harness::new(&mesh);
    let answer = h.h1(NS, "10.1.9.9:8080").await.get("/direct").await;
    assert_eq!((answer.status, answer.backend()), (200, "pod"));
    assert_eq!(pod.last().path, "/direct");
}

#[tokio::test]
async fn a_host_the_connection_field_names_is_still_the_host_sent() {
    // `Connection: host` names Host as hop-by-hop; the request still goes
    // out with the Host it was sent to (`strip_hop_by_hop` keeps it, and
    // `plan` reads it first: either keeps this test green, the unit test
    // of `strip_hop_by_hop` pins the first).
    let a = Backend::ok("echo-a").await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&a]);
    let h = Harness::new(&mesh);
    let mut client = h.h1(NS, VIP).await;
    let answer = client.get_with("/", &[("connection", "host")]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(a.last().header("host").as_deref(), Some("echo"));
}

#[tokio::test]
async fn plain_answers_pass_on_as_the_upstream_wrote_them_unless_the_route_changes_them() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Field case, order and `Date` as no server of this proxy writes them.
    const ANSWER: &str = "HTTP/1.1 200 OK\r\nX-Odd-Case: yes\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nContent-Length: 5\r\n\r\nhello";
    let backend = Backend::raw("raw", ANSWER).await;
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&backend]);
    mesh.service("filtered", "10.96.0.2", 80, "http", "http", &[&backend]);
    let with_filter = table(
        vec![filtered(
            rule(vec![to("filtered", 80, 1)]),
            vec![pb::filter::Kind::ResponseHeaderModifier(header_mod(
                &[("x-set", "1")],
                &[],
                &[],
            ))],
        )],
        vec![prefix(0, "/")],
    );
    mesh.routes("filtered", 80, Some(with_filter), vec![]);
    let h = Harness::new(&mesh);

    // No response filter: byte for byte, request after request on one
    // kept-alive connection (the upstream connection pooled in between).
    let mut raw = h.raw(NS, VIP);
    for _ in 0..3 {
        raw.write_all(b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n")
            .await
            .unwrap();
        let mut got = vec![0u8; ANSWER.len()];
        tokio::time::timeout(Duration::from_secs(5), raw.read_exact(&mut got))
            .await
            .expect("the answer")
            .unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), ANSWER);
    }
    assert_eq!(h.outbound.upstream_connects(), 1);

    // A response filter: the answer is built again, with its field.
    let mut raw = h.raw(NS, "10.96.0.2:80");
    raw.write_all(b"GET / HTTP/1.1\r\nHost: filtered\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_string(&mut out))
        .await
        .expect("the answer and the close")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("\r\nx-odd-case: yes\r\n"), "{out}");
    assert!(out.contains("\r\nx-set: 1\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nhello"), "{out}");
    assert_eq!(backend.hits(), 4);
}

#[tokio::test]
async fn answers_that_close_or_are_undated_are_built_and_a_client_that_closes_is_told() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CLOSING: &str = "HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
    const UNDATED: &str = "HTTP/1.1 200 OK\r\nX-Odd-Case: yes\r\nContent-Length: 2\r\n\r\nok";
    const PLAIN: &str =
        "HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok";
    let closing = Backend::raw("closing", CLOSING).await;
    let undated = Backend::raw("undated", UNDATED).await;
    let plain = Backend::raw("plain", PLAIN).await;
    let mut mesh = Mesh::default();
    mesh.service("closing", "10.96.0.1", 80, "http", "http", &[&closing]);
    mesh.service("undated", "10.96.0.2", 80, "http", "http", &[&undated]);
    mesh.service("plain", "10.96.0.3", 80, "http", "http", &[&plain]);
    let h = Harness::new(&mesh);

    // The upstream closes its connection: the client's stays open (the
    // answer is built without the field), and the next request gets a new
    // upstream connection.
    let mut raw = h.raw(NS, "10.96.0.1:80");
    for _ in 0..2 {
        raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let answer = read_through_ok(&mut raw).await;
        assert!(
            !answer.to_ascii_lowercase().contains("connection"),
            "{answer}"
        );
    }
    assert_eq!(closing.hits(), 2);

    // No `Date`: the answer is built, dated.
    let mut raw = h.raw(NS, "10.96.0.2:80");
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let answer = read_through_ok(&mut raw).await;
    assert!(answer.contains("\r\ndate: "), "{answer}");
    assert!(answer.contains("\r\nx-odd-case: yes\r\n"), "{answer}");

    // The client asks to close: the answer, passed on as it came, says so
    // before its blank line, then the close.
    let mut raw = h.raw(NS, "10.96.0.3:80");
    raw.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    raw.read_to_string(&mut out).await.unwrap();
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nContent-Length: 2\r\nconnection: close\r\n\r\nok"
    );
}

#[tokio::test]
async fn a_retry_on_an_answer_passed_on_as_it_came_goes_by_its_status() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const UNAVAILABLE: &str = "HTTP/1.1 503 Service Unavailable\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nContent-Length: 4\r\n\r\nbusy";
    const OK: &str =
        "HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok";
    let (busy, fine) = (
        Backend::raw("busy", UNAVAILABLE).await,
        Backend::raw("fine", OK).await,
    );
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "http", &[&busy, &fine]);
    let mut retrying = rule(vec![to("echo", 80, 1)]);
    retrying.retry = Some(pb::Retry {
        codes: vec![503],
        attempts: Some(1),
        backoff_ms: Some(1),
    });
    mesh.routes(
        "echo",
        80,
        Some(table(vec![retrying], vec![prefix(0, "/")])),
        vec![],
    );
    let h = Harness::new(&mesh);
    let mut raw = h.raw(NS, VIP);
    // Whichever endpoint is tried first, a 503 is retried on the other one
    // and only the other's answer reaches the client, as it came.
    for _ in 0..4 {
        raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut got = vec![0u8; OK.len()];
        tokio::time::timeout(Duration::from_secs(5), raw.read_exact(&mut got))
            .await
            .expect("the answer")
            .unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), OK);
    }
    assert!(busy.hits() >= 1, "the 503 endpoint was tried");
}

/// Reads an answer whose body ends in `ok`, head and all.
async fn read_through_ok(raw: &mut tokio::io::DuplexStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\nok") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut byte))
            .await
            .expect("the answer")
            .unwrap();
        assert_eq!(n, 1, "closed early: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}
