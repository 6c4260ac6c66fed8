//! The CRD on disk matches the Rust type; validation rejects what cannot be enforced.

use super::*;
use crate::model::{AuthorizationTarget, PolicyPath};

const CRD_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crds/authorizationpolicies.policy.hawser.dev.yaml"
);

#[test]
fn crd_on_disk_matches_the_type() {
    let generated = crd_yaml().expect("CRD serializes");
    if std::env::var_os("HAWSER_UPDATE_CRDS").is_some() {
        std::fs::write(CRD_PATH, &generated).expect("write CRD");
    }
    let on_disk = std::fs::read_to_string(CRD_PATH).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{CRD_PATH} is out of date: run `HAWSER_UPDATE_CRDS=1 cargo test -p hawser-control-plane crd`"
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
