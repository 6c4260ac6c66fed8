//! L4 authorization table tests.

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
    }
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
