//! The lab: a small Kubernetes-like cluster on one Linux machine, built from
//! network namespaces. Used by `hawser lab`, the end-to-end tests, the
//! conformance runner and the benchmarks.
//!
//! Topology (everything lives in namespaces the lab creates; nothing is added
//! to the host namespace, whose sysctls and routes are never touched):
//!
//! ```text
//!   <name>-ul   underlay: bridge br0, 172.31.255.254/24: the control plane
//!               (gRPC :15012, admin 127.0.0.1:15014), routes to every pod CIDR
//!     │ veth per node
//!   <name>-n1   node 1: eth0 172.31.255.1/24, ip_forward=1, cni0 bridge 10.244.1.1/24,
//!     │           routes to the other nodes' pod CIDRs via their underlay address
//!   <name>-p*   pods: eth0 from the node's CNI chain (bridge + host-local, then
//!               hawser-cni chained by its own installer), lo (loopback plugin)
//! ```
//!
//! Every resource is recorded in `<state-dir>/lab.json` before it is created,
//! so [`Lab::down`] (also after a crash) removes exactly what the lab made.

pub mod apply;
pub mod cni;
pub mod conformance;
pub mod dns;
pub mod kubeproxy;
pub mod pcap;
pub mod status;
pub mod sys;
pub mod verify;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab needs root.
    #[error("the lab needs root (network namespaces, veths, nftables); run it with sudo")]
    NotRoot,
    /// A required tool or file is missing.
    #[error("missing {0}")]
    Missing(String),
    /// A system command failed.
    #[error("`{command}` failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
    /// A CNI plugin failed.
    #[error("CNI plugin {plugin} {command} failed: {output}")]
    Cni {
        /// The plugin type.
        plugin: String,
        /// ADD, DEL, …
        command: String,
        /// Its error output.
        output: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Input is not what it must be.
    #[error("{what}: {reason}")]
    Invalid {
        /// What was read.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No lab is up in the state directory.
    #[error("no lab is up in {0} (run `hawser lab up`)")]
    NotUp(PathBuf),
}

impl LabError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Prefix of every namespace the lab creates (short: it names netns files).
    pub name: String,
    /// Number of nodes.
    pub nodes: usize,
    /// Where state, logs and generated config live.
    pub state_dir: PathBuf,
    /// Where the standard CNI plugins are (Debian: `/usr/lib/cni`).
    pub cni_bin_dir: PathBuf,
    /// Where Hawser's binaries are (`hawser-cni`, `hawser-control-plane`).
    pub bin_dir: PathBuf,
    /// Called with one line per step of `up` (the CLI prints them).
    pub progress: Option<fn(&str)>,
}

impl LabConfig {
    /// `nodes` nodes named `name`, state under `state_dir`.
    pub fn new(name: &str, nodes: usize, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            name: name.to_owned(),
            nodes,
            state_dir: state_dir.into(),
            cni_bin_dir: PathBuf::from("/usr/lib/cni"),
            bin_dir: default_bin_dir(),
            progress: None,
        }
    }
}

/// Hawser's binaries sit next to the running executable (`target/<profile>/`),
/// or one level up when that is a test binary in `deps/`.
fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// A node of the lab.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Node {
    /// Node name (`node-1`, …).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address on the underlay.
    pub underlay_ip: Ipv4Addr,
    /// Its pod CIDR (`10.244.<i>.0/24`).
    pub pod_cidr: String,
    /// The pods' gateway on this node.
    pub gateway: Ipv4Addr,
}

/// A pod of the lab.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// The node it is scheduled on.
    pub node: String,
    /// Its network namespace.
    pub netns: String,
    /// The sandbox (container) id given to CNI.
    pub container_id: String,
    /// Its IP, from the CNI result.
    pub ip: Option<Ipv4Addr>,
    /// The cached CNI ADD result (for DEL).
    pub cni_result: Value,
    /// Its labels (what Service selectors match).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its container ports by name (for named target ports).
    #[serde(default)]
    pub ports: std::collections::BTreeMap<String, u16>,
}

/// A Service as the lab's kube-proxy stand-in sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabService {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its ClusterIP (None: headless).
    pub cluster_ip: Option<Ipv4Addr>,
    /// Pod label selector (None: endpoints managed elsewhere).
    pub selector: Option<std::collections::BTreeMap<String, String>>,
    /// `(port, target port number or name)`.
    pub ports: Vec<(u16, String)>,
}

