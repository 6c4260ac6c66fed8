//! Table tests for each GAMMA route semantic, from manifests to the
//! per-node config and the request outcome it implies.

use hawser_control_plane::model::RouteKind;
use hawser_control_plane::status::{ConditionType, Reason};

use crate::support::{Leg, Mesh, condition, get, shares};

/// Namespace `prod`: Service `web` (80 http → 8080, 7070 grpc, 9090 tcp),
/// `v1` and `v2` (80 → 8080) over pods web-v1-a / web-v2-a; a headless and an
/// ExternalName Service; clients in `client` and `other`.
const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {hawser.dev/mesh: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
  - {name: grpc, port: 7070, appProtocol: kubernetes.io/h2c}
  - {name: tcp, port: 9090}
---
apiVersion: v1
kind: Service
metadata: {name: v1, namespace: prod}
spec:
  selector: {app: web, version: v1}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: grpc, port: 7070}]
---
apiVersion: v1
kind: Service
metadata: {name: v2, namespace: prod}
spec:
  selector: {app: web, version: v2}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: grpc, port: 7070}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: prod}
spec: {clusterIP: None, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: external, namespace: prod}
spec: {type: ExternalName, externalName: example.org, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-v1-a, namespace: prod, labels: {app: web, version: v1}}
spec: {nodeName: node-a, containers: [{name: app, image: x, ports: [{containerPort: 8080, name: http}]}]}
status: {podIP: 10.1.0.1, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-v2-a, namespace: prod, labels: {app: web, version: v2}}
spec: {nodeName: node-b, containers: [{name: app, image: x, ports: [{containerPort: 8080, name: http}]}]}
status: {podIP: 10.1.0.2, conditions: [{type: Ready, status: "True"}]}
"#;

fn mesh(routes: &str) -> Mesh {
    let m = Mesh::new(&[("base.yaml", BASE), ("routes.yaml", routes)]);
    let report = m.report();
    assert!(
        report.errors.is_empty(),
        "manifest errors: {:#?}",
        report.errors
    );
    m
}

fn route(name: &str, parent: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: prod}}\nspec:\n  parentRefs: [{parent}]\n  rules:\n{rules}\n"
    )
}

const TO_V1: &str = "  - backendRefs: [{name: v1, port: 80}]";

#[test]
fn parent_attachment_by_cluster_ip_and_port() {
    // (parentRef, Accepted reason, ports that get a table, message fragment)
    let cases: &[(&str, Reason, &[u32], &str)] = &[
        (
            "{group: '', kind: Service, name: web}",
            Reason::Accepted,
            &[80, 7070, 9090],
            "80, 7070, 9090",
        ),
        (
            "{group: '', kind: Service, name: web, port: 80}",
            Reason::Accepted,
            &[80],
            "port(s) 80",
        ),
        (
            "{group: '', kind: Service, name: web, sectionName: grpc}",
            Reason::Accepted,
            &[7070],
            "port(s) 7070",
        ),
        (
            "{group: '', kind: Service, name: web, port: 81}",
            Reason::NoMatchingParent,
            &[],
            "has no port 81",
        ),
        (
            "{group: '', kind: Service, name: web, sectionName: nope}",
            Reason::NoMatchingParent,
            &[],
            "no port named",
        ),
        (
            "{group: '', kind: Service, name: missing}",
            Reason::NoMatchingParent,
            &[],
            "not found",
        ),
        (
            "{group: '', kind: Service, name: headless}",
            Reason::NoMatchingParent,
            &[],
            "headless",
        ),
        (
            "{group: '', kind: Service, name: external}",
            Reason::NoMatchingParent,
            &[],
            "ExternalName",
        ),
    ];
    for (parent, reason, ports, message) in cases {
        let m = mesh(&route("r", parent, TO_V1));
        let status = m.http_status("prod", "r");
        let accepted = condition(&status, ConditionType::Accepted);
        assert_eq!(accepted.reason, *reason, "{parent}: {status}");
        assert_eq!(accepted.status, *reason == Reason::Accepted, "{parent}");
        assert!(
            accepted.message.contains(message),
            "{parent}: {}",
            accepted.message
        );
        assert_eq!(status.parents[0].controller_name, "hawser.dev/mesh");
        let view = m.view("node-a");
        let with_tables: Vec<u32> = view
            .routes
            .get(&("prod".into(), "web".into()))
            .map(|r| r.ports.iter().map(|p| p.port).collect())
            .unwrap_or_default();
        assert_eq!(&with_tables, ports, "{parent}");
        // Requests to ports without a route go straight to the Service.
        let vip = view.vip("prod", "web");
        for port in [80, 7070, 9090] {
            let f = view.forward(&get("prod", &vip, port, "/"));
            let routed = f.rule.is_some();
            assert_eq!(routed, ports.contains(&port), "{parent} port {port}");
        }
    }
}

