//! Authorization table tests: L4, and L7 (methods, paths) per request.

use hawser_api::proto::discovery::{Destination, PathMatch, path_match};

use super::*;

fn policy(
    name: &str,
    action: AuthorizationAction,
    rules: Vec<AuthorizationRule>,
) -> AuthorizationPolicy {
    AuthorizationPolicy {
        namespace: "prod".into(),
        name: name.into(),
        action: action as i32,
        mode: AuthorizationMode::Enforce as i32,
        rules,
    }
}

fn from(sources: Vec<Source>) -> AuthorizationRule {
    AuthorizationRule {
        from: sources,
        to: None,
    }
}

fn sa(ns: &str, sa: &str) -> Source {
    Source {
        namespace: ns.into(),
        service_account: sa.into(),
        ..Default::default()
    }
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")).expect("valid id")
}

fn conn<'a>(peer: Option<&'a SpiffeId>, port: u16) -> Connection<'a> {
    Connection {
        peer,
        peer_ip: "10.244.1.5".parse().expect("ip"),
        port,
        request: None,
    }
}

fn req<'a>(
    peer: Option<&'a SpiffeId>,
    port: u16,
    method: &'a str,
    path: &'a str,
) -> Connection<'a> {
    Connection {
        request: Some(HttpRequest { method, path }),
        ..conn(peer, port)
    }
}

fn to(methods: &[&str], paths: Vec<path_match::Kind>) -> AuthorizationRule {
    AuthorizationRule {
        from: vec![],
        to: Some(Destination {
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            paths: paths
                .into_iter()
                .map(|k| PathMatch { kind: Some(k) })
                .collect(),
            ..Default::default()
        }),
    }
}

fn prefix(p: &str) -> path_match::Kind {
    path_match::Kind::Prefix(p.into())
}

fn exact(p: &str) -> path_match::Kind {
    path_match::Kind::Exact(p.into())
}

fn allowed(policies: &[&AuthorizationPolicy], c: Connection<'_>) -> bool {
    evaluate(policies, &c).decision == Decision::Allow
}

#[test]
fn no_policy_allows_everything() {
    let web = id("prod", "web");
    assert!(allowed(&[], conn(Some(&web), 80)));
    assert!(allowed(&[], conn(None, 80)));
}

#[test]
fn deny_a_service_account() {
    let deny = policy(
        "deny-web",
        AuthorizationAction::Deny,
        vec![from(vec![sa("prod", "web")])],
    );
    let (web, api) = (id("prod", "web"), id("prod", "api"));
    let eval = evaluate(&[&deny], &conn(Some(&web), 80));
    assert_eq!(
        eval.decision,
        Decision::Deny {
            reason: "denied by policy prod/deny-web".into()
        }
    );
    assert!(allowed(&[&deny], conn(Some(&api), 80)));
    // A service account name alone does not match another namespace's account.
    assert!(allowed(&[&deny], conn(Some(&id("dev", "web")), 80)));
}

#[test]
fn allow_list_admits_only_listed_identities() {
    let allow = policy(
        "allow-api",
        AuthorizationAction::Allow,
        vec![from(vec![
            sa("prod", "api"),
            Source {
                spiffe_id: "spiffe://cluster.local/ns/ops/sa/debug".into(),
                ..Default::default()
            },
        ])],
    );
    assert!(allowed(&[&allow], conn(Some(&id("prod", "api")), 80)));
    assert!(allowed(&[&allow], conn(Some(&id("ops", "debug")), 80)));
    let denied = evaluate(&[&allow], &conn(Some(&id("prod", "web")), 80)).decision;
    assert!(matches!(denied, Decision::Deny { reason } if reason.contains("prod/allow-api")));
    // Plaintext peers have no identity: an identity allow-list refuses them.
    assert!(!allowed(&[&allow], conn(None, 80)));
}

#[test]
fn deny_wins_over_allow_and_namespace_wide_sources() {
    let allow_ns = policy(
        "allow-prod",
        AuthorizationAction::Allow,
        vec![from(vec![Source {
            namespace: "prod".into(),
            ..Default::default()
        }])],
    );
    let deny = policy(
        "deny-web",
        AuthorizationAction::Deny,
        vec![from(vec![sa("prod", "web")])],
    );
    assert!(allowed(
        &[&allow_ns, &deny],
        conn(Some(&id("prod", "api")), 80)
    ));
    assert!(!allowed(
        &[&allow_ns, &deny],
        conn(Some(&id("prod", "web")), 80)
    ));
    assert!(!allowed(
        &[&allow_ns, &deny],
        conn(Some(&id("dev", "api")), 80)
    ));
}