/// A background process the lab started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Process {
    /// What it is (`control-plane`, `node-proxy node-1`, `pod default/web`).
    pub role: String,
    /// Its pid.
    pub pid: u32,
    /// Its log file.
    pub log: PathBuf,
}

/// Everything the lab created, persisted so it can be removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LabState {
    /// The namespace prefix.
    pub name: String,
    /// The underlay namespace, once created.
    pub underlay: Option<String>,
    /// Nodes, in order.
    pub nodes: Vec<Node>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Background processes.
    pub processes: Vec<Process>,
    /// Counter for pod namespace names.
    pub next_pod: u32,

    /// Services applied to the lab.
    #[serde(default)]
    pub services: Vec<LabService>,
    /// Counter of the sync markers written after each apply/delete.
    #[serde(default)]
    pub next_sync: u64,
}

/// Address of the control plane on the underlay.
pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 254);
/// The control plane's admin API, inside the underlay namespace only.
pub const ADMIN_ADDR: &str = "127.0.0.1:15014";
/// Each node proxy's admin API, inside its node's namespace only.
pub const NODE_PROXY_ADMIN_ADDR: &str = "127.0.0.1:15000";

/// A minimal HTTP/1.0 GET (the admin APIs are plain HTTP on loopback; the
/// body ends at close): status code and body. Connecting, writing and
/// reading are each bounded.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), LabError> {
    use std::io::{Read as _, Write as _};
    let what = || format!("GET http://{addr}{path}");
    let failed = |e: std::io::Error| LabError::Command {
        command: what(),
        output: e.to_string(),
    };
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| LabError::Invalid {
        what: what(),
        reason: format!("{addr}: {e}"),
    })?;
    let timeout = Duration::from_secs(10);
    let mut tcp =
        std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(3)).map_err(failed)?;
    tcp.set_read_timeout(Some(timeout)).map_err(failed)?;
    tcp.set_write_timeout(Some(timeout)).map_err(failed)?;
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(failed)?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).map_err(failed)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| LabError::Invalid {
            what: what(),
            reason: format!("not an HTTP response: {head:?}"),
        })?;
    Ok((code, body.to_owned()))
}

/// Takes a lab down when dropped, so a test that fails an assertion still
/// removes everything its lab made. `.0.take()` keeps it up.
#[derive(Debug)]
pub struct LabGuard(pub Option<Lab>);

impl LabGuard {
    /// The lab (panics if it was taken out).
    pub fn lab(&mut self) -> &mut Lab {
        self.0.as_mut().expect("the guarded lab is up")
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.0.take() {
            let name = lab.config().name.clone();
            if let Err(e) = lab.down() {
                eprintln!("lab {name}: teardown failed: {e} (run `hawser lab down`)");
            }
        }
    }
}

/// A lab, up or being brought up.
#[derive(Debug)]
pub struct Lab {
    config: LabConfig,
    state: LabState,
}

impl Lab {
    /// Brings a lab up: underlay, nodes with routing and their CNI config. Stale
    /// state from an earlier lab of the same name is removed first; if any
    /// step fails, everything created so far is removed again.
    pub fn up(config: LabConfig) -> Result<Self, LabError> {
        preflight(&config)?;
        if let Ok(stale) = Self::load(&config) {
            if let Some(progress) = config.progress {
                progress("removing a stale lab first");
            }
            stale.down()?;
        }
        // Namespaces of a crashed lab that never saved its state.
        for ns in sys::netns_with_prefix(&format!("{}-", config.name)) {
            sys::netns_del(&ns)?;
        }
        std::fs::create_dir_all(&config.state_dir)
            .map_err(|e| LabError::io(&config.state_dir, e))?;
        let mut lab = Self {
            state: LabState {
                name: config.name.clone(),
                ..LabState::default()
            },
            config,
        };
        match lab.build() {
            Ok(()) => Ok(lab),
            Err(e) => {
                let _ = lab.teardown();
                Err(e)
            }
        }
    }

