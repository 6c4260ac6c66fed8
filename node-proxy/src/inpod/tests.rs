//! In-process tests of the in-pod layer: enrollment decisions, the
//! enrolled-namespaces file, persistence, drain, and the namespace thread in
//! the test's own namespace. The pod-namespace tests with the real plugin are
//! in `tests/inpod.rs`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hawser_api::cni::PROXY_MARK;
use hawser_api::cni::enrolled::EnrolledNamespaces;
use hawser_api::cni::proto;
use hawser_api::cni::server::CniHandler;
use hawser_api::proto::discovery::{
    Resource, ResourceName, ResourceType, Snapshot, Workload, resource::Kind,
};
use nix::sys::socket::{getsockopt, sockopt};
use tokio::sync::watch;

use super::enrollment::{decide, decide_waiting, enrolled_namespaces};
use super::persist::{AttachmentRecord, POD_RECORD_VERSION, PersistError, PodRecord, PodStore};
use super::*;
use crate::discovery::NodeConfig;

fn workload(uid: &str, namespace: &str, name: &str, enrolled: bool) -> Resource {
    Resource {
        name: Some(ResourceName {
            r#type: ResourceType::Workload as i32,
            name: uid.into(),
        }),
        version: 1,
        kind: Some(Kind::Workload(Workload {
            uid: uid.into(),
            namespace: namespace.into(),
            name: name.into(),
            ips: vec!["10.244.0.9".into()],
            enrolled,
            ..Default::default()
        })),
    }
}

fn config(version: u64, resources: Vec<Resource>) -> NodeConfig {
    NodeConfig::from_snapshot(Snapshot { version, resources }).expect("valid test config")
}

fn pod(namespace: &str, name: &str, uid: &str) -> proto::PodRef {
    proto::PodRef {
        namespace: namespace.into(),
        name: name.into(),
        uid: uid.into(),
    }
}

fn no_list() -> EnrolledNamespaces {
    EnrolledNamespaces::default()
}

#[test]
fn decisions_follow_the_workload_and_its_namespace() {
    let cfg = config(
        4,
        vec![
            workload("u-web", "shop", "web", true),
            workload("u-odd", "shop", "odd", false),
            workload("u-plain", "plain", "app", false),
        ],
    );
    assert_eq!(
        enrolled_namespaces(&cfg),
        BTreeSet::from(["shop".to_string()])
    );

    let d = decide(&cfg, &no_list(), &pod("shop", "web", "u-web"));
    assert!(d.enrolled && !d.provisional, "{d:?}");
    assert!(
        d.reason.contains("shop/web (uid u-web) is enrolled"),
        "{}",
        d.reason
    );

    // Marked not enrolled, but its namespace has enrolled workloads.
    let d = decide(&cfg, &no_list(), &pod("shop", "odd", "u-odd"));
    assert!(d.enrolled, "{d:?}");

    // Unknown yet, namespace enrolled: no need to wait.
    let d = decide(&cfg, &no_list(), &pod("shop", "new", "u-new"));
    assert!(d.enrolled && !d.provisional, "{d:?}");

    // Known and not enrolled: final.
    let d = decide(&cfg, &no_list(), &pod("plain", "app", "u-plain"));
    assert!(!d.enrolled && !d.provisional, "{d:?}");
    assert!(
        d.reason.contains("namespace plain is not in the mesh"),
        "{}",
        d.reason
    );

    // Unknown, namespace not enrolled: provisional "no".
    let d = decide(&cfg, &no_list(), &pod("other", "x", "u-x"));
    assert!(!d.enrolled && d.provisional, "{d:?}");

    // Without a uid (old kubelet) the pod is found by namespace/name.
    let d = decide(&cfg, &no_list(), &pod("plain", "app", ""));
    assert!(!d.enrolled && !d.provisional, "{d:?}");
}

#[test]
fn before_any_config_the_last_persisted_list_decides() {
    let empty = NodeConfig::default();
    let list = EnrolledNamespaces::new(["shop"]);
    let d = decide(&empty, &list, &pod("shop", "web", "u1"));
    assert!(d.enrolled, "{d:?}");
    assert!(d.reason.contains("last persisted list"), "{}", d.reason);
    let d = decide(&empty, &list, &pod("default", "web", "u2"));
    assert!(!d.enrolled && d.provisional, "{d:?}");
}