#[test]
fn a_gateway_parent_is_not_ours() {
    let m = mesh(&route("r", "{name: some-gateway}", TO_V1));
    assert!(m.http_status("prod", "r").parents.is_empty());
    assert!(m.view("node-a").routes.is_empty());
}

#[test]
fn routes_apply_by_service_vip_and_never_by_host_header() {
    let m = mesh(&route(
        "r",
        "{group: '', kind: Service, name: v1}",
        "  - backendRefs: [{name: v2, port: 80}]",
    ));
    let view = m.view("node-a");
    // Host says v2, destination is v1's VIP: v1's route applies.
    let f = view.forward(&get("prod", &view.vip("prod", "v1"), 80, "/").header("Host", "v2"));
    assert_eq!(f.service, Some(("prod".into(), "v2".into())));
    // Destination v2's VIP with Host v1: v2 has no route.
    let f = view.forward(&get("prod", &view.vip("prod", "v2"), 80, "/").header("Host", "v1"));
    assert!(f.rule.is_none());
    assert_eq!(f.pods, vec!["web-v2-a".to_string()]);
    // A pod IP is never a parent.
    let f = view.forward(&get("prod", "10.1.0.1", 8080, "/"));
    assert!(f.rule.is_none());
}

#[test]
fn consumer_routes_apply_only_to_their_namespace_and_replace_producer_routes() {
    let producer = route(
        "producer",
        "{group: '', kind: Service, name: web, port: 80}",
        "  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-route, value: producer}]}}]\n    backendRefs: [{name: v1, port: 80}]",
    );
    let consumer = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: consumer, namespace: client}\nspec:\n  parentRefs: [{group: '', kind: Service, name: web, namespace: prod, port: 80}]\n  rules:\n  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-route, value: consumer}]}}]\n    backendRefs: [{name: v2, namespace: prod, port: 80}]\n";
    let m = mesh(&format!("{producer}---\n{consumer}"));
    let status = m.http_status("client", "consumer");
    let accepted = condition(&status, ConditionType::Accepted);
    assert!(
        accepted.status && accepted.message.contains("consumer route"),
        "{status}"
    );
    let view = m.view("node-b");
    let vip = view.vip("prod", "web");
    for (client, route, backend) in [
        ("client", "consumer", "v2"),
        ("prod", "producer", "v1"),
        ("other", "producer", "v1"),
    ] {
        let f = view.forward(&get(client, &vip, 80, "/"));
        assert_eq!(
            f.response_header("x-route").as_deref(),
            Some(route),
            "client in {client}"
        );
        assert_eq!(
            f.service.as_ref().map(|s| s.1.as_str()),
            Some(backend),
            "client in {client}"
        );
    }

    // Only a consumer route: other clients go straight to the Service.
    let m = mesh(consumer);
    let view = m.view("node-a");
    assert!(view.forward(&get("client", &vip, 80, "/")).rule.is_some());
    let f = view.forward(&get("prod", &vip, 80, "/"));
    assert!(f.rule.is_none());
    assert_eq!(f.pods, vec!["web-v1-a".to_string(), "web-v2-a".to_string()]);
}