#[test]
fn ports_and_ip_blocks() {
    let allow = policy(
        "allow",
        AuthorizationAction::Allow,
        vec![AuthorizationRule {
            from: vec![Source {
                ip_block: "10.244.1.0/24".into(),
                ..Default::default()
            }],
            to: Some(Destination {
                ports: vec![8080],
                ..Default::default()
            }),
        }],
    );
    assert!(
        allowed(&[&allow], conn(None, 8080)),
        "ipBlock works without identity"
    );
    assert!(!allowed(&[&allow], conn(None, 9090)), "other port");
    let mut far = conn(None, 8080);
    far.peer_ip = "10.244.2.5".parse().expect("ip");
    assert!(!allowed(&[&allow], far), "outside the block");
    let bad = policy(
        "bad-cidr",
        AuthorizationAction::Allow,
        vec![from(vec![Source {
            ip_block: "10.0.0.0/99".into(),
            ..Default::default()
        }])],
    );
    assert!(
        !allowed(&[&bad], conn(None, 80)),
        "an unparseable block matches nothing"
    );
}

#[test]
fn rules_edge_cases_and_l7_fields_at_l4() {
    let deny_all = policy("deny-all", AuthorizationAction::Deny, vec![]);
    let allow_nothing = policy("allow-nothing", AuthorizationAction::Allow, vec![]);
    let web = id("prod", "web");
    assert!(!allowed(&[&deny_all], conn(Some(&web), 80)));
    assert!(!allowed(&[&allow_nothing], conn(Some(&web), 80)));
    let l7 = |action| {
        policy(
            "l7",
            action,
            vec![AuthorizationRule {
                from: vec![],
                to: Some(Destination {
                    methods: vec!["GET".into()],
                    paths: vec![PathMatch {
                        kind: Some(path_match::Kind::Prefix("/admin".into())),
                    }],
                    ..Default::default()
                }),
            }],
        )
    };
    // Conservative at L4: an L7 Deny denies, an L7 Allow does not admit.
    assert!(!allowed(
        &[&l7(AuthorizationAction::Deny)],
        conn(Some(&web), 80)
    ));
    assert!(!allowed(
        &[&l7(AuthorizationAction::Allow)],
        conn(Some(&web), 80)
    ));

    // Requests are needed only where a rule with methods or paths applies.
    assert!(needs_requests(&[&l7(AuthorizationAction::Allow)], 80));
    assert!(!needs_requests(&[&deny_all, &allow_nothing], 80));
    let mut on_8080 = l7(AuthorizationAction::Deny);
    if let Some(to) = on_8080.rules[0].to.as_mut() {
        to.ports = vec![8080];
    }
    assert!(!needs_requests(&[&on_8080], 80));
    assert!(needs_requests(&[&on_8080], 8080));
}

#[test]
fn audit_policies_report_but_do_not_enforce() {
    let mut deny = policy(
        "audit-deny",
        AuthorizationAction::Deny,
        vec![from(vec![sa("prod", "web")])],
    );
    deny.mode = AuthorizationMode::Audit as i32;
    let web = id("prod", "web");
    let eval = evaluate(&[&deny], &conn(Some(&web), 80));
    assert_eq!(eval.decision, Decision::Allow);
    assert_eq!(
        eval.audit_denials,
        vec!["denied by policy prod/audit-deny".to_owned()]
    );
}

#[test]
fn l7_allow_list_matches_methods_and_paths_per_request() {
    // As the CRD writes `paths: ["/api/*", "/healthz"]`, `methods: ["GET"]`.
    let allow = policy(
        "allow-read",
        AuthorizationAction::Allow,
        vec![to(
            &["GET", "HEAD"],
            vec![prefix("/api"), exact("/healthz")],
        )],
    );
    let web = id("prod", "web");
    let ok = |m, p| allowed(&[&allow], req(Some(&web), 8080, m, p));
    assert!(ok("GET", "/api"));
    assert!(ok("GET", "/api/"));
    assert!(ok("GET", "/api/x/y"));
    assert!(ok("HEAD", "/healthz"));
    assert!(!ok("GET", "/apix"), "prefix is element-wise");
    assert!(!ok("GET", "/healthz/deep"), "exact is exact");
    assert!(!ok("POST", "/api/x"), "method not listed");
    assert!(!ok("get", "/api/x"), "methods are case-sensitive");
    let denied = evaluate(&[&allow], &req(Some(&web), 8080, "POST", "/api/x")).decision;
    assert!(matches!(denied, Decision::Deny { reason } if reason.contains("prod/allow-read")));
}