#[test]
fn an_unknown_pod_waits_for_the_config_but_not_forever() {
    let (tx, rx) = watch::channel(Arc::new(config(1, vec![])));
    let feeder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        tx.send_replace(Arc::new(config(
            2,
            vec![workload("u-late", "fresh", "web", true)],
        )));
        tx
    });
    let started = std::time::Instant::now();
    let d = decide_waiting(
        &rx,
        &no_list(),
        &pod("fresh", "web", "u-late"),
        Duration::from_secs(3),
        Duration::from_millis(10),
    );
    let waited = started.elapsed();
    assert!(d.enrolled, "{d:?}");
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
        "answered after {waited:?}: it must wait for the config, and only until it arrives"
    );
    let _tx = feeder.join().expect("feeder thread");

    let started = std::time::Instant::now();
    let d = decide_waiting(
        &rx,
        &no_list(),
        &pod("elsewhere", "x", "u-never"),
        Duration::from_millis(300),
        Duration::from_millis(10),
    );
    let waited = started.elapsed();
    assert!(!d.enrolled, "{d:?}");
    assert!(d.reason.ends_with("after waiting 300ms"), "{}", d.reason);
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

/// A data plane that must never be reached.
struct NoServe;

impl PodServer for NoServe {
    fn serve(&self, pod: Arc<PodContext>, _sockets: PodSockets) {
        panic!("no pod may be served in this test, got {}", pod.workload);
    }
}

fn settings(dir: &Path) -> InPodSettings {
    InPodSettings {
        probe_sources: vec![IpAddr::V4(Ipv4Addr::new(172, 18, 0, 2))],
        enrollment_wait: Duration::from_millis(200),
        ..InPodSettings::new(dir)
    }
}

fn add_request(namespace: &str, name: &str, uid: &str, container: &str) -> proto::AddPod {
    proto::AddPod {
        pod: Some(pod(namespace, name, uid)),
        attachment: Some(proto::Attachment {
            container_id: container.into(),
            ifname: "eth0".into(),
            network_name: "net".into(),
        }),
        netns_path: "/var/run/netns/test".into(),
        pod_ips: vec!["10.244.0.9".into()],
    }
}