/// Two rules or routes competing for the same requests: (routes yaml,
/// [(request path, headers, method, expected backend)]).
#[test]
fn match_precedence_and_tie_breaks() {
    let p = "{group: '', kind: Service, name: web, port: 80}";
    let r = |name: &str, created: &str, rules: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: prod, creationTimestamp: '{created}'}}\nspec:\n  parentRefs: [{p}]\n  rules:\n{rules}\n"
        )
    };
    let t0 = "2024-01-01T00:00:00Z";
    let t1 = "2024-06-01T00:00:00Z";
    type Req<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: Vec<(&str, String, Vec<Req<'_>>)> = vec![
        (
            "exact path beats any prefix",
            r(
                "a",
                t0,
                "  - matches: [{path: {type: PathPrefix, value: /foo/bar}}]\n    backendRefs: [{name: v1, port: 80}]\n  - matches: [{path: {type: Exact, value: /foo/bar}}]\n    backendRefs: [{name: v2, port: 80}]",
            ),
            vec![
                ("/foo/bar", &[], "GET", "v2"),
                ("/foo/bar/x", &[], "GET", "v1"),
            ],
        ),
        (
            "longest prefix wins, element-wise",
            r(
                "a",
                t0,
                "  - matches: [{path: {type: PathPrefix, value: /foo}}]\n    backendRefs: [{name: v1, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /foo/bar/}}]\n    backendRefs: [{name: v2, port: 80}]",
            ),
            vec![
                ("/foo/bar/baz", &[], "GET", "v2"),
                ("/foo/bar", &[], "GET", "v2"),
                ("/foo/barbaz", &[], "GET", "v1"),
                ("/foo", &[], "GET", "v1"),
            ],
        ),
        (
            "method beats headers",
            r(
                "a",
                t0,
                "  - matches: [{headers: [{name: x-a, value: '1'}]}]\n    backendRefs: [{name: v2, port: 80}]\n  - matches: [{method: GET}]\n    backendRefs: [{name: v1, port: 80}]",
            ),
            vec![
                ("/", &[("x-a", "1")], "GET", "v1"),
                ("/", &[("x-a", "1")], "POST", "v2"),
            ],
        ),
        (
            "more headers win",
            r(
                "a",
                t0,
                "  - matches: [{headers: [{name: x-a, value: '1'}]}]\n    backendRefs: [{name: v1, port: 80}]\n  - matches: [{headers: [{name: x-a, value: '1'}, {name: X-B, value: '2'}]}]\n    backendRefs: [{name: v2, port: 80}]",
            ),
            vec![
                ("/", &[("x-a", "1"), ("x-b", "2")], "GET", "v2"),
                ("/", &[("x-a", "1")], "GET", "v1"),
            ],
        ),
        (
            "headers beat query params; more query params win",
            r(
                "a",
                t0,
                "  - matches: [{queryParams: [{name: q, value: '1'}, {name: r, value: '2'}]}]\n    backendRefs: [{name: v1, port: 80}]\n  - matches: [{headers: [{name: x-a, value: '1'}]}]\n    backendRefs: [{name: v2, port: 80}]\n  - matches: [{queryParams: [{name: q, value: '1'}]}]\n    backendRefs: [{name: web, port: 80}]",
            ),
            vec![
                ("/?q=1&r=2", &[("x-a", "1")], "GET", "v2"),
                ("/?q=1&r=2", &[], "GET", "v1"),
                ("/?q=1", &[], "GET", "web"),
            ],
        ),
        (
            "tie: the oldest route wins",
            format!(
                "{}---\n{}",
                r("alpha", t1, TO_V1.replace("v1", "v2").as_str()),
                r("zeta", t0, TO_V1)
            ),
            vec![("/", &[], "GET", "v1")],
        ),
        (
            "tie at the same age: namespace/name order",
            format!(
                "{}---\n{}",
                r("beta", t0, TO_V1.replace("v1", "v2").as_str()),
                r("alpha", t0, TO_V1)
            ),
            vec![("/", &[], "GET", "v1")],
        ),
        (
            "tie within a route: rule order",
            r(
                "a",
                t0,
                "  - backendRefs: [{name: v2, port: 80}]\n  - backendRefs: [{name: v1, port: 80}]",
            ),
            vec![("/", &[], "GET", "v2")],
        ),
    ];
    for (what, routes, requests) in cases {
        let m = mesh(&routes);
        let view = m.view("node-a");
        let vip = view.vip("prod", "web");
        for (path, headers, method, backend) in requests {
            let mut req = get("prod", &vip, 80, path).method(method);
            for (h, v) in headers {
                req = req.header(h, v);
            }
            let f = view.forward(&req);
            assert_eq!(
                f.service.as_ref().map(|s| s.1.as_str()),
                Some(backend),
                "{what}: {method} {path} {headers:?}"
            );
        }
    }
}

