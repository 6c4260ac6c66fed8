//! Tests of the outbound HTTP engine: table-level unit tests here; end to
//! end over loopback (real hyper backends, the engine serving in-memory
//! client connections) in `tests/`.

mod protocols;
mod resilience;
mod routing;
mod support;

use std::time::Duration;

use hawser_api::proto::discovery as pb;
use http::{HeaderMap, Method};

use super::filters::{RedirectSource, redirect_location, rewrite_path, split_host_port};
use super::is_http;
use super::matching::{RequestInfo, select};
use super::retry::{BudgetSettings, RetryBudget, backoff};
use super::routes::{PathModifier, Redirect, Routes};
use support::{Mesh, exact, prefix, rule, table, to};

fn compiled(t: pb::RouteTable) -> std::sync::Arc<super::routes::RouteTable> {
    let mut mesh = Mesh::default();
    mesh.service("echo", "10.96.0.1", 80, "http", "", &[]);
    mesh.routes("echo", 80, Some(t), vec![]);
    let routes = Routes::new(&mesh.config(1));
    routes
        .table(&super::ServiceKey::new("mesh", "echo"), 80, "mesh")
        .cloned()
        .expect("table")
}

fn pick(
    t: &super::routes::RouteTable,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    grpc: bool,
) -> Option<usize> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        map.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    select(
        t,
        &RequestInfo {
            method: &method,
            path,
            query,
            headers: &map,
            grpc,
        },
    )
    .map(|s| s.rule)
}

#[test]
fn http_ports_are_recognised() {
    assert!(is_http("http", "tcp-x"));
    assert!(is_http("kubernetes.io/h2c", ""));
    assert!(is_http("GRPC", ""));
    assert!(is_http("", "http-web"));
    assert!(is_http("", "grpc"));
    assert!(!is_http("", "tcp"));
    assert!(!is_http("", ""));
    // An explicit non-HTTP appProtocol wins over the port name.
    assert!(!is_http("mysql", "http"));
}

/// MeshHTTPRouteMatching: rule 0 is `/` for echo-v1, rule 1 `/v2` or
/// header `version: two` for echo-v2; entries in precedence order.
#[test]
fn paths_match_element_wise_and_headers_case_insensitively() {
    let mut header_entry = prefix(1, "/");
    if let Some(pb::match_entry::Kind::Http(m)) = header_entry.kind.as_mut() {
        m.headers.push(pb::HeaderMatch {
            name: "version".into(),
            value: "two".into(),
        });
    }
    let t = compiled(table(
        vec![rule(vec![to("v1", 80, 1)]), rule(vec![to("v2", 80, 1)])],
        vec![prefix(1, "/v2/"), header_entry, prefix(0, "/")],
    ));
    assert_eq!(pick(&t, "GET", "/", &[], false), Some(0));
    assert_eq!(pick(&t, "GET", "/example", &[], false), Some(0));
    assert_eq!(pick(&t, "GET", "/v2", &[], false), Some(1));
    assert_eq!(pick(&t, "GET", "/v2/", &[], false), Some(1));
    assert_eq!(pick(&t, "GET", "/v2/example", &[], false), Some(1));
    assert_eq!(pick(&t, "GET", "/v2example", &[], false), Some(0));
    assert_eq!(pick(&t, "GET", "/foo/v2/example", &[], false), Some(0));
    assert_eq!(pick(&t, "GET", "/", &[("Version", "two")], false), Some(1));
    assert_eq!(pick(&t, "GET", "/", &[("version", "one")], false), Some(0));
    // Header values are compared exactly, first value only.
    assert_eq!(pick(&t, "GET", "/", &[("version", "Two")], false), Some(0));
    assert_eq!(
        pick(
            &t,
            "GET",
            "/",
            &[("version", "one"), ("version", "two")],
            false
        ),
        Some(0)
    );
}

/// MeshHTTPRouteQueryParamMatching (subset) plus method and exact paths.
#[test]
fn query_params_methods_and_exact_paths() {
    let mut whale = prefix(0, "/");
    let mut post = exact(1, "/submit");
    if let Some(pb::match_entry::Kind::Http(m)) = whale.kind.as_mut() {
        m.query_params.push(pb::QueryParamMatch {
            name: "animal".into(),
            value: "whale".into(),
        });
    }
    if let Some(pb::match_entry::Kind::Http(m)) = post.kind.as_mut() {
        m.method = "POST".into();
    }
    let t = compiled(table(
        vec![rule(vec![to("v1", 80, 1)]), rule(vec![to("v2", 80, 1)])],
        vec![post, whale],
    ));
    assert_eq!(pick(&t, "GET", "/?animal=whale", &[], false), Some(0));
    assert_eq!(
        pick(&t, "GET", "/?animal=whale&other=1", &[], false),
        Some(0)
    );
    assert_eq!(pick(&t, "GET", "/?animal=whaledolphin", &[], false), None);
    assert_eq!(pick(&t, "GET", "/?Animal=whale", &[], false), None);
    assert_eq!(
        pick(&t, "GET", "/?animal=dolphin&animal=whale", &[], false),
        None
    );
    assert_eq!(pick(&t, "GET", "/", &[], false), None);
    assert_eq!(pick(&t, "POST", "/submit", &[], false), Some(1));
    assert_eq!(pick(&t, "GET", "/submit", &[], false), None);
    assert_eq!(pick(&t, "POST", "/submit/", &[], false), None);
}