async fn wait_for_file(path: &Path, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = EnrolledNamespaces::load(path).expect("readable list");
        if got.as_ref().map(|l| &l.namespaces) == Some(&want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} holds {got:?}, want {want:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_replies_and_the_enrolled_file_tracks_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list_path = EnrolledNamespaces::path_in(dir.path());
    // A previous run enrolled "old".
    EnrolledNamespaces::new(["old"])
        .store(&list_path)
        .expect("seed list");
    let (tx, rx) = watch::channel(Arc::new(NodeConfig::default()));
    let inpod = InPod::new(settings(dir.path()), rx, Arc::new(NoServe)).expect("inpod");

    // No config yet: the old list stands and decides.
    tokio::time::sleep(Duration::from_millis(100)).await;
    wait_for_file(&list_path, &["old"]).await;
    let h = inpod.clone();
    let reply = tokio::task::spawn_blocking(move || h.add(add_request("old", "a", "u-a", "c1")))
        .await
        .expect("add");
    assert!(reply.enrolled, "{reply:?}");

    tx.send_replace(Arc::new(config(
        1,
        vec![
            workload("u-web", "shop", "web", true),
            workload("u-app", "plain", "app", false),
        ],
    )));
    wait_for_file(&list_path, &["shop"]).await;

    let h = inpod.clone();
    let reply =
        tokio::task::spawn_blocking(move || h.add(add_request("shop", "web", "u-web", "c2")))
            .await
            .expect("add");
    assert!(reply.enrolled, "{reply:?}");
    let redirection = reply
        .redirection
        .expect("an enrolled pod gets a redirection");
    assert_eq!(redirection.probe_source_addresses, ["172.18.0.2"]);
    assert!(redirection.exclude_inbound_ports.is_empty());

    let h = inpod.clone();
    let reply =
        tokio::task::spawn_blocking(move || h.add(add_request("plain", "app", "u-app", "c3")))
            .await
            .expect("add");
    assert!(!reply.enrolled, "{reply:?}");
    assert!(reply.redirection.is_none());
    assert!(reply.reason.contains("namespace plain"), "{}", reply.reason);

    tx.send_replace(Arc::new(config(
        2,
        vec![
            workload("u-web", "shop", "web", true),
            workload("u-app", "plain", "app", true),
        ],
    )));
    wait_for_file(&list_path, &["plain", "shop"]).await;
    assert_eq!(inpod.ping().pods, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoffs_that_cannot_be_served_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_tx, rx) = watch::channel(Arc::new(config(
        1,
        vec![workload("u-web", "shop", "web", true)],
    )));
    let inpod = InPod::new(settings(dir.path()), rx, Arc::new(NoServe)).expect("inpod");
    let handoff = |container: &str| proto::NetnsHandoff {
        pod: Some(pod("shop", "web", "u-web")),
        attachment: Some(proto::Attachment {
            container_id: container.into(),
            ifname: "eth0".into(),
            network_name: "net".into(),
        }),
        pod_ips: vec!["10.244.0.9".into()],
    };
    let not_a_netns = || std::os::fd::OwnedFd::from(tempfile::tempfile().expect("tempfile"));

    let h = inpod.clone();
    let reply = tokio::task::spawn_blocking(move || h.handoff(handoff("c1"), not_a_netns()))
        .await
        .expect("handoff");
    assert!(!reply.accepted);
    assert_eq!(
        reply.message,
        "no AddPod was received for container c1 before its handoff"
    );

    let h = inpod.clone();
    let reply = tokio::task::spawn_blocking(move || {
        assert!(h.add(add_request("shop", "web", "u-web", "c1")).enrolled);
        h.handoff(handoff("c1"), not_a_netns())
    })
    .await
    .expect("handoff");
    assert!(!reply.accepted);
    assert!(
        reply.message.ends_with("is not a network namespace"),
        "{}",
        reply.message
    );

    let h = inpod.clone();
    let reply = tokio::task::spawn_blocking(move || h.handoff(handoff("../etc"), not_a_netns()))
        .await
        .expect("handoff");
    assert!(!reply.accepted);
    assert!(
        reply
            .message
            .starts_with("container id \"../etc\" is invalid"),
        "{}",
        reply.message
    );
    assert!(inpod.is_empty());
    assert!(
        !dir.path().join(persist::PODS_DIR).exists()
            || std::fs::read_dir(dir.path().join(persist::PODS_DIR))
                .expect("pods dir")
                .next()
                .is_none(),
        "nothing may be persisted for a refused handoff"
    );
}

#[test]
fn container_ids_are_validated() {
    assert!(ContainerId::new("9f1c0a_b-c.d").is_ok());
    for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(257)] {
        assert!(ContainerId::new(bad).is_err(), "{bad:?} must be refused");
    }
}

fn record(container: &str) -> PodRecord {
    PodRecord {
        version: POD_RECORD_VERSION,
        container_id: container.into(),
        uid: "u1".into(),
        namespace: "shop".into(),
        name: "web-0".into(),
        ips: vec!["10.244.1.7".parse().expect("ip")],
        netns_path: "/var/run/netns/cni-1".into(),
        netns: NetnsId {
            dev: 4,
            ino: 4026532801,
        },
        attachments: [AttachmentRecord {
            ifname: "eth0".into(),
            network: "k8s".into(),
        }]
        .into_iter()
        .collect(),
    }
}