#[test]
fn unmatched_requests_get_404_once_a_route_attaches() {
    let m = mesh(&route(
        "r",
        "{group: '', kind: Service, name: web, port: 80}",
        "  - matches: [{path: {type: Exact, value: /only}}]\n    backendRefs: [{name: v1, port: 80}]",
    ));
    let view = m.view("node-a");
    let vip = view.vip("prod", "web");
    assert_eq!(
        view.send_one(&get("prod", &vip, 80, "/other")),
        Leg::NotFound
    );
    assert!(matches!(
        view.send_one(&get("prod", &vip, 80, "/only")),
        Leg::Backend(_)
    ));
}

#[test]
fn weights_zero_weights_and_unresolvable_backends() {
    let rules = "  - backendRefs:\n    - {name: v1, port: 80, weight: 3}\n    - {name: v2, port: 80, weight: 1}\n    - {name: missing, port: 80, weight: 2}\n    - {name: v1, port: 81, weight: 0}\n    - {group: example.com, kind: Bucket, name: b, weight: 1}";
    let m = mesh(&route(
        "r",
        "{group: '', kind: Service, name: web, port: 80}",
        rules,
    ));
    let view = m.view("node-a");
    let got = shares(&view.send(&get("prod", &view.vip("prod", "web"), 80, "/")));
    let close = |k: &str, want: f64| {
        assert!(
            (got.get(k).copied().unwrap_or(0.0) - want).abs() < 1e-9,
            "{k}: {got:?}"
        )
    };
    close("v1", 3.0 / 7.0);
    close("v2", 1.0 / 7.0);
    // Unresolvable backends keep their weight: their share gets 500.
    close("<500>", 3.0 / 7.0);
    let status = m.http_status("prod", "r");
    let resolved = condition(&status, ConditionType::ResolvedRefs);
    assert!(!resolved.status);
    assert_eq!(resolved.reason, Reason::BackendNotFound, "{status}");
    for fragment in [
        "prod/missing not found",
        "has no port 81",
        "example.com/Bucket",
    ] {
        assert!(
            resolved.message.contains(fragment),
            "{fragment}: {}",
            resolved.message
        );
    }
    // The route is still accepted.
    assert!(condition(&status, ConditionType::Accepted).status);

    let m = mesh(&route(
        "r",
        "{group: '', kind: Service, name: web, port: 80}",
        "  - backendRefs: [{group: example.com, kind: Bucket, name: b}]",
    ));
    assert_eq!(
        condition(&m.http_status("prod", "r"), ConditionType::ResolvedRefs).reason,
        Reason::InvalidKind
    );

    // Only zero weights, or no backendRefs at all: 500.
    for rules in [
        "  - backendRefs: [{name: v1, port: 80, weight: 0}]",
        "  - matches: [{path: {value: /}}]",
    ] {
        let m = mesh(&route(
            "r",
            "{group: '', kind: Service, name: web, port: 80}",
            rules,
        ));
        let view = m.view("node-a");
        assert!(
            matches!(
                view.send_one(&get("prod", &view.vip("prod", "web"), 80, "/")),
                Leg::ServerError(_)
            ),
            "{rules}"
        );
    }
}

