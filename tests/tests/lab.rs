//! The lab's network: nodes, underlay, pods attached by Debian's real CNI
//! plugins, routing between nodes, and a clean teardown. Runs as root (CI does);
//! fails, never skips, when it cannot set up.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

use hawser_tests::lab::apply::Mode;
use hawser_tests::lab::{Lab, LabConfig, LabError, sys};

/// Removes the lab even when an assertion fails.
use hawser_tests::lab::LabGuard as Guard;

fn config(tag: &str) -> (LabConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = format!("hl{}{tag}", std::process::id() % 10000);
    (LabConfig::new(&name, 2, dir.path().join("lab")), dir)
}

/// What the host looks like: this lab's namespaces, links, nft tables,
/// ip_forward. (Other tests' labs come and go concurrently, so only namespaces
/// with this lab's prefix are compared.)
fn host_snapshot(prefix: &str) -> (Vec<String>, String, String, String) {
    let links = sys::ip(["-o", "link"]).expect("ip link");
    // Link indexes and counters are stable; names and flags are what matter.
    let links = links
        .lines()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n");
    (
        sys::netns_with_prefix(prefix),
        links,
        sys::run("nft", ["list", "tables"]).expect("nft list tables"),
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("ip_forward"),
    )
}

#[test]
fn pods_on_two_nodes_reach_each_other_and_down_restores_the_host() {
    let (cfg, _dir) = config("a");
    let prefix = format!("{}-", cfg.name);
    let before = host_snapshot(&prefix);
    let state_dir: PathBuf = cfg.state_dir.clone();
    let mut guard = Guard(Some(Lab::up(cfg).expect("lab up")));
    let lab = guard.lab();

    // The control plane runs in the underlay and answers on its admin API.
    let cp = lab
        .state()
        .processes
        .iter()
        .find(|p| p.role == "control-plane")
        .expect("control plane")
        .clone();
    assert!(sys::alive(cp.pid));
    let ready = lab
        .in_underlay(|| {
            let mut s = TcpStream::connect(hawser_tests::lab::ADMIN_ADDR)?;
            s.write_all(b"GET /ready HTTP/1.0\r\nHost: admin\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<_, std::io::Error>(out)
        })
        .expect("enter underlay")
        .expect("admin API");
    assert!(
        ready.starts_with("HTTP/1.0 200") && ready.ends_with("ready\n"),
        "{ready}"
    );
    // hawser-cni is chained last by its own installer, on every node.
    for node in &lab.state().nodes {
        let path = lab.cni_conf_dir(node).join("10-hawser-lab.conflist");
        let conf: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("conflist")).expect("json");
        let types: Vec<_> = conf["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .map(|p| p["type"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(types, ["bridge", "hawser-cni"], "{conf}");
    }

    // Pods outside enrolled namespaces pass hawser-cni untouched.
    let a = lab
        .add_pod("default", "a", "uid-a", "node-1")
        .expect("pod a");
    let b = lab
        .add_pod("default", "b", "uid-b", "node-2")
        .expect("pod b");
    let (a_ip, b_ip) = (a.ip.expect("a has an IP"), b.ip.expect("b has an IP"));
    assert_eq!(a_ip.octets()[..3], [10, 244, 1], "{a_ip}");
    assert_eq!(b_ip.octets()[..3], [10, 244, 2], "{b_ip}");
    // Loopback is up in the pod (the loopback plugin ran).
    let lo = lab
        .exec("default", "a", "ip", &["-o", "link", "show", "lo"])
        .expect("ip link");
    assert!(lo.contains("UP"), "{lo}");

    // TCP from a pod on node-1 to a pod on node-2, across the underlay.
    let listener = sys::in_netns(&b.netns, move || TcpListener::bind((b_ip, 8080)))
        .expect("enter b")
        .expect("bind in b");
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).expect("read");
        conn.write_all(&buf).expect("echo");
        peer
    });
    let echoed = sys::in_netns(&a.netns, move || {
        let mut c = TcpStream::connect((b_ip, 8080))?;
        c.write_all(b"hello")?;
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf)?;
        Ok::<_, std::io::Error>(buf)
    })
    .expect("enter a")
    .expect("connect a -> b");
    assert_eq!(&echoed, b"hello");
    // Native routing: b sees a's own pod IP (no NAT on the way).
    assert_eq!(server.join().expect("server").ip(), a_ip);

    // Deleting a pod runs CNI DEL: its namespace and its IP lease are gone.
    let ipam = state_dir
        .join("nodes/node-2/ipam/hawser-lab")
        .join(b_ip.to_string());
    assert!(ipam.exists(), "host-local leased {b_ip}");
    lab.delete_pod("default", "b").expect("delete b");
    assert!(!sys::netns_exists(&b.netns));
    assert!(!ipam.exists(), "lease released");

    let lab = guard.0.take().expect("lab");
    lab.down().expect("down");
    assert!(!sys::alive(cp.pid), "the control plane was stopped");
    assert!(!state_dir.exists());
    assert_eq!(
        host_snapshot(&prefix),
        before,
        "the host is exactly as before"
    );
    // Down again: there is nothing left to remove, and it says so.
    assert!(matches!(
        Lab::load(&LabConfig::new("x", 2, &state_dir)),
        Err(LabError::NotUp(_))
    ));
}

