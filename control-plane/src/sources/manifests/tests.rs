//! The manifest source: documents in, errors reported, edits reaching the
//! index within a second, invalid edits keeping the last valid object.

use std::path::Path;
use std::time::{Duration, Instant};

use super::*;
use crate::index::{IndexConfig, ResourceKey, ResourceType};
use crate::model::{Kind, ObjectKey};

const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {selector: {app: web}, ports: [{name: http, port: 80}]}\n";

fn ports_of(index: &SharedIndex) -> Option<Vec<u16>> {
    let key = ResourceKey::new(ResourceType::Service, "shop/web");
    match &index.read().resource(&key)?.resource {
        crate::index::Resource::Service(s) => Some(s.ports.iter().map(|p| p.port).collect()),
        _ => None,
    }
}

fn svc_ref() -> ObjectRef {
    ObjectRef {
        kind: Kind::Service,
        key: ObjectKey::new("shop", "web"),
    }
}

#[test]
fn one_invalid_document_is_reported_and_the_rest_applies() {
    let yaml = format!(
        "{SVC}---\napiVersion: v1\nkind: Service\nmetadata: {{name: bad, namespace: shop}}\nspec: {{ports: [{{name: http, port: notaport}}]}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d, namespace: shop}}\n---\n# comment only\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec: {{containers: []}}\n"
    );
    let parsed = parse(Path::new("m.yaml"), &yaml);
    let refs: Vec<ObjectRef> = parsed.objects.iter().map(|(_, o)| o.object_ref()).collect();
    assert_eq!(
        refs,
        vec![
            svc_ref(),
            ObjectRef {
                kind: Kind::Pod,
                key: ObjectKey::new("default", "p")
            }
        ],
        "a missing namespace means default"
    );
    assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
    let e = &parsed.errors[0];
    assert_eq!((e.document, e.field.as_str()), (2, "spec.ports[0].port"));
    assert!(
        e.reason.contains("notaport") || e.reason.contains("invalid type"),
        "{}",
        e.reason
    );
    assert_eq!(e.object.as_ref().map(|o| o.key.name.as_str()), Some("bad"));
    assert!(
        e.to_string()
            .starts_with("m.yaml: document 2 (Service shop/bad): spec.ports[0].port: "),
        "{e}"
    );
    assert_eq!(
        parsed.invalid,
        vec![ObjectRef {
            kind: Kind::Service,
            key: ObjectKey::new("shop", "bad")
        }]
    );
    assert_eq!(parsed.ignored, vec!["apps/v1 Deployment d".to_string()]);
    assert!(!parsed.unattributed_errors);
}

#[test]
fn unidentifiable_documents_and_yaml_errors() {
    let cases = [
        ("- just\n- a list\n", "", "mapping"),
        ("kind: Service\n", "", "apiVersion and kind"),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: a}\n",
            "metadata.name",
            "required",
        ),
        (
            "apiVersion: v2\nkind: Service\nmetadata: {name: a}\n",
            "apiVersion",
            "not a supported version",
        ),
        (
            "apiVersion: v1\nkind: ServiceList\nitems: []\n",
            "kind",
            "List",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: a\n",
            "",
            "invalid YAML",
        ),
    ];
    for (yaml, field, reason) in cases {
        let parsed = parse(Path::new("x.yaml"), yaml);
        assert!(parsed.objects.is_empty(), "{yaml}");
        let e = parsed
            .errors
            .first()
            .unwrap_or_else(|| panic!("{yaml}: no error"));
        assert_eq!(e.field, field, "{yaml}");
        assert!(e.reason.contains(reason), "{yaml}: {}", e.reason);
        assert!(parsed.unattributed_errors, "{yaml}");
    }
}

#[test]
fn unknown_fields_and_duplicate_keys_are_refused_like_the_api_server_does() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: shop}\nspec:\n  selecter: {app: a}\n  ports:\n  - {port: 80, targetPrt: 8080}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {a: b}\n  labels: {c: d}\n";
    let parsed = parse(Path::new("x.yaml"), yaml);
    assert!(parsed.objects.is_empty());
    let errors: Vec<String> = parsed.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "x.yaml: document 1 (Service shop/a): spec.ports[0].targetPrt: unknown field",
            "x.yaml: document 1 (Service shop/a): spec.selecter: unknown field",
            "x.yaml: document 2: invalid YAML: metadata: duplicate entry with key \"labels\" at line 12 column 3",
        ]
    );
}