#[test]
fn l7_deny_and_wildcard_path() {
    // `paths: ["/*"]` is the prefix "/": every path.
    let deny_posts = policy(
        "deny-writes",
        AuthorizationAction::Deny,
        vec![to(&["POST", "DELETE"], vec![prefix("/")])],
    );
    let deny_admin = policy(
        "deny-admin",
        AuthorizationAction::Deny,
        vec![to(&[], vec![prefix("/admin/")])],
    );
    let web = id("prod", "web");
    let all = [&deny_posts, &deny_admin];
    assert!(allowed(&all, req(Some(&web), 80, "GET", "/anything")));
    assert!(!allowed(&all, req(Some(&web), 80, "POST", "/anything")));
    assert!(!allowed(&all, req(Some(&web), 80, "DELETE", "/")));
    assert!(!allowed(&all, req(Some(&web), 80, "GET", "/admin")));
    assert!(!allowed(&all, req(Some(&web), 80, "GET", "/admin/users")));
    assert!(allowed(&all, req(Some(&web), 80, "GET", "/administrator")));
}

#[test]
fn l7_rules_combine_with_sources_and_ports() {
    let allow = policy(
        "allow-api-writes",
        AuthorizationAction::Allow,
        vec![AuthorizationRule {
            from: vec![sa("prod", "api")],
            to: Some(Destination {
                ports: vec![8080],
                methods: vec!["POST".into()],
                ..Default::default()
            }),
        }],
    );
    let (api, web) = (id("prod", "api"), id("prod", "web"));
    assert!(allowed(&[&allow], req(Some(&api), 8080, "POST", "/x")));
    assert!(
        !allowed(&[&allow], req(Some(&web), 8080, "POST", "/x")),
        "other source"
    );
    assert!(
        !allowed(&[&allow], req(Some(&api), 9090, "POST", "/x")),
        "other port"
    );
    assert!(
        !allowed(&[&allow], req(None, 8080, "POST", "/x")),
        "plaintext has no identity"
    );
}

#[test]
fn l7_rules_without_a_request_fail_closed() {
    // A TCP port (or bytes relayed): the request is unknown. An Allow with
    // methods never admits; a Deny with paths denies once its sources match.
    let allow_get = policy(
        "allow-get",
        AuthorizationAction::Allow,
        vec![to(&["GET"], vec![])],
    );
    let allow_tcp = policy(
        "allow-api",
        AuthorizationAction::Allow,
        vec![from(vec![sa("prod", "api")])],
    );
    let deny_admin = policy(
        "deny-admin",
        AuthorizationAction::Deny,
        vec![AuthorizationRule {
            from: vec![sa("prod", "web")],
            to: Some(Destination {
                paths: vec![PathMatch {
                    kind: Some(exact("/admin")),
                }],
                ..Default::default()
            }),
        }],
    );
    let (api, web, ops) = (id("prod", "api"), id("prod", "web"), id("prod", "ops"));
    assert!(!allowed(&[&allow_get], conn(Some(&web), 5432)));
    assert!(
        allowed(&[&allow_get, &allow_tcp], conn(Some(&api), 5432)),
        "another rule can still allow it"
    );
    assert!(!allowed(&[&deny_admin], conn(Some(&web), 5432)));
    assert!(
        allowed(&[&deny_admin], conn(Some(&ops), 5432)),
        "the Deny's sources still have to match"
    );
    // With the request known, the same Deny only takes /admin.
    assert!(allowed(&[&deny_admin], req(Some(&web), 80, "GET", "/")));
    assert!(!allowed(
        &[&deny_admin],
        req(Some(&web), 80, "GET", "/admin")
    ));
}