#[test]
fn up_after_a_crash_removes_the_stale_lab_first() {
    let (cfg, _dir) = config("b");
    let prefix = format!("{}-", cfg.name);
    let crashed = Lab::up(cfg.clone()).expect("first up");
    let mut crashed_pods = Guard(Some(crashed));
    crashed_pods
        .0
        .as_mut()
        .expect("lab")
        .add_pod("default", "a", "uid-a", "node-1")
        .expect("pod");
    // Simulate a crash: the lab is forgotten without `down`.
    std::mem::forget(crashed_pods.0.take());
    assert_eq!(
        sys::netns_with_prefix(&prefix).len(),
        4,
        "ul + 2 nodes + 1 pod"
    );

    let guard = Guard(Some(Lab::up(cfg).expect("second up")));
    let names = sys::netns_with_prefix(&prefix);
    assert_eq!(
        names.len(),
        3,
        "ul + 2 nodes, the stale pod is gone: {names:?}"
    );
    assert!(guard.0.as_ref().expect("lab").state().pods.is_empty());
    drop(guard);
    assert!(sys::netns_with_prefix(&prefix).is_empty());
}

#[test]
fn failed_pod_creation_leaves_nothing_behind() {
    let (cfg, _dir) = config("c");
    let prefix = format!("{}-", cfg.name);
    let mut guard = Guard(Some(Lab::up(cfg).expect("up")));
    let lab = guard.lab();
    let err = lab.add_pod("default", "a", "uid-a", "node-9").unwrap_err();
    assert!(
        err.to_string().contains("no node named \"node-9\""),
        "{err}"
    );
    lab.add_pod("default", "a", "uid-a", "node-1").expect("pod");
    let err = lab.add_pod("default", "a", "uid-a", "node-1").unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(sys::netns_with_prefix(&prefix).len(), 4);
}

const APP: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels:
      app: echo
  template:
    metadata:
      labels:
        app: echo
    spec:
      containers:
      - name: echo
        image: hawser/echo
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: shop
spec:
  selector:
    app: echo
  ports:
  - port: 80
    targetPort: 8080
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

/// Mistakes an API server refuses, around one valid Service; the last
/// document's flow mapping is never closed.
const MISTAKES: &str = "apiVersion: v1
kind: ConfigMapp
metadata: {name: x, namespace: shop}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: y, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: nowhere}
spec:
  containers: [{name: c, image: echo}]
---
apiVersion: v1
kind: Service
metadata: {name: s, namespace: shop}
spec:
  selecter: {app: echo}
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: shop}
spec:
  replica: 2
  selector: {matchLabels: {app: d}}
  template:
    metadata: {labels: {app: d}}
    spec:
      containers: [{name: c, image: echo}]
