//! The in-pod layer against the real CNI plugin in real network namespaces.
//!
//! Each test builds its own pair of namespaces: a pod (`eth0` 10.251.0.2/24,
//! default route via 10.251.0.1) and, on the other end of the veth, a node
//! (10.251.0.1 the gateway, 10.251.0.3 another peer, 10.251.0.4 the node
//! address the proxy reports for kubelet probes). `hawser-cni`'s own
//! library entry point (`hawser_cni::run`, the code the binary runs) performs
//! ADD and DEL with a `prevResult` describing that interface, talking to a
//! real `CniServer` serving [`InPod`]. Nothing is created in the host's
//! namespace, and the namespaces are deleted on drop, panics included.
//!
//! These tests need root (namespaces, nftables). They fail, never skip,
//! when they cannot set up.

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hawser_api::cni::proto;
use hawser_api::cni::server::{CniHandler, CniServer};
use hawser_api::cni::{PROXY_MARK, enrolled::EnrolledNamespaces};
use hawser_api::proto::discovery::{
    Resource, ResourceName, ResourceType, Snapshot, Workload, resource::Kind,
};
use hawser_node_proxy::discovery::NodeConfig;
use hawser_node_proxy::inpod::persist::{PODS_DIR, PodRecord};
use hawser_node_proxy::inpod::{
    InPod, InPodSettings, NetnsHandle, NetnsId, PodContext, PodServer, PodSockets, original_dst,
};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 3);
const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 4);
/// An address nothing answers: only the proxy's capture can accept it.
const ELSEWHERE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1)), 80);
const WAIT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}-{:x}-{n}", std::process::id())
}

fn run_ok(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed (these tests need root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A named network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Self {
        let name = unique(&format!("hawser-inpod-{role}"));
        run_ok("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ok("ip", &full)
    }

    fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd} in {}: {e}", self.name))
    }

    fn id(&self) -> NetnsId {
        let st = nix::sys::stat::stat(&self.path()).expect("stat netns");
        NetnsId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }

    /// Runs `f` on a fresh thread inside the namespace (as an app would).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(&self.path(), f)
    }

    /// Connects to `to` from inside the namespace, from `from` if given.
    async fn connect(&self, from: Option<Ipv4Addr>, to: SocketAddr) -> std::io::Result<TcpStream> {
        let path = self.path();
        tokio::task::spawn_blocking(move || in_netns(&path, move || connect_from(from, to)))
            .await
            .expect("connect task")
    }

    fn has_hawser_table(&self) -> bool {
        self.exec("nft", &["list", "table", "inet", "hawser"])
            .status
            .success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `f` on a new thread that entered the namespace at `path`; no other
/// thread's namespace changes.
fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(path).expect("open netns");
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("enter netns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A blocking connect from the calling thread's namespace, bounded by
/// [`WAIT`] (`SO_SNDTIMEO` bounds `connect(2)` on Linux).
fn connect_from(from: Option<Ipv4Addr>, to: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt,
    };
    use nix::sys::time::TimeVal;
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let bound = TimeVal::new(i64::try_from(WAIT.as_secs()).expect("small"), 0);
    setsockopt(&fd, sockopt::SendTimeout, &bound)?;
    if let Some(src) = from {
        bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(std::net::SocketAddrV4::new(src, 0)),
        )?;
    }
    let SocketAddr::V4(to4) = to else {
        panic!("IPv4 only in these tests");
    };
    connect(fd.as_raw_fd(), &SockaddrIn::from(to4))?;
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(WAIT))?;
    Ok(stream)
}

/// A pod namespace wired to a node namespace by a veth pair.
struct Lab {
    pod: Netns,
    node: Netns,
}

impl Lab {
    fn new() -> Self {
        let node = Netns::new("node");
        let pod = Netns::new("pod");
        node.ip(&[
            "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
        ]);
        for a in [GATEWAY, PEER, NODE_ADDR] {
            node.ip(&["addr", "add", &format!("{a}/24"), "dev", "veth0"]);
        }
        node.ip(&["link", "set", "veth0", "up"]);
        pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        pod.ip(&["route", "add", "default", "via", &GATEWAY.to_string()]);
        Self { pod, node }
    }
}

/// What the test data plane saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Served {
        container: String,
        uid: String,
        ips: Vec<IpAddr>,
    },
    Accepted {
        listener: &'static str,
        peer: SocketAddr,
        original_dst: Result<SocketAddr, String>,
    },
    ListenerStopped {
        listener: &'static str,
    },
    ConnectionDrained {
        listener: &'static str,
    },
}