    /// Loads the lab whose state is in `config.state_dir`.
    pub fn load(config: &LabConfig) -> Result<Self, LabError> {
        let path = config.state_dir.join("lab.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|_| LabError::NotUp(config.state_dir.clone()))?;
        let state: LabState = serde_json::from_str(&text).map_err(|e| LabError::Invalid {
            what: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            config: LabConfig {
                name: state.name.clone(),
                ..config.clone()
            },
            state,
        })
    }

    /// What the lab holds.
    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    pub(crate) fn state_mut(&mut self) -> &mut LabState {
        &mut self.state
    }

    pub(crate) fn save(&self) -> Result<(), LabError> {
        let path = self.config.state_dir.join("lab.json");
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.state).map_err(|e| LabError::Invalid {
            what: "lab state".into(),
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, text).map_err(|e| LabError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| LabError::io(&path, e))
    }

    fn step(&self, what: &str) {
        if let Some(progress) = self.config.progress {
            progress(what);
        }
    }

    fn build(&mut self) -> Result<(), LabError> {
        let ul = format!("{}-ul", self.config.name);
        self.step(&format!(
            "underlay: namespace {ul}, bridge br0 {CONTROL_PLANE_IP}/24"
        ));
        self.state.underlay = Some(ul.clone());
        self.save()?;
        sys::netns_add(&ul)?;
        sys::ip(["-n", &ul, "link", "set", "lo", "up"])?;
        sys::ip(["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        sys::ip([
            "-n",
            &ul,
            "addr",
            "add",
            &format!("{CONTROL_PLANE_IP}/24"),
            "dev",
            "br0",
        ])?;
        sys::ip(["-n", &ul, "link", "set", "br0", "up"])?;

        for i in 1..=self.config.nodes {
            self.step(&format!(
                "node-{i}: namespace, veth to the underlay, ip_forward, CNI config"
            ));
            let index =
                u8::try_from(i)
                    .ok()
                    .filter(|i| *i < 250)
                    .ok_or_else(|| LabError::Invalid {
                        what: "--nodes".into(),
                        reason: format!("{} nodes; at most 249 are supported", self.config.nodes),
                    })?;
            let node = Node {
                name: format!("node-{i}"),
                netns: format!("{}-n{i}", self.config.name),
                underlay_ip: Ipv4Addr::new(172, 31, 255, index),
                pod_cidr: format!("10.244.{i}.0/24"),
                gateway: Ipv4Addr::new(10, 244, index, 1),
            };
            self.state.nodes.push(node.clone());
            self.save()?;
            sys::netns_add(&node.netns)?;
            let n = node.netns.as_str();
            let port = format!("n{i}");
            sys::ip([
                "-n", &ul, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", n,
            ])?;
            sys::ip(["-n", &ul, "link", "set", &port, "master", "br0", "up"])?;
            sys::ip(["-n", n, "link", "set", "lo", "up"])?;
            sys::ip([
                "-n",
                n,
                "addr",
                "add",
                &format!("{}/24", node.underlay_ip),
                "dev",
                "eth0",
            ])?;
            sys::ip(["-n", n, "link", "set", "eth0", "up"])?;
            sys::netns_sysctl(n, "net.ipv4.ip_forward", "1")?;
            self.write_cni_config(&node)?;
        }
        // The underlay reaches every pod CIDR (the control plane and DNS live there).
        for node in &self.state.nodes {
            sys::ip([
                "-n",
                &ul,
                "route",
                "add",
                &node.pod_cidr,
                "via",
                &node.underlay_ip.to_string(),
            ])?;
        }
        // Native routing between pod CIDRs over the underlay.
        for node in &self.state.nodes {
            for other in self.state.nodes.iter().filter(|o| o.name != node.name) {
                sys::ip([
                    "-n",
                    &node.netns,
                    "route",
                    "add",
                    &other.pod_cidr,
                    "via",
                    &other.underlay_ip.to_string(),
                ])?;
            }
        }
        self.save()?;
        let nodes = self.state.nodes.clone();
        for node in &nodes {
            self.step(&format!(
                "{}: hawser-cni chained by its installer",
                node.name
            ));
            self.install_hawser_cni(node)?;
        }
        self.step("kube-proxy stand-in tables on every node");
        self.sync_kube_proxy()?;
        self.step(&format!(
            "control plane on {CONTROL_PLANE_IP}:15012 (waiting until ready)"
        ));
        self.start_control_plane()?;
        for node in &nodes {
            self.step(&format!(
                "{}: node proxy (admin {NODE_PROXY_ADMIN_ADDR} in the node namespace; waiting until ready)",
                node.name
            ));
            self.start_node_proxy(&node.name)?;
        }
        self.step(&format!("cluster DNS on {CONTROL_PLANE_IP}:53"));
        self.start_dns(&ul)
    }

    /// The role under which a node's proxy process is recorded.
    pub fn node_proxy_role(node: &str) -> String {
        format!("node-proxy {node}")
    }

    /// Starts the node proxy of `node` in its namespace and waits until its
    /// admin API reports ready (node certificate, first configuration,
    /// restored pods, CNI socket served).
    pub fn start_node_proxy(&mut self, node: &str) -> Result<Process, LabError> {
        let node = self.node(node)?.clone();
        let bin = self.config.bin_dir.join("hawser-node-proxy");
        if !bin.is_file() {
            return Err(LabError::Missing(format!(
                "{} (build it: cargo build -p hawser-node-proxy)",
                bin.display()
            )));
        }
        let dir = self.node_dir(&node);
        let arg = |p: &Path| p.display().to_string();
        let args = vec![
            "--control-plane".to_owned(),
            format!("{CONTROL_PLANE_IP}:15012"),
            "--node-name".into(),
            node.name.clone(),
            "--bootstrap-token-file".into(),
            arg(&dir.join("bootstrap-token")),
            "--trust-bundle".into(),
            arg(&self.trust_bundle()),
            "--run-dir".into(),
            arg(&dir.join("run")),
            "--admin-addr".into(),
            NODE_PROXY_ADMIN_ADDR.into(),
            // Kubelet's probes: the processes `kubelet_probe` starts.
            "--kubelet-cgroup".into(),
            self.kubelet_cgroup(),
        ];
        let kubelet = sys::cgroup2_root()?.join(self.kubelet_cgroup());
        std::fs::create_dir_all(&kubelet).map_err(|e| LabError::io(&kubelet, e))?;
        let role = Self::node_proxy_role(&node.name);
        // HAWSER_LAB_PROXY_LOG sets the proxies' log filter (default info).
        let env: Vec<(String, String)> = std::env::var("HAWSER_LAB_PROXY_LOG")
            .map(|filter| vec![("HAWSER_LOG".to_owned(), filter)])
            .unwrap_or_default();
        let process = self.spawn(&role, &node.netns, &bin, &args, &env)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = self.node_proxy_get(&node.name, "/ready") {
                return Ok(process);
            }
            if !sys::alive(process.pid) || std::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(&process.log).unwrap_or_default();
                return Err(LabError::Command {
                    command: "hawser-node-proxy".into(),
                    output: format!("{} did not become ready; its log:\n{log}", node.name),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops `node`'s proxy (SIGTERM, then SIGKILL after 3 s). Its pods keep
    /// their redirection rules; their connections fail until it is back.
    pub fn stop_node_proxy(&mut self, node: &str) {
        let role = Self::node_proxy_role(node);
        self.stop_processes(|p| p.role == role);
    }

    /// Stops the control plane (the node proxies keep their configuration
    /// and certificates).
    pub fn stop_control_plane(&mut self) {
        self.stop_processes(|p| p.role == "control-plane");
    }

    /// `GET path` on the control plane's admin API (inside the underlay):
    /// status code and body.
    pub fn admin_get(&self, path: &str) -> Result<(u16, String), LabError> {
        let path = path.to_owned();
        self.in_underlay(move || http_get(ADMIN_ADDR, &path))?
    }

    /// `GET path` on `node`'s proxy admin API: status code and body.
    pub fn node_proxy_get(&self, node: &str, path: &str) -> Result<(u16, String), LabError> {
        let node = self.node(node)?;
        let path = path.to_owned();
        sys::in_netns(&node.netns, move || http_get(NODE_PROXY_ADMIN_ADDR, &path))?
    }

    /// Starts the cluster DNS server in the underlay namespace.
    fn start_dns(&mut self, ul: &str) -> Result<(), LabError> {
        let bin = self.config.bin_dir.join("hawser-lab-dns");
        if !bin.is_file() {
            return Err(LabError::Missing(format!(
                "{} (build it: cargo build -p hawser-tests)",
                bin.display()
            )));
        }
        let args = vec![
            "--listen".to_owned(),
            format!("{CONTROL_PLANE_IP}:53"),
            "--records".into(),
            self.dns_records_file().display().to_string(),
        ];
        let process = self.spawn("dns", ul, &bin, &args, &[])?;
        std::thread::sleep(Duration::from_millis(100));
        if !sys::alive(process.pid) {
            let log = std::fs::read_to_string(&process.log).unwrap_or_default();
            return Err(LabError::Command {
                command: "hawser-lab-dns".into(),
                output: format!("exited at start: {log}"),
            });
        }
        Ok(())
    }

    /// The pod's `resolv.conf`, which `ip netns exec` mounts over
    /// `/etc/resolv.conf` for every command run in the pod.
    fn resolv_conf_dir(netns: &str) -> PathBuf {
        Path::new("/etc/netns").join(netns)
    }

    fn write_resolv_conf(&self, pod_netns: &str, namespace: &str) -> Result<(), LabError> {
        let etc = Path::new("/etc/netns");
        std::fs::create_dir_all(etc).map_err(|e| LabError::io(etc, e))?;
        let dir = Self::resolv_conf_dir(pod_netns);
        std::fs::create_dir_all(&dir).map_err(|e| LabError::io(&dir, e))?;
        let d = dns::CLUSTER_DOMAIN;
        let text = format!(
            "nameserver {CONTROL_PLANE_IP}\nsearch {namespace}.svc.{d} svc.{d} {d}\noptions ndots:5\n"
        );
        let path = dir.join("resolv.conf");
        std::fs::write(&path, text).map_err(|e| LabError::io(&path, e))
    }

    fn remove_resolv_conf(pod_netns: &str) {
        let _ = std::fs::remove_dir_all(Self::resolv_conf_dir(pod_netns));
    }

    /// Node-local paths: CNI binaries, the node proxy's run dir and socket.
    pub fn node_dir(&self, node: &Node) -> PathBuf {
        self.config.state_dir.join("nodes").join(&node.name)
    }

    /// Chains `hawser-cni` last in the node's conflist with its real installer,
    /// as the DaemonSet's install container does on a cluster.
    fn install_hawser_cni(&self, node: &Node) -> Result<(), LabError> {
        let bin = self.config.bin_dir.join("hawser-cni");
        if !bin.is_file() {
            return Err(LabError::Missing(format!(
                "{} (build it: cargo build -p hawser-cni)",
                bin.display()
            )));
        }
        let dir = self.node_dir(node);
        let logs = self.config.state_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| LabError::io(&logs, e))?;
        let arg = |p: PathBuf| p.display().to_string();
        sys::run(
            &bin.display().to_string(),
            [
                "install".to_owned(),
                "--cni-bin-dir".into(),
                arg(dir.join("bin")),
                "--cni-conf-dir".into(),
                arg(self.cni_conf_dir(node)),
                "--socket-path".into(),
                arg(dir.join("run").join("cni.sock")),
                "--run-dir".into(),
                arg(dir.join("run")),
                "--log-file".into(),
                arg(logs.join(format!("{}-cni.log", node.name))),
            ],
        )
        .map(drop)
    }

    /// Starts the control plane in the underlay namespace, serving the lab's
    /// manifest directory, and waits until it answers.
    pub fn start_control_plane(&mut self) -> Result<(), LabError> {
        let ul = self
            .state
            .underlay
            .clone()
            .ok_or_else(|| LabError::NotUp(self.config.state_dir.clone()))?;
        let ul = ul.as_str();
        let bin = self.config.bin_dir.join("hawser-control-plane");
        if !bin.is_file() {
            return Err(LabError::Missing(format!(
                "{} (build it: cargo build -p hawser-control-plane)",
                bin.display()
            )));
        }
        let dir = self.config.state_dir.clone();
        let manifests = self.manifests_dir();
        let tokens = dir.join("bootstrap-tokens");
        for d in [&manifests, &tokens] {
            std::fs::create_dir_all(d).map_err(|e| LabError::io(d, e))?;
        }
        for node in &self.state.nodes {
            let token = format!("{:032x}", rand::random::<u128>());
            let path = tokens.join(&node.name);
            hawser_api::secret::write_secret(&path, &token).map_err(|e| LabError::io(&path, e))?;
            let node_side = self.node_dir(node).join("bootstrap-token");
            hawser_api::secret::write_secret(&node_side, &token)
                .map_err(|e| LabError::io(&node_side, e))?;
        }
        let arg = |p: &Path| p.display().to_string();
        let args = vec![
            "--manifests".to_owned(),
            arg(&manifests),
            "--ca-dir".into(),
            arg(&dir.join("ca")),
            "--bootstrap-token-dir".into(),
            arg(&tokens),
            "--grpc-addr".into(),
            format!("{CONTROL_PLANE_IP}:15012"),
            "--admin-addr".into(),
            ADMIN_ADDR.into(),
        ];
        let process = self.spawn("control-plane", ul, &bin, &args, &[])?;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let ready = sys::in_netns(ul, || std::net::TcpStream::connect(ADMIN_ADDR).is_ok())?;
            if ready {
                return Ok(());
            }
            if !sys::alive(process.pid) || std::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(&process.log).unwrap_or_default();
                return Err(LabError::Command {
                    command: "hawser-control-plane".into(),
                    output: format!("did not become ready; its log:\n{log}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The manifest directory the control plane serves (what `lab apply` writes).
    pub fn manifests_dir(&self) -> PathBuf {
        self.config.state_dir.join("manifests")
    }

    /// The trust bundle node proxies verify with.
    pub fn trust_bundle(&self) -> PathBuf {
        self.config.state_dir.join("ca").join("trust-bundle.pem")
    }

    /// Runs `f` in the underlay namespace (where the control plane's admin API
    /// listens on [`ADMIN_ADDR`]).
    pub fn in_underlay<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, LabError> {
        let ul = self
            .state
            .underlay
            .clone()
            .ok_or_else(|| LabError::NotUp(self.config.state_dir.clone()))?;
        sys::in_netns(&ul, f)
    }

    /// The node's CNI configuration directory (`/etc/cni/net.d` of that node).
    pub fn cni_conf_dir(&self, node: &Node) -> PathBuf {
        self.config
            .state_dir
            .join("nodes")
            .join(&node.name)
            .join("net.d")
    }

    fn conflist_path(&self, node: &Node) -> PathBuf {
        self.cni_conf_dir(node).join("10-hawser-lab.conflist")
    }

    fn write_cni_config(&self, node: &Node) -> Result<(), LabError> {
        let dir = self.cni_conf_dir(node);
        std::fs::create_dir_all(&dir).map_err(|e| LabError::io(&dir, e))?;
        let ipam_dir = self
            .config
            .state_dir
            .join("nodes")
            .join(&node.name)
            .join("ipam");
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": "hawser-lab",
            "plugins": [{
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "isDefaultGateway": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr, "gateway": node.gateway.to_string()}]],
                    "dataDir": ipam_dir,
                }
            }]
        });
        let path = self.conflist_path(node);
        let text = serde_json::to_string_pretty(&conf).unwrap_or_default();
        std::fs::write(&path, text).map_err(|e| LabError::io(&path, e))
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Result<&Node, LabError> {
        self.state
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::Invalid {
                what: "node".into(),
                reason: format!("no node named {name:?} in the lab"),
            })
    }

    /// Creates a pod as kubelet would: its network namespace, then the
    /// loopback plugin and the node's CNI chain with `CNI_ARGS`.
    pub fn add_pod(
        &mut self,
        namespace: &str,
        name: &str,
        uid: &str,
        node: &str,
    ) -> Result<Pod, LabError> {
        if self.pod(namespace, name).is_some() {
            return Err(LabError::Invalid {
                what: format!("pod {namespace}/{name}"),
                reason: "already exists".into(),
            });
        }
        let node = self.node(node)?.clone();
        self.state.next_pod += 1;
        let mut pod = Pod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            node: node.name.clone(),
            netns: format!("{}-p{}", self.config.name, self.state.next_pod),
            container_id: format!("hawserlab{:08}", self.state.next_pod),
            ip: None,
            cni_result: Value::Null,
            labels: Default::default(),
            ports: Default::default(),
        };
        self.state.pods.push(pod.clone());
        self.save()?;
        let result = (|| {
            sys::netns_add(&pod.netns)?;
            self.write_resolv_conf(&pod.netns, namespace)?;
            let attachment = |ifname| attachment(&node, &pod, ifname);
            // Like containerd: the loopback network first, then the pod network.
            self.loopback().add(&attachment("lo"))?;
            self.conflist(&node)?.add(&attachment("eth0"))
        })();
        match result {
            Ok(cni_result) => {
                pod.ip = cni::result_ipv4(&cni_result).and_then(|ip| ip.parse().ok());
                pod.cni_result = cni_result;
                if let Some(p) = self.state.pods.iter_mut().find(|p| p.netns == pod.netns) {
                    *p = pod.clone();
                }
                self.save()?;
                Ok(pod)
            }
            Err(e) => {
                Self::remove_resolv_conf(&pod.netns);
                let _ = sys::netns_del(&pod.netns);
                self.state.pods.retain(|p| p.netns != pod.netns);
                self.save()?;
                Err(e)
            }
        }
    }