---
apiVersion: v1
kind: Service
metadata: {name: good, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{port: 81, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: typo, namespace: shop}
spec:
  ports:
  - {name: http, port: 80, targetPort: http
";

/// One HTTP/1.0 GET from inside `netns`; returns the response text.
fn http_get(netns: &str, addr: std::net::SocketAddr) -> String {
    sys::in_netns(netns, move || {
        let mut s = TcpStream::connect(addr)?;
        s.write_all(b"GET /hello HTTP/1.0\r\nHost: echo\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok::<_, std::io::Error>(out)
    })
    .expect("enter netns")
    .unwrap_or_else(|e| format!("error: {e}"))
}

#[test]
fn apply_runs_pods_and_reports_bad_documents() {
    let (cfg, dir) = config("d");
    let mut guard = Guard(Some(Lab::up(cfg).expect("up")));
    let lab = guard.lab();
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, APP).expect("write manifests");

    let report = lab.apply(&file).expect("apply");
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert!(
        report.errors[0].contains("document 4"),
        "{:?}",
        report.errors
    );
    assert!(
        report.errors[0].contains("spec.ports[0].port"),
        "{:?}",
        report.errors
    );

    // Two replicas, scheduled round-robin, each running the echo backend.
    let pods: Vec<_> = lab
        .state()
        .pods
        .iter()
        .filter(|p| p.namespace == "shop")
        .cloned()
        .collect();
    assert_eq!(pods.len(), 2, "{:?}", report.applied);
    assert_ne!(pods[0].node, pods[1].node, "round-robin");
    let target = std::net::SocketAddr::from((pods[1].ip.expect("ip"), 8080));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let answer = loop {
        let a = http_get(&pods[0].netns, target);
        if a.contains("Hostname=") || std::time::Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        answer.contains(&format!("Hostname={}", pods[1].name)),
        "{answer}"
    );
    assert!(answer.contains("URL=/hello"), "{answer}");

    // The control plane sees the Pods as kubelet reports them: node, IP, Ready.
    let published = std::fs::read_to_string(
        lab.manifests_dir()
            .join("pods")
            .join(format!("shop-{}.yaml", pods[1].name)),
    )
    .expect("pod object");
    assert!(
        published.contains(&format!("nodeName: {}", pods[1].node)),
        "{published}"
    );
    assert!(
        published.contains(&format!("podIP: {}", pods[1].ip.expect("ip"))),
        "{published}"
    );
    // The kube-proxy stand-in: the Service's ClusterIP reaches both replicas,
    // from a pod on either node (including the hairpin to a local endpoint).
    let vip = lab
        .state()
        .services
        .iter()
        .find(|s| s.name == "echo")
        .and_then(|s| s.cluster_ip)
        .expect("ClusterIP allocated");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let a = http_get(&pods[0].netns, std::net::SocketAddr::from((vip, 80)));
        if let Some(h) = a.lines().find_map(|l| l.strip_prefix("Hostname=")) {
            seen.insert(h.to_owned());
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "both endpoints answer the VIP: {seen:?}");
    let published_svc = std::fs::read_to_string(
        lab.manifests_dir()
            .join("applied")
            .join("service-shop-echo.yaml"),
    )
    .expect("service object");
    assert!(
        published_svc.contains(&format!("clusterIP: {vip}")),
        "{published_svc}"
    );
    // Cluster DNS through the pod's resolv.conf and search path, as CoreDNS answers.
    for name in ["echo", "echo.shop", "echo.shop.svc.cluster.local"] {
        let out = lab
            .exec("shop", &pods[0].name, "getent", &["hosts", name])
            .expect("getent");
        assert!(out.starts_with(&format!("{vip} ")), "{name}: {out}");
    }
    let err = lab
        .exec("shop", &pods[0].name, "getent", &["hosts", "nope"])
        .unwrap_err();
    assert!(
        matches!(err, LabError::Command { .. }),
        "unknown names do not resolve: {err}"
    );
    // The valid Service went to the control plane, the broken one did not.
    let applied = lab.manifests_dir().join("applied");
    assert!(applied.join("service-shop-echo.yaml").exists());
    assert!(!applied.join("service-shop-broken.yaml").exists());

    // Applying again changes nothing.
    let again = lab.apply(&file).expect("apply again");
    assert_eq!(lab.state().pods.len(), 2, "{:?}", again.applied);
    assert!(
        again
            .applied
            .contains(&"service shop/echo unchanged".to_owned()),
        "{:?}",
        again.applied
    );

    // What an API server refuses, the lab refuses, each document whole and
    // in the file's order; a dry run changes nothing.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, MISTAKES).expect("write manifests");
    let files_before = std::fs::read_dir(&applied).expect("applied").count();
    let refused = lab.apply(&bad).expect("apply mistakes");
    let reasons: Vec<&str> = refused
        .errors
        .iter()
        .map(|e| e.split_once("bad.yaml: ").expect("file named").1)
        .collect();
    assert_eq!(reasons.len(), 6, "{reasons:#?}");
    for (got, want) in reasons.iter().zip([
        "document 1 (ConfigMapp shop/x): kind: no matches for kind \"ConfigMapp\" in version \"v1\"",
        "document 2 (ConfigMap shop/y): kind: the lab does not run ConfigMap objects",
        "document 3 (Pod nowhere/p): metadata.namespace: namespace \"nowhere\" not found",
        "document 4 (Service shop/s): spec.selecter: unknown field",
        "document 5 (Deployment shop/d): spec.replica: unknown field",
        "document 7: invalid YAML: did not find expected ',' or '}' at line",
    ]) {
        assert!(got.starts_with(want), "{got}\n  wanted {want}");
    }
    assert_eq!(refused.applied, ["service shop/good created"]);
    assert!(applied.join("service-shop-good.yaml").exists());
    assert_eq!(lab.state().pods.len(), 2, "nothing of the refused Pod ran");
    let dry = lab.apply_with(&file, Mode::DryRun).expect("dry run");
    assert!(
        dry.applied
            .contains(&"deployment shop/echo unchanged (2 replicas) (dry run)".to_owned())
    );
    std::fs::write(
        &bad,
        APP.replace(
            "name: echo\n  namespace: shop\nspec:\n  selector",
            "name: other\n  namespace: shop\nspec:\n  selector",
        ),
    )
    .expect("write manifests");
    let dry = lab.apply_with(&bad, Mode::DryRun).expect("dry run");
    assert!(
        dry.applied
            .contains(&"service shop/other created (dry run)".to_owned()),
        "{:?}",
        dry.applied
    );
    assert!(!applied.join("service-shop-other.yaml").exists());
    assert_eq!(
        std::fs::read_dir(&applied).expect("applied").count(),
        files_before + 1
    );
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: v1\nkind: Service\nmetadata: {name: good, namespace: shop}\n",
    )
    .expect("write manifests");
    let gone = lab.delete(&good).expect("delete good");
    assert_eq!(gone.applied, ["service shop/good deleted"]);

    // Delete: pods go through CNI DEL, their containers stop, objects are withdrawn.
    let echo_pids: Vec<u32> = lab
        .state()
        .processes
        .iter()
        .filter(|p| p.role.starts_with("pod shop/"))
        .map(|p| p.pid)
        .collect();
    assert_eq!(echo_pids.len(), 2);
    let gone = lab.delete(&file).expect("delete");
    assert!(
        echo_pids.iter().all(|p| !sys::alive(*p)),
        "containers stopped"
    );
    assert!(lab.state().pods.is_empty(), "{:?}", gone.applied);
    assert!(!sys::netns_exists(&pods[0].netns));
    assert!(!applied.join("service-shop-echo.yaml").exists());
    assert!(lab.state().services.is_empty());
    let rules = lab.kube_proxy_rules();
    assert!(!rules.contains(&vip.to_string()), "{rules}");
    assert!(
        !lab.manifests_dir()
            .join("pods")
            .join(format!("shop-{}.yaml", pods[0].name))
            .exists()
    );
    // The broken Service was never applied, so deleting it is reported.
    assert_eq!(gone.errors.len(), 1, "{:?}", gone.errors);
    assert!(
        gone.errors[0].contains("Service shop/broken is not in the lab"),
        "{:?}",
        gone.errors
    );
}