/// The test data plane: accepts on each listener, records everything, and
/// holds connections until the pod drains.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    pods: Mutex<Vec<Arc<PodContext>>>,
}

impl Recorder {
    fn push(&self, e: Event) {
        self.events.lock().expect("events").push(e);
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().expect("events").clone()
    }

    async fn wait_for(&self, what: &str, pred: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let events = self.events();
            if pred(&events) {
                return events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; events so far: {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn accepted(
        &self,
        listener: &'static str,
        peer_ip: Ipv4Addr,
    ) -> Result<SocketAddr, String> {
        let events = self
            .wait_for(&format!("a connection from {peer_ip} on {listener}"), |ev| {
                ev.iter().any(|e| matches!(e, Event::Accepted { listener: l, peer, .. } if *l == listener && peer.ip() == IpAddr::V4(peer_ip)))
            })
            .await;
        events
            .into_iter()
            .find_map(|e| match e {
                Event::Accepted {
                    listener: l,
                    peer,
                    original_dst,
                } if l == listener && peer.ip() == IpAddr::V4(peer_ip) => Some(original_dst),
                _ => None,
            })
            .expect("found above")
    }

    fn pod(&self) -> Arc<PodContext> {
        self.pods
            .lock()
            .expect("pods")
            .last()
            .cloned()
            .expect("a pod was served")
    }
}

fn accept_loop(
    rec: Arc<Recorder>,
    pod: Arc<PodContext>,
    listener: TcpListener,
    name: &'static str,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, peer)) => {
                        rec.push(Event::Accepted {
                            listener: name,
                            peer,
                            original_dst: original_dst(&stream).map_err(|e| e.to_string()),
                        });
                        let rec = rec.clone();
                        let drain = pod.drain.clone();
                        tokio::spawn(async move {
                            drain.signaled().await;
                            rec.push(Event::ConnectionDrained { listener: name });
                            drop(stream);
                        });
                    }
                    Err(_) => break,
                },
                _ = pod.drain.signaled() => break,
            }
        }
        rec.push(Event::ListenerStopped { listener: name });
    });
}

struct Serve(Arc<Recorder>);

impl PodServer for Serve {
    fn serve(&self, pod: Arc<PodContext>, sockets: PodSockets) {
        let rec = self.0.clone();
        rec.push(Event::Served {
            container: pod.container_id.to_string(),
            uid: pod.workload.pod_uid.clone(),
            ips: pod.ips.clone(),
        });
        rec.pods.lock().expect("pods").push(pod.clone());
        accept_loop(rec.clone(), pod.clone(), sockets.outbound, "outbound");
        accept_loop(rec.clone(), pod.clone(), sockets.inbound_plain, "inbound");
        accept_loop(rec, pod, sockets.hbone, "hbone");
    }
}

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
            ips: vec![POD_IP.to_string()],
            enrolled,
            ..Default::default()
        })),
    }
}

fn node_config(resources: Vec<Resource>) -> Arc<NodeConfig> {
    Arc::new(
        NodeConfig::from_snapshot(Snapshot {
            version: 1,
            resources,
        })
        .expect("valid config"),
    )
}

/// The proxy side: `InPod` behind a real CNI socket.
struct Proxy {
    server: Option<CniServer>,
    inpod: Option<InPod>,
    rec: Arc<Recorder>,
}

impl Proxy {
    fn start(dir: &Path, config: watch::Receiver<Arc<NodeConfig>>) -> Self {
        let rec = Arc::new(Recorder::default());
        let settings = InPodSettings {
            probe_sources: vec![IpAddr::V4(NODE_ADDR)],
            drain_grace: Duration::from_secs(2),
            ..InPodSettings::new(dir.join("run"))
        };
        let inpod = InPod::new(settings, config, Arc::new(Serve(rec.clone()))).expect("InPod::new");
        let server = CniServer::bind(&dir.join("cni.sock"), Arc::new(inpod.clone()))
            .expect("bind CNI socket");
        Self {
            server: Some(server),
            inpod: Some(inpod),
            rec,
        }
    }

    fn inpod(&self) -> &InPod {
        self.inpod.as_ref().expect("running")
    }

    /// Simulates the process going away: socket closed, every handle dropped.
    fn kill(mut self) {
        self.server = None;
        self.inpod = None;
    }
}

