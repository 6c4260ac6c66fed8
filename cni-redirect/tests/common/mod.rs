//! Test harness: network namespaces that clean up after themselves, a "node"
//! namespace in which the real Debian CNI plugins (`bridge`, `host-local`,
//! `loopback` from /usr/lib/cni) and `hawser-cni` run, so nothing is created
//! or routed in the host's namespace, and a fake node proxy serving the real
//! CNI socket protocol.
//!
//! Setup failures panic: these tests must fail, never skip, when they cannot
//! create namespaces (they need root).

#![allow(dead_code, missing_docs, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use hawser_api::cni::proto;
use hawser_api::cni::server::{CniHandler, CniServer};
use serde_json::{Value, json};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_hawser-cni");
pub const CNI_BIN: &str = "/usr/lib/cni";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique across parallel test processes.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}{:x}{n:x}{:x}", std::process::id(), nanos % 0xfff)
}

fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A named network namespace, deleted on drop.
pub struct NetnsGuard {
    pub name: String,
}

impl NetnsGuard {
    pub fn new(prefix: &str) -> Self {
        let name = unique(&format!("hawser-cni-test-{prefix}-"));
        ip(&["netns", "add", &name]);
        Self { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(self.path()).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// The `inet hawser` table as `nft -j` lists it, if present.
    pub fn hawser_table(&self) -> Option<Value> {
        let out = self.exec("nft", &["-j", "list", "ruleset"]);
        assert!(
            out.status.success(),
            "nft list ruleset failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let objs = v["nftables"].as_array().unwrap();
        let has = objs
            .iter()
            .any(|o| o["table"]["name"] == "hawser" && o["table"]["family"] == "inet");
        has.then(|| {
            Value::Array(
                objs.iter()
                    .filter(|o| o["rule"]["table"] == "hawser")
                    .cloned()
                    .collect(),
            )
        })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// What the fake node proxy saw.
#[derive(Default, Debug)]
pub struct Seen {
    pub adds: Vec<proto::AddPod>,
    /// (container id, inode of the received netns fd)
    pub handoffs: Vec<(String, u64)>,
    pub dels: Vec<String>,
}

/// A node proxy stand-in speaking the real protocol.
pub struct FakeProxy {
    pub enrolled: BTreeSet<String>,
    pub redirection: proto::Redirection,
    pub refuse_handoff: bool,
    pub seen: Mutex<Seen>,
    /// Keeps received netns descriptors open, like the real proxy.
    pub held: Mutex<Vec<OwnedFd>>,
}

impl FakeProxy {
    pub fn enrolling(namespaces: &[&str]) -> Self {
        Self {
            enrolled: namespaces.iter().map(|s| s.to_string()).collect(),
            redirection: proto::Redirection::default(),
            refuse_handoff: false,
            seen: Mutex::default(),
            held: Mutex::default(),
        }
    }
}

impl CniHandler for FakeProxy {
    fn add(&self, req: proto::AddPod) -> proto::AddReply {
        let ns = req.pod.clone().unwrap_or_default().namespace;
        self.seen.lock().unwrap().adds.push(req);
        proto::AddReply {
            enrolled: self.enrolled.contains(&ns),
            redirection: Some(self.redirection.clone()),
            reason: format!("namespace {ns}"),
        }
    }

    fn handoff(&self, req: proto::NetnsHandoff, netns: OwnedFd) -> proto::HandoffReply {
        let ino = nix::sys::stat::fstat(&netns).unwrap().st_ino;
        let id = req.attachment.unwrap_or_default().container_id;
        self.seen.lock().unwrap().handoffs.push((id, ino));
        self.held.lock().unwrap().push(netns);
        if self.refuse_handoff {
            proto::HandoffReply {
                accepted: false,
                message: "test proxy refuses".into(),
            }
        } else {
            proto::HandoffReply {
                accepted: true,
                message: String::new(),
            }
        }
    }

    fn del(&self, req: proto::DelPod) {
        let id = req.attachment.unwrap_or_default().container_id;
        self.seen.lock().unwrap().dels.push(id);
        // Like the real proxy: let go of the netns.
        self.held.lock().unwrap().clear();
    }
}

/// The result of one plugin execution.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?} / stderr {:?}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts a spec-conformant error with `code` and returns it.
    pub fn error(&self, code: u64) -> Value {
        assert_eq!(self.code, 1, "expected failure, got {self:?}");
        let v = self.json();
        let obj = v.as_object().unwrap();
        let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["cniVersion", "code", "msg", "details"]),
            "{v}"
        );
        assert!(!v["msg"].as_str().unwrap().is_empty());
        assert!(!v["details"].as_str().unwrap().is_empty());
        assert_eq!(v["code"], json!(code), "{v}");
        v
    }

    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "expected success, got {self:?}");
        self
    }
}