#[test]
fn grpc_tables_match_service_method_and_headers() {
    let entry =
        |rule: u32, service: &str, method: &str, header: Option<(&str, &str)>| pb::MatchEntry {
            rule,
            kind: Some(pb::match_entry::Kind::Grpc(pb::GrpcMatch {
                service: service.into(),
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
        vec![rule(vec![to("v1", 80, 1)]), rule(vec![to("v2", 80, 1)])],
        vec![
            entry(1, "echo.Echo", "Ping", None),
            entry(1, "", "", Some(("x-test-case", "multi"))),
            entry(0, "echo.Echo", "", None),
        ],
    );
    t.kind = pb::RouteKind::Grpc as i32;
    let t = compiled(t);
    assert_eq!(pick(&t, "POST", "/echo.Echo/Ping", &[], true), Some(1));
    assert_eq!(pick(&t, "POST", "/echo.Echo/Other", &[], true), Some(0));
    assert_eq!(
        pick(
            &t,
            "POST",
            "/other.Svc/X",
            &[("X-Test-Case", "multi")],
            true
        ),
        Some(1)
    );
    assert_eq!(pick(&t, "POST", "/other.Svc/X", &[], true), None);
    // A gRPC table never answers plain HTTP.
    assert_eq!(pick(&t, "GET", "/echo.Echo/Ping", &[], false), None);
}

#[test]
fn prefix_and_full_path_rewrites() {
    let p = |s: &str| PathModifier::PrefixMatch(s.into());
    assert_eq!(
        rewrite_path("/prefix/one/two", &p("/one"), "/prefix"),
        "/one/one/two"
    );
    assert_eq!(
        rewrite_path("/prefix/one/two", &p("/"), "/prefix"),
        "/one/two"
    );
    assert_eq!(
        rewrite_path("/strip-prefix/three", &p("/"), "/strip-prefix"),
        "/three"
    );
    assert_eq!(rewrite_path("/strip-prefix", &p("/"), "/strip-prefix"), "/");
    assert_eq!(
        rewrite_path(
            "/prefix/rewrite-path-and-modify-headers/one",
            &p("/prefix"),
            "/prefix/rewrite-path-and-modify-headers"
        ),
        "/prefix/one"
    );
    assert_eq!(rewrite_path("/x/y", &p("/new"), "/"), "/new/x/y");
    let full = PathModifier::FullPath("/one".into());
    assert_eq!(rewrite_path("/full/one/two", &full, "/full"), "/one");
}

/// Every Location in the conformance redirect cases.
#[test]
fn redirect_locations_follow_the_spec() {
    let redirect = |scheme: Option<&str>, host: Option<&str>, port: Option<u16>, path| Redirect {
        scheme: scheme.map(Into::into),
        hostname: host.map(Into::into),
        path,
        port,
        status: http::StatusCode::FOUND,
    };
    let at = |path: &'static str, prefix: &'static str| RedirectSource {
        scheme: "http",
        host: "echo",
        port: 80,
        path,
        query: "",
        prefix,
    };
    let cases = [
        (
            redirect(None, Some("example.org"), None, None),
            at("/hostname-redirect", "/"),
            "http://example.org/hostname-redirect",
        ),
        (
            redirect(
                None,
                None,
                None,
                Some(PathModifier::PrefixMatch("/replacement-prefix".into())),
            ),
            at("/original-prefix/lemon", "/original-prefix"),
            "http://echo/replacement-prefix/lemon",
        ),
        (
            redirect(
                None,
                None,
                None,
                Some(PathModifier::FullPath("/full-path-replacement".into())),
            ),
            at("/full/path/original", "/full/path/original"),
            "http://echo/full-path-replacement",
        ),
        (
            redirect(
                None,
                Some("example.org"),
                None,
                Some(PathModifier::PrefixMatch("/replacement-prefix".into())),
            ),
            at("/path-and-host", "/path-and-host"),
            "http://example.org/replacement-prefix",
        ),
        (
            redirect(None, None, Some(8083), None),
            at("/port", "/"),
            "http://echo:8083/port",
        ),
        (
            redirect(None, Some("example.org"), Some(8083), None),
            at("/port-and-host", "/"),
            "http://example.org:8083/port-and-host",
        ),
        (
            redirect(Some("https"), None, None, None),
            at("/scheme", "/"),
            "https://echo/scheme",
        ),
        (
            redirect(Some("https"), Some("example.org"), None, None),
            at("/scheme-and-host", "/"),
            "https://example.org/scheme-and-host",
        ),
        (
            redirect(None, None, None, None),
            at("/redirect", "/"),
            "http://echo/redirect",
        ),
        (
            redirect(Some("https"), None, Some(8443), None),
            at("/x", "/"),
            "https://echo:8443/x",
        ),
        (
            redirect(Some("http"), None, Some(80), None),
            at("/x", "/"),
            "http://echo/x",
        ),
    ];
    for (r, src, want) in cases {
        assert_eq!(redirect_location(&r, &src), want, "{r:?} {src:?}");
    }
    // Without scheme or port, the request's port stays (Host port first).
    let r = redirect(None, Some("example.org"), None, None);
    let mut src = at("/a", "/");
    src.port = 8080;
    assert_eq!(redirect_location(&r, &src), "http://example.org:8080/a");
    src.host = "echo:9090";
    assert_eq!(redirect_location(&r, &src), "http://example.org:9090/a");
    src.query = "q=1";
    assert_eq!(redirect_location(&r, &src), "http://example.org:9090/a?q=1");
    assert_eq!(split_host_port("[fd00::1]:80"), ("[fd00::1]", Some(80)));
    assert_eq!(split_host_port("fd00::1"), ("fd00::1", None));
}

#[tokio::test(start_paused = true)]
async fn retry_budget_allows_a_share_of_requests_over_the_window() {
    let budget = RetryBudget::new(BudgetSettings {
        ratio: 0.2,
        min_per_second: 0,
        window: Duration::from_secs(10),
    });
    for _ in 0..100 {
        budget.deposit();
    }
    let granted = (0..100).filter(|_| budget.withdraw()).count();
    assert_eq!(granted, 20);
    // Once the window has passed, the old requests no longer count.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(!budget.withdraw());
    budget.deposit();
    budget.deposit();
    budget.deposit();
    budget.deposit();
    budget.deposit();
    assert!(budget.withdraw());
    assert!(!budget.withdraw());
}

#[test]
fn backoff_grows_within_bounds_never_below_the_base() {
    let base = Duration::from_millis(100);
    let max = Duration::from_millis(300);
    let within = |retry: u32, ceiling: Duration| {
        let waits: Vec<Duration> = (0..200).map(|_| backoff(base, max, retry)).collect();
        assert!(
            waits.iter().all(|w| *w >= base && *w < ceiling),
            "retry {retry}: {waits:?}"
        );
        waits
    };
    within(1, base + base / 4);
    let second = within(2, 2 * base + base / 4);
    assert!(
        second.iter().any(|w| *w > base + base / 4),
        "the second wait can grow past the first's range"
    );
    let capped = within(10, max + base / 4);
    assert!(
        capped.iter().any(|w| *w > 2 * base + base / 4),
        "{capped:?}"
    );
}

#[test]
fn hop_by_hop_fields_are_stripped_and_end_to_end_ones_kept() {
    let headers = |fields: &[(&str, &str)]| {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    };
    let names = |map: &HeaderMap| {
        let mut names: Vec<String> = map.keys().map(|n| n.as_str().to_owned()).collect();
        names.sort();
        names
    };
    let message = [
        ("host", "echo"),
        // Host is kept even when named: the request needs it.
        ("connection", "keep-alive, x-private, host"),
        ("x-private", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("te", "gzip"),
        ("upgrade", "websocket"),
        ("content-length", "3"),
        ("x-kept", "2"),
    ];
    let mut stripped = headers(&message);
    super::strip_hop_by_hop(&mut stripped, false);
    assert_eq!(names(&stripped), ["content-length", "host", "x-kept"]);

    // An upgrade keeps `Connection` and `Upgrade`; `TE: trailers` stays.
    let mut upgrade = headers(&[
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("te", "trailers"),
        ("keep-alive", "1"),
    ]);
    super::strip_hop_by_hop(&mut upgrade, true);
    assert_eq!(names(&upgrade), ["connection", "te", "upgrade"]);

    // Nothing to strip: untouched.
    let plain = headers(&[("host", "echo"), ("accept", "*/*"), ("x-a", "1")]);
    let mut same = plain.clone();
    super::strip_hop_by_hop(&mut same, false);
    assert_eq!(same, plain);
}
