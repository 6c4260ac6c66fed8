//! Config push end to end: manifests on disk → the control plane's index →
//! the discovery stream (mTLS, node certificate) → a node's config.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hawser_api::proto::discovery::{ResourceType, resource::Kind};
use hawser_node_proxy::discovery::{DiscoveryClient, NodeConfig};
use hawser_tests::identity::LocalControlPlane;
use tokio::sync::watch;

const NAMESPACE: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels:
    hawser.dev/mesh: enabled
";

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: demo
  uid: uid-web-1
  labels:
    app: web
spec:
  nodeName: node-1
  serviceAccountName: web
  containers:
  - name: web
    image: echo
    ports:
    - containerPort: 8080
status:
  podIP: 10.244.1.5
  conditions:
  - type: Ready
    status: \"True\"
";

fn service(port: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
spec:
  clusterIP: 10.96.0.10
  selector:
    app: web
  ports:
  - name: http
    port: {port}
    targetPort: 8080
"
    )
}

fn write(path: &Path, text: &str) {
    // Write then rename, as editors and kubectl-like tools do.
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("write manifest");
    std::fs::rename(&tmp, path).expect("rename manifest");
}

/// The mesh manifests with the Service on `port`.
fn mesh(port: &str) -> String {
    format!("{NAMESPACE}---\n{POD}---\n{}", service(port))
}

/// A control plane serving a manifest file (the mesh on port 80) and node-1
/// bootstrapped against it. The temp dir lives as long as the first value.
async fn serve_mesh() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    LocalControlPlane,
    Arc<hawser_node_proxy::identity::ControlPlaneClient>,
) {
    hawser_api::tls::install_crypto_provider();
    let manifests = tempfile::tempdir().expect("tempdir");
    let file = manifests.path().join("mesh.yaml");
    write(&file, &mesh("80"));
    let cp = LocalControlPlane::with_manifests(manifests.path())
        .await
        .expect("control plane");
    let token = cp.add_node("node-1", "t1").expect("node token");
    let node = cp.node_client("node-1", token).await.expect("bootstrap");
    (manifests, file, cp, node)
}

fn service_ports(cfg: &NodeConfig) -> Option<Vec<u32>> {
    match cfg.get(ResourceType::Service, "demo/web")?.kind.as_ref()? {
        Kind::Service(s) => Some(s.ports.iter().map(|p| p.port).collect()),
        _ => None,
    }
}

/// Waits until `check` holds for the node's config; returns how long it took.
async fn wait_for(
    rx: &mut watch::Receiver<Arc<NodeConfig>>,
    limit: Duration,
    check: impl Fn(&NodeConfig) -> bool,
) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(limit, rx.wait_for(|c| check(c)))
        .await
        .unwrap_or_else(|_| panic!("config did not converge within {limit:?}"))
        .expect("discovery client alive");
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_edits_reach_the_node_within_a_second() {
    let (_manifests, file, cp, node) = serve_mesh().await;
    let client = DiscoveryClient::new(node.channel(), "node-1");
    let mut config = client.config();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(client.run(stopped));

    wait_for(&mut config, Duration::from_secs(5), |c| {
        service_ports(c) == Some(vec![80])
    })
    .await;
    assert!(
        config.borrow().workloads().any(|w| w.uid == "uid-web-1"),
        "the pod is a workload of the node"
    );

    // Edit: the change is on the node within a second.
    write(&file, &mesh("81"));
    let took = wait_for(&mut config, Duration::from_secs(1), |c| {
        service_ports(c) == Some(vec![81])
    })
    .await;
    println!("edit reached the node in {took:?}");

    // An invalid edit is reported (file, document, field) and changes nothing.
    let held = config.borrow().version();
    write(&file, &mesh("70000"));
    let mut report = cp.manifest_report.clone().expect("manifest source");
    let report = tokio::time::timeout(
        Duration::from_secs(2),
        report.wait_for(|r| !r.errors.is_empty()),
    )
    .await
    .expect("the invalid document is reported")
    .expect("source alive")
    .clone();
    let error = report.errors[0].to_string();
    assert!(error.contains("mesh.yaml"), "{error}");
    assert!(error.contains("document 3"), "{error}");
    assert!(error.contains("spec.ports[0].port"), "{error}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        service_ports(&config.borrow()),
        Some(vec![81]),
        "previous Service stays"
    );
    assert_eq!(config.borrow().version(), held);

    // Delete: the Service leaves the node within a second.
    std::fs::remove_file(&file).expect("delete manifest");
    let took = wait_for(&mut config, Duration::from_secs(1), |c| {
        service_ports(c).is_none()
    })
    .await;
    println!("delete reached the node in {took:?}");

    // The control plane goes away: the node keeps its last config.
    write(&file, &mesh("82"));
    wait_for(&mut config, Duration::from_secs(1), |c| {
        service_ports(c) == Some(vec![82])
    })
    .await;
    drop(cp);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(service_ports(&config.borrow()), Some(vec![82]));
    stop.send(true).expect("stop");
    task.await.expect("client task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_node_resumes_with_a_delta() {
    use hawser_api::proto::discovery::discovery_client::DiscoveryClient as Raw;
    use hawser_api::proto::discovery::{
        DiscoveryRequest, Subscribe, discovery_request, discovery_response,
    };

    let (_manifests, file, cp, node) = serve_mesh().await;

    // Opens a stream resuming from `from` and returns its first message.
    let first = |from: u64| {
        let channel = node.channel();
        async move {
            let subscribe = DiscoveryRequest {
                kind: Some(discovery_request::Kind::Subscribe(Subscribe {
                    node_name: "node-1".into(),
                    resume_from_version: from,
                })),
            };
            let mut stream = Raw::new(channel)
                .max_decoding_message_size(64 << 20)
                .stream(tokio_stream::iter([subscribe]))
                .await
                .expect("stream")
                .into_inner();
            stream
                .message()
                .await
                .expect("message")
                .expect("first message")
                .kind
        }
    };
    let wait_version = |min: u64| {
        let mut v = cp.index.subscribe();
        async move {
            tokio::time::timeout(Duration::from_secs(2), v.wait_for(|v| *v >= min))
                .await
                .expect("index converges")
                .map(|v| *v)
                .expect("index alive")
        }
    };
    let v1 = wait_version(1).await;
    let Some(discovery_response::Kind::Snapshot(snapshot)) = first(0).await else {
        panic!("a new node gets a snapshot");
    };
    assert_eq!(snapshot.version, v1);

    write(&file, &mesh("81"));
    let v2 = wait_version(v1 + 1).await;
    match first(v1).await {
        Some(discovery_response::Kind::Delta(d)) => {
            assert_eq!((d.from_version, d.version), (v1, v2));
            let names: Vec<_> = d
                .upserted
                .iter()
                .filter_map(|r| r.name.as_ref())
                .map(|n| n.name.as_str())
                .collect();
            assert_eq!(names, ["demo/web"], "only what changed is sent");
            assert!(d.removed.is_empty());
        }
        other => panic!("a resuming node gets a delta, got {other:?}"),
    }
    // A version from the future (the control plane restarted) gets a snapshot.
    assert!(matches!(
        first(v2 + 1000).await,
        Some(discovery_response::Kind::Snapshot(_))
    ));
}
