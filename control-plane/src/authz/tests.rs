//! The CRD on disk matches the Rust type; validation rejects what cannot be enforced.

use super::*;
use crate::model::{AuthorizationTarget, PolicyPath};

/// The CRD file of this checkout. The package directory is read at run time
/// (cargo and nextest set it): a test binary built in another checkout
/// sharing the target directory would otherwise read that checkout's file.
fn crd_path() -> String {
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    format!("{dir}/../crds/authorizationpolicies.policy.hawser.dev.yaml")
}

#[test]
fn crd_on_disk_matches_the_type() {
    let generated = crd_yaml().expect("CRD serializes");
    let crd_path = crd_path();
    if std::env::var_os("HAWSER_UPDATE_CRDS").is_some() {
        std::fs::write(&crd_path, &generated).expect("write CRD");
    }
    let on_disk = std::fs::read_to_string(&crd_path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{crd_path} is out of date: run `HAWSER_UPDATE_CRDS=1 cargo test -p hawser-control-plane crd`"
    );
    for fragment in [
        "name: authorizationpolicies.policy.hawser.dev",
        "group: policy.hawser.dev",
        "scope: Namespaced",
        "v1alpha1",
        "targetRefs",
        "ipBlock",
    ] {
        assert!(
            generated.contains(fragment),
            "{fragment} missing from the CRD"
        );
    }
}

fn policy(
    yaml: &str,
) -> Result<crate::model::AuthorizationPolicy, Vec<crate::convert::FieldError>> {
    let p: AuthorizationPolicy = serde_yaml_ng::from_str(yaml).expect("policy yaml");
    to_model(&p)
}

const HEAD: &str = "apiVersion: policy.hawser.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n";

#[test]
fn valid_policies_convert() {
    let p = policy(&format!(
        "{HEAD}  selector: {{}}\n  action: Deny\n  mode: Audit\n  rules:\n  - from: [{{serviceAccount: web}}, {{namespace: ops}}, {{spiffeId: 'spiffe://cluster.local/ns/a/sa/b'}}, {{ipBlock: 10.0.0.0/8}}]\n    to: {{ports: [8080], methods: [GET], paths: [/api/*, /healthz, /*]}}\n"
    ))
    .expect("valid");
    assert_eq!(p.target, AuthorizationTarget::Selector(Default::default()));
    assert_eq!(p.action, crate::model::AuthorizationAction::Deny);
    assert_eq!(p.mode, crate::model::AuthorizationMode::Audit);
    let rule = &p.rules[0];
    assert_eq!(
        rule.from[0].namespace.as_deref(),
        Some("shop"),
        "a bare serviceAccount is in the policy's namespace"
    );
    assert_eq!(
        rule.from[3].ip_block.map(|b| b.to_string()).as_deref(),
        Some("10.0.0.0/8")
    );
    let to = rule.to.as_ref().expect("to");
    assert_eq!(
        to.paths,
        vec![
            PolicyPath::Prefix("/api".into()),
            PolicyPath::Exact("/healthz".into()),
            PolicyPath::Prefix("/".into())
        ]
    );
    let p = policy(&format!(
        "{HEAD}  targetRefs: [{{kind: Service, name: cart}}]\n"
    ))
    .expect("valid");
    assert_eq!(p.target, AuthorizationTarget::Services(vec!["cart".into()]));
}

