//! The index: per-node views, versions, deltas, policy scoping, the CA lookup.

use std::collections::BTreeMap;

use hawser_control_plane::index::{
    Index, IndexConfig, NodeSnapshot, ResourceKey, ResourceType, Versioned,
};
use hawser_control_plane::model::{Kind, Meta, Namespace, Object, ObjectKey, ObjectRef, Pod};

use crate::support::Mesh;

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {hawser.dev/mesh: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {selector: {app: cart}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: shop}
spec: {selector: {app: other}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-1, namespace: shop, uid: 11111111-0000-0000-0000-000000000001, labels: {app: cart}}
spec: {nodeName: node-a, serviceAccountName: cart, containers: [{name: c, image: x}]}
status: {podIP: 10.0.0.1, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {nodeName: node-b, containers: [{name: c, image: x}]}
status: {podIP: 10.0.0.2, conditions: [{type: Ready, status: "True"}]}
"#;

const POLICY: &str = r#"
apiVersion: policy.hawser.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: cart-allow, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: cart}]
  rules: [{from: [{serviceAccount: web}], to: {ports: [8080], methods: [GET], paths: [/api/*]}}]
"#;

fn apply(snapshot: &mut NodeSnapshot, delta: &hawser_control_plane::index::NodeDelta) {
    assert_eq!(
        delta.from_version, snapshot.version,
        "delta does not start at the held version"
    );
    for k in &delta.removed {
        snapshot.resources.remove(k);
    }
    for (k, v) in &delta.upserted {
        snapshot.resources.insert(k.clone(), v.clone());
    }
    snapshot.version = delta.version;
}

/// Follows every edit with deltas and checks they rebuild the snapshot.
fn assert_deltas_rebuild(mesh: &mut Mesh, edits: &[(&str, Option<&str>)]) {
    let mut held: BTreeMap<&str, NodeSnapshot> = ["node-a", "node-b", "node-c"]
        .into_iter()
        .map(|n| (n, mesh.index.read().snapshot(n)))
        .collect();
    for (file, contents) in edits {
        match contents {
            Some(c) => mesh.write(file, c),
            None => mesh.remove(file),
        };
        for (node, snapshot) in held.iter_mut() {
            let index = mesh.index.read();
            let delta = index
                .delta(node, snapshot.version)
                .expect("delta available");
            apply(snapshot, &delta);
            assert_eq!(
                *snapshot,
                index.snapshot(node),
                "{node} after editing {file}"
            );
        }
    }
}

fn policy_key() -> ResourceKey {
    ResourceKey::new(ResourceType::AuthorizationPolicy, "shop/cart-allow")
}

#[test]
fn policies_reach_only_nodes_hosting_their_workloads_and_deltas_rebuild_snapshots() {
    let mut mesh = Mesh::new(&[("base.yaml", BASE)]);
    let moved = BASE.replace(
        "spec: {nodeName: node-a, serviceAccountName: cart",
        "spec: {nodeName: node-c, serviceAccountName: cart",
    );
    let relabelled = BASE.replace("labels: {app: web}", "labels: {app: cart}");
    assert_deltas_rebuild(
        &mut mesh,
        &[
            ("policy.yaml", Some(POLICY)),
            (
                "policy.yaml",
                Some(&POLICY.replace("methods: [GET]", "methods: [GET, POST]")),
            ),
            ("base.yaml", Some(&moved)),
            ("base.yaml", Some(&relabelled)),
            ("policy.yaml", None),
        ],
    );

    // Scoping, checked explicitly.
    mesh.write("base.yaml", BASE);
    mesh.write("policy.yaml", POLICY);
    let index = mesh.index.read();
    assert!(
        index
            .snapshot("node-a")
            .resources
            .contains_key(&policy_key())
    );
    assert!(
        !index
            .snapshot("node-b")
            .resources
            .contains_key(&policy_key()),
        "web-1 is not behind cart"
    );
    let cart = index
        .snapshot("node-b")
        .resources
        .into_values()
        .find_map(|v| match v.resource {
            hawser_control_plane::index::Resource::Workload(w) if w.name == "cart-1" => Some(w),
            _ => None,
        })
        .expect("cart-1 is visible everywhere");
    assert_eq!(
        cart.authorization_policies,
        vec!["shop/cart-allow".to_string()]
    );
    assert_eq!(cart.spiffe_id, "spiffe://cluster.local/ns/shop/sa/cart");
    assert!(cart.enrolled);
}

#[test]
fn a_readiness_change_touches_only_the_pod_and_services_selecting_it() {
    let mut mesh = Mesh::new(&[("base.yaml", BASE)]);
    let from = mesh.index.read().version();
    mesh.write(
        "base.yaml",
        &BASE.replace(
            "podIP: 10.0.0.1, conditions: [{type: Ready, status: \"True\"}]",
            "podIP: 10.0.0.1, conditions: [{type: Ready, status: \"False\"}]",
        ),
    );
    let index = mesh.index.read();
    assert_eq!(index.version(), from + 1, "one batch, one version");
    let delta = index.delta("node-b", from).expect("delta");
    let keys: Vec<&ResourceKey> = delta.upserted.keys().collect();
    assert_eq!(
        keys,
        vec![
            &ResourceKey::new(
                ResourceType::Workload,
                "11111111-0000-0000-0000-000000000001"
            ),
            &ResourceKey::new(ResourceType::Service, "shop/cart"),
        ]
    );
    assert!(delta.removed.is_empty());
    // An unchanged rescan changes nothing.
    drop(index);
    let v = mesh.index.read().version();
    assert_eq!(
        mesh.write(
            "base.yaml",
            &BASE.replace(
                "podIP: 10.0.0.1, conditions: [{type: Ready, status: \"True\"}]",
                "podIP: 10.0.0.1, conditions: [{type: Ready, status: \"False\"}]"
            )
        ),
        v
    );
    assert!(
        mesh.index
            .read()
            .delta("node-a", v)
            .expect("delta")
            .is_empty()
    );
}

#[test]
fn enrollment_follows_the_namespace_label() {
    let mut mesh = Mesh::new(&[("base.yaml", BASE)]);
    let enrolled = |mesh: &Mesh| {
        mesh.view("node-a")
            .workload_by_name("shop", "web-1")
            .expect("web-1")
            .enrolled
    };
    assert!(enrolled(&mesh));
    mesh.write(
        "base.yaml",
        &BASE.replace("labels: {hawser.dev/mesh: enabled}", "labels: {}"),
    );
    assert!(!enrolled(&mesh));
}

#[test]
fn pod_identity_for_the_ca() {
    let mut mesh = Mesh::new(&[("base.yaml", BASE)]);
    let id = mesh
        .index
        .read()
        .pod_identity("shop", "cart-1")
        .expect("cart-1");
    assert_eq!(
        (
            id.uid.as_str(),
            id.node.as_str(),
            id.service_account.as_str()
        ),
        ("11111111-0000-0000-0000-000000000001", "node-a", "cart")
    );
    let web = mesh
        .index
        .read()
        .pod_identity("shop", "web-1")
        .expect("web-1");
    assert_eq!(web.service_account, "default");
    assert!(!web.uid.is_empty(), "file mode fills UIDs in");
    assert_eq!(mesh.index.read().pod_identity("shop", "nope"), None);
    mesh.write(
        "base.yaml",
        &BASE.replace("spec: {nodeName: node-b, containers", "spec: {containers"),
    );
    assert_eq!(
        mesh.index.read().pod_identity("shop", "web-1"),
        None,
        "unscheduled pods have no node"
    );
}

fn pod(name: &str, node: &str) -> Object {
    let mut meta = Meta::new("ns", name);
    meta.uid = format!("uid-{name}");
    Object::Pod(Pod {
        meta,
        node: Some(node.into()),
        ips: vec!["10.9.0.1".parse().expect("ip")],
        service_account: "default".into(),
        ready: true,
        terminated: false,
        container_ports: Vec::new(),
    })
}

#[test]
fn a_node_too_far_behind_gets_a_snapshot() {
    let mut index = Index::new(IndexConfig {
        change_log_capacity: 4,
        ..IndexConfig::default()
    });
    index.apply(Object::Namespace(Namespace {
        name: "ns".into(),
        labels: Default::default(),
    }));
    let v0 = index.apply(pod("p0", "n"));
    for i in 1..=5 {
        index.apply(pod(&format!("p{i}"), "n"));
    }
    assert!(
        index.delta("n", v0).is_none(),
        "the log no longer reaches v{v0}"
    );
    let recent = index.version() - 2;
    let delta = index
        .delta("n", recent)
        .expect("recent versions are covered");
    assert_eq!(delta.upserted.len(), 2);
    assert!(
        index.delta("n", index.version() + 1).is_none(),
        "a version from the future"
    );
    index.delete(&ObjectRef {
        kind: Kind::Pod,
        key: ObjectKey::new("ns", "p5"),
    });
    let delta = index.delta("n", index.version() - 1).expect("delta");
    assert_eq!(
        delta.removed,
        vec![ResourceKey::new(ResourceType::Workload, "uid-p5")]
    );
    let _: Option<&Versioned> = index.resource(&ResourceKey::new(ResourceType::Workload, "uid-p0"));
    assert!(
        index
            .resource(&ResourceKey::new(ResourceType::Workload, "uid-p0"))
            .is_some()
    );
}