    /// A pod by namespace and name.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.state
            .pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// Deletes a pod as kubelet would: stop its processes, CNI DEL through the
    /// chain, then remove its network namespace.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> Result<(), LabError> {
        let pod = self
            .pod(namespace, name)
            .cloned()
            .ok_or_else(|| LabError::Invalid {
                what: format!("pod {namespace}/{name}"),
                reason: "does not exist".into(),
            })?;
        let role = format!("pod {namespace}/{name}");
        let container_prefix = format!("{role} ");
        self.stop_processes(|p| p.role == role || p.role.starts_with(&container_prefix));
        let result = self.cni_del(&pod);
        sys::netns_del(&pod.netns)?;
        Self::remove_resolv_conf(&pod.netns);
        self.state.pods.retain(|p| p.netns != pod.netns);
        self.save()?;
        result
    }

    fn cni_del(&self, pod: &Pod) -> Result<(), LabError> {
        let node = self.node(&pod.node)?;
        let attachment = |ifname| attachment(node, pod, ifname);
        let cached = (!pod.cni_result.is_null()).then_some(&pod.cni_result);
        let pod_net = self.conflist(node)?.del(&attachment("eth0"), cached);
        let lo = self.loopback().del(&attachment("lo"), None);
        pod_net.and(lo)
    }

    fn conflist(&self, node: &Node) -> Result<cni::ConfList, LabError> {
        cni::ConfList::load(
            &self.conflist_path(node),
            vec![
                self.config.cni_bin_dir.clone(),
                self.node_dir(node).join("bin"),
            ],
        )
    }

    fn loopback(&self) -> cni::ConfList {
        cni::ConfList {
            doc: json!({"cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}),
            bin_dirs: vec![self.config.cni_bin_dir.clone()],
        }
    }

    /// Starts `program args…` in the background inside network namespace
    /// `netns`, logging to `<state>/logs/<log_name>.log`, and records it.
    pub fn spawn(
        &mut self,
        role: &str,
        netns: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Process, LabError> {
        let logs = self.config.state_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| LabError::io(&logs, e))?;
        let log = logs.join(format!("{}.log", role.replace(['/', ' '], "_")));
        let file = std::fs::File::create(&log).map_err(|e| LabError::io(&log, e))?;
        let err_file = file.try_clone().map_err(|e| LabError::io(&log, e))?;
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(err_file);
        // Its own process group: a Ctrl-C in the user's terminal does not reach it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(|e| LabError::Command {
            command: format!("{} {}", program.display(), args.join(" ")),
            output: e.to_string(),
        })?;
        let process = Process {
            role: role.to_owned(),
            pid: child.id(),
            log,
        };
        self.state.processes.push(process.clone());
        self.save()?;
        Ok(process)
    }

    fn stop_processes(&mut self, which: impl Fn(&Process) -> bool) {
        let (stop, keep): (Vec<_>, Vec<_>) = self.state.processes.drain(..).partition(|p| which(p));
        self.state.processes = keep;
        for p in stop {
            sys::stop(p.pid, Duration::from_secs(3));
        }
    }

    /// The lab's stand-in for kubelet's cgroup, below the cgroup v2 root:
    /// connections its processes open to enrolled pods are kubelet's probes.
    pub fn kubelet_cgroup(&self) -> String {
        format!("hawser-lab-{}-kubelet", self.config.name)
    }

    /// Opens `url` with curl from `node`'s namespace as kubelet would probe
    /// it (the process runs in [`Self::kubelet_cgroup`]): the HTTP status
    /// curl reports (`000` when the connection failed) and the body.
    pub fn kubelet_probe(&self, node: &str, url: &str) -> Result<(String, String), LabError> {
        let netns = self.node(node)?.netns.clone();
        let procs = sys::cgroup2_root()?
            .join(self.kubelet_cgroup())
            .join("cgroup.procs");
        let script = format!(
            "echo $$ > {} && exec ip netns exec {netns} curl -sS -m 5 -w '\\n%{{http_code}}' {url}",
            procs.display()
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .map_err(|e| LabError::Command {
                command: script.clone(),
                output: e.to_string(),
            })?;
        let out = String::from_utf8_lossy(&out.stdout);
        let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
        Ok((status.trim().to_owned(), body.to_owned()))
    }

    /// Removes everything the lab created: processes, pods (CNI DEL), nodes,
    /// the underlay, and the state directory. Safe to call twice.
    pub fn down(mut self) -> Result<(), LabError> {
        self.teardown()?;
        let dir = &self.config.state_dir;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| LabError::io(dir, e))?;
        }
        Ok(())
    }

    fn teardown(&mut self) -> Result<(), LabError> {
        self.stop_processes(|_| true);
        // Everything is removed even if a CNI DEL fails; the first failure is
        // reported at the end.
        let mut first_error = None;
        for pod in std::mem::take(&mut self.state.pods).into_iter().rev() {
            if let Err(e) = self.cni_del(&pod) {
                first_error.get_or_insert(e);
            }
            sys::netns_del(&pod.netns)?;
            Self::remove_resolv_conf(&pod.netns);
        }
        for node in std::mem::take(&mut self.state.nodes).into_iter().rev() {
            sys::netns_del(&node.netns)?;
        }
        if let Some(ul) = self.state.underlay.take() {
            sys::netns_del(&ul)?;
        }
        for ns in sys::netns_with_prefix(&format!("{}-", self.config.name)) {
            sys::netns_del(&ns)?;
            Self::remove_resolv_conf(&ns);
        }
        // The kubelet stand-in's cgroup (empty once its probes have exited).
        if let Ok(root) = sys::cgroup2_root() {
            let _ = std::fs::remove_dir(root.join(self.kubelet_cgroup()));
        }
        // /etc/netns holds only per-namespace overrides; once empty (every lab
        // gone, nothing of anyone else's there) it goes, so the host is left as
        // it was. Concurrent labs may have created it, so the flag alone is not
        // enough.
        let _ = std::fs::remove_dir(Path::new("/etc/netns"));
        first_error.map_or(Ok(()), Err)
    }

    /// Runs `program args…` inside pod `namespace/name` and returns its stdout.
    pub fn exec(
        &self,
        namespace: &str,
        name: &str,
        program: &str,
        args: &[&str],
    ) -> Result<String, LabError> {
        let pod = self.pod(namespace, name).ok_or_else(|| LabError::Invalid {
            what: format!("pod {namespace}/{name}"),
            reason: "does not exist".into(),
        })?;
        sys::netns_exec(&pod.netns, program, args)
    }
}