#[test]
fn filters_rule_and_backend_level() {
    let rules = r#"  - matches: [{path: {type: PathPrefix, value: /hdr}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Set, value: s}], add: [{name: X-Add, value: a}], remove: [X-Remove]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: X-Resp, value: r}], remove: [Server]}
    backendRefs:
    - name: v1
      port: 80
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: X-Backend, value: v1}]}}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: new.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /replaced}}}]
    backendRefs: [{name: v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /redirect}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.org, path: {type: ReplacePrefixMatch, replacePrefixMatch: /moved}, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /default-redirect}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8443}}]
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: v2, port: 80}, percent: 25}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: v2, port: 80}, fraction: {numerator: 1, denominator: 3}}}
    backendRefs: [{name: v1, port: 80}]"#;
    let m = mesh(&route(
        "r",
        "{group: '', kind: Service, name: web, port: 80}",
        rules,
    ));
    let view = m.view("node-a");
    let vip = view.vip("prod", "web");
    let mut req = get("prod", &vip, 80, "/hdr");
    req.headers = vec![
        ("x-set".into(), "old".into()),
        ("x-add".into(), "first".into()),
        ("x-remove".into(), "gone".into()),
    ];
    let f = view.forward(&req);
    assert_eq!(f.header("x-set").as_deref(), Some("s"));
    assert_eq!(f.header("x-add").as_deref(), Some("first,a"), "add appends");
    assert_eq!(f.header("x-remove"), None);
    assert_eq!(
        f.header("x-backend").as_deref(),
        Some("v1"),
        "backend-level filter"
    );
    assert_eq!(f.response_header("x-resp").as_deref(), Some("r"));
    assert_eq!(f.removed_response_headers, vec!["server".to_string()]);

    let f = view.forward(&get("prod", &vip, 80, "/old/page?x=1"));
    assert_eq!(f.path, "/new/page?x=1");
    assert_eq!(f.header("host").as_deref(), Some("new.example"));
    assert_eq!(
        view.forward(&get("prod", &vip, 80, "/full/a/b")).path,
        "/replaced"
    );

    let mut req = get("prod", &vip, 80, "/redirect/a");
    req.host = "web".into();
    assert_eq!(
        view.send_one(&req),
        Leg::Redirect {
            status: 301,
            location: "https://example.org/moved/a".into()
        }
    );
    let mut req = get("prod", &vip, 80, "/default-redirect");
    req.host = "web".into();
    assert_eq!(
        view.send_one(&req),
        Leg::Redirect {
            status: 302,
            location: "http://web:8443/default-redirect".into()
        }
    );

    let f = view.forward(&get("prod", &vip, 80, "/mirror"));
    assert_eq!(
        f.mirrors,
        vec![
            ("prod".into(), "v2".into(), 80, 25, 100),
            ("prod".into(), "v2".into(), 80, 1, 3)
        ]
    );

    // A mirror to a missing Service is reported and not sent.
    let m = mesh(&route(
        "r",
        "{group: '', kind: Service, name: web, port: 80}",
        "  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: nope, port: 80}}}]\n    backendRefs: [{name: v1, port: 80}]",
    ));
    let resolved = condition(&m.http_status("prod", "r"), ConditionType::ResolvedRefs);
    assert!(
        !resolved.status && resolved.message.contains("requestMirror"),
        "{}",
        resolved.message
    );
    let view = m.view("node-a");
    assert!(
        view.forward(&get("prod", &view.vip("prod", "web"), 80, "/"))
            .mirrors
            .is_empty()
    );
}

#[test]
fn timeouts_and_retry_reach_the_rule() {
    let rules = "  - timeouts: {request: 10s, backendRequest: 2s}\n    retry: {codes: [503, 502], attempts: 3, backoff: 100ms}\n    backendRefs: [{name: v1, port: 80}]\n  - matches: [{path: {value: /none}}]\n    backendRefs: [{name: v1, port: 80}]";
    let m = mesh(&route(
        "r",
        "{group: '', kind: Service, name: web, port: 80}",
        rules,
    ));
    let view = m.view("node-a");
    let vip = view.vip("prod", "web");
    let rule = view
        .forward(&get("prod", &vip, 80, "/"))
        .rule
        .expect("rule");
    assert_eq!(rule.request_timeout_ms, Some(10_000));
    assert_eq!(rule.backend_request_timeout_ms, Some(2_000));
    let retry = rule.retry.expect("retry");
    assert_eq!(retry.codes, vec![503, 502]);
    assert_eq!(retry.attempts, Some(3));
    assert_eq!(retry.backoff_ms, Some(100));
    let rule = view
        .forward(&get("prod", &vip, 80, "/none"))
        .rule
        .expect("rule");
    assert_eq!(
        (
            rule.request_timeout_ms,
            rule.backend_request_timeout_ms,
            rule.retry
        ),
        (None, None, None)
    );
}

#[test]
fn grpc_route_service_method_and_header_matches() {
    let routes = r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: prod}
spec:
  parentRefs: [{group: '', kind: Service, name: web, port: 7070}]
  rules:
  - matches: [{method: {service: pkg.Svc}}]
    backendRefs: [{name: v2, port: 7070}]
  - matches: [{method: {service: pkg.Svc, method: Get}}]
    backendRefs: [{name: v1, port: 7070}]
  - matches: [{headers: [{name: X-Canary, value: "yes"}]}]
    backendRefs: [{name: web, port: 7070}]