/// One pod sandbox and the plugin invocations for it.
struct Pod {
    namespace: String,
    name: String,
    uid: String,
    container: String,
}

impl Pod {
    fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: unique(&format!("uid-{name}")),
            container: unique("sandbox"),
        }
    }

    /// Runs `hawser-cni` (`ADD` or `DEL`) for this pod, in process.
    async fn cni(&self, command: &str, lab: &Lab, dir: &Path) -> hawser_cni::Outcome {
        let env: HashMap<String, String> = [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", self.container.clone()),
            ("CNI_NETNS", lab.pod.path().display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", "/usr/lib/cni".to_string()),
            (
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                    self.namespace, self.name, self.container, self.uid
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": "inpod-test",
            "type": "hawser-cni",
            "socketPath": dir.join("cni.sock"),
            "runDir": dir.join("run"),
            "logFile": dir.join("hawser-cni.log"),
            "logLevel": "debug",
            "proxyTimeoutMs": 8000,
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": lab.pod.path()}],
                "ips": [{"address": format!("{POD_IP}/24"), "gateway": GATEWAY.to_string(), "interface": 0}],
            },
        })
        .to_string();
        tokio::task::spawn_blocking(move || {
            hawser_cni::run(&|k| env.get(k).cloned(), &mut conf.as_bytes())
        })
        .await
        .expect("plugin task")
    }

    async fn add_ok(&self, lab: &Lab, dir: &Path) {
        match self.cni("ADD", lab, dir).await {
            hawser_cni::Outcome::Success(out) => {
                let v: serde_json::Value = serde_json::from_str(&out).expect("ADD prints JSON");
                assert_eq!(
                    v["ips"][0]["address"],
                    format!("{POD_IP}/24"),
                    "prevResult passes through"
                );
            }
            other => panic!("ADD failed: {other:?}; plugin log: {}", log(dir)),
        }
    }

    async fn del_ok(&self, lab: &Lab, dir: &Path) {
        match self.cni("DEL", lab, dir).await {
            hawser_cni::Outcome::Success(_) => {}
            other => panic!("DEL failed: {other:?}; plugin log: {}", log(dir)),
        }
    }

    fn record_path(&self, dir: &Path) -> PathBuf {
        dir.join("run")
            .join(PODS_DIR)
            .join(format!("{}.json", self.container))
    }
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("hawser-cni.log")).unwrap_or_default()
}

fn refused(r: std::io::Result<TcpStream>, what: &str) {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("{what}: expected connection refused, got {e}"),
        Ok(s) => panic!(
            "{what}: expected connection refused, but connected to {:?}",
            s.peer_addr()
        ),
    }
}