#[test]
fn unenforceable_fields_are_rejected_with_field_and_reason() {
    let cases = [
        (
            "  selector: {}\n  targetRefs: [{kind: Service, name: a}]\n",
            "spec",
            "exclusive",
        ),
        ("  action: Allow\n", "spec", "one of targetRefs or selector"),
        (
            "  targetRefs: [{group: apps, kind: Deployment, name: a}]\n",
            "spec.targetRefs[0]",
            "only core Services",
        ),
        (
            "  selector: {matchExpressions: [{key: a, operator: Like, values: [b]}]}\n",
            "spec.selector.matchExpressions[0].operator",
            "Like",
        ),
        (
            "  selector: {matchExpressions: [{key: a, operator: In}]}\n",
            "spec.selector.matchExpressions[0].values",
            "non-empty",
        ),
        (
            "  selector: {}\n  rules: [{from: [{}]}]\n",
            "spec.rules[0].from[0]",
            "is empty",
        ),
        (
            "  selector: {}\n  rules: [{from: [{spiffeId: 'spiffe://cluster.local/ns/a/sa/b/'}]}]\n",
            "spec.rules[0].from[0].spiffeId",
            "not a SPIFFE ID",
        ),
        (
            "  selector: {}\n  rules: [{from: [{ipBlock: 10.0.0.1/8}]}]\n",
            "spec.rules[0].from[0].ipBlock",
            "host bits",
        ),
        (
            "  selector: {}\n  rules: [{from: [{ipBlock: 10.0.0.0/33}]}]\n",
            "spec.rules[0].from[0].ipBlock",
            "prefix length",
        ),
        (
            "  selector: {}\n  rules: [{from: [{namespace: Bad_NS}]}]\n",
            "spec.rules[0].from[0].namespace",
            "not a valid name",
        ),
        (
            "  selector: {}\n  rules: [{to: {ports: [0]}}]\n",
            "spec.rules[0].to.ports[0]",
            "not a port",
        ),
        (
            "  selector: {}\n  rules: [{to: {methods: [get]}}]\n",
            "spec.rules[0].to.methods[0]",
            "upper-case",
        ),
        (
            "  selector: {}\n  rules: [{to: {paths: ['/a*b']}}]\n",
            "spec.rules[0].to.paths[0]",
            "final /*",
        ),
        (
            "  selector: {}\n  rules: [{to: {paths: [relative]}}]\n",
            "spec.rules[0].to.paths[0]",
            "must start with /",
        ),
    ];
    for (spec, field, reason) in cases {
        let errors = policy(&format!("{HEAD}{spec}")).expect_err(spec);
        let e = errors
            .iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("{spec}: no error on {field}: {errors:?}"));
        assert!(e.reason.contains(reason), "{field}: {}", e.reason);
    }
}

#[test]
fn unknown_fields_are_rejected_not_dropped() {
    let p: Result<AuthorizationPolicy, _> = serde_yaml_ng::from_str(&format!(
        "{HEAD}  selector: {{}}\n  rules: [{{to: {{hosts: [a.example]}}}}]\n"
    ));
    let e = p.expect_err("hosts is not a field").to_string();
    assert!(e.contains("hosts"), "{e}");
}

mod policy_status {
    //! The status reports HTTP fields on ports that do not carry HTTP.

    use crate::index::{Index, IndexConfig};
    use crate::model::{
        ContainerPort, Labels, Meta, Object, ObjectKey, Pod, Service, ServicePort, ServiceType,
        TargetPort,
    };
    use crate::status::{ConditionType, Reason};

    fn labels(app: &str) -> Labels {
        Labels::from([("app".to_owned(), app.to_owned())])
    }

    fn pod(name: &str, app: &str) -> Object {
        let mut meta = Meta::new("shop", name);
        meta.uid = format!("uid-{name}");
        meta.labels = labels(app);
        Object::Pod(Pod {
            meta,
            node: Some("node-a".into()),
            ips: vec!["10.244.1.10".parse().expect("ip")],
            service_account: "default".into(),
            ready: true,
            terminated: false,
            container_ports: vec![ContainerPort {
                name: Some("web".into()),
                port: 8080,
            }],
        })
    }

    /// Service `name` selecting `app`, its ports as (name, port, target, appProtocol).
    fn service(name: &str, app: &str, ports: &[(&str, u16, TargetPort, Option<&str>)]) -> Object {
        Object::Service(Service {
            meta: Meta::new("shop", name),
            allowed_upgrades: None,
            service_type: ServiceType::ClusterIp,
            cluster_ips: vec!["10.96.0.10".parse().expect("ip")],
            ports: ports
                .iter()
                .map(|(n, p, t, a)| ServicePort {
                    name: (*n).into(),
                    port: *p,
                    target_port: t.clone(),
                    app_protocol: a.map(str::to_owned),
                })
                .collect(),
            selector: Some(labels(app)),
        })
    }