"#;
    let m = mesh(routes);
    assert!(
        condition(
            &m.status(RouteKind::Grpc, "prod", "g"),
            ConditionType::Accepted
        )
        .status
    );
    let view = m.view("node-a");
    let vip = view.vip("prod", "web");
    let call = |path: &str| get("prod", &vip, 7070, path).grpc();
    let backend = |req| view.forward(&req).service.map(|s| s.1);
    assert_eq!(
        backend(call("/pkg.Svc/Get")),
        Some("v1".into()),
        "service+method beats service"
    );
    assert_eq!(backend(call("/pkg.Svc/List")), Some("v2".into()));
    assert_eq!(
        backend(call("/other.Svc/List").header("x-canary", "yes")),
        Some("web".into())
    );
    assert_eq!(view.send_one(&call("/other.Svc/List")), Leg::NotFound);
    // An HTTP request on a GRPCRoute port matches nothing.
    assert_eq!(view.send_one(&get("prod", &vip, 7070, "/")), Leg::NotFound);
}

#[test]
fn route_type_conflicts_on_one_port_gep_1294() {
    let grpc = |port: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g, namespace: prod}}\nspec:\n  parentRefs: [{{group: '', kind: Service, name: web{port}}}]\n  rules: [{{backendRefs: [{{name: v1, port: 7070}}]}}]\n"
        )
    };
    let http = route(
        "h",
        "{group: '', kind: Service, name: web, port: 7070}",
        TO_V1,
    );
    // Same port: GRPCRoute wins, HTTPRoute is Conflicted.
    let m = mesh(&format!("{}---\n{http}", grpc(", port: 7070")));
    let accepted = condition(&m.http_status("prod", "h"), ConditionType::Accepted);
    assert_eq!(
        (accepted.status, accepted.reason),
        (false, Reason::Conflicted),
        "{}",
        accepted.message
    );
    assert!(
        condition(
            &m.status(RouteKind::Grpc, "prod", "g"),
            ConditionType::Accepted
        )
        .status
    );
    let view = m.view("node-a");
    let table = view.table("prod", "web", 7070, "prod").expect("table");
    assert_eq!(
        table.kind,
        hawser_api::proto::discovery::RouteKind::Grpc as i32
    );

    // Different ports: both apply.
    let all_ports = route("h", "{group: '', kind: Service, name: web}", TO_V1);
    let m = mesh(&format!("{}---\n{all_ports}", grpc(", port: 7070")));
    assert!(condition(&m.http_status("prod", "h"), ConditionType::Accepted).status);
    let view = m.view("node-a");
    assert_eq!(
        view.table("prod", "web", 80, "prod").expect("80").kind,
        hawser_api::proto::discovery::RouteKind::Http as i32
    );
    assert_eq!(
        view.table("prod", "web", 7070, "prod").expect("7070").kind,
        hawser_api::proto::discovery::RouteKind::Grpc as i32
    );
}

#[test]
fn unsupported_values_are_reported_not_applied() {
    let p = "{group: '', kind: Service, name: web, port: 80}";
    let cases = [
        (
            "  - matches: [{path: {type: RegularExpression, value: '/a.*'}}]\n    backendRefs: [{name: v1, port: 80}]",
            "RegularExpression",
        ),
        (
            "  - matches: [{headers: [{type: RegularExpression, name: x, value: 'a.*'}]}]\n    backendRefs: [{name: v1, port: 80}]",
            "RegularExpression",
        ),
        (
            "  - filters: [{type: CORS, cors: {allowOrigins: ['https://a.example']}}]\n    backendRefs: [{name: v1, port: 80}]",
            "filter type CORS",
        ),
        (
            "  - filters: [{type: ExtensionRef, extensionRef: {group: x.io, kind: Thing, name: t}}]\n    backendRefs: [{name: v1, port: 80}]",
            "filter type ExtensionRef",
        ),
        (
            "  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 305}}]",
            "statusCode 305",
        ),
        (
            "  - backendRefs: [{name: v1, port: 80, filters: [{type: RequestRedirect, requestRedirect: {hostname: x.example}}]}]",
            "not supported on a backendRef",
        ),
    ];
    for (rules, fragment) in cases {
        let m = mesh(&route("r", p, rules));
        let status = m.http_status("prod", "r");
        let accepted = condition(&status, ConditionType::Accepted);
        assert_eq!(
            (accepted.status, accepted.reason),
            (false, Reason::UnsupportedValue),
            "{rules}"
        );
        assert!(
            accepted.message.contains(fragment),
            "{fragment}: {}",
            accepted.message
        );
        assert!(
            m.view("node-a").routes.is_empty(),
            "{rules}: must not apply"
        );
    }
}