#[test]
fn paths_are_normalized_before_matching() {
    assert_eq!(normalize_path("/api/x"), None, "common paths are untouched");
    assert_eq!(normalize_path("/api/../admin").as_deref(), Some("/admin"));
    assert_eq!(
        normalize_path("/api/%2e%2E/admin").as_deref(),
        Some("/admin")
    );
    assert_eq!(normalize_path("/./a/./b/.").as_deref(), Some("/a/b/"));
    assert_eq!(normalize_path("/../../x").as_deref(), Some("/x"));
    assert_eq!(normalize_path("/%61dmin").as_deref(), Some("/admin"));
    assert_eq!(normalize_path("/a%2Fb"), None, "encoded slashes are kept");
    assert_eq!(
        normalize_path("/caf%C3%A9"),
        None,
        "non-unreserved escapes are kept"
    );
    assert_eq!(normalize_path("/é/../x").as_deref(), Some("/x"));
    assert_eq!(normalize_path("/100%").as_deref(), None);
}

/// Each mode of [`normalize`] on the paths that get past a naive matcher,
/// with Istio's names for the modes.
#[test]
fn paths_are_normalized_as_each_mode_asks() {
    use Normalized::{Changed, Rejected, Unchanged};
    let base = PathNormalization::default();
    let merge = PathNormalization {
        merge_slashes: true,
        ..base
    };
    let reject = PathNormalization {
        escaped_slashes: EscapedSlashes::Reject,
        ..base
    };
    let decode = PathNormalization {
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::DecodeAndMerge,
    };
    let changed = |p: &str| Changed(p.to_owned());
    let cases: &[(&str, [Normalized; 4])] = &[
        // path: BASE, MERGE_SLASHES, BASE + reject escaped slashes, DECODE_AND_MERGE_SLASHES
        ("/admin", [Unchanged, Unchanged, Unchanged, Unchanged]),
        (
            "/admin%2Fx",
            [
                Unchanged,
                Unchanged,
                Rejected("the path has an escaped slash (%2F or %5C)"),
                changed("/admin/x"),
            ],
        ),
        (
            "/admin%5cx",
            [
                Unchanged,
                Unchanged,
                Rejected("the path has an escaped slash (%2F or %5C)"),
                changed("/admin/x"),
            ],
        ),
        (
            "//admin",
            [Unchanged, changed("/admin"), Unchanged, changed("/admin")],
        ),
        (
            "/a//b//",
            [Unchanged, changed("/a/b/"), Unchanged, changed("/a/b/")],
        ),
        (
            "/api\\..\\admin",
            [
                changed("/admin"),
                changed("/admin"),
                changed("/admin"),
                changed("/admin"),
            ],
        ),
        (
            "/api/%2e%2e/admin",
            [
                changed("/admin"),
                changed("/admin"),
                changed("/admin"),
                changed("/admin"),
            ],
        ),
        (
            "/%61dmin",
            [
                changed("/admin"),
                changed("/admin"),
                changed("/admin"),
                changed("/admin"),
            ],
        ),
        (
            "/api/..;/admin",
            [
                Rejected("the path has a dot segment with parameters (..;)"),
                Rejected("the path has a dot segment with parameters (..;)"),
                Rejected("the path has a dot segment with parameters (..;)"),
                Rejected("the path has a dot segment with parameters (..;)"),
            ],
        ),
        (
            "/admin%00.png",
            [
                Rejected("the path has an escaped NUL (%00)"),
                Rejected("the path has an escaped NUL (%00)"),
                Rejected("the path has an escaped NUL (%00)"),
                Rejected("the path has an escaped NUL (%00)"),
            ],
        ),
        ("/ADMIN", [Unchanged, Unchanged, Unchanged, Unchanged]),
        ("/admin;x", [Unchanged, Unchanged, Unchanged, Unchanged]),
        (
            "/a%2F%2Fb/../c",
            [
                changed("/c"),
                changed("/c"),
                Rejected("the path has an escaped slash (%2F or %5C)"),
                changed("/a/c"),
            ],
        ),
    ];
    for (path, expected) in cases {
        for (how, want) in [base, merge, reject, decode].iter().zip(expected) {
            assert_eq!(&normalize(path, how), want, "{path} under {how:?}");
        }
    }
    assert_eq!(policy_path("/admin;jsessionid=1/x;v=2"), "/admin/x");
    assert_eq!(policy_path("/api/x"), "/api/x");
}