/// Accepts one connection, waiting at most [`WAIT`].
fn accept_within(l: &std::net::TcpListener) -> std::io::Result<(TcpStream, SocketAddr)> {
    l.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match l.accept() {
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Reads until EOF (the proxy closed the connection) or fails.
fn read_eof(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 16];
    match s.read(&mut buf)? {
        0 => Ok(()),
        n => Err(std::io::Error::other(format!(
            "expected EOF, read {n} bytes"
        ))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_pod_is_captured_on_all_three_listeners() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = Pod::new("mesh", "web-0");
    let (_config, rx) = watch::channel(node_config(vec![
        workload(&pod.uid, "mesh", "web-0", true),
        workload("uid-other", "plain", "other", false),
    ]));
    let proxy = Proxy::start(dir.path(), rx);

    pod.add_ok(&lab, dir.path()).await;
    assert!(lab.pod.has_hawser_table(), "the plugin wrote its rules");
    let served = proxy
        .rec
        .wait_for("the pod to be served", |ev| {
            ev.iter().any(|e| matches!(e, Event::Served { .. }))
        })
        .await;
    assert_eq!(
        served[0],
        Event::Served {
            container: pod.container.clone(),
            uid: pod.uid.clone(),
            ips: vec![IpAddr::V4(POD_IP)],
        }
    );
    assert_eq!(proxy.inpod().ping().pods, 1);

    // Persisted for a restart, with the namespace it was handed.
    let record: PodRecord = serde_json::from_slice(
        &std::fs::read(pod.record_path(dir.path())).expect("pod record written"),
    )
    .expect("pod record parses");
    assert_eq!(record.netns, lab.pod.id());
    assert_eq!(record.netns_path, lab.pod.path());
    assert_eq!(
        (record.namespace.as_str(), record.name.as_str()),
        ("mesh", "web-0")
    );

    // The enrolled-namespaces file follows the config.
    let list = EnrolledNamespaces::load(&EnrolledNamespaces::path_in(&dir.path().join("run")))
        .expect("readable")
        .expect("written from the config");
    assert_eq!(list.namespaces.into_iter().collect::<Vec<_>>(), ["mesh"]);

    // Outbound to anywhere lands on 15001 with its original destination.
    let _out = lab
        .pod
        .connect(None, ELSEWHERE)
        .await
        .expect("outbound is captured");
    assert_eq!(proxy.rec.accepted("outbound", POD_IP).await, Ok(ELSEWHERE));

    // Inbound to an app port lands on 15006.
    let app = SocketAddr::from((POD_IP, 8080));
    let _in = lab
        .node
        .connect(Some(PEER), app)
        .await
        .expect("inbound is captured");
    assert_eq!(proxy.rec.accepted("inbound", PEER).await, Ok(app));

    // Probes from the node address the proxy reported reach the app directly
    // (nothing listens on 8080, so: refused, and never seen by the proxy).
    refused(
        lab.node.connect(Some(NODE_ADDR), app).await,
        "a probe from the node address",
    );

    // 15008 is served as is.
    let hbone = SocketAddr::from((POD_IP, 15008));
    let _h = lab
        .node
        .connect(Some(PEER), hbone)
        .await
        .expect("HBONE port reachable");
    assert_eq!(proxy.rec.accepted("hbone", PEER).await, Ok(hbone));
    assert!(
        !proxy.rec.events().iter().any(
            |e| matches!(e, Event::Accepted { peer, .. } if peer.ip() == IpAddr::V4(NODE_ADDR))
        ),
        "probe traffic must not reach the proxy"
    );

    // Upstream sockets made for the pod: with the mark they leave the pod;
    // without it the pod's rules would capture them.
    let upstream = SocketAddr::from((GATEWAY, 9000));
    let node_listener = lab
        .node
        .run(move || std::net::TcpListener::bind(upstream).expect("node listener"));
    let ctx = proxy.rec.pod();
    let marked = ctx
        .netns
        .connect_tcp(upstream, PROXY_MARK)
        .await
        .expect("marked upstream connects");
    let (_conn, from) = accept_within(&node_listener).expect("node side accepts");
    assert_eq!(from, marked.local_addr().expect("local"));
    assert_eq!(
        from.ip(),
        IpAddr::V4(POD_IP),
        "the upstream leaves from the pod's address"
    );
    let _looped = ctx
        .netns
        .connect_tcp(upstream, 0)
        .await
        .expect("unmarked connect");
    proxy
        .rec
        .wait_for("the unmarked socket to be captured", |ev| {
            ev.iter().any(|e| matches!(e, Event::Accepted { listener: "outbound", original_dst: Ok(d), .. } if *d == upstream))
        })
        .await;

    pod.del_ok(&lab, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_closes_the_listeners_and_drains_the_connections() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = Pod::new("mesh", "api-0");
    let (_config, rx) =
        watch::channel(node_config(vec![workload(&pod.uid, "mesh", "api-0", true)]));
    let proxy = Proxy::start(dir.path(), rx);
    pod.add_ok(&lab, dir.path()).await;

    let _captured = lab
        .pod
        .connect(None, ELSEWHERE)
        .await
        .expect("outbound is captured");
    assert_eq!(proxy.rec.accepted("outbound", POD_IP).await, Ok(ELSEWHERE));
    // A connection without NAT, so its close is observable after DEL has
    // removed the rules (NAT bindings stop translating with the table).
    let held = lab
        .pod
        .connect(None, SocketAddr::from((Ipv4Addr::LOCALHOST, 15006)))
        .await
        .expect("15006 listens in the pod");
    let _orig = proxy.rec.accepted("inbound", Ipv4Addr::LOCALHOST).await;
    assert!(pod.record_path(dir.path()).exists());

    pod.del_ok(&lab, dir.path()).await;
    assert!(!lab.pod.has_hawser_table(), "the plugin removed its rules");
    assert!(proxy.inpod().is_empty());
    assert_eq!(proxy.inpod().ping().pods, 0);
    assert!(
        !pod.record_path(dir.path()).exists(),
        "the record is forgotten"
    );

    proxy
        .rec
        .wait_for("the listeners to stop and the connection to drain", |ev| {
            ["outbound", "inbound", "hbone"]
                .iter()
                .all(|l| ev.contains(&Event::ListenerStopped { listener: l }))
                && ev.contains(&Event::ConnectionDrained {
                    listener: "outbound",
                })
                && ev.contains(&Event::ConnectionDrained {
                    listener: "inbound",
                })
        })
        .await;
    tokio::task::spawn_blocking(move || read_eof(held))
        .await
        .expect("reader")
        .expect("the held connection is closed by the drain");
    for port in [15001, 15006, 15008] {
        refused(
            lab.pod
                .connect(None, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
                .await,
            &format!("port {port} in the pod after DEL"),
        );
    }
    // DEL again is harmless.
    pod.del_ok(&lab, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_proxy_serves_its_pods_again() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = Pod::new("mesh", "db-0");
    let (config, rx) = watch::channel(node_config(vec![workload(&pod.uid, "mesh", "db-0", true)]));
    let first = Proxy::start(dir.path(), rx.clone());
    pod.add_ok(&lab, dir.path()).await;
    let _c = lab
        .pod
        .connect(None, ELSEWHERE)
        .await
        .expect("outbound is captured");
    assert_eq!(first.rec.accepted("outbound", POD_IP).await, Ok(ELSEWHERE));

    let old = first.rec.clone();
    first.kill();
    old.wait_for("the old listeners to stop", |ev| {
        ["outbound", "inbound", "hbone"]
            .iter()
            .all(|l| ev.contains(&Event::ListenerStopped { listener: l }))
    })
    .await;
    // The pod's rules are still there and nothing listens: no mesh.
    assert!(lab.pod.has_hawser_table());
    refused(
        lab.pod.connect(None, ELSEWHERE).await,
        "outbound while the proxy is down",
    );
    assert!(
        pod.record_path(dir.path()).exists(),
        "a restart keeps the record"
    );

    let second = Proxy::start(dir.path(), rx);
    let report = second.inpod().restore().await;
    assert_eq!(
        report
            .restored
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [pod.container.as_str()],
        "{report:?}"
    );
    assert!(
        report.dropped.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    let _c = lab
        .pod
        .connect(None, ELSEWHERE)
        .await
        .expect("outbound is captured again");
    assert_eq!(second.rec.accepted("outbound", POD_IP).await, Ok(ELSEWHERE));
    assert_eq!(
        old.events()
            .iter()
            .filter(|e| matches!(e, Event::Accepted { .. }))
            .count(),
        1,
        "the old data plane saw only the first connection"
    );

    // The restored pod is known to DEL.
    pod.del_ok(&lab, dir.path()).await;
    assert!(second.inpod().is_empty());
    assert!(!pod.record_path(dir.path()).exists());
    drop(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_drops_pods_whose_namespace_is_gone_or_replaced() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let pods_dir = dir.path().join("run").join(PODS_DIR);
    std::fs::create_dir_all(&pods_dir).expect("pods dir");
    let record = |container: &str, path: &Path, netns: NetnsId| {
        let r = json!({
            "version": 1, "containerId": container, "uid": format!("uid-{container}"),
            "namespace": "mesh", "name": container, "ips": [POD_IP.to_string()],
            "netnsPath": path, "netns": netns,
            "attachments": [{"ifname": "eth0", "network": "inpod-test"}],
        });
        std::fs::write(pods_dir.join(format!("{container}.json")), r.to_string())
            .expect("write record");
    };
    let gone = lab.pod.path().with_file_name(unique("hawser-inpod-never"));
    record("gone", &gone, lab.pod.id());
    // The path exists but names another namespace than the one handed over.
    record("replaced", &lab.node.path(), lab.pod.id());
    record("alive", &lab.pod.path(), lab.pod.id());
    std::fs::write(pods_dir.join("corrupt.json"), "{").expect("write");

    let (_config, rx) = watch::channel(node_config(vec![]));
    let proxy = Proxy::start(dir.path(), rx);
    let report = proxy.inpod().restore().await;
    assert_eq!(
        report
            .restored
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["alive"],
        "{report:?}"
    );
    let mut dropped: Vec<String> = report
        .dropped
        .iter()
        .map(|(p, why)| {
            format!(
                "{}: {why}",
                p.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            )
        })
        .collect();
    dropped.sort();
    assert_eq!(dropped.len(), 3, "{dropped:#?}");
    assert!(
        dropped[0].starts_with("corrupt.json: pod record"),
        "{}",
        dropped[0]
    );
    assert!(
        dropped[1].starts_with("gone.json: the pod is gone: network namespace")
            && dropped[1].ends_with("does not exist"),
        "{}",
        dropped[1]
    );
    assert!(
        dropped[2].starts_with("replaced.json: ")
            && dropped[2].ends_with("the sandbox was replaced"),
        "{}",
        dropped[2]
    );
    let left: Vec<String> = std::fs::read_dir(&pods_dir)
        .expect("pods dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["alive.json"]);
    // The surviving pod really is served in its namespace.
    let _c = lab
        .pod
        .connect(None, SocketAddr::from((Ipv4Addr::LOCALHOST, 15001)))
        .await
        .expect("15001 listens in the pod");
    // (Not redirected, so there may be no original destination to read.)
    let _orig = proxy.rec.accepted("outbound", Ipv4Addr::LOCALHOST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_outside_the_mesh_passes_untouched() {
    let lab = Lab::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let pod = Pod::new("plain", "cron-0");
    let (_config, rx) = watch::channel(node_config(vec![
        workload(&pod.uid, "plain", "cron-0", false),
        workload("uid-mesh", "mesh", "web-0", true),
    ]));
    let proxy = Proxy::start(dir.path(), rx);

    let reply = {
        let inpod = proxy.inpod().clone();
        let req = proto::AddPod {
            pod: Some(proto::PodRef {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                uid: pod.uid.clone(),
            }),
            ..Default::default()
        };
        tokio::task::spawn_blocking(move || inpod.add(req))
            .await
            .expect("add")
    };
    assert!(!reply.enrolled, "{reply:?}");
    assert!(reply.redirection.is_none());
    assert!(
        reply.reason.contains("namespace plain is not in the mesh"),
        "{}",
        reply.reason
    );

    pod.add_ok(&lab, dir.path()).await;
    assert!(
        !lab.pod.has_hawser_table(),
        "no rules for a pod outside the mesh"
    );
    assert!(proxy.inpod().is_empty());
    assert!(!pod.record_path(dir.path()).exists());
    refused(
        lab.pod
            .connect(None, SocketAddr::from((Ipv4Addr::LOCALHOST, 15001)))
            .await,
        "15001 in a pod outside the mesh",
    );
    // Its traffic reaches its real destination.
    let target = SocketAddr::from((GATEWAY, 9100));
    let node_listener = lab
        .node
        .run(move || std::net::TcpListener::bind(target).expect("node listener"));
    let out = lab
        .pod
        .connect(None, target)
        .await
        .expect("uncaptured outbound connects");
    let (_conn, from) = accept_within(&node_listener).expect("the real destination accepts");
    assert_eq!(from, out.local_addr().expect("local"));
    assert!(proxy.rec.events().is_empty(), "{:?}", proxy.rec.events());
}

/// The hop marker: in a pod namespace set up for it, a connection the proxy
/// opened (marked `PROXY_MARK`) is recognised when it reaches a listener of
/// the same namespace; an app's connection is not, and the sysctl is the
/// pod's own (the host's is untouched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hop_marker_recognises_the_proxys_own_connections() {
    let pod = Netns::new("hop");
    let host_before =
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fwmark_accept").expect("host sysctl");
    let netns = NetnsHandle::open(&pod.path()).expect("netns handle");
    netns
        .run(hawser_node_proxy::inpod::mark_accepted_connections)
        .expect("netns thread")
        .expect("set the sysctl");
    let out = pod.exec("sysctl", &["-n", "net.ipv4.tcp_fwmark_accept"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fwmark_accept").expect("host sysctl"),
        host_before,
        "the host's sysctl is not changed"
    );

    let listener = TcpListener::from_std(
        netns
            .bind_std(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .expect("listen in the pod"),
    )
    .expect("listener");
    let addr = listener.local_addr().expect("addr");
    let _proxy = netns
        .connect_tcp(addr, PROXY_MARK)
        .await
        .expect("proxy dial");
    let (accepted, _) = listener.accept().await.expect("accept");
    assert!(hawser_node_proxy::inpod::dialed_by_proxy(&accepted));
    let _app = pod.connect(None, addr).await.expect("app connect");
    let (accepted, _) = listener.accept().await.expect("accept");
    assert!(!hawser_node_proxy::inpod::dialed_by_proxy(&accepted));
}