#[test]
fn observed_generation_follows_spec_edits() {
    let mut m = mesh(&route(
        "r",
        "{group: '', kind: Service, name: web, port: 80}",
        TO_V1,
    ));
    let g1 = condition(&m.http_status("prod", "r"), ConditionType::Accepted).observed_generation;
    assert_eq!(g1, 1);
    m.write(
        "routes.yaml",
        &route(
            "r",
            "{group: '', kind: Service, name: web, port: 80}",
            "  - backendRefs: [{name: v2, port: 80}]",
        ),
    );
    let status = m.http_status("prod", "r");
    for c in &status.parents[0].conditions {
        assert_eq!(c.observed_generation, 2, "{status}");
    }
    // The printable form names everything an operator needs.
    let text = status.to_string();
    for fragment in [
        "HTTPRoute prod/r",
        "Service web port 80",
        "Accepted=True Accepted (generation 2)",
        "ResolvedRefs=True",
    ] {
        assert!(text.contains(fragment), "{fragment} in\n{text}");
    }
}

#[test]
fn backend_becoming_available_resolves_refs() {
    let mut m = mesh(&route(
        "r",
        "{group: '', kind: Service, name: web, port: 80}",
        "  - backendRefs: [{name: later, port: 80}]",
    ));
    assert_eq!(
        condition(&m.http_status("prod", "r"), ConditionType::ResolvedRefs).reason,
        Reason::BackendNotFound
    );
    m.write("later.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: later, namespace: prod}\nspec: {selector: {app: web}, ports: [{name: http, port: 80}]}\n");
    assert!(condition(&m.http_status("prod", "r"), ConditionType::ResolvedRefs).status);
    let view = m.view("node-a");
    let f = view.forward(&get("prod", &view.vip("prod", "web"), 80, "/"));
    assert_eq!(f.service, Some(("prod".into(), "later".into())));
    // And the parent disappearing un-attaches the route.
    m.write(
        "base.yaml",
        &BASE.replace(
            "metadata: {name: web, namespace: prod}",
            "metadata: {name: web-renamed, namespace: prod}",
        ),
    );
    let accepted = condition(&m.http_status("prod", "r"), ConditionType::Accepted);
    assert_eq!(accepted.reason, Reason::NoMatchingParent);
    assert!(m.view("node-a").routes.is_empty());
}