#[test]
fn files_own_their_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = SharedIndex::new(IndexConfig::default());
    let mut source = ManifestSource::new(ManifestConfig::new(dir.path()), index.clone());
    std::fs::write(dir.path().join("a.yaml"), SVC).expect("write");
    std::fs::write(
        dir.path().join("b.yaml"),
        SVC.replace("port: 80", "port: 81"),
    )
    .expect("write");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    std::fs::write(
        dir.path().join("sub/c.yml"),
        SVC.replace("name: web", "name: deep"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join(".hidden.yaml"),
        SVC.replace("name: web", "name: hidden"),
    )
    .expect("write");
    source.scan();
    assert_eq!(
        ports_of(&index),
        Some(vec![80]),
        "the first file defines it"
    );
    let report = source.report().borrow().clone();
    assert_eq!(report.errors.len(), 1);
    assert!(
        report.errors[0].reason.contains("already defined in"),
        "{}",
        report.errors[0]
    );
    assert!(index.read().contains(&ObjectRef {
        kind: Kind::Service,
        key: ObjectKey::new("shop", "deep")
    }));
    assert!(!index.read().contains(&ObjectRef {
        kind: Kind::Service,
        key: ObjectKey::new("shop", "hidden")
    }));
    // Removing the owning file removes the object (the duplicate stays rejected until rescanned).
    std::fs::remove_file(dir.path().join("a.yaml")).expect("rm");
    source.scan();
    assert_eq!(ports_of(&index), None);
    // ClusterIPs are allocated for Services without one.
    let key = ResourceKey::new(ResourceType::Service, "shop/deep");
    match &index.read().resource(&key).expect("deep").resource {
        crate::index::Resource::Service(s) => {
            assert_eq!(s.vips.len(), 1);
            assert!(s.vips[0].to_string().starts_with("10.96."), "{:?}", s.vips);
        }
        other => panic!("{other:?}"),
    }
}

async fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_reach_the_index_within_a_second_and_invalid_edits_keep_the_last_valid_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("svc.yaml");
    let index = SharedIndex::new(IndexConfig::default());
    let source = ManifestSource::new(ManifestConfig::new(dir.path()), index.clone());
    let report = source.report();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(source.run(shutdown));
    let mut versions = index.subscribe();
    let second = Duration::from_secs(1);

    std::fs::write(&file, SVC).expect("write");
    within(second, "create", || ports_of(&index) == Some(vec![80])).await;
    // The version is published just after the state it names.
    within(second, "subscribers are woken", || {
        versions.has_changed().expect("index alive")
    })
    .await;
    versions.mark_unchanged();

    std::fs::write(&file, SVC.replace("port: 80", "port: 8080")).expect("write");
    within(second, "edit", || ports_of(&index) == Some(vec![8080])).await;
    tokio::time::timeout(second, versions.changed())
        .await
        .expect("woken within 1 s")
        .expect("alive");

    // An invalid edit is reported; the previous version stays in force.
    std::fs::write(&file, SVC.replace("port: 80", "port: 70000")).expect("write");
    within(second, "invalid edit reported", || {
        !report.borrow().errors.is_empty()
    })
    .await;
    let e = report.borrow().errors[0].clone();
    assert_eq!(
        (e.document, e.field.as_str()),
        (1, "spec.ports[0].port"),
        "{e}"
    );
    assert!(e.reason.contains("70000"), "{e}");
    assert_eq!(e.file, file);
    assert_eq!(
        ports_of(&index),
        Some(vec![8080]),
        "last valid version kept"
    );
    assert!(index.read().contains(&svc_ref()));

    // Fixing it clears the report.
    std::fs::write(&file, SVC.replace("port: 80", "port: 9090")).expect("write");
    within(second, "fix", || ports_of(&index) == Some(vec![9090])).await;
    assert!(report.borrow().errors.is_empty());

    std::fs::remove_file(&file).expect("rm");
    within(second, "delete", || ports_of(&index).is_none()).await;
    assert!(!index.read().contains(&svc_ref()));

    stop.send(true).expect("stop");
    tokio::time::timeout(second, task)
        .await
        .expect("stops promptly")
        .expect("no panic");
}

#[test]
fn a_services_upgrade_allow_list_is_read_from_its_annotation() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  namespace: shop\n  annotations: {hawser.dev/allowed-upgrades: 'WebSocket, spdy/3.1'}\nspec:\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: b\n  namespace: shop\n  annotations: {hawser.dev/allowed-upgrades: ''}\nspec:\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: c, namespace: shop}\nspec:\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: d\n  namespace: shop\n  annotations: {hawser.dev/allowed-upgrades: 'web socket'}\nspec:\n  ports: [{port: 80}]\n";
    let parsed = parse(Path::new("x.yaml"), yaml);
    let lists: Vec<Option<Vec<String>>> = parsed
        .objects
        .iter()
        .map(|(_, o)| match o {
            Object::Service(s) => s.allowed_upgrades.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        lists,
        [
            Some(vec!["websocket".to_owned(), "spdy/3.1".to_owned()]),
            Some(vec![]),
            None,
        ]
    );
    let errors: Vec<String> = parsed.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "x.yaml: document 4 (Service shop/d): metadata.annotations[hawser.dev/allowed-upgrades]: \"web socket\" is not a protocol name (a token, optionally with /version)"
        ]
    );
}