#[test]
fn pod_records_round_trip_and_bad_files_are_reported_one_by_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = PodStore::new(dir.path());
    assert!(store.load_all().expect("empty store").is_empty());
    let id = ContainerId::new("c1").expect("id");
    store.store(&id, &record("c1")).expect("store");
    let text = std::fs::read_to_string(store.path(&id)).expect("record file");
    assert!(
        text.contains("\"netnsPath\":\"/var/run/netns/cni-1\""),
        "{text}"
    );

    std::fs::write(store.dir().join("c2.json"), "{not json").expect("write");
    std::fs::write(
        store.dir().join("c3.json"),
        serde_json::to_vec(&record("other")).expect("json"),
    )
    .expect("write");
    let mut v9 = record("c4");
    v9.version = 9;
    std::fs::write(
        store.dir().join("c4.json"),
        serde_json::to_vec(&v9).expect("json"),
    )
    .expect("write");
    std::fs::write(store.dir().join(".tmp-leftover"), "x").expect("write");

    let loaded = store.load_all().expect("load");
    assert_eq!(loaded.len(), 4, "{loaded:?}");
    match &loaded[0].1 {
        Ok((got_id, got)) => {
            assert_eq!(got_id, &id);
            assert_eq!(got, &record("c1"));
        }
        Err(e) => panic!("c1 must load: {e}"),
    }
    assert!(
        matches!(loaded[1].1, Err(PersistError::Parse { .. })),
        "{:?}",
        loaded[1]
    );
    assert!(
        matches!(loaded[2].1, Err(PersistError::Mismatch { .. })),
        "{:?}",
        loaded[2]
    );
    assert!(
        matches!(loaded[3].1, Err(PersistError::Version { version: 9, .. })),
        "{:?}",
        loaded[3]
    );
    assert!(!store.dir().join(".tmp-leftover").exists());

    store.remove(&id).expect("remove");
    store.remove(&id).expect("removing twice is fine");
    assert!(!store.path(&id).exists());
}

#[tokio::test(start_paused = true)]
async fn drain_signals_once_then_forces_at_the_deadline() {
    let (trigger, watch) = DrainTrigger::new();
    let conn = watch.clone();
    assert!(!conn.is_draining());
    let waiter = tokio::spawn(async move {
        let d = conn.signaled().await;
        let signaled_at = tokio::time::Instant::now();
        conn.forced().await;
        (d, signaled_at, tokio::time::Instant::now())
    });
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!waiter.is_finished(), "nothing may fire before the trigger");
    let start = tokio::time::Instant::now();
    let d = trigger.start(Duration::from_secs(5));
    assert_eq!(d.force_at, start + Duration::from_secs(5));
    // A second start keeps the first deadline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(trigger.start(Duration::from_secs(60)), d);
    let (seen, signaled_at, forced_at) = waiter.await.expect("waiter");
    assert_eq!(seen, d);
    assert_eq!(signaled_at, start);
    assert_eq!(forced_at, d.force_at);
    assert!(watch.is_draining() && trigger.is_started());

    assert_eq!(trigger.watchers(), 1);
    let drained = tokio::time::timeout(Duration::from_secs(1), trigger.drained());
    assert!(drained.await.is_err(), "a live watch holds the drain open");
    drop(watch);
    tokio::time::timeout(Duration::from_secs(1), trigger.drained())
        .await
        .expect("drained once every watch is gone");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_trigger_counts_as_an_immediate_drain() {
    let (trigger, watch) = DrainTrigger::new();
    drop(trigger);
    let d = tokio::time::timeout(Duration::from_secs(1), watch.signaled())
        .await
        .expect("signaled");
    assert_eq!(d.force_at, tokio::time::Instant::now());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_thread_makes_marked_sockets_off_the_runtime() {
    let ns = NetnsHandle::current().expect("current netns");
    let here = std::thread::current().id();
    let (there, inside) = ns
        .run_async(|| {
            (
                std::thread::current().id(),
                std::thread::current().name().map(str::to_string),
            )
        })
        .await
        .expect("run");
    assert_ne!(here, there, "jobs run on the namespace thread");
    assert_eq!(inside, Some(format!("netns-{}", ns.id().ino)));

    // A panicking job is an error, and the thread keeps serving.
    let err = ns.run_async(|| panic!("boom")).await.map(|_: ()| ());
    assert!(err.is_err());
    assert_eq!(ns.run_async(|| 7).await.expect("after a panic"), 7);

    let listener = ns
        .bind_tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stream, accepted) = tokio::join!(ns.connect_tcp(addr, PROXY_MARK), listener.accept());
    let stream = stream.expect("connect");
    let (_peer, from) = accepted.expect("accept");
    assert_eq!(stream.peer_addr().expect("peer"), addr);
    assert_eq!(stream.local_addr().expect("local"), from);
    assert_eq!(
        getsockopt(&stream, sockopt::Mark).expect("SO_MARK"),
        PROXY_MARK,
        "upstream sockets carry the bypass mark"
    );

    drop(listener);
    let err = ns
        .connect_tcp(addr, PROXY_MARK)
        .await
        .expect_err("nothing listens any more");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