#[test]
fn endpoints_from_selector_and_ready_pods_without_endpoint_slices() {
    let extra = r#"apiVersion: v1
kind: Service
metadata: {name: named, namespace: prod}
spec: {selector: {app: named}, ports: [{name: http, port: 80, targetPort: web}]}
---
apiVersion: v1
kind: Pod
metadata: {name: named-a, namespace: prod, labels: {app: named}}
spec: {nodeName: node-a, containers: [{name: c, image: x, ports: [{name: web, containerPort: 8080}]}]}
status: {podIP: 10.2.0.1, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: named-b, namespace: prod, labels: {app: named}}
spec: {nodeName: node-b, containers: [{name: c, image: x, ports: [{name: web, containerPort: 9000}]}]}
status: {podIP: 10.2.0.2, conditions: [{type: Ready, status: "False"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: named-no-port, namespace: prod, labels: {app: named}}
spec: {nodeName: node-b, containers: [{name: c, image: x}]}
status: {podIP: 10.2.0.3, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: named-pending, namespace: prod, labels: {app: named}}
spec: {containers: [{name: c, image: x, ports: [{name: web, containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: named-done, namespace: prod, labels: {app: named}}
spec: {nodeName: node-a, containers: [{name: c, image: x, ports: [{name: web, containerPort: 8080}]}]}
status: {phase: Succeeded, podIP: 10.2.0.4}
"#;
    let mut m = mesh(extra);
    let view = m.view("node-a");
    let svc = view.service("prod", "named");
    let eps: Vec<(String, u32, bool, String)> = svc
        .endpoints
        .iter()
        .map(|e| (e.addresses.join(","), e.ports[&80], e.ready, e.node.clone()))
        .collect();
    assert_eq!(
        eps,
        vec![
            ("10.2.0.1".into(), 8080, true, "node-a".into()),
            ("10.2.0.2".into(), 9000, false, "node-b".into())
        ],
        "named targetPort resolved per pod; not-ready kept as not ready; no IP / no such port / terminated left out"
    );
    assert!(
        svc.endpoints
            .iter()
            .all(|e| view.workloads.contains_key(&e.workload_uid))
    );
    assert_eq!(
        svc.ports[0].target_port,
        Some(hawser_api::proto::discovery::service_port::TargetPort::TargetPortName("web".into()))
    );

    // With an EndpointSlice, the slice is the truth.
    m.write("slice.yaml", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: named-x1, namespace: prod, labels: {kubernetes.io/service-name: named}}\naddressType: IPv4\nports: [{name: http, port: 7777}]\nendpoints:\n- addresses: [10.2.0.9]\n  conditions: {ready: true}\n  targetRef: {kind: Pod, name: named-a}\n");
    let view = m.view("node-a");
    let svc = view.service("prod", "named");
    assert_eq!(svc.endpoints.len(), 1);
    assert_eq!(svc.endpoints[0].addresses, vec!["10.2.0.9".to_string()]);
    assert_eq!(svc.endpoints[0].ports[&80], 7777);
    assert_eq!(
        view.workloads[&svc.endpoints[0].workload_uid].name,
        "named-a"
    );
    assert_eq!(svc.endpoints[0].node, "node-a", "node taken from the pod");
}

#[test]
fn invalid_route_documents_name_the_field() {
    let p = "{group: '', kind: Service, name: web, port: 80}";
    let cases = [
        (
            "  - matches: [{path: {type: PathPrefix, value: nope}}]\n    backendRefs: [{name: v1, port: 80}]",
            "spec.rules[0].matches[0].path.value",
            "must start with /",
        ),
        (
            "  - matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]\n    backendRefs: [{name: v1, port: 80}]",
            "spec.rules[0].matches",
            "ReplacePrefixMatch",
        ),
        (
            "  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}, {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: c, value: d}]}}]\n    backendRefs: [{name: v1, port: 80}]",
            "spec.rules[0].filters[1].type",
            "at most once",
        ),
        (
            "  - filters: [{type: RequestHeaderModifier}]\n    backendRefs: [{name: v1, port: 80}]",
            "spec.rules[0].filters[0]",
            "requestHeaderModifier",
        ),
        (
            "  - backendRefs: [{name: v1}]",
            "spec.rules[0].backendRefs[0].port",
            "required",
        ),
        (
            "  - backendRefs: [{name: v1, port: 80, weight: -1}]",
            "spec.rules[0].backendRefs[0].weight",
            "-1",
        ),
        (
            "  - timeouts: {request: 1s, backendRequest: 2s}\n    backendRefs: [{name: v1, port: 80}]",
            "spec.rules[0].timeouts.backendRequest",
            "must not be longer",
        ),
        (
            "  - timeouts: {request: 10 seconds}\n    backendRefs: [{name: v1, port: 80}]",
            "spec.rules[0].timeouts.request",
            "duration",
        ),
        (
            "  - retry: {codes: [200]}\n    backendRefs: [{name: v1, port: 80}]",
            "spec.rules[0].retry.codes[0]",
            "400-599",
        ),
        (
            "  - matches: [{path: {type: Prefix, value: /a}}]\n    backendRefs: [{name: v1, port: 80}]",
            "spec.rules[0].matches[0].path.type",
            "unknown variant",
        ),
        (
            "  - name: a\n    backendRefs: [{name: v1, port: 80}]\n  - name: a\n    backendRefs: [{name: v2, port: 80}]",
            "spec.rules[1].name",
            "not unique",
        ),
    ];
    for (rules, field, reason) in cases {
        let m = Mesh::new(&[("base.yaml", BASE), ("routes.yaml", &route("r", p, rules))]);
        let report = m.report();
        let e = report
            .errors
            .iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("{field}: {:#?}", report.errors));
        assert!(e.reason.contains(reason), "{field}: {}", e.reason);
        assert_eq!(e.document, 1);
        assert!(e.file.ends_with("routes.yaml"));
        assert!(
            m.view("node-a").routes.is_empty(),
            "{rules}: invalid route applied"
        );
    }
}
