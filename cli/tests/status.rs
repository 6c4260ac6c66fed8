//! `hawser status` against a control plane's admin API serving from manifests.

use std::process::Command;

use hawser_control_plane::admin::{self, AdminState};
use hawser_control_plane::discovery::DiscoveryService;
use hawser_control_plane::index::{IndexConfig, SharedIndex};
use hawser_control_plane::sources::manifests::{ManifestConfig, ManifestSource};

const MESH: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    hawser.dev/mesh: enabled
---
apiVersion: v1
kind: Service
metadata:
  name: cart
  namespace: shop
spec:
  selector:
    app: cart
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: cart-split
  namespace: shop
spec:
  parentRefs:
  - group: \"\"
    kind: Service
    name: cart
    port: 80
  rules:
  - backendRefs:
    - name: cart
      port: 80
    - name: cart-v3
      port: 80
---
apiVersion: v1
kind: Service
metadata:
  name: broken
  namespace: shop
spec:
  ports:
  - port: 99999
";

fn hawser(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hawser"))
        .args(args)
        .output()
        .expect("run hawser");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_route_conditions_and_manifest_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mesh.yaml"), MESH).expect("write");
    let index = SharedIndex::new(IndexConfig::default());
    let mut source = ManifestSource::new(ManifestConfig::new(dir.path()), index.clone());
    let report = source.report();
    source.scan();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(admin::serve(
        listener,
        AdminState {
            index: index.clone(),
            discovery: DiscoveryService::new(index),
            manifests: report,
        },
        async {
            let _ = stopped.await;
        },
    ));

    let (routes, manifests, json, nodes) = tokio::task::spawn_blocking(move || {
        (
            hawser(&["status", "routes", "--admin", &addr]),
            hawser(&["status", "manifests", "--admin", &addr]),
            hawser(&["status", "routes", "--json", "--admin", &addr]),
            hawser(&["status", "nodes", "--admin", &addr]),
        )
    })
    .await
    .expect("cli");
    let (code, out) = routes;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("shop/cart-split"), "{out}");
    assert!(out.contains("Accepted=True"), "{out}");
    assert!(out.contains("ResolvedRefs=False BackendNotFound"), "{out}");
    assert!(out.contains("hawser.dev/mesh"), "{out}");

    let (code, out) = manifests;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("invalid:") && out.contains("mesh.yaml"),
        "{out}"
    );
    assert!(out.contains("document 4"), "{out}");

    let (code, out) = json;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["routes"].as_array().map(Vec::len), Some(1), "{out}");
    let (code, out) = nodes;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"nodes\": []"), "{out}");

    let _ = stop.send(());
    server.await.expect("server");
    // A control plane that is not there gets a message naming the address.
    let (code, out) =
        tokio::task::spawn_blocking(|| hawser(&["status", "routes", "--admin", "127.0.0.1:9"]))
            .await
            .expect("cli");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("cannot reach the control plane's admin API at 127.0.0.1:9"),
        "{out}"
    );
}