/// A node: its own netns (where the bridge and every plugin run), a
/// temporary run dir, a socket path, and a unique bridge/subnet.
pub struct Node {
    /// First field: dropped (server stopped) before the directory goes.
    pub proxy: Option<(Arc<FakeProxy>, CniServer)>,
    pub ns: NetnsGuard,
    pub dir: tempfile::TempDir,
    pub network: String,
    pub bridge: String,
    pub subnet: String,
}

impl Node {
    pub fn new() -> Self {
        let ns = NetnsGuard::new("node");
        let octet = (std::process::id() + COUNTER.fetch_add(1, Ordering::SeqCst)) % 250 + 1;
        Self {
            proxy: None,
            ns,
            dir: tempfile::tempdir().unwrap(),
            network: unique("net"),
            bridge: unique("hb").chars().take(15).collect(),
            subnet: format!("10.250.{octet}.0/24"),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("cni.sock")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("hawser-cni.log")
    }

    pub fn start_proxy(&mut self, proxy: FakeProxy) -> Arc<FakeProxy> {
        let proxy = Arc::new(proxy);
        let server = CniServer::bind(&self.socket(), proxy.clone()).unwrap();
        self.proxy = Some((proxy.clone(), server));
        proxy
    }

    pub fn stop_proxy(&mut self) {
        self.proxy = None;
    }

    pub fn hawser_conf(&self, prev: Option<&Value>) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0",
            "name": self.network,
            "type": "hawser-cni",
            "socketPath": self.socket(),
            "runDir": self.run_dir(),
            "logFile": self.log_file(),
            "logLevel": "debug",
            "proxyTimeoutMs": 2000,
        });
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    }

    pub fn bridge_conf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": self.network,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": self.dir.path().join("ipam"),
                "ranges": [[{"subnet": self.subnet}]],
            }
        })
    }

    /// Runs a plugin binary inside the node netns.
    pub fn exec(&self, binary: &str, stdin: &[u8], env: &[(&str, &str)]) -> Run {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name, binary])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// One pod sandbox on a node.
pub struct Pod {
    pub ns: NetnsGuard,
    pub container_id: String,
    pub namespace: String,
    pub name: String,
}

impl Pod {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            ns: NetnsGuard::new("pod"),
            container_id: unique("c"),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID=uid-{}",
            self.namespace, self.name, self.container_id, self.name
        )
    }

    pub fn env<'a>(
        &'a self,
        command: &'a str,
        netns: &'a str,
        args: &'a str,
    ) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", CNI_BIN),
            ("CNI_ARGS", args),
        ]
    }

    pub fn netns_path(&self) -> String {
        self.ns.path().display().to_string()
    }

    /// Runs `binary` for this pod on `node` with command `cmd` and config `conf`.
    pub fn cni(&self, node: &Node, binary: &str, cmd: &str, conf: &Value) -> Run {
        let netns = self.netns_path();
        let args = self.cni_args();
        node.exec(
            binary,
            conf.to_string().as_bytes(),
            &self.env(cmd, &netns, &args),
        )
    }

    /// loopback + bridge/host-local ADD; returns the bridge result text.
    pub fn primary_add(&self, node: &Node) -> String {
        let lo = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
        self.cni(node, &format!("{CNI_BIN}/loopback"), "ADD", &lo)
            .ok();
        let r = self.cni(
            node,
            &format!("{CNI_BIN}/bridge"),
            "ADD",
            &node.bridge_conf(),
        );
        r.ok();
        r.stdout
    }

    /// Chained ADD: primary plugins, then hawser-cni with prevResult.
    pub fn chained_add(&self, node: &Node) -> (String, Run) {
        let prev = self.primary_add(node);
        let prev_v: Value = serde_json::from_str(&prev).unwrap();
        let r = self.cni(node, PLUGIN, "ADD", &node.hawser_conf(Some(&prev_v)));
        (prev, r)
    }

    /// Chained DEL in reverse order.
    pub fn chained_del(&self, node: &Node, prev: &str) -> Run {
        let prev_v: Value = serde_json::from_str(prev).unwrap();
        let r = self.cni(node, PLUGIN, "DEL", &node.hawser_conf(Some(&prev_v)));
        let b = self.cni(
            node,
            &format!("{CNI_BIN}/bridge"),
            "DEL",
            &node.bridge_conf(),
        );
        b.ok();
        r
    }

    pub fn state_file(&self, node: &Node) -> PathBuf {
        node.run_dir()
            .join("cni/attachments")
            .join(&node.network)
            .join(&self.container_id)
            .join("eth0.json")
    }
}

pub fn inode(path: &Path) -> u64 {
    nix::sys::stat::stat(path).unwrap().st_ino
}