/// What the runtime tells the plugins about `pod`'s interface `ifname`,
/// with `CNI_ARGS` as kubelet passes them.
fn attachment(node: &Node, pod: &Pod, ifname: &str) -> cni::Attachment {
    cni::Attachment {
        node_netns: node.netns.clone(),
        container_id: pod.container_id.clone(),
        pod_netns_path: Path::new("/run/netns").join(&pod.netns),
        ifname: ifname.to_owned(),
        args: format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            pod.namespace, pod.name, pod.container_id, pod.uid
        ),
    }
}

/// Checks what the lab needs before touching anything.
fn preflight(config: &LabConfig) -> Result<(), LabError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(LabError::NotRoot);
    }
    if sys::run("ip", ["-V"]).is_err() {
        return Err(LabError::Missing(
            "the `ip` command (install iproute2)".into(),
        ));
    }
    if sys::run("nft", ["--version"]).is_err() {
        return Err(LabError::Missing(
            "the `nft` command (install nftables)".into(),
        ));
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        if !config.cni_bin_dir.join(plugin).is_file() {
            return Err(LabError::Missing(format!(
                "CNI plugin {} (install containernetworking-plugins)",
                config.cni_bin_dir.join(plugin).display()
            )));
        }
    }
    if config.nodes == 0 {
        return Err(LabError::Invalid {
            what: "--nodes".into(),
            reason: "a lab needs at least one node".into(),
        });
    }
    Ok(())
}