    fn policy(yaml_rules: &str, target: &str) -> Object {
        let p = super::policy(&format!(
            "{}  {target}\n  rules:\n{yaml_rules}",
            super::HEAD
        ))
        .expect("valid policy");
        Object::AuthorizationPolicy(p)
    }

    fn index(objects: Vec<Object>) -> Index {
        let mut index = Index::new(IndexConfig::default());
        index.update(objects.into_iter().map(crate::index::Update::Apply));
        index
    }

    #[test]
    fn http_fields_on_http_ports_are_accepted() {
        let index = index(vec![
            pod("api-0", "api"),
            // Named target port, resolved on the pod; HTTP by appProtocol.
            service(
                "api",
                "api",
                &[("web", 80, TargetPort::Name("web".into()), Some("http"))],
            ),
            policy(
                "  - to: {ports: [8080], methods: [GET], paths: [/api/*]}\n  - to: {methods: [GET]}\n",
                "targetRefs: [{kind: Service, name: api}]",
            ),
        ]);
        let status = index
            .policy_status(&ObjectKey::new("shop", "p"))
            .expect("status");
        assert!(status.unenforceable.is_empty(), "{status}");
        assert_eq!(status.conditions[0].kind, ConditionType::Accepted);
        assert!(status.conditions[0].status);
    }

    #[test]
    fn http_fields_on_tcp_ports_are_reported_with_field_and_port() {
        let index = index(vec![
            pod("api-0", "api"),
            service(
                "api",
                "api",
                &[
                    ("http", 80, TargetPort::Number(8080), None),
                    ("postgres", 5432, TargetPort::Number(5432), None),
                ],
            ),
            pod("db-0", "db"),
            service("db", "db", &[("tcp", 5432, TargetPort::Number(5432), None)]),
            // Rule 0 names a TCP port; rule 1 names no port, so it applies
            // to the TCP port too; rule 2 has no HTTP fields.
            policy(
                "  - to: {ports: [5432], paths: [/admin]}\n  - to: {methods: [GET]}\n  - to: {ports: [5432]}\n",
                "selector: {matchLabels: {app: api}}",
            ),
        ]);
        let status = index
            .policy_status(&ObjectKey::new("shop", "p"))
            .expect("status");
        let accepted = &status.conditions[0];
        assert!(!accepted.status, "{status}");
        assert_eq!(accepted.reason, Reason::UnenforceableFields);
        let got: Vec<(Vec<String>, Option<u16>)> = status
            .unenforceable
            .iter()
            .map(|u| (u.fields.clone(), u.port))
            .collect();
        assert_eq!(
            got,
            vec![
                (vec!["spec.rules[0].to.paths".to_owned()], Some(5432)),
                (vec!["spec.rules[1].to.methods".to_owned()], Some(5432)),
            ]
        );
        assert!(
            status.to_string().contains(
                "spec.rules[0].to.paths cannot be enforced on port 5432: not an HTTP port"
            ),
            "{status}"
        );

        // A policy for the database only: no HTTP port at all.
        let index = {
            let mut index = index;
            index.apply(policy(
                "  - to: {methods: [GET, POST]}\n",
                "selector: {matchLabels: {app: db}}",
            ));
            index
        };
        let statuses = index.policy_statuses();
        assert_eq!(statuses.len(), 1, "same name: replaced");
        let u = &statuses[0].unenforceable;
        assert_eq!(u.len(), 1, "{}", statuses[0]);
        assert_eq!(u[0].port, None);
        assert!(
            u[0].message
                .contains("no workload the policy applies to has an HTTP port (ports: 5432)"),
            "{}",
            u[0].message
        );
    }
}
